//! The accounts API over real sockets: a plan changed, limits and job caps set, an account
//! blocked and unblocked, windows reset and refunded, every change audited — on the memory
//! store and on a real Redis (`name::memory`, `name::redis`); two replicas on one Redis seeing
//! one change within a second; changes kept across a restart (kill -9 included) and a reload
//! with real signals. Loopback only; every wait is bounded.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::process::Process;
use support::redis_server::RedisServer;
use support::{eventually, metric, metrics, Answer, Backend, Gate, TestClient, Upstream, DAY0_MS};

/// Two plans; `/gen` in class `gen`, `/other` in `other`.
const CONFIG: &str = r#"
[identity]
default_tier = "free"

[[route]]
path = "/gen"
class = "gen"

[[route]]
path = "/other"
class = "other"

[[tiers.free.limits]]
classes = ["gen"]
per_minute = 2
per_day = 10

[[tiers.pro.limits]]
classes = ["gen"]
per_minute = 5
per_day = 100
"#;

async fn call(c: &TestClient, method: &str, url: &str, body: Value) -> Answer {
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    c.send(method, url, &[("content-type", "application/json")], text)
        .await
}

/// The account `/accounts/...` path of an API key.
fn by_key(key: &str, rest: &str) -> String {
    format!("/accounts/by-key{rest}?key={key}")
}

fn gen(gate: &Gate) -> String {
    gate.url("/gen")
}

async fn a_plan_change_applies_to_the_next_request(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, CONFIG, &up.url(), DAY0_MS);
    let c = gate.client();
    let admin = TestClient::new();
    for _ in 0..2 {
        assert_eq!(c.post(&gen(&gate), "alice").await.status, 200);
    }
    assert_eq!(c.post(&gen(&gate), "alice").await.status, 429);

    let put = call(
        &admin,
        "PUT",
        &gate.admin_url(&by_key("alice", "")),
        json!({"tier": "pro"}),
    )
    .await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    let v = put.json();
    assert_eq!(
        (v["tier"].as_str(), v["tier_from"].as_str()),
        (Some("pro"), Some("api"))
    );
    assert_eq!(v["changes"][0]["action"], "set");
    assert_eq!(v["changes"][0]["after"]["tier"], "pro");
    assert!(
        !put.body.windows(5).any(|w| w == b"alice"),
        "the key is never shown"
    );

    // The open minute window continues under the new plan: 2 used (the 429 counted nothing).
    let a = c.post(&gen(&gate), "alice").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        (a.num("x-ratelimit-limit"), a.num("x-ratelimit-remaining")),
        (5, 2)
    );
    assert_eq!(
        c.post(&gen(&gate), "bob").await.num("x-ratelimit-limit"),
        2,
        "bob is on free"
    );

    // By its id as the usage view shows it (8 hex digits), the same account.
    let id = v["account"].as_str().unwrap().to_owned();
    let got = admin
        .get(&gate.admin_url(&format!("/accounts/{}", &id[..8])))
        .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(got.json()["account"], id.as_str());
    let minute = got.json()["usage"]["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["type"] == "minute")
        .cloned()
        .unwrap();
    assert_eq!(
        (minute["limit"].as_u64(), minute["used"].as_u64()),
        (Some(5), Some(3))
    );

    let del = call(
        &admin,
        "DELETE",
        &gate.admin_url(&format!("/accounts/{id}")),
        Value::Null,
    )
    .await;
    assert_eq!(del.status, 200);
    assert_eq!(del.json()["tier"], "free");
    assert_eq!(del.json()["tier_from"], "config");
    assert_eq!(del.json()["changes"][0]["action"], "clear");
    assert_eq!(
        c.post(&gen(&gate), "alice").await.status,
        429,
        "back on free, 3 of 2 used"
    );
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(&m, r#"floodgate_admin_changes_total{action="set"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"floodgate_admin_changes_total{action="clear"}"#),
        1.0
    );
}

