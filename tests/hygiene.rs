//! Request hygiene over real TCP: conflicting API keys, ambiguous framing and heads the parser
//! cannot take are refused with a 400 JSON error before anything reaches the upstream; a body
//! the client breaks is a 400, not an upstream failure; API keys never appear in logs or
//! metrics.

mod support;

use std::path::Path;

use support::process::Process;
use support::raw::{closed_within, connect, exchange, read_response, read_to_close};
use support::{metric, metrics, Gate, TestClient, Upstream, DAY0_MS};
use tokio::io::AsyncWriteExt;

const CONFIG: &str = "[server]\n[identity]\ndefault_tier = \"basic\"\n\
    [[route]]\nmethod = \"POST\"\npath = \"/v1/generate\"\nclass = \"generate\"\n\
    [[tiers.basic.limits]]\nclasses = [\"generate\"]\nper_minute = 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_api_keys_get_400() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let c = TestClient::new();
    let url = gate.url("/v1/generate");
    for headers in [
        vec![("x-api-key", "alice"), ("authorization", "Bearer bob")],
        vec![("authorization", "Bearer alice"), ("x-api-key", "bob")],
    ] {
        let a = c.send("POST", &url, &headers, "{}").await;
        assert_eq!(a.status, 400, "{headers:?}");
        assert_eq!(a.json()["error"], "conflicting_api_keys");
        assert_eq!(
            a.json()["message"],
            "the request names more than one API key"
        );
    }
    // Repeated x-api-key with different values: raw, since a client library would merge them.
    let twice = b"POST /v1/generate HTTP/1.1\r\nhost: t\r\nx-api-key: alice\r\n\
                  x-api-key: bob\r\ncontent-length: 0\r\n\r\n";
    assert_eq!(exchange(gate.addr, twice).await.status, 400);
    let same = [("x-api-key", "alice"), ("authorization", "Bearer alice")];
    assert_eq!(c.send("POST", &url, &same, "{}").await.status, 200);
    assert_eq!(up.count(), 1, "refused requests never reached the upstream");
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &m,
            "floodgate_rejected_total{reason=\"conflicting_api_keys\"}"
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_gets_400_json_and_the_connection_closes() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let head = "POST /v1/generate HTTP/1.1\r\nhost: t\r\nx-api-key: k\r\n";
    // hyper would accept these (it drops Content-Length for chunked, or keeps one of two
    // equal length fields); floodgate refuses them with its JSON.
    for framing in [
        "content-length: 5\r\ntransfer-encoding: chunked\r\n",
        "transfer-encoding: chunked\r\ncontent-length: 5\r\n",
        "content-length: 5\r\ncontent-length: 5\r\n",
    ] {
        let raw = format!("{head}{framing}\r\n5\r\nhello\r\n0\r\n\r\n");
        let mut s = connect(gate.addr).await;
        s.write_all(raw.as_bytes()).await.unwrap();
        let a = read_response(&mut s).await.unwrap();
        assert_eq!(a.status, 400, "{framing:?}: {a:?}");
        let body: serde_json::Value =
            serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{framing:?}: {e}: {a:?}"));
        assert_eq!(body["error"], "ambiguous_framing", "{framing:?}");
        assert_eq!(a.header("connection"), Some("close"), "{framing:?}");
        assert!(
            closed_within(&mut s, std::time::Duration::from_secs(2)).await,
            "{framing:?}: the connection stayed open"
        );
    }
    // hyper's parser refuses these before the proxy sees them; the answer is floodgate's JSON.
    for framing in [
        "content-length: 5\r\ncontent-length: 6\r\n",
        "content-length: 5, 5\r\n",
        "transfer-encoding: gzip\r\n",
        "content-length: five\r\n",
    ] {
        let raw = format!("{head}{framing}\r\nhello");
        let a = exchange(gate.addr, raw.as_bytes()).await;
        assert_eq!(a.status, 400, "{framing:?}: {a:?}");
        assert_eq!(json_error(&a), "malformed_request", "{framing:?}");
    }
    assert_eq!(up.count(), 0, "no ambiguous request reached the upstream");
    // Framed one way, each way: served, and a keep-alive connection goes on.
    let mut s = connect(gate.addr).await;
    for framing in [
        "content-length: 5\r\n\r\nhello".to_owned(),
        "transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_owned(),
    ] {
        s.write_all(format!("{head}{framing}").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await.unwrap().status, 200);
    }
    assert_eq!(up.count(), 2);
    assert!(up.seen().iter().all(|r| r.body_len == 5));
}

