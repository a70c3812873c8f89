//! The access-log stage: what is kept of a request as it arrives and while it is answered,
//! joined into the record that rides with the response ([`access_log::Pending`]) for the
//! listener to finish at the body's end.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::Uri;
use http::{HeaderName, Request, Response, Version};

use super::own_headers::X_QUEUE_WAIT_MS;
use super::peer::Peer;
use super::response_body::ProxyBody;
use crate::access_log::{self, AccessLog};
use crate::classify::{normalize_path, ClassId};
use crate::config::Config;
use crate::identity::Caller;
use crate::limits::headers::X_RATELIMIT_TYPE;

/// What the access log keeps of a request as it arrives.
#[derive(Debug)]
pub struct Arrived {
    at: Instant,
    time_ms: u64,
    method: http::Method,
    version: Version,
    target: Target,
}

/// The request's target as the record keeps it: hyper's (sharing the request's bytes), or the
/// path of a plain request's, copied once.
#[derive(Debug)]
enum Target {
    Uri(Uri),
    Path(String),
}

impl Arrived {
    /// The request at `time_ms` on the shared clock.
    pub fn of<B>(req: &Request<B>, time_ms: u64) -> Self {
        Self {
            at: Instant::now(),
            time_ms,
            method: req.method().clone(),
            version: req.version(),
            target: Target::Uri(req.uri().clone()), // shares the request's bytes
        }
    }
}

impl Arrived {
    /// A plain request (the fast path's) at `time_ms`: the path of its target (origin form).
    pub fn plain(method: &http::Method, target: &str, time_ms: u64) -> Self {
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        Self {
            at: Instant::now(),
            time_ms,
            method: method.clone(),
            version: Version::HTTP_11,
            target: Target::Path(path.to_owned()),
        }
    }
}

/// What the access log learns of a request while it is answered.
#[derive(Debug, Default)]
pub struct Noted {
    pub caller: Option<Caller>,
    pub class: Option<ClassId>,
    /// The limit that refused the request, when the answer does not say it in its fields (a
    /// plain 429's fields are written by the listener, not put in its map).
    pub limit: Option<&'static str>,
    /// What penalties in shadow mode would have done to the job ([`Shadowed::describe`]).
    ///
    /// [`Shadowed::describe`]: crate::penalties::Shadowed::describe
    pub shadow_penalty: Option<&'static str>,
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
    let header = |name: &HeaderName| resp.headers().get(name).and_then(|v| v.to_str().ok());
    let limited = decision == access_log::Outcome::Limited;
    let limit = limited
        .then(|| noted.limit.or_else(|| header(&X_RATELIMIT_TYPE)))
        .flatten();
    let queue_wait = header(&X_QUEUE_WAIT_MS).and_then(|v| v.parse().ok());
    let rules = config.router.rules();
    // The path as routes matched it; as sent when it could not be normalised.
    let path = match arrived.target {
        Target::Uri(uri) => {
            let raw = uri.path();
            normalize_path(raw, rules).map_or_else(|_| raw.to_owned(), Cow::into_owned)
        }
        Target::Path(raw) => match normalize_path(&raw, rules) {
            Ok(Cow::Owned(normal)) => normal,
            Ok(Cow::Borrowed(_)) | Err(_) => raw, // already normal: the whole path
        },
    };
    let record = access_log::Record {
        time_ms: arrived.time_ms,
        peer: peer.addr.ip(),
        method: arrived.method,
        version: arrived.version,
        path,
        class: noted.class.map(|c| config.class_name(c).to_owned()),
        tier: noted.caller.map(|c| config.tier(c.tier).name.clone()),
        account: noted.caller.map(|c| c.account.prefix()),
        status,
        decision,
        limit: limit.map(str::to_owned),
        shadow_penalty: noted.shadow_penalty,
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
