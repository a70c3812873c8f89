//! Limit state behind one interface: counters per account, changed only by atomic updates. The
//! store holds no policy; the rules come with each call, and the decisions are the pure functions
//! of [`crate::limits`] and [`crate::penalties`], each run by a backend's one primitive,
//! [`Backend::update`] (with Redis' script for check-and-consume beside it). Each operation below
//! is written once, on top of it.
//!
//! [`Store`] is an enum rather than a trait object so the in-memory path stays a direct,
//! inlinable call on the hot path.

pub mod accounts;
mod backend;
pub mod dirty;
mod failover;
pub mod journal;
pub mod keeper;
mod memory;
pub mod redis;
pub mod snapshot;
pub mod tasks;
pub mod upstreams;

pub use crate::limits::OnFailure;
pub use accounts::AccountBook;
pub use backend::{consume, consume_listed, consume_units, open_counters, Backend, Update};
pub use failover::{FailoverStore, StoreHealth};
pub use memory::MemoryStore;
pub use redis::{Login, RedisStore};
pub use snapshot::Snapshot;
pub use upstreams::UpstreamBook;

use std::path::PathBuf;
use std::sync::Arc;

use crate::identity::AccountId;
use crate::limits::{Counter, CounterId, Counters, Decision, Receipt, Rule, Usage, WindowList};
use crate::penalties::{self, Admission, Event, JobCheck, PenaltyIds};

/// Whether an admission changed the counters: what it counted is on its receipt (nothing, for a
/// job with no rules that is not a relax job).
fn counted(admission: &Admission) -> bool {
    matches!(admission, Admission::Admitted(.., receipt) if !receipt.is_empty())
}

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

/// What an update is to a shared store's failure policy ([`FailoverStore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// It lets a request in: while Redis is down, `on_failure` decides.
    Admission,
    /// Bookkeeping after the fact (a give-back, a penalty tally): kept locally while Redis is
    /// down, whatever the policy.
    Bookkeeping,
    /// The admin's usage view: not a request's operation, so it asks Redis even while the
    /// breaker is open, and its failure does not count against Redis; the local counters then.
    Read,
    /// An operator's reset or grant (the accounts API): made in Redis, or it fails.
    Operator,
}

impl Store {
    pub fn memory() -> Self {
        Store::Memory(MemoryStore::default())
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
    /// strict journal, an admission returns once it is on disk.
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
        self.check_and_consume_units(account, rules, 1, now_ms)
            .await
    }

    /// [`Store::check_and_consume`] for a request costing `units` in every window.
    pub async fn check_and_consume_units(
        &self,
        account: AccountId,
        rules: &[Rule],
        units: u32,
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        if rules.is_empty() {
            // Nothing to check or count: no account to lock, and no Redis key to write (the
            // script would write one with no window to set its expiry by).
            return Ok(Decision::Admitted(Usage::default()));
        }
        match self {
            Store::Memory(m) => m.check_and_consume(account, rules, units, now_ms).await,
            Store::Redis(s) => Box::pin(s.check_and_consume(account, rules, units, now_ms)).await,
        }
    }

