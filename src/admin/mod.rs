//! The admin listener (loopback by default): the status page (`/`, fed by `/status.json`),
//! `/metrics`, `/healthz`, `/readyz`, `/usage`, the accounts API ([`accounts`]) and the upstream
//! accounts API ([`upstreams`]).
//!
//! `/usage?key=API_KEY` (or the key in `x-api-key`) shows an account's open windows and its
//! penalty standing (today's incorrect tasks, relax jobs used and earned, the actions in
//! effect): the key is hashed like any request's and never echoed back.
//!
//! With `[server] admin_token` set, everything but `/metrics`, `/healthz` and `/readyz` (what
//! scrapers and probes need) and the status page's empty shell asks for
//! `Authorization: Bearer <token>`: 401 JSON without it. The page holds no data itself: it asks
//! for the token once, keeps it in the browser tab's session storage and sends it with every
//! `/status.json`.

mod accounts;
pub mod client;
mod upstreams;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::classify::ClassId;
use crate::identity::AccountId;
use crate::limits::{Counter, Counters};
use crate::penalties;
use crate::proxy::respond::json_response;
use crate::proxy::ProxyBody;
use crate::shared::Shared;

/// Serves admin requests until shutdown.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let shared = shared.clone();
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, req, peer).await) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// Endpoints served without the admin token: scrapers and probes know no secret, and the
/// status page's shell carries no data.
const OPEN: [&str; 4] = ["/metrics", "/healthz", "/readyz", "/"];

async fn handle(shared: &Shared, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
    if !OPEN.contains(&req.uri().path()) && !authorized(shared, &req) {
        let mut resp = json_response(
            StatusCode::UNAUTHORIZED,
            r#"{"error": "unauthorized", "code": "unauthorized", "message": "this endpoint needs Authorization: Bearer <[server] admin_token>"}"#,
        );
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = Response::new(ProxyBody::full(shared.metrics.render().into()));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        "/healthz" => json_response(StatusCode::OK, r#"{"status": "ok"}"#),
        "/readyz" if shared.shutting_down.load(Ordering::SeqCst) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status": "shutting down"}"#,
        ),
        "/readyz" => readiness(shared),
        "/usage" => usage(shared, &req).await,
        "/" => status_page(),
        "/status.json" => status_json(shared),
        p if p == "/accounts" || p.starts_with("/accounts/") => {
            accounts::handle(shared, req, peer).await
        }
        p if p == "/upstream-accounts" || p.starts_with("/upstream-accounts/") => {
            upstreams::handle(shared, req, peer).await
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            r#"{"error": "not_found", "code": "not_found", "message": "no such endpoint"}"#,
        ),
    }
}

/// The status page: one HTML file with its CSS and JS, compiled in.
fn status_page() -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(crate::status::PAGE.into()));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    resp
}

/// The status page's data: a snapshot of the running limiter.
fn status_json(shared: &Shared) -> Response<ProxyBody> {
    let policy = shared.policy.load_full();
    let view = crate::status::View {
        config: &policy.config,
        metrics: &shared.metrics,
        jobs: &shared.jobs,
        store: &shared.store,
        now_ms: shared.clock.now_ms(),
    };
    let mut snapshot = shared.status.snapshot(view);
    let records = shared.accounts.records();
    snapshot["changed_accounts"] =
        accounts::changed_accounts(&policy, &records, shared.clock.now_ms()).into();
    snapshot["upstream_accounts"] = upstreams::all(shared).into();
    let mut resp = json_response(StatusCode::OK, snapshot.to_string());
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    resp
}

/// Whether the request may see a private endpoint: no token is set, or it carries the token.
fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let policy = shared.policy.load();
    match &policy.config.server.admin_token {
        None => true,
        Some(token) => token.admits(req.headers().get(AUTHORIZATION).map(|v| v.as_bytes())),
    }
}

/// Ready unless shutting down; with a failing shared store, "degraded" — and not ready at all when
/// the failure policy refuses requests (fail_closed), so a load balancer sends traffic elsewhere.
fn readiness(shared: &Shared) -> Response<ProxyBody> {
    if !shared.store.is_degraded() {
        return json_response(StatusCode::OK, r#"{"status": "ready"}"#);
    }
    match &shared.store {
        crate::store::Store::Redis(s) if s.on_failure() == crate::limits::OnFailure::FailClosed => {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status": "store unavailable"}"#,
            )
        }
        _ => json_response(StatusCode::OK, r#"{"status": "degraded"}"#),
    }
}

/// A query parameter's value, percent-decoded.
fn query_value(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(percent_decode)
    })
}

/// The caller's API key, from `?key=` or `x-api-key`.
fn key_of(req: &Request<Incoming>) -> Option<String> {
    query_value(req, "key").or_else(|| {
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    })
}

