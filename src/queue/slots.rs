//! A pool's slots: the state its files share, the RAII [`SlotPermit`] that holds a slot, and the
//! way a freed slot goes on to the next waiting job. The rest of the pool is built on this: the
//! front door ([`super::pool`]), waiting ([`super::waiting`]), shared slots
//! ([`super::shared_slots`]), rests ([`super::rests`]) and the status view ([`super::view`]).
//!
//! Handing a freed slot on makes a new permit, and a permit's drop frees its slot: the two live
//! here together, with the pool's state, so that the files above import this one and it none
//! of them.
//!
//! A permit's drop frees its slot at once, in the drop itself, when its slot is this replica's
//! alone. A permit that also holds leases on slots shared with other replicas
//! ([`super::leases`]) gives them back first, on the runtime that took them, and the local slot
//! is freed when they are back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::estimate::JobDurations;
use super::job::{JobTicket, UpstreamAccount};
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

/// What the pool sends a waiting job.
#[derive(Debug)]
pub(super) enum Grant {
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
pub(super) struct Waiter {
    pub(super) tx: oneshot::Sender<Grant>,
    pub(super) on_grant: Option<StartOnGrant>,
    pub(super) queued_at: Instant,
    /// Its 1-based place in its tenant's queue when it joined.
    pub(super) position_at_entry: usize,
    pub(super) gauges: TierGauges,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("on_grant", &self.on_grant.is_some())
            .field("queued_at", &self.queued_at)
            .finish()
    }
}

/// A pool's state behind its lock.
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) sched: Scheduler,
    pub(super) waiters: HashMap<WaiterId, Waiter>,
    pub(super) next_id: WaiterId,
    pub(super) closed: bool,
    /// How long recent jobs held their slot: the wait estimates.
    pub(super) durations: JobDurations,
    /// When the dispatch set for the end of a rest runs ([`super::rests`]).
    pub(super) wake_at_ms: Option<u64>,
}

/// The name of the plain upstream's pool (pool 0), and of its one account.
pub const PLAIN_POOL: &str = "upstream";

/// A set of upstream accounts and the queues of the tenants that use them.
#[derive(Debug)]
pub struct JobPool {
    pub name: String,
    pub accounts: Vec<UpstreamAccount>,
    in_flight_gauges: Vec<IntGauge>,
    /// Jobs waiting in this pool (all tenants).
    pub(super) queued_gauge: IntGauge,
    inner: Mutex<Inner>,
    /// The clock the queue's rules run on: maximum waits and upstream cooldowns.
    pub(super) clock: Arc<dyn Clock>,
    /// The store holding the leases of slots shared with other replicas, once shared.
    pub(super) leases: OnceLock<Arc<dyn SlotLeases>>,
}

/// A held job slot; dropping it frees the slot and lets the next waiting job go.
#[derive(Debug)]
pub struct SlotPermit {
    pool: Arc<JobPool>,
    tenant: AccountId,
    pub(super) upstream: UpstreamIdx,
    started: Instant,
    pub(super) waited: Duration,
    /// Its place in its tenant's queue when it joined; `None` when it did not wait.
    position_at_entry: Option<usize>,
    /// The tier's in-flight gauge, once the job owns the permit.
    tier_in_flight: Option<IntGauge>,
    /// Shared leases (several replicas): given back before the local slot.
    pub(super) leases: Vec<LeaseGuard>,
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

    /// The shared leases this slot holds (key, lease id).
    pub fn lease_ids(&self) -> Vec<(String, String)> {
        self.leases.iter().map(LeaseGuard::id).collect()
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
        let held = self.started.elapsed();
        if self.leases.is_empty() {
            self.pool.release(self.tenant, self.upstream, held);
            return;
        }
        // Shared slots: the leases go back first, so the job this frees finds its lease free
        // (were the local slot freed first, it could find the lease still held, poll, and let
        // a later job of this replica pass it).
        let freed = Freed {
            pool: self.pool.clone(),
            tenant: self.tenant,
            upstream: self.upstream,
            held,
        };
        leases::give_back(std::mem::take(&mut self.leases), freed);
    }
}

/// A local slot whose job is done, freed when this drops: once its leases are back, or when the
/// runtime that was to give them back has gone.
struct Freed {
    pool: Arc<JobPool>,
    tenant: AccountId,
    upstream: UpstreamIdx,
    held: Duration,
}

impl Drop for Freed {
    fn drop(&mut self) {
        self.pool.release(self.tenant, self.upstream, self.held);
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
            leases: OnceLock::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The pool of the plain upstream (pool 0): no named accounts, so no health to keep.
    pub fn is_plain(&self) -> bool {
        self.name == PLAIN_POOL
    }

    /// A permit for a job that got its slot without waiting.
    pub(super) fn permit_at_once(
        self: &Arc<Self>,
        ticket: &JobTicket,
        upstream: UpstreamIdx,
    ) -> SlotPermit {
        let in_flight = &ticket.tier_gauges.in_flight;
        self.permit(ticket.tenant, upstream, in_flight, Duration::ZERO, None)
    }

    /// A permit for a slot the scheduler just gave `tenant` on `upstream`, counted in flight.
    fn permit(
        self: &Arc<Self>,
        tenant: AccountId,
        upstream: UpstreamIdx,
        tier_in_flight: &IntGauge,
        waited: Duration,
        position_at_entry: Option<usize>,
    ) -> SlotPermit {
        tier_in_flight.inc();
        self.in_flight_gauges[upstream].inc();
        SlotPermit {
            pool: self.clone(),
            tenant,
            upstream,
            started: Instant::now(),
            waited,
            position_at_entry,
            tier_in_flight: Some(tier_in_flight.clone()),
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

    /// Hands freed capacity to waiting jobs. Grants go out after the lock is released; a grant
    /// whose waiter has gone is taken back at once and the loop runs again. It starts no timer:
    /// a release runs it from a drop, and the wake-up at a rest's end is set where waits and
    /// rests begin ([`super::rests`]).
    pub(super) fn deliver(self: &Arc<Self>) {
        loop {
            let now = self.now_ms();
            let grants: Vec<_> = {
                let mut inner = self.lock();
                let grants = inner.sched.dispatch(now);
                grants
                    .into_iter()
                    .filter_map(|g| inner.waiters.remove(&g.waiter).map(|tx| (g, tx)))
                    .collect()
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
        let permit = self.permit(
            g.tenant,
            g.upstream,
            &waiter.gauges.in_flight,
            waiter.queued_at.elapsed(),
            Some(waiter.position_at_entry),
        );
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
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::queue::testing::{one_slot_pool, ticket, until_waiting};
    use crate::queue::Granted;

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
}
