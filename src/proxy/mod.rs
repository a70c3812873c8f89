//! A request's life, one stage per file, in the order [`Proxy::answer`] runs them:
//!
//! 1. [`request_checks`] — framing and header hygiene;
//! 2. identify — the caller's account and tier ([`crate::identity`]);
//! 3. [`class_of`] — the request's class, from its route or its body;
//! 4. [`upload`] — a declared size over the class's cap is refused before any quota is spent;
//! 5. [`cost_of`] — the units the request costs, fixed by its class or read from its body;
//! 6. [`admit`] — rate limits (and for a job, penalties) checked and consumed in one store step;
//! 7. [`forward`] — a plain request goes upstream; or [`job`] — a job waits for a slot
//!    ([`queue_wait`]), runs on an upstream account, is judged ([`settle`]) and, as a task, is
//!    watched to its end ([`task_watch`]);
//! 8. respond — the usage headers, or floodgate's own error ([`respond`]); the access log's
//!    record rides with the response ([`record`]).
//!
//! Everything here is the thin I/O edge around pure parts: identity, classification and the limit
//! decision take plain values and return plain values; the store does the atomic bookkeeping;
//! the job pools hand out slots; [`upstream`] moves bytes.

mod admit;
mod class_of;
pub mod client_body;
mod cost_of;
mod ctx;
pub mod error;
mod forward;
pub mod header_rewrite;
pub mod inspect;
mod job;
mod own_headers;
mod peer;
pub mod plain;
mod queue_wait;
mod record;
pub mod request_body;
pub mod request_checks;
pub mod respond;
mod response_body;
mod settle;
mod task_watch;
pub mod upload;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body as _;

pub use client_body::{ClientBody, Unread};
pub use forward::Tunnel;
pub use peer::Peer;
pub use request_body::RequestBody;
pub use response_body::ProxyBody;

use admit::Admit;
use ctx::Ctx;
use error::ProxyError;
use forward::Forwarder;
use job::{JobStage, Submission};
use record::{Arrived, Noted};
use settle::Settle;
use task_watch::TaskWatch;
use upstream::Upstreams;

use crate::limits::{headers as rl_headers, Usage};
use crate::queue::JobClass;
use crate::shared::Shared;

/// One worker's proxy: the shared state plus the worker's own upstream connection pools.
pub struct Proxy {
    shared: Arc<Shared>,
    upstreams: Arc<Upstreams>,
    /// Header fields a request may carry (`[server] max_header_count`, fixed at start).
    max_header_count: usize,
}

/// A stage's outcome, or the answer that ended the request there.
type Staged<T> = Result<T, Response<ProxyBody>>;

/// The value of a stage that let the request go on; else returns the answer that ended it.
/// (A `match` in place rather than `?` through a `Result` of the whole answer: every stage's
/// outcome would be moved once more on every request.)
macro_rules! or_answer {
    ($stage:expr) => {
        match $stage {
            Ok(value) => value,
            Err(answer) => return answer,
        }
    };
}

