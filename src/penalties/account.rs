//! The daily tallies and what they decide: `(policy, counters, now) -> verdict`.
//!
//! [`admit`] is what the store runs under an account's lock for a job submission: the penalty
//! check first, then the rate limits ([`decide`]), then — only when both admit — the relax job
//! is counted. So a refused job changes no counter, and concurrent relax jobs cannot overshoot
//! a `reject` allowance. [`record`] counts what floodgate learns later from the upstream's
//! answer: an incorrect task, or a relax job earned by a successful fast one.

use super::{IncorrectAction, Mode, PenaltyIds, RelaxAction, TierPenalties};
use crate::limits::{
    decide, usage_of, Counters, Decision, LimitKind, Receipt, Refusal, Rule, Usage, Window,
};

/// What a job's request says, as far as penalties care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobFacts {
    pub mode: Mode,
    /// The job's class counts relax jobs (`[relax] classes`).
    pub relax_counted: bool,
}

impl JobFacts {
    /// A relax job that counts against the allowance.
    pub fn is_relax(&self) -> bool {
        self.relax_counted && self.mode == Mode::Relax
    }
}

/// Everything the penalty check needs besides the counters.
#[derive(Debug, Clone, Copy)]
pub struct JobCheck {
    pub policy: TierPenalties,
    pub ids: PenaltyIds,
    pub facts: JobFacts,
}

/// What an admitted job carries to the upstream and back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Marks {
    /// The incorrect-task allowance is used up and the tier flags: no refunds.
    pub no_refund: bool,
    /// The relax allowance is used up and the tier surcharges: the job costs this many times.
    pub cost_multiplier: Option<u32>,
    /// A relax job: counted as used when admitted.
    pub relax: bool,
}

/// A job refused by a penalty, until 00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PenaltyRefusal {
    /// [`LimitKind::Penalty`] or [`LimitKind::Relax`]: names `X-RateLimit-Type`.
    pub kind: LimitKind,
    /// Whole seconds, rounded up, to the next 00:00 UTC.
    pub retry_after_secs: u64,
    /// Today's tally (incorrect tasks, or relax jobs used) and the allowance it reached.
    pub count: u32,
    pub allowance: u32,
}

impl PenaltyRefusal {
    pub fn as_refusal(&self) -> Refusal {
        Refusal {
            kind: self.kind,
            retry_after_secs: self.retry_after_secs,
        }
    }
}

/// The penalty check alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass(Marks),
    Refuse(PenaltyRefusal),
}

/// A job submission's answer: penalties and rate limits together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Admitted, with the windows it was counted in (rate limits and the relax count), to give
    /// back if the job is turned away before it runs.
    Admitted(Usage, Marks, Receipt),
    /// A rate limit refused it.
    Limited(Usage, Refusal),
    /// A penalty refused it.
    Penalised(Usage, PenaltyRefusal),
}

/// Something the upstream's answer taught, counted for today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Incorrect,
    RelaxEarned,
}

/// Checks a job's penalties against today's tallies; changes nothing.
pub fn check(job: &JobCheck, counters: &Counters, now_ms: u64) -> Verdict {
    let (policy, ids) = (&job.policy, &job.ids);
    let mut marks = Marks::default();
    if let Some(p) = &policy.incorrect {
        let count = counters.used(ids.incorrect, now_ms);
        if count >= p.per_day {
            match p.action {
                IncorrectAction::Block => {
                    return Verdict::Refuse(refusal(LimitKind::Penalty, count, p.per_day, now_ms))
                }
                IncorrectAction::Flag => marks.no_refund = true,
            }
        }
    }
    if job.facts.is_relax() {
        marks.relax = true;
        if let Some(r) = &policy.relax {
            let used = counters.used(ids.relax_used, now_ms);
            let allowance = relax_allowance(r.per_day, ids, counters, now_ms);
            if used >= allowance {
                match r.action {
                    RelaxAction::Reject => {
                        return Verdict::Refuse(refusal(LimitKind::Relax, used, allowance, now_ms))
                    }
                    RelaxAction::Surcharge { multiplier } => {
                        marks.cost_multiplier = Some(multiplier)
                    }
                }
            }
        }
    }
    Verdict::Pass(marks)
}

