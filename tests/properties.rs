//! Property tests (proptest) of the pure parts that take client or operator input: the path
//! normaliser and the router, the config loader, the header renderer and the limit decision.
//! Case counts stay modest so the suite stays fast; a failure is shrunk to a minimal input and
//! saved under `proptest-regressions/`.

use http::{HeaderMap, Method};
use proptest::prelude::*;

use floodgate::classify::{
    normalize_path, ClassId, EscapedSlashes, PathPattern, PathRules, Route, Router,
};
use floodgate::config::{Config, ConfigError, Overrides};
use floodgate::limits::headers::{sf_string, write_refusal, write_usage, Ietf};
use floodgate::limits::{
    decide, CounterId, Counters, Decision, LimitKind, Refusal, Rule, Usage, Window, WindowList,
    WindowUsage,
};

/// `n` cases, or `PROPTEST_CASES` when set (for a deeper run than CI's).
fn cases(n: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Paths a client might send to dodge a route: dot segments, doubled slashes, escapes (valid,
/// broken and of reserved characters), case, non-ASCII, queries — and arbitrary text.
fn paths() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%".to_owned()),
        Just("%%".to_owned()),
        Just("%2e".to_owned()),
        Just("%2F".to_owned()),
        Just("%25".to_owned()),
        Just("?".to_owned()),
        Just("é".to_owned()),
        "%[0-9a-fA-F]{2}",
        "[0-9a-fA-F]{1,2}",
        "%(3[0-9]|4[1-6]|6[1-6])", // escapes of hex digits: a lone '%' before one is a trap
        "[a-zA-Z0-9_~-]{1,4}",
        "(api|v1|txt2img|mj|message|prompt)",
    ];
    prop_oneof![
        4 => prop::collection::vec(piece, 0..24).prop_map(|p| p.concat()),
        1 => any::<String>(),
    ]
}

fn router(rules: PathRules) -> Router {
    let route = |path: &str, method: Option<Method>, class| Route {
        methods: method.map(|m| vec![m]),
        pattern: PathPattern::parse(path, &rules).unwrap(),
        class: ClassId(class),
        by_body: None,
    };
    Router::new(
        vec![
            route("/api/v1/txt2img", Some(Method::POST), 1),
            route("/api/v1/prompt/*", None, 2),
            route("/mj/message/{id}", Some(Method::GET), 3),
            route("/a%3Bb/{x}/c", None, 4),
            route("/*", Some(Method::DELETE), 5),
        ],
        ClassId(0),
        rules,
    )
}

/// Every combination of the `[routing]` path switches.
fn path_rules() -> impl Strategy<Value = PathRules> {
    let slashes = prop::sample::select(vec![
        EscapedSlashes::Decode,
        EscapedSlashes::Reject,
        EscapedSlashes::Keep,
    ]);
    (any::<bool>(), slashes, any::<bool>(), any::<bool>()).prop_map(
        |(case_insensitive, escaped_slashes, ignore_parameters, reject_invalid)| PathRules {
            case_insensitive,
            escaped_slashes,
            ignore_parameters,
            reject_invalid,
        },
    )
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn normalising_is_idempotent_and_agrees_with_the_router(
        raw in paths(),
        rules in path_rules(),
        method in prop::sample::select(vec![Method::GET, Method::POST, Method::DELETE]),
    ) {
        let r = router(rules);
        let Ok(once) = normalize_path(&raw, &rules).map(|p| p.into_owned()) else {
            prop_assert!(r.classify(&method, &raw).is_err(), "a refused path is refused");
            return Ok(());
        };
        prop_assert!(once.starts_with('/'), "{:?} -> {:?}", raw, once);
        prop_assert!(!once.contains("//") && !once.contains('?'), "{:?} -> {:?}", raw, once);
        let twice = normalize_path(&once, &rules).unwrap().into_owned();
        prop_assert_eq!(&twice, &once, "norm(norm(p)) != norm(p) for {:?}", raw);
        prop_assert_eq!(r.classify(&method, &raw).unwrap(), r.classify(&method, &once).unwrap());
    }
}

