//! A request's life, top to bottom: hygiene -> identify -> classify -> size check -> decide
//! (enforced, then shadow; for a job: read the body prefix, then penalties and limits together)
//! -> (queue) -> forward -> judge the answer -> headers.
//!
//! Everything here is the thin I/O edge around pure parts: identity, classification and the limit
//! decision take plain values and return plain values; the store does the atomic bookkeeping;
//! the job pools hand out slots; [`upstream`] moves bytes.

mod admission;
pub mod client_body;
pub mod error;
pub mod header_rewrite;
pub mod inspect;
mod jobs;
pub mod request_body;
pub mod request_checks;
pub mod respond;
mod response_body;
pub mod upload;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, HOST};
use http::uri::Uri;
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;

use hyper::upgrade::OnUpgrade;

pub use client_body::{ClientBody, Unread};
use header_rewrite::Forwarded;
pub use request_body::RequestBody;
pub use response_body::ProxyBody;
use upload::UploadBody;
use upstream::{ForwardBody, UpstreamBody, UpstreamClient, Upstreams};

use crate::access_log::{self, AccessLog};
use crate::classify::{normalize_path, BodyClasses, ClassId, PathRules};
use crate::config::Config;
use crate::identity::Caller;
use crate::limits::{headers as rl_headers, Decision, Refusal, Usage};
use crate::penalties::Marks;
use crate::queue::UpstreamAccount;
use crate::shared::{Policy, Shared};
use crate::store::StoreError;
use error::ProxyError;
use respond::json_response;

/// The seed API's 429 body, byte for byte.
const TOO_MANY_ATTEMPTS: &str = r#"{"message": "Too Many Attempts."}"#;

/// The client end of a connection, with its forwarding fields pre-rendered both ways (a
/// request picks one by whether the peer is a trusted proxy under the config of the moment).
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    untrusted: Forwarded,
    trusted: Forwarded,
}

impl Peer {
    /// A client at `addr`, connected over TLS or not.
    pub fn new(addr: SocketAddr, tls: bool) -> Self {
        let peer = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        let proto = if tls {
            &header_rewrite::HTTPS
        } else {
            &header_rewrite::HTTP
        };
        Self {
            addr,
            untrusted: Forwarded {
                peer: peer.clone(),
                trusted: false,
                proto,
            },
            trusted: Forwarded {
                peer,
                trusted: true,
                proto,
            },
        }
    }

    /// The forwarding fields for a request from this peer.
    fn forwarded(&self, identity: &crate::identity::IdentityConfig) -> &Forwarded {
        if identity.is_trusted(self.addr.ip()) {
            &self.trusted
        } else {
            &self.untrusted
        }
    }
}

/// What the access log keeps of a request as it arrives.
#[derive(Debug)]
struct Arrived {
    at: Instant,
    time_ms: u64,
    method: http::Method,
    version: Version,
    uri: Uri,
}

/// What the access log learns of a request while it is answered.
#[derive(Debug, Default)]
struct Noted {
    caller: Option<Caller>,
    class: Option<ClassId>,
}

/// How long the upstream took to answer (for the access log).
#[derive(Debug, Clone, Copy)]
struct UpstreamTime(Duration);

/// Everything a stage needs to know about the request being served.
struct Ctx<'a> {
    policy: &'a Policy,
    caller: Caller,
    class: ClassId,
    /// What goes into `X-Forwarded-For` / `-Proto`.
    forwarded: &'a Forwarded,
}

