//! One client connection's clocks: how long it may take to send a request head, and how long it
//! may sit idle between requests.
//!
//! hyper's own `header_read_timeout` starts as soon as a connection waits for a head, so an idle
//! keep-alive connection would be closed at the header timeout too; floodgate wants the two apart
//! (a head in 10 s, but a keep-alive connection kept for 60 s). So the connection reports what it
//! is doing — bytes arriving ([`ActivityIo`]), a request started, its response body finished
//! ([`Tracked`]) — and [`Activity::verdict`] turns that into "wait until" or "close now".
//!
//! A new connection starts in the head phase: a client that connects and sends nothing is a
//! slow head, not an idle keep-alive connection.
//!
//! The same reads feed [`FramingScan`], which notes a head framed two ways (see framing.rs).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::discard::Discard;
use super::framing::FramingScan;
use super::read_tap::{OnRead, ReadTap};
use super::send::SendClock;
use crate::access_log::Pending;

/// The connection timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a head (or the accept) to the end of the head.
    pub header: Duration,
    /// From the end of a response to the first byte of the next request.
    pub idle: Duration,
    /// Longest time a response may wait on the client to take its next bytes ([`super::send`]).
    pub send: Duration,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Header,
    Idle,
    /// The client stopped reading a response.
    Send,
}

impl Expiry {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Expiry::Header => "header",
            Expiry::Idle => "idle",
            Expiry::Send => "send",
        }
    }
}

/// What a connection is doing, in milliseconds since it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A request is being served (its response body not yet finished).
    Busy,
    /// Receiving a request head since this moment.
    Head { since_ms: u64 },
    /// Between requests since this moment.
    Idle { since_ms: u64 },
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockVerdict {
    /// Look again at this moment (ms since accept).
    CheckAt(u64),
    Close(Expiry),
}

/// Decides whether a connection in `phase` has run out of time at `now_ms`.  [pure]
///
/// The next check is never further away than the shorter timeout, because the phase can change
/// between checks without the watcher being told (a busy connection goes idle, an idle one
/// starts a head) and the new phase's deadline must not be missed.
pub fn verdict(phase: Phase, now_ms: u64, t: Timeouts) -> ClockVerdict {
    let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
    let period = ms(t.header.min(t.idle).min(t.send / 4)).max(1);
    let deadline = match phase {
        Phase::Busy => None,
        Phase::Head { since_ms } => Some((since_ms.saturating_add(ms(t.header)), Expiry::Header)),
        Phase::Idle { since_ms } => Some((since_ms.saturating_add(ms(t.idle)), Expiry::Idle)),
    };
    match deadline {
        Some((at, why)) if now_ms >= at => ClockVerdict::Close(why),
        Some((at, _)) => ClockVerdict::CheckAt(at.min(now_ms.saturating_add(period))),
        None => ClockVerdict::CheckAt(now_ms.saturating_add(period)),
    }
}

const NONE: u64 = u64::MAX;

/// The shared record of one connection's activity (atomics: the I/O wrapper, the service and
/// the response body all report into it).
#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    /// Requests whose response body is not finished.
    active: AtomicU32,
    /// When the current head began (ms), or `NONE`.
    head_since: AtomicU64,
    /// When the connection last went idle (ms).
    idle_since: AtomicU64,
    /// Requests started on this connection.
    started: AtomicU64,
    /// The head being read declared its body two ways.
    ambiguous: AtomicBool,
    /// A response ended and its last bytes may not be flushed yet ([`super::canned`]).
    answered: AtomicBool,
    /// The connection is switching to a tunnel: its socket carries the tunnel's bytes.
    switched: AtomicBool,
    /// Whether the response being written (HTTP/1.1) waits on the client to read.
    pub send: SendClock,
}

