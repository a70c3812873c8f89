//! One behaviour, two implementations: the memory store decides in Rust (`limits::decide`,
//! `penalties::admit`), the Redis store in a Lua script (plain requests) and in Rust on counters
//! read from Redis (job submissions, penalty tallies, give-backs). This test runs the same random
//! sequences of operations through both — several accounts, several rules per request, windows
//! of a second, a minute, an hour, the UTC day and fixed intervals, small limits so refusals
//! happen, time steps that land on and around window ends and cross 00:00 UTC — and requires the
//! same answer at every step: admitted or refused, every usage figure, `Retry-After` and the
//! refusal's kind, receipts, tallies, and the counters each store then holds.
//!
//! Time is exact on both sides in the main run: the Redis store takes the caller's `now_ms`
//! instead of Redis `TIME` (`RedisStore::use_caller_clock`), so each operation runs at the same
//! instant in both. A second run takes the production branch — Redis `TIME` plus the offset the
//! shared clock sets, and key expiry by `PEXPIRE` — with the offset set before each operation so
//! that the server's time is the caller's plus the few milliseconds of a round trip. Its instants
//! are spread so that no two are within 25 ms of a whole number of seconds apart (nor of 00:00
//! UTC), which keeps every window's end clear of every instant; an operation whose round trip
//! took 10 ms or more leaves its case unjudged. Window ends (in counters and receipts) then
//! agree to within those milliseconds, everything else exactly. A failure is shrunk to a minimal
//! sequence and printed.

#[path = "support/redis_server.rs"]
#[allow(dead_code)] // the TLS server is for tests/redis.rs
mod redis_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use floodgate::identity::AccountId;
use floodgate::limits::{CounterId, LimitKind, Receipt, Rule, Window};
use floodgate::penalties::{
    Event, IncorrectAction, IncorrectPolicy, JobCheck, JobFacts, Mode, PenaltyIds, RelaxAction,
    RelaxPolicy, TierPenalties,
};
use floodgate::store::{FailoverStore, OnFailure, RedisStore, Store};
use redis_server::RedisServer;

