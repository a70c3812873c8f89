//! `[incorrect_tasks]`, `[relax]` and the tiers' `incorrect_tasks` / `relax` allowances
//! (SPEC §6) -> a [`PenaltiesConfig`].

use std::collections::HashMap;

use toml::Spanned;

use super::error::{invalid, ConfigError, Source};
use super::raw::{RawConfig, RawIncorrectTasks, RawMatch, RawRelax, RawScalar, RawTier};
use crate::classify::ClassId;
use crate::limits::CounterId;
use crate::penalties::{
    self, IncorrectAction, IncorrectPolicy, Judge, Matcher, Mode, On, PenaltiesConfig, PenaltyIds,
    RelaxAction, RelaxPolicy, RelaxSettings, TierPenalties,
};
use crate::queue::{JobMode, JobsConfig};

const DEFAULT_COST_MULTIPLIER: u32 = 2;

pub(super) fn build_penalties(
    src: &Source<'_>,
    raw: &RawConfig,
    classes: &[String],
    jobs: &JobsConfig,
    tier_count: usize,
    counter_owner: &HashMap<CounterId, String>,
) -> Result<PenaltiesConfig, ConfigError> {
    let ids = PenaltyIds::default();
    check_ids(counter_owner)?;
    let (judge, judged) = match &raw.incorrect_tasks {
        Some(section) => build_judge(src, section, classes, jobs)?,
        None => (Judge::default(), vec![false; classes.len()]),
    };
    let relax = raw
        .relax
        .as_ref()
        .map(|r| build_relax(src, r.get_ref(), classes, jobs))
        .transpose()?;
    let sections = Sections {
        has_judge: !judge.is_empty(),
        has_relax: relax.is_some(),
        incorrect_shadow: raw
            .incorrect_tasks
            .as_ref()
            .is_some_and(|s| s.get_ref().shadow),
        relax_shadow: raw.relax.as_ref().is_some_and(|s| s.get_ref().shadow),
    };
    let mut tiers = Vec::with_capacity(tier_count);
    for (name, tier) in &raw.tiers {
        tiers.push(tier_penalties(src, name, tier, &sections)?);
    }
    tiers.resize(tier_count, TierPenalties::default());
    Ok(PenaltiesConfig {
        ids,
        judge,
        judged,
        relax,
        tiers,
    })
}

/// Refuses a limit counter whose id is a tally's (a hash collision: astronomically unlikely).
fn check_ids(counter_owner: &HashMap<CounterId, String>) -> Result<(), ConfigError> {
    for name in [
        penalties::INCORRECT,
        penalties::RELAX_USED,
        penalties::RELAX_EARNED,
    ] {
        if let Some(owner) = counter_owner.get(&penalties::reserved_id(name)) {
            return Err(invalid(
                "tiers",
                format!(
                    "counter id collision between {owner:?} and the {name} tally; rename a class"
                ),
            ));
        }
    }
    Ok(())
}

fn build_judge(
    src: &Source<'_>,
    section: &Spanned<RawIncorrectTasks>,
    classes: &[String],
    jobs: &JobsConfig,
) -> Result<(Judge, Vec<bool>), ConfigError> {
    let raw = section.get_ref();
    let judged = job_classes(
        src,
        "incorrect_tasks.classes",
        raw.classes.as_deref(),
        classes,
        jobs,
    )?;
    if raw.matches.is_empty() {
        return Err(src.at("incorrect_tasks", section.span(), NO_MATCH_RULE));
    }
    let matchers = raw
        .matches
        .iter()
        .enumerate()
        .map(|(i, m)| matcher(src, &format!("incorrect_tasks.match[{i}]"), m, jobs))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((Judge::new(matchers), judged))
}

const NO_MATCH_RULE: &str = "no [[incorrect_tasks.match]] rule says what an incorrect task is";

