//! Penalties over real HTTP (SPEC §6): incorrect tasks counted per account per UTC day and the
//! tier's `block` or `flag` past the allowance; relax jobs against a daily allowance that
//! successful fast jobs raise, `surcharge` or `reject` past it; the 00:00 UTC reset. The
//! recording upstream answers incorrect tasks on demand (`x-upstream-status`,
//! `x-upstream-body`) and ends tasks as told.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{metric, Answer, Backend, Gate, TestClient, Upstream, DAY0_MS};

const HOUR: u64 = 3_600_000;
const MIDNIGHT: u64 = DAY0_MS + 24 * HOUR;
/// 09:00:00.123 UTC: the seconds to midnight are not a round number.
const MORNING: u64 = DAY0_MS + 9 * HOUR + 123;

/// midjourney-proxy's answer to a banned prompt: a 200 whose code says no.
const BANNED: &str = r#"{"code":24,"description":"Banned prompt detected","result":null}"#;

const SYNC: &str = r#"
    [identity]
    default_tier = "free"

    [accounts]
    "paid-key" = "paid"
    "strict-key" = "strict"

    [[route]]
    method = "POST"
    path = "/submit/imagine"
    class = "imagine"

    [[route]]
    method = "POST"
    path = "/submit/blend"
    class = "blend"

    [[route]]
    method = "POST"
    path = "/submit/describe"
    class = "describe"

    [[route]]
    method = "POST"
    path = "/slow"
    class = "slow"

    [[route]]
    method = "POST"
    path = "/echo"
    class = "echo"

    [[jobs]]
    classes = ["imagine", "blend", "describe", "slow", "echo"]

    [incorrect_tasks]
    classes = ["imagine", "blend", "describe", "slow"]

    [[incorrect_tasks.match]]
    statuses = [400, 422]

    [[incorrect_tasks.match]]
    pointer = "/code"
    values = [24]

    [[incorrect_tasks.match]]
    pointer = "/error/message"
    contains = ["invalid parameter", "invalid link"]

    [relax]
    mode_pointer = "/process_mode"
    earn_classes = ["imagine", "blend"]

    [tiers.free]
    concurrency = 1

    [tiers.free.incorrect_tasks]
    per_day = 3
    action = "block"

    [tiers.free.relax]
    per_day = 2
    action = "surcharge"

    [tiers.paid.incorrect_tasks]
    per_day = 2
    action = "flag"

    [tiers.strict.relax]
    per_day = 2
    action = "reject"
"#;

const RELAX: &str = r#"{"prompt": "a lighthouse", "process_mode": "relax"}"#;
const FAST: &str = r#"{"prompt": "a lighthouse", "process_mode": "fast"}"#;
const TURBO: &str = r#"{"prompt": "a lighthouse", "process_mode": "TURBO"}"#;

/// `POST path` as `key` with `body`; `upstream` headers tell the upstream how to answer.
async fn submit(
    c: &TestClient,
    gate: &Gate,
    path: &str,
    key: &str,
    body: &str,
    upstream: &[(&str, &str)],
) -> Answer {
    let mut headers = vec![("x-api-key", key)];
    headers.extend_from_slice(upstream);
    c.send("POST", &gate.url(path), &headers, body.to_owned())
        .await
}

async fn usage(c: &TestClient, gate: &Gate, key: &str) -> serde_json::Value {
    c.get(&gate.admin_url(&format!("/usage?key={key}")))
        .await
        .json()
}

async fn metrics(c: &TestClient, gate: &Gate) -> String {
    String::from_utf8(c.get(&gate.admin_url("/metrics")).await.body.to_vec()).unwrap()
}

/// Whole seconds, rounded up, to the next 00:00 UTC.
fn secs_to_midnight(now_ms: u64) -> u64 {
    let day = 24 * HOUR;
    (now_ms - now_ms % day + day - now_ms).div_ceil(1000)
}

fn assert_refused_until_midnight(a: &Answer, kind: &str, now_ms: u64) {
    assert_eq!(a.status, 429, "{:?}", a.body);
    assert_eq!(a.header("x-ratelimit-type"), Some(kind));
    assert_eq!(a.num("retry-after"), secs_to_midnight(now_ms));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.json()["message"], "Too Many Attempts.");
}

