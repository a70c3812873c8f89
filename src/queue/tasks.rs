//! Slots of asynchronous tasks: held from the create response until the task is seen to finish
//! (or its maximum job time passes), and where each task ran, for follow-up jobs.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::task::AbortHandle;

use super::leases::BoxFuture;
use super::slots::SlotPermit;
use crate::classify::ClassId;
use crate::identity::{AccountId, TierId};
use crate::penalties::Mode;

/// How many task origins are remembered for follow-up affinity (oldest forgotten first).
const MAX_ORIGINS: usize = 100_000;

/// Whose task it is: what its end teaches (a relax job earned, an incorrect task) is counted
/// for this account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOwner {
    pub account: AccountId,
    pub tier: TierId,
    pub class: ClassId,
    pub mode: Mode,
}

#[derive(Debug)]
struct Running {
    permit: SlotPermit,
    owner: TaskOwner,
    watcher: Option<AbortHandle>,
}

#[derive(Debug, Default)]
struct Origins {
    by_task: HashMap<String, (String, usize)>,
    order: VecDeque<String>,
}

/// A running task's slot as kept across a restart (beside the state file, or in Redis): whose
/// it is, where it runs, since when and until when at the latest. Names, not indices, so a
/// restart on an edited config finds them or drops them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldTask {
    pub task: String,
    /// The floodgate account (32 hex digits).
    pub account: String,
    pub tier: String,
    pub class: String,
    pub mode: String,
    pub pool: String,
    pub upstream_account: String,
    pub started_ms: u64,
    /// The slot is released then at the latest (its start plus the class's max job time).
    pub deadline_ms: u64,
    /// The shared leases its slot holds (key, lease id), taken over by whoever resumes it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<(String, String)>,
    /// The replica holding it (with Redis).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replica: String,
}

/// Where held tasks are kept so that a restart finds them.
pub trait TaskJournal: Send + Sync + Debug {
    /// Keeps a task's hold; resolves once it is kept (or could not be).
    fn held(&self, task: &HeldTask) -> BoxFuture<()>;
    /// Forgets a task's hold (it ended).
    fn ended(&self, task: &str);
}

/// Where replicas sharing a store record which upstream account ran each task: a follow-up
/// sent to another replica still reaches the account that knows its task.
pub trait SharedOrigins: Send + Sync + Debug {
    /// Records that `task` ran on `account` of `pool`, for `ttl`.
    fn remember(&self, task: &str, pool: &str, account: &str, ttl: Duration) -> BoxFuture<()>;
    /// The pool and upstream account name `task` ran on, if recorded.
    fn origin(&self, task: &str) -> BoxFuture<Option<(String, String)>>;
}

/// Tasks holding slots, and the upstream account each task ran on.
#[derive(Debug, Default)]
pub struct TaskTracker {
    running: Mutex<HashMap<String, Running>>,
    origins: Mutex<Origins>,
    /// The store where origins are shared with other replicas, when they are.
    shared: OnceLock<Arc<dyn SharedOrigins>>,
    /// Where holds are kept across a restart, when they are.
    journal: OnceLock<Arc<dyn TaskJournal>>,
}

impl TaskTracker {
    /// Holds `permit` until [`finish`](Self::finish) is called for `task`. A watcher (the
    /// active poller and the maximum-job-time timer) is aborted when the task finishes first.
    pub fn hold(
        &self,
        task: String,
        permit: SlotPermit,
        owner: TaskOwner,
        watcher: Option<AbortHandle>,
    ) {
        self.remember_origin(&task, &permit.pool().name, permit.upstream());
        let previous = self.lock_running().insert(
            task,
            Running {
                permit,
                owner,
                watcher,
            },
        );
        drop(previous); // a task id seen twice: the older hold ends (outside the lock)
    }

    /// Releases the task's slot and returns its owner; `None` when it was not held. Only one
    /// caller ever gets the owner of a task, so what the task's end teaches is counted once
    /// even when a poll and a client's get-task see it end together.
    pub fn finish(&self, task: &str) -> Option<TaskOwner> {
        let removed = self.lock_running().remove(task)?;
        if let Some(journal) = self.journal.get() {
            journal.ended(task);
        }
        if let Some(w) = removed.watcher {
            w.abort();
        }
        drop(removed.permit);
        Some(removed.owner)
    }

    /// Sets the watcher of a held task; aborts it when the task already finished.
    pub fn attach_watcher(&self, task: &str, watcher: AbortHandle) {
        match self.lock_running().get_mut(task) {
            Some(r) => r.watcher = Some(watcher),
            None => watcher.abort(),
        }
    }

    pub fn is_running(&self, task: &str) -> bool {
        self.lock_running().contains_key(task)
    }

    /// Tasks holding a slot.
    pub fn running(&self) -> usize {
        self.lock_running().len()
    }

    /// Keeps holds in `journal` across restarts.
    pub fn keep_holds(&self, journal: Arc<dyn TaskJournal>) {
        let _ = self.journal.set(journal);
    }

    /// Keeps a hold across a restart, when holds are kept; resolves once it is kept.
    pub async fn journal_hold(&self, task: &HeldTask) {
        if let Some(journal) = self.journal.get() {
            journal.held(task).await;
        }
    }

    /// Shares task origins with other replicas through `store`.
    pub fn share_origins(&self, store: Arc<dyn SharedOrigins>) {
        let _ = self.shared.set(store);
    }

    /// Records where a task ran for other replicas, when origins are shared; resolves once
    /// the store has it (or gave up).
    pub async fn share_origin(&self, task: &str, pool: &str, account: &str, ttl: Duration) {
        if let Some(shared) = self.shared.get() {
            shared.remember(task, pool, account, ttl).await;
        }
    }

    /// The pool and upstream account name a task ran on, as another replica recorded it.
    pub async fn shared_origin(&self, task: &str) -> Option<(String, String)> {
        self.shared.get()?.origin(task).await
    }

    /// The pool and upstream account a task ran on.
    pub fn origin(&self, task: &str) -> Option<(String, usize)> {
        self.origins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_task
            .get(task)
            .cloned()
    }

    pub fn remember_origin(&self, task: &str, pool: &str, upstream: usize) {
        let mut o = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        if o.by_task
            .insert(task.to_owned(), (pool.to_owned(), upstream))
            .is_none()
        {
            o.order.push_back(task.to_owned());
        }
        while o.order.len() > MAX_ORIGINS {
            if let Some(old) = o.order.pop_front() {
                o.by_task.remove(&old);
            }
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}
