//! `[store]`: memory (default) or Redis shared by replicas, with its failure policy.

use super::error::{invalid, ConfigError, Source};
use super::raw::RawStore;
use super::secret::{read_secret_file, Secret};
use crate::limits::OnFailure;

/// Which store the config asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    Memory,
    Redis {
        url: String,
        timeout: std::time::Duration,
        on_failure: OnFailure,
        breaker_failures: u32,
        breaker_cooldown: std::time::Duration,
        /// How long a job slot lease lives without renewal (a dead replica's slots return then).
        lease_ttl: std::time::Duration,
        /// Who floodgate signs in to Redis as, when not (only) in the URL.
        auth: RedisAuth,
        /// PEM CA certificates a `rediss://` server's certificate must chain to; `None`: the
        /// bundled Mozilla roots.
        tls_ca: Option<Vec<u8>>,
        /// A Redis Cluster's nodes (then `url` is the first); empty: one server.
        cluster_nodes: Vec<String>,
    },
}

/// A Redis ACL user and password given beside the URL (`[store] username`, `password_file`);
/// each replaces what the URL says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisAuth {
    pub username: Option<String>,
    pub password: Option<Secret>,
}

pub(super) fn build_store(
    src: &Source<'_>,
    raw: Option<&RawStore>,
) -> Result<StoreConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(StoreConfig::Memory);
    };
    match raw.kind.get_ref().as_str() {
        "memory" => Ok(StoreConfig::Memory),
        "redis" => redis(src, raw),
        other => Err(src.at(
            "store.type",
            raw.kind.span(),
            format!("{other:?}: expected \"memory\" or \"redis\""),
        )),
    }
}

fn redis(src: &Source<'_>, raw: &RawStore) -> Result<StoreConfig, ConfigError> {
    let cluster_nodes = cluster_nodes(src, raw)?;
    let seed = cluster_nodes
        .first()
        .map(|n| toml::Spanned::new(raw.kind.span(), n.clone()));
    let Some(url) = raw.url.as_ref().or(seed.as_ref()) else {
        return Err(src.at(
            "store.url",
            raw.kind.span(),
            "a redis store needs url = \"redis://host:port\" (or cluster_nodes)",
        ));
    };
    let schemes = ["redis://", "rediss://", "unix://"];
    if !schemes.iter().any(|s| url.get_ref().starts_with(s)) {
        return Err(src.at(
            "store.url",
            url.span(),
            format!(
                "{:?} is not a redis://, rediss:// or unix:// URL",
                url.get_ref()
            ),
        ));
    }
    let tls_ca = match &raw.tls_ca_file {
        None => None,
        Some(f) if !url.get_ref().starts_with("rediss://") => {
            return Err(src.at(
                "store.tls_ca_file",
                f.span(),
                "only a rediss:// (TLS) url uses a CA file",
            ))
        }
        Some(f) if !cluster_nodes.is_empty() => {
            return Err(src.at(
                "store.tls_ca_file",
                f.span(),
                "TLS to a Redis Cluster is not supported yet",
            ))
        }
        Some(f) => Some(read_ca(src, f)?),
    };
    let replicas = match raw.replicas {
        Some(0) => return Err(invalid("store.replicas", "must be at least 1")),
        r => r.unwrap_or(1),
    };
    let on_failure = match raw
        .on_failure
        .as_ref()
        .map(|p| (p.get_ref().as_str(), p.span()))
    {
        None | Some(("fail_open", _)) => OnFailure::FailOpen,
        Some(("fail_closed", _)) => OnFailure::FailClosed,
        Some(("local", _)) => OnFailure::Local { replicas },
        Some((other, span)) => {
            return Err(src.at(
                "store.on_failure",
                span,
                format!("{other:?}: expected \"fail_open\", \"fail_closed\" or \"local\""),
            ))
        }
    };
    Ok(StoreConfig::Redis {
        url: url.get_ref().clone(),
        timeout: super::duration(src, "store.timeout", raw.timeout.as_ref(), "50ms")?,
        on_failure,
        breaker_failures: raw.breaker_failures.unwrap_or(3),
        breaker_cooldown: super::duration(
            src,
            "store.breaker_cooldown",
            raw.breaker_cooldown.as_ref(),
            "1s",
        )?,
        lease_ttl: super::duration(src, "store.lease_ttl", raw.lease_ttl.as_ref(), "10s")?,
        tls_ca,
        cluster_nodes,
        auth: RedisAuth {
            username: raw.username.as_ref().map(|u| u.get_ref().clone()),
            password: raw
                .password_file
                .as_ref()
                .map(|f| read_secret_file(src, "store.password_file", f))
                .transpose()?,
        },
    })
}

/// A PEM file of CA certificates: at least one, all parseable.
fn read_ca(src: &Source<'_>, f: &toml::Spanned<String>) -> Result<Vec<u8>, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    let path = std::path::Path::new(f.get_ref());
    let fail = |m: String| src.at("store.tls_ca_file", f.span(), m);
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read {path:?}: {e}")))?;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("{path:?} is not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(fail(format!("{path:?} holds no PEM certificate")));
    }
    Ok(pem)
}

/// `[store] cluster_nodes`: `redis://host:port` addresses of a Redis Cluster, at least one.
fn cluster_nodes(src: &Source<'_>, raw: &RawStore) -> Result<Vec<String>, ConfigError> {
    let Some(nodes) = &raw.cluster_nodes else {
        return Ok(Vec::new());
    };
    let fail = |m: String| src.at("store.cluster_nodes", nodes.span(), m);
    if nodes.get_ref().is_empty() {
        return Err(fail("list at least one node".into()));
    }
    if let Some(bad) = nodes.get_ref().iter().find(|n| !n.starts_with("redis://")) {
        return Err(fail(format!("{bad:?} is not a redis:// address")));
    }
    Ok(nodes.get_ref().clone())
}
