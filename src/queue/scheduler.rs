//! Who runs next: per-tenant FIFO queues over a pool of upstream accounts.  [pure]
//!
//! A pool is a set of upstream accounts (each with a concurrency cap and, after an upstream 429,
//! a cooldown) shared by one or more tenants (floodgate accounts, each with its own concurrency
//! cap and FIFO queue). A job starts when its tenant is under its cap and an upstream account has
//! a free slot; otherwise it waits at the back of its tenant's queue. When capacity frees,
//! tenants with waiting jobs are served round-robin, so one tenant's backlog cannot starve
//! another's, and upstream accounts are picked round-robin, skipping full and cooling ones. A job
//! that must follow an earlier task runs on that task's upstream account only.
//!
//! No I/O and no clock reads: the caller passes `now_ms` and acts on the returned assignments.

use std::collections::{HashMap, VecDeque};

use crate::identity::{AccountId, BuildIdHasher};

/// Index of an upstream account within its pool.
pub type UpstreamIdx = usize;

/// A waiting job's ticket number, unique within a pool.
pub type WaiterId = u64;

#[derive(Debug, Clone)]
struct UpstreamState {
    cap: u32,
    in_flight: u32,
    /// Out of rotation until then: a rest's end, or [`DISABLED`].
    cooldown_until_ms: u64,
    /// Back from a rest for failures: one job at a time until one succeeds.
    probing: bool,
}

/// The end of a rest that never ends: an account disabled until an operator enables it.
pub const DISABLED: u64 = u64::MAX;

impl UpstreamState {
    fn is_free(&self, now_ms: u64) -> bool {
        let cap = if self.probing { 1 } else { self.cap };
        self.in_flight < cap && now_ms >= self.cooldown_until_ms
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiter {
    id: WaiterId,
    affinity: Option<UpstreamIdx>,
}

#[derive(Debug, Default)]
struct Tenant {
    cap: u32,
    in_flight: u32,
    queue: VecDeque<Waiter>,
}

/// A queued job granted a slot: tell waiter `waiter` of `tenant` to go to `upstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub tenant: AccountId,
    pub waiter: WaiterId,
    pub upstream: UpstreamIdx,
}

/// Why a job could not even join the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    /// Jobs of the tenant already waiting.
    pub waiting: usize,
}

/// Scheduling state of one pool.
#[derive(Debug)]
pub struct Scheduler {
    upstreams: Vec<UpstreamState>,
    next_upstream: usize,
    tenants: HashMap<AccountId, Tenant, BuildIdHasher>,
    /// Tenants with waiting jobs, in round-robin order.
    ring: VecDeque<AccountId>,
}

impl Scheduler {
    /// A pool of upstream accounts with these caps (`u32::MAX` for an uncapped upstream).
    pub fn new(upstream_caps: &[u32]) -> Self {
        let upstreams = upstream_caps
            .iter()
            .map(|&cap| UpstreamState {
                cap,
                in_flight: 0,
                cooldown_until_ms: 0,
                probing: false,
            })
            .collect();
        Self {
            upstreams,
            next_upstream: 0,
            tenants: HashMap::default(),
            ring: VecDeque::new(),
        }
    }

    /// Starts a job at once if its tenant has nobody waiting, is under `cap`, and an eligible
    /// upstream account is free; returns the upstream account it goes to.
    pub fn try_start(
        &mut self,
        tenant: AccountId,
        cap: u32,
        affinity: Option<UpstreamIdx>,
        now_ms: u64,
    ) -> Option<UpstreamIdx> {
        let t = self.tenants.entry(tenant).or_default();
        t.cap = cap;
        if !t.queue.is_empty() || t.in_flight >= cap {
            return None;
        }
        let upstream = self.pick_upstream(affinity, now_ms)?;
        self.occupy(tenant, upstream);
        Some(upstream)
    }

    /// Starts a job now whatever the caps say (shadow mode: the job is counted as running, so
    /// later jobs see the real load). Returns the upstream account it goes to — its affinity
    /// account, or the least busy one, preferring accounts not cooling down — and whether it
    /// would have had to wait.
    pub fn force_start(
        &mut self,
        tenant: AccountId,
        cap: u32,
        affinity: Option<UpstreamIdx>,
        now_ms: u64,
    ) -> (UpstreamIdx, bool) {
        if let Some(upstream) = self.try_start(tenant, cap, affinity, now_ms) {
            return (upstream, false);
        }
        let upstream = affinity
            .filter(|&u| u < self.upstreams.len())
            .unwrap_or_else(|| {
                (0..self.upstreams.len())
                    .min_by_key(|&i| {
                        let u = &self.upstreams[i];
                        (now_ms < u.cooldown_until_ms, u.in_flight)
                    })
                    .unwrap_or(0)
            });
        self.occupy(tenant, upstream);
        (upstream, true)
    }

