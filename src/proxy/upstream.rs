//! The upstream client: pooled HTTP/1.1 keep-alive connections, one pool per worker.
//!
//! Built on `hyper::client::conn::http1` rather than hyper-util's pooled `Client`: a worker-local
//! stack of idle connections is cheaper than the generic pool and measured faster here. A
//! connection goes back to the pool only once its response body has ended; a request that fails
//! on a reused connection before being sent (the upstream closed an idle keep-alive) is retried
//! once on a fresh connection.
//!
//! An `https://` origin gets TLS (rustls, with the bundled Mozilla roots plus any
//! `upstream_ca_file`), set up inside the connect timeout; its connections are pooled the same way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::body::RequestBody;
use super::upload::{UploadBody, UploadError};
use crate::config::UpstreamTarget;
use crate::error::ProxyError;

/// What goes upstream: the request body (streamed, or with an inspected prefix put back), counted
/// against the class's upload limit.
pub type ForwardBody = UploadBody<RequestBody>;

type Sender = SendRequest<ForwardBody>;
/// An upstream connection's driving half.
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

/// Connections to one upstream origin.
#[derive(Debug)]
pub struct UpstreamClient {
    /// `host:port`, as connected to.
    authority: String,
    /// The `Host` of requests floodgate addresses to this origin itself.
    host_header: String,
    tls: Option<Tls>,
    connect_timeout: Duration,
    response_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Sender>>,
}

impl UpstreamClient {
    /// A pool for `target`; an `https://` target needs `tls` (see [`tls_client_config`]).
    pub fn new(
        target: &UpstreamTarget,
        tls: Option<&Arc<ClientConfig>>,
        connect_timeout: Duration,
        response_timeout: Duration,
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
            connect_timeout,
            response_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The `Host` for requests floodgate addresses to this origin.
    pub fn host_header(&self) -> &str {
        &self.host_header
    }

    /// Sends `req` and returns the response head; the body streams afterwards.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ForwardBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let deadline = Instant::now() + self.response_timeout;
        loop {
            let (mut sender, reused) = match self.checkout().await {
                Some(s) => (s, true),
                // boxed: a new connection's state stays out of every request's future
                None => (Box::pin(self.connect()).await?, false),
            };
            match timeout_at(deadline, sender.try_send_request(req)).await {
                Err(_) => return Err(ProxyError::UpstreamTimeout),
                Ok(Ok(resp)) => {
                    return Ok(resp.map(|body| UpstreamBody::new(body, sender, self.clone())))
                }
                Ok(Err(mut err)) => match err.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(send_error(err.into_error())),
                },
            }
        }
    }

    /// An idle connection that is still open and ready, if any.
    async fn checkout(&self) -> Option<Sender> {
        loop {
            let mut sender = self.idle.lock().ok()?.pop()?;
            if sender.is_closed() {
                continue;
            }
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(sender);
            }
        }
    }

    async fn connect(&self) -> Result<Sender, ProxyError> {
        let (sender, conn) = self.handshake().await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection closed");
            }
        });
        Ok(sender)
    }

    /// A new HTTP/1.1 connection, open within the connect timeout; the caller drives it.
    async fn handshake(&self) -> Result<(Sender, Connection), ProxyError> {
        let io = match timeout(self.connect_timeout, self.open()).await {
            Err(_) => return Err(ProxyError::UpstreamConnectTimeout),
            Ok(opened) => opened?,
        };
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

/// An upstream connection's socket: plain, or TLS (boxed: its buffers would make every plain
/// connection as large).
enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
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
        let resp = match timeout(self.response_timeout, sender.send_request(req)).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(e)) => return Err(send_error(e)),
            Ok(Ok(resp)) => resp,
        };
        Ok(resp.map(|body| UpstreamBody {
            inner: body,
            release: None,
        }))
    }
}

/// A request body cut off at its class's limit is the client's doing (413), not the upstream's.
fn send_error(err: hyper::Error) -> ProxyError {
    match err.source().and_then(|s| s.downcast_ref::<UploadError>()) {
        Some(UploadError::TooLarge(too_large)) => ProxyError::BodyTooLarge(*too_large),
        _ => ProxyError::UpstreamProtocol(err.to_string()),
    }
}

/// An upstream response body that returns its connection to the pool when it ends.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    release: Option<(Sender, Arc<UpstreamClient>)>,
}

impl UpstreamBody {
    fn new(inner: Incoming, sender: Sender, client: Arc<UpstreamClient>) -> Self {
        let mut body = Self {
            inner,
            release: Some((sender, client)),
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some((sender, client)) = self.release.take() {
            client.checkin(sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(),
            Poll::Ready(Some(Err(_))) => self.release = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