fn matcher(
    src: &Source<'_>,
    field: &str,
    entry: &Spanned<RawMatch>,
    jobs: &JobsConfig,
) -> Result<Matcher, ConfigError> {
    let m = entry.get_ref();
    let on = match m.on.as_ref().map(|o| (o.get_ref().as_str(), o.span())) {
        None | Some(("response", _)) => On::Response,
        Some(("task", span)) => {
            if !success_known(jobs) {
                return Err(src.at(
                    format!("{field}.on"),
                    span,
                    "\"task\" needs tasks.success: the statuses of a task that succeeded (the \
                     other terminal ones failed)",
                ));
            }
            On::Task
        }
        Some((other, span)) => {
            return Err(src.at(
                format!("{field}.on"),
                span,
                format!("{other:?}: expected \"response\" or \"task\""),
            ))
        }
    };
    if let Some(bad) = m
        .statuses
        .iter()
        .find(|s| !(100..=599).contains(s.get_ref()))
    {
        return Err(src.at(
            format!("{field}.statuses"),
            bad.span(),
            format!("{} is not an HTTP status (100-599)", bad.get_ref()),
        ));
    }
    if let Some(p) = m.pointer.as_ref().filter(|p| !p.get_ref().starts_with('/')) {
        return Err(src.at(
            format!("{field}.pointer"),
            p.span(),
            "a JSON pointer starts with '/', e.g. \"/error/code\"",
        ));
    }
    if !m.values.is_empty() && m.pointer.is_none() {
        return Err(src.at(
            format!("{field}.values"),
            entry.span(),
            "values are compared with the field at pointer: give pointer",
        ));
    }
    if m.contains.iter().any(|c| c.trim().is_empty()) {
        return Err(src.at(
            format!("{field}.contains"),
            entry.span(),
            "an empty string would match every answer",
        ));
    }
    if m.statuses.is_empty() && m.pointer.is_none() && m.contains.is_empty() {
        return Err(src.at(
            field,
            entry.span(),
            "sets no condition: give statuses, pointer (with values or contains) or contains",
        ));
    }
    Ok(Matcher {
        on,
        statuses: m.statuses.iter().map(|s| *s.get_ref()).collect(),
        pointer: m.pointer.as_ref().map(|p| p.get_ref().clone()),
        values: m
            .values
            .iter()
            .map(|v| match v {
                RawScalar::Text(t) => t.clone(),
                RawScalar::Number(n) => n.to_string(),
            })
            .collect(),
        contains: m.contains.clone(),
    })
}

fn build_relax(
    src: &Source<'_>,
    raw: &RawRelax,
    classes: &[String],
    jobs: &JobsConfig,
) -> Result<RelaxSettings, ConfigError> {
    let pointer = &raw.mode_pointer;
    if !pointer.get_ref().starts_with('/') {
        return Err(src.at(
            "relax.mode_pointer",
            pointer.span(),
            "a JSON pointer starts with '/', e.g. \"/process_mode\"",
        ));
    }
    let default_mode = mode(
        src,
        "relax.default_mode",
        raw.default_mode.as_ref(),
        Mode::Fast,
    )?;
    let unreadable_mode = mode(
        src,
        "relax.unreadable_mode",
        raw.unreadable_mode.as_ref(),
        Mode::Relax,
    )?;
    let counted = job_classes(src, "relax.classes", raw.classes.as_deref(), classes, jobs)?;
    let earning = job_classes(
        src,
        "relax.earn_classes",
        Some(&raw.earn_classes),
        classes,
        jobs,
    )?;
    for name in &raw.earn_classes {
        let in_task_mode = classes
            .iter()
            .position(|c| c == name.get_ref())
            .and_then(|i| jobs.class(ClassId(i as u16)))
            .is_some_and(|j| j.mode == JobMode::Task);
        if in_task_mode && !success_known(jobs) {
            return Err(src.at(
                "relax.earn_classes",
                name.span(),
                format!(
                    "class {:?} runs in task mode: earning needs tasks.success (the statuses of \
                     a task that succeeded)",
                    name.get_ref()
                ),
            ));
        }
    }
    Ok(RelaxSettings {
        mode_pointer: pointer.get_ref().clone(),
        default_mode,
        unreadable_mode,
        counted,
        earning,
    })
}

/// A job mode named in the config (`default` when the field is absent).
fn mode(
    src: &Source<'_>,
    field: &str,
    v: Option<&Spanned<String>>,
    default: Mode,
) -> Result<Mode, ConfigError> {
    let Some(m) = v else { return Ok(default) };
    Mode::parse(m.get_ref()).ok_or_else(|| {
        src.at(
            field,
            m.span(),
            format!(
                "{:?}: expected \"fast\", \"turbo\" or \"relax\"",
                m.get_ref()
            ),
        )
    })
}

/// Whether `[tasks] success` tells a succeeded task from a failed one.
fn success_known(jobs: &JobsConfig) -> bool {
    jobs.tasks.as_ref().is_some_and(|t| !t.success.is_empty())
}

