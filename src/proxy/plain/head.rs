//! The fast path's request head: parsed by httparse straight from the connection's buffer, and
//! judged plain enough to serve without hyper — or not.  [pure]
//!
//! "Plain" is deliberately narrow: HTTP/1.1 kept alive, an origin-form target of unreserved
//! characters, one `Host`, no body or one `Content-Length`, and none of the fields that change
//! how a message is framed or routed (`Transfer-Encoding`, `Upgrade`, `Expect`, `TE`, the
//! hop-by-hop and forwarding fields, floodgate's own). Everything else is [`Parsed::Other`]:
//! hyper gets the bytes and applies its rules, so the fast path never has to agree with hyper on
//! a hard case — only on easy ones, which tests/fast_path.rs checks against hyper.

use std::mem::MaybeUninit;

use http::Method;

/// Header fields the fast path's parser has room for (a head with more goes to hyper).
pub const FIELD_SLOTS: usize = 64;

/// The bounds of a head the fast path takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head, request line included (`[server] max_header_bytes`).
    pub max_bytes: usize,
    /// Most fields (`[server] max_header_count`).
    pub max_fields: usize,
}

/// One request head, borrowed from the connection's buffer.
#[derive(Debug)]
pub struct PlainHead<'h, 'b> {
    pub method: Method,
    /// The origin-form target, as sent.
    pub target: &'b str,
    /// The fields, as sent (names in the client's case).
    pub fields: &'h [httparse::Header<'b>],
    /// The field lines as sent, each ending in CRLF: what goes upstream, less `dropped`.
    pub lines: &'b [u8],
    /// A `Connection: keep-alive` line's place in `lines` (hop-by-hop: not relayed).
    pub dropped: Option<std::ops::Range<usize>>,
    /// The head has a `Content-Length`.
    pub has_length: bool,
    /// The declared body length (0 without `Content-Length`).
    pub body_len: usize,
    /// The head's length in the buffer, the blank line included.
    pub head_len: usize,
}

impl PlainHead<'_, '_> {
    /// The values of the field `name` (lowercase), in order.
    pub fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.fields
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    }

    /// The head and body's length in the buffer.
    pub fn total_len(&self) -> usize {
        self.head_len + self.body_len
    }
}

/// What the buffer's first bytes are.
#[derive(Debug)]
pub enum Parsed<'h, 'b> {
    /// Not a whole head yet.
    Partial,
    /// A plain request the fast path serves.
    Plain(PlainHead<'h, 'b>),
    /// Anything else: a head for hyper to parse (and answer, if it is malformed).
    Other,
}

/// Slots for one parse's fields, left uninitialised (httparse writes those it uses).
pub type FieldSlots<'b> = [MaybeUninit<httparse::Header<'b>>; FIELD_SLOTS];

/// Empty slots for [`parse`].
pub fn field_slots<'b>() -> FieldSlots<'b> {
    [const { MaybeUninit::uninit() }; FIELD_SLOTS]
}

/// Parses the head at the start of `buf` and judges it.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut FieldSlots<'b>,
    limits: HeadLimits,
) -> Parsed<'h, 'b> {
    let mut req = httparse::Request::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, slots);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= limits.max_bytes => return Parsed::Partial,
        _ => return Parsed::Other,
    };
    if head_len > limits.max_bytes || req.headers.len() > limits.max_fields {
        return Parsed::Other;
    }
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    let Some(method) = plain_method(method) else {
        return Parsed::Other;
    };
    if !plain_target(target) {
        return Parsed::Other;
    }
    let Some((body_len, has_length)) = plain_fields(req.headers) else {
        return Parsed::Other;
    };
    // Lines relayed as they are must end in CRLF (httparse also reads a bare LF).
    let head = &buf[..head_len];
    if memchr::memchr_iter(b'\n', head).any(|at| at == 0 || head[at - 1] != b'\r') {
        return Parsed::Other;
    }
    let Some((lines, dropped)) = field_lines(head, req.headers) else {
        return Parsed::Other;
    };
    Parsed::Plain(PlainHead {
        method,
        target,
        fields: req.headers,
        lines,
        dropped,
        has_length,
        body_len,
        head_len,
    })
}

/// The field lines of `head` (a whole CRLF head), and the place in them of its one
/// `Connection` line (a second one goes to hyper).
fn field_lines<'b>(
    head: &'b [u8],
    fields: &[httparse::Header<'b>],
) -> Option<(&'b [u8], Option<std::ops::Range<usize>>)> {
    let Some(first) = fields.first() else {
        return Some((&[], None));
    };
    let offset = |p: *const u8| p as usize - head.as_ptr() as usize;
    let start = offset(first.name.as_ptr());
    let lines = &head[start..head.len() - 2];
    let mut dropped = None;
    for field in fields {
        if field.name.eq_ignore_ascii_case("connection") {
            if dropped.is_some() {
                return None;
            }
            let from = offset(field.name.as_ptr()) - start;
            let to = from + memchr::memchr(b'\n', &lines[from..])? + 1;
            dropped = Some(from..to);
        }
    }
    Some((lines, dropped))
}

