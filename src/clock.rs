//! The one place floodgate reads the wall clock.
//!
//! Every limit decision takes "now" as a plain number of milliseconds since the Unix epoch, read
//! from a [`Clock`]. The job queues wait on the same clock: how long a job may wait, how long an
//! upstream account rests after a 429, how long a task holds its slot. Production uses
//! [`SystemClock`]; tests use [`ManualClock`] and move time by hand, so minute windows, the
//! 00:00 UTC day reset and queue timeouts are tested without sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Milliseconds in one UTC day.
pub const DAY_MS: u64 = 86_400_000;

/// A wait on a [`Clock`]: resolves once the time asked for has passed on it.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of wall-clock time in milliseconds since the Unix epoch (UTC).
pub trait Clock: std::fmt::Debug + Send + Sync + 'static {
    fn now_ms(&self) -> u64;

    /// Resolves once `period` has passed on this clock. The real clock waits on the runtime's
    /// monotonic timer, so a step of the wall clock neither cuts nor stretches the wait.
    fn sleep(&self, period: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(period))
    }
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned read of wall time
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; clones share the same time. Waits on it end when a
/// move takes the time past them.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    inner: Arc<Manual>,
}

#[derive(Debug, Default)]
struct Manual {
    now: AtomicU64,
    moved: Notify,
}

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        let clock = Self::default();
        clock.inner.now.store(now_ms, Ordering::SeqCst);
        clock
    }

    pub fn set_ms(&self, now_ms: u64) {
        self.inner.now.store(now_ms, Ordering::SeqCst);
        self.inner.moved.notify_waiters();
    }

    pub fn advance_ms(&self, ms: u64) {
        self.inner.now.fetch_add(ms, Ordering::SeqCst);
        self.inner.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.inner.now.load(Ordering::SeqCst)
    }

    fn sleep(&self, period: Duration) -> Sleep {
        let inner = self.inner.clone();
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        let until = inner.now.load(Ordering::SeqCst).saturating_add(ms);
        Box::pin(async move {
            loop {
                let moved = inner.moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable(); // registered before the check: no move is missed
                if inner.now.load(Ordering::SeqCst) >= until {
                    return;
                }
                moved.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_passes_it_and_not_before() {
        let clock = ManualClock::new(1_000);
        let mut sleep = tokio::spawn(clock.sleep(Duration::from_millis(500)));
        clock.advance_ms(499);
        tokio::task::yield_now().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut sleep)
                .await
                .is_err(),
            "1 ms short"
        );
        clock.advance_ms(1);
        tokio::time::timeout(Duration::from_secs(5), sleep)
            .await
            .expect("ends once the time is reached")
            .unwrap();
    }

    #[tokio::test]
    async fn a_manual_sleep_of_zero_ends_at_once() {
        let clock = ManualClock::new(7);
        tokio::time::timeout(Duration::from_secs(5), clock.sleep(Duration::ZERO))
            .await
            .expect("nothing to wait for");
    }
}
