//! Path spellings cannot walk around a limit. On config/floodgate.toml with its default
//! `[routing]` rules, once an account has spent a route's minute quota, every other spelling of
//! that route (case, `;params`, escaped slashes, backslashes, dot segments, escapes, NUL...) is
//! refused: 429 in the route's class, or 400 `invalid_path`. None reaches the upstream as the
//! unlimited default class. Real TCP over loopback; requests are sent byte for byte.

mod support;

use support::raw::{exchange, RawAnswer};
use support::{metric, metrics, Gate, Upstream, DAY0_MS};

/// Spellings of `path` (`/api/v1/<name>` or `/api/v1/videos/replace`) that common upstream
/// frameworks route to the same handler, or that floodgate must refuse.
fn spellings(path: &str) -> Vec<String> {
    let (dir, name) = path.rsplit_once('/').unwrap();
    let first = &name[..1];
    let rest = &name[1..];
    let encoded: String = name.bytes().map(|b| format!("%{b:02x}")).collect();
    let capitalised: String = path
        .split('/')
        .map(|s| {
            let mut c = s.chars();
            c.next()
                .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
        })
        .collect::<Vec<_>>()
        .join("/");
    vec![
        path.to_uppercase(),
        capitalised,
        format!("{path};x=1"),
        format!("{path};"),
        format!("{dir}%2F{name}"),
        format!("{dir}%2f{name}"),
        format!("{dir}%5C{name}"),
        format!("{dir}\\{name}"),
        format!("{path}%00"),
        format!("{path}%zz"),
        format!("{path}%0a"),
        format!("{path}/"),
        format!("{path}?x=1"),
        format!("{path}//"),
        format!("/{path}"),
        format!("{dir}/./{name}"),
        format!("{dir}/x/../{name}"),
        format!("{dir}/x/..;/{name}"),
        format!("/api;a=b{}", &path[4..]),
        format!("{dir}/%{:02X}{rest}", first.as_bytes()[0]),
        format!("{dir}/{encoded}"),
        format!("{dir}/%2e/{name}"),
        format!("{}{};jsessionid=1/", dir.to_uppercase(), &path[dir.len()..]),
        format!("http://t{path}"),
        format!("{path}#top"),
    ]
}

async fn post(gate: &Gate, target: &str, key: &str) -> RawAnswer {
    let raw = format!(
        "POST {target} HTTP/1.1\r\nhost: t\r\nx-api-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    exchange(gate.addr, raw.as_bytes()).await
}

/// Each limited route of the shipped config: its path (a prefix route by a path under it).
fn limited_routes() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/floodgate.toml"
    ))
    .unwrap();
    let config: toml::Value = toml::from_str(&text).unwrap();
    config["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let path = r["path"].as_str().unwrap();
            path.strip_suffix("/*")
                .map_or(path.to_owned(), |p| format!("{p}/enhance"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_a_limited_route_escapes_its_minute_quota() {
    let up = Upstream::start().await;
    let gate = Gate::shipped("floodgate.toml", &up.url(), DAY0_MS);
    let routes = limited_routes();
    assert!(routes.len() >= 18, "every route of the shipped config");
    let (mut admitted, mut refused_paths) = (0, 0);
    for (i, path) in routes.iter().enumerate() {
        let key = format!("paths-{i}");
        // Spend the route's minute quota with its own spelling.
        let first = post(&gate, path, &key).await;
        assert_eq!(first.status, 200, "{path}: {}", first.body);
        let limit: u64 = first.header("x-ratelimit-limit").unwrap().parse().unwrap();
        for _ in 1..limit {
            assert_eq!(post(&gate, path, &key).await.status, 200, "{path}");
        }
        admitted += limit as usize;
        assert_eq!(post(&gate, path, &key).await.status, 429, "{path}");

        let spellings = spellings(path);
        assert!(spellings.len() >= 20);
        for target in &spellings {
            let a = post(&gate, target, &key).await;
            match a.status {
                429 => assert_eq!(a.header("x-ratelimit-type"), Some("minute"), "{target}"),
                400 => {
                    assert!(a.body.contains("invalid_path"), "{target}: {}", a.body);
                    refused_paths += 1;
                }
                s => panic!("{target} (a spelling of {path}) got {s}: {}", a.body),
            }
        }
        assert_eq!(
            up.count(),
            admitted,
            "{path}: no spelling reached the upstream"
        );
    }
    let m = metrics(&gate.admin_url("/metrics")).await;
    let invalid = metric(&m, "floodgate_rejected_total{reason=\"invalid_path\"}");
    assert_eq!(invalid, refused_paths as f64);
    assert!(
        refused_paths >= 4 * routes.len(),
        "NUL, backslash, bad escapes are refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_receives_the_path_as_sent() {
    let up = Upstream::start().await;
    let gate = Gate::shipped("floodgate.toml", &up.url(), DAY0_MS);
    let target = "/API/v1/Txt2Img;v=2?q=%2F";
    assert_eq!(post(&gate, target, "as-sent").await.status, 200);
    let seen = up.seen();
    assert_eq!(seen.last().unwrap().target, target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_path_rule_can_be_switched_off() {
    let up = Upstream::start().await;
    let config = "[server]\n[identity]\ndefault_tier = \"basic\"\n\
        [routing]\ncase_insensitive = false\nescaped_slashes = \"reject\"\n\
        path_parameters = \"keep\"\ninvalid_paths = \"forward\"\n\
        [[route]]\nmethod = \"POST\"\npath = \"/v1/gen\"\nclass = \"gen\"\n\
        [[tiers.basic.limits]]\nclasses = [\"gen\"]\nper_minute = 5\n";
    let gate = Gate::start(config, &up.url(), DAY0_MS);
    let limited = |a: &RawAnswer| a.header("x-ratelimit-limit") == Some("5");
    // Case and parameters are kept: these are other paths, in the default class.
    for target in ["/V1/GEN", "/v1/gen;x=1"] {
        let a = post(&gate, target, "k").await;
        assert_eq!(a.status, 200, "{target}");
        assert!(!limited(&a), "{target} is not the route");
    }
    // Escaped slashes are refused.
    let a = post(&gate, "/v1%2Fgen", "k").await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("invalid_path"), "{}", a.body);
    // A backslash separates segments and a NUL passes through, matched as written.
    let a = post(&gate, "/v1\\gen", "k").await;
    assert!(a.status == 200 && limited(&a), "{}", a.head);
    assert_eq!(post(&gate, "/v1/gen%00", "k").await.status, 200);
    assert_eq!(up.count(), 4);
}
