//! Which rules apply to a request: per tier, per endpoint class.

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
}
