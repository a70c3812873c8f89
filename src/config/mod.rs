//! Configuration: the TOML file parsed ([`raw`]) and then validated into typed values.
//!
//! Parse, don't validate: everything the proxy reads at request time is already resolved here —
//! class and tier names become indices, durations become [`Duration`]s, keys become
//! [`AccountId`]s — and every error names the field and, where known, the line.

mod admin_token;
mod classes;
mod error;
mod jobs;
mod limits;
mod penalties;
mod raw;
mod routing;
mod server;
mod state;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method};
use toml::Spanned;

pub use admin_token::AdminToken;
pub use classes::format_size;
use error::{invalid, Source};
pub use error::{ConfigError, Located};
use raw::{RawAccountsFile, RawConfig};
pub(crate) use server::build_upstream;
pub use server::{restart_only_changes, ServerConfig, UpstreamTarget};
pub use state::StateConfig;
pub use store::{OnFailure, StoreConfig};

use crate::classify::{BodyClasses, ClassId, PathPattern, PathRules, Route, Router};
use crate::identity::{
    AccountId, Anonymous, IdentityConfig, IpNet, KeySource, TierId, UnknownKeys,
};
use crate::limits::{LimitKind, Tier, Window};
use crate::penalties::PenaltiesConfig;
use crate::queue::JobsConfig;

/// Header switches.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderOptions {
    pub ietf: bool,
    pub annotate_upstream: bool,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub identity: IdentityConfig,
    pub router: Router,
    /// Class names, indexed by [`ClassId`].
    pub classes: Vec<String>,
    /// Tiers, indexed by [`TierId`].
    pub tiers: Vec<Tier>,
    pub headers: HeaderOptions,
    pub jobs: JobsConfig,
    /// Largest request body per class, indexed by [`ClassId`]; `None` = no limit.
    pub max_body: Vec<Option<u64>>,
    /// The memory store's state file; `None` = state is not kept across restarts.
    pub state: Option<StateConfig>,
    /// Where limit counters live.
    pub store: StoreConfig,
    /// Incorrect-task and relax accounting: what counts, and each tier's allowances.
    pub penalties: PenaltiesConfig,
}

/// Command-line values that replace the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub admin: Option<String>,
    pub workers: Option<usize>,
    /// `state.file`: keep limit state across restarts in this file.
    pub state_file: Option<String>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Config::parse(&text, overrides)
    }

    /// Validates config text.
    pub fn parse(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let src = Source::new(text);
        let mut raw = parse_raw(&src, text)?;
        apply_overrides(&mut raw, overrides);
        build(&src, raw)
    }

    pub fn class_name(&self, class: ClassId) -> &str {
        &self.classes[class.0 as usize]
    }

    pub fn tier(&self, tier: TierId) -> &Tier {
        &self.tiers[tier.0 as usize]
    }

    /// The largest request body `class` accepts, if it has a limit.
    pub fn max_body(&self, class: ClassId) -> Option<u64> {
        self.max_body.get(class.0 as usize).copied().flatten()
    }

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
            let mut parts = Vec::new();
            if let Some(i) = t.incorrect {
                parts.push(format!(
                    "incorrect {}/day then {}",
                    i.per_day,
                    i.action.name()
                ));
            }
            if let Some(r) = t.relax {
                let action = match r.action {
                    crate::penalties::RelaxAction::Surcharge { multiplier } => {
                        format!("surcharge x{multiplier}")
                    }
                    crate::penalties::RelaxAction::Reject => "reject".into(),
                };
                parts.push(format!("relax {}/day then {action}", r.per_day));
            }
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
        out += &format!("  accounts with a tier: {}", self.identity.accounts.len());
        match &self.identity.accounts_file {
            Some(file) => out += &format!(" (with {}, reloaded with the config)\n", file.display()),
            None => out += "\n",
        }
        match &self.state {
            Some(s) => {
                out += &format!(
                    "  state file: {} (saved every {})\n",
                    s.file.display(),
                    humantime::format_duration(s.save_interval)
                )
            }
            None => out += "  state file: none (limit state is lost on restart)\n",
        }
        out
    }
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

/// TOML -> raw structs; a syntax or type error names the field path and line.
fn parse_raw<T: serde::de::DeserializeOwned>(
    src: &Source<'_>,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str::<T>(text).map_err(|err| {
        let de = toml::Deserializer::new(text);
        let path = match serde_path_to_error::deserialize::<_, T>(de) {
            // `Spanned` fields deserialize through a private wrapper field; keep it out of the path.
            Err(e) => e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", ""),
            Ok(_) => ".".into(),
        };
        let field = if path == "." || path.is_empty() {
            "(syntax)".to_owned()
        } else {
            path
        };
        ConfigError::Invalid(Located {
            field,
            line: err.span().map(|s| src.line_of(s.start)),
            message: match err.message().trim() {
                // toml says nothing when the text ends where a value should start (`a=`).
                "" => "the file ends where a value should start".to_owned(),
                m => m.to_owned(),
            },
        })
    })
}

