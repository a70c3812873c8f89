//! The job stage of a request's life: wait for a slot, forward on the chosen upstream account,
//! and keep the slot as long as the job runs — until the response is sent (sync mode) or until
//! the task is seen to finish (task mode).

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, HOST, RETRY_AFTER};
use http::{Request, Response};
use hyper::body::Incoming;

use super::inspect::{json_string_at, read_prefix};
use super::upstream::UpstreamClient;
use super::{Ctx, Proxy, ProxyBody, RequestBody};
use crate::error::ProxyError;
use crate::queue::tasks::TaskTracker;
use crate::queue::{JobClass, JobMode, JobPool, JobTicket, SlotPermit, TaskPolling};

/// Names the upstream account that took a job.
pub static X_UPSTREAM_ACCOUNT: HeaderName = HeaderName::from_static("x-floodgate-upstream-account");
/// How long a job waited in its queue, in milliseconds.
pub static X_QUEUE_WAIT_MS: HeaderName = HeaderName::from_static("x-queue-wait-ms");

/// Rest for an upstream account that answered 429 without a usable Retry-After.
const DEFAULT_COOLDOWN_MS: u64 = 5_000;

impl Proxy {
    /// Runs a job: queue for a slot, forward, hold the slot for the job's lifetime. A job refused
    /// by an upstream account with 429 rests that account and goes to the front of the queue
    /// for another one.
    pub(super) async fn run_job(
        &self,
        ctx: &Ctx<'_>,
        req: Request<Incoming>,
        job: &JobClass,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let config = &ctx.policy.config;
        let (parts, body) = req.into_parts();
        let prefix = read_prefix(body)
            .await
            .map_err(|e| ProxyError::ClientBody(e.to_string()))?;
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
        let tier = &config.tier(ctx.caller.tier).name;
        let attempts = jobs.pools[settings.pool].accounts.len();
        let mut front = false;
        for attempt in 1.. {
            let gauges = ctx.policy.handles.tier_gauges(ctx.caller.tier);
            let (pool, mut ticket) = jobs.ticket(settings, &ctx.caller, affinity, gauges);
            ticket.front = front;
            let permit = if job.shadow {
                self.shadow_slot(ctx, &pool, &ticket)?
            } else {
                pool.acquire(&ticket).await?
            };
            self.shared
                .metrics
                .queue_wait(tier, permit.waited().as_secs_f64());
            let body = RequestBody::Prefixed {
                prefix: Some(bytes.clone()),
                rest: rest.take(),
            };
            let account = (settings.pool != 0).then(|| permit.account().clone());
            let mut resp = self
                .forward(
                    ctx,
                    Request::from_parts(parts.clone(), body),
                    account.as_ref(),
                )
                .await?;
            if resp.status() == http::StatusCode::TOO_MANY_REQUESTS && settings.pool != 0 {
                let rest_ms = retry_after_ms(&resp).unwrap_or(DEFAULT_COOLDOWN_MS);
                pool.cool_down(permit.upstream(), rest_ms);
                self.shared.metrics.cooldown(&permit.account().name);
                tracing::info!(upstream_account = %permit.account().name, rest_ms, "upstream account rests after 429");
                if retriable && attempt < attempts && affinity.is_none() {
                    front = true;
                    continue; // dropping the permit frees the slot
                }
            }
            label_response(&mut resp, &permit, settings.pool != 0);
            return Ok(match job.mode {
                JobMode::Sync => {
                    resp.body_mut().hold(permit);
                    resp
                }
                JobMode::Task => self.hold_task(resp, permit, job, ctx).await,
            });
        }
        unreachable!("the loop returns")
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
            self.shared.metrics.would_queue(tier);
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
    async fn hold_task(
        &self,
        resp: Response<ProxyBody>,
        permit: SlotPermit,
        job: &JobClass,
        ctx: &Ctx<'_>,
    ) -> Response<ProxyBody> {
        if !resp.status().is_success() {
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let ProxyBody::Upstream {
            body: upstream_body,
            ..
        } = body
        else {
            return Response::from_parts(parts, body);
        };
        let prefix = match read_prefix(upstream_body).await {
            Ok(p) => p,
            Err(e) => return self.failed(ctx, ProxyError::UpstreamProtocol(e.to_string())),
        };
        let task_id = job
            .task_id_pointer
            .as_deref()
            .and_then(|p| prefix.json_string(p));
        let body = match prefix.rest {
            Some(rest) => {
                let mut b = ProxyBody::Upstream {
                    prefix: Some(prefix.bytes),
                    body: rest,
                    permit: None,
                };
                if task_id.is_none() {
                    b.hold(permit); // too big to read an id from: hold it while the body streams
                    return Response::from_parts(parts, b);
                }
                b
            }
            None => ProxyBody::full(prefix.bytes),
        };
        match task_id {
            Some(id) => self.track_task(id, permit, job, ctx),
            None => tracing::debug!("create response without a task id; slot freed"),
        }
        Response::from_parts(parts, body)
    }

    /// Hands the slot to the tracker and starts the task's watcher: the maximum-job-time timer
    /// and, when configured, active polling with the upstream account's credentials.
    fn track_task(&self, id: String, permit: SlotPermit, job: &JobClass, ctx: &Ctx<'_>) {
        let tracker = self.shared.jobs.tracker.clone();
        let account = permit.account().clone();
        let client = match &account.authority {
            Some(a) => self
                .account_upstreams
                .get(a)
                .unwrap_or(&self.upstream)
                .clone(),
            None => self.upstream.clone(),
        };
        let poll = ctx
            .policy
            .config
            .jobs
            .tasks
            .clone()
            .filter(|t| t.poll_interval.is_some());
        tracker.hold(id.clone(), permit, None);
        let watcher = Watcher {
            tracker: tracker.clone(),
            id: id.clone(),
            poll,
            client,
            credential: account.credential,
        };
        let handle = tokio::spawn(watcher.run(job.max_job_time)).abort_handle();
        tracker.attach_watcher(&id, handle);
    }

    /// Passive observation: a get-task response passing through that shows a terminal status
    /// ends the task and frees its slot.
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
        let (parts, body) = resp.into_parts();
        let ProxyBody::Upstream {
            body: upstream_body,
            permit,
            ..
        } = body
        else {
            return Response::from_parts(parts, body);
        };
        let prefix = match read_prefix(upstream_body).await {
            Ok(p) => p,
            Err(e) => return self.failed(ctx, ProxyError::UpstreamProtocol(e.to_string())),
        };
        if prefix.is_complete() && is_terminal(tasks, &prefix.bytes) {
            self.shared.jobs.tracker.finish(task);
        }
        let body = match prefix.rest {
            Some(rest) => ProxyBody::Upstream {
                prefix: Some(prefix.bytes),
                body: rest,
                permit,
            },
            None => ProxyBody::full(prefix.bytes),
        };
        Response::from_parts(parts, body)
    }
}

/// Whether a get-task response body shows a terminal status.
fn is_terminal(tasks: &TaskPolling, body: &[u8]) -> bool {
    json_string_at(body, &tasks.status_pointer).is_some_and(|s| tasks.terminal.contains(&s))
}

/// Names the upstream account and the queue wait on a job's response.
fn label_response(resp: &mut Response<ProxyBody>, permit: &SlotPermit, named_account: bool) {
    let h = resp.headers_mut();
    h.insert(
        X_QUEUE_WAIT_MS.clone(),
        HeaderValue::from(permit.waited().as_millis() as u64),
    );
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

/// Ends a task's hold at its maximum job time, or earlier when polling sees it finish.
struct Watcher {
    tracker: Arc<TaskTracker>,
    id: String,
    poll: Option<TaskPolling>,
    client: Arc<UpstreamClient>,
    credential: Option<(HeaderName, HeaderValue)>,
}

impl Watcher {
    async fn run(self, max_job_time: Duration) {
        let deadline = tokio::time::sleep(max_job_time);
        tokio::pin!(deadline);
        if let Some(interval) = self.poll.as_ref().and_then(|p| p.poll_interval) {
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    _ = tokio::time::sleep(interval) => {
                        if self.poll_once().await {
                            break;
                        }
                    }
                }
            }
        } else {
            deadline.await;
        }
        self.tracker.finish(&self.id);
    }

    /// One get-task call with the upstream account's credentials; true when the task is done.
    async fn poll_once(&self) -> bool {
        let Some(tasks) = &self.poll else {
            return false;
        };
        let mut req = Request::builder()
            .method(tasks.get_method.clone())
            .uri(tasks.path_for(&self.id));
        if let Ok(host) = HeaderValue::from_str(self.client.authority()) {
            req = req.header(HOST, host);
        }
        if let Some((name, value)) = &self.credential {
            req = req.header(name, value);
        }
        let Ok(req) = req.body(super::upload::UploadBody::new(RequestBody::empty(), None)) else {
            return false;
        };
        match self.client.send(req).await {
            Ok(resp) if resp.status().is_success() => match read_prefix(resp.into_body()).await {
                Ok(prefix) => prefix.is_complete() && is_terminal(tasks, &prefix.bytes),
                Err(_) => false,
            },
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %e, "task poll failed");
                false
            }
        }
    }
}
