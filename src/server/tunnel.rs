//! A switched protocol's tunnel (WebSocket and the like): the client's connection and the
//! upstream's joined, bytes copied both ways until either side closes — or until nothing has
//! moved either way for the idle timeout, as a keep-alive connection with no request would be
//! closed. Applications that keep a quiet tunnel open send pings, as WebSocket clients do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::time::Instant;

use super::read_tap::{OnRead, ReadTap};
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
    let watch = || LastRead {
        moved: moved.clone(),
        opened,
    };
    let mut client = ReadTap::new(TokioIo::new(client), watch());
    let mut upstream = ReadTap::new(TokioIo::new(upstream), watch());
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

/// Notes when bytes last arrived on either side (ms since the tunnel opened). Reads are
/// enough: every write forwards bytes just read from the other side.
struct LastRead {
    moved: Arc<AtomicU64>,
    opened: Instant,
}

impl OnRead for LastRead {
    fn on_read(&mut self, _bytes: &[u8]) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.moved.store(ms, Ordering::Relaxed);
    }
}
