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

    /// This tier with `over`'s rules laid on top — an account's runtime limits: for each
    /// class, `over`'s rules of a kind (its minute limit, its daily quota, ...) replace the
    /// tier's rules of that kind, and its other kinds stay. A rule for the same class and
    /// window counts in the same counter as the tier's, so the open window keeps its count
    /// under the new limit; one of another scope (a per-class limit over a shared one) counts
    /// afresh.
    pub fn overlaid(&self, over: &Tier) -> Tier {
        let lay = |base: &[Box<[Rule]>], top: &[Box<[Rule]>]| -> Vec<Box<[Rule]>> {
            let classes = base.len().max(top.len());
            (0..classes)
                .map(|c| {
                    let top: &[Rule] = top.get(c).map_or(&[], |r| r);
                    let kept = base.get(c).map_or(&[][..], |r| r).iter();
                    kept.filter(|r| !top.iter().any(|t| t.kind == r.kind))
                        .chain(top)
                        .copied()
                        .collect()
                })
                .collect()
        };
        Tier {
            name: self.name.clone(),
            rules_by_class: lay(&self.rules_by_class, &over.rules_by_class),
            shadow_by_class: lay(&self.shadow_by_class, &over.shadow_by_class),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{CounterId, LimitKind, Window};

    fn rule(counter: u32, limit: u32, kind: LimitKind) -> Rule {
        let window = match kind {
            LimitKind::Daily => Window::UtcDay,
            _ => Window::Fixed { period_ms: 60_000 },
        };
        Rule {
            counter: CounterId(counter),
            limit,
            window,
            kind,
        }
    }

    #[test]
    fn an_override_replaces_the_tiers_windows_of_its_kinds_only() {
        let base = Tier::new(
            "free".into(),
            vec![
                vec![rule(1, 5, LimitKind::Minute), rule(2, 50, LimitKind::Daily)].into(),
                vec![rule(3, 9, LimitKind::Minute)].into(),
            ],
        );
        // A class's own minute (another counter than the tier's shared one) replaces it.
        let over = Tier::new(
            "o".into(),
            vec![vec![rule(7, 20, LimitKind::Minute)].into()],
        );
        let laid = base.overlaid(&over);
        assert_eq!(
            laid.rules(ClassId(0)),
            [
                rule(2, 50, LimitKind::Daily),
                rule(7, 20, LimitKind::Minute)
            ]
        );
        assert_eq!(laid.rules(ClassId(1)), [rule(3, 9, LimitKind::Minute)]);
        assert_eq!(laid.name, "free");
    }
}
