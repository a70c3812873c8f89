//! What one client can hold: a slow request head is dropped at the header timeout, an idle
//! keep-alive connection at the idle timeout, connections over `max_connections` wait, and heads
//! over the size and count limits get 431. And every phase of an exchange has its clock: a
//! request body that stops arriving (408, or a closed connection once the upstream answered), an
//! upstream that stops taking the request (504), an upstream response body that stops arriving
//! (the response is cut), while a slow upload or download that keeps moving passes. Real TCP over loopback; every wait is bounded.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::timeout;

use support::raw::{closed_within, connect, exchange, read_response};
use support::{eventually, metric, metrics, Gate, TestClient, Upstream, DAY0_MS};

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

/// An upstream that answers one request with a head promising 100 bytes and the first 10 of
/// them, then sends nothing more; tells when floodgate closes the connection.
async fn stalling_upstream() -> (SocketAddr, oneshot::Receiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n0123456789";
        s.write_all(answer).await.unwrap();
        // Hold the connection, reading, until floodgate closes it (10 s at most).
        let held = timeout(Duration::from_secs(10), async {
            while let Ok(n) = s.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
        });
        if held.await.is_ok() {
            let _ = closed_tx.send(Instant::now());
        }
    });
    (addr, closed_rx)
}

/// Reads off `s` until `want` bytes came (5 s at most).
async fn read_at_least(s: &mut tokio::net::TcpStream, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    timeout(Duration::from_secs(5), async {
        while got.len() < want {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("bytes in time");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stalls_mid_body_has_its_response_cut_at_the_body_timeout() {
    let (upstream, upstream_closed) = stalling_upstream().await;
    let gate = Gate::start(
        &config("upstream_body_timeout = \"1s\"\nupstream_timeout = \"5s\""),
        &format!("http://{upstream}"),
        DAY0_MS,
    );
    let mut s = connect(gate.addr).await;
    s.write_all(b"GET /stall HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let got = read_at_least(&mut s, 1).await;
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n");
    let mut got = got;
    if head_end.is_none_or(|i| got.len() < i + 4 + 10) {
        let more = read_at_least(&mut s, 1).await;
        got.extend_from_slice(&more);
    }
    let stalled = Instant::now();
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\n0123456789"), "{text}");
    assert!(
        closed_within(&mut s, Duration::from_secs(4)).await,
        "the client connection stayed open behind a stalled upstream"
    );
    let after = stalled.elapsed();
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_millis(2500),
        "cut {after:?} after the last byte (upstream_body_timeout 1s)"
    );
    let closed = timeout(Duration::from_secs(3), upstream_closed)
        .await
        .expect("the upstream connection was closed in time")
        .expect("upstream task reported");
    assert!(closed.duration_since(stalled) < Duration::from_millis(2500));
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &m,
            "floodgate_upstream_errors_total{kind=\"upstream_body_timeout\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_keeps_moving_is_never_cut() {
    let up = Upstream::start().await;
    let gate = Gate::start(
        &config("upstream_body_timeout = \"1s\""),
        &up.url(),
        DAY0_MS,
    );
    // Four events 600 ms apart: 1.8 s in all, never 1 s without a byte.
    let t = Instant::now();
    let a = TestClient::new()
        .get(&gate.url("/drip?events=4&ms=600"))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&a.body),
        "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n"
    );
    assert!(t.elapsed() >= Duration::from_millis(1700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_that_keeps_moving_gets_its_answer() {
    let up = Upstream::start().await;
    let gate = Gate::start(
        &config(
            "upstream_timeout = \"1s\"\nclient_body_timeout = \"2s\"\n\
             upstream_send_timeout = \"2s\"",
        ),
        &up.url(),
        DAY0_MS,
    );
    let mut s = connect(gate.addr).await;
    let t = Instant::now();
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // A chunk every 700 ms for 3.5 s: longer than upstream_timeout and client_body_timeout
    // together, never 2 s without a byte.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        s.write_all(b"a\r\n0123456789\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let a = read_response(&mut s).await.expect("an answer");
    assert_eq!(a.status, 200, "{a:?}");
    assert!(t.elapsed() >= Duration::from_millis(3400));
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 50, "the whole body reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_mid_body_gets_408_and_the_upstream_connection_is_let_go() {
    let up = Upstream::start().await;
    let gate = Gate::start(&config("client_body_timeout = \"1s\""), &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let stalled = Instant::now();
    let a = read_response(&mut s).await.expect("an answer");
    let after = stalled.elapsed();
    assert_eq!(a.status, 408, "{a:?}");
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_millis(2500),
        "408 {after:?} after the last byte (client_body_timeout 1s)"
    );
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("connection"), Some("close"));
    let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["error"], "client_body_timeout");
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
    // The upstream's read of the body ends: floodgate closed that connection too.
    let let_go = eventually(Duration::from_secs(3), || async {
        up.seen().first().is_some_and(|r| r.body_len == 10)
    })
    .await;
    assert!(
        let_go,
        "the upstream still holds the request: {:?}",
        up.seen()
    );
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &m,
            "floodgate_rejected_total{reason=\"client_body_timeout\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "floodgate_client_timeouts_total{kind=\"body\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_after_the_upstream_answered_has_its_connection_closed() {
    let up = Upstream::start().await;
    let gate = Gate::start(
        &config("client_body_timeout = \"1s\"\nupstream_body_timeout = \"10s\""),
        &up.url(),
        DAY0_MS,
    );
    let mut s = connect(gate.addr).await;
    // The echo upstream answers at once and streams the body back as it comes.
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    s.write_all(b"a\r\n0123456789\r\n").await.unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("0123456789") {
        got.extend_from_slice(&read_at_least(&mut s, 1).await);
    }
    let stalled = Instant::now();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut s, Duration::from_secs(4)).await,
        "the connection stayed open behind a stalled request body"
    );
    let after = stalled.elapsed();
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_millis(2500),
        "closed {after:?} after the last byte (client_body_timeout 1s)"
    );
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(&m, "floodgate_client_timeouts_total{kind=\"body\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "floodgate_upstream_errors_total{kind=\"upstream_body_timeout\"}"
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_body_that_stalls_before_floodgate_read_into_it_gets_408() {
    let up = Upstream::start().await;
    let jobs = "[[route]]\nmethod = \"POST\"\npath = \"/job\"\nclass = \"job\"\n\
                [[jobs]]\nclasses = [\"job\"]\nmode = \"sync\"\n";
    let gate = Gate::start(
        &format!("{}{jobs}", config("client_body_timeout = \"1s\"")),
        &up.url(),
        DAY0_MS,
    );
    // A job's body prefix is read (to look inside it) before anything goes upstream.
    let mut s = connect(gate.addr).await;
    s.write_all(b"POST /job HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n{\"prompt\":")
        .await
        .unwrap();
    let stalled = Instant::now();
    let a = read_response(&mut s).await.expect("an answer");
    let after = stalled.elapsed();
    assert_eq!(a.status, 408, "{a:?}");
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_millis(2500),
        "408 {after:?} after the last byte (client_body_timeout 1s)"
    );
    let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["error"], "client_body_timeout");
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(&m, "floodgate_client_timeouts_total{kind=\"body\"}"),
        1.0
    );
}

/// An upstream that reads a request head and then nothing more, holding the connection.
async fn deaf_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_taking_the_request_body_is_a_504_at_the_send_timeout() {
    const BODY: usize = 256 << 20;
    let upstream = deaf_upstream().await;
    let gate = Gate::start(
        &config("upstream_send_timeout = \"1s\"\nupstream_timeout = \"30s\""),
        &format!("http://{upstream}"),
        DAY0_MS,
    );
    let s = connect(gate.addr).await;
    let (mut rd, mut wr) = s.into_split();
    // The client keeps sending until every buffer on the way is full.
    let writer = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: {BODY}\r\n\r\n");
        wr.write_all(head.as_bytes()).await.unwrap();
        let zeros = vec![0u8; 64 * 1024];
        for _ in 0..BODY / zeros.len() {
            if wr.write_all(&zeros).await.is_err() {
                return;
            }
        }
    });
    let t = Instant::now();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = timeout(Duration::from_secs(10), async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"}") {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    });
    read.await.expect("an answer within 10 s");
    writer.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(
        text.contains("\"error\":\"upstream_send_timeout\""),
        "{text}"
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "504 after {took:?} (upstream_send_timeout 1s, once the buffers filled)"
    );
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &m,
            "floodgate_upstream_errors_total{kind=\"upstream_send_timeout\"}"
        ),
        1.0
    );
}