    /// [`Store::check_and_consume_units`], with every window the request was checked against
    /// listed as the decision left it: what the IETF fields name. Asked for only when they are
    /// on, so that every other request's decision carries nothing more.
    pub async fn check_and_consume_listed(
        &self,
        account: AccountId,
        rules: &[Rule],
        units: u32,
        now_ms: u64,
    ) -> Result<(Decision, WindowList), StoreError> {
        if rules.is_empty() {
            return Ok((Decision::Admitted(Usage::default()), WindowList::default()));
        }
        match self {
            Store::Memory(m) => {
                m.check_and_consume_listed(account, rules, units, now_ms)
                    .await
            }
            Store::Redis(s) => {
                let check = s.check_and_consume_listed(account, rules, units, now_ms);
                Box::pin(check).await
            }
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
        let admit = |counters: &mut Counters, now| {
            let admission = penalties::admit(rules, job, counters, now);
            let changed = counted(&admission);
            (admission, changed)
        };
        self.update(account, now_ms, Purpose::Admission, admit)
            .await
    }

    /// [`Store::admit_job`], with every window of `rules` listed as the admission left it (for
    /// the IETF fields).
    pub async fn admit_job_listed(
        &self,
        account: AccountId,
        rules: &[Rule],
        job: &JobCheck,
        now_ms: u64,
    ) -> Result<(Admission, WindowList), StoreError> {
        let admit = |counters: &mut Counters, now| {
            let admission = penalties::admit(rules, job, counters, now);
            let changed = counted(&admission);
            ((admission, WindowList::of(rules, counters, now)), changed)
        };
        self.update(account, now_ms, Purpose::Admission, admit)
            .await
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
        let give_back = |counters: &mut Counters, now| {
            let given = counters.give_back(receipt, now);
            (given, given > 0)
        };
        self.update(account, now_ms, Purpose::Bookkeeping, give_back)
            .await
    }

    /// Counts one penalty event in the account's tally for today; returns the tally.
    pub async fn record(
        &self,
        account: AccountId,
        event: Event,
        ids: &PenaltyIds,
        now_ms: u64,
    ) -> Result<u32, StoreError> {
        let record =
            |counters: &mut Counters, now| (penalties::record(event, ids, counters, now), true);
        self.update(account, now_ms, Purpose::Bookkeeping, record)
            .await
    }

    /// Zeroes the open windows of `ids` now (an operator's reset: an incident refund); returns
    /// each counter's count before.
    pub async fn reset(
        &self,
        account: AccountId,
        ids: &[CounterId],
        now_ms: u64,
    ) -> Result<Vec<(CounterId, u32)>, StoreError> {
        let zero = |counters: &mut Counters, now| {
            let before: Vec<(CounterId, u32)> =
                ids.iter().map(|&id| (id, counters.zero(id, now))).collect();
            let changed = before.iter().any(|(_, n)| *n > 0);
            (before, changed)
        };
        self.update(account, now_ms, Purpose::Operator, zero).await
    }

    /// Gives `units` back in each of `ids`' open windows (a partial refund), never below zero;
    /// returns each one's count before and after.
    pub async fn grant(
        &self,
        account: AccountId,
        ids: &[CounterId],
        units: u32,
        now_ms: u64,
    ) -> Result<Vec<(u32, u32)>, StoreError> {
        let grant = |counters: &mut Counters, now| {
            let counts: Vec<(u32, u32)> = ids
                .iter()
                .map(|&id| counters.grant(id, units, now))
                .collect();
            let changed = counts.iter().any(|(before, after)| before != after);
            (counts, changed)
        };
        self.update(account, now_ms, Purpose::Operator, grant).await
    }

    /// The account's live counters (for the usage view).
    pub async fn counters(
        &self,
        account: AccountId,
        now_ms: u64,
    ) -> Result<Vec<Counter>, StoreError> {
        self.update(account, now_ms, Purpose::Read, open_counters)
            .await
    }

    /// Runs `f` on the account's counters in whichever store this is ([`Backend::update`]).
    async fn update<R: Send>(
        &self,
        account: AccountId,
        now_ms: u64,
        purpose: Purpose,
        f: impl Update<R>,
    ) -> Result<R, StoreError> {
        match self {
            Store::Memory(m) => m.update(account, now_ms, f).await,
            Store::Redis(s) => Box::pin(s.update(account, now_ms, purpose, f)).await,
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

/// Where a book kept beside the limit state lives (the accounts' runtime records, upstream
/// accounts' health, held tasks): with Redis, there for every replica; with the memory store, a
/// JSON file beside the state file; without `[state]`, in the process only.
#[derive(Debug)]
pub enum Home {
    Process,
    File(PathBuf),
    Redis(Arc<FailoverStore>),
}

impl Home {
    /// The home for a book on `store`, whose file beside the state file is `file`.
    pub fn of(store: &Store, file: Option<PathBuf>) -> Self {
        match (store, file) {
            (Store::Redis(s), _) => Home::Redis(s.clone()),
            (Store::Memory(_), Some(file)) => Home::File(file),
            (Store::Memory(_), None) => Home::Process,
        }
    }
}