/// The job classes `names` lists (by class id); `None` = every job class.
fn job_classes(
    src: &Source<'_>,
    field: &str,
    names: Option<&[Spanned<String>]>,
    classes: &[String],
    jobs: &JobsConfig,
) -> Result<Vec<bool>, ConfigError> {
    let is_job = |i: usize| jobs.class(ClassId(i as u16)).is_some();
    let Some(names) = names else {
        return Ok((0..classes.len()).map(is_job).collect());
    };
    let mut set = vec![false; classes.len()];
    for name in names {
        let Some(i) = classes.iter().position(|c| c == name.get_ref()) else {
            return Err(src.at(
                field,
                name.span(),
                format!(
                    "unknown class {:?} (classes come from [[route]] entries and \
                     routing.default_class)",
                    name.get_ref()
                ),
            ));
        };
        if !is_job(i) {
            return Err(src.at(
                field,
                name.span(),
                format!(
                    "class {:?} is not a job class (list it in a [[jobs]] entry)",
                    name.get_ref()
                ),
            ));
        }
        set[i] = true;
    }
    Ok(set)
}

/// What the `[incorrect_tasks]` and `[relax]` sections say to every tier's allowances.
struct Sections {
    /// `[[incorrect_tasks.match]]` rules say what an incorrect task is.
    has_judge: bool,
    /// `[relax]` tells relax jobs apart.
    has_relax: bool,
    /// `[incorrect_tasks] shadow`: the tiers' incorrect-task actions are only counted.
    incorrect_shadow: bool,
    /// `[relax] shadow`: the tiers' relax actions are only counted.
    relax_shadow: bool,
}

fn tier_penalties(
    src: &Source<'_>,
    name: &str,
    tier: &RawTier,
    sections: &Sections,
) -> Result<TierPenalties, ConfigError> {
    let field = format!("tiers.{name}");
    let incorrect = match &tier.incorrect_tasks {
        None => None,
        Some(entry) => {
            if !sections.has_judge {
                return Err(src.at(
                    format!("{field}.incorrect_tasks"),
                    entry.span(),
                    NO_MATCH_RULE,
                ));
            }
            let raw = entry.get_ref();
            let action = match raw.action.get_ref().as_str() {
                "block" => IncorrectAction::Block,
                "flag" => IncorrectAction::Flag,
                other => {
                    return Err(src.at(
                        format!("{field}.incorrect_tasks.action"),
                        raw.action.span(),
                        format!("{other:?}: expected \"block\" or \"flag\""),
                    ))
                }
            };
            Some(IncorrectPolicy {
                per_day: raw.per_day,
                action,
                shadow: sections.incorrect_shadow,
            })
        }
    };
    let relax = match &tier.relax {
        None => None,
        Some(entry) => {
            if !sections.has_relax {
                return Err(src.at(
                    format!("{field}.relax"),
                    entry.span(),
                    "needs a [relax] section: its mode_pointer tells relax jobs apart",
                ));
            }
            let field = format!("{field}.relax");
            Some(relax_policy(src, &field, entry, sections.relax_shadow)?)
        }
    };
    Ok(TierPenalties { incorrect, relax })
}

fn relax_policy(
    src: &Source<'_>,
    field: &str,
    entry: &Spanned<super::raw::RawTierRelax>,
    shadow: bool,
) -> Result<RelaxPolicy, ConfigError> {
    let raw = entry.get_ref();
    let multiplier = raw.cost_multiplier.as_ref();
    let action = match raw.action.get_ref().as_str() {
        "surcharge" => {
            let m = multiplier.map_or(DEFAULT_COST_MULTIPLIER, |m| *m.get_ref());
            if m < 2 {
                return Err(src.at(
                    format!("{field}.cost_multiplier"),
                    multiplier.map_or(entry.span(), Spanned::span),
                    "must be at least 2 (a multiplier of 1 is no surcharge)",
                ));
            }
            RelaxAction::Surcharge { multiplier: m }
        }
        "reject" => {
            if let Some(m) = multiplier {
                return Err(src.at(
                    format!("{field}.cost_multiplier"),
                    m.span(),
                    "only applies to action = \"surcharge\"",
                ));
            }
            RelaxAction::Reject
        }
        other => {
            return Err(src.at(
                format!("{field}.action"),
                raw.action.span(),
                format!("{other:?}: expected \"surcharge\" or \"reject\""),
            ))
        }
    };
    Ok(RelaxPolicy {
        per_day: raw.per_day,
        action,
        shadow,
    })
}
