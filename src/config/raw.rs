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
    /// API key -> the name the status page shows for the account (never the key).
    #[serde(default)]
    pub account_names: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: RawHeaders,
    /// Job classes: held in per-account queues under concurrency caps.
    #[serde(default)]
    pub jobs: Vec<Spanned<RawJob>>,
    /// How floodgate learns that an asynchronous task finished.
    pub tasks: Option<RawTasks>,
    /// Per-account settings beyond the tier (queues, upstream accounts).
    #[serde(default)]
    pub account: Vec<RawAccount>,
    /// Upstream accounts jobs can run on (their credentials and caps).
    #[serde(default)]
    pub upstream_account: Vec<RawUpstreamAccount>,
    /// Per-class settings, `[classes.NAME]`: the class must come from a route or the default.
    #[serde(default)]
    pub classes: BTreeMap<String, Spanned<RawClass>>,
    /// Where the memory store keeps its state across restarts; absent = not kept.
    pub state: Option<RawState>,
    /// What takes an upstream account out of rotation: `[upstream_health]`.
    pub upstream_health: Option<RawUpstreamHealth>,
    /// What an incorrect task is: `[incorrect_tasks]` and its `[[incorrect_tasks.match]]` rules.
    pub incorrect_tasks: Option<Spanned<RawIncorrectTasks>>,
    /// How a job's mode is read, which classes count relax jobs and which earn them.
    pub relax: Option<Spanned<RawRelax>>,
    /// Where limit counters live: memory (default) or Redis, shared by replicas.
    pub store: Option<RawStore>,
    /// One line per request; absent = off.
    pub access_log: Option<RawAccessLog>,
}

/// `[access_log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// A file (appended to), "stdout" (the default) or "stderr".
    pub path: Option<Spanned<String>>,
    /// "json" (the default) or "common".
    pub format: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// "memory" or "redis".
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub url: Option<Spanned<String>>,
    /// Per-operation timeout, e.g. "50ms".
    pub timeout: Option<Spanned<String>>,
    /// "fail_open", "fail_closed" or "local".
    pub on_failure: Option<Spanned<String>>,
    /// Replicas sharing the quota, for the "local" policy's share.
    pub replicas: Option<u32>,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: Option<u32>,
    /// How long the breaker stays open before Redis is tried again.
    pub breaker_cooldown: Option<Spanned<String>>,
    /// How long a shared job slot lease lives without renewal.
    pub lease_ttl: Option<Spanned<String>>,
    /// Redis ACL user (instead of one in the URL).
    pub username: Option<Spanned<String>>,
    /// A file holding the Redis password (instead of one in the URL).
    pub password_file: Option<Spanned<String>>,
    /// PEM CA certificates trusted for a `rediss://` server, instead of the bundled roots.
    pub tls_ca_file: Option<Spanned<String>>,
    /// Nodes of a Redis Cluster (`redis://host:port`), instead of one server's `url`.
    pub cluster_nodes: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    /// PEM file of extra certificate authorities for `https://` upstreams.
    pub upstream_ca_file: Option<Spanned<String>>,
    pub admin: Option<Spanned<String>>,
    pub workers: Option<usize>,
    pub upstream_connect_timeout: Option<Spanned<String>>,
    pub upstream_timeout: Option<Spanned<String>>,
    /// Longest pause in writing the request to the upstream.
    pub upstream_send_timeout: Option<Spanned<String>>,
    /// Longest pause in the upstream's response body.
    pub upstream_body_timeout: Option<Spanned<String>>,
    /// Longest pause in the client's request body.
    pub client_body_timeout: Option<Spanned<String>>,
    /// Longest time without progress in writing a response to the client.
    pub send_timeout: Option<Spanned<String>>,
    /// How much of an HTTP/2 request body floodgate reads and discards after answering the
    /// request itself, so the stream ends cleanly.
    pub discard_body_limit: Option<Spanned<String>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub max_idle_upstream_connections: Option<usize>,
    /// How much of a job's request body (and of a task answer) is read to look inside it.
    pub inspect_limit: Option<Spanned<String>>,
    /// A keep-alive client connection with no request for this long is closed.
    pub idle_timeout: Option<Spanned<String>>,
    /// How long in-flight requests get to finish after SIGTERM.
    pub shutdown_deadline: Option<Spanned<String>>,
    /// Client connections open at once, over all workers; more wait in the kernel's backlog.
    pub max_connections: Option<Spanned<usize>>,
    /// Largest request head (request line and headers), e.g. "64KB".
    pub max_header_bytes: Option<Spanned<String>>,
    /// Most header fields a request may carry.
    pub max_header_count: Option<Spanned<usize>>,
    /// Reload the config when the file changes (its modification time is checked every second).
    #[serde(default)]
    pub watch_config: bool,
    /// Bearer token the admin listener's private endpoints (`/usage`, ...) ask for.
    pub admin_token: Option<Spanned<String>>,
    /// A file holding that token (a mounted Kubernetes Secret), instead of `admin_token`.
    pub admin_token_file: Option<Spanned<String>>,
    /// TLS on the proxy listener.
    pub tls: Option<Spanned<RawTls>>,
    /// Serve HTTP/2 with prior knowledge (h2c) on a clear-text listener.
    #[serde(default)]
    pub h2c: bool,
}