/// How a client might spell one character of a route's path to slip past a literal matcher.
fn char_spelling(c: char) -> impl Strategy<Value = String> {
    let upper = c.to_ascii_uppercase().to_string();
    prop_oneof![
        3 => Just(c.to_string()),
        1 => Just(upper),
        1 => Just(format!("%{:02X}", c as u32)),
        1 => Just(format!("%{:02x}", c as u32)),
    ]
}

/// How a client might spell a `/` between two segments.
fn separator() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "/",
        "/",
        "/",
        "//",
        "/./",
        "/%2e/",
        "/x/../",
        "/x/..;/",
        "/;p=1/",
        ";v=2/",
        "%2F",
        "%2f",
        "%5C",
        "%5c",
        "\\",
        "/y/%2E%2E/",
    ])
    .prop_map(str::to_owned)
}

/// A spelling of `path` (a route of the shipped config), with one of the endings a client
/// might add: a trailing slash, a query, parameters, a NUL or a broken escape.
fn spelling_of(path: &'static str) -> impl Strategy<Value = String> {
    let segments: Vec<&'static str> = path.split('/').skip(1).collect();
    let per_segment: Vec<_> = segments
        .iter()
        .map(|seg| {
            let chars: Vec<_> = seg.chars().map(char_spelling).collect();
            (separator(), chars).prop_map(|(sep, cs)| format!("{sep}{}", cs.concat()))
        })
        .collect();
    let ending = prop::sample::select(vec![
        "",
        "",
        "/",
        "?x=1",
        ";jsessionid=1",
        "/.",
        "%00",
        "%zz",
        "%",
        "%0a",
    ]);
    (per_segment, ending).prop_map(|(parts, end)| {
        // A path begins with a real slash: a request target like `%2Fapi` is not origin-form.
        let mut p = parts.concat();
        if !p.starts_with('/') {
            p.insert(0, '/');
        }
        p + end
    })
}

proptest! {
    #![proptest_config(cases(2048))]

    /// With the default `[routing]` rules, no spelling of a limited route of
    /// config/floodgate.toml lands in the unlimited default class: it is the route's class or
    /// refused.
    #[test]
    fn no_spelling_of_a_shipped_route_escapes_its_class(
        (path, spelling) in prop::sample::select(shipped_route_paths())
            .prop_flat_map(|p| (Just(p), spelling_of(p))),
    ) {
        let config = shipped_config();
        let expected = config.router.classify(&Method::POST, path).unwrap();
        prop_assert_ne!(expected, config.router.default_class());
        if let Ok(class) = config.router.classify(&Method::POST, &spelling) {
            prop_assert_eq!(class, expected, "{:?} is not {:?}'s class", spelling, path);
        }
    }
}

/// The paths of the shipped config's routes (a prefix route by one path under it).
fn shipped_route_paths() -> Vec<&'static str> {
    let config = shipped_config();
    let paths: Vec<&'static str> = config
        .router
        .routes()
        .iter()
        .map(|r| {
            let text = r.pattern.to_string();
            let text = text
                .strip_suffix("/*")
                .map_or(text.clone(), |p| format!("{p}/enhance"));
            &*Box::leak(text.into_boxed_str())
        })
        .collect();
    assert!(paths.len() >= 18, "the shipped config has its routes");
    paths
}

fn shipped_config() -> &'static Config {
    static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| {
        let text = include_str!("../config/floodgate.toml");
        Config::parse(text, &Overrides::default()).expect("the shipped config is valid")
    })
}

