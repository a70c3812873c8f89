//! The plain request's path: a request whose head the listener parsed itself ([`head`]) is
//! decided on slices of the connection's buffer and sent upstream as its own header lines —
//! no request object, no field map, no second copy of the head.
//!
//! The stages are [`super::Proxy::answer`]'s, in the same order and with the same rules:
//! identify, classify, the declared-size check, admission, forwarding. What this path does not
//! serve — a job, a route that reads its class from the body, a class that reads its cost
//! there, a task poll, a head it cannot read plainly, a request one of the pure stages would
//! refuse — it hands back untouched ([`Proxy::plan_plain`] says `None`) before anything was
//! consumed, and hyper serves it the usual way.

pub mod head;

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Method, Response};
use http_body::SizeHint;

pub use head::{field_slots, parse, FieldSlots, HeadLimits, Parsed, PlainHead};

use super::admit::{self, Admit, Denied};
use super::ctx::Ctx;
use super::header_rewrite::{self, Forwarded};
use super::own_headers::{X_FLOODGATE_CLASS, X_FLOODGATE_TIER};
use super::record::{self, Arrived, Noted};
use super::response_body::ProxyBody;
use super::upstream::codec::RelayHead;
use super::{respond, upload, Peer, Proxy};
use crate::classify::ClassId;
use crate::identity::{Caller, HeadFields};
use crate::limits::headers as rl_headers;
use crate::limits::{Refusal, Usage};
use crate::shared::Policy;

/// What a connection keeps from answer to answer so that none allocates: the last answer's
/// field map (cleared), the list of the upstream's fields relayed — and beside a relayed head
/// or floodgate's own 429, the usage its answer reports and the refusal, for the listener to
/// render as lines of its own.
#[derive(Debug, Default)]
pub struct Reuse {
    pub fields: HeaderMap,
    pub relay: RelayHead,
    pub usage: Option<Usage>,
    /// A 429's own fields (content type, limit type, Retry-After), written as lines: set with
    /// an answer whose field map is empty.
    pub refusal: Option<Refusal>,
}

/// A plain request this path serves: what its pure stages found.
pub struct Planned {
    policy: Arc<Policy>,
    caller: Caller,
    /// The account has runtime limits of its own (else its tier's rules apply).
    own_rules: bool,
    class: ClassId,
}

impl HeadFields for PlainHead<'_, '_> {
    fn values<'a>(&'a self, name: &'a http::HeaderName) -> impl Iterator<Item = &'a [u8]> {
        PlainHead::values(self, name.as_str())
    }
}

impl Proxy {
    /// The pure stages (identify, classify, the declared size) for a plain head; `None`: the
    /// request is not for this path (or one of them would refuse it), nothing was consumed,
    /// and hyper serves it.
    pub fn plan_plain(&self, head: &PlainHead<'_, '_>, peer: &Peer) -> Option<Planned> {
        let policy = self.shared.policy.load_full();
        let config = &policy.config;
        if config.jobs.tasks.is_some() {
            return None; // a task poll may need its task's watcher
        }
        let caller = config.identity.identify(head, peer.addr.ip()).ok()?;
        let (caller, own_rules) = policy.caller(caller, &*self.shared.clock).ok()?;
        let path = match memchr::memchr(b'?', head.target.as_bytes()) {
            Some(at) => &head.target[..at],
            None => head.target,
        };
        let (class, facts) = match config.router.classify_route(&head.method, path) {
            Ok((class, None)) => (class, config.class_facts(class)),
            _ => return None,
        };
        if !facts.decided_by_head {
            return None;
        }
        let declared = SizeHint::with_exact(head.body_len as u64);
        upload::check_declared(&declared, facts.max_body).ok()?;
        Some(Planned {
            policy,
            caller,
            own_rules,
            class,
        })
    }

    /// Admits and forwards a planned request whose body (`body`, exactly its declared length)
    /// is in memory: the upstream's answer with the usage headers, or floodgate's own; with the
    /// access log on, the answer carries its record ([`crate::access_log::Pending`]). An
    /// upstream's answer keeps its fields in `reuse.relay` (the response's map holds
    /// floodgate's own), for the listener to write as they came.
    pub async fn answer_plain(
        &self,
        plan: Planned,
        (head, body): (&PlainHead<'_, '_>, &[u8]),
        peer: &Peer,
        reuse: &mut Reuse,
    ) -> Response<ProxyBody> {
        // Test builds only: a panic while a plain request is answered.
        #[cfg(feature = "test-hooks")]
        if head.target == "/floodgate-test-panic" {
            panic!("test hook: a panic on the fast path");
        }
        let Some(log) = &self.shared.access_log else {
            return self.forward_plain(&plan, (head, body), peer, reuse).await;
        };
        let arrived = Arrived::plain(&head.method, head.target, self.shared.clock.now_ms());
        let resp = self.forward_plain(&plan, (head, body), peer, reuse).await;
        let noted = Noted {
            caller: Some(plan.caller),
            class: Some(plan.class),
            limit: reuse.refusal.map(|r| r.kind.name()),
            shadow_penalty: None, // jobs never take this path
        };
        record::attach(resp, peer, arrived, noted, &plan.policy.config, log)
    }

