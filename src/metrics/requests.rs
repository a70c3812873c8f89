//! What became of requests: decided, limited, refused, failed upstream, and shadow limits.

use prometheus::{HistogramVec, IntCounterVec};

use super::register::Registrar;

/// Requests by decision, and why floodgate answered those it answered itself.
pub struct RequestMetrics {
    /// By class, tier and decision; resolved per config into [`super::Handles`].
    pub(super) requests: IntCounterVec,
    /// By class, tier and the limit's type; resolved as used into [`super::Handles`].
    pub(super) limited: IntCounterVec,
    rejected: IntCounterVec,
    pub(super) upstream_errors: IntCounterVec,
    /// By class; resolved per config into [`super::Handles`].
    pub(super) upstream_seconds: HistogramVec,
    would_limit: IntCounterVec,
}

impl RequestMetrics {
    pub(super) fn register(r: &Registrar<'_>) -> Self {
        Self {
            requests: r.counters(
                "floodgate_requests_total",
                "Requests by class, tier and decision.",
                &["class", "tier", "decision"],
            ),
            limited: r.counters(
                "floodgate_limited_total",
                "Requests refused with 429, by the limit that refused them.",
                &["class", "tier", "type"],
            ),
            rejected: r.counters(
                "floodgate_rejected_total",
                "Requests floodgate refused itself, other than 429s (401 no or unknown key, 413 body too large).",
                &["reason"],
            ),
            upstream_errors: r.counters(
                "floodgate_upstream_errors_total",
                "Requests the upstream could not answer.",
                &["kind"],
            ),
            upstream_seconds: r.histograms(
                "floodgate_upstream_response_seconds",
                "Upstream time to response headers.",
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ],
                &["class"],
            ),
            would_limit: r.counters(
                "floodgate_would_limit_total",
                "Requests a shadow limit would have refused (not enforced), by the limit's type.",
                &["class", "tier", "type"],
            ),
        }
    }

    /// Counts a request a shadow limit would have refused.
    pub fn would_limit(&self, class: &str, tier: &str, kind: &str) {
        self.would_limit
            .with_label_values(&[class, tier, kind])
            .inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    pub fn upstream_error(&self, kind: &str) {
        self.upstream_errors.with_label_values(&[kind]).inc();
    }
}
