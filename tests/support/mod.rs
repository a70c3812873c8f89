//! Test harness: a recording upstream on port 0, floodgate in-process on port 0, and a client.
//! Everything runs over real loopback HTTP.
#![allow(dead_code)]

pub mod browser;
pub mod pki;
pub mod process;
pub mod raw;
pub mod redis_cluster;
pub mod redis_server;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use floodgate::app::{self, Listeners, Running};
use floodgate::clock::{Clock, ManualClock};
use floodgate::config::{Config, Overrides};
use floodgate::store::Store;

/// 2026-11-23T00:00:00Z.
pub const DAY0_MS: u64 = 1_795_392_000_000;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Request target exactly as it arrived (path and query).
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    /// When the request head arrived.
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The upstream's shared state.
#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    /// (x-job header, when its response was sent)
    ended: Mutex<Vec<(String, Instant)>>,
    /// in flight and maximum in flight, per `mj-api-secret` credential ("-" without one)
    by_credential: Mutex<HashMap<String, (usize, usize)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Credentials answered with 429 + Retry-After.
    busy: Mutex<HashSet<String>>,
    /// Credentials answered with this status and body instead (a dead or failing account).
    answers: Mutex<HashMap<String, (u16, String)>>,
    /// Task id -> status, for `/task/create` and `/task/{id}`.
    tasks: Mutex<HashMap<String, String>>,
    /// Task id -> why it failed (`failReason` in its get-task answer).
    fail_reasons: Mutex<HashMap<String, String>>,
    next_task: AtomicUsize,
    /// Connections accepted (TLS: handshakes completed).
    connections: AtomicUsize,
    /// Connections accepted and not yet closed.
    open: AtomicUsize,
}

/// A recording upstream. Paths: `/slow?ms=N`, `/status/NNN`, `/download?bytes=N`, `/echo`,
/// `/drip?events=N&ms=M` (server-sent events, one every M ms),
/// `/hop` (answers with hop-by-hop headers), `POST /task/create[?ms=N]` (answers
/// `{"result": "t-N"}`), `GET /task/{id}` (answers `{"id", "status"}`, and `failReason` when
/// set); anything else answers 200 `{"ok":true}`. A request whose `mj-api-secret` is marked busy
/// gets 429. On demand (an incorrect task, an upstream error): a request carrying
/// `x-upstream-status: NNN` and/or `x-upstream-body: TEXT` is answered with that status and
/// JSON body instead, on any path but `/echo`.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<State>,
}

fn query_num(target: &str, key: &str) -> Option<u64> {
    target
        .split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::start_with(None).await
    }

    /// The same upstream behind TLS with `tls`'s certificate (its `url()` stays `http://`: use
    /// `https_url`).
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Upstream {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (st, tls) = (st.clone(), tls.clone());
                tokio::spawn(async move {
                    let counted = st.clone();
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(respond(req, st).await) }
                    });
                    let builder = http1::Builder::new();
                    match tls {
                        None => {
                            counted.connections.fetch_add(1, SeqCst);
                            counted.open.fetch_add(1, SeqCst);
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            let _ = conn.with_upgrades().await;
                            counted.open.fetch_sub(1, SeqCst);
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return; // a failed handshake: the client gave up on us
                            };
                            counted.connections.fetch_add(1, SeqCst);
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Upstream { addr, state }
    }

    /// `https://localhost:PORT`, for an upstream started with `start_tls`.
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Clear-text connections open now.
    pub fn open_connections(&self) -> usize {
        self.state.open.load(SeqCst)
    }

    /// Connections accepted so far (with TLS: handshakes completed).
    pub fn connections(&self) -> usize {
        self.state.connections.load(SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// Requests seen whose target starts with `prefix`.
    pub fn count_prefix(&self, prefix: &str) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.target.starts_with(prefix))
            .count()
    }

    /// Most requests the upstream ever held at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(SeqCst)
    }

    /// Most requests ever held at once for one credential.
    pub fn max_in_flight_for(&self, credential: &str) -> usize {
        self.state
            .by_credential
            .lock()
            .unwrap()
            .get(credential)
            .map_or(0, |c| c.1)
    }

    /// When the response to the request with `x-job: job` was sent.
    pub fn ended(&self, job: &str) -> Option<Instant> {
        self.state
            .ended
            .lock()
            .unwrap()
            .iter()
            .find(|(j, _)| j == job)
            .map(|(_, t)| *t)
    }

    /// Answers every request with `credential` with `status` and JSON `body` (`None`: as
    /// usual again) — a revoked credential's 401, a banned account's 403, a failing 503.
    pub fn set_answer(&self, credential: &str, answer: Option<(u16, &str)>) {
        let mut answers = self.state.answers.lock().unwrap();
        match answer {
            Some((status, body)) => answers.insert(credential.to_owned(), (status, body.into())),
            None => answers.remove(credential),
        };
    }

    pub fn set_busy(&self, credential: &str, busy: bool) {
        let mut b = self.state.busy.lock().unwrap();
        if busy {
            b.insert(credential.to_owned());
        } else {
            b.remove(credential);
        }
    }

    /// Ends a task as failed, with the reason its get-task answer gives.
    pub fn fail_task(&self, id: &str, status: &str, reason: &str) {
        self.state
            .fail_reasons
            .lock()
            .unwrap()
            .insert(id.to_owned(), reason.to_owned());
        self.set_task_status(id, status);
    }

    /// Requests seen carrying header `name` with `value`.
    pub fn count_header(&self, name: &str, value: &str) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.header(name) == Some(value))
            .count()
    }

    pub fn set_task_status(&self, id: &str, status: &str) {
        self.state
            .tasks
            .lock()
            .unwrap()
            .insert(id.to_owned(), status.to_owned());
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn json(status: u16, body: String) -> Response<UpBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap()
}

