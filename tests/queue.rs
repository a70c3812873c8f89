//! Job queues over real HTTP: FIFO under a concurrency cap, queue bounds, upstream account
//! round-robin, follow-up affinity, cooldown after 429, task-mode slot holds, cancellation and
//! fairness. The upstream is a slow recording server on loopback. The queue's rules (maximum
//! wait, an upstream account's rest, a task's maximum job time) run on the manual clock: tests
//! move it instead of sleeping, and wait for the queue's own state rather than a guessed time.
//! Every scenario runs on the memory store and on a real Redis (where slots are also leases).

mod support;

use std::time::{Duration, Instant};

use support::{Answer, Backend, Gate, TestClient, Upstream, DAY0_MS};

/// Jobs on `POST /slow`, a tier with the given queue settings.
fn sync_config(tier: &str) -> String {
    format!(
        r#"
        [[route]]
        method = "POST"
        path = "/slow"
        class = "job"
        [[jobs]]
        classes = ["job"]
        mode = "sync"
        [tiers.t]
        {tier}
        "#
    )
}

async fn job(c: &TestClient, gate: &Gate, key: &str, name: &str, ms: u64) -> Answer {
    c.send(
        "POST",
        &gate.url(&format!("/slow?ms={ms}")),
        &[("x-api-key", key), ("x-job", name)],
        "{}",
    )
    .await
}

fn spawn_job(gate: &Gate, key: &str, name: String, ms: u64) -> tokio::task::JoinHandle<Answer> {
    let url = gate.url(&format!("/slow?ms={ms}"));
    let key = key.to_owned();
    let client = gate.client();
    tokio::spawn(async move {
        client
            .send("POST", &url, &[("x-api-key", &key), ("x-job", &name)], "{}")
            .await
    })
}

async fn seed_scenario_concurrency_three_eight_jobs_fifo(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, &sync_config("concurrency = 3"), &up.url(), DAY0_MS);
    let mut handles = Vec::new();
    for i in 1..=8 {
        // Jobs end 20 ms apart, so each freed slot is granted well before the next one frees.
        let ms = 280 + 20 * i as u64;
        handles.push(spawn_job(&gate, "acct", format!("job{i}"), ms));
        // A defined submission order: each job is at the upstream or in the queue before the
        // next is sent (a job that runs at once still takes its leases first, on Redis).
        gate.until_jobs(|_, waiting| up.count() + waiting == i)
            .await;
    }
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.unwrap());
    }
    assert!(answers.iter().all(|a| a.status == 200));
    assert_eq!(
        up.max_in_flight(),
        3,
        "never more than 3 of the account's jobs at the upstream"
    );
    let order: Vec<String> = up
        .seen()
        .iter()
        .map(|s| s.header("x-job").unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (1..=8).map(|i| format!("job{i}")).collect();
    assert_eq!(
        order, expected,
        "jobs reach the upstream in submission order"
    );
    let seen = up.seen();
    for s in &seen {
        // Sent at once or by whoever freed the slot, a job still names its client.
        assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    }
    for (next, done) in [(3, "job1"), (4, "job2"), (5, "job3")] {
        assert!(
            seen[next].at >= up.ended(done).unwrap(),
            "job{} started before {done} completed",
            next + 1
        );
    }
    match backend {
        Backend::Memory | Backend::MemoryOverH2c => {
            assert_eq!(answers[0].num("x-queue-wait-ms"), 0)
        }
        // the shared slot's lease is one Redis round trip
        Backend::Redis => assert!(answers[0].num("x-queue-wait-ms") < 50),
    }
    assert!(
        answers[3].num("x-queue-wait-ms") >= 200,
        "job 4 waited for job 1"
    );
    assert_handoffs(&gate, backend, 5).await;
}

