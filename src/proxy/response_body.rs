//! The response body type: the upstream's body streamed through, or a small local one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

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
