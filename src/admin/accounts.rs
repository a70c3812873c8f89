//! The accounts API: an account's plan, limits, job caps and block changed at runtime, its
//! windows reset or partly refunded — what an operator's billing system calls.
//!
//! - `GET /accounts/{account}` — tier (and whether the config or the API set it), runtime
//!   changes, block, usage, the latest changes;
//! - `GET /accounts?sort=usage|changed&limit=N&offset=K` — the accounts nearest their limits,
//!   or those changed at runtime, paged;
//! - `PUT /accounts/{account}` — `tier`, `limits`, `concurrency`, `max_queue`, `blocked`;
//! - `DELETE /accounts/{account}` — back to what the config says;
//! - `POST /accounts/{account}/reset` and `/grant` — zero windows, give units back.
//!
//! `{account}` is the id `/usage`, the status page and the access log show: the full 32 hex
//! digits, a unique prefix of at least 8, or a name from `[account_names]`; `by-key?key=K`
//! names it by its API key. Every change is written where the records live (the state
//! directory or Redis) before it applies, logged as one audit line (who, what, before → after;
//! never a key), counted in `floodgate_admin_changes_total{action}` and kept in the account's
//! record. Errors are JSON with a `code` and a `message`: 4xx for the caller's mistakes.

use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{key_of, percent_decode, query_value, usage_view};
use crate::accounts::{
    config_tier, parse_grant, parse_put, parse_reset, AccountRecord, Change, EditError,
};
use crate::config::Located;
use crate::identity::{AccountId, Caller};
use crate::limits::{CounterId, LimitKind, Tier};
use crate::proxy::respond::json_response;
use crate::proxy::ProxyBody;
use crate::shared::{Policy, Shared};
use crate::store::accounts::hex;

/// The largest request body the accounts API reads.
const MAX_BODY: usize = 64 * 1024;

/// Accounts a list returns at most.
const MAX_LIST: usize = 1_000;

/// An answer other than 200: its status, code, message and, for a 422, the field.
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub(super) fn into_response(self) -> Response<ProxyBody> {
        let body = json!({
            "error": self.code,
            "code": self.code,
            "message": self.message,
            "field": self.field,
        });
        json_response(self.status, body.to_string())
    }
}

impl From<EditError> for ApiError {
    fn from(e: EditError) -> Self {
        match e {
            EditError::NotAnObject(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string())
            }
            EditError::Field {
                code,
                ref field,
                ref message,
            } => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code,
                message: format!("{field}: {message}"),
                field: Some(field.clone()),
            },
        }
    }
}

impl From<Located> for ApiError {
    fn from(l: Located) -> Self {
        let code = match l.field.as_str() {
            "tier" => "unknown_tier",
            _ => "invalid_field",
        };
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            message: format!("{}: {}", l.field, l.message),
            field: Some(l.field),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        store_failed(e)
    }
}

fn store_failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        format!("the change could not be stored, nothing changed: {e}"),
    )
}

/// Answers a request under `/accounts`.
pub(super) async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    respond(route(shared, req, peer).await)
}

/// An API call's outcome as its answer: 200 with the value, or the error's status and JSON.
pub(super) fn respond(outcome: Result<Value, ApiError>) -> Response<ProxyBody> {
    match outcome {
        Ok(value) => json_response(StatusCode::OK, value.to_string()),
        Err(e) => e.into_response(),
    }
}