/// Who sent the `queued` jobs that waited: the worker that freed their slot, in memory; on
/// Redis, where a slot is only whole once its shared leases are held, each job itself.
async fn assert_handoffs(gate: &Gate, backend: Backend, queued: u64) {
    let text = support::metrics(&gate.admin_url("/metrics")).await;
    let (sent_by, not_by) = match backend {
        Backend::Memory | Backend::MemoryOverH2c => ("granting_worker", "own_worker"),
        Backend::Redis => ("own_worker", "granting_worker"),
    };
    let series = format!(r#"floodgate_queue_handoffs_total{{sent_by="{sent_by}"}}"#);
    assert_eq!(support::metric(&text, &series), queued as f64, "{text}");
    let other = format!(r#"floodgate_queue_handoffs_total{{sent_by="{not_by}"}}"#);
    assert_eq!(support::metric(&text, &other), 0.0, "{text}");
}

async fn full_queue_and_maximum_wait_answer_429_concurrency(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(
        backend,
        &sync_config("concurrency = 1\nmax_queue = 1\nmax_wait = \"30s\""),
        &up.url(),
        DAY0_MS,
    );
    let c = gate.client();
    let first = spawn_job(&gate, "acct", "running".into(), 600);
    gate.until_jobs(|running, _| running == 1).await;
    let queued = spawn_job(&gate, "acct", "queued".into(), 10);
    gate.until_jobs(|_, waiting| waiting == 1).await;
    let usage = TestClient::new()
        .get(&gate.admin_url("/usage?key=acct"))
        .await
        .json();
    assert_eq!(usage["jobs"]["in_flight"], 1);
    assert_eq!(
        usage["jobs"]["queued"], 1,
        "a queued client can see where it stands"
    );
    assert_eq!(usage["jobs"]["concurrency"], 1);
    let full = job(&c, &gate, "acct", "overflow", 10).await;
    assert_eq!(full.status, 429);
    assert_eq!(full.header("x-ratelimit-type"), Some("concurrency"));
    assert!(full.num("retry-after") >= 1);
    assert_eq!(full.json()["error"], "queue_full");
    assert_eq!(
        full.json()["message"],
        "Too Many Attempts.",
        "the seed's 429 body"
    );

    gate.clock.advance_ms(29_999);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !queued.is_finished(),
        "1 ms short of max_wait: still waiting"
    );
    gate.clock.advance_ms(1);
    let timed_out = queued.await.unwrap();
    assert_eq!(timed_out.status, 429, "waited to max_wait");
    assert_eq!(timed_out.header("x-ratelimit-type"), Some("concurrency"));
    assert_eq!(timed_out.json()["error"], "queue_timeout");
    assert_eq!(timed_out.json()["message"], "Too Many Attempts.");
    assert!(timed_out.num("retry-after") >= 1);
    assert_eq!(first.await.unwrap().status, 200);
    // FIFO: a job refused or timed out that still went upstream would go before this one.
    assert_eq!(job(&c, &gate, "acct", "after", 10).await.status, 200);
    let jobs: Vec<String> = up
        .seen()
        .iter()
        .map(|s| s.header("x-job").unwrap().to_owned())
        .collect();
    assert_eq!(
        jobs,
        vec!["running", "after"],
        "refused and timed-out jobs never reach the upstream"
    );
    // Another account is not affected by this account's queue.
    assert_eq!(job(&c, &gate, "other", "other", 10).await.status, 200);
}

async fn jobs_the_queue_turns_away_consume_no_quota(backend: Backend) {
    let up = Upstream::start().await;
    let tier = r#"concurrency = 1
        max_queue = 1
        max_wait = "10s"
        [[tiers.t.limits]]
        classes = ["job"]
        per_minute = 3
        per_day = 10"#;
    let gate = Gate::start_on(backend, &sync_config(tier), &up.url(), DAY0_MS);
    let c = gate.client();
    let first = spawn_job(&gate, "acct", "running".into(), 400);
    gate.until_jobs(|running, _| running == 1).await;
    let queued = spawn_job(&gate, "acct", "queued".into(), 10);
    gate.until_jobs(|_, waiting| waiting == 1).await;
    let full = job(&c, &gate, "acct", "overflow", 10).await;
    assert_eq!(full.status, 429);
    assert_eq!(full.json()["error"], "queue_full");
    gate.clock.advance_ms(10_000); // max_wait, well inside the minute
    let timed_out = queued.await.unwrap();
    assert_eq!(timed_out.json()["error"], "queue_timeout");
    // Each refusal's headers leave itself out: the full queue's still counts the queued job.
    for (refused, left) in [(&full, (1, 8)), (&timed_out, (2, 9))] {
        let remaining = refused.num("x-ratelimit-remaining");
        assert_eq!(
            (remaining, refused.num("x-ratelimit-daily-remaining")),
            left
        );
    }
    let ran = first.await.unwrap();
    assert_eq!(
        (ran.status.as_u16(), ran.num("x-ratelimit-remaining")),
        (200, 2)
    );
    // Two turned-away jobs gave their quota back: two more run within the minute, then the
    // minute limit (3) refuses.
    for left in [1, 0] {
        let ok = job(&c, &gate, "acct", "next", 10).await;
        assert_eq!(
            (ok.status.as_u16(), ok.num("x-ratelimit-remaining")),
            (200, left)
        );
    }
    let over = job(&c, &gate, "acct", "over", 10).await;
    assert_eq!(over.status, 429);
    assert_eq!(over.header("x-ratelimit-type"), Some("minute"));
    assert_eq!(
        over.num("x-ratelimit-daily-remaining"),
        7,
        "3 of 10 used today"
    );
    assert_eq!(up.seen().len(), 3, "three jobs reached the upstream");
}

const TWO_ACCOUNTS: &str = r#"
    [[route]]
    method = "POST"
    path = "/slow"
    class = "job"
    [[route]]
    method = "POST"
    path = "/task/create"
    class = "create"
    [[jobs]]
    classes = ["job"]
    [[jobs]]
    classes = ["create"]
    mode = "task"
    task_id_pointer = "/result"
    follow_up_pointer = "/taskId"
    max_job_time = "5s"
    [tasks]
    get_path = "/task/{id}"
    status_pointer = "/status"
    terminal = ["SUCCESS", "FAILURE"]
    [tiers.pro]
    [[upstream_account]]
    name = "a"
    credential_header = "mj-api-secret"
    credential = "secret-a"
    concurrency = 1
    [[upstream_account]]
    name = "b"
    credential_header = "mj-api-secret"
    credential = "secret-b"
    concurrency = 1
    [[account]]
    key = "pro-key"
    tier = "pro"
    upstream_accounts = ["a", "b"]
"#;

/// An upstream account with its own base URL: queued jobs, sent by whichever worker frees the
/// slot, still go to that URL with its Host.
async fn queued_jobs_of_an_account_with_its_own_base_url_go_there(backend: Backend) {
    let main_up = Upstream::start().await;
    let own_up = Upstream::start().await;
    let config = format!(
        r#"
        [[route]]
        method = "POST"
        path = "/slow"
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
        own_up.url()
    );
    let gate = Gate::start_on(backend, &config, &main_up.url(), DAY0_MS);
    let mut handles = Vec::new();
    for i in 0..4 {
        handles.push(spawn_job(&gate, "pro-key", format!("j{i}"), 60));
        gate.until_jobs(|_, waiting| own_up.count() + waiting == i + 1)
            .await;
    }
    for h in handles {
        assert_eq!(h.await.unwrap().status, 200);
    }
    assert!(
        main_up.seen().is_empty(),
        "nothing went to the main upstream"
    );
    let seen = own_up.seen();
    let host = own_up.url().trim_start_matches("http://").to_owned();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|s| s.header("host") == Some(host.as_str())));
    assert!(seen
        .iter()
        .all(|s| s.header("mj-api-secret") == Some("secret-own")));
    assert_eq!(own_up.max_in_flight(), 1);
    assert_handoffs(&gate, backend, 3).await;
}

