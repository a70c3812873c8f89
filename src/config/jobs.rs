//! Turns `[[jobs]]`, `[tasks]`, tier queue fields, `[[account]]` and `[[upstream_account]]` into
//! a [`JobsConfig`].

use std::collections::HashMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use toml::Spanned;

use super::error::{invalid, ConfigError, Source};
use super::raw::{RawConfig, RawJob, RawTasks, RawUpstreamAccount, RawUpstreamHealth};
use super::secret::inline_or_file;
use super::{build_upstream, duration};
use crate::classify::{PathPattern, PathRules};
use crate::identity::AccountId;
use crate::limits::Tier;
use crate::queue::health::HealthRules;
use crate::queue::{
    JobClass, JobMode, JobsConfig, PoolSpec, QueueSettings, TaskPolling, UpstreamAccount,
};

const DEFAULT_MAX_QUEUE: usize = 100;

pub(super) fn build_jobs(
    src: &Source<'_>,
    raw: &RawConfig,
    classes: &[String],
    tiers: &[Tier],
) -> Result<JobsConfig, ConfigError> {
    let mut jobs = JobsConfig {
        classes: vec![None; classes.len()],
        ..JobsConfig::default()
    };
    for (i, job) in raw.jobs.iter().enumerate() {
        let field = format!("jobs[{i}]");
        let class = job_class(src, &field, job.get_ref())?;
        for name in &job.get_ref().classes {
            let idx = classes
                .iter()
                .position(|c| c == name.get_ref())
                .ok_or_else(|| {
                    src.at(
                        format!("{field}.classes"),
                        name.span(),
                        format!("unknown class {:?}", name.get_ref()),
                    )
                })?;
            jobs.classes[idx] = Some(class.clone());
        }
    }
    jobs.tasks = raw
        .tasks
        .as_ref()
        .map(|t| task_polling(src, t))
        .transpose()?;
    if jobs
        .classes
        .iter()
        .flatten()
        .any(|c| c.mode == JobMode::Task)
        && jobs.tasks.is_none()
    {
        return Err(invalid(
            "tasks",
            "job classes in task mode need a [tasks] section (get_path, status_pointer, terminal)",
        ));
    }
    let upstream_accounts = upstream_accounts(src, &raw.upstream_account)?;
    if let Some(rules) = &raw.upstream_health {
        jobs.health = health_rules(src, rules)?;
    }
    jobs.pools.push(PoolSpec {
        name: "upstream".into(),
        accounts: vec![UpstreamAccount {
            name: "upstream".into(),
            credential: None,
            origin: None,
            concurrency: u32::MAX,
        }],
    });
    for (name, tier) in raw.tiers.iter() {
        let field = format!("tiers.{name}");
        let pool = pool_for(
            src,
            &field,
            &tier.upstream_accounts,
            &upstream_accounts,
            &mut jobs.pools,
        )?;
        let max_wait = wait(src, &format!("{field}.max_wait"), tier.max_wait.as_ref())?;
        jobs.tiers.push(QueueSettings {
            concurrency: positive(&format!("{field}.concurrency"), tier.concurrency)?,
            max_queue: tier.max_queue.unwrap_or(DEFAULT_MAX_QUEUE),
            max_wait,
            pool,
        });
    }
    while jobs.tiers.len() < tiers.len() {
        // the implicit tier of a config without tiers
        jobs.tiers.push(QueueSettings {
            concurrency: None,
            max_queue: DEFAULT_MAX_QUEUE,
            max_wait: wait(src, "", None)?,
            pool: 0,
        });
    }
    for (i, acct) in raw.account.iter().enumerate() {
        let field = format!("account[{i}]");
        let tier = match &acct.tier {
            Some(t) => tiers
                .iter()
                .position(|x| x.name == *t.get_ref())
                .ok_or_else(|| {
                    src.at(
                        format!("{field}.tier"),
                        t.span(),
                        format!("unknown tier {:?}", t.get_ref()),
                    )
                })?,
            None => 0,
        };
        let base = jobs.tiers[tier].clone();
        let pool = if acct.upstream_accounts.is_empty() {
            base.pool
        } else {
            pool_for(
                src,
                &field,
                &acct.upstream_accounts,
                &upstream_accounts,
                &mut jobs.pools,
            )?
        };
        let settings = QueueSettings {
            concurrency: positive(&format!("{field}.concurrency"), acct.concurrency)?
                .or(base.concurrency),
            max_queue: acct.max_queue.unwrap_or(base.max_queue),
            max_wait: match &acct.max_wait {
                Some(_) => wait(src, &format!("{field}.max_wait"), acct.max_wait.as_ref())?,
                None => base.max_wait,
            },
            pool,
        };
        jobs.accounts
            .insert(AccountId::from_key(acct.key.as_bytes()), settings);
    }
    Ok(jobs)
}

