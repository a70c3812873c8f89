//! The TOML file as written: a serde mirror of it, with no meaning attached yet.
//!
//! Fields whose value can be wrong in ways serde cannot see carry their position
//! ([`Spanned`]), so validation errors name the line as well as the field.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub tiers: BTreeMap<String, RawTier>,
    /// API key -> tier name.
    #[serde(default)]
    pub accounts: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub headers: RawHeaders,
    /// Per-class settings, `[classes.NAME]`: the class must come from a route or the default.
    #[serde(default)]
    pub classes: BTreeMap<String, Spanned<RawClass>>,
    /// Where the memory store keeps its state across restarts; absent = not kept.
    pub state: Option<RawState>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    pub admin: Option<Spanned<String>>,
    pub workers: Option<usize>,
    pub upstream_connect_timeout: Option<Spanned<String>>,
    pub upstream_timeout: Option<Spanned<String>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub max_idle_upstream_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Where the API key is read from, in order: header names, or "bearer".
    pub sources: Option<Vec<Spanned<String>>>,
    pub default_tier: Option<Spanned<String>>,
    /// "default_tier" (unknown keys get the default tier) or "reject" (401).
    pub unknown_keys: Option<Spanned<String>>,
    /// "reject" (401) or "client_ip" (requests without a key are counted per client address).
    pub anonymous: Option<Spanned<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub default_class: Option<String>,
    #[serde(default)]
    pub case_insensitive: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// `/exact`, `/prefix/*` or `/template/{id}`.
    pub path: Spanned<String>,
    pub method: Option<Spanned<String>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub class: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    #[serde(default)]
    pub limits: Vec<Spanned<RawLimit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    /// Class names, or `["*"]` for every class.
    pub classes: Vec<Spanned<String>>,
    #[serde(default)]
    pub except: Vec<Spanned<String>>,
    /// One counter for all the listed classes together (account-wide when classes = ["*"]),
    /// instead of one per class.
    #[serde(default)]
    pub shared: bool,
    pub per_second: Option<u32>,
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
    /// At most one request per this interval, e.g. "3s".
    pub interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    /// Also emit the IETF `RateLimit-Policy` / `RateLimit` fields.
    #[serde(default)]
    pub ietf: bool,
    /// Tell the upstream the resolved tier and class (`x-floodgate-tier`, `x-floodgate-class`).
    #[serde(default)]
    pub annotate_upstream: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClass {
    /// Largest request body, e.g. "10MB" (units are powers of 1024).
    pub max_body: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// The state file; its directory must exist and be writable.
    pub file: Spanned<String>,
    /// How often the state is written while running, e.g. "5s".
    pub save_interval: Option<Spanned<String>>,
}
