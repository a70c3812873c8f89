//! The cost stage: what a request takes from its limits — its class's fixed `cost`, or, for a
//! class with `cost_from`, a whole number read from a JSON field in the body's first bytes,
//! which are put back in front of the unread rest ([`body_cost`]).

use std::time::Duration;

use http::Request;

use super::error::ProxyError;
use super::request_body::RequestBody;
use crate::config::Config;
use crate::limits::BodyCost;

/// Reads the body prefix (up to `[server] inspect_limit`, with at most `idle` between frames)
/// of a request whose class takes its cost from a JSON field; the units it is charged
/// ([`BodyCost::units`]: `default_cost` for a body not read whole), and the request with the
/// prefix put back in front of the unread rest. A body already read (to classify it) is not
/// read again, and a job's stage reuses the prefix read here.
pub async fn body_cost(
    req: Request<RequestBody>,
    rule: &BodyCost,
    config: &Config,
    idle: Duration,
) -> Result<(Request<RequestBody>, u32), ProxyError> {
    let (parts, body) = req.into_parts();
    let prefix = body.prefix(config.server.inspect_limit, idle).await?;
    let units = rule.units(&prefix.bytes, prefix.is_complete());
    Ok((Request::from_parts(parts, prefix.into()), units))
}
