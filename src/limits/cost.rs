//! A request's cost read from its body (`[classes.NAME] cost_from`): a whole number at a JSON
//! pointer — images in a batch, a video's seconds — capped at the class's `max_cost`, with the
//! class's `default_cost` for a body that gives none.  [pure]

/// How a class reads the cost of its requests from their bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyCost {
    /// JSON pointer to the field (`cost_from`).
    pub pointer: String,
    /// The most a request is charged (`max_cost`): a larger value is charged this.
    pub max: u32,
    /// What a request whose body gives no usable value is charged (`default_cost`, from 1 to
    /// `max`).
    pub default: u32,
}

impl BodyCost {
    /// Units a request is charged for `body`, its first bytes (`complete` when they are all of
    /// it): the field's value when it is a whole number of at least 1 (`4`, `4.0`), at most
    /// `max`; else `default` — a field missing, zero, negative, fractional or not a number (a
    /// string of digits included), a body that is not JSON; `max` for a body that names a key
    /// twice (which value an upstream takes varies). A body not read whole gets
    /// `default` too: the field may lie past what was read, or come again there (the last one
    /// winning upstream), and padding a body must not make it cheaper.
    pub fn units(&self, body: &[u8], complete: bool) -> u32 {
        if !complete {
            return self.default;
        }
        // A key named twice: the upstream may act on either value, so the most is charged.
        if crate::json::has_duplicate_keys(body) {
            return self.max;
        }
        let Some(n) = crate::json::number_at(body, &self.pointer) else {
            return self.default;
        };
        let whole = match (n.as_u64(), n.as_f64()) {
            (Some(n), _) => n,
            // A float cast saturates: a huge value is charged `max` like any value above it.
            (None, Some(f)) if f.fract() == 0.0 && f >= 1.0 => f as u64,
            _ => return self.default,
        };
        if whole == 0 {
            return self.default;
        }
        u32::try_from(whole).unwrap_or(u32::MAX).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::BodyCost;

    fn images() -> BodyCost {
        BodyCost {
            pointer: "/n".into(),
            max: 10,
            default: 4,
        }
    }

    #[test]
    fn a_whole_number_is_charged_as_it_is_up_to_the_cap() {
        let cost = images();
        for (body, units) in [
            (r#"{"n": 1}"#, 1),
            (r#"{"n": 3, "prompt": "a cat"}"#, 3),
            (r#"{"n": 10}"#, 10),
            (r#"{"n": 4.0}"#, 4),
            (r#"{"n": 1e1}"#, 10),
            (r#"{"n": 11}"#, 10),
            (r#"{"n": 4294967296}"#, 10),
            (r#"{"n": 1e300}"#, 10),
            (r#"{"n": 99999999999999999999999}"#, 10),
            // A key named twice is charged the most, whichever comes last.
            (r#"{"n": 2, "n": 7}"#, 10),
            (r#"{"n": 10, "n": 1}"#, 10),
        ] {
            assert_eq!(cost.units(body.as_bytes(), true), units, "{body}");
        }
        let nested = BodyCost {
            pointer: "/video/seconds".into(),
            ..images()
        };
        assert_eq!(nested.units(br#"{"video": {"seconds": 6}}"#, true), 6);
    }

    #[test]
    fn anything_else_is_charged_the_default_never_less() {
        let cost = images();
        for body in [
            r#"{"prompt": "a cat"}"#,
            r#"{"n": 0}"#,
            r#"{"n": -3}"#,
            r#"{"n": -0.0}"#,
            r#"{"n": 2.5}"#,
            r#"{"n": 0.5}"#,
            r#"{"n": "2"}"#,
            r#"{"n": null}"#,
            r#"{"n": true}"#,
            r#"{"n": [2]}"#,
            r#"{"n": {"count": 2}}"#,
            r#"[1, 2]"#,
            "n=2",
            r#"{"n": 2"#,
            "",
        ] {
            assert_eq!(cost.units(body.as_bytes(), true), 4, "{body}");
        }
    }

    #[test]
    fn a_body_not_read_whole_is_charged_the_default() {
        let cost = images();
        // The prefix holds a cheap value; the rest (unread) may hold another.
        assert_eq!(cost.units(br#"{"n": 1, "pad": "xxxx"#, false), 4);
        assert_eq!(cost.units(br#"{"n": 1}"#, false), 4);
        let at_the_cap = BodyCost {
            default: 10,
            ..images()
        };
        assert_eq!(at_the_cap.units(br#"{"n": 1}"#, false), 10);
    }
}
