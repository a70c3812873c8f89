//! The async edge of a job pool: waiting jobs park on a oneshot channel until the scheduler
//! grants them a slot, and every slot is an RAII [`SlotPermit`] released on drop — response
//! done, upstream error, client gone or timeout alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use prometheus::IntGauge;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::leases::{self, LeaseGuard, SlotLeases};
use super::scheduler::{Scheduler, UpstreamIdx, WaiterId};
use crate::identity::AccountId;

/// An upstream account: the credential floodgate sets for jobs it runs, and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAccount {
    pub name: String,
    /// Header set (or replaced) on requests this account runs.
    pub credential: Option<(HeaderName, HeaderValue)>,
    /// `host:port` when this account has its own base URL.
    pub authority: Option<String>,
    /// Concurrent jobs it allows; `u32::MAX` for the plain upstream.
    pub concurrency: u32,
}

/// Why a job did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("job queue full")]
    Full { retry_after_secs: u64 },
    #[error("job waited too long in the queue")]
    TimedOut { retry_after_secs: u64 },
    #[error("floodgate is shutting down")]
    Closed,
}

/// What a job asks of its pool.
#[derive(Debug, Clone)]
pub struct JobTicket {
    pub tenant: AccountId,
    /// The tenant's concurrency cap.
    pub concurrency: u32,
    pub max_queue: usize,
    pub max_wait: Duration,
    /// A follow-up job must run on the upstream account of its original task.
    pub affinity: Option<UpstreamIdx>,
    /// Retried jobs (after an upstream 429) go to the front of the queue.
    pub front: bool,
    /// Gauges of the tenant's tier: jobs waiting and in flight.
    pub tier_gauges: TierGauges,
}

/// Per-tier gauges a job moves while it waits and runs.
#[derive(Debug, Clone)]
pub struct TierGauges {
    pub queued: IntGauge,
    pub in_flight: IntGauge,
    /// Jobs whose client left while they waited.
    pub cancelled: prometheus::IntCounter,
}

#[derive(Debug)]
struct Inner {
    sched: Scheduler,
    waiters: HashMap<WaiterId, oneshot::Sender<SlotPermit>>,
    next_id: WaiterId,
    closed: bool,
    /// Moving average of how long a job holds its slot, for Retry-After estimates.
    avg_job_ms: f64,
    wake_at_ms: Option<u64>,
}

/// A set of upstream accounts and the queues of the tenants that use them.
#[derive(Debug)]
pub struct JobPool {
    pub name: String,
    pub accounts: Vec<UpstreamAccount>,
    in_flight_gauges: Vec<IntGauge>,
    /// Jobs waiting in this pool (all tenants).
    queued_gauge: IntGauge,
    inner: Mutex<Inner>,
    epoch: Instant,
    leases: std::sync::OnceLock<Arc<dyn SlotLeases>>,
}

/// A held job slot; dropping it frees the slot and lets the next waiting job go.
#[derive(Debug)]
pub struct SlotPermit {
    pool: Arc<JobPool>,
    tenant: AccountId,
    upstream: UpstreamIdx,
    started: Instant,
    waited: Duration,
    /// The tier's in-flight gauge, once the job owns the permit.
    tier_in_flight: Option<IntGauge>,
    /// Shared leases (several replicas): released when the permit drops.
    leases: Vec<LeaseGuard>,
    armed: bool,
}

impl SlotPermit {
    /// The upstream account running this job.
    pub fn account(&self) -> &UpstreamAccount {
        &self.pool.accounts[self.upstream]
    }

    pub fn upstream(&self) -> UpstreamIdx {
        self.upstream
    }

    pub fn pool(&self) -> &Arc<JobPool> {
        &self.pool
    }

    /// How long the job waited in the queue.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        if self.armed {
            if let Some(g) = &self.tier_in_flight {
                g.dec();
            }
            self.pool
                .release(self.tenant, self.upstream, self.started.elapsed());
        }
    }
}

impl JobPool {
    pub fn new(
        name: String,
        accounts: Vec<UpstreamAccount>,
        in_flight_gauges: Vec<IntGauge>,
        queued_gauge: IntGauge,
    ) -> Self {
        let caps: Vec<u32> = accounts.iter().map(|a| a.concurrency).collect();
        Self {
            name,
            accounts,
            in_flight_gauges,
            queued_gauge,
            inner: Mutex::new(Inner {
                sched: Scheduler::new(&caps),
                waiters: HashMap::new(),
                next_id: 0,
                closed: false,
                avg_job_ms: 1_000.0,
                wake_at_ms: None,
            }),
            epoch: Instant::now(),
            leases: std::sync::OnceLock::new(),
        }
    }

