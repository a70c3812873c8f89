//! One attempt of a job: wait for a slot in its pool and send it on the upstream account the
//! slot names. A job that had to wait is sent by whoever freed its slot, on that worker (see
//! [`start_on_grant`]), so a freed slot goes back to work without a wake-up in between.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use tokio::sync::oneshot;

use super::ctx::Ctx;
use super::error::ProxyError;
use super::forward::{route, Forwarder};
use super::header_rewrite::Forwarded;
use super::response_body::ProxyBody;
use super::upstream::{ForwardBody, UpstreamBody, Upstreams};
use crate::metrics::JobMetrics;
use crate::queue::{
    GrantNotice, Granted, JobPool, JobTicket, QueueError, SlotPermit, StartOnGrant,
};

/// Where and how one attempt runs.
pub struct Attempt<'p> {
    pub pool: &'p Arc<JobPool>,
    pub ticket: &'p JobTicket,
    /// Shadow queue: a slot at once, past the caps if need be; a wait only counted.
    pub shadow: bool,
    /// Sent as the slot's upstream account (its credential, its base URL).
    pub named_account: bool,
}

/// The slot-waiting stage: sends on this worker's connections, counts in the job metrics.
pub struct QueueWait<'a> {
    pub forward: &'a Forwarder<'a>,
    pub metrics: &'a JobMetrics,
}

impl QueueWait<'_> {
    /// Waits for a slot and sends the job; the slot and the upstream's answer — or, when the
    /// send failed, why (with the slot, so the failure is counted for its upstream account).
    pub async fn send(
        &self,
        ctx: &Ctx<'_>,
        attempt: Attempt<'_>,
        req: Request<ForwardBody>,
    ) -> Result<(SlotPermit, Result<Response<ProxyBody>, ProxyError>), ProxyError> {
        let named = attempt.named_account;
        let mut unsent = Some(req);
        let mut early = None; // only a job that has to wait gets a channel for its hook
        let granted = if attempt.shadow {
            Granted::Permit(self.shadow_slot(ctx, attempt.pool, attempt.ticket)?)
        } else {
            let on_wait = || {
                let (tx, rx) = oneshot::channel();
                early = Some(rx);
                start_on_grant(unsent.take(), tx, named, ctx.forwarded.clone())
            };
            attempt
                .pool
                .acquire_starting(attempt.ticket, on_wait)
                .await?
        };
        let (permit, resp) = match (granted, unsent, early) {
            (Granted::Permit(permit), Some(req), _) => {
                if permit.position_at_entry().is_some() {
                    // It waited, and no hook took it (shared slots): it sends itself.
                    self.metrics.handoff(false);
                }
                let resp = self.send_on(ctx, req, &permit, named).await;
                (permit, resp)
            }
            (Granted::Started, _, Some(early)) => match early.await {
                Ok(Early::Started { permit, resp, at }) => {
                    self.metrics.handoff(true);
                    let resp = self.forward.arrived(ctx, resp, at);
                    (permit, resp)
                }
                Ok(Early::NotStarted { permit, req }) => {
                    self.metrics.handoff(false);
                    let resp = self.send_on(ctx, req, &permit, named).await;
                    (permit, resp)
                }
                Err(_) => return Err(QueueError::Closed.into()),
            },
            // a permit always comes with the unsent request, a started job with its channel
            _ => return Err(QueueError::Closed.into()),
        };
        self.metrics
            .queue_wait(ctx.tier_name(), permit.waited().as_secs_f64());
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
        self.forward.send_as(ctx, req, account.as_ref()).await
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
            self.metrics.would_queue(ctx.tier_name());
            tracing::info!(
                account = %ctx.caller.account.short(),
                class = ctx.class_name(),
                tier = %ctx.tier_name(),
                "shadow queue: job would have waited for a slot; forwarded at once"
            );
        }
        Ok(permit)
    }
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
    forwarded_for: Forwarded,
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
