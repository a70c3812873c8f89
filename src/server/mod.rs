//! The proxy listener: accepts connections and serves HTTP/1.1 on them until shutdown, in clear
//! text or, with `[server.tls]`, over TLS (the handshake is the connection task's first step,
//! bounded by the header timeout, so a slow handshake never holds up the accept loop).
//!
//! What a client can hold is bounded: connections by a semaphore shared by every worker (past
//! it, each worker holds one accepted connection and the rest wait in the kernel's backlog), a request head by `max_header_bytes` and
//! the header timeout, an idle keep-alive connection by the idle timeout ([`conn`]). On shutdown
//! the listener closes, idle connections close, and connections with a request in flight get
//! until the drain deadline to finish it (mini-redis's pattern: each connection task holds a
//! sender; the channel closes when the last one ends).

pub mod conn;
pub mod contain;
pub mod discard;
mod fast;
pub mod framing;
mod parse_errors;
mod read_tap;
pub mod send;
mod tunnel;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use atomic_waker::AtomicWaker;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::access_log;
use crate::proxy::plain::HeadLimits;
use crate::proxy::request_checks::AmbiguousFraming;
use crate::proxy::Tunnel;
use crate::proxy::{ClientBody, Peer, Proxy, Unread};
use conn::{Activity, ActivityIo, ClockVerdict, Expiry, HeadWatch, Timeouts, Tracked};
use discard::{Discard, DiscardLimits};
use fast::{FastPath, Replay};
use parse_errors::JsonRefusals;
use read_tap::ReadTap;
use send::{Stall, StreamExecutor};

/// hyper's parser keeps this many header slots on the stack; more costs a heap table per request.
const PARSER_HEADER_SLOTS: usize = 100;
/// Streams one HTTP/2 connection may have open at once (nginx's `http2_max_concurrent_streams`).
const H2_MAX_STREAMS: u32 = 128;
/// The read buffer never shrinks below this, so request bodies still stream in large reads.
const MIN_READ_BUFFER: usize = 64 * 1024;

/// Listener settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub timeouts: Timeouts,
    /// How long open connections may keep going after shutdown starts.
    pub drain_deadline: Duration,
    /// Largest request head; larger is answered 431 by the parser.
    pub max_header_bytes: usize,
    /// Header fields the proxy accepts (it answers 431 JSON past this); the parser's table is
    /// at least this big.
    pub max_header_count: usize,
    /// Clear-text connections that open with the HTTP/2 preface are served HTTP/2.
    pub h2c: bool,
    /// How much of an HTTP/2 request's unread body is read after floodgate answered it.
    pub discard: DiscardLimits,
}

impl Settings {
    fn builder(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(None) // floodgate's own clocks: see conn.rs
            .keep_alive(true)
            // One flat write buffer: a response head and a small body go out in one `write`
            // without the vectored queue's bookkeeping (fewer instructions per request; large
            // bodies pay one copy into the buffer).
            .writev(false)
            .max_buf_size(self.max_header_bytes.max(MIN_READ_BUFFER))
            .max_header_size(self.max_header_bytes);
        if self.max_header_count > PARSER_HEADER_SLOTS {
            builder.max_headers(self.max_header_count);
        }
        builder
    }
}

/// The listener's TLS settings, swapped on reload; `None`: clear text.
pub type LiveTls = Option<Arc<ArcSwap<rustls::ServerConfig>>>;

/// Serves `listener` until `shutdown` flips, then drains open connections. `slots` bounds the
/// connections of every worker together.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
    (settings, tls): (Settings, LiveTls),
    slots: Arc<Semaphore>,
) {
    let builder = settings.builder();
    let (drain, mut drained) = mpsc::channel::<()>(1);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Accept first, then wait for a slot: a slot taken before accepting would sit idle in
        // a worker whose socket has no connection while another worker's backlog waits. While
        // this worker waits, further connections queue in the kernel's backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // closed: only at the end of the process
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            proxy: proxy.clone(),
            peer: Peer::new(peer, tls.is_some()),
            settings,
            hold: Hold {
                _slot: Arc::new(slot),
                _drain: drain.clone(),
            },
        };
        let (builder, shutdown) = (builder.clone(), shutdown.clone());
        match &tls {
            None if settings.h2c => tokio::spawn(conn.sniff(stream, builder, shutdown)),
            None => tokio::spawn(conn.run(stream, builder, shutdown)),
            Some(tls) => tokio::spawn(conn.handshake(stream, tls.load_full(), builder, shutdown)),
        };
    }
    drop(listener);
    drop(drain);
    if tokio::time::timeout(settings.drain_deadline, drained.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            deadline = ?settings.drain_deadline,
            "drain deadline passed with requests still in flight; closing them"
        );
    }
}

