//! Per-class settings, `[classes.NAME]`: the upload limit (`max_body`, SPEC §7), upstream
//! pipelining (`pipeline`) and what a request costs (`cost`, or `cost_from` the body with
//! `max_cost` and `default_cost`).

use std::collections::BTreeMap;

use toml::Spanned;

use super::error::{ConfigError, Source};
use super::raw::RawClass;
use crate::classify::ClassId;
use crate::limits::{BodyCost, Tier};

/// Units a size may carry. Powers of 1024, like nginx's `client_max_body_size`: a limit written
/// "10MB" admits every file a client or an upstream would call 10 MB, whichever meaning they use.
const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kb", 1 << 10),
    ("kib", 1 << 10),
    ("m", 1 << 20),
    ("mb", 1 << 20),
    ("mib", 1 << 20),
    ("g", 1 << 30),
    ("gb", 1 << 30),
    ("gib", 1 << 30),
];

/// Each class's settings, indexed by class id.
#[derive(Debug, Clone, Default)]
pub struct ClassSettings {
    /// What every request of the class reads, side by side: one lookup per request.
    pub facts: Vec<ClassFacts>,
    /// How a class whose cost is in the request body reads it (`cost_from`).
    pub cost_from: Vec<Option<BodyCost>>,
}

/// One class's settings that a request reads on the plain path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassFacts {
    /// The upload limit; `None` = no limit.
    pub max_body: Option<u64>,
    /// Units a request takes from every window of its limits (1 unless `cost` says; a class
    /// with `cost_from`: its `default_cost`, what a body not read is charged).
    pub cost: u32,
    /// Whether body-less GET and HEAD requests go pipelined upstream.
    pub pipelined: bool,
    /// Whether a request is decided from its head alone: not a job class, no `cost_from`
    /// (filled in once the job classes are known).
    pub decided_by_head: bool,
}

impl ClassFacts {
    /// A class no `[classes.NAME]` section speaks of.
    pub const DEFAULT: ClassFacts = ClassFacts {
        max_body: None,
        cost: 1,
        pipelined: false,
        decided_by_head: true,
    };
}

/// The settings of every class.
pub(super) fn class_settings(
    src: &Source<'_>,
    raw: &BTreeMap<String, Spanned<RawClass>>,
    classes: &[String],
) -> Result<ClassSettings, ConfigError> {
    let mut out = ClassSettings {
        facts: vec![ClassFacts::DEFAULT; classes.len()],
        cost_from: vec![None; classes.len()],
    };
    for (name, entry) in raw {
        let Some(id) = classes.iter().position(|c| c == name) else {
            return Err(src.at(
                format!("classes.{name:?}"),
                entry.span(),
                format!(
                    "unknown class {name:?} (classes come from [[route]] entries and \
                     routing.default_class)"
                ),
            ));
        };
        out.facts[id].pipelined = entry.get_ref().pipeline;
        if let Some(cost) = &entry.get_ref().cost {
            if *cost.get_ref() == 0 {
                let field = format!("classes.{name:?}.cost");
                return Err(src.at(field, cost.span(), "must be at least 1"));
            }
            out.facts[id].cost = *cost.get_ref();
        }
        if let Some(body_cost) = body_cost(src, name, entry.get_ref())? {
            out.facts[id].cost = body_cost.default;
            out.cost_from[id] = Some(body_cost);
        }
        if let Some(size) = &entry.get_ref().max_body {
            out.facts[id].max_body = Some(
                parse_size(size.get_ref())
                    .map_err(|m| src.at(format!("classes.{name:?}.max_body"), size.span(), m))?,
            );
        }
    }
    Ok(out)
}

