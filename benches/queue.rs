//! Queue hand-off latency: from a slot's release to the next waiting job holding it, measured
//! across tasks on a two-worker runtime (the path a queued job takes before it is forwarded).
//!
//!     cargo bench --bench queue
//!
//! Prints p50 / p99 / max over 20,000 hand-offs, and the memory a queued job costs the pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate::identity::AccountId;
use floodgate::queue::{JobPool, JobTicket, TierGauges, UpstreamAccount};
use prometheus::IntGauge;

fn gauges() -> TierGauges {
    TierGauges {
        queued: IntGauge::new("q", "q").unwrap(),
        in_flight: IntGauge::new("f", "f").unwrap(),
        cancelled: prometheus::IntCounter::new("c", "c").unwrap(),
    }
}

fn pool(cap: u32) -> Arc<JobPool> {
    let account = UpstreamAccount {
        name: "upstream".into(),
        credential: None,
        authority: None,
        concurrency: cap,
    };
    Arc::new(JobPool::new(
        "bench".into(),
        vec![account],
        vec![IntGauge::new("u", "u").unwrap()],
        IntGauge::new("p", "p").unwrap(),
    ))
}

fn ticket(tenant: u128, concurrency: u32) -> JobTicket {
    JobTicket {
        tenant: AccountId(tenant),
        concurrency,
        max_queue: 1_000_000,
        max_wait: Duration::from_secs(600),
        affinity: None,
        front: false,
        tier_gauges: gauges(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn hand_offs(n: usize) -> Vec<Duration> {
    let pool = pool(u32::MAX);
    let t = ticket(1, 1);
    let mut samples = Vec::with_capacity(n);
    let mut held = pool.acquire(&t).await.unwrap();
    for _ in 0..n {
        let (p2, t2) = (pool.clone(), t.clone());
        let waiter = tokio::spawn(async move {
            let permit = p2.acquire(&t2).await.unwrap();
            (Instant::now(), permit)
        });
        // let the waiter reach the queue
        while pool.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let released = Instant::now();
        drop(held);
        let (got, permit) = waiter.await.unwrap();
        samples.push(got.duration_since(released));
        held = permit;
    }
    samples
}

/// floodgate's layout: two workers, each a current_thread runtime on its own thread. The job
/// finishing on worker R releases the slot; the job waiting on worker W takes it.
fn hand_offs_between_workers(n: usize) -> Vec<Duration> {
    let pool = pool(u32::MAX);
    let t = ticket(1, 1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, floodgate::queue::SlotPermit)>(1);
    let current = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let (wp, wt) = (pool.clone(), t.clone());
    let waiter = std::thread::spawn(move || {
        current().block_on(async move {
            for _ in 0..n {
                let permit = wp.acquire(&wt).await.unwrap();
                if tx.send((Instant::now(), permit)).await.is_err() {
                    return;
                }
            }
        })
    });
    let samples = current().block_on(async move {
        let mut held = pool.acquire(&t).await.unwrap();
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            while pool.waiting() == 0 {
                tokio::task::yield_now().await;
            }
            let released = Instant::now();
            drop(held);
            let (got, permit) = rx.recv().await.unwrap();
            samples.push(got.duration_since(released));
            held = permit;
        }
        samples
    });
    waiter.join().unwrap();
    samples
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// 10,000 queued jobs across 1,000 accounts: the pool's and the waiting tasks' memory.
async fn queued_memory() -> (u64, usize) {
    let pool = pool(u32::MAX);
    let before = rss_bytes();
    let mut holders = Vec::new();
    let mut waiters = Vec::new();
    for account in 0..1_000u128 {
        holders.push(pool.acquire(&ticket(account, 1)).await.ok());
    }
    for i in 0..10_000u128 {
        let (p, t) = (pool.clone(), ticket(i % 1_000, 1));
        waiters.push(tokio::spawn(async move { p.acquire(&t).await.is_ok() }));
    }
    while pool.waiting() < 10_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = rss_bytes();
    let waiting = pool.waiting();
    pool.close();
    for w in waiters {
        let _ = w.await;
    }
    drop(holders);
    (after.saturating_sub(before), waiting)
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "queue hand-off, {label}, n={}: p50 {:?}  p99 {:?}  max {:?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples.last().unwrap()
    );
}

fn main() {
    // One event loop, as in a floodgate worker: the waiter and the releaser share a thread.
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    report(
        "same worker (current_thread)",
        local.block_on(hand_offs(20_000)),
    );
    // floodgate's layout: the waiter parked on another worker's event loop.
    report(
        "between two workers (current_thread each)",
        hand_offs_between_workers(20_000),
    );
    // Two threads: the waiter may be woken on the other core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    report(
        "across threads (multi_thread, 2 workers)",
        rt.block_on(hand_offs(20_000)),
    );
    let (bytes, waiting) = rt.block_on(queued_memory());
    println!(
        "10,000 queued jobs over 1,000 accounts: RSS +{} KiB for {waiting} waiting = {} bytes per queued job (pool entry + waiting task)",
        bytes / 1024,
        bytes / waiting.max(1) as u64
    );
}
