//! The memory store's state: accounts tracked, state file saves, the journal's flushes.

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use super::register::Registrar;

pub struct StateMetrics {
    pub tracked_accounts: IntGauge,
    saves: IntCounterVec,
    journal_records: IntCounter,
    journal_flushes: IntCounterVec,
    journal_flush_seconds: Histogram,
}

impl StateMetrics {
    pub(super) fn register(r: &Registrar<'_>) -> Self {
        Self {
            tracked_accounts: r.gauge(
                "floodgate_tracked_accounts",
                "Accounts with an open limit window.",
            ),
            saves: r.counters(
                "floodgate_state_saves_total",
                "Writes of the state file, by result (ok, error).",
                &["result"],
            ),
            journal_records: r.counter(
                "floodgate_state_journal_records_total",
                "Account records appended to the state journal (one per changed account per flush).",
            ),
            journal_flushes: r.counters(
                "floodgate_state_journal_flushes_total",
                "Journal flushes that wrote records (one write and one fsync), by result (ok, error).",
                &["result"],
            ),
            journal_flush_seconds: r.histogram(
                "floodgate_state_journal_flush_seconds",
                "Time to write and fsync one journal flush.",
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ],
            ),
        }
    }

    pub fn saved(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.saves.with_label_values(&[result]).inc();
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
}
