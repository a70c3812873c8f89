//! A pool whose slots are shared with other replicas: a job granted its local slot then waits
//! for the shared leases ([`super::leases`]) of its tenant and of its upstream account, and its
//! slot is whole only once it holds them. The permit gives them back before the local slot
//! ([`super::slots`]).

use std::sync::Arc;

use tokio::time::Instant;

use super::health::Health;
use super::job::{JobTicket, QueueError};
use super::leases::{self, NotHeld, SlotLeases, Slots};
use super::scheduler::UpstreamIdx;
use super::slots::{JobPool, SlotPermit};

impl JobPool {
    /// Shares this pool's slots with other replicas through leases in the shared store.
    pub fn share_slots(&self, backend: Arc<dyn SlotLeases>) {
        let _ = self.leases.set(backend);
    }

    /// The store of the leases, when this pool's slots are shared.
    pub(super) fn shared(&self) -> Option<&Arc<dyn SlotLeases>> {
        self.leases.get()
    }

    /// Completes a local slot with the shared leases of the tenant and the upstream account.
    /// An upstream account the shared store has out of rotation (another replica rested or
    /// disabled it) gives no lease: the pool learns its health, and the job's local slot goes
    /// back for another account.
    pub(super) async fn hold_leases(
        &self,
        backend: &Arc<dyn SlotLeases>,
        mut permit: SlotPermit,
        ticket: &JobTicket,
        queued_at: Instant,
    ) -> Result<SlotPermit, Unleased> {
        let deadline = queued_at + ticket.max_wait;
        let upstream = &self.accounts[permit.upstream];
        let tenant = (ticket.concurrency != u32::MAX).then(|| Slots::Counted {
            key: format!("tenant:{:032x}", ticket.tenant.0),
            cap: ticket.concurrency,
        });
        let account = if self.is_plain() {
            (upstream.concurrency != u32::MAX).then(|| Slots::Counted {
                key: format!("slots:{}:{}", self.name, upstream.name),
                cap: upstream.concurrency,
            })
        } else {
            // Always asked, capped or not: the ask is where a rest or a disable set by
            // another replica is seen, in the same step.
            Some(Slots::Upstream {
                pool: self.name.clone(),
                account: upstream.name.clone(),
                tenant: format!("{:032x}", ticket.tenant.0),
                cap: upstream.concurrency,
                clock: self.clock.clone(),
            })
        };
        for slots in [tenant, account].into_iter().flatten() {
            match leases::hold(backend, slots, deadline).await {
                Ok(guard) => permit.leases.push(guard),
                Err(NotHeld::Out(health)) => {
                    return Err(Unleased::Out(permit.upstream, health));
                }
                Err(NotHeld::TimedOut) => {
                    let durations = self.lock().durations;
                    return Err(Unleased::TimedOut(QueueError::TimedOut {
                        retry_after_secs: durations.retry_after_secs(1, ticket.concurrency),
                    }));
                }
            }
        }
        permit.waited = queued_at.elapsed();
        Ok(permit)
    }
}

/// Why a local slot was not completed with its leases.
#[derive(Debug)]
pub(super) enum Unleased {
    TimedOut(QueueError),
    /// The upstream account is out of rotation in the shared store.
    Out(UpstreamIdx, Health),
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::queue::testing::{one_slot_pool, ticket, until_waiting};

    /// Leases held in memory; giving one back waits until the test opens `releases`.
    #[derive(Debug)]
    struct HeldLeases {
        held: Arc<Mutex<HashMap<String, Vec<String>>>>,
        /// Asks answered "all slots held".
        refused: AtomicUsize,
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
}
