//! Config reloads, applied and refused.

use prometheus::IntCounter;

use super::register::Registrar;

pub struct ReloadMetrics {
    applied: IntCounter,
    refused: IntCounter,
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
        }
    }

    /// Counts a config reload, applied or refused.
    pub fn reloaded(&self, ok: bool) {
        match ok {
            true => self.applied.inc(),
            false => self.refused.inc(),
        }
    }
}