/// One worker's proxy: the shared state plus the worker's own upstream connection pools.
pub struct Proxy {
    shared: Arc<Shared>,
    upstreams: Arc<Upstreams>,
    /// Header fields a request may carry (`[server] max_header_count`, fixed at start).
    max_header_count: usize,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, upstreams: Arc<Upstreams>, max_header_count: usize) -> Self {
        Self {
            shared,
            upstreams,
            max_header_count,
        }
    }

    /// Called on the worker thread that runs this proxy: work started on this thread (a
    /// queued job's forward, when a slot frees here) uses this worker's connections.
    pub fn enter_worker(&self) {
        self.upstreams.enter();
    }

    /// The process's metrics (the listener counts connections in them).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.shared.metrics
    }

    /// Answers one client request.
    /// Whether responses carry an access log record ([`access_log::Pending`]).
    pub fn logs_access(&self) -> bool {
        self.shared.access_log.is_some()
    }

    pub async fn handle(&self, req: Request<ClientBody>, peer: &Peer) -> Response<ProxyBody> {
        let Some(log) = &self.shared.access_log else {
            return self.answer(req, peer, None).await;
        };
        let arrived = Arrived {
            at: Instant::now(),
            time_ms: self.shared.clock.now_ms(),
            method: req.method().clone(),
            version: req.version(),
            uri: req.uri().clone(), // shares the request's bytes
        };
        let mut noted = Noted::default();
        let resp = self.answer(req, peer, Some(&mut noted)).await;
        self.with_record(resp, peer, arrived, noted, log)
    }

    /// Sends the access log's record along with the response ([`access_log::Pending`]), for
    /// the listener to finish at the body's end.
    fn with_record(
        &self,
        mut resp: Response<ProxyBody>,
        peer: &Peer,
        arrived: Arrived,
        noted: Noted,
        log: &Arc<AccessLog>,
    ) -> Response<ProxyBody> {
        let policy = self.shared.policy.load();
        let config = &policy.config;
        let upstream = resp.extensions_mut().remove::<UpstreamTime>().map(|t| t.0);
        let status = resp.status().as_u16();
        let decision = access_log::Outcome::of(upstream.is_some(), status);
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        let limited = decision == access_log::Outcome::Limited;
        let limit = header("x-ratelimit-type").filter(|_| limited);
        let queue_wait = header(jobs::X_QUEUE_WAIT_MS.as_str()).and_then(|v| v.parse().ok());
        let raw_path = arrived.uri.path();
        let record = access_log::Record {
            time_ms: arrived.time_ms,
            peer: peer.addr.ip(),
            method: arrived.method,
            version: arrived.version,
            path: normalize_path(raw_path, config.router.rules())
                .map_or_else(|_| raw_path.to_owned(), std::borrow::Cow::into_owned),
            class: noted.class.map(|c| config.class_name(c).to_owned()),
            tier: noted.caller.map(|c| config.tier(c.tier).name.clone()),
            account: noted.caller.map(|c| c.account.short()),
            status,
            decision,
            limit: limit.map(str::to_owned),
            upstream,
            queue_wait: queue_wait.map(Duration::from_millis),
            bytes: 0,
            duration: Duration::ZERO,
        };
        resp.extensions_mut().insert(access_log::Pending {
            record,
            arrived: arrived.at,
            log: log.clone(),
        });
        resp
    }

    /// Answers a request: refused, or forwarded and the upstream's answer. `noted`, when the
    /// access log is on, learns who called and the class.
    async fn answer(
        &self,
        req: Request<ClientBody>,
        peer: &Peer,
        mut noted: Option<&mut Noted>,
    ) -> Response<ProxyBody> {
        #[cfg(feature = "test-hooks")]
        if let Some(resp) = test_hook(req.headers()) {
            return resp;
        }
        let ambiguous = req
            .extensions()
            .get::<request_checks::AmbiguousFraming>()
            .is_some();
        if let Err(e) = request_checks::check(req.headers(), ambiguous, self.max_header_count) {
            return self.refuse(e.into());
        }
        let policy = self.shared.policy.load_full();
        let config = &policy.config;

        let caller = match config.identity.identify(req.headers(), peer.addr.ip()) {
            Ok(caller) => caller,
            Err(e) => return self.refuse(e.into()),
        };
        if let Some(noted) = noted.as_deref_mut() {
            noted.caller = Some(caller);
        }
        let (class, by_body) = match config.router.classify_route(req.method(), req.uri().path()) {
            Ok(route) => route,
            Err(e) => return self.refuse(e.into()),
        };
        let (mut req, class) = match by_body {
            None => (req.map(RequestBody::from), class),
            // Boxed: only routes that read a class from the body carry the read's state.
            Some(rule) => {
                match Box::pin(body_class(req, rule, class, config, self.body_idle())).await {
                    Ok(read) => read,
                    Err(e) => return self.refuse(e),
                }
            }
        };
        if let Some(noted) = noted {
            noted.class = Some(class);
        }
        // Before the limit check: a request refused for its declared size consumes no quota.
        if let Err(e) = upload::check_declared(&req.body().size_hint(), config.max_body(class)) {
            return self.refuse(e.into());
        }
        let ctx = Ctx {
            policy: &policy,
            caller,
            class,
            forwarded: peer.forwarded(&config.identity),
        };

        let watched_task = self.watched_task(&ctx, &req);
        let (usage, result) = match config.jobs.class(class) {
            None => {
                let usage = match self.decide(&ctx).await {
                    Ok(usage) => usage,
                    Err(resp) => return resp,
                };
                let forwarded = match upgrade_asked(&mut req) {
                    // Boxed: a tunnel's setup stays out of every plain request's future.
                    Some(client) => Box::pin(self.forward_upgrade(&ctx, req, client)).await,
                    None => self.forward(&ctx, req).await,
                };
                (usage, forwarded)
            }
            // Boxed: a job's stages hold kilobytes of state that a plain request's future
            // would otherwise carry (and copy) too.
            Some(job) => match Box::pin(self.job(&ctx, req, job)).await {
                Ok(ran) => ran,
                Err(resp) => return resp,
            },
        };
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => self.failed(&ctx, e),
        };
        if let Some(task) = watched_task {
            resp = self.observe_task(&ctx, &task, resp).await;
        }
        if let Some(usage) = usage {
            rl_headers::write_usage(resp.headers_mut(), &usage, config.headers.ietf);
        }
        resp
    }

    /// A job's stages: read its body prefix, admit it (penalties and limits together), queue
    /// and run it. `Err`: the finished refusal.
    async fn job(
        &self,
        ctx: &Ctx<'_>,
        req: Request<RequestBody>,
        job: &crate::queue::JobClass,
    ) -> Result<(Option<Usage>, Result<Response<ProxyBody>, ProxyError>), Response<ProxyBody>> {
        // A job's body prefix is read once, here: its mode decides the relax check, and the
        // job stage reuses it (follow-up affinity, retries).
        let submission = match jobs::Submission::read(req, ctx, self.body_idle()).await {
            Ok(s) => s,
            Err(e) => return Err(self.refuse(e)),
        };
        let (usage, marks, receipt) = self.admit_job(ctx, submission.facts).await?;
        let ran = self.run_job(ctx, submission, marks, job).await;
        // Turned away by the queue: the 429 or 503 leaves the account's counters as they were.
        let usage = match &ran {
            Err(ProxyError::Queue(_)) => self.give_back(ctx, &receipt, usage).await,
            _ => usage,
        };
        Ok((usage, ran))
    }

    /// Checks and consumes the caller's limits for its class. `Ok(None)`: the class is not
    /// limited for this tier; `Err`: the finished 429 (or store failure) response.
    async fn decide(&self, ctx: &Ctx<'_>) -> Result<Option<Usage>, Response<ProxyBody>> {
        let (policy, caller, class) = (ctx.policy, ctx.caller, ctx.class);
        let rules = policy.config.tier(caller.tier).rules(class);
        let now = self.shared.clock.now_ms();
        if rules.is_empty() {
            policy.handles.admitted(class, caller.tier);
            self.decide_shadow(ctx, now).await;
            return Ok(None);
        }
        match self
            .shared
            .store
            .check_and_consume(caller.account, rules, now)
            .await
        {
            Ok(Decision::Admitted(usage)) => {
                policy.handles.admitted(class, caller.tier);
                self.shared.status.record(caller, class, &usage, now);
                self.decide_shadow(ctx, now).await;
                Ok(Some(usage))
            }
            Ok(Decision::Refused(usage, refusal)) => Err(self.limited(ctx, &usage, &refusal, now)),
            Err(e) => Err(self.store_failed(&e)),
        }
    }

    /// The 429 for a request a limit (or penalty) refused, counted.
    fn limited(
        &self,
        ctx: &Ctx<'_>,
        usage: &Usage,
        refusal: &Refusal,
        now: u64,
    ) -> Response<ProxyBody> {
        let (config, caller, class) = (&ctx.policy.config, ctx.caller, ctx.class);
        ctx.policy.handles.limited(class, caller.tier);
        self.shared.status.record(caller, class, usage, now);
        tracing::debug!(
            account = %caller.account.short(), class = config.class_name(class),
            limit = refusal.kind.name(), retry_after_secs = refusal.retry_after_secs,
            "rate limited"
        );
        self.shared.metrics.requests.limit_hit(
            config.class_name(class),
            &config.tier(caller.tier).name,
            refusal.kind.name(),
        );
        too_many_attempts(usage, refusal, config.headers.ietf)
    }

    /// The 503 for a request whose limit state could not be read.
    fn store_failed(&self, e: &StoreError) -> Response<ProxyBody> {
        tracing::warn!(error = %e, "state store failed");
        let mut resp = json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error": "store_unavailable", "message": "rate limit state unavailable"}"#,
        );
        // The circuit breaker retries the store within about a second.
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        resp
    }

    /// Shadow limits: decided and counted as if enforced, never refusing. They are checked
    /// only for a request the enforced limits admitted (one they refuse is refused whatever
    /// the shadow rules say) and on their own counters, so they take no part in the enforced
    /// all-or-nothing decision; among themselves they consume all or none, like enforced rules.
    async fn decide_shadow(&self, ctx: &Ctx<'_>, now: u64) {
        let config = &ctx.policy.config;
        let tier = config.tier(ctx.caller.tier);
        let shadow = tier.shadow_rules(ctx.class);
        if shadow.is_empty() {
            return;
        }
        let store = &self.shared.store;
        match store
            .check_and_consume(ctx.caller.account, shadow, now)
            .await
        {
            Ok(Decision::Refused(_, refusal)) => {
                let class = config.class_name(ctx.class);
                let kind = refusal.kind.name();
                self.shared
                    .metrics
                    .requests
                    .would_limit(class, &tier.name, kind);
                tracing::info!(
                    account = %ctx.caller.account.short(), class, tier = %tier.name,
                    limit = kind, retry_after_secs = refusal.retry_after_secs,
                    "shadow limit would refuse; request admitted"
                );
            }
            Ok(Decision::Admitted(_)) => {}
            Err(e) => tracing::debug!(error = %e, "state store failed on a shadow limit"),
        }
    }

    /// Sends a plain request upstream with its path, query and body untouched (one move of
    /// its parts into the outgoing request).
    async fn forward(
        &self,
        ctx: &Ctx<'_>,
        req: Request<RequestBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let req = self.outgoing(ctx, req, &Marks::default());
        self.send_as(ctx, req, None).await
    }

    /// A protocol upgrade (WebSocket and the like), admitted like any request of its class:
    /// sent on an upstream connection of its own with `Connection: upgrade` and its `Upgrade`
    /// kept. When the upstream switches protocols, its `101` carries both halves of the tunnel
    /// ([`Tunnel`]) for the listener to join.
    async fn forward_upgrade(
        &self,
        ctx: &Ctx<'_>,
        req: Request<RequestBody>,
        client: OnUpgrade,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let protocol = req.headers().get(http::header::UPGRADE).cloned();
        let mut req = self.outgoing(ctx, req, &Marks::default());
        header_rewrite::append_forwarded(req.headers_mut(), ctx.forwarded);
        if let Some(protocol) = protocol {
            header_rewrite::keep_upgrade(req.headers_mut(), protocol);
        }
        let started = Instant::now();
        let mut resp = self.upstreams.default.send_upgrade(req).await;
        if let Ok(resp) = &mut resp {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream = hyper::upgrade::on(&mut *resp);
                resp.extensions_mut().insert(Tunnel { client, upstream });
            }
        }
        self.arrived(ctx, resp, started)
    }

    /// Sends a prepared request on this worker's connections, as `account` when a job runs on
    /// one.
    async fn send_as(
        &self,
        ctx: &Ctx<'_>,
        mut req: Request<ForwardBody>,
        account: Option<&UpstreamAccount>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let client = route(&self.upstreams, &mut req, account).clone();
        let started = Instant::now();
        let resp = client.send(req, Some(ctx.forwarded)).await;
        self.arrived(ctx, resp, started)
    }

    /// The request as it goes upstream, whichever upstream account will run it: origin-form,
    /// hop-by-hop fields dropped, floodgate's own annotations. (`X-Forwarded-*` are written
    /// with the head, see [`UpstreamClient::send`].)
    fn outgoing(
        &self,
        ctx: &Ctx<'_>,
        req: Request<impl Into<RequestBody>>,
        marks: &Marks,
    ) -> Request<ForwardBody> {
        let config = &ctx.policy.config;
        let mut req = req.map(|body| UploadBody::new(body.into(), config.max_body(ctx.class)));
        prepare_request(&mut req, self.upstreams.default.host_header());
        if config.headers.annotate_upstream {
            annotate(&mut req, ctx);
        }
        admission::write_marks(req.headers_mut(), marks);
        req
    }

    /// The upstream's answer to a request sent at `started`, timed, with its hop-by-hop fields
    /// dropped.
    fn arrived(
        &self,
        ctx: &Ctx<'_>,
        resp: Result<Response<UpstreamBody>, ProxyError>,
        started: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut resp = resp?;
        let took = started.elapsed();
        ctx.policy
            .handles
            .upstream_latency(ctx.class, took.as_secs_f64());
        if self.shared.access_log.is_some() {
            resp.extensions_mut().insert(UpstreamTime(took));
        }
        // A wire response comes without its hop-by-hop fields; a 101's Connection and Upgrade
        // are the switch itself, for the client.
        let switched = matches!(resp.body(), UpstreamBody::Switched(_));
        if switched && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            header_rewrite::strip_hop_by_hop(resp.headers_mut());
        }
        Ok(resp.map(ProxyBody::upstream))
    }

    /// The JSON error response for a request floodgate could not complete, counted.
    fn failed(&self, ctx: &Ctx<'_>, e: ProxyError) -> Response<ProxyBody> {
        let config = &ctx.policy.config;
        match &e {
            ProxyError::Queue(q) => {
                let reason = match q {
                    crate::queue::QueueError::Full { .. } => "queue_full",
                    crate::queue::QueueError::TimedOut { .. } => "timed_out",
                    crate::queue::QueueError::Closed => "shutdown",
                };
                self.shared
                    .metrics
                    .jobs
                    .dropped(&config.tier(ctx.caller.tier).name, reason);
            }
            _ if !e.is_upstream_failure() => return self.refuse(e),
            _ => {
                self.shared.metrics.requests.upstream_error(e.code());
                tracing::warn!(error = %e, class = config.class_name(ctx.class), "upstream failure");
            }
        }
        e.into_response()
    }

    /// The answer to a request whose handling panicked (the panic was caught by the listener):
    /// a 500 JSON, counted and logged (the panic's message, never the API key).
    pub fn panicked(&self, panic: &str) -> Response<ProxyBody> {
        self.shared.metrics.listener.panics.inc();
        tracing::error!(panic = %panic, "answering a request panicked; answered 500");
        ProxyError::Internal.into_response()
    }

    /// The longest pause in a client's request body (`client_body_timeout`, fixed at start
    /// like the other exchange clocks).
    fn body_idle(&self) -> std::time::Duration {
        self.upstreams.default.timeouts().client_body
    }

    /// Answers a request floodgate refuses itself (400, 401, 408, 413, 431), counted by
    /// reason; a 408 also as a client connection closed for a stalled body.
    fn refuse(&self, err: ProxyError) -> Response<ProxyBody> {
        // The error names what was wrong, never the key itself.
        tracing::debug!(reason = err.code(), error = %err, "request refused");
        self.shared.metrics.requests.rejected(err.code());
        if let ProxyError::ClientBodyTimeout = err {
            self.shared.metrics.listener.client_timeout("body");
        }
        err.into_response()
    }

    /// The id of a running task this request asks about (a get-task call), if any.
    fn watched_task<B>(&self, ctx: &Ctx<'_>, req: &Request<B>) -> Option<String> {
        let tasks = ctx.policy.config.jobs.tasks.as_ref()?;
        let path = normalize_path(req.uri().path(), &PathRules::LITERAL).ok()?;
        let id = tasks.task_id_in(req.method(), &path)?;
        self.shared
            .jobs
            .tracker
            .is_running(id)
            .then(|| id.to_owned())
    }
}