/// Whether the client's first bytes are the HTTP/2 connection preface; false as soon as they
/// differ from it, or the client closes.
async fn opens_with_h2_preface(stream: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut first = [0u8; PREFACE.len()];
    loop {
        let n = match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if first[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // Part of the preface so far (rare: it is one small write): wait for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What a connection's watcher tells it: keep going, drain (finish the request in flight, then
/// close), or close now because a clock ran out.
#[derive(Debug, Default)]
struct Stop {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl Stop {
    const RUN: u8 = 0;
    const DRAIN: u8 = 1;
    const HEADER_TIMEOUT: u8 = 2;
    const IDLE_TIMEOUT: u8 = 3;
    const SEND_TIMEOUT: u8 = 4;

    fn signal(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        self.waker.wake();
    }

    fn expiry(state: u8) -> Expiry {
        match state {
            Self::HEADER_TIMEOUT => Expiry::Header,
            Self::SEND_TIMEOUT => Expiry::Send,
            _ => Expiry::Idle,
        }
    }
}

/// Watches one connection's clocks and the shutdown signal, and tells the connection when to
/// drain or close.
async fn watch(
    activity: Arc<Activity>,
    timeouts: Timeouts,
    stop: Arc<Stop>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut draining = *shutdown.borrow();
    if draining {
        stop.signal(Stop::DRAIN);
    }
    let mut check_at = activity.now_ms();
    let mut stall = Stall::default();
    loop {
        tokio::select! {
            _ = shutdown.changed(), if !draining => {
                draining = true;
                stop.signal(Stop::DRAIN);
            }
            _ = tokio::time::sleep_until(activity.instant_at(check_at)) => {
                let verdict = match (
                    activity.verdict(timeouts),
                    send_verdict(&activity, &mut stall, timeouts.send),
                ) {
                    (_, Some(close @ ClockVerdict::Close(_))) => close,
                    (ClockVerdict::CheckAt(a), Some(ClockVerdict::CheckAt(b))) => ClockVerdict::CheckAt(a.min(b)),
                    (verdict, _) => verdict,
                };
                match verdict {
                    ClockVerdict::CheckAt(at) => check_at = at,
                    ClockVerdict::Close(why) => {
                        stop.signal(match why {
                            Expiry::Header => Stop::HEADER_TIMEOUT,
                            Expiry::Idle => Stop::IDLE_TIMEOUT,
                            Expiry::Send => Stop::SEND_TIMEOUT,
                        });
                        return;
                    }
                }
            }
        }
    }
}

/// The send timeout of an HTTP/1.1 connection (see [`send`]): `None` while no response waits on
/// the client; else when to look again, or a close once it has waited `send`.
fn send_verdict(activity: &Activity, stall: &mut Stall, send: Duration) -> Option<ClockVerdict> {
    let busy = activity.phase() == conn::Phase::Busy;
    let waiting = activity.send.waiting().filter(|_| busy);
    let waited = stall.observe(waiting, tokio::time::Instant::now())?;
    Some(match send.checked_sub(waited) {
        Some(left) if !left.is_zero() => {
            ClockVerdict::CheckAt(activity.now_ms() + left.as_millis() as u64 + 1)
        }
        _ => ClockVerdict::Close(Expiry::Send),
    })
}

/// Counts and logs a panic that ended a client connection.
fn connection_panicked(metrics: &crate::metrics::Metrics, panic: &str) {
    metrics.listener.panics.inc();
    tracing::error!(panic = %panic, "a client connection panicked; it was closed");
}

/// Why a connection served by the fast path and then hyper ended with an error.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Hyper(#[from] hyper::Error),
}

/// What a client connection holds until it ends — and a tunnel it turns into, after it
/// ([`tunnel`]).
#[derive(Clone)]
struct Hold {
    /// Its place under `max_connections`.
    _slot: Arc<OwnedSemaphorePermit>,
    /// Keeps the drain channel open while the connection (or its tunnel) lives.
    _drain: mpsc::Sender<()>,
}

/// The request handler of one connection: the proxy's answer, panics contained, the request
/// counted busy until its response body ends, a switch to a tunnel joined. A macro rather than
/// a function: written out where the connection is built, the handler's future is constructed
/// in place in hyper's slot for it; returned from a function, it was built aside and copied in
/// (two copies of several kilobytes per request, measured with callgrind).
macro_rules! request_handler {
    ($conn:expr, $activity:expr, h2: $h2:literal) => {{
        let this: &Connection = $conn;
        let activity: &Arc<Activity> = $activity;
        let (proxy, peer) = (this.proxy.clone(), this.peer.clone());
        let tracker = activity.clone();
        let hold = this.hold.clone();
        let idle = this.settings.timeouts.idle;
        let discard = this.settings.discard;
        service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let guard = tracker.request_started();
            if tracker.take_ambiguous() {
                req.extensions_mut().insert(AmbiguousFraming);
            }
            // hyper marks a request that asks to switch protocols; only such a request can
            // turn its connection into a tunnel, so only it takes a share of the hold.
            let tunnel_hold = req.extensions().get::<OnUpgrade>().map(|_| hold.clone());
            // HTTP/2: a body dropped unread is left here, to be read before the stream ends.
            let unread = match $h2 && !expects_continue(&req) {
                true => Some(Unread::new()),
                false => None,
            };
            let req = req.map(|body| match &unread {
                Some(unread) => ClientBody::kept(body, unread.clone()),
                None => ClientBody::plain(body),
            });
            let (proxy, peer) = (proxy.clone(), peer.clone());
            async move {
                let mut resp = match contain::contained(proxy.handle(req, &peer)).await {
                    Ok(resp) => resp,
                    Err(panic) => proxy.panicked(&panic),
                };
                if let Some(hold) = tunnel_hold {
                    if let Some(halves) = resp.extensions_mut().remove::<Tunnel>() {
                        // From the 101 on, the socket carries the tunnel's bytes.
                        guard.switching_protocols();
                        let open = proxy.metrics().listener.tunnels_open.clone();
                        tokio::spawn(tunnel::run(halves, idle, open, hold));
                    }
                }
                let logged = match proxy.logs_access() {
                    true => resp.extensions_mut().remove::<access_log::Pending>(),
                    false => None,
                };
                Ok::<_, Infallible>(resp.map(|body| {
                    let tracked = Tracked::new(body, guard, logged);
                    match $h2 {
                        false => tracked,
                        true => {
                            let rest = unread.and_then(|u| u.take());
                            let discard = rest.and_then(|rest| Discard::new(rest, discard));
                            tracked.on_stream(send::stream_clock(), discard)
                        }
                    }
                }))
            }
        })
    }};
}

/// Whether an HTTP/2 request waits for a `100 Continue` before sending its body: a client that
/// was answered instead sends none, so there is nothing to read before the stream ends.
fn expects_continue<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// One accepted client connection.
struct Connection {
    proxy: Arc<Proxy>,
    peer: Peer,
    settings: Settings,
    hold: Hold,
}

impl Connection {
    /// On a clear-text listener with `h2c`: HTTP/2 when the client opens with the HTTP/2
    /// preface (prior knowledge, RFC 9113 §3.3), else HTTP/1.1. The bytes are peeked, not read,
    /// so either protocol's parser sees them all.
    async fn sniff(
        self,
        stream: TcpStream,
        builder: http1::Builder,
        shutdown: watch::Receiver<bool>,
    ) {
        let within = self.settings.timeouts.header;
        match tokio::time::timeout(within, opens_with_h2_preface(&stream)).await {
            Ok(true) => self.run_h2(stream, shutdown).await,
            // HTTP/1.1 (or nothing yet: its own header clock takes over)
            Ok(false) | Err(_) => self.run(stream, builder, shutdown).await,
        }
    }

    /// Completes the TLS handshake within the header timeout, then serves the connection
    /// (HTTP/2 when ALPN settled on `h2`).
    async fn handshake(
        self,
        stream: TcpStream,
        tls: Arc<rustls::ServerConfig>,
        builder: http1::Builder,
        shutdown: watch::Receiver<bool>,
    ) {
        let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
        match tokio::time::timeout(self.settings.timeouts.header, accept).await {
            Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                self.run_h2(stream, shutdown).await
            }
            Ok(Ok(stream)) => self.run(stream, builder, shutdown).await,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer.addr, error = %e, "TLS handshake failed");
                self.proxy.metrics().listener.tls_handshake_failed("error");
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer.addr, "TLS handshake timed out");
                self.proxy
                    .metrics()
                    .listener
                    .tls_handshake_failed("timeout");
            }
        }
    }

    /// Serves HTTP/1.1, in clear text or over TLS: plain requests on the fast path ([`fast`]),
    /// and from the first request it does not serve on, hyper.
    async fn run<S>(self, stream: S, builder: http1::Builder, shutdown: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let service = request_handler!(&self, &activity, h2: false);
        let stream = JsonRefusals::new(stream, activity.clone(), self.proxy.clone());
        let watch = HeadWatch::new(activity.clone()).on_fast_path();
        let mut io: ActivityIo<_> = ReadTap::new(stream, watch);
        let draining = Arc::new(AtomicBool::new(false));
        let limits = HeadLimits {
            max_bytes: self.settings.max_header_bytes,
            max_fields: self.settings.max_header_count,
        };
        let (proxy, peer, fast_activity) =
            (self.proxy.clone(), self.peer.clone(), activity.clone());
        let drain_flag = draining.clone();
        // Each half's panics are caught inside this future, so that its socket is still open
        // when the panic is counted (a panic unwinding out of an `async` block drops what the
        // block holds, the socket with it).
        let conn = async move {
            let mut fast = FastPath::new(&proxy, &peer, &fast_activity, &drain_flag, limits);
            match contain::contained(fast.serve(&mut io)).await {
                Ok(Ok(fast::Ended::Closed)) => return Ok(()),
                Ok(Ok(fast::Ended::Hyper)) => {}
                Ok(Err(e)) => return Err(ConnError::Io(e)),
                Err(panic) => {
                    connection_panicked(proxy.metrics(), &panic);
                    return Ok(());
                }
            }
            io.observer_mut().hand_to_hyper(&fast.read);
            let replay = Replay::new(std::mem::take(&mut fast.read), io);
            let conn = builder
                .serve_connection(TokioIo::new(replay), service)
                .with_upgrades();
            tokio::pin!(conn);
            let mut asked = false;
            let served = contain::contained(std::future::poll_fn(|cx| {
                if !asked && drain_flag.load(Ordering::Acquire) {
                    asked = true;
                    conn.as_mut().graceful_shutdown();
                }
                conn.as_mut().poll(cx)
            }));
            match served.await {
                Ok(ended) => ended.map_err(ConnError::Hyper),
                Err(panic) => {
                    connection_panicked(proxy.metrics(), &panic);
                    Ok(())
                }
            }
        };
        let graceful = move |_: Pin<&mut _>| draining.store(true, Ordering::Release);
        self.drive(conn, graceful, activity, shutdown).await;
    }

    /// Serves HTTP/2 on the connection: each stream is a request of its own, decided one by
    /// one as on HTTP/1.1. The clocks: a new connection must start a request within the header
    /// timeout, and one with no stream open closes after the idle timeout.
    async fn run_h2<S>(self, stream: S, shutdown: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let service = request_handler!(&self, &activity, h2: true);
        let mut builder = http2::Builder::new(StreamExecutor {
            send_timeout: self.settings.timeouts.send,
            proxy: self.proxy.clone(),
        });
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(self.settings.max_header_bytes as u32);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let graceful = |c: Pin<&mut _>| http2::Connection::graceful_shutdown(c);
        self.drive(conn, graceful, activity, shutdown).await;
    }

    /// Runs a served connection to its end: its clocks and the shutdown signal watched by a
    /// task of their own (so the connection's own polls only read a flag), a drain asked of it
    /// with `graceful`, panics contained, and how it ended counted.
    async fn drive<C, E>(
        self,
        conn: C,
        graceful: impl Fn(Pin<&mut C>),
        activity: Arc<Activity>,
        shutdown: watch::Receiver<bool>,
    ) where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let metrics = self.proxy.metrics();
        metrics.listener.client_connections.inc();
        tokio::pin!(conn);
        let stop = Arc::new(Stop::default());
        if *shutdown.borrow() {
            stop.signal(Stop::DRAIN);
        }
        let watcher = tokio::spawn(watch(
            activity,
            self.settings.timeouts,
            stop.clone(),
            shutdown,
        ));
        let mut draining = false;
        let ended = std::future::poll_fn(|cx| {
            stop.waker.register(cx.waker());
            match stop.state.load(Ordering::Acquire) {
                Stop::RUN => {}
                Stop::DRAIN => {
                    if !draining {
                        draining = true;
                        graceful(conn.as_mut());
                    }
                }
                closed => return Poll::Ready(Err(closed)),
            }
            contain::poll_contained(conn.as_mut(), cx).map(Ok)
        })
        .await;
        watcher.abort();
        match ended {
            Ok(Ok(Err(e))) => tracing::debug!(error = %e, "client connection ended with an error"),
            Ok(Ok(Ok(()))) => {}
            Ok(Err(panic)) => connection_panicked(metrics, &panic),
            Err(closed) => {
                let why = Stop::expiry(closed);
                tracing::debug!(
                    peer = %self.peer.addr, reason = why.name(), "client connection timed out"
                );
                metrics.listener.client_timeout(why.name());
                // dropping the connection closes the socket
            }
        }
        metrics.listener.client_connections.dec();
    }
}
