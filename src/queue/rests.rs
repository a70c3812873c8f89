//! Rests: an upstream account that answered 429 sits out for a while, and jobs that wait only
//! because their accounts rest must be dispatched again when the first rest ends — no release
//! will come to do it.
//!
//! That wake-up is a timer task, set where a rest starts ([`JobPool::cool_down`]) and where a
//! job starts to wait, and set again by the timer itself while rests remain: all in async code.
//! A release, which runs in a permit's drop, never needs to set one (it adds neither a waiting
//! job nor a rest), so no drop spawns it.

use std::sync::Arc;
use std::time::Duration;

use super::scheduler::UpstreamIdx;
use super::slots::{Inner, JobPool};

impl JobPool {
    /// Keeps an upstream account out of rotation for `for_ms` (it answered 429).
    pub fn cool_down(self: &Arc<Self>, upstream: UpstreamIdx, for_ms: u64) {
        let now = self.now_ms();
        let mut inner = self.lock();
        inner.sched.cool_down(upstream, now + for_ms);
        self.wake_after_rests(&mut inner, now);
    }

    /// Hands freed capacity to waiting jobs, then sets the wake-up for jobs left waiting only
    /// because their accounts rest.
    pub(super) fn deliver_or_rest(self: &Arc<Self>) {
        self.deliver();
        let now = self.now_ms();
        self.wake_after_rests(&mut self.lock(), now);
    }

    /// When jobs wait only because upstream accounts rest, dispatch again when one ends.
    fn wake_after_rests(self: &Arc<Self>, inner: &mut Inner, now: u64) {
        let Some(at) = inner.sched.next_cooldown_end(now) else {
            return;
        };
        if inner.wake_at_ms.is_some_and(|w| w <= at && w > now) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        inner.wake_at_ms = Some(at);
        let pool = self.clone();
        let rested = self.clock.sleep(Duration::from_millis(at - now));
        handle.spawn(async move {
            rested.await;
            pool.lock().wake_at_ms = None;
            pool.deliver_or_rest();
        });
    }
}