/// Counts a request in flight, overall and for its credential, until dropped.
struct InFlight {
    state: Arc<State>,
    credential: String,
}

impl InFlight {
    fn enter(state: &Arc<State>, credential: String) -> Self {
        let now = state.in_flight.fetch_add(1, SeqCst) + 1;
        state.max_in_flight.fetch_max(now, SeqCst);
        let mut by = state.by_credential.lock().unwrap();
        let c = by.entry(credential.clone()).or_default();
        c.0 += 1;
        c.1 = c.1.max(c.0);
        drop(by);
        Self {
            state: state.clone(),
            credential,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, SeqCst);
        if let Some(c) = self
            .state
            .by_credential
            .lock()
            .unwrap()
            .get_mut(&self.credential)
        {
            c.0 -= 1;
        }
    }
}

async fn respond(mut req: Request<Incoming>, state: Arc<State>) -> Response<UpBody> {
    if req.uri().path() == "/upgrade" && req.headers().contains_key("upgrade") {
        return switch_to_echo(&mut req, &state);
    }
    let at = Instant::now();
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let (parts, body) = req.into_parts();
    let path = target.split('?').next().unwrap_or("/").to_owned();
    let credential = parts
        .headers
        .get("mj-api-secret")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let job = parts
        .headers
        .get("x-job")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let on_demand = match (header("x-upstream-status"), header("x-upstream-body")) {
        (None, None) => None,
        (status, body) => Some((
            status.and_then(|s| s.parse::<u16>().ok()).unwrap_or(200),
            body.unwrap_or_else(|| "{}".into()),
        )),
    };
    let mut entry = Seen {
        method: parts.method.clone(),
        target: target.clone(),
        headers: parts.headers.clone(),
        body_len: 0,
        at,
    };
    if path == "/echo" {
        return echo(body, entry, state);
    }
    let guard = InFlight::enter(&state, credential.clone());
    let mut body = body;
    let mut n = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(d) = frame.into_data() {
            n += d.len() as u64;
        }
    }
    entry.body_len = n;
    state.seen.lock().unwrap().push(entry);
    if let Some(ms) = query_num(&target, "ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let fixed = state.answers.lock().unwrap().get(&credential).cloned();
    let resp = if let Some((status, body)) = fixed {
        json(status, body)
    } else if state.busy.lock().unwrap().contains(&credential) {
        Response::builder()
            .status(429)
            .header("retry-after", "2")
            .body(full("{\"busy\":true}"))
            .unwrap()
    } else if let Some((status, body)) = on_demand {
        json(status, body)
    } else if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        json(code, "{\"status\":true}".into())
    } else if let Some(code) = path
        .strip_prefix("/bare/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        // A status and nothing else: no fields, an empty body.
        Response::builder().status(code).body(full("")).unwrap()
    } else if path == "/task/create" {
        let id = format!("t-{}", state.next_task.fetch_add(1, SeqCst) + 1);
        state
            .tasks
            .lock()
            .unwrap()
            .insert(id.clone(), "IN_PROGRESS".into());
        json(200, format!("{{\"code\":1,\"result\":\"{id}\"}}"))
    } else if let Some(id) = path.strip_prefix("/task/") {
        let status = state.tasks.lock().unwrap().get(id).cloned();
        let reason = state.fail_reasons.lock().unwrap().get(id).cloned();
        match (status, reason) {
            (Some(status), None) => {
                json(200, format!("{{\"id\":\"{id}\",\"status\":\"{status}\"}}"))
            }
            (Some(status), Some(reason)) => json(
                200,
                serde_json::json!({"id": id, "status": status, "failReason": reason}).to_string(),
            ),
            (None, _) => json(404, "{\"error\":\"no such task\"}".into()),
        }
    } else if path == "/download" {
        let total = query_num(&target, "bytes").unwrap_or(0);
        Response::new(stream_zeros(total))
    } else if path == "/drip" {
        let events = query_num(&target, "events").unwrap_or(3);
        let ms = query_num(&target, "ms").unwrap_or(100);
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(drip(events, Duration::from_millis(ms)))
            .unwrap()
    } else if path == "/hop" {
        Response::builder()
            .header("connection", "x-up-secret")
            .header("x-up-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("x-up-visible", "1")
            .body(full("hop"))
            .unwrap()
    } else {
        json(200, "{\"ok\":true}".into())
    };
    if let Some(job) = job {
        state.ended.lock().unwrap().push((job, Instant::now()));
    }
    drop(guard);
    resp
}

