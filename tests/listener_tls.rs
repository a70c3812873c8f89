//! TLS on the proxy listener (`[server.tls]`), over real sockets with certificates made by the
//! test: limits and headers as over clear text, `X-Forwarded-Proto: https` to the upstream, TLS
//! 1.2 and 1.3, ALPN, mutual TLS, handshakes that fail or stall, config errors naming the file,
//! and new certificates taken on SIGHUP and on a watched file change without dropping an open
//! connection.

mod support;

use std::path::Path;
use std::time::Duration;

use floodgate::config::{Config, ConfigError, Overrides};
use support::pki::{Ca, Leaf, TlsConn};
use support::process::Process;
use support::{metric, metrics, Gate, Upstream, DAY0_MS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A config with TLS from `dir`'s `cert.pem`/`key.pem` (and `extra` lines in `[server.tls]`),
/// and 2 requests a minute on `/limited`.
fn config(dir: &Path, server: &str, tls_extra: &str) -> String {
    format!(
        r#"
        [server]
        header_read_timeout = "500ms"
        {server}
        [server.tls]
        cert_file = {:?}
        key_file = {:?}
        {tls_extra}
        [identity]
        anonymous = "client_ip"
        [[route]]
        path = "/limited"
        class = "limited"
        [[tiers.t.limits]]
        classes = ["limited"]
        per_minute = 2
        "#,
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// A CA, a certificate for `localhost` written into a new directory, and floodgate on it.
async fn tls_gate(tls_extra: &str) -> (Ca, Leaf, tempfile::TempDir, Upstream, Gate) {
    let ca = Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    leaf.write(dir.path());
    let up = Upstream::start().await;
    let gate = Gate::start(&config(dir.path(), "", tls_extra), &up.url(), DAY0_MS);
    (ca, leaf, dir, up, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_headers_and_the_forwarded_protocol_hold_over_tls() {
    let (ca, leaf, _dir, up, gate) = tls_gate("").await;
    let mut conn = TlsConn::open(gate.addr, ca.client(&[], &[b"http/1.1"], None))
        .await
        .expect("handshake");
    assert_eq!(&conn.server_cert, leaf.der());
    for remaining in [1, 0] {
        let a = conn.send("GET", "/limited", &[("x-api-key", "k")]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.num("x-ratelimit-remaining"), remaining);
    }
    let refused = conn.send("GET", "/limited", &[("x-api-key", "k")]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.num("retry-after"), 60);
    assert_eq!(
        refused.json(),
        serde_json::json!({"message": "Too Many Attempts."})
    );
    assert_eq!(up.count(), 2, "the refused request never went upstream");
    for seen in up.seen() {
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    }
    let forged = conn
        .send(
            "GET",
            "/other",
            &[("x-api-key", "k"), ("x-forwarded-proto", "http")],
        )
        .await;
    assert_eq!(forged.status, 200);
    assert_eq!(
        up.seen().last().unwrap().header("x-forwarded-proto"),
        Some("https"),
        "an untrusted client's own value is replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_are_spoken_and_alpn_offers_h2_then_http_1_1() {
    let (ca, _leaf, _dir, _up, gate) = tls_gate("").await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let client = ca.client(&[version], &[b"http/1.1"], None);
        let mut conn = TlsConn::open(gate.addr, client).await.expect("handshake");
        assert_eq!(conn.version, version.version);
        assert_eq!(conn.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(conn.send("GET", "/", &[]).await.status, 200);
        let both = ca.client(&[version], &[b"h2", b"http/1.1"], None);
        let conn = TlsConn::open(gate.addr, both).await.expect("handshake");
        assert_eq!(
            conn.alpn.as_deref(),
            Some(&b"h2"[..]),
            "h2 first (tests/h2.rs)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_speak_tls_or_stalls_is_closed_and_counted() {
    let (_ca, _leaf, _dir, up, gate) = tls_gate("").await;
    let mut plain = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "closed, not left hanging");
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "no HTTP answer in clear text"
    );
    let mut silent = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut [0u8; 16])).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "held to header_read_timeout (500 ms)"
    );
    // Counted as the handshake task ends, just after the socket closed: looked at until then.
    let failed = |text: &str, reason: &str| {
        let series = format!(r#"floodgate_tls_handshake_failures_total{{reason="{reason}"}}"#);
        metric(text, &series)
    };
    let admin = gate.admin_url("/metrics");
    let counted = support::eventually(Duration::from_secs(2), || async {
        let text = metrics(&admin).await;
        (failed(&text, "error"), failed(&text, "timeout")) == (1.0, 1.0)
    })
    .await;
    assert!(counted, "{}", metrics(&admin).await);
    assert_eq!(up.count(), 0);
}

/// Whether the listener refuses a client presenting `identity`.
async fn refused(gate: &Gate, ca: &Ca, identity: Option<&Leaf>) -> bool {
    let client = ca.client(&[], &[], identity);
    match TlsConn::open(gate.addr, client).await {
        Err(_) => true,
        // TLS 1.3 settles the client's certificate after the client's side of the handshake
        // is done: the refusal then arrives as the connection's end.
        Ok(mut conn) => conn.try_send("GET", "/", &[]).await.is_err(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let client_ca = Ca::new();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("clients.pem");
    std::fs::write(&ca_file, client_ca.pem()).unwrap();
    let (ca, _leaf, _dir, up, gate) = tls_gate(&format!("client_ca_file = {ca_file:?}")).await;

    assert!(refused(&gate, &ca, None).await, "no client certificate");
    let stranger = Ca::new().leaf(&["client"]);
    assert!(
        refused(&gate, &ca, Some(&stranger)).await,
        "signed by another CA"
    );
    let member = client_ca.leaf(&["client"]);
    let mut conn = TlsConn::open(gate.addr, ca.client(&[], &[], Some(&member)))
        .await
        .expect("a client the CA signed");
    assert_eq!(conn.send("GET", "/", &[]).await.status, 200);
    assert_eq!(
        up.count(),
        1,
        "only the admitted client reached the upstream"
    );
}

fn parse_error(text: &str) -> (String, String) {
    let overrides = Overrides {
        upstream: Some("http://127.0.0.1:9".into()),
        ..Overrides::default()
    };
    match Config::parse(text, &overrides) {
        Err(ConfigError::Invalid(l)) => (l.field, l.message),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn a_missing_or_broken_tls_file_is_a_config_error_naming_it() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = |lines: &str| format!("[server.tls]\n{lines}\n");
    let (field, message) = parse_error(&tls(&format!(
        "cert_file = {:?}\nkey_file = {:?}",
        d.join("absent.pem"),
        d.join("key.pem")
    )));
    assert_eq!(field, "server.tls.cert_file");
    assert!(message.contains("absent.pem"), "{message}");

    let (field, message) = parse_error(&tls(&format!("cert_file = {:?}", d.join("cert.pem"))));
    assert_eq!(field, "server.tls.cert_file", "{message}"); // not written yet: cannot read
    ca.leaf(&["localhost"]).write(d);
    let (field, message) = parse_error(&tls(&format!("cert_file = {:?}", d.join("cert.pem"))));
    assert_eq!(field, "server.tls.key_file");
    assert!(message.contains("required"), "{message}");

    std::fs::write(d.join("junk.pem"), "not a certificate").unwrap();
    let (field, message) = parse_error(&tls(&format!(
        "cert_file = {:?}\nkey_file = {:?}",
        d.join("junk.pem"),
        d.join("key.pem")
    )));
    assert_eq!(field, "server.tls.cert_file");
    assert!(message.contains("no PEM certificate"), "{message}");

    let other = ca.leaf(&["localhost"]);
    std::fs::write(d.join("other-key.pem"), &other.key_pem).unwrap();
    let (field, message) = parse_error(&tls(&format!(
        "cert_file = {:?}\nkey_file = {:?}",
        d.join("cert.pem"),
        d.join("other-key.pem")
    )));
    assert_eq!(field, "server.tls.key_file");
    assert!(message.contains("does not go with"), "{message}");

    let (field, _) = parse_error(&tls(&format!(
        "cert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}",
        d.join("cert.pem"),
        d.join("key.pem"),
        d.join("junk.pem")
    )));
    assert_eq!(field, "server.tls.client_ca_file");
}

/// The certificate a new connection is served.
async fn served_cert(
    addr: std::net::SocketAddr,
    ca: &Ca,
) -> rustls::pki_types::CertificateDer<'static> {
    let conn = TlsConn::open(addr, ca.client(&[], &[], None)).await;
    conn.expect("handshake").server_cert
}

/// Starts the binary on TLS, replaces the certificate files, lets `reload` make floodgate read
/// them, and checks new connections get the new certificate while an open one goes on.
async fn new_certificates_apply_without_dropping_connections(watch: bool) {
    let ca = Ca::new();
    let (first, second) = (ca.leaf(&["localhost"]), ca.leaf(&["localhost"]));
    let dir = tempfile::tempdir().unwrap();
    first.write(dir.path());
    let server = if watch { "watch_config = true" } else { "" };
    let config_path = dir.path().join("floodgate.toml");
    std::fs::write(&config_path, config(dir.path(), server, "")).unwrap();
    let up = Upstream::start().await;
    let fg = Process::start(&config_path, &up.url()).await;

    let mut open = TlsConn::open(fg.addr, ca.client(&[], &[], None))
        .await
        .unwrap();
    assert_eq!(&open.server_cert, first.der());
    assert_eq!(open.send("GET", "/", &[]).await.status, 200);

    // A rename into place, as a Secret update or certbot's deploy hook does it.
    let staging = tempfile::tempdir_in(dir.path()).unwrap();
    let (cert, key) = second.write(staging.path());
    std::fs::rename(key, dir.path().join("key.pem")).unwrap();
    std::fs::rename(cert, dir.path().join("cert.pem")).unwrap();
    if !watch {
        fg.signal("HUP");
    }
    let renewed = support::eventually(Duration::from_secs(10), || async {
        &served_cert(fg.addr, &ca).await == second.der()
    })
    .await;
    assert!(renewed, "new connections get the new certificate");
    assert_eq!(
        open.send("GET", "/", &[]).await.status,
        200,
        "the connection opened before goes on"
    );
    assert!(fg.log_line("config reloaded").is_some(), "{}", fg.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_new_certificates_to_new_connections_and_keeps_open_ones() {
    new_certificates_apply_without_dropping_connections(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_certificate_change_applies_without_a_signal() {
    new_certificates_apply_without_dropping_connections(true).await;
}
