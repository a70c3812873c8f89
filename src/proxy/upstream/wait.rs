//! What an upstream exchange waits for — and so which of its clocks runs — and how it fails.

use std::time::Duration;

use super::codec::CodecError;
use super::ExchangeTimeouts;
use crate::proxy::upload::UploadError;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("upstream connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("upstream closed the connection mid-body")]
    ClosedMidBody,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("upstream switched protocols without being asked to")]
    UnaskedSwitch,
    #[error("upstream did not answer in time")]
    TimedOut,
    #[error("upstream did not take the request in time")]
    SendTimedOut,
    #[error("upstream sent nothing more of the response body in time")]
    BodyTimedOut,
    #[error("the client sent nothing more of the request body in time")]
    ClientBodyTimedOut,
    #[error(transparent)]
    RequestBody(#[from] UploadError),
    /// From hyper's client, which carries protocol upgrades.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

impl ExchangeError {
    /// Whether the request can go again on another connection: nothing of an answer came and
    /// the connection was found closed (an idle keep-alive the upstream had just ended).
    pub fn is_stale_connection(&self) -> bool {
        match self {
            ExchangeError::ClosedBeforeAnswer => true,
            ExchangeError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The client's next bytes of request body (`client_body_timeout`).
    ClientBody,
    /// The upstream taking more of the request (`upstream_send_timeout`).
    Send,
    /// The response head, once the whole request is sent (`upstream_timeout`).
    Head,
    /// The upstream's next bytes of response body (`upstream_body_timeout`).
    Body,
}

impl Wait {
    pub fn limit(self, t: &ExchangeTimeouts) -> Duration {
        match self {
            Wait::ClientBody => t.client_body,
            Wait::Send => t.send,
            Wait::Head => t.head,
            Wait::Body => t.body,
        }
    }

    pub fn expired(self) -> ExchangeError {
        match self {
            Wait::ClientBody => ExchangeError::ClientBodyTimedOut,
            Wait::Send => ExchangeError::SendTimedOut,
            Wait::Head => ExchangeError::TimedOut,
            Wait::Body => ExchangeError::BodyTimedOut,
        }
    }
}
