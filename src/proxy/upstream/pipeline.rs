//! Pipelined upstream requests (`[classes.NAME] pipeline = true`): a class's body-less `GET`
//! and `HEAD` requests share one upstream connection per worker, written back to back and
//! answered in order (RFC 9112 §9.3.2).
//!
//! Why: two thirds of a proxied request's cost is the kernel's loopback TCP, and the upstream
//! leg pays it per request — a write, a read, an ACK, an epoll wake-up. On a shared connection
//! the requests that arrive in the same tick go out in one write and their answers come back
//! in one read, so the leg costs per batch instead. The price is head-of-line blocking: a slow
//! answer holds up every answer behind it, so only classes whose answers are quick and small
//! (status polls, model lists, cached lookups) should opt in.
//!
//! One task per worker — the lane's driver — owns the connection while requests are in
//! flight; a request's own task hands its encoded bytes over and waits for its answer. The
//! rules that keep it correct:
//! - only idempotent methods without a body join, so a request may go twice;
//! - an answer whose body is small and length-delimited is read whole by the driver; any other
//!   (chunked, close-delimited, over [`WHOLE_BODY_LIMIT`]) takes the connection with it to its
//!   client, and the requests behind it go again on a fresh connection;
//! - an answer that says `Connection: close` ends the connection the same way;
//! - when a connection breaks, its unanswered requests go again on a fresh one; the first of
//!   them, whose answer was due, goes again once and then fails (502);
//! - the usual clocks run over the whole flight: the upstream must keep taking requests
//!   (`upstream_send_timeout`) and keep answering (`upstream_timeout`), else every request in
//!   flight fails (504).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;
use tokio_util::io::poll_read_buf;

use super::codec::{self, BodyFraming, RelayHead, ResponseHead};
use super::conn::{Conn, BODY_READ};
use super::io::UpstreamIo;
use super::wait::{ExchangeError, Wait};
use super::wire_body::WireBody;
use super::{UpstreamBody, UpstreamClient};
use crate::proxy::error::ProxyError;

/// A pipelined answer's body up to this size is read whole by the driver; a larger one streams
/// to its client over the connection it came on.
const WHOLE_BODY_LIMIT: u64 = 256 * 1024;

/// Requests handed to a worker's lane and not yet taken by its driver.
#[derive(Default)]
pub(super) struct Lane {
    /// Their encoded requests, back to back.
    outbox: Vec<u8>,
    /// Who waits for each, in the same order.
    waiting: VecDeque<Waiter>,
    /// Whether a driver runs; it ends when nothing is left to send or read.
    running: bool,
    /// The driver's waker, for new requests.
    waker: Option<Waker>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("waiting", &self.waiting.len())
            .field("running", &self.running)
            .finish()
    }
}

/// What a waiting request gets: its answer, and the relay list it lent for the answer's head.
type Answer = (Result<Response<UpstreamBody>, ProxyError>, RelayHead);

/// One request on its way: what reading its answer needs, and where the answer goes.
struct Waiter {
    /// Its method (a `HEAD` answer has no body).
    method: Method,
    /// Bytes of its encoded request.
    len: usize,
    /// Whether it goes again already, after a connection broke while its answer was due.
    replayed: bool,
    relay: RelayHead,
    fields: HeaderMap,
    reply: oneshot::Sender<Answer>,
}

impl Waiter {
    fn answer(mut self, answer: Result<Response<UpstreamBody>, ProxyError>) {
        if answer.is_err() {
            self.relay.release();
        }
        // A client that went away no longer wants its answer: dropping it is all there is to do.
        let _ = self.reply.send((answer, self.relay));
    }
}

/// The requests on the driver's connection: sent or being sent, not yet answered.
#[derive(Default)]
struct Flight {
    waiting: VecDeque<Waiter>,
    /// Their encoded requests, back to back, after `answered` bytes whose answers came.
    sent: Vec<u8>,
    /// How much of `sent` is written.
    written: usize,
    answered: usize,
    /// The first request's answer head, while its body is still arriving.
    head: Option<ResponseHead>,
}