async fn own_limits_and_job_caps_are_checked_like_the_config(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, CONFIG, &up.url(), DAY0_MS);
    let (c, admin) = (gate.client(), TestClient::new());
    let url = gate.admin_url(&by_key("carol", ""));
    let limits = json!({"limits": [{"classes": ["gen"], "per_minute": 7}, {"classes": ["other"], "per_hour": 1}]});
    let a = call(&admin, "PUT", &url, limits).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let first = c.post(&gen(&gate), "carol").await;
    assert_eq!(
        (
            first.num("x-ratelimit-limit"),
            first.num("x-ratelimit-remaining")
        ),
        (7, 6)
    );
    assert_eq!(
        first.num("x-ratelimit-daily-limit"),
        10,
        "the tier's daily limit stays"
    );
    assert_eq!(c.post(&gate.url("/other"), "carol").await.status, 200);
    let other = c.post(&gate.url("/other"), "carol").await;
    assert_eq!(
        (other.status.as_u16(), other.header("x-ratelimit-type")),
        (429, Some("hour"))
    );

    for (body, status, code, field) in [
        (json!({"tier": "gold"}), 422, "unknown_tier", "tier"),
        (
            json!({"limits": [{"classes": ["gen"], "per_minute": 0}]}),
            422,
            "invalid_field",
            "limits[0].per_minute",
        ),
        (
            json!({"limits": [{"classes": ["nope"], "per_minute": 1}]}),
            422,
            "invalid_field",
            "limits[0].classes",
        ),
        (
            json!({"limits": [{"classes": ["gen"], "per_mnute": 1}]}),
            422,
            "invalid_field",
            "limits[0]",
        ),
        (
            json!({"concurrency": 0}),
            422,
            "invalid_field",
            "concurrency",
        ),
        (
            json!({"blocked": {"reason": "x", "until": "soon"}}),
            422,
            "invalid_field",
            "blocked.until",
        ),
        (json!({"plan": "pro"}), 422, "invalid_field", "plan"),
        (json!({}), 422, "invalid_field", "(body)"),
    ] {
        let a = call(&admin, "PUT", &url, body.clone()).await;
        assert_eq!(a.status, status, "{body}: {:?}", a.body);
        let v = a.json();
        assert_eq!(v["code"], code, "{body}: {v}");
        assert!(
            v["field"].as_str().unwrap().starts_with(field),
            "{body}: {v}"
        );
        assert!(
            v["message"].as_str().unwrap().contains(field),
            "{body}: {v}"
        );
    }
    let by_query = admin.get(&gate.admin_url("/accounts?key=carol")).await;
    assert_eq!(
        by_query.json()["account"],
        admin.get(&url).await.json()["account"]
    );
    let bad = admin
        .send("POST", &gate.admin_url(&by_key("carol", "/reset")), &[], "")
        .await;
    assert_eq!(
        (bad.status.as_u16(), bad.json()["field"].as_str()),
        (422, Some("windows"))
    );
    let bad = admin.send("PUT", &url, &[], "{not json").await;
    assert_eq!(
        (bad.status.as_u16(), bad.json()["code"].as_str()),
        (400, Some("invalid_json"))
    );
    for (method, path, status, code) in [
        ("GET", "/accounts/0123", 400, "invalid_account"),
        ("GET", "/accounts/zzzzzzzzzz", 400, "invalid_account"),
        ("GET", "/accounts/0123456789", 404, "unknown_account"),
        (
            "POST",
            "/accounts/0123456789abcdef0123456789abcdef",
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/accounts/0123456789abcdef0123456789abcdef/nope",
            404,
            "not_found",
        ),
        ("GET", "/accounts/by-key", 400, "missing_key"),
        (
            "GET",
            "/accounts/0123456789?key=carol",
            400,
            "invalid_account",
        ),
        ("GET", "/accounts?sort=size", 422, "invalid_field"),
    ] {
        let a = admin.send(method, &gate.admin_url(path), &[], "").await;
        assert_eq!(a.status, status, "{method} {path}: {:?}", a.body);
        assert_eq!(a.json()["code"], code, "{method} {path}");
    }
    // Nothing the refused changes asked for applied.
    let v = admin
        .get(&gate.admin_url(&by_key("carol", "")))
        .await
        .json();
    assert_eq!(
        (v["tier"].as_str(), v["overrides"]["concurrency"].as_u64()),
        (Some("free"), None)
    );
    assert_eq!(v["changes"].as_array().unwrap().len(), 1);
}