    /// Puts a job at the back (or, for a retried job, the front) of its tenant's queue; returns
    /// its position (1 = next).
    pub fn enqueue(
        &mut self,
        tenant: AccountId,
        cap: u32,
        waiter: WaiterId,
        affinity: Option<UpstreamIdx>,
        max_queue: usize,
        front: bool,
    ) -> Result<usize, QueueFull> {
        let t = self.tenants.entry(tenant).or_default();
        t.cap = cap;
        if t.queue.len() >= max_queue && !front {
            return Err(QueueFull {
                waiting: t.queue.len(),
            });
        }
        let w = Waiter {
            id: waiter,
            affinity,
        };
        if front {
            t.queue.push_front(w);
        } else {
            t.queue.push_back(w);
        }
        let position = if front { 1 } else { t.queue.len() };
        if t.queue.len() == 1 {
            self.ring.push_back(tenant);
        }
        Ok(position)
    }

    /// Takes a waiting job out of its queue (timed out, or its client left). False when it is
    /// no longer waiting (it was granted a slot meanwhile).
    pub fn remove(&mut self, tenant: AccountId, waiter: WaiterId) -> bool {
        let Some(t) = self.tenants.get_mut(&tenant) else {
            return false;
        };
        let Some(pos) = t.queue.iter().position(|w| w.id == waiter) else {
            return false;
        };
        t.queue.remove(pos);
        if t.queue.is_empty() {
            self.ring.retain(|a| *a != tenant);
        }
        self.forget_if_idle(tenant);
        true
    }

    /// Frees the slot a job of `tenant` held on `upstream`.
    pub fn release(&mut self, tenant: AccountId, upstream: UpstreamIdx) {
        if let Some(u) = self.upstreams.get_mut(upstream) {
            u.in_flight = u.in_flight.saturating_sub(1);
        }
        if let Some(t) = self.tenants.get_mut(&tenant) {
            t.in_flight = t.in_flight.saturating_sub(1);
        }
        self.forget_if_idle(tenant);
    }

    /// Keeps `upstream` out of rotation until `until_ms` ([`DISABLED`]: until further notice;
    /// 0: in rotation), and while `probing`, to one job at a time: its health as last known.
    pub fn set_health(&mut self, upstream: UpstreamIdx, until_ms: u64, probing: bool) {
        if let Some(u) = self.upstreams.get_mut(upstream) {
            u.cooldown_until_ms = until_ms;
            u.probing = probing;
        }
    }

    /// Hands free capacity to waiting jobs, tenants taking turns. The caller delivers the grants.
    pub fn dispatch(&mut self, now_ms: u64) -> Vec<Grant> {
        let mut grants = Vec::new();
        let mut blocked_in_a_row = 0;
        while blocked_in_a_row < self.ring.len() {
            let Some(tenant) = self.ring.pop_front() else {
                break;
            };
            match self.start_head(tenant, now_ms) {
                Some(grant) => {
                    grants.push(grant);
                    blocked_in_a_row = 0;
                }
                None => blocked_in_a_row += 1,
            }
            if self
                .tenants
                .get(&tenant)
                .is_some_and(|t| !t.queue.is_empty())
            {
                self.ring.push_back(tenant);
            } else {
                self.forget_if_idle(tenant);
            }
        }
        grants
    }

    /// When a cooldown ends while jobs wait, the caller should dispatch again then.
    pub fn next_cooldown_end(&self, now_ms: u64) -> Option<u64> {
        if self.ring.is_empty() {
            return None;
        }
        self.upstreams
            .iter()
            .map(|u| u.cooldown_until_ms)
            .filter(|&t| t > now_ms && t != DISABLED)
            .min()
    }

    /// 1-based position of a waiting job in its tenant's queue.
    pub fn position(&self, tenant: AccountId, waiter: WaiterId) -> Option<usize> {
        self.tenants
            .get(&tenant)?
            .queue
            .iter()
            .position(|w| w.id == waiter)
            .map(|p| p + 1)
    }

    /// (in flight, waiting) for a tenant.
    pub fn tenant_load(&self, tenant: AccountId) -> (u32, usize) {
        self.tenants
            .get(&tenant)
            .map_or((0, 0), |t| (t.in_flight, t.queue.len()))
    }

    /// In-flight jobs per upstream account.
    pub fn upstream_in_flight(&self) -> Vec<u32> {
        self.upstreams.iter().map(|u| u.in_flight).collect()
    }

