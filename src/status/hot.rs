//! The accounts closest to their limits, kept for the status page without a scan of the store
//! (which a Redis store cannot afford) and without a sort on the request path.
//!
//! Every decided request writes its account's tightest window into one slot of a fixed table,
//! chosen by the account's hash: O(1), one lock that is never waited for, no allocation. Two
//! accounts that share a slot keep the one nearer its limit (or the newer one once the older's
//! window has closed), so an account close to its limit is not pushed out by a quiet one. The
//! table's thousand entries are sorted only when the page asks, off the request path.

use std::sync::{Mutex, TryLockError};

use crate::classify::ClassId;
use crate::identity::{AccountId, TierId};
use crate::limits::{LimitKind, Usage, WindowUsage};

/// Slots in the table: bounds its memory (about 80 KB) and the status page's sort.
const SLOTS: usize = 1024;

/// An account's standing in its tightest window, as of its last request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TightestWindow {
    pub account: AccountId,
    pub tier: TierId,
    pub class: ClassId,
    pub kind: LimitKind,
    pub used: u32,
    pub limit: u32,
    /// When the window closes (clock ms).
    pub resets_at_ms: u64,
}

impl TightestWindow {
    /// The tighter of a request's windows, by fraction used; `None` when no limit applies.
    pub fn of(
        account: AccountId,
        tier: TierId,
        class: ClassId,
        usage: &Usage,
        now_ms: u64,
    ) -> Option<Self> {
        let mut window: Option<&WindowUsage> = None;
        for w in [&usage.primary, &usage.daily, &usage.monthly]
            .into_iter()
            .flatten()
        {
            // The later of two equally tight windows, as `max_by` would pick.
            if window.is_none_or(|best| !looser(w, best)) {
                window = Some(w);
            }
        }
        let window = window?;
        Some(Self {
            account,
            tier,
            class,
            kind: window.kind,
            used: window.limit.saturating_sub(window.remaining),
            limit: window.limit,
            resets_at_ms: now_ms + u64::from(window.reset_secs) * 1_000,
        })
    }

    /// Fraction of the window used, 0.0 to 1.0.
    pub fn fraction(&self) -> f64 {
        if self.limit == 0 {
            return 1.0;
        }
        f64::from(self.used.min(self.limit)) / f64::from(self.limit)
    }

    fn is_open(&self, now_ms: u64) -> bool {
        now_ms < self.resets_at_ms
    }
}

/// Whether `a` has used a smaller fraction of its window than `b`: the fractions compared by
/// cross-multiplying, without a division (a limit of 0 counts as all used).
fn looser(a: &WindowUsage, b: &WindowUsage) -> bool {
    let used = |w: &WindowUsage| match w.limit {
        0 => (1, 1),
        limit => (
            u64::from(limit.saturating_sub(w.remaining)),
            u64::from(limit),
        ),
    };
    let ((ua, la), (ub, lb)) = (used(a), used(b));
    ua * lb < ub * la
}

/// A lossy table of the latest standing of recently seen accounts.
#[derive(Debug)]
pub struct HotAccounts {
    slots: Box<[Mutex<Option<TightestWindow>>]>,
}

impl Default for HotAccounts {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl HotAccounts {
    /// Notes an account's standing after a decision. A slot another worker is writing at this
    /// instant (the same busy account on two cores) is skipped rather than waited for: the
    /// account's next request notes it again, and the request path never blocks here.
    pub fn record(&self, standing: TightestWindow, now_ms: u64) {
        let slot = &self.slots[(standing.account.0 as usize) % SLOTS];
        let mut held = match slot.try_lock() {
            Ok(held) => held,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let replace = match &*held {
            None => true,
            Some(old) => {
                old.account == standing.account
                    || !old.is_open(now_ms)
                    || standing.fraction() >= old.fraction()
            }
        };
        if replace {
            *held = Some(standing);
        }
    }

    /// The `n` accounts nearest their limits whose windows are still open, nearest first.
    pub fn top(&self, n: usize, now_ms: u64) -> Vec<TightestWindow> {
        let mut open: Vec<TightestWindow> = self
            .slots
            .iter()
            .filter_map(|slot| *slot.lock().unwrap_or_else(|p| p.into_inner()))
            .filter(|s| s.is_open(now_ms))
            .collect();
        open.sort_by(|a, b| {
            b.fraction()
                .total_cmp(&a.fraction())
                .then(a.resets_at_ms.cmp(&b.resets_at_ms))
        });
        open.truncate(n);
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(account: u128, used: u32, limit: u32, resets_at_ms: u64) -> TightestWindow {
        TightestWindow {
            account: AccountId(account),
            tier: TierId(0),
            class: ClassId(0),
            kind: LimitKind::Minute,
            used,
            limit,
            resets_at_ms,
        }
    }

    #[test]
    fn the_tightest_window_of_a_request_is_kept() {
        let minute = WindowUsage {
            limit: 10,
            remaining: 8,
            reset_secs: 30,
            window_secs: 60,
            kind: LimitKind::Minute,
        };
        let daily = WindowUsage {
            limit: 100,
            remaining: 10,
            reset_secs: 3_600,
            window_secs: 86_400,
            kind: LimitKind::Daily,
        };
        let usage = Usage {
            primary: Some(minute),
            daily: Some(daily),
            monthly: None,
            cost: 1,
        };
        let s = TightestWindow::of(AccountId(7), TierId(1), ClassId(2), &usage, 1_000).unwrap();
        assert_eq!((s.kind, s.used, s.limit), (LimitKind::Daily, 90, 100));
        assert_eq!(s.resets_at_ms, 1_000 + 3_600_000);
        assert!(
            TightestWindow::of(AccountId(7), TierId(1), ClassId(2), &Usage::default(), 0).is_none()
        );
    }

    #[test]
    fn top_is_nearest_first_and_drops_closed_windows() {
        let hot = HotAccounts::default();
        hot.record(standing(1, 5, 10, 60_000), 0);
        hot.record(standing(2, 9, 10, 60_000), 0);
        hot.record(standing(3, 1, 10, 60_000), 0);
        hot.record(standing(4, 10, 10, 5_000), 0); // full, but its window closes at 5 s
        let at = |now| -> Vec<u128> { hot.top(3, now).iter().map(|s| s.account.0).collect() };
        assert_eq!(at(1_000), vec![4, 2, 1]);
        assert_eq!(at(6_000), vec![2, 1, 3]);
    }

    #[test]
    fn a_slot_keeps_the_account_nearer_its_limit() {
        let hot = HotAccounts::default();
        let (busy, quiet) = (5, 5 + SLOTS as u128); // the same slot
        hot.record(standing(busy, 9, 10, 60_000), 0);
        hot.record(standing(quiet, 1, 10, 60_000), 0);
        assert_eq!(hot.top(5, 0)[0].account.0, busy);
        // its own next request replaces it, even when lower (a new window)
        hot.record(standing(busy, 1, 10, 120_000), 61_000);
        assert_eq!(hot.top(5, 61_000)[0].used, 1);
        // once its window closed, another account takes the slot
        hot.record(standing(quiet, 0, 10, 300_000), 130_000);
        assert_eq!(hot.top(5, 130_000)[0].account.0, quiet);
    }
}
