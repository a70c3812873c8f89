//! The default store: counters in a sharded concurrent map, one entry per account.
//!
//! Each decision locks one shard for the few nanoseconds `decide` takes, which is what makes a
//! request's limits atomic together and exact under concurrency. Keys are already uniform 128-bit
//! hashes, so the map uses them as their own hash. Accounts whose windows have all closed are
//! evicted by a periodic sweep, so memory follows the number of recently active accounts.
//! [`MemoryStore::snapshot`] and [`MemoryStore::restore`] carry the counters across a restart
//! through the state file ([`super::snapshot`]).

use dashmap::DashMap;

use super::Snapshot;
use crate::identity::{AccountId, BuildIdHasher};
use crate::limits::{decide, Counter, Counters, Decision, Receipt, Rule, Usage};
use crate::penalties::{self, Admission, Event, JobCheck, PenaltyIds};

#[derive(Debug)]
pub struct MemoryStore {
    accounts: DashMap<AccountId, Counters, BuildIdHasher>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            accounts: DashMap::with_hasher(BuildIdHasher::default()),
        }
    }
}

impl MemoryStore {
    pub fn check_and_consume(&self, account: AccountId, rules: &[Rule], now_ms: u64) -> Decision {
        if rules.is_empty() {
            return Decision::Admitted(Usage::default());
        }
        let mut counters = self.accounts.entry(account).or_default();
        decide(rules, &mut counters, now_ms)
    }

    pub fn admit_job(
        &self,
        account: AccountId,
        rules: &[Rule],
        job: &JobCheck,
        now_ms: u64,
    ) -> Admission {
        let mut counters = self.accounts.entry(account).or_default();
        penalties::admit(rules, job, &mut counters, now_ms)
    }

    pub fn give_back(&self, account: AccountId, receipt: &Receipt, now_ms: u64) -> usize {
        match self.accounts.get_mut(&account) {
            Some(mut counters) => counters.give_back(receipt, now_ms),
            None => 0,
        }
    }

    pub fn record(&self, account: AccountId, event: Event, ids: &PenaltyIds, now_ms: u64) -> u32 {
        let mut counters = self.accounts.entry(account).or_default();
        penalties::record(event, ids, &mut counters, now_ms)
    }

    pub fn counters(&self, account: AccountId, now_ms: u64) -> Vec<Counter> {
        self.accounts
            .get(&account)
            .map(|c| c.iter().filter(|c| now_ms < c.end_ms).copied().collect())
            .unwrap_or_default()
    }

    pub fn evict_idle(&self, now_ms: u64) -> usize {
        self.accounts
            .retain(|_, counters| !counters.all_expired(now_ms));
        self.accounts.len()
    }

    /// The open windows of every account. Each account is copied under its shard lock, so its
    /// counters agree with each other; accounts are not frozen together (no global pause), which
    /// a state file written every few seconds does not need.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        let accounts = self
            .accounts
            .iter()
            .map(|entry| {
                let open: Vec<Counter> = entry
                    .iter()
                    .filter(|c| now_ms < c.end_ms)
                    .copied()
                    .collect();
                (*entry.key(), open)
            })
            .filter(|(_, open)| !open.is_empty())
            .collect();
        Snapshot {
            saved_at_ms: now_ms,
            accounts,
        }
    }

    /// Puts saved counters back, skipping windows closed by `now_ms`; a saved counter replaces
    /// one with the same id. Returns how many accounts got a counter back.
    pub fn restore(&self, snapshot: Snapshot, now_ms: u64) -> usize {
        let mut restored = 0;
        for (account, counters) in snapshot.live(now_ms).accounts {
            let mut entry = self.accounts.entry(account).or_default();
            for counter in counters {
                entry.restore(counter);
            }
            restored += 1;
        }
        restored
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{CounterId, LimitKind, Window};

    #[test]
    fn idle_accounts_are_evicted_once_every_window_closed() {
        let store = MemoryStore::default();
        let minute = Rule {
            counter: CounterId(1),
            limit: 5,
            window: Window::Fixed { period_ms: 60_000 },
            kind: LimitKind::Minute,
        };
        for k in 0..1_000u32 {
            let account = AccountId::from_key(&k.to_le_bytes());
            assert!(store
                .check_and_consume(account, &[minute], 1_000 + k as u64)
                .is_admitted());
        }
        assert_eq!(
            store.evict_idle(60_999 + 500),
            500,
            "accounts whose minute has not closed stay"
        );
        assert_eq!(store.evict_idle(61_000 + 999), 0);
        assert!(store.is_empty());
    }

    #[test]
    fn a_restored_store_continues_where_the_snapshot_left_off() {
        let day = Rule {
            counter: CounterId(2),
            limit: 15,
            window: Window::UtcDay,
            kind: LimitKind::Daily,
        };
        let t0 = 1_795_392_000_000 + 3_600_000;
        let before = MemoryStore::default();
        let alice = AccountId::from_key(b"alice");
        for _ in 0..3 {
            assert!(before.check_and_consume(alice, &[day], t0).is_admitted());
        }
        let snapshot = before.snapshot(t0 + 1);
        assert_eq!(snapshot.accounts.len(), 1);

        let after = MemoryStore::default();
        assert_eq!(after.restore(snapshot.clone(), t0 + 2), 1);
        let usage = *after.check_and_consume(alice, &[day], t0 + 3).usage();
        assert_eq!(
            usage.daily.map(|d| d.remaining),
            Some(11),
            "3 + 1 of 15 used"
        );

        let next_day = MemoryStore::default();
        assert_eq!(next_day.restore(snapshot, t0 + 86_400_000), 0);
        assert!(next_day.is_empty(), "yesterday's counters are not restored");
    }
}