impl Flight {
    /// The first request, answered: its bytes are done with.
    fn pop(&mut self) -> Waiter {
        let waiter = self.waiting.pop_front().expect("a request in flight");
        self.answered += waiter.len;
        waiter
    }

    /// Drops the answered requests' bytes.
    fn compact(&mut self) {
        if self.answered == 0 {
            return;
        }
        let answered = self.answered.min(self.sent.len());
        self.sent.drain(..answered);
        self.written = self.written.saturating_sub(answered);
        self.answered = 0;
    }
}

/// How a connection's flight ended.
enum Landed {
    /// Every request answered and none waiting: the connection is idle.
    Idle,
    /// The upstream closes after an answer: the requests behind it go on a fresh connection.
    Closing,
    /// The first request's answer streams from the connection itself (it is not read whole);
    /// the requests behind it go on a fresh connection.
    Streaming(ResponseHead),
    /// The connection failed: its unanswered requests go again once.
    Broken(ExchangeError),
    /// A clock ran out: every request in flight fails.
    TimedOut(ExchangeError),
}

impl UpstreamClient {
    /// Sends a body-less idempotent request written whole by `encode` on the worker's shared
    /// connection, behind the requests already there, and returns its answer. `fields` and
    /// `relay` are as for [`UpstreamClient::send_whole`].
    pub async fn send_pipelined(
        self: &Arc<Self>,
        method: &Method,
        fields: HeaderMap,
        relay: &mut RelayHead,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let (reply, answer) = oneshot::channel();
        let start_driver = {
            let mut lane = self.lane();
            let before = lane.outbox.len();
            encode(&mut lane.outbox);
            let len = lane.outbox.len() - before;
            lane.waiting.push_back(Waiter {
                method: method.clone(),
                len,
                replayed: false,
                relay: std::mem::take(relay),
                fields,
                reply,
            });
            if let Some(waker) = lane.waker.take() {
                waker.wake();
            }
            !std::mem::replace(&mut lane.running, true)
        };
        if start_driver {
            tokio::spawn(self.clone().drive());
        }
        match answer.await {
            Ok((answer, lent)) => {
                *relay = lent;
                answer
            }
            // Only when the worker's runtime shuts down under the driver.
            Err(_) => Err(ProxyError::UpstreamProtocol(
                "the shared upstream connection closed".into(),
            )),
        }
    }

    fn lane(&self) -> MutexGuard<'_, Lane> {
        // A lock poisoned by a panic elsewhere still guards a valid queue.
        self.lane.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lane's driver: takes a connection, sends and answers until nothing is left, and
    /// ends (the next request starts another).
    async fn drive(self: Arc<Self>) {
        let mut conn: Option<Box<Conn>> = None;
        let mut flight = Flight::default();
        loop {
            let mut on = match conn.take() {
                Some(on) => on,
                None => match self.connection().await {
                    Ok((fresh, _)) => fresh,
                    Err(e) => {
                        self.fail_all(&mut flight, &e);
                        if self.stop_if_idle() {
                            return;
                        }
                        continue;
                    }
                },
            };
            let landed = std::future::poll_fn(|cx| self.poll_flight(cx, &mut on, &mut flight));
            match landed.await {
                Landed::Idle => {
                    if self.stop_if_idle() {
                        if on.is_reusable() {
                            on.trim();
                            self.checkin(on);
                        }
                        return;
                    }
                    conn = Some(on);
                }
                Landed::Closing => self.send_again(&mut flight, None),
                Landed::Streaming(head) => {
                    let waiter = flight.pop();
                    on.reusable = false; // answers to the requests behind it may follow
                    let body = WireBody::new(head.framing, on, self.clone());
                    waiter.answer(Ok(response(head, UpstreamBody::Wire(body))));
                    self.send_again(&mut flight, None);
                }
                Landed::Broken(e) => self.send_again(&mut flight, Some(e)),
                Landed::TimedOut(e) => {
                    tracing::warn!(upstream = %self.authority, error = %e, in_flight = flight.waiting.len(),
                        "pipelined upstream connection stalled; its requests fail");
                    for waiter in flight.waiting.drain(..) {
                        waiter.answer(Err(failure(&e)));
                    }
                    flight = Flight::default();
                }
            }
        }
    }