async fn route(
    shared: &Shared,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Value, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let rest = path.strip_prefix("/accounts").unwrap_or_default();
    let mut segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    // `?key=K` names the account by its API key: `/accounts?key=K` is `/accounts/by-key?key=K`.
    if query_value(&req, "key").is_some() {
        match segments.first() {
            None => segments.push("by-key"),
            Some(&"by-key") => {}
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_account",
                    "name the account by its id or by ?key=, not both",
                ))
            }
        }
    }
    let method = req.method().clone();
    let allowed = match segments.as_slice() {
        [] => "GET",
        [_] => "GET, PUT, DELETE",
        [_, "reset" | "grant"] => "POST",
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /accounts/{account}, /reset and /grant",
            ))
        }
    };
    if !allowed.split(", ").any(|m| m == method.as_str()) {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not served here; allowed: {allowed}"),
        ));
    }
    if segments.is_empty() {
        return list(shared, &req);
    }
    let policy = shared.policy.load_full();
    let account = find_account(shared, &policy, segments[0], &req)?;
    let who = peer.to_string();
    match (method, segments.get(1).copied()) {
        (Method::GET, None) => view(shared, &policy, account).await,
        (Method::PUT, None) => {
            let body = read_body(req).await?;
            put(shared, account, &body, &who).await
        }
        (Method::DELETE, None) => clear(shared, account, &who).await,
        (_, Some("reset")) => {
            let body = read_body(req).await?;
            reset(shared, account, &body, &who).await
        }
        (_, _) => {
            let body = read_body(req).await?;
            grant(shared, account, &body, &who).await
        }
    }
}

pub(super) async fn read_body(req: Request<Incoming>) -> Result<Vec<u8>, ApiError> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    match limited.collect().await {
        Ok(body) => Ok(body.to_bytes().to_vec()),
        Err(e) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body could not be read whole (at most {MAX_BODY} bytes): {e}"),
        )),
    }
}

/// The account a path segment names: 32 hex digits; a prefix of at least 8 that one known
/// account has (the config's, those changed at runtime, those seen lately); a name from
/// `[account_names]`; or `by-key` with `?key=` (or `x-api-key`).
fn find_account(
    shared: &Shared,
    policy: &Policy,
    segment: &str,
    req: &Request<Incoming>,
) -> Result<AccountId, ApiError> {
    if segment == "by-key" {
        let key = key_of(req).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_key",
                "by-key needs ?key= or x-api-key",
            )
        })?;
        return Ok(AccountId::from_key(key.as_bytes()));
    }
    let config = &policy.config;
    let segment = &percent_decode(segment);
    if let Some((&account, _)) = config.identity.names.iter().find(|(_, n)| *n == segment) {
        return Ok(account);
    }
    let prefix = segment.to_ascii_lowercase();
    let is_hex = prefix.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex || prefix.len() < 8 || prefix.len() > 32 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_account",
            format!(
                "{segment:?} is not an account: give its id (8 to 32 hex digits), a name \
                 from [account_names], or by-key?key=..."
            ),
        ));
    }
    if prefix.len() == 32 {
        let id = u128::from_str_radix(&prefix, 16).expect("32 hex digits");
        return Ok(AccountId(id));
    }
    let now = shared.clock.now_ms();
    let records = shared.accounts.records();
    let mut found: Vec<AccountId> = config
        .identity
        .accounts
        .keys()
        .copied()
        .chain(records.keys().copied())
        .chain(
            shared
                .status
                .nearest_limits(usize::MAX, now)
                .iter()
                .map(|s| s.account),
        )
        .filter(|a| hex(*a).starts_with(&prefix))
        .collect();
    found.sort_unstable();
    found.dedup();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_account",
            format!(
                "no known account starts with {prefix}; give the full 32-digit id or \
                 by-key?key=..."
            ),
        )),
        many => Err(ApiError::new(
            StatusCode::CONFLICT,
            "ambiguous_account",
            format!(
                "{} accounts start with {prefix}; give more digits",
                many.len()
            ),
        )),
    }
}

/// The caller the account is: its tier from the config, or the one the API set.
fn caller_of(policy: &Policy, account: AccountId) -> Result<Caller, ApiError> {
    let set = policy.overrides.get(account).and_then(|o| o.tier);
    let tier = set
        .or_else(|| config_tier(&policy.config, account))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_account",
                "the config admits no such key (unknown_keys = \"reject\" and no [accounts] \
                 entry)",
            )
        })?;
    Ok(Caller { account, tier })
}

