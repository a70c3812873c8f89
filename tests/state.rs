//! Limit state that survives a restart, with the real binary: the daily quota continues after a
//! SIGTERM restart; after a SIGKILL at most one save interval is lost; a damaged state file is
//! set aside with a warning and floodgate starts fresh; `--state FILE` overrides the file (the
//! container image's way); the shipped config keeps state by default, in the directory it is
//! started from. Loopback only; every wait is bounded.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use floodgate::identity::AccountId;
use floodgate::store::snapshot;
use support::process::Process;
use support::{Answer, TestClient, Upstream};

/// The seed's txt2embedding: 10 per minute, 100 per day, so several requests fit in a minute.
const ENDPOINT: &str = "/api/v1/txt2embedding";

/// The shipped config with a `[state]` section, written into `dir`; the state file is
/// `dir/state.bin`.
fn config_with_state(dir: &Path, save_interval: &str) -> (PathBuf, PathBuf) {
    let state = dir.join("state.bin");
    (write_config(dir, &state, save_interval), state)
}

fn write_config(dir: &Path, state: &Path, save_interval: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/floodgate.toml"
    ))
    .unwrap();
    let shipped = shipped.replace("[state]\nfile = \"floodgate-state.bin\"\n", "");
    assert!(
        !shipped.contains("[state]"),
        "the shipped [state] is replaced"
    );
    let text = format!(
        "{shipped}\n[state]\nfile = '{}'\nsave_interval = \"{save_interval}\"\n",
        state.display()
    );
    let config = dir.join("floodgate.toml");
    std::fs::write(&config, text).unwrap();
    config
}

async fn spend(p: &Process, key: &str) -> Answer {
    let a = TestClient::new().post(&p.url(ENDPOINT), key).await;
    assert_eq!(a.status, 200, "{a:?}\n{}", p.stderr());
    a
}

/// Today's UTC day number, to notice a test that ran across midnight (the quota resets then).
#[allow(clippy::disallowed_methods)] // a test reading the same wall clock as the binary
fn utc_day() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400
}

