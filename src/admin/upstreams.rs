//! The upstream accounts API: each upstream account's health, and an operator's way to take one
//! out of rotation or put it back (a credential replaced after a ban, say).
//!
//! - `GET /upstream-accounts` — every named upstream account: its state (active, resting until
//!   a time, disabled), why and since when, failures in a row, jobs running, its pools;
//! - `POST /upstream-accounts/{name}/disable` — out of rotation until enabled; an optional JSON
//!   body `{"reason": "..."}` says why;
//! - `POST /upstream-accounts/{name}/enable` — back in rotation, failures and rest forgotten.
//!
//! Same token, audit line and change counter as the accounts API ([`super::accounts`]); the
//! change is written where health is kept (beside the state file, or in Redis for every
//! replica) before it is answered.

use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::accounts::{read_body, respond, ApiError};
use super::percent_decode;
use crate::accounts::format_time;
use crate::proxy::ProxyBody;
use crate::queue::health::{Health, State};
use crate::shared::Shared;

/// The longest reason an operator may give.
const MAX_REASON: usize = 200;

/// Answers a request under `/upstream-accounts`.
pub(super) async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    respond(route(shared, req, peer).await)
}

async fn route(
    shared: &Shared,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Value, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let rest = path.strip_prefix("/upstream-accounts").unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (allowed, action) = match segments.as_slice() {
        [] => ("GET", None),
        [_, action @ ("enable" | "disable")] => ("POST", Some(*action)),
        _ => return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint; see /upstream-accounts and /upstream-accounts/{name}/enable|disable",
        )),
    };
    if req.method().as_str() != allowed {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not served here; allowed: {allowed}", req.method()),
        ));
    }
    let Some(action) = action else {
        return Ok(json!({ "upstream_accounts": all(shared) }));
    };
    let name = percent_decode(segments[0]);
    if !shared
        .jobs
        .upstream_accounts()
        .iter()
        .any(|a| a.name == name)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_upstream_account",
            format!("no [[upstream_account]] named {name:?} serves a pool"),
        ));
    }
    debug_assert_eq!(Method::POST, req.method());
    let body = read_body(req).await?;
    let reason = reason(&body)?;
    change(shared, &name, action, reason, &peer.to_string()).await
}

/// The operator's reason, from an optional `{"reason": "..."}` body.
fn reason(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let invalid = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", m.to_owned());
    let value: Value = serde_json::from_slice(body).map_err(|e| invalid(&e.to_string()))?;
    let Some(object) = value.as_object() else {
        return Err(invalid(
            "the body is a JSON object, like {\"reason\": \"banned\"}",
        ));
    };
    match object.get("reason") {
        None => Ok(None),
        Some(Value::String(r)) if r.chars().count() <= MAX_REASON => Ok(Some(r.clone())),
        Some(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("reason: a string of at most {MAX_REASON} characters"),
        )),
    }
}

/// Enables or disables an upstream account, where health is kept, with its audit line.
async fn change(
    shared: &Shared,
    name: &str,
    action: &str,
    reason: Option<String>,
    who: &str,
) -> Result<Value, ApiError> {
    let now = shared.clock.now_ms();
    let reason = reason.unwrap_or_else(|| format!("disabled by an operator ({who})"));
    let before = shared.upstreams.get(name);
    let changed = shared
        .change_upstream(name, |h| match action {
            "enable" => h.enabled(now),
            _ => h.disabled(now, &reason),
        })
        .await?;
    let after = shared.upstreams.get(name);
    if changed.is_some() {
        shared
            .metrics
            .reload
            .admin_changed(&format!("upstream_{action}"));
        tracing::info!(
            target: "floodgate::audit",
            who = %who,
            action = %format!("upstream_{action}"),
            upstream_account = %name,
            before = %before.state.name(),
            after = %after.state.name(),
            reason = %after.reason,
            "upstream account changed"
        );
    }
    Ok(json!({
        "changed": changed.is_some(),
        "upstream_account": view(shared, name, &after, now),
    }))
}

/// Every named upstream account, in config order.
pub(super) fn all(shared: &Shared) -> Vec<Value> {
    let now = shared.clock.now_ms();
    let records = shared.upstreams.all();
    shared
        .jobs
        .upstream_accounts()
        .iter()
        .map(|a| {
            let health = records.get(&a.name).cloned().unwrap_or_default();
            view(shared, &a.name, &health, now)
        })
        .collect()
}

/// One upstream account as the API and the status page show it.
fn view(shared: &Shared, name: &str, health: &Health, now: u64) -> Value {
    let state = health.state_at(now);
    let (mut in_flight, mut pools, mut concurrency) = (0, Vec::new(), None);
    for pool in shared.jobs.pools.iter().filter(|p| !p.is_plain()) {
        if let Some(i) = pool.upstream_named(name) {
            in_flight += pool.upstream_in_flight()[i];
            pools.push(pool.name.clone());
            let cap = pool.accounts[i].concurrency;
            concurrency = (cap != u32::MAX).then_some(cap);
        }
    }
    json!({
        "name": name,
        "state": state.name(),
        "until": (state == State::Resting).then(|| format_time(health.until_ms)),
        "reason": (state != State::Active || health.failures > 0)
            .then_some(health.reason.as_str())
            .filter(|r| !r.is_empty()),
        "since": (health.since_ms > 0).then(|| format_time(health.since_ms)),
        "failures": health.failures,
        "probing": health.probing && state == State::Active,
        "in_flight": in_flight,
        "concurrency": concurrency,
        "pools": pools,
    })
}
