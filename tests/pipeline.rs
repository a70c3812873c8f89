//! Upstream pipelining (`[classes.NAME] pipeline = true`, src/proxy/upstream/pipeline.rs):
//! many clients' body-less GETs and HEADs share one upstream connection per worker, and every
//! client still gets its own answer — when the upstream closes after an answer, sends one too
//! large or chunked to read whole, drops the connection, or stalls.
//!
//! The upstream is a real TCP server on loopback that reads every request already in its
//! buffer and answers them in order in one write, as a pipelining origin does; it counts its
//! connections and the largest batch it read at once. Every wait is bounded.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{Gate, TestClient, DAY0_MS};

const PIPELINED: &str =
    "[server]\nupstream_timeout = \"1s\"\n[identity]\nanonymous = \"client_ip\"\n\
                         [classes.default]\npipeline = true\n";

/// A pipelining origin. Paths:
/// - `/echo/NAME`: `200`, body NAME (with its length; a HEAD gets the head only);
/// - `/big/N`: N bytes of `x`;
/// - `/chunked/NAME`: NAME, chunked;
/// - `/close/NAME`: NAME with `Connection: close`, then the connection closes (requests read
///   behind it are not answered);
/// - `/drop-once/NAME`: the first time, the connection closes without an answer; after that
///   as `/echo/NAME`;
/// - `/drop-always/NAME`: the connection closes without an answer, every time;
/// - `/stall`: no answer; the connection stays open (until the test ends).
struct Origin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    max_batch: Arc<AtomicUsize>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Origin {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            requests: Arc::default(),
            max_batch: Arc::default(),
        };
        let dropped: Arc<Mutex<HashSet<String>>> = Arc::default();
        let (conns, reqs, batch) = (
            origin.connections.clone(),
            origin.requests.clone(),
            origin.max_batch.clone(),
        );
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let counts = (reqs.clone(), batch.clone(), dropped.clone());
                tokio::spawn(serve(s, counts));
            }
        });
        origin
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

type Counts = (
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Arc<Mutex<HashSet<String>>>,
);

