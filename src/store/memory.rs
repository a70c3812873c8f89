//! The default store: counters in a sharded concurrent map, one entry per account.
//!
//! Each decision locks one shard for the few nanoseconds `decide` takes, which is what makes a
//! request's limits atomic together and exact under concurrency. Keys are already uniform 128-bit
//! hashes, so the map uses them as their own hash. Accounts whose windows have all closed are
//! evicted by a periodic sweep, so memory follows the number of recently active accounts.
//! [`MemoryStore::snapshot`] and [`MemoryStore::restore`] carry the counters across a restart
//! through the state file ([`super::snapshot`]); between two saves, a journal attached with
//! [`MemoryStore::journal`] is told which accounts changed ([`super::dirty`]), so that a hard kill
//! loses at most one journal interval.

use std::sync::{Arc, OnceLock};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::dirty::{Dirty, Wait};
use super::{journal, Backend, Snapshot, StoreError, Update};
use crate::identity::{AccountId, BuildIdHasher};
use crate::limits::{Counter, Counters};

/// One account's entry: its counters, and whether it is on the journal's lists already.
#[derive(Debug, Default)]
struct Account {
    counters: Counters,
    /// Set by the first change after a flush took the account; cleared as the next one reads it.
    journaled: bool,
}

#[derive(Debug)]
pub struct MemoryStore {
    accounts: DashMap<AccountId, Account, BuildIdHasher>,
    /// Attached once at start when `[state]` keeps a journal.
    journal: OnceLock<Arc<Dirty>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            accounts: DashMap::with_hasher(BuildIdHasher::default()),
            journal: OnceLock::new(),
        }
    }
}

/// The memory store's update: [`MemoryStore::apply`], then, for a change under a strict
/// journal, the wait until it is on disk ([`MemoryStore::durable`]), so that its answer never
/// leaves before it. The default journal costs a request nothing here.
impl Backend for MemoryStore {
    #[inline]
    async fn update<R: Send>(
        &self,
        account: AccountId,
        now_ms: u64,
        f: impl Update<R>,
    ) -> Result<R, StoreError> {
        let (answer, changed) = self.apply(account, now_ms, f);
        if changed {
            if let Some(wait) = self.durable() {
                wait.await;
            }
        }
        Ok(answer)
    }
}

impl MemoryStore {
    /// Runs `f` on `account`'s counters at `now_ms` under the account's lock; returns its answer
    /// and whether it changed them. A change is noted for the journal; an account that `f` found
    /// empty and left so is not created.
    #[inline]
    pub fn apply<R>(
        &self,
        account: AccountId,
        now_ms: u64,
        f: impl FnOnce(&mut Counters, u64) -> (R, bool),
    ) -> (R, bool) {
        match self.accounts.entry(account) {
            Entry::Occupied(mut entry) => {
                let (answer, changed) = f(&mut entry.get_mut().counters, now_ms);
                if changed {
                    self.changed(account, entry.get_mut());
                }
                (answer, changed)
            }
            Entry::Vacant(entry) => {
                let mut counters = Counters::default();
                let (answer, changed) = f(&mut counters, now_ms);
                if changed {
                    let mut entry = entry.insert(Account {
                        counters,
                        journaled: false,
                    });
                    self.changed(account, &mut entry);
                }
                (answer, changed)
            }
        }
    }

    /// Puts a changed account on the journal's lists, once per flush. Called under the
    /// account's lock; with no journal it does nothing.
    #[inline]
    fn changed(&self, account: AccountId, entry: &mut Account) {
        if entry.journaled {
            return;
        }
        if let Some(dirty) = self.journal.get() {
            entry.journaled = true;
            dirty.push(account);
        }
    }

    /// Attaches the journal's lists (once; later calls return the same ones): from now on every
    /// change is noted for the journal writer.
    pub fn journal(&self, strict: bool) -> Arc<Dirty> {
        self.journal
            .get_or_init(|| Arc::new(Dirty::new(strict)))
            .clone()
    }

