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
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method};
use http_body::Body;
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

use super::codec::{self, CodecError, RelayHead, RequestFraming, ResponseHead, LAST_CHUNK};
use super::io::UpstreamIo;
use super::wait::{ExchangeError, Wait};
use super::{ExchangeTimeouts, ForwardBody};

/// Request data at most this large is copied next to the head, so both go in one write.
const COALESCE_LIMIT: usize = 16 * 1024;
/// Read size for response bodies.
pub(super) const BODY_READ: usize = 64 * 1024;
/// Read size for response heads (a typical head and small body fit in one read).
const HEAD_READ: usize = 8 * 1024;
/// An idle connection's buffers are trimmed to this when it returns to the pool.
const IDLE_BUFFER_LIMIT: usize = 64 * 1024;

/// An open upstream connection with its buffers, reused across requests.
pub struct Conn {
    pub(super) io: UpstreamIo,
    /// Bytes read and not yet consumed.
    pub(super) read: BytesMut,
    /// Bytes to write: a head, chunk framing, small data.
    pub(super) write: Vec<u8>,
    /// How much of `write` is written.
    pub(super) written: usize,
    /// Body data to write after `write` (large frames go out without a copy).
    pub(super) data: Bytes,
    /// The request body still to send, if any.
    pub(super) sending: Option<Sending>,
    /// Whether the response so far allows another request on this connection.
    pub(super) reusable: bool,
    /// The clock of the current wait: one timer per connection instead of one created and
    /// dropped per request.
    pub(super) timer: Option<Pin<Box<Sleep>>>,
    /// The wait `timer` is set for; `None` once bytes moved, so the next wait sets it afresh.
    pub(super) armed: Option<Wait>,
    /// What the request's sending waits for, while it is pending.
    pub(super) send_wait: Option<Wait>,
    /// An empty field map whose table the next response head fills: the request's map,
    /// handed back once its fields are on the wire, so no answer allocates one.
    pub(super) spare_fields: HeaderMap,
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
pub(super) struct Sending {
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
        self.begin_exchange();
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

    /// Prepares a request written whole by `encode` (head and body: the fast path's, whose
    /// body is already in memory), so a replay resends all of it.
    pub fn start_whole(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        self.write.clear();
        self.begin_exchange();
        encode(&mut self.write);
    }

    /// A new exchange's state: nothing of `write` sent yet, no body on its way, no clock set.
    fn begin_exchange(&mut self) {
        self.written = 0;
        self.data = Bytes::new();
        self.sending = None;
        self.reusable = true;
        self.armed = None;
        self.send_wait = None;
    }

    /// Takes over the body-less request `stale` (a connection found closed before it
    /// answered) was sending: its encoded head, and its spare field map.
    pub fn replay(&mut self, stale: &mut Conn) {
        std::mem::swap(&mut self.write, &mut stale.write);
        std::mem::swap(&mut self.spare_fields, &mut stale.spare_fields);
        self.begin_exchange();
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
        relay: Option<&mut RelayHead>,
    ) -> Poll<Result<ResponseHead, ExchangeError>> {
        if let Poll::Ready(head) = self.poll_head(cx, method, relay) {
            return Poll::Ready(head);
        }
        let wait = self.send_wait.unwrap_or(Wait::Head);
        self.poll_clock(cx, wait, t).map(Err)
    }

    /// Runs the clock of `wait`, set afresh when bytes moved (or the exchange began waiting
    /// for something else) since it was last set: an idle timeout from one timer, with the
    /// time read only when the exchange has to wait.
    pub(super) fn poll_clock(
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
    /// (100 Continue, 103) are skipped. With `relay` (the fast path's), the head's fields are
    /// listed there instead of filling a map ([`codec::parse_response_relay`]).
    pub fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
        mut relay: Option<&mut RelayHead>,
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
                let (read, spare) = (&mut self.read, &mut self.spare_fields);
                let parsed = match relay.as_deref_mut() {
                    Some(relay) => codec::parse_response_relay(read, method, spare, relay)?,
                    None => codec::parse_response_head(read, method, spare)?,
                };
                if let Some(head) = parsed {
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
    pub(super) fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
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
        let before = self.written;
        let wrote = self.io.poll_write_from(cx, &self.write, &mut self.written);
        if self.written != before {
            self.armed = None;
        }
        ready!(wrote)?;
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
    pub(super) fn abandon_request(&mut self) {
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
    pub(super) fn is_reusable(&self) -> bool {
        let all_sent =
            self.sending.is_none() && self.written == self.write.len() && self.data.is_empty();
        self.reusable && all_sent && self.read.is_empty()
    }

    /// Trims buffers a large exchange grew before the connection goes idle.
    pub(super) fn trim(&mut self) {
        if self.write.capacity() > IDLE_BUFFER_LIMIT {
            self.write = Vec::with_capacity(1024);
        }
        if self.read.capacity() > IDLE_BUFFER_LIMIT {
            self.read = BytesMut::with_capacity(HEAD_READ);
        }
    }
}