async fn jobs_alternate_over_upstream_accounts_within_their_caps(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, TWO_ACCOUNTS, &up.url(), DAY0_MS);
    let mut handles = Vec::new();
    for i in 0..6 {
        // Jobs end 20 ms apart: each freed slot goes to the next job before another frees.
        let ms = 150 + 20 * i as u64;
        handles.push(spawn_job(&gate, "pro-key", format!("j{i}"), ms));
        gate.until_jobs(|_, waiting| up.count() + waiting == i + 1)
            .await;
    }
    let mut named = Vec::new();
    for h in handles {
        let a = h.await.unwrap();
        assert_eq!(a.status, 200);
        named.push(a.header("x-floodgate-upstream-account").unwrap().to_owned());
    }
    let creds: Vec<String> = up
        .seen()
        .iter()
        .map(|s| s.header("mj-api-secret").unwrap().to_owned())
        .collect();
    assert_eq!(
        creds,
        ["secret-a", "secret-b", "secret-a", "secret-b", "secret-a", "secret-b"]
    );
    assert_eq!(named, ["a", "b", "a", "b", "a", "b"]);
    assert_eq!(up.max_in_flight_for("secret-a"), 1);
    assert_eq!(up.max_in_flight_for("secret-b"), 1);
    assert!(up
        .seen()
        .iter()
        .all(|s| s.header("x-api-key") == Some("pro-key")));
}

