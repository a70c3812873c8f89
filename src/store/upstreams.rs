//! Where upstream accounts' health is kept, so every replica and a restart see an account
//! that rests or was disabled: with the memory store, a JSON file beside the state file,
//! replaced atomically on every change (without `[state]`, in the process only); with Redis,
//! one hash per upstream account, beside its job slots, which the lease asked for before every
//! job checks ([`crate::queue::leases`]) — a rest set on one replica holds on every replica
//! from their next job on. A replica also reads the records every
//! [`REFRESH_EVERY`](super::accounts::REFRESH_EVERY), for its status page and its own queues.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::redis::RedisStore;
use super::snapshot::{sibling, write_atomic};
use super::{Home, Store, StoreError};
use crate::queue::health::{Health, State};

/// Every upstream account's health, by account name (accounts in rotation with no failures
/// may be absent).
pub type HealthRecords = BTreeMap<String, Health>;

/// How often a change is tried again when other replicas keep changing the same record.
const WRITE_ATTEMPTS: usize = 5;

/// The upstream accounts' health and its home.
#[derive(Debug)]
pub struct UpstreamBook {
    home: Home,
    records: Mutex<HealthRecords>,
    /// One change at a time on this replica: read, change, write.
    edits: tokio::sync::Mutex<()>,
    /// With Redis: each record's version last read.
    versions: Mutex<HashMap<String, u64>>,
}

/// The health file that goes with the state file `state`.
pub fn health_file(state: &Path) -> PathBuf {
    sibling(state, "upstreams.json")
}

impl UpstreamBook {
    pub fn new(store: &Store, file: Option<PathBuf>) -> Self {
        let home = Home::of(store, file);
        Self {
            home,
            records: Mutex::default(),
            edits: tokio::sync::Mutex::new(()),
            versions: Mutex::default(),
        }
    }

    /// An account's health as this replica last knew it.
    pub fn get(&self, account: &str) -> Health {
        self.lock().get(account).cloned().unwrap_or_default()
    }

    /// Whether `account` has no failures on record and no probe running, as this replica
    /// knows it (asked for every job served, so without a copy of the record).
    pub fn is_clean(&self, account: &str) -> bool {
        self.lock().get(account).is_none_or(Health::is_clean)
    }

    /// Every record this replica knows.
    pub fn all(&self) -> HealthRecords {
        self.lock().clone()
    }

    /// Reads the health file at start; returns its records. A missing file holds none; a
    /// damaged one is set aside (`<file>.corrupt`) and reported.
    pub fn load_file(&self) -> io::Result<HealthRecords> {
        let Home::File(path) = &self.home else {
            return Ok(HealthRecords::new());
        };
        let records = match read_file(path) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let aside = sibling(path, "corrupt");
                let _ = std::fs::rename(path, &aside);
                return Err(io::Error::other(format!(
                    "{e}; set aside as {}",
                    aside.display()
                )));
            }
            Err(e) => return Err(e),
        };
        *self.lock() = records.clone();
        Ok(records)
    }

    /// Changes `account`'s health: `change` is given the record where the records live (in
    /// Redis, as another replica may just have left it) and returns the new one, or `None` for
    /// no change. On Redis the write is a compare-and-set, and `change` runs again on another
    /// replica's record when theirs came first. Returns the new record when it changed.
    pub async fn update(
        &self,
        account: &str,
        mut change: impl FnMut(&Health) -> Option<Health>,
    ) -> Result<Option<Health>, StoreError> {
        let _one_at_a_time = self.edits.lock().await;
        for _ in 0..WRITE_ATTEMPTS {
            let (version, before) = self.current(account).await?;
            let Some(after) = change(&before) else {
                // Not kept here: a record newer than this replica's must reach its pools,
                // and the next refresh applies it when its version is new to this replica.
                return Ok(None);
            };
            let Some(version) = self.store(account, &after, version).await? else {
                continue;
            };
            self.keep(account, after.clone(), version);
            return Ok(Some(after));
        }
        Err(StoreError::Unavailable(format!(
            "upstream account {account}'s health kept changing under this change"
        )))
    }

    /// With Redis: reads the health of `accounts` again; returns those another replica
    /// changed since this one last read them.
    pub async fn refresh(&self, accounts: &[&str]) -> Result<Vec<(String, Health)>, StoreError> {
        let Home::Redis(redis) = &self.home else {
            return Ok(Vec::new());
        };
        // Not between a change's read and its write: an older record must not win.
        let _one_at_a_time = self.edits.lock().await;
        let mut changed = Vec::new();
        for &account in accounts {
            let (version, json) = redis.redis().health(account).await?;
            if self.version(account) == Some(version) {
                continue;
            }
            let health = parse(account, json.as_deref());
            self.keep(account, health.clone(), version);
            changed.push((account.to_owned(), health));
        }
        Ok(changed)
    }

    /// The record where the records live, and its version there.
    async fn current(&self, account: &str) -> Result<(u64, Health), StoreError> {
        let Home::Redis(redis) = &self.home else {
            return Ok((0, self.get(account)));
        };
        let (version, json) = redis.redis().health(account).await?;
        Ok((version, parse(account, json.as_deref())))
    }

    /// Writes `health` where the records live; its new version, or `None` when another
    /// replica wrote since `version` was read.
    async fn store(
        &self,
        account: &str,
        health: &Health,
        version: u64,
    ) -> Result<Option<u64>, StoreError> {
        match &self.home {
            Home::Process => Ok(Some(0)),
            Home::File(path) => {
                let mut records = self.all();
                records.insert(account.to_owned(), health.clone());
                let bytes = serde_json::to_vec_pretty(&records).expect("health serialises");
                write_atomic(path, &bytes)
                    .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
                Ok(Some(0))
            }
            Home::Redis(redis) => write(redis.redis(), account, health, version).await,
        }
    }

    fn keep(&self, account: &str, health: Health, version: u64) {
        self.lock().insert(account.to_owned(), health);
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(account.to_owned(), version);
    }

    fn version(&self, account: &str) -> Option<u64> {
        let versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        versions.get(account).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthRecords> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A record written to Redis with what a lease's script checks beside it.
async fn write(
    redis: &RedisStore,
    account: &str,
    health: &Health,
    version: u64,
) -> Result<Option<u64>, StoreError> {
    let json = serde_json::to_string(health).expect("health serialises");
    let out = match health.state {
        State::Active => 0,
        State::Resting => i64::try_from(health.until_ms).unwrap_or(i64::MAX),
        State::Disabled => -1,
    };
    redis
        .health_write(account, version, &json, out, health.probing)
        .await
}

fn parse(account: &str, json: Option<&str>) -> Health {
    let Some(json) = json else {
        return Health::default();
    };
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::warn!(%account, error = %e, "unreadable upstream account health in redis");
        Health::default()
    })
}

/// Reads a health file; a missing file holds none, a damaged one is `InvalidData`.
pub fn read_file(path: &Path) -> io::Result<HealthRecords> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HealthRecords::new()),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}
