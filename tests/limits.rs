//! The seed's limits through the shipped configs, over real HTTP: exact counts, the 429 format,
//! Retry-After, the UTC day reset, refused requests never reaching the upstream, and exactness
//! under 64 parallel requests. Every scenario runs on the memory store and on a real Redis.

mod support;

use support::raw::{connect, read_response};
use support::{Answer, Backend, Gate, TestClient, Upstream, DAY0_MS};
use tokio::io::AsyncWriteExt;

const TXT2IMG: &str = "/api/v1/txt2img";

async fn basic_txt2img_three_per_minute_with_headers_and_exact_429(backend: Backend) {
    let up = Upstream::start().await;
    let t0 = DAY0_MS + 12 * 3_600_000 + 250; // 12:00:00.250 UTC
    let gate = Gate::shipped_on(backend, "floodgate.toml", &up.url(), t0);
    let c = gate.client();
    for remaining in [2, 1, 0] {
        let a = c.post(&gate.url(TXT2IMG), "k-basic").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.num("x-ratelimit-limit"), 3);
        assert_eq!(a.num("x-ratelimit-remaining"), remaining);
        assert_eq!(a.num("x-ratelimit-daily-limit"), 100);
        assert_eq!(a.num("x-ratelimit-daily-remaining"), 97 + remaining);
        assert_eq!(a.header("x-ratelimit-type"), None);
    }
    gate.clock.advance_ms(20_500);
    let a = c.post(&gate.url(TXT2IMG), "k-basic").await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(
        a.json(),
        serde_json::json!({"message": "Too Many Attempts."})
    );
    assert_eq!(a.header("x-ratelimit-type"), Some("minute"));
    assert_eq!(a.num("retry-after"), 40, "39.5 s left, rounded up");
    assert_eq!(a.num("x-ratelimit-limit"), 3);
    assert_eq!(a.num("x-ratelimit-remaining"), 0);
    assert_eq!(a.num("x-ratelimit-daily-limit"), 100);
    assert_eq!(
        a.num("x-ratelimit-daily-remaining"),
        97,
        "the refused request consumed nothing"
    );
    assert_eq!(
        up.count(),
        3,
        "the refused request never reached the upstream"
    );

    gate.clock.advance_ms(39_499);
    assert_eq!(
        c.post(&gate.url(TXT2IMG), "k-basic").await.status,
        429,
        "1 ms before the window closes"
    );
    gate.clock.advance_ms(1);
    let a = c.post(&gate.url(TXT2IMG), "k-basic").await;
    assert_eq!(a.status, 200, "admitted exactly when Retry-After said");
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 96);
}

