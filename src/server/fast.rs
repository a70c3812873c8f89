//! The fast path for HTTP/1.1 (in clear text or over TLS): the connection's bytes are read into one buffer,
//! each plain request head is parsed there by httparse ([`crate::proxy::plain`]) and answered
//! without a request object, and the answer's head is written in one buffer with its first body
//! bytes.
//!
//! The first head that is not plain — an upgrade, `Expect`, a chunked body, a body that does
//! not follow its head at once, a request a pure stage would refuse, anything ambiguous — hands the connection to
//! hyper with the bytes already read put back in front ([`Replay`]), and hyper serves the rest
//! of the connection exactly as it serves every connection without this path.
//!
//! The connection's clocks and protections are the listener's own: reads report to the
//! connection's [`Activity`] (the header and idle timeouts), a request is marked busy while it
//! is answered, the send clock sees every write that waits on the client, and a drain closes
//! the connection once the request in flight is answered.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE};
use http::{HeaderMap, HeaderName, Method, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::io::poll_read_buf;

use super::conn::Activity;
use super::contain;
use crate::access_log::Pending;
use crate::limits::headers::{usage_fields, X_RATELIMIT_TYPE};
use crate::proxy::plain::{self, HeadLimits, Parsed, Reuse};
use crate::proxy::upstream::codec::encode_chunk_size;
use crate::proxy::{Peer, Proxy, ProxyBody};

/// The connection's read buffer: a head and a body up to this size are served here.
const READ_BUFFER: usize = 64 * 1024;
/// Room a read needs at the buffer's end before the buffer is compacted.
const MIN_READ_ROOM: usize = 8 * 1024;
/// Body bytes gathered behind a response head before they are written: a copy of a body this
/// size costs less than the system call a second write would.
const WRITE_GATHER: usize = 64 * 1024;
/// How long a body whose head came alone may take to follow before hyper takes the request.
const LATE_BODY_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);

/// How the fast path left a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Closed: the client went away, asked to close, or the connection drained.
    Closed,
    /// A head the fast path does not serve is at the front of the buffer: hyper's turn.
    Hyper,
}

/// One connection's fast path: its buffers and what it answers with.
pub struct FastPath<'a> {
    pub proxy: &'a Proxy,
    pub peer: &'a Peer,
    pub activity: &'a Arc<Activity>,
    /// Set when the connection should close once the request in flight is answered.
    pub draining: &'a AtomicBool,
    pub limits: HeadLimits,
    /// Bytes read and not yet served (handed to hyper on [`Ended::Hyper`]).
    pub read: BytesMut,
    /// The response being written.
    pub out: Vec<u8>,
    /// What answers reuse: the last one's field map, the relayed fields' list.
    reuse: Reuse,
}

