//! Where accounts' runtime records (the accounts API) are kept, so a restart, a reload and every
//! replica see them: with the memory store, a JSON file beside the state file, replaced
//! atomically on every change (without `[state]`, in the process only, like the counters); with
//! Redis, one hash every replica reads, whose version a replica checks every
//! [`REFRESH_EVERY`] off the request path and reads again when it moved.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::snapshot::{sibling, write_atomic};
use super::{Home, Store, StoreError};
use crate::accounts::AccountRecord;
use crate::identity::AccountId;

/// Every account's record, by account.
pub type Records = BTreeMap<AccountId, AccountRecord>;

/// How often a change is tried again when other replicas keep changing the same record.
const WRITE_ATTEMPTS: usize = 5;

/// How often a replica on Redis checks whether another changed a record: a change reaches
/// every replica within this (plus one round trip).
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// The accounts' runtime records and their home.
#[derive(Debug)]
pub struct AccountBook {
    home: Home,
    records: Mutex<Arc<Records>>,
    /// One change at a time on this replica: read, check, write, apply.
    edits: tokio::sync::Mutex<()>,
    /// The Redis records' version last read.
    version: AtomicU64,
}

/// The records file that goes with the state file `state`.
pub fn records_file(state: &Path) -> PathBuf {
    sibling(state, "accounts.json")
}

impl AccountBook {
    /// The book for `store`: in Redis when the store is Redis, else in `file` (the state
    /// file's records file) or, without one, in the process.
    pub fn new(store: &Store, file: Option<PathBuf>) -> Self {
        let home = Home::of(store, file);
        Self {
            home,
            records: Mutex::new(Arc::default()),
            edits: tokio::sync::Mutex::new(()),
            version: AtomicU64::new(0),
        }
    }

