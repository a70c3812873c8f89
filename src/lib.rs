//! floodgate: a reverse proxy that enforces an API operator's usage policy on the way through.
//!
//! Map of the modules — the request path first, then the edges:
//!
//! - [`config`]: the TOML file, validated into typed values (errors name field and line).
//! - [`json`]: one field out of a small JSON document (body classes, modes, task ids). (pure)
//! - [`identity`]: request -> account and tier.                                   (pure)
//! - [`classify`]: method + normalised path -> endpoint class.                    (pure)
//! - [`limits`]: minute / day / interval windows -> admit or refuse; header rendering. (pure)
//! - [`penalties`]: incorrect-task and relax-mode tallies per UTC day -> block, flag, surcharge
//!   or reject; what counts as an incorrect task.                                  (pure)
//! - [`accounts`]: accounts changed at runtime (the admin API): plan, limits, job caps and a
//!   block over what the config says, resolved per config.                     (pure)
//! - [`store`]: where counters live; each backend changes one account's counters atomically
//!   with a closure (no policy of its own); the state file that carries them across a restart.
//! - [`queue`]: job queues — per-account FIFO under concurrency caps, upstream account pools.
//! - [`proxy`]: a request's life, upload limits, and the upstream HTTP/1.1 client with its pools.
//! - [`server`] / [`admin`]: the listeners; [`server::conn`] bounds what one client connection
//!   holds (head and idle timeouts), [`server::framing`] spots requests framed two ways.
//! - [`reload`]: SIGHUP / file-change reload — validate, then swap atomically.
//! - [`metrics`]: Prometheus metrics with bounded labels.
//! - [`access_log`]: one line per request (JSON or Common Log Format), written off the workers.
//! - [`status`]: the live status page's data — charts sampled off the request path, the
//!   accounts nearest their limits, queues with estimated waits.
//! - [`shared`]: the state workers, admin and reload share (config, jobs, store, metrics).
//! - [`app`]: wiring and threads; [`clock`]: the only reader of wall time.
//! - [`allocator`]: the global allocator — mimalloc for small blocks, the system's for large
//!   ones, huge pages for the largest tables (the one module with `unsafe` code).

#![deny(unsafe_code)]

#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

pub mod access_log;
pub mod accounts;
pub mod admin;
#[allow(unsafe_code)]
pub mod allocator;
pub mod app;
pub mod classify;
pub mod clock;
pub mod config;
pub mod identity;
pub mod json;
pub mod limits;
pub mod metrics;
pub mod penalties;
pub mod proxy;
pub mod queue;
pub mod reload;
pub mod server;
pub mod shared;
pub mod status;
pub mod store;
