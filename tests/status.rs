//! The live status page: `/status.json` agrees with `/metrics` and `/usage`, names accounts
//! without their keys, shows waiting jobs with their place and estimated wait; the page is
//! guarded by the admin token; and in a real (headless Chromium) browser its numbers move with
//! the traffic and match `/metrics` and `/usage`.

mod support;

use std::time::Duration;

use floodgate::identity::AccountId;
use support::browser::{chromium, field, headless};
use support::process::Process;
use support::{eventually, metric, metrics, Gate, TestClient, Upstream, DAY0_MS};

const LIMITED: &str = r#"
[account_names]
"key-acme" = "acme"

[[route]]
method = "POST"
path = "/gen"
class = "gen"

[tiers.basic]
limits = [{ classes = ["gen"], per_minute = 5 }]
"#;

/// The sum of a counter's samples whose label set contains `labels` (e.g. `decision="admitted"`).
fn sum_of(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn status(c: &TestClient, url: &str) -> serde_json::Value {
    let a = c.get(url).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_totals_match_metrics_and_accounts_show_without_keys() {
    let up = Upstream::start().await;
    let gate = Gate::start(LIMITED, &up.url(), DAY0_MS);
    let c = TestClient::new();
    for _ in 0..8 {
        c.post(&gate.url("/gen"), "key-acme").await;
    }
    for _ in 0..2 {
        c.post(&gate.url("/gen"), "key-other").await;
    }
    // The charts are sampled once a second, off the request path.
    let url = gate.admin_url("/status.json");
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&c, &url).await["sampled"]["admitted"]["all"] == 7.0
        })
        .await,
        "the sampler saw the traffic"
    );
    let raw = c.get(&url).await;
    let text = String::from_utf8_lossy(&raw.body).into_owned();
    assert!(
        !text.contains("key-acme") && !text.contains("key-other"),
        "no key: {text}"
    );
    let s = raw.json();
    let m = metrics(&gate.admin_url("/metrics")).await;
    let admitted = sum_of(&m, "floodgate_requests_total", r#"decision="admitted""#);
    let refused = sum_of(&m, "floodgate_requests_total", r#"decision="limited""#);
    assert_eq!((admitted, refused), (7.0, 3.0));
    assert_eq!(s["totals"]["admitted"]["all"], admitted);
    assert_eq!(s["totals"]["refused"]["all"], refused);
    assert_eq!(s["totals"]["admitted"]["class:gen"], 7.0);
    assert_eq!(s["totals"]["refused"]["tier:basic"], 3.0);
    assert_eq!(
        s["totals"]["limit"]["minute"],
        metric(
            &m,
            r#"floodgate_limited_total{class="gen",tier="basic",type="minute"}"#
        )
    );
    // Nearest its limit first: acme (named by the operator) at 5 of 5, then the other by hash.
    let accounts = s["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 2, "{accounts:?}");
    assert_eq!(accounts[0]["account"], "acme");
    assert_eq!(accounts[0]["tier"], "basic");
    assert_eq!(accounts[0]["class"], "gen");
    assert_eq!(accounts[0]["window"], "minute");
    assert_eq!(
        (accounts[0]["used"].as_u64(), accounts[0]["limit"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(accounts[0]["fraction"], 1.0);
    let secs = accounts[0]["resets_in_secs"].as_u64().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    assert_eq!(
        accounts[1]["account"],
        AccountId::from_key(b"key-other").short()
    );
    assert_eq!(accounts[1]["used"], 2);
    // The rest of the page's facts.
    assert_eq!(s["store"]["kind"], "memory");
    assert_eq!(s["config"]["generation"], 1);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["rates"]["at_ms"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_past_its_window_leaves_the_list() {
    let up = Upstream::start().await;
    let gate = Gate::start(LIMITED, &up.url(), DAY0_MS);
    let c = TestClient::new();
    c.post(&gate.url("/gen"), "key-acme").await;
    let url = gate.admin_url("/status.json");
    assert_eq!(status(&c, &url).await["accounts"][0]["account"], "acme");
    gate.clock.advance_ms(61_000);
    assert_eq!(status(&c, &url).await["accounts"], serde_json::json!([]));
}

const QUEUED: &str = r#"
[account_names]
"acct" = "queue-demo"

[[route]]
method = "POST"
path = "/slow"
class = "job"

[[jobs]]
classes = ["job"]
mode = "sync"

[tiers.t]
concurrency = 1
max_queue = 2
max_wait = "30s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_job_knows_its_place_and_its_estimated_wait() {
    let up = Upstream::start().await;
    let gate = Gate::start(QUEUED, &up.url(), DAY0_MS);
    let spawn = |ms: u64| {
        let url = gate.url(&format!("/slow?ms={ms}"));
        tokio::spawn(async move { TestClient::new().post(&url, "acct").await })
    };
    let running = spawn(800);
    let c = TestClient::new();
    let usage = gate.admin_url("/usage?key=acct");
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.get(&usage).await.json()["jobs"]["in_flight"] == 1
        })
        .await
    );
    let second = spawn(10);
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.get(&usage).await.json()["jobs"]["queued"] == 1
        })
        .await
    );
    let third = spawn(10);
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.get(&usage).await.json()["jobs"]["queued"] == 2
        })
        .await
    );
    // Before any job ended, a job is taken to hold its slot 1 s: one round per place at
    // concurrency 1.
    let u = c.get(&usage).await.json();
    let waiting = u["jobs"]["waiting"].as_array().unwrap().clone();
    assert_eq!(waiting.len(), 2, "{u}");
    for (i, w) in waiting.iter().enumerate() {
        assert_eq!(w["position"], i + 1);
        assert_eq!(w["position_at_entry"], i + 1);
        assert_eq!(w["estimated_wait_ms"], 1_000 * (i as u64 + 1));
    }
    // The status page lists the same jobs, by the account's name.
    let s = status(&c, &gate.admin_url("/status.json")).await;
    let jobs = s["queues"]["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{s}");
    assert!(jobs
        .iter()
        .all(|j| j["account"] == "queue-demo" && j["tier"] == "t"));
    let mut places: Vec<u64> = jobs
        .iter()
        .map(|j| j["position"].as_u64().unwrap())
        .collect();
    places.sort();
    assert_eq!(places, vec![1, 2]);
    assert_eq!(s["queues"]["pools"][0]["waiting"], 2);
    assert!(s["queues"]["pools"][0]["oldest_wait_ms"].as_u64().is_some());
    // The queue is full: the 429's Retry-After is the same estimate for a third place.
    let full = c.post(&gate.url("/slow?ms=10"), "acct").await;
    assert_eq!(full.status, 429);
    assert_eq!(full.header("x-ratelimit-type"), Some("concurrency"));
    assert_eq!(full.header("retry-after"), Some("3"));
    // The jobs that waited say where they entered, beside how long they waited.
    let first = running.await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("x-queue-position-at-entry"),
        None,
        "it never waited"
    );
    let (second, third) = (second.await.unwrap(), third.await.unwrap());
    assert_eq!(second.header("x-queue-position-at-entry"), Some("1"));
    assert_eq!(third.header("x-queue-position-at-entry"), Some("2"));
    assert!(second.num("x-queue-wait-ms") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_and_its_data_needs_the_admin_token() {
    let up = Upstream::start().await;
    let config = format!("[server]\nadmin_token = \"s3cret-token\"\n{LIMITED}");
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let c = TestClient::new();
    let page = c.get(&gate.admin_url("/")).await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("status.json") && html.contains("sessionStorage"));
    for outside in [
        "src=\"http",
        "href=\"http",
        "@import",
        "url(http",
        "fetch(\"http",
    ] {
        assert!(
            !html.contains(outside),
            "nothing fetched from elsewhere: {outside}"
        );
    }
    let denied = c.get(&gate.admin_url("/status.json")).await;
    assert_eq!(denied.status, 401);
    let allowed = c
        .send(
            "GET",
            &gate.admin_url("/status.json"),
            &[("authorization", "Bearer s3cret-token")],
            "",
        )
        .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.json()["store"]["kind"], "memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_shows_on_the_page_applied_or_refused() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("floodgate.toml");
    std::fs::write(&config, LIMITED).unwrap();
    let p = Process::start(&config, &up.url()).await;
    let c = TestClient::new();
    let url = p.admin_url("/status.json");
    assert_eq!(status(&c, &url).await["config"]["generation"], 1);
    std::fs::write(&config, LIMITED.replace("per_minute = 5", "per_minute = 6")).unwrap();
    p.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&c, &url).await["config"]["generation"] == 2
        })
        .await
    );
    assert_eq!(status(&c, &url).await["config"]["last_reload"]["ok"], true);
    std::fs::write(&config, "[server\n").unwrap();
    p.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&c, &url).await["config"]["last_reload"]["ok"] == false
        })
        .await
    );
    let s = status(&c, &url).await;
    assert_eq!(
        s["config"]["generation"], 2,
        "the refused file is not running"
    );
    assert!(s["config"]["last_reload"]["error"]
        .as_str()
        .unwrap()
        .contains("line 1"));
}

