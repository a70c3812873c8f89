//! The upstream side of the wire: how floodgate reads what an origin sends back (chunked and
//! close-delimited bodies, trailers, informational answers, bodiless answers, broken answers)
//! and when it reuses an upstream connection. The upstream is a scripted TCP server on
//! loopback that writes exact bytes; every wait is bounded.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::raw::{connect, read_response};
use support::{Gate, TestClient, DAY0_MS};

const CONFIG: &str = "[server]\nupstream_timeout = \"3s\"\n[identity]\nanonymous = \"client_ip\"\n";

/// What the scripted upstream does after reading a request.
#[derive(Clone)]
enum Reply {
    /// Write these bytes and keep the connection for the next request.
    Keep(Bytes),
    /// Write these bytes, then close after this long.
    CloseAfter(Bytes, Duration),
    /// Answer as soon as a request head is in, without reading its body; hold the connection
    /// this long, then close.
    Early(Bytes, Duration),
    /// Read the request, then close without answering (a keep-alive connection the upstream
    /// ended just as a request went out on it).
    Vanish,
}

/// A TCP server that answers each request with the next reply of its script (the last one
/// repeats) and records the raw requests it read.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Scripted {
    async fn start(script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let (conns, reqs) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let (script, reqs, answered) = (script.clone(), reqs.clone(), answered.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    if let Reply::Early(bytes, hold) = &script[0] {
                        let head = read_head(&mut s, &mut buf).await;
                        reqs.lock().unwrap().push(head.unwrap_or_default());
                        let _ = s.write_all(bytes).await;
                        tokio::time::sleep(*hold).await;
                        return;
                    }
                    while let Some(req) = read_request(&mut s, &mut buf).await {
                        reqs.lock().unwrap().push(req);
                        let n = answered.fetch_add(1, Ordering::SeqCst);
                        match &script[n.min(script.len() - 1)] {
                            Reply::Keep(bytes) => {
                                if s.write_all(bytes).await.is_err() {
                                    return;
                                }
                            }
                            Reply::CloseAfter(bytes, after) => {
                                let _ = s.write_all(bytes).await;
                                tokio::time::sleep(*after).await;
                                return;
                            }
                            Reply::Early(..) | Reply::Vanish => return,
                        }
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn request(&self, i: usize) -> String {
        String::from_utf8_lossy(&self.requests.lock().unwrap()[i]).into_owned()
    }
}

/// Reads up to the end of a request head (and whatever came with it) off `s`.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(buf[..i + 4].to_vec());
        }
        let n = s.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads one request (head, and a Content-Length or chunked body) off `s`; `None` at close.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: Option<usize> = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &buf[head_end..];
        let complete = match (length, chunked) {
            (_, true) => body.ends_with(b"0\r\n\r\n"),
            (Some(len), false) => body.len() >= len,
            (None, false) => true,
        };
        if complete {
            let end = head_end + length.filter(|_| !chunked).unwrap_or(body.len());
            return Some(buf.drain(..end).collect());
        }
        let n = s.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn keep(text: &str) -> Reply {
    Reply::Keep(Bytes::from(text.to_owned()))
}

#[tokio::test]
async fn chunked_answers_with_extensions_and_trailers_arrive_whole_on_one_connection() {
    let up = Scripted::start(vec![keep(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n\
         5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Checksum: 42\r\n\r\n",
    )])
    .await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let c = TestClient::new();
    for _ in 0..3 {
        let a = c.get(&gate.url("/chunked")).await;
        assert_eq!(a.status, 200);
        assert_eq!(&a.body[..], b"hello world");
        assert_eq!(a.header("content-type"), Some("text/plain"));
        assert_eq!(
            a.header("transfer-encoding"),
            Some("chunked"),
            "re-chunked for the client"
        );
    }
    assert_eq!(
        up.connections(),
        1,
        "the connection is reused after each chunked body"
    );
}

#[tokio::test]
async fn close_delimited_answers_end_at_close_and_their_connection_is_not_reused() {
    let up = Scripted::start(vec![Reply::CloseAfter(
        Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"),
        Duration::ZERO,
    )])
    .await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let c = TestClient::new();
    for _ in 0..2 {
        let a = c.get(&gate.url("/stream")).await;
        assert_eq!(a.status, 200);
        assert_eq!(&a.body[..], b"until the end");
    }
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn an_answer_saying_connection_close_ends_its_connection() {
    // The upstream says close but leaves the socket open: floodgate must not send more on it.
    let up = Scripted::start(vec![keep(
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    )])
    .await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let c = TestClient::new();
    for _ in 0..3 {
        let a = c.get(&gate.url("/x")).await;
        assert_eq!(a.status, 200);
        assert_eq!(&a.body[..], b"ok");
    }
    assert_eq!(up.connections(), 3);
}

#[tokio::test]
async fn idle_connections_the_upstream_closed_are_replaced_without_failing_requests() {
    // Each answer is followed by the upstream closing its end 50 ms later (an idle timeout).
    let up = Scripted::start(vec![Reply::CloseAfter(
        Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        Duration::from_millis(50),
    )])
    .await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let c = TestClient::new();
    for (i, method) in ["GET", "POST", "PUT", "GET"].into_iter().enumerate() {
        let a = c.send(method, &gate.url("/x"), &[], "body").await;
        assert_eq!(a.status, 200, "request {i} ({method})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(up.connections(), 4);
}

#[tokio::test]
async fn a_bodyless_request_on_a_connection_closed_under_it_goes_again_on_a_new_one() {
    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let up = Scripted::start(vec![
        keep(OK),
        Reply::Vanish,
        keep(OK),
        Reply::Vanish,
        keep(OK),
    ])
    .await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let c = TestClient::new();
    let first = c.send("GET", &gate.url("/one"), &[], "").await;
    assert_eq!(first.status, 200);
    let again = c
        .send("GET", &gate.url("/two?q=1"), &[("x-tag", "t")], "")
        .await;
    assert_eq!(
        again.status, 200,
        "the request went again: {:?}",
        again.body
    );
    assert_eq!(up.connections(), 2);
    assert_eq!(up.request(1), up.request(2), "the same head went again");
    assert!(up.request(2).starts_with("GET /two?q=1 HTTP/1.1\r\n"));
    assert!(up.request(2).contains("x-tag: t\r\n"));

    // A request with a body is not sent twice: the client hears of the failure.
    let posted = c.send("POST", &gate.url("/three"), &[], "body").await;
    assert_eq!(posted.status, 502, "{:?}", posted.body);
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn informational_answers_are_skipped() {
    let up = Scripted::start(vec![keep(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
         HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone",
    )])
    .await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let a = TestClient::new()
        .send("POST", &gate.url("/x"), &[], "data")
        .await;
    assert_eq!(a.status, 201);
    assert_eq!(&a.body[..], b"done");
}

#[tokio::test]
async fn head_no_content_and_not_modified_answers_have_no_body() {
    let up = Scripted::start(vec![
        keep("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
        keep("HTTP/1.1 204 No Content\r\n\r\n"),
        keep("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"),
        keep("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
    ])
    .await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let c = TestClient::new();
    let head = c.send("HEAD", &gate.url("/h"), &[], "").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("10"));
    assert!(head.body.is_empty());
    assert_eq!(c.get(&gate.url("/n")).await.status, 204);
    let not_modified = c.get(&gate.url("/m")).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), Some("\"v1\""));
    let a = c.get(&gate.url("/after")).await;
    assert_eq!((a.status.as_u16(), &a.body[..]), (200, &b"abc"[..]));
    assert_eq!(
        up.connections(),
        1,
        "bodiless answers leave the connection usable"
    );
}

#[tokio::test]
async fn request_bodies_are_framed_for_the_upstream() {
    let up = Scripted::start(vec![keep("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")]).await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    // A chunked upload, a sized one and an empty POST, on one client connection.
    let mut s = connect(gate.addr).await;
    s.write_all(
        b"POST /chunked HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n\
          3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s).await.unwrap().status, 200);
    s.write_all(b"PUT /sized HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.unwrap().status, 200);
    s.write_all(b"POST /empty HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.unwrap().status, 200);

    let chunked = up.request(0);
    assert!(
        chunked.starts_with("POST /chunked HTTP/1.1\r\n"),
        "{chunked}"
    );
    assert!(
        chunked.contains("transfer-encoding: chunked\r\n"),
        "{chunked}"
    );
    let body = &chunked[chunked.find("\r\n\r\n").unwrap() + 4..];
    let decoded: String = body
        .split("\r\n")
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, part)| part)
        .collect();
    assert_eq!(decoded, "abcdefg", "wire body {body:?}");
    let sized = up.request(1);
    assert!(sized.contains("content-length: 5\r\n"), "{sized}");
    assert!(sized.ends_with("\r\n\r\nhello"), "{sized}");
    assert!(!sized.contains("transfer-encoding"), "{sized}");
    let empty = up.request(2);
    assert!(empty.contains("content-length: 0\r\n"), "{empty}");
}

#[tokio::test]
async fn broken_answers_get_a_502_json_error() {
    let filler = "x".repeat(70 * 1024);
    let cases = [
        (
            "a bad length",
            keep("HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n"),
        ),
        (
            "two lengths",
            keep("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        ),
        ("no status line", keep("hello there\r\n\r\n")),
        (
            "an oversized head",
            keep(&format!("HTTP/1.1 200 OK\r\nX-Big: {filler}\r\n\r\n")),
        ),
        (
            "an unasked switch",
            keep("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
        ),
        (
            "silence then close",
            Reply::CloseAfter(Bytes::new(), Duration::ZERO),
        ),
    ];
    for (what, reply) in cases {
        let up = Scripted::start(vec![reply]).await;
        let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
        let a = TestClient::new().get(&gate.url("/broken")).await;
        assert_eq!(a.status, 502, "{what}");
        let err = a.json();
        let code = err["error"].as_str().unwrap().to_owned();
        assert!(code.starts_with("upstream_"), "{what}: {err}");
    }
}

#[tokio::test]
async fn an_upstream_that_dies_mid_body_cuts_the_client_off() {
    let up = Scripted::start(vec![Reply::CloseAfter(
        Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"),
        Duration::ZERO,
    )])
    .await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    s.write_all(b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "the client connection is closed, not left hanging"
    );
    // Depending on timing the client sees the head and the ten bytes, or nothing at all (the
    // failure came before anything was flushed); never a body as long as the head promised.
    let text = String::from_utf8_lossy(&got);
    if let Some(at) = text.find("\r\n\r\n") {
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // (Field names are case-insensitive; the fast path relays the upstream's spelling.)
        let lower = text.to_ascii_lowercase();
        assert!(lower.contains("content-length: 100"), "{text}");
        assert!(text.len() - (at + 4) < 100, "{text}");
    } else {
        assert!(got.is_empty(), "{text}");
    }
}

#[tokio::test]
async fn an_answer_before_the_whole_upload_reaches_the_client_whole() {
    // The upstream refuses after the head, never reads the 4 MiB body, and holds on: floodgate
    // must hear the answer while its write of the body is stuck.
    let up = Scripted::start(vec![Reply::Early(
        Bytes::from_static(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 7\r\n\r\ntoo big"),
        Duration::from_secs(3),
    )])
    .await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    let body = vec![b'x'; 4 << 20];
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Send the body from a task: the answer may come while most of it is still unsent.
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&body).await;
        wr
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let answered = tokio::time::timeout(Duration::from_secs(2), async {
        while !got.windows(7).any(|w| w == b"too big") {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        answered.is_ok(),
        "the answer came before the upstream let go: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.ends_with("too big"), "{text}");
    writer.abort();
}
