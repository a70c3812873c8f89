//! Limit state behind one interface: counters per account, changed only by atomic
//! check-and-consume (and, for penalty tallies, atomic increments). The store holds no policy;
//! the rules come with each call, and the decisions are the pure functions of [`crate::limits`]
//! and [`crate::penalties`] run under the account's lock.
//!
//! [`Store`] is an enum rather than a trait object so the in-memory path stays a direct,
//! inlinable call on the hot path.

pub mod dirty;
mod failover;
pub mod journal;
pub mod keeper;
mod memory;
pub mod redis;
pub mod snapshot;

pub use crate::config::{OnFailure, StoreConfig};
pub use failover::{FailoverStore, StoreHealth};
pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use snapshot::Snapshot;

use crate::identity::AccountId;
use crate::limits::{Counter, Decision, Receipt, Rule};
use crate::penalties::{Admission, Event, JobCheck, PenaltyIds};

/// A store failure (none for the memory store; kept so other stores fit the same calls).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store unavailable: {0}")]
    Unavailable(String),
}

/// Where limit counters live.
#[derive(Debug)]
pub enum Store {
    Memory(MemoryStore),
    /// Shared by replicas through Redis, with a failure policy.
    Redis(std::sync::Arc<FailoverStore>),
}

impl Store {
    pub fn memory() -> Self {
        Store::Memory(MemoryStore::default())
    }

    /// The store a config asks for. Redis is connected on first use, so a Redis that is down at
    /// start is handled by the failure policy like one that goes down later.
    pub fn from_config(config: &StoreConfig) -> Result<Self, StoreError> {
        Ok(match config {
            StoreConfig::Memory => Store::memory(),
            StoreConfig::Redis {
                url,
                timeout,
                on_failure,
                breaker_failures,
                breaker_cooldown,
                lease_ttl,
                auth,
                tls_ca,
                cluster_nodes,
            } => {
                let redis = match cluster_nodes.is_empty() {
                    true => RedisStore::new(url, *timeout, auth)?,
                    false => RedisStore::cluster(cluster_nodes, *timeout, auth)?,
                };
                let redis = match tls_ca {
                    Some(ca) => redis.trusting(ca)?,
                    None => redis,
                };
                Store::Redis(std::sync::Arc::new(FailoverStore::new(
                    redis,
                    *lease_ttl,
                    *on_failure,
                    *breaker_failures,
                    *breaker_cooldown,
                )))
            }
        })
    }

    /// The memory store, which keeps its state in the state file and journal; `None` for a
    /// store that keeps its own.
    pub fn as_memory(&self) -> Option<&MemoryStore> {
        match self {
            Store::Memory(m) => Some(m),
            Store::Redis(_) => None,
        }
    }

