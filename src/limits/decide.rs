//! `decide`: check every rule of a request against an account's counters, consume all or none.

use smallvec::SmallVec;

use super::{CounterId, LimitKind, Rule, Window};

/// One counter of an account: how many requests were admitted in the window ending at `end_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub id: CounterId,
    pub count: u32,
    pub end_ms: u64,
}

impl Counter {
    fn is_current(&self, now_ms: u64) -> bool {
        now_ms < self.end_ms
    }
}

/// All counters of one account. Most accounts touch one or two rules, so they live inline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters(SmallVec<[Counter; 2]>);

impl Counters {
    /// Requests already counted by `id` in its current window.
    pub fn used(&self, id: CounterId, now_ms: u64) -> u32 {
        self.find(id)
            .filter(|c| c.is_current(now_ms))
            .map_or(0, |c| c.count)
    }

    /// The live counter for `id`, if its window is still open.
    pub fn current(&self, id: CounterId, now_ms: u64) -> Option<Counter> {
        self.find(id).filter(|c| c.is_current(now_ms)).copied()
    }

    /// True when no window is open any more: the account can be forgotten.
    pub fn all_expired(&self, now_ms: u64) -> bool {
        self.0.iter().all(|c| !c.is_current(now_ms))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Counter> {
        self.0.iter()
    }

    /// The counters whose window is still open at `now_ms` (a closed one limits no one).
    pub fn open(&self, now_ms: u64) -> impl Iterator<Item = &Counter> {
        self.0.iter().filter(move |c| c.is_current(now_ms))
    }

    /// Puts a counter back as it was saved (state file, tests).
    pub fn restore(&mut self, counter: Counter) {
        match self.0.iter_mut().find(|c| c.id == counter.id) {
            Some(slot) => *slot = counter,
            None => self.0.push(counter),
        }
    }

    /// The windows `taken` (each counter with the units it took) are counting in now: what an
    /// admission took, to give back should the request be turned away after all
    /// ([`Counters::give_back`]).
    pub fn receipt(
        &self,
        taken: impl IntoIterator<Item = (CounterId, u32)>,
        now_ms: u64,
    ) -> Receipt {
        Receipt(
            taken
                .into_iter()
                .filter_map(|(id, units)| Some((id, self.current(id, now_ms)?.end_ms, units)))
                .collect(),
        )
    }

    /// Uncounts what each window on `receipt` took, where it is still the window it was
    /// counted in (never below zero). A window that has closed since is left alone (its count
    /// no longer limits anyone), and so is a newer window of the same counter. Returns how many
    /// counters were given back.
    pub fn give_back(&mut self, receipt: &Receipt, now_ms: u64) -> usize {
        let mut given = 0;
        for &(id, end_ms, units) in &receipt.0 {
            let same_window = self
                .0
                .iter_mut()
                .find(|c| c.id == id && c.end_ms == end_ms && c.is_current(now_ms));
            if let Some(c) = same_window.filter(|c| c.count > 0) {
                c.count -= units.min(c.count);
                given += 1;
            }
        }
        given
    }

    /// Zeroes `id`'s open window (it keeps its end); returns the count it had.
    pub fn zero(&mut self, id: CounterId, now_ms: u64) -> u32 {
        match self
            .0
            .iter_mut()
            .find(|c| c.id == id && c.is_current(now_ms))
        {
            Some(c) => std::mem::take(&mut c.count),
            None => 0,
        }
    }

    /// Gives `units` back in `id`'s open window, never below zero; returns the count before
    /// and after.
    pub fn grant(&mut self, id: CounterId, units: u32, now_ms: u64) -> (u32, u32) {
        match self
            .0
            .iter_mut()
            .find(|c| c.id == id && c.is_current(now_ms))
        {
            Some(c) => {
                let before = c.count;
                c.count = before.saturating_sub(units);
                (before, c.count)
            }
            None => (0, 0),
        }
    }

    fn find(&self, id: CounterId) -> Option<&Counter> {
        self.0.iter().find(|c| c.id == id)
    }

    /// Counts one event in counter `id`, opening a new `window` when the old one closed, and
    /// returns the count in the current window. For counters that are tallies rather than
    /// limits (penalty accounting): no check, just the increment.
    pub fn add(&mut self, id: CounterId, window: Window, now_ms: u64) -> u32 {
        self.bump(id, window, 1, now_ms).count
    }

    /// Counts an admitted request's `units` for `rule`, opening a new window when the old one
    /// closed.
    fn consume(&mut self, rule: &Rule, units: u32, now_ms: u64) -> &Counter {
        self.bump(rule.counter, rule.window, units, now_ms)
    }

    /// `units` more in `id`'s current window (a fresh window when it closed). Expired counters
    /// of other ids are reused before the list grows.
    fn bump(&mut self, id: CounterId, window: Window, units: u32, now_ms: u64) -> &Counter {
        let fresh = Counter {
            id,
            count: units,
            end_ms: window.end_for(now_ms),
        };
        let pos = self.0.iter().position(|c| c.id == id);
        let idx = match pos {
            Some(i) if self.0[i].is_current(now_ms) => {
                self.0[i].count = self.0[i].count.saturating_add(units);
                i
            }
            Some(i) => {
                self.0[i] = fresh;
                i
            }
            None => match self.0.iter().position(|c| !c.is_current(now_ms)) {
                Some(i) => {
                    self.0[i] = fresh;
                    i
                }
                None => {
                    self.0.push(fresh);
                    self.0.len() - 1
                }
            },
        };
        &self.0[idx]
    }
}

/// The windows one admitted request was counted in: each counter, the end of its window and
/// the units it took there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt(SmallVec<[(CounterId, u64, u32); 3]>);

impl Receipt {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One window's figures for the response headers. Seconds are `u32` (136 years): a request's
/// usage is copied from the decision to its answer several times, and three of these are 60
/// bytes where `u64`s made them 120.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUsage {
    pub limit: u32,
    pub remaining: u32,
    /// Whole seconds until this window closes (rounded up).
    pub reset_secs: u32,
    /// Window length in seconds.
    pub window_secs: u32,
    pub kind: LimitKind,
}

/// What the `X-RateLimit-*` headers report: the short window closest to its limit, and the daily
/// and monthly quotas when they apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub primary: Option<WindowUsage>,
    pub daily: Option<WindowUsage>,
    pub monthly: Option<WindowUsage>,
    /// Units the request costs in each window (`X-RateLimit-Cost`): set when more than one, or
    /// for a class whose cost is read from the body; 0: one, not shown.
    pub cost: u32,
}

