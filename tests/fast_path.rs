//! The HTTP/1.1 fast path (src/server/fast.rs, src/proxy/plain/): it must read every head it
//! takes exactly as hyper reads it, hand every other head to hyper with nothing lost, and
//! answer over the wire as hyper would.
//!
//! - A differential test feeds generated heads — plain ones, and ones bent every way a client
//!   or an attacker bends them — to the fast path's parser and to hyper's server, and requires
//!   that whatever the fast path takes, hyper reads the same: method, target, every field and
//!   its value in order, and the body's length.
//! - Real connections through floodgate: pipelined requests, a connection that turns to hyper
//!   mid-way (a chunked body, `Connection: close`), a body sent after its head, `HEAD`, a 429,
//!   and what the upstream is shown.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use floodgate::proxy::plain::{self, HeadLimits, Parsed};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use support::raw::{connect, read_response, read_to_close};
use support::{Gate, Upstream, DAY0_MS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 16 * 1024,
    max_fields: 100,
};

/// What a server made of a head: version, method, target, fields (lowercase names, in order), body.
#[derive(Debug, PartialEq, Eq)]
struct Read {
    version: http::Version,
    method: String,
    target: String,
    fields: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// The fast path's reading of `raw`, when it takes it.
fn fast_read(raw: &[u8]) -> Option<Read> {
    let mut slots = plain::field_slots();
    let Parsed::Plain(head) = plain::parse(raw, &mut slots, LIMITS) else {
        return None;
    };
    let body = raw.get(head.head_len..head.total_len())?.to_vec();
    Some(Read {
        version: http::Version::HTTP_11,
        method: head.method.to_string(),
        target: head.target.to_owned(),
        fields: head
            .fields
            .iter()
            .map(|f| (f.name.to_ascii_lowercase(), f.value.to_vec()))
            .collect(),
        body,
    })
}

/// hyper's reading of `raw` (its HTTP/1.1 server over an in-memory pipe), or `None` when it
/// refused the head.
async fn hyper_read(raw: &[u8]) -> Option<Read> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let seen: Arc<Mutex<Option<Read>>> = Arc::default();
    let record = seen.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let record = record.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let fields = parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect();
            // The first request: bytes after it are another request (pipelined).
            record.lock().unwrap().get_or_insert(Read {
                version: parts.version,
                method: parts.method.to_string(),
                target: parts.uri.to_string(),
                fields,
                body: body.to_vec(),
            });
            Ok::<_, Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(server), service);
    let serve = tokio::spawn(conn);
    client.write_all(raw).await.unwrap();
    let mut answer = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), client.read(&mut answer)).await;
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(2), serve).await;
    let read = seen.lock().unwrap().take();
    read
}

