//! Replicas sharing state through a real Redis Cluster (three masters, a replica each): exact
//! quotas over accounts spread across the masters' slots, and a master killed mid-traffic — the
//! requests of its slots fail closed while the cluster fails over, then are decided again on
//! the promoted replica without a restart; accounts on the other masters are decided throughout
//! (the cluster runs with `cluster-require-full-coverage no`, as docs/operations/redis.md
//! recommends).

mod support;

use std::time::{Duration, Instant};

use support::redis_cluster::RedisCluster;
use support::{Gate, TestClient, Upstream, DAY0_MS};

fn config(cluster: &RedisCluster, per_minute: u32) -> String {
    let nodes: Vec<String> = cluster.nodes().iter().map(|n| format!("{n:?}")).collect();
    format!(
        r#"
        [store]
        type = "redis"
        cluster_nodes = [{}]
        timeout = "250ms"
        on_failure = "fail_closed"
        breaker_failures = 2
        breaker_cooldown = "200ms"
        [[route]]
        path = "/limited"
        class = "limited"
        [[tiers.t.limits]]
        classes = ["limited"]
        per_minute = {per_minute}
        "#,
        nodes.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_exactly_each_quota_across_the_masters() {
    let cluster = RedisCluster::start();
    let up = Upstream::start().await;
    let cfg = config(&cluster, 10);
    let gates: Vec<Gate> = (0..3)
        .map(|_| Gate::start(&cfg, &up.url(), DAY0_MS))
        .collect();
    let accounts = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let mut masters: Vec<u16> = accounts
        .iter()
        .map(|a| {
            let id = floodgate::identity::AccountId::from_key(a.as_bytes());
            cluster.master_of(&floodgate::store::redis::account_key(id))
        })
        .collect();
    masters.sort_unstable();
    masters.dedup();
    assert!(masters.len() >= 2, "the accounts live on several masters");
    let mut tasks = Vec::new();
    for (i, account) in accounts
        .iter()
        .copied()
        .cycle()
        .take(accounts.len() * 30)
        .enumerate()
    {
        let url = gates[i % 3].url("/limited");
        tasks.push(tokio::spawn(async move {
            (account, TestClient::new().post(&url, account).await)
        }));
    }
    let mut admitted = std::collections::HashMap::new();
    for t in tasks {
        let (account, a) = t.await.unwrap();
        match a.status.as_u16() {
            200 => *admitted.entry(account).or_insert(0) += 1,
            429 => assert_eq!(a.header("x-ratelimit-type"), Some("minute")),
            other => panic!("{account}: {other} {:?}", a.body),
        }
    }
    for account in accounts {
        assert_eq!(
            admitted.get(&account),
            Some(&10),
            "{account}: exactly its quota"
        );
    }
    assert_eq!(up.count(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_closed_then_its_replica_decides() {
    let mut cluster = RedisCluster::start();
    let up = Upstream::start().await;
    let gate = Gate::start(&config(&cluster, 1000), &up.url(), DAY0_MS);
    let c = TestClient::new();
    let account = "failover";
    for left in [999, 998, 997] {
        let a = c.post(&gate.url("/limited"), account).await;
        assert_eq!(
            (a.status.as_u16(), a.num("x-ratelimit-remaining")),
            (200, left)
        );
    }
    let key_of = |account: &str| {
        let id = floodgate::identity::AccountId::from_key(account.as_bytes());
        floodgate::store::redis::account_key(id)
    };
    let master = cluster.master_of(&key_of(account));
    let elsewhere = (0..)
        .map(|n| format!("elsewhere-{n}"))
        .find(|other| cluster.master_of(&key_of(other)) != master)
        .unwrap();
    // An account on a surviving master, sent every 30 ms from the kill until the recovery.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let meanwhile = tokio::spawn({
        let (stop, url, c) = (stop.clone(), gate.url("/limited"), c.clone());
        async move {
            let mut statuses = Vec::new();
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(40)
            {
                statuses.push(c.post(&url, &elsewhere).await.status.as_u16());
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            statuses
        }
    });
    cluster.kill(master);
    let killed = Instant::now();
    let mut statuses = Vec::new();
    let recovered = loop {
        let a = c.post(&gate.url("/limited"), account).await;
        statuses.push(a.status.as_u16());
        if a.status == 200 {
            break Some(a);
        }
        assert_eq!(a.status, 503, "fail_closed while the slot has no master");
        if killed.elapsed() > Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = killed.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let elsewhere_statuses = meanwhile.await.unwrap();
    let a = recovered.unwrap_or_else(|| panic!("no recovery in 30 s: {statuses:?}"));
    eprintln!("failover: an account on another master meanwhile: {elsewhere_statuses:?}");
    assert!(
        elsewhere_statuses.iter().all(|s| *s == 200),
        "an account on a surviving master is decided throughout the failover: \
         {elsewhere_statuses:?}"
    );
    assert!(
        a.num("x-ratelimit-remaining") <= 997,
        "the promoted replica kept the count (asynchronous replication may lose the last \
         writes, never give more back than it had)"
    );
    eprintln!(
        "failover: first decision again after {took:?}; {} requests refused meanwhile",
        statuses.len() - 1
    );
    cluster.wait_ok(Duration::from_secs(10));
}
