//! Reading a bounded prefix of a body to look inside small JSON documents (job requests,
//! task responses) without ever buffering a large body whole.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;

/// A body read up to the inspect limit: `complete` when that was all of it.
pub struct Prefix<B> {
    pub bytes: Bytes,
    /// The unread rest, when the body was longer than the limit.
    pub rest: Option<B>,
}

impl<B> Prefix<B> {
    pub fn is_complete(&self) -> bool {
        self.rest.is_none()
    }

    /// The JSON string or number at `pointer`, when the whole body was read and is JSON.
    pub fn json_string(&self, pointer: &str) -> Option<String> {
        if !self.is_complete() {
            return None;
        }
        crate::json::string_at(&self.bytes, pointer)
    }
}

/// Why a prefix could not be read.
#[derive(Debug)]
pub enum PrefixError<E> {
    /// The body failed.
    Body(E),
    /// No frame came within the idle limit.
    Stalled,
}

impl<E: std::fmt::Display> std::fmt::Display for PrefixError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrefixError::Body(e) => e.fmt(f),
            PrefixError::Stalled => f.write_str("the body stopped arriving"),
        }
    }
}

/// Reads frames until the body ends or `limit` bytes are in hand (a frame may overshoot it).
/// With `idle`, each frame must come within it (a client's body, which nothing else times
/// here); an upstream's body runs on its exchange's own clocks.
pub async fn read_prefix<B>(
    mut body: B,
    limit: usize,
    idle: Option<Duration>,
) -> Result<Prefix<B>, PrefixError<B::Error>>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut buf = BytesMut::new();
    loop {
        if buf.len() >= limit {
            return Ok(Prefix {
                bytes: buf.freeze(),
                rest: Some(body),
            });
        }
        if body.is_end_stream() {
            break;
        }
        let frame = match idle {
            None => body.frame().await,
            Some(idle) => tokio::time::timeout(idle, body.frame())
                .await
                .map_err(|_| PrefixError::Stalled)?,
        };
        match frame {
            None => break,
            Some(frame) => {
                if let Ok(data) = frame.map_err(PrefixError::Body)?.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(Prefix {
        bytes: buf.freeze(),
        rest: None,
    })
}

/// What was read of an upstream answer's body: `complete` when it is all of it.
#[derive(Debug, Clone)]
pub struct Peeked {
    pub bytes: Bytes,
    pub complete: bool,
}
