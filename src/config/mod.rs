//! Configuration: the TOML file parsed ([`raw`]) and then validated into typed values.
//!
//! Parse, don't validate: everything the proxy reads at request time is already resolved here —
//! class and tier names become indices, durations become [`Duration`]s, keys become
//! [`AccountId`]s — and every error names the field and, where known, the line.

mod access_log;
mod admin_token;
mod classes;
mod error;
mod identity;
mod jobs;
mod limits;
mod path_rules;
mod penalties;
mod raw;
mod routes;
mod secret;
mod server;
mod state;
mod store;
mod summary;
mod tls;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

pub use access_log::{AccessLogConfig, LogDestination, LogFormat};
pub use admin_token::AdminToken;
pub use classes::{format_size, ClassFacts, ClassSettings};
use error::{invalid, Source};
pub use error::{ConfigError, Located};
use identity::build_identity;
use raw::{RawAccountsFile, RawConfig};
use routes::build_route;
pub use secret::Secret;
pub(crate) use server::build_upstream;
pub use server::{restart_only_changes, ServerConfig, UpstreamTarget};
pub use state::{Journal, StateConfig};
pub use store::{RedisAuth, StoreConfig};
pub use tls::ListenerTls;

use crate::classify::{ClassId, Router};
use crate::identity::{IdentityConfig, TierId};
use crate::limits::{BodyCost, Tier};
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
    /// Per-class settings (`[classes.NAME]`), indexed by [`ClassId`].
    pub class_settings: ClassSettings,
    /// The memory store's state file; `None` = state is not kept across restarts.
    pub state: Option<StateConfig>,
    /// Where limit counters live.
    pub store: StoreConfig,
    /// Incorrect-task and relax accounting: what counts, and each tier's allowances.
    pub penalties: PenaltiesConfig,
    /// One line per request (`[access_log]`); `None`: off.
    pub access_log: Option<AccessLogConfig>,
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
    /// The files this config was read from besides the config file itself — the accounts file
    /// and the listener's certificate files — which a running floodgate watches for changes.
    pub fn read_files(&self) -> Vec<PathBuf> {
        let tls = self.server.tls.iter().flat_map(|t| t.files());
        let accounts = self.identity.accounts_file.as_deref();
        accounts
            .into_iter()
            .chain(tls)
            .map(Path::to_path_buf)
            .collect()
    }

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

    /// `class`'s settings that every request reads, in one lookup.
    #[inline]
    pub fn class_facts(&self, class: ClassId) -> &ClassFacts {
        self.class_settings
            .facts
            .get(class.0 as usize)
            .unwrap_or(&ClassFacts::DEFAULT)
    }

    /// Whether a request of `class` is decided from its head alone: not a job, and not costed
    /// from its body.
    pub fn decided_by_head(&self, class: ClassId) -> bool {
        self.class_facts(class).decided_by_head
    }

    /// The largest request body `class` accepts, if it has a limit.
    pub fn max_body(&self, class: ClassId) -> Option<u64> {
        self.class_facts(class).max_body
    }

    /// Units a request of `class` takes from every window of its limits; for a class whose
    /// cost is read from the body ([`Config::cost_from`]), what a body not read is charged.
    pub fn cost(&self, class: ClassId) -> u32 {
        self.class_facts(class).cost
    }

    /// How a request of `class` reads its cost from the body, when it does (`cost_from`).
    pub fn cost_from(&self, class: ClassId) -> Option<&BodyCost> {
        self.class_settings
            .cost_from
            .get(class.0 as usize)
            .and_then(Option::as_ref)
    }

    /// Whether `class`'s body-less GET and HEAD requests go pipelined upstream.
    pub fn pipelined(&self, class: ClassId) -> bool {
        self.class_facts(class).pipelined
    }
}

impl Config {
    /// An account's runtime limits (the accounts API's `"limits"`: entries in the shape of
    /// `[[tiers.NAME.limits]]`, as JSON) checked like the config's and laid over `base`, the
    /// account's tier: a rule for the same class and window replaces the tier's (its counter,
    /// and so its open window, is the same one), others are added. An error names the entry's
    /// field, e.g. `limits[0].per_minute`.
    pub fn account_limits(&self, base: &Tier, limits: &serde_json::Value) -> Result<Tier, Located> {
        let as_toml = toml::Value::try_from(serde_json::json!({ "limits": limits }))
            .and_then(|v| toml::to_string(&v))
            .map_err(|e| Located {
                field: "limits".into(),
                line: None,
                message: format!("must be a list of limit entries without nulls: {e}"),
            })?;
        let src = Source::new(&as_toml);
        let unlocated = |e: ConfigError| match e {
            ConfigError::Invalid(l) => Located {
                field: l.field.replacen("tiers.account.", "", 1),
                line: None,
                message: l.message,
            },
            ConfigError::Read { .. } => Located {
                field: "limits".into(),
                line: None,
                message: e.to_string(),
            },
        };
        let raw: raw::RawAccountLimits = parse_raw(&src, &as_toml).map_err(unlocated)?;
        let over = limits::build_tier(
            &src,
            "account",
            &raw.limits,
            &self.classes,
            &mut std::collections::HashMap::new(),
        )
        .map_err(unlocated)?;
        let tier = base.overlaid(&over);
        // As the config refuses a class cost above a limit: no request could be admitted.
        for (c, name) in self.classes.iter().enumerate() {
            let cost = self.cost(ClassId(c as u16));
            if let Some(rule) = tier
                .rules(ClassId(c as u16))
                .iter()
                .find(|r| r.limit < cost)
            {
                return Err(Located {
                    field: "limits".into(),
                    line: None,
                    message: format!(
                        "class {name:?} costs {cost} units a request, more than the {} limit \
                         of {}: no request of it could be admitted",
                        rule.kind.name(),
                        rule.limit
                    ),
                });
            }
        }
        Ok(tier)
    }
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
        let (save_interval, journal) = raw
            .state
            .take()
            .map_or((None, None), |s| (s.save_interval, s.journal));
        raw.state = Some(raw::RawState {
            file: spanned(file),
            save_interval,
            journal,
        });
    }
}

fn build(src: &Source<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let path_rules = path_rules::path_rules(src, &raw.routing)?;
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
    let mut class_settings = classes::class_settings(src, &raw.classes, &classes)?;
    for (c, facts) in class_settings.facts.iter_mut().enumerate() {
        facts.decided_by_head =
            jobs.class(ClassId(c as u16)).is_none() && class_settings.cost_from[c].is_none();
    }
    classes::check_costs(src, &raw.classes, &classes, &tiers)?;
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
        class_settings,
        state: state::build_state(src, raw.state.as_ref())?,
        store: store::build_store(src, raw.store.as_ref())?,
        penalties,
        access_log: access_log::access_log(src, raw.access_log.as_ref())?,
    })
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
