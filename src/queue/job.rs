//! What a job is to a pool: what it asks (its ticket), the upstream accounts it may run on, why it
//! got no slot, and how it stands while it waits. Plain data, shared by the pool, the proxy's job
//! stage, `/usage` and the status page.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::scheduler::UpstreamIdx;
use crate::identity::AccountId;
use crate::metrics::TierGauges;

/// An upstream account: the credential floodgate sets for jobs it runs, and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAccount {
    pub name: String,
    /// Header set (or replaced) on requests this account runs.
    pub credential: Option<(HeaderName, HeaderValue)>,
    /// Its base URL's origin (`https://host:port`) when it has its own.
    pub origin: Option<String>,
    /// Concurrent jobs it allows; `u32::MAX` for the plain upstream.
    pub concurrency: u32,
}

/// Why a job did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("job queue full")]
    Full { retry_after_secs: u64 },
    #[error("job waited too long in the queue")]
    TimedOut { retry_after_secs: u64 },
    #[error("floodgate is shutting down")]
    Closed,
}

/// What a job asks of its pool.
#[derive(Debug, Clone)]
pub struct JobTicket {
    pub tenant: AccountId,
    /// The tenant's concurrency cap.
    pub concurrency: u32,
    pub max_queue: usize,
    pub max_wait: Duration,
    /// A follow-up job must run on the upstream account of its original task.
    pub affinity: Option<UpstreamIdx>,
    /// Retried jobs (after an upstream 429) go to the front of the queue.
    pub front: bool,
    /// Gauges of the tenant's tier: jobs waiting and in flight.
    pub tier_gauges: TierGauges,
}

/// A job in a queue, as the status page and `/usage` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitingJob {
    pub tenant: AccountId,
    /// 1-based place in its tenant's queue now.
    pub position: usize,
    pub position_at_entry: usize,
    pub waited: Duration,
    /// How much longer it likely waits ([`super::estimate::JobDurations::wait`]).
    pub estimated_wait: Duration,
}