/// Streams the request body straight back; records the request once its body has ended.
fn echo(body: Incoming, mut entry: Seen, state: Arc<State>) -> Response<UpBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        let mut body = body;
        let mut n = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                n += data.len() as u64;
                if tx.send(Ok(Frame::data(data))).await.is_err() {
                    break;
                }
            }
        }
        entry.body_len = n;
        state.seen.lock().unwrap().push(entry);
    });
    Response::new(StreamBody::new(tokio_stream_from(rx)).boxed())
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Answers an upgrade request with `101` and then echoes every byte the client sends on the
/// switched connection.
fn switch_to_echo(req: &mut Request<Incoming>, state: &State) -> Response<UpBody> {
    state.seen.lock().unwrap().push(Seen {
        method: req.method().clone(),
        target: req.uri().to_string(),
        headers: req.headers().clone(),
        body_len: 0,
        at: Instant::now(),
    });
    let protocol = req.headers()["upgrade"].clone();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", protocol)
        .body(full(""))
        .unwrap()
}

/// A server-sent-events body: `events` events `every` apart (the first one at once), like a
/// model streaming its tokens.
fn drip(events: u64, every: Duration) -> UpBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for i in 0..events {
            if i > 0 {
                tokio::time::sleep(every).await;
            }
            let event = Bytes::from(format!("data: {i}\n\n"));
            if tx.send(Ok(Frame::data(event))).await.is_err() {
                return;
            }
        }
    });
    StreamBody::new(tokio_stream_from(rx)).boxed()
}

/// A body of `total` zero bytes in 64 KiB frames, generated as it is read.
pub fn stream_zeros(total: u64) -> UpBody {
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    let mut left = total;
    let stream = futures_util::stream::poll_fn(move |_| {
        if left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = left.min(chunk.len() as u64) as usize;
        left -= n as u64;
        std::task::Poll::Ready(Some(Ok(Frame::data(chunk.slice(..n)))))
    });
    StreamBody::new(stream).boxed()
}