async fn a_block_refuses_every_request_until_it_ends(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, CONFIG, &up.url(), DAY0_MS);
    let (c, admin) = (gate.client(), TestClient::new());
    let until = floodgate::accounts::format_time(DAY0_MS + 3_600_000);
    let block = json!({"blocked": {"reason": "invoice overdue", "until": until}});
    let a = call(&admin, "PUT", &gate.admin_url(&by_key("dave", "")), block).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.json()["changes"][0]["action"], "block");
    assert_eq!(a.json()["blocked"]["active"], true);
    for path in ["/gen", "/other"] {
        let r = c.post(&gate.url(path), "dave").await;
        assert_eq!(r.status, 403, "{path}");
        let v = r.json();
        assert_eq!(v["error"], "account_blocked");
        assert_eq!(v["reason"], "invoice overdue");
        assert!(v["message"].as_str().unwrap().contains("invoice overdue"));
        assert_eq!(r.header("retry-after"), Some("3600"));
    }
    // A GET on the plain fast path is refused too.
    let get = c
        .send("GET", &gate.url("/other"), &[("x-api-key", "dave")], "")
        .await;
    assert_eq!(get.status, 403);
    assert_eq!(
        c.post(&gen(&gate), "erin").await.status,
        200,
        "others go on"
    );
    assert_eq!(up.count(), 1, "no blocked request reached the upstream");

    gate.clock.advance_ms(3_600_000);
    assert_eq!(
        c.post(&gen(&gate), "dave").await.status,
        200,
        "the block ended"
    );

    let forever = json!({"blocked": {"reason": "fraud"}});
    call(&admin, "PUT", &gate.admin_url(&by_key("dave", "")), forever).await;
    let r = c.post(&gen(&gate), "dave").await;
    assert_eq!((r.status.as_u16(), r.header("retry-after")), (403, None));
    let lift = call(
        &admin,
        "PUT",
        &gate.admin_url(&by_key("dave", "")),
        json!({"blocked": null}),
    )
    .await;
    assert_eq!(lift.json()["changes"][0]["action"], "unblock");
    assert_eq!(c.post(&gen(&gate), "dave").await.status, 200);
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(&m, r#"floodgate_admin_changes_total{action="block"}"#),
        2.0
    );
    assert_eq!(
        metric(&m, r#"floodgate_admin_changes_total{action="unblock"}"#),
        1.0
    );
    let status = admin.get(&gate.admin_url("/status.json")).await.json();
    assert_eq!(
        status["changed_accounts"].as_array().unwrap().len(),
        0,
        "{status}"
    );
}