async fn an_upstream_account_answering_429_rests_and_the_other_takes_the_job(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, TWO_ACCOUNTS, &up.url(), DAY0_MS);
    let c = gate.client();
    up.set_busy("secret-a", true);
    let a = job(&c, &gate, "pro-key", "first", 10).await;
    assert_eq!(a.status, 200, "retried on the other account");
    assert_eq!(a.header("x-floodgate-upstream-account"), Some("b"));
    up.set_busy("secret-a", false);
    for i in 0..3 {
        let a = job(&c, &gate, "pro-key", &format!("next{i}"), 10).await;
        assert_eq!(
            a.header("x-floodgate-upstream-account"),
            Some("b"),
            "a rests for its Retry-After"
        );
    }
    let metrics = TestClient::new().get(&gate.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(r#"floodgate_upstream_account_cooldowns_total{upstream_account="a"} 1"#),
        "{text}"
    );
    gate.clock.advance_ms(1_999);
    let a = job(&c, &gate, "pro-key", "resting", 10).await;
    assert_eq!(
        a.header("x-floodgate-upstream-account"),
        Some("b"),
        "1 ms before the end of a's 2 s rest"
    );
    gate.clock.advance_ms(1);
    let names: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..2 {
            v.push(
                job(&c, &gate, "pro-key", &format!("late{i}"), 10)
                    .await
                    .header("x-floodgate-upstream-account")
                    .unwrap()
                    .to_owned(),
            );
        }
        v
    };
    assert!(
        names.contains(&"a".to_owned()),
        "a is back in rotation after its rest: {names:?}"
    );
}

async fn create_task(c: &TestClient, gate: &Gate, key: &str, body: &str) -> Answer {
    c.send(
        "POST",
        &gate.url("/task/create"),
        &[("x-api-key", key)],
        body.to_owned(),
    )
    .await
}

/// Ends a task upstream and lets floodgate see it end: a get-task through `gate`.
async fn end_task(c: &TestClient, up: &Upstream, gate: &Gate, id: &str) -> Answer {
    up.set_task_status(id, "SUCCESS");
    let url = gate.url(&format!("/task/{id}"));
    c.send("GET", &url, &[("x-api-key", "pro-key")], "").await
}