async fn every_basic_endpoint_has_its_seed_limits(backend: Backend) {
    let table: &[(&str, u64, u64)] = &[
        ("txt2img", 3, 100),
        ("img2img", 3, 100),
        ("txt2audio", 3, 50),
        ("txt2video", 1, 15),
        ("img2video", 1, 15),
        ("aud2video", 1, 15),
        ("txt2music", 1, 15),
        ("transcribe", 3, 50),
        ("vid2txt", 3, 50),
        ("aud2txt", 3, 50),
        ("videofile2txt", 3, 50),
        ("audiofile2txt", 3, 50),
        ("img2txt", 5, 100),
        ("txt2embedding", 10, 100),
        ("img-rmbg", 5, 100),
        ("img-upscale", 5, 100),
        ("videos/replace", 1, 15),
        ("prompt/enhance", 10, 100),
    ];
    let up = Upstream::start().await;
    let gate = Gate::shipped_on(backend, "floodgate.toml", &up.url(), DAY0_MS + 1_000);
    let c = gate.client();
    for (name, per_minute, daily) in table {
        let url = gate.url(&format!("/api/v1/{name}"));
        for _ in 0..*per_minute {
            let a = c.post(&url, "k-table").await;
            assert_eq!(a.status, 200, "{name}");
            assert_eq!(
                (a.num("x-ratelimit-limit"), a.num("x-ratelimit-daily-limit")),
                (*per_minute, *daily),
                "{name}"
            );
        }
        let a = c.post(&url, "k-table").await;
        assert_eq!(
            a.status,
            429,
            "{name}: request {} in a minute",
            per_minute + 1
        );
        assert_eq!(a.header("x-ratelimit-type"), Some("minute"), "{name}");
    }
    // prompt/* is one class: another prompt path shares the counter.
    assert_eq!(
        c.post(&gate.url("/api/v1/prompt/other"), "k-table")
            .await
            .status,
        429
    );
    // Other paths are unlimited and carry no rate-limit headers.
    let a = c
        .send(
            "GET",
            &gate.url("/api/v1/txt2img"),
            &[("x-api-key", "k-table")],
            "",
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-ratelimit-limit"), None);
}

async fn daily_quota_refuses_until_midnight_utc_then_resets(backend: Backend) {
    let up = Upstream::start().await;
    let evening = DAY0_MS + 86_400_000 - 2 * 3_600_000; // 22:00 UTC
    let gate = Gate::shipped_on(backend, "floodgate.toml", &up.url(), evening);
    let c = gate.client();
    let url = gate.url("/api/v1/txt2video"); // 1/min, 15/day
    for i in 0..15 {
        let a = c.post(&url, "k-daily").await;
        assert_eq!(a.status, 200, "request {i}");
        assert_eq!(a.num("x-ratelimit-daily-remaining"), 14 - i);
        gate.clock.advance_ms(60_000);
    }
    let a = c.post(&url, "k-daily").await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("x-ratelimit-type"), Some("daily"));
    let until_midnight = (DAY0_MS + 86_400_000 - gate.clock_now()).div_ceil(1000);
    assert_eq!(a.num("retry-after"), until_midnight);
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 0);
    gate.clock.set_ms(DAY0_MS + 86_400_000 - 1);
    assert_eq!(c.post(&url, "k-daily").await.status, 429);
    gate.clock.set_ms(DAY0_MS + 86_400_000);
    let a = c.post(&url, "k-daily").await;
    assert_eq!(a.status, 200, "00:00 UTC resets the daily quota");
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 14);
    assert_eq!(up.count(), 16);
}

const MONTHLY: &str = "[identity]\nsources = [\"x-api-key\"]\ndefault_tier = \"paid\"\n\
                       [[tiers.paid.limits]]\nclasses = [\"*\"]\nper_day = 100\nper_month = 3\n";

async fn monthly_quota_refuses_until_the_first_at_midnight_utc_then_resets(backend: Backend) {
    // 2028-02-27T23:00:00Z: a leap year's February, 29 days.
    const FEB27_23H: u64 = 1_835_305_200_000;
    const MARCH1: u64 = FEB27_23H + 2 * 86_400_000 + 3_600_000;
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, MONTHLY, &up.url(), FEB27_23H);
    let c = gate.client();
    let url = gate.url("/anything");
    let get = || c.send("GET", &url, &[("x-api-key", "k-month")], "");
    for i in 0..3u64 {
        let a = get().await;
        assert_eq!(a.status, 200, "request {i}");
        assert_eq!(a.num("x-ratelimit-monthly-limit"), 3);
        assert_eq!(a.num("x-ratelimit-monthly-remaining"), 2 - i);
        let until_march = (MARCH1 - gate.clock_now()).div_ceil(1000);
        assert_eq!(
            a.num("x-ratelimit-monthly-reset"),
            until_march,
            "request {i}"
        );
        assert_eq!(a.num("x-ratelimit-daily-remaining"), 99, "one a day");
        gate.clock.advance_ms(86_400_000);
    }
    // February 29th, 23:00 and a second before midnight: the month is spent.
    gate.clock.set_ms(MARCH1 - 1_000);
    let a = get().await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("x-ratelimit-type"), Some("monthly"));
    assert_eq!(a.num("retry-after"), 1);
    assert_eq!(a.num("x-ratelimit-monthly-remaining"), 0);
    assert_eq!(a.json()["message"], "Too Many Attempts.");
    gate.clock.set_ms(MARCH1);
    let a = get().await;
    assert_eq!(
        a.status, 200,
        "00:00 UTC on the 1st resets the monthly quota"
    );
    assert_eq!(a.num("x-ratelimit-monthly-remaining"), 2);
    assert_eq!(
        a.num("x-ratelimit-monthly-reset"),
        31 * 86_400,
        "March has 31 days"
    );
    assert_eq!(
        up.count(),
        4,
        "the refused request never reached the upstream"
    );
}

