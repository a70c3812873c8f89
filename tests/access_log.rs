//! The access log over real HTTP: one line per request with what floodgate decided — forwarded,
//! limited (and by which limit), refused, failed — the normalised path, class, tier, account
//! hash (never the key), status, bytes, upstream time and queue wait; JSON and the Common Log
//! Format; off by default.

mod support;

use std::path::Path;
use support::{Gate, TestClient, Upstream, DAY0_MS};

/// Routes, a limit of 2 a minute on `/limited`, jobs on `/slow` one at a time, and the log.
fn config(log: &Path, format: &str) -> String {
    format!(
        r#"
        [access_log]
        path = {log:?}
        format = "{format}"
        [identity]
        anonymous = "client_ip"
        [[route]]
        path = "/limited"
        class = "limited"
        [[route]]
        method = "POST"
        path = "/slow"
        class = "job"
        [[jobs]]
        classes = ["job"]
        [tiers.t]
        concurrency = 1
        [[tiers.t.limits]]
        classes = ["limited"]
        per_minute = 2
        "#
    )
}

/// The log's lines, once floodgate has stopped (its lines are then written out).
fn lines(gate: Gate, log: &Path) -> Vec<String> {
    drop(gate);
    let text = std::fs::read_to_string(log).unwrap();
    text.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_json_line_saying_what_floodgate_decided() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gate = Gate::start(&config(&log, "json"), &up.url(), DAY0_MS + 1_000);
    let c = TestClient::new();
    let key = "the-secret-api-key";
    let mut refusal = None;
    for _ in 0..3 {
        let url = gate.url("/Limited/");
        refusal = Some(c.send("GET", &url, &[("x-api-key", key)], "").await);
    }
    let refusal = refusal.unwrap();
    assert_eq!(refusal.status, 429);
    let download = c.get(&gate.url("/download?bytes=5000")).await;
    assert_eq!(download.body.len(), 5000);
    assert_eq!(c.get(&gate.url("/a%00b")).await.status, 400);
    let (first, second) = (
        {
            let url = gate.url("/slow?ms=300");
            tokio::spawn(async move { TestClient::new().post(&url, key).await })
        },
        {
            gate.until_jobs(|running, _| running == 1).await;
            let url = gate.url("/slow?ms=10");
            tokio::spawn(async move { TestClient::new().post(&url, key).await })
        },
    );
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);

    let lines = lines(gate, &log);
    assert_eq!(lines.len(), 7, "one line per request: {lines:#?}");
    let all = lines.join("\n");
    assert!(!all.contains(key), "the key never appears");
    let json: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Each worker writes its own lines, so the file's order is not the requests': each record
    // is found by what it is.
    let find = |what: &str, is: &dyn Fn(&serde_json::Value) -> bool| {
        let found: Vec<&serde_json::Value> = json.iter().filter(|j| is(j)).collect();
        assert!(!found.is_empty(), "no line for {what}: {lines:#?}");
        found
    };
    let admitted = find("an admitted request", &|j| {
        j["status"] == 200 && j["class"] == "limited"
    })[0];
    let limited = find("the 429", &|j| j["status"] == 429)[0];
    assert_eq!(admitted["path"], "/limited", "normalised");
    assert_eq!(admitted["method"], "GET");
    assert_eq!(admitted["protocol"], "HTTP/1.1");
    assert_eq!(admitted["class"], "limited");
    assert_eq!(admitted["tier"], "t");
    assert_eq!(admitted["decision"], "forwarded");
    assert_eq!(admitted["status"], 200);
    assert!(admitted["upstream_ms"].as_f64().unwrap() > 0.0);
    assert!(admitted["time"]
        .as_str()
        .unwrap()
        .starts_with("2026-11-23T00:00:01"));
    let account = admitted["account"].as_str().unwrap();
    assert_eq!(account.len(), 8, "the hash prefix the status page shows");
    assert_eq!(limited["decision"], "limited");
    assert_eq!(limited["limit"], "minute");
    assert_eq!(limited["status"], 429);
    assert_eq!(limited["upstream_ms"], serde_json::Value::Null);
    assert_eq!(limited["bytes"], refusal.body.len(), "the 429's JSON body");
    assert_eq!(limited["account"], account);

    let download = find("the download", &|j| j["path"] == "/download")[0];
    assert_eq!(download["bytes"], 5000);
    assert_eq!(download["decision"], "forwarded");
    assert!(
        download["account"].is_string(),
        "anonymous: counted per address"
    );
    let refused = find("the 400", &|j| j["status"] == 400)[0];
    assert_eq!(
        (refused["status"].as_u64(), refused["decision"].as_str()),
        (Some(400), Some("refused"))
    );
    assert_eq!(
        refused["class"],
        serde_json::Value::Null,
        "never classified"
    );
    let jobs = find("the jobs", &|j| j["path"] == "/slow");
    assert_eq!(jobs.len(), 2, "{lines:#?}");
    let waits: Vec<u64> = jobs
        .iter()
        .map(|j| j["queue_ms"].as_u64().unwrap())
        .collect();
    assert!(waits.contains(&0), "{waits:?}");
    assert!(
        waits.iter().any(|&w| w >= 200),
        "the second job waited for the first: {waits:?}"
    );
    assert!(jobs.iter().all(|j| j["class"] == "job"));
    let slowest = jobs.iter().map(|j| j["duration_ms"].as_f64().unwrap());
    assert!(slowest.fold(0.0, f64::max) >= 290.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_common_format_and_a_failed_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // nothing listens there any more
    let gate = Gate::start(
        &config(&log, "common"),
        &format!("http://{closed}"),
        DAY0_MS,
    );
    let a = TestClient::new()
        .send("GET", &gate.url("/limited"), &[("x-api-key", "k")], "")
        .await;
    assert_eq!(a.status, 502);
    let lines = lines(gate, &log);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(line.starts_with("127.0.0.1 - "), "{line}");
    assert!(
        line.contains("[23/Nov/2026:00:00:00 +0000] \"GET /limited HTTP/1.1\" 502 "),
        "{line}"
    );
    assert!(
        line.contains(" class=limited tier=t decision=failed limit=- upstream_ms=- queue_ms=- "),
        "{line}"
    );
}

#[test]
fn off_without_the_table_and_a_bad_format_is_named() {
    let overrides = floodgate::config::Overrides {
        upstream: Some("http://127.0.0.1:9".into()),
        ..Default::default()
    };
    let parse = |text: &str| floodgate::config::Config::parse(text, &overrides);
    assert_eq!(parse("").unwrap().access_log, None, "off by default");
    let err = parse("[access_log]\nformat = \"xml\"\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("access_log.format: \"xml\": expected \"json\" or \"common\""),
        "{err}"
    );
}
