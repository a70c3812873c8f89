//! The penalty accounts: incorrect tasks, relax jobs earned, billing marks, and what penalties in
//! shadow mode would have done.

use prometheus::IntCounterVec;

use super::register::Registrar;

pub struct PenaltyMetrics {
    incorrect_tasks: IntCounterVec,
    relax_earned: IntCounterVec,
    billing_marks: IntCounterVec,
    would_penalise: IntCounterVec,
}

impl PenaltyMetrics {
    pub(super) fn register(r: &Registrar<'_>) -> Self {
        Self {
            incorrect_tasks: r.counters(
                "floodgate_incorrect_tasks_total",
                "Answers judged incorrect tasks (banned prompt, invalid parameter...), counted \
                 against the account's daily allowance.",
                &["class", "tier"],
            ),
            relax_earned: r.counters(
                "floodgate_relax_earned_total",
                "Relax jobs earned by successful fast or turbo jobs.",
                &["tier"],
            ),
            billing_marks: r.counters(
                "floodgate_billing_marks_total",
                "Jobs forwarded with a billing mark: no_refund (past the incorrect-task allowance \
                 on a flag tier) or surcharge (a relax job past the relax allowance).",
                &["tier", "mark"],
            ),
            would_penalise: r.counters(
                "floodgate_would_penalise_total",
                "Jobs a penalty in shadow mode let through as they were, by what its action \
                 would have done: refused, flagged (no refund) or surcharged.",
                &["tier", "penalty", "effect"],
            ),
        }
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

    /// Counts a job a penalty in shadow mode would have refused or marked (`penalty`:
    /// `incorrect_tasks` or `relax`; `effect`: `refused`, `flagged` or `surcharged`).
    pub fn would_penalise(&self, tier: &str, penalty: &str, effect: &str) {
        self.would_penalise
            .with_label_values(&[tier, penalty, effect])
            .inc();
    }
}
