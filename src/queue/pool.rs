//! The async edge of a job pool: waiting jobs park on a oneshot channel until the scheduler
//! grants them a slot, and every slot is an RAII [`SlotPermit`] released on drop — response
//! done, upstream error, client gone or timeout alike.
//!
//! A waiting job may leave a [`StartOnGrant`] hook: the code that grants its slot (usually the
//! job that just finished, on whatever worker thread it ran) runs the hook at once, so the
//! queued job's forward starts there instead of one thread wake-up later on the waiter's own
//! worker. A parked worker thread takes tens of microseconds to wake on a VM; the forward
//! should not wait for that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::estimate::JobDurations;
pub use super::job::{JobTicket, QueueError, UpstreamAccount, WaitingJob};
use super::leases::{self, LeaseGuard, SlotLeases};
use super::scheduler::{self, Scheduler, UpstreamIdx, WaiterId};
use crate::clock::Clock;
use crate::identity::AccountId;
use crate::metrics::TierGauges;

/// Work a waiting job leaves to run where its slot is granted: on the thread that freed the
/// slot. It takes charge of the job there — the permit, and a [`GrantNotice`] to drop once the
/// job's own task should look for it (the hook's own channel carries what it did). It must not
/// block; it may spawn onto the current runtime.
pub type StartOnGrant = Box<dyn FnOnce(SlotPermit, GrantNotice) + Send>;

/// How a job got its slot.
#[derive(Debug)]
pub enum Granted {
    /// The job holds this permit and goes on itself.
    Permit(SlotPermit),
    /// Its [`StartOnGrant`] hook took the permit and started the job where the slot freed.
    Started,
}

/// What the pool sends a waiting job.
#[derive(Debug)]
enum Grant {
    Permit(SlotPermit),
    Started,
}

/// Wakes a job whose start-on-grant hook took its slot, when dropped: the job's task is not
/// woken at the grant itself (waking another worker's thread costs the granting thread tens of
/// microseconds, which would delay the start the hook exists for).
#[derive(Debug)]
pub struct GrantNotice(Option<oneshot::Sender<Grant>>);

impl Drop for GrantNotice {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Grant::Started);
        }
    }
}

/// A parked job: where its grant goes, what to start when it is granted, and its gauges.
struct Waiter {
    tx: oneshot::Sender<Grant>,
    on_grant: Option<StartOnGrant>,
    queued_at: Instant,
    /// Its 1-based place in its tenant's queue when it joined.
    position_at_entry: usize,
    gauges: TierGauges,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("on_grant", &self.on_grant.is_some())
            .field("queued_at", &self.queued_at)
            .finish()
    }
}

#[derive(Debug)]
struct Inner {
    sched: Scheduler,
    waiters: HashMap<WaiterId, Waiter>,
    next_id: WaiterId,
    closed: bool,
    /// How long recent jobs held their slot: the wait estimates.
    durations: JobDurations,
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
    /// The clock the queue's rules run on: maximum waits and upstream cooldowns.
    clock: Arc<dyn Clock>,
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
    /// Its place in its tenant's queue when it joined; `None` when it did not wait.
    position_at_entry: Option<usize>,
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

    /// Its 1-based place in its tenant's queue when it joined; `None` when it did not wait.
    pub fn position_at_entry(&self) -> Option<usize> {
        self.position_at_entry
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(g) = &self.tier_in_flight {
            g.dec();
        }
        let (pool, tenant, upstream) = (self.pool.clone(), self.tenant, self.upstream);
        let held = self.started.elapsed();
        if self.leases.is_empty() {
            pool.release(tenant, upstream, held);
            return;
        }
        // Shared slots: the leases go back first, so the job this frees finds its lease free
        // (were the local slot freed first, it could find the lease still held, poll, and let
        // a later job of this replica pass it).
        let leases = std::mem::take(&mut self.leases);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(leases); // each gives itself back as it can
            pool.release(tenant, upstream, held);
            return;
        };
        runtime.spawn(async move {
            for lease in leases {
                lease.release().await;
            }
            pool.release(tenant, upstream, held);
        });
    }
}

