//! The access-log stage: what is kept of a request as it arrives and while it is answered,
//! joined into the record that rides with the response ([`access_log::Pending`]) for the
//! listener to finish at the body's end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::Uri;
use http::{Request, Response, Version};

use super::own_headers::X_QUEUE_WAIT_MS;
use super::peer::Peer;
use super::response_body::ProxyBody;
use crate::access_log::{self, AccessLog};
use crate::classify::{normalize_path, ClassId};
use crate::config::Config;
use crate::identity::Caller;

/// What the access log keeps of a request as it arrives.
#[derive(Debug)]
pub struct Arrived {
    at: Instant,
    time_ms: u64,
    method: http::Method,
    version: Version,
    uri: Uri,
}

impl Arrived {
    /// The request at `time_ms` on the shared clock.
    pub fn of<B>(req: &Request<B>, time_ms: u64) -> Self {
        Self {
            at: Instant::now(),
            time_ms,
            method: req.method().clone(),
            version: req.version(),
            uri: req.uri().clone(), // shares the request's bytes
        }
    }
}

impl Arrived {
    /// A plain request (the fast path's) at `time_ms`: its target parsed for the record.
    pub fn plain(method: &http::Method, target: &str, time_ms: u64) -> Self {
        Self {
            at: Instant::now(),
            time_ms,
            method: method.clone(),
            version: Version::HTTP_11,
            uri: Uri::try_from(target).unwrap_or_else(|_| Uri::from_static("/")),
        }
    }
}

/// What the access log learns of a request while it is answered.
#[derive(Debug, Default)]
pub struct Noted {
    pub caller: Option<Caller>,
    pub class: Option<ClassId>,
}

/// How long the upstream took to answer, carried in the response's extensions.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTime(pub Duration);

/// Puts the access log's record on the response, for the listener to finish at the body's end.
pub fn attach(
    mut resp: Response<ProxyBody>,
    peer: &Peer,
    arrived: Arrived,
    noted: Noted,
    config: &Config,
    log: &Arc<AccessLog>,
) -> Response<ProxyBody> {
    let upstream = resp.extensions_mut().remove::<UpstreamTime>().map(|t| t.0);
    let status = resp.status().as_u16();
    let decision = access_log::Outcome::of(upstream.is_some(), status);
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
    let limited = decision == access_log::Outcome::Limited;
    let limit = header("x-ratelimit-type").filter(|_| limited);
    let queue_wait = header(X_QUEUE_WAIT_MS.as_str()).and_then(|v| v.parse().ok());
    let raw_path = arrived.uri.path();
    let record = access_log::Record {
        time_ms: arrived.time_ms,
        peer: peer.addr.ip(),
        method: arrived.method,
        version: arrived.version,
        path: normalize_path(raw_path, config.router.rules())
            .map_or_else(|_| raw_path.to_owned(), std::borrow::Cow::into_owned),
        class: noted.class.map(|c| config.class_name(c).to_owned()),
        tier: noted.caller.map(|c| config.tier(c.tier).name.clone()),
        account: noted.caller.map(|c| c.account.short()),
        status,
        decision,
        limit: limit.map(str::to_owned),
        upstream,
        queue_wait: queue_wait.map(Duration::from_millis),
        bytes: 0,
        duration: Duration::ZERO,
    };
    resp.extensions_mut().insert(access_log::Pending {
        record,
        arrived: arrived.at,
        log: log.clone(),
    });
    resp
}