impl FastPath<'_> {
    pub fn new<'a>(
        proxy: &'a Proxy,
        peer: &'a Peer,
        activity: &'a Arc<Activity>,
        draining: &'a AtomicBool,
        limits: HeadLimits,
    ) -> FastPath<'a> {
        FastPath {
            proxy,
            peer,
            activity,
            draining,
            limits,
            read: BytesMut::with_capacity(READ_BUFFER),
            out: Vec::with_capacity(4 * 1024),
            reuse: Reuse::default(),
        }
    }

    /// Serves plain requests until the connection closes or a head for hyper arrives.
    pub async fn serve<S>(&mut self, io: &mut S) -> io::Result<Ended>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            if !self.head_in_buffer(io).await? {
                return Ok(Ended::Closed);
            }
            let mut slots = plain::field_slots();
            let parsed = plain::parse(&self.read, &mut slots, self.limits);
            let late = match &parsed {
                Parsed::Plain(head) if self.read.len() < head.total_len() => head.total_len(),
                Parsed::Plain(_) => 0,
                _ => return Ok(Ended::Hyper),
            };
            if late > 0 {
                drop(parsed);
                if !self.late_body(io, late).await? {
                    return Ok(Ended::Hyper);
                }
                continue; // the whole request is in the buffer now
            }
            let Parsed::Plain(head) = parsed else {
                unreachable!("judged plain above")
            };
            let Some(plan) = self.proxy.plan_plain(&head, self.peer) else {
                return Ok(Ended::Hyper);
            };
            let guard = self.activity.request_started();
            self.activity.take_ambiguous(); // a plain head declares its length once at most
            let body = &self.read[head.head_len..head.total_len()];
            let answer = self
                .proxy
                .answer_plain(plan, (&head, body), self.peer, &mut self.reuse);
            let answer = contain::contained(answer);
            let resp = match answer.await {
                Ok(resp) => resp,
                Err(panic) => {
                    // Whatever the request left behind is not the 500's to relay.
                    self.reuse.relay.release();
                    self.reuse.usage = None;
                    self.reuse.refusal = None;
                    self.proxy.panicked(&panic)
                }
            };
            let bodiless = head.method == Method::HEAD;
            let served = head.total_len();
            let mut writer = Writer {
                io: &mut *io,
                out: &mut self.out,
                activity: self.activity,
                progress: 0,
            };
            let written = write_response(&mut writer, resp, bodiless, &mut self.reuse).await;
            let (keep, fields) = written?;
            self.reuse.fields = fields;
            drop(guard);
            io.flush().await?;
            self.read.advance(served);
            if !keep || self.draining.load(Ordering::Acquire) {
                return Ok(Ended::Closed);
            }
        }
    }

    /// Waits a little for the rest of a body whose head came alone (many clients write the two
    /// apart): whether the buffer now holds `need` bytes. A body that does not come within
    /// [`LATE_BODY_PATIENCE`], or will not fit, is hyper's to read, with its own clock — nothing
    /// was consumed yet.
    async fn late_body<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        need: usize,
    ) -> io::Result<bool> {
        if need > READ_BUFFER {
            return Ok(false);
        }
        let patience = tokio::time::sleep(LATE_BODY_PATIENCE);
        tokio::pin!(patience);
        while self.read.len() < need {
            self.read.reserve(need - self.read.len());
            let read = &mut self.read;
            let n = tokio::select! {
                n = poll_fn(|cx| poll_read_buf(Pin::new(&mut *io), cx, read)) => n?,
                _ = &mut patience => return Ok(false),
            };
            if n == 0 {
                return Ok(false); // closed mid-body: hyper ends it
            }
        }
        Ok(true)
    }

    /// Reads until the buffer holds a whole head (`true`), or something for hyper to judge (a
    /// head over the limit, a full buffer: also `true`); `false` when the client closed (or
    /// the connection drained) between requests.
    async fn head_in_buffer<S: AsyncRead + Unpin>(&mut self, io: &mut S) -> io::Result<bool> {
        loop {
            if head_complete(&self.read) || self.read.len() > self.limits.max_bytes {
                return Ok(true);
            }
            if self.read.capacity() - self.read.len() < MIN_READ_ROOM {
                // Served requests' bytes are reclaimed (the rest moved to the front): no
                // allocation while the buffer holds less than a request or two.
                self.read.reserve(MIN_READ_ROOM);
                if self.read.len() >= READ_BUFFER {
                    return Ok(true);
                }
            }
            let draining = self.draining;
            let read = &mut self.read;
            let n = poll_fn(|cx| {
                if read.is_empty() && draining.load(Ordering::Acquire) {
                    return Poll::Ready(Ok(0));
                }
                poll_read_buf(Pin::new(&mut *io), cx, read)
            })
            .await?;
            if n == 0 {
                // A head cut short by the close is hyper's to answer (or drop).
                return Ok(!self.read.is_empty());
            }
        }
    }
}

