//! The fields floodgate writes itself: what it tells the upstream (tier, class, billing marks)
//! and what it tells the client of a job (its upstream account, its wait in the queue). A
//! client's own `x-floodgate-*` fields never reach the upstream ([`super::header_rewrite`]).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::ctx::Ctx;
use crate::limits::headers::rendered;
use crate::penalties::Marks;
use crate::queue::SlotPermit;

/// Tells the upstream the caller's tier.
pub static X_FLOODGATE_TIER: HeaderName = HeaderName::from_static("x-floodgate-tier");
/// Tells the upstream the request's class.
pub static X_FLOODGATE_CLASS: HeaderName = HeaderName::from_static("x-floodgate-class");
/// Tells the upstream (and the client) that credits of incorrect tasks are not refunded.
pub static X_BILLING: HeaderName = HeaderName::from_static("x-floodgate-billing");
/// Tells the upstream (and the client) that this job costs this many times the usual price.
pub static X_COST_MULTIPLIER: HeaderName = HeaderName::from_static("x-floodgate-cost-multiplier");
const NO_REFUND: HeaderValue = HeaderValue::from_static("no-refund");
/// Names the upstream account that took a job.
pub static X_UPSTREAM_ACCOUNT: HeaderName = HeaderName::from_static("x-floodgate-upstream-account");
/// How long a job waited in its queue, in milliseconds.
pub static X_QUEUE_WAIT_MS: HeaderName = HeaderName::from_static("x-queue-wait-ms");
/// On the response of a job that waited: its place in its account's queue when it joined.
pub static X_QUEUE_POSITION_AT_ENTRY: HeaderName =
    HeaderName::from_static("x-queue-position-at-entry");

/// Tells the upstream the resolved tier and class.
pub fn annotate(headers: &mut HeaderMap, ctx: &Ctx<'_>) {
    if let Ok(v) = HeaderValue::from_str(ctx.tier_name()) {
        headers.insert(X_FLOODGATE_TIER.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(ctx.class_name()) {
        headers.insert(X_FLOODGATE_CLASS.clone(), v);
    }
}

/// Marks a forwarded job for the upstream (or its response for the client).
pub fn write_marks(headers: &mut HeaderMap, marks: &Marks) {
    if marks.no_refund {
        headers.insert(X_BILLING.clone(), NO_REFUND);
    }
    if let Some(m) = marks.cost_multiplier {
        headers.insert(X_COST_MULTIPLIER.clone(), HeaderValue::from(m));
    }
}

/// Names the upstream account and the queue wait on a job's response.
pub fn label_job(headers: &mut HeaderMap, permit: &SlotPermit, named_account: bool) {
    headers.insert(
        X_QUEUE_WAIT_MS.clone(),
        rendered(permit.waited().as_millis() as u64),
    );
    if let Some(position) = permit.position_at_entry() {
        headers.insert(X_QUEUE_POSITION_AT_ENTRY.clone(), rendered(position as u64));
    }
    if named_account {
        if let Ok(v) = HeaderValue::from_str(&permit.account().name) {
            headers.insert(X_UPSTREAM_ACCOUNT.clone(), v);
        }
    }
}
