//! What one client can hold: a slow request head is dropped at the header timeout, an idle
//! keep-alive connection at the idle timeout, connections over `max_connections` wait, and heads
//! over the size and count limits get 431. Real TCP over loopback; every wait is bounded.

mod support;

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use support::raw::{closed_within, connect, exchange, read_response};
use support::{metric, metrics, Gate, TestClient, Upstream, DAY0_MS};

fn config(server: &str) -> String {
    format!("[server]\n{server}\n[identity]\nanonymous = \"client_ip\"\n")
}

const GET: &[u8] = b"GET /ping HTTP/1.1\r\nhost: t\r\nx-api-key: k\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_dropped_at_the_header_timeout_while_others_are_served() {
    const SLOW: usize = 200;
    let up = Upstream::start().await;
    let gate = Gate::start(
        &config("header_read_timeout = \"1s\"\nidle_timeout = \"30s\""),
        &up.url(),
        DAY0_MS,
    );
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let addr = gate.addr;
        slow.push(tokio::spawn(async move {
            let mut s = connect(addr).await;
            let opened = Instant::now();
            // One byte a second of a head that never ends; the server must close first.
            for &b in b"GET /slow HTTP/1.1\r\nhost: t\r\nx-a: ".iter().take(5) {
                if s.write_all(&[b]).await.is_err() {
                    break;
                }
                if closed_within(&mut s, Duration::from_secs(1)).await {
                    return Some(opened.elapsed());
                }
            }
            closed_within(&mut s, Duration::from_secs(3))
                .await
                .then(|| opened.elapsed())
        }));
    }
    // A well-behaved client keeps getting answers all along.
    let c = TestClient::new();
    let mut took = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let a = c.get(&gate.url("/ping")).await;
        assert_eq!(a.status, 200);
        took.push((started.elapsed(), t.elapsed()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("normal client (since start, took): {took:?}");
    let worst = took.iter().map(|t| t.1).max().unwrap();
    assert!(
        worst < Duration::from_millis(900),
        "slowest answer {worst:?}: {took:?}"
    );
    for (i, task) in slow.into_iter().enumerate() {
        let closed = task.await.unwrap();
        let after = closed.unwrap_or_else(|| panic!("slow client {i} was never dropped"));
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_millis(2500),
            "slow client {i} dropped after {after:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(&m, "floodgate_client_timeouts_total{kind=\"header\"}"),
        SLOW as f64
    );
    assert!(
        metric(&m, "floodgate_client_connections") <= 2.0,
        "slow clients hold no connection: {m}"
    );
    assert_eq!(up.count(), 15, "no slow head reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let up = Upstream::start().await;
    let gate = Gate::start(
        &config("header_read_timeout = \"5s\"\nidle_timeout = \"1s\""),
        &up.url(),
        DAY0_MS,
    );
    let mut s = connect(gate.addr).await;
    // Requests 400 ms apart keep the connection: the idle clock restarts after each answer.
    for _ in 0..4 {
        s.write_all(GET).await.unwrap();
        assert_eq!(read_response(&mut s).await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let idle = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "an idle connection stayed open"
    );
    let after = idle.elapsed();
    assert!(
        after >= Duration::from_millis(500) && after < Duration::from_millis(2000),
        "closed {after:?} after going idle (idle_timeout 1s)"
    );
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(&m, "floodgate_client_timeouts_total{kind=\"idle\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_wait_for_a_free_slot() {
    let up = Upstream::start().await;
    let gate = Gate::start(
        &config("header_read_timeout = \"1s\"\nmax_connections = 2"),
        &up.url(),
        DAY0_MS,
    );
    // Two silent connections take both slots until the header timeout drops them.
    let _a = connect(gate.addr).await;
    let _b = connect(gate.addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let answer = exchange(gate.addr, GET).await; // connects at once: the kernel's backlog
    let waited = t.elapsed();
    assert_eq!(answer.status, 200);
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(3),
        "the third connection was served after {waited:?}; expected after a slot freed (~0.9 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_over_the_size_or_count_limit_get_431() {
    let up = Upstream::start().await;
    let gate = Gate::start(
        &config("max_header_bytes = \"2KB\"\nmax_header_count = 20"),
        &up.url(),
        DAY0_MS,
    );
    // Too many fields: floodgate's own check, a JSON answer.
    let mut many = String::from("GET /many HTTP/1.1\r\nhost: t\r\n");
    for i in 0..25 {
        many += &format!("x-h{i}: {i}\r\n");
    }
    many += "\r\n";
    let a = exchange(gate.addr, many.as_bytes()).await;
    assert_eq!(a.status, 431, "{a:?}");
    assert_eq!(a.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["error"], "too_many_headers");
    assert_eq!(
        body["message"],
        "the request has 26 header fields; at most 20 are accepted"
    );
    // Too many bytes: the parser refuses the head before it is complete.
    let big = format!(
        "GET /big HTTP/1.1\r\nhost: t\r\nx-big: {}\r\n\r\n",
        "a".repeat(4096)
    );
    let a = exchange(gate.addr, big.as_bytes()).await;
    assert_eq!(a.status, 431, "{a:?}");
    // At the limits: served.
    let mut ok = String::from("GET /ok HTTP/1.1\r\nhost: t\r\n");
    for i in 0..19 {
        ok += &format!("x-h{i}: {}\r\n", "b".repeat(50));
    }
    ok += "\r\n";
    assert_eq!(exchange(gate.addr, ok.as_bytes()).await.status, 200);
    assert_eq!(up.count(), 1);
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(&m, "floodgate_rejected_total{reason=\"too_many_headers\"}"),
        1.0
    );
}
