//! The classification stage: a request's class from its method and path ([`by_route`]), or — on
//! a route that names it in the body — from a JSON field in the body's first bytes, which are put
//! back in front of the unread rest ([`body_class`]).

use std::time::Duration;

use http::Request;
use http_body::Body as _;

use super::client_body::ClientBody;
use super::error::ProxyError;
use super::request_body::RequestBody;
use super::upload;
use crate::classify::{BodyClasses, ClassId};
use crate::config::Config;

/// The request's class by its route, unless the route names it in the body: then also the rule
/// that reads it there ([`body_class`]). Takes the request by reference: the common request is
/// classified without a move.
pub fn by_route<'c, B>(
    req: &Request<B>,
    config: &'c Config,
) -> Result<(ClassId, Option<&'c BodyClasses>), ProxyError> {
    Ok(config
        .router
        .classify_route(req.method(), req.uri().path())?)
}

/// Reads the body prefix (up to `[server] inspect_limit`, with at most `idle` between frames)
/// of a request whose route picks its class from a JSON field; the class it names (or
/// `route_class`), and the request with the prefix put back in front of the unread rest.
pub async fn body_class(
    req: Request<ClientBody>,
    rule: &BodyClasses,
    route_class: ClassId,
    config: &Config,
    idle: Duration,
) -> Result<(Request<RequestBody>, ClassId), ProxyError> {
    // A declared length over every cap this route's classes have is refused before a byte is
    // read (and before a `100 Continue`): whichever class the body names would refuse it.
    let caps = std::iter::once(route_class)
        .chain(rule.by_value.values().copied())
        .map(|class| config.max_body(class));
    let loosest = caps
        .reduce(|a, b| a.zip(b).map(|(a, b)| a.max(b)))
        .flatten();
    upload::check_declared(&req.body().size_hint(), loosest)?;
    let (parts, body) = req.into_parts();
    let prefix = RequestBody::from(body)
        .prefix(config.server.inspect_limit, idle)
        .await?;
    let class = rule
        .class_of(&prefix.bytes, prefix.is_complete())?
        .unwrap_or(route_class);
    Ok((Request::from_parts(parts, prefix.into()), class))
}