    /// The records as they stand.
    pub fn records(&self) -> Arc<Records> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the records file at start; returns how many records it held. A missing file is
    /// none; a damaged one is set aside (`<file>.corrupt`, for the operator) and reported.
    pub fn load_file(&self) -> io::Result<usize> {
        let Home::File(path) = &self.home else {
            return Ok(0);
        };
        let records = match read_records_file(path) {
            Ok(records) => records,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // Kept for the operator, out of the way of the next change's write.
                let aside = sibling(path, "corrupt");
                let whereto = match std::fs::rename(path, &aside) {
                    Ok(()) => format!("set aside as {}", aside.display()),
                    Err(m) => format!("could not be set aside: {m}"),
                };
                return Err(io::Error::other(format!("{e}; {whereto}")));
            }
            Err(e) => return Err(e),
        };
        let n = records.len();
        self.set(records);
        Ok(n)
    }

    /// Changes `account`'s record: `change` is given the record as it stands where the
    /// records live (in Redis, as another replica may just have left it) and returns the new
    /// one, or `Ok(None)` for no change; it is stored, and then kept in this process. On Redis
    /// the write is a compare-and-set: when another replica changed the record between the read
    /// and the write, `change` runs again on theirs. Returns the record before and after.
    /// One change at a time on this replica.
    pub async fn update<E: From<StoreError>>(
        &self,
        account: AccountId,
        mut change: impl FnMut(&AccountRecord) -> Result<Option<AccountRecord>, E>,
    ) -> Result<Option<(AccountRecord, AccountRecord)>, E> {
        let _one_at_a_time = self.edits.lock().await;
        for _ in 0..WRITE_ATTEMPTS {
            let (before, stored) = self.current(account).await?;
            let Some(after) = change(&before)? else {
                return Ok(None);
            };
            if self.store(account, &after, stored.as_deref()).await? {
                let mut records = (*self.records()).clone();
                match after.is_empty() {
                    true => records.remove(&account),
                    false => records.insert(account, after.clone()),
                };
                self.set(records);
                return Ok(Some((before, after)));
            }
        }
        Err(StoreError::Unavailable(
            "the account's record kept changing under this change; nothing changed".into(),
        )
        .into())
    }

    /// The account's record where the records live, and in Redis its stored text (what a
    /// compare-and-set expects to find).
    async fn current(
        &self,
        account: AccountId,
    ) -> Result<(AccountRecord, Option<String>), StoreError> {
        let Home::Redis(redis) = &self.home else {
            let records = self.records();
            return Ok((records.get(&account).cloned().unwrap_or_default(), None));
        };
        let stored = redis.redis().record(&hex(account)).await?;
        let record = match &stored {
            None => AccountRecord::default(),
            Some(json) => serde_json::from_str(json).map_err(|e| {
                StoreError::Unavailable(format!("the account's record in redis is unreadable: {e}"))
            })?,
        };
        Ok((record, stored))
    }

    /// Writes `record` where the records live; false when Redis held something other than
    /// `expected` (another replica's change came first).
    async fn store(
        &self,
        account: AccountId,
        record: &AccountRecord,
        expected: Option<&str>,
    ) -> Result<bool, StoreError> {
        match &self.home {
            Home::Process => Ok(true),
            Home::File(path) => {
                let mut records = (*self.records()).clone();
                match record.is_empty() {
                    true => records.remove(&account),
                    false => records.insert(account, record.clone()),
                };
                let file: BTreeMap<String, &AccountRecord> =
                    records.iter().map(|(a, r)| (hex(*a), r)).collect();
                let bytes = serde_json::to_vec_pretty(&file).expect("records serialise");
                write_atomic(path, &bytes)
                    .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
                Ok(true)
            }
            Home::Redis(redis) => {
                let json = (!record.is_empty())
                    .then(|| serde_json::to_string(record).expect("a record serialises"));
                let written = redis
                    .redis()
                    .record_write(&hex(account), json.as_deref(), expected)
                    .await?;
                let Some(version) = written else {
                    return Ok(false);
                };
                // Only when no other replica wrote since this one last read: otherwise the
                // next refresh must read theirs too.
                let seen = self.version.load(Ordering::Relaxed);
                if version == seen + 1 {
                    self.version.store(version, Ordering::Relaxed);
                }
                Ok(true)
            }
        }
    }

    /// With Redis: reads the records again when another replica changed them (their version
    /// moved); returns whether they changed. Elsewhere nothing changes behind this process.
    pub async fn refresh(&self) -> Result<bool, StoreError> {
        let Home::Redis(redis) = &self.home else {
            return Ok(false);
        };
        let version = redis.redis().records_version().await?;
        let seen = self.version.load(Ordering::Relaxed);
        if version == seen {
            return Ok(false);
        }
        if version < seen {
            tracing::warn!(
                version,
                seen,
                "the accounts' records in redis went back to an older version (emptied or \
                 restored?); applying what redis holds now"
            );
        }
        let _one_at_a_time = self.edits.lock().await;
        let (version, fields) = redis.redis().records().await?;
        let records: Records = fields
            .into_iter()
            .filter_map(|(hex, json)| {
                let account = AccountId(u128::from_str_radix(&hex, 16).ok()?);
                match serde_json::from_str(&json) {
                    Ok(record) => Some((account, record)),
                    Err(e) => {
                        tracing::warn!(account = %hex, error = %e, "unreadable account record in redis");
                        None
                    }
                }
            })
            .collect();
        self.set(records);
        self.version.store(version, Ordering::Relaxed);
        Ok(true)
    }

    fn set(&self, records: Records) {
        *self.records.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(records);
    }
}

/// Reads a records file (`floodgate check` reads it too, to report what a config would drop);
/// a missing file holds none, a damaged one is `InvalidData`.
pub fn read_records_file(path: &Path) -> io::Result<Records> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Records::new()),
        Err(e) => return Err(e),
    };
    let file: BTreeMap<String, AccountRecord> = serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    Ok(file
        .into_iter()
        .filter_map(|(hex, r)| Some((AccountId(u128::from_str_radix(&hex, 16).ok()?), r)))
        .collect())
}

/// An account id as the API and the records show it: 32 hex digits.
pub fn hex(account: AccountId) -> String {
    format!("{:032x}", account.0)
}
