//! Limit state that survives a restart, with the real binary: the daily quota continues after a
//! SIGTERM restart; a SIGKILL under steady load loses at most the last second of admitted
//! requests (the journal), and none with `journal = "strict"`; a version 1 state file still
//! loads; a damaged state file is set aside with a warning and floodgate starts fresh; `--state FILE` overrides the file (the
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

/// A config that admits everything a load sends (a daily limit far above it), with a save
/// interval longer than a run: what survives a SIGKILL is what the journal kept.
fn load_config(dir: &Path, journal: &str) -> PathBuf {
    let text = format!(
        "[server]\nupstream = \"http://127.0.0.1:9\"\n\n\
         [identity]\nsources = [\"x-api-key\"]\n\n\
         [[tiers.load.limits]]\nclasses = [\"*\"]\nper_day = {LOAD_DAILY}\n\n\
         [state]\nfile = '{}'\nsave_interval = \"5s\"\njournal = \"{journal}\"\n",
        dir.join("state.bin").display()
    );
    let config = dir.join("load.toml");
    std::fs::write(&config, text).unwrap();
    config
}

const LOAD_DAILY: u64 = 1_000_000;
const LOAD_KEYS: usize = 5;
/// Each key's requests are this far apart: 5 keys at 15/s, 75 admitted requests a second.
const LOAD_PERIOD: Duration = Duration::from_micros(66_667);

/// A random number (the std hasher's random keys), for kill times.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// What one run measured for one key.
#[derive(Debug)]
struct Kept {
    /// Requests the upstream saw (each one admitted).
    admitted: u64,
    /// Of those, the ones that arrived in the last second before the kill.
    last_second: u64,
    /// The daily count floodgate restored after the restart.
    restored: u64,
}

impl Kept {
    fn lost(&self) -> u64 {
        self.admitted.saturating_sub(self.restored)
    }
}

/// Starts floodgate on `config`, sends a steady load over `keys` for a random 1.5 to 4.5 s,
/// SIGKILLs it mid-load, restarts it, and compares each key's restored daily count with what
/// the upstream saw. Returns the figures and every answered request's latency.
async fn kill_under_load(
    up: &Upstream,
    config: &Path,
    keys: &[String],
) -> (Vec<Kept>, Vec<Duration>, Process) {
    let mut first = Process::start(config, &up.url()).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for key in keys {
        let (url, key, stop) = (first.url(ENDPOINT), key.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let client = TestClient::new();
            let mut every = tokio::time::interval(LOAD_PERIOD);
            let mut latencies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                every.tick().await;
                let sent = Instant::now();
                if let Ok(a) = client.try_post(&url, &key).await {
                    assert_eq!(a.status, 200, "{a:?}");
                    latencies.push(sent.elapsed());
                }
            }
            latencies
        }));
    }
    let run = Duration::from_millis(1_500 + random() % 3_000);
    tokio::time::sleep(run).await;
    first.kill_hard().await;
    let killed = std::time::Instant::now();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut latencies = Vec::new();
    for s in senders {
        latencies.extend(s.await.unwrap());
    }
    assert!(
        first.log_line("limit state saved").is_none(),
        "SIGKILL runs no shutdown"
    );

    let second = Process::start(config, &up.url()).await;
    let seen = up.seen();
    let mut kept = Vec::new();
    for key in keys {
        let of_key = seen
            .iter()
            .filter(|s| s.header("x-api-key") == Some(key.as_str()));
        let (admitted, last_second) = of_key.fold((0, 0), |(n, recent), s| {
            let late = killed.duration_since(s.at) <= Duration::from_secs(1);
            (n + 1, recent + u64::from(late))
        });
        let a = spend(&second, key).await;
        let restored = LOAD_DAILY - a.num("x-ratelimit-daily-remaining") - 1;
        kept.push(Kept {
            admitted,
            last_second,
            restored,
        });
    }
    (kept, latencies, second)
}