/// `[server.tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: Option<Spanned<String>>,
    /// PEM private key of that certificate.
    pub key_file: Option<Spanned<String>>,
    /// PEM CA certificates; when set, clients must present a certificate one of them signed.
    pub client_ca_file: Option<Spanned<String>>,
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
    /// A TOML file with more `[accounts]` (API key -> tier), read with the config and again on
    /// every reload.
    pub accounts_file: Option<Spanned<String>>,
}

/// The accounts file: an `[accounts]` table, and optionally `[account_names]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccountsFile {
    /// API key -> tier name.
    #[serde(default)]
    pub accounts: BTreeMap<String, Spanned<String>>,
    /// API key -> the name the status page shows for the account.
    #[serde(default)]
    pub account_names: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub default_class: Option<String>,
    /// Match paths case-insensitively (default true).
    pub case_insensitive: Option<bool>,
    /// `"decode"` (default), `"reject"` or `"keep"`: what `%2F` / `%5C` mean to the matcher.
    pub escaped_slashes: Option<Spanned<String>>,
    /// `"ignore"` (default) or `"keep"`: `;params` in a path segment.
    pub path_parameters: Option<Spanned<String>>,
    /// `"reject"` (default) or `"forward"`: NUL and control characters, raw backslashes and
    /// broken escapes in a path.
    pub invalid_paths: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// `/exact`, `/prefix/*` or `/template/{id}`.
    pub path: Spanned<String>,
    pub method: Option<Spanned<String>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub class: String,
    /// JSON pointer into the request body whose value picks the class (`body_classes`), for
    /// unified APIs where one URL serves many task types.
    pub body_pointer: Option<Spanned<String>>,
    /// Value at `body_pointer` -> class; any other value (or none) keeps `class`.
    pub body_classes: Option<Spanned<BTreeMap<String, String>>>,
    /// The class of a body too long to read whole (over `inspect_limit`); omitted: such a body
    /// is refused (413), so it cannot slip into a looser class than the one it names.
    pub unreadable_class: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    #[serde(default)]
    pub limits: Vec<Spanned<RawLimit>>,
    /// Concurrent jobs per account of this tier.
    pub concurrency: Option<u32>,
    /// Jobs an account may have waiting.
    pub max_queue: Option<usize>,
    /// Longest a job waits for a slot.
    pub max_wait: Option<Spanned<String>>,
    /// Upstream accounts every account of this tier shares (a pool).
    #[serde(default)]
    pub upstream_accounts: Vec<Spanned<String>>,
    /// The tier's daily incorrect-task allowance and what happens past it.
    pub incorrect_tasks: Option<Spanned<RawTierIncorrect>>,
    /// The tier's daily relax-job allowance and what happens past it.
    pub relax: Option<Spanned<RawTierRelax>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTierIncorrect {
    /// Incorrect tasks a day before `action` applies.
    pub per_day: u32,
    /// "block" (job submissions get 429 until 00:00 UTC) or "flag" (forwarded, marked no-refund).
    pub action: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTierRelax {
    /// Relax jobs a day, before what successful fast jobs earn.
    pub per_day: u32,
    /// "surcharge" (forwarded, marked with a cost multiplier) or "reject" (429 until 00:00 UTC).
    pub action: Spanned<String>,
    /// The surcharge's multiplier; default 2.
    pub cost_multiplier: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIncorrectTasks {
    /// Job classes whose answers are judged; omitted = every job class.
    pub classes: Option<Vec<Spanned<String>>>,
    /// The rules: an answer matching any of them is an incorrect task.
    #[serde(default, rename = "match")]
    pub matches: Vec<Spanned<RawMatch>>,
    /// Count what the tiers' actions would do (`floodgate_would_penalise_total`), never do it.
    #[serde(default)]
    pub shadow: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// "response" (the job's own answer; default) or "task" (a get-task answer showing a
    /// failed task).
    pub on: Option<Spanned<String>>,
    /// Any of these statuses.
    #[serde(default)]
    pub statuses: Vec<Spanned<u16>>,
    /// JSON pointer to the field `values` and `contains` look at; omitted = the whole body.
    pub pointer: Option<Spanned<String>>,
    /// The field's value is one of these (strings or numbers).
    #[serde(default)]
    pub values: Vec<RawScalar>,
    /// The field (or body) contains one of these, ignoring case.
    #[serde(default)]
    pub contains: Vec<String>,
}

/// A string or a number, compared as text.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawScalar {
    Text(String),
    Number(i64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelax {
    /// JSON pointer to the job mode in a job's request body, e.g. "/process_mode".
    pub mode_pointer: Spanned<String>,
    /// The mode of a job whose body names none: "fast" (default), "turbo" or "relax".
    pub default_mode: Option<Spanned<String>>,
    /// The mode of a job whose body is too long to read whole: "relax" (default, the costlier
    /// treatment), "fast" or "turbo".
    pub unreadable_mode: Option<Spanned<String>>,
    /// Job classes whose relax jobs count against the allowance; omitted = every job class.
    pub classes: Option<Vec<Spanned<String>>>,
    /// Job classes whose successful fast or turbo jobs earn one relax job that day.
    #[serde(default)]
    pub earn_classes: Vec<Spanned<String>>,
    /// Count what the tiers' actions would do (`floodgate_would_penalise_total`), never do it.
    #[serde(default)]
    pub shadow: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    pub classes: Vec<Spanned<String>>,
    /// "sync" (slot held until the response is sent) or "task" (until the task is done).
    pub mode: Option<Spanned<String>>,
    /// A slot is released at the latest after this long.
    pub max_job_time: Option<Spanned<String>>,
    /// JSON pointer, in the request body, to the task a follow-up job acts on.
    pub follow_up_pointer: Option<String>,
    /// JSON pointer, in a task-mode create response, to the new task's id.
    pub task_id_pointer: Option<String>,
    /// Count what the queue would do (`floodgate_would_queue_total`) but forward at once.
    #[serde(default)]
    pub shadow: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTasks {
    /// The get-task endpoint, a template with `{id}`, e.g. "/mj/task/{id}/fetch".
    pub get_path: Spanned<String>,
    pub get_method: Option<Spanned<String>>,
    /// JSON pointer to the task status in a get-task response.
    pub status_pointer: String,
    /// Status values that end a task.
    pub terminal: Vec<String>,
    /// Poll the get-task endpoint this often; omitted = only watch responses passing through.
    pub poll_interval: Option<Spanned<String>>,
    /// The terminal status values of a task that succeeded (the other terminal ones failed);
    /// needed to earn relax jobs, and to judge failed tasks, in task mode.
    pub success: Option<Vec<Spanned<String>>>,
    /// How long replicas sharing Redis remember which upstream account ran a task, for its
    /// follow-ups.
    pub follow_up_ttl: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    pub key: String,
    pub tier: Option<Spanned<String>>,
    pub concurrency: Option<u32>,
    pub max_queue: Option<usize>,
    pub max_wait: Option<Spanned<String>>,
    #[serde(default)]
    pub upstream_accounts: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamAccount {
    pub name: Spanned<String>,
    /// Header carrying the credential, e.g. "authorization" or "mj-api-secret".
    pub credential_header: Option<Spanned<String>>,
    pub credential: Option<Spanned<String>>,
    /// A file holding the credential (a mounted Secret), instead of `credential`.
    pub credential_file: Option<Spanned<String>>,
    pub concurrency: Option<u32>,
    /// Its own origin, when it is not the server upstream.
    pub base_url: Option<Spanned<String>>,
}

/// `[upstream_health]`: the rules that rest or disable an upstream account.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamHealth {
    /// Answers that disable the account until an operator enables it.
    pub disable_statuses: Option<Vec<Spanned<u16>>>,
    /// Texts in an error answer's body that disable the account.
    #[serde(default)]
    pub disable_body_contains: Vec<Spanned<String>>,
    /// Failures in a row (5xx, timeouts, connection errors) that rest it; 0 = never.
    pub failures_to_rest: Option<u32>,
    /// The first rest for failures, doubled for each further failure.
    pub rest: Option<Spanned<String>>,
    pub max_rest: Option<Spanned<String>>,
}

/// An account's runtime limits (the accounts API), as `limits = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccountLimits {
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
    /// Requests per UTC calendar month (resets at 00:00 UTC on the 1st).
    pub per_month: Option<u32>,
    /// At most one request per this interval, e.g. "3s".
    pub interval: Option<Spanned<String>>,
    /// Decide and count (`floodgate_would_limit_total`) but do not refuse: how a new limit is
    /// rolled out safely.
    #[serde(default)]
    pub shadow: bool,
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
    /// Send this class's body-less GET and HEAD requests pipelined on the worker's shared
    /// upstream connection.
    #[serde(default)]
    pub pipeline: bool,
    /// Units a request of this class takes from every window of its limits (default 1).
    pub cost: Option<Spanned<u32>>,
    /// A JSON pointer into the request body whose whole number is the request's cost, instead
    /// of a fixed `cost`.
    pub cost_from: Option<Spanned<String>>,
    /// With `cost_from`: the most a request is charged (a larger value is charged this).
    pub max_cost: Option<Spanned<u32>>,
    /// With `cost_from`: what a body that gives no usable value is charged (default `max_cost`).
    pub default_cost: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// The state file; its directory must exist and be writable.
    pub file: Spanned<String>,
    /// How often the state is written while running, e.g. "5s".
    pub save_interval: Option<Spanned<String>>,
    /// How often changed accounts are appended to the journal ("200ms", at most "1s"), or
    /// "strict" or "off".
    pub journal: Option<Spanned<String>>,
}
