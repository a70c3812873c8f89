//! The job stage of a request's life: wait for a slot, forward on the chosen upstream account,
//! and keep the slot as long as the job runs — until the response is sent (sync mode) or until
//! the task is seen to finish (task mode).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client_body::ClientBody;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST, RETRY_AFTER};
use http::request::Parts;
use http::{Request, Response};
use tokio::sync::oneshot;

use super::admission::{settle_task, write_marks};
use super::inspect::{read_prefix, Peeked, Prefix};
use super::upstream::{ForwardBody, UpstreamBody, UpstreamClient, Upstreams};
use super::{route, Ctx, Proxy, ProxyBody, RequestBody};
use crate::identity::KeyFields;
use crate::json::string_at as json_string_at;
use crate::penalties::{JobFacts, Marks};
use crate::proxy::error::ProxyError;
use crate::queue::tasks::{TaskOwner, TaskTracker};
use crate::queue::{
    GrantNotice, Granted, JobClass, JobMode, JobPool, JobTicket, QueueError, SlotPermit,
    StartOnGrant, TaskPolling,
};
use crate::shared::Shared;

/// Names the upstream account that took a job.
pub static X_UPSTREAM_ACCOUNT: HeaderName = HeaderName::from_static("x-floodgate-upstream-account");
/// How long a job waited in its queue, in milliseconds.
pub static X_QUEUE_WAIT_MS: HeaderName = HeaderName::from_static("x-queue-wait-ms");
/// On the response of a job that waited: its place in its account's queue when it joined.
pub static X_QUEUE_POSITION_AT_ENTRY: HeaderName =
    HeaderName::from_static("x-queue-position-at-entry");

/// Rest for an upstream account that answered 429 without a usable Retry-After.
const DEFAULT_COOLDOWN_MS: u64 = 5_000;

/// A job request whose body prefix has been read: what the queue and the penalties need.
pub(super) struct Submission {
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
        let prefix = body
            .prefix(ctx.policy.config.server.inspect_limit, idle)
            .await?;
        let facts =
            ctx.policy
                .config
                .penalties
                .facts(ctx.class, &prefix.bytes, prefix.is_complete());
        Ok(Self {
            parts,
            prefix,
            facts,
        })
    }
}

impl Proxy {
    /// Runs an admitted job: queue for a slot, forward, hold the slot for the job's lifetime,
    /// and count what its answer teaches. A job refused by an upstream account with 429 rests
    /// that account and goes to the front of the queue for another one.
    pub(super) async fn run_job(
        &self,
        ctx: &Ctx<'_>,
        submission: Submission,
        marks: Marks,
        job: &JobClass,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let config = &ctx.policy.config;
        let Submission {
            parts,
            prefix,
            facts,
        } = submission;
        let settings = config.jobs.settings(&ctx.caller);
        let jobs = &self.shared.jobs;
        let pool_name = &jobs.pools[settings.pool].name;
        let affinity = job
            .follow_up_pointer
            .as_deref()
            .and_then(|p| prefix.json_string(p))
            .and_then(|task| jobs.tracker.origin(&task))
            .filter(|(pool, _)| pool == pool_name)
            .map(|(_, upstream)| upstream);
        let retriable = prefix.is_complete() && settings.pool != 0;
        let (bytes, mut rest) = (prefix.bytes, prefix.rest);
        let attempts = jobs.pools[settings.pool].accounts.len();
        let mut front = false;
        for attempt in 1.. {
            let gauges = ctx.policy.handles.tier_gauges(ctx.caller.tier);
            let (pool, mut ticket) = jobs.ticket(settings, &ctx.caller, affinity, gauges);
            ticket.front = front;
            let body = RequestBody::Prefixed {
                prefix: Some(bytes.clone()),
                rest: rest.take(),
            };
            let req = self.outgoing(ctx, Request::from_parts(parts.clone(), body), &marks);
            let named = settings.pool != 0;
            let (permit, resp) = self
                .queue_and_send(ctx, &pool, &ticket, req, job.shadow, named)
                .await?;
            if resp.status() == http::StatusCode::TOO_MANY_REQUESTS && settings.pool != 0 {
                let rest_ms = retry_after_ms(&resp).unwrap_or(DEFAULT_COOLDOWN_MS);
                pool.cool_down(permit.upstream(), rest_ms);
                self.shared.metrics.jobs.cooldown(&permit.account().name);
                tracing::info!(upstream_account = %permit.account().name, rest_ms, "upstream account rests after 429");
                if retriable && attempt < attempts && affinity.is_none() {
                    front = true;
                    continue; // dropping the permit frees the slot
                }
            }
            let read_answer = (job.mode == JobMode::Task && resp.status().is_success())
                || self.judge_needs_body(ctx, &resp);
            let (mut resp, peeked) = if read_answer {
                peek(resp, config.server.inspect_limit).await?
            } else {
                (resp, None)
            };
            let incorrect = self.judge_answer(ctx, resp.status(), peeked.as_ref()).await;
            label_response(&mut resp, &permit, settings.pool != 0);
            write_marks(resp.headers_mut(), &marks);
            self.count_marks(ctx, &marks);
            return Ok(match job.mode {
                JobMode::Sync => {
                    if resp.status().is_success() && !incorrect {
                        self.settle_sync(ctx, facts.mode).await;
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
                        client_keys: config.identity.key_fields(&parts.headers),
                    };
                    self.hold_task(resp, peeked, hold, owner, job, ctx)
                }
            });
        }
        unreachable!("the loop returns")
    }

