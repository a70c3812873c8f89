//! A request's life, top to bottom: identify -> classify -> size check -> decide -> forward ->
//! headers.
//!
//! Everything here is the thin I/O edge around pure parts: identity, classification and the limit
//! decision take plain values and return plain values; the store does the atomic bookkeeping;
//! [`upstream`] moves bytes.

mod body;
pub mod forwarding;
pub mod upload;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, HOST};
use http::uri::Uri;
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;

pub use body::ProxyBody;
use upload::UploadBody;
use upstream::UpstreamClient;

use crate::app::{Policy, Shared};
use crate::classify::ClassId;
use crate::error::{json_response, ProxyError};
use crate::identity::Caller;
use crate::limits::{headers as rl_headers, Decision, Refusal, Usage};

/// The seed API's 429 body, byte for byte.
const TOO_MANY_ATTEMPTS: &str = r#"{"message": "Too Many Attempts."}"#;

/// One worker's proxy: the shared state plus the worker's own upstream connection pool.
pub struct Proxy {
    shared: Arc<Shared>,
    upstream: Arc<UpstreamClient>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, upstream: Arc<UpstreamClient>) -> Self {
        Self { shared, upstream }
    }

    /// Answers one client request.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let policy = self.shared.policy.load_full();
        let config = &policy.config;

        let caller = match config.identity.identify(req.headers(), peer.ip()) {
            Ok(caller) => caller,
            Err(e) => return self.refuse(e.into()),
        };
        let class = config.router.classify(req.method(), req.uri().path());
        // Before the limit check: a request refused for its declared size consumes no quota.
        if let Err(e) = upload::check_declared(&req.body().size_hint(), config.max_body(class)) {
            return self.refuse(e.into());
        }

        let usage = match self.decide(&policy, caller, class).await {
            Ok(usage) => usage,
            Err(resp) => return resp,
        };

        let mut resp = match self.forward(req, peer, &policy, caller, class).await {
            Ok(resp) => resp,
            Err(e) if e.is_upstream_failure() => {
                self.shared.metrics.upstream_error(e.code());
                tracing::warn!(error = %e, class = config.class_name(class), "upstream failure");
                e.into_response()
            }
            Err(e) => self.refuse(e),
        };
        if let Some(usage) = usage {
            rl_headers::write_usage(resp.headers_mut(), &usage, config.headers.ietf);
        }
        resp
    }

    /// Answers a request floodgate refuses itself (401, 413), counted by reason.
    fn refuse(&self, err: ProxyError) -> Response<ProxyBody> {
        self.shared.metrics.rejected(err.code());
        err.into_response()
    }

    /// Checks and consumes the caller's limits for `class`. `Ok(None)`: the class is not limited
    /// for this tier; `Err`: the finished 429 (or store failure) response.
    async fn decide(
        &self,
        policy: &Policy,
        caller: Caller,
        class: ClassId,
    ) -> Result<Option<Usage>, Response<ProxyBody>> {
        let rules = policy.config.tier(caller.tier).rules(class);
        if rules.is_empty() {
            policy.handles.admitted(class, caller.tier);
            return Ok(None);
        }
        let now = self.shared.clock.now_ms();
        match self
            .shared
            .store
            .check_and_consume(caller.account, rules, now)
            .await
        {
            Ok(Decision::Admitted(usage)) => {
                policy.handles.admitted(class, caller.tier);
                Ok(Some(usage))
            }
            Ok(Decision::Refused(usage, refusal)) => {
                policy.handles.limited(class, caller.tier);
                let config = &policy.config;
                self.shared.metrics.limit_hit(
                    config.class_name(class),
                    &config.tier(caller.tier).name,
                    refusal.kind.name(),
                );
                Err(too_many_attempts(&usage, &refusal, config.headers.ietf))
            }
            Err(e) => {
                tracing::error!(error = %e, "state store failed");
                Err(json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error": "store_unavailable", "message": "rate limit state unavailable"}"#,
                ))
            }
        }
    }

    /// Sends the request upstream with its path, query and body untouched; the body is counted
    /// against the class's upload limit as it streams.
    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        policy: &Policy,
        caller: Caller,
        class: ClassId,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let config = &policy.config;
        let mut req = req.map(|body| UploadBody::new(body, config.max_body(class)));
        prepare_request(&mut req, peer, self.upstream_authority());
        if config.headers.annotate_upstream {
            let h = req.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&config.tier(caller.tier).name) {
                h.insert(forwarding::X_FLOODGATE_TIER.clone(), v);
            }
            if let Ok(v) = HeaderValue::from_str(config.class_name(class)) {
                h.insert(forwarding::X_FLOODGATE_CLASS.clone(), v);
            }
        }
        let started = Instant::now();
        let mut resp = self.upstream.send(req).await?;
        policy
            .handles
            .upstream_latency(class, started.elapsed().as_secs_f64());
        forwarding::strip_hop_by_hop(resp.headers_mut());
        Ok(resp.map(ProxyBody::Upstream))
    }

    fn upstream_authority(&self) -> &str {
        self.upstream.authority()
    }
}

/// Origin-form target, HTTP/1.1 towards the upstream, a Host header, forwarding headers.
fn prepare_request<B>(req: &mut Request<B>, peer: SocketAddr, upstream_authority: &str) {
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
        if let Ok(v) = HeaderValue::from_str(upstream_authority) {
            req.headers_mut().insert(HOST, v);
        }
    }
    *req.version_mut() = Version::HTTP_11;
    forwarding::request_headers(req.headers_mut(), peer.ip());
}

/// The 429 answer: the seed's body, the usage headers, the limit type and an exact Retry-After.
fn too_many_attempts(usage: &Usage, refusal: &Refusal, ietf: bool) -> Response<ProxyBody> {
    let mut resp = json_response(StatusCode::TOO_MANY_REQUESTS, TOO_MANY_ATTEMPTS);
    rl_headers::write_usage(resp.headers_mut(), usage, ietf);
    rl_headers::write_refusal(resp.headers_mut(), refusal);
    resp
}