fn apply_overrides(raw: &mut RawConfig, o: &Overrides) {
    let spanned = |v: &String| Spanned::new(0..0, v.clone());
    if let Some(v) = &o.listen {
        raw.server.listen = Some(spanned(v));
    }
    if let Some(v) = &o.upstream {
        raw.server.upstream = Some(spanned(v));
    }
    if let Some(v) = &o.admin {
        raw.server.admin = Some(spanned(v));
    }
    if let Some(v) = o.workers {
        raw.server.workers = Some(v);
    }
    if let Some(file) = &o.state_file {
        let save_interval = raw.state.take().and_then(|s| s.save_interval);
        raw.state = Some(raw::RawState {
            file: spanned(file),
            save_interval,
        });
    }
}

fn build(src: &Source<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let path_rules = routing::path_rules(src, &raw.routing)?;
    let default_class = raw
        .routing
        .default_class
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut classes = vec![default_class];
    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        routes.push(build_route(src, i, r, &mut classes, &path_rules)?);
    }
    let mut counter_owner = HashMap::new();
    let mut tiers = Vec::new();
    for (name, tier) in &raw.tiers {
        tiers.push(limits::build_tier(
            src,
            name,
            &tier.limits,
            &classes,
            &mut counter_owner,
        )?);
    }
    let identity = build_identity(src, &raw, &mut tiers, &classes)?;
    let jobs = jobs::build_jobs(src, &raw, &classes, &tiers)?;
    let max_body = classes::max_body_by_class(src, &raw.classes, &classes)?;
    let penalties =
        penalties::build_penalties(src, &raw, &classes, &jobs, tiers.len(), &counter_owner)?;
    Ok(Config {
        server: server::build_server(src, &raw.server)?,
        identity,
        router: Router::new(routes, ClassId(0), path_rules),
        classes,
        tiers,
        headers: HeaderOptions {
            ietf: raw.headers.ietf,
            annotate_upstream: raw.headers.annotate_upstream,
        },
        jobs,
        max_body,
        state: state::build_state(src, raw.state.as_ref())?,
        store: store::build_store(src, raw.store.as_ref())?,
        penalties,
    })
}

fn build_route(
    src: &Source<'_>,
    i: usize,
    r: &raw::RawRoute,
    classes: &mut Vec<String>,
    path_rules: &PathRules,
) -> Result<Route, ConfigError> {
    let field = format!("route[{i}]");
    let pattern = PathPattern::parse(r.path.get_ref(), path_rules)
        .map_err(|m| src.at(format!("{field}.path"), r.path.span(), m))?;
    let method_list: Vec<&Spanned<String>> = match (&r.method, &r.methods) {
        (Some(_), Some(_)) => {
            return Err(src.at(
                format!("{field}.method"),
                r.path.span(),
                "give method or methods, not both",
            ))
        }
        (Some(m), None) => vec![m],
        (None, Some(ms)) => ms.iter().collect(),
        (None, None) => vec![],
    };
    let mut methods = Vec::new();
    for m in method_list {
        let method =
            Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()).map_err(|_| {
                src.at(
                    format!("{field}.method"),
                    m.span(),
                    format!("{:?} is not an HTTP method", m.get_ref()),
                )
            })?;
        methods.push(method);
    }
    if r.class.is_empty() || r.class == "*" {
        return Err(src.at(
            format!("{field}.class"),
            r.path.span(),
            "a class needs a name other than \"*\"",
        ));
    }
    let class = class_named(classes, &r.class);
    Ok(Route {
        methods: (!methods.is_empty()).then_some(methods),
        pattern,
        class,
        by_body: body_classes(src, &field, r, classes)?,
    })
}

/// The id of class `name`, registering it when it is new.
fn class_named(classes: &mut Vec<String>, name: &str) -> ClassId {
    let i = match classes.iter().position(|c| c == name) {
        Some(i) => i,
        None => {
            classes.push(name.to_owned());
            classes.len() - 1
        }
    };
    ClassId(i as u16)
}