impl Activity {
    /// A connection accepted now: in its head phase from the start.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            accepted: Instant::now(),
            active: AtomicU32::new(0),
            head_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            started: AtomicU64::new(0),
            ambiguous: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            switched: AtomicBool::new(false),
            send: SendClock::default(),
        })
    }

    /// Milliseconds since the accept.
    pub fn now_ms(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    /// The instant `ms` after the accept.
    pub fn instant_at(&self, ms: u64) -> Instant {
        self.accepted + Duration::from_millis(ms)
    }

    pub fn phase(&self) -> Phase {
        if self.active.load(Ordering::Acquire) > 0 {
            return Phase::Busy;
        }
        match self.head_since.load(Ordering::Acquire) {
            NONE => Phase::Idle {
                since_ms: self.idle_since.load(Ordering::Acquire),
            },
            since_ms => Phase::Head { since_ms },
        }
    }

    pub fn verdict(&self, t: Timeouts) -> ClockVerdict {
        verdict(self.phase(), self.now_ms(), t)
    }

    /// hyper parsed a request head and called the service: busy until the guard drops.
    pub fn request_started(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Release);
        ActiveGuard {
            activity: self.clone(),
        }
    }

    /// Whether the head just parsed was framed two ways; clears the mark.
    pub fn take_ambiguous(&self) -> bool {
        self.ambiguous.swap(false, Ordering::AcqRel)
    }

    /// Whether a write now can only be hyper's own answer to a head it could not parse: no
    /// request in progress, every response's bytes flushed, no switch to a tunnel.
    pub fn may_be_hyper_refusal(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
            && !self.answered.load(Ordering::Acquire)
            && !self.switched.load(Ordering::Acquire)
    }

    /// Everything written so far is flushed.
    pub fn answer_flushed(&self) {
        if self.answered.load(Ordering::Relaxed) {
            self.answered.store(false, Ordering::Release);
        }
    }

    /// Bytes arrived from the client: on a connection that was idle, a head has begun.
    fn bytes_read(&self) {
        if self.active.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == NONE
        {
            self.head_since.store(self.now_ms(), Ordering::Release);
        }
    }
}

/// Marks a request as in progress; dropped when its response body is finished or abandoned.
#[derive(Debug)]
pub struct ActiveGuard {
    activity: Arc<Activity>,
}

impl ActiveGuard {
    /// This request's answer switches the connection to a tunnel (before the `101` is
    /// written, so before any of the tunnel's bytes).
    pub fn switching_protocols(&self) {
        self.activity.switched.store(true, Ordering::Release);
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let a = &self.activity;
        a.idle_since.store(a.now_ms(), Ordering::Release);
        // Before `active` falls: hyper may still write this response's last bytes.
        a.answered.store(true, Ordering::Release);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the client socket's reads tell: bytes arriving (to its [`Activity`]) and the framing
/// of each request head. The socket is a [`ReadTap`] with this observer.
#[derive(Debug)]
pub struct HeadWatch {
    activity: Arc<Activity>,
    scan: FramingScan,
    /// A head is being scanned; false from its end until its request has finished.
    scanning: bool,
    /// Requests started when the last scan ended.
    scanned_at: u64,
    /// The fast path reads the heads (and judges their framing itself): no scan until it
    /// hands the connection to hyper ([`HeadWatch::hand_to_hyper`]).
    fast: bool,
}

/// The client socket, reporting every read to its [`Activity`] and scanning request heads.
pub type ActivityIo<T> = ReadTap<T, HeadWatch>;

impl HeadWatch {
    pub fn new(activity: Arc<Activity>) -> Self {
        Self {
            activity,
            scan: FramingScan::default(),
            scanning: true,
            scanned_at: 0,
            fast: false,
        }
    }

    /// For a connection the fast path serves first: reads report to the clocks only.
    pub fn on_fast_path(mut self) -> Self {
        self.fast = true;
        self
    }

    /// The fast path hands the connection to hyper with `unread` (bytes read, not served) to
    /// be parsed again: they are scanned now, as if just read.
    pub fn hand_to_hyper(&mut self, unread: &[u8]) {
        self.fast = false;
        self.scan_head(unread);
    }

    /// Bytes read while no request is in progress belong to a head (a body is read only after
    /// its head was parsed). Heads pipelined behind a busy request are left to hyper's rules.
    fn scan_head(&mut self, bytes: &[u8]) {
        let a = &self.activity;
        if !self.scanning
            && a.active.load(Ordering::Acquire) == 0
            && a.started.load(Ordering::Acquire) > self.scanned_at
        {
            self.scan.reset();
            self.scanning = true;
        }
        if !self.scanning {
            return;
        }
        if let Some((_, framing)) = self.scan.feed(bytes) {
            self.scanning = false;
            self.scanned_at = a.started.load(Ordering::Acquire);
            if framing.is_ambiguous() {
                a.ambiguous.store(true, Ordering::Release);
            }
        }
    }
}

impl OnRead for HeadWatch {
    fn on_read(&mut self, bytes: &[u8]) {
        self.activity.bytes_read();
        if !self.fast {
            self.scan_head(bytes);
        }
    }
}

/// A response body that keeps its request marked busy until the body is finished, reports its
/// progress to the send clock, reads the request's unread body to its end before it ends
/// (HTTP/2, [`Discard`]), and with the access log on, counts its bytes and writes the request's
/// line when it ends.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    /// The access log's record, when the log is on; written on drop.
    logged: Option<Box<Pending>>,
    bytes: u64,
    /// Chunks handed to the connection so far; the last one waits on the client until the
    /// next poll.
    chunks: u32,
    waiting: bool,
    /// The HTTP/2 stream's send clock; HTTP/1.1 responses use their connection's.
    stream_clock: Option<Arc<SendClock>>,
    /// The request's unread body, read to its end after this body's last frame (HTTP/2).
    discard: Option<Box<Discard>>,
    inner_ended: bool,
    guard: ActiveGuard,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, guard: ActiveGuard, logged: Option<Pending>) -> Self {
        Self {
            inner,
            logged: logged.map(Box::new),
            bytes: 0,
            chunks: 0,
            waiting: false,
            stream_clock: None,
            discard: None,
            inner_ended: false,
            guard,
        }
    }