    /// In strict mode, the wait of a request that has just changed counts, until its change is
    /// on disk; `None` without a strict journal.
    #[inline]
    pub fn durable(&self) -> Option<Wait> {
        self.journal.get().and_then(|dirty| dirty.wait())
    }

    /// For the journal writer: appends `account`'s open counters to `buf` as one record and
    /// clears its mark, both under its lock. False (nothing appended) if it was evicted since.
    pub fn append_record(&self, account: AccountId, now_ms: u64, buf: &mut Vec<u8>) -> bool {
        let Some(mut entry) = self.accounts.get_mut(&account) else {
            return false;
        };
        entry.journaled = false;
        journal::append_record(buf, account, entry.counters.open(now_ms));
        true
    }

    /// Replays one journal record: the account's counters become exactly the `counters` still
    /// open at `now_ms` (an account with none left is forgotten).
    pub fn replace(&self, account: AccountId, counters: &[Counter], now_ms: u64) {
        let mut open = counters.iter().filter(|c| now_ms < c.end_ms).peekable();
        if open.peek().is_none() {
            self.accounts.remove(&account);
            return;
        }
        let mut entry = self.accounts.entry(account).or_default();
        entry.counters = Counters::default();
        for c in open {
            entry.counters.restore(*c);
        }
    }

