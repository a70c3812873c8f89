//! The live status page's data: what the limiter is doing, gathered off the request path.
//!
//! - [`history`]: the charts — counter totals sampled once a second into a bounded ring.
//! - [`hot`]: the accounts nearest their limits — an O(1) note per decided request.
//! - [`StatusBoard::snapshot`]: `/status.json`, which the page (`page.html`, compiled into the
//!   binary) polls. No API key is ever part of it: accounts show as the operator named them
//!   (`[account_names]`) or as their hash prefix.
//!
//! The request path's whole cost is [`StatusBoard::record`]; everything else runs on the
//! control thread (the sampler) or when the page asks.

pub mod history;
pub mod hot;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use prometheus::proto::MetricFamily;
use serde_json::{json, Value};

use crate::classify::ClassId;
use crate::config::Config;
use crate::identity::{AccountId, Caller, TierId, UnknownKeys};
use crate::limits::Usage;
use crate::queue::Jobs;
use crate::store::Store;
use history::History;
use hot::{HotAccounts, TightestWindow};

/// The page itself: HTML, CSS and JS in one file, no framework, nothing fetched from elsewhere.
pub const PAGE: &str = include_str!("page.html");

/// Accounts listed as nearest their limits.
pub const TOP_ACCOUNTS: usize = 20;

/// Waiting jobs listed (the longest waiting first).
pub const WAITING_JOBS: usize = 50;

/// What the status page knows beyond the metrics.
#[derive(Debug)]
pub struct StatusBoard {
    started_ms: u64,
    history: Mutex<History>,
    hot: HotAccounts,
    config: Mutex<ConfigRecord>,
    /// Since when the shared store has been degraded (as the sampler saw it).
    degraded_since_ms: Mutex<Option<u64>>,
}

/// The running config's generation and the last reload's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConfigRecord {
    /// 1 at start, one more for every applied reload.
    generation: u64,
    applied_at_ms: u64,
    last_reload: Option<ReloadOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ReloadOutcome {
    at_ms: u64,
    error: Option<String>,
}

