//! hyper's own answers to request heads it cannot parse, rewritten as floodgate's JSON errors.
//!
//! When hyper's parser refuses a head (a bad request line, a malformed field, a conflicting
//! `Content-Length`, a head over `max_header_bytes`), hyper answers by itself — a bare `400`,
//! `414` or `431` with an empty body and `connection: close` — and never calls the service, so
//! the proxy has no say in it. Every other answer floodgate gives is JSON; a client that parses
//! error bodies should not meet a different shape for these. hyper offers no hook, so the
//! client socket's write side recognises that answer and sends floodgate's instead.
//!
//! Recognising it takes two facts together, so a proxied response is never touched:
//! - **when**: hyper writes it only with no request in progress and everything it wrote before
//!   flushed (it parses a head only then). A response's own last bytes can also be written after
//!   its request stopped being in progress (its body ended, then hyper flushes), so a response
//!   ending marks the connection as "answered" until the next flush; and a connection that
//!   switched to a tunnel (a `101`) is left alone for good (its socket carries the tunnel's
//!   bytes).
//! - **what**: the bytes are exactly hyper's form — a `400`, `414` or `431` status line, no body,
//!   `content-length: 0`, and nothing after the head.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::Activity;
use crate::proxy::Proxy;

/// A status hyper's parser answers with, and floodgate's JSON for it.
struct Refusal {
    status: &'static [u8],
    error: &'static str,
    message: &'static str,
}

const REFUSALS: [Refusal; 3] = [
    Refusal {
        status: b"400",
        error: "malformed_request",
        message: "the request head is not valid HTTP/1.1",
    },
    Refusal {
        status: b"414",
        error: "uri_too_long",
        message: "the request target is too long",
    },
    Refusal {
        status: b"431",
        error: "header_too_large",
        message: "the request head is larger than this server accepts",
    },
];

/// The refusal `bytes` are, if they are exactly hyper's own answer to an unparsable head.
fn hyper_refusal(bytes: &[u8]) -> Option<&'static Refusal> {
    let rest = bytes.strip_prefix(b"HTTP/1.1 ")?;
    let refusal = REFUSALS.iter().find(|r| rest.starts_with(r.status))?;
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let only_a_head = head_end == bytes.len();
    let empty = bytes[..head_end]
        .split(|&b| b == b'\n')
        .any(|line| line.eq_ignore_ascii_case(b"content-length: 0\r"));
    (only_a_head && empty).then_some(refusal)
}

/// floodgate's answer in place of hyper's `original`: the same status line and `date`, a JSON
/// body, the connection closed.
fn json_answer(original: &[u8], refusal: &Refusal) -> Vec<u8> {
    let status_line = original.split(|&b| b == b'\n').next().unwrap_or_default();
    let date = original
        .split(|&b| b == b'\n')
        .find(|line| line.len() > 5 && line[..5].eq_ignore_ascii_case(b"date:"));
    let body =
        serde_json::json!({ "error": refusal.error, "message": refusal.message }).to_string();
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(status_line);
    out.push(b'\n');
    out.extend_from_slice(b"content-type: application/json\r\nconnection: close\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    if let Some(date) = date {
        out.extend_from_slice(date);
        out.push(b'\n');
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// A replacement being written: its bytes, how many are out, and the length of hyper's
/// original (what the write reports once the replacement is all out).
struct Replacing {
    bytes: Vec<u8>,
    written: usize,
    original_len: usize,
}

/// The client socket, with hyper's answers to unparsable heads sent as JSON.
pub struct JsonRefusals<T> {
    inner: T,
    activity: Arc<Activity>,
    /// For the refusal count (`floodgate_rejected_total`).
    proxy: Arc<Proxy>,
    replacing: Option<Replacing>,
}

impl<T> JsonRefusals<T> {
    pub fn new(inner: T, activity: Arc<Activity>, proxy: Arc<Proxy>) -> Self {
        Self {
            inner,
            activity,
            proxy,
            replacing: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonRefusals<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonRefusals<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.replacing.is_none() && this.activity.may_be_hyper_refusal() {
            if let Some(refusal) = hyper_refusal(buf) {
                this.proxy.metrics().requests.rejected(refusal.error);
                this.replacing = Some(Replacing {
                    bytes: json_answer(buf, refusal),
                    written: 0,
                    original_len: buf.len(),
                });
            }
        }
        let Some(r) = this.replacing.as_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        while r.written < r.bytes.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &r.bytes[r.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Ok(n)) => r.written += n,
                other => return other,
            }
        }
        let original_len = r.original_len;
        this.replacing = None;
        Poll::Ready(Ok(original_len))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            this.activity.answer_flushed();
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\
        content-length: 0\r\ndate: Sat, 28 Nov 2026 16:14:51 GMT\r\n\r\n";

    #[test]
    fn only_hypers_exact_form_is_recognised() {
        assert_eq!(
            hyper_refusal(HYPER_400).map(|r| r.error),
            Some("malformed_request")
        );
        let too_large = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            hyper_refusal(too_large).map(|r| r.error),
            Some("header_too_large")
        );
        // A body, a length, another status, bytes after the head, half a head: not hyper's.
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\nno"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"\x81\x05hello",
        ] {
            assert!(
                hyper_refusal(other).is_none(),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn the_answer_keeps_status_and_date_and_carries_json() {
        let refusal = hyper_refusal(HYPER_400).unwrap();
        let out = String::from_utf8(json_answer(HYPER_400, refusal)).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(
            head.contains("\r\ndate: Sat, 28 Nov 2026 16:14:51 GMT"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "malformed_request");
    }
}