/// `GET /accounts/{account}`.
async fn view(shared: &Shared, policy: &Policy, account: AccountId) -> Result<Value, ApiError> {
    let caller = caller_of(policy, account)?;
    let records = shared.accounts.records();
    let record = records.get(&account).cloned().unwrap_or_default();
    let usage = usage_view(shared, policy, caller)
        .await
        .map_err(store_failed)?;
    let config = &policy.config;
    let now = shared.clock.now_ms();
    let blocked = record.blocked.as_ref().map(|b| {
        let mut v = b.view();
        v["active"] = json!(b.holds(now));
        v
    });
    Ok(json!({
        "account": hex(account),
        "short": account.short(),
        "name": config.identity.names.get(&account),
        "tier": config.tier(caller.tier).name,
        "tier_from": if record.tier.is_some() { "api" } else { "config" },
        "overrides": {
            "limits": record.limits,
            "concurrency": record.concurrency,
            "max_queue": record.max_queue,
        },
        "blocked": blocked,
        "usage": usage,
        "changes": record.changes.iter().rev().map(change_view).collect::<Vec<_>>(),
    }))
}

fn change_view(c: &Change) -> Value {
    json!({
        "at": crate::accounts::format_time(c.at_ms),
        "who": c.who,
        "action": c.action,
        "before": c.before,
        "after": c.after,
    })
}

/// `PUT /accounts/{account}`: the body's fields applied, checked against the config, stored,
/// then in force for the account's next request.
async fn put(
    shared: &Shared,
    account: AccountId,
    body: &[u8],
    who: &str,
) -> Result<Value, ApiError> {
    let policy = shared.policy.load_full();
    caller_of(&policy, account)?;
    settle(shared, account, who, |before| {
        let after = parse_put(body, before)?;
        policy.overrides.with(&policy.config, account, &after)?;
        let others_same = before.clone().without_block() == after.clone().without_block();
        let action = match (&before.blocked, &after.blocked) {
            (b, a) if b == a || !others_same => "set",
            (_, Some(_)) => "block",
            (_, None) => "unblock",
        };
        Ok(Some((after, action)))
    })
    .await?;
    view(shared, &shared.policy.load_full(), account).await
}

/// `DELETE /accounts/{account}`: every runtime change dropped.
async fn clear(shared: &Shared, account: AccountId, who: &str) -> Result<Value, ApiError> {
    settle(shared, account, who, |before| {
        if !before.changes_anything() {
            return Ok(None);
        }
        let mut after = before.clone();
        after.clear();
        Ok(Some((after, "clear")))
    })
    .await?;
    let policy = shared.policy.load_full();
    view(shared, &policy, account).await
}

/// A change of settings: `change` makes the new record (and names the action) from the one
/// stored; it is written with its audit entry, applied, logged and counted.
async fn settle(
    shared: &Shared,
    account: AccountId,
    who: &str,
    mut change: impl FnMut(&AccountRecord) -> Result<Option<(AccountRecord, &'static str)>, ApiError>,
) -> Result<(), ApiError> {
    let at_ms = shared.clock.now_ms();
    let updated = shared
        .accounts
        .update(account, |before| {
            let Some((mut after, action)) = change(before)? else {
                return Ok::<_, ApiError>(None);
            };
            after.log(Change {
                at_ms,
                who: who.to_owned(),
                action: action.into(),
                before: before.settings(),
                after: after.settings(),
            });
            Ok(Some(after))
        })
        .await?;
    if let Some((_, after)) = updated {
        shared.apply_record(account, &after);
        if let Some(entry) = after.changes.last() {
            audit(shared, account, entry);
        }
    }
    Ok(())
}

/// One audit line and the change counted.
fn audit(shared: &Shared, account: AccountId, c: &Change) {
    shared.metrics.reload.admin_changed(&c.action);
    tracing::info!(
        target: "floodgate::audit",
        who = %c.who,
        action = %c.action,
        account = %hex(account),
        before = %c.before,
        after = %c.after,
        "account changed"
    );
}

/// Each counter of `tier` with a class that uses it and its window, for the audit and the
/// answer of a reset.
fn counters_of<'a>(policy: &'a Policy, tier: &Tier) -> Vec<(CounterId, &'a str, LimitKind)> {
    let config = &policy.config;
    let mut out: Vec<(CounterId, &str, LimitKind)> = Vec::new();
    for (i, class) in config.classes.iter().enumerate() {
        let id = crate::classify::ClassId(i as u16);
        for rule in tier.rules(id).iter().chain(tier.shadow_rules(id)) {
            if !out.iter().any(|(c, ..)| *c == rule.counter) {
                out.push((rule.counter, class.as_str(), rule.kind));
            }
        }
    }
    out
}