fn positive(field: &str, v: Option<u32>) -> Result<Option<u32>, ConfigError> {
    match v {
        Some(0) => Err(invalid(field, "must be at least 1")),
        other => Ok(other),
    }
}

fn wait(
    src: &Source<'_>,
    field: &str,
    v: Option<&Spanned<String>>,
) -> Result<Duration, ConfigError> {
    duration(src, field, v, "5m")
}

fn job_class(src: &Source<'_>, field: &str, job: &RawJob) -> Result<JobClass, ConfigError> {
    let mode = match job.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("sync", _)) => JobMode::Sync,
        Some(("task", _)) => JobMode::Task,
        Some((other, span)) => {
            return Err(src.at(
                format!("{field}.mode"),
                span,
                format!("{other:?}: expected \"sync\" or \"task\""),
            ))
        }
    };
    if mode == JobMode::Task && job.task_id_pointer.is_none() {
        return Err(invalid(
            format!("{field}.task_id_pointer"),
            "task mode needs the JSON pointer of the task id in the create response",
        ));
    }
    for (name, p) in [
        ("follow_up_pointer", &job.follow_up_pointer),
        ("task_id_pointer", &job.task_id_pointer),
    ] {
        if p.as_ref().is_some_and(|p| !p.starts_with('/')) {
            return Err(invalid(
                format!("{field}.{name}"),
                "a JSON pointer starts with '/', e.g. \"/data/task_id\"",
            ));
        }
    }
    Ok(JobClass {
        mode,
        max_job_time: duration(
            src,
            &format!("{field}.max_job_time"),
            job.max_job_time.as_ref(),
            "10m",
        )?,
        follow_up_pointer: job.follow_up_pointer.clone(),
        task_id_pointer: job.task_id_pointer.clone(),
        shadow: job.shadow,
    })
}

fn task_polling(src: &Source<'_>, t: &RawTasks) -> Result<TaskPolling, ConfigError> {
    let pattern = PathPattern::parse(t.get_path.get_ref(), &PathRules::LITERAL)
        .map_err(|m| src.at("tasks.get_path", t.get_path.span(), m))?;
    let has_id =
        matches!(&pattern, PathPattern::Template(_)) && t.get_path.get_ref().contains("{id}");
    if !has_id {
        return Err(src.at(
            "tasks.get_path",
            t.get_path.span(),
            "must be a template with an {id} segment",
        ));
    }
    let get_method = match &t.get_method {
        Some(m) => Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes())
            .map_err(|_| src.at("tasks.get_method", m.span(), "not an HTTP method"))?,
        None => Method::GET,
    };
    if !t.status_pointer.starts_with('/') {
        return Err(invalid(
            "tasks.status_pointer",
            "a JSON pointer starts with '/', e.g. \"/data/status\"",
        ));
    }
    if t.terminal.is_empty() {
        return Err(invalid(
            "tasks.terminal",
            "list the status values that end a task",
        ));
    }
    let poll_interval = match &t.poll_interval {
        Some(_) => Some(duration(
            src,
            "tasks.poll_interval",
            t.poll_interval.as_ref(),
            "2s",
        )?),
        None => None,
    };
    let mut success = Vec::new();
    for status in t.success.iter().flatten() {
        if !t.terminal.contains(status.get_ref()) {
            return Err(src.at(
                "tasks.success",
                status.span(),
                format!(
                    "{:?} is not one of tasks.terminal ({})",
                    status.get_ref(),
                    t.terminal.join(", ")
                ),
            ));
        }
        success.push(status.get_ref().clone());
    }
    let follow_up_ttl = duration(src, "tasks.follow_up_ttl", t.follow_up_ttl.as_ref(), "24h")?;
    Ok(TaskPolling {
        success,
        follow_up_ttl,
        get_method,
        get_path: t.get_path.get_ref().clone(),
        get_pattern: pattern,
        status_pointer: t.status_pointer.clone(),
        terminal: t.terminal.clone(),
        poll_interval,
    })
}

