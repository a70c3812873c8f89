//! Config reload on the real binary: SIGHUP (and a watched file) swaps the config in while
//! counters keep their windows; a bad file keeps the running config and is counted. Loopback
//! only; every wait is bounded.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::process::Process;
use support::{eventually, metric, metrics, TestClient, Upstream};

const GEN: &str = "/v1/generate";

/// A config whose Basic tier allows `per_minute` requests to `/v1/generate`, plus `extra`.
fn write(dir: &Path, per_minute: &str, extra: &str) -> PathBuf {
    let path = dir.join("floodgate.toml");
    let text = format!(
        "[server]\nupstream = \"http://127.0.0.1:9\"\n{extra}\n\
         [identity]\ndefault_tier = \"basic\"\n\
         [[route]]\nmethod = \"POST\"\npath = \"{GEN}\"\nclass = \"generate\"\n\
         [[tiers.basic.limits]]\nclasses = [\"generate\"]\nper_minute = {per_minute}\n"
    );
    // Write beside and rename, as an operator's deploy tool would: never a half-written file.
    let tmp = dir.join("floodgate.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

async fn post_status(p: &Process, key: &str) -> u16 {
    TestClient::new()
        .post(&p.url(GEN), key)
        .await
        .status
        .as_u16()
}

/// Waits until the reload counters read (`ok`, `failed`).
async fn wait_reloads(p: &Process, ok: f64, failed: f64) {
    let url = p.admin_url("/metrics");
    let reached = eventually(Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let m = metrics(&url).await;
            metric(&m, "floodgate_config_reloads_total") == ok
                && metric(&m, "floodgate_config_reload_failures_total") == failed
        }
    })
    .await;
    assert!(
        reached,
        "reload counters never reached ok={ok} failed={failed}:\n{}",
        p.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_raising_the_limit_lets_the_open_window_continue() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "5", "");
    let mut p = Process::start(&config, &up.url()).await;
    for _ in 0..4 {
        assert_eq!(post_status(&p, "k-raise").await, 200);
    }
    write(dir.path(), "10", "");
    p.signal("HUP");
    wait_reloads(&p, 1.0, 0.0).await;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(post_status(&p, "k-raise").await);
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        6,
        "4 of 10 used: exactly 6 more pass: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 1);
    let a = TestClient::new().post(&p.url(GEN), "k-raise").await;
    assert_eq!(a.num("x-ratelimit-limit"), 10);
    assert_eq!(a.num("x-ratelimit-remaining"), 0);
    assert_eq!(up.count(), 10);
    p.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_lowering_the_limit_refuses_at_once() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "5", "");
    let mut p = Process::start(&config, &up.url()).await;
    for _ in 0..3 {
        assert_eq!(post_status(&p, "k-lower").await, 200);
    }
    write(dir.path(), "2", "");
    p.signal("HUP");
    wait_reloads(&p, 1.0, 0.0).await;
    assert_eq!(post_status(&p, "k-lower").await, 429, "3 used of a new 2");
    p.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_an_unrelated_change_gives_no_fresh_burst() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "5", "");
    let mut p = Process::start(&config, &up.url()).await;
    for _ in 0..5 {
        assert_eq!(post_status(&p, "k-burst").await, 200);
    }
    assert_eq!(post_status(&p, "k-burst").await, 429);
    // Another route and class, IETF headers, and a [server] change that waits for a restart.
    let extra = "idle_timeout = \"30s\"\n[headers]\nietf = true\n\
                 [[route]]\npath = \"/v1/other\"\nclass = \"other\"\n\
                 [[tiers.basic.limits]]\nclasses = [\"other\"]\nper_second = 1\n";
    write(dir.path(), "5", extra);
    p.signal("HUP");
    wait_reloads(&p, 1.0, 0.0).await;
    let a = TestClient::new().post(&p.url(GEN), "k-burst").await;
    assert_eq!(a.status, 429, "the minute window carried over");
    assert!(
        a.header("ratelimit-policy").is_some(),
        "the new config is live"
    );
    assert_eq!(up.count(), 5);
    let warned = p.log_lines("these settings change only on restart; their running values stay");
    assert_eq!(warned.len(), 1, "{}", p.stderr());
    assert_eq!(warned[0]["fields"]["fields"], "server.idle_timeout");
    p.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_running_config_and_is_counted() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "3", "");
    let mut p = Process::start(&config, &up.url()).await;
    assert_eq!(post_status(&p, "k-bad").await, 200);
    write(dir.path(), "0", "");
    p.signal("HUP");
    wait_reloads(&p, 0.0, 1.0).await;
    let failed = p.log_lines("config reload failed; keeping the running config");
    assert_eq!(failed.len(), 1, "{}", p.stderr());
    assert_eq!(failed[0]["level"], "ERROR");
    assert_eq!(
        failed[0]["fields"]["field"],
        "tiers.basic.limits[0].per_minute"
    );
    assert!(
        failed[0]["fields"]["error"]
            .as_str()
            .unwrap()
            .ends_with("tiers.basic.limits[0].per_minute: must be at least 1"),
        "{}",
        failed[0]
    );
    // Still the old limit of 3: two more pass, then 429.
    assert_eq!(post_status(&p, "k-bad").await, 200);
    assert_eq!(post_status(&p, "k-bad").await, 200);
    assert_eq!(post_status(&p, "k-bad").await, 429);
    // A file that is not TOML at all, and then a missing one: counted too.
    std::fs::write(&config, "[server\n").unwrap();
    p.signal("HUP");
    wait_reloads(&p, 0.0, 2.0).await;
    std::fs::remove_file(&config).unwrap();
    p.signal("HUP");
    wait_reloads(&p, 0.0, 3.0).await;
    assert_eq!(post_status(&p, "k-bad").await, 429);
    assert_eq!(post_status(&p, "k-other").await, 200, "still serving");
    p.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_file_is_reloaded_when_it_changes() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "1", "watch_config = true");
    let mut p = Process::start(&config, &up.url()).await;
    assert_eq!(post_status(&p, "k-watch").await, 200);
    assert_eq!(post_status(&p, "k-watch").await, 429);
    write(dir.path(), "2", "watch_config = true\n# edited");
    wait_reloads(&p, 1.0, 0.0).await;
    assert_eq!(post_status(&p, "k-watch").await, 200);
    let reloaded = p.log_lines("config reloaded");
    assert_eq!(reloaded[0]["fields"]["trigger"], "file change");
    p.terminate().await;
}