/// A route's `body_pointer` and `body_classes`, which come together.
fn body_classes(
    src: &Source<'_>,
    field: &str,
    r: &raw::RawRoute,
    classes: &mut Vec<String>,
) -> Result<Option<BodyClasses>, ConfigError> {
    let (pointer, table) = match (&r.body_pointer, &r.body_classes) {
        (None, None) => return Ok(None),
        (Some(p), Some(t)) => (p, t),
        (Some(p), None) => {
            let message = "needs body_classes (value -> class) beside it";
            return Err(src.at(format!("{field}.body_pointer"), p.span(), message));
        }
        (None, Some(t)) => {
            let message = "needs body_pointer (where the value is read) beside it";
            return Err(src.at(format!("{field}.body_classes"), t.span(), message));
        }
    };
    if !pointer.get_ref().starts_with('/') {
        let message = format!(
            "{:?} is not a JSON pointer (like \"/task_type\")",
            pointer.get_ref()
        );
        return Err(src.at(format!("{field}.body_pointer"), pointer.span(), message));
    }
    if table.get_ref().is_empty() {
        let message = "must map at least one value to a class";
        return Err(src.at(format!("{field}.body_classes"), table.span(), message));
    }
    let mut by_value = HashMap::new();
    for (value, class) in table.get_ref() {
        if class.is_empty() || class == "*" {
            let message = format!("{value:?}: a class needs a name other than \"*\"");
            return Err(src.at(format!("{field}.body_classes"), table.span(), message));
        }
        by_value.insert(value.clone(), class_named(classes, class));
    }
    let unreadable = match &r.unreadable_class {
        Some(c) if c.get_ref().is_empty() || c.get_ref() == "*" => {
            let message = "a class needs a name other than \"*\"";
            return Err(src.at(format!("{field}.unreadable_class"), c.span(), message));
        }
        Some(c) => Some(class_named(classes, c.get_ref())),
        None => None,
    };
    Ok(Some(BodyClasses {
        pointer: pointer.get_ref().clone(),
        by_value,
        unreadable,
    }))
}

pub(crate) fn duration(
    src: &Source<'_>,
    field: &str,
    v: Option<&Spanned<String>>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = v.map_or(default, |s| s.get_ref().as_str());
    let d = humantime::parse_duration(text).map_err(|e| {
        let msg = format!("{text:?} is not a duration like \"2s\" or \"500ms\": {e}");
        v.map_or_else(
            || invalid(field, msg.clone()),
            |s| src.at(field, s.span(), msg.clone()),
        )
    })?;
    if d.is_zero() {
        let msg = "must be longer than zero";
        return Err(v.map_or_else(|| invalid(field, msg), |s| src.at(field, s.span(), msg)));
    }
    Ok(d)
}

