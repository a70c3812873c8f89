//! HTTP/1.1 on the upstream side, as bytes: the request head floodgate writes, the response head
//! it reads (parsed by `httparse`), how each message's body is framed (RFC 9112 §6), and the
//! chunked transfer coding.  [pure]
//!
//! Only what a proxy needs towards an origin it was configured to trust: requests are always
//! HTTP/1.1 in origin form, and a response whose framing is unclear is an error, never a guess.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::SizeHint;
use smallvec::SmallVec;

use crate::proxy::header_rewrite;

/// The largest response head (status line and fields) floodgate reads.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most response header fields floodgate reads.
pub const MAX_HEADERS: usize = 128;
/// Room for the fields floodgate adds to a response (the rate-limit headers), so adding them
/// does not grow the map.
const HEADERS_ADDED: usize = 6;
/// The longest chunk-size line (with extensions) and trailer section accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// What went wrong in the upstream's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("malformed response head: {0}")]
    Head(#[from] httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("response header field not valid: {0}")]
    Field(String),
    #[error("response Content-Length not valid")]
    ContentLength,
    #[error("malformed chunked body")]
    Chunk,
    #[error("request body length differs from its Content-Length")]
    RequestLength,
}

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Transfer-Encoding: chunked (length not known up front).
    Chunked,
}

