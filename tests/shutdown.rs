//! Graceful shutdown of the real binary: SIGTERM with requests in flight and jobs queued.
//! `/readyz` turns 503 for the drain, in-flight requests finish with 200, queued jobs get 503 +
//! Retry-After, state is saved, the process exits 0 within the deadline. Loopback only; every wait is bounded.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::process::Process;
use support::{eventually, metric, metrics, Answer, TestClient, Upstream};

/// Jobs under `/job/` run one at a time per account; `/plain/` is ordinary proxying.
fn write(dir: &Path, deadline: &str) -> PathBuf {
    let path = dir.join("floodgate.toml");
    let text = format!(
        "[server]\nupstream = \"http://127.0.0.1:9\"\nshutdown_deadline = \"{deadline}\"\n\
         [identity]\ndefault_tier = \"basic\"\n\
         [[route]]\npath = \"/job/*\"\nclass = \"job\"\n\
         [[jobs]]\nclasses = [\"job\"]\n\
         [tiers.basic]\nconcurrency = 1\nmax_queue = 10\n\
         [[tiers.basic.limits]]\nclasses = [\"job\"]\nper_day = 1000\n\
         [state]\nfile = '{}'\nsave_interval = \"1h\"\n",
        dir.join("state.bin").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn_post(url: String, key: &'static str) -> tokio::task::JoinHandle<Answer> {
    tokio::spawn(async move { TestClient::new().post(&url, key).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_answers_queued_503_saves_state_and_exits_0() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "5s");
    let mut p = Process::start(&config, &up.url()).await;

    // In flight: one job holding the account's only slot, and two plain requests.
    let running_job = spawn_post(p.url("/job/run?ms=1500"), "k-shut");
    let plain: Vec<_> = (0..2)
        .map(|_| spawn_post(p.url("/plain/slow?ms=1500"), "k-shut"))
        .collect();
    let all_in_flight = eventually(Duration::from_secs(5), || async { up.count() == 3 }).await;
    assert!(
        all_in_flight,
        "upstream saw {}:\n{}",
        up.count(),
        p.stderr()
    );
    // Queued: three more jobs of the same account.
    let queued: Vec<_> = (0..3)
        .map(|_| spawn_post(p.url("/job/queued"), "k-shut"))
        .collect();
    let metrics_url = p.admin_url("/metrics");
    let waiting = eventually(Duration::from_secs(5), || {
        let url = metrics_url.clone();
        async move {
            metric(
                &metrics(&url).await,
                "floodgate_jobs_queued{tier=\"basic\"}",
            ) == 3.0
        }
    })
    .await;
    assert!(waiting, "three jobs never queued:\n{}", p.stderr());

    let sent = Instant::now();
    p.signal("TERM");
    let readyz = p.admin_url("/readyz");
    let not_ready = eventually(Duration::from_secs(2), || {
        let url = readyz.clone();
        async move { TestClient::new().get(&url).await.status == 503 }
    })
    .await;
    assert!(not_ready, "/readyz kept answering 200 while draining");
    for q in queued {
        let a = q.await.unwrap();
        assert_eq!(a.status, 503, "{a:?}");
        assert_eq!(a.json()["error"], "shutting_down");
        let retry: u64 = a.num("retry-after");
        assert!(retry >= 1, "{a:?}");
    }
    let a = running_job.await.unwrap();
    assert_eq!(a.status, 200, "the running job finished: {a:?}");
    for r in plain {
        assert_eq!(r.await.unwrap().status, 200, "in-flight requests finished");
    }
    let status = p
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", p.stderr()));
    let took = sent.elapsed();
    assert!(status.success(), "exit {status}:\n{}", p.stderr());
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM, past the 5 s deadline"
    );
    assert_eq!(
        up.count_prefix("/job/queued"),
        0,
        "queued jobs never reached the upstream"
    );
    let saved = p
        .log_line("limit state saved")
        .unwrap_or_else(|| panic!("no state save on shutdown:\n{}", p.stderr()));
    assert_eq!(saved["fields"]["accounts"], 1);
    assert!(p.log_line("stopped").is_some(), "{}", p.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_deadline_is_cut_and_the_process_still_exits_0() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "1s");
    let mut p = Process::start(&config, &up.url()).await;
    let url = p.url("/plain/slow?ms=20000");
    let stuck = tokio::spawn(async move {
        let req = http::Request::get(url)
            .header("x-api-key", "k-stuck")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        client.request(req).await.map(|r| r.status())
    });
    assert!(eventually(Duration::from_secs(5), || async { up.count() == 1 }).await);
    let sent = Instant::now();
    p.signal("TERM");
    let status = p
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits after the deadline");
    let took = sent.elapsed();
    assert!(status.success(), "exit {status}:\n{}", p.stderr());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM with a 1 s deadline"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("the client hears the connection close")
        .unwrap();
    assert!(outcome.is_err(), "the cut request got {outcome:?}");
    assert!(
        p.stderr().contains("drain deadline passed"),
        "{}",
        p.stderr()
    );
}
