//! The admin listener's token: with `[server] admin_token` (or `admin_token_file`) set,
//! `/usage` and every other private endpoint answer 401 JSON without `Authorization: Bearer
//! <token>`, while `/metrics`, `/healthz` and `/readyz` stay open for scrapers and probes; a
//! token file rotated under a running process applies on SIGHUP. Real sockets and the real
//! binary; loopback only; every wait is bounded.

mod support;

use std::time::Duration;

use support::process::Process;
use support::{eventually, metric, metrics, Answer, Gate, TestClient, Upstream, DAY0_MS};

const CONFIG: &str = "[identity]\ndefault_tier = \"basic\"\n\
    [[tiers.basic.limits]]\nclasses = [\"*\"]\nper_minute = 5\n";

async fn admin_get(c: &TestClient, url: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    c.send("GET", url, &headers, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_needs_the_token_and_probes_do_not() {
    let up = Upstream::start().await;
    let config = format!("[server]\nadmin_token = \"t0ken-for-tests\"\n{CONFIG}");
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let c = TestClient::new();
    assert_eq!(c.post(&gate.url("/x"), "alice").await.status, 200);

    for open in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            admin_get(&c, &gate.admin_url(open), None).await.status,
            200,
            "{open}"
        );
    }
    let usage = gate.admin_url("/usage?key=alice");
    for wrong in [
        None,
        Some("t0ken-for-test"),
        Some("t0ken-for-testsX"),
        Some(""),
    ] {
        let a = admin_get(&c, &usage, wrong).await;
        assert_eq!(a.status, 401, "{wrong:?}");
        assert_eq!(a.header("www-authenticate"), Some("Bearer"));
        assert_eq!(a.json()["error"], "unauthorized");
        assert!(
            !String::from_utf8_lossy(&a.body).contains("t0ken"),
            "the token is never echoed"
        );
    }
    let a = admin_get(&c, &usage, Some("t0ken-for-tests")).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(a.json().to_string().contains("minute"), "{}", a.json());
    // An endpoint that does not exist is private too: no probing without the token.
    let a = admin_get(&c, &gate.admin_url("/nothing"), None).await;
    assert_eq!(a.status, 401);
    let a = admin_get(&c, &gate.admin_url("/nothing"), Some("t0ken-for-tests")).await;
    assert_eq!(a.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_usage_is_open_as_before() {
    let up = Upstream::start().await;
    let gate = Gate::start(&format!("[server]\n{CONFIG}"), &up.url(), DAY0_MS);
    let c = TestClient::new();
    let a = admin_get(&c, &gate.admin_url("/usage?key=bob"), None).await;
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_applies_on_sighup() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "first-token\n").unwrap();
    let config = dir.path().join("floodgate.toml");
    let text = format!("[server]\nadmin_token_file = {token_file:?}\n{CONFIG}");
    std::fs::write(&config, text).unwrap();
    let mut p = Process::start(&config, &up.url()).await;
    let c = TestClient::new();
    let usage = p.admin_url("/usage?key=carol");
    assert_eq!(admin_get(&c, &usage, Some("first-token")).await.status, 200);
    assert_eq!(admin_get(&c, &usage, None).await.status, 401);

    std::fs::write(&token_file, "second-token\n").unwrap();
    p.signal("HUP");
    let metrics_url = p.admin_url("/metrics");
    let reloaded = eventually(Duration::from_secs(10), || {
        let url = metrics_url.clone();
        async move { metric(&metrics(&url).await, "floodgate_config_reloads_total") == 1.0 }
    })
    .await;
    assert!(reloaded, "{}", p.stderr());
    assert_eq!(admin_get(&c, &usage, Some("first-token")).await.status, 401);
    assert_eq!(
        admin_get(&c, &usage, Some("second-token")).await.status,
        200
    );
    assert!(
        !p.stderr().contains("second-token") && !p.stderr().contains("first-token"),
        "the token is never logged"
    );
    p.terminate().await;
}
