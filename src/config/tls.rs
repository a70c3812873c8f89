//! `[server.tls]`: TLS on the proxy listener. The certificate chain, its key and (for mutual
//! TLS) the client CA are read and checked with the rest of the config, so a missing or broken
//! file is a config error that names its field, at start and on reload alike; a reload with
//! new files serves the new certificate to new connections while open ones go on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use toml::Spanned;

use super::error::{ConfigError, Source};
use super::raw::RawTls;

/// The listener's TLS settings, as read from their files.
#[derive(Clone)]
pub struct ListenerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Clients must present a certificate this CA signed (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// The rustls settings built from the files: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`.
    pub rustls: Arc<rustls::ServerConfig>,
    /// A digest of the files' contents: two configs differ when a file's content did.
    contents: u64,
}

impl PartialEq for ListenerTls {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.cert_file,
            &self.key_file,
            &self.client_ca_file,
            self.contents,
        ) == (
            &other.cert_file,
            &other.key_file,
            &other.client_ca_file,
            other.contents,
        )
    }
}

impl Eq for ListenerTls {}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("client_ca_file", &self.client_ca_file)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// The files a running floodgate watches for changes (with `watch_config`).
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert_file), Some(&self.key_file)]
            .into_iter()
            .chain([self.client_ca_file.as_ref()])
            .flatten()
            .map(PathBuf::as_path)
    }
}

/// One file named by a `[server.tls]` field: its path and bytes, or an error naming the field.
fn read(
    src: &Source<'_>,
    field: &str,
    v: Option<&Spanned<String>>,
    table: std::ops::Range<usize>,
) -> Result<(PathBuf, Vec<u8>), ConfigError> {
    let name = format!("server.tls.{field}");
    let Some(v) = v else {
        return Err(src.at(
            name,
            table,
            format!("{field} is required with [server.tls]"),
        ));
    };
    let path = PathBuf::from(v.get_ref());
    let bytes = std::fs::read(&path)
        .map_err(|e| src.at(&name, v.span(), format!("cannot read {path:?}: {e}")))?;
    Ok((path, bytes))
}

/// The certificates of a PEM file; at least one.
fn certificates(
    src: &Source<'_>,
    field: &str,
    v: &Spanned<String>,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let fail = |m: String| src.at(format!("server.tls.{field}"), v.span(), m);
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("{path:?} is not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(fail(format!("{path:?} holds no PEM certificate")));
    }
    Ok(certs)
}

/// Reads `[server.tls]`; `None` when the table is absent (the listener speaks clear text).
pub(super) fn listener_tls(
    src: &Source<'_>,
    raw: Option<&Spanned<RawTls>>,
) -> Result<Option<ListenerTls>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let (table, t) = (raw.span(), raw.get_ref());
    let (cert_file, cert_pem) = read(src, "cert_file", t.cert_file.as_ref(), table.clone())?;
    let (key_file, key_pem) = read(src, "key_file", t.key_file.as_ref(), table.clone())?;
    let cert_v = t.cert_file.as_ref().expect("read checked it");
    let key_v = t.key_file.as_ref().expect("read checked it");
    let chain = certificates(src, "cert_file", cert_v, &cert_file, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let m = format!("{key_file:?} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}");
        src.at("server.tls.key_file", key_v.span(), m)
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .expect("ring supports TLS 1.2 and 1.3");
    let mut contents = xxhash_rust::xxh3::Xxh3::new();
    contents.update(&cert_pem);
    contents.update(&key_pem);
    let (client_ca_file, builder) = match t.client_ca_file.as_ref() {
        None => (None, builder.with_no_client_auth()),
        Some(v) => {
            let (path, pem) = read(src, "client_ca_file", Some(v), table)?;
            contents.update(&pem);
            let fail = |m: String| src.at("server.tls.client_ca_file", v.span(), m);
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(src, "client_ca_file", v, &path, &pem)? {
                roots
                    .add(cert)
                    .map_err(|e| fail(format!("{path:?}: a certificate cannot be a CA: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| fail(format!("{path:?}: {e}")))?;
            (Some(path), builder.with_client_cert_verifier(verifier))
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        let m = format!("{key_file:?} does not go with the certificate of {cert_file:?}: {e}");
        src.at("server.tls.key_file", key_v.span(), m)
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(ListenerTls {
        cert_file,
        key_file,
        client_ca_file,
        rustls: Arc::new(config),
        contents: contents.digest(),
    }))
}