    /// Admission and forwarding, for [`Proxy::answer_plain`].
    async fn forward_plain(
        &self,
        plan: &Planned,
        (head, body): (&PlainHead<'_, '_>, &[u8]),
        peer: &Peer,
        reuse: &mut Reuse,
    ) -> Response<ProxyBody> {
        let config = &plan.policy.config;
        let facts = config.class_facts(plan.class);
        let ctx = Ctx {
            policy: &plan.policy,
            caller: plan.caller,
            tier: match plan.own_rules {
                false => config.tier(plan.caller.tier),
                true => plan.policy.tier_of(plan.caller),
            },
            class: plan.class,
            units: facts.cost,
            forwarded: peer.forwarded(&config.identity),
            listed: std::sync::Mutex::new(None),
        };
        let usage = match Admit::of(&self.shared).check(&ctx).await {
            Ok(usage) => usage,
            // The usage lines and the 429's own fields are the listener's to render: a refusal
            // allocates nothing either.
            Err(Denied::Limited(usage, refusal)) if !config.headers.ietf => {
                reuse.usage = Some(usage);
                reuse.refusal = Some(refusal);
                return admit::too_many_attempts_body();
            }
            Err(denied) => return denied.answer(ctx.ietf()),
        };
        let annotate = config.headers.annotate_upstream.then_some(&ctx);
        let fields = std::mem::take(&mut reuse.fields);
        let started = Instant::now();
        let upstream = &self.upstreams.default;
        let encode = |buf: &mut Vec<u8>| encode_request(buf, head, body, ctx.forwarded, annotate);
        let pipelined =
            facts.pipelined && body.is_empty() && matches!(head.method, Method::GET | Method::HEAD);
        let (method, relay) = (&head.method, &mut reuse.relay);
        let sent = if pipelined {
            upstream.send_pipelined(method, fields, relay, encode).await
        } else {
            let bodiless = body.is_empty();
            upstream
                .send_whole(method, bodiless, fields, relay, encode)
                .await
        };
        let mut resp = match self.forwarder().arrived(&ctx, sent, started) {
            Ok(resp) => resp,
            Err(e) => {
                reuse.relay.release(); // a head read before the failure is not this answer's
                respond::failed(&self.shared.metrics, &ctx, e)
            }
        };
        match usage {
            Some(usage) if reuse.relay.filled && !config.headers.ietf => reuse.usage = Some(usage),
            Some(usage) => rl_headers::write_usage(resp.headers_mut(), &usage, ctx.ietf()),
            None => {}
        }
        resp
    }
}

/// The request as it goes upstream: the client's request line and fields as sent, less
/// `Connection: keep-alive` (the only hop-by-hop field a plain head has), then floodgate's
/// annotations and the forwarding fields, then the body.
fn encode_request(
    buf: &mut Vec<u8>,
    head: &PlainHead<'_, '_>,
    body: &[u8],
    forwarded: &Forwarded,
    annotate: Option<&Ctx<'_>>,
) {
    buf.extend_from_slice(head.method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(head.target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    match &head.dropped {
        None => buf.extend_from_slice(head.lines),
        Some(line) => {
            buf.extend_from_slice(&head.lines[..line.start]);
            buf.extend_from_slice(&head.lines[line.end..]);
        }
    }
    if !head.has_length && matches!(head.method, Method::POST | Method::PUT | Method::PATCH) {
        // A method that defines a body says "none" explicitly (as HTTP/1.1 clients do).
        buf.extend_from_slice(b"content-length: 0\r\n");
    }
    if let Some(ctx) = annotate {
        for (name, value) in [
            (&X_FLOODGATE_TIER, ctx.tier_name()),
            (&X_FLOODGATE_CLASS, ctx.class_name()),
        ] {
            if value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
            {
                line(buf, name.as_str().as_bytes(), value.as_bytes());
            }
        }
    }
    header_rewrite::write_forwarded(buf, None, forwarded);
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(body);
}

fn line(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}