/// The counts the state file holds for `key` (empty if the file is missing or unreadable).
fn saved_counts(state: &Path, key: &str) -> Vec<u32> {
    let Ok(bytes) = std::fs::read(state) else {
        return vec![];
    };
    let Ok(snap) = snapshot::decode(&bytes) else {
        return vec![];
    };
    let account = AccountId::from_key(key.as_bytes());
    snap.accounts
        .into_iter()
        .filter(|(a, _)| *a == account)
        .flat_map(|(_, counters)| counters.into_iter().map(|c| c.count))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_quota_continues_after_a_sigterm_restart() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A save interval far longer than the test: only the shutdown save can carry the counts.
    let (config, state) = config_with_state(dir.path(), "1h");
    let (day, started) = (utc_day(), Instant::now());

    let mut first = Process::start(&config, &up.url()).await;
    for used in 1..=3 {
        let a = spend(&first, "k-sigterm").await;
        assert_eq!(a.num("x-ratelimit-daily-remaining"), 100 - used);
        assert_eq!(a.num("x-ratelimit-remaining"), 10 - used);
    }
    first.terminate().await;
    let saved = first
        .log_line("limit state saved")
        .unwrap_or_else(|| panic!("no save on shutdown:\n{}", first.stderr()));
    assert_eq!(saved["fields"]["accounts"], 1);
    assert_eq!(saved_counts(&state, "k-sigterm"), vec![3, 3]);

    let second = Process::start(&config, &up.url()).await;
    let restored = second
        .log_line("limit state restored")
        .unwrap_or_else(|| panic!("no restore:\n{}", second.stderr()));
    assert_eq!(restored["fields"]["accounts"], 1);
    let a = spend(&second, "k-sigterm").await;
    if utc_day() != day {
        return; // crossed 00:00 UTC: the daily quota rightly started over
    }
    assert_eq!(
        a.num("x-ratelimit-daily-remaining"),
        96,
        "the daily count continued, not reset"
    );
    if started.elapsed() < Duration::from_secs(50) {
        assert_eq!(
            a.num("x-ratelimit-remaining"),
            6,
            "so did the minute window"
        );
    }
    assert_eq!(up.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_config_keeps_the_daily_quota_across_a_restart_by_default() {
    let up = Upstream::start().await;
    let workdir = tempfile::tempdir().unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/floodgate.toml").as_ref();
    let day = utc_day();
    // The same command, run from the same directory, twice: an operator's restart.
    let mut first = Process::start_in(workdir.path(), config, &up.url()).await;
    for _ in 0..3 {
        spend(&first, "k-shipped").await;
    }
    first.terminate().await;
    let state = workdir.path().join("floodgate-state.bin");
    assert_eq!(saved_counts(&state, "k-shipped"), vec![3, 3], "{state:?}");
    let mut second = Process::start_in(workdir.path(), config, &up.url()).await;
    let a = spend(&second, "k-shipped").await;
    if utc_day() == day {
        assert_eq!(
            a.num("x-ratelimit-daily-remaining"),
            96,
            "3 + 1 of 100 used"
        );
    }
    second.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_at_most_one_save_interval() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, state) = config_with_state(dir.path(), "200ms");
    let day = utc_day();

    let mut first = Process::start(&config, &up.url()).await;
    for _ in 0..3 {
        spend(&first, "k-sigkill").await;
    }
    // A periodic save picks the three requests up within an interval (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(10);
    while saved_counts(&state, "k-sigkill") != [3, 3] {
        assert!(
            Instant::now() < deadline,
            "no periodic save with the 3 requests within 10 s:\n{}",
            first.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill_hard().await;
    assert!(
        first.log_line("limit state saved").is_none(),
        "SIGKILL runs no shutdown"
    );

    let second = Process::start(&config, &up.url()).await;
    let a = spend(&second, "k-sigkill").await;
    if utc_day() == day {
        assert_eq!(
            a.num("x-ratelimit-daily-remaining"),
            96,
            "the counts saved before the kill came back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_state_file_is_set_aside_and_floodgate_starts_fresh() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, state) = config_with_state(dir.path(), "1h");

    // A real state file, cut in half as a crash of the disk (not of floodgate) might leave it.
    let mut first = Process::start(&config, &up.url()).await;
    spend(&first, "k-corrupt").await;
    spend(&first, "k-corrupt").await;
    first.terminate().await;
    let whole = std::fs::read(&state).unwrap();
    let cut = &whole[..whole.len() / 2];
    std::fs::write(&state, cut).unwrap();

    let mut second = Process::start(&config, &up.url()).await;
    let warning = second
        .log_line("state file is corrupt; set aside, starting with empty limit state")
        .unwrap_or_else(|| panic!("no warning:\n{}", second.stderr()));
    assert_eq!(warning["level"], "WARN");
    assert!(
        warning["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("truncated")),
        "{warning}"
    );
    let aside = PathBuf::from(warning["fields"]["moved_to"].as_str().unwrap());
    let name = aside.file_name().unwrap().to_str().unwrap();
    assert!(
        name.strip_prefix("state.bin.corrupt-")
            .is_some_and(|ms| ms.parse::<u64>().is_ok()),
        "{name}"
    );
    assert_eq!(aside.parent(), Some(dir.path()));
    assert_eq!(std::fs::read(&aside).unwrap(), cut, "the bad file is kept");

    let a = spend(&second, "k-corrupt").await;
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 99, "fresh counters");
    assert!(
        snapshot::decode(&std::fs::read(&state).unwrap()).is_ok(),
        "a good state file replaced the bad one"
    );
    second.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_state_directory_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("missing-dir/state.bin");
    let config = write_config(dir.path(), &state, "5s");
    let up = Upstream::start().await;
    let log = match Process::try_start(&config, &up.url()).await {
        Ok(p) => panic!("started anyway:\n{}", p.stderr()),
        Err(log) => log,
    };
    assert!(log.contains("exited with exit status: 1"), "{log}");
    assert!(log.contains("cannot write state file"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_flag_sets_the_state_file() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/floodgate.toml").as_ref();
    let state = dir.path().join("state.bin");
    let flags = ["--state", state.to_str().unwrap()];
    let day = utc_day();
    let mut first = Process::start_with(config, &up.url(), &flags).await;
    for _ in 0..2 {
        spend(&first, "k-flag").await;
    }
    first.terminate().await;
    assert_eq!(saved_counts(&state, "k-flag"), vec![2, 2]);
    let mut second = Process::start_with(config, &up.url(), &flags).await;
    let a = spend(&second, "k-flag").await;
    if utc_day() == day {
        assert_eq!(
            a.num("x-ratelimit-daily-remaining"),
            97,
            "2 + 1 of 100 used"
        );
    }
    second.terminate().await;
}
