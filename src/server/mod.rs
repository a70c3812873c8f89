//! The proxy listener: accepts connections and serves HTTP/1.1 on them until shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::{Peer, Proxy};

/// Listener settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A client must finish sending its request head within this time (slowloris guard).
    pub header_read_timeout: Duration,
    /// How long open connections may keep going after shutdown starts.
    pub drain_deadline: Duration,
}

/// Serves `listener` until `shutdown` flips, then drains open connections.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
    settings: Settings,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let proxy = proxy.clone();
                let peer = Peer::new(peer);
                let service = service_fn(move |req| {
                    let proxy = proxy.clone();
                    let peer = peer.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(req, &peer).await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "client connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(settings.drain_deadline) => {
            tracing::warn!("drain deadline passed with connections still open");
        }
    }
}