fn summary(latencies: &mut [Duration]) -> String {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    format!(
        "{} answered; latency mean {mean:?}, p50 {:?}, p99 {:?}",
        latencies.len(),
        at(0.5),
        at(0.99)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_at_most_the_last_second() {
    let up = Upstream::start().await;
    for run in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let config = load_config(dir.path(), "200ms");
        let keys: Vec<String> = (0..LOAD_KEYS)
            .map(|k| format!("k-load-{run}-{k}"))
            .collect();
        let day = utc_day();
        let (kept, mut latencies, second) = kill_under_load(&up, &config, &keys).await;
        let replayed = second
            .log_line("journal replayed")
            .unwrap_or_else(|| panic!("no replay:\n{}", second.stderr()));
        assert!(
            replayed["fields"]["records"].as_u64().unwrap() > 0,
            "{replayed}"
        );
        let lost: Vec<u64> = kept.iter().map(Kept::lost).collect();
        eprintln!(
            "journal \"200ms\", run {run}: admitted {}, lost {} ({lost:?} per key), {} admitted in \
             the last second; {}",
            kept.iter().map(|k| k.admitted).sum::<u64>(),
            lost.iter().sum::<u64>(),
            kept.iter().map(|k| k.last_second).sum::<u64>(),
            summary(&mut latencies)
        );
        if utc_day() != day {
            continue; // crossed 00:00 UTC: the daily count rightly started over
        }
        for (key, k) in keys.iter().zip(&kept) {
            assert!(k.admitted > 0, "{key}: no load reached the upstream");
            assert!(
                k.lost() <= k.last_second,
                "{key}: lost {} of {k:?}, more than the last second's",
                k.lost()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_journal_loses_nothing_answered_on_sigkill() {
    let up = Upstream::start().await;
    for run in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let config = load_config(dir.path(), "strict");
        let keys: Vec<String> = (0..LOAD_KEYS)
            .map(|k| format!("k-strict-{run}-{k}"))
            .collect();
        let day = utc_day();
        let (kept, mut latencies, _second) = kill_under_load(&up, &config, &keys).await;
        let lost: Vec<u64> = kept.iter().map(Kept::lost).collect();
        eprintln!(
            "journal \"strict\", run {run}: admitted {}, lost {}; {}",
            kept.iter().map(|k| k.admitted).sum::<u64>(),
            lost.iter().sum::<u64>(),
            summary(&mut latencies)
        );
        if utc_day() == day {
            // Forwarded only once durable: everything the upstream saw was restored.
            assert_eq!(lost, vec![0; LOAD_KEYS], "{kept:?}");
        }
    }
}

/// When the wall clock's UTC month began: a test that ran across 00:00 UTC on the 1st sees its
/// monthly quota start over.
fn utc_month() -> u64 {
    #[allow(clippy::disallowed_methods)] // the same wall clock as the binary
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    floodgate::clock::month_start_ms(now_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_quota_survives_a_sigkill_with_the_strict_journal() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nupstream = \"http://127.0.0.1:9\"\n\n\
         [identity]\nsources = [\"x-api-key\"]\n\n\
         [[tiers.paid.limits]]\nclasses = [\"*\"]\nper_month = 5\n\n\
         [state]\nfile = '{}'\nsave_interval = \"1h\"\njournal = \"strict\"\n",
        dir.path().join("state.bin").display()
    );
    let config = dir.path().join("monthly.toml");
    std::fs::write(&config, text).unwrap();
    let month = utc_month();
    let mut first = Process::start(&config, &up.url()).await;
    for used in 1..=3 {
        let a = spend(&first, "k-month").await;
        assert_eq!(a.num("x-ratelimit-monthly-remaining"), 5 - used);
    }
    // No shutdown save: only the journal can carry the month's count.
    first.kill_hard().await;
    let second = Process::start(&config, &up.url()).await;
    let a = spend(&second, "k-month").await;
    if utc_month() != month {
        return; // crossed into a new month: the quota rightly started over
    }
    assert_eq!(
        a.num("x-ratelimit-monthly-remaining"),
        1,
        "the month's count continued"
    );
    let c = TestClient::new();
    let a = c.post(&second.url(ENDPOINT), "k-month").await;
    assert_eq!(a.status, 200);
    let refused = c.post(&second.url(ENDPOINT), "k-month").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-ratelimit-type"), Some("monthly"));
    assert_eq!(up.count(), 5);
}

/// A state file as floodgate wrote it before the journal (version 1: no generation).
fn version_1(state: &snapshot::Snapshot) -> Vec<u8> {
    let mut payload = state.saved_at_ms.to_le_bytes().to_vec();
    payload.extend_from_slice(&(state.accounts.len() as u32).to_le_bytes());
    for (account, counters) in &state.accounts {
        payload.extend_from_slice(&account.0.to_le_bytes());
        payload.extend_from_slice(&(counters.len() as u32).to_le_bytes());
        for c in counters {
            payload.extend_from_slice(&c.id.0.to_le_bytes());
            payload.extend_from_slice(&c.count.to_le_bytes());
            payload.extend_from_slice(&c.end_ms.to_le_bytes());
        }
    }
    let mut out = b"FGSTATE\0".to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_state_file_still_loads() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, state) = config_with_state(dir.path(), "1h");
    let day = utc_day();
    let mut first = Process::start(&config, &up.url()).await;
    for _ in 0..4 {
        spend(&first, "k-v1").await;
    }
    first.terminate().await;
    // The same counts, written as the previous release wrote them, with no journal beside.
    let saved = snapshot::decode(&std::fs::read(&state).unwrap()).unwrap();
    std::fs::write(&state, version_1(&saved)).unwrap();
    for journal in floodgate::store::keeper::journals(&state).unwrap() {
        std::fs::remove_file(journal.1).unwrap();
    }

    let mut second = Process::start(&config, &up.url()).await;
    let restored = second
        .log_line("limit state restored")
        .unwrap_or_else(|| panic!("no restore:\n{}", second.stderr()));
    assert_eq!(restored["fields"]["accounts"], 1);
    let a = spend(&second, "k-v1").await;
    if utc_day() == day {
        assert_eq!(
            a.num("x-ratelimit-daily-remaining"),
            95,
            "4 + 1 of 100 used"
        );
    }
    second.terminate().await;
    let bytes = std::fs::read(&state).unwrap();
    assert_eq!(
        &bytes[8..12],
        &2u32.to_le_bytes(),
        "written back as version 2"
    );
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
