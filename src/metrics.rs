//! Prometheus metrics, owned in one struct and registered once.
//!
//! Label values come from closed sets — class and tier names from the config, decisions and error
//! kinds from fixed lists — never from a request, so series stay bounded and no API key is ever
//! exported. The per-request counters are resolved to handles once per config ([`Handles`]), so
//! the hot path increments an atomic without hashing label values.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::classify::ClassId;
use crate::identity::TierId;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    limited: IntCounterVec,
    rejected: IntCounterVec,
    upstream_errors: IntCounterVec,
    upstream_seconds: HistogramVec,
    state_saves: IntCounterVec,
    journal_records: IntCounter,
    journal_flushes: IntCounterVec,
    journal_flush_seconds: prometheus::Histogram,
    pub tracked_accounts: IntGauge,
    jobs_queued: IntGaugeVec,
    jobs_in_flight: IntGaugeVec,
    upstream_account_in_flight: IntGaugeVec,
    pool_queued: IntGaugeVec,
    queue_wait: HistogramVec,
    jobs_dropped: IntCounterVec,
    cooldowns: IntCounterVec,
    handoffs: IntCounterVec,
    incorrect_tasks: IntCounterVec,
    relax_earned: IntCounterVec,
    billing_marks: IntCounterVec,
    would_limit: IntCounterVec,
    would_queue: IntCounterVec,
    reloads: IntCounter,
    reload_failures: IntCounter,
    pub client_connections: IntGauge,
    /// Upgraded connections (WebSocket and the like) being tunnelled.
    pub tunnels_open: IntGauge,
    client_timeouts: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    /// Access log lines dropped because the writer was behind.
    pub access_log_dropped: IntCounter,
    /// Panics caught while answering a request or serving a connection (the process went on).
    pub panics: IntCounter,
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

/// Per-config handles for the counters every request touches.
#[derive(Debug)]
pub struct Handles {
    classes: usize,
    /// `[tier * classes + class]`
    admitted: Vec<IntCounter>,
    limited: Vec<IntCounter>,
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

