//! Upload limits (SPEC §7): a request body larger than its class allows never reaches the
//! upstream whole, and nothing is buffered to find out.
//!
//! Two checks. A declared `Content-Length` over the limit is refused by [`check_declared`] before
//! the rate limiter runs, so the request consumes no quota and the upstream sees nothing. A body
//! of unknown length (chunked) is counted as it streams through [`UploadBody`], which fails the
//! upstream request at the frame that would cross the limit: the upstream gets at most the limit
//! and an aborted request, and the client a 413 if the upstream had not answered yet.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use super::client_body::ClientBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::config::format_size;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body over its class's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body is larger than {} ({} bytes), the limit for this endpoint", format_size(*.limit), .limit)]
pub struct TooLarge {
    pub limit: u64,
}

/// Why an [`UploadBody`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// The client's side failed (disconnect, bad chunk encoding).
    #[error("client body: {0}")]
    Client(BoxError),
}

/// Refuses a body whose length is known (declared) up front to exceed `limit`.
pub fn check_declared(hint: &SizeHint, limit: Option<u64>) -> Result<(), TooLarge> {
    match limit {
        Some(limit) if hint.lower() > limit => Err(TooLarge { limit }),
        _ => Ok(()),
    }
}

/// The request body as sent upstream: the client's body, counted against the class's limit.
#[derive(Debug)]
pub struct UploadBody<B = ClientBody> {
    inner: B,
    limit: Option<u64>,
    received: u64,
    cut_off: bool,
}

impl<B> UploadBody<B> {
    pub fn new(inner: B, limit: Option<u64>) -> Self {
        Self {
            inner,
            limit,
            received: 0,
            cut_off: false,
        }
    }
}

/// Counts a data frame of `len` bytes; refuses the frame that would take `received` past `limit`.
fn count(received: u64, len: usize, limit: Option<u64>) -> Result<u64, TooLarge> {
    let total = received.saturating_add(len as u64);
    match limit {
        Some(limit) if total > limit => Err(TooLarge { limit }),
        _ => Ok(total),
    }
}

impl<B> Body for UploadBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = UploadError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UploadError>>> {
        if self.cut_off {
            return Poll::Ready(None);
        }
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(UploadError::Client(e.into())))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            match count(self.received, data.len(), self.limit) {
                Ok(total) => self.received = total,
                Err(too_large) => {
                    self.cut_off = true;
                    return Poll::Ready(Some(Err(too_large.into())));
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.cut_off || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Chunks = futures_util::stream::Iter<
        std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>,
    >;

    /// A body of data frames of the given sizes.
    fn chunks(sizes: &[usize]) -> StreamBody<Chunks> {
        let frames: Vec<_> = sizes
            .iter()
            .map(|&n| Ok(Frame::data(Bytes::from(vec![1u8; n]))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    /// Polls `body` to its end; returns the bytes it yielded and the error that stopped it.
    async fn drain<B: Body<Data = Bytes, Error = UploadError> + Unpin>(
        mut body: B,
    ) -> (u64, Option<UploadError>) {
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => n += f.into_data().map_or(0, |d| d.len() as u64),
                Err(e) => return (n, Some(e)),
            }
        }
        (n, None)
    }

    #[tokio::test]
    async fn a_body_at_the_limit_passes_whole() {
        let (n, err) = drain(UploadBody::new(chunks(&[400, 400, 200]), Some(1000))).await;
        assert_eq!((n, err.is_none()), (1000, true));
    }

    #[tokio::test]
    async fn the_frame_crossing_the_limit_is_refused_and_the_body_ends() {
        let mut body = UploadBody::new(chunks(&[400, 400, 201, 5]), Some(1000));
        let (n, err) = drain(&mut body).await;
        assert_eq!(n, 800, "only whole frames below the limit go through");
        assert!(matches!(
            err,
            Some(UploadError::TooLarge(TooLarge { limit: 1000 }))
        ));
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none(), "nothing after the cut");
    }

    #[tokio::test]
    async fn no_limit_counts_nothing_against() {
        let (n, err) = drain(UploadBody::new(chunks(&[1 << 20, 1 << 20]), None)).await;
        assert_eq!((n, err.is_none()), (2 << 20, true));
    }

    #[test]
    fn declared_length_over_the_limit_is_refused_up_front() {
        let limit = Some(10 << 20);
        assert_eq!(
            check_declared(&SizeHint::with_exact(10 << 20), limit),
            Ok(())
        );
        assert_eq!(
            check_declared(&SizeHint::with_exact((10 << 20) + 1), limit),
            Err(TooLarge { limit: 10 << 20 })
        );
        assert_eq!(
            check_declared(&SizeHint::default(), limit),
            Ok(()),
            "unknown: counted later"
        );
        assert_eq!(
            check_declared(&SizeHint::with_exact(u64::MAX), None),
            Ok(())
        );
    }

    #[test]
    fn the_413_message_names_the_limit() {
        assert_eq!(
            TooLarge { limit: 10 << 20 }.to_string(),
            "request body is larger than 10MB (10485760 bytes), the limit for this endpoint"
        );
    }
}
