//! Where a `Drop` sends what it cannot wait for: giving a shared slot's leases back to the store.
//!
//! A drop cannot await, and the runtime that happens to be current there is the wrong one to ask:
//! there may be none, or one shutting down, whose spawned task never runs (and a slot it was to
//! free stays taken). So every runtime that takes leases starts one release task, in async code,
//! when it takes its first; a lease, and the permit holding it, keep a [`Releaser`] to that task
//! and send it their release on drop: an unbounded send, which neither blocks nor spawns.
//!
//! The task outlives every lease its runtime took while the runtime runs. Once the runtime has
//! shut down, work sent to it is dropped where it is sent, or with the task's queue: work is
//! written so that dropping it is the fallback — a local slot it would free is freed by its own
//! drop, and a lease not given back expires by itself.
//!
//! One runtime per thread at a time (each floodgate worker runs its own): the releaser of a
//! thread whose runtime has gone is replaced by the next runtime that asks.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;

/// A release to run on its runtime.
type Work = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The release task of one runtime.
#[derive(Debug, Clone)]
pub struct Releaser(mpsc::UnboundedSender<Work>);

thread_local! {
    static CURRENT: RefCell<Option<Releaser>> = const { RefCell::new(None) };
}

impl Releaser {
    /// The release task of the runtime this runs on, started on first use. Async code only: it
    /// panics outside a runtime, as `tokio::spawn` does.
    pub fn current() -> Self {
        CURRENT.with(|current| {
            let mut current = current.borrow_mut();
            if let Some(releaser) = current.as_ref().filter(|r| !r.0.is_closed()) {
                return releaser.clone();
            }
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(rx));
            let releaser = Releaser(tx);
            *current = Some(releaser.clone());
            releaser
        })
    }

    /// Has `work` run on the releaser's runtime; drops it here when that runtime has gone.
    pub fn send(&self, work: impl Future<Output = ()> + Send + 'static) {
        let _ = self.0.send(Box::pin(work));
    }
}

/// Starts each release as it comes, so that one slow store answer holds up no other release.
async fn run(mut work: mpsc::UnboundedReceiver<Work>) {
    while let Some(release) = work.recv().await {
        tokio::spawn(release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Counts its drops: the stand-in for a slot that a release frees.
    struct Freed(Arc<AtomicUsize>);

    impl Drop for Freed {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn work_sent_from_a_drop_runs_on_the_runtime_that_started_the_releaser() {
        let releaser = Releaser::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || releaser.send(async move { tx.send(()).unwrap() }))
            .join()
            .unwrap();
        rx.await.unwrap();
    }

    #[test]
    fn work_for_a_runtime_that_has_gone_is_dropped_and_its_slot_freed() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let releaser = runtime.block_on(async { Releaser::current() });
        drop(runtime);
        let freed = Arc::new(AtomicUsize::new(0));
        let slot = Freed(freed.clone());
        releaser.send(async move { drop(slot) });
        assert_eq!(freed.load(Ordering::SeqCst), 1);
        let again = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let next = again.block_on(async { Releaser::current() });
        assert!(!next.0.is_closed(), "the next runtime starts its own");
    }
}