/// How the request body will be framed, from its declared length or what the body knows about
/// itself, and the field floodgate must add to say so (`None`: the head already says it).
pub fn request_framing(
    method: &Method,
    headers: &HeaderMap,
    body_ended: bool,
    hint: &SizeHint,
) -> Result<(RequestFraming, Option<(HeaderName, HeaderValue)>), CodecError> {
    if let Some(declared) = headers.get(CONTENT_LENGTH) {
        let len = parse_length(declared.as_bytes()).ok_or(CodecError::RequestLength)?;
        return Ok((RequestFraming::Length(len), None));
    }
    if body_ended || hint.exact() == Some(0) {
        // A method that defines a body says "none" explicitly (as HTTP/1.1 clients do).
        let zero = matches!(*method, Method::POST | Method::PUT | Method::PATCH)
            .then(|| (CONTENT_LENGTH, HeaderValue::from_static("0")));
        return Ok((RequestFraming::Empty, zero));
    }
    if let Some(len) = hint.exact() {
        return Ok((
            RequestFraming::Length(len),
            Some((CONTENT_LENGTH, len.into())),
        ));
    }
    let chunked = (TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    Ok((RequestFraming::Chunked, Some(chunked)))
}

/// Appends a request head: origin-form target, HTTP/1.1, every field of `headers`, then `extra`.
/// With `forwarded_for`, `X-Forwarded-For` and `X-Forwarded-Proto` are extended as they are
/// written (see [`header_rewrite::write_forwarded`]).
pub fn encode_request_head(
    buf: &mut Vec<u8>,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    extra: Option<&(HeaderName, HeaderValue)>,
    forwarded_for: Option<&header_rewrite::Forwarded>,
) {
    buf.extend_from_slice(method.as_str().as_bytes());
    buf.push(b' ');
    match uri.path_and_query() {
        Some(target) => buf.extend_from_slice(target.as_str().as_bytes()),
        None if *method == Method::CONNECT => match uri.authority() {
            Some(authority) => buf.extend_from_slice(authority.as_str().as_bytes()),
            None => buf.push(b'/'),
        },
        None => buf.push(b'/'),
    }
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let mut client_sent_forwarding = false;
    for (name, value) in headers {
        if forwarded_for.is_some() && header_rewrite::is_forwarding_field(name) {
            client_sent_forwarding = true;
        } else {
            encode_field(buf, name, value);
        }
    }
    if let Some(fwd) = forwarded_for {
        // The client's own lists are looked up only when it sent any (rarely).
        let client_lists = client_sent_forwarding.then_some(headers);
        header_rewrite::write_forwarded(buf, client_lists, fwd);
    }
    if let Some((name, value)) = extra {
        encode_field(buf, name, value);
    }
    buf.extend_from_slice(b"\r\n");
}

fn encode_field(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// The size line of one chunk of a chunked request body.
pub fn encode_chunk_size(buf: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
    buf.extend_from_slice(b"\r\n");
}

/// The last chunk and the empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: BodyFraming,
    /// Whether the connection can carry another request once this body ends.
    pub keep_alive: bool,
}

/// Slots for one response head's fields, left uninitialised (httparse writes those it uses).
type FieldSlots<'b> = [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

fn field_slots<'b>() -> FieldSlots<'b> {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// httparse's reading of the response head at the start of `buf`, its length and its status;
/// `None` until the head is all there.
fn read_head<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut FieldSlots<'b>,
) -> Result<Option<(httparse::Response<'h, 'b>, usize, StatusCode)>, CodecError> {
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let used = match config.parse_response_with_uninit_headers(&mut parsed, buf, slots)? {
        httparse::Status::Partial if buf.len() > MAX_HEAD_BYTES => {
            return Err(CodecError::HeadTooLarge)
        }
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(used) if used > MAX_HEAD_BYTES => {
            return Err(CodecError::HeadTooLarge)
        }
        httparse::Status::Complete(used) => used,
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(CodecError::Head(httparse::Error::Status))?;
    Ok(Some((parsed, used, status)))
}

/// Parses a response head at the start of `buf`, taking it out of `buf` once it is all there
/// (`Ok(None)` until then). `method` is the request's (a `HEAD` answer has no body).
///
/// Hop-by-hop fields (RFC 9110 §7.6.1, and any `Connection` names) are left out, and field
/// values share the head's bytes instead of each being copied. The fields go into `spare`'s
/// table (taken, cleared), so a connection that recycles maps allocates none per answer.
pub fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
    spare: &mut HeaderMap,
) -> Result<Option<ResponseHead>, CodecError> {
    let mut slots = field_slots();
    let Some((parsed, used, status)) = read_head(buf, &mut slots)? else {
        return Ok(None);
    };
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let start = buf.as_ptr() as usize;
    let mut facts = FramingFacts::default();
    let mut kept: SmallVec<[(HeaderName, Range<usize>); 16]> = SmallVec::new();
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| CodecError::Field(field.name.to_owned()))?;
        facts.note(&name, field.value)?;
        if !header_rewrite::is_hop_by_hop(&name) {
            let at = field.value.as_ptr() as usize - start;
            kept.push((name, at..at + field.value.len()));
        }
    }
    let head_bytes = buf.split_to(used).freeze();
    let mut headers = std::mem::take(spare);
    if !headers.is_empty() {
        // A connection hands its spare over cleared already; clearing walks the whole table.
        headers.clear();
    }
    headers.reserve(kept.len() + HEADERS_ADDED);
    for (name, range) in kept {
        if facts.connection_names(&name) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head_bytes.slice(range))
            .map_err(|_| CodecError::Field(name.as_str().to_owned()))?;
        headers.append(name, value);
    }
    let framing = facts.framing(status, method);
    if facts.transfer_encoding && facts.content_length.is_some() {
        // RFC 9112 §6.3: Transfer-Encoding wins; the length must not reach the client.
        headers.remove(CONTENT_LENGTH);
    }
    let keep_alive = version == Version::HTTP_11
        && !facts.close
        && framing != BodyFraming::UntilClose
        && !(facts.transfer_encoding && facts.content_length.is_some());
    Ok(Some(ResponseHead {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

/// A response head as the fast path passes it on: the head's bytes and, for each field
/// relayed, its name's and value's place in them — no field map, no copy of a value. Reused
/// from answer to answer (its list keeps its room).
#[derive(Debug, Default)]
pub struct RelayHead {
    head: Bytes,
    fields: Vec<(Range<u32>, Range<u32>)>,
    /// The upstream sent a `Date` / a `Content-Length` that is relayed.
    pub has_date: bool,
    pub has_length: bool,
    /// A head was parsed into this and not yet written.
    pub filled: bool,
}

impl RelayHead {
    /// The relayed fields, as (name, value) in the upstream's order and spelling.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let at = |r: &Range<u32>| &self.head[r.start as usize..r.end as usize];
        self.fields.iter().map(move |(n, v)| (at(n), at(v)))
    }

    /// Lets go of the head's bytes (they share the upstream connection's read buffer).
    pub fn release(&mut self) {
        self.head = Bytes::new();
        self.fields.clear();
        self.filled = false;
    }
}

/// [`parse_response_head`] for the fast path: the fields stay in the head's bytes, listed in
/// `relay` (hop-by-hop ones left out), and the returned head's map (`spare`, cleared) is empty
/// for floodgate's own fields. A head whose `Connection` names other fields (rare) is parsed
/// into the map instead, and `relay` is left unfilled.
pub fn parse_response_relay(
    buf: &mut BytesMut,
    method: &Method,
    spare: &mut HeaderMap,
    relay: &mut RelayHead,
) -> Result<Option<ResponseHead>, CodecError> {
    let mut slots = field_slots();
    let Some((parsed, used, status)) = read_head(buf, &mut slots)? else {
        return Ok(None);
    };
    let http11 = parsed.version != Some(0);
    let start = buf.as_ptr() as usize;
    let mut facts = FramingFacts::default();
    relay.release();
    relay.has_date = false;
    relay.has_length = false;
    for field in parsed.headers.iter() {
        let name = field.name;
        if facts.note_raw(name, field.value)? {
            continue; // hop-by-hop
        }
        relay.has_date |= name.eq_ignore_ascii_case("date");
        let length = name.eq_ignore_ascii_case("content-length");
        relay.has_length |= length;
        let at = |s: &[u8]| (s.as_ptr() as usize - start) as u32;
        let name_at = at(name.as_bytes());
        let value_at = match field.value.is_empty() {
            true => 0,
            false => at(field.value),
        };
        relay.fields.push((
            name_at..name_at + name.len() as u32,
            value_at..value_at + field.value.len() as u32,
        ));
    }
    if !facts.named.is_empty() {
        relay.release();
        return parse_response_head(buf, method, spare);
    }
    let framing = facts.framing(status, method);
    if facts.transfer_encoding && facts.content_length.is_some() {
        // RFC 9112 §6.3: Transfer-Encoding wins; the length must not reach the client.
        relay.has_length = false;
        let head = &buf[..];
        relay.fields.retain(|(n, _)| {
            !head[n.start as usize..n.end as usize].eq_ignore_ascii_case(b"content-length")
        });
    }
    let keep_alive = http11
        && !facts.close
        && framing != BodyFraming::UntilClose
        && !(facts.transfer_encoding && facts.content_length.is_some());
    relay.head = buf.split_to(used).freeze();
    relay.filled = true;
    let mut headers = std::mem::take(spare);
    if !headers.is_empty() {
        headers.clear();
    }
    Ok(Some(ResponseHead {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

/// What a response's fields say about its framing and connection.
#[derive(Default)]
struct FramingFacts {
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked_last: bool,
    close: bool,
    /// Fields `Connection` names beyond the fixed hop-by-hop ones (rare: most say
    /// `keep-alive` or `close`).
    named: Vec<HeaderName>,
}

impl FramingFacts {
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), CodecError> {
        if name == CONTENT_LENGTH {
            let len = parse_length(value).ok_or(CodecError::ContentLength)?;
            if self.content_length.is_some_and(|seen| seen != len) {
                return Err(CodecError::ContentLength);
            }
            self.content_length = Some(len);
        } else if name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
            // Only the last coding matters: is the message chunked at the end?
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.chunked_last = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name == CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    self.named.extend(HeaderName::from_bytes(token).ok());
                }
            }
        }
        Ok(())
    }

    /// [`FramingFacts::note`] for a field by its name as sent; whether it is hop-by-hop (not
    /// relayed). A `Connection` naming other fields puts them in `named`.
    fn note_raw(&mut self, name: &str, value: &[u8]) -> Result<bool, CodecError> {
        let is = |n: &str| name.len() == n.len() && name.eq_ignore_ascii_case(n);
        if is("content-length") {
            self.note(&CONTENT_LENGTH, value)?;
            return Ok(false);
        }
        for fixed in [&CONNECTION, &TRANSFER_ENCODING] {
            if is(fixed.as_str()) {
                self.note(fixed, value)?;
                return Ok(true);
            }
        }
        Ok(is("keep-alive") || is("proxy-connection") || is("te") || is("upgrade"))
    }

    /// Whether `Connection` named this field (so it is hop-by-hop too).
    fn connection_names(&self, name: &HeaderName) -> bool {
        !self.named.is_empty() && self.named.contains(name)
    }

    fn framing(&self, status: StatusCode, method: &Method) -> BodyFraming {
        let bodiless = *method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        match (bodiless, self.transfer_encoding, self.content_length) {
            (true, _, _) => BodyFraming::Empty,
            (false, true, _) if self.chunked_last => BodyFraming::Chunked,
            (false, true, _) => BodyFraming::UntilClose,
            (false, false, Some(0)) => BodyFraming::Empty,
            (false, false, Some(len)) => BodyFraming::Length(len),
            (false, false, None) => BodyFraming::UntilClose,
        }
    }
}

/// A Content-Length value: decimal digits only (no sign, no spaces inside), at most 19 of them.
fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// One step of a chunked body.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

/// Decodes the chunked transfer coding from a buffer that fills as bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChunkedDecoder {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// The next step decodable from `buf` (consumed as it goes); `Ok(None)`: more bytes needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, CodecError> {
        loop {
            match *self {
                ChunkedDecoder::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(None);
                    };
                    let size = parse_chunk_size(&line)?;
                    *self = match size {
                        0 => ChunkedDecoder::Trailers,
                        n => ChunkedDecoder::Data(n),
                    };
                }
                ChunkedDecoder::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = buf.split_to(n).freeze();
                    *self = match left - n as u64 {
                        0 => ChunkedDecoder::DataEnd,
                        rest => ChunkedDecoder::Data(rest),
                    };
                    return Ok(Some(Chunk::Data(data)));
                }
                ChunkedDecoder::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(CodecError::Chunk);
                    }
                    buf.advance(2);
                    *self = ChunkedDecoder::Size;
                }
                ChunkedDecoder::Trailers => return self.trailers(buf),
                ChunkedDecoder::Done => return Ok(Some(Chunk::End)),
            }
        }
    }

    /// The trailer section: none (an empty line) or fields up to an empty line.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, CodecError> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            *self = ChunkedDecoder::Done;
            return Ok(Some(Chunk::End));
        }
        let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
            if buf.len() > MAX_CHUNK_LINE {
                return Err(CodecError::Chunk);
            }
            return Ok(None);
        };
        let section = buf.split_to(end + 4);
        *self = ChunkedDecoder::Done;
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let Ok(httparse::Status::Complete((_, fields))) =
            httparse::parse_headers(&section, &mut fields)
        else {
            return Err(CodecError::Chunk);
        };
        let mut trailers = HeaderMap::with_capacity(fields.len());
        for field in fields {
            let name = HeaderName::from_bytes(field.name.as_bytes());
            let value = HeaderValue::from_bytes(field.value);
            if let (Ok(name), Ok(value)) = (name, value) {
                trailers.append(name, value);
            }
        }
        Ok(Some(Chunk::Trailers(trailers)))
    }
}

