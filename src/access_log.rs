//! The access log (`[access_log]`): one line per request, in JSON or the Common Log Format with
//! floodgate's fields after it.
//!
//! Off unless configured, and then free of cost on the request path: nothing is collected and
//! no response carries a record. When on, the proxy notes what it decided ([`Record`]); the
//! record travels with the response to the end of its body, where the line is formatted into
//! the worker's own buffer (as nginx's `access_log ... buffer=`). A full buffer, and every
//! worker's buffer every [`FLUSH_EVERY`], goes to a writer thread through a bounded channel: one
//! hand-over per few hundred lines, not one per request. A disk or pipe that cannot keep up
//! drops lines — counted in `floodgate_access_log_dropped_total` — instead of slowing requests
//! down. The key never appears: an account is its hash prefix, as on the status page.

use std::cell::{Cell, RefCell};
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Version};
use prometheus::IntCounter;
use serde::Serialize;

use crate::config::{AccessLogConfig, LogDestination, LogFormat};

/// Batches waiting for the writer; past this, new batches are dropped.
const QUEUE: usize = 1024;
/// A worker hands its buffer over once it holds this much.
const BATCH_BYTES: usize = 32 * 1024;
/// And at least this often, so a quiet worker's lines do not wait.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

thread_local! {
    /// This thread's lines not yet handed over, and how many they are.
    static BUFFER: RefCell<(Vec<u8>, u64)> = const { RefCell::new((Vec::new(), 0)) };
    /// Whether this thread flushes its buffer on a timer ([`AccessLog::enter_worker`]); on any
    /// other thread each line is handed over at once.
    static BUFFERED: Cell<bool> = const { Cell::new(false) };
}

enum Msg {
    /// Whole lines, each ending in a newline.
    Lines(Vec<u8>),
    /// Write out everything before this, then answer.
    Flush(mpsc::Sender<()>),
}

/// An open access log: where lines go, in which format.
pub struct AccessLog {
    tx: SyncSender<Msg>,
    format: LogFormat,
    dropped: IntCounter,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens the destination (a file is created or appended to) and starts the writer thread.
    pub fn open(config: &AccessLogConfig, dropped: IntCounter) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = match &config.to {
            LogDestination::Stdout => Box::new(io::stdout()),
            LogDestination::Stderr => Box::new(io::stderr()),
            LogDestination::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("access log {}: {e}", path.display()))
                    })?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("floodgate-access-log".into())
            .spawn(move || write_lines(&rx, out))?;
        Ok(Self {
            tx,
            format: config.format,
            dropped,
        })
    }

    /// Formats `record` into this thread's buffer, handing the buffer over when it is full (or
    /// at once, on a thread that is not a worker).
    pub fn write(&self, record: &Record) {
        BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            let (lines, count) = &mut *buffer;
            match self.format {
                LogFormat::Json => record.write_json(lines),
                LogFormat::Common => record.write_common(lines),
            }
            lines.push(b'\n');
            *count += 1;
            if lines.len() >= BATCH_BYTES || !BUFFERED.get() {
                self.hand_over(lines, count);
            }
        });
    }

    /// Marks this thread as a worker that calls [`flush_thread`](Self::flush_thread) at least
    /// every [`FLUSH_EVERY`] and when it ends.
    pub fn enter_worker(&self) {
        BUFFERED.set(true);
    }

    /// Flushes this thread's buffer every [`FLUSH_EVERY`]; runs as a task of the worker's own
    /// (single-threaded) runtime, so it sees the worker's buffer.
    pub async fn flush_periodically(self: Arc<Self>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush_thread();
        }
    }

    /// The worker ends: its buffer goes out, and any line written on this thread from now on
    /// is handed over at once.
    pub fn leave_worker(&self) {
        BUFFERED.set(false);
        self.flush_thread();
    }

    /// Hands this thread's buffered lines to the writer.
    pub fn flush_thread(&self) {
        BUFFER.with(|buffer| {
            let (lines, count) = &mut *buffer.borrow_mut();
            if !lines.is_empty() {
                self.hand_over(lines, count);
            }
        });
    }

    fn hand_over(&self, lines: &mut Vec<u8>, count: &mut u64) {
        let batch = std::mem::replace(lines, Vec::with_capacity(BATCH_BYTES + 1024));
        match self.tx.try_send(Msg::Lines(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc_by(*count);
            }
        }
        *count = 0;
    }

    /// Waits (at most `within`) until every batch handed over so far is written out.
    pub fn flush(&self, within: Duration) {
        let (done, written) = mpsc::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = written.recv_timeout(within);
        }
    }
}

