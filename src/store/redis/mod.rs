//! The Redis store: limit counters shared by every floodgate replica.
//!
//! Each decision is one round trip: a server-side Lua script (sent with EVALSHA) checks every
//! limit of the request and consumes all or none, sets the key's expiry in the same script, and
//! reads the time from Redis `TIME`, so replicas' clocks cannot skew windows (tests can have it
//! take the caller's time instead: [`RedisStore::use_caller_clock`]). An account's
//! counters are one hash, `fg:{<account>}:c`, whose braces are a Redis Cluster hash tag; fields
//! are counter ids, values `count:end_ms` — the same [`Counter`] the memory store keeps, so the
//! pure [`usage_of`](crate::limits) renders the headers from either store.
//!
//! The script (`scripts.rs`) is the one limit decision not written in Rust; it mirrors
//! [`decide`](crate::limits::decide). It holds no window arithmetic of its own: each rule comes
//! with its window's [`Span`](crate::limits::Span) and the script computes a new window's end
//! by the formula of [`Window::end_for`](crate::limits::Window::end_for).
//! `tests/differential.rs` checks the two decisions agree. Every other update (job penalties,
//! give-backs, tallies) reads the account, runs its closure in Rust, and writes back with
//! compare-and-set, retrying when another replica wrote the account in between.
//!
//! Each worker thread has its own multiplexed connection, redialled when Redis closed it
//! (`conn.rs`): a restart costs no request beyond the outage itself.

mod conn;
mod scripts;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use super::{Backend, StoreError, Update};
use crate::identity::AccountId;
use crate::limits::{usage_of, Counter, CounterId, Counters, Decision, Refusal, Rule, WindowList};
use conn::Connections;
pub use conn::Login;
use scripts::Scripts;

/// How many times an update is retried when another replica wrote the account meanwhile.
const CAS_ATTEMPTS: usize = 8;

/// Counters shared through a Redis server (or a Redis Cluster).
pub struct RedisStore {
    conns: Connections,
    scripts: Scripts,
    /// Added to Redis `TIME`: zero in production; tests move the shared clock with it.
    offset_ms: AtomicI64,
    /// Tests only: decide at the `now_ms` each operation is given instead of Redis `TIME`.
    caller_clock: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.conns.url)
            .field("timeout", &self.conns.timeout)
            .finish()
    }
}

/// The key of an account's counters; the braces keep one account's keys on one cluster slot.
pub fn account_key(account: AccountId) -> String {
    format!("fg:{{{:032x}}}:c", account.0)
}

/// The hash of accounts' runtime records (the accounts API), one field per account and the
/// `~version` field every write bumps.
pub const RECORDS_KEY: &str = "fg:{accounts}:records";

/// The key of a set of shared job slots (one hash tag per set). A name `tag|rest` keeps its
/// hash tag to `tag`: an upstream account's slots in each pool share the slot of its health.
pub fn lease_key(name: &str) -> String {
    match name.split_once('|') {
        Some((tag, rest)) => format!("fg:{{{tag}}}:leases:{rest}"),
        None => format!("fg:{{{name}}}:leases"),
    }
}

/// The name of an upstream account's slots in a pool, for [`lease_key`].
pub fn upstream_slots(pool: &str, account: &str) -> String {
    format!("upstream:{account}|{pool}")
}

/// The hash of an upstream account's health: `v` (bumped by every write), `json` (the record),
/// `out` and `probe` (what a lease's script checks).
pub fn health_key(account: &str) -> String {
    format!("fg:{{upstream:{account}}}:health")
}

/// The hash of tasks holding job slots, task id -> record: what a replica resumes after a
/// restart, or takes over from a replica that died.
pub const HELD_TASKS_KEY: &str = "fg:{tasks}:held";

/// The key a replica keeps alive while it runs.
pub fn alive_key(replica: &str) -> String {
    format!("fg:{{replica:{replica}}}:alive")
}