impl JobPool {
    pub fn new(
        name: String,
        accounts: Vec<UpstreamAccount>,
        in_flight_gauges: Vec<IntGauge>,
        queued_gauge: IntGauge,
        clock: Arc<dyn Clock>,
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
                durations: JobDurations::default(),
                wake_at_ms: None,
            }),
            clock,
            leases: std::sync::OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

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
        let shared = self.leases.get();
        let on_wait = || if shared.is_some() { None } else { on_wait() };
        let granted = self.acquire_local(ticket, queued_at, on_wait).await?;
        let Some(backend) = shared else {
            return Ok(granted);
        };
        let permit = match granted {
            Granted::Permit(permit) => permit,
            started => return Ok(started),
        };
        // Boxed: only replicas sharing slots pay for this state in every waiting job.
        Box::pin(self.hold_leases(backend, permit, ticket, queued_at))
            .await
            .map(Granted::Permit)
    }

    /// Completes a local slot with the shared leases of the tenant and the upstream account.
    async fn hold_leases(
        &self,
        backend: &Arc<dyn SlotLeases>,
        mut permit: SlotPermit,
        ticket: &JobTicket,
        queued_at: Instant,
    ) -> Result<SlotPermit, QueueError> {
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
                    let durations = self.lock().durations;
                    return Err(QueueError::TimedOut {
                        retry_after_secs: durations.retry_after_secs(1, ticket.concurrency),
                    });
                }
            }
        }
        permit.waited = queued_at.elapsed();
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
                return Ok(Granted::Permit(self.permit(ticket, up, Duration::ZERO)));
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
        self.deliver(); // capacity may have freed between try_start and enqueue
        wait.until(ticket).await
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
            position_at_entry: None,
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
            inner.durations.record(held);
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
            for (g, waiter) in grants {
                if let Some(taken_back) = self.grant(g, waiter) {
                    self.lock()
                        .sched
                        .release(taken_back.tenant, taken_back.upstream);
                    returned = true;
                }
            }
            if !returned {
                return;
            }
        }
    }

    /// Gives a granted slot to its waiting job — to its start-on-grant hook when it left one.
    /// Returns the grant when the job has gone, for the caller to take back.
    fn grant(self: &Arc<Self>, g: scheduler::Grant, waiter: Waiter) -> Option<scheduler::Grant> {
        waiter.gauges.queued.dec();
        self.queued_gauge.dec();
        waiter.gauges.in_flight.inc();
        self.in_flight_gauges[g.upstream].inc();
        let permit = SlotPermit {
            pool: self.clone(),
            tenant: g.tenant,
            upstream: g.upstream,
            started: Instant::now(),
            waited: waiter.queued_at.elapsed(),
            position_at_entry: Some(waiter.position_at_entry),
            tier_in_flight: Some(waiter.gauges.in_flight.clone()),
            leases: Vec::new(),
            armed: true,
        };
        let mut permit = match waiter.on_grant {
            Some(start) if !waiter.tx.is_closed() => {
                start(permit, GrantNotice(Some(waiter.tx)));
                return None;
            }
            _ => match waiter.tx.send(Grant::Permit(permit)) {
                Err(Grant::Permit(permit)) => permit,
                Ok(()) | Err(Grant::Started) => return None,
            },
        };
        // The job left in the same instant: undo the grant without releasing (no re-entry).
        permit.armed = false;
        waiter.gauges.in_flight.dec();
        self.in_flight_gauges[g.upstream].dec();
        Some(g)
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
        let rested = self.clock.sleep(Duration::from_millis(at - now));
        handle.spawn(async move {
            rested.await;
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

    /// The jobs waiting in this pool, each with its place in its tenant's queue, how long it
    /// has waited and how much longer it likely waits; oldest first, at most `limit` (the
    /// status page's list), or only `tenant`'s.
    pub fn waiting_jobs(&self, tenant: Option<AccountId>, limit: usize) -> Vec<WaitingJob> {
        let inner = self.lock();
        let mut jobs: Vec<WaitingJob> = inner
            .sched
            .queues()
            .filter(|(t, _, _)| tenant.is_none_or(|want| want == *t))
            .flat_map(|(t, concurrency, ids)| {
                let inner = &inner;
                ids.enumerate().filter_map(move |(i, id)| {
                    let waiter = inner.waiters.get(&id)?;
                    Some(WaitingJob {
                        tenant: t,
                        position: i + 1,
                        position_at_entry: waiter.position_at_entry,
                        waited: waiter.queued_at.elapsed(),
                        estimated_wait: inner.durations.wait(i + 1, concurrency),
                    })
                })
            })
            .collect();
        drop(inner);
        jobs.sort_by_key(|j| std::cmp::Reverse(j.waited));
        jobs.truncate(limit);
        jobs
    }

    /// How long recent jobs of this pool held their slot.
    pub fn typical_job(&self) -> Duration {
        self.lock().durations.typical()
    }

    /// Each upstream account's running jobs and the rest of its cooldown, if any.
    pub fn upstream_states(&self) -> Vec<(u32, Duration)> {
        let now = self.now_ms();
        self.lock()
            .sched
            .upstream_states()
            .map(|(in_flight, until)| (in_flight, Duration::from_millis(until.saturating_sub(now))))
            .collect()
    }

    fn position(&self, tenant: AccountId, id: WaiterId) -> Option<usize> {
        self.lock().sched.position(tenant, id)
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
                let ahead = self.pool.position(self.tenant, self.id).unwrap_or(1);
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
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn gauges() -> TierGauges {
        TierGauges {
            queued: IntGauge::new("q", "q").unwrap(),
            in_flight: IntGauge::new("f", "f").unwrap(),
            cancelled: prometheus::IntCounter::new("c", "c").unwrap(),
        }
    }

    fn one_slot_pool() -> Arc<JobPool> {
        let account = UpstreamAccount {
            name: "a".into(),
            credential: None,
            origin: None,
            concurrency: 1,
        };
        Arc::new(JobPool::new(
            "p".into(),
            vec![account],
            vec![IntGauge::new("u", "u").unwrap()],
            IntGauge::new("pq", "pq").unwrap(),
            Arc::new(crate::clock::SystemClock),
        ))
    }

    fn ticket(max_wait: Duration) -> JobTicket {
        JobTicket {
            tenant: AccountId(1),
            concurrency: 1,
            max_queue: 10,
            max_wait,
            affinity: None,
            front: false,
            tier_gauges: gauges(),
        }
    }

    async fn until_waiting(pool: &JobPool) {
        for _ in 0..1_000 {
            if pool.waiting() == 1 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the job never queued");
    }

    #[tokio::test]
    async fn the_hook_starts_a_queued_job_inside_the_release() {
        let pool = one_slot_pool();
        let t = ticket(Duration::from_secs(5));
        let held = pool.acquire(&t).await.unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let (permit_tx, permit_rx) = std::sync::mpsc::channel();
        let (p, t2, r) = (pool.clone(), t.clone(), ran.clone());
        let waiter = tokio::spawn(async move {
            let hook = move || -> Option<StartOnGrant> {
                Some(Box::new(move |permit, notice| {
                    r.store(true, Ordering::SeqCst);
                    permit_tx.send((permit, notice)).unwrap();
                }))
            };
            p.acquire_starting(&t2, hook).await
        });
        until_waiting(&pool).await;
        assert_eq!(t.tier_gauges.queued.get(), 1);
        drop(held);
        assert!(
            ran.load(Ordering::SeqCst),
            "the hook ran in the release itself"
        );
        let (permit, notice) = permit_rx.try_recv().unwrap();
        assert_eq!(
            t.tier_gauges.queued.get(),
            0,
            "a granted job is no longer queued"
        );
        assert_eq!(pool.queued_gauge.get(), 0);
        assert_eq!(t.tier_gauges.in_flight.get(), 1);
        assert!(!waiter.is_finished(), "the job's task waits for the notice");
        drop(notice);
        assert!(matches!(waiter.await.unwrap(), Ok(Granted::Started)));
        drop(permit);
        assert_eq!(t.tier_gauges.in_flight.get(), 0);
        assert_eq!(pool.upstream_in_flight(), vec![0]);
    }

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

    /// Leases held in memory; giving one back waits until the test opens `releases`.
    #[derive(Debug)]
    struct HeldLeases {
        held: Arc<Mutex<HashMap<String, Vec<String>>>>,
        /// Asks answered "all slots held".
        refused: std::sync::atomic::AtomicUsize,
        releases: tokio::sync::watch::Sender<bool>,
        /// False: a granted ask never gets its answer back (a reply lost on the way).
        answers: bool,
    }

    impl HeldLeases {
        fn new(answers: bool) -> Arc<Self> {
            Arc::new(Self {
                held: Default::default(),
                refused: Default::default(),
                releases: tokio::sync::watch::channel(false).0,
                answers,
            })
        }

        fn held(&self) -> usize {
            self.held.lock().unwrap().values().map(Vec::len).sum()
        }
    }

    impl SlotLeases for HeldLeases {
        fn acquire(&self, key: String, cap: u32, lease: String) -> leases::BoxFuture<bool> {
            let mut held = self.held.lock().unwrap();
            let slots = held.entry(key).or_default();
            let granted = slots.len() < cap as usize;
            if granted {
                slots.push(lease);
            } else {
                self.refused.fetch_add(1, Ordering::SeqCst);
            }
            match self.answers {
                true => Box::pin(std::future::ready(granted)),
                false => Box::pin(std::future::pending()),
            }
        }

        fn renew(&self, _key: String, _lease: String) -> leases::BoxFuture<bool> {
            Box::pin(std::future::ready(true))
        }

        fn release(&self, key: String, lease: String) -> leases::BoxFuture<()> {
            let (mut open, held) = (self.releases.subscribe(), self.held.clone());
            Box::pin(async move {
                let _ = open.wait_for(|open| *open).await;
                held.lock()
                    .unwrap()
                    .entry(key)
                    .or_default()
                    .retain(|l| *l != lease);
            })
        }

        fn ttl(&self) -> Duration {
            Duration::from_secs(60)
        }
    }

    #[tokio::test]
    async fn a_shared_slot_goes_to_the_next_job_only_once_its_leases_are_back() {
        let pool = one_slot_pool();
        let backend = HeldLeases::new(true);
        pool.share_slots(backend.clone());
        let t = ticket(Duration::from_secs(5));
        let held = pool.acquire(&t).await.unwrap();
        let (p, t2) = (pool.clone(), t.clone());
        let next = tokio::spawn(async move { p.acquire(&t2).await.map(|_| ()) });
        until_waiting(&pool).await;
        drop(held); // its leases are on their way back, not back yet
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.waiting(), 1, "the local slot waits for the leases");
        backend.releases.send_replace(true);
        next.await.unwrap().unwrap();
        assert_eq!(
            backend.refused.load(Ordering::SeqCst),
            0,
            "the next job found its leases free at its first ask"
        );
    }

    #[tokio::test]
    async fn a_lease_granted_as_its_job_left_is_given_back() {
        let pool = one_slot_pool();
        let backend = HeldLeases::new(false);
        backend.releases.send_replace(true);
        pool.share_slots(backend.clone());
        let (p, t) = (pool.clone(), ticket(Duration::from_secs(5)));
        let job = tokio::spawn(async move { p.acquire(&t).await.map(|_| ()) });
        for _ in 0..100 {
            if backend.held() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(backend.held(), 1, "the store granted the lease");
        job.abort(); // the client leaves before the answer arrives
        let _ = job.await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(backend.held(), 0, "given back, not held until it expires");
        assert_eq!(pool.upstream_in_flight(), vec![0]);
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