async fn follow_up_jobs_go_to_the_upstream_account_of_their_task(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, TWO_ACCOUNTS, &up.url(), DAY0_MS);
    let c = gate.client();
    let t1 = create_task(&c, &gate, "pro-key", "{}").await;
    let t2 = create_task(&c, &gate, "pro-key", "{}").await;
    assert_eq!(t1.header("x-floodgate-upstream-account"), Some("a"));
    assert_eq!(t2.header("x-floodgate-upstream-account"), Some("b"));
    let (id1, id2) = (
        t1.json()["result"].as_str().unwrap().to_owned(),
        t2.json()["result"].as_str().unwrap().to_owned(),
    );
    for id in [&id1, &id2] {
        assert_eq!(end_task(&c, &up, &gate, id).await.status, 200);
    }
    for _ in 0..2 {
        let f = create_task(
            &c,
            &gate,
            "pro-key",
            &format!("{{\"taskId\": \"{id2}\", \"action\": \"UPSCALE\"}}"),
        )
        .await;
        assert_eq!(
            f.header("x-floodgate-upstream-account"),
            Some("b"),
            "follow-ups of t2 stay on b"
        );
        let id = f.json()["result"].as_str().unwrap().to_owned();
        end_task(&c, &up, &gate, &id).await;
    }
    let f = create_task(&c, &gate, "pro-key", &format!("{{\"taskId\": \"{id1}\"}}")).await;
    assert_eq!(f.header("x-floodgate-upstream-account"), Some("a"));
}

fn task_config(extra_tasks: &str, max_job_time: &str) -> String {
    format!(
        r#"
        [[route]]
        method = "POST"
        path = "/task/create"
        class = "create"
        [[jobs]]
        classes = ["create"]
        mode = "task"
        task_id_pointer = "/result"
        max_job_time = "{max_job_time}"
        [tasks]
        get_path = "/task/{{id}}"
        status_pointer = "/status"
        terminal = ["SUCCESS", "FAILURE"]
        {extra_tasks}
        [tiers.t]
        concurrency = 1
        "#
    )
}

/// Starts a second task creation and checks it waits in the queue while the first holds the
/// slot.
async fn second_create_waits(up: &Upstream, gate: &Gate) -> tokio::task::JoinHandle<Answer> {
    let url = gate.url("/task/create");
    let client = gate.client();
    let h =
        tokio::spawn(async move { client.send("POST", &url, &[("x-api-key", "k")], "{}").await });
    gate.until_jobs(|running, waiting| (running, waiting) == (1, 1))
        .await;
    assert_eq!(
        up.count_prefix("/task/create"),
        1,
        "the second task waits while the first holds the slot"
    );
    h
}

async fn task_slot_is_held_until_a_passing_get_task_shows_a_terminal_status(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, &task_config("", "30s"), &up.url(), DAY0_MS);
    let c = gate.client();
    let first = create_task(&c, &gate, "k", "{}").await;
    assert_eq!(first.status, 200);
    let id = first.json()["result"].as_str().unwrap().to_owned();
    let second = second_create_waits(&up, &gate).await;
    let poll = c
        .send(
            "GET",
            &gate.url(&format!("/task/{id}")),
            &[("x-api-key", "k")],
            "",
        )
        .await;
    assert_eq!(poll.json()["status"], "IN_PROGRESS");
    assert_eq!(gate.jobs(), (1, 1), "not terminal yet: still held");
    up.set_task_status(&id, "FAILURE");
    let poll = c
        .send(
            "GET",
            &gate.url(&format!("/task/{id}")),
            &[("x-api-key", "k")],
            "",
        )
        .await;
    assert_eq!(
        poll.json()["status"],
        "FAILURE",
        "the client sees the upstream's answer unchanged"
    );
    let started = Instant::now();
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("freed")
        .unwrap();
    assert_eq!(second.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
}

async fn task_slot_frees_when_floodgate_polls_and_sees_the_task_done(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(
        backend,
        &task_config("poll_interval = \"100ms\"", "30s"),
        &up.url(),
        DAY0_MS,
    );
    let c = gate.client();
    let id = create_task(&c, &gate, "k", "{}").await.json()["result"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = second_create_waits(&up, &gate).await;
    let polled = support::eventually(Duration::from_secs(5), || async {
        up.count_prefix(&format!("/task/{id}")) >= 2
    })
    .await;
    assert!(polled, "floodgate polls the get-task endpoint itself");
    for poll in up.seen().iter().filter(|s| s.target.starts_with("/task/t")) {
        // No upstream account here: the task is the client's, polled with the client's key.
        assert_eq!(poll.header("x-api-key"), Some("k"), "{}", poll.target);
    }
    up.set_task_status(&id, "SUCCESS");
    let second = tokio::time::timeout(Duration::from_secs(3), second)
        .await
        .expect("freed by polling")
        .unwrap();
    assert_eq!(second.status, 200);
}

async fn task_slot_frees_at_the_maximum_job_time(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, &task_config("", "30s"), &up.url(), DAY0_MS);
    let c = gate.client();
    assert_eq!(create_task(&c, &gate, "k", "{}").await.status, 200);
    let second = second_create_waits(&up, &gate).await;
    gate.clock.advance_ms(29_999);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(gate.jobs(), (1, 1), "not before the maximum job time");
    gate.clock.advance_ms(1);
    let second = tokio::time::timeout(Duration::from_secs(3), second)
        .await
        .expect("freed at max_job_time")
        .unwrap();
    assert_eq!(second.status, 200);
}

