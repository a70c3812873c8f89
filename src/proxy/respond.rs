//! The one place floodgate's own answers are made: an error becomes its JSON response, with the
//! headers its kind calls for, counted by why it was made.

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::ctx::Ctx;
use super::error::ProxyError;
use super::response_body::ProxyBody;
use crate::accounts::Blocked;
use crate::limits::headers::{rendered, X_RATELIMIT_TYPE};
use crate::metrics::Metrics;
use crate::queue::QueueError;

/// What a job queued during shutdown is told: try again once a replacement is up.
const SHUTDOWN_RETRY_AFTER_SECS: u64 = 5;

impl ProxyError {
    /// The JSON error response.
    pub fn into_response(self) -> Response<ProxyBody> {
        let body = match &self {
            // A 429 like every other: the seed's body, the reason beside it (as for penalties).
            ProxyError::Queue(QueueError::Full { .. } | QueueError::TimedOut { .. }) => {
                serde_json::json!({
                    "message": "Too Many Attempts.",
                    "error": self.code(),
                    "detail": self.to_string(),
                })
            }
            ProxyError::Blocked(b) => serde_json::json!({
                "error": self.code(),
                "message": self.to_string(),
                "reason": b.reason,
                "until": b.until_ms.map(crate::accounts::format_time),
            }),
            _ => serde_json::json!({ "error": self.code(), "message": self.to_string() }),
        };
        let mut resp = json_response(self.status(), body.to_string());
        if self.closes_connection() {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let ProxyError::Blocked(Blocked {
            retry_after_secs: Some(secs),
            ..
        }) = &self
        {
            resp.headers_mut().insert(RETRY_AFTER, rendered(*secs));
        }
        if let ProxyError::Queue(e) = &self {
            let retry_after = match e {
                QueueError::Full { retry_after_secs }
                | QueueError::TimedOut { retry_after_secs } => {
                    resp.headers_mut().insert(
                        X_RATELIMIT_TYPE.clone(),
                        HeaderValue::from_static("concurrency"),
                    );
                    *retry_after_secs
                }
                QueueError::Closed => SHUTDOWN_RETRY_AFTER_SECS,
            };
            resp.headers_mut()
                .insert(RETRY_AFTER, rendered(retry_after));
        }
        resp
    }
}

/// A response floodgate writes itself, with a JSON body.
pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Answers a request floodgate refuses itself (400, 401, 408, 413, 431), counted by reason; a
/// 408 also as a client connection closed for a stalled body.
pub fn refused(metrics: &Metrics, err: ProxyError) -> Response<ProxyBody> {
    // The error names what was wrong, never the key itself.
    tracing::debug!(reason = err.code(), error = %err, "request refused");
    metrics.requests.rejected(err.code());
    if let ProxyError::ClientBodyTimeout = err {
        metrics.listener.client_timeout("body");
    }
    err.into_response()
}

/// The JSON error response for an identified request floodgate could not complete, counted.
pub fn failed(metrics: &Metrics, ctx: &Ctx<'_>, e: ProxyError) -> Response<ProxyBody> {
    match &e {
        ProxyError::Queue(q) => {
            let reason = match q {
                QueueError::Full { .. } => "queue_full",
                QueueError::TimedOut { .. } => "timed_out",
                QueueError::Closed => "shutdown",
            };
            metrics.jobs.dropped(ctx.tier_name(), reason);
        }
        _ if !e.is_upstream_failure() => return refused(metrics, e),
        _ => {
            metrics.requests.upstream_error(e.code());
            tracing::warn!(error = %e, class = ctx.class_name(), "upstream failure");
        }
    }
    e.into_response()
}

/// The answer to a request whose handling panicked (the panic was caught by the listener): a
/// 500 JSON, counted and logged (the panic's message, never the API key).
pub fn panicked(metrics: &Metrics, panic: &str) -> Response<ProxyBody> {
    metrics.listener.panics.inc();
    tracing::error!(panic = %panic, "answering a request panicked; answered 500");
    ProxyError::Internal.into_response()
}
