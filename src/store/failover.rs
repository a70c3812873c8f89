//! The Redis store behind a failure policy and a circuit breaker.
//!
//! A sick Redis must not add latency or errors to every request: each operation has a timeout,
//! and after a few failures in a row the breaker opens and requests go straight to the failure
//! policy for a while; then requests try Redis again (half-open) and success closes the
//! breaker. Meanwhile the control loop pings Redis every [`RECOVERY_PROBE`], so a Redis that is
//! back closes the breaker within that, not a cooldown later. Recovery needs no restart.
//!
//! A connection Redis closed (a restart) is redialled and the operation retried by the Redis
//! store itself, within the operation's timeout: only an operation that fails on a connection
//! that works counts towards the breaker.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge};

use super::redis::UpstreamLease;
use super::{
    consume_listed, consume_units, Backend, MemoryStore, Purpose, RedisStore, StoreError, Update,
};
use crate::identity::AccountId;
use crate::limits::{Decision, OnFailure, Rule, Usage, WindowList};
use crate::queue::leases::{BoxFuture, Leased, SlotLeases, UpstreamAsk};
use crate::queue::tasks::SharedOrigins;

/// How often a degraded store pings Redis. A ping to a Redis that is down costs a refused
/// connect (or at most the operation timeout, for one that hangs), one at a time per replica.
pub const RECOVERY_PROBE: Duration = Duration::from_millis(50);

/// Store health, exported as metrics.
#[derive(Debug, Clone)]
pub struct StoreHealth {
    pub degraded: IntGauge,
    pub errors: IntCounter,
    pub latency: Histogram,
}

impl StoreHealth {
    /// Its metrics, for the registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.degraded.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.latency.clone()),
        ]
    }

    fn new() -> Self {
        Self {
            degraded: IntGauge::new(
                "floodgate_store_degraded",
                "1 while the shared store is failing and the failure policy applies.",
            )
            .expect("valid metric"),
            errors: IntCounter::new(
                "floodgate_store_errors_total",
                "Shared store operations that failed or timed out.",
            )
            .expect("valid metric"),
            latency: Histogram::with_opts(
                HistogramOpts::new(
                    "floodgate_store_latency_seconds",
                    "Shared store round trips.",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02,
                    0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
                ]),
            )
            .expect("valid metric"),
        }
    }
}

/// Job slots shared across replicas. While Redis fails, a replica falls back to its own caps
/// (fail_open, local) or holds jobs back (fail_closed).
impl SlotLeases for FailoverStore {
    fn acquire(&self, key: String, cap: u32, lease: String) -> BoxFuture<bool> {
        let (redis, ttl, closed) = (
            self.redis.clone(),
            self.lease_ttl,
            self.on_failure == OnFailure::FailClosed,
        );
        Box::pin(async move {
            match redis.lease_acquire(&key, cap, &lease, ttl).await {
                Ok(got) => got,
                Err(e) => {
                    tracing::debug!(error = %e, "slot lease unavailable");
                    !closed
                }
            }
        })
    }

    fn acquire_upstream(&self, ask: UpstreamAsk, lease: String) -> BoxFuture<Leased> {
        let UpstreamAsk {
            key,
            account,
            tenant,
            cap,
            now_ms,
        } = ask;
        let (redis, ttl, closed) = (
            self.redis.clone(),
            self.lease_ttl,
            self.on_failure == OnFailure::FailClosed,
        );
        Box::pin(async move {
            match redis
                .upstream_lease(&key, &account, &tenant, cap, &lease, ttl, now_ms)
                .await
            {
                Ok(UpstreamLease::Granted) => Leased::Granted,
                Ok(UpstreamLease::Full) => Leased::Full,
                Ok(UpstreamLease::Out(json)) => match serde_json::from_str(&json) {
                    Ok(health) => Leased::Out(health),
                    Err(e) => {
                        // Out of rotation all the same: the script saw it so.
                        tracing::warn!(%account, error = %e, "unreadable upstream account health in redis");
                        Leased::Full
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "slot lease unavailable");
                    if closed {
                        Leased::Full
                    } else {
                        Leased::Granted
                    }
                }
            }
        })
    }

