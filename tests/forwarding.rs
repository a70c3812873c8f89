//! Forwarding fidelity over real HTTP: methods, raw targets, headers, hop-by-hop handling,
//! path normalisation for classification only, upstream failures, and the admin listener.

mod support;

use support::{Answer, Backend, Gate, TestClient, Upstream, DAY0_MS};

const OPEN: &str = r#"
    [[route]]
    method = "POST"
    path = "/api/v1/txt2img"
    class = "txt2img"
    [[tiers.t.limits]]
    classes = ["txt2img"]
    per_minute = 100
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_path_query_and_header_arrives_as_sent() {
    let up = Upstream::start().await;
    let gate = Gate::start(OPEN, &up.url(), DAY0_MS);
    let c = TestClient::new();
    let target = "/some/Path%2Fx/../y?a=1&b=%20x&a=2";
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"] {
        let a = c
            .send(
                method,
                &gate.url(target),
                &[
                    ("x-api-key", "k"),
                    ("x-custom", "v1"),
                    ("accept", "text/plain"),
                ],
                "",
            )
            .await;
        assert_eq!(a.status, 200, "{method}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 7);
    for (s, method) in seen
        .iter()
        .zip(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
    {
        assert_eq!(s.method.as_str(), method);
        assert_eq!(
            s.target, target,
            "path and query forwarded exactly as received"
        );
        assert_eq!(s.headers["x-custom"], "v1");
        assert_eq!(s.headers["x-api-key"], "k", "clients keep their keys");
        assert_eq!(s.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(s.headers["x-forwarded-proto"], "http");
        assert_eq!(
            s.headers["host"],
            gate.addr.to_string(),
            "Host is forwarded as received"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_dropped_both_ways_and_forwarded_for_appended() {
    let up = Upstream::start().await;
    let gate = Gate::start(OPEN, &up.url(), DAY0_MS);
    let c = TestClient::new();
    let a = c
        .send(
            "GET",
            &gate.url("/hop"),
            &[
                ("x-api-key", "k"),
                ("connection", "x-client-secret"),
                ("x-client-secret", "1"),
                ("te", "trailers"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-floodgate-tier", "premium"),
            ],
            "",
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-up-visible"), Some("1"));
    assert_eq!(
        a.header("x-up-secret"),
        None,
        "named in the upstream's Connection header"
    );
    assert_eq!(a.header("keep-alive"), None);
    let s = &up.seen()[0];
    assert!(s.headers.get("x-client-secret").is_none());
    assert!(s.headers.get("te").is_none());
    assert!(
        s.headers.get("x-floodgate-tier").is_none(),
        "clients cannot set floodgate's own headers"
    );
    assert_eq!(
        s.headers["x-forwarded-for"], "127.0.0.1",
        "an untrusted client's chain is replaced by its address"
    );
}

/// Sends `GET /fwd` with the given forwarding fields and returns what the upstream saw.
async fn forwarded_as(gate: &Gate, up: &Upstream, fields: &[(&str, &str)]) -> (String, String) {
    let mut headers = vec![("x-api-key", "k")];
    headers.extend_from_slice(fields);
    let a = TestClient::new()
        .send("GET", &gate.url("/fwd"), &headers, "")
        .await;
    assert_eq!(a.status, 200);
    let s = up.seen().pop().unwrap();
    let get = |n: &str| s.header(n).unwrap_or_default().to_owned();
    (get("x-forwarded-for"), get("x-forwarded-proto"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_forwarding_fields_are_kept_and_anyone_elses_replaced() {
    let up = Upstream::start().await;
    let behind_lb = format!("[identity]\ntrusted_proxies = [\"127.0.0.0/8\"]\n{OPEN}");
    let trusted = Gate::start(&behind_lb, &up.url(), DAY0_MS);
    let lb = [
        ("x-forwarded-for", "198.51.100.4, 10.1.2.3"),
        ("x-forwarded-proto", "https"),
    ];
    assert_eq!(
        forwarded_as(&trusted, &up, &lb).await,
        (
            "198.51.100.4, 10.1.2.3, 127.0.0.1".to_owned(),
            "https".to_owned()
        ),
        "behind a TLS load balancer: its chain and its protocol"
    );
    assert_eq!(
        forwarded_as(&trusted, &up, &[]).await,
        ("127.0.0.1".to_owned(), "http".to_owned()),
        "a trusted peer that sent nothing: its address, and floodgate's own protocol"
    );

    let untrusted = Gate::start(OPEN, &up.url(), DAY0_MS);
    assert_eq!(
        forwarded_as(&untrusted, &up, &lb).await,
        ("127.0.0.1".to_owned(), "http".to_owned()),
        "a client cannot claim TLS or another address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_limited_path_counts_in_its_class_and_is_forwarded_raw() {
    let up = Upstream::start().await;
    let gate = Gate::start(OPEN, &up.url(), DAY0_MS);
    let c = TestClient::new();
    let variants = [
        "/api/v1/txt2img",
        "/api/v1//txt2img",
        "/api/v1/./txt2img",
        "/api/v1/x/../txt2img",
        "/api/v1/%74xt2img",
        "/api/v1/txt2img/",
        "/api/v1/txt2img?x=1",
    ];
    for (i, v) in variants.iter().enumerate() {
        let a = c.post(&gate.url(v), "k").await;
        assert_eq!(a.status, 200, "{v}");
        assert_eq!(
            a.num("x-ratelimit-remaining"),
            99 - i as u64,
            "{v} is the txt2img class"
        );
    }
    let seen: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        seen, variants,
        "the upstream receives each path exactly as sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_a_502_json_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let gate = Gate::start(OPEN, &url, DAY0_MS);
    let a = TestClient::new()
        .post(&gate.url("/api/v1/txt2img"), "k")
        .await;
    assert_eq!(a.status, 502);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.json()["error"], "upstream_unreachable");
    assert_eq!(
        a.num("x-ratelimit-limit"),
        100,
        "a limited class still reports its usage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_a_504_json_error_at_the_configured_timeout() {
    let up = Upstream::start().await;
    let config = format!("[server]\nupstream_timeout = \"300ms\"\n{OPEN}");
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let started = std::time::Instant::now();
    let a = TestClient::new()
        .send("GET", &gate.url("/slow?ms=3000"), &[("x-api-key", "k")], "")
        .await;
    let took = started.elapsed();
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["error"], "upstream_timeout");
    assert!(
        took < std::time::Duration::from_millis(2_000),
        "answered at the timeout, took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_error_statuses_pass_through_untouched() {
    let up = Upstream::start().await;
    let gate = Gate::start(OPEN, &up.url(), DAY0_MS);
    let c = TestClient::new();
    for code in [400u16, 404, 500, 503] {
        let a = c
            .send(
                "GET",
                &gate.url(&format!("/status/{code}")),
                &[("x-api-key", "k")],
                "",
            )
            .await;
        assert_eq!(a.status.as_u16(), code);
        assert_eq!(a.json()["status"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_gets_401_json_when_anonymous_is_rejected() {
    let up = Upstream::start().await;
    let gate = Gate::start(OPEN, &up.url(), DAY0_MS);
    let a = TestClient::new()
        .send("POST", &gate.url("/api/v1/txt2img"), &[], "")
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["error"], "missing_api_key");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_serves_metrics_health_and_usage_while_public_metrics_is_proxied() {
    let up = Upstream::start().await;
    let gate = Gate::shipped("floodgate.toml", &up.url(), DAY0_MS + 1_000);
    let c = TestClient::new();
    let secret = "sk-very-secret-key-123";
    for _ in 0..4 {
        c.post(&gate.url("/api/v1/txt2img"), secret).await;
    }
    let health = c.get(&gate.admin_url("/healthz")).await;
    assert_eq!(health.status, 200);
    assert_eq!(c.get(&gate.admin_url("/readyz")).await.status, 200);

    let m = c.get(&gate.admin_url("/metrics")).await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    assert!(
        text.contains(
            r#"floodgate_requests_total{class="txt2img",decision="admitted",tier="basic"} 3"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"floodgate_requests_total{class="txt2img",decision="limited",tier="basic"} 1"#
    ));
    assert!(
        text.contains(r#"floodgate_limited_total{class="txt2img",tier="basic",type="minute"} 1"#)
    );
    assert!(text.contains("floodgate_upstream_response_seconds_bucket"));
    assert!(!text.contains(secret), "metrics never carry an API key");

    let u = c
        .get(&gate.admin_url(&format!("/usage?key={secret}")))
        .await;
    assert_eq!(u.status, 200);
    let usage = u.json();
    assert_eq!(usage["tier"], "basic");
    let txt2img: Vec<&serde_json::Value> = usage["limits"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["class"] == "txt2img")
        .collect();
    assert_eq!(txt2img.len(), 2);
    assert!(txt2img
        .iter()
        .any(|l| l["type"] == "minute" && l["used"] == 3 && l["remaining"] == 0));
    assert!(txt2img
        .iter()
        .any(|l| l["type"] == "daily" && l["used"] == 3 && l["remaining"] == 97));
    assert!(!String::from_utf8_lossy(&u.body).contains(secret));

    let public = c
        .send("GET", &gate.url("/metrics"), &[("x-api-key", "k")], "")
        .await;
    assert_eq!(
        public.json()["ok"],
        true,
        "the upstream answered /metrics on the public port"
    );
    assert_eq!(up.seen().last().unwrap().target, "/metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ietf_ratelimit_headers_behind_a_switch() {
    let up = Upstream::start().await;
    let config = format!("[headers]\nietf = true\n{OPEN}");
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let a = TestClient::new()
        .post(&gate.url("/api/v1/txt2img"), "k")
        .await;
    assert_eq!(
        a.header("ratelimit-policy"),
        Some("\"txt2img.minute\";q=100;w=60")
    );
    assert_eq!(a.header("ratelimit"), Some("\"txt2img.minute\";r=99;t=60"));
    let plain = Gate::start(OPEN, &up.url(), DAY0_MS);
    let a = TestClient::new()
        .post(&plain.url("/api/v1/txt2img"), "k")
        .await;
    assert_eq!(a.header("ratelimit-policy"), None);
}

/// A class checked against three windows — its own minute and day, and an hour shared by every
/// class — and a job class under its own minute and the same hour.
const THREE_WINDOWS: &str = r#"
    [headers]
    ietf = true
    [identity]
    default_tier = "t"
    [[route]]
    method = "POST"
    path = "/gen"
    class = "gen"
    [[route]]
    method = "POST"
    path = "/job"
    class = "job"
    [[jobs]]
    classes = ["job"]
    [[tiers.t.limits]]
    classes = ["gen"]
    per_minute = 3
    per_day = 100
    [[tiers.t.limits]]
    classes = ["*"]
    shared = true
    per_hour = 50
    [[tiers.t.limits]]
    classes = ["job"]
    per_minute = 2
"#;

/// The IETF fields of an answer, `(RateLimit-Policy, RateLimit)`.
fn ietf(a: &Answer) -> (&str, &str) {
    let field = |name| a.header(name).unwrap_or_else(|| panic!("no {name}: {a:?}"));
    (field("ratelimit-policy"), field("ratelimit"))
}

/// Every window a request was checked against is a policy of its own, named by the class (or
/// the shared group) and the window, with its own quota, window, remaining count and reset —
/// on an admitted request, on a 429 and on a job's answer.
async fn every_window_of_a_class_is_a_named_ietf_policy(backend: Backend) {
    let up = Upstream::start().await;
    let t0 = DAY0_MS + 1_000; // 00:00:01 UTC: 86,399 s to midnight
    let gate = Gate::start_on(backend, THREE_WINDOWS, &up.url(), t0);
    let c = gate.client();
    let policy = "\"gen.minute\";q=3;w=60, \"gen.daily\";q=100;w=86400, \
                  \"account.hour\";q=50;w=3600";
    let a = c.post(&gate.url("/gen"), "k").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        ietf(&a),
        (
            policy,
            "\"gen.minute\";r=2;t=60, \"gen.daily\";r=99;t=86399, \"account.hour\";r=49;t=3600"
        )
    );
    gate.clock.advance_ms(10_000);
    let job = c.post(&gate.url("/job"), "k").await;
    assert_eq!(job.status, 200);
    assert_eq!(
        ietf(&job),
        (
            "\"account.hour\";q=50;w=3600, \"job.minute\";q=2;w=60",
            "\"account.hour\";r=48;t=3590, \"job.minute\";r=1;t=60"
        ),
        "a job's answer names its own windows, in the config's order; the shared hour \
         counted both classes"
    );
    for _ in 0..2 {
        assert_eq!(c.post(&gate.url("/gen"), "k").await.status, 200);
    }
    gate.clock.advance_ms(5_000);
    let refused = c.post(&gate.url("/gen"), "k").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-ratelimit-type"), Some("minute"));
    assert_eq!(refused.num("retry-after"), 45);
    assert_eq!(
        ietf(&refused),
        (
            policy,
            "\"gen.minute\";r=0;t=45, \"gen.daily\";r=97;t=86384, \"account.hour\";r=46;t=3585"
        ),
        "a 429 names every window too, as it stands: the refusal took nothing"
    );
    assert_eq!(up.count(), 4);
}

on_every_setup!(every_window_of_a_class_is_a_named_ietf_policy);

/// A response the upstream streams over time (server-sent events, as a model streams tokens)
/// reaches the client event by event, not when the upstream finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_reaches_the_client_event_by_event() {
    use http_body_util::BodyExt;
    use std::time::{Duration, Instant};

    const EVENTS: usize = 4;
    const EVERY_MS: u64 = 300;
    let up = Upstream::start().await;
    let gate = Gate::start(OPEN, &up.url(), DAY0_MS);
    let stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("/drip?events={EVENTS}&ms={EVERY_MS}"))
        .header("host", "t")
        .header("x-api-key", "k")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let sent = Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
            arrivals.push((text.matches("data: ").count(), sent.elapsed()));
        }
    }
    assert_eq!(text, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n");
    // Each event arrives on its own, about EVERY_MS after the one before.
    let when = |n: usize| arrivals.iter().find(|(seen, _)| *seen >= n).unwrap().1;
    let last_sent = Duration::from_millis(EVERY_MS * (EVENTS as u64 - 1));
    assert!(
        when(1) < last_sent / 2,
        "the first event waited for the rest: {arrivals:?}"
    );
    for n in 2..=EVENTS {
        let gap = when(n) - when(n - 1);
        assert!(
            gap > Duration::from_millis(EVERY_MS / 2),
            "events {} and {n} arrived together: {arrivals:?}",
            n - 1
        );
    }
}
