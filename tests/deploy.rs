//! The deployment kit stays true to the code: the dashboard queries only metrics floodgate
//! exports and shows every one of them, and the systemd unit reloads with SIGHUP. (The metrics
//! reference, docs/reference/metrics.md, is checked by tests/docs.rs.)

use std::collections::BTreeSet;
use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Metric names in `text`: `floodgate_` followed by lower-case letters and underscores, with
/// histogram series suffixes folded into their metric.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("floodgate_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.clone(), |n, s| {
                n.strip_suffix(s).map_or(n.clone(), str::to_owned)
            });
        if name.len() > "floodgate_".len() {
            out.insert(name);
        }
    }
    out
}

/// The metrics floodgate registers: the quoted `"floodgate_..."` names in src/metrics/ and in
/// the shared store's health metrics (src/store/failover.rs).
fn exported() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics");
    let mut src = read("src/store/failover.rs");
    for entry in std::fs::read_dir(&dir).unwrap() {
        src += &std::fs::read_to_string(entry.unwrap().path()).unwrap();
    }
    let quoted: String = src
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("floodgate_"))
        .collect::<Vec<_>>()
        .join(" ");
    metric_names(&quoted)
}

#[test]
fn the_dashboard_shows_every_exported_metric_and_nothing_else() {
    let dashboard = read("deploy/grafana/floodgate.json");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    assert_eq!(parsed["uid"], "floodgate");
    let used = metric_names(&dashboard);
    let exported = exported();
    assert!(exported.len() >= 19, "{exported:?}");
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries unknown metrics: {unknown:?}"
    );
    let missing: Vec<_> = exported.difference(&used).collect();
    assert!(missing.is_empty(), "the dashboard leaves out: {missing:?}");
}

#[test]
fn the_systemd_unit_reloads_with_sighup_and_outlasts_the_drain() {
    let unit = read("deploy/systemd/floodgate.service");
    for line in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=floodgate",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line:?}");
    }
}

#[test]
fn the_deployment_probes_the_admin_port_and_is_scraped() {
    let deployment = read("deploy/kubernetes/deployment.yaml");
    for want in [
        "httpGet: { path: /readyz, port: admin }",
        "httpGet: { path: /healthz, port: admin }",
        "prometheus.io/scrape: \"true\"",
        "prometheus.io/port: \"9090\"",
        "containerPort: 9090",
    ] {
        assert!(deployment.contains(want), "deployment.yaml lacks {want:?}");
    }
}

/// The alerting rules are valid, query only metrics floodgate exports, and fire as their unit
/// tests say (`promtool`, Debian's `prometheus` package, which `.ci/run` installs).
#[test]
fn the_alerting_rules_check_and_pass_their_unit_tests() {
    let rules = read("deploy/prometheus/alerts.yml");
    let unknown: Vec<_> = metric_names(&rules)
        .difference(&exported())
        .cloned()
        .collect();
    assert!(
        unknown.is_empty(),
        "the rules query unknown metrics: {unknown:?}"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts.test.yml"][..],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs (apt-get install prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