/// A route template from literal segments and placeholders, and a path that fills it in.
fn template_and_path() -> impl Strategy<Value = (String, String)> {
    prop::collection::vec(
        (any::<bool>(), "[a-z0-9]{1,6}", "[a-zA-Z0-9_~.-]{1,6}"),
        1..6,
    )
    .prop_filter("dot segments are not values", |segs| {
        segs.iter().all(|(_, _, v)| v != "." && v != "..")
    })
    .prop_map(|segs| {
        let mut template = String::new();
        let mut path = String::new();
        for (i, (placeholder, lit, value)) in segs.iter().enumerate() {
            if *placeholder {
                template += &format!("/{{p{i}}}");
                path += &format!("/{value}");
            } else {
                template += &format!("/{lit}");
                path += &format!("/{lit}");
            }
        }
        (template, path)
    })
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_route_text_parses_or_is_refused_without_panicking(raw in paths(), rules in path_rules()) {
        let _ = PathPattern::parse(&raw, &rules);
    }

    #[test]
    fn templates_and_prefixes_match_the_paths_built_from_them(
        (template, path) in template_and_path(),
        tail in "(/[a-z0-9]{1,4}){0,3}",
    ) {
        let rules = PathRules::SECURE;
        let norm = |p: &str| normalize_path(p, &rules).unwrap().into_owned();
        let exact = PathPattern::parse(&template, &rules).unwrap();
        prop_assert!(exact.matches(&norm(&path)), "{} !~ {}", template, path);
        let with_tail = format!("{path}{tail}");
        prop_assert_eq!(exact.matches(&norm(&with_tail)), tail.is_empty());
        let prefix = PathPattern::parse(&format!("{path}/*"), &rules).unwrap();
        prop_assert!(prefix.matches(&norm(&with_tail)));
        let r = Router::new(
            vec![Route { methods: None, pattern: exact, class: ClassId(7), by_body: None }],
            ClassId(0),
            rules,
        );
        prop_assert_eq!(r.classify(&Method::GET, &format!("{path}/")).unwrap(), ClassId(7));
    }
}

/// Lines a config file is made of: every section and key floodgate knows, with values of every
/// shape (good and bad), plus noise.
fn config_text() -> impl Strategy<Value = String> {
    let section = prop::sample::select(vec![
        "[server]",
        "[identity]",
        "[routing]",
        "[[route]]",
        "[[tiers.basic.limits]]",
        "[[tiers.pro.limits]]",
        "[tiers.basic]",
        "[accounts]",
        "[headers]",
        "[[jobs]]",
        "[tasks]",
        "[[account]]",
        "[[upstream_account]]",
        "[classes.gen]",
        "[state]",
    ])
    .prop_map(str::to_owned);
    let key = prop::sample::select(vec![
        "listen",
        "upstream",
        "admin",
        "workers",
        "upstream_timeout",
        "header_read_timeout",
        "idle_timeout",
        "shutdown_deadline",
        "max_connections",
        "max_header_bytes",
        "max_header_count",
        "watch_config",
        "sources",
        "default_tier",
        "unknown_keys",
        "anonymous",
        "trusted_proxies",
        "default_class",
        "case_insensitive",
        "escaped_slashes",
        "path_parameters",
        "invalid_paths",
        "path",
        "method",
        "methods",
        "class",
        "classes",
        "except",
        "shared",
        "per_second",
        "per_minute",
        "per_day",
        "interval",
        "shadow",
        "concurrency",
        "max_queue",
        "max_wait",
        "upstream_accounts",
        "mode",
        "max_job_time",
        "task_id_pointer",
        "follow_up_pointer",
        "get_path",
        "status_pointer",
        "terminal",
        "poll_interval",
        "key",
        "tier",
        "name",
        "credential",
        "base_url",
        "max_body",
        "file",
        "save_interval",
        "ietf",
        "\"demo\"",
    ]);
    let value = prop_oneof![
        Just("0".to_owned()),
        Just("1".to_owned()),
        Just("4294967296".to_owned()),
        Just("-1".to_owned()),
        Just("true".to_owned()),
        Just("\"\"".to_owned()),
        Just("\"*\"".to_owned()),
        Just("[\"*\"]".to_owned()),
        Just("[\"gen\", \"*\"]".to_owned()),
        Just("[]".to_owned()),
        Just("\"gen\"".to_owned()),
        Just("\"basic\"".to_owned()),
        Just("\"/gen/{id}\"".to_owned()),
        Just("\"/gen/*\"".to_owned()),
        Just("\"http://127.0.0.1:1\"".to_owned()),
        Just("\"10MB\"".to_owned()),
        Just("\"task\"".to_owned()),
        Just("\"/result\"".to_owned()),
        Just("\"99999999999999999999d\"".to_owned()),
        "\"[0-9]{1,3}(ms|s|m|h|d|KB|MB|)\"",
        "\"[ -~]{0,12}\"",
    ];
    let line = prop_oneof![
        2 => section,
        6 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "[ -~]{0,20}",
    ];
    prop_oneof![
        8 => prop::collection::vec(line, 0..30).prop_map(|l| l.join("\n")),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn the_config_loader_never_panics_and_every_error_names_a_field(text in config_text()) {
        let overrides = Overrides {
            upstream: Some("http://127.0.0.1:9000".into()),
            ..Overrides::default()
        };
        match Config::parse(&text, &overrides) {
            Ok(config) => {
                let _ = config.summary();
            }
            Err(ConfigError::Invalid(located)) => {
                prop_assert!(!located.field.is_empty(), "no field: {:?}", located);
                prop_assert!(!located.message.is_empty(), "no message: {:?}", located);
            }
            Err(other) => prop_assert!(false, "parse of text gave {:?}", other),
        }
    }
}

fn kinds() -> impl Strategy<Value = LimitKind> {
    prop::sample::select(vec![
        LimitKind::Second,
        LimitKind::Minute,
        LimitKind::Hour,
        LimitKind::Daily,
        LimitKind::Monthly,
        LimitKind::Interval,
    ])
}

fn window_usage() -> impl Strategy<Value = WindowUsage> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        kinds(),
    )
        .prop_map(
            |(limit, remaining, reset_secs, window_secs, kind)| WindowUsage {
                limit,
                remaining,
                reset_secs,
                window_secs,
                kind,
            },
        )
}

