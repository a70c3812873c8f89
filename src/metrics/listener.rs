//! The client side: connections, tunnels, the clocks that close connections, TLS handshakes,
//! the access log's dropped lines and caught panics.

use prometheus::{IntCounter, IntCounterVec, IntGauge};

use super::register::Registrar;

pub struct ListenerMetrics {
    pub client_connections: IntGauge,
    /// Upgraded connections (WebSocket and the like) being tunnelled.
    pub tunnels_open: IntGauge,
    pub(super) client_timeouts: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    /// Access log lines dropped because the writer was behind.
    pub access_log_dropped: IntCounter,
    /// Panics caught while answering a request or serving a connection (the process went on).
    pub panics: IntCounter,
}

impl ListenerMetrics {
    pub(super) fn register(r: &Registrar<'_>) -> Self {
        Self {
            client_connections: r.gauge(
                "floodgate_client_connections",
                "Client connections open on the proxy port.",
            ),
            tunnels_open: r.gauge(
                "floodgate_tunnels_open",
                "Upgraded connections (WebSocket and the like) being tunnelled to the upstream.",
            ),
            client_timeouts: r.counters(
                "floodgate_client_timeouts_total",
                "Client connections closed by floodgate: kind=header (request head too slow), \
                 idle (keep-alive connection unused), body (request body stalled), send (the \
                 client stopped reading a response: connection closed or HTTP/2 stream reset).",
                &["kind"],
            ),
            tls_handshake_failures: r.counters(
                "floodgate_tls_handshake_failures_total",
                "TLS handshakes on the proxy listener that did not complete: reason=error (no \
                 common version or cipher, a client certificate missing or untrusted, not TLS), \
                 timeout (not done within header_read_timeout).",
                &["reason"],
            ),
            access_log_dropped: r.counter(
                "floodgate_access_log_dropped_total",
                "Access log lines dropped because the log could not keep up (never the requests).",
            ),
            panics: r.counter(
                "floodgate_panics_total",
                "Panics caught while answering a request (answered 500) or serving a client \
                 connection (closed); the process kept serving. Any is a bug worth reporting.",
            ),
        }
    }

    /// Counts a client connection floodgate closed (`header`, `idle`, `body`) or an HTTP/2
    /// stream it reset (`send`).
    pub fn client_timeout(&self, kind: &'static str) {
        self.client_timeouts.with_label_values(&[kind]).inc();
    }

    /// Counts a TLS handshake on the proxy listener that failed: `error` or `timeout`.
    pub fn tls_handshake_failed(&self, reason: &'static str) {
        self.tls_handshake_failures
            .with_label_values(&[reason])
            .inc();
    }
}