    /// Every tenant with jobs waiting: its concurrency cap and its waiting jobs, in queue order.
    pub fn queues(
        &self,
    ) -> impl Iterator<Item = (AccountId, u32, impl Iterator<Item = WaiterId> + '_)> {
        self.ring.iter().filter_map(|tenant| {
            let t = self.tenants.get(tenant)?;
            Some((*tenant, t.cap, t.queue.iter().map(|w| w.id)))
        })
    }

    /// Jobs waiting over all tenants.
    pub fn waiting(&self) -> usize {
        self.tenants.values().map(|t| t.queue.len()).sum()
    }

    /// Tenants with any state (for tests of cleanup).
    pub fn tenants_tracked(&self) -> usize {
        self.tenants.len()
    }

    fn start_head(&mut self, tenant: AccountId, now_ms: u64) -> Option<Grant> {
        let t = self.tenants.get(&tenant)?;
        if t.in_flight >= t.cap {
            return None;
        }
        let head = *t.queue.front()?;
        let upstream = self.pick_upstream(head.affinity, now_ms)?;
        self.tenants.get_mut(&tenant)?.queue.pop_front();
        self.occupy(tenant, upstream);
        Some(Grant {
            tenant,
            waiter: head.id,
            upstream,
        })
    }

    fn occupy(&mut self, tenant: AccountId, upstream: UpstreamIdx) {
        self.upstreams[upstream].in_flight += 1;
        if let Some(t) = self.tenants.get_mut(&tenant) {
            t.in_flight += 1;
        }
    }

    /// The affinity upstream if free, else the next free upstream in round-robin order.
    fn pick_upstream(&mut self, affinity: Option<UpstreamIdx>, now_ms: u64) -> Option<UpstreamIdx> {
        if let Some(u) = affinity {
            return self
                .upstreams
                .get(u)
                .filter(|s| s.is_free(now_ms))
                .map(|_| u);
        }
        let n = self.upstreams.len();
        let found = (0..n)
            .map(|i| (self.next_upstream + i) % n)
            .find(|&i| self.upstreams[i].is_free(now_ms))?;
        self.next_upstream = (found + 1) % n;
        Some(found)
    }

