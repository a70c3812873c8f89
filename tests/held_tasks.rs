//! Running tasks survive a restart: the real binary holds task slots, is killed with SIGKILL
//! while the tasks still run upstream, and the process that takes over holds their slots again —
//! so no upstream account ever runs more tasks than its cap, counted on the upstream's side.
//! With the memory store the holds are in a file beside the state file; with Redis, a replica
//! that restarts (or any other) takes over the tasks of a replica that is no longer alive,
//! with their slot leases.

mod support;

use std::time::Duration;

use support::process::Process;
use support::redis_server::RedisServer;
use support::{eventually, Answer, TestClient, Upstream};

/// One upstream account with room for two tasks; the account's cap is the tier's.
fn config(extra: &str, poll: &str) -> String {
    format!(
        r#"
        {extra}
        [[route]]
        method = "POST"
        path = "/task/create"
        class = "create"
        [[jobs]]
        classes = ["create"]
        mode = "task"
        task_id_pointer = "/result"
        max_job_time = "10m"
        [tasks]
        get_path = "/task/{{id}}"
        status_pointer = "/status"
        terminal = ["SUCCESS", "FAILURE"]
        {poll}
        [tiers.t]
        concurrency = 5
        max_wait = "30s"
        upstream_accounts = ["a"]
        [[upstream_account]]
        name = "a"
        credential_header = "mj-api-secret"
        credential = "secret-a"
        concurrency = 2
        [accounts]
        default_tier = "t"
        "#
    )
}

async fn create(c: &TestClient, p: &Process) -> Answer {
    c.send("POST", &p.url("/task/create"), &[("x-api-key", "k")], "{}")
        .await
}

/// Tasks the upstream started and that have not ended: what runs on the account now.
fn running_upstream(up: &Upstream, ended: usize) -> usize {
    up.count_prefix("/task/create") - ended
}

/// Two tasks run; floodgate dies with SIGKILL; the next floodgate holds both slots, so a third
/// task waits — it reaches the upstream only when one of the two is seen to end.
async fn the_cap_holds_across_kill_9(
    first: &mut Process,
    start_next: impl std::future::Future<Output = Process>,
    up: &Upstream,
    ended_by_poll: bool,
) {
    let c = TestClient::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let t = create(&c, first).await;
        assert_eq!(t.status, 200);
        ids.push(t.json()["result"].as_str().unwrap().to_owned());
    }
    first.kill_hard().await;
    let next = start_next.await;
    // A third task: the two slots are held again, so it waits (no create reaches the upstream).
    let third = {
        let (c, url) = (TestClient::new(), next.url("/task/create"));
        tokio::spawn(async move { c.send("POST", &url, &[("x-api-key", "k")], "{}").await })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        running_upstream(up, 0),
        2,
        "the third task reached the upstream while two still ran on a (cap 2)"
    );
    // The first task ends: seen by a poll of the resumed watcher, or by a client's get-task.
    up.set_task_status(&ids[0], "SUCCESS");
    if !ended_by_poll {
        let seen = c
            .send(
                "GET",
                &next.url(&format!("/task/{}", ids[0])),
                &[("x-api-key", "k")],
                "",
            )
            .await;
        assert_eq!(seen.status, 200);
    }
    let third = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the third task starts once the first is seen to end")
        .unwrap();
    assert_eq!(third.status, 200, "{:?}", third.body);
    assert_eq!(running_upstream(up, 1), 2, "never more than 2 at once on a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_state_file_the_cap_holds_across_kill_9_and_a_client_poll_frees_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let state = dir.path().join("state.json");
    let path = dir.path().join("floodgate.toml");
    let extra = format!("[state]\nfile = \"{}\"", state.display());
    std::fs::write(&path, config(&extra, "")).unwrap();
    let url = up.url();
    let mut first = Process::start(&path, &url).await;
    let next = Process::start(&path, &url);
    the_cap_holds_across_kill_9(&mut first, next, &up, false).await;
    assert!(dir.path().join("state.json.tasks.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_restarted_replica_takes_the_tasks_over_and_its_watcher_polls() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let path = dir.path().join("floodgate.toml");
    let extra = format!("{}lease_ttl = \"6s\"", redis.store_section());
    std::fs::write(&path, config(&extra, "poll_interval = \"100ms\"")).unwrap();
    let mut first = Process::start(&path, &up.url()).await;
    let next = async {
        let next = Process::start(&path, &up.url()).await;
        // The dead replica's word that it was alive runs out, and the new one takes over.
        let log = eventually(Duration::from_secs(8), || async {
            !next
                .log_lines("tasks held before resumed: their slots are held again")
                .is_empty()
        })
        .await;
        assert!(log, "the tasks were taken over:\n{}", next.stderr());
        // Past the dead replica's own leases (6 s): only the resumed ones hold the slots now.
        tokio::time::sleep(Duration::from_secs(7)).await;
        next
    };
    the_cap_holds_across_kill_9(&mut first, next, &up, true).await;
}
