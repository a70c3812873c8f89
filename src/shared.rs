//! The state every worker, the admin listener and a reload share: the running config (swapped
//! whole on reload), the job pools, the limit store (opened from `[store]` by [`open_store`]), the
//! clock, metrics and the status board.
//!
//! Below the proxy, the admin listener and reload, which all take it; above everything it holds.
//! [`crate::app`] builds it and starts the threads that use it.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::access_log::AccessLog;
use crate::accounts::{AccountRecord, Blocked, Overrides};
use crate::clock::Clock;
use crate::config::{Config, StoreConfig};
use crate::identity::{AccountId, Caller};
use crate::limits::Tier;
use crate::metrics::{Handles, Metrics};
use crate::queue::health::{Health, State};
use crate::queue::Jobs;
use crate::status::StatusBoard;
use crate::store::accounts::records_file;
use crate::store::tasks::{tasks_file, TaskBook};
use crate::store::upstreams::health_file;
use crate::store::{AccountBook, UpstreamBook};
use crate::store::{FailoverStore, Login, RedisStore, Store, StoreError};

/// A config together with the metric handles resolved for it and the accounts' runtime
/// changes resolved against it; swapped whole on reload and on every change of an account.
///
/// The config and handles are held inline, not behind pointers of their own: the request path
/// reads them on every request, and an account's change — rare beside requests — pays for the
/// copy instead.
#[derive(Debug)]
pub struct Policy {
    pub config: Config,
    pub handles: Handles,
    pub overrides: Overrides,
}

impl Policy {
    /// The identified caller as its account's runtime changes make it — its plan, and the
    /// rules it is checked against by class (its tier's, or its own laid over them) — or its
    /// block. One test while no account has runtime changes.
    #[inline]
    pub fn account(&self, caller: Caller, clock: &dyn Clock) -> Result<(Caller, &Tier), Blocked> {
        match self.overrides.get(caller.account) {
            None => Ok((caller, self.config.tier(caller.tier))),
            Some(o) => {
                let caller = o.admit(caller, clock.now_ms())?;
                let tier = o.rules.as_ref();
                Ok((
                    caller,
                    tier.unwrap_or_else(|| self.config.tier(caller.tier)),
                ))
            }
        }
    }

    /// The identified caller as its account's runtime changes make it (its plan), or its block,
    /// and whether the account has rules of its own ([`Policy::tier_of`] then finds them): for
    /// the plain path's plan, whose admission need not look the account up again otherwise.
    #[inline]
    pub fn caller(&self, caller: Caller, clock: &dyn Clock) -> Result<(Caller, bool), Blocked> {
        match self.overrides.get(caller.account) {
            None => Ok((caller, false)),
            Some(o) => Ok((o.admit(caller, clock.now_ms())?, o.rules.is_some())),
        }
    }

    /// The rules `caller` is checked against, by class: its own (its tier's with its runtime
    /// limits laid over), or its tier's.
    #[inline]
    pub fn tier_of(&self, caller: Caller) -> &Tier {
        self.overrides.tier(&self.config, caller)
    }
}

/// State every worker shares.
pub struct Shared {
    pub policy: ArcSwap<Policy>,
    /// Job pools and task holds; built from the config at start.
    pub jobs: Jobs,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    /// The status page's charts, hot accounts and reload record.
    pub status: StatusBoard,
    pub shutting_down: AtomicBool,
    /// The proxy listener's TLS settings when it speaks TLS: new connections take the current
    /// ones, so a reload with new certificate files applies without dropping a connection.
    pub tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    /// One line per request, when `[access_log]` asks for it (opened by [`crate::app`]).
    pub access_log: Option<Arc<AccessLog>>,
    /// The accounts' runtime records (the accounts API) and where they are kept.
    pub accounts: AccountBook,
    /// The upstream accounts' health and where it is kept.
    pub upstreams: UpstreamBook,
    /// The tasks holding job slots, kept for a restart; `None`: not kept (no `[state]`, no
    /// Redis).
    pub tasks: Option<Arc<TaskBook>>,
    /// Held while a new policy is built and swapped in: a reload and an account's change
    /// never build from each other's stale half.
    swapping: Mutex<()>,
}