    /// Health metrics of a shared store (none for the memory store).
    pub fn health(&self) -> Option<&StoreHealth> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(s) => Some(&s.health),
        }
    }

    /// True while a shared store is failing and its failure policy applies.
    pub fn is_degraded(&self) -> bool {
        match self {
            Store::Memory(_) => false,
            Store::Redis(s) => s.is_degraded(),
        }
    }

    /// How often the control loop calls [`probe`](Self::probe): `None` for the memory store.
    pub fn recovery_probe(&self) -> Option<std::time::Duration> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(_) => Some(failover::RECOVERY_PROBE),
        }
    }

    /// While a shared store is degraded, tries it once: the first success closes the breaker,
    /// so requests go back to the shared store as soon as it answers rather than after the
    /// breaker's cooldown, and recovery shows even without traffic.
    pub async fn probe(&self) {
        if let Store::Redis(s) = self {
            if s.is_degraded() {
                s.probe().await;
            }
        }
    }

    /// Checks every rule for `account` at `now_ms` and consumes all of them, or none. With a
    /// strict journal, an admission returns once it is on disk ([`durable`]).
    ///
    /// The Redis branches here are boxed: a Redis call's future holds kilobytes of state, and
    /// unboxed it would make every in-memory decision — and every request's future, which
    /// contains it — that large (5.2 KB here, copied as the request's futures are moved).
    pub async fn check_and_consume(
        &self,
        account: AccountId,
        rules: &[Rule],
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        match self {
            Store::Memory(m) => {
                let decision = m.check_and_consume(account, rules, now_ms);
                if decision.is_admitted() {
                    durable(m).await;
                }
                Ok(decision)
            }
            Store::Redis(s) => Box::pin(s.check_and_consume(account, rules, now_ms)).await,
        }
    }

    /// A job submission: its penalties and `rules` checked together, and (only when all admit)
    /// the rules consumed and a relax job counted — one atomic step per account.
    pub async fn admit_job(
        &self,
        account: AccountId,
        rules: &[Rule],
        job: &JobCheck,
        now_ms: u64,
    ) -> Result<Admission, StoreError> {
        match self {
            Store::Memory(m) => {
                let admission = m.admit_job(account, rules, job, now_ms);
                if matches!(admission, Admission::Admitted(..)) {
                    durable(m).await;
                }
                Ok(admission)
            }
            Store::Redis(s) => Box::pin(s.admit_job(account, rules, job, now_ms)).await,
        }
    }

    /// Uncounts a job that was admitted but turned away before it ran (its queue was full, it
    /// waited too long, floodgate is shutting down): only admitted requests consume quota.
    /// Returns how many counters were given back.
    pub async fn give_back(
        &self,
        account: AccountId,
        receipt: &Receipt,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        if receipt.is_empty() {
            return Ok(0);
        }
        match self {
            Store::Memory(m) => {
                let given = m.give_back(account, receipt, now_ms);
                if given > 0 {
                    durable(m).await;
                }
                Ok(given)
            }
            Store::Redis(s) => Box::pin(s.give_back(account, receipt, now_ms)).await,
        }
    }

    /// Counts one penalty event in the account's tally for today; returns the tally.
    pub async fn record(
        &self,
        account: AccountId,
        event: Event,
        ids: &PenaltyIds,
        now_ms: u64,
    ) -> Result<u32, StoreError> {
        match self {
            Store::Memory(m) => {
                let tally = m.record(account, event, ids, now_ms);
                durable(m).await;
                Ok(tally)
            }
            Store::Redis(s) => Box::pin(s.record(account, event, ids, now_ms)).await,
        }
    }

    /// The account's live counters (for the usage view).
    pub async fn counters(
        &self,
        account: AccountId,
        now_ms: u64,
    ) -> Result<Vec<Counter>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.counters(account, now_ms)),
            Store::Redis(s) => Box::pin(s.counters(account, now_ms)).await,
        }
    }

    /// A copy of the open windows of every account, for the state file. `None` for a store that
    /// keeps its own state.
    pub fn snapshot(&self, now_ms: u64) -> Option<Snapshot> {
        match self {
            Store::Memory(m) => Some(m.snapshot(now_ms)),
            Store::Redis(_) => None,
        }
    }

    /// Puts saved counters back (at start, before serving); returns how many accounts came back.
    pub fn restore(&self, snapshot: Snapshot, now_ms: u64) -> usize {
        match self {
            Store::Memory(m) => m.restore(snapshot, now_ms),
            Store::Redis(_) => 0,
        }
    }

    /// Forgets accounts whose windows have all closed; returns how many accounts remain.
    pub fn evict_idle(&self, now_ms: u64) -> usize {
        match self {
            Store::Memory(m) => m.evict_idle(now_ms),
            Store::Redis(s) => s.evict_idle(now_ms),
        }
    }
}

/// With a strict journal (`[state] journal = "strict"`), waits until the change the caller has
/// just made is on disk, so that its answer never leaves before it. Otherwise returns at once:
/// the default journal costs a request nothing here.
#[inline]
async fn durable(store: &MemoryStore) {
    if let Some(wait) = store.durable() {
        wait.await;
    }
}