/// The value of a check that passed; else returns floodgate's refusal, counted.
macro_rules! or_refuse {
    ($proxy:expr, $check:expr) => {
        match $check {
            Ok(value) => value,
            Err(e) => return $proxy.refuse(e.into()),
        }
    };
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

    /// Whether responses carry an access log record ([`crate::access_log::Pending`]).
    pub fn logs_access(&self) -> bool {
        self.shared.access_log.is_some()
    }

    /// Answers one client request; with the access log on, the response carries its record.
    pub async fn handle(&self, req: Request<ClientBody>, peer: &Peer) -> Response<ProxyBody> {
        let Some(log) = &self.shared.access_log else {
            return self.answer(req, peer, None).await;
        };
        let arrived = Arrived::of(&req, self.shared.clock.now_ms());
        let mut noted = Noted::default();
        let resp = self.answer(req, peer, Some(&mut noted)).await;
        let policy = self.shared.policy.load();
        record::attach(resp, peer, arrived, noted, &policy.config, log)
    }

    /// The answer to a request whose handling panicked (the listener caught the panic).
    pub fn panicked(&self, panic: &str) -> Response<ProxyBody> {
        respond::panicked(&self.shared.metrics, panic)
    }

    /// Answers a request: the stages, in order, each returning early with the answer that ends
    /// the request there. `noted`, when the access log is on, learns who called and the class.
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
        let ambiguous = req.extensions().get::<request_checks::AmbiguousFraming>();
        let checked =
            request_checks::check(req.headers(), ambiguous.is_some(), self.max_header_count);
        or_refuse!(self, checked);
        let policy = self.shared.policy.load_full();
        let config = &policy.config;
        let caller = or_refuse!(
            self,
            config.identity.identify(req.headers(), peer.addr.ip())
        );
        if let Some(noted) = noted.as_deref_mut() {
            noted.caller = Some(caller); // a blocked account's refusal is logged with it
        }
        let (caller, tier) = or_refuse!(self, policy.account(caller, &*self.shared.clock));
        let (class, by_body) = or_refuse!(self, class_of::by_route(&req, config));
        let (mut req, class) = match by_body {
            None => (req.map(RequestBody::from), class),
            // Boxed: only routes that read a class from the body carry the read's state.
            Some(rule) => {
                let read = class_of::body_class(req, rule, class, config, self.body_idle());
                or_refuse!(self, Box::pin(read).await)
            }
        };
        if let Some(noted) = noted.as_deref_mut() {
            (noted.caller, noted.class) = (Some(caller), Some(class));
        }
        // Before the limit check: a request refused for its declared size consumes no quota.
        or_refuse!(
            self,
            upload::check_declared(&req.body().size_hint(), config.max_body(class))
        );
        let cost_from = config.cost_from(class);
        let units = match cost_from {
            None => config.cost(class),
            // Boxed: only classes that read their cost from the body carry the read's state.
            Some(rule) => {
                let read = cost_of::body_cost(req, rule, config, self.body_idle());
                let (read_req, units) = or_refuse!(self, Box::pin(read).await);
                req = read_req;
                units
            }
        };
        let ctx = Ctx {
            policy: &policy,
            caller,
            tier,
            class,
            units,
            forwarded: peer.forwarded(&config.identity),
            listed: std::sync::Mutex::new(None),
        };
        let watched_task = self.task_watch().asked_about(&ctx, &req);
        let (usage, result) = match config.jobs.class(class) {
            None => {
                let usage = or_answer!(Admit::of(&self.shared).request(&ctx).await);
                let forward = self.forwarder();
                let sent = match forward::upgrade_asked(&mut req) {
                    // Boxed: a tunnel's setup stays out of every plain request's future.
                    Some(client) => Box::pin(forward.upgrade(&ctx, req, client)).await,
                    None => forward.request(&ctx, req).await,
                };
                (usage, sent)
            }
            // Boxed: a job's stages hold kilobytes of state that a plain request's future
            // would otherwise carry (and copy) too.
            Some(job) => or_answer!(Box::pin(self.job(&ctx, req, job, noted)).await),
        };
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => respond::failed(&self.shared.metrics, &ctx, e),
        };
        if let Some(task) = watched_task {
            resp = self.task_watch().observe(&ctx, &task, resp).await;
        }
        if let Some(mut usage) = usage {
            if cost_from.is_some() {
                usage.cost = ctx.units; // what the body made it, one unit included
            }
            rl_headers::write_usage(resp.headers_mut(), &usage, ctx.ietf());
        }
        resp
    }

    /// A job's stages: read its body prefix, admit it (penalties and limits together), queue
    /// and run it; a job the queue turned away gets back what its admission consumed. `noted`,
    /// when the access log is on, learns what penalties in shadow mode would have done.
    async fn job(
        &self,
        ctx: &Ctx<'_>,
        req: Request<RequestBody>,
        job: &JobClass,
        noted: Option<&mut Noted>,
    ) -> Staged<(Option<Usage>, Result<Response<ProxyBody>, ProxyError>)> {
        // A job's body prefix is read once, here: its mode decides the relax check, and the
        // job stage reuses it (follow-up affinity, retries).
        let submission = Submission::read(req, ctx, self.body_idle()).await;
        let submission = submission.map_err(|e| self.refuse(e))?;
        let admit = Admit::of(&self.shared);
        let admitted = admit.job(ctx, submission.facts).await?;
        if let Some(noted) = noted {
            noted.shadow_penalty = admitted.marks.shadow.describe();
        }
        let stage = JobStage {
            jobs: &self.shared.jobs,
            shared: &self.shared,
            metrics: &self.shared.metrics.jobs,
            forward: self.forwarder(),
            settle: Settle::of(&self.shared),
            watch: self.task_watch(),
        };
        let ran = stage.run(ctx, submission, admitted.marks, job).await;
        let usage = match &ran {
            Err(ProxyError::Queue(_)) => {
                admit
                    .give_back(ctx, &admitted.receipt, admitted.usage)
                    .await
            }
            _ => admitted.usage,
        };
        Ok((usage, ran))
    }

    fn forwarder(&self) -> Forwarder<'_> {
        Forwarder {
            upstreams: &self.upstreams,
            time_answers: self.shared.access_log.is_some(),
        }
    }

    /// Resumes the tasks that held slots before a restart, on this worker's connections (one
    /// worker, at start); with Redis, also those of replicas that died, every few seconds.
    pub async fn resume_tasks(self: Arc<Self>) {
        let Some(book) = self.shared.tasks.clone() else {
            return;
        };
        self.task_watch().resume(&book).await;
        if matches!(self.shared.store, crate::store::Store::Redis(_)) {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.task_watch().resume(&book).await;
            }
        }
    }

    fn task_watch(&self) -> TaskWatch<'_> {
        TaskWatch {
            shared: &self.shared,
            upstreams: &self.upstreams,
        }
    }

    /// The longest pause in a client's request body (`client_body_timeout`, fixed at start
    /// like the other exchange clocks).
    fn body_idle(&self) -> Duration {
        self.upstreams.default.timeouts().client_body
    }

    /// A request floodgate refuses itself, counted.
    fn refuse(&self, err: ProxyError) -> Response<ProxyBody> {
        respond::refused(&self.shared.metrics, err)
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
