//! Limit state behind one interface: counters per account, changed only by atomic
//! check-and-consume (and, for penalty tallies, atomic increments). The store holds no policy;
//! the rules come with each call, and the decisions are the pure functions of [`crate::limits`]
//! and [`crate::penalties`] run under the account's lock.
//!
//! [`Store`] is an enum rather than a trait object so the in-memory path stays a direct,
//! inlinable call on the hot path.

mod memory;
pub mod snapshot;

pub use memory::MemoryStore;
pub use snapshot::Snapshot;

use crate::identity::AccountId;
use crate::limits::{Counter, Decision, Rule};
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
}

impl Store {
    pub fn memory() -> Self {
        Store::Memory(MemoryStore::default())
    }

    /// Checks every rule for `account` at `now_ms` and consumes all of them, or none.
    pub async fn check_and_consume(
        &self,
        account: AccountId,
        rules: &[Rule],
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.check_and_consume(account, rules, now_ms)),
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
            Store::Memory(m) => Ok(m.admit_job(account, rules, job, now_ms)),
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
            Store::Memory(m) => Ok(m.record(account, event, ids, now_ms)),
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
        }
    }

    /// A copy of the open windows of every account, for the state file. `None` for a store that
    /// keeps its own state.
    pub fn snapshot(&self, now_ms: u64) -> Option<Snapshot> {
        match self {
            Store::Memory(m) => Some(m.snapshot(now_ms)),
        }
    }

    /// Puts saved counters back (at start, before serving); returns how many accounts came back.
    pub fn restore(&self, snapshot: Snapshot, now_ms: u64) -> usize {
        match self {
            Store::Memory(m) => m.restore(snapshot, now_ms),
        }
    }

    /// Forgets accounts whose windows have all closed; returns how many accounts remain.
    pub fn evict_idle(&self, now_ms: u64) -> usize {
        match self {
            Store::Memory(m) => m.evict_idle(now_ms),
        }
    }
}
