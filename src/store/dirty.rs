//! The memory store's side of the journal: which accounts changed since the last flush, and, in
//! strict mode, when a change is on disk.
//!
//! A request that changes an account's counts marks the account (a flag in its map entry, under
//! the lock the change already holds) and, only if the flag was not set, pushes the account's id
//! onto one of [`SHARDS`] short lists picked by the id's low bits. So a hot account costs one
//! push per flush, not one per request, and workers rarely meet on a list's lock. No allocation
//! (the lists keep their capacity from flush to flush), no syscall, no channel per request.
//!
//! The writer thread ([`super::keeper`]) takes the lists, bumping the epoch as it does, reads
//! each marked account's counters under its lock (clearing the flag there), and writes them.
//! In strict mode a request that changed counts reads the epoch after its change: the flush that
//! begins after that read is the one that carries the change, so it waits until that flush is
//! durable ([`Dirty::wait`]). The writer runs flushes back to back while requests wait, so a
//! batch of requests shares one write and one fsync (group commit).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::Thread;

use tokio::sync::watch;

use crate::identity::AccountId;

/// Lists of changed accounts; a power of two, so the id's low bits pick one.
pub const SHARDS: usize = 16;

/// One list, alone on its cache line so workers pushing to neighbours do not share one.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(Mutex<Vec<AccountId>>);

/// The accounts changed since the writer last took the lists.
#[derive(Debug)]
pub struct Dirty {
    shards: [Shard; SHARDS],
    /// Flushes begun: the writer adds one as it takes the lists.
    epoch: AtomicU64,
    strict: Option<Strict>,
}

#[derive(Debug)]
struct Strict {
    /// The last flush whose records are on disk (its epoch).
    durable: watch::Sender<u64>,
    /// The writer, woken by each waiting request.
    writer: OnceLock<Thread>,
}

/// A request's wait for its change to be durable (strict mode only).
pub type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Dirty {
    pub fn new(strict: bool) -> Self {
        Self {
            shards: Default::default(),
            epoch: AtomicU64::new(0),
            strict: strict.then(|| Strict {
                durable: watch::Sender::new(0),
                writer: OnceLock::new(),
            }),
        }
    }

    /// Notes that `account` changed. Called under the account's lock, and only when its flag was
    /// not already set, so each account is on the lists at most once.
    #[inline]
    pub fn push(&self, account: AccountId) {
        let shard = &self.shards[account.0 as usize % SHARDS].0;
        shard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(account);
    }

    /// For the writer: begins a flush. Swaps every list with an empty one of `spare` (whose
    /// capacity the lists keep) and returns the flush's epoch, for [`Dirty::durable`].
    pub fn take(&self, spare: &mut [Vec<AccountId>; SHARDS]) -> u64 {
        // The epoch moves before the lists are taken: a request that read the old epoch after
        // its change is on these lists or a later flush's, and waits for the epoch set here.
        let epoch = self.epoch.fetch_add(1, SeqCst) + 1;
        for (shard, spare) in self.shards.iter().zip(spare.iter_mut()) {
            let mut list = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut *list, spare);
        }
        epoch
    }

    /// For the writer: every change made before flush `epoch` began is on disk.
    pub fn durable(&self, epoch: u64) {
        if let Some(strict) = &self.strict {
            strict.durable.send_replace(epoch);
        }
    }

    /// For the writer: the thread [`Dirty::wait`] wakes.
    pub fn set_writer(&self, writer: Thread) {
        if let Some(strict) = &self.strict {
            let _ = strict.writer.set(writer);
        }
    }

    pub fn is_strict(&self) -> bool {
        self.strict.is_some()
    }

    /// In strict mode, the wait of a request that has just changed counts: it ends once the
    /// flush carrying the change is on disk. `None` otherwise.
    pub fn wait(&self) -> Option<Wait> {
        let strict = self.strict.as_ref()?;
        let ticket = self.epoch.load(SeqCst) + 1;
        let mut durable = strict.durable.subscribe();
        if let Some(writer) = strict.writer.get() {
            writer.unpark();
        }
        Some(Box::pin(async move {
            // An error means the writer is gone (shutdown): nothing more will be written.
            let _ = durable.wait_for(|&done| done >= ticket).await;
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_swaps_every_list_and_counts_flushes() {
        let dirty = Dirty::new(false);
        for k in 0..100u32 {
            dirty.push(AccountId::from_key(&k.to_le_bytes()));
        }
        let mut spare: [Vec<AccountId>; SHARDS] = Default::default();
        assert_eq!(dirty.take(&mut spare), 1);
        assert_eq!(spare.iter().map(Vec::len).sum::<usize>(), 100);
        for list in &mut spare {
            list.clear();
        }
        assert_eq!(dirty.take(&mut spare), 2);
        assert_eq!(spare.iter().map(Vec::len).sum::<usize>(), 0);
        assert!(dirty.wait().is_none(), "no waiting unless strict");
    }

    #[tokio::test]
    async fn a_strict_wait_ends_with_the_flush_after_the_change() {
        let dirty = Dirty::new(true);
        let mut spare: [Vec<AccountId>; SHARDS] = Default::default();
        let wait = dirty.wait().unwrap(); // ticket 1
        let first = dirty.take(&mut spare);
        let late = dirty.wait().unwrap(); // after flush 1 began: ticket 2
        dirty.durable(first);
        wait.await;
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), late).await;
        assert!(
            pending.is_err(),
            "flush 1 does not carry a change made after it began"
        );
        let late = dirty.wait().unwrap();
        let second = dirty.take(&mut spare);
        dirty.durable(second);
        late.await;
    }
}
