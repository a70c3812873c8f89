//! Rests: an upstream account that answered 429 (or failed again and again) sits out for a
//! while, and jobs that wait only because their accounts rest must be dispatched again when the
//! first rest ends — no release will come to do it.
//!
//! That wake-up is a timer task, set where a rest starts ([`JobPool::set_health`]) and where a
//! job starts to wait, and set again by the timer itself while rests remain: all in async code.
//! A release, which runs in a permit's drop, never needs to set one (it adds neither a waiting
//! job nor a rest), so no drop spawns it.

use std::sync::Arc;
use std::time::Duration;

use super::health::{Health, State};
use super::scheduler::{UpstreamIdx, DISABLED};
use super::slots::{Inner, JobPool};

impl JobPool {
    /// Takes an upstream account out of rotation, or puts it back, as its health says.
    pub fn set_health(self: &Arc<Self>, upstream: UpstreamIdx, health: &Health) {
        let until = match health.state {
            State::Active => 0,
            State::Resting => health.until_ms,
            State::Disabled => DISABLED,
        };
        self.lock()
            .sched
            .set_health(upstream, until, health.probing);
        // An account back in rotation (or a probe allowed) may start a waiting job now.
        self.deliver_or_rest();
    }

    /// The upstream accounts of this pool named `name` (one at most).
    pub fn upstream_named(&self, name: &str) -> Option<UpstreamIdx> {
        self.accounts.iter().position(|a| a.name == name)
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
