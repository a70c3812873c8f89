//! One bug never ends the process: a panic while a request is answered gets that request a 500
//! JSON, a panic while a body streams closes that one connection; both are counted in
//! `floodgate_panics_total` and the next requests — on the same keep-alive client and on new
//! connections — are served, with the counters intact. The panics come from a test-only hook
//! (`--features test-hooks`, never in a release build). Real sockets over loopback.

mod support;

use support::raw::{connect, read_to_close};
use support::{metric, metrics, Gate, TestClient, Upstream, DAY0_MS};
use tokio::io::AsyncWriteExt;

const CONFIG: &str = "[identity]\ndefault_tier = \"basic\"\n\
    [[tiers.basic.limits]]\nclasses = [\"*\"]\nper_minute = 10\n";

async fn panics(gate: &Gate) -> f64 {
    metric(
        &metrics(&gate.admin_url("/metrics")).await,
        "floodgate_panics_total",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_request_is_a_500_and_the_next_request_is_served() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let c = TestClient::new();
    let url = gate.url("/x");
    assert_eq!(c.post(&url, "alice").await.status, 200);

    let hook = [
        ("x-api-key", "alice"),
        ("x-floodgate-test-panic", "handler"),
    ];
    let a = c.send("POST", &url, &hook, "{}").await;
    assert_eq!(a.status, 500);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.json()["error"], "internal_error");
    assert_eq!(panics(&gate).await, 1.0);

    // The same client (its keep-alive connection), a new one, and the counters as they were.
    let next = c.post(&url, "alice").await;
    assert_eq!(next.status, 200);
    assert_eq!(next.header("x-ratelimit-remaining"), Some("8"));
    assert_eq!(TestClient::new().post(&url, "bob").await.status, 200);
    assert_eq!(
        up.count(),
        3,
        "the panicking request never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_a_body_streams_closes_only_that_connection() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let c = TestClient::new();
    let url = gate.url("/x");
    assert_eq!(c.post(&url, "carol").await.status, 200);

    let mut s = connect(gate.addr).await;
    s.write_all(
        b"GET /x HTTP/1.1\r\nhost: t\r\nx-api-key: carol\r\nx-floodgate-test-panic: body\r\n\r\n",
    )
    .await
    .unwrap();
    // The head may have gone out; the promised byte of body never comes: the socket closes.
    let wire = read_to_close(&mut s).await;
    assert_ne!(
        wire.as_ref().err().map(String::as_str),
        Some("timed out"),
        "it closed"
    );
    assert!(
        wire.as_ref().map_or(true, |answers| answers.is_empty()),
        "no complete answer on the panicking connection: {wire:?}"
    );
    assert_eq!(panics(&gate).await, 1.0);

    // The other client's keep-alive connection and new ones are served.
    let next = c.post(&url, "carol").await;
    assert_eq!(next.status, 200);
    assert_eq!(TestClient::new().post(&url, "dave").await.status, 200);
}