/// The key recording which upstream account ran a task (for its follow-ups).
pub fn origin_key(task: &str) -> String {
    format!("fg:{{task:{task}}}:origin")
}

/// What asking for a lease on an upstream account's slot got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamLease {
    Granted,
    /// Every slot is held.
    Full,
    /// The account is out of rotation; its health record as stored (JSON).
    Out(String),
}

impl RedisStore {
    /// A store for `url` (e.g. `redis://127.0.0.1:6379/0`) signing in as `login` says, when it
    /// says; nothing is connected yet.
    pub fn new(url: &str, timeout: Duration, login: &Login<'_>) -> Result<Self, StoreError> {
        Ok(Self::on(Connections::server(url, timeout, login)?))
    }

    /// A store on the Redis Cluster that `nodes` belong to (any of them answer for all; more
    /// than one, so a dial still finds the cluster when a node is down).
    pub fn cluster(
        nodes: &[String],
        timeout: Duration,
        login: &Login<'_>,
    ) -> Result<Self, StoreError> {
        Ok(Self::on(Connections::cluster(nodes, timeout, login)?))
    }

    /// The same store, checking a `rediss://` server's certificate against the PEM CA
    /// certificates `ca` instead of the bundled roots.
    pub fn trusting(mut self, ca: &[u8]) -> Result<Self, StoreError> {
        self.conns = self.conns.trusting(ca)?;
        Ok(self)
    }

    fn on(conns: Connections) -> Self {
        Self {
            conns,
            scripts: Scripts::new(),
            offset_ms: AtomicI64::new(0),
            caller_clock: AtomicBool::new(false),
        }
    }

    /// The time an operation decides at: the caller's `now_ms` under
    /// [`use_caller_clock`](Self::use_caller_clock), else the server's `TIME` plus the offset.
    /// As the check script's first two arguments: `[0, offset]` or `[1, now_ms]`.
    fn clock_args(&self, now_ms: u64) -> [i64; 2] {
        if self.caller_clock.load(Ordering::Relaxed) {
            [1, now_ms as i64]
        } else {
            [0, self.offset_ms.load(Ordering::Relaxed)]
        }
    }

    /// Reads an account's counters, their version and the time to decide at (the server's, or
    /// the caller's `now_ms` under [`use_caller_clock`](Self::use_caller_clock)).
    async fn read(&self, account: AccountId, now_ms: u64) -> Result<Read, StoreError> {
        let key = account_key(account);
        let (fields, time): (Vec<(String, String)>, (u64, u64)) = self
            .conns
            .run(|mut conn| {
                let read = redis::pipe().cmd("HGETALL").arg(&key).cmd("TIME").clone();
                async move { read.query_async(&mut conn).await }
            })
            .await?;
        let now = if self.caller_clock.load(Ordering::Relaxed) {
            now_ms
        } else {
            let offset = self.offset_ms.load(Ordering::Relaxed);
            (time.0 * 1000 + time.1 / 1000).saturating_add_signed(offset)
        };
        let mut read = Read {
            counters: Counters::default(),
            version: "0".into(),
            now_ms: now,
        };
        for (field, value) in fields {
            if field == "v" {
                read.version = value;
            } else if let Some(c) = parse_counter(&field, &value).filter(|c| now < c.end_ms) {
                read.counters.restore(c);
            }
        }
        Ok(read)
    }

    /// Takes a lease on one of `cap` slots under `key`.
    pub async fn lease_acquire(
        &self,
        key: &str,
        cap: u32,
        lease: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = lease_key(key);
        let args = [
            cap.to_string(),
            lease.to_owned(),
            ttl.as_millis().to_string(),
        ];
        let got: u64 = self
            .conns
            .run(|conn| self.scripts.lease_acquire.invoke(conn, &key, &args))
            .await?;
        Ok(got == 1)
    }