/// The methods the fast path serves (`CONNECT`, `TRACE` and extension methods go to hyper).
fn plain_method(method: &str) -> Option<Method> {
    Some(match method {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "HEAD" => Method::HEAD,
        "PUT" => Method::PUT,
        "DELETE" => Method::DELETE,
        "PATCH" => Method::PATCH,
        "OPTIONS" => Method::OPTIONS,
        _ => return None,
    })
}

/// An origin-form target of RFC 3986's unreserved, sub-delims, `:@/?%` characters only: what
/// every URI parser accepts alike (no fragment, no quote, no brace, no space).
fn plain_target(target: &str) -> bool {
    target.starts_with('/')
        && target.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'@'
                        | b'/'
                        | b'?'
                        | b'%'
                )
        })
}

/// The body length (and whether a `Content-Length` said it), when every field is one the fast path relays as it is (or drops:
/// `Connection: keep-alive`) and there is exactly one `Host`; `None` sends the head to hyper.
fn plain_fields(fields: &[httparse::Header<'_>]) -> Option<(usize, bool)> {
    let mut body_len = None;
    let mut hosts = 0;
    for field in fields {
        match field_kind(field.name) {
            Kind::Relayed => {}
            Kind::Host => hosts += 1,
            Kind::ContentLength if body_len.is_none() => body_len = Some(length(field.value)?),
            Kind::Connection if field.value.eq_ignore_ascii_case(b"keep-alive") => {}
            _ => return None,
        }
    }
    (hosts == 1).then_some((body_len.unwrap_or(0), body_len.is_some()))
}

/// How the fast path treats a field, by its name.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Relayed,
    Host,
    ContentLength,
    Connection,
    /// Framing, hop-by-hop, forwarding, `Expect`, floodgate's own: hyper's to handle.
    Other,
}

fn field_kind(name: &str) -> Kind {
    const OTHER: [&str; 10] = [
        "transfer-encoding",
        "upgrade",
        "expect",
        "te",
        "trailer",
        "keep-alive",
        "proxy-connection",
        "x-forwarded-for",
        "x-forwarded-proto",
        "http2-settings",
    ];
    let is = |n: &str| name.len() == n.len() && name.eq_ignore_ascii_case(n);
    if is("host") {
        Kind::Host
    } else if is("content-length") {
        Kind::ContentLength
    } else if is("connection") {
        Kind::Connection
    } else if OTHER.iter().any(|n| is(n))
        || name
            .get(..11)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-floodgate"))
    {
        Kind::Other
    } else {
        Kind::Relayed
    }
}

/// A `Content-Length` of 1 to 9 digits (a larger body is hyper's to stream).
fn length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 8192,
        max_fields: 100,
    };

    /// The verdict on `raw`: `Some((method, target, body length))` for a plain head.
    fn judge(raw: &[u8]) -> Option<(String, String, usize)> {
        let mut slots = field_slots();
        match parse(raw, &mut slots, LIMITS) {
            Parsed::Plain(h) => Some((h.method.to_string(), h.target.to_owned(), h.body_len)),
            Parsed::Partial => panic!("partial: {:?}", String::from_utf8_lossy(raw)),
            Parsed::Other => None,
        }
    }

    #[test]
    fn a_keep_alive_get_and_a_post_with_a_length_are_plain() {
        assert_eq!(
            judge(b"GET /v1/x?a=1 HTTP/1.1\r\nHost: h\r\nX-Api-Key: k\r\n\r\n"),
            Some(("GET".into(), "/v1/x?a=1".into(), 0))
        );
        assert_eq!(
            judge(b"POST /p HTTP/1.1\r\nhost: h\r\nContent-Length: 12\r\nConnection: Keep-Alive\r\n\r\n"),
            Some(("POST".into(), "/p".into(), 12))
        );
    }

    #[test]
    fn framing_routing_and_version_oddities_go_to_hyper() {
        for raw in [
            &b"GET / HTTP/1.0\r\nHost: h\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1234567890\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nx-floodgate-tier: pro\r\n\r\n",
            b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a\"b HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a{b} HTTP/1.1\r\nHost: h\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
        ] {
            assert_eq!(judge(raw), None, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn a_head_cut_short_is_partial_until_it_outgrows_the_limit() {
        let mut slots = field_slots();
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\n";
        assert!(matches!(parse(raw, &mut slots, LIMITS), Parsed::Partial));
        let small = HeadLimits {
            max_bytes: 10,
            max_fields: 100,
        };
        let mut slots = field_slots();
        assert!(matches!(parse(raw, &mut slots, small), Parsed::Other));
    }

    #[test]
    fn more_fields_than_allowed_or_slotted_go_to_hyper() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..3 {
            raw.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let mut slots = field_slots();
        let three = HeadLimits {
            max_bytes: 8192,
            max_fields: 3,
        };
        assert!(matches!(parse(&raw, &mut slots, three), Parsed::Other));
        let mut many = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..FIELD_SLOTS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(judge(&many), None);
    }
}