const WEIGHTED: &str = "[identity]\nsources = [\"x-api-key\"]\ndefault_tier = \"paid\"\n\
                        [[tiers.paid.limits]]\nclasses = [\"*\"]\nper_minute = 10\nper_day = 20\n\
                        [classes.default]\ncost = 3\n";

async fn a_class_costing_three_units_takes_them_from_every_window(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, WEIGHTED, &up.url(), DAY0_MS);
    let c = gate.client();
    let url = gate.url("/render");
    let get = || c.send("GET", &url, &[("x-api-key", "k-weighted")], "");
    for (minute_left, day_left) in [(7, 17), (4, 14), (1, 11)] {
        let a = get().await;
        assert_eq!(a.status, 200);
        assert_eq!(a.num("x-ratelimit-cost"), 3, "what the request was charged");
        assert_eq!(a.num("x-ratelimit-remaining"), minute_left);
        assert_eq!(a.num("x-ratelimit-daily-remaining"), day_left);
    }
    // One unit left this minute: the next request (3 units) is refused and takes nothing.
    let a = get().await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("x-ratelimit-type"), Some("minute"));
    assert_eq!(a.num("retry-after"), 60);
    assert_eq!(a.num("x-ratelimit-remaining"), 1);
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 11);
    gate.clock.advance_ms(60_000);
    let a = get().await;
    assert_eq!(a.status, 200, "a new minute has room for 3 again");
    assert_eq!(a.num("x-ratelimit-remaining"), 7);
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 8);
    assert_eq!(up.count(), 4);
}

/// A class whose requests say their cost in the body: `n` images, at most 10, 4 when the body
/// does not say.
const BODY_COST: &str = r#"
    [server]
    inspect_limit = "1KB"
    [identity]
    sources = ["x-api-key"]
    default_tier = "paid"
    [[route]]
    method = "POST"
    path = "/echo"
    class = "txt2img"
    [[tiers.paid.limits]]
    classes = ["txt2img"]
    per_minute = 12
    per_day = 30
    [classes.txt2img]
    cost_from = "/n"
    max_cost = 10
    default_cost = 4
"#;

/// `POST /echo` with `body`, as the caller `k-images`.
async fn images(c: &TestClient, gate: &Gate, body: &str) -> Answer {
    let url = gate.url("/echo");
    c.send("POST", &url, &[("x-api-key", "k-images")], body.to_owned())
        .await
}

async fn a_body_field_gives_the_cost_and_the_headers_count_units(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, BODY_COST, &up.url(), DAY0_MS);
    let c = gate.client();
    let body = r#"{"prompt": "a cat", "n": 3}"#;
    let a = images(&c, &gate, body).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.num("x-ratelimit-cost"), 3, "the body's value");
    assert_eq!(a.num("x-ratelimit-remaining"), 9);
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 27);
    assert_eq!(a.body, body.as_bytes(), "forwarded byte for byte");
    let a = images(&c, &gate, r#"{"n": 1}"#).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("x-ratelimit-cost"),
        Some("1"),
        "one unit read from the body is reported too"
    );
    assert_eq!(a.num("x-ratelimit-remaining"), 8);
    let a = images(&c, &gate, r#"{"n": 6.0}"#).await;
    assert_eq!((a.status.as_u16(), a.num("x-ratelimit-cost")), (200, 6));
    assert_eq!(a.num("x-ratelimit-remaining"), 2);
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 20);
    assert_eq!(up.count(), 3);
}