    fn renew(&self, key: String, lease: String) -> BoxFuture<bool> {
        let (redis, ttl) = (self.redis.clone(), self.lease_ttl);
        Box::pin(async move { redis.lease_renew(&key, &lease, ttl).await.unwrap_or(false) })
    }

    fn release(&self, key: String, lease: String) -> BoxFuture<()> {
        let redis = self.redis.clone();
        Box::pin(async move {
            if let Err(e) = redis.lease_release(&key, &lease).await {
                tracing::debug!(error = %e, "slot lease not given back; it expires by itself");
            }
        })
    }

    fn ttl(&self) -> Duration {
        self.lease_ttl
    }
}

/// Where each task ran, shared across replicas for its follow-ups. While Redis fails, a
/// follow-up finds only what its own replica remembers.
impl SharedOrigins for FailoverStore {
    fn remember(&self, task: &str, pool: &str, account: &str, ttl: Duration) -> BoxFuture<()> {
        let redis = self.redis.clone();
        let (task, pool, account) = (task.to_owned(), pool.to_owned(), account.to_owned());
        Box::pin(async move {
            if let Err(e) = redis.origin_set(&task, &pool, &account, ttl).await {
                tracing::warn!(%task, error = %e, "where the task ran is not shared; its follow-ups must come to this replica");
            }
        })
    }

    fn origin(&self, task: &str) -> BoxFuture<Option<(String, String)>> {
        let (redis, task) = (self.redis.clone(), task.to_owned());
        Box::pin(async move {
            redis.origin_get(&task).await.unwrap_or_else(|e| {
                tracing::debug!(%task, error = %e, "cannot read where the task ran");
                None
            })
        })
    }
}

/// Opens after `threshold` consecutive failures, for `cooldown`.
#[derive(Debug)]
struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn allows(&self) -> bool {
        self.failures.load(Ordering::Relaxed) < self.threshold
            || self.now_ms() >= self.open_until_ms.load(Ordering::Relaxed)
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// "closed" (Redis is asked), "open" (it is not, until the cooldown ends) or "half-open"
    /// (the cooldown ended; the next answer decides).
    fn state(&self) -> &'static str {
        if self.failures.load(Ordering::Relaxed) < self.threshold {
            "closed"
        } else if self.now_ms() < self.open_until_ms.load(Ordering::Relaxed) {
            "open"
        } else {
            "half-open"
        }
    }

    fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.threshold {
            self.open_until_ms.store(
                self.now_ms() + self.cooldown.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
    }
}

/// Redis, with what happens when it fails.
#[derive(Debug)]
pub struct FailoverStore {
    redis: Arc<RedisStore>,
    lease_ttl: Duration,
    on_failure: OnFailure,
    local: MemoryStore,
    breaker: Breaker,
    pub health: StoreHealth,
}

impl FailoverStore {
    pub fn new(
        redis: RedisStore,
        lease_ttl: Duration,
        on_failure: OnFailure,
        breaker_failures: u32,
        breaker_cooldown: Duration,
    ) -> Self {
        Self {
            redis: Arc::new(redis),
            lease_ttl,
            on_failure,
            local: MemoryStore::default(),
            breaker: Breaker {
                threshold: breaker_failures.max(1),
                cooldown: breaker_cooldown,
                failures: AtomicU32::new(0),
                open_until_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            },
            health: StoreHealth::new(),
        }
    }

    pub fn redis(&self) -> &RedisStore {
        &self.redis
    }

    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    /// Check-and-consume in Redis' script; while Redis is down, as `on_failure` says.
    pub(super) async fn check_and_consume(
        &self,
        account: AccountId,
        rules: &[Rule],
        units: u32,
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        let shared = self.redis.check_and_consume(account, rules, units, now_ms);
        let local = |rules: &[Rule]| {
            let update = consume_units(rules, units);
            self.local.apply(account, now_ms, update).0
        };
        let open = Decision::Admitted(Usage::default());
        self.decide(shared, local, rules, open).await
    }