/// `n` cases, or `PROPTEST_CASES` when set (for a deeper run than CI's).
fn cases(n: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// 2026-01-01T00:00:00Z.
const DAY0_MS: u64 = 1_767_225_600_000;
const DAY_MS: u64 = 86_400_000;

/// The windows a request's rules are drawn from: each its own counter.
const POOL: [(LimitKind, Window); 9] = [
    (LimitKind::Second, Window::Fixed { period_ms: 1_000 }),
    (LimitKind::Minute, Window::Fixed { period_ms: 60_000 }),
    (
        LimitKind::Hour,
        Window::Fixed {
            period_ms: 3_600_000,
        },
    ),
    (LimitKind::Daily, Window::UtcDay),
    (LimitKind::Interval, Window::Fixed { period_ms: 3_000 }),
    (LimitKind::Interval, Window::Fixed { period_ms: 250 }),
    // As long as the per-second window, another kind: two limits refusing until the same
    // instant, where which one names the refusal is decided by rule order.
    (LimitKind::Interval, Window::Fixed { period_ms: 1_000 }),
    // A second minute counter, as a shared limit next to a class's own.
    (LimitKind::Minute, Window::Fixed { period_ms: 60_000 }),
    // The calendar month: its end computed by each store on its own.
    (LimitKind::Monthly, Window::UtcMonth),
];

/// The rules of pool entries `mask` (bit i = entry i), with the case's limits; `tighter`
/// lowers every limit by one (a reload, or another tier sharing the counter).
fn rules(mask: u16, limits: &[u32; 9], tighter: bool) -> Vec<Rule> {
    (0..POOL.len())
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| {
            let (kind, window) = POOL[i];
            Rule {
                counter: CounterId(100 + i as u32),
                limit: if tighter {
                    limits[i].saturating_sub(1).max(1)
                } else {
                    limits[i]
                },
                window,
                kind,
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    /// A plain request costing `units`: `Store::check_and_consume_units`.
    Request {
        account: usize,
        mask: u16,
        tighter: bool,
        units: u32,
    },
    /// A job submission costing `units`: `Store::admit_job`.
    Job {
        account: usize,
        mask: u16,
        relax: bool,
        units: u32,
    },
    /// An incorrect task or an earned relax job: `Store::record`.
    Record { account: usize, incorrect: bool },
    /// A job admitted earlier turned away after all: `Store::give_back` with its receipt.
    GiveBack { pick: usize },
    /// An operator's reset of the counters of `mask`'s rules (`Store::reset`), or with
    /// `grant`, units given back in the first of them (`Store::grant`).
    Adjust {
        account: usize,
        mask: u16,
        grant: Option<u32>,
    },
}

#[derive(Debug, Clone)]
struct Case {
    start_ms: u64,
    limits: [u32; 9],
    penalties: TierPenalties,
    /// Milliseconds to move the clock by, then the operation.
    steps: Vec<(u64, Op)>,
}

/// 00:00 UTC on the 1st of the month `m` months after January 2026 ends.
fn month_end(m: usize) -> u64 {
    (0..=m).fold(DAY0_MS, |at, _| floodgate::clock::next_month_start_ms(at))
}

fn start_ms() -> impl Strategy<Value = u64> {
    let day = (0..400u64).prop_map(|d| DAY0_MS + d * DAY_MS);
    prop_oneof![
        // The last three minutes of a UTC day: the day boundary is crossed.
        3 => (day.clone(), 1..=180_000u64).prop_map(|(d, before)| d + DAY_MS - before),
        // Exactly a second, a minute or an hour before 00:00 UTC: windows that close together
        // with the day; and the last millisecond of a day.
        2 => (day.clone(), prop::sample::select(vec![1u64, 1_000, 60_000, 3_600_000]))
            .prop_map(|(d, before)| d + DAY_MS - before),
        1 => (day, 0..DAY_MS).prop_map(|(d, t)| d + t),
        // The last three minutes of a calendar month (of 2026 and 2027, February and
        // December among them): the month boundary is crossed.
        2 => (0..24usize, 1..=180_000u64).prop_map(|(m, before)| month_end(m) - before),
    ]
}

/// Steps that stay inside windows, land on or beside their ends, and jump past them.
fn step_ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0u64),
        4 => 1..300u64,
        3 => 300..1_500u64,
        2 => prop::sample::select(vec![249u64, 250, 251, 999, 1_000, 1_001, 2_999, 3_000, 3_001]),
        2 => 1_500..70_000u64,
        1 => prop::sample::select(vec![59_999u64, 60_000, 60_001, 3_599_999, 3_600_000]),
        1 => 70_000..4_000_000u64,
    ]
}

fn penalties() -> impl Strategy<Value = TierPenalties> {
    let incorrect = prop::option::of((0..3u32, any::<bool>(), any::<bool>()).prop_map(
        |(per_day, block, shadow)| IncorrectPolicy {
            per_day,
            action: if block {
                IncorrectAction::Block
            } else {
                IncorrectAction::Flag
            },
            shadow,
        },
    ));
    let relax = prop::option::of((0..3u32, any::<bool>(), any::<bool>()).prop_map(
        |(per_day, reject, shadow)| RelaxPolicy {
            per_day,
            action: if reject {
                RelaxAction::Reject
            } else {
                RelaxAction::Surcharge { multiplier: 2 }
            },
            shadow,
        },
    ));
    (incorrect, relax).prop_map(|(incorrect, relax)| TierPenalties { incorrect, relax })
}