async fn a_reset_and_a_grant_give_units_back(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, CONFIG, &up.url(), DAY0_MS);
    let (c, admin) = (gate.client(), TestClient::new());
    for _ in 0..2 {
        c.post(&gen(&gate), "frank").await;
    }
    assert_eq!(c.post(&gen(&gate), "frank").await.status, 429);
    let grant = json!({"class": "gen", "window": "minute", "units": 1});
    let g = call(
        &admin,
        "POST",
        &gate.admin_url(&by_key("frank", "/grant")),
        grant,
    )
    .await;
    assert_eq!(g.status, 200, "{:?}", g.body);
    assert_eq!(
        (g.json()["used_before"].as_u64(), g.json()["used"].as_u64()),
        (Some(2), Some(1))
    );
    let a = c.post(&gen(&gate), "frank").await;
    assert_eq!(
        (a.status.as_u16(), a.num("x-ratelimit-remaining")),
        (200, 0)
    );
    assert_eq!(
        a.num("x-ratelimit-daily-remaining"),
        7,
        "the grant was the minute's only"
    );
    let never_below_zero = json!({"class": "gen", "window": "daily", "units": 50});
    let g = call(
        &admin,
        "POST",
        &gate.admin_url(&by_key("frank", "/grant")),
        never_below_zero,
    )
    .await;
    assert_eq!(g.json()["used"], 0);
    let g = call(
        &admin,
        "POST",
        &gate.admin_url(&by_key("frank", "/grant")),
        json!({"class": "other", "window": "minute", "units": 1}),
    )
    .await;
    assert_eq!(
        (g.status.as_u16(), g.json()["code"].as_str()),
        (422, Some("no_such_window"))
    );

    let r = call(
        &admin,
        "POST",
        &gate.admin_url(&by_key("frank", "/reset")),
        json!({"windows": ["minute"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["reset"]["gen:minute"], 2);
    let a = c.post(&gen(&gate), "frank").await;
    assert_eq!(
        (
            a.num("x-ratelimit-remaining"),
            a.num("x-ratelimit-daily-remaining")
        ),
        (1, 9)
    );
    let r = call(
        &admin,
        "POST",
        &gate.admin_url(&by_key("frank", "/reset")),
        json!({"windows": "all", "penalties": true}),
    )
    .await;
    assert_eq!(r.json()["reset"]["gen:daily"], 1);
    let a = c.post(&gen(&gate), "frank").await;
    assert_eq!(
        (
            a.num("x-ratelimit-remaining"),
            a.num("x-ratelimit-daily-remaining")
        ),
        (1, 9)
    );
    let v = admin
        .get(&gate.admin_url(&by_key("frank", "")))
        .await
        .json();
    let actions: Vec<&str> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["reset", "reset", "grant", "grant"],
        "newest first"
    );
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(&m, r#"floodgate_admin_changes_total{action="grant"}"#),
        2.0
    );
    assert_eq!(
        metric(&m, r#"floodgate_admin_changes_total{action="reset"}"#),
        2.0
    );
}

async fn the_list_shows_who_is_nearest_and_who_was_changed(backend: Backend) {
    let up = Upstream::start().await;
    let gate = Gate::start_on(backend, CONFIG, &up.url(), DAY0_MS);
    let (c, admin) = (gate.client(), TestClient::new());
    c.post(&gen(&gate), "gina").await;
    c.post(&gen(&gate), "gina").await;
    c.post(&gen(&gate), "hank").await;
    call(
        &admin,
        "PUT",
        &gate.admin_url(&by_key("hank", "")),
        json!({"concurrency": 2, "tier": "pro"}),
    )
    .await;
    let page = admin
        .get(&gate.admin_url("/accounts?sort=usage&limit=1"))
        .await
        .json();
    assert_eq!(page["total"], 2, "{page}");
    assert_eq!(
        page["accounts"][0]["fraction"], 1.0,
        "gina used her minute: {page}"
    );
    assert_eq!(page["next_offset"], 1);
    let rest = admin
        .get(&gate.admin_url("/accounts?sort=usage&limit=1&offset=1"))
        .await
        .json();
    assert_eq!(rest["accounts"][0]["changed"], true, "{rest}");
    assert_eq!(rest["next_offset"], Value::Null);
    let changed = admin
        .get(&gate.admin_url("/accounts?sort=changed"))
        .await
        .json();
    assert_eq!(changed["total"], 1);
    assert_eq!(changed["accounts"][0]["tier"], "pro");
    assert_eq!(changed["accounts"][0]["concurrency"], 2);
    let status = admin.get(&gate.admin_url("/status.json")).await.json();
    assert_eq!(
        status["changed_accounts"][0]["tier_from"], "api",
        "{status}"
    );
}

on_every_setup!(
    a_plan_change_applies_to_the_next_request,
    own_limits_and_job_caps_are_checked_like_the_config,
    a_block_refuses_every_request_until_it_ends,
    a_reset_and_a_grant_give_units_back,
    the_list_shows_who_is_nearest_and_who_was_changed,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accounts_api_needs_the_admin_token() {
    let up = Upstream::start().await;
    let config = format!("[server]\nadmin_token = \"s3cret-token\"\n{CONFIG}");
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let admin = TestClient::new();
    let url = gate.admin_url(&by_key("ivy", ""));
    let a = call(&admin, "PUT", &url, json!({"tier": "pro"})).await;
    assert_eq!(a.status, 401);
    let a = admin
        .send(
            "PUT",
            &url,
            &[("authorization", "Bearer s3cret-token")],
            r#"{"tier": "pro"}"#,
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.json()["changes"][0]["who"]
            .as_str()
            .unwrap()
            .split(':')
            .next(),
        Some("127.0.0.1")
    );
}

/// Two replicas on one Redis: a change made through one applies on the other within a second,
/// and a replica started later reads it before its first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_redis_apply_a_change_within_a_second() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let config = format!("{CONFIG}{}", redis.store_section());
    let one = Gate::start(&config, &up.url(), DAY0_MS);
    let two = Gate::start(&config, &up.url(), DAY0_MS);
    let (c, admin) = (TestClient::new(), TestClient::new());
    assert_eq!(c.post(&two.url("/gen"), "jack").await.status, 200);
    let block = json!({"blocked": {"reason": "chargeback"}});
    let started = std::time::Instant::now();
    let a = call(&admin, "PUT", &one.admin_url(&by_key("jack", "")), block).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let seen = eventually(Duration::from_secs(1), || async {
        c.post(&two.url("/gen"), "jack").await.status == 403
    })
    .await;
    assert!(
        seen,
        "the other replica still admits after {:?}",
        started.elapsed()
    );
    let plan = json!({"tier": "pro", "blocked": null});
    call(&admin, "PUT", &two.admin_url(&by_key("jack", "")), plan).await;
    let seen = eventually(Duration::from_secs(1), || async {
        let a = c.post(&one.url("/gen"), "jack").await;
        a.status == 200 && a.num("x-ratelimit-limit") == 5
    })
    .await;
    assert!(
        seen,
        "the first replica did not take the plan from the second"
    );
    let v = admin.get(&one.admin_url(&by_key("jack", ""))).await.json();
    assert_eq!(
        v["changes"].as_array().unwrap().len(),
        2,
        "one history in Redis: {v}"
    );

    // Two replicas change one account at once, each from what it last read: neither change
    // undoes the other (each write is a compare-and-set on the stored record).
    let (url_one, url_two) = (
        one.admin_url(&by_key("jack", "")),
        two.admin_url(&by_key("jack", "")),
    );
    let (a, b) = tokio::join!(
        call(&admin, "PUT", &url_one, json!({"concurrency": 3})),
        call(&admin, "PUT", &url_two, json!({"max_queue": 7})),
    );
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
    let both = eventually(Duration::from_secs(1), || async {
        let v = admin.get(&one.admin_url(&by_key("jack", ""))).await.json();
        v["overrides"]["concurrency"] == 3 && v["overrides"]["max_queue"] == 7
    })
    .await;
    assert!(both, "one change undid the other");

    drop(one);
    let three = Gate::start(&config, &up.url(), DAY0_MS);
    let a = c.post(&three.url("/gen"), "jack").await;
    assert_eq!(
        a.num("x-ratelimit-limit"),
        5,
        "a new replica starts with the change"
    );
}

/// The process's first audit line about `key`'s account.
fn first_audit_line(p: &Process, key: &str) -> Option<Value> {
    let id = format!(
        "{:032x}",
        floodgate::identity::AccountId::from_key(key.as_bytes()).0
    );
    let line = p.log_line("account changed")?;
    (line["fields"]["account"] == id.as_str()).then_some(line)
}

fn write_config(dir: &std::path::Path, tiers: &str) -> std::path::PathBuf {
    let text = format!(
        "[server]\nadmin = \"127.0.0.1:0\"\n[state]\nfile = \"{}\"\n\
         [identity]\ndefault_tier = \"free\"\n\
         [[route]]\npath = \"/gen\"\nclass = \"gen\"\n{tiers}",
        dir.join("state.bin").display()
    );
    let path = dir.join("floodgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const TIERS: &str = "[[tiers.free.limits]]\nclasses = [\"gen\"]\nper_minute = 2\n\
    [[tiers.pro.limits]]\nclasses = [\"gen\"]\nper_minute = 5\n";

/// The real binary with a state file: a change survives kill -9 (it is on disk before the API
/// answers) and a restart; a reload (SIGHUP) that removes its tier drops it with a warning
/// and serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_survive_kill_9_and_a_reload_drops_what_the_config_lost() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let config = write_config(dir.path(), TIERS);
    let mut first = Process::start(&config, &up.url()).await;
    let admin = TestClient::new();
    let a = call(
        &admin,
        "PUT",
        &first.admin_url(&by_key("kim", "")),
        json!({"tier": "pro"}),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let block = json!({"blocked": {"reason": "abuse"}});
    call(&admin, "PUT", &first.admin_url(&by_key("lee", "")), block).await;
    first.kill_hard().await;

    let mut second = Process::start(&config, &up.url()).await;
    let c = TestClient::new();
    assert_eq!(
        c.post(&second.url("/gen"), "kim")
            .await
            .num("x-ratelimit-limit"),
        5
    );
    assert_eq!(c.post(&second.url("/gen"), "lee").await.status, 403);
    let audit = first_audit_line(&second, "kim");
    assert!(audit.is_none(), "nothing was changed on the second run yet");
    let grant = json!({"class": "gen", "window": "minute", "units": 1});
    call(
        &admin,
        "POST",
        &second.admin_url(&by_key("kim", "/grant")),
        grant,
    )
    .await;
    let audit = first_audit_line(&second, "kim").expect("an audit line");
    assert_eq!(audit["fields"]["action"], "grant", "{audit}");
    assert!(
        audit["fields"]["who"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{audit}"
    );
    assert!(
        audit["fields"]["before"]
            .as_str()
            .unwrap()
            .contains("gen:minute"),
        "{audit}"
    );
    assert_eq!(audit["target"], "floodgate::audit");

    write_config(
        dir.path(),
        "[[tiers.free.limits]]\nclasses = [\"gen\"]\nper_minute = 2\n",
    );
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(["check", "--upstream", "http://127.0.0.1:9", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        check.status.success(),
        "a dropped change never fails the config: {said}"
    );
    let kim = format!(
        "{:032x}",
        floodgate::identity::AccountId::from_key(b"kim").0
    );
    assert!(
        said.contains(&format!(
            "warning: account {kim}: its runtime change is dropped: tier"
        )),
        "{said}"
    );
    assert_eq!(
        said.matches("warning:").count(),
        1,
        "lee's block stays: {said}"
    );
    second.signal("HUP");
    let dropped = eventually(Duration::from_secs(5), || async {
        c.post(&second.url("/gen"), "kim")
            .await
            .num("x-ratelimit-limit")
            == 2
    })
    .await;
    assert!(
        dropped,
        "kim's plan is gone with its tier:\n{}",
        second.stderr()
    );
    assert!(
        second.stderr().contains("runtime change is dropped"),
        "{}",
        second.stderr()
    );
    assert_eq!(
        c.post(&second.url("/gen"), "lee").await.status,
        403,
        "lee's block stays"
    );
    second.terminate().await;
}

/// `floodgate accounts …` against a running floodgate: address and token from the
/// environment, the answer on stdout, a refused change on stderr with a failing status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accounts_command_drives_the_api() {
    let up = Upstream::start().await;
    let config = format!("[server]\nadmin_token = \"cli-token-1\"\n{CONFIG}");
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "cli-token-1\n").unwrap();
    let admin = gate.admin.to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .arg("accounts")
            .args(args)
            .env("FLOODGATE_ADMIN", &admin)
            .env("FLOODGATE_ADMIN_TOKEN_FILE", &token_file)
            .env_remove("FLOODGATE_CONFIG")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run floodgate accounts");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let c = TestClient::new();
    c.post(&gen(&gate), "mia").await;

    let (ok, out, err) = run(&["set", "--key", "mia", "--tier", "pro", "--concurrency", "2"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["tier"].as_str(), v["overrides"]["concurrency"].as_u64()),
        (Some("pro"), Some(2))
    );
    let id = v["account"].as_str().unwrap().to_owned();
    assert_eq!(c.post(&gen(&gate), "mia").await.num("x-ratelimit-limit"), 5);

    let (ok, _, err) = run(&[
        "block",
        &id[..8],
        "--reason",
        "card declined",
        "--until",
        "2099-01-01T00:00:00Z",
    ]);
    assert!(ok, "{err}");
    assert_eq!(c.post(&gen(&gate), "mia").await.status, 403);
    let (ok, _, err) = run(&["unblock", &id]);
    assert!(ok, "{err}");
    assert_eq!(c.post(&gen(&gate), "mia").await.status, 200);

    let (ok, out, err) = run(&[
        "grant", &id, "--class", "gen", "--window", "minute", "--units", "1",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["used_before"],
        3
    );
    let (ok, out, _) = run(&["reset", &id, "--windows", "minute,daily"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["reset"]["gen:daily"],
        3
    );
    let (ok, out, _) = run(&["list", "--sort", "changed"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["total"], 1);
    let (ok, out, _) = run(&["get", &id]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["changes"]
            .as_array()
            .unwrap()
            .len(),
        5 // set, block, unblock, grant, reset
    );

    let (ok, out, err) = run(&["set", &id, "--tier", "gold"]);
    assert!(!ok, "{out}");
    assert!(err.contains("unknown_tier") && err.contains("422"), "{err}");
    let (ok, _, _) = run(&["clear", &id]);
    assert!(ok);
    assert_eq!(c.post(&gen(&gate), "mia").await.num("x-ratelimit-limit"), 2);

    std::fs::write(&token_file, "wrong").unwrap();
    let (ok, _, err) = run(&["get", &id]);
    assert!(!ok && err.contains("401"), "{err}");
}

/// An 8-digit prefix two known accounts share is ambiguous (409); a body over 64 KiB is
/// refused (413) before it is read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_prefix_and_an_oversized_body_are_refused() {
    use floodgate::identity::AccountId;
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let (c, admin) = (TestClient::new(), TestClient::new());
    // Two keys whose ids share their first 32 bits (a birthday search, bounded).
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0..2_000_000u32)
        .find_map(|i| {
            let key = format!("k{i}");
            let prefix = AccountId::from_key(key.as_bytes()).prefix();
            seen.insert(prefix, key.clone()).map(|other| (other, key))
        })
        .expect("two keys share a prefix");
    c.post(&gen(&gate), &a).await;
    c.post(&gen(&gate), &b).await;
    let prefix = AccountId::from_key(a.as_bytes()).short();
    let got = admin
        .get(&gate.admin_url(&format!("/accounts/{prefix}")))
        .await;
    assert_eq!(
        (got.status.as_u16(), got.json()["code"].as_str()),
        (409, Some("ambiguous_account"))
    );
    let full = format!("{:032x}", AccountId::from_key(a.as_bytes()).0);
    let longer = admin
        .get(&gate.admin_url(&format!("/accounts/{}", &full[..12])))
        .await;
    assert_eq!(longer.status, 200, "more digits tell them apart");

    let big = format!("{{\"tier\": \"pro\", \"pad\": \"{}\"}}", "x".repeat(70_000));
    let a = admin
        .send("PUT", &gate.admin_url(&by_key("zed", "")), &[], big)
        .await;
    assert_eq!(
        (a.status.as_u16(), a.json()["code"].as_str()),
        (413, Some("body_too_large"))
    );
}

/// With Redis down a change is refused with 503 and nothing changes; back up, it goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_redis_cannot_store_changes_nothing() {
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    let config = format!(
        "{CONFIG}\n[store]\ntype = \"redis\"\nurl = \"{}\"\ntimeout = \"500ms\"\non_failure = \"fail_open\"\n",
        redis.url()
    );
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let (c, admin) = (TestClient::new(), TestClient::new());
    redis.stop();
    let block = json!({"blocked": {"reason": "unpaid"}});
    let a = call(
        &admin,
        "PUT",
        &gate.admin_url(&by_key("ola", "")),
        block.clone(),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.json()["code"].as_str()),
        (503, Some("store_unavailable"))
    );
    assert_eq!(
        c.post(&gen(&gate), "ola").await.status,
        200,
        "not blocked: nothing changed"
    );
    for (path, body) in [
        ("/reset", json!({"windows": "all"})),
        (
            "/grant",
            json!({"class": "gen", "window": "minute", "units": 1}),
        ),
    ] {
        let a = call(&admin, "POST", &gate.admin_url(&by_key("ola", path)), body).await;
        let code = a.json()["code"].clone();
        assert_eq!(
            (a.status.as_u16(), code.as_str()),
            (503, Some("store_unavailable")),
            "{path}"
        );
    }
    redis.restart();
    let stored = eventually(Duration::from_secs(5), || async {
        call(
            &admin,
            "PUT",
            &gate.admin_url(&by_key("ola", "")),
            block.clone(),
        )
        .await
        .status
            == 200
    })
    .await;
    assert!(stored, "the change goes through once Redis is back");
    assert_eq!(c.post(&gen(&gate), "ola").await.status, 403);
}

/// With unknown keys refused, only the config's accounts can be changed: a change for a key
/// the config does not admit is refused (404) and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_the_config_refuses_cannot_be_changed() {
    let up = Upstream::start().await;
    let config = CONFIG.replace(
        "default_tier = \"free\"",
        "unknown_keys = \"reject\"\n[accounts]\n\"known-key\" = \"free\"",
    );
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let admin = TestClient::new();
    let plan = json!({"tier": "pro"});
    let a = call(
        &admin,
        "PUT",
        &gate.admin_url(&by_key("stranger", "")),
        plan.clone(),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.json()["code"].as_str()),
        (404, Some("unknown_account"))
    );
    let list = admin
        .get(&gate.admin_url("/accounts?sort=changed"))
        .await
        .json();
    assert_eq!(list["total"], 0);
    let a = call(
        &admin,
        "PUT",
        &gate.admin_url(&by_key("known-key", "")),
        plan,
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let r = TestClient::new().post(&gen(&gate), "known-key").await;
    assert_eq!(r.num("x-ratelimit-limit"), 5);
}

/// Runtime limits replace the tier's windows of the same kind, class by class, and are refused
/// when the class's cost is above one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_limits_replace_a_kind_and_respect_the_class_cost() {
    let up = Upstream::start().await;
    let config = format!(
        "{CONFIG}\n[[tiers.free.limits]]\nclasses = [\"*\"]\nshared = true\nper_hour = 3\n\
         [classes.other]\ncost = 2\n"
    );
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let (c, admin) = (TestClient::new(), TestClient::new());
    let url = gate.admin_url(&by_key("pia", ""));
    // The account-wide hour (3) would stop a fourth request; pia's own hour on gen replaces it.
    let own = json!({"limits": [{"classes": ["gen"], "per_hour": 50, "per_minute": 10}]});
    assert_eq!(call(&admin, "PUT", &url, own).await.status, 200);
    for _ in 0..5 {
        let a = c.post(&gen(&gate), "pia").await;
        assert_eq!(a.status, 200, "{:?}", a.headers);
    }
    let too_low = json!({"limits": [{"classes": ["other"], "per_minute": 1}]});
    let a = call(&admin, "PUT", &url, too_low).await;
    assert_eq!(
        (a.status.as_u16(), a.json()["field"].as_str()),
        (422, Some("limits"))
    );
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap()
            .contains("costs 2 units"),
        "{}",
        a.json()
    );
}