impl Shared {
    pub fn new(config: Config, store: Store, clock: Arc<dyn Clock>) -> Self {
        let metrics = Metrics::new();
        if let Some(health) = store.health() {
            metrics.register_all(health.collectors());
        }
        let handles = handles(&metrics, &config);
        let jobs = Jobs::new(&config.jobs, &metrics, &clock);
        let tls = config.server.tls.as_ref();
        let tls = tls.map(|t| Arc::new(ArcSwap::new(t.rustls.clone())));
        if let Store::Redis(shared_store) = &store {
            // job concurrency caps hold across replicas: slots are leases in Redis
            for pool in &jobs.pools {
                pool.share_slots(shared_store.clone());
            }
            // a follow-up sent to any replica finds the upstream account of its task
            jobs.tracker.share_origins(shared_store.clone());
        }
        let records_file = config.state.as_ref().map(|s| records_file(&s.file));
        let accounts = AccountBook::new(&store, records_file);
        let health_file = config.state.as_ref().map(|s| health_file(&s.file));
        let upstreams = UpstreamBook::new(&store, health_file);
        let tasks_file = config.state.as_ref().map(|s| tasks_file(&s.file));
        let tasks = TaskBook::new(&store, tasks_file).map(Arc::new);
        if let Some(book) = &tasks {
            jobs.tracker.keep_holds(Arc::new(book.clone()));
        }
        Self {
            upstreams,
            tasks,
            jobs,
            policy: ArcSwap::from_pointee(Policy {
                config,
                handles,
                overrides: Overrides::default(),
            }),
            accounts,
            swapping: Mutex::new(()),
            store,
            status: StatusBoard::new(clock.now_ms()),
            clock,
            metrics,
            shutting_down: AtomicBool::new(false),
            tls,
            access_log: None,
        }
    }

    /// Swaps in a new config atomically. Counters are keyed by rule content, so rules that did
    /// not change keep their windows. Validation against the running config (what only a
    /// restart can change) is [`crate::reload::apply`]'s.
    pub fn reload(&self, config: Config) {
        if let (Some(running), Some(new)) = (&self.tls, &config.server.tls) {
            running.store(new.rustls.clone());
        }
        let handles = handles(&self.metrics, &config);
        let _one = self.swapping.lock().unwrap_or_else(|p| p.into_inner());
        let (overrides, warnings) = Overrides::resolve(&config, &*self.accounts.records());
        warn_dropped(&warnings);
        self.policy.store(Arc::new(Policy {
            config,
            handles,
            overrides,
        }));
    }

    /// Resolves every account record again against the running config (at start, and when
    /// another replica changed records); returns the warnings for records it dropped.
    pub fn apply_records(&self) -> Vec<String> {
        let _one = self.swapping.lock().unwrap_or_else(|p| p.into_inner());
        let running = self.policy.load_full();
        let (overrides, warnings) = Overrides::resolve(&running.config, &*self.accounts.records());
        warn_dropped(&warnings);
        self.policy.store(Arc::new(Policy {
            config: running.config.clone(),
            handles: running.handles.clone(),
            overrides,
        }));
        warnings
    }

    /// Applies one account's record (already written to the book) to the running policy.
    pub fn apply_record(&self, account: AccountId, record: &AccountRecord) {
        let _one = self.swapping.lock().unwrap_or_else(|p| p.into_inner());
        let running = self.policy.load_full();
        let overrides = match running.overrides.with(&running.config, account, record) {
            Ok(o) => o,
            // Checked against the config before it was written; a reload since then dropped
            // what it needs. Resolve all, with the warning.
            Err(_) => {
                let (all, warnings) =
                    Overrides::resolve(&running.config, &*self.accounts.records());
                warn_dropped(&warnings);
                all
            }
        };
        self.policy.store(Arc::new(Policy {
            config: running.config.clone(),
            handles: running.handles.clone(),
            overrides,
        }));
    }
}