async fn thirty_incorrect_tasks_on_free_then_the_31st_job_is_refused_until_midnight(
    backend: Backend,
) {
    let up = Upstream::start().await;
    let gate = Gate::shipped_on(backend, "midjourney.toml", &up.url(), MORNING);
    let c = TestClient::new();
    let imagine = gate.url("/mj/submit/imagine");
    for i in 0..30 {
        let path = if i % 2 == 0 {
            "/mj/submit/imagine"
        } else {
            "/mj/submit/blend"
        };
        let a = submit(
            &c,
            &gate,
            path,
            "free-acct",
            "{}",
            &[("x-upstream-body", BANNED)],
        )
        .await;
        assert_eq!(a.status, 200, "incorrect task {i} is the upstream's answer");
        gate.clock.advance_ms(3_000); // the shipped 1-per-3-s limit
    }
    let now = gate.clock_now();
    let a = c.post(&imagine, "free-acct").await;
    assert_refused_until_midnight(&a, "penalty", now);
    assert_eq!(a.json()["error"], "incorrect_task_limit");
    assert_eq!(
        (a.json()["count"].clone(), a.json()["allowance"].clone()),
        (json!(30), json!(30))
    );
    assert_eq!(
        up.count_prefix("/mj/submit/"),
        30,
        "a blocked job never reaches the upstream"
    );

    // Only job submissions are blocked: progress checks go on.
    let p = c
        .send(
            "GET",
            &gate.url("/mj/message/t-1"),
            &[("x-api-key", "free-acct")],
            "",
        )
        .await;
    assert_eq!(p.status, 200);
    // Another account is not affected.
    assert_eq!(c.post(&imagine, "other-acct").await.status, 200);

    let u = usage(&c, &gate, "free-acct").await;
    assert_eq!(u["tier"], "free");
    assert_eq!(u["penalties"]["incorrect_tasks"]["today"], 30);
    assert_eq!(u["penalties"]["incorrect_tasks"]["allowance"], 30);
    assert_eq!(u["penalties"]["current_actions"], json!(["block"]));
    assert_eq!(u["penalties"]["resets_in_secs"], secs_to_midnight(now));
    let m = metrics(&c, &gate).await;
    assert!(
        m.contains(r#"floodgate_incorrect_tasks_total{class="imagine",tier="free"} 15"#),
        "{m}"
    );
    assert!(m.contains(r#"floodgate_incorrect_tasks_total{class="blend",tier="free"} 15"#));
    assert!(m.contains(r#"floodgate_limited_total{class="imagine",tier="free",type="penalty"} 1"#));

    gate.clock.set_ms(MIDNIGHT - 1);
    let a = c.post(&imagine, "free-acct").await;
    assert_refused_until_midnight(&a, "penalty", MIDNIGHT - 1);
    assert_eq!(a.num("retry-after"), 1, "rounded up");
    gate.clock.set_ms(MIDNIGHT);
    assert_eq!(
        c.post(&imagine, "free-acct").await.status,
        200,
        "a new UTC day"
    );
    assert_eq!(up.count_prefix("/mj/submit/"), 32);
    let u = usage(&c, &gate, "free-acct").await;
    assert_eq!(u["penalties"]["incorrect_tasks"]["today"], 0);
    assert_eq!(u["penalties"]["current_actions"], json!([]));
}

async fn incorrect_tasks_by_status_or_json_marker_and_the_block_comes_before_the_queue(
    backend: Backend,
) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, SYNC, &up.url(), MORNING);
    let c = TestClient::new();
    let not_incorrect: [&[(&str, &str)]; 4] = [
        &[("x-upstream-status", "500")],
        &[("x-upstream-body", r#"{"code":1,"result":"ok"}"#)],
        // a marker outside the field the operator named
        &[("x-upstream-body", r#"{"prompt":"an invalid link"}"#)],
        &[("x-upstream-status", "400"), ("x-upstream-body", "{}")],
    ];
    for answer in &not_incorrect[..3] {
        submit(&c, &gate, "/submit/imagine", "k", FAST, answer).await;
    }
    assert_eq!(
        usage(&c, &gate, "k").await["penalties"]["incorrect_tasks"]["today"],
        0
    );
    // A status alone; a code at a pointer.
    for answer in [not_incorrect[3], &[("x-upstream-body", BANNED)]] {
        let a = submit(&c, &gate, "/submit/describe", "k", FAST, answer).await;
        assert!([200, 400].contains(&a.status.as_u16()), "passed through");
    }
    assert_eq!(
        usage(&c, &gate, "k").await["penalties"]["incorrect_tasks"]["today"],
        2
    );

    // The third, a substring of a field (any case), ends at ~300 ms; a job admitted before it
    // holds the account's only slot until ~1.8 s. A job submitted in between is blocked at
    // once: it is not queued behind the slot.
    let spawn = |path: &str, upstream: Option<&'static str>| {
        let url = gate.url(path);
        tokio::spawn(async move {
            let mut headers = vec![("x-api-key", "k")];
            headers.extend(upstream.map(|b| ("x-upstream-body", b)));
            TestClient::new().send("POST", &url, &headers, FAST).await
        })
    };
    let third = spawn(
        "/slow?ms=300",
        Some(r#"{"error":{"message":"Invalid Parameter: --ar 3:0"}}"#),
    );
    gate.until_jobs(|running, _| running == 1).await;
    let holder = spawn("/slow?ms=1500", None);
    assert_eq!(third.await.unwrap().status, 200);
    gate.until_jobs(|running, waiting| (running, waiting) == (1, 0))
        .await; // the holder has the slot
    let started = Instant::now();
    let a = submit(&c, &gate, "/submit/imagine", "k", FAST, &[]).await;
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "answered without waiting for the slot: {:?}",
        started.elapsed()
    );
    assert_refused_until_midnight(&a, "penalty", MORNING);
    assert!(a.header("x-queue-wait-ms").is_none(), "never queued");
    assert_eq!(holder.await.unwrap().status, 200);
    assert_eq!(up.count_prefix("/submit/"), 5);
    assert_eq!(up.count_prefix("/slow"), 2);
    assert_eq!(
        usage(&c, &gate, "k").await["penalties"]["incorrect_tasks"]["today"],
        3
    );
}

async fn flag_plans_pass_past_sixty_marked_no_refund_to_upstream_and_client(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::shipped_on(backend, "midjourney.toml", &up.url(), MORNING);
    let c = TestClient::new();
    let key = "demo-developer-key";
    for i in 0..60 {
        // A client cannot mark itself: x-floodgate-* headers are floodgate's own.
        let a = submit(
            &c,
            &gate,
            "/mj/submit/imagine",
            key,
            "{}",
            &[
                ("x-upstream-body", BANNED),
                ("x-floodgate-billing", "refund-me"),
            ],
        )
        .await;
        assert_eq!(a.status, 200, "incorrect task {i}");
        assert!(a.header("x-floodgate-billing").is_none());
        gate.clock.advance_ms(3_000);
    }
    assert_eq!(up.count_header("x-floodgate-billing", "refund-me"), 0);
    assert_eq!(up.count_header("x-floodgate-billing", "no-refund"), 0);

    let a = submit(&c, &gate, "/mj/submit/imagine", key, "{}", &[]).await;
    assert_eq!(a.status, 200, "flag tiers pass");
    assert_eq!(a.header("x-floodgate-billing"), Some("no-refund"));
    let seen = up.seen();
    assert_eq!(
        seen.last().unwrap().header("x-floodgate-billing"),
        Some("no-refund")
    );
    gate.clock.advance_ms(3_000);
    let a = submit(
        &c,
        &gate,
        "/mj/submit/blend",
        key,
        "{}",
        &[("x-upstream-body", BANNED)],
    )
    .await;
    assert_eq!(a.header("x-floodgate-billing"), Some("no-refund"));

    let u = usage(&c, &gate, key).await;
    assert_eq!(u["tier"], "developer");
    assert_eq!(u["penalties"]["incorrect_tasks"]["today"], 61);
    assert_eq!(u["penalties"]["incorrect_tasks"]["action"], "flag");
    assert_eq!(u["penalties"]["current_actions"], json!(["flag"]));
    let m = metrics(&c, &gate).await;
    assert!(
        m.contains(r#"floodgate_billing_marks_total{mark="no_refund",tier="developer"} 2"#),
        "{m}"
    );

    gate.clock.set_ms(MIDNIGHT);
    let a = submit(&c, &gate, "/mj/submit/imagine", key, "{}", &[]).await;
    assert!(a.header("x-floodgate-billing").is_none(), "a new UTC day");
}

async fn relax_jobs_past_the_allowance_are_surcharged(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, SYNC, &up.url(), MORNING);
    let c = TestClient::new();
    for _ in 0..2 {
        let a = submit(&c, &gate, "/submit/imagine", "k", RELAX, &[]).await;
        assert_eq!(a.status, 200);
        assert!(a.header("x-floodgate-cost-multiplier").is_none());
    }
    assert_eq!(up.count_header("x-floodgate-cost-multiplier", "2"), 0);
    for _ in 0..2 {
        let a = submit(&c, &gate, "/submit/blend", "k", RELAX, &[]).await;
        assert_eq!(a.status, 200, "surcharge forwards");
        assert_eq!(a.header("x-floodgate-cost-multiplier"), Some("2"));
    }
    assert_eq!(up.count_header("x-floodgate-cost-multiplier", "2"), 2);
    // Fast jobs are not surcharged.
    let a = submit(&c, &gate, "/submit/imagine", "k", FAST, &[]).await;
    assert!(a.header("x-floodgate-cost-multiplier").is_none());

    let u = usage(&c, &gate, "k").await;
    let relax = &u["penalties"]["relax"];
    assert_eq!(
        (
            relax["used"].clone(),
            relax["earned"].clone(),
            relax["allowance"].clone()
        ),
        (json!(4), json!(1), json!(3)),
        "{u}"
    );
    assert_eq!(relax["action"], "surcharge");
    assert_eq!(u["penalties"]["current_actions"], json!(["surcharge"]));
    let m = metrics(&c, &gate).await;
    assert!(
        m.contains(r#"floodgate_billing_marks_total{mark="surcharge",tier="free"} 2"#),
        "{m}"
    );
}

async fn relax_jobs_past_the_allowance_are_rejected_where_configured(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, SYNC, &up.url(), MORNING);
    let c = TestClient::new();
    for _ in 0..2 {
        assert_eq!(
            submit(&c, &gate, "/submit/imagine", "strict-key", RELAX, &[])
                .await
                .status,
            200
        );
    }
    let a = submit(&c, &gate, "/submit/imagine", "strict-key", RELAX, &[]).await;
    assert_refused_until_midnight(&a, "relax", MORNING);
    assert_eq!(a.json()["error"], "relax_limit");
    assert_eq!(
        up.count_prefix("/submit/"),
        2,
        "a rejected job never reaches the upstream"
    );
    // Fast jobs and relax jobs of classes that do not count are not affected.
    let a = submit(&c, &gate, "/submit/describe", "strict-key", FAST, &[]).await;
    assert_eq!(a.status, 200);
    let m = metrics(&c, &gate).await;
    assert!(m.contains(r#"floodgate_limited_total{class="imagine",tier="strict",type="relax"} 1"#));
    assert_eq!(
        usage(&c, &gate, "strict-key").await["penalties"]["current_actions"],
        json!(["reject"])
    );
}

async fn each_successful_fast_or_turbo_imagine_or_blend_earns_exactly_one_more(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, SYNC, &up.url(), MORNING);
    let c = TestClient::new();
    let relax = || submit(&c, &gate, "/submit/imagine", "strict-key", RELAX, &[]);
    for _ in 0..2 {
        assert_eq!(relax().await.status, 200, "relax jobs earn nothing");
    }
    assert_eq!(relax().await.status, 429);

    assert_eq!(
        submit(&c, &gate, "/submit/imagine", "strict-key", FAST, &[])
            .await
            .status,
        200
    );
    assert_eq!(relax().await.status, 200, "one earned");
    assert_eq!(relax().await.status, 429, "exactly one");

    assert_eq!(
        submit(&c, &gate, "/submit/blend", "strict-key", TURBO, &[])
            .await
            .status,
        200
    );
    // No mode in the body is the default, fast.
    assert_eq!(
        submit(&c, &gate, "/submit/blend", "strict-key", "{}", &[])
            .await
            .status,
        200
    );
    // describe is not an earning class.
    assert_eq!(
        submit(&c, &gate, "/submit/describe", "strict-key", FAST, &[])
            .await
            .status,
        200
    );
    assert_eq!(relax().await.status, 200);
    assert_eq!(relax().await.status, 200);
    assert_eq!(relax().await.status, 429);

    let u = usage(&c, &gate, "strict-key").await;
    assert_eq!(u["penalties"]["relax"]["earned"], 3);
    assert_eq!(u["penalties"]["relax"]["used"], 5);
    assert_eq!(u["penalties"]["relax"]["remaining"], 0);
    let m = metrics(&c, &gate).await;
    assert!(
        m.contains(r#"floodgate_relax_earned_total{tier="strict"} 3"#),
        "{m}"
    );
}

async fn failed_fast_jobs_earn_nothing(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, SYNC, &up.url(), MORNING);
    let c = TestClient::new();
    for _ in 0..2 {
        submit(&c, &gate, "/submit/imagine", "strict-key", RELAX, &[]).await;
    }
    for answer in [
        &[("x-upstream-status", "500")][..],
        &[("x-upstream-status", "400")],
        &[("x-upstream-body", BANNED)],
    ] {
        let a = submit(&c, &gate, "/submit/imagine", "strict-key", FAST, answer).await;
        assert_ne!(a.status, 429);
    }
    let a = submit(&c, &gate, "/submit/imagine", "strict-key", RELAX, &[]).await;
    assert_eq!(a.status, 429, "nothing earned");
    let u = usage(&c, &gate, "strict-key").await;
    assert_eq!(u["penalties"]["relax"]["earned"], 0);
    assert_eq!(
        u["penalties"]["incorrect_tasks"]["today"], 2,
        "400 and code 24"
    );
}

async fn the_day_reset_clears_relax_used_and_earned(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, SYNC, &up.url(), MORNING);
    let c = TestClient::new();
    let relax = || submit(&c, &gate, "/submit/imagine", "strict-key", RELAX, &[]);
    submit(&c, &gate, "/submit/imagine", "strict-key", FAST, &[]).await;
    for _ in 0..3 {
        assert_eq!(relax().await.status, 200);
    }
    assert_eq!(relax().await.status, 429);

    gate.clock.set_ms(MIDNIGHT);
    let u = usage(&c, &gate, "strict-key").await;
    assert_eq!(
        (
            u["penalties"]["relax"]["used"].clone(),
            u["penalties"]["relax"]["earned"].clone()
        ),
        (json!(0), json!(0))
    );
    assert_eq!(relax().await.status, 200);
    assert_eq!(relax().await.status, 200);
    let a = relax().await;
    assert_refused_until_midnight(&a, "relax", MIDNIGHT);
    assert_eq!(
        a.num("retry-after"),
        86_400,
        "yesterday's earned job is gone"
    );
}

async fn a_job_body_that_is_not_json_still_forwards_intact(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, SYNC, &up.url(), MORNING);
    let c = TestClient::new();
    let large: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for body in [b"\x89PNG\r\n\x1a\n not json {".to_vec(), large, Vec::new()] {
        let a = c
            .send(
                "POST",
                &gate.url("/echo"),
                &[("x-api-key", "k")],
                body.clone(),
            )
            .await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body.len(), body.len());
        assert!(a.body == body, "echoed byte for byte");
    }
    // The 200 KB body is longer than the inspect limit: unreadable, it counts as relax (the
    // costlier treatment). A relax-mode JSON body on the same class is told apart and counted.
    assert_eq!(usage(&c, &gate, "k").await["penalties"]["relax"]["used"], 1);
    let a = c
        .send("POST", &gate.url("/echo"), &[("x-api-key", "k")], RELAX)
        .await;
    assert_eq!(a.body, RELAX.as_bytes());
    assert_eq!(usage(&c, &gate, "k").await["penalties"]["relax"]["used"], 2);
}

const TASKS: &str = r#"
    [[route]]
    method = "POST"
    path = "/task/create"
    class = "create"

    [[jobs]]
    classes = ["create"]
    mode = "task"
    task_id_pointer = "/result"
    max_job_time = "30s"

    [tasks]
    get_path = "/task/{id}"
    status_pointer = "/status"
    terminal = ["SUCCESS", "FAILURE"]
    success = ["SUCCESS"]
    POLL

    [incorrect_tasks]

    [[incorrect_tasks.match]]
    on = "task"
    pointer = "/failReason"
    contains = ["banned prompt", "image filter"]

    [relax]
    mode_pointer = "/process_mode"
    earn_classes = ["create"]

    [tiers.t.incorrect_tasks]
    per_day = 1
    action = "block"

    [tiers.t.relax]
    per_day = 0
    action = "reject"
"#;

async fn create(c: &TestClient, gate: &Gate, body: &str) -> Answer {
    submit(c, gate, "/task/create", "k", body, &[]).await
}

async fn get_task(c: &TestClient, gate: &Gate, id: &str) -> Answer {
    c.send(
        "GET",
        &gate.url(&format!("/task/{id}")),
        &[("x-api-key", "k")],
        "",
    )
    .await
}

async fn task_mode_earns_on_terminal_success_and_counts_a_failed_task_once(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, &TASKS.replace("POLL", ""), &up.url(), MORNING);
    let c = TestClient::new();
    assert_eq!(
        create(&c, &gate, RELAX).await.status,
        429,
        "no relax allowance"
    );

    let a = create(&c, &gate, FAST).await;
    assert_eq!(a.json()["result"], "t-1");
    assert_eq!(
        create(&c, &gate, RELAX).await.status,
        429,
        "not earned while running"
    );
    up.set_task_status("t-1", "SUCCESS");
    assert_eq!(get_task(&c, &gate, "t-1").await.json()["status"], "SUCCESS");
    assert_eq!(
        create(&c, &gate, RELAX).await.json()["result"],
        "t-2",
        "earned"
    );
    assert_eq!(create(&c, &gate, RELAX).await.status, 429, "exactly one");

    // A fast task that fails for a banned prompt: counted once, earns nothing.
    assert_eq!(create(&c, &gate, FAST).await.json()["result"], "t-3");
    up.fail_task("t-3", "FAILURE", "Banned prompt detected");
    for _ in 0..3 {
        assert_eq!(
            get_task(&c, &gate, "t-3").await.json()["failReason"],
            "Banned prompt detected"
        );
    }
    let u = usage(&c, &gate, "k").await;
    assert_eq!(u["penalties"]["incorrect_tasks"]["today"], 1, "{u}");
    assert_eq!(u["penalties"]["relax"]["earned"], 1);
    let a = create(&c, &gate, FAST).await;
    assert_refused_until_midnight(&a, "penalty", MORNING);

    // A failure that is not the client's fault is not an incorrect task.
    gate.clock.set_ms(MIDNIGHT);
    assert_eq!(create(&c, &gate, FAST).await.json()["result"], "t-4");
    up.fail_task("t-4", "FAILURE", "upstream timeout");
    get_task(&c, &gate, "t-4").await;
    assert_eq!(
        usage(&c, &gate, "k").await["penalties"]["incorrect_tasks"]["today"],
        0
    );
    assert_eq!(create(&c, &gate, FAST).await.status, 200);
}

async fn a_task_floodgate_sees_end_by_its_own_polling_settles_too(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(
        backend,
        &TASKS.replace("POLL", "poll_interval = \"50ms\""),
        &up.url(),
        MORNING,
    );
    let c = TestClient::new();
    assert_eq!(create(&c, &gate, TURBO).await.json()["result"], "t-1");
    assert_eq!(create(&c, &gate, FAST).await.json()["result"], "t-2");
    up.set_task_status("t-1", "SUCCESS");
    up.fail_task("t-2", "FAILURE", "Request cancelled due to image filters");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let u = usage(&c, &gate, "k").await;
        let p = &u["penalties"];
        if p["relax"]["earned"] == 1 && p["incorrect_tasks"]["today"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never settled: {u}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penalty_tallies_survive_a_restart_through_the_state_file() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{SYNC}\n[state]\nfile = '{}'\n",
        dir.path().join("state.bin").display()
    );
    let c = TestClient::new();
    {
        let gate = Gate::start(&config, &up.url(), MORNING);
        submit(&c, &gate, "/submit/imagine", "strict-key", FAST, &[]).await;
        for _ in 0..3 {
            let a = submit(&c, &gate, "/submit/imagine", "strict-key", RELAX, &[]).await;
            assert_eq!(a.status, 200);
        }
        for _ in 0..3 {
            let banned = [("x-upstream-body", BANNED)];
            submit(&c, &gate, "/submit/blend", "k", FAST, &banned).await;
        }
    } // graceful shutdown: the state file is written
    let gate = Gate::start(&config, &up.url(), MORNING + HOUR);
    let a = submit(&c, &gate, "/submit/imagine", "k", FAST, &[]).await;
    assert_refused_until_midnight(&a, "penalty", MORNING + HOUR);
    let a = submit(&c, &gate, "/submit/imagine", "strict-key", RELAX, &[]).await;
    assert_refused_until_midnight(&a, "relax", MORNING + HOUR);
    let u = usage(&c, &gate, "strict-key").await;
    assert_eq!(
        (
            u["penalties"]["relax"]["used"].clone(),
            u["penalties"]["relax"]["earned"].clone()
        ),
        (json!(3), json!(1))
    );
}

async fn a_body_larger_than_the_inspect_limit_counts_as_relax_unless_a_larger_limit_reads_it(
    backend: Backend,
) {
    let up = Upstream::start().await;
    let blend = format!(
        r#"{{"process_mode": "fast", "base64Array": ["data:image/png;base64,{}"]}}"#,
        "A".repeat(150_000)
    );
    for (limit, relax_used) in [("", 1), ("inspect_limit = \"256KB\"", 0)] {
        let config = format!("[server]\n{limit}\n{SYNC}");
        let gate = Gate::start_on(backend, &config, &up.url(), MORNING);
        let c = TestClient::new();
        let a = submit(&c, &gate, "/submit/blend", "strict-key", &blend, &[]).await;
        assert_eq!(a.status, 200);
        assert_eq!(
            up.seen().last().unwrap().body_len,
            blend.len() as u64,
            "forwarded whole"
        );
        let u = usage(&c, &gate, "strict-key").await;
        assert_eq!(
            u["penalties"]["relax"]["used"], relax_used,
            "limit {limit:?}"
        );
    }
}

/// A job body padded past `[server] inspect_limit` (64 KB by default), with its mode after the
/// padding or before it: floodgate cannot read it whole before admitting the job.
fn padded(mode_first: bool, mode: &str) -> String {
    let padding = "A".repeat(70 * 1024); // base64 of an image, say
    if mode_first {
        format!(r#"{{"process_mode": "{mode}", "image": "{padding}"}}"#)
    } else {
        format!(r#"{{"image": "{padding}", "process_mode": "{mode}"}}"#)
    }
}

async fn padding_a_job_body_never_dodges_the_relax_allowance(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, SYNC, &up.url(), MORNING);
    let c = TestClient::new();
    let send = |body: String| {
        let (c, gate) = (c.clone(), &gate);
        async move { submit(&c, gate, "/submit/imagine", "strict-key", &body, &[]).await }
    };
    // Two unreadable jobs use up the allowance of 2, whatever mode they claim.
    assert_eq!(send(padded(false, "relax")).await.status, 200);
    assert_eq!(send(padded(true, "fast")).await.status, 200);
    let u = usage(&c, &gate, "strict-key").await;
    assert_eq!(u["penalties"]["relax"]["used"], 2, "{u}");
    assert_eq!(
        u["penalties"]["relax"]["earned"], 0,
        "padding earns nothing"
    );
    // Past it: refused, padded or not, mode first or last.
    for body in [
        padded(false, "relax"),
        padded(true, "fast"),
        RELAX.to_owned(),
    ] {
        let a = send(body).await;
        assert_eq!(a.status, 429);
        assert_eq!(a.json()["error"], "relax_limit");
    }
    // A body read whole still counts as what it names.
    assert_eq!(send(FAST.to_owned()).await.status, 200);
    assert_eq!(up.count_prefix("/submit/"), 3);
}

async fn an_operator_can_count_unreadable_jobs_as_fast_or_read_more(backend: Backend) {
    let up = Upstream::start().await;
    let lenient = SYNC.replace(
        "mode_pointer = \"/process_mode\"",
        "mode_pointer = \"/process_mode\"\nunreadable_mode = \"fast\"",
    );
    let gate = Gate::start_on(backend, &lenient, &up.url(), MORNING);
    let c = TestClient::new();
    let (relax_last, fast_first) = (padded(false, "relax"), padded(true, "fast"));
    for _ in 0..3 {
        let a = submit(&c, &gate, "/submit/imagine", "strict-key", &relax_last, &[]);
        assert_eq!(a.await.status, 200, "counted as fast, as configured");
    }
    // A larger inspect limit reads the same body whole: its mode counts.
    let whole = format!("[server]\ninspect_limit = \"256KB\"\n{SYNC}");
    let gate = Gate::start_on(backend, &whole, &up.url(), MORNING);
    for expected in [200, 200, 429] {
        let a = submit(&c, &gate, "/submit/imagine", "strict-key", &relax_last, &[]);
        assert_eq!(a.await.status, expected);
    }
    let a = submit(&c, &gate, "/submit/imagine", "strict-key", &fast_first, &[]);
    assert_eq!(a.await.status, 200, "read whole: fast");
}

/// One job class, both penalties (block past one incorrect task, surcharge past one relax job),
/// a minute limit, the access log — and `shadow` on both penalty sections.
fn shadow_config(log: &std::path::Path, shadow: bool) -> String {
    format!(
        r#"
        [access_log]
        path = {log:?}

        [identity]
        default_tier = "free"

        [[route]]
        method = "POST"
        path = "/submit/imagine"
        class = "imagine"

        [[jobs]]
        classes = ["imagine"]

        [incorrect_tasks]
        shadow = {shadow}

        [[incorrect_tasks.match]]
        pointer = "/code"
        values = [24]

        [relax]
        mode_pointer = "/process_mode"
        shadow = {shadow}

        [[tiers.free.limits]]
        classes = ["imagine"]
        per_minute = 10

        [tiers.free.incorrect_tasks]
        per_day = 1
        action = "block"

        [tiers.free.relax]
        per_day = 1
        action = "surcharge"
        "#
    )
}

/// What one run of the shadow scenario saw: the answer to the job past both allowances, the
/// answer to the relax job past its allowance alone, the metrics, the first account's usage,
/// the jobs the upstream saw surcharged, and the access log's lines.
struct ShadowRun {
    both: Answer,
    relax: Answer,
    metrics: String,
    usage: serde_json::Value,
    surcharged_upstream: usize,
    log: Vec<serde_json::Value>,
}

/// "k": a relax job answered as an incorrect task, then a relax job past both allowances.
/// "r": two relax jobs, the second past the relax allowance alone.
async fn shadow_scenario(backend: Backend, shadow: bool) -> ShadowRun {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gate = Gate::start_on(backend, &shadow_config(&log, shadow), &up.url(), MORNING);
    let c = TestClient::new();
    let first = submit(
        &c,
        &gate,
        "/submit/imagine",
        "k",
        RELAX,
        &[("x-upstream-body", BANNED)],
    );
    assert_eq!(first.await.status, 200);
    let both = submit(&c, &gate, "/submit/imagine", "k", RELAX, &[]).await;
    assert_eq!(
        submit(&c, &gate, "/submit/imagine", "r", RELAX, &[])
            .await
            .status,
        200
    );
    let relax = submit(&c, &gate, "/submit/imagine", "r", RELAX, &[]).await;
    let run = ShadowRun {
        both,
        relax,
        metrics: metrics(&c, &gate).await,
        usage: usage(&c, &gate, "k").await,
        surcharged_upstream: up.count_header("x-floodgate-cost-multiplier", "2"),
        log: Vec::new(),
    };
    drop(gate); // its access log lines are written out
    let text = std::fs::read_to_string(&log).unwrap();
    let log = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    ShadowRun { log, ..run }
}

fn would_penalise(metrics: &str, penalty: &str, effect: &str) -> f64 {
    let series = format!(
        "floodgate_would_penalise_total{{effect=\"{effect}\",penalty=\"{penalty}\",tier=\"free\"}}"
    );
    metric(metrics, &series)
}

fn limited_by_penalty(metrics: &str) -> f64 {
    let series = r#"floodgate_limited_total{class="imagine",tier="free",type="penalty"}"#;
    metric(metrics, series)
}

/// The access log's `shadow_penalty` values, in no particular order (each worker writes its
/// own lines), the unmarked lines left out.
fn shadow_marks(log: &[serde_json::Value]) -> Vec<&str> {
    let mut marks: Vec<&str> = log
        .iter()
        .filter_map(|l| l["shadow_penalty"].as_str())
        .collect();
    marks.sort_unstable();
    marks
}

async fn penalties_in_shadow_mode_count_what_they_would_do_and_let_jobs_through_as_they_are(
    backend: Backend,
) {
    let on = shadow_scenario(backend, true).await;
    assert_eq!(
        on.both.status, 200,
        "past both allowances, the job goes through"
    );
    assert_eq!(
        on.both.num("x-ratelimit-remaining"),
        8,
        "counted once, like any job: 10 a minute, this was the second"
    );
    assert_eq!(on.relax.status, 200);
    assert_eq!(on.relax.num("x-ratelimit-remaining"), 8);
    for a in [&on.both, &on.relax] {
        assert!(
            a.header("x-floodgate-cost-multiplier").is_none(),
            "no surcharge"
        );
        assert!(a.header("x-floodgate-billing").is_none());
    }
    assert_eq!(on.surcharged_upstream, 0, "nothing surcharged upstream");
    assert_eq!(
        would_penalise(&on.metrics, "incorrect_tasks", "refused"),
        1.0
    );
    assert_eq!(would_penalise(&on.metrics, "relax", "surcharged"), 2.0);
    assert_eq!(limited_by_penalty(&on.metrics), 0.0, "nothing refused");
    assert!(!on.metrics.contains("floodgate_billing_marks_total{"));
    let penalties = &on.usage["penalties"];
    assert_eq!(
        penalties["incorrect_tasks"]["today"], 1,
        "the tally still learns"
    );
    assert_eq!(penalties["relax"]["used"], 2, "relax jobs still count");
    assert_eq!(penalties["incorrect_tasks"]["shadow"], true);
    assert_eq!(penalties["relax"]["shadow"], true);
    assert_eq!(penalties["current_actions"], json!([]));
    assert_eq!(on.log.len(), 4, "{:#?}", on.log);
    assert_eq!(
        shadow_marks(&on.log),
        [
            "incorrect_tasks:refused,relax:surcharged",
            "relax:surcharged"
        ]
    );

    // The same jobs with the penalties enforced.
    let off = shadow_scenario(backend, false).await;
    assert_refused_until_midnight(&off.both, "penalty", MORNING);
    assert_eq!(off.relax.status, 200);
    assert_eq!(off.relax.header("x-floodgate-cost-multiplier"), Some("2"));
    assert_eq!(off.surcharged_upstream, 1);
    assert_eq!(limited_by_penalty(&off.metrics), 1.0);
    assert!(!off.metrics.contains("floodgate_would_penalise_total{"));
    assert_eq!(
        off.usage["penalties"]["current_actions"],
        json!(["block", "surcharge"])
    );
    assert_eq!(shadow_marks(&off.log), Vec::<&str>::new());
    let refused = off.log.iter().find(|l| l["status"] == 429).unwrap();
    assert_eq!(refused["limit"], "penalty");
}

on_both_stores!(
    thirty_incorrect_tasks_on_free_then_the_31st_job_is_refused_until_midnight,
    incorrect_tasks_by_status_or_json_marker_and_the_block_comes_before_the_queue,
    flag_plans_pass_past_sixty_marked_no_refund_to_upstream_and_client,
    relax_jobs_past_the_allowance_are_surcharged,
    relax_jobs_past_the_allowance_are_rejected_where_configured,
    each_successful_fast_or_turbo_imagine_or_blend_earns_exactly_one_more,
    failed_fast_jobs_earn_nothing,
    the_day_reset_clears_relax_used_and_earned,
    a_job_body_that_is_not_json_still_forwards_intact,
    task_mode_earns_on_terminal_success_and_counts_a_failed_task_once,
    a_task_floodgate_sees_end_by_its_own_polling_settles_too,
    a_body_larger_than_the_inspect_limit_counts_as_relax_unless_a_larger_limit_reads_it,
    padding_a_job_body_never_dodges_the_relax_allowance,
    an_operator_can_count_unreadable_jobs_as_fast_or_read_more,
    penalties_in_shadow_mode_count_what_they_would_do_and_let_jobs_through_as_they_are,
);
