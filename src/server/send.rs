//! The send timeout (nginx's `send_timeout`): a client that stops reading a response must not
//! hold what the response holds — an upstream connection streaming the body, a job slot — for
//! as long as it likes. HTTP/2 flow control makes this cheap for a client: it never sends a
//! WINDOW_UPDATE and every stream it opened sits forever with its upstream connection.
//!
//! A response body reports to its [`SendClock`] when it hands a chunk over and when it is next
//! asked for one. A chunk handed over and not followed by a request for the next is waiting on
//! the client (hyper asks for the next chunk as soon as the previous one is written; it stops
//! asking while the socket or the stream's flow-control window is full). [`Stall`] turns the
//! clock's readings into "no progress for `send_timeout`". On HTTP/1.1 the connection's
//! watcher reads the connection's clock and closes the connection; on HTTP/2 each stream's
//! task is wrapped ([`StreamExecutor`]) and a stalled stream's task is dropped, which resets
//! the stream (RST_STREAM) and drops its response body with everything it holds.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::proxy::Proxy;

/// Whether a response is waiting on its client. Written by the response body, read by a
/// watcher; atomics only, no clock read on the body's path.
#[derive(Debug, Default)]
pub struct SendClock {
    /// 0: not waiting on the client; else the number of the chunk handed over last.
    handed: AtomicU32,
}

impl SendClock {
    /// The body handed its `n`th chunk (n > 0) to the connection.
    pub fn handed(&self, n: u32) {
        self.handed.store(n, Ordering::Relaxed);
    }

    /// The connection asked for the next chunk (or the body ended): the client took the last.
    pub fn asked(&self) {
        self.handed.store(0, Ordering::Relaxed);
    }

    /// The chunk the response is waiting on the client to take, if any.
    pub fn waiting(&self) -> Option<u32> {
        match self.handed.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }
}

/// Tracks one clock's readings over time: how long the same chunk has been waiting.  [pure]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stall {
    /// The chunk seen waiting, and since when.
    seen: Option<(u32, Instant)>,
}

impl Stall {
    /// Takes a reading at `now`; returns how long the same chunk has been waiting, or `None`
    /// when nothing waits.
    pub fn observe(&mut self, waiting: Option<u32>, now: Instant) -> Option<Duration> {
        match (waiting, self.seen) {
            (None, _) => {
                self.seen = None;
                None
            }
            (Some(n), Some((seen, since))) if n == seen => Some(now - since),
            (Some(n), _) => {
                self.seen = Some((n, now));
                Some(Duration::ZERO)
            }
        }
    }
}

tokio::task_local! {
    /// The send clock of the HTTP/2 stream whose task is running.
    static STREAM_CLOCK: Arc<SendClock>;
}

/// The send clock of the HTTP/2 stream being served, when called from one's task.
pub fn stream_clock() -> Option<Arc<SendClock>> {
    STREAM_CLOCK.try_with(Arc::clone).ok()
}

/// Spawns each HTTP/2 stream of a connection as its own task (as hyper's `TokioExecutor`
/// does), with a send clock of its own and the send timeout applied to it.
#[derive(Clone)]
pub struct StreamExecutor {
    pub send_timeout: Duration,
    pub proxy: Arc<Proxy>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let clock = Arc::new(SendClock::default());
        let watched = Watched {
            stream: Box::pin(stream),
            clock: clock.clone(),
            timeout: self.send_timeout,
            stall: Stall::default(),
            timer: None,
            proxy: self.proxy.clone(),
        };
        tokio::spawn(STREAM_CLOCK.scope(clock, watched));
    }
}

/// A stream's task under the send timeout: ends (dropping the stream) when its response has
/// waited on the client for the timeout.
struct Watched<F> {
    stream: Pin<Box<F>>,
    clock: Arc<SendClock>,
    timeout: Duration,
    stall: Stall,
    /// Armed only while a chunk waits on the client.
    timer: Option<Pin<Box<Sleep>>>,
    proxy: Arc<Proxy>,
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.stream.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let now = Instant::now();
        let Some(waited) = this.stall.observe(this.clock.waiting(), now) else {
            this.timer = None;
            return Poll::Pending;
        };
        if let Some(left) = this.timeout.checked_sub(waited).filter(|l| !l.is_zero()) {
            let deadline = now + left;
            match &mut this.timer {
                Some(timer) if timer.deadline() == deadline => {}
                Some(timer) => timer.as_mut().reset(deadline),
                None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            let timer = this.timer.as_mut().expect("armed above");
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired: the stream is polled again at once, and now `waited` is over.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        tracing::info!(
            timeout = ?this.timeout,
            "client stopped reading an HTTP/2 response; stream reset after send_timeout"
        );
        this.proxy.metrics().listener.client_timeout("send");
        Poll::Ready(()) // drops the stream: RST_STREAM, and its body with what it holds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_chunk_waiting_accumulates_and_a_new_one_starts_over() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut stall = Stall::default();
        assert_eq!(stall.observe(None, t0), None);
        assert_eq!(stall.observe(Some(1), t0), Some(s(0)));
        assert_eq!(stall.observe(Some(1), t0 + s(30)), Some(s(30)));
        assert_eq!(stall.observe(Some(2), t0 + s(31)), Some(s(0)), "progress");
        assert_eq!(stall.observe(Some(2), t0 + s(91)), Some(s(60)));
        assert_eq!(stall.observe(None, t0 + s(92)), None, "the client took it");
        assert_eq!(stall.observe(Some(2), t0 + s(93)), Some(s(0)));
    }

    #[test]
    fn a_clock_waits_from_a_handed_chunk_until_the_next_is_asked_for() {
        let clock = SendClock::default();
        assert_eq!(clock.waiting(), None);
        clock.handed(7);
        assert_eq!(clock.waiting(), Some(7));
        clock.asked();
        assert_eq!(clock.waiting(), None);
    }
}