/// Whether `buf` holds the end of a head: a line feed followed by an empty line (CRLF or a bare
/// LF, as httparse reads them).
fn head_complete(buf: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', buf)
        .any(|at| matches!(&buf[at + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// Writes `resp` as HTTP/1.1; whether the connection can carry another request, and the
/// answer's field map, cleared, for the next. `bodiless`: the answer to a `HEAD` (its framing
/// fields say what a `GET` would get; no body follows).
async fn write_response<S: AsyncWrite + Unpin>(
    w: &mut Writer<'_, S>,
    resp: Response<ProxyBody>,
    bodiless: bool,
    reuse: &mut Reuse,
) -> io::Result<(bool, HeaderMap)> {
    let (mut parts, mut body) = resp.into_parts();
    // With the access log on, the record is written when the answer ends, however it ends.
    let mut logged = Logged(parts.extensions.remove::<Pending>(), 0);
    let status = parts.status;
    let no_body = bodiless
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let out = &mut *w.out;
    out.clear();
    status_line(out, status);
    // An upstream's answer relayed: its fields as they came, less those floodgate sets itself
    // (its own, in the map, win as an insert into the map would).
    let relay = &mut reuse.relay;
    let usage = reuse.usage.take().map(|u| usage_fields(&u));
    let usage = usage.iter().flat_map(|u| u.iter());
    let (mut has_date, mut has_length) = (false, false);
    if relay.filled {
        (has_date, has_length) = (relay.has_date, relay.has_length);
        for (name, value) in relay.fields() {
            let own = |n: &HeaderName| n.as_str().as_bytes().eq_ignore_ascii_case(name);
            // Every usage field is an `x-ratelimit-` one: most upstream fields are passed by
            // that prefix alone, without a look at each usage field.
            let usage_like = name.len() > 12 && name[..12].eq_ignore_ascii_case(b"x-ratelimit-");
            let usage_set = usage_like && usage.clone().any(|(n, _)| own(n));
            if usage_set || parts.headers.keys().any(own) {
                continue;
            }
            field_line(out, name, value);
        }
    }
    relay.release();
    for (name, n) in usage {
        field_line(
            out,
            name.as_str().as_bytes(),
            itoa::Buffer::new().format(*n).as_bytes(),
        );
    }
    if let Some(refusal) = reuse.refusal.take() {
        field_line(out, b"content-type", b"application/json");
        field_line(
            out,
            X_RATELIMIT_TYPE.as_str().as_bytes(),
            refusal.kind.name().as_bytes(),
        );
        field_line(
            out,
            b"retry-after",
            itoa::Buffer::new()
                .format(refusal.retry_after_secs)
                .as_bytes(),
        );
    }
    let mut keep = true;
    for (name, value) in &parts.headers {
        if name == CONNECTION {
            keep &= !value.as_bytes().eq_ignore_ascii_case(b"close");
        }
        field_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    has_date |= parts.headers.contains_key(DATE);
    has_length |= parts.headers.contains_key(CONTENT_LENGTH);
    if !has_date {
        date_line(out);
    }
    let chunked = match (no_body, has_length) {
        (true, _) | (false, true) => false,
        (false, false) => match body.size_hint().exact() {
            Some(len) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
                out.extend_from_slice(b"\r\n");
                false
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                true
            }
        },
    };
    out.extend_from_slice(b"\r\n");
    // The fields' values share the upstream's read buffer: let go of them before the body.
    let mut fields = std::mem::take(&mut parts.headers);
    fields.clear();
    if no_body {
        drop(body);
        w.flush_out().await?;
        return Ok((keep, fields));
    }
    let mut body = Pin::new(&mut body);
    loop {
        // What the body has ready goes out with the head; when it has to wait, what gathered
        // is written first (a stream's events reach the client as they come).
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                w.flush_out().await?;
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| io::Error::other(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            logged.1 += data.len() as u64;
            w.data(data, chunked).await?;
        } // trailers: dropped, as hyper drops them for a client that did not ask (TE: trailers)
    }
    if chunked {
        w.out.extend_from_slice(b"0\r\n\r\n");
    }
    w.flush_out().await?;
    Ok((keep, fields))
}

/// An answer's access-log record and its body bytes so far, written when dropped.
struct Logged(Option<Pending>, u64);

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(pending) = self.0.take() {
            pending.finish(self.1);
        }
    }
}

/// A connection's write side: the bytes gathered to write, and the send clock told about every
/// write that waits on the client.
struct Writer<'a, S> {
    io: &'a mut S,
    out: &'a mut Vec<u8>,
    activity: &'a Activity,
    /// Counts writes that made progress: the send clock's chunk number while one waits.
    progress: u32,
}

impl<S: AsyncWrite + Unpin> Writer<'_, S> {
    /// Appends a body chunk to what is to be written; writes when enough has gathered (a large
    /// chunk goes out after the gathered bytes without being copied).
    async fn data(&mut self, data: Bytes, chunked: bool) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if chunked {
            encode_chunk_size(self.out, data.len());
        }
        if self.out.len() + data.len() <= WRITE_GATHER {
            self.out.extend_from_slice(&data);
        } else {
            self.flush_out().await?;
            self.write(&data).await?;
        }
        if chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        if self.out.len() >= WRITE_GATHER {
            self.flush_out().await?;
        }
        Ok(())
    }

    /// Writes out what gathered.
    async fn flush_out(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(self.out);
        let written = self.write(&out).await;
        *self.out = out;
        self.out.clear();
        written
    }

    /// Writes `bytes` whole; while the client is not taking them, the send clock runs.
    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let (io, activity, progress) = (&mut *self.io, self.activity, &mut self.progress);
        let mut written = 0;
        let result = poll_fn(|cx| {
            while written < bytes.len() {
                match Pin::new(&mut *io).poll_write(cx, &bytes[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        written += n;
                        *progress = progress.wrapping_add(1).max(1);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        activity.send.handed(progress.wrapping_add(1).max(1));
                        return Poll::Pending;
                    }
                }
            }
            Poll::Ready(Ok(()))
        })
        .await;
        activity.send.asked();
        result
    }
}

fn field_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The `date` field hyper writes on every answer, rendered once a second per thread. The wall
/// clock, not floodgate's injected one: it is what the answer's bytes say, as hyper's do.
#[allow(clippy::disallowed_methods)]
fn date_line(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, [u8; 29])> =
            const { std::cell::RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, rendered)| {
        if *at != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == rendered.len() {
                rendered.copy_from_slice(text.as_bytes());
                *at = secs;
            }
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(rendered);
        out.extend_from_slice(b"\r\n");
    });
}

/// A connection's socket with bytes already read from it put back in front: what hyper reads
/// first when the fast path hands the connection over.
pub struct Replay<T> {
    prefix: BytesMut,
    inner: T,
}

impl<T> Replay<T> {
    pub fn new(prefix: BytesMut, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Replay<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Replay<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_an_empty_line_in_either_line_ending() {
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\nHost: h\n\n"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: h\r\n"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: h\r\n\r"));
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let mut out = Vec::new();
        date_line(&mut out);
        let text = String::from_utf8(out).unwrap();
        let value = text.strip_prefix("date: ").unwrap().trim_end();
        assert!(httpdate::parse_http_date(value).is_ok(), "{value}");
    }
}
