//! `https://` upstreams: floodgate speaks TLS to the origin, checks its certificate against the
//! bundled roots plus `upstream_ca_file`, pools the TLS connections, and answers 502 when the
//! origin's certificate cannot be trusted. A real TLS server (rustls) on loopback, with a CA and
//! certificates made by the test.

mod support;

use std::io::Write;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use support::{Gate, TestClient, Upstream, DAY0_MS};

/// A test CA and a server certificate it signed for `names`.
struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki(names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}

fn ca_file(pem: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(pem.as_bytes()).unwrap();
    f
}

/// A config trusting `ca` (if any) for the upstream.
fn config(ca: Option<&tempfile::NamedTempFile>) -> String {
    let ca_line = ca.map_or(String::new(), |f| {
        format!("upstream_ca_file = {:?}\n", f.path().to_str().unwrap())
    });
    format!("[server]\n{ca_line}\n[identity]\nanonymous = \"client_ip\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_gets_requests_and_bodies_over_pooled_tls_connections() {
    let pki = pki(&["localhost"]);
    let up = Upstream::start_tls(pki.server.clone()).await;
    let ca = ca_file(&pki.ca_pem);
    let gate = Gate::start(&config(Some(&ca)), &up.https_url(), DAY0_MS);
    let c = TestClient::new();

    for i in 0..5 {
        let a = c.get(&gate.url(&format!("/v1/models?page={i}"))).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    let body = vec![b'x'; 1 << 20];
    let echoed = c.send("POST", &gate.url("/echo"), &[], body).await;
    assert_eq!(echoed.status, 200);
    assert_eq!(
        echoed.body.len(),
        1 << 20,
        "the body came back whole over TLS"
    );

    let seen = up.seen();
    assert_eq!(seen.len(), 6);
    assert_eq!(
        seen[3].target, "/v1/models?page=3",
        "path and query as sent"
    );
    assert_eq!(seen[5].body_len, 1 << 20);
    // One client connection lands on one worker, whose pool keeps its TLS connection.
    assert!(
        up.connections() <= 2,
        "{} TLS handshakes for 6 requests: connections are not reused",
        up.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_no_root_vouches_for_is_refused_with_502() {
    let pki = pki(&["localhost"]);
    let up = Upstream::start_tls(pki.server.clone()).await;
    // No upstream_ca_file: only the bundled public roots, which never signed the test CA.
    let gate = Gate::start(&config(None), &up.https_url(), DAY0_MS);
    let a = TestClient::new().get(&gate.url("/v1/models")).await;
    assert_eq!(a.status, 502);
    let json = a.json();
    assert_eq!(json["error"], "upstream_unreachable");
    let message = json["message"].as_str().unwrap();
    assert!(message.contains("TLS handshake failed"), "{message}");
    assert!(up.seen().is_empty(), "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_certificate_for_another_name_is_refused_with_502() {
    let pki = pki(&["api.example.com"]);
    let up = Upstream::start_tls(pki.server.clone()).await;
    let ca = ca_file(&pki.ca_pem);
    let gate = Gate::start(&config(Some(&ca)), &up.https_url(), DAY0_MS);
    let a = TestClient::new().get(&gate.url("/v1/models")).await;
    assert_eq!(a.status, 502);
    let message = a.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("TLS handshake failed"), "{message}");
    assert!(up.seen().is_empty());
}

#[test]
fn an_upstream_ca_file_without_certificates_is_a_config_error_naming_the_field() {
    let f = ca_file("not a certificate\n");
    let text = format!(
        "[server]\nupstream = \"https://api.example.com\"\nupstream_ca_file = {:?}\n",
        f.path().to_str().unwrap()
    );
    let err = floodgate::config::Config::parse(&text, &Default::default()).unwrap_err();
    let err = err.to_string();
    assert!(
        err.starts_with("line 3: server.upstream_ca_file: ")
            && err.ends_with("holds no PEM certificate"),
        "{err}"
    );
}

/// An upstream account whose base URL is `https://`: its jobs go there over TLS with its Host
/// and credential, while the main upstream stays plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_account_on_an_https_base_url_gets_its_jobs_over_tls() {
    let pki = pki(&["localhost"]);
    let main_up = Upstream::start().await;
    let own_up = Upstream::start_tls(pki.server.clone()).await;
    let ca = ca_file(&pki.ca_pem);
    let config = format!(
        r#"
        [server]
        upstream_ca_file = {:?}
        [[route]]
        method = "POST"
        path = "/job"
        class = "job"
        [[jobs]]
        classes = ["job"]
        [tiers.pro]
        [[upstream_account]]
        name = "own"
        base_url = "{}"
        credential_header = "mj-api-secret"
        credential = "secret-own"
        concurrency = 1
        [[account]]
        key = "pro-key"
        tier = "pro"
        upstream_accounts = ["own"]
        "#,
        ca.path().to_str().unwrap(),
        own_up.https_url()
    );
    let gate = Gate::start(&config, &main_up.url(), DAY0_MS);
    let c = TestClient::new();
    for _ in 0..3 {
        let a = c.post(&gate.url("/job"), "pro-key").await;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    assert!(
        main_up.seen().is_empty(),
        "nothing went to the main upstream"
    );
    let seen = own_up.seen();
    assert_eq!(seen.len(), 3);
    let host = format!("localhost:{}", own_up.addr.port());
    assert!(seen.iter().all(|s| s.header("host") == Some(host.as_str())));
    assert!(seen
        .iter()
        .all(|s| s.header("mj-api-secret") == Some("secret-own")));
    assert!(
        own_up.connections() <= 2,
        "{} handshakes",
        own_up.connections()
    );
}
