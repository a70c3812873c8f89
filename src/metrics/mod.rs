//! Prometheus metrics, owned in one struct and registered once: each component of floodgate has
//! its own small struct of metrics (requests, jobs, penalties, the listener, the state, reloads),
//! registered in [`Metrics::new`] and reached as `metrics.jobs`, `metrics.listener`, ...
//!
//! Label values come from closed sets — class and tier names from the config, decisions and error
//! kinds from fixed lists — never from a request, so series stay bounded and no API key is ever
//! exported. The per-request counters are resolved to handles once per config ([`Handles`]), so
//! the hot path increments an atomic without hashing label values.

mod jobs;
mod listener;
mod penalties;
mod register;
mod reload;
mod requests;
mod state;

use std::sync::OnceLock;

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Registry, TextEncoder};

use crate::classify::ClassId;
use crate::identity::TierId;
use crate::limits::LimitKind;
pub use jobs::JobMetrics;
pub use listener::ListenerMetrics;
pub use penalties::PenaltyMetrics;
use register::Registrar;
pub use reload::ReloadMetrics;
pub use requests::RequestMetrics;
pub use state::StateMetrics;

/// Every metric floodgate exports, by the component that moves it.
pub struct Metrics {
    registry: Registry,
    pub requests: RequestMetrics,
    pub jobs: JobMetrics,
    pub penalties: PenaltyMetrics,
    pub listener: ListenerMetrics,
    pub state: StateMetrics,
    pub reload: ReloadMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Per-tier gauges (queue) a job moves while it waits and runs.
#[derive(Debug, Clone)]
pub struct TierGauges {
    pub queued: IntGauge,
    pub in_flight: IntGauge,
    /// Jobs whose client left while they waited.
    pub cancelled: prometheus::IntCounter,
}

/// Counters of responses cut mid-body when a clock ran out. Taken where the clock runs: the
/// error itself only closes the client connection.
#[derive(Debug, Clone)]
pub struct CutCounters {
    /// The upstream paused its response body too long.
    pub upstream_body: IntCounter,
    /// The client paused its request body too long, after the upstream answered.
    pub client_body: IntCounter,
}

/// The kinds of limit a refusal can name ([`LimitKind`] as an index).
const LIMIT_KINDS: usize = LimitKind::Relax as usize + 1;

/// Per-config handles for the counters every request touches (cloned with the config when an
/// account changes at runtime: the clones count in the same series).
#[derive(Debug, Clone)]
pub struct Handles {
    classes: usize,
    /// `[tier * classes + class]`
    admitted: Vec<IntCounter>,
    limited: Vec<IntCounter>,
    /// `floodgate_limited_total` by `[(tier * classes + class) * LIMIT_KINDS + kind]`, each
    /// resolved at its first refusal (a refusal storm hashes no label values; a combination
    /// that never refused exports no series).
    limit_hits: Vec<OnceLock<IntCounter>>,
    limit_hits_by_label: IntCounterVec,
    class_names: Vec<String>,
    tier_names: Vec<String>,
    upstream_seconds: Vec<prometheus::Histogram>,
    /// Indexed by tier.
    tiers: Vec<TierGauges>,
}

impl Handles {
    fn idx(&self, class: ClassId, tier: TierId) -> usize {
        tier.0 as usize * self.classes + class.0 as usize
    }

    pub fn admitted(&self, class: ClassId, tier: TierId) {
        self.admitted[self.idx(class, tier)].inc();
    }

    /// Counts a 429, and the kind of limit that refused it.
    pub fn limited(&self, class: ClassId, tier: TierId, kind: LimitKind) {
        let i = self.idx(class, tier);
        self.limited[i].inc();
        self.limit_hits[i * LIMIT_KINDS + kind as usize]
            .get_or_init(|| {
                let (class, tier) = (
                    &self.class_names[class.0 as usize],
                    &self.tier_names[tier.0 as usize],
                );
                self.limit_hits_by_label
                    .with_label_values(&[class, tier, kind.name()])
            })
            .inc();
    }