    /// Waits for a slot and sends the job (as its upstream account when `named_account`). A job
    /// that had to wait is sent by whoever freed its slot, on that worker (see
    /// [`start_on_grant`]).
    async fn queue_and_send(
        &self,
        ctx: &Ctx<'_>,
        pool: &Arc<JobPool>,
        ticket: &JobTicket,
        req: Request<ForwardBody>,
        shadow: bool,
        named_account: bool,
    ) -> Result<(SlotPermit, Response<ProxyBody>), ProxyError> {
        let mut unsent = Some(req);
        let mut early = None; // only a job that has to wait gets a channel for its hook
        let granted = if shadow {
            Granted::Permit(self.shadow_slot(ctx, pool, ticket)?)
        } else {
            let on_wait = || {
                let (tx, rx) = oneshot::channel();
                early = Some(rx);
                let forwarded_for = ctx.forwarded.clone();
                start_on_grant(unsent.take(), tx, named_account, forwarded_for)
            };
            pool.acquire_starting(ticket, on_wait).await?
        };
        let (permit, resp) = match (granted, unsent, early) {
            (Granted::Permit(permit), Some(req), _) => {
                if permit.position_at_entry().is_some() {
                    // It waited, and no hook took it (shared slots): it sends itself.
                    self.shared.metrics.jobs.handoff(false);
                }
                let resp = self.send_on(ctx, req, &permit, named_account).await?;
                (permit, resp)
            }
            (Granted::Started, _, Some(early)) => match early.await {
                Ok(Early::Started { permit, resp, at }) => {
                    self.shared.metrics.jobs.handoff(true);
                    (permit, self.arrived(ctx, resp, at)?)
                }
                Ok(Early::NotStarted { permit, req }) => {
                    self.shared.metrics.jobs.handoff(false);
                    let resp = self.send_on(ctx, req, &permit, named_account).await?;
                    (permit, resp)
                }
                Err(_) => return Err(QueueError::Closed.into()),
            },
            // a permit always comes with the unsent request, a started job with its channel
            _ => return Err(QueueError::Closed.into()),
        };
        let tier = &ctx.policy.config.tier(ctx.caller.tier).name;
        self.shared
            .metrics
            .jobs
            .queue_wait(tier, permit.waited().as_secs_f64());
        Ok((permit, resp))
    }

    /// Sends a job on this worker's connections, as its permit's upstream account when named.
    async fn send_on(
        &self,
        ctx: &Ctx<'_>,
        req: Request<ForwardBody>,
        permit: &SlotPermit,
        named_account: bool,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let account = named_account.then(|| permit.account().clone());
        self.send_as(ctx, req, account.as_ref()).await
    }

    /// Shadow mode: a slot at once, past the caps if need be. A job that would have waited is
    /// counted and logged; it still counts as running, so later jobs see the real load.
    fn shadow_slot(
        &self,
        ctx: &Ctx<'_>,
        pool: &Arc<JobPool>,
        ticket: &JobTicket,
    ) -> Result<SlotPermit, ProxyError> {
        let (permit, would_wait) = pool.start_now(ticket)?;
        if would_wait {
            let config = &ctx.policy.config;
            let tier = &config.tier(ctx.caller.tier).name;
            self.shared.metrics.jobs.would_queue(tier);
            tracing::info!(
                account = %ctx.caller.account.short(),
                class = config.class_name(ctx.class),
                tier = %tier,
                "shadow queue: job would have waited for a slot; forwarded at once"
            );
        }
        Ok(permit)
    }