    fn forget_if_idle(&mut self, tenant: AccountId) {
        if self
            .tenants
            .get(&tenant)
            .is_some_and(|t| t.in_flight == 0 && t.queue.is_empty())
        {
            self.tenants.remove(&tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: AccountId = AccountId(1);
    const B: AccountId = AccountId(2);

    #[test]
    fn seed_scenario_three_slots_eight_jobs_in_order() {
        let mut s = Scheduler::new(&[u32::MAX]);
        let started: Vec<_> = (0..3).map(|_| s.try_start(A, 3, None, 0)).collect();
        assert_eq!(started, vec![Some(0), Some(0), Some(0)]);
        assert_eq!(s.try_start(A, 3, None, 0), None, "job 4 must wait");
        for id in 4..=8 {
            assert_eq!(s.enqueue(A, 3, id, None, 100, false), Ok(id as usize - 3));
        }
        assert!(s.dispatch(0).is_empty(), "nothing frees, nothing starts");
        s.release(A, 0); // job 1 completes
        let g = s.dispatch(0);
        assert_eq!(g.iter().map(|g| g.waiter).collect::<Vec<_>>(), vec![4]);
        s.release(A, 0); // job 2 completes
        assert_eq!(s.dispatch(0)[0].waiter, 5);
        assert_eq!(s.tenant_load(A), (3, 3));
    }

    #[test]
    fn newcomers_never_jump_the_queue() {
        let mut s = Scheduler::new(&[u32::MAX]);
        s.try_start(A, 1, None, 0).unwrap();
        s.enqueue(A, 1, 10, None, 10, false).unwrap();
        s.release(A, 0);
        assert_eq!(
            s.try_start(A, 1, None, 0),
            None,
            "waiter 10 is first in line"
        );
        assert_eq!(s.dispatch(0)[0].waiter, 10);
    }

    #[test]
    fn queue_bound_and_removal() {
        let mut s = Scheduler::new(&[1]);
        s.try_start(A, 1, None, 0).unwrap();
        s.enqueue(A, 1, 1, None, 2, false).unwrap();
        s.enqueue(A, 1, 2, None, 2, false).unwrap();
        assert_eq!(
            s.enqueue(A, 1, 3, None, 2, false),
            Err(QueueFull { waiting: 2 })
        );
        assert!(s.remove(A, 1));
        assert!(!s.remove(A, 1), "already gone");
        assert_eq!(s.position(A, 2), Some(1));
        s.release(A, 0);
        assert_eq!(s.dispatch(0)[0].waiter, 2);
        s.release(A, 0);
        assert_eq!(s.tenants_tracked(), 0, "idle tenants are forgotten");
    }

    #[test]
    fn upstreams_round_robin_skipping_full_and_cooling_ones() {
        let mut s = Scheduler::new(&[2, 2]);
        let picks: Vec<_> = (0..4)
            .map(|_| s.try_start(A, 10, None, 0).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
        assert_eq!(s.try_start(A, 10, None, 0), None, "both upstreams full");
        s.release(A, 1);
        s.set_health(1, 5_000, false);
        assert_eq!(
            s.try_start(A, 10, None, 1_000),
            None,
            "upstream 1 is cooling down"
        );
        s.release(A, 0);
        assert_eq!(s.try_start(A, 10, None, 1_000), Some(0));
        s.enqueue(A, 10, 7, None, 10, false).unwrap();
        assert_eq!(s.next_cooldown_end(1_000), Some(5_000));
        assert!(s.dispatch(4_999).is_empty());
        assert_eq!(s.dispatch(5_000)[0].upstream, 1);
    }

    #[test]
    fn a_disabled_account_gets_nothing_and_a_probing_one_one_job_at_a_time() {
        let mut s = Scheduler::new(&[5, 5]);
        s.set_health(0, DISABLED, false);
        s.set_health(1, 0, true);
        assert_eq!(s.try_start(A, 10, None, u64::MAX - 1), Some(1));
        assert_eq!(
            s.try_start(A, 10, None, 0),
            None,
            "the probe is out; 0 is disabled"
        );
        s.enqueue(A, 10, 1, None, 10, false).unwrap();
        assert_eq!(s.next_cooldown_end(0), None, "no rest ends: no wake-up");
        s.set_health(1, 0, false); // the probe succeeded
        assert_eq!(s.dispatch(0)[0].upstream, 1);
        s.set_health(0, 0, false); // enabled again
        assert_eq!(s.try_start(B, 10, None, 0), Some(0));
    }

    #[test]
    fn follow_up_jobs_wait_for_their_upstream() {
        let mut s = Scheduler::new(&[1, 1]);
        assert_eq!(s.try_start(A, 10, None, 0), Some(0));
        assert_eq!(
            s.try_start(A, 10, Some(0), 0),
            None,
            "upstream 0 is busy; 1 is not an option"
        );
        s.enqueue(A, 10, 1, Some(0), 10, false).unwrap();
        assert!(s.dispatch(0).is_empty());
        s.release(A, 0);
        assert_eq!(
            s.dispatch(0),
            vec![Grant {
                tenant: A,
                waiter: 1,
                upstream: 0
            }]
        );
    }

    #[test]
    fn tenants_take_turns_on_a_shared_pool() {
        let mut s = Scheduler::new(&[1]);
        s.try_start(A, 100, None, 0).unwrap();
        for id in 0..200 {
            s.enqueue(A, 100, id, None, 1_000, false).unwrap();
        }
        s.enqueue(B, 100, 1_000, None, 1_000, false).unwrap();
        s.release(A, 0);
        let first = s.dispatch(0);
        s.release(first[0].tenant, 0);
        let second = s.dispatch(0);
        let tenants = [first[0].tenant, second[0].tenant];
        assert!(
            tenants.contains(&B),
            "B's single job runs within two slot hand-offs, got {tenants:?}"
        );
    }

    #[test]
    fn a_retried_job_goes_to_the_front() {
        let mut s = Scheduler::new(&[1]);
        s.try_start(A, 1, None, 0).unwrap();
        s.enqueue(A, 1, 1, None, 1, false).unwrap();
        s.enqueue(A, 1, 2, None, 1, true).unwrap();
        assert_eq!(s.position(A, 2), Some(1));
    }

    #[test]
    fn shadow_jobs_start_past_the_caps_and_count_as_running() {
        let mut s = Scheduler::new(&[1, 1]);
        assert_eq!(s.force_start(A, 2, None, 0), (0, false));
        assert_eq!(s.force_start(A, 2, None, 0), (1, false));
        // The tenant is at its cap: the third would wait, so it goes to the least busy account.
        let (upstream, would_wait) = s.force_start(A, 2, None, 0);
        assert!(would_wait);
        assert_eq!(s.tenant_load(A), (3, 0));
        assert_eq!(s.upstream_in_flight().iter().sum::<u32>(), 3);
        assert_eq!(s.force_start(B, 5, Some(upstream), 0), (upstream, true));
        // Releases bring the counts back down; a queued enforced job then starts as usual.
        for u in [0, 1, upstream] {
            s.release(A, u);
        }
        s.release(B, upstream);
        assert_eq!(s.upstream_in_flight(), vec![0, 0]);
        assert_eq!(s.tenants_tracked(), 0);
    }
}
