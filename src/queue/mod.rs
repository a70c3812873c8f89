//! Job queues: per-account FIFO queues with concurrency caps over pools of upstream accounts.
//!
//! What a general-purpose rate limiter does not do: a job over its account's concurrency is not
//! refused but held, and forwarded the moment a slot frees (seed: system-design-queueing.txt).
//!
//! - [`scheduler`]: who runs next — pure bookkeeping of slots, queues and round-robin.
//! - [`pool`]: the async edge, a pool's front door — a slot now, after waiting, or shadowed.
//!   The pool's other files, each one concern of it:
//!   - [`slots`]: the pool's state, RAII slot permits and a freed slot's way to the next job;
//!   - [`waiting`]: parked jobs — the queue, the maximum wait, cancellation;
//!   - [`shared_slots`]: a pool whose slots are also leases shared with other replicas;
//!   - [`rests`]: upstream accounts out of rotation (resting, disabled), and the wake-up when a
//!     rest ends;
//!   - [`view`]: what the pool shows `/usage` and the status page.
//! - [`health`]: an upstream account's health — in rotation, resting, disabled — and what each
//!   upstream answer does to it.
//! - [`leases`]: job slots shared across replicas — expiring leases in the shared store.
//! - [`releaser`]: where a drop sends the lease releases it cannot wait for.
//! - [`job`]: what a job is to a pool — its ticket, the upstream accounts, why it got no slot.
//! - [`tasks`]: slots of asynchronous tasks, held until the task is seen to finish.
//! - [`estimate`]: how long a waiting job likely waits, from recent job durations.

pub mod estimate;
pub mod health;
pub mod job;
pub mod leases;
pub mod pool;
pub mod releaser;
pub mod rests;
pub mod scheduler;
pub mod shared_slots;
pub mod slots;
pub mod tasks;
#[cfg(test)]
mod testing;
pub mod view;
pub mod waiting;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;

pub use crate::metrics::TierGauges;
pub use job::{JobTicket, QueueError, UpstreamAccount, WaitingJob};
pub use slots::{GrantNotice, JobPool, SlotPermit, StartOnGrant};
pub use waiting::Granted;

use crate::classify::{ClassId, PathPattern};
use crate::clock::Clock;
use crate::identity::{AccountId, BuildIdHasher, Caller};
use crate::metrics::Metrics;

/// How long a job's slot is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobMode {
    /// Until the upstream response has been sent in full.
    Sync,
    /// From the create response until the task is seen in a terminal state.
    Task,
}

/// A class whose requests are jobs.
#[derive(Debug, Clone)]
pub struct JobClass {
    pub mode: JobMode,
    /// The slot is released at the latest after this long.
    pub max_job_time: Duration,
    /// JSON pointer in the request body naming the task a follow-up acts on.
    pub follow_up_pointer: Option<String>,
    /// JSON pointer in the create response to the new task id (task mode).
    pub task_id_pointer: Option<String>,
    /// Shadow mode: a job that would wait is counted (`floodgate_would_queue_total`) and
    /// forwarded at once instead.
    pub shadow: bool,
}

/// How task completion is observed.
#[derive(Debug, Clone)]
pub struct TaskPolling {
    pub get_method: Method,
    /// The get-task path as written, with `{id}`.
    pub get_path: String,
    pub get_pattern: PathPattern,
    pub status_pointer: String,
    pub terminal: Vec<String>,
    /// Active polling interval; `None` = passive only.
    pub poll_interval: Option<Duration>,
    /// Terminal statuses of a task that succeeded; empty = success is not known.
    pub success: Vec<String>,
    /// How long replicas sharing Redis remember where a task ran, for its follow-ups.
    pub follow_up_ttl: Duration,
}

impl TaskPolling {
    /// The task id in a request path that matches the get-task endpoint.
    pub fn task_id_in<'p>(&self, method: &Method, path: &'p str) -> Option<&'p str> {
        if *method != self.get_method || !self.get_pattern.matches(path) {
            return None;
        }
        let PathPattern::Template(segs) = &self.get_pattern else {
            return None;
        };
        let idx = segs.iter().position(Option::is_none)?;
        path.split('/').skip(1).nth(idx)
    }

    /// The get-task path for a task id.
    pub fn path_for(&self, id: &str) -> String {
        self.get_path.replace("{id}", id)
    }
}