async fn a_body_asking_more_than_max_cost_is_charged_max_cost(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, BODY_COST, &up.url(), DAY0_MS);
    let c = gate.client();
    for (body, day_left) in [(r#"{"n": 11}"#, 20), (r#"{"n": 4294967296}"#, 10)] {
        let a = images(&c, &gate, body).await;
        assert_eq!(a.status, 200, "{body}");
        assert_eq!(a.num("x-ratelimit-cost"), 10, "{body}: max_cost");
        assert_eq!(a.num("x-ratelimit-remaining"), 2, "{body}");
        assert_eq!(a.num("x-ratelimit-daily-remaining"), day_left, "{body}");
        gate.clock.advance_ms(60_000);
    }
}

async fn a_body_without_a_usable_cost_is_charged_default_cost(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, BODY_COST, &up.url(), DAY0_MS);
    let c = gate.client();
    // Past inspect_limit (1KB): a cheap value in the prefix does not count, the rest may say more.
    let padded = format!(r#"{{"n": 1, "pad": "{}"}}"#, "x".repeat(2_000));
    let bodies = [
        r#"{"prompt": "a cat"}"#.to_owned(),
        r#"{"n": 0}"#.to_owned(),
        r#"{"n": -2}"#.to_owned(),
        r#"{"n": 1.5}"#.to_owned(),
        r#"{"n": "1"}"#.to_owned(),
        "n=1".to_owned(),
        padded,
    ];
    let mut day_left = 30;
    for body in &bodies {
        gate.clock.advance_ms(60_000); // each in a minute of its own
        let a = images(&c, &gate, body).await;
        day_left -= 4;
        assert_eq!(a.status, 200, "{body}");
        assert_eq!(a.num("x-ratelimit-cost"), 4, "{body}: default_cost");
        assert_eq!(a.num("x-ratelimit-remaining"), 8, "{body}");
        assert_eq!(a.num("x-ratelimit-daily-remaining"), day_left, "{body}");
        assert_eq!(a.body, body.as_bytes(), "forwarded byte for byte");
    }
    assert_eq!(up.count(), bodies.len());
}