/// The `error` of a JSON error body.
fn json_error(a: &support::raw::RawAnswer) -> String {
    let body: serde_json::Value =
        serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("not JSON ({e}): {a:?}"));
    body["error"].as_str().unwrap_or_default().to_owned()
}

/// Heads hyper's parser cannot take — a broken request line, a malformed field, a head over
/// `max_header_bytes` — get floodgate's JSON error like every other refusal (hyper alone would
/// send an empty 400 or 431), and are counted. An upstream answer of the same shape passes
/// through untouched, and a refused head pipelined behind a good request leaves that request's
/// answer alone, also behind a request that asked for a protocol switch it did not get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_the_parser_refuses_get_a_json_error() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    for raw in [
        "GARBAGE\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nhost: t\r\nbad header\r\n\r\n".to_owned(),
        "G\x00T / HTTP/1.1\r\nhost: t\r\n\r\n".to_owned(),
    ] {
        let a = exchange(gate.addr, raw.as_bytes()).await;
        assert_eq!(a.status, 400, "{raw:?}: {a:?}");
        assert_eq!(json_error(&a), "malformed_request", "{raw:?}");
        assert_eq!(a.header("connection"), Some("close"), "{raw:?}");
        assert_eq!(a.header("content-type"), Some("application/json"));
    }
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: t\r\nx-big: {}\r\n\r\n",
        "v".repeat(70_000)
    );
    let a = exchange(gate.addr, huge.as_bytes()).await;
    assert_eq!(a.status, 431, "{a:?}");
    assert_eq!(json_error(&a), "header_too_large");
    assert_eq!(up.count(), 0, "nothing reached the upstream");

    // The upstream's own bare 400 (no fields, empty body) to a client closing its connection
    // looks like hyper's refusal on the wire; it is the upstream's and arrives as sent.
    let bare = "GET /bare/400 HTTP/1.1\r\nhost: t\r\nx-api-key: k\r\nconnection: close\r\n\r\n";
    let a = exchange(gate.addr, bare.as_bytes()).await;
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(a.body, "", "the upstream's answer was rewritten: {a:?}");
    assert_eq!(a.header("content-type"), None, "{a:?}");

    // A good request, then a broken head behind it on the same connection.
    let mut s = connect(gate.addr).await;
    let pipelined = "GET /bare/400 HTTP/1.1\r\nhost: t\r\nx-api-key: k\r\n\r\nGARBAGE\r\n\r\n";
    s.write_all(pipelined.as_bytes()).await.unwrap();
    let answers = read_to_close(&mut s).await.unwrap();
    let [first, second] = &answers[..] else {
        panic!("two answers expected: {answers:?}");
    };
    assert_eq!((first.status, first.body.as_str()), (400, ""), "{first:?}");
    assert_eq!(second.status, 400, "{second:?}");
    assert_eq!(json_error(second), "malformed_request");

    // Behind a request that asked to switch protocols and was not switched (a plain 200).
    let mut s = connect(gate.addr).await;
    let asked = "GET /ws HTTP/1.1\r\nhost: t\r\nx-api-key: k\r\nconnection: upgrade\r\n\
                 upgrade: websocket\r\n\r\nGARBAGE\r\n\r\n";
    s.write_all(asked.as_bytes()).await.unwrap();
    let answers = read_to_close(&mut s).await.unwrap();
    let [first, second] = &answers[..] else {
        panic!("two answers expected: {answers:?}");
    };
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(json_error(second), "malformed_request", "{second:?}");

    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(&m, "floodgate_rejected_total{reason=\"malformed_request\"}"),
        5.0
    );
    assert_eq!(
        metric(&m, "floodgate_rejected_total{reason=\"header_too_large\"}"),
        1.0
    );
}