fn op() -> impl Strategy<Value = Op> {
    let account = 0..3usize;
    // One rule, or any several (none: a class without limits).
    let mask = prop_oneof![
        1 => Just(0u16),
        8 => (0..POOL.len()).prop_map(|i| 1u16 << i),
        16 => 1..(1u16 << POOL.len()),
    ];
    // Most requests cost one unit; some several, now and then more than a limit allows.
    let units = prop_oneof![6 => Just(1u32), 3 => 2..=3u32, 1 => 4..=12u32];
    prop_oneof![
        8 => (account.clone(), mask.clone(), prop::bool::weighted(0.1), units.clone())
            .prop_map(|(account, mask, tighter, units)| Op::Request { account, mask, tighter, units }),
        3 => (account.clone(), mask.clone(), any::<bool>(), units)
            .prop_map(|(account, mask, relax, units)| Op::Job { account, mask, relax, units }),
        1 => (account.clone(), mask, prop::option::of(1..=5u32))
            .prop_map(|(account, mask, grant)| Op::Adjust { account, mask, grant }),
        1 => (account, any::<bool>())
            .prop_map(|(account, incorrect)| Op::Record { account, incorrect }),
        1 => any::<usize>().prop_map(|pick| Op::GiveBack { pick }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    // Short windows allow 1–4, the hour, the day and the month a few more; an interval 1.
    let limits = (
        prop::array::uniform3(1..=4u32),
        1..=6u32,
        1..=8u32,
        1..=10u32,
    )
        .prop_map(|([s, m, m2], h, d, mo)| [s, m, h, d, 1, 1, 1, m2, mo]);
    (
        start_ms(),
        limits,
        penalties(),
        prop::collection::vec((step_ms(), op()), 1..=40),
    )
        .prop_map(|(start_ms, limits, penalties, steps)| Case {
            start_ms,
            limits,
            penalties,
            steps,
        })
}

/// How the Redis store's time follows the case's.
trait ServerClock {
    /// Brings the server's clock to `now_ms`, before an operation at that instant.
    fn bring_to(&self, now_ms: u64);
    /// Whether the operation since [`bring_to`](Self::bring_to) ran close enough to its instant
    /// to be judged.
    fn kept_up(&self) -> bool;
    /// How far apart the two stores' window ends may be, in milliseconds.
    fn slack_ms(&self) -> u64;
}

/// The Redis store decides at the caller's `now_ms`: exact.
struct CallerClock;

impl ServerClock for CallerClock {
    fn bring_to(&self, _: u64) {}
    fn kept_up(&self) -> bool {
        true
    }
    fn slack_ms(&self) -> u64 {
        0
    }
}

/// Runs `case` through both stores; the first difference fails the case.
async fn run_case(
    case: &Case,
    n: u64,
    redis: &Store,
    clock: &dyn ServerClock,
) -> Result<(), TestCaseError> {
    let memory = Store::memory();
    let accounts: Vec<AccountId> = (0..3)
        .map(|a| AccountId::from_key(format!("case{n}:account{a}").as_bytes()))
        .collect();
    let ids = PenaltyIds::default();
    // What each store gave for one admitted job: its receipt there.
    let mut receipts: Vec<(AccountId, Receipt, Receipt)> = Vec::new();
    let mut now = case.start_ms;
    let failed = |what: &str, e: floodgate::store::StoreError| {
        TestCaseError::fail(format!("{what}: redis store failed: {e}"))
    };
    for (step, (dt, op)) in case.steps.iter().enumerate() {
        now += dt;
        clock.bring_to(now);
        let touched = match op {
            Op::Request {
                account,
                mask,
                tighter,
                units,
            } => {
                let rules = rules(*mask, &case.limits, *tighter);
                let acct = accounts[*account];
                // Every window listed too (for the IETF fields): both stores list them alike.
                let mem = memory
                    .check_and_consume_listed(acct, &rules, *units, now)
                    .await
                    .unwrap();
                let red = redis
                    .check_and_consume_listed(acct, &rules, *units, now)
                    .await
                    .map_err(|e| failed("check_and_consume", e))?;
                if !clock.kept_up() {
                    return Err(TestCaseError::reject("a round trip took 10 ms or more"));
                }
                prop_assert_eq!(mem, red, "step {} at {}: request {:?}", step, now, op);
                acct
            }
            Op::Job {
                account,
                mask,
                relax,
                units,
            } => {
                let rules = rules(*mask, &case.limits, false);
                let acct = accounts[*account];
                let job = JobCheck {
                    policy: case.penalties,
                    ids,
                    facts: JobFacts {
                        mode: if *relax { Mode::Relax } else { Mode::Fast },
                        relax_counted: true,
                    },
                    units: *units,
                };
                let (mem, mem_windows) = memory
                    .admit_job_listed(acct, &rules, &job, now)
                    .await
                    .unwrap();
                let (red, red_windows) = redis
                    .admit_job_listed(acct, &rules, &job, now)
                    .await
                    .map_err(|e| failed("admit_job", e))?;
                if !clock.kept_up() {
                    return Err(TestCaseError::reject("a round trip took 10 ms or more"));
                }
                prop_assert_eq!(
                    mem_windows,
                    red_windows,
                    "step {} at {}: windows",
                    step,
                    now
                );
                use floodgate::penalties::Admission::Admitted;
                match (mem, red) {
                    // Receipts name window ends: compared when time is exact, and in the
                    // counters they leave either way.
                    (Admitted(mu, mm, mr), Admitted(ru, rm, rr)) => {
                        prop_assert_eq!(
                            (mu, mm),
                            (ru, rm),
                            "step {} at {}: job {:?}",
                            step,
                            now,
                            op
                        );
                        if clock.slack_ms() == 0 {
                            prop_assert_eq!(&mr, &rr, "step {} at {}: receipt", step, now);
                        }
                        receipts.push((acct, mr, rr));
                    }
                    (mem, red) => {
                        prop_assert_eq!(mem, red, "step {} at {}: job {:?}", step, now, op)
                    }
                }
                acct
            }
            Op::Record { account, incorrect } => {
                let acct = accounts[*account];
                let event = if *incorrect {
                    Event::Incorrect
                } else {
                    Event::RelaxEarned
                };
                let mem = memory.record(acct, event, &ids, now).await.unwrap();
                let red = redis
                    .record(acct, event, &ids, now)
                    .await
                    .map_err(|e| failed("record", e))?;
                prop_assert_eq!(mem, red, "step {} at {}: {:?}", step, now, op);
                acct
            }
            Op::Adjust {
                account,
                mask,
                grant,
            } => {
                let acct = accounts[*account];
                let ids: Vec<_> = rules(*mask, &case.limits, false)
                    .iter()
                    .map(|r| r.counter)
                    .collect();
                match (grant, ids.first()) {
                    (None, _) => {
                        let mem = memory.reset(acct, &ids, now).await.unwrap();
                        let red = redis
                            .reset(acct, &ids, now)
                            .await
                            .map_err(|e| failed("reset", e))?;
                        prop_assert_eq!(mem, red, "step {} at {}: {:?}", step, now, op);
                    }
                    (Some(units), Some(&id)) => {
                        let mem = memory.grant(acct, &[id], *units, now).await.unwrap();
                        let red = redis
                            .grant(acct, &[id], *units, now)
                            .await
                            .map_err(|e| failed("grant", e))?;
                        prop_assert_eq!(mem, red, "step {} at {}: {:?}", step, now, op);
                    }
                    (Some(_), None) => continue,
                }
                acct
            }
            Op::GiveBack { pick } => {
                if receipts.is_empty() {
                    continue;
                }
                let (acct, mem_receipt, red_receipt) = receipts.swap_remove(pick % receipts.len());
                let mem = memory.give_back(acct, &mem_receipt, now).await.unwrap();
                let red = redis
                    .give_back(acct, &red_receipt, now)
                    .await
                    .map_err(|e| failed("give_back", e))?;
                prop_assert_eq!(
                    mem,
                    red,
                    "step {} at {}: give back {:?}",
                    step,
                    now,
                    mem_receipt
                );
                acct
            }
        };
        prop_assert!(
            !redis.is_degraded(),
            "step {}: the redis store fell back to its failure policy",
            step
        );
        // The counters each store holds afterwards (any order: a hash has none).
        // The same counters; their window ends the same to within the clock's slack.
        let held = |mut c: Vec<floodgate::limits::Counter>| {
            c.sort_by_key(|c| c.id);
            c
        };
        let mem = held(memory.counters(touched, now).await.unwrap());
        let red = held(
            redis
                .counters(touched, now)
                .await
                .map_err(|e| failed("counters", e))?,
        );
        let slack = clock.slack_ms();
        let alike = mem.len() == red.len()
            && mem.iter().zip(&red).all(|(m, r)| {
                (m.id, m.count) == (r.id, r.count) && m.end_ms.abs_diff(r.end_ms) <= slack
            });
        prop_assert!(
            alike,
            "step {} at {}: counters after {:?}: memory {:?}, redis {:?}",
            step,
            now,
            op,
            mem,
            red
        );
    }
    Ok(())
}

/// A fail-closed Redis store on `server` whose breaker never opens within a run; `caller_clock`
/// as [`RedisStore::use_caller_clock`].
fn redis_store(server: &RedisServer, caller_clock: bool) -> Arc<FailoverStore> {
    let store =
        RedisStore::new(&server.url(), Duration::from_secs(5), &Default::default()).unwrap();
    store.use_caller_clock(caller_clock);
    Arc::new(FailoverStore::new(
        store,
        Duration::from_secs(30),
        OnFailure::FailClosed,
        1,
        Duration::from_secs(60),
    ))
}

/// Runs `n` cases drawn from `cases` through the memory store and `redis`, on `clock`.
fn run_cases(
    n: u32,
    cases_from: impl Strategy<Value = Case>,
    redis: &Store,
    clock: &dyn ServerClock,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let case_no = AtomicU64::new(0);
    let mut runner = TestRunner::new(cases(n));
    let outcome = runner.run(&cases_from, |case| {
        let n = case_no.fetch_add(1, Ordering::Relaxed);
        runtime.block_on(run_case(&case, n, redis, clock))
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

#[test]
fn the_memory_store_and_the_redis_script_decide_alike() {
    let server = RedisServer::start();
    let redis = Store::Redis(redis_store(&server, true));
    run_cases(96, case(), &redis, &CallerClock);
}

/// The pool entries a case on the server's clock may use: not the intervals, whose short
/// periods would bring window ends back near the instants.
const ALIGNED: u16 = 0b1_1000_1111;

/// A case on the server's clock: operation `k` at whole seconds plus `12 + 25 k` ms, so two
/// instants are never within 25 ms of a whole number of seconds apart, nor within 12 ms of a
/// whole second (00:00 UTC).
fn case_on_server_time() -> impl Strategy<Value = Case> {
    let secs = prop_oneof![
        4 => Just(0u64),
        4 => 1..3u64,
        2 => prop::sample::select(vec![59u64, 60, 61, 3_599, 3_600]),
        1 => 3..4_000u64,
    ];
    let day = (0..400u64).prop_map(|d| DAY0_MS + d * DAY_MS);
    let start = (day, 1..=200u64).prop_map(|(d, before)| d + DAY_MS - before * 1_000 + 12);
    (case(), start, prop::collection::vec(secs, 40)).prop_map(|(mut case, start, secs)| {
        case.start_ms = start;
        for (k, ((dt, op), secs)) in case.steps.iter_mut().zip(secs).enumerate() {
            *dt = secs * 1_000 + if k == 0 { 0 } else { 25 };
            if let Op::Request { mask, .. } | Op::Job { mask, .. } | Op::Adjust { mask, .. } = op {
                *mask &= ALIGNED;
            }
        }
        case
    })
}

/// Redis `TIME` plus an offset set before each operation, as the shared clock sets it.
struct RedisTime<'a> {
    store: &'a FailoverStore,
    conn: std::cell::RefCell<redis::Connection>,
    /// The server's time when the offset was last set.
    set_at: std::cell::Cell<i64>,
}

impl RedisTime<'_> {
    /// The server's `TIME` in milliseconds.
    fn server_ms(&self) -> i64 {
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query(&mut *self.conn.borrow_mut())
            .unwrap();
        secs * 1_000 + micros / 1_000
    }
}

impl ServerClock for RedisTime<'_> {
    fn bring_to(&self, now_ms: u64) {
        let server = self.server_ms();
        self.set_at.set(server);
        self.store
            .redis()
            .set_clock_offset_ms(now_ms as i64 - server);
    }
    fn kept_up(&self) -> bool {
        self.server_ms() - self.set_at.get() < 10
    }
    fn slack_ms(&self) -> u64 {
        10
    }
}

#[test]
fn the_memory_store_and_the_redis_script_decide_alike_on_redis_time() {
    let server = RedisServer::start();
    let failover = redis_store(&server, false);
    let redis = Store::Redis(failover.clone());
    let clock = RedisTime {
        store: &failover,
        conn: redis::Client::open(server.url())
            .and_then(|c| c.get_connection())
            .unwrap()
            .into(),
        set_at: 0.into(),
    };
    run_cases(32, case_on_server_time(), &redis, &clock);
}
