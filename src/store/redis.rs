//! The Redis store: limit counters shared by every floodgate replica.
//!
//! Each decision is one round trip: a server-side Lua script (sent with EVALSHA) checks every
//! limit of the request and consumes all or none, sets the key's expiry in the same script, and
//! reads the time from Redis `TIME`, so replicas' clocks cannot skew windows. An account's
//! counters are one hash, `fg:{<account>}:c`, whose braces are a Redis Cluster hash tag; fields
//! are counter ids, values `count:end_ms` — the same [`Counter`] the memory store keeps, so the
//! pure [`usage_of`](crate::limits) renders the headers from either store.
//!
//! The `redis` crate's `ConnectionManager` is a multiplexed connection that reconnects by
//! itself: one TCP connection carries every worker's commands, pipelined.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::OnceCell;

use super::StoreError;
use crate::identity::AccountId;
use crate::limits::{usage_of, Counter, CounterId, Counters, Decision, Refusal, Rule, Window};

/// Checks every rule and consumes all or none. ARGV: n, then per rule: counter id, limit,
/// period in ms (0 = the UTC day). Returns {admitted, now_ms, refused_rule, count1, end1, ...}.
const CHECK_AND_CONSUME: &str = r#"
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local counts, ends = {}, {}
local refused, refused_end = 0, -1
for i = 1, n do
  local base = 1 + (i - 1) * 3
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
    local base = 1 + (i - 1) * 3
    if ends[i] == 0 then
      local period = tonumber(ARGV[base + 3])
      if period == 0 then
        ends[i] = now - (now % 86400000) + 86400000
      else
        ends[i] = now + period
      end
    end
    counts[i] = counts[i] + 1
    redis.call('HSET', key, ARGV[base + 1], counts[i] .. ':' .. ends[i])
    if ends[i] > longest then longest = ends[i] end
  end
  if redis.call('PTTL', key) < longest - now then
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

/// Counters shared through a Redis server. Redis I/O runs on a small runtime of its own, so the
/// multiplexed connection lives independently of any one worker's event loop; it is opened on
/// first use and reopened by the connection manager after failures.
pub struct RedisStore {
    url: String,
    timeout: Duration,
    conn: Arc<OnceCell<ConnectionManager>>,
    script: Arc<Script>,
    io: tokio::runtime::Handle,
    /// Keeps the I/O runtime alive; dropped with the store.
    _io_thread: IoThread,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The thread that drives Redis I/O; stops when the store is dropped.
struct IoThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for IoThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The key of an account's counters; the braces keep one account's keys on one cluster slot.
pub fn account_key(account: AccountId) -> String {
    format!("fg:{{{:032x}}}:c", account.0)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// A store for `url` (e.g. `redis://127.0.0.1:6379/0`); nothing is connected yet.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        redis::Client::open(url).map_err(unavailable)?; // validates the URL
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("floodgate-redis".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let _ = handle_tx.send(rt.handle().clone());
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(unavailable)?;
        let io = handle_rx.recv().map_err(unavailable)?;
        Ok(Self {
            url: url.to_owned(),
            timeout,
            conn: Arc::new(OnceCell::new()),
            script: Arc::new(Script::new(CHECK_AND_CONSUME)),
            io,
            _io_thread: IoThread {
                stop: Some(stop_tx),
            },
        })
    }

    /// Runs `op` on the I/O runtime with a connection, bounded by the store's timeout.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + Send,
    {
        let (cell, url, timeout) = (self.conn.clone(), self.url.clone(), self.timeout);
        let task = self.io.spawn(async move {
            let conn = cell
                .get_or_try_init(|| async {
                    let client = redis::Client::open(url.as_str())?;
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(timeout.max(Duration::from_millis(200)))
                        .set_response_timeout(timeout)
                        .set_number_of_retries(1);
                    ConnectionManager::new_with_config(client, config).await
                })
                .await?
                .clone();
            op(conn).await
        });
        match tokio::time::timeout(self.timeout, task).await {
            Err(_) => Err(StoreError::Unavailable("redis timed out".into())),
            Ok(Err(join)) => Err(unavailable(join)),
            Ok(Ok(result)) => result.map_err(unavailable),
        }
    }

    /// One round trip: check and consume every rule atomically on the server.
    pub async fn check_and_consume(
        &self,
        account: AccountId,
        rules: &[Rule],
    ) -> Result<Decision, StoreError> {
        let key = account_key(account);
        let args: Vec<u64> = std::iter::once(rules.len() as u64)
            .chain(rules.iter().flat_map(|r| {
                let period = match r.window {
                    Window::Fixed { period_ms } => period_ms,
                    Window::UtcDay => 0,
                };
                [u64::from(r.counter.0), u64::from(r.limit), period]
            }))
            .collect();
        let script = self.script.clone();
        let reply: Vec<u64> = self
            .run(move |mut conn| async move {
                let mut invocation = script.key(key);
                for a in args {
                    invocation.arg(a);
                }
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        decision_from_reply(rules, &reply)
    }

    /// The account's open windows (for the usage view).
    pub async fn counters(&self, account: AccountId) -> Result<Vec<Counter>, StoreError> {
        let key = account_key(account);
        let (fields, now) = self
            .run(move |mut conn| async move {
                let fields: Vec<(u32, String)> = redis::cmd("HGETALL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await?;
                let time: (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
                Ok((fields, time.0 * 1000 + time.1 / 1000))
            })
            .await?;
        Ok(fields
            .into_iter()
            .filter_map(|(id, v)| {
                let (c, e) = v.split_once(':')?;
                Some(Counter {
                    id: CounterId(id),
                    count: c.parse().ok()?,
                    end_ms: e.parse().ok()?,
                })
            })
            .filter(|c| now < c.end_ms)
            .collect())
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