    /// Whether the lane has nothing waiting; if so the driver stops (under the lane's lock, so
    /// a request handed over meanwhile starts a new one).
    fn stop_if_idle(&self) -> bool {
        let mut lane = self.lane();
        let idle = lane.waiting.is_empty();
        if idle {
            lane.running = false;
            lane.waker = None;
        }
        idle
    }

    /// Puts the flight's unanswered requests back at the front of the lane, for a fresh
    /// connection. After a failure (`broken`) the first of them, whose answer was due, fails
    /// instead if it went again once already.
    fn send_again(&self, flight: &mut Flight, broken: Option<ExchangeError>) {
        let mut outbox =
            Vec::with_capacity(flight.sent.len() - flight.answered.min(flight.sent.len()));
        let mut again = VecDeque::with_capacity(flight.waiting.len());
        let mut at = flight.answered;
        for (i, mut waiter) in flight.waiting.drain(..).enumerate() {
            let bytes = &flight.sent[at..at + waiter.len];
            at += waiter.len;
            // The break is the first request's: the ones behind it were not being answered yet.
            let blamed = i == 0 && broken.is_some();
            match &broken {
                Some(e) if blamed && waiter.replayed => waiter.answer(Err(failure(e))),
                _ => {
                    waiter.replayed |= blamed;
                    waiter.relay.release();
                    outbox.extend_from_slice(bytes);
                    again.push_back(waiter);
                }
            }
        }
        if let Some(e) = &broken {
            tracing::debug!(upstream = %self.authority, error = %e, again = again.len(),
                "pipelined upstream connection broke; its unanswered requests go again");
        }
        *flight = Flight::default();
        let mut lane = self.lane();
        outbox.extend_from_slice(&lane.outbox);
        lane.outbox = outbox;
        again.append(&mut lane.waiting);
        lane.waiting = again;
    }

    /// No connection could be had: every request in flight or waiting fails with `e`.
    fn fail_all(&self, flight: &mut Flight, e: &ProxyError) {
        let waiting = {
            let mut lane = self.lane();
            lane.outbox.clear();
            std::mem::take(&mut lane.waiting)
        };
        for waiter in flight.waiting.drain(..).chain(waiting) {
            waiter.answer(Err(copy_error(e)));
        }
        *flight = Flight::default();
    }

    /// Sends what the lane has, reads and hands out answers, until the flight lands.
    fn poll_flight(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        conn: &mut Conn,
        flight: &mut Flight,
    ) -> Poll<Landed> {
        loop {
            {
                let mut lane = self.lane();
                if !lane.waiting.is_empty() {
                    flight.compact();
                    flight.sent.extend_from_slice(&lane.outbox);
                    lane.outbox.clear();
                    let lane = &mut *lane;
                    flight.waiting.extend(lane.waiting.drain(..));
                }
                if flight.waiting.is_empty() {
                    return Poll::Ready(Landed::Idle);
                }
                if !lane.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    lane.waker = Some(cx.waker().clone());
                }
            }
            // A failed write may mean the upstream answered and closed: what it said is read
            // first, so the break is blamed on the request it stopped at.
            let write_failed = match poll_write_flight(cx, conn, flight) {
                Poll::Ready(Err(e)) => Some(e),
                _ => None,
            };
            match poll_answers(cx, conn, flight) {
                Poll::Ready(Some(landed)) => return Poll::Ready(landed),
                Poll::Ready(None) => continue, // all answered: take what came meanwhile
                Poll::Pending => {}
            }
            if let Some(e) = write_failed {
                return Poll::Ready(Landed::Broken(e));
            }
            let wait = match () {
                _ if flight.written < flight.sent.len() => Wait::Send,
                _ if flight.head.is_some() => Wait::Body,
                _ => Wait::Head,
            };
            let expired = ready!(conn.poll_clock(cx, wait, &self.timeouts));
            return Poll::Ready(Landed::TimedOut(expired));
        }
    }
}

