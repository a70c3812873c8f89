//! The response body type: the upstream's body streamed through, or a small local one; and a
//! look at its first bytes that leaves them for the client.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use http::Response;

use super::error::ProxyError;
use super::inspect::{read_prefix, Peeked};
use super::upstream::{ExchangeError, UpstreamBody};
use crate::queue::SlotPermit;

/// A body floodgate sends to a client. An enum instead of a boxed trait object: no allocation
/// per response and static dispatch on the hot path.
#[derive(Debug)]
pub enum ProxyBody {
    /// The upstream's body, after any `prefix` floodgate already read from it; `permit` is a
    /// job slot held until the body has been sent (or dropped).
    Upstream {
        prefix: Option<Bytes>,
        body: UpstreamBody,
        /// Boxed: only job responses carry one, and every plain response is moved several
        /// times on its way out (a smaller body is a cheaper move).
        permit: Option<Box<SlotPermit>>,
    },
    Full(Option<Bytes>),
    /// Panics when polled: the test hook for a panic while a body streams (test builds only).
    #[cfg(feature = "test-hooks")]
    Panics,
}

impl ProxyBody {
    pub fn full(bytes: Bytes) -> Self {
        ProxyBody::Full(Some(bytes))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    pub fn upstream(body: UpstreamBody) -> Self {
        ProxyBody::Upstream {
            prefix: None,
            body,
            permit: None,
        }
    }

    /// Keeps a job slot until this body is done.
    pub fn hold(&mut self, slot: SlotPermit) {
        if let ProxyBody::Upstream { permit, .. } = self {
            *permit = Some(Box::new(slot));
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        match self.get_mut() {
            ProxyBody::Upstream { prefix, body, .. } => match prefix.take() {
                Some(p) => Poll::Ready(Some(Ok(Frame::data(p)))),
                None => Pin::new(body).poll_frame(cx),
            },
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            #[cfg(feature = "test-hooks")]
            ProxyBody::Panics => panic!("test hook: a panic while a body streams"),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { prefix, body, .. } => prefix.is_none() && body.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            #[cfg(feature = "test-hooks")]
            ProxyBody::Panics => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream {
                prefix: None, body, ..
            } => body.size_hint(),
            ProxyBody::Upstream {
                prefix: Some(p),
                body,
                ..
            } => {
                let r = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(r.lower() + p.len() as u64);
                if let Some(upper) = r.upper() {
                    hint.set_upper(upper + p.len() as u64);
                }
                hint
            }
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            #[cfg(feature = "test-hooks")]
            ProxyBody::Panics => SizeHint::with_exact(1),
        }
    }
}

/// Reads up to `limit` bytes of an upstream answer's body and puts them back in front of the
/// rest, so the client still gets every byte. A body read whole becomes a local one (any slot
/// it held ends: the upstream has answered in full).
pub async fn peek(
    resp: Response<ProxyBody>,
    limit: usize,
) -> Result<(Response<ProxyBody>, Option<Peeked>), ProxyError> {
    let (parts, body) = resp.into_parts();
    let ProxyBody::Upstream {
        prefix: None,
        body: upstream,
        permit,
    } = body
    else {
        return Ok((Response::from_parts(parts, body), None));
    };
    let prefix = read_prefix(upstream, limit, None)
        .await
        .map_err(|e| ProxyError::UpstreamProtocol(e.to_string()))?;
    let peeked = Peeked {
        bytes: prefix.bytes.clone(),
        complete: prefix.is_complete(),
    };
    let body = match prefix.rest {
        Some(rest) => ProxyBody::Upstream {
            prefix: Some(prefix.bytes),
            body: rest,
            permit,
        },
        None => ProxyBody::full(prefix.bytes),
    };
    Ok((Response::from_parts(parts, body), Some(peeked)))
}
