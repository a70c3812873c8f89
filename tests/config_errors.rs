//! Config validation errors: every fixture in `tests/fixtures/bad/` holds one realistic mistake,
//! and the error must name the field path and the line exactly (`line N: field.path: message`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use floodgate::config::{Config, ConfigError, Overrides};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad")
}

fn read_fixture(name: &str) -> String {
    let path = fixture_dir().join(format!("{name}.toml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn parse_err(text: &str, overrides: &Overrides) -> ConfigError {
    match Config::parse(text, overrides) {
        Ok(_) => panic!("config was accepted, expected an error"),
        Err(e) => e,
    }
}

fn assert_fixture(name: &str, expected: &str) {
    let err = match Config::parse(&read_fixture(name), &Overrides::default()) {
        Ok(_) => panic!("fixture {name}.toml was accepted; expected: {expected}"),
        Err(e) => e,
    };
    assert!(
        matches!(err, ConfigError::Invalid(_)),
        "fixture {name}.toml: expected ConfigError::Invalid, got {err:?}"
    );
    assert_eq!(err.to_string(), expected, "fixture {name}.toml");
}

/// One `#[test]` per fixture, plus `FIXTURES` listing them all for the coverage check.
macro_rules! bad_fixtures {
    ($($name:ident => $msg:expr,)*) => {
        const FIXTURES: &[(&str, &str)] = &[$((stringify!($name), $msg),)*];
        $(
            #[test]
            fn $name() {
                assert_fixture(stringify!($name), $msg);
            }
        )*
    };
}

bad_fixtures! {
    upstream_health_disables_on_429 =>
        "line 6: upstream_health.disable_statuses: 429: a 4xx or 5xx status other than 429 \
         (a 429 rests the account)",
    upstream_account_name_with_brace =>
        "line 6: upstream_account[0].name: \"mj{1}\": no spaces or any of | { } / ? # % (it \
         names Redis keys and admin paths)",
    toml_syntax =>
        "line 4: (syntax): invalid basic string",
    unknown_top_level_field =>
        "line 2: servre: unknown field `servre`, expected one of `server`, `identity`, \
         `routing`, `route`, `tiers`, `accounts`, `account_names`, `headers`, `jobs`, `tasks`, `account`, \
         `upstream_account`, `classes`, `state`, `upstream_health`, `incorrect_tasks`, `relax`, `store`, `access_log`",
    unknown_limit_field =>
        "line 11: tiers.basic.limits[1].per_minutes: unknown field `per_minutes`, expected one \
         of `classes`, `except`, `shared`, `per_second`, `per_minute`, `per_hour`, `per_day`, \
         `per_month`, `interval`, `shadow`",
    wrong_type =>
        "line 12: tiers.basic.limits[0].per_minute: invalid type: string \"three\", expected u32",
    unknown_class =>
        "line 21: tiers.basic.limits[1].classes: unknown class \"img2imgg\" (classes come from \
         [[route]] entries and routing.default_class)",
    unknown_except_class =>
        "line 19: tiers.standard.limits[1].except: unknown class \"progres\" (classes come from \
         [[route]] entries and routing.default_class)",
    empty_limit_classes =>
        "line 9: tiers.basic.limits[1].classes: must name at least one class, or \"*\"",
    limit_without_window =>
        "line 14: tiers.basic.limits[1]: sets no limit: give per_second, per_minute, per_hour, \
         per_day, per_month or interval",
    zero_per_minute =>
        "line 10: tiers.basic.limits[0].per_minute: must be at least 1",
    bad_interval =>
        "line 11: tiers.standard.limits[0].interval: \"3\" is not a duration: time unit needed, \
         for example 3sec or 3ms",
    unknown_account_tier =>
        "line 10: accounts.\"demo-premium-key\": unknown tier \"premum\" (tiers: basic, premium)",
    body_pointer_without_classes =>
        "line 9: route[0].body_pointer: needs body_classes (value -> class) beside it",
    body_pointer_not_a_pointer =>
        "line 9: route[0].body_pointer: \"task_type\" is not a JSON pointer (like \"/task_type\")",
    accounts_file_unknown_tier =>
        "line 4: identity.accounts_file.accounts.\"sk-premium-1\": unknown tier \"premum\" \
         (tiers: basic, premium) (in tests/fixtures/accounts/misspelt_tier.toml)",
    accounts_file_missing =>
        "line 7: identity.accounts_file: cannot read \"tests/fixtures/accounts/not_there.toml\": \
         No such file or directory (os error 2)",
    accounts_file_repeats_key =>
        "line 4: identity.accounts_file.accounts.\"demo-premium-key\": also given a tier in the config \
         file; give it in one place (in tests/fixtures/accounts/repeats_config_key.toml)",
    unknown_default_tier =>
        "line 7: identity.default_tier: unknown tier \"free\" (tiers: basic, premium)",
    admin_token_twice =>
        "line 5: server.admin_token_file: give admin_token or admin_token_file, not both",
    admin_token_with_space =>
        "line 4: server.admin_token: the admin token must be printable ASCII without spaces (it \
         travels in a header)",
    bad_escaped_slashes =>
        "line 6: routing.escaped_slashes: \"allow\": expected one of \"decode\", \"reject\", \"keep\"",
    bad_invalid_paths =>
        "line 7: routing.invalid_paths: \"accept\": expected one of \"reject\", \"forward\"",
    bad_unknown_keys =>
        "line 7: identity.unknown_keys: \"allow\": expected \"default_tier\" or \"reject\"",
    several_tiers_no_default =>
        "line 7: identity.unknown_keys: needs identity.default_tier (there are several tiers)",
    bad_trusted_proxy =>
        "line 8: identity.trusted_proxies: \"10.0.0.0/33\" has a bad prefix length",
    bad_route_path =>
        "line 12: route[1].path: route path \"api/v1/img2img\" must start with '/'",
    bad_route_method =>
        "line 6: route[0].method: \"GET, POST\" is not an HTTP method",
    bad_listen =>
        "line 3: server.listen: \"localhost:8080\" is not a socket address like 127.0.0.1:8080",
    bad_scheme_upstream =>
        "line 4: server.upstream: \"ftp://api.example.com\": only http:// and https:// \
         upstreams are supported",
    missing_upstream_ca =>
        "line 4: server.upstream_ca_file: cannot read \"/nonexistent/upstream-ca.pem\": No such \
         file or directory (os error 2)",
    upstream_with_path =>
        "line 4: server.upstream: \"http://127.0.0.1:9000/api/v1\": an upstream URL has no path; \
         requests keep their own",
    missing_upstream =>
        "server.upstream: missing: set it in the file or pass --upstream URL",
    bad_upstream_timeout =>
        "line 5: server.upstream_timeout: \"60sek\" is not a duration like \"2s\" or \"500ms\": \
         unknown time unit \"sek\", supported units: ns, us/µs, ms, sec, min, hours, days, \
         weeks, months, years (and few variations)",
    zero_client_body_timeout =>
        "line 4: server.client_body_timeout: must be longer than zero",
    bad_max_body =>
        "line 11: classes.\"img2img\".max_body: \"10 megabytes\" is not a size like \"10MB\", \
         \"512KB\" or \"1048576\"",
    unknown_max_body_class =>
        "line 10: classes.\"img2imgg\": unknown class \"img2imgg\" (classes come from [[route]] \
         entries and routing.default_class)",
    unknown_class_field =>
        "line 11: classes.img2img.max_size: unknown field `max_size`, expected one of `max_body`, \
         `pipeline`, `cost`, `cost_from`, `max_cost`, `default_cost`",
    cost_above_limit =>
        "line 15: classes.\"img2video\".cost: 5 is more than tier basic's minute limit of 4: no \
         request of the class could be admitted",
    zero_cost =>
        "line 11: classes.\"img2video\".cost: must be at least 1",
    cost_and_cost_from =>
        "line 12: classes.\"txt2img\".cost_from: a class's cost is fixed (cost) or read from the \
         body (cost_from), not both",
    cost_from_without_max_cost =>
        "line 11: classes.\"txt2img\".max_cost: missing: cost_from needs the most a request of \
         the class is charged",
    cost_from_not_a_pointer =>
        "line 11: classes.\"txt2img\".cost_from: a JSON pointer starts with '/', e.g. \"/n\"",
    zero_max_cost =>
        "line 12: classes.\"txt2img\".max_cost: must be at least 1",
    default_cost_above_max_cost =>
        "line 13: classes.\"txt2img\".default_cost: must be from 1 to max_cost (10)",
    max_cost_without_cost_from =>
        "line 12: classes.\"txt2img\".max_cost: only with cost_from (the request body's field \
         that gives the cost)",
    default_cost_without_cost_from =>
        "line 11: classes.\"txt2img\".default_cost: only with cost_from (the request body's \
         field that gives the cost)",
    bad_pipeline =>
        "line 11: classes.img2img.pipeline: invalid type: string \"yes\", expected a boolean",
    bad_save_interval =>
        "line 7: state.save_interval: \"5\" is not a duration like \"2s\" or \"500ms\": time unit \
         needed, for example 5sec or 5ms",
    empty_state_file =>
        "line 6: state.file: must name a file",
    journal_too_slow =>
        "line 7: state.journal: \"2s\": a journal interval is longer than zero and at most \"1s\" \
         (\"strict\" writes every change before answering; \"off\" keeps no journal)",
    bad_journal =>
        "line 8: state.journal: \"sometimes\": expected a duration up to \"1s\" (like \"200ms\"), \
         \"strict\" or \"off\"",
    bad_incorrect_action =>
        "line 21: tiers.free.incorrect_tasks.action: \"ban\": expected \"block\" or \"flag\"",
    bad_relax_action =>
        "line 18: tiers.free.relax.action: \"double\": expected \"surcharge\" or \"reject\"",
    tier_incorrect_without_rules =>
        "line 13: tiers.free.incorrect_tasks: no [[incorrect_tasks.match]] rule says what an \
         incorrect task is",
    empty_incorrect_tasks =>
        "line 13: incorrect_tasks: no [[incorrect_tasks.match]] rule says what an incorrect task \
         is",
    tier_relax_without_relax_section =>
        "line 13: tiers.free.relax: needs a [relax] section: its mode_pointer tells relax jobs \
         apart",
    match_without_condition =>
        "line 19: incorrect_tasks.match[1]: sets no condition: give statuses, pointer (with \
         values or contains) or contains",
    match_values_without_pointer =>
        "line 15: incorrect_tasks.match[0].values: values are compared with the field at \
         pointer: give pointer",
    match_bad_status =>
        "line 16: incorrect_tasks.match[0].statuses: 4222 is not an HTTP status (100-599)",
    match_bad_pointer =>
        "line 16: incorrect_tasks.match[0].pointer: a JSON pointer starts with '/', e.g. \
         \"/error/code\"",
    match_bad_on =>
        "line 16: incorrect_tasks.match[0].on: \"create\": expected \"response\" or \"task\"",
    match_empty_contains =>
        "line 15: incorrect_tasks.match[0].contains: an empty string would match every answer",
    match_on_task_without_success =>
        "line 23: incorrect_tasks.match[0].on: \"task\" needs tasks.success: the statuses of a \
         task that succeeded (the other terminal ones failed)",
    incorrect_class_not_a_job =>
        "line 14: incorrect_tasks.classes: class \"default\" is not a job class (list it in a \
         [[jobs]] entry)",
    relax_unknown_earn_class =>
        "line 15: relax.earn_classes: unknown class \"imagin\" (classes come from [[route]] \
         entries and routing.default_class)",
    relax_bad_mode_pointer =>
        "line 14: relax.mode_pointer: a JSON pointer starts with '/', e.g. \"/process_mode\"",
    relax_bad_default_mode =>
        "line 15: relax.default_mode: \"slow\": expected \"fast\", \"turbo\" or \"relax\"",
    relax_bad_unreadable_mode =>
        "line 15: relax.unreadable_mode: \"free\": expected \"fast\", \"turbo\" or \"relax\"",
    relax_earn_task_without_success =>
        "line 22: relax.earn_classes: class \"imagine\" runs in task mode: earning needs \
         tasks.success (the statuses of a task that succeeded)",
    relax_cost_multiplier_one =>
        "line 19: tiers.free.relax.cost_multiplier: must be at least 2 (a multiplier of 1 is no \
         surcharge)",
    relax_cost_multiplier_with_reject =>
        "line 19: tiers.free.relax.cost_multiplier: only applies to action = \"surcharge\"",
    bad_inspect_limit =>
        "line 4: server.inspect_limit: \"64\" is below the minimum of 1KB",
    tasks_success_not_terminal =>
        "line 19: tasks.success: \"DONE\" is not one of tasks.terminal (SUCCESS, FAILURE)",
    zero_max_connections =>
        "line 4: server.max_connections: must be at least 1",
    small_max_header_bytes =>
        "line 5: server.max_header_bytes: \"100B\" is too small: a request head needs at least 1KB",
    bad_shutdown_deadline =>
        "line 4: server.shutdown_deadline: must be longer than zero",
    shadow_not_bool =>
        "line 12: tiers.basic.limits[0].shadow: invalid type: string \"yes\", expected a boolean",
}

/// A fixture added without an expectation (or an expectation whose file is gone) fails here.
#[test]
fn every_fixture_has_an_expectation() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixture_dir())
        .expect("tests/fixtures/bad exists")
        .map(|e| e.expect("dir entry").path())
        .map(|p| {
            assert_eq!(
                p.extension().and_then(|e| e.to_str()),
                Some("toml"),
                "unexpected non-.toml file in tests/fixtures/bad: {}",
                p.display()
            );
            p.file_stem().unwrap().to_str().unwrap().to_owned()
        })
        .collect();
    let expected: BTreeSet<String> = FIXTURES.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(FIXTURES.len(), expected.len(), "a fixture is listed twice");
    let missing: Vec<_> = on_disk.difference(&expected).collect();
    let stale: Vec<_> = expected.difference(&on_disk).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "fixtures without an expectation: {missing:?}; expectations without a fixture: {stale:?}"
    );
}

