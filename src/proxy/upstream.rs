//! The upstream client: pooled HTTP/1.1 keep-alive connections, one pool per worker.
//!
//! Built on `hyper::client::conn::http1` rather than hyper-util's pooled `Client`: a worker-local
//! stack of idle connections is cheaper than the generic pool and measured faster here. A
//! connection goes back to the pool only once its response body has ended; a request that fails
//! on a reused connection before being sent (the upstream closed an idle keep-alive) is retried
//! once on a fresh connection.

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
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

use super::body::RequestBody;
use super::upload::{UploadBody, UploadError};
use crate::error::ProxyError;

/// What goes upstream: the request body (streamed, or with an inspected prefix put back), counted
/// against the class's upload limit.
pub type ForwardBody = UploadBody<RequestBody>;

type Sender = SendRequest<ForwardBody>;

/// One worker's upstream pools: the upstream's, and one per upstream-account base URL.
#[derive(Debug)]
pub struct Upstreams {
    pub default: Arc<UpstreamClient>,
    /// Pools for upstream accounts that have their own base URL, by authority.
    pub by_authority: HashMap<String, Arc<UpstreamClient>>,
}

thread_local! {
    /// The pools of the worker running on this thread. A connection's task runs on the worker
    /// that opened it, so work started here must use this worker's pools.
    static CURRENT: RefCell<Option<Arc<Upstreams>>> = const { RefCell::new(None) };
}

impl Upstreams {
    /// The pool for an authority (`None`: the upstream's own).
    pub fn client(&self, authority: Option<&str>) -> &Arc<UpstreamClient> {
        authority
            .and_then(|a| self.by_authority.get(a))
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

/// Connections to one upstream origin.
#[derive(Debug)]
pub struct UpstreamClient {
    authority: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Sender>>,
}

impl UpstreamClient {
    pub fn new(
        authority: String,
        connect_timeout: Duration,
        response_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            authority,
            connect_timeout,
            response_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn authority(&self) -> &str {
        &self.authority
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
        let stream = match timeout(self.connect_timeout, TcpStream::connect(&self.authority)).await
        {
            Err(_) => return Err(ProxyError::UpstreamConnectTimeout),
            Ok(Err(e)) => {
                return Err(ProxyError::UpstreamUnreachable(format!(
                    "{}: {e}",
                    self.authority
                )))
            }
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .writev(false) // as on the listener: one flat buffer per write
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::UpstreamUnreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection closed");
            }
        });
        Ok(sender)
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