fn num(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn rendered_headers_parse_back_to_the_decision(
        primary in prop::option::of(window_usage()),
        daily in prop::option::of(window_usage()),
        monthly in prop::option::of(window_usage()),
        cost in prop_oneof![Just(0u32), Just(1), 2..100u32],
        refusal in prop::option::of((kinds(), any::<u64>())),
        listed in prop::option::of(prop::collection::vec(window_usage(), 0..6)),
        names in prop::collection::vec("[ -~\u{80}-\u{10ffff}]{0,12}", 0..6),
        ietf in any::<bool>(),
    ) {
        let mut h = HeaderMap::new();
        let usage = Usage { primary, daily, monthly, cost };
        let quoted: Vec<Box<str>> = names.iter().map(|n| sf_string(n)).collect();
        let windows = WindowList(listed.clone().unwrap_or_default().into());
        write_usage(&mut h, &usage, ietf.then_some(Ietf { names: &quoted, windows }));
        prop_assert_eq!(num(&h, "x-ratelimit-cost"), (cost > 0).then_some(u64::from(cost)));
        if let Some((kind, retry_after_secs)) = refusal {
            write_refusal(&mut h, &Refusal { kind, retry_after_secs });
            prop_assert_eq!(num(&h, "retry-after"), Some(retry_after_secs));
            prop_assert_eq!(h["x-ratelimit-type"].to_str().unwrap(), kind.name());
        }
        let shown = primary.or(daily).or(monthly);
        prop_assert_eq!(num(&h, "x-ratelimit-limit"), shown.map(|w| u64::from(w.limit)));
        prop_assert_eq!(num(&h, "x-ratelimit-remaining"), shown.map(|w| u64::from(w.remaining)));
        prop_assert_eq!(num(&h, "x-ratelimit-daily-limit"), daily.map(|w| u64::from(w.limit)));
        prop_assert_eq!(
            num(&h, "x-ratelimit-daily-remaining"),
            daily.map(|w| u64::from(w.remaining))
        );
        prop_assert_eq!(num(&h, "x-ratelimit-monthly-limit"), monthly.map(|w| u64::from(w.limit)));
        prop_assert_eq!(
            num(&h, "x-ratelimit-monthly-remaining"),
            monthly.map(|w| u64::from(w.remaining))
        );
        prop_assert_eq!(
            num(&h, "x-ratelimit-monthly-reset"),
            monthly.map(|w| u64::from(w.reset_secs))
        );
        let listed = listed.unwrap_or_default();
        if ietf && !listed.is_empty() {
            let policy = sf_list(h["ratelimit-policy"].to_str().unwrap());
            let state = sf_list(h["ratelimit"].to_str().unwrap());
            prop_assert_eq!(policy.len(), listed.len());
            prop_assert_eq!(state.len(), listed.len());
            for (i, w) in listed.iter().enumerate() {
                // A name given comes back as written (printable ASCII; anything else as `_`);
                // a window without one is named by its kind.
                let name = names.get(i).map_or(w.kind.name().to_owned(), |n| {
                    n.chars().map(|c| if (' '..='~').contains(&c) { c } else { '_' }).collect()
                });
                let q: (u64, u64) = (w.limit.into(), w.window_secs.into());
                prop_assert_eq!(&policy[i], &(name.clone(), vec![("q", q.0), ("w", q.1)]));
                let r: (u64, u64) = (w.remaining.into(), w.reset_secs.into());
                prop_assert_eq!(&state[i], &(name, vec![("r", r.0), ("t", r.1)]));
            }
        } else {
            prop_assert!(h.get("ratelimit").is_none());
            prop_assert!(h.get("ratelimit-policy").is_none());
        }
    }
}