fn upstream_accounts(
    src: &Source<'_>,
    raw: &[RawUpstreamAccount],
) -> Result<HashMap<String, UpstreamAccount>, ConfigError> {
    let mut out = HashMap::new();
    for (i, u) in raw.iter().enumerate() {
        let field = format!("upstream_account[{i}]");
        let name = u.name.get_ref().clone();
        if name.is_empty() || name == "upstream" || out.contains_key(&name) {
            return Err(src.at(
                format!("{field}.name"),
                u.name.span(),
                format!("{name:?} must be unique, non-empty and not \"upstream\""),
            ));
        }
        if name.contains(|c: char| "|{}/?#%".contains(c) || c.is_whitespace() || c.is_control()) {
            return Err(src.at(
                format!("{field}.name"),
                u.name.span(),
                format!("{name:?}: no spaces or any of | {{ }} / ? # % (it names Redis keys and admin paths)"),
            ));
        }
        let credential = inline_or_file(
            src,
            (&format!("{field}.credential"), u.credential.as_ref()),
            (
                &format!("{field}.credential_file"),
                u.credential_file.as_ref(),
            ),
        )?;
        let credential = match credential {
            Some(secret) => {
                let header = u
                    .credential_header
                    .as_ref()
                    .map_or("authorization", |h| h.get_ref().as_str());
                let header = HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
                    .map_err(|_| {
                        invalid(
                            format!("{field}.credential_header"),
                            format!("{header:?} is not a header name"),
                        )
                    })?;
                let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| {
                    invalid(format!("{field}.credential"), "not a valid header value")
                })?;
                value.set_sensitive(true); // `Debug` and HPACK leave it out
                Some((header, value))
            }
            None => None,
        };
        let origin = u
            .base_url
            .as_ref()
            .map(|b| build_upstream(src, Some(b)).map(|t| t.origin))
            .transpose()?;
        let concurrency =
            positive(&format!("{field}.concurrency"), u.concurrency)?.unwrap_or(u32::MAX);
        out.insert(
            name.clone(),
            UpstreamAccount {
                name,
                credential,
                origin,
                concurrency,
            },
        );
    }
    Ok(out)
}

/// The pool for a list of upstream account names (pool 0 when empty); equal sets share a pool.
fn pool_for(
    src: &Source<'_>,
    field: &str,
    names: &[Spanned<String>],
    known: &HashMap<String, UpstreamAccount>,
    pools: &mut Vec<PoolSpec>,
) -> Result<usize, ConfigError> {
    if names.is_empty() {
        return Ok(0);
    }
    let mut accounts = Vec::new();
    for n in names {
        let acct = known.get(n.get_ref()).ok_or_else(|| {
            src.at(
                format!("{field}.upstream_accounts"),
                n.span(),
                format!(
                    "unknown upstream account {:?} (define it in [[upstream_account]])",
                    n.get_ref()
                ),
            )
        })?;
        accounts.push(acct.clone());
    }
    let mut sorted: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
    sorted.sort_unstable();
    let name = sorted.join("+");
    if let Some(i) = pools.iter().position(|p| p.name == name) {
        return Ok(i);
    }
    pools.push(PoolSpec { name, accounts });
    Ok(pools.len() - 1)
}

/// `[upstream_health]`, over the defaults (401 and 403 disable; 5 failures in a row rest for
/// 10 s, doubling up to 10 min).
fn health_rules(src: &Source<'_>, raw: &RawUpstreamHealth) -> Result<HealthRules, ConfigError> {
    let defaults = HealthRules::default();
    let mut statuses = Vec::new();
    for s in raw.disable_statuses.iter().flatten() {
        if !(400..=599).contains(s.get_ref()) || *s.get_ref() == 429 {
            return Err(src.at(
                "upstream_health.disable_statuses",
                s.span(),
                format!(
                    "{}: a 4xx or 5xx status other than 429 (a 429 rests the account)",
                    s.get_ref()
                ),
            ));
        }
        statuses.push(*s.get_ref());
    }
    let mut bodies = Vec::new();
    for b in &raw.disable_body_contains {
        if b.get_ref().is_empty() {
            return Err(src.at(
                "upstream_health.disable_body_contains",
                b.span(),
                "an empty text matches every body",
            ));
        }
        bodies.push(b.get_ref().clone());
    }
    let rest = duration(src, "upstream_health.rest", raw.rest.as_ref(), "10s")?;
    let max_rest = duration(
        src,
        "upstream_health.max_rest",
        raw.max_rest.as_ref(),
        "10m",
    )?;
    if max_rest < rest {
        let msg = "must be at least upstream_health.rest";
        return Err(match &raw.max_rest {
            Some(m) => src.at("upstream_health.max_rest", m.span(), msg),
            None => invalid("upstream_health.max_rest", msg),
        });
    }
    Ok(HealthRules {
        disable_statuses: match &raw.disable_statuses {
            Some(_) => statuses,
            None => defaults.disable_statuses,
        },
        disable_bodies: bodies,
        failures_to_rest: raw.failures_to_rest.unwrap_or(defaults.failures_to_rest),
        rest,
        max_rest,
    })
}