    /// An HTTP/2 stream's response: progress goes to the stream's clock, and `discard` (the
    /// request's unread body) is read to its end before the stream ends.
    pub fn on_stream(mut self, clock: Option<Arc<SendClock>>, discard: Option<Discard>) -> Self {
        self.stream_clock = clock;
        self.discard = discard.map(Box::new);
        self
    }

    fn clock(&self) -> &SendClock {
        match &self.stream_clock {
            Some(clock) => clock,
            None => &self.guard.activity.send,
        }
    }

    /// The connection asks for the next frame: the client took the last one.
    fn asked(&mut self) {
        if self.waiting {
            self.waiting = false;
            self.clock().asked();
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.asked();
        if let Some(pending) = self.logged.take() {
            pending.finish(self.bytes);
        }
    }
}

/// What polling a body of `B` gives.
type Polled<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

impl<B: Body + Unpin> Tracked<B> {
    /// The inner body's next frame, reported to the send clock and the access log.
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Polled<B> {
        self.asked();
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                if self.logged.is_some() {
                    self.bytes += data.remaining() as u64;
                }
                self.chunks = self.chunks.wrapping_add(1).max(1);
                self.waiting = true;
                self.clock().handed(self.chunks);
            }
        }
        polled
    }

    /// The inner body to its end, then the request's unread body to its end.
    fn poll_then_discard(&mut self, cx: &mut Context<'_>) -> Polled<B> {
        if !self.inner_ended {
            match self.poll_inner(cx) {
                Poll::Ready(None) => self.inner_ended = true,
                other => return other,
            }
        }
        if let Some(discard) = &mut self.discard {
            std::task::ready!(discard.poll_done(cx));
            self.discard = None;
        }
        Poll::Ready(None)
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        match this.discard.is_some() {
            false => this.poll_inner(cx),
            true => this.poll_then_discard(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.discard.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        send: Duration::from_secs(60),
    };

    #[test]
    fn a_new_connection_must_send_its_head_within_the_header_timeout() {
        let fresh = Phase::Head { since_ms: 0 };
        assert_eq!(verdict(fresh, 0, T), ClockVerdict::CheckAt(10_000));
        assert_eq!(verdict(fresh, 9_999, T), ClockVerdict::CheckAt(10_000));
        assert_eq!(
            verdict(fresh, 10_000, T),
            ClockVerdict::Close(Expiry::Header)
        );
    }

    #[test]
    fn an_idle_connection_gets_the_idle_timeout_but_is_checked_at_the_shorter_period() {
        let idle = Phase::Idle { since_ms: 5_000 };
        assert_eq!(verdict(idle, 5_000, T), ClockVerdict::CheckAt(15_000));
        assert_eq!(verdict(idle, 60_000, T), ClockVerdict::CheckAt(65_000));
        assert_eq!(verdict(idle, 65_000, T), ClockVerdict::Close(Expiry::Idle));
    }

    #[test]
    fn a_busy_connection_is_never_closed_by_these_clocks() {
        assert_eq!(
            verdict(Phase::Busy, 1_000_000, T),
            ClockVerdict::CheckAt(1_010_000)
        );
    }

    #[test]
    fn a_head_started_while_idle_runs_on_the_header_clock() {
        let head = Phase::Head { since_ms: 30_000 };
        assert_eq!(verdict(head, 35_000, T), ClockVerdict::CheckAt(40_000));
        assert_eq!(
            verdict(head, 40_000, T),
            ClockVerdict::Close(Expiry::Header)
        );
    }

    #[tokio::test]
    async fn activity_moves_between_phases() {
        let a = Activity::new();
        assert_eq!(a.phase(), Phase::Head { since_ms: 0 });
        let guard = a.request_started();
        assert_eq!(a.phase(), Phase::Busy);
        a.bytes_read(); // request body bytes: still busy
        assert_eq!(a.phase(), Phase::Busy);
        drop(guard);
        assert!(matches!(a.phase(), Phase::Idle { .. }));
        a.bytes_read();
        assert!(matches!(a.phase(), Phase::Head { .. }));
    }
}