/// Test builds only (`--features test-hooks`, on for `cargo test`, never in a release build):
/// `x-floodgate-test-panic: handler` panics while the request is answered, `body` answers a
/// head whose body panics when it streams.
#[cfg(feature = "test-hooks")]
fn test_hook(headers: &http::HeaderMap) -> Option<Response<ProxyBody>> {
    match headers.get("x-floodgate-test-panic")?.as_bytes() {
        b"handler" => panic!("test hook: a panic while answering a request"),
        b"body" => Some(Response::new(ProxyBody::Panics)),
        _ => None,
    }
}

/// Reads the body prefix (up to `[server] inspect_limit`, with at most `idle` between frames)
/// of a request whose route picks its class from a JSON field; the class it names (or
/// `route_class`), and the request with the prefix put back in front of the unread rest.
async fn body_class(
    req: Request<ClientBody>,
    rule: &BodyClasses,
    route_class: ClassId,
    config: &Config,
    idle: std::time::Duration,
) -> Result<(Request<RequestBody>, ClassId), ProxyError> {
    // A declared length over every cap this route's classes have is refused before a byte is
    // read (and before a `100 Continue`): whichever class the body names would refuse it.
    let caps = std::iter::once(route_class)
        .chain(rule.by_value.values().copied())
        .map(|class| config.max_body(class));
    let loosest = caps
        .reduce(|a, b| a.zip(b).map(|(a, b)| a.max(b)))
        .flatten();
    upload::check_declared(&req.body().size_hint(), loosest)?;
    let (parts, body) = req.into_parts();
    let prefix = RequestBody::from(body)
        .prefix(config.server.inspect_limit, idle)
        .await?;
    let class = rule
        .class_of(&prefix.bytes, prefix.is_complete())?
        .unwrap_or(route_class);
    Ok((Request::from_parts(parts, prefix.into()), class))
}

