//! Several replicas on one real Redis server: exact shared quotas, minute and day windows on the
//! Redis clock, failure policies while Redis is down, recovery without restart. The scenarios
//! one replica must pass on either store are in tests/limits.rs, queue.rs and penalties.rs.

mod support;

use std::time::{Duration, Instant};

use support::process::Process;
use support::redis_server::RedisServer;
use support::{Gate, TestClient, Upstream, DAY0_MS};

/// Tests that put hundreds of requests through at once, or hold store operations to the default
/// 50 ms timeout, run alone (`TURNS.write()`); the others run side by side (`TURNS.read()`). On
/// a two-core machine another test's load would otherwise be what slows a store operation.
static TURNS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Failure tests use a short store timeout; the others a generous one, so a loaded CI machine
/// does not turn a slow round trip into a failure.
fn config(redis: &RedisServer, on_failure: &str, timeout: &str, limits: &str) -> String {
    let store = format!(
        "timeout = \"{timeout}\"\non_failure = \"{on_failure}\"\nreplicas = 2\n\
         breaker_failures = 2\nbreaker_cooldown = \"300ms\""
    );
    redis_store(&redis.url(), &store) + &limited(limits)
}

/// The `[store]` section of a Redis store at `url`, with `settings` (`key = value` lines).
fn redis_store(url: &str, settings: &str) -> String {
    format!("[store]\ntype = \"redis\"\nurl = \"{url}\"\n{settings}\n")
}

/// `/limited` in class `limited`, limited for tier `t` by `limits` (`per_minute = 2`, ...).
fn limited(limits: &str) -> String {
    format!(
        "[[route]]\npath = \"/limited\"\nclass = \"limited\"\n\
         [[tiers.t.limits]]\nclasses = [\"limited\"]\n{limits}\n"
    )
}

/// `POST /slow` in job class `job`, with tier `t`'s queue settings (`concurrency = 1`, ...).
fn slow_job(tier: &str) -> String {
    format!(
        "[[route]]\nmethod = \"POST\"\npath = \"/slow\"\nclass = \"job\"\n\
         [[jobs]]\nclasses = [\"job\"]\n[tiers.t]\n{tier}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_exactly_the_shared_quota() {
    let _turn = TURNS.write().await;
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = config(&redis, "fail_closed", "2s", "per_minute = 100");
    let gates: Vec<Gate> = (0..3)
        .map(|_| Gate::start(&cfg, &up.url(), DAY0_MS))
        .collect();
    let mut tasks = Vec::new();
    for i in 0..600 {
        let url = gates[i % 3].url("/limited");
        tasks.push(tokio::spawn(async move {
            TestClient::new().post(&url, "shared-account").await
        }));
    }
    let mut remaining = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let a = t.await.unwrap();
        match a.status.as_u16() {
            200 => remaining.push(a.num("x-ratelimit-remaining")),
            429 => {
                refused += 1;
                assert_eq!(a.num("x-ratelimit-remaining"), 0);
                assert_eq!(a.header("x-ratelimit-type"), Some("minute"));
            }
            s => panic!("unexpected status {s}: {:?}", a.body),
        }
    }
    assert_eq!((remaining.len(), refused), (100, 500));
    assert_eq!(
        up.count(),
        100,
        "exactly the quota reached the upstream over three replicas"
    );
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..100).collect::<Vec<u64>>(),
        "each admitted request saw its own count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minute_and_day_windows_hold_across_replicas_on_the_redis_clock() {
    let _turn = TURNS.read().await;
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = config(&redis, "fail_closed", "2s", "per_minute = 5\nper_day = 20");
    let gates: Vec<Gate> = (0..3)
        .map(|_| Gate::start(&cfg, &up.url(), DAY0_MS))
        .collect();
    let c = TestClient::new();
    let noon = DAY0_MS + 12 * 3_600_000;
    for minute in 0..4u64 {
        for g in &gates {
            g.set_redis_time(noon + minute * 61_000);
        }
        for i in 0..5 {
            let a = c.post(&gates[i % 3].url("/limited"), "acct").await;
            assert_eq!(a.status, 200, "minute {minute}, request {i}");
        }
        let a = c.post(&gates[2].url("/limited"), "acct").await;
        if minute < 3 {
            assert_eq!(
                (a.status.as_u16(), a.header("x-ratelimit-type")),
                (429, Some("minute"))
            );
            let retry = a.num("retry-after");
            assert!((59..=61).contains(&retry), "Retry-After {retry}");
        } else {
            // 20 used: the daily quota now keeps the request out longest
            assert_eq!(
                (a.status.as_u16(), a.header("x-ratelimit-type")),
                (429, Some("daily"))
            );
        }
    }
    for g in &gates {
        g.set_redis_time(noon + 10 * 60_000);
    }
    let a = c.post(&gates[0].url("/limited"), "acct").await;
    assert_eq!(
        (a.status.as_u16(), a.header("x-ratelimit-type")),
        (429, Some("daily")),
        "20 a day in total"
    );
    let to_midnight = (DAY0_MS + 86_400_000 - (noon + 10 * 60_000)) / 1000;
    assert!(a.num("retry-after").abs_diff(to_midnight) <= 2);
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 0);
    for g in &gates {
        g.set_redis_time(DAY0_MS + 86_400_000 + 1_000);
    }
    let a = c.post(&gates[1].url("/limited"), "acct").await;
    assert_eq!(a.status, 200, "a new UTC day on the Redis clock");
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 19);
    assert_eq!(up.count(), 21);
}

