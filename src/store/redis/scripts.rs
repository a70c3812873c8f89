//! The Redis store's server-side scripts: check-and-consume (the one limit decision not written in
//! Rust), compare-and-set (how the other updates write back), and the job slot leases. Each runs
//! by its SHA1 (EVALSHA), and by its source when the server no longer has it.

use redis::aio::ConnectionLike;
use redis::{ErrorKind, FromRedisValue, Script, ToRedisArgs};

/// Checks every rule and consumes all or none: [`decide`](crate::limits::decide) on the server.
/// ARGV: the clock (see `RedisStore::clock_args`: `0, offset` = Redis `TIME` + offset ms, the
/// expiry following it; `1, now_ms` = exactly that time, no expiry), n, the request's units
/// (what it costs in every window), then per rule: counter
/// id, limit, and its window's [`Span`](crate::limits::Span) `align_ms`, `length_ms`. A new
/// window ends at `now - now % align + length`, the formula of
/// [`Window::end_for`](crate::limits::Window::end_for); `align` 0 is the calendar month, which
/// ends at the next 1st, 00:00 UTC (`next_month`: the same calendar arithmetic as
/// [`next_month_start_ms`](crate::clock::next_month_start_ms), in Lua's doubles, exact below
/// 2^53 ms).
/// Returns {admitted, now_ms, refused_rule, count1, end1, ...}.
const CHECK_AND_CONSUME: &str = r#"
local function next_month(now)
  local fl = math.floor
  local z = fl(now / 86400000) + 719468
  local era = fl(z / 146097)
  local doe = z - era * 146097
  local yoe = fl((doe - fl(doe / 1460) + fl(doe / 36524) - fl(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + fl(yoe / 4) - fl(yoe / 100))
  local mp = fl((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  if m == 12 then y, m = y + 1, 1 else m = m + 1 end
  if m <= 2 then y = y - 1 end
  era = fl(y / 400)
  yoe = y - era * 400
  mp = m > 2 and m - 3 or m + 9
  doe = yoe * 365 + fl(yoe / 4) - fl(yoe / 100) + fl((153 * mp + 2) / 5)
  return (era * 146097 + doe - 719468) * 86400000
end
local key = KEYS[1]
local server_clock = ARGV[1] == '0'
local now = tonumber(ARGV[2])
if server_clock then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + now
end
local n = tonumber(ARGV[3])
local units = tonumber(ARGV[4])
local counts, ends = {}, {}
local refused, refused_end = 0, -1
for i = 1, n do
  local base = 4 + (i - 1) * 4
  local v = redis.call('HGET', key, ARGV[base + 1])
  local c, e = 0, 0
  if v then
    local cs, es = string.match(v, '^(%d+):(%d+)$')
    c, e = tonumber(cs) or 0, tonumber(es) or 0
  end
  if now >= e then
    -- no open window: the one this request would open
    local align = tonumber(ARGV[base + 3])
    if align == 0 then
      c, e = 0, next_month(now)
    else
      c, e = 0, now - (now % align) + tonumber(ARGV[base + 4])
    end
  end
  counts[i], ends[i] = c, e
  if c + units > tonumber(ARGV[base + 2]) and e > refused_end then
    refused, refused_end = i, e
  end
end
local admitted = 0
if refused == 0 then
  admitted = 1
  local longest = 0
  for i = 1, n do
    local base = 4 + (i - 1) * 4
    counts[i] = counts[i] + units
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

/// An account's runtime record written (ARGV[2]) or removed (ARGV[2] empty) under ARGV[1] in
/// the records hash — only if the field still holds ARGV[3] (empty: no record), what the change
/// was made from: -1 otherwise — and the hash's `~version` field bumped in the same step: a
/// replica that sees a new version reads the records again.
const RECORD_WRITE: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') ~= ARGV[3] then
  return -1
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return redis.call('HINCRBY', KEYS[1], '~version', 1)
"#;

/// An upstream account's health record written (KEYS[1], a hash) only if its version `v` is
/// still ARGV[1], what the change was made from: 0 otherwise. ARGV[2] the record (JSON),
/// ARGV[3] the end of its time out of rotation (Unix ms; -1 disabled; 0 in rotation), ARGV[4]
/// "1" while it takes one job at a time (a probe). Returns the new version.
const HEALTH_WRITE: &str = r#"
local v = redis.call('HGET', KEYS[1], 'v') or '0'
if v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'json', ARGV[2], 'out', ARGV[3], 'probe', ARGV[4])
return redis.call('HINCRBY', KEYS[1], 'v', 1)
"#;

/// A lease on one of an upstream account's ARGV[1] slots (KEYS[1], as [`LEASE_ACQUIRE`]:
/// ARGV[2] lease id, ARGV[3] ttl ms) — unless its health (KEYS[2], as [`HEALTH_WRITE`] leaves
/// it) has it out of rotation at ARGV[4] (Unix ms, the replica's clock, the one rests are set
/// on): then {-1, its record}, and the replica learns in this one step what another replica
/// decided. A probing account has one slot. {1, ''} granted, {0, ''} all slots held.
///
/// Tenants take turns across replicas: ARGV[5] is the asking tenant; KEYS[3] holds the tenants
/// asking lately (by the time of their last ask), KEYS[4] when each was last granted a slot.
/// A free slot goes to the asking tenant granted longest ago, so a tenant with one job is not
/// starved by another's backlog on other replicas; the others ask again within milliseconds.
const UPSTREAM_ACQUIRE: &str = r#"
local h = redis.call('HMGET', KEYS[2], 'out', 'probe', 'json')
local out = tonumber(h[1] or '0') or 0
if out == -1 or out > tonumber(ARGV[4]) then
  return {-1, h[3] or ''}
end
local cap = tonumber(ARGV[1])
if h[2] == '1' then cap = 1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local tenant = ARGV[5]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[2])
if held then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
  return {1, ''}
end
if redis.call('ZCARD', KEYS[1]) >= cap then
  redis.call('ZADD', KEYS[3], now, tenant)
  redis.call('PEXPIRE', KEYS[3], 60000)
  return {0, ''}
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 100)
local asking = redis.call('ZRANGE', KEYS[3], 0, -1)
local mine = tonumber(redis.call('HGET', KEYS[4], tenant) or '0')
for _, other in ipairs(asking) do
  if other ~= tenant and tonumber(redis.call('HGET', KEYS[4], other) or '0') < mine then
    redis.call('ZADD', KEYS[3], now, tenant)
    return {0, ''}
  end
end
redis.call('ZREM', KEYS[3], tenant)
redis.call('HSET', KEYS[4], tenant, now)
redis.call('PEXPIRE', KEYS[4], 3600000)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return {1, ''}
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

/// A server-side script: its source (for EVAL and SCRIPT LOAD) and its SHA1 (for EVALSHA).
pub(super) struct Lua {
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
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        conn: impl ConnectionLike,
        key: &str,
        args: &[impl ToRedisArgs],
    ) -> redis::RedisResult<T> {
        self.invoke_on(conn, &[key], args).await
    }

    /// As [`invoke`](Self::invoke), on several keys (of one cluster slot).
    pub(super) async fn invoke_on<T: FromRedisValue>(
        &self,
        mut conn: impl ConnectionLike,
        keys: &[&str],
        args: &[impl ToRedisArgs],
    ) -> redis::RedisResult<T> {
        let call = |command: &str, script: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(script).arg(keys.len()).arg(keys);
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

/// Every script, loaded on each new connection: after a restart (which empties Redis' script
/// cache) the first EVALSHA finds its script.
pub(super) const SOURCES: [&str; 7] = [
    CHECK_AND_CONSUME,
    COMPARE_AND_SET,
    LEASE_ACQUIRE,
    LEASE_RENEW,
    RECORD_WRITE,
    HEALTH_WRITE,
    UPSTREAM_ACQUIRE,
];

/// The scripts a store runs.
pub(super) struct Scripts {
    pub check: Lua,
    pub cas: Lua,
    pub lease_acquire: Lua,
    pub lease_renew: Lua,
    pub record_write: Lua,
    pub health_write: Lua,
    pub upstream_acquire: Lua,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            check: Lua::new(CHECK_AND_CONSUME),
            cas: Lua::new(COMPARE_AND_SET),
            lease_acquire: Lua::new(LEASE_ACQUIRE),
            lease_renew: Lua::new(LEASE_RENEW),
            record_write: Lua::new(RECORD_WRITE),
            health_write: Lua::new(HEALTH_WRITE),
            upstream_acquire: Lua::new(UPSTREAM_ACQUIRE),
        }
    }
}