/// A structured-field List of String items with Integer parameters (RFC 9651), as the IETF
/// fields carry it: `"a";q=1;w=2, "b\\"c";q=3;w=4` -> each item's string and parameters.
/// Panics on anything else.
fn sf_list(text: &str) -> Vec<(String, Vec<(&'static str, u64)>)> {
    let mut items = Vec::new();
    let mut rest = text;
    loop {
        let mut chars = rest.char_indices();
        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{text}");
        let mut name = String::new();
        let end = loop {
            match chars.next().expect("a closed string") {
                (_, '\\') => name.push(chars.next().expect("an escaped character").1),
                (at, '"') => break at + 1,
                (_, c) => {
                    assert!((' '..='~').contains(&c), "{c:?} in a String");
                    name.push(c);
                }
            }
        };
        rest = &rest[end..];
        let mut params = Vec::new();
        while let Some(after) = rest.strip_prefix(';') {
            let (key, value) = after.split_once('=').unwrap();
            let digits = value
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(value.len());
            let key = ["q", "w", "r", "t"]
                .into_iter()
                .find(|k| *k == key)
                .unwrap();
            params.push((key, value[..digits].parse().unwrap()));
            rest = &value[digits..];
        }
        items.push((name, params));
        match rest.strip_prefix(", ") {
            Some(next) => rest = next,
            None => break,
        }
    }
    assert!(rest.is_empty(), "{text}");
    items
}

fn rules() -> impl Strategy<Value = Vec<Rule>> {
    prop::collection::vec((1u32..5, 1u64..5_000, kinds()), 1..4).prop_map(|rs| {
        rs.into_iter()
            .enumerate()
            .map(|(i, (limit, period_ms, kind))| Rule {
                counter: CounterId(i as u32),
                limit,
                window: if kind == LimitKind::Daily {
                    Window::UtcDay
                } else {
                    Window::Fixed { period_ms }
                },
                kind,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn a_decision_consumes_every_rule_or_none(
        rules in rules(),
        steps in prop::collection::vec(0u64..3_000, 1..40),
    ) {
        let mut counters = Counters::default();
        let mut now = 1_795_392_000_000u64;
        for step in steps {
            now += step;
            let before: Vec<u32> = rules.iter().map(|r| counters.used(r.counter, now)).collect();
            let decision = decide(&rules, &mut counters, now);
            let after: Vec<u32> = rules.iter().map(|r| counters.used(r.counter, now)).collect();
            match decision {
                Decision::Admitted(_) => {
                    for ((b, a), r) in before.iter().zip(&after).zip(&rules) {
                        prop_assert_eq!(*a, b + 1);
                        prop_assert!(*a <= r.limit);
                    }
                }
                Decision::Refused(_, refusal) => {
                    prop_assert_eq!(&before, &after, "a refusal consumed something");
                    prop_assert!(refusal.retry_after_secs >= 1);
                    prop_assert!(rules.iter().zip(&before).any(|(r, b)| *b >= r.limit));
                }
            }
        }
    }
}