async fn metrics(c: &TestClient, gate: &Gate) -> String {
    String::from_utf8_lossy(&c.get(&gate.admin_url("/metrics")).await.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_503_fast_and_recovers_without_restart() {
    let _turn = TURNS.read().await;
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    let gate = Gate::start(
        &config(&redis, "fail_closed", "100ms", "per_minute = 3"),
        &up.url(),
        DAY0_MS,
    );
    let c = TestClient::new();
    assert_eq!(c.post(&gate.url("/limited"), "k").await.status, 200);
    redis.stop();
    for _ in 0..5 {
        let started = Instant::now();
        let a = c.post(&gate.url("/limited"), "k").await;
        assert_eq!(a.status, 503);
        assert!(a.header("retry-after").is_some());
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "bounded by the store timeout: {:?}",
            started.elapsed()
        );
    }
    // Under load: 50 requests at once while Redis is down, every one answered fast.
    let mut load = Vec::new();
    for i in 0..50 {
        let url = gate.url("/limited");
        load.push(tokio::spawn(async move {
            let started = Instant::now();
            let a = TestClient::new().post(&url, &format!("load{i}")).await;
            (a.status.as_u16(), started.elapsed())
        }));
    }
    for t in load {
        let (status, took) = t.await.unwrap();
        assert_eq!(status, 503);
        assert!(
            took < Duration::from_millis(1_000),
            "no request hangs on a dead Redis: {took:?}"
        );
    }
    assert_eq!(c.get(&gate.admin_url("/readyz")).await.status, 503);
    assert!(metrics(&c, &gate)
        .await
        .contains("floodgate_store_degraded 1"));
    redis.restart();
    let mut recovered = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if c.post(&gate.url("/limited"), "k2").await.status == 200 {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "limits apply again once Redis is back");
    assert_eq!(c.post(&gate.url("/limited"), "k2").await.status, 200);
    assert_eq!(c.post(&gate.url("/limited"), "k2").await.status, 200);
    assert_eq!(
        c.post(&gate.url("/limited"), "k2").await.status,
        429,
        "the shared quota is enforced again"
    );
    assert!(metrics(&c, &gate)
        .await
        .contains("floodgate_store_degraded 0"));
    assert_eq!(c.get(&gate.admin_url("/readyz")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_admits_and_local_enforces_this_replicas_share() {
    let _turn = TURNS.read().await;
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    let open = Gate::start(
        &config(&redis, "fail_open", "100ms", "per_minute = 2"),
        &up.url(),
        DAY0_MS,
    );
    let local = Gate::start(
        &config(&redis, "local", "100ms", "per_minute = 10"),
        &up.url(),
        DAY0_MS,
    );
    let c = TestClient::new();
    redis.stop();
    for _ in 0..5 {
        assert_eq!(
            c.post(&open.url("/limited"), "k").await.status,
            200,
            "fail_open admits"
        );
    }
    assert_eq!(
        statuses(&c, &local.url("/limited"), "k", 7).await,
        [200, 200, 200, 200, 200, 429, 429],
        "10 shared by 2 replicas: 5 here"
    );
    assert_eq!(
        c.get(&open.admin_url("/readyz")).await.status,
        200,
        "degraded but serving"
    );
}

fn job_config(redis: &RedisServer, lease_ttl: &str) -> String {
    let store = format!("timeout = \"100ms\"\nlease_ttl = \"{lease_ttl}\"");
    redis_store(&redis.url(), &store)
        + &slow_job("concurrency = 3\nmax_queue = 100\nmax_wait = \"20s\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_concurrency_cap_holds_across_three_replicas() {
    let _turn = TURNS.read().await;
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = job_config(&redis, "5s");
    let gates: Vec<Gate> = (0..3)
        .map(|_| Gate::start(&cfg, &up.url(), DAY0_MS))
        .collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let url = gates[i % 3].url("/slow?ms=200");
        tasks.push(tokio::spawn(async move {
            TestClient::new()
                .send(
                    "POST",
                    &url,
                    &[("x-api-key", "tenant"), ("x-job", &format!("j{i}"))],
                    "{}",
                )
                .await
        }));
    }
    let mut waits = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200);
        waits.push(a.num("x-queue-wait-ms"));
    }
    assert_eq!(up.count(), 12);
    assert!(
        up.max_in_flight() <= 3,
        "the upstream saw {} of the account's jobs at once",
        up.max_in_flight()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(750),
        "12 jobs of 200 ms, 3 at a time: 4 rounds"
    );
    waits.sort_unstable();
    eprintln!("queue waits across replicas (ms): {waits:?}");
    // Hand-off across replicas: from a job's end at the upstream to the next job's arrival.
    let seen = up.seen();
    let mut ends: Vec<Instant> = seen
        .iter()
        .filter_map(|s| up.ended(s.header("x-job").unwrap()))
        .collect();
    ends.sort();
    let mut starts: Vec<Instant> = seen.iter().map(|s| s.at).collect();
    starts.sort();
    let mut gaps: Vec<Duration> = starts[3..]
        .iter()
        .zip(&ends)
        .map(|(start, end)| start.saturating_duration_since(*end))
        .collect();
    gaps.sort();
    eprintln!("shared-slot hand-off (job end -> next job at the upstream): {gaps:?}");
    assert!(
        gaps[gaps.len() / 2] < Duration::from_millis(100),
        "hand-off median {:?}",
        gaps[gaps.len() / 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_slot_returns_when_its_lease_expires() {
    let _turn = TURNS.read().await;
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    // A replica that took the account's only slot and died: its lease is never renewed.
    let crashed = floodgate::store::RedisStore::new(
        &redis.url(),
        Duration::from_millis(200),
        &Default::default(),
    )
    .unwrap();
    let tenant = floodgate::identity::AccountId::from_key(b"tenant");
    let key = format!("tenant:{:032x}", tenant.0);
    assert!(crashed
        .lease_acquire(&key, 1, "dead-replica:1", Duration::from_millis(1_500))
        .await
        .unwrap());
    drop(crashed);
    let cfg = job_config(&redis, "1500ms").replace("concurrency = 3", "concurrency = 1");
    let gate = Gate::start(&cfg, &up.url(), DAY0_MS);
    let started = Instant::now();
    let a = TestClient::new()
        .send(
            "POST",
            &gate.url("/slow?ms=10"),
            &[("x-api-key", "tenant")],
            "{}",
        )
        .await;
    assert_eq!(a.status, 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_000),
        "waited for the dead lease: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(4_000),
        "the slot came back at the lease expiry: {waited:?}"
    );
}

/// Penalties and relax allowances live in Redis too: two replicas share one account's tallies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penalty_and_relax_tallies_are_shared_across_replicas() {
    let _turn = TURNS.read().await;
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let store = redis_store(
        &redis.url(),
        "timeout = \"2s\"\non_failure = \"fail_closed\"",
    );
    let cfg = store
        + r#"
        [[route]]
        method = "POST"
        path = "/submit/imagine"
        class = "imagine"
        [[jobs]]
        classes = ["imagine"]
        [incorrect_tasks]
        [[incorrect_tasks.match]]
        pointer = "/code"
        values = [24]
        [relax]
        mode_pointer = "/process_mode"
        [tiers.free.incorrect_tasks]
        per_day = 2
        action = "block"
        [tiers.free.relax]
        per_day = 2
        action = "reject"
        "#;
    let (a, b) = (
        Gate::start(&cfg, &up.url(), DAY0_MS),
        Gate::start(&cfg, &up.url(), DAY0_MS),
    );
    let c = TestClient::new();
    let banned = r#"{"code":24,"description":"Banned prompt detected"}"#;
    let relax = r#"{"prompt": "x", "process_mode": "relax"}"#;
    // One relax job on each replica uses the shared allowance of 2; a third is rejected.
    for gate in [&a, &b] {
        let r = c
            .send(
                "POST",
                &gate.url("/submit/imagine"),
                &[("x-api-key", "acct")],
                relax,
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let r = c
        .send(
            "POST",
            &a.url("/submit/imagine"),
            &[("x-api-key", "acct")],
            relax,
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-ratelimit-type")),
        (429, Some("relax"))
    );
    // One incorrect task answered through each replica: the next job is blocked on both.
    for gate in [&a, &b] {
        let r = c
            .send(
                "POST",
                &gate.url("/submit/imagine"),
                &[("x-api-key", "acct"), ("x-upstream-body", banned)],
                "{}",
            )
            .await;
        assert_eq!(r.status, 200);
    }
    for gate in [&b, &a] {
        let r = c
            .send(
                "POST",
                &gate.url("/submit/imagine"),
                &[("x-api-key", "acct")],
                "{}",
            )
            .await;
        assert_eq!(
            (r.status.as_u16(), r.header("x-ratelimit-type")),
            (429, Some("penalty"))
        );
    }
    assert_eq!(
        up.count_prefix("/submit/"),
        4,
        "refused jobs never reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_turned_away_by_a_full_queue_gives_its_quota_back_in_redis() {
    let _turn = TURNS.read().await;
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = redis_store(&redis.url(), "timeout = \"2s\"")
        + &slow_job("concurrency = 1\nmax_queue = 0")
        + "[[tiers.t.limits]]\nclasses = [\"job\"]\nper_minute = 2\n";
    let (first, second) = (
        Gate::start(&cfg, &up.url(), DAY0_MS),
        Gate::start(&cfg, &up.url(), DAY0_MS),
    );
    let running = {
        let url = first.url("/slow?ms=600");
        tokio::spawn(async move { TestClient::new().post(&url, "{}").await })
    };
    first.until_jobs(|running, _| running == 1).await;
    let c = TestClient::new();
    let full = c.post(&first.url("/slow?ms=10"), "{}").await;
    assert_eq!(full.status, 429);
    assert_eq!(full.json()["error"], "queue_full");
    assert_eq!(
        full.num("x-ratelimit-remaining"),
        1,
        "shows the running job alone"
    );
    assert_eq!(running.await.unwrap().status, 200);
    // The other replica sees the quota given back: one more job fits in the minute, then not.
    let next = c.post(&second.url("/slow?ms=10"), "{}").await;
    assert_eq!(
        (next.status.as_u16(), next.num("x-ratelimit-remaining")),
        (200, 0)
    );
    let over = c.post(&second.url("/slow?ms=10"), "{}").await;
    assert_eq!(over.header("x-ratelimit-type"), Some("minute"));
    assert_eq!(up.count(), 2);
}

/// The store's latency histogram as (upper bound in seconds, cumulative count), from `/metrics`.
fn latency_buckets(text: &str) -> Vec<(f64, u64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("floodgate_store_latency_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The smallest bucket bound under which a `q` share of the observations fall.
fn quantile(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0, |b| b.1);
    let rank = (total as f64 * q).ceil() as u64;
    buckets
        .iter()
        .find(|b| b.1 >= rank.max(1))
        .map_or(f64::NAN, |b| b.0)
}

/// After Redis comes back, a replica that saw traffic during the outage and one that saw none
/// both decide every request on Redis again within 100 ms: no 503, no policy fallback, no error
/// counted for a connection Redis closed while it was down.
async fn a_redis_restart_costs_no_request_after_the_outage(on_failure: &str) {
    let _turn = TURNS.write().await;
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    // The default timeout and breaker (3 failures, 1 s cooldown).
    let cfg = config(&redis, on_failure, "50ms", "per_minute = 100")
        .replace("breaker_failures = 2", "")
        .replace("breaker_cooldown = \"300ms\"", "");
    assert!(!cfg.contains("breaker"));
    let (busy, idle) = (
        Gate::start(&cfg, &up.url(), DAY0_MS),
        Gate::start(&cfg, &up.url(), DAY0_MS),
    );
    // Fresh client connections spread over each replica's workers: every worker holds a
    // connection to Redis when it dies.
    for _ in 0..8 {
        for g in [&busy, &idle] {
            let a = TestClient::new().post(&g.url("/limited"), "warm").await;
            assert_eq!(a.status, 200);
        }
    }
    redis.stop();
    // The busy replica keeps getting traffic until Redis is back: its policy applies, its
    // breaker is open when Redis returns.
    for _ in 0..8 {
        let a = TestClient::new()
            .post(&busy.url("/limited"), "outage")
            .await;
        let expected = if on_failure == "fail_closed" {
            503
        } else {
            200
        };
        assert_eq!(a.status, expected, "{on_failure} while Redis is down");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let c = TestClient::new();
    assert_eq!(
        support::metric(&metrics(&c, &busy).await, "floodgate_store_degraded"),
        1.0
    );
    redis.restart();
    let back = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Redis came back empty: the account starts from a full quota, counted across replicas.
    for i in 0..12u64 {
        let g = if i % 2 == 0 { &busy } else { &idle };
        let a = TestClient::new().post(&g.url("/limited"), "after").await;
        assert_eq!(
            (
                a.status.as_u16(),
                a.header("x-ratelimit-limit"),
                a.header("x-ratelimit-remaining").map(str::to_owned)
            ),
            (200, Some("100"), Some((99 - i).to_string())),
            "{on_failure}: request {i}, {:?} after Redis came back: {:?}",
            back.elapsed(),
            a.body
        );
    }
    for (name, g) in [("busy", &busy), ("idle", &idle)] {
        let text = metrics(&c, g).await;
        assert_eq!(
            support::metric(&text, "floodgate_store_degraded"),
            0.0,
            "{on_failure}: the {name} replica is healthy again"
        );
        if name == "idle" {
            assert_eq!(
                support::metric(&text, "floodgate_store_errors_total"),
                0.0,
                "{on_failure}: a connection Redis closed is no failure"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_costs_no_request_under_fail_open() {
    a_redis_restart_costs_no_request_after_the_outage("fail_open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_costs_no_request_under_fail_closed() {
    a_redis_restart_costs_no_request_after_the_outage("fail_closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_costs_no_request_under_local() {
    a_redis_restart_costs_no_request_after_the_outage("local").await;
}

/// 600 parallel requests over three replicas on a quota of 100, twenty times (a fresh account
/// each time), with the default 50 ms store timeout: exactly 100 admitted each time, none turned
/// into a 503 by a slow store operation. Prints the store latency histogram of the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_600_on_a_quota_of_100_admit_exactly_100_every_time() {
    let _turn = TURNS.write().await;
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    // The store's timeout leaves room for a loaded 2-core machine: 600 decisions at once on
    // three replicas in this one process queue behind each other (the test is about exact
    // counts; at 50 ms a busy machine turned a few of them into 503s).
    let cfg = config(&redis, "fail_closed", "250ms", "per_minute = 100");
    let gates: Vec<Gate> = (0..3)
        .map(|_| Gate::start(&cfg, &up.url(), DAY0_MS))
        .collect();
    // One keep-alive client per replica, its connections opened beforehand, and every worker's
    // Redis connection dialled (scripts loaded) by a decision for another account: each burst
    // is 600 decisions rather than 600 TCP handshakes and six dials in this same process. The
    // answers do not matter (a dial under this load may outlast the timeout: a 503; the test
    // upstream resets a few of 600 connections opened at once: a 502).
    let clients: Vec<TestClient> = (0..3).map(|_| TestClient::new()).collect();
    let mut warm = Vec::new();
    for i in 0..600 {
        let (client, url) = (clients[i % 3].clone(), gates[i % 3].url("/limited"));
        warm.push(tokio::spawn(async move { client.post(&url, "warm").await }));
    }
    for t in warm {
        t.await.unwrap();
    }
    let warmed = up.count_prefix("/limited");
    let c = TestClient::new();
    let mut errors_before = Vec::new();
    for g in &gates {
        let text = metrics(&c, g).await;
        errors_before.push(support::metric(&text, "floodgate_store_errors_total"));
    }
    let started = Instant::now();
    for rep in 0..20 {
        let account = format!("burst-{rep}");
        let mut tasks = Vec::new();
        for i in 0..600 {
            let (client, url) = (clients[i % 3].clone(), gates[i % 3].url("/limited"));
            let account = account.clone();
            tasks.push(tokio::spawn(
                async move { client.post(&url, &account).await },
            ));
        }
        let (mut remaining, mut other) = (Vec::new(), Vec::new());
        for t in tasks {
            let a = t.await.unwrap();
            match a.status.as_u16() {
                200 => remaining.push(a.num("x-ratelimit-remaining")),
                429 => assert_eq!(a.header("x-ratelimit-type"), Some("minute")),
                s => other.push((s, a.body)),
            }
        }
        assert!(
            other.is_empty(),
            "burst {rep}: {} not decided, first {:?}",
            other.len(),
            other.first()
        );
        remaining.sort_unstable();
        assert_eq!(
            remaining,
            (0..100).collect::<Vec<u64>>(),
            "burst {rep}: exactly 100 admitted, each with its own count"
        );
    }
    let took = started.elapsed();
    assert_eq!(up.count_prefix("/limited") - warmed, 20 * 100);

    let mut all: Vec<(f64, u64)> = Vec::new();
    for (g, before) in gates.iter().zip(errors_before) {
        let text = metrics(&c, g).await;
        let errors = support::metric(&text, "floodgate_store_errors_total");
        assert_eq!(errors, before, "no store error during the bursts");
        for (i, b) in latency_buckets(&text).into_iter().enumerate() {
            match all.get_mut(i) {
                Some(sum) => sum.1 += b.1,
                None => all.push(b),
            }
        }
    }
    eprintln!(
        "20 bursts of 600 in {took:?}; store latency over {} decisions: p50 <= {}s, p99 <= {}s, max <= {}s; buckets {all:?}",
        all.last().map_or(0, |b| b.1),
        quantile(&all, 0.5),
        quantile(&all, 0.99),
        quantile(&all, 1.0),
    );
}

/// One thread (a worker's event loop): a connection Redis closed — noticed while idle or only
/// when used — is dialled again and the operation retried within its timeout; after a restart
/// the empty script cache costs no failure either (scripts load with the connection, and EVAL
/// stands in if they vanish later).
#[tokio::test]
async fn a_store_operation_outlives_a_redis_restart_and_a_script_flush() {
    let _turn = TURNS.write().await;
    let mut redis = RedisServer::start();
    let store = floodgate::store::RedisStore::new(
        &redis.url(),
        Duration::from_millis(50),
        &Default::default(),
    )
    .unwrap();
    let acquire = |lease: &'static str| store.lease_acquire("t", 10, lease, Duration::from_secs(5));
    assert!(acquire("a").await.unwrap());
    // Redis restarts while the connection is idle: its driver sees the connection close.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    redis.restart();
    assert!(acquire("b").await.expect("first operation after a restart"));
    // Restarted between two operations with nothing run in between: the closed connection is
    // found out by the operation itself.
    redis.stop();
    redis.restart();
    assert!(acquire("c")
        .await
        .expect("first operation on a stale connection"));
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(acquire("d").await.expect("a flushed script cache"));
    let leases: u64 = redis::cmd("ZCARD")
        .arg(floodgate::store::redis::lease_key("t"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(leases, 2, "Redis came back empty: c and d since");
    assert!(acquire("e").await.unwrap());
}

/// The status page's store panel: healthy with the breaker closed; while Redis is down,
/// degraded since a time with the breaker open; healthy again once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_redis_store_health() {
    let _turn = TURNS.read().await;
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    let gate = Gate::start(
        &config(&redis, "fail_open", "100ms", "per_minute = 3"),
        &up.url(),
        DAY0_MS,
    );
    let c = TestClient::new();
    let url = gate.admin_url("/status.json");
    let store =
        |c: TestClient, url: String| async move { c.get(&url).await.json()["store"].clone() };
    assert_eq!(c.post(&gate.url("/limited"), "k").await.status, 200);
    let s = store(c.clone(), url.clone()).await;
    assert_eq!(s["kind"], "redis");
    assert_eq!(s["degraded"], false);
    assert_eq!(s["breaker"], "closed");
    assert_eq!(s["on_failure"], "fail_open");
    redis.stop();
    for _ in 0..3 {
        assert_eq!(
            c.post(&gate.url("/limited"), "k").await.status,
            200,
            "fail_open"
        );
    }
    let degraded = support::eventually(Duration::from_secs(5), || {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let s = store(c, url).await;
            s["degraded"] == true && s["degraded_since_ms"].is_u64()
        }
    })
    .await;
    assert!(degraded, "{}", store(c.clone(), url.clone()).await);
    let s = store(c.clone(), url.clone()).await;
    assert!(s["breaker"] == "open" || s["breaker"] == "half-open", "{s}");
    redis.restart();
    let healthy = support::eventually(Duration::from_secs(5), || {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let s = store(c, url).await;
            s["degraded"] == false && s["breaker"] == "closed"
        }
    })
    .await;
    assert!(healthy, "{}", store(c.clone(), url.clone()).await);
}

/// Every key the store writes expires: Redis holds only what some window still needs. An
/// operation that changes no counter writes nothing — a job of a class without limits, a
/// give-back whose windows have closed (its key already expired), a request without rules —
/// so it cannot leave a key behind without an expiry.
#[tokio::test]
async fn no_key_is_left_without_an_expiry() {
    use floodgate::limits::{CounterId, LimitKind, Rule, Window};
    use floodgate::penalties::{
        Admission, IncorrectAction, IncorrectPolicy, JobCheck, JobFacts, PenaltyIds, TierPenalties,
    };
    use floodgate::store::{FailoverStore, OnFailure, RedisStore, Store};

    let _turn = TURNS.read().await;
    let redis = RedisServer::start();
    let store = Store::Redis(std::sync::Arc::new(FailoverStore::new(
        RedisStore::new(&redis.url(), Duration::from_secs(2), &Default::default()).unwrap(),
        Duration::from_secs(30),
        OnFailure::FailClosed,
        1,
        Duration::from_secs(60),
    )));
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let account = floodgate::identity::AccountId::from_key;
    let now = DAY0_MS; // unused by a store on the Redis clock
    let job = JobCheck {
        policy: TierPenalties {
            incorrect: Some(IncorrectPolicy {
                per_day: 3,
                action: IncorrectAction::Block,
                shadow: false,
            }),
            relax: None,
        },
        ids: PenaltyIds::default(),
        facts: JobFacts::default(),
        units: 1,
    };
    let second = Rule {
        counter: CounterId(7),
        limit: 5,
        window: Window::Fixed { period_ms: 1_000 },
        kind: LimitKind::Second,
    };

    // A job of a class without limits, for a tier with an incorrect-task allowance.
    let admitted = store.admit_job(account(b"a"), &[], &job, now).await;
    assert!(
        matches!(admitted, Ok(Admission::Admitted(..))),
        "{admitted:?}"
    );
    // A job given back after its window closed and its key expired.
    let Ok(Admission::Admitted(_, _, receipt)) =
        store.admit_job(account(b"b"), &[second], &job, now).await
    else {
        panic!("admitted");
    };
    let key = floodgate::store::redis::account_key(account(b"b"));
    let _: u64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        store.give_back(account(b"b"), &receipt, now).await.unwrap(),
        0
    );
    // A request without rules.
    let decision = store.check_and_consume(account(b"c"), &[], now).await;
    assert!(decision.unwrap().is_admitted());

    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("fg:*")
        .query_async(&mut admin)
        .await
        .unwrap();
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(ttl >= 0, "{key} has no expiry");
    }
}

/// A fail-closed Redis store at `url`, reached with `settings` (credentials, TLS), with 2
/// requests a minute on `/limited`: a 200, 200, 429 there shows decisions made in Redis.
fn fail_closed_config(url: &str, settings: &str) -> String {
    let store = format!("{settings}\ntimeout = \"2s\"\non_failure = \"fail_closed\"");
    redis_store(url, &store) + &limited("per_minute = 2")
}

/// A config on `redis` signing in as `username` with the password in `password_file`.
fn auth_config(redis: &RedisServer, username: &str, password_file: &std::path::Path) -> String {
    let settings = format!("username = \"{username}\"\npassword_file = {password_file:?}");
    fail_closed_config(&redis.url(), &settings)
}

/// The statuses of `n` requests to `url` as `key`, one after another.
async fn statuses(c: &TestClient, url: &str, key: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.post(url, key).await.status.as_u16());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_signs_in_with_its_password_file_and_the_password_is_never_shown() {
    let _turn = TURNS.read().await;
    let user = [
        "--user",
        "floodgate",
        "on",
        ">fg-s3cret-pw",
        "~*",
        "&*",
        "+@all",
    ];
    let redis = RedisServer::start_with(&[&["--requirepass", "default-pw"][..], &user].concat());
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
    std::fs::write(&good, "fg-s3cret-pw\n").unwrap(); // as a mounted Secret often ends
    std::fs::write(&bad, "not-the-password").unwrap();
    let config = dir.path().join("floodgate.toml");
    std::fs::write(&config, auth_config(&redis, "floodgate", &good)).unwrap();
    let mut fg = Process::start_logging(&config, &up.url(), "debug").await;
    let c = TestClient::new();
    assert_eq!(
        statuses(&c, &fg.url("/limited"), "k", 3).await,
        [200, 200, 429],
        "decided in Redis as the ACL user"
    );
    let status = c.get(&fg.admin_url("/status.json")).await;
    assert!(!String::from_utf8_lossy(&status.body).contains("fg-s3cret"));
    fg.terminate().await;
    assert!(!fg.stderr().contains("fg-s3cret"), "{}", fg.stderr());

    std::fs::write(&config, auth_config(&redis, "floodgate", &bad)).unwrap();
    let wrong = Process::start(&config, &up.url()).await;
    let a = c.post(&wrong.url("/limited"), "k").await;
    assert_eq!(
        a.status, 503,
        "a wrong password fails closed, as Redis down would"
    );
}

/// A config on a TLS Redis at `url`, trusting `ca` when given.
fn tls_config(url: &str, ca: Option<&std::path::Path>) -> String {
    let ca = ca.map_or(String::new(), |p| format!("tls_ca_file = {p:?}"));
    fail_closed_config(url, &ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_is_reached_over_rediss_trusting_the_ca_file() {
    let _turn = TURNS.read().await;
    let ca = support::pki::Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.leaf(&["localhost"]).write(dir.path());
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let redis = RedisServer::start_tls(&cert, &key, &ca_file);
    let up = Upstream::start().await;
    let c = TestClient::new();

    let gate = Gate::start(
        &tls_config(&redis.tls_url(), Some(&ca_file)),
        &up.url(),
        DAY0_MS,
    );
    assert_eq!(
        statuses(&c, &gate.url("/limited"), "k", 3).await,
        [200, 200, 429],
        "decided in Redis over TLS"
    );

    let untrusting = Gate::start(&tls_config(&redis.tls_url(), None), &up.url(), DAY0_MS);
    let a = c.post(&untrusting.url("/limited"), "k").await;
    assert_eq!(
        a.status, 503,
        "the bundled roots do not know the test CA: fails closed"
    );

    let clear_url = format!("redis://localhost:{}/0", redis.port);
    let overrides = floodgate::config::Overrides {
        upstream: Some(up.url()),
        ..Default::default()
    };
    let err = floodgate::config::Config::parse(&tls_config(&clear_url, Some(&ca_file)), &overrides)
        .unwrap_err();
    assert!(err.to_string().contains("store.tls_ca_file"), "{err}");
}