/// Each error names a line, except where the value has no position in the file.
#[test]
fn messages_have_the_documented_shape() {
    for (name, msg) in FIXTURES {
        let (field, _) = msg
            .strip_prefix("line ")
            .and_then(|rest| rest.split_once(": "))
            .map(|(n, rest)| {
                assert!(n.parse::<usize>().is_ok(), "{name}: bad line number {n:?}");
                rest.split_once(": ").unwrap()
            })
            .unwrap_or_else(|| msg.split_once(": ").unwrap());
        assert!(
            !field.is_empty() && !field.contains(' '),
            "{name}: field path {field:?}"
        );
        assert!(
            !field.contains("$__"),
            "{name}: private serde name in {field:?}"
        );
    }
}

/// Type errors on position-carrying (`Spanned`) values name the field, not serde internals.
#[test]
fn type_error_on_spanned_values_names_the_plain_field() {
    let cases = [
        (
            "[server]\nupstream = 9000\n",
            "line 2: server.upstream: invalid type: integer `9000`, expected a string",
        ),
        (
            "[server]\nupstream = \"http://127.0.0.1:9000\"\nupstream_timeout = 60\n",
            "line 3: server.upstream_timeout: invalid type: integer `60`, expected a string",
        ),
        (
            "[identity]\ntrusted_proxies = [\"10.0.0.0/8\", 7]\n",
            "line 2: identity.trusted_proxies[1]: invalid type: integer `7`, expected a string",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(
            parse_err(text, &Overrides::default()).to_string(),
            expected,
            "{text}"
        );
    }
}

/// A bad command-line value has no line in the file, so the error names only the field.
#[test]
fn bad_overrides_name_the_field_without_a_line() {
    let text = read_fixture("bad_scheme_upstream");
    let o = |listen: Option<&str>, upstream: Option<&str>, admin: Option<&str>| Overrides {
        listen: listen.map(Into::into),
        upstream: upstream.map(Into::into),
        admin: admin.map(Into::into),
        ..Overrides::default()
    };
    assert_eq!(
        parse_err(&text, &o(None, Some("ftp://127.0.0.1:9443"), None)).to_string(),
        "server.upstream: \"ftp://127.0.0.1:9443\": only http:// and https:// upstreams are \
         supported"
    );
    let ok_upstream = Some("http://127.0.0.1:9000");
    assert_eq!(
        parse_err(&text, &o(Some("127.0.0.1"), ok_upstream, None)).to_string(),
        "server.listen: \"127.0.0.1\" is not a socket address like 127.0.0.1:8080"
    );
    assert_eq!(
        parse_err(&text, &o(None, ok_upstream, Some("localhost:9090"))).to_string(),
        "server.admin: \"localhost:9090\" is not a socket address like 127.0.0.1:8080"
    );
}

/// The upstream fixtures hold no other mistake: with a good `--upstream` they are accepted.
#[test]
fn upstream_override_repairs_the_upstream_fixtures() {
    let overrides = Overrides {
        upstream: Some("http://127.0.0.1:9000".into()),
        ..Overrides::default()
    };
    for name in [
        "bad_scheme_upstream",
        "upstream_with_path",
        "missing_upstream",
    ] {
        let config = Config::parse(&read_fixture(name), &overrides)
            .unwrap_or_else(|e| panic!("{name} with --upstream: {e}"));
        assert_eq!(config.server.upstream.authority, "127.0.0.1:9000", "{name}");
    }
}

#[test]
fn unreadable_file_names_the_path() {
    let err = Config::load(
        Path::new("/nonexistent/floodgate.toml"),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot read config file /nonexistent/floodgate.toml: "),
        "{msg}"
    );
}

#[test]
fn shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for name in ["floodgate.toml", "midjourney.toml", "bench.toml"] {
        if let Err(e) = Config::load(&dir.join(name), &Overrides::default()) {
            panic!("config/{name}: {e}");
        }
    }
}

