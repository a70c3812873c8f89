//! The client end of a connection, as the request stages see it.

use std::net::SocketAddr;

use http::HeaderValue;

use super::header_rewrite::{self, Forwarded};
use crate::identity::IdentityConfig;

/// The client end of a connection, with its forwarding fields pre-rendered both ways (a
/// request picks one by whether the peer is a trusted proxy under the config of the moment).
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    untrusted: Forwarded,
    trusted: Forwarded,
}

impl Peer {
    /// A client at `addr`, connected over TLS or not.
    pub fn new(addr: SocketAddr, tls: bool) -> Self {
        let peer = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        let proto = if tls {
            &header_rewrite::HTTPS
        } else {
            &header_rewrite::HTTP
        };
        Self {
            addr,
            untrusted: Forwarded::new(peer.clone(), false, proto),
            trusted: Forwarded::new(peer, true, proto),
        }
    }

    /// The forwarding fields for a request from this peer.
    pub fn forwarded(&self, identity: &IdentityConfig) -> &Forwarded {
        if identity.is_trusted(self.addr.ip()) {
            &self.trusted
        } else {
            &self.untrusted
        }
    }
}
