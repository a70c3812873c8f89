//! Upload limits (SPEC §7) over real HTTP: a declared Content-Length over the class's limit is a
//! 413 before anything goes upstream and consumes no quota; a chunked body is cut off where it
//! crosses the limit; a body exactly at the limit and a class without a limit pass intact.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::timeout;

use floodgate::config::{Config, Overrides};
use support::{Answer, Gate, TestClient, Upstream, DAY0_MS};

const LIMIT: u64 = 100 * 1024;
const KEY: &str = "k-upload";

/// `/small` allows 100 KB bodies; `/free` has no body limit. Both are rate limited.
const CONFIG: &str = r#"
[[route]]
path = "/small"
class = "small"

[[route]]
path = "/free"
class = "free"

[classes]
small = { max_body = "100KB" }

[[tiers.t.limits]]
classes = ["small", "free"]
per_minute = 10
per_day = 100
"#;

/// Every wait in this file is at most this long.
const WAIT: Duration = Duration::from_secs(10);

/// A request whose body the test feeds by hand, chunk by chunk; the body never ends unless
/// `end` is called, so floodgate's answer can only come from what was sent so far.
struct Upload {
    chunks: Option<mpsc::Sender<Bytes>>,
    response: tokio::task::JoinHandle<hyper::Result<Response<Incoming>>>,
}

impl Upload {
    /// Opens `POST path` on a fresh connection; `content_length` None = chunked.
    async fn open(addr: SocketAddr, path: &str, content_length: Option<u64>) -> Upload {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let (tx, mut rx) = mpsc::channel::<Bytes>(4);
        let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|c| c.map(|d| Ok::<_, Infallible>(Frame::data(d))))
        }));
        let mut req = Request::post(path)
            .header("host", "uploads.test")
            .header("x-api-key", KEY);
        if let Some(len) = content_length {
            req = req.header("content-length", len);
        }
        let req = req.body(body).unwrap();
        let response = tokio::spawn(async move { sender.send_request(req).await });
        Upload {
            chunks: Some(tx),
            response,
        }
    }

    /// Sends `n` bytes as one chunk; false if floodgate stopped reading.
    async fn send(&self, n: usize) -> bool {
        let tx = self.chunks.as_ref().expect("body still open");
        tx.send(Bytes::from(vec![b'u'; n])).await.is_ok()
    }

    fn end(&mut self) {
        self.chunks = None;
    }

    /// The response, read whole.
    async fn answer(self) -> Answer {
        let resp = timeout(WAIT, self.response)
            .await
            .expect("floodgate answered in time")
            .unwrap()
            .expect("a response, not a connection error");
        let (parts, body) = resp.into_parts();
        let body = timeout(WAIT, body.collect())
            .await
            .expect("body in time")
            .expect("body completes")
            .to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

fn assert_413(a: &Answer) {
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.json()["error"], "payload_too_large");
    assert_eq!(
        a.json()["message"],
        "request body is larger than 100KB (102400 bytes), the limit for this endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_length_over_the_limit_is_413_before_anything_goes_upstream() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    // Only the head is sent: the 413 must not wait for the body.
    let upload = Upload::open(gate.addr, "/small", Some(LIMIT + 1)).await;
    let a = upload.answer().await;
    assert_413(&a);
    assert_eq!(
        a.header("x-ratelimit-daily-remaining"),
        None,
        "refused before the rate limiter"
    );
    assert_eq!(up.count(), 0, "the upstream saw nothing");
    let metrics = TestClient::new().get(&gate.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains("floodgate_rejected_total{reason=\"payload_too_large\"} 1"),
        "{metrics}"
    );

    let a = TestClient::new()
        .send("POST", &gate.url("/small"), &[("x-api-key", KEY)], "ok")
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.num("x-ratelimit-daily-remaining"),
        99,
        "the refused upload consumed no quota"
    );
}

/// What a counting upstream saw of one request body.
#[derive(Debug, Clone, Copy)]
struct Received {
    bytes: u64,
    complete: bool,
}

/// An upstream that reports body bytes as they arrive, and how each request body ended.
struct CountingUpstream {
    addr: SocketAddr,
    live: Arc<AtomicU64>,
    ended: Arc<Mutex<Vec<Received>>>,
}

impl CountingUpstream {
    async fn start() -> CountingUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let live = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(Mutex::new(Vec::new()));
        let (l, e) = (live.clone(), ended.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (l, e) = (l.clone(), e.clone());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (l, e) = (l.clone(), e.clone());
                    async move {
                        let mut body = req.into_body();
                        let mut seen = Received {
                            bytes: 0,
                            complete: false,
                        };
                        loop {
                            match body.frame().await {
                                Some(Ok(f)) => {
                                    let n = f.into_data().map_or(0, |d| d.len() as u64);
                                    seen.bytes += n;
                                    l.fetch_add(n, Ordering::SeqCst);
                                }
                                Some(Err(_)) => break,
                                None => {
                                    seen.complete = true;
                                    break;
                                }
                            }
                        }
                        e.lock().unwrap().push(seen);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("{}"))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        CountingUpstream { addr, live, ended }
    }