/// The two halves of a switched protocol, carried in a `101` response's extensions for the
/// listener to join: the client's connection and the upstream's.
#[derive(Clone)]
pub struct Tunnel {
    pub client: OnUpgrade,
    pub upstream: OnUpgrade,
}

/// The client's half of a protocol switch, when the request asks for one (`Connection: upgrade`
/// and `Upgrade`). hyper marks requests with an `Upgrade` field (or `CONNECT`); only those are
/// looked at further, so a plain request pays one empty-map check.
fn upgrade_asked<B>(req: &mut Request<B>) -> Option<OnUpgrade> {
    req.extensions().get::<OnUpgrade>()?;
    if !header_rewrite::is_upgrade(req.headers()) {
        return None;
    }
    req.extensions_mut().remove::<OnUpgrade>()
}

/// The pool a request goes out on; an upstream account sets its credential, and with its own
/// base URL, the Host.
fn route<'u>(
    upstreams: &'u Upstreams,
    req: &mut Request<ForwardBody>,
    account: Option<&UpstreamAccount>,
) -> &'u Arc<UpstreamClient> {
    let client = upstreams.client(account.and_then(|a| a.origin.as_deref()));
    if let Some(account) = account {
        if let Some((name, value)) = &account.credential {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        if account.origin.is_some() {
            if let Ok(v) = HeaderValue::from_str(client.host_header()) {
                req.headers_mut().insert(HOST, v);
            }
        }
    }
    client
}

