//! The state every worker, the admin listener and a reload share: the running config (swapped
//! whole on reload), the job pools, the limit store (opened from `[store]` by [`open_store`]), the
//! clock, metrics and the status board.
//!
//! Below the proxy, the admin listener and reload, which all take it; above everything it holds.
//! [`crate::app`] builds it and starts the threads that use it.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::access_log::AccessLog;
use crate::clock::Clock;
use crate::config::{Config, StoreConfig};
use crate::metrics::{Handles, Metrics};
use crate::queue::Jobs;
use crate::status::StatusBoard;
use crate::store::{FailoverStore, Login, RedisStore, Store, StoreError};

/// A config together with the metric handles resolved for it; swapped whole on reload.
#[derive(Debug)]
pub struct Policy {
    pub config: Config,
    pub handles: Handles,
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
        }
        Self {
            jobs,
            policy: ArcSwap::from_pointee(Policy { config, handles }),
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
        self.policy.store(Arc::new(Policy { config, handles }));
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