/// hyper's `HeaderMap` groups a field's repeats together; the fast path keeps the head's
/// order. The same fields with each name's values in the same order is the same reading.
fn grouped(mut read: Read) -> Read {
    let mut names: Vec<String> = Vec::new();
    for (n, _) in &read.fields {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let fields = std::mem::take(&mut read.fields);
    read.fields = names
        .iter()
        .flat_map(|n| fields.iter().filter(move |(m, _)| m == n).cloned())
        .collect();
    read
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS", "get", "CONNECT", "TRACE", "FOO",
];
const TARGETS: &[&str] = &[
    "/",
    "/api/v1/txt2img",
    "/a/b?c=d&e=%20f",
    "/a;b=c/d:e@f!$'()*+,",
    "/%7e~",
    "//x",
    "/a#frag",
    "/a b",
    "/a\"b",
    "/a{b}",
    "/a|b",
    "/a\\b",
    "/a^b`c",
    "/\u{e9}",
    "*",
    "http://h/x",
    "h:443",
    "",
];
const VERSIONS: &[&str] = &["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "http/1.1", "HTTP/1.1 "];
const FIELDS: &[&str] = &[
    "Host: h",
    "host: h2",
    "HOST:h",
    "x-api-key: k1",
    "X-Api-Key:   k2  ",
    "x-api-key:\tk3\t",
    "authorization: Bearer abc",
    "user-agent: curl/8.0",
    "accept: */*",
    "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "x-tag: caf\u{e9}",
    "x-empty:",
    "x-obs: a\u{80}\u{ff}b",
    "content-type: application/json",
    "Content-Length: 2",
    "content-length: 0",
    "content-length: 02",
    "content-length: 2, 2",
    "content-length: -2",
    "content-length: 2 ",
    "transfer-encoding: chunked",
    "Connection: keep-alive",
    "connection: close",
    "connection: upgrade",
    "upgrade: websocket",
    "expect: 100-continue",
    "te: trailers",
    "keep-alive: timeout=5",
    "x-forwarded-for: 1.2.3.4",
    "x-floodgate-tier: pro",
    "bad name: v",
    ": v",
    "x-nul: a\0b",
    "x-cr: a\rb",
    " folded: v",
    "x\u{e9}: v",
];
const BODIES: &[&[u8]] = &[b"", b"{}", b"ab", b"0\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"];
const ENDINGS: &[&str] = &["\r\n", "\n"];

/// An index into a list of `n`, from its first `plain` entries `weight` times in ten.
fn pick(n: usize, plain: usize, weight: u32) -> impl Strategy<Value = usize> {
    prop_oneof![weight => 0..plain, (10 - weight) => 0..n]
}

/// A head assembled from the pieces above — mostly plain ones, so both verdicts come up —
/// then (sometimes) with one byte changed.
fn heads() -> impl Strategy<Value = Vec<u8>> {
    (
        (
            pick(METHODS.len(), 7, 8),
            pick(TARGETS.len(), 5, 7),
            pick(VERSIONS.len(), 1, 8),
        ),
        proptest::option::weighted(0.9, Just("Host: h")),
        proptest::collection::vec(pick(FIELDS.len(), 14, 7), 0..6),
        0..BODIES.len(),
        pick(ENDINGS.len(), 1, 8),
        proptest::option::weighted(0.2, (any::<usize>(), any::<u8>())),
    )
        .prop_map(|((m, t, v), host, fields, b, e, flip)| {
            let eol = ENDINGS[e];
            let mut raw = format!("{} {} {}{eol}", METHODS[m], TARGETS[t], VERSIONS[v]);
            for f in host
                .into_iter()
                .chain(fields.into_iter().map(|f| FIELDS[f]))
            {
                raw.push_str(f);
                raw.push_str(eol);
            }
            raw.push_str(eol);
            let mut raw = raw.into_bytes();
            raw.extend_from_slice(BODIES[b]);
            if let Some((at, byte)) = flip {
                let at = at % raw.len();
                raw[at] = byte;
            }
            raw
        })
}

/// Plain heads only (the other generator finds few): a Host, sometimes a length and a body.
fn plain_heads() -> impl Strategy<Value = Vec<u8>> {
    (
        0..7usize,
        0..5usize,
        proptest::collection::vec(3..14usize, 0..6),
        any::<bool>(),
    )
        .prop_map(|(m, t, fields, with_body)| {
            let mut raw = format!("{} {} HTTP/1.1\r\nHost: h\r\n", METHODS[m], TARGETS[t]);
            for f in fields {
                raw.push_str(FIELDS[f]);
                raw.push_str("\r\n");
            }
            if with_body {
                raw.push_str("content-length: 2\r\n\r\n{}");
            } else {
                raw.push_str("\r\n");
            }
            raw.into_bytes()
        })
}

fn same_reading(raw: &[u8], rt: &tokio::runtime::Runtime) -> Result<(), TestCaseError> {
    let Some(fast) = fast_read(raw) else {
        return Ok(()); // hyper's to judge
    };
    let hyper = rt.block_on(hyper_read(raw));
    let Some(hyper) = hyper else {
        return Err(TestCaseError::fail(format!(
            "the fast path took a head hyper refuses: {:?}",
            String::from_utf8_lossy(raw)
        )));
    };
    prop_assert_eq!(
        grouped(fast),
        grouped(hyper),
        "{:?}",
        String::from_utf8_lossy(raw)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn whatever_the_fast_path_takes_hyper_reads_the_same(raw in heads()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        same_reading(&raw, &rt)?;
    }

    #[test]
    fn plain_heads_read_the_same_both_ways(raw in plain_heads()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        same_reading(&raw, &rt)?;
    }
}

#[test]
fn the_generators_reach_both_verdicts() {
    // A differential test that never sees a plain head (or sees nothing else) proves nothing.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut plain, mut other) = (0, 0);
    for _ in 0..2000 {
        let raw = heads().new_tree(&mut runner).unwrap().current();
        match fast_read(&raw) {
            Some(_) => plain += 1,
            None => other += 1,
        }
    }
    assert!(plain >= 200 && other >= 200, "plain {plain}, other {other}");
}

const CONFIG: &str = "[identity]\nanonymous = \"client_ip\"\ndefault_tier = \"t\"\n[[tiers.t.limits]]\nclasses = [\"*\"]\nper_minute = 1000000\n";

#[tokio::test]
async fn pipelined_plain_requests_are_answered_in_order_and_a_close_goes_through_hyper() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n\
          GET /two?x=1 HTTP/1.1\r\nHost: h\r\n\r\n\
          GET /three HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let answers = read_to_close(&mut s).await.unwrap();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 200]);
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/one", "/two?x=1", "/three"]);
}

