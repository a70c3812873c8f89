//! The async edge of a job pool, its front door: a job gets a slot at once or waits for one in
//! its tenant's queue ([`super::waiting`]), completes it with shared leases when slots are shared
//! with other replicas ([`super::shared_slots`]), and holds it as an RAII [`SlotPermit`]
//! released on drop — response done, upstream error, client gone or timeout alike
//! ([`super::slots`]).
//!
//! A waiting job may leave a [`StartOnGrant`] hook: the code that grants its slot (usually the
//! job that just finished, on whatever worker thread it ran) runs the hook at once, so the
//! queued job's forward starts there instead of one thread wake-up later on the waiter's own
//! worker. A parked worker thread takes tens of microseconds to wake on a VM; the forward
//! should not wait for that.

use std::sync::Arc;

use tokio::time::Instant;

use super::job::{JobTicket, QueueError};
use super::leases::{self, SlotLeases};
use super::scheduler::UpstreamIdx;
use super::shared_slots::Unleased;
use super::slots::{JobPool, SlotPermit, StartOnGrant};
use super::waiting::Granted;

impl JobPool {
    /// Gets a slot now, or waits in the tenant's queue for one (FIFO), up to `max_wait`.
    pub async fn acquire(self: &Arc<Self>, ticket: &JobTicket) -> Result<SlotPermit, QueueError> {
        match self.acquire_starting(ticket, || None).await? {
            Granted::Permit(permit) => Ok(permit),
            Granted::Started => Err(QueueError::Closed), // no hook was given
        }
    }

    /// As [`acquire`](Self::acquire); when the job has to wait, `on_wait` is asked (once) for a
    /// hook to run where its slot is granted. Not used when slots are shared with other
    /// replicas: there the slot is only whole once its leases are held.
    pub async fn acquire_starting(
        self: &Arc<Self>,
        ticket: &JobTicket,
        on_wait: impl FnOnce() -> Option<StartOnGrant>,
    ) -> Result<Granted, QueueError> {
        let queued_at = Instant::now();
        let Some(backend) = self.shared() else {
            return self.acquire_local(ticket, queued_at, on_wait).await;
        };
        // Boxed: only replicas sharing slots pay for this state in every waiting job.
        Box::pin(self.acquire_shared(backend, ticket, queued_at))
            .await
            .map(Granted::Permit)
    }

    /// A local slot completed with its shared leases. A slot on an upstream account that
    /// another replica took out of rotation goes back, and the job asks again at the front of
    /// its queue, for another account — within the same maximum wait.
    async fn acquire_shared(
        self: &Arc<Self>,
        backend: &Arc<dyn SlotLeases>,
        ticket: &JobTicket,
        queued_at: Instant,
    ) -> Result<SlotPermit, QueueError> {
        let mut ticket = std::borrow::Cow::Borrowed(ticket);
        loop {
            let permit = match self.acquire_local(&ticket, queued_at, || None).await? {
                Granted::Permit(permit) => permit,
                Granted::Started => return Err(QueueError::Closed), // no hook was given
            };
            match self.hold_leases(backend, permit, &ticket, queued_at).await {
                Ok(permit) => return Ok(permit),
                Err(Unleased::TimedOut(e)) => return Err(e),
                Err(Unleased::Out(upstream, health)) => {
                    self.set_health(upstream, &health);
                    ticket.to_mut().front = true;
                }
            }
        }
    }

    /// Shadow mode: a slot now, past the caps if need be; true when the job would have waited.
    pub fn start_now(
        self: &Arc<Self>,
        ticket: &JobTicket,
    ) -> Result<(SlotPermit, bool), QueueError> {
        let (upstream, would_wait) = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(QueueError::Closed);
            }
            let now = self.now_ms();
            inner
                .sched
                .force_start(ticket.tenant, ticket.concurrency, ticket.affinity, now)
        };
        Ok((self.permit_at_once(ticket, upstream), would_wait))
    }

    /// A slot for a task that was running before a restart, on the upstream account it runs
    /// on, whatever the caps say (it runs upstream already: the slot only counts it), with the
    /// shared leases it held taken over when they are still alive.
    pub async fn resume(
        self: &Arc<Self>,
        ticket: &JobTicket,
        upstream: UpstreamIdx,
        held: &[(String, String)],
    ) -> SlotPermit {
        let upstream = {
            let mut inner = self.lock();
            let now = self.now_ms();
            let (tenant, cap) = (ticket.tenant, ticket.concurrency);
            inner.sched.force_start(tenant, cap, Some(upstream), now).0
        };
        let mut permit = self.permit_at_once(ticket, upstream);
        if let Some(backend) = self.shared() {
            for (key, lease) in held {
                match leases::resume(backend, key, lease).await {
                    Some(guard) => permit.leases.push(guard),
                    None => tracing::warn!(%key, "a resumed task's slot lease had expired"),
                }
            }
        }
        permit
    }

    /// Refuses new jobs and answers every waiting one with [`QueueError::Closed`].
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.waiters.clear(); // dropping the senders wakes every waiter with Closed
    }
}
