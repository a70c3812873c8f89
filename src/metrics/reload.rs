//! Changes of the running policy: config reloads, applied and refused, and accounts changed at
//! runtime through the accounts API.

use prometheus::{IntCounter, IntCounterVec};

use super::register::Registrar;

pub struct ReloadMetrics {
    applied: IntCounter,
    refused: IntCounter,
    admin_changes: IntCounterVec,
}

impl ReloadMetrics {
    pub(super) fn register(r: &Registrar<'_>) -> Self {
        Self {
            applied: r.counter(
                "floodgate_config_reloads_total",
                "Config reloads applied (SIGHUP or file change).",
            ),
            refused: r.counter(
                "floodgate_config_reload_failures_total",
                "Config reloads refused (invalid file); the running config kept serving.",
            ),
            admin_changes: r.counters(
                "floodgate_admin_changes_total",
                "Accounts changed through the admin listener's accounts API, by action (set, \
                 clear, block, unblock, reset, grant).",
                &["action"],
            ),
        }
    }

    /// Counts a config reload, applied or refused.
    pub fn reloaded(&self, ok: bool) {
        match ok {
            true => self.applied.inc(),
            false => self.refused.inc(),
        }
    }

    /// Counts a change made through the accounts API.
    pub fn admin_changed(&self, action: &str) {
        self.admin_changes.with_label_values(&[action]).inc();
    }
}
