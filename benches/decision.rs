//! The per-request decision as the proxy makes it: identify -> classify -> tier rules ->
//! the memory store's check-and-consume.
//!
//! Run with `cargo bench --bench decision` (add `-- hot_key` etc. to filter). Tracked targets:
//! a decision takes <= 150 ns for a hot key and <= 400 ns with 1,000,000 distinct accounts.
//!
//! Groups:
//! - `hot_key`: one account, every request admitted (or, in `basic_refused`, every request
//!   refused), so the account's entry stays in cache: the steady-state cost of `decide` plus one
//!   shard lock.
//! - `1M_keys`: 1,000,000 accounts already in the store; each iteration decides for the next
//!   account of a fixed pseudo-random sequence, so every lookup lands on a random bucket of a
//!   ~136 MB table (cache and TLB misses included).
//! - `identify` / `classify`: the two pure steps before the decision.
//! - `pipeline`: all of the above for one hot request, as `proxy::handle` does it.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};

use floodgate::classify::ClassId;
use floodgate::config::{Config, Overrides};
use floodgate::identity::{AccountId, TierId};
use floodgate::limits::Rule;
use floodgate::store::MemoryStore;

mod common;
use common::{account, check_and_consume, DAY0};

const KEYS: u64 = 1_000_000;

/// A config with the shape of the shipped one but limits that are never reached.
const HUGE: &str = r#"
[server]
upstream = "http://127.0.0.1:9"

[[route]]
method = "POST"
path = "/api/v1/txt2img"
class = "txt2img"

[[tiers.huge.limits]]
classes = ["txt2img"]
per_minute = 4000000000
per_day = 4000000000

[[tiers.huge1.limits]]
classes = ["txt2img"]
per_minute = 4000000000

[identity]
default_tier = "huge"
"#;

fn overrides() -> Overrides {
    Overrides {
        upstream: Some("http://127.0.0.1:9".into()),
        ..Default::default()
    }
}

fn shipped() -> Config {
    let text = include_str!("../config/floodgate.toml");
    Config::parse(text, &overrides()).expect("config/floodgate.toml parses")
}

fn huge() -> Config {
    Config::parse(HUGE, &overrides()).expect("inline bench config parses")
}

fn tier(config: &Config, name: &str) -> TierId {
    let i = config
        .tiers
        .iter()
        .position(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tier {name:?}"));
    TierId(i as u16)
}

fn class(config: &Config, name: &str) -> ClassId {
    let i = config
        .classes
        .iter()
        .position(|c| c == name)
        .unwrap_or_else(|| panic!("no class {name:?}"));
    ClassId(i as u16)
}

fn rules<'c>(config: &'c Config, tier_name: &str, class_name: &str) -> &'c [Rule] {
    let rules = config
        .tier(tier(config, tier_name))
        .rules(class(config, class_name));
    assert!(!rules.is_empty(), "{tier_name}/{class_name} has no rules");
    rules
}

fn hot_key(c: &mut Criterion) {
    let shipped = shipped();
    let huge = huge();
    let basic = rules(&shipped, "basic", "txt2img");
    let premium = rules(&shipped, "premium", "txt2img");
    assert_eq!(basic.len(), 2, "basic txt2img: a minute and a daily rule");
    assert_eq!(premium.len(), 1, "premium: one per-minute rule");
    let huge2 = rules(&huge, "huge", "txt2img");
    let huge1 = rules(&huge, "huge1", "txt2img");
    let acct = AccountId::from_key(b"bench-hot-key");

    let mut g = c.benchmark_group("hot_key");
    g.throughput(Throughput::Elements(1));

    // Limits never reached, clock fixed: both counters are incremented in place.
    for (name, rules) in [("huge_2_rules", huge2), ("huge_1_rule", huge1)] {
        g.bench_function(name, |b| {
            let store = MemoryStore::default();
            let now = DAY0 + 1;
            b.iter(|| {
                let d = check_and_consume(&store, black_box(acct), black_box(rules), now);
                debug_assert!(d.is_admitted());
                d
            })
        });
    }

    // The real basic txt2img rules (3/min, 100/day), always admitted: the clock moves 864.001 s
    // per request, so the minute window has always closed (reset) and the day sees <= 100.
    g.bench_function("basic_txt2img_admitted", |b| {
        let store = MemoryStore::default();
        let mut now = DAY0;
        b.iter(|| {
            now += 864_001;
            let d = check_and_consume(&store, black_box(acct), black_box(basic), now);
            debug_assert!(d.is_admitted());
            d
        })
    });

    // The real basic rules, hammered past the limit: every request is refused (the abusive
    // client's path, which also computes Retry-After).
    g.bench_function("basic_txt2img_refused", |b| {
        let store = MemoryStore::default();
        let now = DAY0 + 1;
        for _ in 0..3 {
            assert!(check_and_consume(&store, acct, basic, now).is_admitted());
        }
        b.iter(|| {
            let d = check_and_consume(&store, black_box(acct), black_box(basic), now);
            debug_assert!(!d.is_admitted());
            d
        })
    });

    // The real premium rule (300/min), one request per simulated second: always admitted,
    // the minute window rolls every 60 requests.
    g.bench_function("premium_admitted", |b| {
        let store = MemoryStore::default();
        let mut now = DAY0;
        b.iter(|| {
            now += 1_000;
            let d = check_and_consume(&store, black_box(acct), black_box(premium), now);
            debug_assert!(d.is_admitted());
            d
        })
    });
    g.finish();
}