/// Which store holds a scenario's counters, tallies and job slots. A scenario written once as
/// `async fn name(backend: Backend)` runs on both through [`on_both_stores!`](crate::on_both_stores).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-process store (the default).
    Memory,
    /// A real `redis-server` started for the test, deciding on the test's manual clock.
    Redis,
    /// The memory store, with the scenario's clients speaking HTTP/2 (h2c, prior knowledge)
    /// to a listener with `h2c` on.
    MemoryOverH2c,
}

/// One scenario's tests: `mod name` with a test per setup (`memory => Memory`, ...), each
/// running `name(Backend::...)`.
#[macro_export]
macro_rules! scenario_tests {
    ($name:ident; $($setup:ident => $backend:ident),+) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $setup() {
                    super::$name($crate::support::Backend::$backend).await
                }
            )+
        }
    };
}

/// Runs each scenario `async fn name(backend: Backend)` as two tests, `name::memory` and
/// `name::redis`: one behaviour, written once, held by both stores.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $( $crate::scenario_tests!($name; memory => Memory, redis => Redis); )*
    };
}

/// As [`on_both_stores!`](crate::on_both_stores), and `name::h2c` besides: the memory store
/// with the scenario's clients speaking HTTP/2.
#[macro_export]
macro_rules! on_every_setup {
    ($($name:ident),* $(,)?) => {
        $( $crate::scenario_tests!($name; memory => Memory, redis => Redis, h2c => MemoryOverH2c); )*
    };
}

/// floodgate running in this process on port 0, with a manual clock.
pub struct Gate {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub clock: ManualClock,
    running: Option<Running>,
    /// The Redis server of a [`Backend::Redis`] gate; stopped after floodgate is.
    redis: Option<redis_server::RedisServer>,
    /// Clients of this gate speak HTTP/2 ([`Backend::MemoryOverH2c`]).
    h2c: bool,
}

impl Gate {
    /// Starts floodgate on `config_text` against `upstream`, with the clock at `now_ms`.
    pub fn start(config_text: &str, upstream: &str, now_ms: u64) -> Gate {
        Self::start_on(Backend::Memory, config_text, upstream, now_ms)
    }

    /// Binds the way the binary does (one `SO_REUSEPORT` socket per worker, a backlog of 1024)
    /// on loopback port 0.
    pub fn start_config(mut config: Config, now_ms: u64) -> Gate {
        let cfg_store = config.store.clone();
        let clock = ManualClock::new(now_ms);
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.server.admin = Some("127.0.0.1:0".parse().unwrap());
        let listeners = Listeners::bind(&config).expect("bind loopback port 0");
        let dyn_clock: Arc<dyn Clock> = Arc::new(clock.clone());
        let running = app::start(
            config,
            listeners,
            app::open_store(&cfg_store).expect("store"),
            dyn_clock,
        )
        .expect("floodgate starts");
        Gate {
            addr: running.addr,
            admin: running.admin_addr.unwrap(),
            clock,
            running: Some(running),
            redis: None,
            h2c: false,
        }
    }

    /// As [`start`](Self::start), on `backend`. On Redis, floodgate gets its own server and a
    /// `[store]` section (fail closed, so a Redis failure shows as a 503, never as a silent
    /// local decision), and Redis decides at the manual clock's instants.
    pub fn start_on(backend: Backend, config_text: &str, upstream: &str, now_ms: u64) -> Gate {
        Self::start_text(backend, config_text, upstream, now_ms, true)
    }

    fn start_text(
        backend: Backend,
        config_text: &str,
        upstream: &str,
        now_ms: u64,
        keep_state: bool,
    ) -> Gate {
        let overrides = Overrides {
            upstream: Some(upstream.to_owned()),
            workers: Some(2),
            ..Overrides::default()
        };
        let redis = (backend == Backend::Redis).then(redis_server::RedisServer::start);
        let text = match &redis {
            None => config_text.to_owned(),
            Some(server) => format!("{config_text}{}", server.store_section()),
        };
        let mut config = Config::parse(&text, &overrides).expect("config is valid");
        if !keep_state {
            config.state = None;
        }
        let h2c = backend == Backend::MemoryOverH2c;
        config.server.h2c |= h2c;
        let mut gate = Self::start_config(config, now_ms);
        gate.h2c = h2c;
        if backend == Backend::Redis {
            let Store::Redis(s) = &gate.shared().store else {
                panic!("a Redis gate runs on the memory store");
            };
            s.redis().use_caller_clock(true);
        }
        gate.redis = redis;
        gate
    }

