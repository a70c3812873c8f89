//! A raw HTTP/1.1 client over TCP, for what a well-behaved client library will not send:
//! ambiguous framing, oversized heads, heads sent a byte at a time. Every read is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A response as read off the wire.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawAnswer {
    /// Its `Content-Length` (0 without one).
    pub fn content_length(&self) -> usize {
        self.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }
}

/// Connects with a bounded wait.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Sends `raw` on a fresh connection and reads one response (5 s at most).
pub async fn exchange(addr: SocketAddr, raw: &[u8]) -> RawAnswer {
    let mut s = connect(addr).await;
    s.write_all(raw).await.expect("write request");
    read_response(&mut s)
        .await
        .unwrap_or_else(|e| panic!("no response to {:?}: {e}", String::from_utf8_lossy(raw)))
}

/// Reads one response: its head and a `Content-Length` body (5 s at most).
pub async fn read_response(s: &mut TcpStream) -> Result<RawAnswer, String> {
    timeout(Duration::from_secs(5), read_inner(s))
        .await
        .map_err(|_| "timed out".to_owned())?
}

async fn read_inner(s: &mut TcpStream) -> Result<RawAnswer, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "closed before the head ended: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut answer = parse_head(&buf[..head_end])?;
    let len = answer.content_length();
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    answer.body = String::from_utf8_lossy(&body).into_owned();
    Ok(answer)
}

/// Waits (up to `limit`) for the server to close the connection; true when it did. Bytes the
/// server sends meanwhile are skipped.
pub async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    let wait = async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    timeout(limit, wait).await.is_ok()
}

/// Every response until the server closes the connection (5 s at most), each body by its
/// `Content-Length` — for pipelined requests, whose answers can arrive in one read.
pub async fn read_to_close(s: &mut TcpStream) -> Result<Vec<RawAnswer>, String> {
    let mut wire = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => wire.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| "timed out".to_owned())??;
    split_answers(&wire, false)
}

/// The answers in `wire`, in order, each body by its `Content-Length`. After a HEAD request
/// (`head_request`) an answer has no body — unless what follows it is not another answer: a head
/// the server could not parse was never known to be a HEAD, so its refusal carries a body.
pub fn split_answers(wire: &[u8], head_request: bool) -> Result<Vec<RawAnswer>, String> {
    let mut answers = Vec::new();
    let mut rest = wire;
    while !rest.is_empty() {
        let head_end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| {
                format!(
                    "a head without its end: {:?}",
                    String::from_utf8_lossy(rest)
                )
            })?
            + 4;
        let mut answer = parse_head(&rest[..head_end])?;
        let after = &rest[head_end..];
        let len = if head_request && (after.is_empty() || after.starts_with(b"HTTP/1.")) {
            0
        } else {
            answer.content_length()
        };
        let end = (head_end + len).min(rest.len());
        answer.body = String::from_utf8_lossy(&rest[head_end..end]).into_owned();
        answers.push(answer);
        rest = &rest[end..];
    }
    Ok(answers)
}

/// A response head (through its blank line), its status line checked to be HTTP/1.x.
fn parse_head(head: &[u8]) -> Result<RawAnswer, String> {
    let head = String::from_utf8_lossy(head).into_owned();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    Ok(RawAnswer {
        status,
        head,
        body: String::new(),
    })
}
