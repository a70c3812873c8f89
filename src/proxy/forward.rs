//! The forwarding stage: the request as it goes upstream (origin-form, hop-by-hop fields dropped,
//! floodgate's own annotations), sent on this worker's connections — or, for a protocol
//! upgrade, on a connection of its own — and the upstream's answer timed and cleaned.

use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, HOST};
use http::uri::Uri;
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;

use super::ctx::Ctx;
use super::error::ProxyError;
use super::header_rewrite;
use super::own_headers::{annotate, write_marks};
use super::record::UpstreamTime;
use super::request_body::RequestBody;
use super::response_body::ProxyBody;
use super::upload::UploadBody;
use super::upstream::{ForwardBody, UpstreamBody, UpstreamClient, Upstreams};
use crate::penalties::Marks;
use crate::queue::UpstreamAccount;

/// The two halves of a switched protocol, carried in a `101` response's extensions for the
/// listener to join: the client's connection and the upstream's.
#[derive(Clone)]
pub struct Tunnel {
    pub client: OnUpgrade,
    pub upstream: OnUpgrade,
}

/// This worker's upstream connections, and whether answers carry their upstream time (for the
/// access log).
pub struct Forwarder<'a> {
    pub upstreams: &'a Upstreams,
    pub time_answers: bool,
}

impl Forwarder<'_> {
    /// Sends a plain request upstream with its path, query and body untouched (one move of
    /// its parts into the outgoing request). An upgrade goes through [`Forwarder::upgrade`].
    pub async fn request(
        &self,
        ctx: &Ctx<'_>,
        req: Request<RequestBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let req = self.outgoing(ctx, req, &Marks::default());
        self.send_as(ctx, req, None).await
    }

    /// A protocol upgrade (WebSocket and the like), admitted like any request of its class:
    /// sent on an upstream connection of its own with `Connection: upgrade` and its `Upgrade`
    /// kept. When the upstream switches protocols, its `101` carries both halves of the tunnel
    /// ([`Tunnel`]) for the listener to join.
    pub async fn upgrade(
        &self,
        ctx: &Ctx<'_>,
        req: Request<RequestBody>,
        client: OnUpgrade,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let protocol = req.headers().get(http::header::UPGRADE).cloned();
        let mut req = self.outgoing(ctx, req, &Marks::default());
        header_rewrite::append_forwarded(req.headers_mut(), ctx.forwarded);
        if let Some(protocol) = protocol {
            header_rewrite::keep_upgrade(req.headers_mut(), protocol);
        }
        let started = Instant::now();
        let mut resp = self.upstreams.default.send_upgrade(req).await;
        if let Ok(resp) = &mut resp {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream = hyper::upgrade::on(&mut *resp);
                resp.extensions_mut().insert(Tunnel { client, upstream });
            }
        }
        self.arrived(ctx, resp, started)
    }

    /// Sends a prepared request on this worker's connections, as `account` when a job runs on
    /// one.
    pub async fn send_as(
        &self,
        ctx: &Ctx<'_>,
        mut req: Request<ForwardBody>,
        account: Option<&UpstreamAccount>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let client = route(self.upstreams, &mut req, account).clone();
        let started = Instant::now();
        let resp = client.send(req, Some(ctx.forwarded)).await;
        self.arrived(ctx, resp, started)
    }

    /// The request as it goes upstream, whichever upstream account will run it: origin-form,
    /// hop-by-hop fields dropped, floodgate's own annotations. (`X-Forwarded-*` are written
    /// with the head, see [`UpstreamClient::send`].)
    pub fn outgoing(
        &self,
        ctx: &Ctx<'_>,
        req: Request<impl Into<RequestBody>>,
        marks: &Marks,
    ) -> Request<ForwardBody> {
        let config = ctx.config();
        let mut req = req.map(|body| UploadBody::new(body.into(), config.max_body(ctx.class)));
        prepare_request(&mut req, self.upstreams.default.host_header());
        if config.headers.annotate_upstream {
            annotate(req.headers_mut(), ctx);
        }
        write_marks(req.headers_mut(), marks);
        req
    }

    /// The upstream's answer to a request sent at `started`, timed, with its hop-by-hop fields
    /// dropped.
    pub fn arrived(
        &self,
        ctx: &Ctx<'_>,
        resp: Result<Response<UpstreamBody>, ProxyError>,
        started: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut resp = resp?;
        let took = started.elapsed();
        ctx.policy
            .handles
            .upstream_latency(ctx.class, took.as_secs_f64());
        if self.time_answers {
            resp.extensions_mut().insert(UpstreamTime(took));
        }
        // A wire response comes without its hop-by-hop fields; a 101's Connection and Upgrade
        // are the switch itself, for the client.
        let switched = matches!(resp.body(), UpstreamBody::Switched(_));
        if switched && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            header_rewrite::strip_hop_by_hop(resp.headers_mut());
        }
        Ok(resp.map(ProxyBody::upstream))
    }
}

/// The client's half of a protocol switch, when the request asks for one (`Connection: upgrade`
/// and `Upgrade`). hyper marks requests with an `Upgrade` field (or `CONNECT`); only those are
/// looked at further, so a plain request pays one empty-map check.
pub fn upgrade_asked<B>(req: &mut Request<B>) -> Option<OnUpgrade> {
    req.extensions().get::<OnUpgrade>()?;
    if !header_rewrite::is_upgrade(req.headers()) {
        return None;
    }
    req.extensions_mut().remove::<OnUpgrade>()
}

/// The pool a request goes out on; an upstream account sets its credential, and with its own
/// base URL, the Host.
pub fn route<'u>(
    upstreams: &'u Upstreams,
    req: &mut Request<ForwardBody>,
    account: Option<&UpstreamAccount>,
) -> &'u Arc<UpstreamClient> {
    let client = upstreams.client(account.and_then(|a| a.origin.as_deref()));
    if let Some(account) = account {
        if let Some((name, value)) = &account.credential {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        if account.origin.is_some() {
            if let Ok(v) = HeaderValue::from_str(client.host_header()) {
                req.headers_mut().insert(HOST, v);
            }
        }
    }
    client
}

/// Origin-form target, HTTP/1.1 towards the upstream, a Host header, hop-by-hop fields dropped.
fn prepare_request<B>(req: &mut Request<B>, upstream_host: &str) {
    if req.uri().scheme().is_some() {
        // absolute-form from the client: the upstream gets origin-form, Host carries the authority
        if let Some(authority) = req.uri().authority().map(|a| a.as_str().to_owned()) {
            if let Ok(v) = HeaderValue::from_str(&authority) {
                req.headers_mut().insert(HOST, v);
            }
        }
        let origin = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = origin.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
    if !req.headers().contains_key(HOST) {
        if let Ok(v) = HeaderValue::from_str(upstream_host) {
            req.headers_mut().insert(HOST, v);
        }
    }
    *req.version_mut() = Version::HTTP_11;
    header_rewrite::request_headers(req.headers_mut());
}
