//! One upstream connection and the exchange on it: the request head and body written, the
//! response head read, the response body streamed to the client, all polled by the client
//! connection's own task.
//!
//! Why not hyper's client here: its connection runs as a task of its own and hands requests,
//! responses and every body chunk across channels, about 10k instructions a request under
//! callgrind against about 3k for this exchange (and the proxy's throughput is its
//! instructions per request). hyper keeps the client-facing side, where requests come from
//! anyone; this side talks to an origin floodgate was configured to use, with `httparse`
//! reading its heads.
//!
//! The request body streams while the response is read, so an upstream that answers before
//! the whole body arrived (an early 413, an echo) is heard; after the response head, the rest
//! of the request body is sent as the response body is polled.
//!
//! Every wait has a clock ([`Wait`]): the client's request body and the upstream's taking of
//! the request are idle timeouts, the response head a deadline from the end of the request,
//! the response body an idle timeout again. One timer per connection serves them all; it is set
//! only when an exchange has to wait, and only afresh when bytes moved since it was set.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

use super::codec::{
    self, BodyFraming, Chunk, ChunkedDecoder, CodecError, RequestFraming, ResponseHead, LAST_CHUNK,
};
use super::io::UpstreamIo;
use super::{ExchangeTimeouts, ForwardBody, UpstreamClient};
use crate::proxy::upload::UploadError;