/// The writer thread: writes lines as they come, flushing whenever none is waiting, until the
/// log is dropped.
fn write_lines(rx: &Receiver<Msg>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Lines(lines) => {
                    let _ = out.write_all(&lines);
                }
                Msg::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

/// A request's record on its way to the end of its response body, where [`Pending::finish`]
/// completes and writes it.
#[derive(Debug, Clone)]
pub struct Pending {
    pub record: Record,
    /// When the request arrived (monotonic).
    pub arrived: std::time::Instant,
    pub log: Arc<AccessLog>,
}

impl Pending {
    /// The response body ended (or was abandoned) after `bytes`: the line goes out.
    pub fn finish(mut self, bytes: u64) {
        self.record.bytes = bytes;
        self.record.duration = self.arrived.elapsed();
        self.log.write(&self.record);
    }
}

/// How floodgate dealt with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Sent upstream; the status is the upstream's.
    Forwarded,
    /// Answered 429 by floodgate: a limit, a full queue, a penalty (`limit` says which).
    Limited,
    /// Answered by floodgate with another 4xx: a bad request, no key, too large.
    Refused,
    /// floodgate could not complete it: the upstream unreachable or too slow, the store down.
    Failed,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Limited => "limited",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }

    /// What became of a request floodgate answered with `status`, or that the upstream answered
    /// (`forwarded`).
    pub fn of(forwarded: bool, status: u16) -> Outcome {
        match (forwarded, status) {
            (true, _) => Outcome::Forwarded,
            (false, 429) => Outcome::Limited,
            (false, 500..) => Outcome::Failed,
            (false, _) => Outcome::Refused,
        }
    }
}

/// What the log says of one request.
#[derive(Debug, Clone)]
pub struct Record {
    /// Wall-clock time the request arrived, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub peer: IpAddr,
    pub method: Method,
    pub version: Version,
    /// The path as routes matched it (normalised), or as sent when it could not be.
    pub path: String,
    pub class: Option<String>,
    pub tier: Option<String>,
    /// The account's hash prefix ([`crate::identity::AccountId::prefix`]), written as eight
    /// hex digits.
    pub account: Option<u32>,
    pub status: u16,
    pub decision: Outcome,
    /// The limit a 429 was for (`X-RateLimit-Type`).
    pub limit: Option<String>,
    /// What penalties in shadow mode would have done to a job that went through as it was
    /// (`relax:surcharged`, `incorrect_tasks:refused`, ...).
    pub shadow_penalty: Option<&'static str>,
    /// From sending upstream to the upstream's response head.
    pub upstream: Option<Duration>,
    /// How long a job waited for its slot.
    pub queue_wait: Option<Duration>,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// From the request's arrival to the end of its response body.
    pub duration: Duration,
}

/// Milliseconds to the microsecond.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// `2026-12-05T16:20:00.123Z`: the second's text is kept per thread (a log's lines come many
/// to a second), the milliseconds written after it.
fn write_rfc3339_millis(out: &mut Vec<u8>, ms: u64) {
    thread_local! {
        static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
    }
    let secs = ms / 1000;
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != secs {
            let at = UNIX_EPOCH + Duration::from_secs(secs);
            let text = humantime::format_rfc3339_seconds(at).to_string(); // ...T16:20:00Z
            match text.as_bytes().get(..19) {
                Some(head) => second.1.copy_from_slice(head),
                None => second.1 = *b"1970-01-01T00:00:00",
            }
            second.0 = secs;
        }
        out.extend_from_slice(&second.1);
    });
    let frac = (ms % 1000) as u16;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
        b'Z',
    ]);
}

