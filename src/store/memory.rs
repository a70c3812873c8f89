//! The default store: counters in a sharded concurrent map, one entry per account.
//!
//! Each decision locks one shard for the few nanoseconds `decide` takes, which is what makes a
//! request's limits atomic together and exact under concurrency. Keys are already uniform 128-bit
//! hashes, so the map uses them as their own hash. Accounts whose windows have all closed are
//! evicted by a periodic sweep, so memory follows the number of recently active accounts.

use dashmap::DashMap;

use crate::identity::{AccountId, BuildIdHasher};
use crate::limits::{decide, Counter, Counters, Decision, Rule, Usage};

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
}