#[tokio::test]
async fn a_connection_turns_to_hyper_at_a_chunked_body_and_loses_nothing() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    s.write_all(
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\
          POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          GET /c HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let answer = read_response(&mut s).await.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let seen: Vec<(String, u64)> = up
        .seen()
        .into_iter()
        .map(|s| (s.target, s.body_len))
        .collect();
    assert_eq!(
        seen,
        [("/a".into(), 3), ("/b".into(), 5), ("/c".into(), 0)],
        "every request reached the upstream whole, in order"
    );
}

#[tokio::test]
async fn a_body_sent_after_its_head_arrives_whole() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    // Soon after its head (the fast path waits for it), then long after (hyper reads it).
    for (round, pause) in [20, 20, 300, 20].into_iter().enumerate() {
        s.write_all(b"POST /late HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(pause)).await;
        s.write_all(b"hello").await.unwrap();
        let answer = read_response(&mut s).await.unwrap();
        assert_eq!(answer.status, 200, "round {round}: {answer:?}");
    }
    let lens: Vec<u64> = up.seen().into_iter().map(|s| s.body_len).collect();
    assert_eq!(lens, [5, 5, 5, 5]);
}

#[tokio::test]
async fn a_head_answer_keeps_its_length_and_sends_no_body() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    s.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let get = read_response(&mut s).await.unwrap();
    assert_eq!(get.status, 200);
    assert!(get.content_length() > 0, "{get:?}");
    s.write_all(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    // The HEAD's answer says the GET's length; the next bytes are the GET's answer.
    let mut wire = Vec::new();
    let mut chunk = [0u8; 4096];
    while wire.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2
        || wire.len()
            < wire.windows(4).rposition(|w| w == b"\r\n\r\n").unwrap() + 4 + get.content_length()
    {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("answers in time")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&wire));
        wire.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&wire).into_owned();
    let second = text.find("HTTP/1.1 200").and_then(|first| {
        text[first + 1..]
            .find("HTTP/1.1 200")
            .map(|i| i + first + 1)
    });
    let second = second.expect("two answers");
    let head_answer = &text[..second];
    assert!(
        head_answer.ends_with("\r\n\r\n"),
        "no body after the HEAD's answer: {head_answer:?}"
    );
    assert!(
        head_answer
            .to_ascii_lowercase()
            .contains(&format!("content-length: {}", get.content_length())),
        "{head_answer:?}"
    );
}

#[tokio::test]
async fn a_refusal_on_the_fast_path_is_a_json_429_and_the_connection_stays() {
    let up = Upstream::start().await;
    let config = CONFIG.replace("per_minute = 1000000", "per_minute = 1");
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    let get = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n";
    s.write_all(get).await.unwrap();
    let first = read_response(&mut s).await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-remaining"), Some("0"));
    for _ in 0..2 {
        s.write_all(get).await.unwrap();
        let refused = read_response(&mut s).await.unwrap();
        assert_eq!(refused.status, 429, "{refused:?}");
        assert_eq!(refused.header("content-type"), Some("application/json"));
        assert_eq!(refused.header("retry-after"), Some("60"));
        assert_eq!(refused.header("x-ratelimit-type"), Some("minute"));
        assert_eq!(refused.header("x-ratelimit-limit"), Some("1"));
        assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
        // Each field once: the listener writes the 429's own lines, nothing writes them twice.
        for name in [
            "content-type:",
            "retry-after:",
            "x-ratelimit-type:",
            "content-length:",
        ] {
            let lines = refused.head.to_ascii_lowercase().matches(name).count();
            assert_eq!(lines, 1, "{name} {lines} times in {}", refused.head);
        }
        let body: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
        assert!(body.get("message").is_some(), "{body}");
    }
    assert_eq!(up.count(), 1, "refused requests never reach the upstream");
}

