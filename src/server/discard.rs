//! Reading an HTTP/2 request's unread body to its end before its answer's stream ends, so a
//! request floodgate answered itself ends with END_STREAM both ways instead of a reset
//! (see `proxy::client_body` for why clients care).
//!
//! Bounded like nginx's discarding of a refused body: at most `limit` bytes, with at most
//! `idle` between frames (`client_body_timeout`). A body declared larger than `limit` is not
//! read at all. Past either bound the body is dropped as the answer ends: the stream is reset
//! after the answer, with NO_ERROR (RFC 9113 §8.1), which clients read as "stop sending".

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Body;
use hyper::body::Incoming;
use tokio::time::Sleep;

/// How much of a refused body is read and discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardLimits {
    /// Bytes (`[server] discard_body_limit`).
    pub limit: u64,
    /// Longest pause between frames (`client_body_timeout`).
    pub idle: Duration,
}

/// A body being read to its end and thrown away.
#[derive(Debug)]
pub struct Discard {
    body: Incoming,
    /// Bytes that may still be read.
    left: u64,
    idle: Duration,
    /// Armed while waiting for a frame.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Discard {
    /// `None` when the body is declared longer than the limit: not worth reading.
    pub fn new(body: Incoming, limits: DiscardLimits) -> Option<Self> {
        if body.size_hint().lower() > limits.limit {
            return None;
        }
        Some(Self {
            body,
            left: limits.limit,
            idle: limits.idle,
            timer: None,
        })
    }

    /// Ready when the body has ended, or reading it was given up (too long, stalled, failed,
    /// reset by the client).
    pub fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => return Poll::Ready(()),
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    match self.left.checked_sub(len) {
                        Some(left) => self.left = left,
                        None => return Poll::Ready(()), // longer than the limit
                    }
                    self.timer = None; // a frame came: the pause starts over
                }
                Poll::Pending => {
                    let idle = self.idle;
                    let timer = self
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    return timer.as_mut().poll(cx); // Ready: stalled, given up
                }
            }
        }
    }
}