/// An address as `Display` writes it; an IPv4 one (most peers) without the formatter.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (at, octet) in v4.octets().into_iter().enumerate() {
                if at > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// `{:08x}` without the formatter.
fn hex8(n: u32) -> [u8; 8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    std::array::from_fn(|at| HEX[(n >> (28 - 4 * at) & 0xf) as usize])
}

/// A JSON string: copied as it is when nothing in it needs escaping (names, paths, labels
/// nearly always), escaped by serde_json otherwise.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, s).expect("a string always serializes");
    }
}

/// Milliseconds to the microsecond as a JSON number, as serde_json writes that `f64` (the
/// shortest text that reads back as it: `0.412`, `1.5`, `2.0`), without the float.
fn write_json_millis(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros();
    if micros >= 1_000_000_000_000_000 {
        // Past 31 years: a float's own text (never on a live request).
        serde_json::to_writer(out, &millis(d)).expect("a number always serializes");
        return;
    }
    let micros = micros as u64;
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(micros / 1000).as_bytes());
    out.push(b'.');
    let frac = (micros % 1000) as u16;
    let frac = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let keep = frac.iter().rposition(|&d| d != b'0').map_or(1, |at| at + 1);
    out.extend_from_slice(&frac[..keep]);
}

/// `05/Dec/2026:16:20:00 +0000`, the Common Log Format's time.
fn clf_time(ms: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let at: SystemTime = UNIX_EPOCH + Duration::from_secs(ms / 1000);
    let iso = humantime::format_rfc3339_seconds(at).to_string(); // 2026-12-05T16:20:00Z
    let month = iso[5..7]
        .parse::<usize>()
        .map_or("???", |m| MONTHS[(m - 1) % 12]);
    format!(
        "{}/{month}/{}:{} +0000",
        &iso[8..10],
        &iso[0..4],
        &iso[11..19]
    )
}

