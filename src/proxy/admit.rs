//! The admission stage: a request's rate limits — and for a job, its penalties with them — checked
//! and consumed in one store step, and the 429 (or 503) when they refuse. The decision itself is
//! pure ([`crate::limits`], [`crate::penalties`]); the store makes it atomic.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::ctx::Ctx;
use super::respond::json_response;
use super::response_body::ProxyBody;
use crate::clock::Clock;
use crate::limits::headers::{self as rl_headers, Ietf};
use crate::limits::{Decision, LimitKind, Receipt, Refusal, Rule, Usage};
use crate::metrics::Metrics;
use crate::penalties::{Admission, JobCheck, JobFacts, Marks, PenaltyRefusal, Shadowed};
use crate::shared::Shared;
use crate::status::StatusBoard;
use crate::store::{Store, StoreError};

/// The seed API's 429 body, byte for byte.
const TOO_MANY_ATTEMPTS: &str = r#"{"message": "Too Many Attempts."}"#;

/// A refused admission: the finished 429 (or 503) response.
pub type Refused = Response<ProxyBody>;

/// What admission reads and writes: the limit store on the shared clock, the status board's
/// charts, the request and penalty counters.
pub struct Admit<'a> {
    store: &'a Store,
    clock: &'a dyn Clock,
    status: &'a StatusBoard,
    metrics: &'a Metrics,
}

/// An admitted job: the usage headers (when its class is rate limited), the marks it carries
/// and the receipt of what it consumed.
pub struct AdmittedJob {
    pub usage: Option<Usage>,
    pub marks: Marks,
    pub receipt: Receipt,
}

impl<'a> Admit<'a> {
    pub fn of(shared: &'a Shared) -> Self {
        Self {
            store: &shared.store,
            clock: &*shared.clock,
            status: &shared.status,
            metrics: &shared.metrics,
        }
    }

    /// Checks and consumes the caller's limits for its class. `Ok(None)`: the class is not
    /// limited for this tier.
    pub async fn request(&self, ctx: &Ctx<'_>) -> Result<Option<Usage>, Refused> {
        self.check(ctx)
            .await
            .map_err(|denied| beyond_every_wait(ctx, denied.answer(ctx.ietf())))
    }

    /// [`Admit::request`]'s decision before its answer is built: a refusal is counted and
    /// recorded here, and its caller renders it (the plain path into a map it reuses).
    pub async fn check(&self, ctx: &Ctx<'_>) -> Result<Option<Usage>, Denied> {
        let (policy, caller, class) = (ctx.policy, ctx.caller, ctx.class);
        let rules = ctx.tier.rules(class);
        let now = self.clock.now_ms();
        if rules.is_empty() {
            policy.handles.admitted(class, caller.tier);
            self.shadow(ctx, now).await;
            return Ok(None);
        }
        let decided = match ctx.lists_windows() {
            false => {
                self.store
                    .check_and_consume_units(caller.account, rules, ctx.units, now)
                    .await
            }
            // Boxed: only the IETF fields list every window; every other request's future
            // stays as it is.
            true => Box::pin(self.listed(ctx, rules, now)).await,
        };
        match decided {
            Ok(Decision::Admitted(usage)) => {
                policy.handles.admitted(class, caller.tier);
                self.status.record(caller, class, &usage, now);
                self.shadow(ctx, now).await;
                Ok(Some(usage))
            }
            Ok(Decision::Refused(usage, refusal)) => {
                self.count_limited(ctx, &usage, &refusal, now);
                Err(Denied::Limited(usage, refusal))
            }
            Err(e) => Err(Denied::StoreFailed(e)),
        }
    }