/// What a snapshot reads: the running state, borrowed for the moment of the snapshot.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub config: &'a Config,
    pub metrics: &'a crate::metrics::Metrics,
    pub jobs: &'a Jobs,
    pub store: &'a Store,
    pub now_ms: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StatusBoard {
    pub fn new(now_ms: u64) -> Self {
        Self {
            started_ms: now_ms,
            history: Mutex::new(History::default()),
            hot: HotAccounts::default(),
            config: Mutex::new(ConfigRecord {
                generation: 1,
                applied_at_ms: now_ms,
                last_reload: None,
            }),
            degraded_since_ms: Mutex::new(None),
        }
    }

    /// Notes a decided request's standing (the request path's one call).
    pub fn record(&self, caller: Caller, class: ClassId, usage: &Usage, now_ms: u64) {
        if let Some(s) = TightestWindow::of(caller.account, caller.tier, class, usage, now_ms) {
            self.hot.record(s, now_ms);
        }
    }

    /// Notes a reload's outcome: applied (`None`) or refused with its error.
    pub fn reloaded(&self, error: Option<String>, now_ms: u64) {
        let mut record = lock(&self.config);
        if error.is_none() {
            record.generation += 1;
            record.applied_at_ms = now_ms;
        }
        record.last_reload = Some(ReloadOutcome {
            at_ms: now_ms,
            error,
        });
    }

    /// Reads the counters the charts need (the sampler calls this once a second).
    pub fn sample(&self, metrics: &crate::metrics::Metrics, degraded: bool, now_ms: u64) {
        let totals = chart_totals(&metrics.gather());
        lock(&self.history).push(now_ms, totals);
        let mut since = lock(&self.degraded_since_ms);
        match (degraded, *since) {
            (true, None) => *since = Some(now_ms),
            (false, Some(_)) => *since = None,
            _ => {}
        }
    }

    /// The `n` accounts nearest their limits whose windows are open, nearest first (the
    /// accounts API's `GET /accounts?sort=usage`).
    pub fn nearest_limits(&self, n: usize, now_ms: u64) -> Vec<TightestWindow> {
        self.hot.top(n, now_ms)
    }

    /// `/status.json`.
    pub fn snapshot(&self, view: View<'_>) -> Value {
        let families = view.metrics.gather();
        let (rates, latest, growth) = {
            let h = lock(&self.history);
            let latest: BTreeMap<String, f64> =
                h.latest().into_iter().map(|(k, v)| (k.into(), v)).collect();
            let growth: BTreeMap<String, f64> =
                h.growth().into_iter().map(|(k, v)| (k.into(), v)).collect();
            (h.rates(), latest, growth)
        };
        let record = lock(&self.config).clone();
        let totals = chart_totals(&families);
        json!({
            "now_ms": view.now_ms,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": view.now_ms.saturating_sub(self.started_ms) / 1_000,
            "config": {
                "generation": record.generation,
                "applied_at_ms": record.applied_at_ms,
                "last_reload": record.last_reload.map(|r| json!({
                    "at_ms": r.at_ms,
                    "ok": r.error.is_none(),
                    "error": r.error,
                })),
            },
            "store": self.store_view(view.store),
            "classes": view.config.classes,
            "tiers": view.config.tiers.iter().map(|t| &t.name).collect::<Vec<_>>(),
            "totals": grouped(totals.into_iter()),
            "last_5m": grouped(growth.into_iter()),
            "sampled": grouped(latest.into_iter()),
            "rates": rates,
            "queues": queues_view(view, &families),
            "accounts": self.accounts_view(view),
        })
    }

    fn store_view(&self, store: &Store) -> Value {
        let since = *lock(&self.degraded_since_ms);
        match store {
            Store::Memory(_) => json!({ "kind": "memory", "degraded": false }),
            Store::Redis(s) => json!({
                "kind": "redis",
                "degraded": s.is_degraded(),
                "degraded_since_ms": since.filter(|_| s.is_degraded()),
                "breaker": s.breaker_state(),
                "on_failure": s.on_failure().name(),
            }),
        }
    }

    fn accounts_view(&self, view: View<'_>) -> Vec<Value> {
        let config = view.config;
        self.hot
            .top(TOP_ACCOUNTS, view.now_ms)
            .iter()
            .map(|s| {
                json!({
                    "account": config.identity.display_name(s.account),
                    "tier": tier_name(config, s.tier),
                    "class": config.classes.get(s.class.0 as usize),
                    "window": s.kind.name(),
                    "used": s.used,
                    "limit": s.limit,
                    "fraction": s.fraction(),
                    "resets_in_secs": s.resets_at_ms.saturating_sub(view.now_ms).div_ceil(1_000),
                })
            })
            .collect()
    }
}

fn tier_name(config: &Config, tier: TierId) -> &str {
    config
        .tiers
        .get(tier.0 as usize)
        .map_or("?", |t| t.name.as_str())
}

/// The tier an account's jobs count under, as `/usage` works it out.
fn tier_of(config: &Config, account: AccountId) -> Option<&str> {
    let tier = match (
        config.identity.accounts.get(&account),
        config.identity.unknown_keys,
    ) {
        (Some(&t), _) | (None, UnknownKeys::DefaultTier(t)) => t,
        (None, UnknownKeys::Reject) => return None,
    };
    Some(tier_name(config, tier))
}