impl Record {
    /// One JSON object, its fields in a fixed order; written directly, as serde_json would
    /// write them (a test holds the two to the same text).
    fn write_json(&self, out: &mut Vec<u8>) {
        /// A string that needs no escaping: a token (the method), a name of floodgate's own.
        fn plain(out: &mut Vec<u8>, s: &str) {
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
        fn str_or_null(out: &mut Vec<u8>, v: Option<&str>) {
            match v {
                Some(v) => write_json_str(out, v),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.reserve(320);
        let mut digits = itoa::Buffer::new();
        out.extend_from_slice(b"{\"time\":\"");
        write_rfc3339_millis(out, self.time_ms);
        out.extend_from_slice(b"\",\"peer\":\"");
        write_ip(out, self.peer);
        out.extend_from_slice(b"\",\"method\":");
        plain(out, self.method.as_str());
        out.extend_from_slice(b",\"path\":");
        write_json_str(out, &self.path);
        out.extend_from_slice(b",\"protocol\":");
        plain(out, protocol(self.version));
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(digits.format(self.status).as_bytes());
        out.extend_from_slice(b",\"bytes\":");
        out.extend_from_slice(digits.format(self.bytes).as_bytes());
        out.extend_from_slice(b",\"class\":");
        str_or_null(out, self.class.as_deref());
        out.extend_from_slice(b",\"tier\":");
        str_or_null(out, self.tier.as_deref());
        out.extend_from_slice(b",\"account\":");
        match self.account {
            Some(prefix) => {
                out.push(b'"');
                out.extend_from_slice(&hex8(prefix));
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"decision\":");
        plain(out, self.decision.name());
        out.extend_from_slice(b",\"limit\":");
        str_or_null(out, self.limit.as_deref());
        out.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream {
            Some(d) => write_json_millis(out, d),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"queue_ms\":");
        match self.queue_wait {
            Some(d) => out.extend_from_slice(digits.format(d.as_millis() as u64).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"duration_ms\":");
        write_json_millis(out, self.duration);
        out.extend_from_slice(b",\"shadow_penalty\":");
        match self.shadow_penalty {
            Some(what) => plain(out, what),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }

    fn write_common(&self, out: &mut Vec<u8>) {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let account = self
            .account
            .map_or_else(|| "-".into(), |a| format!("{a:08x}"));
        let ms = |d: Option<Duration>| d.map_or("-".into(), |d| millis(d).to_string());
        let _ = write!(
            out,
            "{} - {} [{}] \"{} {} {}\" {} {} class={} tier={} decision={} limit={} \
             upstream_ms={} queue_ms={} duration_ms={} shadow_penalty={}",
            self.peer,
            account,
            clf_time(self.time_ms),
            self.method,
            self.path,
            protocol(self.version),
            self.status,
            self.bytes,
            dash(&self.class),
            dash(&self.tier),
            self.decision.name(),
            dash(&self.limit),
            ms(self.upstream),
            self.queue_wait
                .map_or("-".into(), |d| d.as_millis().to_string()),
            millis(self.duration),
            self.shadow_penalty.unwrap_or("-"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::penalties::{ShadowEffect, Shadowed};

    fn record() -> Record {
        Record {
            time_ms: 1_796_487_600_123, // 2026-12-05T16:20:00.123Z
            peer: "127.0.0.1".parse().unwrap(),
            method: Method::POST,
            version: Version::HTTP_11,
            path: "/api/v1/txt2img".into(),
            class: Some("txt2img".into()),
            tier: Some("basic".into()),
            account: Some(0x1a2b_3c4d),
            status: 429,
            decision: Outcome::Limited,
            limit: Some("minute".into()),
            shadow_penalty: None,
            upstream: None,
            queue_wait: None,
            bytes: 36,
            duration: Duration::from_micros(412),
        }
    }

    #[test]
    fn a_json_line_carries_every_field() {
        let mut line = Vec::new();
        record().write_json(&mut line);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2026-12-05T16:20:00.123Z", "peer": "127.0.0.1", "method": "POST",
                "path": "/api/v1/txt2img", "protocol": "HTTP/1.1", "status": 429, "bytes": 36,
                "class": "txt2img", "tier": "basic", "account": "1a2b3c4d",
                "decision": "limited", "limit": "minute", "upstream_ms": null,
                "queue_ms": null, "duration_ms": 0.412, "shadow_penalty": null
            })
        );
    }

    /// The fields as serde_json wrote them before the line was written by hand: the
    /// reference the hand-written line must match byte for byte.
    #[derive(Serialize)]
    struct SerdeLine<'a> {
        time: &'a str,
        peer: IpAddr,
        method: &'a str,
        path: &'a str,
        protocol: &'a str,
        status: u16,
        bytes: u64,
        class: Option<&'a str>,
        tier: Option<&'a str>,
        account: Option<String>,
        decision: Outcome,
        limit: Option<&'a str>,
        upstream_ms: Option<f64>,
        queue_ms: Option<u64>,
        duration_ms: f64,
        shadow_penalty: Option<&'a str>,
    }

    /// Every combination of what shadow penalties would have done.
    fn shadowed() -> Vec<Shadowed> {
        use ShadowEffect::*;
        let incorrect = [None, Some(Refused), Some(Flagged)];
        let relax = [None, Some(Refused), Some(Surcharged)];
        incorrect
            .into_iter()
            .flat_map(|i| {
                relax.map(|r| Shadowed {
                    incorrect: i,
                    relax: r,
                })
            })
            .collect()
    }

    fn serde_line(r: &Record) -> Vec<u8> {
        let at = UNIX_EPOCH + Duration::from_millis(r.time_ms);
        let time = humantime::format_rfc3339_millis(at).to_string();
        let line = SerdeLine {
            time: &time,
            peer: r.peer,
            method: r.method.as_str(),
            path: &r.path,
            protocol: protocol(r.version),
            status: r.status,
            bytes: r.bytes,
            class: r.class.as_deref(),
            tier: r.tier.as_deref(),
            account: r.account.map(|a| format!("{a:08x}")),
            decision: r.decision,
            limit: r.limit.as_deref(),
            upstream_ms: r.upstream.map(millis),
            queue_ms: r.queue_wait.map(|d| d.as_millis() as u64),
            duration_ms: millis(r.duration),
            shadow_penalty: r.shadow_penalty,
        };
        serde_json::to_vec(&line).unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn a_json_line_is_what_serde_json_writes(
            time_ms in proptest::prop_oneof![0u64..4_102_444_800_000, proptest::prelude::Just(1_796_487_600_000)],
            v6 in proptest::prelude::any::<bool>(),
            addr in proptest::prelude::any::<u128>(),
            path in "[ -~\\u{80}-\\u{10ffff}\\x00-\\x1f]{0,24}",
            class in proptest::option::of("[a-z0-9_\"\\\\]{1,12}"),
            tier in proptest::option::of("[ -~]{1,12}"),
            account in proptest::option::of(proptest::prelude::any::<u32>()),
            status in 100u16..600,
            bytes in proptest::prelude::any::<u64>(),
            limit in proptest::option::of("[a-z]{3,8}"),
            upstream in proptest::option::of(proptest::prop_oneof![0u64..5_000, 0u64..100_000_000_000, proptest::prelude::any::<u64>()]),
            queue in proptest::option::of(0u64..10_000_000),
            duration in proptest::prop_oneof![0u64..5_000, 0u64..100_000_000_000, proptest::prelude::any::<u64>()],
            shadowed in proptest::sample::select(shadowed()),
        ) {
            let peer: IpAddr = if v6 {
                std::net::Ipv6Addr::from(addr).into()
            } else {
                std::net::Ipv4Addr::from(addr as u32).into()
            };
            let r = Record {
                time_ms,
                peer,
                method: Method::GET,
                version: Version::HTTP_11,
                path,
                class,
                tier,
                account,
                status,
                decision: Outcome::of(status % 2 == 0, status),
                limit,
                shadow_penalty: shadowed.describe(),
                upstream: upstream.map(Duration::from_micros),
                queue_wait: queue.map(Duration::from_millis),
                bytes,
                duration: Duration::from_micros(duration),
            };
            let mut line = Vec::new();
            r.write_json(&mut line);
            proptest::prop_assert_eq!(
                String::from_utf8(line).unwrap(),
                String::from_utf8(serde_line(&r)).unwrap()
            );
        }
    }

    #[test]
    fn a_common_line_is_clf_then_floodgates_fields() {
        let mut r = record();
        r.decision = Outcome::Forwarded;
        r.status = 200;
        r.limit = None;
        r.upstream = Some(Duration::from_micros(1_500));
        r.queue_wait = Some(Duration::from_millis(20));
        let mut line = Vec::new();
        r.write_common(&mut line);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "127.0.0.1 - 1a2b3c4d [05/Dec/2026:16:20:00 +0000] \"POST /api/v1/txt2img HTTP/1.1\" \
             200 36 class=txt2img tier=basic decision=forwarded limit=- upstream_ms=1.5 \
             queue_ms=20 duration_ms=0.412 shadow_penalty=-"
        );
        r.shadow_penalty = Some("relax:surcharged");
        let mut line = Vec::new();
        r.write_common(&mut line);
        let line = String::from_utf8(line).unwrap();
        assert!(line.ends_with(" shadow_penalty=relax:surcharged"), "{line}");
    }

    #[test]
    fn the_decision_follows_who_answered() {
        assert_eq!(Outcome::of(true, 429), Outcome::Forwarded);
        assert_eq!(Outcome::of(false, 429), Outcome::Limited);
        assert_eq!(Outcome::of(false, 400), Outcome::Refused);
        assert_eq!(Outcome::of(false, 504), Outcome::Failed);
    }
}
