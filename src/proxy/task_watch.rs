//! A task's life after its create response: its slot is held until the task is seen to end —
//! by polling it (active mode), by a get-task answer passing through (passive mode), or at its
//! maximum job time — and what its end teaches is counted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Request, Response};

use super::ctx::Ctx;
use super::inspect::{read_prefix, Peeked};
use super::request_body::RequestBody;
use super::respond::failed;
use super::response_body::{peek, ProxyBody};
use super::settle::Settle;
use super::upload::UploadBody;
use super::upstream::{UpstreamClient, Upstreams};
use crate::classify::ClassId;
use crate::classify::{normalize_path, PathRules};
use crate::config::Config;
use crate::identity::KeyFields;
use crate::identity::{AccountId, Caller, TierId};
use crate::json::string_at as json_string_at;
use crate::penalties::Mode;
use crate::queue::tasks::{HeldTask, TaskJournal, TaskOwner, TaskTracker};
use crate::queue::{JobClass, JobPool, JobTicket, Jobs, SlotPermit, TaskPolling};
use crate::shared::{Policy, Shared};
use crate::store::accounts::hex;
use crate::store::tasks::TaskBook;

/// What a created task holds until it ends: its slot, and the client's key fields, which its
/// watcher polls with when the slot's upstream account has no credential of its own.
pub struct TaskHold {
    pub permit: SlotPermit,
    pub client_keys: KeyFields,
}

/// The task tracker's side of the proxy. Holds the shared state because a task's watcher
/// outlives the request that created it.
pub struct TaskWatch<'a> {
    pub shared: &'a Arc<Shared>,
    pub upstreams: &'a Upstreams,
}

impl TaskWatch<'_> {
    /// The id of a running task this request asks about (a get-task call), if any.
    pub fn asked_about<B>(&self, ctx: &Ctx<'_>, req: &Request<B>) -> Option<String> {
        let tasks = ctx.config().jobs.tasks.as_ref()?;
        let path = normalize_path(req.uri().path(), &PathRules::LITERAL).ok()?;
        let id = tasks.task_id_in(req.method(), &path)?;
        self.shared
            .jobs
            .tracker
            .is_running(id)
            .then(|| id.to_owned())
    }

    /// Task mode: keeps the slot from the create response until the task ends. A failed create
    /// (non-2xx, or no task id) frees the slot at once.
    pub async fn hold(
        &self,
        ctx: &Ctx<'_>,
        mut resp: Response<ProxyBody>,
        peeked: Option<Peeked>,
        hold: TaskHold,
        owner: TaskOwner,
        job: &JobClass,
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
            Some(id) => {
                let now = self.shared.clock.now_ms();
                let held = held_task(ctx, &id, &hold.permit, &owner, now, job.max_job_time);
                // Before the client hears of the task, and before its watcher may see it end
                // (whose removal must come after): a restart keeps its slot, and its follow-up
                // may go to any replica.
                let tracker = &self.shared.jobs.tracker;
                tracker.journal_hold(&held).await;
                self.track(ctx, id.clone(), hold, owner, job.max_job_time);
                if let Some(tasks) = ctx.config().jobs.tasks.as_ref() {
                    let (pool, account) = (&held.pool, &held.upstream_account);
                    tracker
                        .share_origin(&id, pool, account, tasks.follow_up_ttl)
                        .await;
                }
            }
            // too big to read an id from: hold it while the body streams
            None if !peeked.complete => resp.body_mut().hold(hold.permit),
            None => tracing::debug!("create response without a task id; slot freed"),
        }
        resp
    }

    /// Hands the slot to the tracker and starts the task's watcher: the maximum-job-time timer
    /// and, when configured, active polling with the upstream account's credential (or, on a
    /// pool without one, the client's own key fields).
    fn track(
        &self,
        ctx: &Ctx<'_>,
        id: String,
        hold: TaskHold,
        owner: TaskOwner,
        max_job_time: Duration,
    ) {
        let TaskHold {
            permit,
            client_keys,
        } = hold;
        // A named upstream account polls with its own credential; otherwise the task is the
        // client's, and so is the key that may read it.
        let credentials = permit.account().credential.clone();
        let credentials = credentials.map_or(client_keys, |c| vec![c]);
        self.watch(ctx.config(), id, permit, owner, max_job_time, credentials);
    }

    /// Holds a task's slot in the tracker and starts its watcher: the maximum-job-time timer
    /// (`left`) and, when configured and `credentials` can read the task, active polling.
    fn watch(
        &self,
        config: &Config,
        id: String,
        permit: SlotPermit,
        owner: TaskOwner,
        left: Duration,
        credentials: KeyFields,
    ) {
        let tracker = self.shared.jobs.tracker.clone();
        let account = permit.account().clone();
        let client = self.upstreams.client(account.origin.as_deref()).clone();
        let tasks = config.jobs.tasks.as_ref();
        let poll = tasks
            .filter(|t| t.poll_interval.is_some() && !credentials.is_empty())
            .cloned();
        tracker.hold(id.clone(), permit, owner, None);
        let watcher = Watcher {
            shared: self.shared.clone(),
            inspect_limit: config.server.inspect_limit,
            tracker: tracker.clone(),
            id: id.clone(),
            poll,
            client,
            credentials,
        };
        let handle = tokio::spawn(watcher.run(left)).abort_handle();
        tracker.attach_watcher(&id, handle);
    }

    /// Resumes the tasks that held slots before a restart (or on a replica that died): each
    /// holds a slot again on the upstream account it runs on, and its watcher goes on — polling
    /// with the account's credential in active mode, else until a client's get-task shows it
    /// ended or its maximum job time passes. Returns how many were resumed.
    pub async fn resume(&self, book: &Arc<TaskBook>) -> usize {
        let orphans = match book.orphans().await {
            Ok(orphans) => orphans,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the tasks held before; their slots are free");
                return 0;
            }
        };
        let policy = self.shared.policy.load_full();
        let mut resumed = 0;
        for (held, raw) in orphans {
            let tracker = &self.shared.jobs.tracker;
            let now = self.shared.clock.now_ms();
            if tracker.is_running(&held.task) {
                continue; // held here already
            }
            if held.deadline_ms <= now {
                book.ended(&held.task);
                continue;
            }
            let Some(found) = locate(&policy, &self.shared.jobs, &held) else {
                tracing::warn!(task = %held.task, pool = %held.pool, "a held task's pool, tier or class is gone from the config; its slot is free");
                book.ended(&held.task);
                continue;
            };
            match book.adopt(&raw, &held).await {
                Ok(true) => {}
                Ok(false) => continue, // another replica resumed it
                Err(e) => {
                    tracing::warn!(task = %held.task, error = %e, "cannot take a held task over");
                    continue;
                }
            }
            let (pool, ticket) = found.ticket(&policy, &self.shared.jobs);
            let permit = pool.resume(&ticket, found.upstream, &held.leases).await;
            let credentials: KeyFields = permit.account().credential.clone().into_iter().collect();
            let record = HeldTask {
                leases: permit.lease_ids(),
                ..held.clone()
            };
            let left = Duration::from_millis(held.deadline_ms - now);
            tracker.journal_hold(&record).await;
            self.watch(
                &policy.config,
                held.task.clone(),
                permit,
                found.owner,
                left,
                credentials,
            );
            resumed += 1;
        }
        if resumed > 0 {
            tracing::info!(
                tasks = resumed,
                "tasks held before resumed: their slots are held again"
            );
        }
        resumed
    }

    /// Passive observation: a get-task response passing through that shows a terminal status
    /// ends the task, frees its slot and counts what its end teaches.
    pub async fn observe(
        &self,
        ctx: &Ctx<'_>,
        task: &str,
        resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let Some(tasks) = ctx.config().jobs.tasks.as_ref() else {
            return resp;
        };
        if !resp.status().is_success() {
            return resp;
        }
        let (resp, peeked) = match peek(resp, ctx.config().server.inspect_limit).await {
            Ok(read) => read,
            Err(e) => return failed(&self.shared.metrics, ctx, e),
        };
        let Some(peeked) = peeked.filter(|p| p.complete) else {
            return resp;
        };
        if is_terminal(tasks, &peeked.bytes) {
            if let Some(owner) = self.shared.jobs.tracker.finish(task) {
                let status = resp.status().as_u16();
                settle_task(self.shared, &owner, status, &peeked.bytes).await;
            }
        }
        resp
    }
}

