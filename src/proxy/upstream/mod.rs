//! The upstream client: pooled HTTP/1.1 keep-alive connections, one pool per worker.
//!
//! Each exchange runs on the requesting connection's own task (`conn`, with the wire format in
//! `codec`): no task per upstream connection and no channels between them. A worker-local
//! stack of idle connections is cheaper than a generic pool. A connection goes back to the
//! pool only once its response body has ended cleanly; an idle one the upstream closed is
//! noticed when taken (its socket shows readable), and a request without a body that meets a
//! connection closed under it is sent once more on a fresh one.
//!
//! An `https://` origin gets TLS (rustls, with the bundled Mozilla roots plus any
//! `upstream_ca_file`), set up inside the connect timeout; its connections are pooled the same way.
//! Protocol upgrades (WebSocket) go through hyper's client on a connection of their own, since
//! the tunnel joins hyper's two upgraded halves.

pub mod codec;
mod conn;
mod io;
mod pipeline;
mod wait;
mod wire_body;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::request_body::RequestBody;
use super::upload::{UploadBody, UploadError};
use crate::config::{ServerConfig, UpstreamTarget};
pub use crate::metrics::CutCounters;
use crate::proxy::error::ProxyError;
use codec::RelayHead;
use conn::Conn;
use io::UpstreamIo;
pub use wait::ExchangeError;
use wait::Wait;
use wire_body::WireBody;

/// What goes upstream: the request body (streamed, or with an inspected prefix put back), counted
/// against the class's upload limit.
pub type ForwardBody = UploadBody<RequestBody>;

/// hyper's sending half, for protocol upgrades.
type Sender = SendRequest<ForwardBody>;
/// hyper's driving half of an upgrade's connection.
type Connection = http1::Connection<TokioIo<UpstreamIo>, ForwardBody>;

/// One worker's upstream pools: the upstream's, and one per upstream-account base URL.
#[derive(Debug)]
pub struct Upstreams {
    pub default: Arc<UpstreamClient>,
    /// Pools for upstream accounts that have their own base URL, by origin.
    pub by_origin: HashMap<String, Arc<UpstreamClient>>,
}

thread_local! {
    /// The pools of the worker running on this thread. A connection's task runs on the worker
    /// that opened it, so work started here must use this worker's pools.
    static CURRENT: RefCell<Option<Arc<Upstreams>>> = const { RefCell::new(None) };
}

impl Upstreams {
    /// The pool for an origin (`None`: the upstream's own).
    pub fn client(&self, origin: Option<&str>) -> &Arc<UpstreamClient> {
        origin
            .and_then(|o| self.by_origin.get(o))
            .unwrap_or(&self.default)
    }

    /// Makes these the pools of the worker on this thread.
    pub fn enter(self: &Arc<Self>) {
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
    }

    /// The pools of the worker on this thread, if this thread is a worker.
    pub fn current() -> Option<Arc<Self>> {
        CURRENT.with(|c| c.borrow().clone())
    }
}

/// The TLS client settings every `https://` origin shares: the bundled Mozilla roots plus
/// `extra_roots`, TLS 1.2 and 1.3, and ALPN `http/1.1` (floodgate speaks HTTP/1.1 upstream).
pub fn tls_client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How to open TLS to one origin: the shared settings and the name its certificate must carry.
#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

/// The clocks of an exchange (`[server]`), fixed at start. Each but `head` bounds a pause, not
/// a whole phase, so a large upload or download that keeps moving is never cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeTimeouts {
    /// Opening a connection, TLS included (`upstream_connect_timeout`).
    pub connect: Duration,
    /// A pause in the upstream taking the request (`upstream_send_timeout`).
    pub send: Duration,
    /// From the end of the request to the response head (`upstream_timeout`).
    pub head: Duration,
    /// A pause in the upstream's response body (`upstream_body_timeout`).
    pub body: Duration,
    /// A pause in the client's request body (`client_body_timeout`).
    pub client_body: Duration,
}

impl ExchangeTimeouts {
    pub fn new(server: &ServerConfig) -> Self {
        Self {
            connect: server.upstream_connect_timeout,
            send: server.upstream_send_timeout,
            head: server.upstream_timeout,
            body: server.upstream_body_timeout,
            client_body: server.client_body_timeout,
        }
    }
}

/// Connections to one upstream origin.
#[derive(Debug)]
pub struct UpstreamClient {
    /// `host:port`, as connected to.
    authority: String,
    /// The `Host` of requests floodgate addresses to this origin itself.
    host_header: String,
    tls: Option<Tls>,
    timeouts: ExchangeTimeouts,
    cuts: CutCounters,
    max_idle: usize,
    /// Boxed: a connection moves into each exchange and its response body by pointer.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Conn>>>,
    /// Pipelined requests for the worker's shared connection ([`pipeline`]).
    lane: Mutex<pipeline::Lane>,
}

