//! Queue hand-off latency: from a slot's release to the next waiting job holding it, or to its
//! request being written to the upstream, measured as floodgate runs jobs.
//!
//!     cargo bench --bench queue
//!
//! Prints p50 / p99 / max over 20,000 hand-offs, and the memory a queued job costs the pool.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floodgate::identity::AccountId;
use floodgate::queue::{
    GrantNotice, Granted, JobPool, JobTicket, SlotPermit, StartOnGrant, TierGauges, UpstreamAccount,
};
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
        origin: None,
        concurrency: cap,
    };
    Arc::new(JobPool::new(
        "bench".into(),
        vec![account],
        vec![IntGauge::new("u", "u").unwrap()],
        IntGauge::new("p", "p").unwrap(),
        Arc::new(floodgate::clock::SystemClock),
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

/// A loopback "upstream" that reads and discards whatever it is sent.
fn sink() -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
    });
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// floodgate's queued-job path: the waiting job leaves a start-on-grant hook, so the worker
/// that frees the slot writes the job's request to the upstream at once, without waiting for
/// the waiter's worker to wake. Measured from the release to the request written to a
/// loopback socket.
fn forwards_by_granting_worker(n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let pool = pool(u32::MAX);
    let t = ticket(1, 1);
    let upstream = Arc::new(sink());
    // when the forward's write began, and when it returned
    let written: Arc<Mutex<Option<(Instant, Instant)>>> = Arc::new(Mutex::new(None));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<floodgate::queue::SlotPermit>(1);
    let current = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let releaser = current();
    // held before the waiter starts, so every one of the waiter's jobs queues
    let first = releaser.block_on(pool.acquire(&t)).unwrap();
    let (wp, wt, ww) = (pool.clone(), t.clone(), written.clone());
    let waiter = std::thread::spawn(move || {
        current().block_on(async move {
            for _ in 0..n {
                let (up, at, permits) = (upstream.clone(), ww.clone(), tx.clone());
                let hook = move || -> Option<StartOnGrant> {
                    Some(Box::new(move |permit: SlotPermit, notice: GrantNotice| {
                        tokio::spawn(async move {
                            let req = b"POST /mj/submit/imagine HTTP/1.1\r\nhost: up\r\ncontent-length: 2\r\n\r\n{}";
                            let writing = Instant::now();
                            (&*up).write_all(req).unwrap();
                            *at.lock().unwrap() = Some((writing, Instant::now()));
                            // the job's own task gets the permit with the answer
                            let _ = permits.send(permit).await;
                            drop(notice);
                        });
                    }))
                };
                let granted = wp.acquire_starting(&wt, hook).await.unwrap();
                assert!(matches!(granted, Granted::Started), "the hook took the job");
            }
        })
    });
    let samples = releaser.block_on(async move {
        let mut held = first;
        let mut samples = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            while pool.waiting() == 0 {
                tokio::task::yield_now().await;
            }
            let released = Instant::now();
            drop(held);
            held = rx.recv().await.unwrap();
            // the hook's task wrote the request before passing the permit on
            let at = written.lock().unwrap().take();
            let (writing, done) = at.expect("the forward was written");
            samples.0.push(writing.duration_since(released));
            samples.1.push(done.duration_since(released));
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
    // floodgate's queued-job path: the releasing worker writes the next job's request.
    let (began, written) = forwards_by_granting_worker(20_000);
    report(
        "release to the next job's forward beginning (its upstream write), on the releasing worker",
        began,
    );
    report(
        "release to the next job's request written to a loopback upstream (write returned)",
        written,
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