async fn a_thousand_jobs_with_random_disconnects_leak_no_slot(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(
        backend,
        &sync_config("concurrency = 5\nmax_queue = 2000"),
        &up.url(),
        DAY0_MS,
    );
    let admin = gate.admin_url("/metrics");
    let sampler = tokio::spawn(async move {
        // floodgate's in-flight gauge, sampled while the jobs run (bounded: 2 s)
        let c = TestClient::new(); // the admin listener speaks HTTP/1.1
        let mut peak = 0u64;
        for _ in 0..200 {
            let m = String::from_utf8_lossy(&c.get(&admin).await.body).into_owned();
            if let Some(v) = m
                .lines()
                .find_map(|l| l.strip_prefix(r#"floodgate_jobs_in_flight{tier="t"} "#))
            {
                peak = peak.max(v.trim().parse().unwrap());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peak
    });
    let mut handles = Vec::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for i in 0..1_000 {
        let url = gate.url(&format!("/slow?ms={}", rand(20)));
        let give_up = Duration::from_millis(rand(60));
        let c = gate.client();
        handles.push(tokio::spawn(async move {
            let name = format!("j{i}");
            tokio::time::timeout(
                give_up,
                c.send("POST", &url, &[("x-api-key", "k"), ("x-job", &name)], "{}"),
            )
            .await
            .is_ok()
        }));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut completed = 0;
    for h in handles {
        completed += h.await.unwrap() as usize;
    }
    // A client that leaves mid-job frees its slot at once, while the upstream may still be
    // working on the abandoned request; so the cap is checked on floodgate's own count.
    let peak = sampler.await.unwrap();
    assert!(peak <= 5, "floodgate held {peak} slots at once");
    assert!(peak >= 1);
    // Everything drains: no job waits or runs any more.
    let mut drained = false;
    for _ in 0..100 {
        let m = String::from_utf8_lossy(
            &TestClient::new()
                .get(&gate.admin_url("/metrics"))
                .await
                .body,
        )
        .into_owned();
        if m.contains(r#"floodgate_jobs_in_flight{tier="t"} 0"#)
            && m.contains(r#"floodgate_jobs_queued{tier="t"} 0"#)
            && m.contains(r#"floodgate_pool_jobs_queued{upstream_accounts="upstream"} 0"#)
        {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        drained,
        "in-flight and queued return to 0 ({completed} of 1000 completed)"
    );
    // The full concurrency is usable again: 5 slow jobs start at once.
    let handles: Vec<_> = (0..5)
        .map(|i| spawn_job(&gate, "k", format!("after{i}"), 300))
        .collect();
    for h in handles {
        let a = h.await.unwrap();
        assert_eq!(a.status, 200);
        assert!(
            a.num("x-queue-wait-ms") < 150,
            "no slot leaked: waited {} ms",
            a.num("x-queue-wait-ms")
        );
    }
}

async fn a_small_tenant_is_not_starved_by_a_big_backlog_on_a_shared_pool(backend: Backend) {
    let up = Upstream::start().await;
    let config = r#"
        [[route]]
        method = "POST"
        path = "/slow"
        class = "job"
        [[jobs]]
        classes = ["job"]
        [tiers.shared]
        max_queue = 500
        upstream_accounts = ["pool-1"]
        [[upstream_account]]
        name = "pool-1"
        credential_header = "mj-api-secret"
        credential = "operator-secret"
        concurrency = 1
    "#;
    let gate = Gate::start_on(backend, config, &up.url(), DAY0_MS);
    let mut backlog = Vec::new();
    for i in 0..200 {
        backlog.push(spawn_job(&gate, "tenant-a", format!("a{i}"), 10));
    }
    gate.until_jobs(|_, waiting| waiting >= 50).await;
    let b = job(&gate.client(), &gate, "tenant-b", "b", 10).await;
    assert_eq!(b.status, 200);
    let waited = b.num("x-queue-wait-ms");
    assert!(
        waited < 100,
        "B's job started within about one slot's service time, waited {waited} ms"
    );
    for h in backlog {
        assert_eq!(h.await.unwrap().status, 200);
    }
    assert_eq!(up.max_in_flight_for("operator-secret"), 1);
}

async fn a_class_named_by_the_body_can_be_a_job_class(backend: Backend) {
    let up = Upstream::start().await;
    let cfg = r#"
        [[route]]
        method = "POST"
        path = "/slow"
        class = "plain"
        body_pointer = "/kind"
        [route.body_classes]
        generate = "job"
        [[jobs]]
        classes = ["job"]
        [tiers.t]
        concurrency = 1
    "#;
    let gate = Gate::start_on(backend, cfg, &up.url(), DAY0_MS);
    let send = |kind: &str| {
        let url = gate.url("/slow?ms=300");
        let body = format!(r#"{{"kind": "{kind}"}}"#);
        let client = gate.client();
        tokio::spawn(async move { client.send("POST", &url, &[("x-api-key", "k")], body).await })
    };
    let (first, second) = (send("generate"), send("generate"));
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (200, 200));
    let waits = [first.num("x-queue-wait-ms"), second.num("x-queue-wait-ms")];
    assert!(
        waits.iter().any(|&w| w >= 200),
        "one waited for the other: {waits:?}"
    );
    assert_eq!(up.max_in_flight(), 1, "concurrency 1 for the job class");
    let plain = send("describe").await.unwrap();
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("x-queue-wait-ms"), None, "not a job");
}

on_every_setup!(
    seed_scenario_concurrency_three_eight_jobs_fifo,
    full_queue_and_maximum_wait_answer_429_concurrency,
    jobs_the_queue_turns_away_consume_no_quota,
    queued_jobs_of_an_account_with_its_own_base_url_go_there,
    jobs_alternate_over_upstream_accounts_within_their_caps,
    an_upstream_account_answering_429_rests_and_the_other_takes_the_job,
    follow_up_jobs_go_to_the_upstream_account_of_their_task,
    task_slot_is_held_until_a_passing_get_task_shows_a_terminal_status,
    task_slot_frees_when_floodgate_polls_and_sees_the_task_done,
    task_slot_frees_at_the_maximum_job_time,
    a_thousand_jobs_with_random_disconnects_leak_no_slot,
    a_small_tenant_is_not_starved_by_a_big_backlog_on_a_shared_pool,
    a_class_named_by_the_body_can_be_a_job_class,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_account_credential_can_come_from_a_file() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("credential");
    std::fs::write(&secret, "secret-from-a-file\n").unwrap();
    let config = format!(
        r#"
        [[route]]
        method = "POST"
        path = "/slow"
        class = "job"
        [[jobs]]
        classes = ["job"]
        [tiers.pro]
        upstream_accounts = ["mounted"]
        [[upstream_account]]
        name = "mounted"
        credential_header = "mj-api-secret"
        credential_file = {secret:?}
        "#
    );
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let a = job(&gate.client(), &gate, "k", "j", 10).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        up.seen()[0].header("mj-api-secret"),
        Some("secret-from-a-file"),
        "read from the file, its newline left out"
    );
    let both = config.replace(
        "credential_file",
        "credential = \"inline\"\n        credential_file",
    );
    let overrides = floodgate::config::Overrides {
        upstream: Some(up.url()),
        ..Default::default()
    };
    let err = floodgate::config::Config::parse(&both, &overrides).unwrap_err();
    assert!(
        err.to_string().contains(
            "upstream_account[0].credential_file: give credential or credential_file, not both"
        ),
        "{err}"
    );
}

/// Three replicas on one Redis: a follow-up sent to a replica that did not run its task still
/// reaches the upstream account that did (each replica alone would pick round-robin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_sent_to_another_replica_reaches_the_upstream_account_of_its_task() {
    let redis = support::redis_server::RedisServer::start();
    let up = Upstream::start().await;
    let config = format!("{TWO_ACCOUNTS}{}", redis.store_section());
    let replicas: Vec<Gate> = (0..3)
        .map(|_| Gate::start(&config, &up.url(), DAY0_MS))
        .collect();
    let c = TestClient::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let t = create_task(&c, &replicas[0], "pro-key", "{}").await;
        let id = t.json()["result"].as_str().unwrap().to_owned();
        ids.push((
            id,
            t.header("x-floodgate-upstream-account").unwrap().to_owned(),
        ));
    }
    assert_ne!(ids[0].1, ids[1].1, "the two tasks ran on both accounts");
    for (id, _) in &ids {
        assert_eq!(end_task(&c, &up, &replicas[0], id).await.status, 200);
    }
    for (i, r) in replicas.iter().enumerate().skip(1) {
        for (id, ran_on) in ids.iter().rev() {
            let body = format!("{{\"taskId\": \"{id}\", \"action\": \"UPSCALE\"}}");
            let f = create_task(&c, r, "pro-key", &body).await;
            assert_eq!(
                f.header("x-floodgate-upstream-account"),
                Some(ran_on.as_str()),
                "replica {i}: the follow-up of {id}"
            );
            let next = f.json()["result"].as_str().unwrap().to_owned();
            end_task(&c, &up, r, &next).await;
        }
    }
}

/// Three replicas on one Redis, one upstream account with one slot: a big tenant's backlog
/// waits on two replicas, a small tenant's jobs arrive one by one on the third. Tenants take
/// turns across replicas, so each small job starts at most one big job after it arrives (each
/// replica ordering only its own queue, it would wait for whichever replica asked first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_tenant_takes_its_turn_against_a_big_backlog_on_other_replicas() {
    let redis = support::redis_server::RedisServer::start();
    let up = Upstream::start().await;
    let config = format!(
        r#"
        [[route]]
        method = "POST"
        path = "/slow"
        class = "job"
        [[jobs]]
        classes = ["job"]
        [tiers.pro]
        max_wait = "60s"
        upstream_accounts = ["a"]
        [[upstream_account]]
        name = "a"
        credential_header = "mj-api-secret"
        credential = "secret-a"
        concurrency = 1
        [accounts]
        default_tier = "pro"
        {}
        "#,
        redis.store_section()
    );
    let replicas: Vec<Gate> = (0..3)
        .map(|_| Gate::start(&config, &up.url(), DAY0_MS))
        .collect();
    let mut big = Vec::new();
    for r in &replicas[..2] {
        for i in 0..10 {
            big.push(spawn_job(r, "big-key", format!("big{i}"), 60));
        }
    }
    let backlog = support::eventually(Duration::from_secs(5), || async { up.count() >= 2 }).await;
    assert!(backlog, "the big tenant's jobs run");
    let c = TestClient::new();
    for k in 0..4 {
        let before = up.count();
        let name = format!("small{k}");
        let a = job(&c, &replicas[2], "small-key", &name, 10).await;
        assert_eq!(a.status, 200);
        let order: Vec<String> = up
            .seen()
            .iter()
            .map(|s| s.header("x-job").unwrap_or("").to_owned())
            .collect();
        let at = order.iter().position(|j| *j == name).unwrap();
        assert!(
            at - before <= 1,
            "{name} started after {} big jobs: {order:?}",
            at - before
        );
    }
    for h in big {
        assert_eq!(h.await.unwrap().status, 200);
    }
    assert_eq!(up.max_in_flight_for("secret-a"), 1);
}