/// Queue settings of a tier or account.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Concurrent jobs; `None` = only the upstream accounts' caps bound it.
    pub concurrency: Option<u32>,
    pub max_queue: usize,
    pub max_wait: Duration,
    /// Index into [`JobsConfig::pools`].
    pub pool: usize,
}

/// A named set of upstream accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub accounts: Vec<UpstreamAccount>,
}

/// Everything about jobs from the config.
#[derive(Debug, Clone, Default)]
pub struct JobsConfig {
    /// Indexed by [`ClassId`]; `None` for classes that are not jobs.
    pub classes: Vec<Option<JobClass>>,
    pub tasks: Option<TaskPolling>,
    /// Indexed by tier.
    pub tiers: Vec<QueueSettings>,
    pub accounts: HashMap<AccountId, QueueSettings, BuildIdHasher>,
    /// Pool 0 is the plain upstream, uncapped.
    pub pools: Vec<PoolSpec>,
    /// What takes an upstream account out of rotation (`[upstream_health]`).
    pub health: health::HealthRules,
}

impl JobsConfig {
    pub fn class(&self, class: ClassId) -> Option<&JobClass> {
        self.classes.get(class.0 as usize)?.as_ref()
    }

    /// The queue settings that apply to a caller.
    pub fn settings(&self, caller: &Caller) -> &QueueSettings {
        self.accounts
            .get(&caller.account)
            .unwrap_or(&self.tiers[caller.tier.0 as usize])
    }
}

/// The running pools, built once from the config.
#[derive(Debug)]
pub struct Jobs {
    pub pools: Vec<Arc<JobPool>>,
    pub tracker: Arc<tasks::TaskTracker>,
}

impl Jobs {
    pub fn new(config: &JobsConfig, metrics: &Metrics, clock: &Arc<dyn Clock>) -> Self {
        let pools = config
            .pools
            .iter()
            .map(|spec| {
                let gauges = spec
                    .accounts
                    .iter()
                    .map(|a| metrics.jobs.upstream_account_in_flight(&a.name))
                    .collect();
                Arc::new(JobPool::new(
                    spec.name.clone(),
                    spec.accounts.clone(),
                    gauges,
                    metrics.jobs.pool_queued(&spec.name),
                    clock.clone(),
                ))
            })
            .collect();
        Self {
            pools,
            tracker: Arc::new(tasks::TaskTracker::default()),
        }
    }

    /// Takes upstream account `account` out of rotation, or puts it back, in every pool it
    /// serves.
    pub fn apply_health(&self, account: &str, health: &health::Health) {
        for pool in &self.pools {
            if let Some(upstream) = pool.upstream_named(account) {
                pool.set_health(upstream, health);
            }
        }
    }

    /// The upstream account of pool `pool` that ran `task`, for a follow-up: as this replica
    /// remembers it, or as another replica sharing the store recorded it.
    pub async fn origin(&self, task: &str, pool: usize) -> Option<usize> {
        let pool = &self.pools[pool];
        if let Some((name, upstream)) = self.tracker.origin(task) {
            return (name == pool.name).then_some(upstream);
        }
        let (name, account) = self.tracker.shared_origin(task).await?;
        (name == pool.name).then(|| pool.upstream_named(&account))?
    }

    /// The named upstream accounts (each once), in config order.
    pub fn upstream_accounts(&self) -> Vec<&UpstreamAccount> {
        let mut seen = std::collections::HashSet::new();
        self.pools
            .iter()
            .filter(|p| !p.is_plain())
            .flat_map(|p| &p.accounts)
            .filter(|a| seen.insert(a.name.as_str()))
            .collect()
    }

    /// Answers every queued job with "shutting down" and refuses new ones.
    pub fn close(&self) {
        for p in &self.pools {
            p.close();
        }
    }

    /// A ticket for `caller`'s job in its pool.
    pub fn ticket(
        &self,
        settings: &QueueSettings,
        caller: &Caller,
        affinity: Option<usize>,
        tier_gauges: TierGauges,
    ) -> (Arc<JobPool>, JobTicket) {
        let pool = self.pools[settings.pool].clone();
        let concurrency = settings.concurrency.unwrap_or(u32::MAX);
        let ticket = JobTicket {
            tenant: caller.account,
            concurrency,
            max_queue: settings.max_queue,
            max_wait: settings.max_wait,
            affinity,
            front: false,
            tier_gauges,
        };
        (pool, ticket)
    }
}
