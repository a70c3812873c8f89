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
fn expired_counters_are_reused_and_accounts_expire() {
    let mut c = Counters::default();
    assert!(decide(&[minute(1, 1)], &mut c, DAY0).is_admitted());
    assert!(!c.all_expired(DAY0 + 59_999));
    assert!(c.all_expired(DAY0 + 60_000));
    assert!(decide(&[minute(2, 1)], &mut c, DAY0 + 60_000).is_admitted());
    assert_eq!(c.iter().count(), 1, "the expired slot was reused");
}

fn receipt_of(rules: &[Rule], c: &Counters, now_ms: u64) -> Receipt {
    c.receipt(rules.iter().map(|r| r.counter), now_ms)
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
