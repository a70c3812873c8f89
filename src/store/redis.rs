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
//! The script is the one limit decision not written in Rust; it mirrors
//! [`decide`](crate::limits::decide). It holds no window arithmetic of its own: each rule comes
//! with its window's [`Span`](crate::limits::Span) and the script computes a new window's end
//! by the formula of [`Window::end_for`](crate::limits::Window::end_for).
//! `tests/differential.rs` checks the two decisions agree.
//!
//! The `redis` crate's multiplexed connection pipelines a worker's commands over one socket; each
//! worker thread has its own, dialled once however many operations want it at the same moment.
//! A connection Redis closed (a restart, an idle timeout) is found out by the next operation on
//! it, which dials again and retries once within the same timeout: a restart costs no request
//! beyond the outage itself. Scripts are loaded when a connection is dialled, so after a restart
//! (which empties Redis' script cache) the first EVALSHA finds its script.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, ErrorKind, FromRedisValue, IntoConnectionInfo, RedisError, Script,
    ToRedisArgs,
};
use tokio::sync::OnceCell;

use super::StoreError;
use crate::config::RedisAuth;
use crate::identity::AccountId;
use crate::limits::{usage_of, Counter, CounterId, Counters, Decision, Refusal, Rule, Usage};

/// Checks every rule and consumes all or none: [`decide`](crate::limits::decide) on the server.
/// ARGV: the clock (see [`RedisStore::clock_args`]: `0, offset` = Redis `TIME` + offset ms, the
/// expiry following it; `1, now_ms` = exactly that time, no expiry), n, then per rule: counter
/// id, limit, and its window's [`Span`](crate::limits::Span) `align_ms`, `length_ms`. A new
/// window ends at `now - now % align + length`, the formula of
/// [`Window::end_for`](crate::limits::Window::end_for).
/// Returns {admitted, now_ms, refused_rule, count1, end1, ...}.
const CHECK_AND_CONSUME: &str = r#"
local key = KEYS[1]
local server_clock = ARGV[1] == '0'
local now = tonumber(ARGV[2])
if server_clock then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + now
end
local n = tonumber(ARGV[3])
local counts, ends = {}, {}
local refused, refused_end = 0, -1
for i = 1, n do
  local base = 3 + (i - 1) * 4
  local v = redis.call('HGET', key, ARGV[base + 1])
  local c, e = 0, 0
  if v then
    local cs, es = string.match(v, '^(%d+):(%d+)$')
    c, e = tonumber(cs) or 0, tonumber(es) or 0
  end
  if now >= e then c, e = 0, 0 end
  counts[i], ends[i] = c, e
  if c >= tonumber(ARGV[base + 2]) and e > refused_end then
    refused, refused_end = i, e
  end
end
local admitted = 0
if refused == 0 then
  admitted = 1
  local longest = 0
  for i = 1, n do
    local base = 3 + (i - 1) * 4
    if ends[i] == 0 then
      local align = tonumber(ARGV[base + 3])
      ends[i] = now - (now % align) + tonumber(ARGV[base + 4])
    end
    counts[i] = counts[i] + 1
    redis.call('HSET', key, ARGV[base + 1], counts[i] .. ':' .. ends[i])
    if ends[i] > longest then longest = ends[i] end
  end
  redis.call('HINCRBY', key, 'v', 1)
  if server_clock and redis.call('PTTL', key) < longest - now then
    redis.call('PEXPIRE', key, longest - now)
  end
end
local out = {admitted, now, refused}
for i = 1, n do
  out[#out + 1] = counts[i]
  out[#out + 1] = ends[i]
end
return out
"#;

/// Writes counters computed by the caller, only if nobody wrote the account since it read them
/// (the `v` field counts writes). ARGV: expected version, ttl in ms, then field, value pairs.
const COMPARE_AND_SET: &str = r#"
local key = KEYS[1]
local v = redis.call('HGET', key, 'v') or '0'
if v ~= ARGV[1] then return 0 end
redis.call('HINCRBY', key, 'v', 1)
for i = 3, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
local ttl = tonumber(ARGV[2])
if ttl > 0 and redis.call('PTTL', key) < ttl then
  redis.call('PEXPIRE', key, ttl)
end
return 1
"#;

/// Takes a lease on one of ARGV[1] slots: ARGV[2] lease id, ARGV[3] ttl ms. Expired leases are
/// dropped first; a lease already held is extended.
const LEASE_ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[2])
if held or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  return 1
end
return 0
"#;

/// Extends a held lease (ARGV[1] lease id, ARGV[2] ttl ms); 0 when it had already expired.
const LEASE_RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
"#;

/// How many times an update is retried when another replica wrote the account meanwhile.
const CAS_ATTEMPTS: usize = 8;

/// A server-side script: its source (for EVAL and SCRIPT LOAD) and its SHA1 (for EVALSHA).
struct Lua {
    source: &'static str,
    script: Script,
}

impl Lua {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            script: Script::new(source),
        }
    }

    /// Runs the script on `key` with `args`: EVALSHA, and EVAL (which caches it again) if the
    /// server no longer has it — a `SCRIPT FLUSH`, or a failover to a server that never saw it.
    async fn invoke<T: FromRedisValue>(
        &self,
        mut conn: Conn,
        key: &str,
        args: &[impl ToRedisArgs],
    ) -> redis::RedisResult<T> {
        let call = |command: &str, script: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(script).arg(1).arg(key);
            for a in args {
                cmd.arg(a);
            }
            cmd
        };
        match call("EVALSHA", self.script.get_hash())
            .query_async(&mut conn)
            .await
        {
            Err(e) if e.kind() == ErrorKind::NoScriptError => {
                call("EVAL", self.source).query_async(&mut conn).await
            }
            reply => reply,
        }
    }
}

