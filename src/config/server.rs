//! `[server]`: where floodgate listens and forwards, and the timeouts and limits that keep a
//! client from pinning memory or connection slots. Read at start: the listeners and connection
//! pools are built from it, so a reload reports a changed `[server]` instead of applying it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use toml::Spanned;

use super::admin_token::AdminToken;
use super::classes::{format_size, parse_size};
use super::error::{invalid, ConfigError, Source};
use super::raw::RawServer;
use super::tls::ListenerTls;
use super::{duration, Config};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
/// Enough for any real client; a slowloris or flood of connections waits in the backlog.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// nginx allows 4 x 8 KB of request head by default, Envoy 60 KB; 64 KB fits both.
const DEFAULT_MAX_HEADER_BYTES: &str = "64KB";
/// Envoy's default; real requests carry a few dozen.
const DEFAULT_MAX_HEADER_COUNT: usize = 100;
/// Smallest head limit accepted: below this a browser's ordinary request would not fit.
const MIN_HEADER_BYTES: u64 = 1024;

/// Where floodgate listens and forwards, and its connection limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `None` turns the admin listener off.
    pub admin: Option<SocketAddr>,
    pub upstream: UpstreamTarget,
    /// Extra roots for `https://` upstreams (`upstream_ca_file`).
    pub upstream_ca: Option<UpstreamCa>,
    /// Worker threads (one event loop each); 0 in the file means one per CPU.
    pub workers: usize,
    pub upstream_connect_timeout: Duration,
    /// From the end of the request (its body sent) to the upstream's response head.
    pub upstream_timeout: Duration,
    /// Longest pause in writing the request head and body to the upstream (nginx's
    /// `proxy_send_timeout`).
    pub upstream_send_timeout: Duration,
    /// Longest pause between bytes of the upstream's response body (nginx's
    /// `proxy_read_timeout`); past it the client's response is cut.
    pub upstream_body_timeout: Duration,
    /// Longest pause between bytes of a client's request body (nginx's `client_body_timeout`).
    pub client_body_timeout: Duration,
    /// Longest time a response may make no progress towards the client (nginx's
    /// `send_timeout`): a client that stops reading has its stream reset (HTTP/2) or its
    /// connection closed (HTTP/1.1), freeing the upstream connection and any job slot.
    pub send_timeout: Duration,
    /// An HTTP/2 request floodgate answers itself (a 429, 401, 413, ...) has up to this much of
    /// its body read and discarded, within `client_body_timeout` per pause, so its stream ends
    /// with END_STREAM rather than a reset; a larger body is reset after the answer (NO_ERROR).
    pub discard_body_limit: u64,
    /// A client must send a whole request head within this, counted from its first byte (or
    /// from the accept, for a new connection).
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    pub max_idle_upstream_connections: usize,
    /// In-flight requests get this long to finish after SIGTERM / SIGINT.
    pub shutdown_deadline: Duration,
    /// Client connections open at once, over all workers.
    pub max_connections: usize,
    /// Largest request head, request line included.
    pub max_header_bytes: usize,
    /// Most header fields one request may carry.
    pub max_header_count: usize,
    /// Poll the config file's modification time every second and reload on change.
    pub watch_config: bool,
    /// Bytes of a job's request body (and of an upstream answer) read to look inside it; a
    /// body longer than this is forwarded untouched but not inspected.
    pub inspect_limit: usize,
    /// The bearer token the admin listener's private endpoints ask for; `None`: open (the
    /// admin listener is on loopback by default). Applied on reload, unlike the rest.
    pub admin_token: Option<AdminToken>,
    /// TLS on the proxy listener (`[server.tls]`); `None`: clear text.
    pub tls: Option<ListenerTls>,
    /// Clear-text connections opening with the HTTP/2 preface are served HTTP/2.
    pub h2c: bool,
}

/// An upstream origin: `http://` or `https://`, a host and a port, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// `http://host:port` or `https://host:port`: names the origin's connection pool.
    pub origin: String,
    /// `host:port`, as connected to.
    pub authority: String,
    /// The host without port or IPv6 brackets: the name a TLS certificate must carry.
    pub host: String,
    /// The URL's authority as written: the `Host` of requests floodgate addresses to it.
    pub host_header: String,
    /// Connections are TLS (`https://`).
    pub tls: bool,
}

impl UpstreamTarget {
    /// Parses an upstream URL; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text.parse().map_err(|_| format!("{text:?} is not a URL"))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") => (false, 80),
            Some("https") => (true, 443),
            _ => {
                return Err(format!(
                    "{text:?}: only http:// and https:// upstreams are supported"
                ))
            }
        };
        let Some(authority) = uri.authority() else {
            return Err(format!("{text:?} has no host"));
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{text:?}: an upstream URL has no path; requests keep their own"
            ));
        }
        let port = authority.port_u16().unwrap_or(default_port);
        let host = authority.host();
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        if tls && ServerName::try_from(bare_host).is_err() {
            return Err(format!("{text:?}: {bare_host:?} is not a TLS server name"));
        }
        let scheme = if tls { "https" } else { "http" };
        Ok(UpstreamTarget {
            origin: format!("{scheme}://{host}:{port}"),
            authority: format!("{host}:{port}"),
            host: bare_host.to_owned(),
            host_header: authority.as_str().to_owned(),
            tls,
        })
    }
}

