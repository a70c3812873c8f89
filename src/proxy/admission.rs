//! The penalty stage of a job's life, the I/O edge around [`crate::penalties`]: admit a job
//! submission (penalties and rate limits in one store step), mark what is forwarded, and count
//! what the upstream's answers teach — incorrect tasks, and relax jobs earned by successful fast
//! ones.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::inspect::Peeked;
use super::{Ctx, Proxy, ProxyBody};
use crate::identity::{AccountId, TierId};
use crate::json::string_at as json_string_at;
use crate::limits::{LimitKind, Receipt, Usage};
use crate::penalties::{Admission, Event, JobCheck, JobFacts, Marks, On, PenaltyRefusal};
use crate::queue::tasks::TaskOwner;
use crate::shared::Shared;

/// Tells the upstream (and the client) that credits of incorrect tasks are not refunded.
pub static X_BILLING: HeaderName = HeaderName::from_static("x-floodgate-billing");
/// Tells the upstream (and the client) that this job costs this many times the usual price.
pub static X_COST_MULTIPLIER: HeaderName = HeaderName::from_static("x-floodgate-cost-multiplier");
const NO_REFUND: HeaderValue = HeaderValue::from_static("no-refund");

impl Proxy {
    /// Checks a job submission's penalties and rate limits and consumes them, in one store step.
    /// `Ok`: the usage headers (when the class is rate limited), the marks the job carries and
    /// the receipt of what it consumed; `Err`: the finished 429 (or store failure) response. The
    /// job has not been queued yet.
    pub(super) async fn admit_job(
        &self,
        ctx: &Ctx<'_>,
        facts: JobFacts,
    ) -> Result<(Option<Usage>, Marks, Receipt), Response<ProxyBody>> {
        let (policy, caller, class) = (ctx.policy, ctx.caller, ctx.class);
        let config = &policy.config;
        let rules = config.tier(caller.tier).rules(class);
        let check = JobCheck {
            policy: config.penalties.tier(caller.tier),
            ids: config.penalties.ids,
            facts,
        };
        if rules.is_empty() && check.policy.is_empty() && !facts.is_relax() {
            policy.handles.admitted(class, caller.tier);
            return Ok((None, Marks::default(), Receipt::default()));
        }
        let now = self.shared.clock.now_ms();
        let admission = self
            .shared
            .store
            .admit_job(caller.account, rules, &check, now)
            .await;
        let usage_if_limited = |usage| (!rules.is_empty()).then_some(usage);
        match admission {
            Ok(Admission::Admitted(usage, marks, receipt)) => {
                policy.handles.admitted(class, caller.tier);
                self.shared.status.record(caller, class, &usage, now);
                Ok((usage_if_limited(usage), marks, receipt))
            }
            Ok(Admission::Limited(usage, refusal)) => Err(self.limited(ctx, &usage, &refusal, now)),
            Ok(Admission::Penalised(usage, refusal)) => {
                // A class without rate limits has an empty usage: no X-RateLimit-Limit headers.
                let mut resp = self.limited(ctx, &usage, &refusal.as_refusal(), now);
                *resp.body_mut() = ProxyBody::full(penalty_body(&refusal).into());
                Err(resp)
            }
            Err(e) => Err(self.store_failed(&e)),
        }
    }

    /// Gives back what an admitted job consumed when the queue turned it away before it ran:
    /// only admitted requests consume quota. Returns the usage headers as they stand after it.
    pub(super) async fn give_back(
        &self,
        ctx: &Ctx<'_>,
        receipt: &Receipt,
        usage: Option<Usage>,
    ) -> Option<Usage> {
        let now = self.shared.clock.now_ms();
        match self
            .shared
            .store
            .give_back(ctx.caller.account, receipt, now)
            .await
        {
            Ok(0) => usage,
            Ok(_) => usage.map(Usage::given_back),
            Err(e) => {
                tracing::warn!(error = %e, "could not give back a turned-away job's quota");
                usage
            }
        }
    }

    /// Judges a job's own answer; an incorrect task is counted for the caller. Returns whether
    /// it was incorrect.
    pub(super) async fn judge_answer(
        &self,
        ctx: &Ctx<'_>,
        status: StatusCode,
        peeked: Option<&Peeked>,
    ) -> bool {
        let penalties = &ctx.policy.config.penalties;
        if !penalties.judges(ctx.class) {
            return false;
        }
        let incorrect = penalties.judge.is_incorrect(
            On::Response,
            status.as_u16(),
            peeked.map(|p| &p.bytes[..]),
            peeked.is_some_and(|p| p.complete),
        );
        if incorrect {
            count(
                &self.shared,
                ctx.caller.account,
                ctx.caller.tier,
                ctx.class,
                Event::Incorrect,
            )
            .await;
        }
        incorrect
    }

