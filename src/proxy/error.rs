//! Errors a request can meet: what went wrong, its status and code. [`super::respond`] turns
//! them into responses.

use http::StatusCode;

use super::request_checks::HygieneError;
use super::upload::TooLarge;
use crate::accounts::Blocked;
use crate::classify::{PathError, Unclassifiable};
use crate::identity::IdentityError;
use crate::queue::QueueError;

/// Why floodgate answered a request itself instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Hygiene(#[from] HygieneError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Blocked(#[from] Blocked),
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    #[error(transparent)]
    BodyTooLarge(#[from] TooLarge),
    #[error(transparent)]
    Unclassifiable(#[from] Unclassifiable),
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("upstream did not accept a connection in time")]
    UpstreamConnectTimeout,
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("upstream did not take the request in time")]
    UpstreamSendTimeout,
    #[error("upstream failed: {0}")]
    UpstreamProtocol(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("could not read the request body: {0}")]
    ClientBody(String),
    #[error("floodgate failed while answering this request; the failure is logged")]
    Internal,
    #[error("the request body stopped arriving before it was complete")]
    ClientBodyTimeout,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Hygiene(HygieneError::AmbiguousFraming) => StatusCode::BAD_REQUEST,
            ProxyError::Hygiene(HygieneError::TooManyHeaders { .. }) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ProxyError::Identity(IdentityError::ConflictingKeys) => StatusCode::BAD_REQUEST,
            ProxyError::Identity(_) => StatusCode::UNAUTHORIZED,
            ProxyError::InvalidPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge(_) | ProxyError::Unclassifiable(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ProxyError::UpstreamUnreachable(_) | ProxyError::UpstreamProtocol(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamConnectTimeout
            | ProxyError::UpstreamTimeout
            | ProxyError::UpstreamSendTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Queue(QueueError::Closed) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Queue(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Blocked(_) => StatusCode::FORBIDDEN,
        }
    }

    /// A short, stable machine-readable name (also the metric label).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Hygiene(HygieneError::AmbiguousFraming) => "ambiguous_framing",
            ProxyError::Hygiene(HygieneError::TooManyHeaders { .. }) => "too_many_headers",
            ProxyError::Identity(IdentityError::ConflictingKeys) => "conflicting_api_keys",
            ProxyError::Identity(IdentityError::MissingKey) => "missing_api_key",
            ProxyError::Identity(IdentityError::UnknownKey) => "unknown_api_key",
            ProxyError::InvalidPath(_) => "invalid_path",
            ProxyError::BodyTooLarge(_) => "payload_too_large",
            ProxyError::Unclassifiable(_) => "body_unclassifiable",
            ProxyError::UpstreamUnreachable(_) => "upstream_unreachable",
            ProxyError::UpstreamConnectTimeout => "upstream_connect_timeout",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamSendTimeout => "upstream_send_timeout",
            ProxyError::UpstreamProtocol(_) => "upstream_protocol_error",
            ProxyError::Queue(QueueError::Full { .. }) => "queue_full",
            ProxyError::Queue(QueueError::TimedOut { .. }) => "queue_timeout",
            ProxyError::Queue(QueueError::Closed) => "shutting_down",
            ProxyError::ClientBody(_) => "bad_request_body",
            ProxyError::Internal => "internal_error",
            ProxyError::ClientBodyTimeout => "client_body_timeout",
            ProxyError::Blocked(_) => "account_blocked",
        }
    }

    /// True when the upstream failed us; false when the request itself was refused.
    pub fn is_upstream_failure(&self) -> bool {
        !matches!(
            self,
            ProxyError::Identity(_)
                | ProxyError::Hygiene(_)
                | ProxyError::InvalidPath(_)
                | ProxyError::BodyTooLarge(_)
                | ProxyError::Unclassifiable(_)
                | ProxyError::Queue(_)
                | ProxyError::ClientBody(_)
                | ProxyError::Internal
                | ProxyError::ClientBodyTimeout
        )
    }

    /// Whether the client connection must end with this answer: after an ambiguously framed
    /// head (RFC 9112 §6.1: the rest of the connection cannot be trusted to be framed right),
    /// or a body that stopped arriving (its unread rest would be taken for the next request;
    /// RFC 9110 §15.5.9 has a 408 close the connection).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::Hygiene(HygieneError::AmbiguousFraming) | ProxyError::ClientBodyTimeout
        )
    }
}