/// `%XX` escapes (and `+`, as a space) decoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn usage(shared: &Shared, req: &Request<Incoming>) -> Response<ProxyBody> {
    let Some(key) = key_of(req) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            r#"{"error": "missing_key", "message": "give ?key= or x-api-key"}"#,
        );
    };
    let policy = shared.policy.load_full();
    let account = AccountId::from_key(key.as_bytes());
    let set = policy.overrides.get(account).and_then(|o| o.tier);
    let Some(tier) = set.or_else(|| crate::accounts::config_tier(&policy.config, account)) else {
        return json_response(StatusCode::NOT_FOUND, r#"{"error": "unknown_api_key"}"#);
    };
    let caller = crate::identity::Caller { account, tier };
    match usage_view(shared, &policy, caller).await {
        Ok(mut body) => {
            body["account"] = account.short().into();
            body["tier"] = policy.config.tier(tier).name.clone().into();
            json_response(StatusCode::OK, body.to_string())
        }
        Err(e) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": e.to_string()}).to_string(),
        ),
    }
}

/// An account's open windows (under its runtime limits, when it has them), penalty standing
/// and job queue: `/usage`, and the `usage` of `GET /accounts/{account}`.
async fn usage_view(
    shared: &Shared,
    policy: &crate::shared::Policy,
    caller: crate::identity::Caller,
) -> Result<serde_json::Value, crate::store::StoreError> {
    let config = &policy.config;
    let now = shared.clock.now_ms();
    let counters = shared.store.counters(caller.account, now).await?;
    let tier = policy.overrides.tier(config, caller);
    let mut limits = Vec::new();
    for (i, class) in config.classes.iter().enumerate() {
        for rule in tier.rules(ClassId(i as u16)) {
            let current = counters.iter().find(|c| c.id == rule.counter);
            let used = current.map_or(0, |c| c.count);
            limits.push(json!({
                "class": class,
                "type": rule.kind.name(),
                "limit": rule.limit,
                "used": used,
                "remaining": rule.limit.saturating_sub(used),
                "resets_in_secs": current.map(|c| (c.end_ms - now).div_ceil(1000)),
            }));
        }
    }
    Ok(json!({
        "limits": limits,
        "penalties": penalties_view(config, caller.tier, &counters, now),
        "jobs": jobs_view(shared, policy, caller),
    }))
}

/// The account's job slots and queue: jobs running, jobs waiting (the newest waiting job's
/// position is `queued`) each with its place and estimated wait, and the caps that apply.
fn jobs_view(
    shared: &Shared,
    policy: &crate::shared::Policy,
    caller: crate::identity::Caller,
) -> serde_json::Value {
    let account = caller.account;
    let settings = policy.overrides.queue(&policy.config, &caller);
    let pool = &shared.jobs.pools[settings.pool];
    let (in_flight, queued) = pool.tenant_load(account);
    let mut waiting = pool.waiting_jobs(Some(account), usize::MAX);
    waiting.sort_by_key(|j| j.position);
    let waiting: Vec<_> = waiting
        .iter()
        .map(|j| {
            json!({
                "position": j.position,
                "position_at_entry": j.position_at_entry,
                "waited_ms": j.waited.as_millis() as u64,
                "estimated_wait_ms": j.estimated_wait.as_millis() as u64,
            })
        })
        .collect();
    json!({
        "waiting": waiting,
        "typical_job_ms": pool.typical_job().as_millis() as u64,
        "pool": pool.name,
        "in_flight": in_flight,
        "queued": queued,
        "concurrency": settings.concurrency,
        "max_queue": settings.max_queue,
        "max_wait_secs": settings.max_wait.as_secs(),
    })
}

/// Today's incorrect tasks and relax jobs, the tier's allowances, and the actions that apply to
/// the account's next job submission.
fn penalties_view(
    config: &crate::config::Config,
    tier: crate::identity::TierId,
    counters: &[Counter],
    now: u64,
) -> serde_json::Value {
    let mut all = Counters::default();
    for c in counters {
        all.restore(*c);
    }
    let p = &config.penalties;
    let policy = p.tier(tier);
    let s = penalties::standing(&policy, &p.ids, &all, now);
    json!({
        "resets_in_secs": s.resets_in_secs,
        "incorrect_tasks": {
            "today": s.incorrect,
            "allowance": s.incorrect_allowance,
            "action": policy.incorrect.map(|i| i.action.name()),
            "shadow": policy.incorrect.is_some_and(|i| i.shadow),
        },
        "relax": {
            "used": s.relax_used,
            "earned": s.relax_earned,
            "allowance": s.relax_allowance,
            "remaining": s.relax_allowance.map(|a| a.saturating_sub(s.relax_used)),
            "action": policy.relax.map(|r| r.action.name()),
            "shadow": policy.relax.is_some_and(|r| r.shadow),
        },
        "current_actions": s.actions,
    })
}