    /// Waits (bounded) until `pred` holds.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !pred(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_crossing_the_limit_is_cut_off_with_413() {
    let up = CountingUpstream::start().await;
    let gate = Gate::start(CONFIG, &format!("http://{}", up.addr), DAY0_MS);
    let upload = Upload::open(gate.addr, "/small", None).await;
    assert!(upload.send(64 * 1024).await);
    // The first 64 KiB are under the limit: they stream through to the upstream.
    up.wait_for("the first chunk upstream", |u| {
        u.live.load(Ordering::SeqCst) == 64 * 1024
    })
    .await;
    // The next 64 KiB cross 100 KiB.
    let _ = upload.send(64 * 1024).await;
    let a = upload.answer().await;
    assert_413(&a);
    assert_eq!(
        a.num("x-ratelimit-daily-remaining"),
        99,
        "admitted before its size was known, so it counted"
    );
    up.wait_for("the upstream request to end", |u| {
        !u.ended.lock().unwrap().is_empty()
    })
    .await;
    let ended = up.ended.lock().unwrap().clone();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(ended[0].bytes <= LIMIT, "upstream saw {ended:?}");
    assert!(!ended[0].complete, "the upstream request was aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_exactly_at_the_limit_passes_intact() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    // Declared length.
    let a = TestClient::new()
        .send(
            "POST",
            &gate.url("/small"),
            &[("x-api-key", KEY)],
            vec![b'x'; LIMIT as usize],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    // Chunked, in pieces that add up to the limit exactly.
    let mut upload = Upload::open(gate.addr, "/small", None).await;
    for n in [64 * 1024, 32 * 1024, 4 * 1024] {
        assert!(upload.send(n).await);
    }
    upload.end();
    let a = upload.answer().await;
    assert_eq!(a.status, 200, "{a:?}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.body_len == LIMIT), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_without_a_limit_is_unaffected() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let big = 4 * 1024 * 1024;
    let a = TestClient::new()
        .send(
            "POST",
            &gate.url("/free"),
            &[("x-api-key", KEY)],
            vec![b'x'; big],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let mut upload = Upload::open(gate.addr, "/free", None).await;
    for _ in 0..16 {
        assert!(upload.send(256 * 1024).await);
    }
    upload.end();
    assert_eq!(upload.answer().await.status, 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.body_len == big as u64), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_config_caps_uploads_as_the_seed_says() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/floodgate.toml"
    ))
    .unwrap();
    let config = Config::parse(&text, &Overrides::default()).unwrap();
    let mb = 1024 * 1024;
    let max_body = |name: &str| {
        let id = config.classes.iter().position(|c| c == name).unwrap();
        config.class_settings.facts[id].max_body
    };
    for class in [
        "img2img",
        "img2video",
        "img2txt",
        "img-rmbg",
        "img-upscale",
        "transcribe",
        "aud2txt",
        "audiofile2txt",
        "vid2txt",
        "videofile2txt",
        "videos/replace",
    ] {
        assert_eq!(max_body(class), Some(10 * mb), "{class}");
    }
    assert_eq!(max_body("aud2video"), Some(20 * mb));
    for class in ["txt2img", "txt2video", "txt2embedding", "prompt", "default"] {
        assert_eq!(max_body(class), None, "{class}");
    }

    // And over HTTP: one byte over 10 MB on img2img is refused from the head alone.
    let up = Upstream::start().await;
    let gate = Gate::shipped("floodgate.toml", &up.url(), DAY0_MS);
    let a = Upload::open(gate.addr, "/api/v1/img2img", Some(10 * mb + 1))
        .await
        .answer()
        .await;
    assert_eq!(a.status, 413);
    assert_eq!(up.count(), 0);
}

/// A unified route whose classes cap bodies differently.
const UNIFIED: &str = r#"
[[route]]
method = "POST"
path = "/task"
class = "task"
body_pointer = "/kind"
[route.body_classes]
image = "image"

[classes]
task = { max_body = "2KB" }
image = { max_body = "1KB" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_named_by_the_body_has_its_own_cap_and_an_oversize_declaration_is_refused_unread() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let gate = Gate::start(UNIFIED, &up.url(), DAY0_MS);
    // Over both classes' caps: 413 at once, without a 100 Continue or a byte of the body read.
    let mut stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let head = "POST /task HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\nContent-Length: 10000\r\n\
                Expect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered without the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // 1.5 KB: within the route's cap, over the one of the class its body names.
    let pad = "x".repeat(1_500);
    let (c, url) = (TestClient::new(), gate.url("/task"));
    let send = |body: String| c.send("POST", &url, &[("x-api-key", KEY)], body);
    let image = send(format!(r#"{{"kind": "image", "pad": "{pad}"}}"#)).await;
    assert_eq!(image.status, 413);
    assert_eq!(image.json()["error"], "payload_too_large");
    assert!(image.json()["message"]
        .as_str()
        .unwrap()
        .contains("1KB (1024 bytes)"));
    let other = send(format!(r#"{{"kind": "text", "pad": "{pad}"}}"#)).await;
    assert_eq!(other.status, 200, "the route's own class allows 2 KB");
    assert_eq!(up.count(), 1);
}