    /// Checks a job submission's penalties and rate limits and consumes them, in one store step.
    /// The job has not been queued yet.
    pub async fn job(&self, ctx: &Ctx<'_>, facts: JobFacts) -> Result<AdmittedJob, Refused> {
        let (policy, caller, class) = (ctx.policy, ctx.caller, ctx.class);
        let config = &policy.config;
        let rules = ctx.tier.rules(class);
        let check = JobCheck {
            policy: config.penalties.tier(caller.tier),
            ids: config.penalties.ids,
            facts,
            units: ctx.units,
        };
        if rules.is_empty() && check.policy.is_empty() && !facts.is_relax() {
            policy.handles.admitted(class, caller.tier);
            return Ok(AdmittedJob {
                usage: None,
                marks: Marks::default(),
                receipt: Receipt::default(),
            });
        }
        let now = self.clock.now_ms();
        let admission = match ctx.lists_windows() {
            false => {
                self.store
                    .admit_job(caller.account, rules, &check, now)
                    .await
            }
            true => self.job_listed(ctx, rules, &check, now).await,
        };
        match admission {
            Ok(Admission::Admitted(usage, marks, receipt)) => {
                policy.handles.admitted(class, caller.tier);
                self.status.record(caller, class, &usage, now);
                if !marks.shadow.is_empty() {
                    self.shadow_penalties(ctx, &marks.shadow);
                }
                Ok(AdmittedJob {
                    // A class without rate limits has an empty usage: no X-RateLimit headers.
                    usage: (!rules.is_empty()).then_some(usage),
                    marks,
                    receipt,
                })
            }
            Ok(Admission::Limited(usage, refusal)) => Err(beyond_every_wait(
                ctx,
                self.limited(ctx, &usage, &refusal, now),
            )),
            Ok(Admission::Penalised(usage, refusal)) => {
                let mut resp = self.limited(ctx, &usage, &refusal.as_refusal(), now);
                *resp.body_mut() = ProxyBody::full(penalty_body(&refusal).into());
                Err(resp)
            }
            Err(e) => Err(store_failed(&e)),
        }
    }

    /// [`Store::check_and_consume_listed`] for the IETF fields: the decision, with every window
    /// it listed left in `ctx` for the usage fields.
    async fn listed(
        &self,
        ctx: &Ctx<'_>,
        rules: &[Rule],
        now: u64,
    ) -> Result<Decision, StoreError> {
        let account = ctx.caller.account;
        let listed = self
            .store
            .check_and_consume_listed(account, rules, ctx.units, now);
        let (decision, windows) = listed.await?;
        ctx.list(windows);
        Ok(decision)
    }

    /// [`Store::admit_job_listed`] for the IETF fields: the admission, with every window it
    /// listed left in `ctx` for the usage fields.
    async fn job_listed(
        &self,
        ctx: &Ctx<'_>,
        rules: &[Rule],
        check: &JobCheck,
        now: u64,
    ) -> Result<Admission, StoreError> {
        let account = ctx.caller.account;
        let (admission, windows) = self
            .store
            .admit_job_listed(account, rules, check, now)
            .await?;
        ctx.list(windows);
        Ok(admission)
    }

    /// Gives back what an admitted job consumed when the queue turned it away before it ran:
    /// only admitted requests consume quota. Returns the usage headers as they stand after it
    /// (and leaves the IETF fields' windows so in `ctx`).
    pub async fn give_back(
        &self,
        ctx: &Ctx<'_>,
        receipt: &Receipt,
        usage: Option<Usage>,
    ) -> Option<Usage> {
        let now = self.clock.now_ms();
        match self.store.give_back(ctx.caller.account, receipt, now).await {
            Ok(0) => usage,
            Ok(_) => {
                if let Some(windows) = ctx.take_listed() {
                    ctx.list(windows.given_back(ctx.units));
                }
                usage.map(Usage::given_back)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not give back a turned-away job's quota");
                usage
            }
        }
    }

    /// Shadow limits: decided and counted as if enforced, never refusing. They are checked
    /// only for a request the enforced limits admitted (one they refuse is refused whatever
    /// the shadow rules say) and on their own counters, so they take no part in the enforced
    /// all-or-nothing decision; among themselves they consume all or none, like enforced rules.
    async fn shadow(&self, ctx: &Ctx<'_>, now: u64) {
        let shadow = ctx.tier.shadow_rules(ctx.class);
        if shadow.is_empty() {
            return;
        }
        match self
            .store
            .check_and_consume_units(ctx.caller.account, shadow, ctx.units, now)
            .await
        {
            Ok(Decision::Refused(_, refusal)) => {
                let (class, tier, kind) = (ctx.class_name(), ctx.tier_name(), refusal.kind.name());
                self.metrics.requests.would_limit(class, tier, kind);
                tracing::info!(
                    account = %ctx.caller.account.short(), class, tier,
                    limit = kind, retry_after_secs = refusal.retry_after_secs,
                    "shadow limit would refuse; request admitted"
                );
            }
            Ok(Decision::Admitted(_)) => {}
            Err(e) => tracing::debug!(error = %e, "state store failed on a shadow limit"),
        }
    }

