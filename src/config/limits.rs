//! Turns a tier's `[[tiers.NAME.limits]]` entries into per-class [`Rule`] lists.

use std::collections::HashMap;

use toml::Spanned;

use super::error::{ConfigError, Source};
use super::raw::RawLimit;
use crate::limits::{CounterId, LimitKind, Rule, Tier, Window};

/// Builds one tier's rules for every class in `classes` (indexed by class id).
pub(super) fn build_tier(
    src: &Source<'_>,
    tier_name: &str,
    limits: &[Spanned<RawLimit>],
    classes: &[String],
    counter_owner: &mut HashMap<CounterId, String>,
) -> Result<Tier, ConfigError> {
    let mut enforced: Vec<Vec<Rule>> = vec![Vec::new(); classes.len()];
    let mut names: Vec<Vec<String>> = vec![Vec::new(); classes.len()];
    let mut shadow: Vec<Vec<Rule>> = vec![Vec::new(); classes.len()];
    for (i, entry) in limits.iter().enumerate() {
        let field = format!("tiers.{tier_name}.limits[{i}]");
        let limit = entry.get_ref();
        let members = members(src, &field, entry, classes)?;
        let windows = windows(src, &field, entry)?;
        let rules_by_class = if limit.shadow {
            &mut shadow
        } else {
            &mut enforced
        };
        for &class in &members {
            let scope = scope_key(limit, &classes[class]);
            for &(kind, window, count) in &windows {
                let rule = Rule {
                    counter: counter_id(&scope, kind, window),
                    limit: count,
                    window,
                    kind,
                };
                claim_counter(
                    src,
                    &field,
                    entry,
                    counter_owner,
                    rule.counter,
                    &scope,
                    kind,
                )?;
                if rules_by_class[class]
                    .iter()
                    .any(|r| r.counter == rule.counter)
                {
                    return Err(src.at(
                        &field,
                        entry.span(),
                        format!(
                            "class {:?} gets two {} limits from the same scope",
                            classes[class],
                            kind.name()
                        ),
                    ));
                }
                rules_by_class[class].push(rule);
                if !limit.shadow {
                    names[class].push(policy_name(limit, &classes[class], kind));
                }
            }
        }
    }
    let boxed = |rules: Vec<Vec<Rule>>| rules.into_iter().map(Vec::into_boxed_slice).collect();
    let tier = Tier::new(tier_name.to_owned(), boxed(enforced));
    Ok(tier.with_shadow(boxed(shadow)).with_policy_names(names))
}

/// The class ids an entry applies to.
fn members(
    src: &Source<'_>,
    field: &str,
    entry: &Spanned<RawLimit>,
    classes: &[String],
) -> Result<Vec<usize>, ConfigError> {
    let limit = entry.get_ref();
    let lookup = |name: &Spanned<String>, what: &str| {
        classes.iter().position(|c| c == name.get_ref()).ok_or_else(|| {
            src.at(format!("{field}.{what}"), name.span(), format!(
                "unknown class {:?} (classes come from [[route]] entries and routing.default_class)",
                name.get_ref()
            ))
        })
    };
    if limit.classes.is_empty() {
        return Err(src.at(
            format!("{field}.classes"),
            entry.span(),
            "must name at least one class, or \"*\"",
        ));
    }
    if let Some(star) = limit.classes.iter().find(|c| c.get_ref() == "*") {
        if limit.classes.len() > 1 {
            return Err(src.at(
                format!("{field}.classes"),
                star.span(),
                "\"*\" must be the only entry; use except = [...] to leave classes out",
            ));
        }
    }
    let all = limit.classes.len() == 1 && limit.classes[0].get_ref() == "*";
    let mut ids: Vec<usize> = if all {
        (0..classes.len()).collect()
    } else {
        limit
            .classes
            .iter()
            .map(|c| lookup(c, "classes"))
            .collect::<Result<_, _>>()?
    };
    let excluded: Vec<usize> = limit
        .except
        .iter()
        .map(|c| lookup(c, "except"))
        .collect::<Result<_, _>>()?;
    ids.retain(|id| !excluded.contains(id));
    Ok(ids)
}