/// A body the client breaks after its head was admitted — a bad chunk, or fewer bytes than its
/// `Content-Length` before it stops sending — is the client's fault: 400 JSON, counted as a
/// refusal, not a 502 upstream failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_client_breaks_is_a_400_json_error_not_an_upstream_failure() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let head = "POST /v1/generate HTTP/1.1\r\nhost: t\r\nx-api-key: k\r\n";
    for (framing, body) in [
        ("transfer-encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"),
        ("content-length: 10\r\n", "abc"),
    ] {
        let mut s = connect(gate.addr).await;
        s.write_all(format!("{head}{framing}\r\n{body}").as_bytes())
            .await
            .unwrap();
        // Stops sending, still reading: the body cannot be completed.
        s.shutdown().await.unwrap();
        let a = read_response(&mut s).await.unwrap();
        assert_eq!(a.status, 400, "{framing:?}: {a:?}");
        let json: serde_json::Value =
            serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{framing:?}: {e}: {a:?}"));
        assert_eq!(json["error"], "bad_request_body", "{framing:?}");
    }
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(&m, "floodgate_rejected_total{reason=\"bad_request_body\"}"),
        2.0
    );
    // (Series the upstream clients resolve at start are exported at zero.)
    let upstream_errors = m
        .lines()
        .filter(|l| l.starts_with("floodgate_upstream_errors_total{"))
        .any(|l| !l.ends_with(" 0"));
    assert!(!upstream_errors, "counted as an upstream failure:\n{m}");
}

/// A key no log line or metric may ever contain.
const SECRET: &str = "sk-live-7f3a9c1e5b2d4f6a8c0e2b4d6f8a1c3e";
const OTHER: &str = "sk-live-0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e";

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("floodgate.toml");
    let text = format!(
        "{CONFIG}[[tiers.basic.limits]]\nclasses = [\"generate\"]\nper_minute = 1\nshadow = true\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_appear_in_debug_logs_or_metrics() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::start_logging(&write_config(dir.path()), &up.url(), "debug").await;
    let c = TestClient::new();
    let gen = p.url("/v1/generate");
    // Admitted, shadow-limited, refused (429), conflicting, upstream error, bearer form.
    for _ in 0..3 {
        c.post(&gen, SECRET).await;
    }
    let bearer = format!("Bearer {SECRET}");
    let conflicting = [("x-api-key", OTHER), ("authorization", bearer.as_str())];
    assert_eq!(c.send("POST", &gen, &conflicting, "{}").await.status, 400);
    c.send(
        "GET",
        &p.url("/status/502"),
        &[("authorization", &bearer)],
        "",
    )
    .await;
    let ambiguous = format!(
        "POST /v1/generate HTTP/1.1\r\nhost: t\r\nx-api-key: {SECRET}\r\n\
         content-length: 1\r\ncontent-length: 1\r\n\r\nx"
    );
    assert_eq!(exchange(p.addr, ambiguous.as_bytes()).await.status, 400);
    let usage = c.get(&p.admin_url(&format!("/usage?key={SECRET}"))).await;
    assert_eq!(usage.status, 200);
    assert!(!String::from_utf8_lossy(&usage.body).contains(SECRET));

    let m = metrics(&p.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &m,
            "floodgate_would_limit_total{class=\"generate\",tier=\"basic\",type=\"minute\"}"
        ),
        1.0,
        "the shadow rule logged and counted its decision"
    );
    p.terminate().await;
    let log = p.stderr();
    assert!(
        log.contains("shadow limit would refuse"),
        "debug logs were written:\n{log}"
    );
    assert!(
        log.contains("\"level\":\"DEBUG\"") && log.contains("request refused"),
        "debug logging was on:\n{log}"
    );
    for key in [SECRET, OTHER, &SECRET[8..24]] {
        assert!(!log.contains(key), "a key leaked into the logs:\n{log}");
        assert!(!m.contains(key), "a key leaked into the metrics");
    }
}