/// A task's hold as a restart finds it.
fn held_task(
    ctx: &Ctx<'_>,
    id: &str,
    permit: &SlotPermit,
    owner: &TaskOwner,
    now: u64,
    max_job_time: Duration,
) -> HeldTask {
    HeldTask {
        task: id.to_owned(),
        account: hex(owner.account),
        tier: ctx.tier_name().to_owned(),
        class: ctx.class_name().to_owned(),
        mode: owner.mode.name().to_owned(),
        pool: permit.pool().name.clone(),
        upstream_account: permit.account().name.clone(),
        started_ms: now,
        deadline_ms: now.saturating_add(max_job_time.as_millis() as u64),
        leases: permit.lease_ids(),
        replica: String::new(),
    }
}

/// A held task found again in the running config.
struct Found {
    caller: Caller,
    pool: usize,
    upstream: usize,
    owner: TaskOwner,
}

impl Found {
    fn ticket(&self, policy: &Policy, jobs: &Jobs) -> (Arc<JobPool>, JobTicket) {
        let mut settings = policy.overrides.queue(&policy.config, &self.caller).clone();
        settings.pool = self.pool;
        let gauges = policy.handles.tier_gauges(self.caller.tier);
        jobs.ticket(&settings, &self.caller, Some(self.upstream), gauges)
    }
}

/// Where a held task runs and whose it is, in the running config; `None` when the config lost
/// its pool, account, tier or class.
fn locate(policy: &Policy, jobs: &Jobs, held: &HeldTask) -> Option<Found> {
    let config = &policy.config;
    let pool = jobs.pools.iter().position(|p| p.name == held.pool)?;
    let upstream = jobs.pools[pool].upstream_named(&held.upstream_account)?;
    let account = AccountId(u128::from_str_radix(&held.account, 16).ok()?);
    let tier = TierId(config.tiers.iter().position(|t| t.name == held.tier)? as u16);
    let class = ClassId(config.classes.iter().position(|c| *c == held.class)? as u16);
    let mode = Mode::parse(&held.mode)?;
    Some(Found {
        caller: Caller { account, tier },
        pool,
        upstream,
        owner: TaskOwner {
            account,
            tier,
            class,
            mode,
        },
    })
}

/// Counts what a task's end teaches, under the config running now.
async fn settle_task(shared: &Shared, owner: &TaskOwner, status: u16, body: &[u8]) {
    let policy = shared.policy.load();
    Settle::of(shared)
        .task(&policy.config, owner, status, body)
        .await;
}

/// Whether a get-task response body shows a terminal status.
fn is_terminal(tasks: &TaskPolling, body: &[u8]) -> bool {
    json_string_at(body, &tasks.status_pointer).is_some_and(|s| tasks.terminal.contains(&s))
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
        let req = req.body(UploadBody::new(RequestBody::empty(), None)).ok()?;
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