impl Shared {
    /// Changes upstream account `account`'s health (`change` gets the record as stored,
    /// returns the new one or `None`), and applies a change at once: its pools, its metrics,
    /// a log line. Returns the new record when it changed.
    pub async fn change_upstream(
        &self,
        account: &str,
        change: impl FnMut(&Health) -> Option<Health>,
    ) -> Result<Option<Health>, StoreError> {
        let changed = self.upstreams.update(account, change).await?;
        if let Some(health) = &changed {
            self.apply_upstream(account, health);
            tracing::info!(
                upstream_account = %account,
                state = health.state.name(),
                until_ms = health.until_ms,
                reason = %health.reason,
                failures = health.failures,
                "upstream account health changed"
            );
        }
        Ok(changed)
    }

    /// Applies an upstream account's health, as read or as changed, to its pools.
    pub fn apply_upstream(&self, account: &str, health: &Health) {
        self.jobs.apply_health(account, health);
        self.show_upstream_states();
    }

    /// Sets the upstream accounts' state gauges from their health as this replica knows it (a
    /// rest that ended shows active).
    pub fn show_upstream_states(&self) {
        let now = self.clock.now_ms();
        let records = self.upstreams.all();
        let state = |name: &str| records.get(name).map_or(State::Active, |h| h.state_at(now));
        let jobs = &self.metrics.jobs;
        for account in self.jobs.upstream_accounts() {
            jobs.upstream_state(&account.name, state(&account.name).name());
        }
        for pool in self.jobs.pools.iter().filter(|p| !p.is_plain()) {
            let mut counts = [("active", 0), ("resting", 0), ("disabled", 0)];
            for a in &pool.accounts {
                let i = match state(&a.name) {
                    State::Active => 0,
                    State::Resting => 1,
                    State::Disabled => 2,
                };
                counts[i].1 += 1;
            }
            jobs.pool_states(&pool.name, counts);
        }
    }
}

/// Logs each account record a config could not honour.
fn warn_dropped(warnings: &[String]) {
    for w in warnings {
        tracing::warn!("{w}");
    }
}

/// The metric handles for a config's classes and tiers.
fn handles(metrics: &Metrics, config: &Config) -> Handles {
    let tiers: Vec<&str> = config.tiers.iter().map(|t| t.name.as_str()).collect();
    metrics.handles(&config.classes, &tiers)
}

/// The store `[store]` asks for. Redis is connected on first use, so a Redis that is down at
/// start is handled by the failure policy like one that goes down later.
pub fn open_store(config: &StoreConfig) -> Result<Store, StoreError> {
    let StoreConfig::Redis {
        url,
        timeout,
        on_failure,
        breaker_failures,
        breaker_cooldown,
        lease_ttl,
        auth,
        tls_ca,
        cluster_nodes,
    } = config
    else {
        return Ok(Store::memory());
    };
    let login = Login {
        username: auth.username.as_deref(),
        password: auth.password.as_ref().map(|p| p.expose()),
    };
    let redis = match cluster_nodes.is_empty() {
        true => RedisStore::new(url, *timeout, &login)?,
        false => RedisStore::cluster(cluster_nodes, *timeout, &login)?,
    };
    let redis = match tls_ca {
        Some(ca) => redis.trusting(ca)?,
        None => redis,
    };
    let failover = FailoverStore::new(
        redis,
        *lease_ttl,
        *on_failure,
        *breaker_failures,
        *breaker_cooldown,
    );
    Ok(Store::Redis(Arc::new(failover)))
}