    /// Takes a lease on one of `cap` slots of an upstream account (`name` from
    /// [`upstream_slots`](crate::queue::leases::upstream_slots)) for `tenant`, unless its
    /// health has it out of rotation at `now_ms`, or another tenant asking has waited longer
    /// for its turn.
    #[allow(clippy::too_many_arguments)]
    pub async fn upstream_lease(
        &self,
        name: &str,
        account: &str,
        tenant: &str,
        cap: u32,
        lease: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<UpstreamLease, StoreError> {
        let (key, health) = (lease_key(name), health_key(account));
        let (asking, served) = (format!("{key}:asking"), format!("{key}:served"));
        let args = [
            cap.to_string(),
            lease.to_owned(),
            ttl.as_millis().to_string(),
            now_ms.to_string(),
            tenant.to_owned(),
        ];
        let keys = [key.as_str(), health.as_str(), &asking, &served];
        let (code, record): (i64, String) = self
            .conns
            .run(|conn| self.scripts.upstream_acquire.invoke_on(conn, &keys, &args))
            .await?;
        Ok(match code {
            1 => UpstreamLease::Granted,
            -1 => UpstreamLease::Out(record),
            _ => UpstreamLease::Full,
        })
    }

    /// Records that `task` ran on `account` of `pool`, for `ttl`.
    pub async fn origin_set(
        &self,
        task: &str,
        pool: &str,
        account: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let (key, value) = (origin_key(task), format!("{pool}\n{account}"));
        let ttl_ms = ttl.as_millis().max(1) as u64;
        self.conns
            .run(|mut conn| {
                let set = redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .arg("PX")
                    .arg(ttl_ms)
                    .clone();
                async move { set.query_async::<()>(&mut conn).await }
            })
            .await
    }

    /// The pool and upstream account `task` ran on, if recorded.
    pub async fn origin_get(&self, task: &str) -> Result<Option<(String, String)>, StoreError> {
        let key = origin_key(task);
        let value: Option<String> = self
            .conns
            .run(|mut conn| {
                let get = redis::cmd("GET").arg(&key).clone();
                async move { get.query_async(&mut conn).await }
            })
            .await?;
        Ok(value.and_then(|v| {
            let (pool, account) = v.split_once('\n')?;
            Some((pool.to_owned(), account.to_owned()))
        }))
    }

    /// An upstream account's health as stored: its version and record (JSON), if any.
    pub async fn health(&self, account: &str) -> Result<(u64, Option<String>), StoreError> {
        let key = health_key(account);
        let (v, json): (Option<u64>, Option<String>) = self
            .conns
            .run(|mut conn| {
                let hmget = redis::cmd("HMGET").arg(&key).arg("v").arg("json").clone();
                async move { hmget.query_async(&mut conn).await }
            })
            .await?;
        Ok((v.unwrap_or(0), json))
    }

    /// Writes an upstream account's health if its version is still `expected`; the new
    /// version, or `None` when another replica wrote first. `out`: the end of its time out of
    /// rotation (-1 disabled, 0 in rotation).
    pub async fn health_write(
        &self,
        account: &str,
        expected: u64,
        json: &str,
        out: i64,
        probing: bool,
    ) -> Result<Option<u64>, StoreError> {
        let key = health_key(account);
        let args = [
            expected.to_string(),
            json.to_owned(),
            out.to_string(),
            u8::from(probing).to_string(),
        ];
        let version: u64 = self
            .conns
            .run(|conn| self.scripts.health_write.invoke(conn, &key, &args))
            .await?;
        Ok((version > 0).then_some(version))
    }

    /// Extends a lease; false when it had expired (the slot may have gone to someone else).
    pub async fn lease_renew(
        &self,
        key: &str,
        lease: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = lease_key(key);
        let args = [lease.to_owned(), ttl.as_millis().to_string()];
        let ok: u64 = self
            .conns
            .run(|conn| self.scripts.lease_renew.invoke(conn, &key, &args))
            .await?;
        Ok(ok == 1)
    }

    /// Gives a lease back.
    pub async fn lease_release(&self, key: &str, lease: &str) -> Result<(), StoreError> {
        let key = lease_key(key);
        self.conns
            .run(|mut conn| {
                let zrem = redis::cmd("ZREM").arg(&key).arg(lease).clone();
                async move { zrem.query_async::<u64>(&mut conn).await.map(|_| ()) }
            })
            .await
    }

    /// Moves this store's view of the shared clock (Redis `TIME` + offset), so tests exercise
    /// minute windows and the UTC day reset without waiting (test builds only).
    #[cfg(feature = "test-hooks")]
    pub fn set_clock_offset_ms(&self, offset: i64) {
        self.offset_ms.store(offset, Ordering::Relaxed);
    }

    /// Tests only: decide at the `now_ms` each operation is given, exactly, instead of Redis
    /// `TIME` (so a test can run the memory store and Redis at the very same instants). Keys
    /// then get no expiry, since Redis would expire them by its own clock: a test's keys stay
    /// until the server is flushed or stopped. Never on in production, where one clock for
    /// every replica is the point of reading `TIME`: compiled into test builds only.
    #[cfg(feature = "test-hooks")]
    pub fn use_caller_clock(&self, on: bool) {
        self.caller_clock.store(on, Ordering::Relaxed);
    }

    /// Writes (or with `None` removes) an account's runtime record if it still is `expected`
    /// (`None`: no record); returns the records' new version, or `None` when another replica
    /// changed the record first.
    pub async fn record_write(
        &self,
        field: &str,
        json: Option<&str>,
        expected: Option<&str>,
    ) -> Result<Option<u64>, StoreError> {
        let args = [field, json.unwrap_or(""), expected.unwrap_or("")];
        let version: i64 = self
            .conns
            .run(|conn| self.scripts.record_write.invoke(conn, RECORDS_KEY, &args))
            .await?;
        Ok(u64::try_from(version).ok())
    }

    /// One account's runtime record as stored (JSON), if it has one.
    pub async fn record(&self, field: &str) -> Result<Option<String>, StoreError> {
        self.conns
            .run(|mut conn| async move {
                redis::cmd("HGET")
                    .arg(RECORDS_KEY)
                    .arg(field)
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .await
    }

    /// The records' version: 0 before any write.
    pub async fn records_version(&self) -> Result<u64, StoreError> {
        self.conns
            .run(|mut conn| async move {
                redis::cmd("HGET")
                    .arg(RECORDS_KEY)
                    .arg("~version")
                    .query_async::<Option<u64>>(&mut conn)
                    .await
                    .map(Option::unwrap_or_default)
            })
            .await
    }

    /// Every account's runtime record (field → JSON) and the version they are at.
    pub async fn records(&self) -> Result<(u64, Vec<(String, String)>), StoreError> {
        let mut all: Vec<(String, String)> = self
            .conns
            .run(|mut conn| async move {
                redis::cmd("HGETALL")
                    .arg(RECORDS_KEY)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let version = all
            .iter()
            .position(|(f, _)| f == "~version")
            .map(|at| all.swap_remove(at).1.parse().unwrap_or_default())
            .unwrap_or_default();
        Ok((version, all))
    }

    /// The tasks holding job slots, kept for whoever resumes them: task id -> record (JSON).
    pub async fn held_tasks(&self) -> Result<Vec<(String, String)>, StoreError> {
        let all: Vec<(String, String)> = self
            .conns
            .run(|mut conn| async move {
                redis::cmd("HGETALL")
                    .arg(HELD_TASKS_KEY)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(all.into_iter().filter(|(f, _)| f != "~version").collect())
    }

    /// Keeps (`Some`) or forgets (`None`) a held task's record.
    pub async fn held_task_write(&self, task: &str, json: Option<&str>) -> Result<(), StoreError> {
        let cmd = match json {
            Some(json) => redis::cmd("HSET")
                .arg(HELD_TASKS_KEY)
                .arg(task)
                .arg(json)
                .clone(),
            None => redis::cmd("HDEL").arg(HELD_TASKS_KEY).arg(task).clone(),
        };
        self.conns
            .run(|mut conn| {
                let cmd = cmd.clone();
                async move { cmd.query_async::<i64>(&mut conn).await.map(|_| ()) }
            })
            .await
    }

    /// Takes a held task's record over (writes `json`) only if it still is `expected`: two
    /// replicas resuming the same task never both do.
    pub async fn held_task_adopt(
        &self,
        task: &str,
        json: &str,
        expected: &str,
    ) -> Result<bool, StoreError> {
        let args = [task, json, expected];
        let version: i64 = self
            .conns
            .run(|conn| {
                self.scripts
                    .record_write
                    .invoke(conn, HELD_TASKS_KEY, &args)
            })
            .await?;
        Ok(version >= 0)
    }

    /// Says this replica is alive for `ttl` (the tasks it holds are not to be taken over).
    pub async fn alive(&self, replica: &str, ttl: Duration) -> Result<(), StoreError> {
        let key = alive_key(replica);
        let ms = ttl.as_millis() as u64;
        self.conns
            .run(|mut conn| {
                let set = redis::cmd("SET").arg(&key).arg(1).arg("PX").arg(ms).clone();
                async move { set.query_async::<()>(&mut conn).await }
            })
            .await
    }

    /// Whether replica `replica` said lately it is alive.
    pub async fn is_alive(&self, replica: &str) -> Result<bool, StoreError> {
        let key = alive_key(replica);
        self.conns
            .run(|mut conn| {
                let exists = redis::cmd("EXISTS").arg(&key).clone();
                async move { exists.query_async::<u64>(&mut conn).await.map(|n| n > 0) }
            })
            .await
    }

    /// Round trip to the server (for readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.conns
            .run(|mut conn| async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(|_| ())
            })
            .await
    }
}

/// Check-and-consume is one round trip, the script; every other update reads the account,
/// runs in Rust, and writes back with compare-and-set.
impl Backend for RedisStore {
    /// Runs `update` on the account's counters and writes the result back atomically: when
    /// another replica wrote the account in between, it reads again and retries. For the rarer,
    /// richer decisions (job penalties, give-backs) whose logic stays in Rust rather than in a
    /// script. It writes only if the counters differ from what it read: an update that changed
    /// nothing writes nothing. `now_ms` is the caller's time, used only under
    /// [`use_caller_clock`](RedisStore::use_caller_clock) (and then the key gets no expiry, as
    /// in the check script).
    async fn update<R: Send>(
        &self,
        account: AccountId,
        now_ms: u64,
        update: impl Update<R>,
    ) -> Result<R, StoreError> {
        let caller_clock = self.caller_clock.load(Ordering::Relaxed);
        for _ in 0..CAS_ATTEMPTS {
            let mut read = self.read(account, now_ms).await?;
            let before = read.counters.clone();
            let (result, _) = update(&mut read.counters, read.now_ms);
            if read.counters == before {
                // Nothing changed: the answer stands as of the read (one atomic HGETALL). A
                // write would only bump the version other replicas compare against — and, on
                // a key that had expired, create one with no window to set its expiry by.
                return Ok(result);
            }
            let longest = read
                .counters
                .iter()
                .map(|c| c.end_ms)
                .max()
                .unwrap_or(read.now_ms);
            let ttl = match caller_clock {
                false => longest.saturating_sub(read.now_ms),
                true => 0, // no expiry: Redis expires keys by its own clock, not the caller's
            }
            .to_string();
            let mut args: Vec<String> = vec![read.version, ttl];
            for c in read.counters.open(read.now_ms) {
                args.push(c.id.0.to_string());
                args.push(format!("{}:{}", c.count, c.end_ms));
            }
            let key = account_key(account);
            let written: u64 = self
                .conns
                .run(|conn| self.scripts.cas.invoke(conn, &key, &args))
                .await?;
            if written == 1 {
                return Ok(result);
            }
        }
        Err(StoreError::Unavailable(
            "account updated concurrently too often".into(),
        ))
    }

    /// One round trip: check and consume every rule atomically on the server. `now_ms` is the
    /// caller's time, used only under [`use_caller_clock`](RedisStore::use_caller_clock).
    async fn check_and_consume(
        &self,
        account: AccountId,
        rules: &[Rule],
        units: u32,
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        let reply = self.check_script(account, rules, units, now_ms).await?;
        Ok(decision_from_reply(rules, units, &reply)?.0)
    }

    /// The same round trip; the script's reply has every rule's counter, so every window is
    /// listed from it.
    async fn check_and_consume_listed(
        &self,
        account: AccountId,
        rules: &[Rule],
        units: u32,
        now_ms: u64,
    ) -> Result<(Decision, WindowList), StoreError> {
        let reply = self.check_script(account, rules, units, now_ms).await?;
        let (decision, counters, now) = decision_from_reply(rules, units, &reply)?;
        Ok((decision, WindowList::of(rules, &counters, now)))
    }
}

impl RedisStore {
    /// Runs the check-and-consume script for `rules`; its raw reply.
    async fn check_script(
        &self,
        account: AccountId,
        rules: &[Rule],
        units: u32,
        now_ms: u64,
    ) -> Result<Vec<u64>, StoreError> {
        debug_assert!(
            !rules.is_empty(),
            "an empty list would write a key with no expiry"
        );
        let key = account_key(account);
        let args: Vec<i64> = self
            .clock_args(now_ms)
            .into_iter()
            .chain([rules.len() as i64, i64::from(units)])
            .chain(rules.iter().flat_map(|r| {
                let span = r.window.span();
                [
                    i64::from(r.counter.0),
                    i64::from(r.limit),
                    span.align_ms as i64,
                    span.length_ms as i64,
                ]
            }))
            .collect();
        self.conns
            .run(|conn| self.scripts.check.invoke(conn, &key, &args))
            .await
    }
}

/// An account as read from Redis.
struct Read {
    counters: Counters,
    version: String,
    now_ms: u64,
}

fn parse_counter(field: &str, value: &str) -> Option<Counter> {
    let (c, e) = value.split_once(':')?;
    Some(Counter {
        id: CounterId(field.parse().ok()?),
        count: c.parse().ok()?,
        end_ms: e.parse().ok()?,
    })
}

/// Turns the script's reply into the same [`Decision`] the memory store gives, with the
/// counters it decided on and the time it decided at.
fn decision_from_reply(
    rules: &[Rule],
    units: u32,
    reply: &[u64],
) -> Result<(Decision, Counters, u64), StoreError> {
    let bad = || StoreError::Unavailable("unexpected script reply".into());
    if reply.len() != 3 + 2 * rules.len() {
        return Err(bad());
    }
    let (admitted, now, refused) = (reply[0] == 1, reply[1], reply[2] as usize);
    let mut counters = Counters::default();
    for (i, rule) in rules.iter().enumerate() {
        let (count, end_ms) = (reply[3 + 2 * i] as u32, reply[4 + 2 * i]);
        if end_ms > now {
            counters.restore(Counter {
                id: rule.counter,
                count,
                end_ms,
            });
        }
    }
    let usage = usage_of(rules, &counters, now).charged(units);
    if admitted {
        return Ok((Decision::Admitted(usage), counters, now));
    }
    let rule = rules.get(refused.wrapping_sub(1)).ok_or_else(bad)?;
    let end_ms = counters
        .current(rule.counter, now)
        .map_or(now + 1, |c| c.end_ms);
    let retry_after_secs = (end_ms - now).div_ceil(1000).max(1);
    let refusal = Refusal {
        kind: rule.kind,
        retry_after_secs,
    };
    Ok((Decision::Refused(usage, refusal), counters, now))
}