/// Counts what an admitted job used (a relax job).
pub fn commit(marks: &Marks, ids: &PenaltyIds, counters: &mut Counters, now_ms: u64) {
    if marks.relax {
        counters.add(ids.relax_used, Window::UtcDay, now_ms);
    }
}

/// A job submission, all or nothing: penalties, then rate limits, then the relax count.
pub fn admit(rules: &[Rule], job: &JobCheck, counters: &mut Counters, now_ms: u64) -> Admission {
    match check(job, counters, now_ms) {
        Verdict::Refuse(r) => Admission::Penalised(usage_of(rules, counters, now_ms), r),
        Verdict::Pass(marks) => match decide(rules, counters, now_ms) {
            Decision::Refused(usage, refusal) => Admission::Limited(usage, refusal),
            Decision::Admitted(usage) => {
                commit(&marks, &job.ids, counters, now_ms);
                let relax = marks.relax.then_some(job.ids.relax_used);
                let taken = rules.iter().map(|r| r.counter).chain(relax);
                Admission::Admitted(usage, marks, counters.receipt(taken, now_ms))
            }
        },
    }
}

/// Counts one event in today's tally; returns the tally.
pub fn record(event: Event, ids: &PenaltyIds, counters: &mut Counters, now_ms: u64) -> u32 {
    let id = match event {
        Event::Incorrect => ids.incorrect,
        Event::RelaxEarned => ids.relax_earned,
    };
    counters.add(id, Window::UtcDay, now_ms)
}

/// An account's penalty standing today, for the usage view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub incorrect: u32,
    pub relax_used: u32,
    pub relax_earned: u32,
    /// The tier's incorrect-task allowance, if it has one.
    pub incorrect_allowance: Option<u32>,
    /// Today's relax allowance (the tier's plus what was earned), if the tier has one.
    pub relax_allowance: Option<u32>,
    /// The actions that apply to the next job submission: `block`, `flag`, `surcharge` (next
    /// relax job), `reject` (next relax job).
    pub actions: Vec<&'static str>,
    /// Whole seconds to 00:00 UTC, when every tally starts over.
    pub resets_in_secs: u64,
}

/// Today's tallies and what they mean for `policy`.
pub fn standing(
    policy: &TierPenalties,
    ids: &PenaltyIds,
    counters: &Counters,
    now_ms: u64,
) -> Standing {
    let incorrect = counters.used(ids.incorrect, now_ms);
    let relax_used = counters.used(ids.relax_used, now_ms);
    let mut actions = Vec::new();
    if let Some(p) = policy.incorrect.filter(|p| incorrect >= p.per_day) {
        actions.push(p.action.name());
    }
    let relax_allowance = policy
        .relax
        .map(|r| (r, relax_allowance(r.per_day, ids, counters, now_ms)));
    if let Some((r, _)) = relax_allowance.filter(|(_, allowance)| relax_used >= *allowance) {
        actions.push(r.action.name());
    }
    Standing {
        incorrect,
        relax_used,
        relax_earned: counters.used(ids.relax_earned, now_ms),
        incorrect_allowance: policy.incorrect.map(|p| p.per_day),
        relax_allowance: relax_allowance.map(|(_, a)| a),
        actions,
        resets_in_secs: secs_to_midnight(now_ms),
    }
}

/// The tier's relax jobs plus those earned today.
fn relax_allowance(per_day: u32, ids: &PenaltyIds, counters: &Counters, now_ms: u64) -> u32 {
    per_day.saturating_add(counters.used(ids.relax_earned, now_ms))
}

fn refusal(kind: LimitKind, count: u32, allowance: u32, now_ms: u64) -> PenaltyRefusal {
    PenaltyRefusal {
        kind,
        retry_after_secs: secs_to_midnight(now_ms),
        count,
        allowance,
    }
}

/// Whole seconds, rounded up, to the next 00:00 UTC (at least 1): the end of the daily tallies'
/// window.
fn secs_to_midnight(now_ms: u64) -> u64 {
    (Window::UtcDay.end_for(now_ms) - now_ms)
        .div_ceil(1000)
        .max(1)
}

#[cfg(test)]
mod tests;