    /// Task mode: keeps the slot from the create response until the task ends. A failed create
    /// (non-2xx, or no task id) frees the slot at once.
    fn hold_task(
        &self,
        mut resp: Response<ProxyBody>,
        peeked: Option<Peeked>,
        hold: TaskHold,
        owner: TaskOwner,
        job: &JobClass,
        ctx: &Ctx<'_>,
    ) -> Response<ProxyBody> {
        let Some(peeked) = peeked.filter(|_| resp.status().is_success()) else {
            return resp;
        };
        let task_id = job
            .task_id_pointer
            .as_deref()
            .filter(|_| peeked.complete)
            .and_then(|p| json_string_at(&peeked.bytes, p));
        match task_id {
            Some(id) => self.track_task(id, hold, owner, job, ctx),
            // too big to read an id from: hold it while the body streams
            None if !peeked.complete => resp.body_mut().hold(hold.permit),
            None => tracing::debug!("create response without a task id; slot freed"),
        }
        resp
    }

    /// Hands the slot to the tracker and starts the task's watcher: the maximum-job-time timer
    /// and, when configured, active polling with the upstream account's credential (or, on a
    /// pool without one, the client's own key fields).
    fn track_task(
        &self,
        id: String,
        hold: TaskHold,
        owner: TaskOwner,
        job: &JobClass,
        ctx: &Ctx<'_>,
    ) {
        let TaskHold {
            permit,
            client_keys,
        } = hold;
        let tracker = self.shared.jobs.tracker.clone();
        let account = permit.account().clone();
        let client = self.upstreams.client(account.origin.as_deref()).clone();
        let poll = ctx
            .policy
            .config
            .jobs
            .tasks
            .clone()
            .filter(|t| t.poll_interval.is_some());
        tracker.hold(id.clone(), permit, owner, None);
        let watcher = Watcher {
            shared: self.shared.clone(),
            inspect_limit: ctx.policy.config.server.inspect_limit,
            tracker: tracker.clone(),
            id: id.clone(),
            poll,
            client,
            // A named upstream account polls with its own credential; otherwise the task is the
            // client's, and so is the key that may read it.
            credentials: account.credential.map_or(client_keys, |c| vec![c]),
        };
        let handle = tokio::spawn(watcher.run(job.max_job_time)).abort_handle();
        tracker.attach_watcher(&id, handle);
    }

    /// Passive observation: a get-task response passing through that shows a terminal status
    /// ends the task, frees its slot and counts what its end teaches.
    pub(super) async fn observe_task(
        &self,
        ctx: &Ctx<'_>,
        task: &str,
        resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let Some(tasks) = ctx.policy.config.jobs.tasks.as_ref() else {
            return resp;
        };
        if !resp.status().is_success() {
            return resp;
        }
        let limit = ctx.policy.config.server.inspect_limit;
        let (resp, peeked) = match peek(resp, limit).await {
            Ok(read) => read,
            Err(e) => return self.failed(ctx, e),
        };
        let Some(peeked) = peeked.filter(|p| p.complete) else {
            return resp;
        };
        if is_terminal(tasks, &peeked.bytes) {
            if let Some(owner) = self.shared.jobs.tracker.finish(task) {
                settle_task(&self.shared, &owner, resp.status().as_u16(), &peeked.bytes).await;
            }
        }
        resp
    }
}

/// Reads up to `limit` bytes of an upstream answer's body and puts them back in front of the
/// rest, so the client still gets every byte. A body read whole becomes a local one (any slot
/// it held ends: the upstream has answered in full).
async fn peek(
    resp: Response<ProxyBody>,
    limit: usize,
) -> Result<(Response<ProxyBody>, Option<Peeked>), ProxyError> {
    let (parts, body) = resp.into_parts();
    let ProxyBody::Upstream {
        prefix: None,
        body: upstream,
        permit,
    } = body
    else {
        return Ok((Response::from_parts(parts, body), None));
    };
    let prefix = read_prefix(upstream, limit, None)
        .await
        .map_err(|e| ProxyError::UpstreamProtocol(e.to_string()))?;
    let peeked = Peeked {
        bytes: prefix.bytes.clone(),
        complete: prefix.is_complete(),
    };
    let body = match prefix.rest {
        Some(rest) => ProxyBody::Upstream {
            prefix: Some(prefix.bytes),
            body: rest,
            permit,
        },
        None => ProxyBody::full(prefix.bytes),
    };
    Ok((Response::from_parts(parts, body), Some(peeked)))
}

/// Whether a get-task response body shows a terminal status.
fn is_terminal(tasks: &TaskPolling, body: &[u8]) -> bool {
    json_string_at(body, &tasks.status_pointer).is_some_and(|s| tasks.terminal.contains(&s))
}

/// A queued job, taken in charge where its slot was granted (see [`StartOnGrant`]).
enum Early {
    /// Sent at `at` on the granting worker's connections; this is the upstream's answer.
    Started {
        permit: SlotPermit,
        resp: Result<Response<UpstreamBody>, ProxyError>,
        at: Instant,
    },
    /// Granted on a thread that is not a worker: the job sends it itself.
    NotStarted {
        permit: SlotPermit,
        req: Request<ForwardBody>,
    },
}

