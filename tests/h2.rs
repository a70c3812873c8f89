//! HTTP/2 from clients: prior knowledge (h2c) on a clear-text listener with `[server] h2c`, and
//! ALPN `h2` on TLS. Limits, headers and queues behave as on HTTP/1.1 — concurrent streams of
//! one connection are decided one by one, exactly — and the upstream still gets HTTP/1.1.

mod support;

use std::sync::Arc;

use floodgate::config::{Config, Overrides};
use support::{Answer, Gate, TestClient, Upstream, DAY0_MS};

/// floodgate on `config_text` with h2c on.
fn h2c_gate(config_text: &str, upstream: &str, now_ms: u64) -> Gate {
    let overrides = Overrides {
        upstream: Some(upstream.to_owned()),
        workers: Some(2),
        ..Overrides::default()
    };
    let mut config = Config::parse(config_text, &overrides).expect("config is valid");
    config.server.h2c = true;
    config.state = None;
    Gate::start_config(config, now_ms)
}

fn shipped(name: &str) -> String {
    std::fs::read_to_string(format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_limits_their_headers_and_exact_429_hold_over_h2c() {
    let up = Upstream::start().await;
    let t0 = DAY0_MS + 12 * 3_600_000 + 250;
    let gate = h2c_gate(&shipped("floodgate.toml"), &up.url(), t0);
    let c = TestClient::h2c();
    for remaining in [2, 1, 0] {
        let a = c.post(&gate.url("/api/v1/txt2img"), "k-basic").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.num("x-ratelimit-limit"), 3);
        assert_eq!(a.num("x-ratelimit-remaining"), remaining);
        assert_eq!(a.num("x-ratelimit-daily-remaining"), 97 + remaining);
    }
    gate.clock.advance_ms(20_500);
    let a = c.post(&gate.url("/api/v1/txt2img"), "k-basic").await;
    assert_eq!(a.status, 429);
    assert_eq!(a.num("retry-after"), 40);
    assert_eq!(a.header("x-ratelimit-type"), Some("minute"));
    assert_eq!(
        a.json(),
        serde_json::json!({"message": "Too Many Attempts."})
    );
    assert_eq!(up.count(), 3);
    for seen in up.seen() {
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
        assert_eq!(seen.header("x-api-key"), Some("k-basic"));
    }
    let h1 = TestClient::new()
        .post(&gate.url("/api/v1/txt2img"), "k-basic")
        .await;
    assert_eq!(
        (h1.status.as_u16(), h1.num("retry-after")),
        (429, 40),
        "HTTP/1.1 on the same port, the same account"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_streams_of_one_connection_on_five_a_minute_admit_exactly_five() {
    let up = Upstream::start().await;
    let cfg = r#"
        [[route]]
        path = "/limited"
        class = "limited"
        [[tiers.t.limits]]
        classes = ["limited"]
        per_minute = 5
    "#;
    let gate = h2c_gate(cfg, &up.url(), DAY0_MS);
    let c = TestClient::h2c();
    let url = gate.url("/limited");
    let answers: Vec<Answer> = futures_join((0..64).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move { c.post(&url, "streams").await }
    }))
    .await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(ok, 5);
    let mut remaining: Vec<u64> = answers
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.num("x-ratelimit-remaining"))
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, [0, 1, 2, 3, 4], "each stream its own count");
    assert!(answers
        .iter()
        .filter(|a| a.status != 200)
        .all(|a| a.status == 429 && a.header("x-ratelimit-type") == Some("minute")));
    assert_eq!(up.count(), 5);
    let text = support::metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        support::metric(&text, "floodgate_client_connections"),
        1.0,
        "all 64 were streams of one connection"
    );
}

/// Awaits every future, in order, concurrently (streams multiplexed on one connection).
async fn futures_join<F: std::future::Future<Output = Answer> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<Answer> {
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_on_streams_of_one_connection_keep_the_concurrency_cap() {
    let up = Upstream::start().await;
    let cfg = r#"
        [[route]]
        method = "POST"
        path = "/slow"
        class = "job"
        [[jobs]]
        classes = ["job"]
        [tiers.t]
        concurrency = 1
    "#;
    let gate = h2c_gate(cfg, &up.url(), DAY0_MS);
    let c = TestClient::h2c();
    let url = gate.url("/slow?ms=150");
    let answers = futures_join((0..3).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move { c.post(&url, "k").await }
    }))
    .await;
    assert!(answers.iter().all(|a| a.status == 200));
    assert_eq!(up.max_in_flight(), 1, "one job at a time");
    let mut waits: Vec<u64> = answers.iter().map(|a| a.num("x-queue-wait-ms")).collect();
    waits.sort_unstable();
    assert_eq!(waits[0], 0);
    assert!(waits[1] >= 100 && waits[2] >= 250, "{waits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_on_tls_is_served_http2() {
    let ca = support::pki::Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.leaf(&["localhost"]).write(dir.path());
    let up = Upstream::start().await;
    let cfg = format!(
        "[server.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n\
         [identity]\nanonymous = \"client_ip\"\n"
    );
    let gate = Gate::start(&cfg, &up.url(), DAY0_MS);
    let client = ca.client(&[], &[b"h2", b"http/1.1"], None);
    let tcp = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&client))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/v1/models")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let seen = &up.seen()[0];
    assert_eq!(seen.target, "/v1/models", "origin-form upstream");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("host"), Some("localhost"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_without_a_request_or_left_idle_is_closed_by_the_clocks() {
    let up = Upstream::start().await;
    let cfg = "[server]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"600ms\"\n\
               [identity]\nanonymous = \"client_ip\"\n";
    let gate = h2c_gate(cfg, &up.url(), DAY0_MS);
    let open = |addr| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        (sender, tokio::spawn(conn))
    };
    let started = std::time::Instant::now();
    let (_silent, ended) = open(gate.addr).await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), ended).await;
    assert!(
        closed.is_ok(),
        "a connection that never starts a request is closed"
    );
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(250),
        "{waited:?}"
    );

    let (mut sender, ended) = open(gate.addr).await;
    let req = http::Request::get(gate.url("/"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    let answered = std::time::Instant::now();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), ended).await;
    assert!(closed.is_ok(), "an idle connection is closed");
    assert!(answered.elapsed() >= std::time::Duration::from_millis(500));
    let text = support::metrics(&gate.admin_url("/metrics")).await;
    let timeouts = |kind: &str| {
        support::metric(
            &text,
            &format!(r#"floodgate_client_timeouts_total{{kind="{kind}"}}"#),
        )
    };
    assert_eq!((timeouts("header"), timeouts("idle")), (1.0, 1.0));
}
