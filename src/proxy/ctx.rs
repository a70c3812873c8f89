//! What every stage after classification knows of the request being served: the config it is
//! served under, who called, its class, what it costs, and the forwarding fields its peer gets.

use super::header_rewrite::Forwarded;
use crate::classify::ClassId;
use crate::config::Config;
use crate::identity::Caller;
use crate::limits::Tier;
use crate::shared::Policy;

/// The facts of one request, fixed once it is identified and classified.
pub struct Ctx<'a> {
    pub policy: &'a Policy,
    pub caller: Caller,
    /// The rules the caller is checked against, by class ([`Policy::tier_of`]).
    pub tier: &'a Tier,
    pub class: ClassId,
    /// Units the request takes from every window of its limits: its class's `cost`, or what
    /// its body says under `cost_from`.
    pub units: u32,
    /// What goes into `X-Forwarded-For` / `-Proto`.
    pub forwarded: &'a Forwarded,
}

impl Ctx<'_> {
    pub fn config(&self) -> &Config {
        &self.policy.config
    }

    /// The caller's tier's name (a metric label, a log field).
    pub fn tier_name(&self) -> &str {
        &self.tier.name
    }

    /// The request's class's name (a metric label, a log field).
    pub fn class_name(&self) -> &str {
        self.config().class_name(self.class)
    }
}