/// Writes as much of the flight's requests as the connection takes.
fn poll_write_flight(
    cx: &mut Context<'_>,
    conn: &mut Conn,
    flight: &mut Flight,
) -> Poll<Result<(), ExchangeError>> {
    let before = flight.written;
    let wrote = conn
        .io
        .poll_write_from(cx, &flight.sent, &mut flight.written);
    // Writing moves the send clock on, not the answer's: requests joining behind a stalled
    // answer must not keep it from timing out.
    if flight.written != before && conn.armed == Some(Wait::Send) {
        conn.armed = None;
    }
    ready!(wrote)?;
    if matches!(conn.io, UpstreamIo::Tls(_)) {
        ready!(Pin::new(&mut conn.io).poll_flush(cx))?;
    }
    Poll::Ready(Ok(()))
}

/// Reads answers and hands each to its request, in order: `Ready(None)` once every request
/// in flight is answered, `Ready(Some)` when the connection's flight ends otherwise.
fn poll_answers(
    cx: &mut Context<'_>,
    conn: &mut Conn,
    flight: &mut Flight,
) -> Poll<Option<Landed>> {
    loop {
        while let Some(front) = flight.waiting.front_mut() {
            let head = match flight.head.take() {
                Some(head) => head,
                None => {
                    let parsed = codec::parse_response_relay(
                        &mut conn.read,
                        &front.method,
                        &mut front.fields,
                        &mut front.relay,
                    );
                    match parsed {
                        Err(e) => return Poll::Ready(Some(Landed::Broken(e.into()))),
                        Ok(None) => break,
                        Ok(Some(head)) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                            return Poll::Ready(Some(Landed::Broken(ExchangeError::UnaskedSwitch)))
                        }
                        Ok(Some(head)) if head.status.is_informational() => {
                            front.relay.release();
                            front.fields = head.headers;
                            continue;
                        }
                        Ok(Some(head)) => head,
                    }
                }
            };
            let body = match head.framing {
                BodyFraming::Empty => Bytes::new(),
                BodyFraming::Length(len) if len <= WHOLE_BODY_LIMIT => {
                    let len = len as usize;
                    if conn.read.len() < len {
                        conn.read.reserve(len - conn.read.len());
                        flight.head = Some(head);
                        break;
                    }
                    conn.read.split_to(len).freeze()
                }
                _ => return Poll::Ready(Some(Landed::Streaming(head))),
            };
            conn.armed = None;
            let keep_alive = head.keep_alive;
            let body = UpstreamBody::Wire(WireBody::whole(body));
            flight.pop().answer(Ok(response(head, body)));
            if !keep_alive {
                return Poll::Ready(Some(Landed::Closing));
            }
        }
        if flight.waiting.is_empty() {
            return Poll::Ready(None);
        }
        if conn.read.capacity() - conn.read.len() < 4096 {
            conn.read.reserve(BODY_READ);
        }
        match ready!(poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.read)) {
            Ok(0) if flight.head.is_some() => {
                return Poll::Ready(Some(Landed::Broken(ExchangeError::ClosedMidBody)))
            }
            Ok(0) => return Poll::Ready(Some(Landed::Broken(ExchangeError::ClosedBeforeAnswer))),
            Ok(_) => conn.armed = None,
            Err(e) => return Poll::Ready(Some(Landed::Broken(e.into()))),
        }
    }
}

fn response(head: ResponseHead, body: UpstreamBody) -> Response<UpstreamBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    resp
}

/// What a request in a failed flight is told (each gets its own).
fn failure(e: &ExchangeError) -> ProxyError {
    match e {
        ExchangeError::TimedOut => ProxyError::UpstreamTimeout,
        ExchangeError::SendTimedOut => ProxyError::UpstreamSendTimeout,
        other => ProxyError::UpstreamProtocol(other.to_string()),
    }
}

/// A connection failure, once for each request it fails.
fn copy_error(e: &ProxyError) -> ProxyError {
    match e {
        ProxyError::UpstreamConnectTimeout => ProxyError::UpstreamConnectTimeout,
        other => ProxyError::UpstreamUnreachable(other.to_string()),
    }
}