async fn a_body_costing_more_than_remains_is_refused_and_takes_nothing(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, BODY_COST, &up.url(), DAY0_MS);
    let c = gate.client();
    assert_eq!(images(&c, &gate, r#"{"n": 10}"#).await.status, 200);
    // Two units left this minute: three are refused, and nothing is taken.
    let a = images(&c, &gate, r#"{"n": 3}"#).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("x-ratelimit-type"), Some("minute"));
    assert_eq!(a.num("retry-after"), 60);
    assert_eq!(a.num("x-ratelimit-cost"), 3, "what it would have cost");
    assert_eq!(a.num("x-ratelimit-remaining"), 2);
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 20);
    let a = images(&c, &gate, r#"{"n": 2}"#).await;
    assert_eq!(a.status, 200, "a cheaper one fits");
    assert_eq!(a.num("x-ratelimit-remaining"), 0);
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 18);
    assert_eq!(up.count(), 2, "the refused one never reached the upstream");
}

async fn a_body_costing_more_than_a_limit_is_refused_without_retry_after(backend: Backend) {
    let up = Upstream::start().await;
    // max_cost above the minute's 12: a request asking for 15 can never be admitted.
    let config = BODY_COST.replace("max_cost = 10", "max_cost = 20");
    let gate = Gate::start_on(backend, &config, &up.url(), DAY0_MS);
    let c = gate.client();
    for _ in 0..2 {
        let a = images(&c, &gate, r#"{"n": 15}"#).await;
        assert_eq!(a.status, 429);
        assert_eq!(a.header("x-ratelimit-type"), Some("minute"));
        assert_eq!(
            a.header("retry-after"),
            None,
            "no wait would admit it: no Retry-After"
        );
        assert_eq!(a.num("x-ratelimit-remaining"), 12, "nothing taken");
        assert_eq!(a.num("x-ratelimit-daily-remaining"), 30);
        gate.clock.advance_ms(60_000);
    }
    assert_eq!(images(&c, &gate, r#"{"n": 12}"#).await.status, 200);
    assert_eq!(up.count(), 1);
}

/// On one HTTP/1.1 connection: the fast path serves a fixed-cost request, hands the first
/// request of a class that reads its cost from the body to hyper, and hyper serves the rest.
async fn body_costs_hold_on_a_keep_alive_connection(backend: Backend) {
    let up = Upstream::start().await;
    // On `/images`, whose upstream answer has a length (the echo's is chunked, which the raw
    // reader does not read); the default class costs a fixed 2 and stays on the fast path.
    let config = format!("{BODY_COST}\n[classes.default]\ncost = 2\n")
        .replace(
            "classes = [\"txt2img\"]",
            "classes = [\"txt2img\", \"default\"]",
        )
        .replace("path = \"/echo\"", "path = \"/images\"");
    let gate = Gate::start_on(backend, &config, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    let post = |body: &str| {
        format!(
            "POST /images HTTP/1.1\r\nhost: gate\r\nx-api-key: k-kept\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let get = "GET /other HTTP/1.1\r\nhost: gate\r\nx-api-key: k-kept\r\n\r\n".to_owned();
    // Each class counts in its own window: (request, its cost, what its class has left).
    let exchanges = [
        (get.clone(), 2, 10),
        (post(r#"{"n": 3}"#), 3, 9),
        (post(r#"{"n": 5}"#), 5, 4),
        (get, 2, 8),
    ];
    for (i, (request, cost, left)) in exchanges.iter().enumerate() {
        s.write_all(request.as_bytes()).await.unwrap();
        let a = read_response(&mut s)
            .await
            .unwrap_or_else(|e| panic!("answer {i}: {e}"));
        assert_eq!(a.status, 200, "answer {i}: {}", a.head);
        assert_eq!(
            a.header("x-ratelimit-cost"),
            Some(&*cost.to_string()),
            "answer {i}"
        );
        assert_eq!(
            a.header("x-ratelimit-remaining"),
            Some(&*left.to_string()),
            "answer {i}"
        );
        assert_eq!(a.body, r#"{"ok":true}"#, "answer {i}");
    }
    let bodies: Vec<u64> = up.seen().iter().map(|s| s.body_len).collect();
    assert_eq!(
        bodies,
        [0, 8, 8, 0],
        "each body whole, the one read first too"
    );
}

/// Jobs whose cost is in the body: each takes its own units, and one the full queue turns
/// away gives back what its body said.
async fn a_job_takes_the_cost_its_body_gives_and_gives_it_back_when_turned_away(backend: Backend) {
    let up = Upstream::start().await;
    let config = BODY_COST.replace("path = \"/echo\"", "path = \"/slow\"")
        + "[[jobs]]\nclasses = [\"txt2img\"]\nmode = \"sync\"\n\
           [tiers.paid]\nconcurrency = 1\nmax_queue = 1\n";
    let gate = Gate::start_on(backend, &config, &up.url(), DAY0_MS);
    let c = gate.client();
    let send = |ms: u64, body: &'static str| {
        let (c, url) = (c.clone(), gate.url(&format!("/slow?ms={ms}")));
        tokio::spawn(async move { c.send("POST", &url, &[("x-api-key", "k-jobs")], body).await })
    };
    let running = send(300, r#"{"n": 3}"#);
    gate.until_jobs(|running, _| running == 1).await;
    let queued = send(10, r#"{"n": 2}"#);
    gate.until_jobs(|_, waiting| waiting == 1).await;
    let full = send(10, r#"{"n": 5}"#).await.unwrap();
    assert_eq!(full.status, 429);
    assert_eq!(full.json()["error"], "queue_full");
    assert_eq!(
        full.num("x-ratelimit-remaining"),
        7,
        "its own 5 given back: the running job's 3 and the queued one's 2 stay"
    );
    let (running, queued) = (running.await.unwrap(), queued.await.unwrap());
    assert_eq!(
        (running.status.as_u16(), running.num("x-ratelimit-cost")),
        (200, 3)
    );
    assert_eq!(
        (queued.status.as_u16(), queued.num("x-ratelimit-cost")),
        (200, 2)
    );
    let a = send(10, r#"{"n": 7}"#).await.unwrap();
    assert_eq!(a.status, 200, "the 5 given back fit a job of 7");
    assert_eq!(a.num("x-ratelimit-remaining"), 0);
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 18);
    assert_eq!(
        up.count(),
        3,
        "the turned-away job never reached the upstream"
    );
}

async fn premium_key_gets_300_per_minute_and_no_daily_limit(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::shipped_on(backend, "floodgate.toml", &up.url(), DAY0_MS + 5_000);
    let c = gate.client();
    for i in 0..300 {
        let a = c
            .post(&gate.url("/api/v1/txt2video"), "demo-premium-key")
            .await;
        assert_eq!(a.status, 200, "request {i}");
        assert_eq!(a.header("x-ratelimit-daily-limit"), None);
        assert_eq!(a.num("x-ratelimit-limit"), 300);
    }
    let a = c
        .post(&gate.url("/api/v1/txt2video"), "demo-premium-key")
        .await;
    assert_eq!(
        (a.status.as_u16(), a.header("x-ratelimit-type")),
        (429, Some("minute"))
    );
    // Bearer is the same account.
    let a = c
        .send(
            "POST",
            &gate.url("/api/v1/txt2video"),
            &[("authorization", "Bearer demo-premium-key")],
            "",
        )
        .await;
    assert_eq!(a.status, 429);
    // another endpoint has its own 300.
    assert_eq!(
        c.post(&gate.url(TXT2IMG), "demo-premium-key").await.status,
        200
    );
}

async fn midjourney_progress_ten_per_second_and_others_one_per_three_seconds(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::shipped_on(backend, "midjourney.toml", &up.url(), DAY0_MS);
    let c = gate.client();
    for _ in 0..10 {
        let a = c
            .send(
                "GET",
                &gate.url("/mj/message/abc"),
                &[("x-api-key", "mj")],
                "",
            )
            .await;
        assert_eq!(a.status, 200);
    }
    gate.clock.advance_ms(999);
    let a = c
        .send(
            "GET",
            &gate.url("/mj/message/abc"),
            &[("x-api-key", "mj")],
            "",
        )
        .await;
    assert_eq!(
        (
            a.status.as_u16(),
            a.header("x-ratelimit-type"),
            a.num("retry-after")
        ),
        (429, Some("second"), 1)
    );
    gate.clock.advance_ms(1);
    assert_eq!(
        c.send(
            "GET",
            &gate.url("/mj/message/abc"),
            &[("x-api-key", "mj")],
            ""
        )
        .await
        .status,
        200
    );

    // Every other endpoint shares one 1-per-3-s counter.
    assert_eq!(
        c.post(&gate.url("/mj/submit/imagine"), "mj").await.status,
        200
    );
    let a = c
        .send("GET", &gate.url("/mj/account"), &[("x-api-key", "mj")], "")
        .await;
    assert_eq!(
        (
            a.status.as_u16(),
            a.header("x-ratelimit-type"),
            a.num("retry-after")
        ),
        (429, Some("interval"), 3)
    );
    gate.clock.advance_ms(2_001);
    let a = c.post(&gate.url("/mj/submit/blend"), "mj").await;
    assert_eq!((a.status.as_u16(), a.num("retry-after")), (429, 1));
    gate.clock.advance_ms(999);
    assert_eq!(
        c.post(&gate.url("/mj/submit/blend"), "mj").await.status,
        200
    );
    // Progress checks were not charged by the general counter, nor the reverse.
    assert_eq!(
        c.send(
            "GET",
            &gate.url("/mj/message/abc"),
            &[("x-api-key", "mj")],
            ""
        )
        .await
        .status,
        200
    );
}

/// A unified endpoint: one URL, the class named by the body's `task_type`.
const UNIFIED: &str = r#"
    [server]
    inspect_limit = "1KB"
    [[route]]
    method = "POST"
    path = "/echo"
    class = "task"
    body_pointer = "/task_type"
    [route.body_classes]
    txt2img = "txt2img"
    upscale = "upscale"
    [[tiers.t.limits]]
    classes = ["txt2img"]
    per_minute = 1
    [[tiers.t.limits]]
    classes = ["upscale"]
    per_minute = 2
    [[tiers.t.limits]]
    classes = ["task"]
    per_minute = 5
"#;

async fn a_json_body_field_picks_the_class_of_a_unified_endpoint(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, UNIFIED, &up.url(), DAY0_MS);
    let c = gate.client();
    let send = |body: String| {
        let (c, url) = (c.clone(), gate.url("/echo"));
        async move { c.send("POST", &url, &[("x-api-key", "k")], body).await }
    };
    let txt2img = r#"{"task_type": "txt2img", "input": {"prompt": "a cat"}}"#.to_owned();
    let a = send(txt2img.clone()).await;
    assert_eq!((a.status.as_u16(), a.num("x-ratelimit-limit")), (200, 1));
    assert_eq!(a.body, txt2img.as_bytes(), "forwarded byte for byte");
    let a = send(txt2img).await;
    assert_eq!(a.status, 429, "txt2img's own 1 a minute");
    assert_eq!(a.header("x-ratelimit-type"), Some("minute"));
    let a = send(r#"{"task_type": "upscale"}"#.into()).await;
    assert_eq!(
        (a.num("x-ratelimit-limit"), a.num("x-ratelimit-remaining")),
        (2, 1)
    );
    // Unlisted values and bodies that are not JSON: the route's class.
    for (body, remaining) in [
        (r#"{"task_type": "other"}"#.to_owned(), 4),
        ("task_type=txt2img".to_owned(), 3),
    ] {
        let a = send(body.clone()).await;
        assert_eq!(a.status, 200);
        assert_eq!(
            (a.num("x-ratelimit-limit"), a.num("x-ratelimit-remaining")),
            (5, remaining)
        );
        assert_eq!(a.body, body.as_bytes());
    }
    // A body past inspect_limit cannot be read whole: padding would otherwise move a txt2img
    // job into the looser route class. Refused, not forwarded, nothing counted.
    let long = format!(
        r#"{{"pad": "{}", "task_type": "txt2img"}}"#,
        "x".repeat(2_000)
    );
    let a = send(long).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.json()["error"], "body_unclassifiable");
    assert_eq!(up.count(), 4, "the refused ones never reached the upstream");
}

async fn an_unreadable_body_takes_the_class_the_operator_names(backend: Backend) {
    let up = Upstream::start().await;
    let config = UNIFIED.replace(
        "body_pointer = \"/task_type\"",
        "body_pointer = \"/task_type\"\nunreadable_class = \"txt2img\"",
    );
    let gate = Gate::start_on(backend, &config, &up.url(), DAY0_MS);
    let c = gate.client();
    let long = format!(
        r#"{{"pad": "{}", "task_type": "upscale"}}"#,
        "x".repeat(2_000)
    );
    let a = c
        .send(
            "POST",
            &gate.url("/echo"),
            &[("x-api-key", "k")],
            long.clone(),
        )
        .await;
    assert_eq!((a.status.as_u16(), a.num("x-ratelimit-limit")), (200, 1));
    assert_eq!(a.body, long.as_bytes(), "forwarded byte for byte");
    let a = c
        .send("POST", &gate.url("/echo"), &[("x-api-key", "k")], long)
        .await;
    assert_eq!(a.status, 429, "txt2img's 1 a minute");
}

/// Exactness under contention: 64 requests at once on 5 per minute admit exactly 5, and every
/// refusal has the 429 format and consumed nothing.
async fn sixty_four_parallel_requests_on_five_per_minute_admit_exactly_five(backend: Backend) {
    let up = Upstream::start().await;
    let cfg = r#"
        [[route]]
        path = "/limited"
        class = "limited"
        [[tiers.t.limits]]
        classes = ["limited"]
        per_minute = 5
        per_day = 50
    "#;
    let gate = Gate::start_on(backend, cfg, &up.url(), DAY0_MS + 1_000);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (url, client) = (gate.url("/limited"), gate.client());
        tasks.push(tokio::spawn(
            async move { client.post(&url, "suite").await },
        ));
    }
    let mut ok = 0;
    for t in tasks {
        let a = t.await.unwrap();
        if a.status == 200 {
            ok += 1;
        } else {
            assert_eq!(a.status, 429);
            assert_eq!(a.header("content-type"), Some("application/json"));
            assert_eq!(
                a.json(),
                serde_json::json!({"message": "Too Many Attempts."})
            );
            assert_eq!(a.header("x-ratelimit-type"), Some("minute"));
            assert_eq!(a.num("x-ratelimit-limit"), 5);
            assert_eq!(a.num("x-ratelimit-remaining"), 0);
            assert_eq!(a.num("x-ratelimit-daily-limit"), 50);
            assert_eq!(
                a.num("x-ratelimit-daily-remaining"),
                45,
                "refusals consume nothing"
            );
            assert_eq!(
                a.num("retry-after"),
                60,
                "the minute the first request opened"
            );
        }
    }
    assert_eq!(ok, 5, "64 parallel requests on 5/min admit exactly 5");
    assert_eq!(up.count(), 5);
    let other = gate
        .client()
        .post(&gate.url("/limited"), "someone-else")
        .await;
    assert_eq!(
        (other.status.as_u16(), other.num("x-ratelimit-remaining")),
        (200, 4)
    );
}

on_every_setup!(
    sixty_four_parallel_requests_on_five_per_minute_admit_exactly_five,
    basic_txt2img_three_per_minute_with_headers_and_exact_429,
    every_basic_endpoint_has_its_seed_limits,
    daily_quota_refuses_until_midnight_utc_then_resets,
    monthly_quota_refuses_until_the_first_at_midnight_utc_then_resets,
    a_class_costing_three_units_takes_them_from_every_window,
    a_body_field_gives_the_cost_and_the_headers_count_units,
    a_body_asking_more_than_max_cost_is_charged_max_cost,
    a_body_without_a_usable_cost_is_charged_default_cost,
    a_body_costing_more_than_remains_is_refused_and_takes_nothing,
    a_body_costing_more_than_a_limit_is_refused_without_retry_after,
    a_job_takes_the_cost_its_body_gives_and_gives_it_back_when_turned_away,
    premium_key_gets_300_per_minute_and_no_daily_limit,
    midjourney_progress_ten_per_second_and_others_one_per_three_seconds,
    a_json_body_field_picks_the_class_of_a_unified_endpoint,
    an_unreadable_body_takes_the_class_the_operator_names,
);

// Raw HTTP/1.1 on one connection: the same on every store, and not a question for HTTP/2.
on_both_stores!(body_costs_hold_on_a_keep_alive_connection);
