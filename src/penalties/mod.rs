//! Penalties: incorrect-task and relax-mode accounting, per account per UTC day.       [pure]
//!
//! The seeds (goapi-midjourney-penalties.txt, piapi-midjourney-penalties.txt,
//! goapi-penalties-legacy.txt) describe two daily allowances of a shared upstream pool:
//!
//! - **Incorrect tasks** — answers the operator's [`Judge`] calls incorrect (banned prompt, image
//!   filter, invalid parameter, invalid link…). Past the tier's allowance its action applies to
//!   further job submissions: `block` (429 `penalty` until 00:00 UTC) or `flag` (forwarded, marked
//!   "no refund" for billing).
//! - **Relax jobs** — jobs whose body asks for relax mode. A tier allows so many a day, plus one
//!   per successful fast or turbo job of an earning class that day. Past that: `surcharge`
//!   (forwarded, marked with a cost multiplier) or `reject` (429 `relax` until 00:00 UTC).
//!
//! Either penalty may run in shadow mode (`shadow = true` on its section): its tally counts as
//! usual, and what its action would have done is noted on the job ([`Shadowed`]) instead of done,
//! so an operator sees what turning it on would change before it changes anything.
//!
//! The tallies are ordinary daily counters in the account's [`Counters`](crate::limits::Counters)
//! under reserved ids ([`PenaltyIds`]), so they live in the store next to the limit counters,
//! change only under the account's lock, and survive restarts in the state file with them.
//! Everything here is pure: policy, counters and "now" in; a verdict out.

mod account;
mod judge;
mod mode;
mod shadow;

pub use account::{
    admit, check, commit, record, standing, Admission, Event, JobCheck, JobFacts, Marks,
    PenaltyCheck, PenaltyRefusal, PenaltyStanding,
};
pub use judge::{Judge, Matcher, On};
pub use mode::Mode;
pub use shadow::{ShadowEffect, Shadowed};

use crate::classify::ClassId;
use crate::identity::TierId;
use crate::limits::CounterId;

/// What happens to job submissions once the incorrect-task allowance is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncorrectAction {
    /// Refused with 429 `penalty` until 00:00 UTC ("no more PPU tasks for the day").
    Block,
    /// Forwarded, marked "no refund" ("frozen credits … will not be refunded").
    Flag,
}

impl IncorrectAction {
    pub fn name(self) -> &'static str {
        match self {
            IncorrectAction::Block => "block",
            IncorrectAction::Flag => "flag",
        }
    }
}

/// A tier's incorrect-task allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncorrectPolicy {
    /// Incorrect tasks a day before `action` applies.
    pub per_day: u32,
    pub action: IncorrectAction,
    /// Shadow mode: past the allowance the action is only noted ([`Shadowed`]), never applied.
    pub shadow: bool,
}

/// What happens to relax jobs past the relax allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelaxAction {
    /// Forwarded, marked with a cost multiplier ("the cost of the relax job will double").
    Surcharge { multiplier: u32 },
    /// Refused with 429 `relax` until 00:00 UTC.
    Reject,
}

impl RelaxAction {
    pub fn name(self) -> &'static str {
        match self {
            RelaxAction::Surcharge { .. } => "surcharge",
            RelaxAction::Reject => "reject",
        }
    }
}

/// A tier's relax allowance (before what successful fast jobs earn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaxPolicy {
    pub per_day: u32,
    pub action: RelaxAction,
    /// Shadow mode: past the allowance the action is only noted ([`Shadowed`]), never applied.
    pub shadow: bool,
}

/// A tier's penalty settings; `None` = the tier has no such allowance (tallies still count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierPenalties {
    pub incorrect: Option<IncorrectPolicy>,
    pub relax: Option<RelaxPolicy>,
}

impl TierPenalties {
    pub fn is_empty(&self) -> bool {
        self.incorrect.is_none() && self.relax.is_none()
    }
}