    pub fn limited(&self, class: ClassId, tier: TierId) {
        self.limited[self.idx(class, tier)].inc();
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
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let requests = counter(
            "floodgate_requests_total",
            "Requests by class, tier and decision.",
            &["class", "tier", "decision"],
        );
        let limited = counter(
            "floodgate_limited_total",
            "Requests refused with 429, by the limit that refused them.",
            &["class", "tier", "type"],
        );
        let rejected = counter(
            "floodgate_rejected_total",
            "Requests floodgate refused itself, other than 429s (401 no or unknown key, 413 body too large).",
            &["reason"],
        );
        let upstream_errors = counter(
            "floodgate_upstream_errors_total",
            "Requests the upstream could not answer.",
            &["kind"],
        );
        let state_saves = counter(
            "floodgate_state_saves_total",
            "Writes of the state file, by result (ok, error).",
            &["result"],
        );
        let journal_flushes = counter(
            "floodgate_state_journal_flushes_total",
            "Journal flushes that wrote records (one write and one fsync), by result (ok, error).",
            &["result"],
        );
        let journal_records = IntCounter::new(
            "floodgate_state_journal_records_total",
            "Account records appended to the state journal (one per changed account per flush).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(journal_records.clone()))
            .expect("registered once");
        let journal_flush_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "floodgate_state_journal_flush_seconds",
                "Time to write and fsync one journal flush.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(journal_flush_seconds.clone()))
            .expect("registered once");
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "floodgate_upstream_response_seconds",
                "Upstream time to response headers.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["class"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(upstream_seconds.clone()))
            .expect("registered once");
        let tracked_accounts = IntGauge::new(
            "floodgate_tracked_accounts",
            "Accounts with an open limit window.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(tracked_accounts.clone()))
            .expect("registered once");
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let jobs_queued = gauge(
            "floodgate_jobs_queued",
            "Jobs waiting in queues, by tier.",
            &["tier"],
        );
        let jobs_in_flight = gauge(
            "floodgate_jobs_in_flight",
            "Jobs holding a slot, by tier.",
            &["tier"],
        );
        let upstream_account_in_flight = gauge(
            "floodgate_upstream_account_jobs_in_flight",
            "Jobs running on each upstream account.",
            &["upstream_account"],
        );
        let pool_queued = gauge(
            "floodgate_pool_jobs_queued",
            "Jobs waiting for a pool of upstream accounts.",
            &["upstream_accounts"],
        );
        let queue_wait = HistogramVec::new(
            HistogramOpts::new(
                "floodgate_queue_wait_seconds",
                "Time jobs waited for a slot.",
            )
            .buckets(vec![
                0.0, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0,
            ]),
            &["tier"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(queue_wait.clone()))
            .expect("registered once");
        let jobs_dropped = counter(
            "floodgate_jobs_dropped_total",
            "Jobs that never got a slot: queue_full, timed_out, cancelled (client left), shutdown.",
            &["tier", "reason"],
        );
        let cooldowns = counter(
            "floodgate_upstream_account_cooldowns_total",
            "Times an upstream account answered 429 and was rested.",
            &["upstream_account"],
        );
        let handoffs = counter(
            "floodgate_queue_handoffs_total",
            "Queued jobs sent when their slot freed, by who sent them: granting_worker, own_worker.",
            &["sent_by"],
        );
        let incorrect_tasks = counter(
            "floodgate_incorrect_tasks_total",
            "Answers judged incorrect tasks (banned prompt, invalid parameter...), counted \
             against the account's daily allowance.",
            &["class", "tier"],
        );
        let relax_earned = counter(
            "floodgate_relax_earned_total",
            "Relax jobs earned by successful fast or turbo jobs.",
            &["tier"],
        );
        let billing_marks = counter(
            "floodgate_billing_marks_total",
            "Jobs forwarded with a billing mark: no_refund (past the incorrect-task allowance \
             on a flag tier) or surcharge (a relax job past the relax allowance).",
            &["tier", "mark"],
        );
        let would_limit = counter(
            "floodgate_would_limit_total",
            "Requests a shadow limit would have refused (not enforced), by the limit's type.",
            &["class", "tier", "type"],
        );
        let would_queue = counter(
            "floodgate_would_queue_total",
            "Jobs of a shadow job class that found no free slot and were forwarded at once.",
            &["tier"],
        );
        let reload_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let reloads = reload_counter(
            "floodgate_config_reloads_total",
            "Config reloads applied (SIGHUP or file change).",
        );
        let reload_failures = reload_counter(
            "floodgate_config_reload_failures_total",
            "Config reloads refused (invalid file); the running config kept serving.",
        );
        let panics = reload_counter(
            "floodgate_panics_total",
            "Panics caught while answering a request (answered 500) or serving a client \
             connection (closed); the process kept serving. Any is a bug worth reporting.",
        );
        let client_connections = IntGauge::new(
            "floodgate_client_connections",
            "Client connections open on the proxy port.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(client_connections.clone()))
            .expect("registered once");
        let tunnels_open = IntGauge::new(
            "floodgate_tunnels_open",
            "Upgraded connections (WebSocket and the like) being tunnelled to the upstream.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(tunnels_open.clone()))
            .expect("registered once");
        let client_timeouts = counter(
            "floodgate_client_timeouts_total",
            "Client connections closed by floodgate: kind=header (request head too slow), \
             idle (keep-alive connection unused), body (request body stalled), send (the \
             client stopped reading a response: connection closed or HTTP/2 stream reset).",
            &["kind"],
        );
        let tls_handshake_failures = counter(
            "floodgate_tls_handshake_failures_total",
            "TLS handshakes on the proxy listener that did not complete: reason=error (no \
             common version or cipher, a client certificate missing or untrusted, not TLS), \
             timeout (not done within header_read_timeout).",
            &["reason"],
        );
        let access_log_dropped = IntCounter::new(
            "floodgate_access_log_dropped_total",
            "Access log lines dropped because the log could not keep up (never the requests).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(access_log_dropped.clone()))
            .expect("registered once");
        Self {
            access_log_dropped,
            tls_handshake_failures,
            incorrect_tasks,
            relax_earned,
            billing_marks,
            would_limit,
            would_queue,
            reloads,
            reload_failures,
            client_connections,
            tunnels_open,
            client_timeouts,
            panics,
            jobs_queued,
            jobs_in_flight,
            upstream_account_in_flight,
            pool_queued,
            queue_wait,
            jobs_dropped,
            cooldowns,
            handoffs,
            registry,
            requests,
            limited,
            rejected,
            upstream_errors,
            upstream_seconds,
            state_saves,
            journal_records,
            journal_flushes,
            journal_flush_seconds,
            tracked_accounts,
        }
    }

    /// Resolves the per-request handles for a config's classes and tiers (by name, in the
    /// order of their ids).
    pub fn handles(&self, classes: &[String], tiers: &[&str]) -> Handles {
        let mut admitted = Vec::new();
        let mut limited = Vec::new();
        for tier in tiers {
            for class in classes {
                admitted.push(self.requests.with_label_values(&[class, tier, "admitted"]));
                limited.push(self.requests.with_label_values(&[class, tier, "limited"]));
            }
        }
        let upstream_seconds = classes
            .iter()
            .map(|c| self.upstream_seconds.with_label_values(&[c]))
            .collect();
        let tiers = tiers.iter().map(|t| self.tier_gauges(t)).collect();
        Handles {
            tiers,
            classes: classes.len(),
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

    /// Jobs waiting for a pool of upstream accounts ("upstream" is the plain upstream).
    pub fn pool_queued(&self, pool: &str) -> IntGauge {
        self.pool_queued.with_label_values(&[pool])
    }

    /// The in-flight gauge of one upstream account.
    pub fn upstream_account_in_flight(&self, name: &str) -> IntGauge {
        self.upstream_account_in_flight.with_label_values(&[name])
    }

    /// The queued / in-flight gauges of a tier.
    pub fn tier_gauges(&self, tier: &str) -> TierGauges {
        TierGauges {
            queued: self.jobs_queued.with_label_values(&[tier]),
            in_flight: self.jobs_in_flight.with_label_values(&[tier]),
            cancelled: self.jobs_dropped.with_label_values(&[tier, "cancelled"]),
        }
    }

    pub fn queue_wait(&self, tier: &str, seconds: f64) {
        self.queue_wait.with_label_values(&[tier]).observe(seconds);
    }

    pub fn job_dropped(&self, tier: &str, reason: &str) {
        self.jobs_dropped.with_label_values(&[tier, reason]).inc();
    }

    pub fn cooldown(&self, upstream_account: &str) {
        self.cooldowns.with_label_values(&[upstream_account]).inc();
    }

    /// A queued job was sent: by the worker that freed its slot, or by its own.
    pub fn handoff(&self, by_granting_worker: bool) {
        let by = if by_granting_worker {
            "granting_worker"
        } else {
            "own_worker"
        };
        self.handoffs.with_label_values(&[by]).inc();
    }

    pub fn incorrect_task(&self, class: &str, tier: &str) {
        self.incorrect_tasks.with_label_values(&[class, tier]).inc();
    }

    pub fn relax_earned(&self, tier: &str) {
        self.relax_earned.with_label_values(&[tier]).inc();
    }

    /// Counts a forwarded job's billing mark (`no_refund` or `surcharge`).
    pub fn billing_mark(&self, tier: &str, mark: &'static str) {
        self.billing_marks.with_label_values(&[tier, mark]).inc();
    }

    /// Counts a 429 by the kind of limit that refused it.
    pub fn limit_hit(&self, class: &str, tier: &str, kind: &str) {
        self.limited.with_label_values(&[class, tier, kind]).inc();
    }

    /// Counts a request a shadow limit would have refused.
    pub fn would_limit(&self, class: &str, tier: &str, kind: &str) {
        self.would_limit
            .with_label_values(&[class, tier, kind])
            .inc();
    }

    /// Counts a shadow job that would have waited for a slot.
    pub fn would_queue(&self, tier: &str) {
        self.would_queue.with_label_values(&[tier]).inc();
    }

    /// Counts a config reload, applied or refused.
    pub fn config_reloaded(&self, ok: bool) {
        if ok {
            self.reloads.inc();
        } else {
            self.reload_failures.inc();
        }
    }

    /// The counters of responses cut mid-body when a clock ran out: the upstream's body
    /// stalled (`upstream_errors_total{kind="upstream_body_timeout"}`), or the client's
    /// (`client_timeouts_total{kind="body"}`).
    pub fn cut_counters(&self) -> CutCounters {
        CutCounters {
            upstream_body: self
                .upstream_errors
                .with_label_values(&["upstream_body_timeout"]),
            client_body: self.client_timeouts.with_label_values(&["body"]),
        }
    }

    /// Counts a client connection floodgate closed: `header`, `idle` or `body`.
    pub fn client_timeout(&self, kind: &'static str) {
        self.client_timeouts.with_label_values(&[kind]).inc();
    }

    /// Counts a TLS handshake on the proxy listener that failed: `error` or `timeout`.
    pub fn tls_handshake_failed(&self, reason: &'static str) {
        self.tls_handshake_failures
            .with_label_values(&[reason])
            .inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    pub fn upstream_error(&self, kind: &str) {
        self.upstream_errors.with_label_values(&[kind]).inc();
    }

    pub fn state_saved(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.state_saves.with_label_values(&[result]).inc();
    }

    /// One journal flush that had records to write: how many (`None`: it failed), how long.
    pub fn journal_flushed(&self, records: Option<usize>, seconds: f64) {
        let result = match records {
            Some(n) => {
                self.journal_records.inc_by(n as u64);
                "ok"
            }
            None => "error",
        };
        self.journal_flushes.with_label_values(&[result]).inc();
        self.journal_flush_seconds.observe(seconds);
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