/// A class's `cost_from`, `max_cost` and `default_cost`, checked together: `None` when the
/// class's cost is not read from the body.
fn body_cost(
    src: &Source<'_>,
    name: &str,
    raw: &RawClass,
) -> Result<Option<BodyCost>, ConfigError> {
    let field = |key: &str| format!("classes.{name:?}.{key}");
    let Some(pointer) = &raw.cost_from else {
        // Bounds on a body's cost mean nothing without a body field to read it from.
        let stray = [
            ("max_cost", &raw.max_cost),
            ("default_cost", &raw.default_cost),
        ];
        if let Some((key, Some(value))) = stray.into_iter().find(|(_, v)| v.is_some()) {
            let message = "only with cost_from (the request body's field that gives the cost)";
            return Err(src.at(field(key), value.span(), message));
        }
        return Ok(None);
    };
    if raw.cost.is_some() {
        let message = "a class's cost is fixed (cost) or read from the body (cost_from), not both";
        return Err(src.at(field("cost_from"), pointer.span(), message));
    }
    if !pointer.get_ref().starts_with('/') {
        let message = "a JSON pointer starts with '/', e.g. \"/n\"";
        return Err(src.at(field("cost_from"), pointer.span(), message));
    }
    let Some(max) = &raw.max_cost else {
        let message = "missing: cost_from needs the most a request of the class is charged";
        return Err(src.at(field("max_cost"), pointer.span(), message));
    };
    if *max.get_ref() == 0 {
        return Err(src.at(field("max_cost"), max.span(), "must be at least 1"));
    }
    let default = match &raw.default_cost {
        None => *max.get_ref(),
        Some(d) if (1..=*max.get_ref()).contains(d.get_ref()) => *d.get_ref(),
        Some(d) => {
            let message = format!("must be from 1 to max_cost ({})", max.get_ref());
            return Err(src.at(field("default_cost"), d.span(), message));
        }
    };
    Ok(Some(BodyCost {
        pointer: pointer.get_ref().clone(),
        max: *max.get_ref(),
        default,
    }))
}

/// Refuses a class `cost` larger than a limit one of its tiers sets on it: no request of the
/// class could ever be admitted there. A cost read from the body is not checked: a request
/// that asks for more than a limit is refused (429) on its own, and smaller ones are admitted.
pub(super) fn check_costs(
    src: &Source<'_>,
    raw: &BTreeMap<String, Spanned<RawClass>>,
    classes: &[String],
    tiers: &[Tier],
) -> Result<(), ConfigError> {
    for (name, entry) in raw {
        let id = classes.iter().position(|c| c == name);
        let (Some(cost), Some(id)) = (&entry.get_ref().cost, id) else {
            continue;
        };
        for tier in tiers {
            let rules = tier.rules(ClassId(id as u16));
            if let Some(rule) = rules.iter().find(|r| r.limit < *cost.get_ref()) {
                let message = format!(
                    "{} is more than tier {}'s {} limit of {}: no request of the class could \
                     be admitted",
                    cost.get_ref(),
                    tier.name,
                    rule.kind.name(),
                    rule.limit
                );
                return Err(src.at(format!("classes.{name:?}.cost"), cost.span(), message));
            }
        }
    }
    Ok(())
}

/// `"10MB"`, `"512KB"`, `"1GiB"`, `"1048576"` -> bytes.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size like \"10MB\", \"512KB\" or \"1048576\"");
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let (_, scale) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(bad)?;
    number
        .checked_mul(*scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Bytes as the config would write them, for summaries and messages: "10MB", "1536KB", "700B".
pub fn format_size(bytes: u64) -> String {
    for (unit, scale) in [("GB", 1u64 << 30), ("MB", 1 << 20), ("KB", 1 << 10)] {
        if bytes >= scale && bytes % scale == 0 {
            return format!("{}{unit}", bytes / scale);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        for (text, bytes) in [
            ("10MB", 10 << 20),
            ("10 mb", 10 << 20),
            ("20MiB", 20 << 20),
            ("512KB", 512 << 10),
            ("1g", 1 << 30),
            ("1048576", 1 << 20),
            ("0", 0),
            ("7B", 7),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        for text in [
            "",
            "MB",
            "10XB",
            "-1MB",
            "1.5MB",
            "99999999999999999999",
            "10 M B",
        ] {
            assert!(parse_size(text).is_err(), "{text}");
        }
        assert_eq!(
            parse_size("18446744073709551615GB"),
            Err("\"18446744073709551615GB\" is too large".into())
        );
    }

    #[test]
    fn sizes_format_back() {
        assert_eq!(format_size(10 << 20), "10MB");
        assert_eq!(format_size(1536 << 10), "1536KB");
        assert_eq!(format_size(1 << 30), "1GB");
        assert_eq!(format_size(700), "700B");
        assert_eq!(format_size(0), "0B");
    }
}
