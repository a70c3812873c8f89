//! Randomised client input over real TCP: requests assembled from odd methods, targets,
//! versions, fields, framings and bodies, some with bytes flipped, sent to floodgate on its
//! shipped config. Nothing may panic, every answer must be well-formed HTTP/1.x, every error
//! floodgate gives must be JSON, none may be a 5xx (the upstream is healthy), and the gate must
//! still serve afterwards. The generator is seeded, so a failure names a case that reproduces.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::raw::{connect, split_answers, RawAnswer};
use support::{Gate, TestClient, Upstream, DAY0_MS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Cases per run: about a second on two cores.
const CASES: u64 = 2000;

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "FOO", "get",
    "G\0T", "",
];
const TARGETS: &[&str] = &[
    "/api/v1/txt2img",
    "/api/v1//txt2img",
    "/api/v1/%74xt2img",
    "/api/v1/%zz",
    "/api/v1/%",
    "/api/v1/../../etc/passwd",
    "/api/v1/prompt/a/b",
    "/api/v1/videos/replace",
    "*",
    "http://x/y",
    "//",
    "/%2e%2e/%2e%2e",
    "/api/v1/txt2img?x=%00",
    "/metrics",
    "/api/v1/img2img#frag",
    "/api/v1/upscale;param",
    "/\u{ff}\u{fe}",
];
const VERSIONS: &[&str] = &[
    "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "", "HTTX/1.1",
];
const FIELDS: &[&str] = &[
    "x-api-key: k1",
    "x-api-key: demo-premium-key",
    "x-api-key: ",
    "x-api-key: \u{ff}\u{fe}",
    "authorization: Bearer abc",
    "authorization: Bearer",
    "authorization: Basic Zm9vOmJhcg==",
    "content-length: 5",
    "content-length: -1",
    "content-length: 99999999999999999999",
    "content-length: 3, 3",
    "transfer-encoding: chunked",
    "transfer-encoding: gzip, chunked",
    "transfer-encoding: identity",
    "expect: 100-continue",
    "connection: upgrade",
    "upgrade: websocket",
    "connection: close, x-api-key",
    "host: ",
    "host: a b",
    "content-type: application/json",
    "x-forwarded-for: 1.2.3.4",
    ": novalue",
    "bad header",
    "x-a\0: v",
    "te: trailers",
];
const BODIES: &[&str] = &[
    "",
    "{}",
    "{\"prompt\": \"a\"}",
    "{\"task_type\": ",
    "\0\u{1}\u{2}",
    "5\r\nhello\r\n0\r\n\r\n",
    "zz\r\n",
    "0\r\n\r\n",
];

/// xorshift64*: small, deterministic, good enough to pick pieces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One request's bytes.
fn request(rng: &mut Rng) -> Vec<u8> {
    let sep = if rng.chance(85) { "\r\n" } else { "\n" };
    let mut fields: Vec<String> = Vec::new();
    if rng.chance(70) {
        fields.push("host: 127.0.0.1".into());
    }
    for _ in 0..rng.below(5) {
        fields.push(rng.pick(FIELDS).into());
    }
    if rng.chance(5) {
        fields.push(format!("x-long: {}", "v".repeat(70_000)));
    }
    let body = rng.pick(BODIES);
    if rng.chance(50) {
        fields.push(format!("content-length: {}", body.len()));
    }
    let head = format!(
        "{} {} {}{sep}{}{sep}{sep}",
        rng.pick(METHODS),
        rng.pick(TARGETS),
        rng.pick(VERSIONS),
        fields.join(sep)
    );
    let mut bytes = [head.as_bytes(), body.as_bytes()].concat();
    if rng.chance(20) {
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len());
            bytes[at] = rng.next() as u8;
        }
    }
    bytes
}

/// Every answer on the connection until it closes (or 3 s pass; a reset ends the reading too).
/// `Err`: bytes that are not an HTTP/1.x answer.
async fn answers(s: &mut TcpStream, head_request: bool) -> Result<Vec<RawAnswer>, String> {
    let mut wire = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let read_all = async {
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            wire.extend_from_slice(&chunk[..n]);
        }
    };
    let _ = timeout(Duration::from_secs(3), read_all).await;
    split_answers(&wire, head_request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_client_input_gets_well_formed_answers_and_never_a_panic() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counted = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));

    let up = Upstream::start().await;
    let gate = Gate::shipped("floodgate.toml", &up.url(), DAY0_MS);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..CASES {
        let raw = request(&mut rng);
        let shown = String::from_utf8_lossy(&raw[..raw.len().min(300)]).into_owned();
        let mut s = connect(gate.addr).await;
        if s.write_all(&raw).await.is_err() {
            continue; // refused and closed mid-write (an oversized head)
        }
        let _ = s.shutdown().await; // nothing more is coming: a short body cannot wait
        let got = answers(&mut s, raw.starts_with(b"HEAD "))
            .await
            .unwrap_or_else(|e| panic!("case {case}: {e}\nrequest: {shown:?}"));
        for (i, a) in got.iter().enumerate() {
            assert!(a.status < 500, "case {case}: {a:?}\nrequest: {shown:?}");
            if a.status < 400 || i == 0 && a.body.is_empty() && raw.starts_with(b"HEAD ") {
                // A success, or the answer to a HEAD: no body to check.
                continue;
            }
            assert!(
                a.head
                    .to_ascii_lowercase()
                    .contains("\r\ncontent-type: application/json"),
                "case {case}: error answer #{i} is not labelled JSON: {a:?}\nrequest: {shown:?}"
            );
            let json: Result<serde_json::Value, _> = serde_json::from_str(&a.body);
            assert!(
                json.is_ok(),
                "case {case}: error answer #{i} is not JSON: {a:?}\nrequest: {shown:?}"
            );
        }
    }
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "a request made floodgate panic"
    );
    let a = TestClient::new()
        .send(
            "POST",
            &gate.url("/api/v1/txt2img"),
            &[("x-api-key", "after-the-fuzz")],
            "{}",
        )
        .await;
    assert_eq!(a.status, 200, "the gate still serves");
}
