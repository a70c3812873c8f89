//! The penalty accounts: incorrect tasks, relax jobs earned, billing marks.

use prometheus::IntCounterVec;

use super::register::Registrar;

pub struct PenaltyMetrics {
    incorrect_tasks: IntCounterVec,
    relax_earned: IntCounterVec,
    billing_marks: IntCounterVec,
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
}
