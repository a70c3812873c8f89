//! Job queues and upstream accounts: what waits, what runs, what was dropped or rested.

use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec};

use super::register::Registrar;
use super::TierGauges;

/// The job queues' gauges and counters.
pub struct JobMetrics {
    jobs_queued: IntGaugeVec,
    jobs_in_flight: IntGaugeVec,
    upstream_account_in_flight: IntGaugeVec,
    pool_queued: IntGaugeVec,
    queue_wait: HistogramVec,
    jobs_dropped: IntCounterVec,
    cooldowns: IntCounterVec,
    handoffs: IntCounterVec,
    would_queue: IntCounterVec,
    upstream_account_state: IntGaugeVec,
    pool_upstream_accounts: IntGaugeVec,
    upstream_account_failures: IntCounterVec,
    retries: IntCounterVec,
}

impl JobMetrics {
    pub(super) fn register(r: &Registrar<'_>) -> Self {
        Self {
            jobs_queued: r.gauges(
                "floodgate_jobs_queued",
                "Jobs waiting in queues, by tier.",
                &["tier"],
            ),
            jobs_in_flight: r.gauges(
                "floodgate_jobs_in_flight",
                "Jobs holding a slot, by tier.",
                &["tier"],
            ),
            upstream_account_in_flight: r.gauges(
                "floodgate_upstream_account_jobs_in_flight",
                "Jobs running on each upstream account.",
                &["upstream_account"],
            ),
            pool_queued: r.gauges(
                "floodgate_pool_jobs_queued",
                "Jobs waiting for a pool of upstream accounts.",
                &["upstream_accounts"],
            ),
            queue_wait: r.histograms(
                "floodgate_queue_wait_seconds",
                "Time jobs waited for a slot.",
                &[0.0, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0],
                &["tier"],
            ),
            jobs_dropped: r.counters(
                "floodgate_jobs_dropped_total",
                "Jobs that never got a slot: queue_full, timed_out, cancelled (client left), shutdown.",
                &["tier", "reason"],
            ),
            cooldowns: r.counters(
                "floodgate_upstream_account_cooldowns_total",
                "Times an upstream account answered 429 and was rested.",
                &["upstream_account"],
            ),
            handoffs: r.counters(
                "floodgate_queue_handoffs_total",
                "Queued jobs sent when their slot freed, by who sent them: granting_worker, own_worker.",
                &["sent_by"],
            ),
            would_queue: r.counters(
                "floodgate_would_queue_total",
                "Jobs of a shadow job class that found no free slot and were forwarded at once.",
                &["tier"],
            ),
            upstream_account_state: r.gauges(
                "floodgate_upstream_account_state",
                "1 for each upstream account's state (active, resting, disabled), 0 for the others.",
                &["upstream_account", "state"],
            ),
            pool_upstream_accounts: r.gauges(
                "floodgate_pool_upstream_accounts",
                "Upstream accounts of each pool by state (active, resting, disabled).",
                &["upstream_accounts", "state"],
            ),
            upstream_account_failures: r.counters(
                "floodgate_upstream_account_failures_total",
                "Failed jobs by upstream account and kind: server_error (5xx), timeout, connection, dead (a status or body that disables it).",
                &["upstream_account", "kind"],
            ),
            retries: r.counters(
                "floodgate_jobs_retried_total",
                "Jobs tried again on another upstream account after theirs refused them: rate_limited (429), disabled (401, 403 or a rule's match).",
                &["reason"],
            ),
        }
    }

    /// Shows an upstream account's state.
    pub fn upstream_state(&self, account: &str, state: &str) {
        for s in ["active", "resting", "disabled"] {
            let on = i64::from(s == state);
            self.upstream_account_state
                .with_label_values(&[account, s])
                .set(on);
        }
    }

    /// Shows how many of a pool's upstream accounts are in each state.
    pub fn pool_states(&self, pool: &str, counts: [(&str, usize); 3]) {
        for (state, n) in counts {
            self.pool_upstream_accounts
                .with_label_values(&[pool, state])
                .set(n as i64);
        }
    }

    /// A job failed on an upstream account.
    pub fn upstream_failure(&self, account: &str, kind: &str) {
        self.upstream_account_failures
            .with_label_values(&[account, kind])
            .inc();
    }

    /// A job was tried again on another upstream account.
    pub fn retried(&self, reason: &str) {
        self.retries.with_label_values(&[reason]).inc();
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

    pub fn dropped(&self, tier: &str, reason: &str) {
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

    /// Counts a shadow job that would have waited for a slot.
    pub fn would_queue(&self, tier: &str) {
        self.would_queue.with_label_values(&[tier]).inc();
    }
}