/// One connection: every complete request in the buffer is answered, in order, in one write.
async fn serve(mut s: TcpStream, (requests, max_batch, dropped): Counts) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut batch = 0;
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let body_len: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.trim().parse().unwrap());
            if buf.len() < end + 4 + body_len {
                break; // the body is still on its way
            }
            buf.drain(..end + 4 + body_len);
            batch += 1;
            requests.fetch_add(1, Ordering::SeqCst);
            let mut line = head.lines().next().unwrap_or("").split(' ');
            let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
            let head_only = method == "HEAD";
            let (kind, name) = path[1..].split_once('/').unwrap_or((path, ""));
            match kind {
                "echo" => answer(&mut out, name.as_bytes(), head_only, ""),
                "big" => answer(&mut out, &vec![b'x'; name.parse().unwrap()], head_only, ""),
                "chunked" => {
                    let body = format!("{:x}\r\n{name}\r\n0\r\n\r\n", name.len());
                    out.extend_from_slice(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
                    out.extend_from_slice(body.as_bytes());
                }
                "close" => {
                    answer(
                        &mut out,
                        name.as_bytes(),
                        head_only,
                        "connection: close\r\n",
                    );
                    return close(s, &out).await;
                }
                "drop-once" if dropped.lock().unwrap().insert(name.to_owned()) => {
                    return close(s, &out).await;
                }
                "drop-once" => answer(&mut out, name.as_bytes(), head_only, ""),
                "drop-always" => return close(s, &out).await,
                _ => {
                    // `/stall`: what came before it is answered; then nothing, for longer
                    // than floodgate waits.
                    let _ = s.write_all(&out).await;
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    return;
                }
            }
        }
        max_batch.fetch_max(batch, Ordering::SeqCst);
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Writes what is answered so far and closes the way a server ending a keep-alive connection
/// does: a FIN, and what the client still sends read and dropped (unread bytes would make the
/// kernel reset the connection, and a reset loses answers already sent).
async fn close(mut s: TcpStream, out: &[u8]) {
    let _ = s.write_all(out).await;
    let _ = s.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while let Ok(1..) = s.read(&mut sink).await {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}

fn answer(out: &mut Vec<u8>, body: &[u8], head_only: bool, extra: &str) {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{extra}\r\n",
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    if !head_only {
        out.extend_from_slice(body);
    }
}

/// `clients` clients at once, each sending `each` requests one after another on its own
/// keep-alive connection; `path(client, i)` says what each asks for. Every answer must be 200
/// with the body its path asks for.
async fn many(
    gate: &Gate,
    clients: usize,
    each: usize,
    path: fn(usize, usize) -> (String, String),
) {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let base = gate.url("");
        tasks.push(tokio::spawn(async move {
            let client = TestClient::new();
            for i in 0..each {
                let (path, want) = path(c, i);
                let url = format!("{base}{path}");
                let a = tokio::time::timeout(Duration::from_secs(10), client.get(&url))
                    .await
                    .unwrap_or_else(|_| panic!("{path}: no answer in 10 s"));
                assert_eq!(a.status, 200, "{path}: {:?}", a.body);
                assert!(
                    a.body == want.as_bytes(),
                    "{path}: got {} bytes",
                    a.body.len()
                );
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_each_get_their_own_answer_over_a_shared_connection() {
    let origin = Origin::start().await;
    let gate = Gate::start(PIPELINED, &origin.url(), DAY0_MS);
    many(&gate, 48, 40, |c, i| {
        let name = format!("c{c}-r{i}");
        (format!("/echo/{name}"), name)
    })
    .await;
    assert_eq!(origin.requests.load(Ordering::SeqCst), 48 * 40);
    // One shared connection per worker (two workers), not one per client.
    let connections = origin.connections.load(Ordering::SeqCst);
    assert!(
        connections <= 4,
        "{connections} upstream connections for 48 clients"
    );
    let batch = origin.max_batch.load(Ordering::SeqCst);
    assert!(
        batch > 1,
        "requests never went back to back (largest batch {batch})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_have_no_body_and_keep_the_order() {
    let origin = Origin::start().await;
    let gate = Gate::start(PIPELINED, &origin.url(), DAY0_MS);
    let mut tasks = Vec::new();
    for c in 0..24 {
        let base = gate.url("");
        tasks.push(tokio::spawn(async move {
            let client = TestClient::new();
            for i in 0..30 {
                let name = format!("c{c}-r{i}");
                let url = format!("{base}/echo/{name}");
                if (c + i) % 2 == 0 {
                    let a = client.send("HEAD", &url, &[], "").await;
                    assert_eq!(a.status, 200);
                    assert!(a.body.is_empty());
                    assert_eq!(a.num("content-length"), name.len() as u64, "{name}");
                } else {
                    let a = client.get(&url).await;
                    assert_eq!(a.body, name.as_bytes(), "{name}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_after_an_answer_gets_the_requests_behind_it_again() {
    let origin = Origin::start().await;
    let gate = Gate::start(PIPELINED, &origin.url(), DAY0_MS);
    many(&gate, 24, 30, |c, i| {
        let name = format!("c{c}-r{i}");
        let kind = if i % 7 == 3 { "close" } else { "echo" };
        (format!("/{kind}/{name}"), name)
    })
    .await;
    assert!(
        origin.connections.load(Ordering::SeqCst) > 2,
        "the closes were not seen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_chunked_answers_stream_and_the_requests_behind_them_go_again() {
    let origin = Origin::start().await;
    let gate = Gate::start(PIPELINED, &origin.url(), DAY0_MS);
    many(&gate, 16, 20, |c, i| match i % 5 {
        1 => (format!("/big/{}", 300_000 + c), "x".repeat(300_000 + c)),
        2 => {
            let name = format!("chunked-c{c}-r{i}");
            (format!("/chunked/{name}"), name)
        }
        3 => (format!("/big/{}", 1000 + i), "x".repeat(1000 + i)),
        _ => {
            let name = format!("c{c}-r{i}");
            (format!("/echo/{name}"), name)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_sends_its_requests_again_once_then_fails_them() {
    let origin = Origin::start().await;
    let gate = Gate::start(PIPELINED, &origin.url(), DAY0_MS);
    many(&gate, 16, 20, |c, i| {
        let name = format!("c{c}-r{i}");
        let kind = if i % 5 == 2 { "drop-once" } else { "echo" };
        (format!("/{kind}/{name}"), name)
    })
    .await;
    // Dropped on both tries: a 502 with floodgate's JSON error, and the connection's other
    // requests are still answered.
    let client = TestClient::new();
    let a = client.get(&gate.url("/drop-always/x")).await;
    assert_eq!(a.status, 502, "{:?}", a.body);
    assert_eq!(
        a.json()["error"],
        "upstream_protocol_error",
        "{:?}",
        a.json()
    );
    let a = client.get(&gate.url("/echo/after")).await;
    assert_eq!(a.body, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_fails_the_flight_in_time_and_the_next_request_gets_through() {
    let origin = Origin::start().await;
    let gate = Gate::start(PIPELINED, &origin.url(), DAY0_MS);
    let client = TestClient::new();
    let started = Instant::now();
    let a = tokio::time::timeout(Duration::from_secs(8), client.get(&gate.url("/stall")))
        .await
        .expect("an answer within upstream_timeout");
    assert_eq!(a.status, 504, "{:?}", a.body);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let a = client.get(&gate.url("/echo/next")).await;
    assert_eq!(a.body, "next");

    // Requests joining behind a stalled answer do not hold its clock back: with a new one
    // every 100 ms for 3 s (on fresh connections, so on both workers), the stall still ends
    // after upstream_timeout, not after the last of them.
    let stall_url = gate.url("/stall");
    let started = Instant::now();
    let stalled = tokio::spawn(async move {
        let a = TestClient::new().get(&stall_url).await;
        (a, Instant::now())
    });
    let mut joining = Vec::new();
    for i in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let url = gate.url(&format!("/echo/j{i}"));
        joining.push(tokio::spawn(
            async move { TestClient::new().get(&url).await },
        ));
    }
    let (a, answered) = tokio::time::timeout(Duration::from_secs(8), stalled)
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(a.status, 504, "{:?}", a.body);
    let took = answered - started;
    assert!(
        took < Duration::from_millis(2500),
        "the stall answered after {took:?}"
    );
    for j in joining {
        let a = j.await.unwrap();
        assert!(a.status == 200 || a.status == 504, "{}", a.status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_does_not_wait_behind_the_shared_connection() {
    let origin = Origin::start().await;
    let gate = Gate::start(PIPELINED, &origin.url(), DAY0_MS);
    // A stalled answer holds up the shared connection of the worker it came to...
    let stall_url = gate.url("/stall");
    let stalled = tokio::spawn(async move { TestClient::new().get(&stall_url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...but a POST goes on a connection of its own: each of these (on fresh connections,
    // spread over both workers) is answered at once, not after upstream_timeout.
    for i in 0..6 {
        let url = gate.url(&format!("/echo/post{i}"));
        let client = TestClient::new();
        let post = client.send("POST", &url, &[], "abc");
        let a = tokio::time::timeout(Duration::from_millis(700), post)
            .await
            .unwrap_or_else(|_| panic!("POST {i} waited behind the stalled answer"));
        assert_eq!(a.status, 200);
        assert_eq!(a.body, format!("post{i}"));
    }
    assert_eq!(stalled.await.unwrap().status, 504);
}
