//! Test certificates (rcgen) and a TLS client: a CA, leaves it signs, PEM files on disk, and
//! HTTP/1.1 requests over rustls to a listener on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use super::Answer;

/// A certificate authority made for one test.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate a [`Ca`] signed, with its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Default for Ca {
    fn default() -> Self {
        Self::new()
    }
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL (curl, Python, Node) takes a leaf whose issuer and
        // subject read the same for a self-signed certificate.
        params
            .distinguished_name
            .push(DnType::CommonName, "floodgate test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        let subject = names.first().map_or("floodgate test leaf", String::as_str);
        params.distinguished_name.push(DnType::CommonName, subject);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// A client trusting this CA, speaking `versions` (both when empty), offering `alpn`, and
    /// presenting `identity` when given.
    pub fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
        identity: Option<&Leaf>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider);
        let builder = match versions {
            [] => builder.with_safe_default_protocol_versions(),
            some => builder.with_protocol_versions(some),
        }
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some(leaf) => builder
                .with_client_auth_cert(vec![leaf.der.clone()], leaf.key())
                .unwrap(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes `cert.pem` and `key.pem` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    /// The certificate as DER, to compare with what a server presented.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }
}

/// One TLS connection to a listener, carrying HTTP/1.1 requests one after another.
pub struct TlsConn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// What the handshake settled: the protocol version, ALPN, the server's certificate.
    pub version: rustls::ProtocolVersion,
    pub alpn: Option<Vec<u8>>,
    pub server_cert: CertificateDer<'static>,
}

impl TlsConn {
    /// Connects and completes the handshake for the name `localhost`.
    pub async fn open(
        addr: SocketAddr,
        client: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await?;
        let (_, session) = tls.get_ref();
        let version = session.protocol_version().expect("handshake done");
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let server_cert = session.peer_certificates().expect("a certificate")[0].clone();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(TlsConn {
            sender,
            version,
            alpn,
            server_cert,
        })
    }

    /// `method path` with `headers`, read whole.
    pub async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        let answer = self.try_send(method, path, headers).await;
        answer.expect("request completes")
    }

    /// As [`send`](Self::send), or the error that ended the connection.
    pub async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, hyper::Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.sender.ready().await?;
        let resp = self
            .sender
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}
