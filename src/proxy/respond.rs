//! The one place floodgate's own answers are made: an error becomes its JSON response, with the
//! headers its kind calls for.

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::error::ProxyError;
use super::response_body::ProxyBody;
use crate::limits::headers::X_RATELIMIT_TYPE;
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
            _ => serde_json::json!({ "error": self.code(), "message": self.to_string() }),
        };
        let mut resp = json_response(self.status(), body.to_string());
        if self.closes_connection() {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
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
                .insert(RETRY_AFTER, HeaderValue::from(retry_after));
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
