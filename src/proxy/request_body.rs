//! The request body on its way upstream, with what floodgate read of it put back in front.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::client_body::ClientBody;
use super::error::ProxyError;
use super::inspect::{read_prefix, Prefix, PrefixError};

/// A request body on its way upstream: streamed as received, or with a prefix floodgate read
/// first (to look inside a job's JSON) put back in front of the rest.
#[derive(Debug)]
pub enum RequestBody {
    Streaming(ClientBody),
    /// `prefix` goes first, then whatever of the client's body was not read yet.
    Prefixed {
        prefix: Option<Bytes>,
        rest: Option<ClientBody>,
    },
}

impl From<ClientBody> for RequestBody {
    fn from(body: ClientBody) -> Self {
        RequestBody::Streaming(body)
    }
}

impl RequestBody {
    pub fn empty() -> Self {
        RequestBody::Prefixed {
            prefix: None,
            rest: None,
        }
    }

    pub fn full(bytes: Bytes) -> Self {
        RequestBody::Prefixed {
            prefix: Some(bytes),
            rest: None,
        }
    }

    /// The body's first `limit` bytes (a frame may overshoot) and its unread rest: read now
    /// (with at most `idle` between frames: `client_body_timeout`), or as already read (a body
    /// read to classify its request is not read again).
    pub async fn prefix(
        self,
        limit: usize,
        idle: Duration,
    ) -> Result<Prefix<ClientBody>, ProxyError> {
        match self {
            RequestBody::Streaming(body) => {
                read_prefix(body, limit, Some(idle))
                    .await
                    .map_err(|e| match e {
                        PrefixError::Stalled => ProxyError::ClientBodyTimeout,
                        PrefixError::Body(e) => ProxyError::ClientBody(e.to_string()),
                    })
            }
            RequestBody::Prefixed { prefix, rest } => Ok(Prefix {
                bytes: prefix.unwrap_or_default(),
                rest,
            }),
        }
    }
}

impl From<Prefix<ClientBody>> for RequestBody {
    /// The read prefix put back in front of the rest.
    fn from(read: Prefix<ClientBody>) -> Self {
        RequestBody::Prefixed {
            prefix: Some(read.bytes),
            rest: read.rest,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Streaming(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Prefixed { prefix, rest } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                match rest {
                    Some(r) => Pin::new(r).poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streaming(b) => b.is_end_stream(),
            RequestBody::Prefixed { prefix, rest } => {
                prefix.is_none() && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streaming(b) => b.size_hint(),
            RequestBody::Prefixed { prefix, rest } => {
                let p = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let r = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |r| r.size_hint());
                let mut hint = SizeHint::new();
                hint.set_lower(r.lower() + p);
                if let Some(upper) = r.upper() {
                    hint.set_upper(upper + p);
                }
                hint
            }
        }
    }
}
