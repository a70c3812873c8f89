//! Job slots shared across replicas: before a job runs, its replica takes a lease on the slot in
//! the shared store; the lease is renewed while the job runs and expires by itself if the
//! replica dies, so a crashed replica never holds a slot for long.
//!
//! Each replica still orders its own waiting jobs (FIFO per account); a job granted a local slot
//! then waits for a shared lease, polling every few milliseconds (the hand-off delay is measured
//! in docs/operations/redis.md). A finished job gives its leases back before its local slot, so
//! the next job of the same replica finds its lease free and the replica's FIFO order holds.
//!
//! A lease is given back on the runtime that took it, by that runtime's [`Releaser`]: a drop
//! sends its release there and spawns nothing.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::releaser::Releaser;

/// A boxed future, for an object-safe backend.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How often a job waiting for a shared lease asks again.
pub const POLL: Duration = Duration::from_millis(5);

/// A store that can hold expiring leases on counted slots.
pub trait SlotLeases: Send + Sync + Debug {
    /// Takes a lease on one of `cap` slots under `key`; false when all are held.
    fn acquire(&self, key: String, cap: u32, lease: String) -> BoxFuture<bool>;
    /// Extends a held lease.
    fn renew(&self, key: String, lease: String) -> BoxFuture<bool>;
    /// Gives a lease back; giving back a lease not held does nothing.
    fn release(&self, key: String, lease: String) -> BoxFuture<()>;
    /// How long a lease lives without renewal.
    fn ttl(&self) -> Duration;
}

/// A held lease: renewed in the background, released by [`give_back`] or, failing that, by
/// its runtime's [`Releaser`] on drop.
#[derive(Debug)]
pub struct LeaseGuard {
    backend: Arc<dyn SlotLeases>,
    key: String,
    lease: String,
    renewer: Option<AbortHandle>,
    releaser: Releaser,
}

impl LeaseGuard {
    /// Gives the lease back, resolving once the store has it.
    fn release(mut self) -> BoxFuture<()> {
        self.stop_renewing();
        let key = std::mem::take(&mut self.key);
        self.backend.release(key, std::mem::take(&mut self.lease))
    }

    fn stop_renewing(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.key.is_empty() {
            return; // released already
        }
        self.stop_renewing();
        let key = std::mem::take(&mut self.key);
        let lease = std::mem::take(&mut self.lease);
        self.releaser.send(self.backend.release(key, lease));
    }
}

/// Gives `leases` back one after the other on the runtime that took them, then drops `then` —
/// the local slot, freed only once its leases are back. Without leases, `then` drops here.
/// When that runtime has gone, both drop here: the leases expire by themselves.
pub fn give_back<T: Send + 'static>(leases: Vec<LeaseGuard>, then: T) {
    let Some(releaser) = leases.first().map(|l| l.releaser.clone()) else {
        return;
    };
    releaser.send(async move {
        for lease in leases {
            lease.release().await;
        }
        drop(then);
    });
}

/// An acquire in flight. Dropped before its answer came (the job's client left), the store may
/// still have granted the lease: it is given back, rather than held until it expires.
struct Asking<'a> {
    backend: &'a Arc<dyn SlotLeases>,
    releaser: &'a Releaser,
    key: &'a str,
    lease: &'a str,
    answered: bool,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let release = self
                .backend
                .release(self.key.to_owned(), self.lease.to_owned());
            self.releaser.send(release);
        }
    }
}

static NEXT_LEASE: AtomicU64 = AtomicU64::new(0);

/// A lease id unique to this process and job.
pub fn lease_id() -> String {
    let n = NEXT_LEASE.fetch_add(1, Ordering::Relaxed);
    format!("{}:{}:{n}", std::process::id(), replica_nonce())
}

fn replica_nonce() -> u64 {
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NONCE.get_or_init(|| {
        let t = std::time::Instant::now();
        xxhash_rust::xxh3::xxh3_64(format!("{t:?}{:?}", std::thread::current().id()).as_bytes())
    })
}

/// Waits (polling) for a lease on `key` until `deadline`; `None` when the deadline passed.
pub async fn hold(
    backend: &Arc<dyn SlotLeases>,
    key: String,
    cap: u32,
    deadline: Instant,
) -> Option<LeaseGuard> {
    let lease = lease_id();
    let releaser = Releaser::current();
    loop {
        let mut asking = Asking {
            backend,
            releaser: &releaser,
            key: &key,
            lease: &lease,
            answered: false,
        };
        let granted = backend.acquire(key.clone(), cap, lease.clone()).await;
        asking.answered = true;
        drop(asking);
        if granted {
            let renewer =
                tokio::spawn(renew(backend.clone(), key.clone(), lease.clone())).abort_handle();
            return Some(LeaseGuard {
                backend: backend.clone(),
                key,
                lease,
                renewer: Some(renewer),
                releaser,
            });
        }
        if Instant::now() + POLL > deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn renew(backend: Arc<dyn SlotLeases>, key: String, lease: String) {
    let every = backend.ttl() / 3;
    loop {
        tokio::time::sleep(every).await;
        if !backend.renew(key.clone(), lease.clone()).await {
            tracing::warn!(%key, "a job slot lease could not be renewed");
        }
    }
}