    /// Queued / in-flight job gauges of a tier.
    pub fn tier_gauges(&self, tier: TierId) -> TierGauges {
        self.tiers[tier.0 as usize].clone()
    }

    /// Time from forwarding to the upstream's response head.
    pub fn upstream_latency(&self, class: ClassId, seconds: f64) {
        self.upstream_seconds[class.0 as usize].observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = Registrar(&registry);
        Self {
            requests: RequestMetrics::register(&r),
            jobs: JobMetrics::register(&r),
            penalties: PenaltyMetrics::register(&r),
            listener: ListenerMetrics::register(&r),
            state: StateMetrics::register(&r),
            reload: ReloadMetrics::register(&r),
            registry,
        }
    }

    /// Resolves the per-request handles for a config's classes and tiers (by name, in the
    /// order of their ids).
    pub fn handles(&self, classes: &[String], tiers: &[&str]) -> Handles {
        let mut admitted = Vec::new();
        let mut limited = Vec::new();
        let requests = &self.requests.requests;
        for tier in tiers {
            for class in classes {
                admitted.push(requests.with_label_values(&[class, tier, "admitted"]));
                limited.push(requests.with_label_values(&[class, tier, "limited"]));
            }
        }
        let upstream_seconds = classes
            .iter()
            .map(|c| self.requests.upstream_seconds.with_label_values(&[c]))
            .collect();
        let tier_names = tiers.iter().map(|t| t.to_string()).collect();
        let tiers = tiers.iter().map(|t| self.jobs.tier_gauges(t)).collect();
        Handles {
            tiers,
            classes: classes.len(),
            limit_hits: (0..admitted.len() * LIMIT_KINDS)
                .map(|_| OnceLock::new())
                .collect(),
            limit_hits_by_label: self.requests.limited.clone(),
            class_names: classes.to_vec(),
            tier_names,
            admitted,
            limited,
            upstream_seconds,
        }
    }

    /// Registers metrics owned elsewhere (the shared store's health).
    pub fn register_all(&self, collectors: Vec<Box<dyn prometheus::core::Collector>>) {
        for c in collectors {
            let _ = self.registry.register(c);
        }
    }

    /// The counters of responses cut mid-body when a clock ran out: the upstream's body
    /// stalled (`upstream_errors_total{kind="upstream_body_timeout"}`), or the client's
    /// (`client_timeouts_total{kind="body"}`).
    pub fn cut_counters(&self) -> CutCounters {
        CutCounters {
            upstream_body: self
                .requests
                .upstream_errors
                .with_label_values(&["upstream_body_timeout"]),
            client_body: self.listener.client_timeouts.with_label_values(&["body"]),
        }
    }

    /// Every metric's current values (the status page reads its totals from here).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_counts_under_its_class_tier_and_kind_and_no_other_series_appears() {
        let metrics = Metrics::new();
        let classes = ["a".to_owned(), "b".to_owned()];
        let handles = metrics.handles(&classes, &["free", "pro"]);
        handles.limited(ClassId(1), TierId(1), LimitKind::Minute);
        handles.limited(ClassId(1), TierId(1), LimitKind::Minute);
        handles.limited(ClassId(0), TierId(0), LimitKind::Relax);
        let text = metrics.render();
        let limited = |labels: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("floodgate_limited_total{{{labels}}} ")))
                .map(|v| v.to_owned())
        };
        assert_eq!(
            limited(r#"class="b",tier="pro",type="minute""#).as_deref(),
            Some("2")
        );
        assert_eq!(
            limited(r#"class="a",tier="free",type="relax""#).as_deref(),
            Some("1")
        );
        assert_eq!(limited(r#"class="a",tier="pro",type="minute""#), None);
        let series = text
            .lines()
            .filter(|l| l.starts_with("floodgate_limited_total{"))
            .count();
        assert_eq!(series, 2, "{text}");
    }
}