    pub fn evict_idle(&self, now_ms: u64) -> usize {
        self.accounts.retain(|_, a| !a.counters.all_expired(now_ms));
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
                let open: Vec<Counter> = entry.counters.open(now_ms).copied().collect();
                (*entry.key(), open)
            })
            .filter(|(_, open)| !open.is_empty())
            .collect();
        Snapshot {
            saved_at_ms: now_ms,
            generation: 0,
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
                entry.counters.restore(counter);
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
    use crate::limits::{CounterId, Decision, LimitKind, Receipt, Rule, Window};
    use crate::store::dirty::SHARDS;
    use crate::store::{consume, open_counters};

    fn check(store: &MemoryStore, account: AccountId, rules: &[Rule], now_ms: u64) -> Decision {
        store.apply(account, now_ms, consume(rules)).0
    }

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
            assert!(check(&store, account, &[minute], 1_000 + k as u64).is_admitted());
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
    fn a_hot_account_is_noted_once_per_flush_and_refusals_not_at_all() {
        let store = MemoryStore::default();
        let minute = Rule {
            counter: CounterId(1),
            limit: 1_000,
            window: Window::Fixed { period_ms: 60_000 },
            kind: LimitKind::Minute,
        };
        let once = Rule { limit: 1, ..minute };
        let (hot, cool, capped) = (
            AccountId::from_key(b"hot"),
            AccountId::from_key(b"cool"),
            AccountId::from_key(b"capped"),
        );
        let now = 1_000;
        assert!(check(&store, capped, &[once], now).is_admitted());
        let dirty = store.journal(false);
        let mut spare: [Vec<AccountId>; SHARDS] = Default::default();
        let taken = |spare: &mut [Vec<AccountId>; SHARDS]| {
            dirty.take(spare);
            let mut ids: Vec<AccountId> = spare.iter_mut().flat_map(|l| l.drain(..)).collect();
            ids.sort_by_key(|a| a.0);
            ids
        };
        assert_eq!(
            taken(&mut spare),
            vec![],
            "changes before the journal are the snapshot's"
        );

        for _ in 0..100 {
            assert!(check(&store, hot, &[minute], now).is_admitted());
        }
        assert!(check(&store, cool, &[minute], now).is_admitted());
        assert!(!check(&store, capped, &[once], now).is_admitted());
        let mut want = vec![hot, cool];
        want.sort_by_key(|a| a.0);
        assert_eq!(
            taken(&mut spare),
            want,
            "one entry for 100 changes; none for a refusal"
        );

        // Until the writer has read it, a noted account is not noted again...
        assert!(check(&store, hot, &[minute], now).is_admitted());
        assert_eq!(taken(&mut spare), vec![]);
        // ...and once it has, its next change is noted for the next flush.
        let mut buf = Vec::new();
        assert!(store.append_record(hot, now, &mut buf));
        assert!(
            !store.append_record(AccountId(7), now, &mut buf),
            "not tracked"
        );
        let nothing = |c: &mut Counters, now| {
            let given = c.give_back(&Receipt::default(), now);
            (given, given > 0)
        };
        assert_eq!(store.apply(hot, now, nothing), (0, false));
        assert_eq!(
            taken(&mut spare),
            vec![],
            "giving back nothing changes nothing"
        );
        assert!(check(&store, hot, &[minute], now).is_admitted());
        assert_eq!(taken(&mut spare), vec![hot]);
    }

    #[test]
    fn the_journal_flag_costs_no_memory_per_account() {
        // With smallvec's `union` layout the flag fits in the 16-byte-aligned (key, value) slot.
        assert_eq!(
            std::mem::size_of::<(AccountId, Account)>(),
            std::mem::size_of::<(AccountId, Counters)>()
        );
    }

    #[test]
    fn a_replayed_record_replaces_the_account_whole() {
        let store = MemoryStore::default();
        let alice = AccountId::from_key(b"alice");
        let c = |id, count, end_ms| Counter {
            id: CounterId(id),
            count,
            end_ms,
        };
        store.replace(alice, &[c(1, 5, 10_000), c(2, 3, 10_000)], 1_000);
        store.replace(alice, &[c(1, 9, 10_000), c(3, 1, 500)], 1_000);
        assert_eq!(
            store.apply(alice, 1_000, open_counters).0,
            vec![c(1, 9, 10_000)]
        );
        store.replace(alice, &[c(1, 2, 900)], 1_000);
        assert!(store.is_empty(), "nothing open: the account is gone");
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
            assert!(check(&before, alice, &[day], t0).is_admitted());
        }
        let snapshot = before.snapshot(t0 + 1);
        assert_eq!(snapshot.accounts.len(), 1);

        let after = MemoryStore::default();
        assert_eq!(after.restore(snapshot.clone(), t0 + 2), 1);
        let usage = *check(&after, alice, &[day], t0 + 3).usage();
        assert_eq!(
            usage.daily.map(|d| d.remaining),
            Some(11),
            "3 + 1 of 15 used"
        );

        let next_day = MemoryStore::default();
        assert_eq!(next_day.restore(snapshot, t0 + 86_400_000), 0);
        assert!(next_day.is_empty(), "yesterday's counters are not restored");
    }

    #[test]
    fn a_monthly_count_survives_a_restart_within_its_month_and_not_past_it() {
        let month = Rule {
            counter: CounterId(4),
            limit: 10,
            window: Window::UtcMonth,
            kind: LimitKind::Monthly,
        };
        let nov23 = 1_795_392_000_000; // 2026-11-23T00:00:00Z
        let dec1 = nov23 + 8 * 86_400_000;
        let before = MemoryStore::default();
        let alice = AccountId::from_key(b"alice");
        for _ in 0..4 {
            assert!(check(&before, alice, &[month], nov23).is_admitted());
        }
        let snapshot = before.snapshot(nov23 + 1);
        let after = MemoryStore::default();
        assert_eq!(after.restore(snapshot.clone(), nov23 + 7 * 86_400_000), 1);
        let usage = *check(&after, alice, &[month], dec1 - 1).usage();
        assert_eq!(
            usage.monthly.map(|m| m.remaining),
            Some(5),
            "4 + 1 of 10 used"
        );
        let next_month = MemoryStore::default();
        assert_eq!(next_month.restore(snapshot, dec1), 0);
        assert!(
            next_month.is_empty(),
            "last month's counters are not restored"
        );
    }
}