impl Usage {
    /// These figures for a request costing `units` (a one-unit request's usage stays as it is).
    pub fn charged(mut self, units: u32) -> Self {
        if units > 1 {
            self.cost = units;
        }
        self
    }

    /// The figures once the request they were taken after is given back: its cost more
    /// remaining in each window.
    pub fn given_back(mut self) -> Self {
        let units = self.cost.max(1);
        let windows = [&mut self.primary, &mut self.daily, &mut self.monthly];
        for window in windows.into_iter().flatten() {
            window.give_back(units);
        }
        self
    }
}

/// Every window a request was checked against, in the order of its rules: what the IETF
/// `RateLimit` fields name, one policy each. Made only for them, beside the [`Usage`] a
/// decision reports, so that a request without them carries (and copies) nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WindowList(pub Box<[WindowUsage]>);

impl WindowList {
    /// Every window of `rules` as `counters` stand at `now_ms`.
    pub fn of(rules: &[Rule], counters: &Counters, now_ms: u64) -> Self {
        Self(
            rules
                .iter()
                .map(|r| window_usage(r, counters, now_ms))
                .collect(),
        )
    }

    /// The windows once the request they were taken after, costing `units`, is given back
    /// (as [`Usage::given_back`]).
    pub fn given_back(mut self, units: u32) -> Self {
        for window in self.0.iter_mut() {
            window.give_back(units.max(1));
        }
        self
    }
}

impl WindowUsage {
    /// `units` more remaining, never more than the limit.
    fn give_back(&mut self, units: u32) {
        self.remaining = self.remaining.saturating_add(units).min(self.limit);
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The limit that keeps the request out longest; names `X-RateLimit-Type`.
    pub kind: LimitKind,
    /// Whole seconds, rounded up, until a retry would be admitted by every limit.
    pub retry_after_secs: u64,
}

/// The outcome of checking a request against its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admitted(Usage),
    Refused(Usage, Refusal),
}

impl Decision {
    pub fn usage(&self) -> &Usage {
        match self {
            Decision::Admitted(u) | Decision::Refused(u, _) => u,
        }
    }

    pub fn is_admitted(&self) -> bool {
        matches!(self, Decision::Admitted(_))
    }
}

fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