/// The hook a waiting job leaves in its queue: when its slot is granted, send its request at
/// once on the granting worker's connections, and wake the job's task with the answer.
fn start_on_grant(
    req: Option<Request<ForwardBody>>,
    early: oneshot::Sender<Early>,
    named_account: bool,
    forwarded_for: super::header_rewrite::Forwarded,
) -> Option<StartOnGrant> {
    let req = req?;
    Some(Box::new(move |permit: SlotPermit, notice: GrantNotice| {
        let here = Upstreams::current().zip(tokio::runtime::Handle::try_current().ok());
        if let Some((upstreams, runtime)) = here {
            let mut req = req;
            let account = named_account.then(|| permit.account());
            let client = route(&upstreams, &mut req, account).clone();
            runtime.spawn(async move {
                let at = Instant::now();
                let resp = client.send(req, Some(&forwarded_for)).await;
                // A job whose client left drops the answer here, and with it the slot.
                let _ = early.send(Early::Started { permit, resp, at });
                drop(notice);
            });
        } else {
            let _ = early.send(Early::NotStarted { permit, req });
            drop(notice);
        }
    }))
}

/// Names the upstream account and the queue wait on a job's response.
fn label_response(resp: &mut Response<ProxyBody>, permit: &SlotPermit, named_account: bool) {
    let h = resp.headers_mut();
    h.insert(
        X_QUEUE_WAIT_MS.clone(),
        HeaderValue::from(permit.waited().as_millis() as u64),
    );
    if let Some(position) = permit.position_at_entry() {
        h.insert(
            X_QUEUE_POSITION_AT_ENTRY.clone(),
            HeaderValue::from(position as u64),
        );
    }
    if named_account {
        if let Ok(v) = HeaderValue::from_str(&permit.account().name) {
            h.insert(X_UPSTREAM_ACCOUNT.clone(), v);
        }
    }
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

/// What a created task holds until it ends: its slot, and the client's key fields, which its
/// watcher polls with when the slot's upstream account has no credential of its own.
struct TaskHold {
    permit: SlotPermit,
    client_keys: KeyFields,
}

/// Ends a task's hold at its maximum job time, or earlier when polling sees it finish.
struct Watcher {
    shared: Arc<Shared>,
    inspect_limit: usize,
    tracker: Arc<TaskTracker>,
    id: String,
    poll: Option<TaskPolling>,
    client: Arc<UpstreamClient>,
    credentials: KeyFields,
}

impl Watcher {
    async fn run(self, max_job_time: Duration) {
        // The hold's end is a rule, on the shared clock; the polls are pacing, on real time.
        let mut deadline = self.shared.clock.sleep(max_job_time);
        let mut ended = None;
        if let Some(interval) = self.poll.as_ref().and_then(|p| p.poll_interval) {
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    _ = tokio::time::sleep(interval) => {
                        if let Some(answer) = self.poll_once().await {
                            ended = Some(answer);
                            break;
                        }
                    }
                }
            }
        } else {
            deadline.await;
        }
        // `finish` aborts this watcher, so what the task's end teaches is counted elsewhere.
        let owner = self.tracker.finish(&self.id);
        if let (Some(owner), Some((status, body))) = (owner, ended) {
            let shared = self.shared.clone();
            tokio::spawn(async move { settle_task(&shared, &owner, status, &body).await });
        }
    }

    /// One get-task call with the task's credentials; the answer (status and body) when it
    /// shows the task done.
    async fn poll_once(&self) -> Option<(u16, Bytes)> {
        let tasks = self.poll.as_ref()?;
        let mut req = Request::builder()
            .method(tasks.get_method.clone())
            .uri(tasks.path_for(&self.id));
        if let Ok(host) = HeaderValue::from_str(self.client.host_header()) {
            req = req.header(HOST, host);
        }
        for (name, value) in &self.credentials {
            req = req.header(name, value);
        }
        let req = req
            .body(super::upload::UploadBody::new(RequestBody::empty(), None))
            .ok()?;
        // floodgate's own request: nobody to name in X-Forwarded-For
        match self.client.send(req, None).await {
            Ok(resp) if resp.status().is_success() => {
                let status = resp.status().as_u16();
                let prefix = read_prefix(resp.into_body(), self.inspect_limit, None)
                    .await
                    .ok()?;
                (prefix.is_complete() && is_terminal(tasks, &prefix.bytes))
                    .then_some((status, prefix.bytes))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "task poll failed");
                None
            }
        }
    }
}