/// A config that reads its accounts from `accounts.toml` beside it: Basic allows 1 request a
/// minute to `/v1/generate`, Premium 3.
fn write_with_accounts(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("floodgate.toml");
    let accounts = dir.join("accounts.toml");
    let text = format!(
        "[server]\nupstream = \"http://127.0.0.1:9\"\n{extra}\n\
         [identity]\ndefault_tier = \"basic\"\naccounts_file = {accounts:?}\n\
         [[route]]\nmethod = \"POST\"\npath = \"{GEN}\"\nclass = \"generate\"\n\
         [[tiers.basic.limits]]\nclasses = [\"generate\"]\nper_minute = 1\n\
         [[tiers.premium.limits]]\nclasses = [\"generate\"]\nper_minute = 3\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Puts `k-acct` in `tier` in the accounts file (written beside and renamed).
fn write_accounts(dir: &Path, tier: &str) {
    let tmp = dir.join("accounts.toml.tmp");
    std::fs::write(&tmp, format!("[accounts]\n\"k-acct\" = \"{tier}\"\n")).unwrap();
    std::fs::rename(&tmp, dir.join("accounts.toml")).unwrap();
}

/// `k-acct` used its one Basic request; after the reload it is Premium: 2 more of 3 pass.
async fn premium_after_reload(p: &Process) {
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post_status(p, "k-acct").await);
    }
    assert_eq!(
        statuses,
        [200, 200, 429],
        "Premium's 3 a minute, 1 already used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_accounts_file() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_accounts(dir.path(), "basic");
    let config = write_with_accounts(dir.path(), "");
    let mut p = Process::start(&config, &up.url()).await;
    assert_eq!(post_status(&p, "k-acct").await, 200);
    assert_eq!(post_status(&p, "k-acct").await, 429, "Basic: 1 a minute");
    write_accounts(dir.path(), "premium");
    p.signal("HUP");
    wait_reloads(&p, 1.0, 0.0).await;
    premium_after_reload(&p).await;
    // A broken accounts file is refused like a broken config; the running accounts stay.
    write_accounts(dir.path(), "platinum");
    p.signal("HUP");
    wait_reloads(&p, 1.0, 1.0).await;
    assert_eq!(
        post_status(&p, "k-acct").await,
        429,
        "still Premium, its 3 used"
    );
    p.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_accounts_file_is_reloaded_when_it_changes() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_accounts(dir.path(), "basic");
    let config = write_with_accounts(dir.path(), "watch_config = true");
    let mut p = Process::start(&config, &up.url()).await;
    assert_eq!(post_status(&p, "k-acct").await, 200);
    assert_eq!(post_status(&p, "k-acct").await, 429);
    write_accounts(dir.path(), "premium"); // the config file itself is not touched
    wait_reloads(&p, 1.0, 0.0).await;
    premium_after_reload(&p).await;
    p.terminate().await;
}