/// Request data at most this large is copied next to the head, so both go in one write.
const COALESCE_LIMIT: usize = 16 * 1024;
/// Read size for response bodies.
const BODY_READ: usize = 64 * 1024;
/// Read size for response heads (a typical head and small body fit in one read).
const HEAD_READ: usize = 8 * 1024;
/// An idle connection's buffers are trimmed to this when it returns to the pool.
const IDLE_BUFFER_LIMIT: usize = 64 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("upstream connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("upstream closed the connection mid-body")]
    ClosedMidBody,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("upstream switched protocols without being asked to")]
    UnaskedSwitch,
    #[error("upstream did not answer in time")]
    TimedOut,
    #[error("upstream did not take the request in time")]
    SendTimedOut,
    #[error("upstream sent nothing more of the response body in time")]
    BodyTimedOut,
    #[error("the client sent nothing more of the request body in time")]
    ClientBodyTimedOut,
    #[error(transparent)]
    RequestBody(#[from] UploadError),
    /// From hyper's client, which carries protocol upgrades.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

impl ExchangeError {
    /// Whether the request can go again on another connection: nothing of an answer came and
    /// the connection was found closed (an idle keep-alive the upstream had just ended).
    pub fn is_stale_connection(&self) -> bool {
        match self {
            ExchangeError::ClosedBeforeAnswer => true,
            ExchangeError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// What a pending exchange waits for, and so which of its clocks runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The client's next bytes of request body (`client_body_timeout`).
    ClientBody,
    /// The upstream taking more of the request (`upstream_send_timeout`).
    Send,
    /// The response head, once the whole request is sent (`upstream_timeout`).
    Head,
    /// The upstream's next bytes of response body (`upstream_body_timeout`).
    Body,
}

impl Wait {
    fn limit(self, t: &ExchangeTimeouts) -> Duration {
        match self {
            Wait::ClientBody => t.client_body,
            Wait::Send => t.send,
            Wait::Head => t.head,
            Wait::Body => t.body,
        }
    }

    fn expired(self) -> ExchangeError {
        match self {
            Wait::ClientBody => ExchangeError::ClientBodyTimedOut,
            Wait::Send => ExchangeError::SendTimedOut,
            Wait::Head => ExchangeError::TimedOut,
            Wait::Body => ExchangeError::BodyTimedOut,
        }
    }
}

/// An open upstream connection with its buffers, reused across requests.
pub struct Conn {
    io: UpstreamIo,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// Bytes to write: a head, chunk framing, small data.
    write: Vec<u8>,
    /// How much of `write` is written.
    written: usize,
    /// Body data to write after `write` (large frames go out without a copy).
    data: Bytes,
    /// The request body still to send, if any.
    sending: Option<Sending>,
    /// Whether the response so far allows another request on this connection.
    reusable: bool,
    /// The clock of the current wait: one timer per connection instead of one created and
    /// dropped per request.
    timer: Option<Pin<Box<Sleep>>>,
    /// The wait `timer` is set for; `None` once bytes moved, so the next wait sets it afresh.
    armed: Option<Wait>,
    /// What the request's sending waits for, while it is pending.
    send_wait: Option<Wait>,
    /// An empty field map whose table the next response head fills: the request's map,
    /// handed back once its fields are on the wire, so no answer allocates one.
    spare_fields: HeaderMap,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("buffered", &self.read.len())
            .field("sending", &self.sending.is_some())
            .finish()
    }
}

/// A request body on its way.
struct Sending {
    body: ForwardBody,
    framing: RequestFraming,
    /// Bytes of a `Length` body still expected.
    left: u64,
    /// Whether a chunk's data was written and its CRLF is still owed.
    chunk_open: bool,
}

impl Conn {
    pub fn new(io: UpstreamIo) -> Box<Self> {
        Box::new(Self {
            io,
            read: BytesMut::with_capacity(HEAD_READ),
            write: Vec::with_capacity(1024),
            written: 0,
            data: Bytes::new(),
            sending: None,
            reusable: true,
            timer: None,
            armed: None,
            send_wait: None,
            spare_fields: HeaderMap::new(),
        })
    }

    /// Whether an idle connection is still open and quiet. A closed one (or one with stray
    /// bytes) shows as readable; checked without a system call unless the socket is readable.
    pub fn is_idle_usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.read.clear();
        matches!(
            poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read),
            Poll::Pending
        )
    }

    /// Prepares a request: its head (plus `extra`, a framing field, and the forwarding fields
    /// for `forwarded_for`) and its body to send.
    pub fn start(
        &mut self,
        parts: &http::request::Parts,
        body: Option<ForwardBody>,
        framing: RequestFraming,
        extra: Option<&(http::HeaderName, http::HeaderValue)>,
        forwarded_for: Option<&crate::proxy::header_rewrite::Forwarded>,
    ) {
        self.write.clear();
        self.written = 0;
        self.data = Bytes::new();
        self.reusable = true;
        self.armed = None;
        self.send_wait = None;
        codec::encode_request_head(
            &mut self.write,
            &parts.method,
            &parts.uri,
            &parts.headers,
            extra,
            forwarded_for,
        );
        self.sending = body.map(|body| Sending {
            body,
            framing,
            left: match framing {
                RequestFraming::Length(n) => n,
                _ => 0,
            },
            chunk_open: false,
        });
    }

    /// Takes over the body-less request `stale` (a connection found closed before it
    /// answered) was sending: its encoded head, and its spare field map.
    pub fn replay(&mut self, stale: &mut Conn) {
        std::mem::swap(&mut self.write, &mut stale.write);
        std::mem::swap(&mut self.spare_fields, &mut stale.spare_fields);
        self.written = 0;
        self.data = Bytes::new();
        self.sending = None;
        self.reusable = true;
        self.armed = None;
        self.send_wait = None;
    }

    /// Keeps a request's field map (cleared) for the next response head's fields.
    pub fn recycle_fields(&mut self, mut fields: HeaderMap) {
        fields.clear();
        self.spare_fields = fields;
    }

    /// [`Conn::poll_head`] within the clocks `t`: while the request is still going, the
    /// client's body or the upstream's taking of it must not pause too long; once it is all
    /// sent (not before: a slow upload is not a slow upstream), the head must come in time.
    pub fn poll_head_in_time(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
        t: &ExchangeTimeouts,
    ) -> Poll<Result<ResponseHead, ExchangeError>> {
        if let Poll::Ready(head) = self.poll_head(cx, method) {
            return Poll::Ready(head);
        }
        let wait = self.send_wait.unwrap_or(Wait::Head);
        self.poll_clock(cx, wait, t).map(Err)
    }

    /// Runs the clock of `wait`, set afresh when bytes moved (or the exchange began waiting
    /// for something else) since it was last set: an idle timeout from one timer, with the
    /// time read only when the exchange has to wait.
    fn poll_clock(
        &mut self,
        cx: &mut Context<'_>,
        wait: Wait,
        t: &ExchangeTimeouts,
    ) -> Poll<ExchangeError> {
        if self.armed != Some(wait) {
            let at = Instant::now() + wait.limit(t);
            match self.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = Some(wait);
        }
        let timer = self.timer.as_mut().expect("set above");
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(wait.expired())
    }

    /// Waits for the response head, sending the request meanwhile. Informational answers
    /// (100 Continue, 103) are skipped.
    pub fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<ResponseHead, ExchangeError>> {
        let mut send_failed = None;
        loop {
            if send_failed.is_none() {
                match self.poll_send(cx) {
                    Poll::Ready(Err(ExchangeError::RequestBody(e))) => {
                        return Poll::Ready(Err(e.into()))
                    }
                    // The upstream may have answered and closed: read what it said first.
                    Poll::Ready(Err(e)) => send_failed = Some(e),
                    _ => {}
                }
            }
            if !self.read.is_empty() {
                if let Some(head) =
                    codec::parse_response_head(&mut self.read, method, &mut self.spare_fields)?
                {
                    if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                        return Poll::Ready(Err(ExchangeError::UnaskedSwitch));
                    }
                    if head.status.is_informational() {
                        continue;
                    }
                    if send_failed.is_some() {
                        // The upstream answered and stopped reading: nothing more goes.
                        self.abandon_request();
                    }
                    self.reusable &= head.keep_alive;
                    return Poll::Ready(Ok(head));
                }
            }
            if self.read.capacity() - self.read.len() < 1024 {
                self.read.reserve(HEAD_READ);
            }
            match ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)) {
                Ok(0) if self.read.is_empty() => {
                    return Poll::Ready(Err(
                        send_failed.unwrap_or(ExchangeError::ClosedBeforeAnswer)
                    ))
                }
                Ok(0) => return Poll::Ready(Err(CodecError::Head(httparse::Error::Status).into())),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(send_failed.unwrap_or(e.into()))),
            }
        }
    }

    /// Writes what is buffered and feeds the request body through: `Ready(Ok)` once all of it
    /// is sent; while pending, `send_wait` says on whom (the upstream's socket or the client).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        self.send_wait = None;
        loop {
            if self.poll_flush_buffers(cx)?.is_pending() {
                self.send_wait = Some(Wait::Send);
                return Poll::Pending;
            }
            let Some(sending) = self.sending.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let Poll::Ready(frame) = Pin::new(&mut sending.body).poll_frame(cx) else {
                self.send_wait = Some(Wait::ClientBody);
                return Poll::Pending;
            };
            self.armed = None;
            match frame {
                None => {
                    let sending = self.sending.take().expect("sending");
                    self.finish_body(&sending)?;
                }
                Some(Err(e)) => {
                    self.sending = None;
                    self.reusable = false;
                    return Poll::Ready(Err(e.into()));
                }
                Some(Ok(frame)) => {
                    // Request trailers are dropped (few upstreams accept them).
                    if let Ok(data) = frame.into_data() {
                        self.queue_data(data)?;
                    }
                }
            }
        }
    }

    /// Queues one frame of body data, framed as the head said.
    fn queue_data(&mut self, data: Bytes) -> Result<(), ExchangeError> {
        if data.is_empty() {
            return Ok(());
        }
        let sending = self.sending.as_mut().expect("sending");
        match sending.framing {
            RequestFraming::Length(_) | RequestFraming::Empty => {
                let len = data.len() as u64;
                if len > sending.left {
                    self.reusable = false;
                    return Err(CodecError::RequestLength.into());
                }
                sending.left -= len;
            }
            RequestFraming::Chunked => {
                if sending.chunk_open {
                    self.write.extend_from_slice(b"\r\n");
                }
                codec::encode_chunk_size(&mut self.write, data.len());
                sending.chunk_open = true;
            }
        }
        if data.len() <= COALESCE_LIMIT {
            self.write.extend_from_slice(&data);
        } else {
            self.data = data;
        }
        Ok(())
    }

    /// Ends the request body: the last chunk, or a check that the declared length was sent.
    fn finish_body(&mut self, sending: &Sending) -> Result<(), ExchangeError> {
        match sending.framing {
            RequestFraming::Chunked => {
                if sending.chunk_open {
                    self.write.extend_from_slice(b"\r\n");
                }
                self.write.extend_from_slice(LAST_CHUNK);
            }
            _ if sending.left != 0 => {
                self.reusable = false;
                return Err(CodecError::RequestLength.into());
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes `write`, then `data`; each write moves the exchange on (its clock starts over).
    fn poll_flush_buffers(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        while self.written < self.write.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(
                    std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                ));
            }
            self.written += n;
            self.armed = None;
        }
        if self.sending.is_some() {
            // More of the body follows: the buffer starts over. Otherwise what was written
            // (a body-less request's head) stays until the next request, for a replay.
            self.write.clear();
            self.written = 0;
        }
        while !self.data.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.data))?;
            if n == 0 {
                return Poll::Ready(Err(
                    std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                ));
            }
            self.data.advance(n);
            self.armed = None;
        }
        if matches!(self.io, UpstreamIo::Tls(_)) {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Stops sending the request (the upstream answered and no longer reads it); the
    /// connection ends with this exchange.
    fn abandon_request(&mut self) {
        self.sending = None;
        self.send_wait = None;
        self.write.clear();
        self.written = 0;
        self.data = Bytes::new();
        self.reusable = false;
    }

    /// Whether this connection can take the next request: the exchange ended cleanly with
    /// nothing left over either way (not even request bytes still unwritten after an early
    /// answer).
    fn is_reusable(&self) -> bool {
        let all_sent =
            self.sending.is_none() && self.written == self.write.len() && self.data.is_empty();
        self.reusable && all_sent && self.read.is_empty()
    }

    /// Trims buffers a large exchange grew before the connection goes idle.
    fn trim(&mut self) {
        if self.write.capacity() > IDLE_BUFFER_LIMIT {
            self.write = Vec::with_capacity(1024);
        }
        if self.read.capacity() > IDLE_BUFFER_LIMIT {
            self.read = BytesMut::with_capacity(HEAD_READ);
        }
    }
}

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