    /// As [`shipped`](Self::shipped), on `backend`.
    pub fn shipped_on(backend: Backend, name: &str, upstream: &str, now_ms: u64) -> Gate {
        let text = std::fs::read_to_string(format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
        Self::start_text(backend, &text, upstream, now_ms, false)
    }

    /// Starts floodgate on a shipped config file, without its state file (tests run side by
    /// side and must not share one; the real-binary tests cover the state file).
    pub fn shipped(name: &str, upstream: &str, now_ms: u64) -> Gate {
        Self::shipped_on(Backend::Memory, name, upstream, now_ms)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A client speaking this gate's protocol: HTTP/1.1, or HTTP/2 for a
    /// [`Backend::MemoryOverH2c`] gate.
    pub fn client(&self) -> TestClient {
        match self.h2c {
            true => TestClient::h2c(),
            false => TestClient::new(),
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The running instance's shared state (store, metrics, jobs).
    pub fn shared(&self) -> &std::sync::Arc<floodgate::app::Shared> {
        &self.running.as_ref().expect("running").shared
    }

    /// Moves this instance's Redis clock so that it reads `now_ms` (no-op for the memory store).
    pub fn set_redis_time(&self, now_ms: u64) {
        if let floodgate::store::Store::Redis(s) = &self.shared().store {
            #[allow(clippy::disallowed_methods)] // the test sets the shared clock from real time
            let real = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            s.redis().set_clock_offset_ms(now_ms as i64 - real);
        }
    }

    /// Jobs (running, waiting) over all of this instance's pools.
    pub fn jobs(&self) -> (u32, usize) {
        let pools = &self.shared().jobs.pools;
        let running = pools.iter().flat_map(|p| p.upstream_in_flight()).sum();
        (running, pools.iter().map(|p| p.waiting()).sum())
    }

    /// Waits (at most 5 s, polling every millisecond) until the jobs (running, waiting) satisfy
    /// `check`: how a test knows a job it sent has been admitted or queued, without sleeping
    /// for a guessed time.
    pub async fn until_jobs(&self, check: impl Fn(u32, usize) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (running, waiting) = self.jobs();
            if check(running, waiting) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "jobs stayed at {running} running, {waiting} waiting"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn clock_now(&self) -> u64 {
        self.clock.now_ms()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
        }
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn num(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("missing header {name}"))
            .parse()
            .unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// A keep-alive HTTP/1.1 client.
#[derive(Clone)]
pub struct TestClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for TestClient {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClient {
    pub fn new() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// An HTTP/2 client with prior knowledge (h2c): every request of this client is a stream of
    /// one connection per origin.
    pub fn h2c() -> Self {
        // Without TCP_NODELAY a request's HEADERS and DATA frames, two writes, meet Nagle's
        // algorithm and the server's delayed ACK: 40 ms a request (as real clients set it).
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            inner: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .inner
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .expect("request completes");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body completes").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// `POST url` with `x-api-key: key`, or why it got no answer (a server killed meanwhile).
    pub async fn try_post(&self, url: &str, key: &str) -> Result<Answer, String> {
        let req = Request::builder()
            .method("POST")
            .uri(url)
            .header("x-api-key", key)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let resp = self.inner.request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `POST url` with `x-api-key: key`.
    pub async fn post(&self, url: &str, key: &str) -> Answer {
        self.send("POST", url, &[("x-api-key", key)], "{}").await
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.send("GET", url, &[], Bytes::new()).await
    }
}

/// The value of one sample in Prometheus text, e.g.
/// `floodgate_would_limit_total{class="gen",tier="basic",type="minute"}`; 0 when absent (an
/// unlabelled series or a label set never touched).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Reads `/metrics` from an admin address.
pub async fn metrics(admin_url: &str) -> String {
    let a = TestClient::new().get(admin_url).await;
    assert_eq!(a.status, 200);
    String::from_utf8_lossy(&a.body).into_owned()
}

/// Polls `check` every 20 ms until it holds or `limit` passes; true when it held.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