fn million_keys(c: &mut Criterion) {
    let shipped = shipped();
    let basic = rules(&shipped, "basic", "txt2img");
    let premium = rules(&shipped, "premium", "txt2img");

    let mut g = c.benchmark_group("1M_keys");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(5));

    for (name, rules) in [("basic_txt2img", basic), ("premium", premium)] {
        // Populated on first use, so a filtered-out bench costs nothing. The clock moves 1 ms per
        // request, so each account comes round every 1,000 s: its minute window has closed and
        // its day sees <= 87 requests, so every decision is admitted.
        let mut state: Option<(MemoryStore, u64)> = None;
        let mut i = 0u64;
        g.bench_function(name, |b| {
            let (store, now) = state.get_or_insert_with(|| {
                let store = MemoryStore::default();
                let mut now = DAY0;
                for i in 0..KEYS {
                    now += 1;
                    check_and_consume(&store, account(i), rules, now);
                }
                assert_eq!(store.len(), KEYS as usize);
                (store, now)
            });
            b.iter(|| {
                *now += 1;
                let d = check_and_consume(store, account(i), black_box(rules), *now);
                i += 1;
                if i == KEYS {
                    i = 0;
                }
                debug_assert!(d.is_admitted());
                d
            })
        });
        if let Some((store, _)) = state {
            assert_eq!(store.len(), KEYS as usize, "no new accounts were created");
        }
    }

    // The account id mixer alone, to subtract from the figures above.
    g.bench_function("account_id_mix_only", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = i.wrapping_add(1);
            account(black_box(i))
        })
    });
    g.finish();
}

fn identify(c: &mut Criterion) {
    let config = shipped();
    let peer = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let with = |name: &'static str, value: &str| {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    };
    let cases = [
        (
            "x_api_key_unknown",
            with("x-api-key", "sk-live-0123456789abcdef0123456789abcdef"),
        ),
        ("x_api_key_premium", with("x-api-key", "demo-premium-key")),
        (
            "bearer_unknown",
            with(
                "authorization",
                "Bearer sk-live-0123456789abcdef0123456789abcdef",
            ),
        ),
    ];
    let mut g = c.benchmark_group("identify");
    for (name, headers) in &cases {
        assert!(config.identity.identify(headers, peer).is_ok());
        g.bench_function(*name, |b| {
            b.iter(|| {
                config
                    .identity
                    .identify(black_box(headers), black_box(peer))
            })
        });
    }
    g.finish();
}

fn classify(c: &mut Criterion) {
    let config = shipped();
    let txt2img = class(&config, "txt2img");
    let prompt = class(&config, "prompt");
    let cases = [
        ("exact_first_route", "/api/v1/txt2img", txt2img),
        ("non_normal_path", "/api/v1//./txt2img/", txt2img),
        ("prefix_last_route", "/api/v1/prompt/enhance", prompt),
        ("unmatched_default", "/healthz", ClassId(0)),
    ];
    let mut g = c.benchmark_group("classify");
    for (name, path, expected) in cases {
        assert_eq!(
            config.router.classify(&Method::POST, path).unwrap(),
            expected,
            "{path}"
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                config
                    .router
                    .classify(black_box(&Method::POST), black_box(path))
            })
        });
    }
    // Normalisation alone, to split the figures above into normalise + route scan.
    for (name, path) in [
        ("normalize_only_normal", "/api/v1/txt2img"),
        ("normalize_only_non_normal", "/api/v1//./txt2img/"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                floodgate::classify::normalize_path(
                    black_box(path),
                    &floodgate::classify::PathRules::SECURE,
                )
            })
        });
    }
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let config = huge();
    let store = MemoryStore::default();
    let peer = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-api-key",
        HeaderValue::from_static("sk-live-0123456789abcdef0123456789abcdef"),
    );
    let mut g = c.benchmark_group("pipeline");
    g.bench_function("identify_classify_decide_hot", |b| {
        let now = DAY0 + 1;
        b.iter(|| {
            let caller = config.identity.identify(black_box(&headers), peer).unwrap();
            let class = config
                .router
                .classify(&Method::POST, black_box("/api/v1/txt2img"))
                .unwrap();
            let rules = config.tier(caller.tier).rules(class);
            check_and_consume(&store, caller.account, rules, now)
        })
    });
    g.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = short();
    targets = hot_key, million_keys, identify, classify, pipeline
}
criterion_main!(benches);