/// The scripts a store runs.
struct Scripts {
    check: Lua,
    cas: Lua,
    lease_acquire: Lua,
    lease_renew: Lua,
}

impl Scripts {
    fn all(&self) -> [&Lua; 4] {
        [
            &self.check,
            &self.cas,
            &self.lease_acquire,
            &self.lease_renew,
        ]
    }
}

/// A connection to the store: one server's multiplexed connection, or a cluster's, which sends
/// each command to the master owning its key's slot (every script touches one key, and one
/// account's keys share a hash tag) and follows the cluster through failovers.
#[derive(Clone)]
enum Conn {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where a store's connections go.
enum Target {
    Server(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// One thread's connection to one store's server. Operations that find the slot empty wait for
/// one dial between them instead of each dialling its own connection.
type Slot = Arc<OnceCell<Conn>>;

/// Counters shared through a Redis server. Each worker thread talks to Redis over its own
/// multiplexed connection (its event loop drives the socket: no hop to another thread on the
/// request path); a connection is dialled on first use and again after it broke.
pub struct RedisStore {
    /// Tells this store's connections apart in the per-thread cache.
    id: u64,
    /// Where and as whom to connect: the URL with `[store] username` / `password_file` applied,
    /// and the roots a `rediss://` server's certificate is checked against; or the cluster.
    target: Target,
    /// The URL without its password, for logs and `Debug`.
    url: String,
    timeout: Duration,
    scripts: Scripts,
    /// Added to Redis `TIME`: zero in production; tests move the shared clock with it.
    offset_ms: AtomicI64,
    /// Tests only: decide at the `now_ms` each operation is given instead of Redis `TIME`.
    caller_clock: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish()
    }
}

thread_local! {
    /// Per thread, per store: the multiplexed connection this thread's event loop drives.
    static CONNECTIONS: RefCell<HashMap<u64, Slot>> = RefCell::new(HashMap::new());
}

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(0);

/// `url` with the password of its user information, if any, left out: `redis://user:***@host`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

/// The key of an account's counters; the braces keep one account's keys on one cluster slot.
pub fn account_key(account: AccountId) -> String {
    format!("fg:{{{:032x}}}:c", account.0)
}

/// The key of a set of shared job slots (one hash tag per set).
pub fn lease_key(name: &str) -> String {
    format!("fg:{{{name}}}:leases")
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Whether `e` says the connection itself is gone (closed by the server, reset, a protocol
/// error): the operation may be retried on a new one. A timeout or a script error is not.
fn connection_broke(e: &RedisError) -> bool {
    e.is_unrecoverable_error()
}

impl RedisStore {
    /// A store for `url` (e.g. `redis://127.0.0.1:6379/0`) signing in as `auth` says, when it
    /// says; nothing is connected yet.
    pub fn new(url: &str, timeout: Duration, auth: &RedisAuth) -> Result<Self, StoreError> {
        let mut connection = url.into_connection_info().map_err(unavailable)?;
        if let Some(user) = &auth.username {
            connection.redis.username = Some(user.clone());
        }
        if let Some(password) = &auth.password {
            connection.redis.password = Some(password.expose().to_owned());
        }
        Ok(Self {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            target: Target::Server(redis::Client::open(connection).map_err(unavailable)?),
            url: without_password(url),
            timeout,
            scripts: Scripts {
                check: Lua::new(CHECK_AND_CONSUME),
                cas: Lua::new(COMPARE_AND_SET),
                lease_acquire: Lua::new(LEASE_ACQUIRE),
                lease_renew: Lua::new(LEASE_RENEW),
            },
            offset_ms: AtomicI64::new(0),
            caller_clock: AtomicBool::new(false),
        })
    }

    /// The same store, checking a `rediss://` server's certificate against the PEM CA
    /// certificates `ca` instead of the bundled roots.
    pub fn trusting(mut self, ca: &[u8]) -> Result<Self, StoreError> {
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.to_vec()),
        };
        if let Target::Server(client) = &self.target {
            let info = client.get_connection_info().clone();
            let client = redis::Client::build_with_tls(info, certificates).map_err(unavailable)?;
            self.target = Target::Server(client);
        }
        Ok(self)
    }

    /// A store on the Redis Cluster that `nodes` belong to (any of them answer for all; more
    /// than one, so a dial still finds the cluster when a node is down).
    pub fn cluster(
        nodes: &[String],
        timeout: Duration,
        auth: &RedisAuth,
    ) -> Result<Self, StoreError> {
        let first = nodes.first().map_or("", String::as_str);
        let mut store = Self::new(first, timeout, auth)?;
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(2);
        if let Some(user) = &auth.username {
            builder = builder.username(user.clone());
        }
        if let Some(password) = &auth.password {
            builder = builder.password(password.expose().to_owned());
        }
        store.target = Target::Cluster(builder.build().map_err(unavailable)?);
        store.url = nodes
            .iter()
            .map(|n| without_password(n))
            .collect::<Vec<_>>()
            .join(",");
        Ok(store)
    }

    /// This thread's slot for this store's connection.
    fn slot(&self) -> Slot {
        CONNECTIONS.with(|m| m.borrow_mut().entry(self.id).or_default().clone())
    }

    /// Empties `slot` if it is still this thread's (a concurrent operation may already have put
    /// a new one in its place), so the next operation dials afresh.
    fn forget(&self, slot: &Slot) {
        CONNECTIONS.with(|m| {
            let mut m = m.borrow_mut();
            if m.get(&self.id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                m.remove(&self.id);
            }
        });
    }

    /// This thread's connection, dialled (and its scripts loaded) on first use.
    async fn connection(&self, slot: &Slot) -> redis::RedisResult<Conn> {
        slot.get_or_try_init(|| self.dial()).await.cloned()
    }

    /// A new connection, with every script already in the server's cache: after a restart the
    /// first operations need no NOSCRIPT round trip.
    async fn dial(&self) -> redis::RedisResult<Conn> {
        match &self.target {
            Target::Server(client) => {
                let config = AsyncConnectionConfig::new().set_connection_timeout(self.timeout);
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                let mut conn = Conn::Server(conn);
                let mut load = redis::pipe();
                for lua in self.scripts.all() {
                    load.cmd("SCRIPT").arg("LOAD").arg(lua.source).ignore();
                }
                load.exec_async(&mut conn).await?;
                Ok(conn)
            }
            Target::Cluster(client) => {
                let mut conn = Conn::Cluster(client.get_async_connection().await?);
                // SCRIPT LOAD goes to every master (a new master after a failover loads a
                // script on its first NOSCRIPT, as after a restart).
                for lua in self.scripts.all() {
                    redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(lua.source)
                        .exec_async(&mut conn)
                        .await?;
                }
                Ok(conn)
            }
        }
    }

    /// Runs `op` on this thread's connection, within the store's timeout. When the connection
    /// turns out to be broken — Redis restarted and closed it — `op` runs once more on a new
    /// one, within the same timeout: the stale connection costs a dial, not a failure. A
    /// failed operation empties the slot, so the next one dials afresh.
    ///
    /// The retry can repeat an operation whose reply was lost with its connection: counted
    /// twice, an admission only ever consumes more of the quota, never lets more through.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (first, second) = (self.slot(), OnceLock::new());
        let attempt = async {
            match op(self.connection(&first).await?).await {
                Err(e) if connection_broke(&e) => {
                    tracing::debug!(error = %e, "redis connection broke; dialling again");
                    self.forget(&first);
                    let slot = second.get_or_init(|| self.slot());
                    op(self.connection(slot).await?).await
                }
                outcome => outcome,
            }
        };
        let outcome = match tokio::time::timeout(self.timeout, attempt).await {
            Err(_) => Err(StoreError::Unavailable("redis timed out".into())),
            Ok(result) => result.map_err(unavailable),
        };
        if outcome.is_err() {
            self.forget(&first);
            if let Some(slot) = second.get() {
                self.forget(slot);
            }
        }
        outcome
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

    /// One round trip: check and consume every rule atomically on the server. `now_ms` is the
    /// caller's time, used only under [`use_caller_clock`](Self::use_caller_clock).
    pub async fn check_and_consume(
        &self,
        account: AccountId,
        rules: &[Rule],
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        if rules.is_empty() {
            // As in memory: nothing to check or count, and no key to write (the script would
            // write one with no window to set its expiry by).
            return Ok(Decision::Admitted(Usage::default()));
        }
        let key = account_key(account);
        let args: Vec<i64> = self
            .clock_args(now_ms)
            .into_iter()
            .chain([rules.len() as i64])
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
        let reply: Vec<u64> = self
            .run(|conn| self.scripts.check.invoke(conn, &key, &args))
            .await?;
        decision_from_reply(rules, &reply)
    }

    /// The account's open windows (for the usage view).
    pub async fn counters(
        &self,
        account: AccountId,
        now_ms: u64,
    ) -> Result<Vec<Counter>, StoreError> {
        let read = self.read(account, now_ms).await?;
        Ok(read.counters.iter().copied().collect())
    }

    /// Reads an account's counters, their version and the time to decide at (the server's, or
    /// the caller's `now_ms` under [`use_caller_clock`](Self::use_caller_clock)).
    async fn read(&self, account: AccountId, now_ms: u64) -> Result<Read, StoreError> {
        let key = account_key(account);
        let (fields, time): (Vec<(String, String)>, (u64, u64)) = self
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

    /// Runs `update` on the account's counters and writes the result back atomically: when
    /// another replica wrote the account in between, it reads again and retries. For the rarer,
    /// richer decisions (job penalties) whose logic stays in Rust rather than in a script.
    /// `now_ms` is the caller's time, used only under [`use_caller_clock`](Self::use_caller_clock)
    /// (and then the key gets no expiry, as in the check script).
    pub async fn update<R>(
        &self,
        account: AccountId,
        now_ms: u64,
        update: impl Fn(&mut Counters, u64) -> R,
    ) -> Result<R, StoreError> {
        let caller_clock = self.caller_clock.load(Ordering::Relaxed);
        for _ in 0..CAS_ATTEMPTS {
            let mut read = self.read(account, now_ms).await?;
            let before = read.counters.clone();
            let result = update(&mut read.counters, read.now_ms);
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
            for c in read.counters.iter().filter(|c| c.end_ms > read.now_ms) {
                args.push(c.id.0.to_string());
                args.push(format!("{}:{}", c.count, c.end_ms));
            }
            let key = account_key(account);
            let written: u64 = self
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
            .run(|conn| self.scripts.lease_acquire.invoke(conn, &key, &args))
            .await?;
        Ok(got == 1)
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
            .run(|conn| self.scripts.lease_renew.invoke(conn, &key, &args))
            .await?;
        Ok(ok == 1)
    }

    /// Gives a lease back.
    pub async fn lease_release(&self, key: &str, lease: &str) -> Result<(), StoreError> {
        let key = lease_key(key);
        self.run(|mut conn| {
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

    /// Round trip to the server (for readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut conn| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(|_| ())
        })
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

/// Turns the script's reply into the same [`Decision`] the memory store gives.
fn decision_from_reply(rules: &[Rule], reply: &[u64]) -> Result<Decision, StoreError> {
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
    let usage = usage_of(rules, &counters, now);
    if admitted {
        return Ok(Decision::Admitted(usage));
    }
    let rule = rules.get(refused.wrapping_sub(1)).ok_or_else(bad)?;
    let end_ms = counters
        .current(rule.counter, now)
        .map_or(now + 1, |c| c.end_ms);
    let retry_after_secs = (end_ms - now).div_ceil(1000).max(1);
    Ok(Decision::Refused(
        usage,
        Refusal {
            kind: rule.kind,
            retry_after_secs,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        let shown = |url: &str| without_password(url);
        assert_eq!(
            shown("redis://floodgate:s3cret@10.0.0.5:6379/0"),
            "redis://floodgate:***@10.0.0.5:6379/0"
        );
        assert_eq!(shown("redis://:s3cret@host/1"), "redis://:***@host/1");
        assert_eq!(shown("redis://user:p@ss@host"), "redis://user:***@host");
        assert_eq!(shown("redis://10.0.0.5:6379/0"), "redis://10.0.0.5:6379/0");
        assert_eq!(shown("unix:///run/redis.sock"), "unix:///run/redis.sock");
    }

    #[test]
    fn the_password_file_and_user_replace_the_urls() {
        let auth = RedisAuth {
            username: Some("floodgate".into()),
            password: Some(crate::config::Secret::from("from-file")),
        };
        let store = RedisStore::new(
            "redis://old:old@127.0.0.1:6379/2",
            Duration::from_secs(1),
            &auth,
        )
        .unwrap();
        let Target::Server(client) = &store.target else {
            panic!("one server")
        };
        let info = &client.get_connection_info().redis;
        assert_eq!(info.username.as_deref(), Some("floodgate"));
        assert_eq!(info.password.as_deref(), Some("from-file"));
        assert_eq!(info.db, 2);
        assert!(!format!("{store:?}").contains("old:old"), "{store:?}");
    }
}