/// The TOML inside deploy/kubernetes/configmap.yaml (the block under `floodgate.toml: |`).
fn configmap_toml() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/configmap.yaml");
    let yaml = std::fs::read_to_string(path).unwrap();
    yaml.lines()
        .skip_while(|l| l.trim() != "floodgate.toml: |")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_kubernetes_configmap_is_valid() {
    let text = configmap_toml();
    assert!(text.contains("[server]"), "no TOML found:\n{text}");
    // The admin token comes from a mounted Secret: a file of the same shape stands in for it.
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "0123456789abcdef\n").unwrap();
    let mounted = "\"/etc/floodgate-admin/token\"";
    assert!(
        text.contains(mounted),
        "the token is read from the Secret's mount"
    );
    let text = text.replace(mounted, &format!("{:?}", secret.path()));
    let config = Config::parse(&text, &Overrides::default())
        .unwrap_or_else(|e| panic!("deploy/kubernetes/configmap.yaml: {e}"));
    assert!(config.server.admin_token.is_some(), "/usage is guarded");
    assert!(config.server.watch_config);
    assert_eq!(config.server.admin, Some("0.0.0.0:9090".parse().unwrap()));
    let summary = config.summary();
    assert!(summary.contains("generate[shadow minute=5]"), "{summary}");
}