    /// Index of an upstream account by name.
    pub fn account_index(&self, name: &str) -> Option<UpstreamIdx> {
        self.accounts.iter().position(|a| a.name == name)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Gets a slot now, or waits in the tenant's queue for one (FIFO), up to `max_wait`.
    pub async fn acquire(self: &Arc<Self>, ticket: &JobTicket) -> Result<SlotPermit, QueueError> {
        let queued_at = Instant::now();
        let mut permit = self.acquire_local(ticket, queued_at).await?;
        if let Some(backend) = self.leases.get() {
            let deadline = queued_at + ticket.max_wait;
            let tenant_key = format!("tenant:{:032x}", ticket.tenant.0);
            let upstream = &self.accounts[permit.upstream];
            let keys = [
                (ticket.concurrency != u32::MAX).then_some((tenant_key, ticket.concurrency)),
                (upstream.concurrency != u32::MAX).then(|| {
                    (
                        format!("slots:{}:{}", self.name, upstream.name),
                        upstream.concurrency,
                    )
                }),
            ];
            for (key, cap) in keys.into_iter().flatten() {
                match leases::hold(backend, key, cap, deadline).await {
                    Some(guard) => permit.leases.push(guard),
                    None => {
                        let ahead = 1;
                        let avg = self.lock().avg_job_ms;
                        return Err(QueueError::TimedOut {
                            retry_after_secs: estimate_secs(avg, ahead, ticket.concurrency),
                        });
                    }
                }
            }
            permit.waited = queued_at.elapsed();
        }
        Ok(permit)
    }

    /// Shares this pool's slots with other replicas through leases in the shared store.
    pub fn share_slots(&self, backend: Arc<dyn SlotLeases>) {
        let _ = self.leases.set(backend);
    }

    /// This replica's slot: at once, or after waiting in the tenant's queue.
    async fn acquire_local(
        self: &Arc<Self>,
        ticket: &JobTicket,
        queued_at: Instant,
    ) -> Result<SlotPermit, QueueError> {
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
                return Ok(self.permit(ticket, up, Duration::ZERO));
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
            if let Err(full) = enqueued {
                let retry_after_secs =
                    estimate_secs(inner.avg_job_ms, full.waiting + 1, ticket.concurrency);
                return Err(QueueError::Full { retry_after_secs });
            }
            let (tx, rx) = oneshot::channel();
            inner.waiters.insert(id, tx);
            (id, rx)
        };
        ticket.tier_gauges.queued.inc();
        self.queued_gauge.inc();
        let mut wait = Waiting {
            pool: self.clone(),
            tenant: ticket.tenant,
            id,
            rx: Some(rx),
            gauge: ticket.tier_gauges.queued.clone(),
            cancelled: ticket.tier_gauges.cancelled.clone(),
            timed_out: false,
        };
        self.deliver(); // capacity may have freed between try_start and enqueue
        wait.until(ticket, queued_at).await
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
        Ok((self.permit(ticket, upstream, Duration::ZERO), would_wait))
    }

    fn permit(
        self: &Arc<Self>,
        ticket: &JobTicket,
        upstream: UpstreamIdx,
        waited: Duration,
    ) -> SlotPermit {
        ticket.tier_gauges.in_flight.inc();
        self.in_flight_gauges[upstream].inc();
        SlotPermit {
            pool: self.clone(),
            tenant: ticket.tenant,
            upstream,
            started: Instant::now(),
            waited,
            tier_in_flight: Some(ticket.tier_gauges.in_flight.clone()),
            leases: Vec::new(),
            armed: true,
        }
    }

    fn release(self: &Arc<Self>, tenant: AccountId, upstream: UpstreamIdx, held: Duration) {
        self.in_flight_gauges[upstream].dec();
        {
            let mut inner = self.lock();
            inner.sched.release(tenant, upstream);
            inner.avg_job_ms = 0.8 * inner.avg_job_ms + 0.2 * held.as_millis() as f64;
        }
        self.deliver();
    }

    /// Keeps an upstream account out of rotation for `for_ms` (it answered 429).
    pub fn cool_down(self: &Arc<Self>, upstream: UpstreamIdx, for_ms: u64) {
        let until = self.now_ms() + for_ms;
        self.lock().sched.cool_down(upstream, until);
    }