// ---- in a real browser ----------------------------------------------------------------------

fn number(text: &str) -> f64 {
    text.replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_the_numbers_move_and_match_metrics_and_usage() {
    let Some(browser) = chromium() else {
        eprintln!(
            "SKIPPED: no Chromium on this machine (apt-get install chromium); .ci/run installs it"
        );
        return;
    };
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("floodgate.toml");
    std::fs::write(
        &config,
        format!("[server]\nadmin_token = \"page-token\"\n{LIMITED}"),
    )
    .unwrap();
    let p = Process::start(&config, &up.url()).await;
    let c = TestClient::new();
    let page = format!("http://{}/#token=page-token", p.admin);
    let profile = dir.path().join("chromium-profile");
    let metrics_url = p.admin_url("/metrics");

    // Traffic flows: acme spends 3 of its 5, another account 2; then the page is loaded.
    for _ in 0..3 {
        assert_eq!(c.post(&p.url("/gen"), "key-acme").await.status, 200);
    }
    for _ in 0..2 {
        c.post(&p.url("/gen"), "key-other").await;
    }
    let dom = headless(&browser, &profile, &page, None);
    assert!(
        dom.contains("data-updates="),
        "the page rendered data:\n{dom}"
    );
    let m = metrics(&metrics_url).await;
    let admitted = sum_of(&m, "floodgate_requests_total", r#"decision="admitted""#);
    assert_eq!(admitted, 5.0);
    assert_eq!(number(&field(&dom, "totals.admitted.all")), admitted);
    assert_eq!(number(&field(&dom, "totals.refused.all")), 0.0);
    let usage = c
        .send(
            "GET",
            &p.admin_url("/usage?key=key-acme"),
            &[("authorization", "Bearer page-token")],
            "",
        )
        .await
        .json();
    let minute = usage["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["class"] == "gen" && l["type"] == "minute")
        .unwrap()
        .clone();
    assert_eq!(
        field(&dom, "account.acme.used"),
        format!("{} / {}", minute["used"], minute["limit"]),
        "the page's acme row is /usage's minute window"
    );
    assert!(!dom.contains("key-acme"), "no API key on the page");

    // More traffic, some of it refused: the page's numbers move with it. The other account
    // is blocked through the accounts API: the page lists it with its reason.
    for _ in 0..4 {
        c.post(&p.url("/gen"), "key-acme").await;
    }
    let block = c
        .send(
            "PUT",
            &p.admin_url("/accounts/by-key?key=key-other"),
            &[("authorization", "Bearer page-token")],
            r#"{"blocked": {"reason": "card declined"}, "concurrency": 2}"#,
        )
        .await;
    assert_eq!(block.status, 200, "{:?}", block.body);
    let dom2 = headless(&browser, &profile, &page, None);
    let other = format!(
        "{:032x}",
        floodgate::identity::AccountId::from_key(b"key-other").0
    );
    assert!(
        dom2.contains(&format!("data-changed=\"{other}\"")) && dom2.contains("card declined"),
        "the blocked account is on the page:\n{dom2}"
    );
    let m = metrics(&metrics_url).await;
    let admitted2 = sum_of(&m, "floodgate_requests_total", r#"decision="admitted""#);
    let refused2 = sum_of(&m, "floodgate_requests_total", r#"decision="limited""#);
    assert_eq!((admitted2, refused2), (7.0, 2.0));
    assert_eq!(number(&field(&dom2, "totals.admitted.all")), admitted2);
    assert_eq!(number(&field(&dom2, "totals.refused.all")), refused2);
    assert_eq!(number(&field(&dom2, "totals.limit.minute")), 2.0);
    assert_eq!(field(&dom2, "account.acme.used"), "5 / 5");
    assert_ne!(
        field(&dom, "totals.admitted.all"),
        field(&dom2, "totals.admitted.all")
    );

    // Without the token the page asks for it and shows no data.
    let locked = headless(
        &browser,
        &dir.path().join("other-profile"),
        &format!("http://{}/", p.admin),
        None,
    );
    assert!(
        locked.contains(r#"id="login" style="display: block;""#),
        "{locked}"
    );
    assert!(locked.contains(r#"id="board" style="display: none;""#));
    assert!(
        !locked.contains("data-updates="),
        "no data without the token"
    );

    let shot = dir.path().join("status.png");
    headless(&browser, &profile, &page, Some(&shot));
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot was taken ({size} bytes)");
    if let Ok(keep) = std::env::var("FLOODGATE_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}

const TASKS: &str = r#"
[[route]]
method = "POST"
path = "/task/create"
class = "create"

[[jobs]]
classes = ["create"]
mode = "task"
task_id_pointer = "/result"
max_job_time = "30s"

[tasks]
get_path = "/task/{id}"
status_pointer = "/status"
terminal = ["SUCCESS", "FAILURE"]

[tiers.t]
concurrency = 1
max_queue = 1
max_wait = "30s"
"#;

/// The whole seconds the shared estimator gives a job at `place` (concurrency 1) when jobs
/// typically hold their slot `typical_ms` (as `/usage` reports it, truncated to the ms).
fn retry_after_for(place: u64, typical_ms: u64) -> [String; 2] {
    [typical_ms, typical_ms + 1].map(|t| (place * t).div_ceil(1_000).max(1).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_refused_for_concurrency_gets_its_retry_after_from_the_same_estimate() {
    let up = Upstream::start().await;
    let gate = Gate::start(TASKS, &up.url(), DAY0_MS);
    let c = TestClient::new();
    let usage = gate.admin_url("/usage?key=k");
    let create_url = gate.url("/task/create");
    let spawn_create = || {
        let url = gate.url("/task/create");
        tokio::spawn(async move { TestClient::new().post(&url, "k").await })
    };
    let first = c.post(&create_url, "k").await;
    let task = first.json()["result"].as_str().unwrap().to_owned();
    let waiting = spawn_create();
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.get(&usage).await.json()["jobs"]["queued"] == 1
        })
        .await
    );
    // Before any task ended: 1 s a task, the refused one would have been second in line.
    let u = c.get(&usage).await.json();
    assert_eq!(u["jobs"]["typical_job_ms"], 1_000);
    assert_eq!(u["jobs"]["waiting"][0]["estimated_wait_ms"], 1_000);
    let refused = c.post(&create_url, "k").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-ratelimit-type"), Some("concurrency"));
    assert_eq!(refused.header("retry-after"), Some("2"));

    // The first task holds its slot about 1.5 s: the estimate moves, and all three uses with it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    up.set_task_status(&task, "SUCCESS");
    c.send(
        "GET",
        &gate.url(&format!("/task/{task}")),
        &[("x-api-key", "k")],
        "",
    )
    .await;
    let second = waiting.await.unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-queue-position-at-entry"), Some("1"));
    let third = spawn_create(); // waits behind the second task
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.get(&usage).await.json()["jobs"]["queued"] == 1
        })
        .await
    );
    let u = c.get(&usage).await.json();
    let typical = u["jobs"]["typical_job_ms"].as_u64().unwrap();
    assert!(
        (1_090..1_300).contains(&typical),
        "0.8 × 1 s + 0.2 × ~1.5 s: {typical}"
    );
    assert_eq!(u["jobs"]["waiting"][0]["estimated_wait_ms"], typical);
    let refused = c.post(&create_url, "k").await;
    assert_eq!(refused.status, 429);
    let retry_after = refused.header("retry-after").unwrap().to_owned();
    assert!(
        retry_after_for(2, typical).contains(&retry_after),
        "Retry-After {retry_after} for 2 × {typical} ms"
    );
    let s = status(&c, &gate.admin_url("/status.json")).await;
    assert_eq!(s["queues"]["pools"][0]["typical_job_ms"], typical);
    assert_eq!(s["queues"]["jobs"][0]["estimated_wait_ms"], typical);
    third.abort();
}
