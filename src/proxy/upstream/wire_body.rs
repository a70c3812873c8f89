//! A response body read from an upstream connection: framed by its head (a length, chunks, or
//! until the connection closes), read as the client polls it, under the body's idle clock; the
//! connection goes back to its pool when the body ends cleanly.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio_util::io::poll_read_buf;

use super::codec::{BodyFraming, Chunk, ChunkedDecoder};
use super::conn::{Conn, BODY_READ};
use super::wait::{ExchangeError, Wait};
use super::UpstreamClient;

/// A response body read from an upstream connection; the connection goes back to its pool
/// when the body ends cleanly.
pub struct WireBody {
    state: WireState,
    /// Where the connection returns (with it while the body is still being read).
    conn: Option<(Box<Conn>, Arc<UpstreamClient>)>,
}

enum WireState {
    /// The whole body, already read.
    Ready(Option<Bytes>),
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

impl std::fmt::Debug for WireBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireBody").finish_non_exhaustive()
    }
}

impl WireBody {
    /// The body after `head` on `conn`. A body already read whole (the usual small answer)
    /// frees the connection at once.
    pub fn new(framing: BodyFraming, mut conn: Box<Conn>, client: Arc<UpstreamClient>) -> Self {
        let state = match framing {
            BodyFraming::Empty => WireState::Ready(None),
            BodyFraming::Length(len) if conn.sending.is_none() && conn.read.len() as u64 >= len => {
                let body = conn.read.split_to(len as usize).freeze();
                WireState::Ready(Some(body))
            }
            BodyFraming::Length(len) => WireState::Length(len),
            BodyFraming::Chunked => WireState::Chunked(ChunkedDecoder::default()),
            BodyFraming::UntilClose => WireState::UntilClose,
        };
        let mut body = Self {
            state,
            conn: Some((conn, client)),
        };
        if let WireState::Ready(_) = body.state {
            body.release();
        }
        body
    }

    /// A body read whole already (a pipelined answer's): no connection behind it.
    pub fn whole(body: Bytes) -> Self {
        Self {
            state: WireState::Ready((!body.is_empty()).then_some(body)),
            conn: None,
        }
    }

    /// The body has ended: its connection goes back to the pool if it can take another request.
    fn release(&mut self) {
        if let Some((mut conn, client)) = self.conn.take() {
            if conn.is_reusable() {
                conn.trim();
                client.checkin(conn);
            }
        }
    }

    /// The next frame: from bytes already read, else after reading more.
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        loop {
            if let WireState::Ready(body) = &mut self.state {
                return Poll::Ready(body.take().map(|b| Ok(Frame::data(b))));
            }
            let Some((conn, _)) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if conn.sending.is_some() || !conn.write.is_empty() || !conn.data.is_empty() {
                match conn.poll_send(cx) {
                    // The client's own body failed: the exchange ends here.
                    Poll::Ready(Err(e @ ExchangeError::RequestBody(_))) => {
                        return Poll::Ready(Some(Err(e)))
                    }
                    // The upstream stopped reading the request; its answer may still be whole.
                    Poll::Ready(Err(_)) => conn.abandon_request(),
                    _ => {}
                }
            }
            if let Some(frame) = self.take_buffered() {
                return Poll::Ready(frame);
            }
            let (conn, _) = self.conn.as_mut().expect("connection");
            if conn.read.capacity() - conn.read.len() < 4096 {
                conn.read.reserve(BODY_READ);
            }
            match poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.read) {
                Poll::Pending => return self.poll_stalled(cx),
                Poll::Ready(Ok(0)) => return Poll::Ready(self.at_close()),
                Poll::Ready(Ok(_)) => conn.armed = None,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    /// Nothing more to read yet: the clock of what the exchange waits for runs — the client's
    /// request body if the upstream may be waiting on it, else the upstream's response body.
    /// When it runs out the response is cut (the client sees its connection close), and the
    /// upstream connection closes with it.
    fn poll_stalled(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let (conn, client) = self.conn.as_mut().expect("connection");
        let wait = match conn.send_wait {
            Some(Wait::ClientBody) => Wait::ClientBody,
            _ => Wait::Body,
        };
        let err = ready!(conn.poll_clock(cx, wait, &client.timeouts));
        client.cut(wait);
        self.conn = None;
        Poll::Ready(Some(Err(err)))
    }

    /// A frame from bytes already read: `Some(None)` at the end, `None` when more are needed.
    fn take_buffered(&mut self) -> Option<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let (conn, _) = self.conn.as_mut()?;
        let frame = match &mut self.state {
            WireState::Ready(body) => return Some(body.take().map(|b| Ok(Frame::data(b)))),
            WireState::Length(_) | WireState::UntilClose if conn.read.is_empty() => return None,
            WireState::Length(left) => {
                let n = conn
                    .read
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                let data = conn.read.split_to(n).freeze();
                *left -= n as u64;
                if *left == 0 {
                    self.state = WireState::Ready(None);
                    self.release();
                }
                Ok(Frame::data(data))
            }
            WireState::Chunked(decoder) => match decoder.decode(&mut conn.read) {
                Err(e) => {
                    conn.reusable = false;
                    Err(e.into())
                }
                Ok(None) => return None,
                Ok(Some(Chunk::Data(data))) => Ok(Frame::data(data)),
                Ok(Some(Chunk::Trailers(trailers))) => {
                    // Trailers end the body: nothing is polled after them.
                    self.state = WireState::Ready(None);
                    self.release();
                    Ok(Frame::trailers(trailers))
                }
                Ok(Some(Chunk::End)) => {
                    self.state = WireState::Ready(None);
                    self.release();
                    return Some(None);
                }
            },
            WireState::UntilClose => Ok(Frame::data(conn.read.split().freeze())),
        };
        Some(Some(frame))
    }

    /// The upstream closed the connection: the end of a close-delimited body, else an error.
    fn at_close(&mut self) -> Option<Result<Frame<Bytes>, ExchangeError>> {
        self.conn = None;
        match self.state {
            WireState::UntilClose => {
                self.state = WireState::Ready(None);
                None
            }
            _ => Some(Err(ExchangeError::ClosedMidBody)),
        }
    }
}

impl Body for WireBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        self.get_mut().poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, WireState::Ready(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            WireState::Ready(body) => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
            WireState::Length(left) => SizeHint::with_exact(*left),
            WireState::Chunked(_) | WireState::UntilClose => SizeHint::new(),
        }
    }
}