/// Extra certificate authorities trusted for `https://` upstreams, beside the bundled roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamCa {
    pub path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
}

pub(super) fn build_server(src: &Source<'_>, s: &RawServer) -> Result<ServerConfig, ConfigError> {
    let admin = match s.admin.as_ref().map(|a| a.get_ref().as_str()) {
        Some("off") => None,
        _ => Some(socket_addr(src, "admin", s.admin.as_ref(), DEFAULT_ADMIN)?),
    };
    let timeout = |field: &str, v: Option<&Spanned<String>>, default: &str| {
        duration(src, &format!("server.{field}"), v, default)
    };
    Ok(ServerConfig {
        inspect_limit: inspect_limit(src, s.inspect_limit.as_ref())?,
        listen: socket_addr(src, "listen", s.listen.as_ref(), DEFAULT_LISTEN)?,
        admin,
        upstream: build_upstream(src, s.upstream.as_ref())?,
        upstream_ca: upstream_ca(src, s.upstream_ca_file.as_ref())?,
        workers: match s.workers {
            Some(0) | None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) => n,
        },
        upstream_connect_timeout: timeout(
            "upstream_connect_timeout",
            s.upstream_connect_timeout.as_ref(),
            "2s",
        )?,
        upstream_timeout: timeout("upstream_timeout", s.upstream_timeout.as_ref(), "60s")?,
        upstream_send_timeout: timeout(
            "upstream_send_timeout",
            s.upstream_send_timeout.as_ref(),
            "60s",
        )?,
        upstream_body_timeout: timeout(
            "upstream_body_timeout",
            s.upstream_body_timeout.as_ref(),
            "60s",
        )?,
        client_body_timeout: timeout("client_body_timeout", s.client_body_timeout.as_ref(), "60s")?,
        send_timeout: timeout("send_timeout", s.send_timeout.as_ref(), "60s")?,
        discard_body_limit: discard_body_limit(src, s.discard_body_limit.as_ref())?,
        header_read_timeout: timeout("header_read_timeout", s.header_read_timeout.as_ref(), "10s")?,
        idle_timeout: timeout("idle_timeout", s.idle_timeout.as_ref(), "60s")?,
        max_idle_upstream_connections: s.max_idle_upstream_connections.unwrap_or(1024),
        shutdown_deadline: timeout("shutdown_deadline", s.shutdown_deadline.as_ref(), "10s")?,
        max_connections: at_least_one(
            src,
            "max_connections",
            s.max_connections.as_ref(),
            DEFAULT_MAX_CONNECTIONS,
        )?,
        max_header_bytes: header_bytes(src, s.max_header_bytes.as_ref())?,
        max_header_count: at_least_one(
            src,
            "max_header_count",
            s.max_header_count.as_ref(),
            DEFAULT_MAX_HEADER_COUNT,
        )?,
        watch_config: s.watch_config,
        admin_token: super::admin_token::admin_token(src, s)?,
        tls: super::tls::listener_tls(src, s.tls.as_ref())?,
        h2c: s.h2c,
    })
}

fn socket_addr(
    src: &Source<'_>,
    field: &str,
    v: Option<&Spanned<String>>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let text = v.map_or(default, |s| s.get_ref().as_str());
    text.parse().map_err(|_| {
        let msg = format!("{text:?} is not a socket address like 127.0.0.1:8080");
        match v {
            Some(s) if s.span() != (0..0) => src.at(format!("server.{field}"), s.span(), msg),
            _ => invalid(format!("server.{field}"), msg),
        }
    })
}

fn at_least_one(
    src: &Source<'_>,
    field: &str,
    v: Option<&Spanned<usize>>,
    default: usize,
) -> Result<usize, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if *n.get_ref() == 0 => {
            Err(src.at(format!("server.{field}"), n.span(), "must be at least 1"))
        }
        Some(n) => Ok(*n.get_ref()),
    }
}

fn header_bytes(src: &Source<'_>, v: Option<&Spanned<String>>) -> Result<usize, ConfigError> {
    let text = v.map_or(DEFAULT_MAX_HEADER_BYTES, |s| s.get_ref().as_str());
    let fail = |msg: String| match v {
        Some(s) => src.at("server.max_header_bytes", s.span(), msg),
        None => invalid("server.max_header_bytes", msg),
    };
    let bytes = parse_size(text).map_err(fail)?;
    if bytes < MIN_HEADER_BYTES {
        return Err(fail(format!(
            "{text:?} is too small: a request head needs at least {}",
            format_size(MIN_HEADER_BYTES)
        )));
    }
    usize::try_from(bytes).map_err(|_| fail(format!("{text:?} is too large")))
}