fn saturating_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// [`decide_units`] for a request of one unit.
pub fn decide(rules: &[Rule], counters: &mut Counters, now_ms: u64) -> Decision {
    decide_units(rules, 1, counters, now_ms)
}

/// Checks every rule against `counters` at `now_ms` for a request costing `units`; when every
/// window has that many left, counts them in each. A refused request leaves `counters`
/// untouched. A request costing more than a window's whole limit is refused until that
/// window's end (and again after it: the configuration keeps such costs out).
pub fn decide_units(rules: &[Rule], units: u32, counters: &mut Counters, now_ms: u64) -> Decision {
    let mut refusal: Option<(u64, LimitKind)> = None;
    for rule in rules {
        let (used, end_ms) = match counters.current(rule.counter, now_ms) {
            Some(c) => (c.count, c.end_ms),
            None if units <= rule.limit => continue,
            None => (0, rule.window.end_for(now_ms)),
        };
        if used.saturating_add(units) > rule.limit && refusal.is_none_or(|(end, _)| end_ms > end) {
            refusal = Some((end_ms, rule.kind));
        }
    }
    if let Some((end_ms, kind)) = refusal {
        let usage = usage_of(rules, counters, now_ms).charged(units);
        let retry_after_secs = ceil_secs(end_ms - now_ms).max(1);
        return Decision::Refused(
            usage,
            Refusal {
                kind,
                retry_after_secs,
            },
        );
    }
    for rule in rules {
        counters.consume(rule, units, now_ms);
    }
    Decision::Admitted(usage_of(rules, counters, now_ms).charged(units))
}

/// The header figures for `rules` as `counters` stand now.
pub fn usage_of(rules: &[Rule], counters: &Counters, now_ms: u64) -> Usage {
    let mut usage = Usage::default();
    for rule in rules {
        let window = window_usage(rule, counters, now_ms);
        let slot = match rule.kind {
            LimitKind::Daily => &mut usage.daily,
            LimitKind::Monthly => &mut usage.monthly,
            _ => &mut usage.primary,
        };
        if slot.is_none_or(|s| window.remaining < s.remaining) {
            *slot = Some(window);
        }
    }
    usage
}

