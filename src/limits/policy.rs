//! Which rules apply to a request: per tier, per endpoint class; and, while the shared counters
//! cannot be reached, what a replica decides on its own ([`OnFailure`]).

use crate::classify::ClassId;

use super::Rule;

/// One plan (tier) and the rules each endpoint class is checked against.
#[derive(Debug, Clone)]
pub struct Tier {
    pub name: String,
    /// Indexed by [`ClassId`]; empty for a class this tier does not limit.
    rules_by_class: Vec<Box<[Rule]>>,
    /// Shadow rules, indexed like `rules_by_class`: decided and counted, never enforced. Kept
    /// apart so a shadow rule can take no part in an enforced all-or-nothing decision.
    shadow_by_class: Vec<Box<[Rule]>>,
}

impl Tier {
    pub fn new(name: String, rules_by_class: Vec<Box<[Rule]>>) -> Self {
        Self {
            name,
            rules_by_class,
            shadow_by_class: Vec::new(),
        }
    }

    /// The same tier with shadow rules.
    pub fn with_shadow(mut self, shadow_by_class: Vec<Box<[Rule]>>) -> Self {
        self.shadow_by_class = shadow_by_class;
        self
    }

    /// The rules a request of `class` is checked against.
    pub fn rules(&self, class: ClassId) -> &[Rule] {
        self.rules_by_class.get(class.0 as usize).map_or(&[], |r| r)
    }

    /// The shadow rules a request of `class` is measured against.
    pub fn shadow_rules(&self, class: ClassId) -> &[Rule] {
        self.shadow_by_class
            .get(class.0 as usize)
            .map_or(&[], |r| r)
    }

    /// This tier with `over`'s rules laid on top: for each class, a rule of `over` replaces
    /// the rule counting in the same counter (same scope and window: the open window keeps its
    /// count under the new limit) or is added beside the others. An account's runtime limits.
    pub fn overlaid(&self, over: &Tier) -> Tier {
        let lay = |base: &[Box<[Rule]>], top: &[Box<[Rule]>]| -> Vec<Box<[Rule]>> {
            let classes = base.len().max(top.len());
            (0..classes)
                .map(|c| {
                    let mut rules: Vec<Rule> = base.get(c).map_or(Vec::new(), |r| r.to_vec());
                    for rule in top.get(c).map_or(&[][..], |r| r) {
                        match rules.iter_mut().find(|r| r.counter == rule.counter) {
                            Some(old) => *old = *rule,
                            None => rules.push(*rule),
                        }
                    }
                    rules.into_boxed_slice()
                })
                .collect()
        };
        Tier {
            name: self.name.clone(),
            rules_by_class: lay(&self.rules_by_class, &over.rules_by_class),
            shadow_by_class: lay(&self.shadow_by_class, &over.shadow_by_class),
        }
    }

    /// Every rule of every class, enforced and shadow, each counter once: what an account's
    /// reset goes through.
    pub fn all_rules(&self) -> Vec<Rule> {
        let mut out: Vec<Rule> = Vec::new();
        for rule in self
            .rules_by_class
            .iter()
            .chain(&self.shadow_by_class)
            .flat_map(|r| r.iter())
        {
            if !out.iter().any(|r| r.counter == rule.counter) {
                out.push(*rule);
            }
        }
        out
    }
}

/// What a replica decides while the shared store (Redis) cannot answer (`[store] on_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Admit the request (counting it locally, unenforced).
    FailOpen,
    /// Refuse with 503 and `Retry-After`.
    FailClosed,
    /// Enforce limits in memory, this replica taking its share of each quota.
    Local { replicas: u32 },
}

impl OnFailure {
    /// Its name in the config (`[store] on_failure`).
    pub fn name(self) -> &'static str {
        match self {
            OnFailure::FailOpen => "fail_open",
            OnFailure::FailClosed => "fail_closed",
            OnFailure::Local { .. } => "local",
        }
    }

    /// Under `local`, the rules this replica enforces alone: each limit divided by the
    /// replicas, rounded up, and at least 1 (under the other policies, `rules` as they are).
    pub fn local_share(self, rules: &[Rule]) -> Vec<Rule> {
        let OnFailure::Local { replicas } = self else {
            return rules.to_vec();
        };
        let share = |r: &Rule| Rule {
            limit: r.limit.div_ceil(replicas.max(1)).max(1),
            ..*r
        };
        rules.iter().map(share).collect()
    }
}
