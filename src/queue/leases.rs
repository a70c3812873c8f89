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

use super::health::Health;
use super::releaser::Releaser;

/// A boxed future, for an object-safe backend.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How often a job waiting for a shared lease asks again.
pub const POLL: Duration = Duration::from_millis(5);

/// What asking for a lease got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leased {
    Granted,
    /// Every slot is held.
    Full,
    /// An upstream account out of rotation in the shared store: its health there.
    Out(Health),
}

/// The lease name of an upstream account's slots in a pool: its health and its slots in every
/// pool are kept together (`tag|rest`: one hash tag, one cluster slot).
pub fn upstream_slots(pool: &str, account: &str) -> String {
    format!("upstream:{account}|{pool}")
}

/// An ask for one of an upstream account's slots.
#[derive(Debug, Clone)]
pub struct UpstreamAsk {
    /// From [`upstream_slots`].
    pub key: String,
    pub account: String,
    /// The tenant whose job asks (32 hex digits): tenants take turns across replicas.
    pub tenant: String,
    pub cap: u32,
    /// Now, on the clock rests are set on.
    pub now_ms: u64,
}

/// A store that can hold expiring leases on counted slots.
pub trait SlotLeases: Send + Sync + Debug {
    /// Takes a lease on one of `cap` slots under `key`; false when all are held.
    fn acquire(&self, key: String, cap: u32, lease: String) -> BoxFuture<bool>;
    /// Takes a lease on one of an upstream account's slots for a tenant's job, unless the
    /// store has the account out of rotation, or gives the slot to another tenant's turn.
    fn acquire_upstream(&self, ask: UpstreamAsk, lease: String) -> BoxFuture<Leased> {
        let granted = self.acquire(ask.key, ask.cap, lease);
        Box::pin(async move {
            match granted.await {
                true => Leased::Granted,
                false => Leased::Full,
            }
        })
    }
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
    format!("{}:{n}", replica_id())
}

/// This process among the replicas sharing a store: its pid and a nonce.
pub fn replica_id() -> String {
    format!("{}:{}", std::process::id(), replica_nonce())
}

fn replica_nonce() -> u64 {
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NONCE.get_or_init(|| {
        let t = std::time::Instant::now();
        xxhash_rust::xxh3::xxh3_64(format!("{t:?}{:?}", std::thread::current().id()).as_bytes())
    })
}

/// Which slots a lease is asked for.
#[derive(Debug, Clone)]
pub enum Slots {
    /// One of `cap` slots under `key`.
    Counted { key: String, cap: u32 },
    /// One of an upstream account's `cap` slots in a pool, while it is in rotation at the
    /// time the clock gives then.
    Upstream {
        pool: String,
        account: String,
        tenant: String,
        cap: u32,
        clock: Arc<dyn crate::clock::Clock>,
    },
}

impl Slots {
    fn key(&self) -> String {
        match self {
            Slots::Counted { key, .. } => key.clone(),
            Slots::Upstream { pool, account, .. } => upstream_slots(pool, account),
        }
    }

    fn ask(&self, backend: &Arc<dyn SlotLeases>, key: &str, lease: &str) -> BoxFuture<Leased> {
        match self {
            Slots::Counted { cap, .. } => {
                let granted = backend.acquire(key.to_owned(), *cap, lease.to_owned());
                Box::pin(async move {
                    match granted.await {
                        true => Leased::Granted,
                        false => Leased::Full,
                    }
                })
            }
            Slots::Upstream {
                account,
                tenant,
                cap,
                clock,
                ..
            } => {
                let ask = UpstreamAsk {
                    key: key.to_owned(),
                    account: account.clone(),
                    tenant: tenant.clone(),
                    cap: *cap,
                    now_ms: clock.now_ms(),
                };
                backend.acquire_upstream(ask, lease.to_owned())
            }
        }
    }
}

/// Why no lease was held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotHeld {
    /// The deadline passed with every slot held.
    TimedOut,
    /// The upstream account is out of rotation: its health in the shared store.
    Out(Health),
}

/// Waits (polling) for a lease on `slots` until `deadline`.
pub async fn hold(
    backend: &Arc<dyn SlotLeases>,
    slots: Slots,
    deadline: Instant,
) -> Result<LeaseGuard, NotHeld> {
    let key = slots.key();
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
        let leased = slots.ask(backend, &key, &lease).await;
        asking.answered = true;
        drop(asking);
        if let Leased::Out(health) = leased {
            return Err(NotHeld::Out(health));
        }
        if leased == Leased::Granted {
            let renewer =
                tokio::spawn(renew(backend.clone(), key.clone(), lease.clone())).abort_handle();
            return Ok(LeaseGuard {
                backend: backend.clone(),
                key,
                lease,
                renewer: Some(renewer),
                releaser,
            });
        }
        if Instant::now() + POLL > deadline {
            return Err(NotHeld::TimedOut);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Takes over a lease held before a restart (by this replica's predecessor, or a replica that
/// died): renewed at once and from then on; `None` when it had already expired.
pub async fn resume(backend: &Arc<dyn SlotLeases>, key: &str, lease: &str) -> Option<LeaseGuard> {
    if !backend.renew(key.to_owned(), lease.to_owned()).await {
        return None;
    }
    let renewer =
        tokio::spawn(renew(backend.clone(), key.to_owned(), lease.to_owned())).abort_handle();
    Some(LeaseGuard {
        backend: backend.clone(),
        key: key.to_owned(),
        lease: lease.to_owned(),
        renewer: Some(renewer),
        releaser: Releaser::current(),
    })
}

impl LeaseGuard {
    /// The lease's key and id, to be taken over after a restart.
    pub fn id(&self) -> (String, String) {
        (self.key.clone(), self.lease.clone())
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