/// The windows an entry sets, with their limits.
fn windows(
    src: &Source<'_>,
    field: &str,
    entry: &Spanned<RawLimit>,
) -> Result<Vec<(LimitKind, Window, u32)>, ConfigError> {
    let l = entry.get_ref();
    let mut out = Vec::new();
    let fixed = |secs: u64| Window::Fixed {
        period_ms: secs * 1000,
    };
    for (name, value, kind, window) in [
        ("per_second", l.per_second, LimitKind::Second, fixed(1)),
        ("per_minute", l.per_minute, LimitKind::Minute, fixed(60)),
        ("per_hour", l.per_hour, LimitKind::Hour, fixed(3600)),
        ("per_day", l.per_day, LimitKind::Daily, Window::UtcDay),
        (
            "per_month",
            l.per_month,
            LimitKind::Monthly,
            Window::UtcMonth,
        ),
    ] {
        if let Some(v) = value {
            if v == 0 {
                return Err(src.at(
                    format!("{field}.{name}"),
                    entry.span(),
                    "must be at least 1",
                ));
            }
            out.push((kind, window, v));
        }
    }
    if let Some(interval) = &l.interval {
        let period = humantime::parse_duration(interval.get_ref()).map_err(|e| {
            src.at(
                format!("{field}.interval"),
                interval.span(),
                format!("{:?} is not a duration: {e}", interval.get_ref()),
            )
        })?;
        let period_ms = period.as_millis() as u64;
        if period_ms == 0 {
            return Err(src.at(
                format!("{field}.interval"),
                interval.span(),
                "must be at least 1ms",
            ));
        }
        out.push((LimitKind::Interval, Window::Fixed { period_ms }, 1));
    }
    if out.is_empty() {
        return Err(src.at(
            field,
            entry.span(),
            "sets no limit: give per_second, per_minute, per_hour, per_day, per_month or interval",
        ));
    }
    Ok(out)
}

/// What a counter counts: one class, or a shared group named by how it was written. A shadow
/// rule counts apart from every enforced one (`shadow:` prefix), so rolling out a tighter limit
/// beside the one in force never touches the enforced counter.
fn scope_key(limit: &RawLimit, class: &str) -> String {
    let mode = if limit.shadow { "shadow:" } else { "" };
    if !limit.shared {
        return format!("{mode}class:{class}");
    }
    let mut names: Vec<&str> = limit.classes.iter().map(|c| c.get_ref().as_str()).collect();
    names.sort_unstable();
    let mut except: Vec<&str> = limit.except.iter().map(|c| c.get_ref().as_str()).collect();
    except.sort_unstable();
    format!("{mode}shared:{}!{}", names.join(","), except.join(","))
}

/// The IETF policy name of an entry's window for one class: the class and the window
/// (`txt2img.minute`); for a shared limit, its group instead of the class — `account` for every
/// class (`["*"]`), else the classes joined with `+`, with `-except-` and the classes left out
/// (`account-except-progress.daily`, `blend+imagine.daily`). Stable across restarts and reloads
/// of an unchanged entry.
fn policy_name(limit: &RawLimit, class: &str, kind: LimitKind) -> String {
    if !limit.shared {
        return format!("{class}.{}", kind.name());
    }
    let sorted = |names: &[Spanned<String>]| {
        let mut names: Vec<&str> = names.iter().map(|c| c.get_ref().as_str()).collect();
        names.sort_unstable();
        names.join("+")
    };
    let mut group = match sorted(&limit.classes).as_str() {
        "*" => "account".to_owned(),
        listed => listed.to_owned(),
    };
    if !limit.except.is_empty() {
        group = format!("{group}-except-{}", sorted(&limit.except));
    }
    format!("{group}.{}", kind.name())
}

/// A stable id for a counter: the same scope and window always give the same id, so counters
/// survive restarts and reloads of rules that did not change. The limit itself is not part of
/// it: a reload that raises or lowers a limit keeps the counter, and the new limit applies to
/// the window already open.
fn counter_id(scope: &str, kind: LimitKind, window: Window) -> CounterId {
    let period = match window {
        Window::Fixed { period_ms } => period_ms,
        Window::UtcDay | Window::UtcMonth => 0,
    };
    let text = format!("{scope}|{}|{period}", kind.name());
    CounterId(xxhash_rust::xxh3::xxh3_64(text.as_bytes()) as u32)
}