/// One CRLF-terminated line from the front of `buf` (without the CRLF).
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
    match memchr::memchr(b'\n', buf) {
        Some(lf) if lf == 0 || buf[lf - 1] != b'\r' => Err(CodecError::Chunk),
        Some(lf) => {
            let mut line = buf.split_to(lf + 1);
            line.truncate(lf - 1);
            Ok(Some(line))
        }
        None if buf.len() > MAX_CHUNK_LINE => Err(CodecError::Chunk),
        None => Ok(None),
    }
}

/// A chunk-size line: hex digits, then optional whitespace and `;extensions` (ignored).
fn parse_chunk_size(line: &[u8]) -> Result<u64, CodecError> {
    let end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    let rest = rest.trim_ascii_start();
    if digits.is_empty() || digits.len() > 15 || !(rest.is_empty() || rest[0] == b';') {
        return Err(CodecError::Chunk);
    }
    let hex = std::str::from_utf8(digits).map_err(|_| CodecError::Chunk)?;
    u64::from_str_radix(hex, 16).map_err(|_| CodecError::Chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::header_rewrite::Forwarded;

    fn head(text: &str) -> Result<Option<ResponseHead>, CodecError> {
        parse_response_head(
            &mut BytesMut::from(text),
            &Method::GET,
            &mut HeaderMap::new(),
        )
    }

    fn framing_of(text: &str) -> BodyFraming {
        head(text).unwrap().unwrap().framing
    }

    /// The relayed fields of `text` as "name: value" lines, and the head's framing.
    fn relayed(text: &str) -> (Vec<String>, RelayHead, BodyFraming) {
        let mut relay = RelayHead::default();
        let mut buf = BytesMut::from(text);
        let parsed =
            parse_response_relay(&mut buf, &Method::GET, &mut HeaderMap::new(), &mut relay);
        let head = parsed.unwrap().unwrap();
        let lines = relay
            .fields()
            .map(|(n, v)| {
                format!(
                    "{}: {}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        (lines, relay, head.framing)
    }

    #[test]
    fn a_relayed_head_keeps_fields_as_sent_less_hop_by_hop() {
        let (lines, relay, framing) = relayed(
            "HTTP/1.1 200 OK\r\nX-Trace:  a b \r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\
             x-empty:\r\nContent-Length: 2\r\nDate: Mon, 07 Dec 2026 00:00:00 GMT\r\n\r\nok",
        );
        assert_eq!(
            lines,
            [
                "X-Trace: a b",
                "x-empty: ",
                "Content-Length: 2",
                "Date: Mon, 07 Dec 2026 00:00:00 GMT"
            ]
        );
        assert!(relay.filled && relay.has_length && relay.has_date);
        assert_eq!(framing, BodyFraming::Length(2));
    }

    #[test]
    fn a_relayed_head_framed_both_ways_loses_its_length() {
        let (lines, relay, framing) =
            relayed("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(lines.is_empty(), "{lines:?}");
        assert!(!relay.has_length);
        assert_eq!(framing, BodyFraming::Chunked);
    }

    #[test]
    fn a_head_whose_connection_names_fields_goes_into_the_map() {
        let mut relay = RelayHead::default();
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nConnection: x-secret\r\nx-secret: s\r\nx-kept: k\r\n\r\n",
        );
        let head = parse_response_relay(&mut buf, &Method::GET, &mut HeaderMap::new(), &mut relay)
            .unwrap()
            .unwrap();
        assert!(!relay.filled);
        assert!(head.headers.get("x-secret").is_none());
        assert_eq!(head.headers.get("x-kept").unwrap(), "k");
    }

    #[test]
    fn request_head_is_origin_form_http11_with_every_field() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("api.example"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let uri: http::Uri = "/api/v1/x?q=1&r=%20".parse().unwrap();
        let extra = (CONTENT_LENGTH, HeaderValue::from_static("0"));
        let mut buf = Vec::new();
        encode_request_head(&mut buf, &Method::POST, &uri, &headers, Some(&extra), None);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "POST /api/v1/x?q=1&r=%20 HTTP/1.1\r\nhost: api.example\r\nx-multi: a\r\n\
             x-multi: b\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn forwarding_fields_extend_a_trusted_proxys_lists_once() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("h"));
        headers.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        headers.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let uri: http::Uri = "/".parse().unwrap();
        let fwd = |trusted| {
            Forwarded::new(
                HeaderValue::from_static("127.0.0.1"),
                trusted,
                &crate::proxy::header_rewrite::HTTP,
            )
        };
        let mut buf = Vec::new();
        encode_request_head(
            &mut buf,
            &Method::GET,
            &uri,
            &headers,
            None,
            Some(&fwd(true)),
        );
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "GET / HTTP/1.1\r\nhost: h\r\n\
             x-forwarded-for: 203.0.113.9, 198.51.100.7, 127.0.0.1\r\n\
             x-forwarded-proto: https\r\n\r\n"
        );
        let mut replaced = Vec::new();
        encode_request_head(
            &mut replaced,
            &Method::GET,
            &uri,
            &headers,
            None,
            Some(&fwd(false)),
        );
        assert_eq!(
            String::from_utf8(replaced).unwrap(),
            "GET / HTTP/1.1\r\nhost: h\r\n\
             x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n\r\n"
        );
        let mut untouched = Vec::new();
        encode_request_head(&mut untouched, &Method::GET, &uri, &headers, None, None);
        let text = String::from_utf8(untouched).unwrap();
        assert!(text.contains("x-forwarded-for: 203.0.113.9\r\nx-forwarded-for: 198.51.100.7\r\n"));
        assert!(text.contains("x-forwarded-proto: https\r\n"));
    }

    #[test]
    fn request_framing_follows_the_declared_length_then_the_body() {
        let none = HeaderMap::new();
        let mut declared = HeaderMap::new();
        declared.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        let unknown = SizeHint::new();
        let exact = SizeHint::with_exact(5);
        let f = |m: &Method, h: &HeaderMap, ended, hint: &SizeHint| {
            request_framing(m, h, ended, hint).unwrap()
        };
        assert_eq!(
            f(&Method::POST, &declared, false, &unknown),
            (RequestFraming::Length(12), None)
        );
        assert_eq!(
            f(&Method::GET, &none, true, &unknown),
            (RequestFraming::Empty, None)
        );
        let (framing, extra) = f(&Method::POST, &none, true, &unknown);
        assert_eq!(framing, RequestFraming::Empty);
        assert_eq!(extra.unwrap().1, "0");
        let (framing, extra) = f(&Method::PUT, &none, false, &exact);
        assert_eq!(framing, RequestFraming::Length(5));
        assert_eq!(extra.unwrap().1, "5");
        let (framing, extra) = f(&Method::POST, &none, false, &unknown);
        assert_eq!(framing, RequestFraming::Chunked);
        assert_eq!(
            extra.unwrap(),
            (TRANSFER_ENCODING, HeaderValue::from_static("chunked"))
        );
        declared.insert(CONTENT_LENGTH, HeaderValue::from_static("-1"));
        assert_eq!(
            request_framing(&Method::POST, &declared, false, &unknown),
            Err(CodecError::RequestLength)
        );
    }

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        for (len, line) in [
            (0, "0\r\n"),
            (10, "a\r\n"),
            (255, "ff\r\n"),
            (65536, "10000\r\n"),
        ] {
            let mut buf = Vec::new();
            encode_chunk_size(&mut buf, len);
            assert_eq!(buf, line.as_bytes());
        }
    }

    #[test]
    fn a_head_is_parsed_only_once_complete() {
        let mut partial = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
        assert!(
            parse_response_head(&mut partial, &Method::GET, &mut HeaderMap::new())
                .unwrap()
                .is_none()
        );
        assert_eq!(
            partial.len(),
            36,
            "nothing is taken from an incomplete head"
        );
        let text = "HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: 1\r\nX-A: 2\r\n\r\nok";
        let mut buf = BytesMut::from(text);
        let h = parse_response_head(&mut buf, &Method::GET, &mut HeaderMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..], b"ok", "the head is taken, the body left");
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(h.framing, BodyFraming::Length(2));
        assert!(h.keep_alive);
        let all: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
    }

    #[test]
    fn body_framing_follows_rfc9112_section_6_3() {
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            BodyFraming::Empty
        );
        assert_eq!(
            framing_of("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"),
            BodyFraming::Empty
        );
        assert_eq!(
            framing_of("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
            BodyFraming::Empty
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            BodyFraming::Chunked
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            BodyFraming::UntilClose
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\n\r\n"),
            BodyFraming::UntilClose
        );
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n");
        let h = parse_response_head(&mut buf, &Method::HEAD, &mut HeaderMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BodyFraming::Empty);
        assert_eq!(
            h.headers[CONTENT_LENGTH], "9",
            "a HEAD answer keeps its length for the client"
        );
    }

    #[test]
    fn transfer_encoding_beats_content_length_and_ends_the_connection() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(!h.headers.contains_key(CONTENT_LENGTH));
        assert!(!h.keep_alive);
    }

    #[test]
    fn conflicting_or_malformed_lengths_are_errors() {
        for bad in ["5, 6", "+5", "5 5", "", "99999999999999999999"] {
            let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(
                head(&text).unwrap_err(),
                CodecError::ContentLength,
                "{bad:?}"
            );
        }
        let twice = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(head(twice).unwrap_err(), CodecError::ContentLength);
        let same = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(framing_of(same), BodyFraming::Length(5));
    }

    #[test]
    fn connection_reuse_needs_http11_without_close() {
        let close =
            head("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\n");
        assert!(!close.unwrap().unwrap().keep_alive);
        let old = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!old.keep_alive);
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_left_out() {
        let text = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
                    X-Hop: secret\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n";
        let h = head(text).unwrap().unwrap();
        let names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        assert_eq!(
            h.framing,
            BodyFraming::Chunked,
            "framing is read before the field is dropped"
        );
        assert!(h.keep_alive);
    }

    #[test]
    fn oversized_or_garbled_heads_are_errors() {
        let big = format!(
            "HTTP/1.1 200 OK\r\nx-filler: {}\r\n",
            "0".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(head(&big).unwrap_err(), CodecError::HeadTooLarge);
        let whole = format!("{big}\r\n");
        assert_eq!(
            head(&whole).unwrap_err(),
            CodecError::HeadTooLarge,
            "complete but too large"
        );
        assert!(matches!(
            head("SMTP ready\r\n\r\n"),
            Err(CodecError::Head(_))
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let text = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(
            head(&text).unwrap_err(),
            CodecError::Head(httparse::Error::TooManyHeaders)
        );
    }

    /// Decodes `wire` fed in pieces of `step` bytes; the data, the trailers, and whether it ended.
    fn decode_in_steps(
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, bool), CodecError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(chunk) = decoder.decode(&mut buf)? {
                match chunk {
                    Chunk::Data(d) => data.extend_from_slice(&d),
                    Chunk::Trailers(t) => trailers = Some(t),
                    Chunk::End => return Ok((data, trailers, true)),
                }
            }
        }
        Ok((data, trailers, false))
    }

    #[test]
    fn chunked_bodies_decode_however_the_bytes_arrive() {
        let wire = b"5;ext=1\r\nhello\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers, ended) = decode_in_steps(wire, step).unwrap();
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert!(trailers.is_none());
            assert!(ended);
        }
    }

    #[test]
    fn chunked_trailers_are_kept() {
        let wire = b"2\r\nok\r\n0\r\nx-checksum: abc\r\nx-n: 1\r\n\r\n";
        for step in [1, 5, wire.len()] {
            let (data, trailers, ended) = decode_in_steps(wire, step).unwrap();
            assert_eq!(data, b"ok");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers["x-checksum"], "abc");
            assert_eq!(trailers["x-n"], "1");
            assert!(ended);
        }
    }

    #[test]
    fn malformed_chunking_is_an_error() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\nhello",
            b"5\r\nhelloXX",
            b"10000000000000000\r\n",
            b"\r\n",
        ] {
            assert_eq!(
                decode_in_steps(bad, bad.len()).unwrap_err(),
                CodecError::Chunk,
                "{bad:?}"
            );
        }
        let endless = vec![b'a'; MAX_CHUNK_LINE + 1];
        assert_eq!(
            decode_in_steps(&endless, endless.len()).unwrap_err(),
            CodecError::Chunk
        );
    }

    #[test]
    fn a_spare_map_lends_its_table_not_its_fields() {
        let mut spare = HeaderMap::with_capacity(32);
        spare.insert("x-left-over", HeaderValue::from_static("1"));
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n");
        let h = parse_response_head(&mut buf, &Method::GET, &mut spare)
            .unwrap()
            .unwrap();
        assert!(h.headers.get("x-left-over").is_none());
        assert_eq!(h.headers.get("x-a").unwrap(), "1");
        assert!(h.headers.capacity() >= 32, "the spare's table is reused");
        assert!(spare.is_empty());
    }
}
