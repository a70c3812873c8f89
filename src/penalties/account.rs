//! The daily tallies and what they decide: `(policy, counters, now) -> verdict`.
//!
//! [`admit`] is what the store runs under an account's lock for a job submission: the penalty
//! check first, then the rate limits ([`decide`]), then — only when both admit — the relax job
//! is counted. So a refused job changes no counter, and concurrent relax jobs cannot overshoot
//! a `reject` allowance. [`record`] counts what floodgate learns later from the upstream's
//! answer: an incorrect task, or a relax job earned by a successful fast one.

use super::{
    IncorrectAction, Mode, PenaltyIds, RelaxAction, RelaxPolicy, ShadowEffect, Shadowed,
    TierPenalties,
};
use crate::limits::{
    decide_units, usage_of, Counters, Decision, LimitKind, Receipt, Refusal, Rule, Usage, Window,
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
    /// What the job costs in every window of its rules (its class's `cost`).
    pub units: u32,
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
    /// What the penalties in shadow mode would have done instead of letting it through as it is.
    pub shadow: Shadowed,
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
pub enum PenaltyCheck {
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

/// Checks a job's penalties against today's tallies; changes nothing. A penalty in shadow
/// mode never refuses or marks: what it would have done is noted in [`Marks::shadow`].
pub fn check(job: &JobCheck, counters: &Counters, now_ms: u64) -> PenaltyCheck {
    let (policy, ids) = (&job.policy, &job.ids);
    let mut marks = Marks::default();
    if let Some(p) = &policy.incorrect {
        let count = counters.used(ids.incorrect, now_ms);
        if count >= p.per_day {
            let refusal = || refusal(LimitKind::Penalty, count, p.per_day, now_ms);
            match (p.action, p.shadow) {
                (IncorrectAction::Block, false) => return PenaltyCheck::Refuse(refusal()),
                (IncorrectAction::Flag, false) => marks.no_refund = true,
                (IncorrectAction::Block, true) => {
                    marks.shadow.incorrect = Some(ShadowEffect::Refused)
                }
                (IncorrectAction::Flag, true) => {
                    marks.shadow.incorrect = Some(ShadowEffect::Flagged)
                }
            }
        }
    }
    if job.facts.is_relax() {
        marks.relax = true;
        if let Some(r) = &policy.relax {
            if let Err(refused) = check_relax(r, ids, counters, now_ms, &mut marks) {
                return PenaltyCheck::Refuse(refused);
            }
        }
    }
    PenaltyCheck::Pass(marks)
}

/// A relax job against today's relax allowance: refused, surcharged, or — in shadow mode —
/// noted as what would have happened.
fn check_relax(
    r: &RelaxPolicy,
    ids: &PenaltyIds,
    counters: &Counters,
    now_ms: u64,
    marks: &mut Marks,
) -> Result<(), PenaltyRefusal> {
    let used = counters.used(ids.relax_used, now_ms);
    let allowance = relax_allowance(r.per_day, ids, counters, now_ms);
    if used < allowance {
        return Ok(());
    }
    match (r.action, r.shadow) {
        (RelaxAction::Reject, false) => {
            return Err(refusal(LimitKind::Relax, used, allowance, now_ms))
        }
        (RelaxAction::Surcharge { multiplier }, false) => marks.cost_multiplier = Some(multiplier),
        (RelaxAction::Reject, true) => marks.shadow.relax = Some(ShadowEffect::Refused),
        (RelaxAction::Surcharge { .. }, true) => {
            marks.shadow.relax = Some(ShadowEffect::Surcharged)
        }
    }
    Ok(())
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
        PenaltyCheck::Refuse(r) => Admission::Penalised(usage_of(rules, counters, now_ms), r),
        PenaltyCheck::Pass(marks) => match decide_units(rules, job.units, counters, now_ms) {
            Decision::Refused(usage, refusal) => Admission::Limited(usage, refusal),
            Decision::Admitted(usage) => {
                commit(&marks, &job.ids, counters, now_ms);
                let relax = marks.relax.then_some(job.ids.relax_used);
                let taken = rules.iter().map(|r| (r.counter, job.units));
                let taken = taken.chain(relax.map(|id| (id, 1)));
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
pub struct PenaltyStanding {
    pub incorrect: u32,
    pub relax_used: u32,
    pub relax_earned: u32,
    /// The tier's incorrect-task allowance, if it has one.
    pub incorrect_allowance: Option<u32>,
    /// Today's relax allowance (the tier's plus what was earned), if the tier has one.
    pub relax_allowance: Option<u32>,
    /// The actions that apply to the next job submission: `block`, `flag`, `surcharge` (next
    /// relax job), `reject` (next relax job). A penalty in shadow mode applies none.
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
) -> PenaltyStanding {
    let incorrect = counters.used(ids.incorrect, now_ms);
    let relax_used = counters.used(ids.relax_used, now_ms);
    let mut actions = Vec::new();
    if let Some(p) = policy
        .incorrect
        .filter(|p| incorrect >= p.per_day && !p.shadow)
    {
        actions.push(p.action.name());
    }
    let relax_allowance = policy
        .relax
        .map(|r| (r, relax_allowance(r.per_day, ids, counters, now_ms)));
    let applies = |(r, allowance): &(RelaxPolicy, u32)| relax_used >= *allowance && !r.shadow;
    if let Some((r, _)) = relax_allowance.filter(applies) {
        actions.push(r.action.name());
    }
    PenaltyStanding {
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
mod tests {
    use super::*;
    use crate::clock::DAY_MS;
    use crate::limits::CounterId;
    use crate::penalties::{IncorrectPolicy, RelaxPolicy};

    /// 2026-11-23T00:00:00Z.
    const DAY0: u64 = 1_795_392_000_000;
    /// 10:00:00.250 UTC on DAY0: 13 h 59 min 59.75 s to midnight.
    const T: u64 = DAY0 + 10 * 3_600_000 + 250;
    const TO_MIDNIGHT: u64 = 14 * 3600;

    fn free() -> TierPenalties {
        TierPenalties {
            incorrect: Some(IncorrectPolicy {
                per_day: 30,
                action: IncorrectAction::Block,
                shadow: false,
            }),
            relax: Some(RelaxPolicy {
                per_day: 100,
                action: RelaxAction::Surcharge { multiplier: 2 },
                shadow: false,
            }),
        }
    }

    fn paid() -> TierPenalties {
        TierPenalties {
            incorrect: Some(IncorrectPolicy {
                per_day: 60,
                action: IncorrectAction::Flag,
                shadow: false,
            }),
            relax: Some(RelaxPolicy {
                per_day: 500,
                action: RelaxAction::Reject,
                shadow: false,
            }),
        }
    }

    /// An admission's usage and marks; panics on a refusal.
    fn admitted(a: Admission) -> (Usage, Marks) {
        match a {
            Admission::Admitted(usage, marks, _) => (usage, marks),
            other => panic!("expected an admission, got {other:?}"),
        }
    }

    fn job(policy: TierPenalties, mode: Mode) -> JobCheck {
        JobCheck {
            policy,
            ids: PenaltyIds::default(),
            facts: JobFacts {
                mode,
                relax_counted: true,
            },
            units: 1,
        }
    }

    fn times(n: u32, event: Event, counters: &mut Counters, now: u64) {
        for _ in 0..n {
            record(event, &PenaltyIds::default(), counters, now);
        }
    }

    #[test]
    fn thirty_incorrect_tasks_block_the_free_tier_until_midnight_exactly() {
        let mut c = Counters::default();
        let fast = job(free(), Mode::Fast);
        times(29, Event::Incorrect, &mut c, T);
        assert_eq!(check(&fast, &c, T), PenaltyCheck::Pass(Marks::default()));
        times(1, Event::Incorrect, &mut c, T);
        assert_eq!(
            check(&fast, &c, T),
            PenaltyCheck::Refuse(PenaltyRefusal {
                kind: LimitKind::Penalty,
                retry_after_secs: TO_MIDNIGHT,
                count: 30,
                allowance: 30,
            })
        );
        let last_ms = DAY0 + DAY_MS - 1;
        match check(&fast, &c, last_ms) {
            PenaltyCheck::Refuse(r) => assert_eq!(r.retry_after_secs, 1, "rounded up, never 0"),
            v => panic!("{v:?}"),
        }
        assert_eq!(
            check(&fast, &c, DAY0 + DAY_MS),
            PenaltyCheck::Pass(Marks::default()),
            "a new UTC day starts over"
        );
    }

    #[test]
    fn flag_tiers_pass_marked_no_refund_past_sixty() {
        let mut c = Counters::default();
        let fast = job(paid(), Mode::Fast);
        times(59, Event::Incorrect, &mut c, T);
        assert_eq!(check(&fast, &c, T), PenaltyCheck::Pass(Marks::default()));
        times(1, Event::Incorrect, &mut c, T);
        let flagged = Marks {
            no_refund: true,
            ..Marks::default()
        };
        assert_eq!(check(&fast, &c, T), PenaltyCheck::Pass(flagged));
        times(40, Event::Incorrect, &mut c, T);
        assert_eq!(
            check(&fast, &c, T),
            PenaltyCheck::Pass(flagged),
            "still passes"
        );
    }

    #[test]
    fn relax_jobs_past_the_allowance_are_surcharged_and_still_counted() {
        let mut c = Counters::default();
        let relax = job(free(), Mode::Relax);
        for i in 0..100 {
            let a = admit(&[], &relax, &mut c, T);
            let plain = Marks {
                relax: true,
                ..Marks::default()
            };
            assert_eq!(admitted(a), (Usage::default(), plain), "job {i}");
        }
        let a = admit(&[], &relax, &mut c, T);
        let surcharged = Marks {
            relax: true,
            cost_multiplier: Some(2),
            ..Marks::default()
        };
        assert_eq!(admitted(a), (Usage::default(), surcharged));
        assert_eq!(c.used(PenaltyIds::default().relax_used, T), 101);
    }

    #[test]
    fn each_earned_relax_job_admits_exactly_one_more() {
        let mut c = Counters::default();
        let relax = job(paid(), Mode::Relax);
        for _ in 0..500 {
            assert!(matches!(
                admit(&[], &relax, &mut c, T),
                Admission::Admitted(..)
            ));
        }
        let refused = admit(&[], &relax, &mut c, T);
        assert_eq!(
            refused,
            Admission::Penalised(
                Usage::default(),
                PenaltyRefusal {
                    kind: LimitKind::Relax,
                    retry_after_secs: TO_MIDNIGHT,
                    count: 500,
                    allowance: 500,
                }
            )
        );
        times(2, Event::RelaxEarned, &mut c, T);
        assert!(matches!(
            admit(&[], &relax, &mut c, T),
            Admission::Admitted(..)
        ));
        assert!(matches!(
            admit(&[], &relax, &mut c, T),
            Admission::Admitted(..)
        ));
        assert!(matches!(
            admit(&[], &relax, &mut c, T),
            Admission::Penalised(..)
        ));
        assert_eq!(c.used(PenaltyIds::default().relax_used, T), 502);
    }

    #[test]
    fn fast_jobs_and_uncounted_classes_use_no_relax() {
        let mut c = Counters::default();
        assert_eq!(
            admitted(admit(&[], &job(free(), Mode::Fast), &mut c, T)),
            (Usage::default(), Marks::default())
        );
        let mut other_class = job(free(), Mode::Relax);
        other_class.facts.relax_counted = false;
        assert_eq!(
            admitted(admit(&[], &other_class, &mut c, T)),
            (Usage::default(), Marks::default())
        );
        assert_eq!(c, Counters::default(), "nothing counted");
    }

    #[test]
    fn a_refused_job_changes_no_counter() {
        let minute = Rule {
            counter: CounterId(7),
            limit: 1,
            window: Window::Fixed { period_ms: 60_000 },
            kind: LimitKind::Minute,
        };
        let relax = job(free(), Mode::Relax);
        let mut c = Counters::default();
        assert!(matches!(
            admit(&[minute], &relax, &mut c, T),
            Admission::Admitted(..)
        ));
        let before = c.clone();
        match admit(&[minute], &relax, &mut c, T + 1) {
            Admission::Limited(_, r) => assert_eq!(r.kind, LimitKind::Minute),
            a => panic!("{a:?}"),
        }
        assert_eq!(c, before, "the rate limit refused: relax not counted");

        times(30, Event::Incorrect, &mut c, T);
        let before = c.clone();
        match admit(&[minute], &relax, &mut c, T + 60_000) {
            Admission::Penalised(usage, r) => {
                assert_eq!(r.kind, LimitKind::Penalty);
                assert_eq!(
                    usage.primary.map(|p| p.remaining),
                    Some(1),
                    "usage still reported"
                );
            }
            a => panic!("{a:?}"),
        }
        assert_eq!(c, before, "the penalty refused: the minute is not consumed");
    }

    #[test]
    fn every_tally_starts_over_at_midnight() {
        let ids = PenaltyIds::default();
        let mut c = Counters::default();
        admit(&[], &job(free(), Mode::Relax), &mut c, T);
        times(30, Event::Incorrect, &mut c, T);
        times(5, Event::RelaxEarned, &mut c, T);
        let midnight = DAY0 + DAY_MS;
        for (id, today) in [
            (ids.incorrect, 30),
            (ids.relax_used, 1),
            (ids.relax_earned, 5),
        ] {
            assert_eq!(c.used(id, midnight - 1), today);
            assert_eq!(c.used(id, midnight), 0);
        }
        assert!(c.all_expired(midnight), "the account can be forgotten");
        assert_eq!(record(Event::Incorrect, &ids, &mut c, midnight), 1);
    }

    #[test]
    fn tiers_without_a_policy_count_but_never_act() {
        let mut c = Counters::default();
        let none = job(TierPenalties::default(), Mode::Relax);
        times(1_000, Event::Incorrect, &mut c, T);
        for _ in 0..1_000 {
            assert!(matches!(
                admit(&[], &none, &mut c, T),
                Admission::Admitted(
                    _,
                    Marks {
                        relax: true,
                        no_refund: false,
                        cost_multiplier: None,
                        ..
                    },
                    _
                )
            ));
        }
        let s = standing(&TierPenalties::default(), &PenaltyIds::default(), &c, T);
        assert_eq!((s.incorrect, s.relax_used), (1_000, 1_000));
        assert!(s.actions.is_empty());
    }

    #[test]
    fn standing_shows_tallies_allowances_and_the_actions_in_effect() {
        let ids = PenaltyIds::default();
        let mut c = Counters::default();
        times(30, Event::Incorrect, &mut c, T);
        times(3, Event::RelaxEarned, &mut c, T);
        let s = standing(&free(), &ids, &c, T);
        assert_eq!(
            s,
            PenaltyStanding {
                incorrect: 30,
                relax_used: 0,
                relax_earned: 3,
                incorrect_allowance: Some(30),
                relax_allowance: Some(103),
                actions: vec!["block"],
                resets_in_secs: TO_MIDNIGHT,
            }
        );
        for _ in 0..103 {
            c.add(ids.relax_used, Window::UtcDay, T);
        }
        assert_eq!(
            standing(&free(), &ids, &c, T).actions,
            vec!["block", "surcharge"]
        );
        assert_eq!(standing(&paid(), &ids, &c, T).actions, Vec::<&str>::new());
    }

    /// `policy` with both penalties in shadow mode.
    fn in_shadow(mut policy: TierPenalties) -> TierPenalties {
        policy.incorrect.as_mut().unwrap().shadow = true;
        policy.relax.as_mut().unwrap().shadow = true;
        policy
    }

    #[test]
    fn shadow_penalties_let_the_job_through_as_it_is_and_note_what_they_would_do() {
        let ids = PenaltyIds::default();
        let mut c = Counters::default();
        times(60, Event::Incorrect, &mut c, T);
        for _ in 0..500 {
            c.add(ids.relax_used, Window::UtcDay, T);
        }
        let (shadow_free, shadow_paid) = (in_shadow(free()), in_shadow(paid()));
        let (_, marks) = admitted(admit(&[], &job(shadow_free, Mode::Relax), &mut c, T));
        let would = |incorrect, relax| Shadowed {
            incorrect: Some(incorrect),
            relax: Some(relax),
        };
        let expected = Marks {
            relax: true,
            shadow: would(ShadowEffect::Refused, ShadowEffect::Surcharged),
            ..Marks::default()
        };
        assert_eq!(marks, expected, "no refusal, no surcharge: only noted");
        let (_, marks) = admitted(admit(&[], &job(shadow_paid, Mode::Relax), &mut c, T));
        assert_eq!(
            marks.shadow,
            would(ShadowEffect::Flagged, ShadowEffect::Refused)
        );
        assert!(!marks.no_refund);
        assert_eq!(
            c.used(ids.relax_used, T),
            502,
            "the tallies still learn, so turning shadow off enforces from the true state"
        );
        assert!(standing(&shadow_free, &ids, &c, T).actions.is_empty());
        assert_eq!(
            standing(&free(), &ids, &c, T).actions,
            vec!["block", "surcharge"]
        );
        let (_, fast) = admitted(admit(&[], &job(shadow_free, Mode::Fast), &mut c, T));
        assert_eq!(
            fast.shadow.relax, None,
            "a fast job uses no relax allowance"
        );
    }

    #[test]
    fn reserved_ids_are_stable_and_distinct() {
        let ids = PenaltyIds::default();
        assert_eq!(ids, PenaltyIds::default());
        assert_ne!(ids.incorrect, ids.relax_used);
        assert_ne!(ids.relax_used, ids.relax_earned);
        assert_ne!(ids.incorrect, ids.relax_earned);
    }

    #[test]
    fn a_turned_away_job_gives_back_its_limits_and_its_relax_count() {
        let minute = Rule {
            counter: CounterId(7),
            limit: 5,
            window: crate::limits::Window::Fixed { period_ms: 60_000 },
            kind: LimitKind::Minute,
        };
        let mut c = Counters::default();
        let relax = job(free(), Mode::Relax);
        let Admission::Admitted(_, _, kept) = admit(&[minute], &relax, &mut c, T) else {
            panic!("the first job is admitted")
        };
        let Admission::Admitted(_, marks, receipt) = admit(&[minute], &relax, &mut c, T + 1) else {
            panic!("the second job is admitted")
        };
        assert!(marks.relax);
        assert_eq!(
            c.give_back(&receipt, T + 2),
            2,
            "the minute and the relax count"
        );
        assert_eq!(c.used(CounterId(7), T + 2), 1);
        assert_eq!(c.used(PenaltyIds::default().relax_used, T + 2), 1);
        assert!(!kept.is_empty());
    }
}
