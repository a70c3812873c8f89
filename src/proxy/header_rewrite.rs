//! Header hygiene on the way through, per RFC 9110 §7.6: hop-by-hop fields are dropped in both
//! directions, `X-Forwarded-For` / `X-Forwarded-Proto` are written, and headers floodgate uses to
//! tell the upstream something are removed from what the client sent.
//!
//! The forwarding fields are believed only from a trusted proxy (`[identity] trusted_proxies`,
//! like nginx's `set_real_ip_from` and Traefik's `forwardedHeaders.trustedIPs`): from one, its
//! `X-Forwarded-For` chain is kept with the peer appended, and its `X-Forwarded-Proto` (`https`
//! behind a TLS load balancer) is passed on. From anyone else both are replaced — the chain by
//! the peer's address, the protocol by the listener's own (`https` with `[server.tls]`, else
//! `http`) — so a client cannot tell the upstream it came over TLS or from another address.

use http::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, TRANSFER_ENCODING, UPGRADE,
};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Proto` of a request that reached a clear-text listener.
pub static HTTP: HeaderValue = HeaderValue::from_static("http");
/// `X-Forwarded-Proto` of a request that reached floodgate over TLS.
pub static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// What floodgate writes into one request's forwarding fields.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The peer's address, last in `X-Forwarded-For`.
    pub peer: HeaderValue,
    /// The peer is a trusted proxy: the forwarding fields it sent are kept.
    pub trusted: bool,
    /// The protocol the request reached floodgate over: [`HTTP`] or [`HTTPS`].
    pub proto: &'static HeaderValue,
    /// The two head lines for a request that sent no forwarding fields of its own, rendered
    /// once per connection.
    lines: Vec<u8>,
}

impl Forwarded {
    pub fn new(peer: HeaderValue, trusted: bool, proto: &'static HeaderValue) -> Self {
        let mut fwd = Self {
            peer,
            trusted,
            proto,
            lines: Vec::new(),
        };
        let mut lines = Vec::with_capacity(64);
        write_forwarded(&mut lines, None, &fwd);
        fwd.lines = lines;
        fwd
    }
}

/// Prefix of headers only floodgate may set towards the upstream.
const OWN_PREFIX: &[u8] = b"x-floodgate-";

/// The fixed hop-by-hop fields (RFC 9110 §7.6.1, plus the legacy `Proxy-Connection`).
static HOP_BY_HOP: [&HeaderName; 6] = [
    &CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &TE,
    &TRANSFER_ENCODING,
    &UPGRADE,
];

/// Removes `Connection`, the fields it names, and the fixed hop-by-hop fields. One scan of the
/// fields notes which are present and whether `Connection` names anything beyond them, so only
/// those are removed (each removal is a hash lookup); most requests carry none, and a typical
/// response only `Connection: keep-alive`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u8;
    let mut names_others = false;
    for (name, value) in headers.iter() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
            if i == 0 && !names_others {
                names_others = names_other_fields(value);
            }
        }
    }
    if present == 0 {
        return;
    }
    if names_others {
        // Fields named by Connection, other than the fixed ones handled below.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty() && !is_fixed(n))
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// Whether a `Connection` value names a field beyond the fixed ones (`keep-alive`, on nearly
/// every response, names none: checked without splitting or allocating).
fn names_other_fields(value: &HeaderValue) -> bool {
    let v = value.as_bytes();
    if v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close") {
        return false;
    }
    std::str::from_utf8(v).map_or(true, |list| {
        list.split(',')
            .map(str::trim)
            .any(|n| !n.is_empty() && !is_fixed(n))
    })
}

/// A fixed hop-by-hop field's name, in any case.
fn is_fixed(token: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_str().len() == token.len() && h.as_str().eq_ignore_ascii_case(token))
}

/// Whether `name` is one of the fixed hop-by-hop fields.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name).is_some()
}

/// The position of `name` in [`HOP_BY_HOP`]; the length check keeps most names to one compare.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str().len() {
        2 | 7 | 10 | 16 | 17 => HOP_BY_HOP.iter().position(|h| *h == name),
        _ => None,
    }
}

/// A request to switch protocols (RFC 9110 §7.8): `Connection` names `upgrade` and an `Upgrade`
/// field says to what.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers.get_all(CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// Puts back the two hop-by-hop fields an upgrade needs on the next hop, after the usual
/// stripping removed them.
pub fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
}

/// Prepares a client request's headers for the upstream. (The upstream client writes
/// `X-Forwarded-For`/`-Proto` as it writes the head: [`write_forwarded`].)
pub fn request_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    strip_own(headers);
}

/// Writes the forwarding fields into the map, for a request sent through hyper's client (a
/// protocol upgrade): the same values [`write_forwarded`] writes into a head.
pub fn append_forwarded(headers: &mut HeaderMap, fwd: &Forwarded) {
    if !fwd.trusted {
        headers.insert(&X_FORWARDED_FOR, fwd.peer.clone());
        headers.insert(&X_FORWARDED_PROTO, fwd.proto.clone());
        return;
    }
    append_to_list(headers, &X_FORWARDED_FOR, &fwd.peer);
    if headers.get(&X_FORWARDED_PROTO).is_none_or(|v| v.is_empty()) {
        headers.insert(&X_FORWARDED_PROTO, fwd.proto.clone());
    }
}

/// Whether a field is one the head writer replaces by [`write_forwarded`].
pub fn is_forwarding_field(name: &HeaderName) -> bool {
    name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO
}

/// Writes `X-Forwarded-For` and `X-Forwarded-Proto` as head lines, without growing the
/// request's header map: from a trusted proxy, its chain then the peer, and its protocol (or
/// the listener's when it sent none); from anyone else, the peer and the listener's protocol.
/// `client`: the request's fields, if it sent either.
pub fn write_forwarded(buf: &mut Vec<u8>, client: Option<&HeaderMap>, fwd: &Forwarded) {
    let kept = client.filter(|_| fwd.trusted);
    if kept.is_none() && !fwd.lines.is_empty() {
        buf.extend_from_slice(&fwd.lines);
        return;
    }
    write_field(buf, &X_FORWARDED_FOR, kept, Some(&fwd.peer));
    let proto = kept
        .and_then(|h| h.get(&X_FORWARDED_PROTO))
        .filter(|v| !v.is_empty());
    if proto.is_some() {
        write_field(buf, &X_FORWARDED_PROTO, kept, None);
    } else {
        write_field(buf, &X_FORWARDED_PROTO, None, Some(fwd.proto));
    }
}

/// One head line: `name: ` the non-empty values of `name` in `kept`, comma-joined, then `last`.
fn write_field(
    buf: &mut Vec<u8>,
    name: &HeaderName,
    kept: Option<&HeaderMap>,
    last: Option<&HeaderValue>,
) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    let values = kept.into_iter().flat_map(|h| h.get_all(name)).chain(last);
    for (i, value) in values.filter(|v| !v.is_empty()).enumerate() {
        if i > 0 {
            buf.extend_from_slice(b", ");
        }
        buf.extend_from_slice(value.as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
}

/// Drops any `x-floodgate-*` header a client sent: the upstream must be able to trust them.
fn strip_own(headers: &mut HeaderMap) {
    let is_own = |k: &HeaderName| k.as_str().as_bytes().starts_with(OWN_PREFIX);
    if !headers.keys().any(is_own) {
        return;
    }
    let own: Vec<HeaderName> = headers.keys().filter(|k| is_own(k)).cloned().collect();
    for name in own {
        headers.remove(name);
    }
}

/// Appends `value` to a comma-separated list header, creating it when absent. One hash lookup
/// either way (the entry API), since nearly every request takes the "absent" branch.
fn append_to_list(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    match headers.entry(name) {
        Entry::Vacant(e) => {
            e.insert(value.clone());
        }
        Entry::Occupied(mut e) => {
            let joined = match e.get().to_str() {
                Ok(existing) if !existing.is_empty() => {
                    format!("{existing}, {}", value.to_str().unwrap_or_default())
                }
                _ => {
                    e.insert(value.clone());
                    return;
                }
            };
            if let Ok(v) = HeaderValue::from_str(&joined) {
                e.insert(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_fields_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        h.insert("x-floodgate-tier", "premium".parse().unwrap());
        h.insert("x-forwarded-for", "9.9.9.9".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        let mut untrusted = h.clone();
        request_headers(&mut h);
        let fwd = |trusted| Forwarded::new(HeaderValue::from_static("127.0.0.1"), trusted, &HTTP);
        append_forwarded(&mut h, &fwd(true));
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert!(
            names.iter().all(|n| ![
                "connection",
                "x-secret",
                "keep-alive",
                "te",
                "x-floodgate-tier"
            ]
            .contains(n)),
            "{names:?}"
        );
        assert_eq!(h["x-kept"], "1");
        assert_eq!(h["x-forwarded-for"], "9.9.9.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        request_headers(&mut untrusted);
        append_forwarded(&mut untrusted, &fwd(false));
        assert_eq!(untrusted["x-forwarded-for"], "127.0.0.1");
        assert_eq!(untrusted["x-forwarded-proto"], "http");
    }

    #[test]
    fn head_lines_keep_a_trusted_proxys_fields_and_replace_anyone_elses() {
        let mut client = HeaderMap::new();
        client.append("x-forwarded-for", "1.2.3.4".parse().unwrap());
        client.append("x-forwarded-for", "10.0.0.7".parse().unwrap());
        client.insert("x-forwarded-proto", "https".parse().unwrap());
        let line = |client: Option<&HeaderMap>, trusted| {
            let fwd = Forwarded::new(HeaderValue::from_static("10.0.0.9"), trusted, &HTTP);
            let mut buf = Vec::new();
            write_forwarded(&mut buf, client, &fwd);
            String::from_utf8(buf).unwrap()
        };
        assert_eq!(
            line(Some(&client), true),
            "x-forwarded-for: 1.2.3.4, 10.0.0.7, 10.0.0.9\r\nx-forwarded-proto: https\r\n"
        );
        assert_eq!(
            line(Some(&client), false),
            "x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n"
        );
        assert_eq!(
            line(None, true),
            "x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n"
        );
    }
}