    /// Penalties in shadow mode: what they would have done to a job that goes through as it
    /// is, counted and logged.
    fn shadow_penalties(&self, ctx: &Ctx<'_>, shadowed: &Shadowed) {
        let tier = ctx.tier_name();
        for (penalty, effect) in shadowed.effects() {
            self.metrics
                .penalties
                .would_penalise(tier, penalty, effect.name());
        }
        tracing::info!(
            account = %ctx.caller.account.short(), class = ctx.class_name(), tier,
            shadow_penalty = shadowed.describe(),
            "shadow penalty would apply; job admitted as it is"
        );
    }

    /// The 429 for a request a limit (or penalty) refused, counted.
    fn limited(&self, ctx: &Ctx<'_>, usage: &Usage, refusal: &Refusal, now: u64) -> Refused {
        self.count_limited(ctx, usage, refusal, now);
        too_many_attempts(usage, refusal, ctx.ietf())
    }

    /// A refusal by a limit (or penalty) counted, on the status board and logged.
    fn count_limited(&self, ctx: &Ctx<'_>, usage: &Usage, refusal: &Refusal, now: u64) {
        let (caller, class) = (ctx.caller, ctx.class);
        ctx.policy.handles.limited(class, caller.tier, refusal.kind);
        self.status.record(caller, class, usage, now);
        tracing::debug!(
            account = %caller.account.short(), class = ctx.class_name(),
            limit = refusal.kind.name(), retry_after_secs = refusal.retry_after_secs,
            "rate limited"
        );
    }
}

/// A 429 for a request costing more units than one of its windows holds in all (a body's
/// cost under `cost_from`, an account's runtime limits) loses its `Retry-After`: no wait would
/// admit it.
fn beyond_every_wait(ctx: &Ctx<'_>, mut resp: Refused) -> Refused {
    let never = ctx
        .tier
        .rules(ctx.class)
        .iter()
        .any(|r| r.limit < ctx.units);
    if never && resp.status() == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().remove(RETRY_AFTER);
    }
    resp
}

/// A request [`Admit::check`] did not admit.
pub enum Denied {
    /// A limit refused it: the usage and the refusal its 429 reports.
    Limited(Usage, Refusal),
    /// The limit state could not be read.
    StoreFailed(StoreError),
}

impl Denied {
    /// The answer: a 429 or a 503 (`ietf`: as for [`rl_headers::write_usage`]).
    pub fn answer(self, ietf: Option<Ietf<'_>>) -> Refused {
        match self {
            Denied::Limited(usage, refusal) => too_many_attempts(&usage, &refusal, ietf),
            Denied::StoreFailed(e) => store_failed(&e),
        }
    }
}

/// The 503 for a request whose limit state could not be read.
fn store_failed(e: &StoreError) -> Refused {
    tracing::warn!(error = %e, "state store failed");
    let mut resp = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        r#"{"error": "store_unavailable", "message": "rate limit state unavailable"}"#,
    );
    // The circuit breaker retries the store within about a second.
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The 429's status and body alone, for a writer that renders its fields itself (the
/// usage, the content type, the limit type and Retry-After).
pub fn too_many_attempts_body() -> Refused {
    let mut resp = Response::new(ProxyBody::full(Bytes::from_static(
        TOO_MANY_ATTEMPTS.as_bytes(),
    )));
    *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    resp
}

/// The 429 answer: the seed's body, the usage headers, the limit type and an exact Retry-After.
fn too_many_attempts(usage: &Usage, refusal: &Refusal, ietf: Option<Ietf<'_>>) -> Refused {
    let mut resp = too_many_attempts_body();
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rl_headers::write_usage(headers, usage, ietf);
    rl_headers::write_refusal(headers, refusal);
    resp
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