#[tokio::test]
async fn the_upstream_gets_the_clients_fields_without_hop_by_hop_and_with_forwarding() {
    let up = Upstream::start().await;
    let config = format!("{CONFIG}[headers]\nannotate_upstream = true\n");
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    s.write_all(
        b"POST /f?q=1 HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive\r\n\
          X-Tag: t1\r\nx-tag: t2\r\nUser-Agent: ua\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = read_response(&mut s).await.unwrap();
    assert_eq!(answer.status, 200);
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.target, "/f?q=1");
    assert_eq!(seen.header("host"), Some("example.test"));
    let tags: Vec<&str> = seen
        .headers
        .get_all("x-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["t1", "t2"]);
    assert_eq!(seen.header("user-agent"), Some("ua"));
    assert_eq!(seen.header("connection"), None);
    assert_eq!(
        seen.header("content-length"),
        Some("0"),
        "a POST says it has no body"
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-floodgate-tier"), Some("t"));
}

#[tokio::test]
async fn a_head_framed_two_ways_after_plain_ones_is_still_refused() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    s.write_all(
        b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n\
          POST /smuggle HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await
    .unwrap();
    let answers = read_to_close(&mut s).await.unwrap();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 400], "{answers:?}");
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        ["/ok"],
        "nothing after the ambiguous head reached the upstream"
    );
}

/// An upstream that answers every request on a connection with `answer` (read up to the end
/// of each head; bodies are not expected), until the client closes.
async fn fixed_upstream(answer: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_relayed_head_keeps_the_upstreams_fields_and_floodgates_usage_wins() {
    let upstream = fixed_upstream(
        b"HTTP/1.1 201 Created\r\nX-Upstream: u\r\nX-RateLimit-Limit: 5\r\n\
          Connection: keep-alive, x-private\r\nx-private: p\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let gate = Gate::start(CONFIG, &upstream, DAY0_MS);
    let mut s = connect(gate.addr).await;
    for round in 0..2 {
        s.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(&mut s).await.unwrap();
        assert_eq!(answer.status, 201, "round {round}: {answer:?}");
        assert_eq!(answer.body, "ok");
        assert_eq!(answer.header("x-upstream"), Some("u"));
        let head = answer.head.to_ascii_lowercase();
        assert_eq!(
            head.matches("x-ratelimit-limit:").count(),
            1,
            "one limit, floodgate's: {head}"
        );
        assert_eq!(answer.header("x-ratelimit-limit"), Some("1000000"));
        assert_eq!(
            answer.header("x-private"),
            None,
            "named by Connection: hop-by-hop"
        );
        assert_eq!(answer.header("connection"), None);
        assert!(answer.header("date").is_some());
    }
}

#[tokio::test]
async fn a_relayed_head_keeps_the_upstreams_date_and_chunked_framing() {
    let upstream = fixed_upstream(
        b"HTTP/1.1 200 OK\r\nDate: Mon, 07 Dec 2026 00:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n\
          2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    let gate = Gate::start(CONFIG, &upstream, DAY0_MS);
    let mut s = connect(gate.addr).await;
    s.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut wire = Vec::new();
    let mut chunk = [0u8; 4096];
    while !wire.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("the answer in time")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&wire));
        wire.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&wire).to_ascii_lowercase();
    assert_eq!(text.matches("date:").count(), 1, "{text}");
    assert!(
        text.contains("date: mon, 07 dec 2026 00:00:00 gmt"),
        "{text}"
    );
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.ends_with("\r\n\r\n2\r\nok\r\n0\r\n\r\n"), "{text}");
}

#[tokio::test]
async fn a_panic_on_the_fast_path_is_that_requests_500_and_the_connection_goes_on() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    s.write_all(b"GET /floodgate-test-panic HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let failed = read_response(&mut s).await.unwrap();
    assert_eq!(failed.status, 500, "{failed:?}");
    assert_eq!(failed.header("content-type"), Some("application/json"));
    s.write_all(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let after = read_response(&mut s).await.unwrap();
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(up.count(), 1);
}
