//! Upstream account health over real HTTP: a dead credential's answer (401, 403, a body rule)
//! disables its account and the job runs on another; failures in a row rest an account with a
//! doubling backoff until one probe job succeeds; an operator enables and disables accounts
//! through `/upstream-accounts`; three replicas on one real Redis share rests and disables from
//! their next job on. The upstream is a recording server on loopback whose answer is set per
//! credential; rests run on the manual clock.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::browser::{chromium, field, headless};
use support::process::Process;
use support::redis_server::RedisServer;
use support::{eventually, metric, metrics, Answer, Backend, Gate, TestClient, Upstream, DAY0_MS};

const POOL: &str = r#"
    [[route]]
    method = "POST"
    path = "/slow"
    class = "job"
    [[jobs]]
    classes = ["job"]
    [tiers.pro]
    [[upstream_account]]
    name = "a"
    credential_header = "mj-api-secret"
    credential = "secret-a"
    concurrency = 2
    [[upstream_account]]
    name = "b"
    credential_header = "mj-api-secret"
    credential = "secret-b"
    concurrency = 2
    [[account]]
    key = "pro-key"
    tier = "pro"
    upstream_accounts = ["a", "b"]
"#;

async fn job(gate: &Gate, name: &str) -> Answer {
    gate.client()
        .send(
            "POST",
            &gate.url("/slow?ms=5"),
            &[("x-api-key", "pro-key"), ("x-job", name)],
            "{}",
        )
        .await
}

/// The upstream account a job ran on.
fn ran_on(a: &Answer) -> &str {
    a.header("x-floodgate-upstream-account").unwrap_or("-")
}

/// Requests the upstream saw with `credential`.
fn seen_with(up: &Upstream, credential: &str) -> usize {
    up.count_header("mj-api-secret", credential)
}

async fn upstream_accounts(gate: &Gate) -> Vec<Value> {
    let a = TestClient::new()
        .get(&gate.admin_url("/upstream-accounts"))
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    a.json()["upstream_accounts"].as_array().unwrap().clone()
}

async fn state_of(gate: &Gate, name: &str) -> Value {
    upstream_accounts(gate)
        .await
        .into_iter()
        .find(|a| a["name"] == name)
        .unwrap()
}

async fn admin_post(gate: &Gate, path: &str, body: &str) -> Answer {
    TestClient::new()
        .send("POST", &gate.admin_url(path), &[], body.to_owned())
        .await
}