    /// [`FailoverStore::check_and_consume`] with every window listed (for the IETF fields).
    pub(super) async fn check_and_consume_listed(
        &self,
        account: AccountId,
        rules: &[Rule],
        units: u32,
        now_ms: u64,
    ) -> Result<(Decision, WindowList), StoreError> {
        let shared = self
            .redis
            .check_and_consume_listed(account, rules, units, now_ms);
        let local = |rules: &[Rule]| {
            let update = consume_listed(rules, units);
            self.local.apply(account, now_ms, update).0
        };
        let open = (Decision::Admitted(Usage::default()), WindowList::default());
        self.decide(shared, local, rules, open).await
    }

    /// A check-and-consume: Redis' answer (`shared`), or while Redis is down as `on_failure`
    /// says — `open` (the request counted locally, unenforced), a failure, or `local` deciding
    /// on this replica's share of each limit.
    async fn decide<T>(
        &self,
        shared: impl std::future::Future<Output = Result<T, StoreError>>,
        local: impl Fn(&[Rule]) -> T,
        rules: &[Rule],
        open: T,
    ) -> Result<T, StoreError> {
        if let Some(answer) = self.attempt(shared).await {
            return Ok(answer);
        }
        match self.on_failure {
            OnFailure::FailOpen => {
                local(rules);
                Ok(open)
            }
            OnFailure::FailClosed => Err(unavailable()),
            OnFailure::Local { .. } => Ok(local(&self.on_failure.local_share(rules))),
        }
    }

    /// Any other update, in Redis (decided in Rust on counters read from Redis and written back
    /// with compare-and-set). While Redis is down it runs on the local counters, except an
    /// admission under `fail_closed` and an operator's change, which fail.
    pub(super) async fn update<R: Send>(
        &self,
        account: AccountId,
        now_ms: u64,
        purpose: Purpose,
        f: impl Update<R>,
    ) -> Result<R, StoreError> {
        let shared = self.redis.update(account, now_ms, &f);
        let answer = match purpose {
            Purpose::Read => shared.await.ok(),
            // An operator's change is made in Redis or not at all: made locally, it would be
            // answered as done and never reach the shared counters.
            Purpose::Operator => return shared.await,
            Purpose::Admission | Purpose::Bookkeeping => self.attempt(shared).await,
        };
        match answer {
            Some(answer) => Ok(answer),
            None if purpose == Purpose::Admission && self.on_failure == OnFailure::FailClosed => {
                Err(unavailable())
            }
            None => Ok(self.local.apply(account, now_ms, f).0),
        }
    }

    /// Runs a Redis operation unless the breaker is open, timing it and keeping the breaker and
    /// the health metrics up to date; `None` when it was skipped or failed (the caller's failure
    /// policy applies).
    async fn attempt<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Option<T> {
        if !self.breaker.allows() {
            return None;
        }
        let started = Instant::now();
        match op.await {
            Ok(value) => {
                self.health.latency.observe(started.elapsed().as_secs_f64());
                self.recovered();
                Some(value)
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// The circuit breaker's state, for the status page.
    pub fn breaker_state(&self) -> &'static str {
        self.breaker.state()
    }

    /// Whether Redis answered the last time it was asked.
    pub fn is_degraded(&self) -> bool {
        self.health.degraded.get() != 0
    }

    /// Tries Redis once (readiness probes and recovery without traffic). A failed ping keeps
    /// the breaker open; it is not an operation a request wanted, so it is not counted in
    /// `floodgate_store_errors_total`.
    pub async fn probe(&self) -> bool {
        match self.redis.ping().await {
            Ok(()) => {
                self.recovered();
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "shared store probe failed");
                self.breaker.failure();
                false
            }
        }
    }

    pub fn evict_idle(&self, now_ms: u64) -> usize {
        self.local.evict_idle(now_ms)
    }

    fn recovered(&self) {
        self.breaker.success();
        if self.health.degraded.get() != 0 {
            tracing::info!("shared store is answering again");
            self.health.degraded.set(0);
        }
    }

    fn failed(&self, e: &StoreError) {
        self.breaker.failure();
        self.health.errors.inc();
        if self.health.degraded.get() == 0 {
            tracing::warn!(error = %e, policy = ?self.on_failure, "shared store failing; applying the failure policy");
            self.health.degraded.set(1);
        }
    }
}

fn unavailable() -> StoreError {
    StoreError::Unavailable("shared store unavailable".into())
}
