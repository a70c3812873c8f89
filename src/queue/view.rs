//! What a pool shows of itself, read under its lock and changing nothing: load per tenant and per
//! upstream account, rests, the waiting jobs with their estimated waits, and the typical job —
//! for `/usage`, the status page and the tests.

use std::time::Duration;

use super::job::WaitingJob;
use super::slots::JobPool;
use crate::identity::AccountId;

impl JobPool {
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
}