    /// A sync job's answer: a successful fast or turbo job of an earning class earns a relax job.
    pub(super) async fn settle_sync(&self, ctx: &Ctx<'_>, mode: crate::penalties::Mode) {
        if ctx.policy.config.penalties.earns(ctx.class, mode) {
            let (account, tier) = (ctx.caller.account, ctx.caller.tier);
            count(&self.shared, account, tier, ctx.class, Event::RelaxEarned).await;
        }
    }

    /// Whether judging this answer of the job's class needs its body (a JSON body only: other
    /// bodies stream through unread).
    pub(super) fn judge_needs_body(&self, ctx: &Ctx<'_>, resp: &Response<ProxyBody>) -> bool {
        let penalties = &ctx.policy.config.penalties;
        penalties.judges(ctx.class)
            && penalties
                .judge
                .needs_body(On::Response, resp.status().as_u16())
            && is_json(resp.headers())
    }

    /// Counts the marks of a job that was forwarded.
    pub(super) fn count_marks(&self, ctx: &Ctx<'_>, marks: &Marks) {
        let tier = &ctx.policy.config.tier(ctx.caller.tier).name;
        if marks.no_refund {
            self.shared
                .metrics
                .penalties
                .billing_mark(tier, "no_refund");
        }
        if marks.cost_multiplier.is_some() {
            self.shared
                .metrics
                .penalties
                .billing_mark(tier, "surcharge");
        }
    }
}

/// What the end of a task teaches: a successful one earns a relax job (fast or turbo, of an
/// earning class); a failed one the judge's task rules call incorrect is counted. `status` and
/// `body` are the get-task answer that showed the task end.
pub(crate) async fn settle_task(shared: &Shared, owner: &TaskOwner, status: u16, body: &[u8]) {
    let policy = shared.policy.load();
    let config = &policy.config;
    let Some(tasks) = config.jobs.tasks.as_ref() else {
        return;
    };
    let penalties = &config.penalties;
    let succeeded =
        json_string_at(body, &tasks.status_pointer).is_some_and(|s| tasks.success.contains(&s));
    let event = if succeeded {
        penalties
            .earns(owner.class, owner.mode)
            .then_some(Event::RelaxEarned)
    } else {
        let incorrect = !tasks.success.is_empty()
            && penalties.judges(owner.class)
            && penalties
                .judge
                .is_incorrect(On::Task, status, Some(body), true);
        incorrect.then_some(Event::Incorrect)
    };
    if let Some(event) = event {
        count(shared, owner.account, owner.tier, owner.class, event).await;
    }
}

/// Counts one event in the account's tally for today, and in the metrics. A store failure is
/// logged: the answer has been given, and the tally is only the worse for it.
async fn count(
    shared: &Shared,
    account: AccountId,
    tier: TierId,
    class: crate::classify::ClassId,
    event: Event,
) {
    let policy = shared.policy.load();
    let config = &policy.config;
    let now = shared.clock.now_ms();
    let ids = config.penalties.ids;
    if let Err(e) = shared.store.record(account, event, &ids, now).await {
        tracing::error!(error = %e, ?event, "cannot count a penalty event");
        return;
    }
    // A task that settles after a reload may find fewer tiers or classes: then no metric.
    let class = config.classes.get(class.0 as usize);
    let Some(tier) = config.tiers.get(tier.0 as usize).map(|t| &t.name) else {
        return;
    };
    match (event, class) {
        (Event::Incorrect, Some(class)) => shared.metrics.penalties.incorrect_task(class, tier),
        (Event::RelaxEarned, _) => shared.metrics.penalties.relax_earned(tier),
        (Event::Incorrect, None) => {}
    }
}

/// Marks a forwarded job for the upstream (or its response for the client).
pub(super) fn write_marks(headers: &mut HeaderMap, marks: &Marks) {
    if marks.no_refund {
        headers.insert(X_BILLING.clone(), NO_REFUND);
    }
    if let Some(m) = marks.cost_multiplier {
        headers.insert(X_COST_MULTIPLIER.clone(), HeaderValue::from(m));
    }
}

/// The 429 body of a penalty: the seed's message, and what refused the job.
fn penalty_body(r: &PenaltyRefusal) -> String {
    let (error, detail) = match r.kind {
        LimitKind::Relax => (
            "relax_limit",
            format!(
                "{} relax jobs today, the allowance (plan and earned) is {}; relax jobs resume \
                 at 00:00 UTC, fast and turbo jobs are not affected",
                r.count, r.allowance
            ),
        ),
        _ => (
            "incorrect_task_limit",
            format!(
                "{} incorrect tasks today, the allowance is {}; job submissions resume at \
                 00:00 UTC",
                r.count, r.allowance
            ),
        ),
    };
    serde_json::json!({
        "message": "Too Many Attempts.",
        "error": error,
        "detail": detail,
        "count": r.count,
        "allowance": r.allowance,
    })
    .to_string()
}

/// A JSON answer (`application/json`, `application/problem+json`, …).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"))
}
