//! The job stage of a request's life, after its admission: queue for a slot, forward on the
//! chosen upstream account, judge the answer, and keep the slot as long as the job runs — until
//! the response is sent (sync mode) or until the task is seen to end (task mode). A job refused
//! by an upstream account with 429 rests that account and goes to the front of the queue for
//! another one.

use std::time::Duration;

use http::header::RETRY_AFTER;
use http::request::Parts;
use http::{Request, Response};

use super::client_body::ClientBody;
use super::ctx::Ctx;
use super::error::ProxyError;
use super::forward::Forwarder;
use super::inspect::{Peeked, Prefix};
use super::own_headers::{label_job, write_marks};
use super::queue_wait::{Attempt, QueueWait};
use super::request_body::RequestBody;
use super::response_body::{peek, ProxyBody};
use super::settle::{self, Settle};
use super::task_watch::{TaskHold, TaskWatch};
use crate::metrics::JobMetrics;
use crate::penalties::{JobFacts, Marks};
use crate::queue::health::{Health, Outcome};
use crate::queue::tasks::TaskOwner;
use crate::queue::{JobClass, JobMode, Jobs, SlotPermit};
use crate::shared::Shared;

/// Rest for an upstream account that answered 429 without a usable Retry-After.
const DEFAULT_COOLDOWN_MS: u64 = 5_000;

/// A job request whose body prefix has been read: what the queue and the penalties need.
pub struct Submission {
    parts: Parts,
    prefix: Prefix<ClientBody>,
    pub facts: JobFacts,
}

impl Submission {
    /// Reads the body prefix (up to `[server] inspect_limit` bytes; the rest stays unread in
    /// the client connection) and the job mode in it. A body whose prefix was already read (to
    /// classify it) is not read again.
    /// `idle`: the longest pause in the body (`client_body_timeout`).
    pub async fn read(
        req: Request<RequestBody>,
        ctx: &Ctx<'_>,
        idle: Duration,
    ) -> Result<Self, ProxyError> {
        let (parts, body) = req.into_parts();
        let config = ctx.config();
        let prefix = body.prefix(config.server.inspect_limit, idle).await?;
        let facts = config
            .penalties
            .facts(ctx.class, &prefix.bytes, prefix.is_complete());
        Ok(Self {
            parts,
            prefix,
            facts,
        })
    }
}

/// What the job stage uses: the pools and task tracker, this worker's connections, the places
/// its lessons and metrics go.
pub struct JobStage<'a> {
    pub jobs: &'a Jobs,
    /// Where upstream accounts' health is kept and applied.
    pub shared: &'a Shared,
    pub metrics: &'a JobMetrics,
    pub forward: Forwarder<'a>,
    pub settle: Settle<'a>,
    pub watch: TaskWatch<'a>,
}