/// Refuses the (astronomically unlikely) case of two different counters hashing to one id.
fn claim_counter(
    src: &Source<'_>,
    field: &str,
    entry: &Spanned<RawLimit>,
    owners: &mut HashMap<CounterId, String>,
    id: CounterId,
    scope: &str,
    kind: LimitKind,
) -> Result<(), ConfigError> {
    let label = format!("{scope}|{}", kind.name());
    match owners.get(&id) {
        Some(owner) if *owner != label => Err(src.at(
            field,
            entry.span(),
            format!("counter id collision between {owner:?} and {label:?}; rename a class"),
        )),
        _ => {
            owners.insert(id, label);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::classify::ClassId;
    use crate::config::{Config, Overrides};
    use crate::limits::Rule;

    fn rules(limits: &str, extra: &str) -> (Vec<Rule>, Vec<Rule>) {
        let text = format!(
            "[server]\nupstream = \"http://127.0.0.1:9000\"\n{extra}\n\
             [[route]]\npath = \"/a\"\nclass = \"a\"\n\
             [[route]]\npath = \"/b\"\nclass = \"b\"\n{limits}"
        );
        let config = Config::parse(&text, &Overrides::default()).unwrap();
        let tier = config.tier(crate::identity::TierId(0));
        (
            tier.rules(ClassId(1)).to_vec(),
            tier.shadow_rules(ClassId(1)).to_vec(),
        )
    }

    const FIVE: &str = "[[tiers.t.limits]]\nclasses = [\"a\"]\nper_minute = 5\nper_day = 50\n";

    #[test]
    fn counter_ids_come_from_scope_and_window_not_from_the_limit() {
        let (base, _) = rules(FIVE, "");
        let raised = rules(&FIVE.replace("per_minute = 5", "per_minute = 10"), "").0;
        assert_eq!(base.len(), 2);
        assert_eq!(raised[0].limit, 10);
        assert_eq!(
            base.iter().map(|r| r.counter).collect::<Vec<_>>(),
            raised.iter().map(|r| r.counter).collect::<Vec<_>>(),
            "a raised limit keeps its counters"
        );
        let unrelated = rules(
            &format!("{FIVE}[[tiers.t.limits]]\nclasses = [\"b\"]\nper_second = 1\n"),
            "header_read_timeout = \"3s\"\n[headers]\nietf = true\n",
        )
        .0;
        assert_eq!(unrelated, base, "other rules and settings change nothing");
    }

    #[test]
    fn a_different_window_scope_or_mode_is_a_different_counter() {
        let (base, _) = rules(FIVE, "");
        let hourly = rules(&FIVE.replace("per_minute", "per_hour"), "").0;
        assert_ne!(hourly[0].counter, base[0].counter);
        let shared = rules(
            &FIVE.replace("per_day = 50", "per_day = 50\nshared = true"),
            "",
        )
        .0;
        assert_ne!(shared[0].counter, base[0].counter);
        let (enforced, shadow) = rules(
            &format!(
                "{FIVE}[[tiers.t.limits]]\nclasses = [\"a\"]\nper_minute = 3\nshadow = true\n"
            ),
            "",
        );
        assert_eq!(enforced, base);
        assert_eq!(shadow.len(), 1);
        assert_eq!(shadow[0].limit, 3);
        assert_ne!(
            shadow[0].counter, base[0].counter,
            "a shadow rule never shares an enforced counter"
        );
    }

    #[test]
    fn policies_are_named_by_class_or_shared_group_and_window() {
        let limits = "[[tiers.t.limits]]\nclasses = [\"b\"]\nper_minute = 5\ninterval = \"3s\"\n\
                      [[tiers.t.limits]]\nclasses = [\"*\"]\nshared = true\nper_day = 500\n\
                      [[tiers.t.limits]]\nclasses = [\"*\"]\nexcept = [\"a\"]\nshared = true\n\
                      per_hour = 50\n\
                      [[tiers.t.limits]]\nclasses = [\"b\", \"a\"]\nshared = true\nper_month = 9\n\
                      [[tiers.t.limits]]\nclasses = [\"b\"]\nshared = true\nper_minute = 7\n\
                      [[tiers.t.limits]]\nclasses = [\"b\"]\nper_minute = 2\nshadow = true\n";
        let text = format!(
            "[server]\nupstream = \"http://127.0.0.1:9000\"\n\
             [[route]]\npath = \"/a\"\nclass = \"a\"\n\
             [[route]]\npath = \"/b\"\nclass = \"b\"\n{limits}"
        );
        let config = Config::parse(&text, &Overrides::default()).unwrap();
        let tier = config.tier(crate::identity::TierId(0));
        let names: Vec<&str> = tier.policy_names(ClassId(2)).iter().map(|n| &**n).collect();
        assert_eq!(
            names,
            [
                "\"b.minute\"",
                "\"b.interval\"",
                "\"account.daily\"",
                "\"account-except-a.hour\"",
                "\"a+b.monthly\"",
                "\"b.minute-2\"",
            ],
            "one per enforced rule, in their order; a repeated name made unique"
        );
        assert_eq!(tier.rules(ClassId(2)).len(), names.len());
        assert_eq!(
            tier.policy_names(ClassId(1)).len(),
            tier.rules(ClassId(1)).len()
        );
    }
}