async fn a_401_disables_the_account_and_the_job_runs_on_another(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, POOL, &up.url(), DAY0_MS);
    up.set_answer("secret-a", Some((401, r#"{"error":"invalid credential"}"#)));
    let first = job(&gate, "first").await;
    assert_eq!(
        first.status, 200,
        "the client does not pay for a dead account"
    );
    assert_eq!(ran_on(&first), "b");
    assert_eq!(seen_with(&up, "secret-a"), 1);
    let a = state_of(&gate, "a").await;
    assert_eq!(a["state"], "disabled", "{a}");
    assert_eq!(a["reason"], "upstream answered 401");
    up.set_answer("secret-a", None); // the credential works again, but nobody said so
    gate.clock.advance_ms(3_600_000);
    for i in 0..4 {
        assert_eq!(ran_on(&job(&gate, &format!("after{i}")).await), "b");
    }
    assert_eq!(
        seen_with(&up, "secret-a"),
        1,
        "a disabled account gets nothing"
    );
    let text = metrics(&gate.admin_url("/metrics")).await;
    let series = r#"floodgate_upstream_account_state{state="disabled",upstream_account="a"}"#;
    assert_eq!(metric(&text, series), 1.0);
    let series = r#"floodgate_jobs_retried_total{reason="disabled"}"#;
    assert_eq!(metric(&text, series), 1.0);
    // An operator enables it: back in rotation at once.
    let enabled = admin_post(&gate, "/upstream-accounts/a/enable", "").await;
    assert_eq!(enabled.status, 200);
    assert_eq!(enabled.json()["upstream_account"]["state"], "active");
    let names: Vec<String> = futures_join(&gate, 4).await;
    assert!(names.iter().any(|n| n == "a"), "{names:?}");
}

/// `n` jobs at once; the upstream accounts they ran on.
async fn futures_join(gate: &Gate, n: usize) -> Vec<String> {
    let mut handles = Vec::new();
    for i in 0..n {
        let (url, client) = (gate.url("/slow?ms=50"), gate.client());
        handles.push(tokio::spawn(async move {
            let headers = [("x-api-key", "pro-key"), ("x-job", "together")];
            let a = client
                .send("POST", &url, &headers, format!("{{\"n\":{i}}}"))
                .await;
            ran_on(&a).to_owned()
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

async fn a_body_rule_disables_and_an_operator_disables_with_a_reason(backend: Backend) {
    let up = Upstream::start().await;
    let config = format!("{POOL}\n[upstream_health]\ndisable_body_contains = [\"banned\"]\n");
    let gate = Gate::start_on(backend, &config, &up.url(), DAY0_MS);
    up.set_answer(
        "secret-a",
        Some((400, r#"{"error":"This account is BANNED"}"#)),
    );
    let first = job(&gate, "first").await;
    assert_eq!((first.status.as_u16(), ran_on(&first)), (200u16, "b"));
    let a = state_of(&gate, "a").await;
    assert_eq!(a["state"], "disabled");
    assert_eq!(a["reason"], "upstream answered 400 with \"banned\"");
    // Any other 400 is the job's own fault: passed on, the account stays.
    let enabled = admin_post(&gate, "/upstream-accounts/a/enable", "").await;
    assert_eq!(enabled.status, 200);
    up.set_answer("secret-a", Some((400, r#"{"error":"bad prompt"}"#)));
    let answers: Vec<String> = futures_join(&gate, 4).await;
    assert!(answers.iter().any(|n| n == "a"));
    assert_eq!(state_of(&gate, "a").await["state"], "active");
    // An operator takes b out, with a reason; unknown names and wrong methods are refused.
    let body = r#"{"reason": "credential rotated"}"#;
    let off = admin_post(&gate, "/upstream-accounts/b/disable", body).await;
    assert_eq!(off.status, 200);
    let b = state_of(&gate, "b").await;
    assert_eq!(
        (b["state"].as_str(), b["reason"].as_str()),
        (Some("disabled"), Some("credential rotated"))
    );
    up.set_answer("secret-a", None);
    assert_eq!(ran_on(&job(&gate, "only-a").await), "a");
    let unknown = admin_post(&gate, "/upstream-accounts/zz/disable", "").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["code"], "unknown_upstream_account");
    let get = TestClient::new()
        .get(&gate.admin_url("/upstream-accounts/a/enable"))
        .await;
    assert_eq!(get.status, 405);
    let bad = admin_post(&gate, "/upstream-accounts/a/disable", "[1]").await;
    assert_eq!(bad.status, 400);
}

async fn failures_in_a_row_rest_the_account_and_one_probe_brings_it_back(backend: Backend) {
    let up = Upstream::start().await;
    let config = format!(
        "{POOL}\n[upstream_health]\nfailures_to_rest = 2\nrest = \"10s\"\nmax_rest = \"1m\"\n"
    );
    let gate = Gate::start_on(backend, &config, &up.url(), DAY0_MS);
    up.set_answer("secret-b", Some((503, r#"{"error":"overloaded"}"#)));
    let mut failed = 0;
    for i in 0..6 {
        let a = job(&gate, &format!("j{i}")).await;
        if a.status == 503 {
            assert_eq!(ran_on(&a), "b", "a 5xx is passed on, not retried");
            failed += 1;
        }
    }
    assert_eq!(failed, 2, "two failures in a row rest b");
    let b = state_of(&gate, "b").await;
    assert_eq!(b["state"], "resting", "{b}");
    assert_eq!(b["failures"], 2);
    assert_eq!(b["until"], "2026-11-23T00:00:10Z");
    gate.clock.advance_ms(10_000);
    // The rest is over: b takes one job at a time, and it fails again — twice as long.
    let probe_round = futures_join(&gate, 4).await;
    assert_eq!(
        probe_round.iter().filter(|n| *n == "b").count(),
        1,
        "{probe_round:?}"
    );
    let b = state_of(&gate, "b").await;
    assert_eq!(
        (b["state"].as_str(), b["failures"].as_u64()),
        (Some("resting"), Some(3))
    );
    assert_eq!(b["until"], "2026-11-23T00:00:30Z");
    gate.clock.advance_ms(20_000);
    up.set_answer("secret-b", None);
    let healed = futures_join(&gate, 4).await;
    assert!(healed.iter().any(|n| n == "b"), "{healed:?}");
    let b = state_of(&gate, "b").await;
    assert_eq!(
        (b["state"].as_str(), b["failures"].as_u64()),
        (Some("active"), Some(0))
    );
    let text = metrics(&gate.admin_url("/metrics")).await;
    let series =
        r#"floodgate_upstream_account_failures_total{kind="server_error",upstream_account="b"}"#;
    assert_eq!(metric(&text, series), 3.0);
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(Backend::Memory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(Backend::Redis).await;
            }
        }
    )*};
}

on_both_stores!(
    a_401_disables_the_account_and_the_job_runs_on_another,
    a_body_rule_disables_and_an_operator_disables_with_a_reason,
    failures_in_a_row_rest_the_account_and_one_probe_brings_it_back,
);

/// Three replicas on one Redis: a 429 seen by one rests the account on all three from their
/// next job on, and a 401 seen by one disables it on all three; no replica sends the account
/// a job after that (checked on the upstream's side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_rests_and_disables_from_their_next_job() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let config = format!("{POOL}{}", redis.store_section());
    let replicas: Vec<Gate> = (0..3)
        .map(|_| Gate::start(&config, &up.url(), DAY0_MS))
        .collect();
    // Replica 0's job meets a's 429 and goes to b; a rests for its Retry-After (2 s).
    up.set_busy("secret-a", true);
    let first = job(&replicas[0], "first").await;
    assert_eq!((first.status.as_u16(), ran_on(&first)), (200u16, "b"));
    up.set_busy("secret-a", false);
    let before = seen_with(&up, "secret-a");
    for (i, r) in replicas.iter().enumerate().skip(1) {
        for j in 0..3 {
            let a = job(r, &format!("r{i}-{j}")).await;
            assert_eq!(ran_on(&a), "b", "replica {i} sent a resting account a job");
        }
    }
    assert_eq!(
        seen_with(&up, "secret-a"),
        before,
        "no replica sent a a job while it rested"
    );
    for r in &replicas {
        r.clock.advance_ms(2_000);
    }
    // The rest is over everywhere. Replica 2 meets a's 401: a is disabled on all three.
    up.set_answer("secret-a", Some((401, "{}")));
    let mut met = false;
    for j in 0..4 {
        let a = job(&replicas[2], &format!("d{j}")).await;
        assert_eq!(
            (a.status.as_u16(), ran_on(&a)),
            (200u16, "b"),
            "retried on b"
        );
        met |= seen_with(&up, "secret-a") > before;
        if met {
            break;
        }
    }
    assert!(met, "replica 2 sent a a job once its rest was over");
    up.set_answer("secret-a", None);
    let dead_at = seen_with(&up, "secret-a");
    for (i, r) in replicas.iter().enumerate() {
        let names = futures_join(r, 4).await;
        assert!(names.iter().all(|n| n == "b"), "replica {i}: {names:?}");
    }
    assert_eq!(
        seen_with(&up, "secret-a"),
        dead_at,
        "a disabled account gets nothing"
    );
    // Every replica shows it disabled, within its next refresh.
    for r in &replicas {
        let shown = eventually(Duration::from_secs(2), || async {
            state_of(r, "a").await["state"] == "disabled"
        })
        .await;
        assert!(shown);
    }
    // Enabled through one replica: every replica sends it jobs again.
    let on = admin_post(&replicas[1], "/upstream-accounts/a/enable", "").await;
    assert_eq!(on.status, 200);
    for (i, r) in replicas.iter().enumerate() {
        let back = eventually(Duration::from_secs(2), || async {
            futures_join(r, 4).await.iter().any(|n| n == "a")
        })
        .await;
        assert!(back, "replica {i} never sent a a job again");
    }
}

/// The real binary with a state file: an account disabled by a 401 stays disabled after
/// kill -9 and a restart (no job reaches it), and the status page, in a real browser, shows it
/// disabled with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_account_survives_kill_9_and_shows_on_the_status_page() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let state = dir.path().join("state.json");
    let config = dir.path().join("floodgate.toml");
    let text = format!("[state]\nfile = \"{}\"\n{POOL}", state.display());
    std::fs::write(&config, text).unwrap();
    let mut first = Process::start(&config, &up.url()).await;
    let c = TestClient::new();
    let headers = [("x-api-key", "pro-key"), ("x-job", "j")];
    up.set_answer("secret-a", Some((403, r#"{"error":"forbidden"}"#)));
    let mut met = false;
    for _ in 0..3 {
        let a = c
            .send("POST", &first.url("/slow?ms=5"), &headers, "{}")
            .await;
        assert_eq!((a.status.as_u16(), ran_on(&a)), (200u16, "b"));
        met |= seen_with(&up, "secret-a") > 0;
    }
    assert!(met, "a job met a's 403");
    first.kill_hard().await;
    up.set_answer("secret-a", None);

    let second = Process::start(&config, &up.url()).await;
    let before = seen_with(&up, "secret-a");
    for _ in 0..4 {
        let a = c
            .send("POST", &second.url("/slow?ms=5"), &headers, "{}")
            .await;
        assert_eq!(
            ran_on(&a),
            "b",
            "still disabled after kill -9 and a restart"
        );
    }
    assert_eq!(seen_with(&up, "secret-a"), before);
    let listed = c.get(&second.admin_url("/upstream-accounts")).await.json();
    let a = &listed["upstream_accounts"][0];
    assert_eq!(
        (a["name"].as_str(), a["state"].as_str()),
        (Some("a"), Some("disabled"))
    );
    assert_eq!(a["reason"], "upstream answered 403");

    let Some(browser) = chromium() else {
        eprintln!("SKIPPED the page: no Chromium on this machine (apt-get install chromium)");
        return;
    };
    let page = format!("http://{}/", second.admin);
    let dom = headless(&browser, &dir.path().join("profile"), &page, None);
    let shown = field(&dom, "upstream.a.state");
    assert!(
        shown.starts_with("disabled: upstream answered 403 (since "),
        "{shown}"
    );
    assert_eq!(field(&dom, "upstream.b.state"), "active");
}

/// With a body rule on, an error answer's body is read once for the account's health and is
/// still there for the incorrect-task rules: a banned prompt (the job's fault) counts against
/// the client's account and leaves the upstream account in rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_read_for_health_still_counts_an_incorrect_task() {
    let up = Upstream::start().await;
    let config = format!(
        "{POOL}
        [upstream_health]
        disable_body_contains = [\"account banned\"]
        [incorrect_tasks]
        classes = [\"job\"]
        [[incorrect_tasks.match]]
        pointer = \"/code\"
        values = [24]
        [tiers.pro.incorrect_tasks]
        per_day = 5
        action = \"block\"
        "
    );
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let banned_prompt = r#"{"code":24,"description":"Banned prompt detected"}"#;
    let headers = [
        ("x-api-key", "pro-key"),
        ("x-upstream-status", "400"),
        ("x-upstream-body", banned_prompt),
    ];
    let a = gate
        .client()
        .send("POST", &gate.url("/slow?ms=1"), &headers, "{}")
        .await;
    assert_eq!(a.status, 400, "the job's own fault is passed on");
    assert_eq!(a.json()["code"], 24, "the client gets the whole body");
    let usage = TestClient::new()
        .get(&gate.admin_url("/usage?key=pro-key"))
        .await
        .json();
    assert_eq!(usage["penalties"]["incorrect_tasks"]["today"], 1, "{usage}");
    for account in upstream_accounts(&gate).await {
        assert_eq!(account["state"], "active", "{account}");
    }
}

/// Accounts without a credential of their own pass the client's key upstream: a 401 is that
/// client's, answered as it came, and no account leaves rotation for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_to_a_client_key_passed_through_disables_nothing() {
    let up = Upstream::start().await;
    let config = POOL
        .replace("credential = \"secret-a\"\n", "")
        .replace("credential = \"secret-b\"\n", "");
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let headers = [
        ("x-api-key", "pro-key"),
        ("x-upstream-status", "401"),
        ("x-upstream-body", "{\"error\":\"bad key\"}"),
    ];
    let a = gate
        .client()
        .send("POST", &gate.url("/slow?ms=1"), &headers, "{}")
        .await;
    assert_eq!(a.status, 401, "the client's own 401");
    assert_eq!(up.count(), 1, "not retried on the other account");
    for account in upstream_accounts(&gate).await {
        assert_eq!(account["state"], "active", "{account}");
    }
}