/// The reserved counters of the daily tallies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PenaltyIds {
    pub incorrect: CounterId,
    pub relax_used: CounterId,
    pub relax_earned: CounterId,
}

impl Default for PenaltyIds {
    fn default() -> Self {
        Self {
            incorrect: reserved_id(INCORRECT),
            relax_used: reserved_id(RELAX_USED),
            relax_earned: reserved_id(RELAX_EARNED),
        }
    }
}

/// Stable names of the tallies; their ids are hashes of these, so counters saved by one
/// version of the config (or binary) are found again by the next.
pub const INCORRECT: &str = "incorrect_tasks";
pub const RELAX_USED: &str = "relax_used";
pub const RELAX_EARNED: &str = "relax_earned";

/// The counter id of a tally: a hash of a name no limit scope can spell (limit scopes start with
/// `class:` or `shared:`), in the same id space as limit counters. The config checks the
/// (astronomically unlikely) collision with a limit's id.
pub fn reserved_id(name: &str) -> CounterId {
    let text = format!("penalty:{name}|daily|0");
    CounterId(xxhash_rust::xxh3::xxh3_64(text.as_bytes()) as u32)
}

/// How the job mode is read from a request body, and which classes count and earn.
#[derive(Debug, Clone)]
pub struct RelaxSettings {
    /// JSON pointer to the mode in a job's request body, e.g. `/process_mode`.
    pub mode_pointer: String,
    /// The mode of a job whose body names none (or is not JSON).
    pub default_mode: Mode,
    /// The mode of a job whose body was too long to read whole (`relax` unless configured).
    pub unreadable_mode: Mode,
    /// Indexed by [`ClassId`]: relax jobs of this class count against the allowance.
    pub counted: Vec<bool>,
    /// Indexed by [`ClassId`]: a successful fast or turbo job of this class earns one relax job.
    pub earning: Vec<bool>,
}

/// Everything about penalties from the config.
#[derive(Debug, Clone, Default)]
pub struct PenaltiesConfig {
    pub ids: PenaltyIds,
    /// What an incorrect task is; empty = nothing is judged.
    pub judge: Judge,
    /// Indexed by [`ClassId`]: responses of this (job) class are judged.
    pub judged: Vec<bool>,
    pub relax: Option<RelaxSettings>,
    /// Indexed by [`TierId`].
    pub tiers: Vec<TierPenalties>,
}

impl PenaltiesConfig {
    pub fn tier(&self, tier: TierId) -> TierPenalties {
        self.tiers.get(tier.0 as usize).copied().unwrap_or_default()
    }

    /// Whether responses of `class` are judged for incorrect tasks.
    pub fn judges(&self, class: ClassId) -> bool {
        !self.judge.is_empty() && flag(&self.judged, class)
    }

    /// The facts a job's request body gives: its mode and whether its relax use counts.
    /// `body` is the prefix read from the request; `complete` when it is the whole body.
    pub fn facts(&self, class: ClassId, body: &[u8], complete: bool) -> JobFacts {
        match &self.relax {
            Some(r) => JobFacts {
                // A body longer than the inspect limit cannot be read whole before the job is
                // admitted: its mode could be anywhere (or named twice, the last one winning
                // upstream), so it gets the costlier treatment unless the operator says
                // otherwise — padding a body never makes a job cheaper.
                mode: if complete {
                    Mode::of(body, true, &r.mode_pointer).unwrap_or(r.default_mode)
                } else {
                    r.unreadable_mode
                },
                relax_counted: flag(&r.counted, class),
            },
            None => JobFacts::default(),
        }
    }

    /// Whether a successful job of `class` in `mode` earns a relax job.
    pub fn earns(&self, class: ClassId, mode: Mode) -> bool {
        mode.earns() && self.relax.as_ref().is_some_and(|r| flag(&r.earning, class))
    }
}

fn flag(by_class: &[bool], class: ClassId) -> bool {
    by_class.get(class.0 as usize).copied().unwrap_or(false)
}