impl UpstreamClient {
    /// A pool for `target`; an `https://` target needs `tls` (see [`tls_client_config`]).
    pub fn new(
        target: &UpstreamTarget,
        tls: Option<&Arc<ClientConfig>>,
        timeouts: ExchangeTimeouts,
        cuts: CutCounters,
        max_idle: usize,
    ) -> Result<Self, String> {
        let tls = match (target.tls, tls) {
            (false, _) => None,
            (true, None) => return Err(format!("{}: no TLS settings", target.origin)),
            (true, Some(config)) => Some(Tls {
                connector: TlsConnector::from(config.clone()),
                name: ServerName::try_from(target.host.clone())
                    .map_err(|e| format!("{}: not a TLS server name: {e}", target.origin))?,
            }),
        };
        Ok(Self {
            authority: target.authority.clone(),
            host_header: target.host_header.clone(),
            tls,
            timeouts,
            cuts,
            max_idle,
            idle: Mutex::new(Vec::new()),
            lane: Mutex::default(),
        })
    }

    /// The `Host` for requests floodgate addresses to this origin.
    pub fn host_header(&self) -> &str {
        &self.host_header
    }

    /// The clocks of this origin's exchanges.
    pub fn timeouts(&self) -> &ExchangeTimeouts {
        &self.timeouts
    }

    /// Counts and logs a response cut mid-body because the clock of `wait` ran out.
    fn cut(&self, wait: Wait) {
        if wait == Wait::ClientBody {
            self.cuts.client_body.inc();
            tracing::debug!(
                upstream = %self.authority, timeout = ?self.timeouts.client_body,
                "request body stalled after the upstream answered; connections closed"
            );
        } else {
            self.cuts.upstream_body.inc();
            tracing::warn!(
                upstream = %self.authority, timeout = ?self.timeouts.body,
                "upstream response body stalled; response cut and connections closed"
            );
        }
    }

    /// Sends `req` and returns the response head; the body streams afterwards.
    /// `forwarded_for`: the client address to append to `X-Forwarded-For` (with
    /// `X-Forwarded-Proto: http`), for a request forwarded on a client's behalf.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<ForwardBody>,
        forwarded_for: Option<&crate::proxy::header_rewrite::Forwarded>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let (parts, body) = req.into_parts();
        let ended = body.is_end_stream();
        let (framing, extra) =
            codec::request_framing(&parts.method, &parts.headers, ended, &body.size_hint())
                .map_err(|e| ProxyError::UpstreamProtocol(e.to_string()))?;
        let body = (!ended).then_some(body);
        let replayable = body.is_none();
        let (mut conn, reused) = self.connection().await?;
        conn.start(&parts, body, framing, extra.as_ref(), forwarded_for);
        // The head is in the connection's buffer now (a replay resends it from there): the
        // request's field map goes back for the answer's fields, and the rest of the request
        // (bytes it shares with the client connection's read buffer) is let go before the
        // exchange waits.
        let http::request::Parts {
            method,
            uri,
            headers,
            extensions,
            ..
        } = parts;
        conn.recycle_fields(headers);
        drop((uri, extensions));
        self.exchange(conn, reused, replayable, &method, None).await
    }

    /// Sends a request written whole into the connection's buffer by `encode` (the fast
    /// path's head and body) and returns the response head; the body streams afterwards.
    /// `bodiless`: the request has no body, so it may go again on a fresh connection.
    /// `fields`: an empty map for floodgate's own fields of the answer (the caller's last
    /// answer's, so no answer allocates one); the upstream's fields are listed in `relay`.
    pub async fn send_whole(
        self: &Arc<Self>,
        method: &Method,
        bodiless: bool,
        fields: HeaderMap,
        relay: &mut RelayHead,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let (mut conn, reused) = self.connection().await?;
        conn.start_whole(encode);
        if fields.capacity() > 0 {
            conn.recycle_fields(fields);
        }
        self.exchange(conn, reused, bodiless, method, Some(relay))
            .await
    }

    /// Waits for the answer to the request `conn` is sending; a reused connection found closed
    /// before it answered is replaced and the request sent again when it can be (`replayable`:
    /// the whole request is in the connection's buffer).
    async fn exchange(
        self: &Arc<Self>,
        mut conn: Box<Conn>,
        mut reused: bool,
        replayable: bool,
        method: &Method,
        mut relay: Option<&mut RelayHead>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        loop {
            let head = poll_fn(|cx| {
                conn.poll_head_in_time(cx, method, &self.timeouts, relay.as_deref_mut())
            });
            match head.await {
                Ok(head) => {
                    let body = WireBody::new(head.framing, conn, self.clone());
                    let mut resp = Response::new(UpstreamBody::Wire(body));
                    *resp.status_mut() = head.status;
                    *resp.headers_mut() = head.headers;
                    return Ok(resp);
                }
                Err(e) if reused && replayable && e.is_stale_connection() => {
                    let (mut fresh, fresh_reused) = self.connection().await?;
                    fresh.replay(&mut conn);
                    (conn, reused) = (fresh, fresh_reused);
                }
                Err(e) => return Err(exchange_error(e)),
            }
        }
    }

    /// An idle connection (`true`) or, when none is left, a new one.
    async fn connection(&self) -> Result<(Box<Conn>, bool), ProxyError> {
        Ok(match self.checkout() {
            Some(conn) => (conn, true),
            // boxed: a new connection's state stays out of every request's future
            None => (Box::pin(self.connect()).await?, false),
        })
    }

    /// An idle connection that is still open and quiet, if any.
    fn checkout(&self) -> Option<Box<Conn>> {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let mut conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if conn.is_idle_usable(&mut cx) {
                return Some(conn);
            }
        }
    }

    /// Takes back a connection whose exchange ended cleanly.
    fn checkin(&self, conn: Box<Conn>) {
        // A lock poisoned by a panic elsewhere still guards a valid list of idle connections.
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// A new connection, open within the connect timeout.
    async fn connect(&self) -> Result<Box<Conn>, ProxyError> {
        Ok(Conn::new(self.open_in_time().await?))
    }

    /// A socket to the origin (TLS set up for `https://`) within the connect timeout.
    async fn open_in_time(&self) -> Result<UpstreamIo, ProxyError> {
        match timeout(self.timeouts.connect, self.open()).await {
            Err(_) => Err(ProxyError::UpstreamConnectTimeout),
            Ok(opened) => opened,
        }
    }

    /// A new connection for hyper's client (an upgrade's), open within the connect timeout;
    /// the caller drives it.
    async fn handshake(&self) -> Result<(Sender, Connection), ProxyError> {
        let io = self.open_in_time().await?;
        http1::Builder::new()
            .writev(false) // as on the listener: one flat buffer per write
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::UpstreamUnreachable(e.to_string()))
    }

    /// A TCP connection to the origin, with TLS set up over it for `https://`.
    async fn open(&self) -> Result<UpstreamIo, ProxyError> {
        let unreachable = |what: String| ProxyError::UpstreamUnreachable(what);
        let tcp = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| unreachable(format!("{}: {e}", self.authority)))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(UpstreamIo::Plain(tcp));
        };
        let stream = tls
            .connector
            .connect(tls.name.clone(), tcp)
            .await
            .map_err(|e| unreachable(format!("{}: TLS handshake failed: {e}", self.authority)))?;
        Ok(UpstreamIo::Tls(Box::new(stream)))
    }
}