    /// Hands freed capacity to waiting jobs. Grants go out after the lock is released; a grant
    /// whose waiter has gone is taken back at once and the loop runs again.
    fn deliver(self: &Arc<Self>) {
        loop {
            let now = self.now_ms();
            let grants: Vec<_> = {
                let mut inner = self.lock();
                let grants = inner.sched.dispatch(now);
                let out: Vec<_> = grants
                    .into_iter()
                    .filter_map(|g| inner.waiters.remove(&g.waiter).map(|tx| (g, tx)))
                    .collect();
                self.schedule_wake(&mut inner, now);
                out
            };
            if grants.is_empty() {
                return;
            }
            let mut returned = false;
            for (g, tx) in grants {
                self.in_flight_gauges[g.upstream].inc();
                let permit = SlotPermit {
                    pool: self.clone(),
                    tenant: g.tenant,
                    upstream: g.upstream,
                    started: Instant::now(),
                    waited: Duration::ZERO,
                    tier_in_flight: None, // set by the waiter when it takes the permit
                    leases: Vec::new(),
                    armed: true,
                };
                if let Err(mut permit) = tx.send(permit) {
                    permit.armed = false;
                    self.in_flight_gauges[g.upstream].dec();
                    self.lock().sched.release(g.tenant, g.upstream);
                    returned = true;
                }
            }
            if !returned {
                return;
            }
        }
    }

    /// When jobs wait only because upstream accounts cool down, dispatch again when one ends.
    fn schedule_wake(self: &Arc<Self>, inner: &mut Inner, now: u64) {
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
        handle.spawn(async move {
            tokio::time::sleep(Duration::from_millis(at - now)).await;
            pool.lock().wake_at_ms = None;
            pool.deliver();
        });
    }

    /// Refuses new jobs and answers every waiting one with [`QueueError::Closed`].
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.waiters.clear(); // dropping the senders wakes every waiter with Closed
    }

    /// (in flight, waiting) for one tenant.
    pub fn tenant_load(&self, tenant: AccountId) -> (u32, usize) {
        self.lock().sched.tenant_load(tenant)
    }

    /// Jobs waiting in this pool.
    pub fn waiting(&self) -> usize {
        self.lock().sched.waiting()
    }

    /// Jobs running per upstream account.
    pub fn upstream_in_flight(&self) -> Vec<u32> {
        self.lock().sched.upstream_in_flight()
    }

    fn position(&self, tenant: AccountId, id: WaiterId) -> Option<usize> {
        self.lock().sched.position(tenant, id)
    }
}

/// Whole seconds until a job `ahead` places back is likely to start, at the given concurrency.
fn estimate_secs(avg_job_ms: f64, ahead: usize, concurrency: u32) -> u64 {
    let rounds = ahead as f64 / concurrency.max(1) as f64;
    ((rounds * avg_job_ms / 1000.0).ceil() as u64).max(1)
}

/// A job parked in a queue. Dropping it (client gone) takes it out of the queue at once; a
/// slot granted in the same instant is handed straight back.
struct Waiting {
    pool: Arc<JobPool>,
    tenant: AccountId,
    id: WaiterId,
    rx: Option<oneshot::Receiver<SlotPermit>>,
    gauge: IntGauge,
    cancelled: prometheus::IntCounter,
    timed_out: bool,
}

impl Waiting {
    async fn until(
        &mut self,
        ticket: &JobTicket,
        queued_at: Instant,
    ) -> Result<SlotPermit, QueueError> {
        let rx = self.rx.as_mut().expect("waiting once");
        let outcome = tokio::time::timeout(ticket.max_wait, rx).await;
        match outcome {
            Ok(Ok(mut permit)) => {
                self.rx = None;
                permit.waited = queued_at.elapsed();
                ticket.tier_gauges.in_flight.inc();
                permit.tier_in_flight = Some(ticket.tier_gauges.in_flight.clone());
                Ok(permit)
            }
            Ok(Err(_)) => {
                self.rx = None;
                Err(QueueError::Closed)
            }
            Err(_) => {
                self.timed_out = true;
                let ahead = self.pool.position(self.tenant, self.id).unwrap_or(1);
                let avg = self.pool.lock().avg_job_ms;
                Err(QueueError::TimedOut {
                    retry_after_secs: estimate_secs(avg, ahead, ticket.concurrency),
                })
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.gauge.dec();
        let Some(rx) = self.rx.take() else { return };
        self.pool.queued_gauge.dec();
        let removed = {
            let mut inner = self.pool.lock();
            let removed = inner.sched.remove(self.tenant, self.id);
            if removed {
                inner.waiters.remove(&self.id);
            }
            removed
        };
        if removed && !self.timed_out {
            self.cancelled.inc();
        }
        // A permit already sent to us is dropped here, outside the lock, which frees its slot.
        drop(rx);
    }
}
