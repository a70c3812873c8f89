//! Where the tasks holding job slots are kept, so that a restart does not forget them: right
//! after a deploy every account could otherwise start its full concurrency again while its old
//! tasks still run upstream. With the memory store, a JSON file beside the state file, written
//! before the client hears of the task and whenever one ends; with Redis, one hash every replica
//! reads (`fg:{tasks}:held`), each record naming the replica that holds it — a replica that is
//! no longer alive (its `alive` key expired) has its tasks taken over, by the replica that
//! restarts in its place or any other.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::snapshot::{sibling, write_atomic};
use super::{Home, Store, StoreError};
use crate::queue::leases::{replica_id, BoxFuture};
use crate::queue::tasks::{HeldTask, TaskJournal};

/// How long a replica's word that it is alive lasts (it says it again every second): a task
/// of a replica that died is taken over within this and a second, well before its slot leases
/// (renewed every third of `lease_ttl`, 10 s by default) expire.
pub const ALIVE_FOR: Duration = Duration::from_secs(3);

/// The held tasks and their home.
#[derive(Debug)]
pub struct TaskBook {
    home: Home,
    /// With a file: every held task, as written last.
    held: Mutex<BTreeMap<String, HeldTask>>,
    replica: String,
}

/// The held tasks' file that goes with the state file `state`.
pub fn tasks_file(state: &Path) -> PathBuf {
    sibling(state, "tasks.json")
}

impl TaskBook {
    /// The book for `store`: in Redis, or in `file` (beside the state file); `None` when holds
    /// are not kept (the memory store without `[state]`).
    pub fn new(store: &Store, file: Option<PathBuf>) -> Option<Self> {
        let home = Home::of(store, file);
        if matches!(home, Home::Process) {
            return None;
        }
        Some(Self {
            home,
            held: Mutex::default(),
            replica: replica_id(),
        })
    }

    /// The tasks to resume: with a file, every one it holds (this process is its only
    /// reader); with Redis, those of replicas no longer alive.
    pub async fn orphans(&self) -> Result<Vec<(HeldTask, String)>, StoreError> {
        match &self.home {
            Home::File(path) => {
                let held = read_file(path)
                    .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
                // What the file holds stays in it until resumed or ended: a task held
                // meanwhile rewrites the file with these too.
                self.held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(held.clone());
                Ok(held
                    .into_values()
                    .map(|t| {
                        let raw = serde_json::to_string(&t).expect("a held task serialises");
                        (t, raw)
                    })
                    .collect())
            }
            Home::Redis(redis) => {
                let mut out = Vec::new();
                let mut alive = std::collections::HashMap::new(); // each replica asked once
                for (task, raw) in redis.redis().held_tasks().await? {
                    let Ok(held) = serde_json::from_str::<HeldTask>(&raw) else {
                        tracing::warn!(%task, "unreadable held task in redis; dropped");
                        redis.redis().held_task_write(&task, None).await?;
                        continue;
                    };
                    if held.replica == self.replica {
                        continue;
                    }
                    let is_alive = match alive.get(&held.replica) {
                        Some(known) => *known,
                        None => {
                            let known = redis.redis().is_alive(&held.replica).await?;
                            alive.insert(held.replica.clone(), known);
                            known
                        }
                    };
                    if is_alive {
                        continue;
                    }
                    out.push((held, raw));
                }
                Ok(out)
            }
            Home::Process => Ok(Vec::new()),
        }
    }

    /// Takes a task over from a replica gone (`raw`: its record as read): false when another
    /// replica took it first. The caller then holds it, which keeps it under this replica.
    pub async fn adopt(&self, raw: &str, task: &HeldTask) -> Result<bool, StoreError> {
        let Home::Redis(redis) = &self.home else {
            return Ok(true);
        };
        let mine = HeldTask {
            replica: self.replica.clone(),
            ..task.clone()
        };
        let json = serde_json::to_string(&mine).expect("a held task serialises");
        redis.redis().held_task_adopt(&task.task, &json, raw).await
    }

    /// With Redis: says this replica is alive (every second, from the control thread).
    pub async fn keep_alive(&self) -> Result<(), StoreError> {
        match &self.home {
            Home::Redis(redis) => redis.redis().alive(&self.replica, ALIVE_FOR).await,
            Home::File(_) | Home::Process => Ok(()),
        }
    }

    /// Writes the file with `change` made to the held tasks.
    fn write_file(&self, path: &Path, change: impl FnOnce(&mut BTreeMap<String, HeldTask>)) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut held);
        let bytes = serde_json::to_vec_pretty(&*held).expect("held tasks serialise");
        if let Err(e) = write_atomic(path, &bytes) {
            tracing::warn!(file = %path.display(), error = %e, "held tasks not kept; a restart would forget them");
        }
    }
}

impl TaskJournal for Arc<TaskBook> {
    fn held(&self, task: &HeldTask) -> BoxFuture<()> {
        let mut task = task.clone();
        let book = self.clone();
        Box::pin(async move {
            match &book.home {
                Home::File(path) => book.write_file(path, |held| {
                    held.insert(task.task.clone(), task);
                }),
                Home::Redis(redis) => {
                    task.replica = book.replica.clone();
                    let json = serde_json::to_string(&task).expect("a held task serialises");
                    if let Err(e) = redis.redis().held_task_write(&task.task, Some(&json)).await {
                        tracing::warn!(task = %task.task, error = %e, "held task not kept in redis");
                    }
                }
                Home::Process => {} // not built without a home to keep holds in
            }
        })
    }

    fn ended(&self, task: &str) {
        match &self.home {
            Home::File(path) => self.write_file(path, |held| {
                held.remove(task);
            }),
            Home::Redis(redis) => {
                let (redis, task) = (redis.clone(), task.to_owned());
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        if let Err(e) = redis.redis().held_task_write(&task, None).await {
                            tracing::debug!(%task, error = %e, "an ended task's record stays until it is resumed and ends again");
                        }
                    });
                }
            }
            Home::Process => {}
        }
    }
}

/// Reads a held tasks' file; a missing file holds none.
fn read_file(path: &Path) -> io::Result<BTreeMap<String, HeldTask>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}
