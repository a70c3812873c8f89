//! Waiting for a slot: a job that finds none parks in its tenant's queue on a oneshot channel
//! until the pool grants it one ([`super::slots`]), its maximum wait runs out, or its client
//! leaves — then it is out of the queue at once, and a slot granted in that same instant is
//! handed straight back.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::job::{JobTicket, QueueError};
use super::scheduler::WaiterId;
use super::slots::{Grant, JobPool, SlotPermit, StartOnGrant, Waiter};
use crate::identity::AccountId;

/// How a job got its slot.
#[derive(Debug)]
pub enum Granted {
    /// The job holds this permit and goes on itself.
    Permit(SlotPermit),
    /// Its [`StartOnGrant`] hook took the permit and started the job where the slot freed.
    Started,
}

impl JobPool {
    /// This replica's slot: at once, or after waiting in the tenant's queue.
    pub(super) async fn acquire_local(
        self: &Arc<Self>,
        ticket: &JobTicket,
        queued_at: Instant,
        on_wait: impl FnOnce() -> Option<StartOnGrant>,
    ) -> Result<Granted, QueueError> {
        let (id, rx) = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(QueueError::Closed);
            }
            let now = self.now_ms();
            if let Some(up) =
                inner
                    .sched
                    .try_start(ticket.tenant, ticket.concurrency, ticket.affinity, now)
            {
                drop(inner);
                return Ok(Granted::Permit(self.permit_at_once(ticket, up)));
            }
            let id = inner.next_id;
            inner.next_id += 1;
            let enqueued = inner.sched.enqueue(
                ticket.tenant,
                ticket.concurrency,
                id,
                ticket.affinity,
                ticket.max_queue,
                ticket.front,
            );
            let position_at_entry = match enqueued {
                Ok(position) => position,
                Err(full) => {
                    let retry_after_secs = inner
                        .durations
                        .retry_after_secs(full.waiting + 1, ticket.concurrency);
                    return Err(QueueError::Full { retry_after_secs });
                }
            };
            let (tx, rx) = oneshot::channel();
            ticket.tier_gauges.queued.inc();
            self.queued_gauge.inc();
            let waiter = Waiter {
                tx,
                on_grant: on_wait(),
                queued_at,
                position_at_entry,
                gauges: ticket.tier_gauges.clone(),
            };
            inner.waiters.insert(id, waiter);
            (id, rx)
        };
        let mut wait = Waiting {
            pool: self.clone(),
            tenant: ticket.tenant,
            id,
            rx: Some(rx),
            timed_out: false,
        };
        self.deliver_or_rest(); // capacity may have freed between try_start and enqueue
        wait.until(ticket).await
    }
}

/// A job parked in a queue. Dropping it (client gone) takes it out of the queue at once; a
/// slot granted in the same instant is handed straight back.
struct Waiting {
    pool: Arc<JobPool>,
    tenant: AccountId,
    id: WaiterId,
    /// `None` once the wait is over: granted, or out of the queue.
    rx: Option<oneshot::Receiver<Grant>>,
    timed_out: bool,
}

impl Waiting {
    async fn until(&mut self, ticket: &JobTicket) -> Result<Granted, QueueError> {
        let rx = self.rx.as_mut().expect("waiting once");
        let out_of_time = self.pool.clock.sleep(ticket.max_wait);
        let ended = tokio::select! {
            biased;
            grant = rx => Ok(grant),
            () = out_of_time => Err(()),
        };
        let grant = match ended {
            Ok(grant) => grant,
            // Out of time, unless a slot was granted meanwhile: then its grant is on its way.
            Err(()) => {
                let ahead = self.pool.lock().sched.position(self.tenant, self.id);
                let ahead = ahead.unwrap_or(1);
                self.timed_out = true;
                if self.leave() {
                    let durations = self.pool.lock().durations;
                    return Err(QueueError::TimedOut {
                        retry_after_secs: durations.retry_after_secs(ahead, ticket.concurrency),
                    });
                }
                self.timed_out = false;
                self.rx.as_mut().expect("still waiting").await
            }
        };
        self.rx = None;
        match grant {
            Ok(Grant::Permit(permit)) => Ok(Granted::Permit(permit)),
            Ok(Grant::Started) => Ok(Granted::Started),
            Err(_) => Err(QueueError::Closed),
        }
    }

    /// Takes the job out of its queue; false when it was already granted a slot.
    fn leave(&mut self) -> bool {
        let waiter = {
            let mut inner = self.pool.lock();
            if !inner.sched.remove(self.tenant, self.id) {
                return false;
            }
            inner.waiters.remove(&self.id)
        };
        if let Some(waiter) = waiter {
            waiter.gauges.queued.dec();
            self.pool.queued_gauge.dec();
            if !self.timed_out {
                waiter.gauges.cancelled.inc();
            }
        }
        self.rx = None;
        true
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.rx.is_none() {
            return;
        }
        // Still queued: leave. Already granted: a permit sent to us is dropped with `rx`,
        // outside the lock, which frees its slot; a hook that took the job frees it when done.
        self.leave();
        self.rx = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::queue::testing::{one_slot_pool, ticket, until_waiting};

    #[tokio::test]
    async fn a_job_granted_before_its_wait_ran_out_is_not_timed_out() {
        let pool = one_slot_pool();
        let t = ticket(Duration::from_millis(20));
        let held = pool.acquire(&t).await.unwrap();
        let (p, t2) = (pool.clone(), t.clone());
        let waiter = tokio::spawn(async move {
            let hook = move || -> Option<StartOnGrant> {
                Some(Box::new(move |permit, notice| {
                    // the started job outlives the queue's maximum wait
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(80)).await;
                        drop((permit, notice));
                    });
                }))
            };
            p.acquire_starting(&t2, hook).await
        });
        until_waiting(&pool).await;
        drop(held);
        let outcome = waiter.await.unwrap();
        assert!(matches!(outcome, Ok(Granted::Started)), "{outcome:?}");
        assert_eq!(t.tier_gauges.cancelled.get(), 0);
    }

    #[tokio::test]
    async fn a_job_that_waits_too_long_leaves_the_queue_and_its_gauges() {
        let pool = one_slot_pool();
        let t = ticket(Duration::from_millis(20));
        let _held = pool.acquire(&t).await.unwrap();
        let outcome = pool.acquire(&t).await;
        assert!(matches!(outcome, Err(QueueError::TimedOut { .. })));
        assert_eq!(pool.waiting(), 0);
        assert_eq!(t.tier_gauges.queued.get(), 0);
        assert_eq!(pool.queued_gauge.get(), 0);
        assert_eq!(t.tier_gauges.cancelled.get(), 0, "timed out, not cancelled");
    }

    #[tokio::test]
    async fn a_job_whose_client_leaves_is_cancelled_and_uncounted() {
        let pool = one_slot_pool();
        let t = ticket(Duration::from_secs(5));
        let held = pool.acquire(&t).await.unwrap();
        let (p, t2) = (pool.clone(), t.clone());
        let waiter = tokio::spawn(async move { p.acquire(&t2).await.map(|_| ()) });
        until_waiting(&pool).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(pool.waiting(), 0);
        assert_eq!(t.tier_gauges.queued.get(), 0);
        assert_eq!(pool.queued_gauge.get(), 0);
        assert_eq!(t.tier_gauges.cancelled.get(), 1);
        drop(held);
        assert_eq!(
            pool.upstream_in_flight(),
            vec![0],
            "nobody took the freed slot"
        );
    }
}
