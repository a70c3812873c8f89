//! `floodgate check`'s summary of a config: what it listens on, its routes, tiers and limits,
//! penalties and queues, in a few lines a person reads.

use http::Method;

use crate::classify::ClassId;
use crate::limits::{LimitKind, Window};

use super::*;

impl Config {
    /// A human summary for `floodgate check`.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "listen {}  upstream {}  admin {}\n{} routes, {} classes, {} tiers\n",
            self.server.listen,
            self.server.upstream.origin,
            self.server.admin.map_or("off".into(), |a| a.to_string()),
            self.router.routes().len(),
            self.classes.len(),
            self.tiers.len()
        );
        for route in self.router.routes() {
            let methods = route.methods.as_ref().map_or("*".into(), |m| {
                m.iter().map(Method::as_str).collect::<Vec<_>>().join(",")
            });
            out += &format!(
                "  route {methods} {} -> {}",
                route.pattern,
                self.class_name(route.class)
            );
            if let Some(rule) = &route.by_body {
                let mut values: Vec<String> = rule
                    .by_value
                    .iter()
                    .map(|(v, c)| format!("{v}={}", self.class_name(*c)))
                    .collect();
                values.sort();
                out += &format!(" (body {}: {})", rule.pointer, values.join(" "));
            }
            out += "\n";
        }
        out += &format!(
            "  default class: {}\n",
            self.class_name(self.router.default_class())
        );
        for tier in &self.tiers {
            out += &format!("  tier {}:", tier.name);
            for (i, class) in self.classes.iter().enumerate() {
                let rules = tier.rules(ClassId(i as u16));
                if !rules.is_empty() {
                    out += &format!(" {class}[{}]", rules_text(rules));
                }
                let shadow = tier.shadow_rules(ClassId(i as u16));
                if !shadow.is_empty() {
                    out += &format!(" {class}[shadow {}]", rules_text(shadow));
                }
            }
            out += "\n";
        }
        for (i, class) in self.classes.iter().enumerate() {
            if let Some(job) = self.jobs.class(ClassId(i as u16)) {
                let shadow = if job.shadow { " (shadow)" } else { "" };
                out += &format!(
                    "  job class {class}: {:?}, max job time {:?}{shadow}\n",
                    job.mode, job.max_job_time
                );
            }
        }
        for (tier, q) in self.tiers.iter().zip(&self.jobs.tiers) {
            let concurrency = q
                .concurrency
                .map_or("upstream caps".to_owned(), |c| c.to_string());
            out += &format!(
                "  queue {}: concurrency {concurrency}, max queue {}, max wait {:?}, pool {}\n",
                tier.name, q.max_queue, q.max_wait, self.jobs.pools[q.pool].name
            );
        }
        out += &self.penalties_summary();
        out += &self.limits_summary();
        out
    }

    /// What counts as an incorrect task, how relax jobs are told, and each tier's allowances.
    fn penalties_summary(&self) -> String {
        let p = &self.penalties;
        let names = |set: &[bool]| -> String {
            let listed: Vec<&str> = set
                .iter()
                .enumerate()
                .filter(|(_, &on)| on)
                .map(|(i, _)| self.class_name(ClassId(i as u16)))
                .collect();
            if listed.is_empty() {
                "none".into()
            } else {
                listed.join(", ")
            }
        };
        let mut out = String::new();
        if !p.judge.is_empty() {
            out += &format!(
                "  incorrect tasks: {} rules, judged on {}\n",
                p.judge.len(),
                names(&p.judged)
            );
        }
        if let Some(r) = &p.relax {
            out += &format!(
                "  relax: mode at {} (default {}, unreadable {}), counted on {}, earned by {}\n",
                r.mode_pointer,
                r.default_mode.name(),
                r.unreadable_mode.name(),
                names(&r.counted),
                names(&r.earning)
            );
        }
        for (tier, t) in self.tiers.iter().zip(&p.tiers) {
            let parts = tier_penalties_text(t);
            if !parts.is_empty() {
                out += &format!("  penalties {}: {}\n", tier.name, parts.join("; "));
            }
        }
        out
    }

    /// The upload limits and the state file, for [`Config::summary`].
    fn limits_summary(&self) -> String {
        let mut out = String::new();
        let uploads: Vec<String> = (0..self.classes.len())
            .filter_map(|i| {
                let class = ClassId(i as u16);
                self.max_body(class)
                    .map(|max| format!("{}={}", self.class_name(class), format_size(max)))
            })
            .collect();
        if !uploads.is_empty() {
            out += &format!("  max body: {}\n", uploads.join(" "));
        }
        let pipelined: Vec<&str> = (0..self.classes.len())
            .map(|i| ClassId(i as u16))
            .filter(|&class| self.pipelined(class))
            .map(|class| self.class_name(class))
            .collect();
        if !pipelined.is_empty() {
            out += &format!("  pipelined upstream: {}\n", pipelined.join(" "));
        }
        out += &format!("  accounts with a tier: {}", self.identity.accounts.len());
        match &self.identity.accounts_file {
            Some(file) => out += &format!(" (with {}, reloaded with the config)\n", file.display()),
            None => out += "\n",
        }
        match &self.state {
            Some(s) => {
                let journal = match s.journal {
                    Journal::Every(every) => {
                        format!("journal every {}", humantime::format_duration(every))
                    }
                    Journal::Strict => "journal strict: every change on disk".into(),
                    Journal::Off => "no journal".into(),
                };
                out += &format!(
                    "  state file: {} (saved every {}, {journal})\n",
                    s.file.display(),
                    humantime::format_duration(s.save_interval)
                )
            }
            None => out += "  state file: none (limit state is lost on restart)\n",
        }
        out
    }
}