impl JobStage<'_> {
    /// Runs an admitted job: queue for a slot, forward, hold the slot for the job's lifetime,
    /// and count what its answer teaches.
    pub async fn run(
        &self,
        ctx: &Ctx<'_>,
        submission: Submission,
        marks: Marks,
        job: &JobClass,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Submission {
            parts,
            prefix,
            facts,
        } = submission;
        let settings = ctx.policy.overrides.queue(ctx.config(), &ctx.caller);
        let named = settings.pool != 0;
        let follow_up = job
            .follow_up_pointer
            .as_deref()
            .and_then(|p| prefix.json_string(p));
        let affinity = match follow_up {
            Some(task) => self.jobs.origin(&task, settings.pool).await,
            None => None,
        };
        let retriable = prefix.is_complete() && named && affinity.is_none();
        let (bytes, mut rest) = (prefix.bytes, prefix.rest);
        let attempts = self.jobs.pools[settings.pool].accounts.len();
        let queue = QueueWait {
            forward: &self.forward,
            metrics: self.metrics,
        };
        let (mut front, mut retried_dead) = (false, false);
        for attempt in 1.. {
            let gauges = ctx.policy.handles.tier_gauges(ctx.caller.tier);
            let (pool, mut ticket) = self.jobs.ticket(settings, &ctx.caller, affinity, gauges);
            ticket.front = front;
            let body = RequestBody::Prefixed {
                prefix: Some(bytes.clone()),
                rest: rest.take(),
            };
            let req = Request::from_parts(parts.clone(), body);
            let req = self.forward.outgoing(ctx, req, &marks);
            let on = Attempt {
                pool: &pool,
                ticket: &ticket,
                shadow: job.shadow,
                named_account: named,
            };
            let (permit, sent) = queue.send(ctx, on, req).await?;
            let mut resp = match sent {
                Ok(resp) => resp,
                Err(e) => {
                    if named {
                        self.judge_failure(ctx, &permit, &e).await;
                    }
                    return Err(e);
                }
            };
            let mut peeked = None;
            if named {
                let refused;
                (resp, refused, peeked) = self.judge(ctx, &permit, resp).await?;
                // A dead credential's answer is retried once: a second one on another account
                // may be the request's own doing, and more would take the pool out with it.
                let again = match refused {
                    Some(Refused::Dead) => !retried_dead,
                    Some(Refused::RateLimited) => true,
                    None => false,
                };
                if let Some(why) = refused.filter(|_| again && retriable && attempt < attempts) {
                    retried_dead |= why == Refused::Dead;
                    self.metrics.retried(why.name());
                    front = true;
                    continue; // dropping the permit frees the slot
                }
            }
            let answer = Answer {
                permit,
                resp,
                peeked,
                client_keys: &parts.headers,
                facts,
                named_account: named,
            };
            return self.finish(ctx, answer, &marks, job).await;
        }
        unreachable!("the loop returns")
    }

    /// What an upstream account's answer says about it: a 429 rests it, a dead credential's
    /// answer disables it, a 5xx counts as a failure, anything else as a job served. Returns
    /// the answer, when the account refused the job before taking it (429, dead) why — the job
    /// may go to another account —, and its body's start when a rule read it.
    async fn judge(
        &self,
        ctx: &Ctx<'_>,
        permit: &SlotPermit,
        resp: Response<ProxyBody>,
    ) -> Result<(Response<ProxyBody>, Option<Refused>, Option<Peeked>), ProxyError> {
        let rules = &ctx.config().jobs.health;
        let status = resp.status().as_u16();
        let (resp, body) = if rules.reads_body(status) {
            peek(resp, ctx.config().server.inspect_limit).await?
        } else {
            (resp, None)
        };
        let account = &permit.account().name;
        let (outcome, refused) = if status == 429 {
            let rest_ms = retry_after_ms(&resp).unwrap_or(DEFAULT_COOLDOWN_MS);
            self.metrics.cooldown(account);
            (Outcome::RateLimited { rest_ms }, Some(Refused::RateLimited))
        } else if let Some(reason) = permit
            .account()
            .credential
            .as_ref()
            .and_then(|_| rules.dead(status, body.as_ref().map(|b| &b.bytes[..])))
        {
            // Only an account's own credential can be dead: without one, the client's key
            // went upstream, and its 401 is the client's.
            self.metrics.upstream_failure(account, "dead");
            (Outcome::Dead { reason }, Some(Refused::Dead))
        } else if resp.status().is_server_error() {
            self.metrics.upstream_failure(account, "server_error");
            let what = format!("upstream answered {status}");
            (Outcome::Failed { what }, None)
        } else {
            (Outcome::Served, None)
        };
        self.observe(ctx, permit, &outcome).await;
        Ok((resp, refused, body))
    }

    /// A send that failed (timeout, connection) counts against its upstream account.
    async fn judge_failure(&self, ctx: &Ctx<'_>, permit: &SlotPermit, e: &ProxyError) {
        let kind = match e {
            ProxyError::UpstreamTimeout
            | ProxyError::UpstreamSendTimeout
            | ProxyError::UpstreamConnectTimeout => "timeout",
            ProxyError::UpstreamUnreachable(_) | ProxyError::UpstreamProtocol(_) => "connection",
            _ => return, // not the upstream's doing
        };
        self.metrics.upstream_failure(&permit.account().name, kind);
        let what = e.to_string();
        self.observe(ctx, permit, &Outcome::Failed { what }).await;
    }

    /// Records an answer's outcome in the account's health, where replicas share it. A job
    /// served by an account with no failures on record changes nothing and asks nothing.
    async fn observe(&self, ctx: &Ctx<'_>, permit: &SlotPermit, outcome: &Outcome) {
        let account = &permit.account().name;
        let (rules, now) = (&ctx.config().jobs.health, self.shared.clock.now_ms());
        if *outcome == Outcome::Served && self.shared.upstreams.is_clean(account) {
            return;
        }
        let change = |h: &Health| h.after(outcome, rules, now);
        if let Err(e) = self.shared.change_upstream(account, change).await {
            // This replica at least acts on it.
            tracing::warn!(upstream_account = %account, error = %e, "upstream account health not shared");
            if let Some(health) = self
                .shared
                .upstreams
                .get(account)
                .after(outcome, rules, now)
            {
                self.shared.apply_upstream(account, &health);
            }
        }
    }

    /// The job's answer: judged, labelled and marked; its slot held for as long as the job runs.
    async fn finish(
        &self,
        ctx: &Ctx<'_>,
        answer: Answer<'_>,
        marks: &Marks,
        job: &JobClass,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Answer {
            permit,
            resp,
            peeked,
            client_keys,
            facts,
            named_account,
        } = answer;
        let read_answer = (job.mode == JobMode::Task && resp.status().is_success())
            || settle::needs_body(ctx, &resp);
        let (mut resp, peeked): (_, Option<Peeked>) = if peeked.is_some() {
            (resp, peeked) // read already, for the account's health
        } else if read_answer {
            peek(resp, ctx.config().server.inspect_limit).await?
        } else {
            (resp, None)
        };
        let incorrect = self
            .settle
            .answer(ctx, resp.status(), peeked.as_ref())
            .await;
        label_job(resp.headers_mut(), &permit, named_account);
        write_marks(resp.headers_mut(), marks);
        self.settle.marks(ctx, marks);
        Ok(match job.mode {
            JobMode::Sync => {
                if resp.status().is_success() && !incorrect {
                    self.settle.sync_job(ctx, facts.mode).await;
                }
                resp.body_mut().hold(permit);
                resp
            }
            JobMode::Task => {
                let owner = TaskOwner {
                    account: ctx.caller.account,
                    tier: ctx.caller.tier,
                    class: ctx.class,
                    mode: facts.mode,
                };
                let hold = TaskHold {
                    permit,
                    client_keys: ctx.config().identity.key_fields(client_keys),
                };
                self.watch.hold(ctx, resp, peeked, hold, owner, job).await
            }
        })
    }
}

/// Why an upstream account refused a job before taking it: the job may go to another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// 429: the account rests.
    RateLimited,
    /// A dead credential's answer: the account is disabled.
    Dead,
}

impl Refused {
    /// As `floodgate_jobs_retried_total{reason}` names it.
    fn name(self) -> &'static str {
        match self {
            Refused::RateLimited => "rate_limited",
            Refused::Dead => "disabled",
        }
    }
}

/// The upstream's answer to a job's last attempt, with what finishing it needs.
struct Answer<'r> {
    permit: SlotPermit,
    resp: Response<ProxyBody>,
    /// Its body's start, when it was read already.
    peeked: Option<Peeked>,
    client_keys: &'r http::HeaderMap,
    facts: JobFacts,
    named_account: bool,
}

/// An upstream's Retry-After in milliseconds (delta-seconds form).
fn retry_after_ms(resp: &Response<ProxyBody>) -> Option<u64> {
    let secs: u64 = resp
        .headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(secs.saturating_mul(1000).max(1))
}
