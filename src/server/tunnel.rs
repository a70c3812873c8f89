//! A switched protocol's tunnel (WebSocket and the like): the client's connection and the
//! upstream's joined, bytes copied both ways until either side closes — or until nothing has
//! moved either way for the idle timeout, as a keep-alive connection with no request would be
//! closed. Applications that keep a quiet tunnel open send pings, as WebSocket clients do.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::proxy::Tunnel;

/// Runs one tunnel to its end, counted in `open` meanwhile. `_hold` (the client connection's
/// slot and the shutdown drain) is kept until then.
pub async fn run<H: Send + 'static>(halves: Tunnel, idle: Duration, open: IntGauge, _hold: H) {
    let (client, upstream) = match tokio::try_join!(halves.client, halves.upstream) {
        Ok(halves) => halves,
        Err(e) => {
            tracing::debug!(error = %e, "protocol switch did not complete");
            return;
        }
    };
    open.inc();
    let _counted = Counted(open);
    let opened = Instant::now();
    let moved = Arc::new(AtomicU64::new(0));
    let mut client = Watched::new(TokioIo::new(client), &moved, opened);
    let mut upstream = Watched::new(TokioIo::new(upstream), &moved, opened);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let last = moved.load(Ordering::Relaxed);
        let deadline = opened + Duration::from_millis(last) + idle;
        tokio::select! {
            ended = &mut copy => {
                match ended {
                    Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
                    Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {
                if moved.load(Ordering::Relaxed) == last {
                    tracing::debug!(idle = ?idle, "tunnel idle; closed");
                    return; // dropping both halves closes both connections
                }
            }
        }
    }
}

/// Lowers the open-tunnels gauge when the tunnel ends, however it ends.
struct Counted(IntGauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One side of a tunnel, noting when bytes last arrived (ms since the tunnel opened). Reads
/// are enough: every write forwards bytes just read from the other side.
struct Watched<T> {
    inner: T,
    moved: Arc<AtomicU64>,
    opened: Instant,
}

impl<T> Watched<T> {
    fn new(inner: T, moved: &Arc<AtomicU64>, opened: Instant) -> Self {
        Self {
            inner,
            moved: moved.clone(),
            opened,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = this.opened.elapsed().as_millis() as u64;
            this.moved.store(ms, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