/// Job queues: per tier (waiting, running), per pool with its upstream accounts, and the
/// longest-waiting jobs with their place and estimated wait.
fn queues_view(view: View<'_>, families: &[MetricFamily]) -> Value {
    let config = view.config;
    let tiers: Vec<Value> = config
        .tiers
        .iter()
        .map(|t| {
            let at = |metric| gauge(families, metric, "tier", &t.name);
            json!({
                "tier": t.name,
                "waiting": at("floodgate_jobs_queued"),
                "running": at("floodgate_jobs_in_flight"),
            })
        })
        .collect();
    let mut jobs = Vec::new();
    let pools: Vec<Value> = view
        .jobs
        .pools
        .iter()
        .map(|pool| {
            let waiting = pool.waiting_jobs(None, WAITING_JOBS);
            let accounts: Vec<Value> = pool
                .accounts
                .iter()
                .zip(pool.upstream_in_flight())
                .map(|(a, running)| {
                    json!({
                        "name": a.name,
                        "running": running,
                        "concurrency": (a.concurrency != u32::MAX).then_some(a.concurrency),
                    })
                })
                .collect();
            let summary = json!({
                "name": pool.name,
                "waiting": pool.waiting(),
                "oldest_wait_ms": waiting.first().map(|j| j.waited.as_millis() as u64),
                "typical_job_ms": pool.typical_job().as_millis() as u64,
                "upstream_accounts": accounts,
            });
            jobs.extend(waiting.into_iter().map(|j| {
                json!({
                    "account": config.identity.display_name(j.tenant),
                    "tier": tier_of(config, j.tenant),
                    "pool": pool.name,
                    "position": j.position,
                    "position_at_entry": j.position_at_entry,
                    "waited_ms": j.waited.as_millis() as u64,
                    "estimated_wait_ms": j.estimated_wait.as_millis() as u64,
                })
            }));
            summary
        })
        .collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j["waited_ms"].as_u64()));
    jobs.truncate(WAITING_JOBS);
    json!({ "tiers": tiers, "pools": pools, "jobs": jobs })
}

/// A gauge's value for one label value (0 when absent).
fn gauge(families: &[MetricFamily], name: &str, label: &str, value: &str) -> i64 {
    families
        .iter()
        .filter(|f| f.get_name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.get_name() == label && l.get_value() == value)
        })
        .map(|m| m.get_gauge().get_value() as i64)
        .sum()
}

/// The totals behind the charts and the refusal counts, named `group|key`:
/// `admitted|all`, `admitted|class:NAME`, `admitted|tier:NAME`, the same for `refused`
/// (429s from limits and penalties, and jobs a full queue or a long wait turned away),
/// `limit|TYPE` (refusals by the limit that refused: minute, daily, monthly, interval, penalty, relax,
/// …, concurrency for the queue's 429s, payload for 413s) and `dropped|REASON` (jobs).
pub fn chart_totals(families: &[MetricFamily]) -> Vec<(String, f64)> {
    let mut totals: BTreeMap<String, f64> = BTreeMap::new();
    let mut add = |key: String, v: f64| *totals.entry(key).or_default() += v;
    for f in families {
        for m in f.get_metric() {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.get_name() == name)
                    .map(|l| l.get_value().to_owned())
                    .unwrap_or_default()
            };
            let v = m.get_counter().get_value();
            match f.get_name() {
                "floodgate_requests_total" => {
                    let group = match label("decision").as_str() {
                        "admitted" => "admitted",
                        _ => "refused",
                    };
                    add(format!("{group}|all"), v);
                    add(format!("{group}|class:{}", label("class")), v);
                    add(format!("{group}|tier:{}", label("tier")), v);
                }
                "floodgate_limited_total" => add(format!("limit|{}", label("type")), v),
                "floodgate_jobs_dropped_total" => {
                    let reason = label("reason");
                    if matches!(reason.as_str(), "queue_full" | "timed_out") {
                        add("limit|concurrency".into(), v);
                        add("refused|all".into(), v);
                        add(format!("refused|tier:{}", label("tier")), v);
                    }
                    add(format!("dropped|{reason}"), v);
                }
                "floodgate_rejected_total" if label("reason") == "payload_too_large" => {
                    add("limit|payload".into(), v);
                }
                _ => {}
            }
        }
    }
    totals.into_iter().collect()
}

/// `{"admitted": {"all": 3, "class:txt2img": 2, …}, "limit": {…}, …}` from `group|key` names.
fn grouped(totals: impl Iterator<Item = (String, f64)>) -> Value {
    let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (name, v) in totals {
        if let Some((group, key)) = name.split_once('|') {
            out.entry(group.into()).or_default().insert(key.into(), v);
        }
    }
    json!(out)
}