fn build_identity(
    src: &Source<'_>,
    raw: &RawConfig,
    tiers: &mut Vec<Tier>,
    classes: &[String],
) -> Result<IdentityConfig, ConfigError> {
    let id = &raw.identity;
    if tiers.is_empty() {
        // No tiers at all: an unlimited proxy still needs one tier to put callers in.
        tiers.push(Tier::new(
            "default".into(),
            vec![Box::default(); classes.len()],
        ));
    }
    // `at`: the file the name was written in (the config, or the accounts file).
    let tier_in = |at: &Source<'_>, field: &str, name: &Spanned<String>| {
        tiers
            .iter()
            .position(|t| t.name == *name.get_ref())
            .map(|i| TierId(i as u16))
            .ok_or_else(|| {
                let known: Vec<&str> = tiers.iter().map(|t| t.name.as_str()).collect();
                at.at(
                    field,
                    name.span(),
                    format!(
                        "unknown tier {:?} (tiers: {})",
                        name.get_ref(),
                        known.join(", ")
                    ),
                )
            })
    };
    let tier_of = |field: &str, name: &Spanned<String>| tier_in(src, field, name);
    let default_tier = match &id.default_tier {
        Some(t) => Some(tier_of("identity.default_tier", t)?),
        None if tiers.len() == 1 => Some(TierId(0)),
        None => None,
    };
    let need_default = |field: &str, span: std::ops::Range<usize>| {
        default_tier.ok_or_else(|| {
            src.at(
                field,
                span,
                "needs identity.default_tier (there are several tiers)",
            )
        })
    };
    let unknown_keys = match id
        .unknown_keys
        .as_ref()
        .map(|v| (v.get_ref().as_str(), v.span()))
    {
        None => match default_tier {
            Some(t) => UnknownKeys::DefaultTier(t),
            None => UnknownKeys::Reject,
        },
        Some(("default_tier", span)) => {
            UnknownKeys::DefaultTier(need_default("identity.unknown_keys", span)?)
        }
        Some(("reject", _)) => UnknownKeys::Reject,
        Some((other, span)) => {
            return Err(src.at(
                "identity.unknown_keys",
                span,
                format!("{other:?}: expected \"default_tier\" or \"reject\""),
            ))
        }
    };
    let anonymous = match id
        .anonymous
        .as_ref()
        .map(|v| (v.get_ref().as_str(), v.span()))
    {
        None | Some(("reject", _)) => Anonymous::Reject,
        Some(("client_ip", span)) => Anonymous::ClientIp(need_default("identity.anonymous", span)?),
        Some((other, span)) => {
            return Err(src.at(
                "identity.anonymous",
                span,
                format!("{other:?}: expected \"reject\" or \"client_ip\""),
            ))
        }
    };
    let mut accounts = HashMap::default();
    for (key, tier) in &raw.accounts {
        accounts.insert(
            AccountId::from_key(key.as_bytes()),
            tier_of(&format!("accounts.{key:?}"), tier)?,
        );
    }
    for (i, acct) in raw.account.iter().enumerate() {
        if let Some(tier) = &acct.tier {
            let tier = tier_of(&format!("account[{i}].tier"), tier)?;
            accounts.insert(AccountId::from_key(acct.key.as_bytes()), tier);
        }
    }
    let mut names: HashMap<AccountId, String, _> = raw
        .account_names
        .iter()
        .map(|(key, name)| (AccountId::from_key(key.as_bytes()), name.clone()))
        .collect();
    let accounts_file = match &id.accounts_file {
        Some(path) => {
            let (text, file) = read_accounts_file(src, path)?;
            for (key, name) in &file.account_names {
                names.insert(AccountId::from_key(key.as_bytes()), name.clone());
            }
            let at = Source::new(&text);
            for (key, name) in &file.accounts {
                let field = format!("accounts.{key:?}");
                let tier = tier_in(&at, &field, name).map_err(|e| in_file(path, e))?;
                if accounts
                    .insert(AccountId::from_key(key.as_bytes()), tier)
                    .is_some()
                {
                    let message = "also given a tier in the config file; give it in one place";
                    return Err(in_file(path, at.at(field, name.span(), message)));
                }
            }
            Some(PathBuf::from(path.get_ref()))
        }
        None => None,
    };
    Ok(IdentityConfig {
        accounts_file,
        sources: key_sources(src, id.sources.as_deref())?,
        accounts,
        names,
        unknown_keys,
        anonymous,
        trusted_proxies: id
            .trusted_proxies
            .iter()
            .map(|p| {
                IpNet::parse(p.get_ref())
                    .map_err(|m| src.at("identity.trusted_proxies", p.span(), m))
            })
            .collect::<Result<_, _>>()?,
    })
}

/// Reads and parses `identity.accounts_file` (relative paths are from the working directory).
fn read_accounts_file(
    src: &Source<'_>,
    path: &Spanned<String>,
) -> Result<(String, RawAccountsFile), ConfigError> {
    let text = std::fs::read_to_string(path.get_ref()).map_err(|e| {
        let message = format!("cannot read {:?}: {e}", path.get_ref());
        src.at("identity.accounts_file", path.span(), message)
    })?;
    let file = parse_raw(&Source::new(&text), &text).map_err(|e| in_file(path, e))?;
    Ok((text, file))
}

/// An error inside the accounts file, named as such:
/// `line 3: identity.accounts_file.accounts."k": … (in accounts.toml)`.
fn in_file(path: &Spanned<String>, e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Invalid(mut located) => {
            located.field = format!("identity.accounts_file.{}", located.field);
            located.message = format!("{} (in {})", located.message, path.get_ref());
            ConfigError::Invalid(located)
        }
        other => other,
    }
}

fn key_sources(
    src: &Source<'_>,
    sources: Option<&[Spanned<String>]>,
) -> Result<Vec<KeySource>, ConfigError> {
    let Some(sources) = sources else {
        return Ok(vec![
            KeySource::Header(HeaderName::from_static("x-api-key")),
            KeySource::Bearer,
        ]);
    };
    if sources.is_empty() {
        return Err(invalid("identity.sources", "must list at least one source"));
    }
    sources
        .iter()
        .map(|s| match s.get_ref().to_ascii_lowercase().as_str() {
            "bearer" | "authorization" => Ok(KeySource::Bearer),
            name => HeaderName::from_bytes(name.as_bytes())
                .map(KeySource::Header)
                .map_err(|_| {
                    src.at(
                        "identity.sources",
                        s.span(),
                        format!("{:?} is not a header name or \"bearer\"", s.get_ref()),
                    )
                }),
        })
        .collect()
}
