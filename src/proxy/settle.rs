//! What a job's answer teaches, the I/O edge around [`crate::penalties`]' judge: an incorrect
//! task is counted against its caller, a successful fast or turbo job earns a relax job, and
//! the billing marks a forwarded job carried are counted.

use http::header::HeaderMap;
use http::{Response, StatusCode};

use super::ctx::Ctx;
use super::inspect::Peeked;
use super::response_body::ProxyBody;
use crate::classify::ClassId;
use crate::clock::Clock;
use crate::config::Config;
use crate::identity::{AccountId, TierId};
use crate::json::string_at as json_string_at;
use crate::metrics::PenaltyMetrics;
use crate::penalties::{Event, Marks, Mode, On};
use crate::queue::tasks::TaskOwner;
use crate::shared::Shared;
use crate::store::Store;

/// Where the lessons are kept: the account's daily tally in the store, and the metrics.
pub struct Settle<'a> {
    store: &'a Store,
    clock: &'a dyn Clock,
    metrics: &'a PenaltyMetrics,
}

impl<'a> Settle<'a> {
    pub fn of(shared: &'a Shared) -> Self {
        Self {
            store: &shared.store,
            clock: &*shared.clock,
            metrics: &shared.metrics.penalties,
        }
    }

    /// Judges a job's own answer; an incorrect task is counted for the caller. Returns whether
    /// it was incorrect.
    pub async fn answer(&self, ctx: &Ctx<'_>, status: StatusCode, peeked: Option<&Peeked>) -> bool {
        let penalties = &ctx.config().penalties;
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
            let (account, tier) = (ctx.caller.account, ctx.caller.tier);
            self.count(ctx.config(), account, tier, ctx.class, Event::Incorrect)
                .await;
        }
        incorrect
    }

    /// A sync job's answer: a successful fast or turbo job of an earning class earns a relax job.
    pub async fn sync_job(&self, ctx: &Ctx<'_>, mode: Mode) {
        if ctx.config().penalties.earns(ctx.class, mode) {
            let (account, tier) = (ctx.caller.account, ctx.caller.tier);
            self.count(ctx.config(), account, tier, ctx.class, Event::RelaxEarned)
                .await;
        }
    }

    /// What the end of a task teaches: a successful one earns a relax job (fast or turbo, of an
    /// earning class); a failed one the judge's task rules call incorrect is counted. `status`
    /// and `body` are the get-task answer that showed the task end; `config` the one running
    /// now (a task can outlive the config it started under).
    pub async fn task(&self, config: &Config, owner: &TaskOwner, status: u16, body: &[u8]) {
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
            self.count(config, owner.account, owner.tier, owner.class, event)
                .await;
        }
    }

    /// Counts the marks of a job that was forwarded.
    pub fn marks(&self, ctx: &Ctx<'_>, marks: &Marks) {
        if marks.no_refund {
            self.metrics.billing_mark(ctx.tier_name(), "no_refund");
        }
        if marks.cost_multiplier.is_some() {
            self.metrics.billing_mark(ctx.tier_name(), "surcharge");
        }
    }

    /// Counts one event in the account's tally for today, and in the metrics. A store failure
    /// is logged: the answer has been given, and the tally is only the worse for it.
    async fn count(
        &self,
        config: &Config,
        account: AccountId,
        tier: TierId,
        class: ClassId,
        event: Event,
    ) {
        let now = self.clock.now_ms();
        let ids = config.penalties.ids;
        if let Err(e) = self.store.record(account, event, &ids, now).await {
            tracing::error!(error = %e, ?event, "cannot count a penalty event");
            return;
        }
        // A task that settles after a reload may find fewer tiers or classes: then no metric.
        let class = config.classes.get(class.0 as usize);
        let Some(tier) = config.tiers.get(tier.0 as usize).map(|t| &t.name) else {
            return;
        };
        match (event, class) {
            (Event::Incorrect, Some(class)) => self.metrics.incorrect_task(class, tier),
            (Event::RelaxEarned, _) => self.metrics.relax_earned(tier),
            (Event::Incorrect, None) => {}
        }
    }
}

/// Whether judging this answer of the job's class needs its body (a JSON body only: other
/// bodies stream through unread).
pub fn needs_body(ctx: &Ctx<'_>, resp: &Response<ProxyBody>) -> bool {
    let penalties = &ctx.config().penalties;
    penalties.judges(ctx.class)
        && penalties
            .judge
            .needs_body(On::Response, resp.status().as_u16())
        && is_json(resp.headers())
}

/// A JSON answer (`application/json`, `application/problem+json`, …).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"))
}