pub(crate) fn build_upstream(
    src: &Source<'_>,
    v: Option<&Spanned<String>>,
) -> Result<UpstreamTarget, ConfigError> {
    let Some(v) = v else {
        return Err(invalid(
            "server.upstream",
            "missing: set it in the file or pass --upstream URL",
        ));
    };
    let fail = |msg: String| {
        if v.span() == (0..0) {
            invalid("server.upstream", msg)
        } else {
            src.at("server.upstream", v.span(), msg)
        }
    };
    UpstreamTarget::parse(v.get_ref()).map_err(fail)
}

/// Reads `upstream_ca_file`: a PEM bundle of at least one certificate.
fn upstream_ca(
    src: &Source<'_>,
    v: Option<&Spanned<String>>,
) -> Result<Option<UpstreamCa>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let path = PathBuf::from(v.get_ref());
    let fail = |msg: String| src.at("server.upstream_ca_file", v.span(), msg);
    let pem = std::fs::read(&path).map_err(|e| fail(format!("cannot read {path:?}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("{path:?} is not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(fail(format!("{path:?} holds no PEM certificate")));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| fail(format!("{path:?}: a certificate cannot be a root: {e}")))?;
    }
    Ok(Some(UpstreamCa { path, certs }))
}

/// The settings a reload cannot apply because sockets, threads and pools were built from them
/// at start: the fields of `[server]` and `[state]` that differ between `running` and `new`.
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.server, &new.server);
    let mut changed = Vec::new();
    let mut check = |field: &'static str, differs: bool| {
        if differs {
            changed.push(field);
        }
    };
    check("server.listen", a.listen != b.listen);
    check("server.admin", a.admin != b.admin);
    check("server.upstream", a.upstream != b.upstream);
    check("server.upstream_ca_file", a.upstream_ca != b.upstream_ca);
    check("server.workers", a.workers != b.workers);
    check(
        "server.upstream_connect_timeout",
        a.upstream_connect_timeout != b.upstream_connect_timeout,
    );
    check(
        "server.upstream_timeout",
        a.upstream_timeout != b.upstream_timeout,
    );
    check(
        "server.upstream_send_timeout",
        a.upstream_send_timeout != b.upstream_send_timeout,
    );
    check(
        "server.upstream_body_timeout",
        a.upstream_body_timeout != b.upstream_body_timeout,
    );
    check(
        "server.client_body_timeout",
        a.client_body_timeout != b.client_body_timeout,
    );
    check("server.send_timeout", a.send_timeout != b.send_timeout);
    check(
        "server.discard_body_limit",
        a.discard_body_limit != b.discard_body_limit,
    );
    check(
        "server.header_read_timeout",
        a.header_read_timeout != b.header_read_timeout,
    );
    check("server.idle_timeout", a.idle_timeout != b.idle_timeout);
    check(
        "server.max_idle_upstream_connections",
        a.max_idle_upstream_connections != b.max_idle_upstream_connections,
    );
    check(
        "server.shutdown_deadline",
        a.shutdown_deadline != b.shutdown_deadline,
    );
    check(
        "server.max_connections",
        a.max_connections != b.max_connections,
    );
    check(
        "server.max_header_bytes",
        a.max_header_bytes != b.max_header_bytes,
    );
    check(
        "server.max_header_count",
        a.max_header_count != b.max_header_count,
    );
    check("server.watch_config", a.watch_config != b.watch_config);
    // New certificate files apply on reload; turning TLS on or off needs a restart.
    check("server.tls", a.tls.is_some() != b.tls.is_some());
    check("server.h2c", a.h2c != b.h2c);
    check("state", running.state != new.state);
    check("access_log", running.access_log != new.access_log);
    changed
}

/// How much of a body floodgate reads to look inside it, unless `[server] inspect_limit` says
/// otherwise.
pub const DEFAULT_INSPECT_LIMIT: usize = 64 * 1024;

/// `[server] inspect_limit`: a size of at least 1KB (a job body's fields must fit in it).
fn inspect_limit(src: &Source<'_>, v: Option<&Spanned<String>>) -> Result<usize, ConfigError> {
    let Some(v) = v else {
        return Ok(DEFAULT_INSPECT_LIMIT);
    };
    let at = |m: String| src.at("server.inspect_limit", v.span(), m);
    let bytes = super::classes::parse_size(v.get_ref()).map_err(at)?;
    if bytes < 1024 {
        return Err(at(format!("{:?} is below the minimum of 1KB", v.get_ref())));
    }
    usize::try_from(bytes).map_err(|_| at(format!("{:?} is too large", v.get_ref())))
}

/// What an HTTP/2 request floodgate refuses may still send, unless `[server] discard_body_limit`
/// says otherwise: a JSON job request fits many times over.
pub const DEFAULT_DISCARD_BODY_LIMIT: u64 = 64 * 1024;

/// `[server] discard_body_limit`: a size; "0" resets every unread body after the answer.
fn discard_body_limit(src: &Source<'_>, v: Option<&Spanned<String>>) -> Result<u64, ConfigError> {
    let Some(v) = v else {
        return Ok(DEFAULT_DISCARD_BODY_LIMIT);
    };
    super::classes::parse_size(v.get_ref())
        .map_err(|m| src.at("server.discard_body_limit", v.span(), m))
}