/// One rule's window as `counters` stand at `now_ms` (a window not open yet: whole, and closing
/// a full window from now).
fn window_usage(rule: &Rule, counters: &Counters, now_ms: u64) -> WindowUsage {
    let current = counters.current(rule.counter, now_ms);
    let used = current.map_or(0, |c| c.count);
    let end_ms = current.map_or_else(|| rule.window.end_for(now_ms), |c| c.end_ms);
    WindowUsage {
        limit: rule.limit,
        remaining: rule.limit.saturating_sub(used),
        reset_secs: saturating_u32(ceil_secs(end_ms - now_ms)),
        window_secs: saturating_u32(rule.window.seconds_at(now_ms)),
        kind: rule.kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::DAY_MS;
    use crate::limits::{CounterId, Window};

    /// 2026-11-23T00:00:00Z in milliseconds.
    const DAY0: u64 = 1_795_392_000_000;

    fn minute(id: u32, limit: u32) -> Rule {
        Rule {
            counter: CounterId(id),
            limit,
            window: Window::Fixed { period_ms: 60_000 },
            kind: LimitKind::Minute,
        }
    }

    fn daily(id: u32, limit: u32) -> Rule {
        Rule {
            counter: CounterId(id),
            limit,
            window: Window::UtcDay,
            kind: LimitKind::Daily,
        }
    }

    fn interval(id: u32, period_ms: u64) -> Rule {
        Rule {
            counter: CounterId(id),
            limit: 1,
            window: Window::Fixed { period_ms },
            kind: LimitKind::Interval,
        }
    }

    fn refusal(d: Decision) -> Refusal {
        match d {
            Decision::Refused(_, r) => r,
            Decision::Admitted(u) => panic!("expected a refusal, got admitted {u:?}"),
        }
    }

    #[test]
    fn minute_window_admits_limit_then_refuses_until_it_closes() {
        let rules = [minute(1, 3)];
        let mut c = Counters::default();
        let t0 = DAY0 + 10_500;
        for expected_remaining in [2, 1, 0] {
            let d = decide(&rules, &mut c, t0);
            assert_eq!(d.usage().primary.unwrap().remaining, expected_remaining);
            assert!(d.is_admitted());
        }
        let r = refusal(decide(&rules, &mut c, t0 + 59_999));
        assert_eq!(r.kind, LimitKind::Minute);
        assert_eq!(
            r.retry_after_secs, 1,
            "1 ms left rounds up to one whole second"
        );
        assert!(
            decide(&rules, &mut c, t0 + 60_000).is_admitted(),
            "admitted exactly when the window closes"
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let rules = [minute(1, 1)];
        let mut c = Counters::default();
        assert!(decide(&rules, &mut c, DAY0).is_admitted());
        assert_eq!(
            refusal(decide(&rules, &mut c, DAY0 + 1)).retry_after_secs,
            60
        );
        assert_eq!(
            refusal(decide(&rules, &mut c, DAY0 + 1_000)).retry_after_secs,
            59
        );
        assert_eq!(
            refusal(decide(&rules, &mut c, DAY0 + 1_001)).retry_after_secs,
            59
        );
        assert_eq!(
            refusal(decide(&rules, &mut c, DAY0 + 58_999)).retry_after_secs,
            2
        );
    }

    #[test]
    fn daily_quota_resets_at_utc_midnight_and_retry_after_points_there() {
        let rules = [minute(1, 100), daily(2, 2)];
        let mut c = Counters::default();
        let evening = DAY0 + DAY_MS - 3_600_000; // 23:00 UTC
        assert!(decide(&rules, &mut c, evening).is_admitted());
        assert!(decide(&rules, &mut c, evening + 1).is_admitted());
        let r = refusal(decide(&rules, &mut c, evening + 500));
        assert_eq!(r.kind, LimitKind::Daily);
        assert_eq!(r.retry_after_secs, 3_600, "until 00:00 UTC, rounded up");
        assert!(refusal(decide(&rules, &mut c, DAY0 + DAY_MS - 1)).kind == LimitKind::Daily);
        let d = decide(&rules, &mut c, DAY0 + DAY_MS);
        assert!(d.is_admitted(), "a new UTC day resets the quota");
        assert_eq!(d.usage().daily.unwrap().remaining, 1);
    }

    #[test]
    fn monthly_quota_resets_on_the_first_at_utc_midnight_whatever_the_month_length() {
        let monthly = Rule {
            counter: CounterId(3),
            limit: 2,
            window: Window::UtcMonth,
            kind: LimitKind::Monthly,
        };
        let rules = [minute(1, 100), daily(2, 100), monthly];
        // DAY0 is 2026-11-23; November has 30 days: the month ends 2026-12-01T00:00:00Z.
        let december = DAY0 + 8 * DAY_MS;
        let mut c = Counters::default();
        let d = decide(&rules, &mut c, DAY0);
        let m = d.usage().monthly.unwrap();
        assert_eq!((m.limit, m.remaining), (2, 1));
        assert_eq!(m.reset_secs, 8 * 86_400, "until December 1st");
        assert_eq!(m.window_secs, 30 * 86_400, "November's length");
        assert!(
            decide(&rules, &mut c, DAY0 + DAY_MS).is_admitted(),
            "another day, same month"
        );
        let r = refusal(decide(&rules, &mut c, december - 1_500));
        assert_eq!(r.kind, LimitKind::Monthly);
        assert_eq!(
            r.retry_after_secs, 2,
            "until 00:00 UTC on the 1st, rounded up"
        );
        let d = decide(&rules, &mut c, december);
        assert!(d.is_admitted(), "a new month resets the quota");
        let m = d.usage().monthly.unwrap();
        assert_eq!(m.remaining, 1);
        assert_eq!(m.window_secs, 31 * 86_400, "December's length");
        assert_eq!(
            d.usage().daily.unwrap().remaining,
            99,
            "the daily quota counts on its own"
        );
    }

    #[test]
    fn a_request_costing_units_takes_them_from_every_window_or_none() {
        let rules = [minute(1, 10), daily(2, 7)];
        let mut c = Counters::default();
        let d = decide_units(&rules, 3, &mut c, DAY0);
        assert!(d.is_admitted());
        assert_eq!(d.usage().primary.unwrap().remaining, 7);
        assert_eq!(d.usage().daily.unwrap().remaining, 4);
        assert_eq!(d.usage().cost, 3);
        assert!(decide_units(&rules, 3, &mut c, DAY0 + 1).is_admitted());
        // One unit left today: a request of 3 is refused by the day, one of 1 admitted.
        let r = refusal(decide_units(&rules, 3, &mut c, DAY0 + 2));
        assert_eq!(r.kind, LimitKind::Daily);
        assert_eq!(c.used(CounterId(1), DAY0 + 2), 6, "a refusal takes nothing");
        assert!(decide_units(&rules, 1, &mut c, DAY0 + 3).is_admitted());
        // A cost above a window's whole limit is never admitted, even on fresh counters.
        let mut fresh = Counters::default();
        let r = refusal(decide_units(&rules, 11, &mut fresh, DAY0));
        assert_eq!((r.kind, r.retry_after_secs), (LimitKind::Daily, 86_400));
        assert_eq!(fresh.iter().count(), 0);
    }

    #[test]
    fn a_receipt_gives_back_the_units_it_took() {
        let rules = [minute(1, 10)];
        let mut c = Counters::default();
        assert!(decide_units(&rules, 4, &mut c, DAY0).is_admitted());
        let receipt = c.receipt([(CounterId(1), 4)], DAY0);
        assert!(decide_units(&rules, 2, &mut c, DAY0).is_admitted());
        assert_eq!(c.give_back(&receipt, DAY0 + 1), 1);
        assert_eq!(c.used(CounterId(1), DAY0 + 1), 2);
        assert_eq!(c.give_back(&receipt, DAY0 + 1), 1);
        assert_eq!(c.used(CounterId(1), DAY0 + 1), 0, "never below zero");
    }

    #[test]
    fn refused_request_consumes_nothing_from_any_limit() {
        let rules = [minute(1, 5), daily(2, 1)];
        let mut c = Counters::default();
        assert!(decide(&rules, &mut c, DAY0).is_admitted());
        let before = c.clone();
        let d = decide(&rules, &mut c, DAY0 + 10);
        assert_eq!(refusal(d).kind, LimitKind::Daily);
        assert_eq!(c, before);
        assert_eq!(
            d.usage().primary.unwrap().remaining,
            4,
            "the minute counter was not charged"
        );
    }

    #[test]
    fn the_limit_that_blocks_longest_names_the_refusal() {
        let rules = [minute(1, 1), daily(2, 1)];
        let mut c = Counters::default();
        assert!(decide(&rules, &mut c, DAY0).is_admitted());
        let r = refusal(decide(&rules, &mut c, DAY0 + 1_000));
        assert_eq!(r.kind, LimitKind::Daily);
        assert_eq!(r.retry_after_secs, (DAY_MS - 1_000) / 1000);
    }

    #[test]
    fn interval_spacing_admits_one_request_per_period() {
        let rules = [interval(1, 3_000)];
        let mut c = Counters::default();
        assert!(decide(&rules, &mut c, DAY0).is_admitted());
        let r = refusal(decide(&rules, &mut c, DAY0 + 1));
        assert_eq!((r.kind, r.retry_after_secs), (LimitKind::Interval, 3));
        assert_eq!(
            refusal(decide(&rules, &mut c, DAY0 + 2_001)).retry_after_secs,
            1
        );
        assert!(decide(&rules, &mut c, DAY0 + 3_000).is_admitted());
        assert!(!decide(&rules, &mut c, DAY0 + 5_999).is_admitted());
        assert!(decide(&rules, &mut c, DAY0 + 6_000).is_admitted());
    }

    #[test]
    fn ten_per_second_window() {
        let rules = [Rule {
            kind: LimitKind::Second,
            ..interval(1, 1_000)
        }];
        let rules = [Rule {
            limit: 10,
            ..rules[0]
        }];
        let mut c = Counters::default();
        for _ in 0..10 {
            assert!(decide(&rules, &mut c, DAY0 + 100).is_admitted());
        }
        let r = refusal(decide(&rules, &mut c, DAY0 + 900));
        assert_eq!((r.kind, r.retry_after_secs), (LimitKind::Second, 1));
        assert!(decide(&rules, &mut c, DAY0 + 1_100).is_admitted());
    }

    #[test]
    fn headers_report_the_tightest_short_window() {
        let rules = [
            minute(1, 10),
            Rule {
                limit: 2,
                ..interval(2, 1_000)
            },
        ];
        let mut c = Counters::default();
        let u = *decide(&rules, &mut c, DAY0).usage();
        assert_eq!(u.primary.map(|p| (p.limit, p.remaining)), Some((2, 1)));
        assert_eq!(u.daily, None);
    }

    #[test]
    fn a_window_list_has_every_window_in_rule_order() {
        let rules = [
            minute(1, 10),
            Rule {
                limit: 2,
                ..interval(2, 1_000)
            },
            daily(3, 100),
        ];
        let mut c = Counters::default();
        assert!(decide(&rules, &mut c, DAY0).is_admitted());
        let d = decide(&rules, &mut c, DAY0 + 500);
        let list = WindowList::of(&rules, &c, DAY0 + 500);
        let figures: Vec<_> = list
            .0
            .iter()
            .map(|w| (w.kind, w.limit, w.remaining, w.reset_secs, w.window_secs))
            .collect();
        assert_eq!(
            figures,
            [
                (LimitKind::Minute, 10, 8, 60, 60),
                (LimitKind::Interval, 2, 0, 1, 1),
                (LimitKind::Daily, 100, 98, 86_400, 86_400),
            ],
            "the minute too, which the primary window (the tighter interval) hides"
        );
        assert_eq!(d.usage().primary.map(|p| p.kind), Some(LimitKind::Interval));
        let back = list.given_back(1);
        let remaining: Vec<u32> = back.0.iter().map(|w| w.remaining).collect();
        assert_eq!(
            remaining,
            [9, 1, 99],
            "given back in every window, never past its limit"
        );
        assert_eq!(
            WindowList::of(&rules, &Counters::default(), DAY0).0[0].remaining,
            10,
            "a window not open yet is whole"
        );
    }

    #[test]
    fn expired_counters_are_reused_and_accounts_expire() {
        let mut c = Counters::default();
        assert!(decide(&[minute(1, 1)], &mut c, DAY0).is_admitted());
        assert!(!c.all_expired(DAY0 + 59_999));
        assert!(c.all_expired(DAY0 + 60_000));
        assert!(decide(&[minute(2, 1)], &mut c, DAY0 + 60_000).is_admitted());
        assert_eq!(c.iter().count(), 1, "the expired slot was reused");
    }

    fn receipt_of(rules: &[Rule], c: &Counters, now_ms: u64) -> Receipt {
        c.receipt(rules.iter().map(|r| (r.counter, 1)), now_ms)
    }

    #[test]
    fn a_given_back_request_leaves_every_window_as_before_it() {
        let rules = [minute(1, 3), daily(2, 100)];
        let mut c = Counters::default();
        assert!(decide(&rules, &mut c, DAY0 + 1_000).is_admitted());
        let before = c.clone();
        assert!(decide(&rules, &mut c, DAY0 + 2_000).is_admitted());
        let receipt = receipt_of(&rules, &c, DAY0 + 2_000);
        assert_eq!(c.give_back(&receipt, DAY0 + 30_000), 2);
        assert_eq!(c, before);
        let u = *decide(&rules, &mut c, DAY0 + 30_001).usage();
        assert_eq!(u.primary.map(|p| p.remaining), Some(1), "3 − 2 admitted");
        assert_eq!(u.daily.map(|d| d.remaining), Some(98));
    }

    #[test]
    fn a_window_that_closed_or_reopened_since_is_not_given_back() {
        let rules = [minute(1, 3), daily(2, 100)];
        let mut c = Counters::default();
        assert!(decide(&rules, &mut c, DAY0 + 50_000).is_admitted());
        let receipt = receipt_of(&rules, &c, DAY0 + 50_000);
        // The minute closes at DAY0 + 110 s; a request at 120 s opens the next one.
        assert!(decide(&rules, &mut c, DAY0 + 120_000).is_admitted());
        assert_eq!(c.give_back(&receipt, DAY0 + 121_000), 1, "only the day");
        assert_eq!(
            c.used(CounterId(1), DAY0 + 121_000),
            1,
            "the new minute keeps its request"
        );
        assert_eq!(c.used(CounterId(2), DAY0 + 121_000), 1);
        // After 00:00 UTC the day it was counted in is gone too.
        assert_eq!(c.give_back(&receipt, DAY0 + DAY_MS), 0);
    }

    #[test]
    fn an_interval_given_back_admits_the_next_request_at_once() {
        let rules = [interval(1, 3_000)];
        let mut c = Counters::default();
        assert!(decide(&rules, &mut c, DAY0).is_admitted());
        assert!(!decide(&rules, &mut c, DAY0 + 10).is_admitted());
        let receipt = receipt_of(&rules, &c, DAY0);
        assert_eq!(c.give_back(&receipt, DAY0 + 20), 1);
        assert!(decide(&rules, &mut c, DAY0 + 30).is_admitted());
    }
}
