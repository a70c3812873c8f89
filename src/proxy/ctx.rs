//! What every stage after classification knows of the request being served: the config it is
//! served under, who called, its class, what it costs, and the forwarding fields its peer gets.

use super::header_rewrite::Forwarded;
use crate::classify::ClassId;
use crate::config::Config;
use crate::identity::Caller;
use std::sync::{Mutex, PoisonError};

use crate::limits::headers::Ietf;
use crate::limits::{Tier, WindowList};
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
    /// With the IETF fields on, every window admission checked the request against, left here
    /// by admission ([`Ctx::list`]) for the one writer of its usage fields ([`Ctx::ietf`]);
    /// `None` otherwise, so that no other request's decision carries a list. (A lock only
    /// because the stages share the context by reference across threads' futures: it is
    /// never contended, and taken only with the IETF fields on.)
    pub listed: Mutex<Option<WindowList>>,
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

    /// Whether the IETF fields are on (`[headers] ietf`): admission then lists every window.
    pub fn lists_windows(&self) -> bool {
        self.config().headers.ietf
    }

    /// Leaves the windows admission listed for the usage fields.
    pub fn list(&self, windows: WindowList) {
        *self.listed.lock().unwrap_or_else(PoisonError::into_inner) = Some(windows);
    }

    /// The windows admission listed, taken.
    pub fn take_listed(&self) -> Option<WindowList> {
        self.listed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// With the IETF fields on, what they say of this request: the windows admission listed
    /// (taken: the usage fields are written once) and their policy names.
    pub fn ietf(&self) -> Option<Ietf<'_>> {
        self.lists_windows().then(|| Ietf {
            names: self.tier.policy_names(self.class),
            windows: self.take_listed().unwrap_or_default(),
        })
    }
}