/// `incorrect 30/day then block`, `relax 100/day then surcharge x2 (shadow)`: a tier's
/// allowances, for the summary.
fn tier_penalties_text(t: &crate::penalties::TierPenalties) -> Vec<String> {
    let shadow = |on: bool| if on { " (shadow)" } else { "" };
    let mut parts = Vec::new();
    if let Some(i) = t.incorrect {
        parts.push(format!(
            "incorrect {}/day then {}{}",
            i.per_day,
            i.action.name(),
            shadow(i.shadow)
        ));
    }
    if let Some(r) = t.relax {
        let action = match r.action {
            crate::penalties::RelaxAction::Surcharge { multiplier } => {
                format!("surcharge x{multiplier}")
            }
            crate::penalties::RelaxAction::Reject => "reject".into(),
        };
        parts.push(format!(
            "relax {}/day then {action}{}",
            r.per_day,
            shadow(r.shadow)
        ));
    }
    parts
}

/// `minute=3 daily=100 interval=1/3000ms`, for the summary.
fn rules_text(rules: &[crate::limits::Rule]) -> String {
    let parts: Vec<String> = rules
        .iter()
        .map(|r| match (r.kind, r.window) {
            (LimitKind::Interval, Window::Fixed { period_ms }) => {
                format!("interval=1/{period_ms}ms")
            }
            _ => format!("{}={}", r.kind.name(), r.limit),
        })
        .collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Overrides};

    #[test]
    fn a_penalty_in_shadow_mode_says_so() {
        let penalties = |shadow: bool| {
            format!(
                "[server]\nupstream = \"http://127.0.0.1:9000\"\n\
                 [[route]]\npath = \"/imagine\"\nclass = \"imagine\"\n\
                 [[jobs]]\nclasses = [\"imagine\"]\n\
                 [incorrect_tasks]\nshadow = {shadow}\n\
                 [[incorrect_tasks.match]]\nstatuses = [400]\n\
                 [relax]\nmode_pointer = \"/mode\"\n\
                 [tiers.free.incorrect_tasks]\nper_day = 30\naction = \"block\"\n\
                 [tiers.free.relax]\nper_day = 100\naction = \"reject\"\n"
            )
        };
        let summary = |text: &str| {
            Config::parse(text, &Overrides::default())
                .unwrap()
                .summary()
        };
        assert!(
            summary(&penalties(true)).contains(
                "  penalties free: incorrect 30/day then block (shadow); relax 100/day then reject\n"
            ),
            "{}",
            summary(&penalties(true))
        );
        assert!(summary(&penalties(false)).contains(
            "  penalties free: incorrect 30/day then block; relax 100/day then reject\n"
        ));
    }
}
