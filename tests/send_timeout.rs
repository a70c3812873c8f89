//! The send timeout: a client that stops reading a response frees what the response holds —
//! its upstream connection, its job slot — once no byte has moved for `send_timeout`. Over
//! HTTP/2 (streams whose flow-control window never reopens) the stream is reset and the
//! connection goes on; over HTTP/1.1 (a socket nobody reads) the connection is closed. A client
//! that reads slowly but steadily is never cut.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use support::{metric, metrics, Gate, Upstream, DAY0_MS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SEND_TIMEOUT: &str = r#"
    [server]
    h2c = true
    send_timeout = "1s"
    [identity]
    anonymous = "client_ip"
"#;

/// As [`SEND_TIMEOUT`], with `/download` a job class of one slot per account.
const JOB_DOWNLOADS: &str = r#"
    [server]
    send_timeout = "1s"
    [identity]
    anonymous = "client_ip"
    [[route]]
    path = "/download"
    class = "job"
    [[jobs]]
    classes = ["job"]
    [tiers.t]
    concurrency = 1
"#;

/// Waits (bounded by `limit`) until `check` holds; false if it never did.
async fn until(limit: Duration, check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

async fn send_timeouts(gate: &Gate) -> f64 {
    let text = metrics(&gate.admin_url("/metrics")).await;
    metric(&text, "floodgate_client_timeouts_total{kind=\"send\"}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_whose_window_never_opens_are_reset_and_free_their_upstream_connections() {
    let up = Upstream::start().await;
    let gate = Gate::start(SEND_TIMEOUT, &up.url(), DAY0_MS);
    let tcp = TcpStream::connect(gate.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    // The protocol's initial windows (64 KiB for the connection and each stream), never
    // updated: the bodies are never read, so the client sends no WINDOW_UPDATE and floodgate
    // can send no more than 64 KiB of all 20 answers of 1 MB together.
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .adaptive_window(false)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let url = format!("http://{}/download?bytes=1000000", gate.addr);
    let mut held = Vec::new();
    for _ in 0..20 {
        sender.ready().await.unwrap();
        let req = http::Request::get(&url)
            .body(Empty::<Bytes>::new())
            .unwrap();
        held.push(tokio::spawn(sender.send_request(req)));
    }
    let mut bodies = Vec::new();
    for resp in held {
        let resp = resp.await.unwrap().expect("a response head");
        assert_eq!(resp.status(), 200);
        bodies.push(resp.into_body());
    }
    let started = Instant::now();
    assert_eq!(
        up.open_connections(),
        20,
        "each stream pins an upstream connection"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        up.open_connections(),
        20,
        "within send_timeout the streams keep going"
    );
    let released = until(Duration::from_secs(5), || up.open_connections() == 0).await;
    assert!(
        released,
        "the upstream connections are released after send_timeout: {} open, {} streams reset",
        up.open_connections(),
        send_timeouts(&gate).await
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "not before the timeout: {took:?}"
    );
    assert_eq!(send_timeouts(&gate).await, 20.0, "each stream counted");
    for body in bodies {
        let read = tokio::time::timeout(Duration::from_secs(5), body.collect()).await;
        assert!(
            matches!(read, Ok(Err(_))),
            "the stream was reset, not ended"
        );
    }
    sender.ready().await.unwrap();
    let small = format!("http://{}/small", gate.addr);
    let req = http::Request::get(small)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .expect("the connection goes on");
    assert_eq!(resp.status(), 200);
}

/// Sends `GET target` on a new connection and never reads the answer.
async fn request_and_stop_reading(gate: &Gate, target: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(gate.addr).await.unwrap();
    let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp
}

/// Reads until the connection ends; false if it is still open after `limit`.
async fn closes_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 1 << 16];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_stops_reading_is_closed_and_its_upstream_released() {
    let up = Upstream::start().await;
    let gate = Gate::start(SEND_TIMEOUT, &up.url(), DAY0_MS);
    let mut stalled = request_and_stop_reading(&gate, "/download?bytes=64000000").await;
    assert!(until(Duration::from_secs(2), || up.open_connections() == 1).await);
    let started = Instant::now();
    assert!(
        until(Duration::from_secs(5), || up.open_connections() == 0).await,
        "the upstream connection is released after send_timeout"
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(send_timeouts(&gate).await, 1.0);
    // What the socket buffers held drains, then the connection ends: closed, not cut mid-read.
    assert!(closes_within(&mut stalled, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_client_stops_reading_gives_its_slot_to_the_next() {
    let up = Upstream::start().await;
    let gate = Gate::start(JOB_DOWNLOADS, &up.url(), DAY0_MS);
    // A job: the big answer holds the account's only slot while it streams.
    let _stalled = request_and_stop_reading(&gate, "/download?bytes=64000000").await;
    gate.until_jobs(|running, _| running == 1).await;
    let url = gate.url("/download?bytes=10");
    let next = tokio::spawn(async move { support::TestClient::new().get(&url).await });
    gate.until_jobs(|_, waiting| waiting == 1).await;
    let answer = tokio::time::timeout(Duration::from_secs(6), next)
        .await
        .expect("the queued job ran once the stalled one timed out")
        .unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.num("x-queue-wait-ms") >= 500, "it waited its turn");
    assert_eq!(send_timeouts(&gate).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_slowly_but_steadily_gets_the_whole_answer() {
    let up = Upstream::start().await;
    let gate = Gate::start(SEND_TIMEOUT, &up.url(), DAY0_MS);
    // 16 MB, past what the two sockets' buffers hold, taken 128 KiB every 25 ms: about 3 s,
    // three times the send timeout, with floodgate waiting on the client most of it.
    const TOTAL: usize = 16_000_000;
    let mut tcp = request_and_stop_reading(&gate, &format!("/download?bytes={TOTAL}")).await;
    let mut buf = vec![0u8; 128 * 1024];
    let mut got = 0usize;
    let started = Instant::now();
    while got <= TOTAL && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(25)).await;
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got > TOTAL, "head and the whole body: {got} bytes");
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "slower than send_timeout"
    );
    assert_eq!(send_timeouts(&gate).await, 0.0);
}
