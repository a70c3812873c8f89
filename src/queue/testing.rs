//! Fixtures for the unit tests of a pool's files: a pool of one slot, a ticket for it, and
//! waiting until a job has queued.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;

use super::job::{JobTicket, UpstreamAccount};
use super::slots::JobPool;
use crate::identity::AccountId;
use crate::metrics::TierGauges;

fn gauges() -> TierGauges {
    TierGauges {
        queued: IntGauge::new("q", "q").unwrap(),
        in_flight: IntGauge::new("f", "f").unwrap(),
        cancelled: prometheus::IntCounter::new("c", "c").unwrap(),
    }
}

/// A pool of one upstream account that runs one job at a time, on the system clock.
pub fn one_slot_pool() -> Arc<JobPool> {
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

/// A ticket of tenant 1, one job at a time, with its own tier gauges.
pub fn ticket(max_wait: Duration) -> JobTicket {
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

/// Yields until one job waits in `pool`.
pub async fn until_waiting(pool: &JobPool) {
    for _ in 0..1_000 {
        if pool.waiting() == 1 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the job never queued");
}