/// Tells the upstream the resolved tier and class.
fn annotate<B>(req: &mut Request<B>, ctx: &Ctx<'_>) {
    let config = &ctx.policy.config;
    let h = req.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&config.tier(ctx.caller.tier).name) {
        h.insert(header_rewrite::X_FLOODGATE_TIER.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(config.class_name(ctx.class)) {
        h.insert(header_rewrite::X_FLOODGATE_CLASS.clone(), v);
    }
}

/// Origin-form target, HTTP/1.1 towards the upstream, a Host header, hop-by-hop fields dropped.
fn prepare_request<B>(req: &mut Request<B>, upstream_host: &str) {
    if req.uri().scheme().is_some() {
        // absolute-form from the client: the upstream gets origin-form, Host carries the authority
        if let Some(authority) = req.uri().authority().map(|a| a.as_str().to_owned()) {
            if let Ok(v) = HeaderValue::from_str(&authority) {
                req.headers_mut().insert(HOST, v);
            }
        }
        let origin = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = origin.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
    if !req.headers().contains_key(HOST) {
        if let Ok(v) = HeaderValue::from_str(upstream_host) {
            req.headers_mut().insert(HOST, v);
        }
    }
    *req.version_mut() = Version::HTTP_11;
    header_rewrite::request_headers(req.headers_mut());
}

/// The 429 answer: the seed's body, the usage headers, the limit type and an exact Retry-After.
fn too_many_attempts(usage: &Usage, refusal: &Refusal, ietf: bool) -> Response<ProxyBody> {
    let mut resp = json_response(StatusCode::TOO_MANY_REQUESTS, TOO_MANY_ATTEMPTS);
    rl_headers::write_usage(resp.headers_mut(), usage, ietf);
    rl_headers::write_refusal(resp.headers_mut(), refusal);
    resp
}
