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
pub mod framing;
mod parse_errors;
mod read_tap;
mod tunnel;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use atomic_waker::AtomicWaker;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::access_log;
use crate::proxy::request_checks::AmbiguousFraming;
use crate::proxy::Tunnel;
use crate::proxy::{Peer, Proxy};
use conn::{Activity, ActivityIo, Expiry, HeadWatch, Timeouts, Tracked, Verdict};
use parse_errors::JsonRefusals;
use read_tap::ReadTap;

/// hyper's parser keeps this many header slots on the stack; more costs a heap table per request.
const PARSER_HEADER_SLOTS: usize = 100;
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
pub type ListenerTls = Option<Arc<ArcSwap<rustls::ServerConfig>>>;

/// Serves `listener` until `shutdown` flips, then drains open connections. `slots` bounds the
/// connections of every worker together.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
    (settings, tls): (Settings, ListenerTls),
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

    fn signal(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        self.waker.wake();
    }

    fn expiry(state: u8) -> Expiry {
        if state == Self::HEADER_TIMEOUT {
            Expiry::Header
        } else {
            Expiry::Idle
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
    loop {
        tokio::select! {
            _ = shutdown.changed(), if !draining => {
                draining = true;
                stop.signal(Stop::DRAIN);
            }
            _ = tokio::time::sleep_until(activity.instant_at(check_at)) => {
                match activity.verdict(timeouts) {
                    Verdict::CheckAt(at) => check_at = at,
                    Verdict::Close(why) => {
                        stop.signal(match why {
                            Expiry::Header => Stop::HEADER_TIMEOUT,
                            Expiry::Idle => Stop::IDLE_TIMEOUT,
                        });
                        return;
                    }
                }
            }
        }
    }
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

/// One accepted client connection.
struct Connection {
    proxy: Arc<Proxy>,
    peer: Peer,
    settings: Settings,
    hold: Hold,
}

impl Connection {
    /// Completes the TLS handshake within the header timeout, then serves the connection.
    async fn handshake(
        self,
        stream: TcpStream,
        tls: Arc<rustls::ServerConfig>,
        builder: http1::Builder,
        shutdown: watch::Receiver<bool>,
    ) {
        let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
        match tokio::time::timeout(self.settings.timeouts.header, accept).await {
            Ok(Ok(stream)) => self.run(stream, builder, shutdown).await,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer.addr, error = %e, "TLS handshake failed");
                self.proxy.metrics().tls_handshake_failed("error");
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer.addr, "TLS handshake timed out");
                self.proxy.metrics().tls_handshake_failed("timeout");
            }
        }
    }

    async fn run<S>(self, stream: S, builder: http1::Builder, shutdown: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = self.proxy.metrics();
        metrics.client_connections.inc();
        let activity = Activity::new();
        let (proxy, peer) = (self.proxy.clone(), self.peer.clone());
        let tracker = activity.clone();
        let hold = self.hold.clone();
        let idle = self.settings.timeouts.idle;
        let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let guard = tracker.request_started();
            if tracker.take_ambiguous() {
                req.extensions_mut().insert(AmbiguousFraming);
            }
            // hyper marks a request that asks to switch protocols; only such a request can
            // turn its connection into a tunnel, so only it takes a share of the hold.
            let tunnel_hold = req.extensions().get::<OnUpgrade>().map(|_| hold.clone());
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
                        let open = proxy.metrics().tunnels_open.clone();
                        tokio::spawn(tunnel::run(halves, idle, open, hold));
                    }
                }
                let logged = match proxy.logs_access() {
                    true => resp.extensions_mut().remove::<access_log::Pending>(),
                    false => None,
                };
                Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, guard, logged)))
            }
        });
        let stream = JsonRefusals::new(stream, activity.clone(), self.proxy.clone());
        let io: ActivityIo<_> = ReadTap::new(stream, HeadWatch::new(activity.clone()));
        let io = TokioIo::new(io);
        let conn = builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(conn);
        // The clocks and the shutdown signal live in a task of their own, so the connection's
        // own polls (several per request) only read a flag.
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
                        conn.as_mut().graceful_shutdown();
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
            Ok(Err(panic)) => {
                metrics.panics.inc();
                tracing::error!(panic = %panic, "a client connection panicked; it was closed");
            }
            Err(closed) => {
                let why = Stop::expiry(closed);
                tracing::debug!(
                    peer = %self.peer.addr, reason = why.name(), "client connection timed out"
                );
                metrics.client_timeout(why.name());
                // dropping the connection closes the socket
            }
        }
        metrics.client_connections.dec();
    }
}