/// `POST /accounts/{account}/reset`: the named windows (and the day's penalty tallies)
/// zeroed now.
async fn reset(
    shared: &Shared,
    account: AccountId,
    body: &[u8],
    who: &str,
) -> Result<Value, ApiError> {
    let asked = parse_reset(body)?;
    let policy = shared.policy.load_full();
    let caller = caller_of(&policy, account)?;
    let tier = policy.overrides.tier(&policy.config, caller);
    let mut targets: Vec<(CounterId, String)> = counters_of(&policy, tier)
        .into_iter()
        .filter(|(_, _, kind)| asked.kinds.contains(kind))
        .map(|(id, class, kind)| (id, format!("{class}:{}", kind.name())))
        .collect();
    if asked.penalties {
        let ids = policy.config.penalties.ids;
        targets.push((ids.incorrect, "penalties:incorrect_tasks".into()));
        targets.push((ids.relax_used, "penalties:relax_used".into()));
    }
    let ids: Vec<CounterId> = targets.iter().map(|(id, _)| *id).collect();
    let now = shared.clock.now_ms();
    let counts = shared
        .store
        .reset(account, &ids, now)
        .await
        .map_err(store_failed)?;
    let before: serde_json::Map<String, Value> = targets
        .iter()
        .zip(&counts)
        .map(|((_, label), (_, n))| (label.clone(), json!(n)))
        .collect();
    let after: serde_json::Map<String, Value> =
        targets.iter().map(|(_, l)| (l.clone(), json!(0))).collect();
    let entry = Change {
        at_ms: now,
        who: who.to_owned(),
        action: "reset".into(),
        before: Value::Object(before.clone()),
        after: Value::Object(after),
    };
    log_counters_change(shared, account, entry).await;
    Ok(json!({ "account": hex(account), "reset": before }))
}

/// `POST /accounts/{account}/grant`: units given back in a class's open window.
async fn grant(
    shared: &Shared,
    account: AccountId,
    body: &[u8],
    who: &str,
) -> Result<Value, ApiError> {
    let policy = shared.policy.load_full();
    let asked = parse_grant(body, &policy.config)?;
    let caller = caller_of(&policy, account)?;
    let class = policy.config.class_name(asked.class);
    // Every window of that kind the class counts in (its own and a shared one, say): a
    // refund the next request can use.
    let rules: Vec<_> = policy
        .tier_of(caller)
        .rules(asked.class)
        .iter()
        .filter(|r| r.kind == asked.kind)
        .copied()
        .collect();
    if rules.is_empty() {
        return Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "no_such_window",
            message: format!(
                "class {class:?} has no {} limit for this account",
                asked.kind.name()
            ),
            field: Some("window".into()),
        });
    }
    let ids: Vec<CounterId> = rules.iter().map(|r| r.counter).collect();
    let now = shared.clock.now_ms();
    let counts = shared
        .store
        .grant(account, &ids, asked.units, now)
        .await
        .map_err(store_failed)?;
    let label = format!("{class}:{}", asked.kind.name());
    let used = |pick: fn(&(u32, u32)) -> u32| counts.iter().map(pick).collect::<Vec<u32>>();
    let entry = Change {
        at_ms: now,
        who: who.to_owned(),
        action: "grant".into(),
        before: json!({ &label: used(|c| c.0) }),
        after: json!({ &label: used(|c| c.1) }),
    };
    log_counters_change(shared, account, entry).await;
    let windows: Vec<Value> = rules
        .iter()
        .zip(&counts)
        .map(|(rule, (before, after))| {
            json!({
                "limit": rule.limit,
                "used_before": before,
                "used": after,
                "remaining": rule.limit.saturating_sub(*after),
            })
        })
        .collect();
    let mut answer = windows[0].clone();
    answer["account"] = hex(account).into();
    answer["class"] = class.into();
    answer["window"] = asked.kind.name().into();
    answer["windows"] = windows.into();
    Ok(answer)
}

