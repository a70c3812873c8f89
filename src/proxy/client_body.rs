//! The client's request body as it arrives, and what becomes of the part floodgate never reads.
//!
//! On HTTP/2, a request body that is dropped before its end resets its stream once the answer
//! has gone (RST_STREAM): a refusal answered before the body arrived, or an upstream that
//! answered before reading it all. Some clients take that reset as the answer — libcurl (curl,
//! PHP, R) reports "stream error in the HTTP/2 framing layer" and no status at all, so a 429's
//! Retry-After never reaches the client's retry logic. nginx reads and discards the body of a
//! request it refuses and then ends the stream cleanly; floodgate does the same. A body dropped
//! unread is handed to its request's [`Unread`] slot instead, and the listener reads it to its
//! end before the answer's stream ends (`server::discard`).
//!
//! HTTP/1.1 bodies carry no slot: hyper reads what is left of them, or closes the connection.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Where a request's unread body is left when floodgate drops it (HTTP/2 only).
#[derive(Debug, Default)]
pub struct Unread(Mutex<Option<Incoming>>);

impl Unread {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The body left here, if any: what the answer's stream must read before it ends.
    pub fn take(&self) -> Option<Incoming> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn leave(&self, body: Incoming) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(body);
    }
}

/// A client's request body: hyper's, and on HTTP/2 the slot it goes to if it is dropped before
/// its end. An enum, so that an HTTP/1.1 body is hyper's as it was, with no drop hook.
#[derive(Debug)]
pub enum ClientBody {
    /// HTTP/1.1: dropped as usual.
    Plain(Incoming),
    /// HTTP/2: what is left of it when dropped goes to its [`Unread`] slot.
    Kept(Kept),
}

/// An HTTP/2 request body that is left in its slot, not dropped, if dropped before its end.
#[derive(Debug)]
pub struct Kept {
    /// `None` only once dropped into the slot.
    body: Option<Incoming>,
    unread: Arc<Unread>,
}

impl ClientBody {
    /// An HTTP/1.1 body.
    pub fn plain(body: Incoming) -> Self {
        ClientBody::Plain(body)
    }

    /// An HTTP/2 body: what is left of it when dropped goes to `unread`.
    pub fn kept(body: Incoming, unread: Arc<Unread>) -> Self {
        ClientBody::Kept(Kept {
            body: Some(body),
            unread,
        })
    }

    fn incoming(&self) -> Option<&Incoming> {
        match self {
            ClientBody::Plain(body) => Some(body),
            ClientBody::Kept(kept) => kept.body.as_ref(),
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(body) = self.body.take() {
            if !body.is_end_stream() {
                self.unread.leave(body);
            }
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let body = match self.get_mut() {
            ClientBody::Plain(body) => body,
            ClientBody::Kept(Kept {
                body: Some(body), ..
            }) => body,
            ClientBody::Kept(Kept { body: None, .. }) => return Poll::Ready(None),
        };
        Pin::new(body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.incoming().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