impl UpstreamClient {
    /// Sends a protocol-upgrade request (WebSocket and the like) on a fresh connection of its
    /// own: an upgraded connection belongs to its tunnel and never returns to the pool. The
    /// caller takes a `101` answer's upgrade with `hyper::upgrade::on`.
    pub async fn send_upgrade(
        &self,
        req: Request<ForwardBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let (mut sender, conn) = self.handshake().await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection closed");
            }
        });
        let resp = match timeout(self.timeouts.head, sender.send_request(req)).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(e)) => return Err(exchange_error(e.into())),
            Ok(Ok(resp)) => resp,
        };
        Ok(resp.map(UpstreamBody::Switched))
    }
}

/// What a failed exchange tells the client. A request body cut off at its class's limit (413)
/// or broken on the client's side (400) is the client's doing, not the upstream's.
fn exchange_error(err: ExchangeError) -> ProxyError {
    let upload = match &err {
        ExchangeError::RequestBody(u) => Some(u),
        ExchangeError::Hyper(e) => {
            std::error::Error::source(e).and_then(|s| s.downcast_ref::<UploadError>())
        }
        _ => None,
    };
    match upload {
        Some(UploadError::TooLarge(t)) => ProxyError::BodyTooLarge(*t),
        // The client's side of the body failed (bad chunk encoding, a body cut short): the
        // request's fault, not the upstream's.
        Some(UploadError::Client(e)) => ProxyError::ClientBody(e.to_string()),
        None => match err {
            ExchangeError::TimedOut => ProxyError::UpstreamTimeout,
            ExchangeError::SendTimedOut => ProxyError::UpstreamSendTimeout,
            ExchangeError::ClientBodyTimedOut => ProxyError::ClientBodyTimeout,
            _ => ProxyError::UpstreamProtocol(err.to_string()),
        },
    }
}

/// An upstream response body: read off the wire by the requesting task, or (for an upgrade
/// request the upstream did not switch) hyper's.
#[derive(Debug)]
pub enum UpstreamBody {
    Wire(WireBody),
    Switched(Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        match self.get_mut() {
            UpstreamBody::Wire(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Switched(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(ExchangeError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Wire(b) => b.is_end_stream(),
            UpstreamBody::Switched(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Wire(b) => b.size_hint(),
            UpstreamBody::Switched(b) => b.size_hint(),
        }
    }
}