/// A reset or grant, kept in the account's history, logged and counted.
async fn log_counters_change(shared: &Shared, account: AccountId, entry: Change) {
    let kept = shared
        .accounts
        .update(account, |before| {
            let mut after = before.clone();
            after.log(entry.clone());
            Ok::<_, ApiError>(Some(after))
        })
        .await;
    if let Err(e) = kept {
        // The counters changed; only the history entry could not be kept.
        tracing::warn!(error = %e.message, "cannot keep an account's change in its record");
    }
    audit(shared, account, &entry);
}

/// `GET /accounts?sort=usage|changed&limit=N&offset=K`.
fn list(shared: &Shared, req: &Request<Incoming>) -> Result<Value, ApiError> {
    let number = |name: &str, default: usize| -> Result<usize, ApiError> {
        match query_value(req, name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_field",
                message: format!("{name}: must be a whole number"),
                field: Some(name.into()),
            }),
        }
    };
    let limit = number("limit", 50)?.clamp(1, MAX_LIST);
    let offset = number("offset", 0)?;
    let policy = shared.policy.load_full();
    let config = &policy.config;
    let now = shared.clock.now_ms();
    let records = shared.accounts.records();
    let flags = |account: AccountId| {
        let r = records.get(&account);
        (
            r.is_some_and(AccountRecord::changes_anything),
            r.and_then(|r| r.blocked.as_ref())
                .is_some_and(|b| b.holds(now)),
        )
    };
    let sort = query_value(req, "sort").unwrap_or_else(|| "usage".into());
    let all: Vec<Value> = match sort.as_str() {
        "usage" => shared
            .status
            .nearest_limits(usize::MAX, now)
            .iter()
            .map(|s| {
                let (changed, blocked) = flags(s.account);
                json!({
                    "account": hex(s.account),
                    "name": config.identity.names.get(&s.account),
                    "tier": config.tiers.get(s.tier.0 as usize).map(|t| &t.name),
                    "class": config.classes.get(s.class.0 as usize),
                    "window": s.kind.name(),
                    "used": s.used,
                    "limit": s.limit,
                    "fraction": s.fraction(),
                    "resets_in_secs": s.resets_at_ms.saturating_sub(now).div_ceil(1_000),
                    "changed": changed,
                    "blocked": blocked,
                })
            })
            .collect(),
        "changed" => changed_accounts(&policy, &records, now),
        other => {
            return Err(ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_field",
                message: format!("sort: {other:?} is not usage or changed"),
                field: Some("sort".into()),
            })
        }
    };
    let total = all.len();
    let page: Vec<Value> = all.into_iter().skip(offset).take(limit).collect();
    let next = (offset + page.len() < total).then_some(offset + page.len());
    Ok(json!({ "accounts": page, "total": total, "offset": offset, "next_offset": next }))
}

/// The accounts with runtime changes, the latest change first: for the list and the status
/// page.
pub(super) fn changed_accounts(
    policy: &Policy,
    records: &crate::store::accounts::Records,
    now: u64,
) -> Vec<Value> {
    let config = &policy.config;
    let mut changed: Vec<(&AccountId, &AccountRecord)> = records
        .iter()
        .filter(|(_, r)| r.changes_anything())
        .collect();
    changed.sort_by_key(|(_, r)| std::cmp::Reverse(r.changes.last().map(|c| c.at_ms)));
    changed
        .into_iter()
        .map(|(&account, r)| {
            let tier = r
                .tier
                .clone()
                .or_else(|| config_tier(config, account).map(|t| config.tier(t).name.clone()));
            json!({
                "account": hex(account),
                "name": config.identity.names.get(&account),
                "tier": tier,
                "tier_from": if r.tier.is_some() { "api" } else { "config" },
                "limits": r.limits.is_some(),
                "concurrency": r.concurrency,
                "max_queue": r.max_queue,
                "blocked": r.blocked.as_ref().filter(|b| b.holds(now)).map(|b| b.view()),
                "last_change": r.changes.last().map(|c| crate::accounts::format_time(c.at_ms)),
            })
        })
        .collect()
}
