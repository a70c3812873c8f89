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
    /// The IETF policy name of each enforced rule, indexed like `rules_by_class` and each list
    /// beside its rules, written as the sf-string the `RateLimit` fields carry (`"txt2img.minute"`).
    policy_names: Vec<Box<[Box<str>]>>,
}

impl Tier {
    /// A tier whose policies are named by their window alone (`"minute"`), until
    /// [`Tier::with_policy_names`] names them better.
    pub fn new(name: String, rules_by_class: Vec<Box<[Rule]>>) -> Self {
        let policy_names = rules_by_class
            .iter()
            .map(|rules| unique_names(rules.iter().map(|r| r.kind.name().to_owned())))
            .collect();
        Self {
            name,
            rules_by_class,
            shadow_by_class: Vec::new(),
            policy_names,
        }
    }

    /// The same tier with its rules' policies named `names` (per class, one per rule, in the
    /// rules' order; a repeated name gets `-2`, `-3`, ... after it).
    pub fn with_policy_names(mut self, names: Vec<Vec<String>>) -> Self {
        debug_assert!(names
            .iter()
            .zip(&self.rules_by_class)
            .all(|(n, r)| n.len() == r.len()));
        self.policy_names = names.into_iter().map(unique_names).collect();
        self
    }

    /// The IETF policy names of [`Tier::rules`]`(class)`, one per rule, as sf-strings.
    pub fn policy_names(&self, class: ClassId) -> &[Box<str>] {
        self.policy_names.get(class.0 as usize).map_or(&[], |n| n)
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
        let classes = self.rules_by_class.len().max(over.rules_by_class.len());
        let (rules_by_class, policy_names) = (0..classes)
            .map(|c| Self::lay(self.named(c), over.named(c)))
            .unzip();
        let shadow = |c: usize| {
            let top = over.shadow_rules(ClassId(c as u16));
            let base = self.shadow_rules(ClassId(c as u16)).iter();
            let kept = base.filter(|r| !top.iter().any(|t| t.kind == r.kind));
            kept.chain(top).copied().collect()
        };
        let classes = self.shadow_by_class.len().max(over.shadow_by_class.len());
        Tier {
            name: self.name.clone(),
            rules_by_class,
            shadow_by_class: (0..classes).map(shadow).collect(),
            policy_names,
        }
    }

    /// A class's enforced rules, each with its policy name.
    fn named(&self, class: usize) -> impl Iterator<Item = (&Rule, &Box<str>)> + Clone {
        let class = ClassId(class as u16);
        self.rules(class).iter().zip(self.policy_names(class))
    }

    /// `top`'s rules laid over `base`'s (one class), with their names: a rule of `base` stays
    /// unless `top` has one of its kind.
    fn lay<'t>(
        base: impl Iterator<Item = (&'t Rule, &'t Box<str>)>,
        top: impl Iterator<Item = (&'t Rule, &'t Box<str>)> + Clone,
    ) -> (Box<[Rule]>, Box<[Box<str>]>) {
        let covered = |r: &Rule| top.clone().any(|(t, _)| t.kind == r.kind);
        let kept: Vec<_> = base.filter(|(r, _)| !covered(r)).collect();
        let laid = kept.into_iter().chain(top.clone());
        let (rules, names): (Vec<Rule>, Vec<Box<str>>) = laid.map(|(r, n)| (*r, n.clone())).unzip();
        (rules.into(), names.into())
    }
}

/// `names` as sf-strings, each made unique within the list by `-2`, `-3`, ... after it.
fn unique_names(names: impl IntoIterator<Item = String>) -> Box<[Box<str>]> {
    let mut seen: Vec<String> = Vec::new();
    for name in names {
        let mut unique = name.clone();
        let mut n = 1;
        while seen.contains(&unique) {
            n += 1;
            unique = format!("{name}-{n}");
        }
        seen.push(unique);
    }
    seen.iter().map(|n| super::headers::sf_string(n)).collect()
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

    #[test]
    fn policy_names_stay_beside_their_rules_and_are_unique() {
        let names = |tier: &Tier, class: u16| -> Vec<String> {
            let names = tier.policy_names(ClassId(class)).iter();
            names.map(|n| n.to_string()).collect()
        };
        let base = Tier::new(
            "free".into(),
            vec![vec![
                rule(1, 5, LimitKind::Minute),
                rule(2, 50, LimitKind::Daily),
                rule(4, 9, LimitKind::Minute),
            ]
            .into()],
        );
        assert_eq!(
            names(&base, 0),
            ["\"minute\"", "\"daily\"", "\"minute-2\""],
            "by kind alone, until named"
        );
        let base = base.with_policy_names(vec![vec![
            "a.minute".into(),
            "a.daily".into(),
            "account.minute".into(),
        ]]);
        let over = Tier::new("o".into(), vec![vec![rule(7, 20, LimitKind::Daily)].into()])
            .with_policy_names(vec![vec!["a.daily".into()]]);
        let laid = base.overlaid(&over);
        assert_eq!(
            laid.rules(ClassId(0)),
            [
                rule(1, 5, LimitKind::Minute),
                rule(4, 9, LimitKind::Minute),
                rule(7, 20, LimitKind::Daily)
            ]
        );
        assert_eq!(
            names(&laid, 0),
            ["\"a.minute\"", "\"account.minute\"", "\"a.daily\""]
        );
        assert!(laid.policy_names(ClassId(3)).is_empty());
    }
}
