//! The documentation stays true to the code:
//!
//! - ARCHITECTURE.md names every module file under `src/` and every module directory (as
//!   backticked paths from the repository root, like `src/proxy/upstream/conn.rs` and
//!   `src/proxy/upstream/`; unit-test children named `tests.rs` are covered by their parent),
//!   and every `src/` path it names exists, and so does every code path it cites
//!   (`Proxy::handle`, `request_checks::check`);
//! - docs/reference/config.md lists exactly the keys the config parser accepts — found by asking
//!   the parser itself: each struct of the file denies unknown fields, and its error for a probe
//!   field lists the fields it accepts — with a reload column that agrees with what a reload
//!   leaves for a restart (`restart_only_changes` in src/config/server.rs);
//! - docs/reference/metrics.md lists exactly the `floodgate_*` metrics registered in `src/`.
//!
//! No network, no server: files and the parser only.

use std::collections::BTreeSet;
use std::path::Path;

use floodgate::config::{Config, ConfigError, Overrides};

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---- ARCHITECTURE.md and the module tree ----------------------------------------------------

/// Every `.rs` file under `dir`, as a path from the repository root (`src/...`), except the
/// unit-test children named `tests.rs`; and every directory holding such a file, as `src/.../`.
fn module_files(dir: &Path, rel: &str, out: &mut BTreeSet<String>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path.is_dir() {
            module_files(&path, &format!("{rel}/{name}"), out);
        } else if name.ends_with(".rs") && name != "tests.rs" {
            out.insert(format!("{rel}/{name}"));
            if rel != "src" {
                out.insert(format!("{rel}/"));
            }
        }
    }
}

fn source_modules() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    module_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "src",
        &mut out,
    );
    out
}

/// The backticked `src/...` paths a document names.
fn named_src_paths(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("src/") && !s.contains(char::is_whitespace))
        .map(str::to_owned)
        .collect()
}

#[test]
fn architecture_names_every_module() {
    let named = named_src_paths(&read("ARCHITECTURE.md"));
    let modules = source_modules();
    assert!(modules.len() >= 60, "{modules:?}");
    let missing: Vec<_> = modules.difference(&named).collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not name these modules (as `src/...` paths): {missing:?}"
    );
}

#[test]
fn every_src_path_architecture_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gone: Vec<_> = named_src_paths(&read("ARCHITECTURE.md"))
        .into_iter()
        .filter(|p| {
            let path = root.join(p);
            if p.ends_with('/') {
                !path.is_dir()
            } else {
                !path.is_file()
            }
        })
        .collect();
    assert!(
        gone.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {gone:?}"
    );
}

// ---- docs/reference/config.md and the config parser -----------------------------------------

const PROBE: &str = "zz_probe";

/// The fields the parser accepts where `text` puts the probe field: every struct of the file
/// denies unknown fields, and serde's error lists the ones it expects. `None` when the probe
/// did not land in a struct (a scalar, a list, a map of scalars).
fn accepted_fields(text: &str) -> Option<Vec<String>> {
    let overrides = Overrides {
        upstream: Some("http://127.0.0.1:9000".into()),
        ..Overrides::default()
    };
    match Config::parse(text, &overrides) {
        Err(ConfigError::Invalid(located)) => {
            // "unknown field `zz_probe`, expected one of `a`, `b`" / "..., expected `a`"
            let rest = located
                .message
                .strip_prefix(&format!("unknown field `{PROBE}`"))?;
            Some(
                rest.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect(),
            )
        }
        _ => None,
    }
}

/// Walks the file's structure from `fields` (the struct at `table`, opened by the headers in
/// `open`) and collects the keys that hold values, written as the reference writes them:
/// `server.listen`, `route.path`, `tiers.<name>.limits.per_minute`.
fn collect_keys(
    open: &str,
    table: &str,
    doc: &str,
    fields: Vec<String>,
    keys: &mut BTreeSet<String>,
) {
    for field in fields {
        let (t, d) = match table {
            "" => (field.clone(), field.clone()),
            _ => (format!("{table}.{field}"), format!("{doc}.{field}")),
        };
        // The probe lands in a table, an array of tables, or tables under names the operator
        // chooses (tiers, classes); the header that opened it stays written out for its fields.
        let shapes = [
            (format!("[{t}]"), t.clone(), d.clone()),
            (format!("[[{t}]]"), t.clone(), d.clone()),
            (
                format!("[{t}.zz_name]"),
                format!("{t}.zz_name"),
                format!("{d}.<name>"),
            ),
        ];
        let found = shapes.into_iter().find_map(|(header, table, doc)| {
            accepted_fields(&format!("{open}{header}\n{PROBE} = 1\n"))
                .map(|sub| (header, table, doc, sub))
        });
        match found {
            Some((header, table, doc, sub)) => {
                collect_keys(&format!("{open}{header}\n"), &table, &doc, sub, keys)
            }
            None => {
                keys.insert(d); // a value: scalar, list, or a table of values
            }
        }
    }
}

/// Every key the config parser accepts.
fn accepted_keys() -> BTreeSet<String> {
    let top = accepted_fields(&format!("{PROBE} = 1\n"))
        .expect("the top level of the config refuses unknown fields and lists its own");
    let mut keys = BTreeSet::new();
    collect_keys("", "", "", top, &mut keys);
    keys
}

/// One row of a reference table: the backticked key in the first column, then the cells.
fn table_rows(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect();
            let key = cells[0].trim_matches('`').to_owned();
            (key, cells[1..].to_vec())
        })
        .collect()
}

fn documented_keys() -> Vec<(String, Vec<String>)> {
    let rows = table_rows(&read("docs/reference/config.md"));
    for (key, cells) in &rows {
        assert_eq!(
            cells.len(),
            4,
            "config.md: {key}: a row is | key | type | default | reload | meaning |"
        );
        assert!(
            cells.iter().all(|c| !c.is_empty()),
            "config.md: {key}: an empty cell"
        );
        assert!(
            ["yes", "restart", "refused"].contains(&cells[2].as_str()),
            "config.md: {key}: reload is yes, restart or refused, not {:?}",
            cells[2]
        );
    }
    rows
}

#[test]
fn the_parser_lists_its_keys_to_the_probe() {
    let keys = accepted_keys();
    for key in [
        "server.listen",
        "accounts",
        "route.body_classes",
        "tiers.<name>.limits.per_minute",
        "tiers.<name>.relax.cost_multiplier",
        "classes.<name>.max_body",
        "incorrect_tasks.match.values",
        "store.type",
    ] {
        assert!(keys.contains(key), "{key} not found in {keys:?}");
    }
}

#[test]
fn the_config_reference_documents_exactly_the_accepted_keys() {
    let rows = documented_keys();
    let documented: BTreeSet<String> = rows.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(documented.len(), rows.len(), "config.md repeats a key");
    let accepted = accepted_keys();
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        unknown.is_empty(),
        "docs/reference/config.md documents keys the parser refuses: {unknown:?}"
    );
    let undocumented: Vec<_> = accepted.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "keys the parser accepts are missing from docs/reference/config.md: {undocumented:?}"
    );
}

/// The settings a reload leaves for a restart, as `restart_only_changes` names them.
fn restart_only() -> BTreeSet<String> {
    let src = read("src/config/server.rs");
    let body = src
        .split("pub fn restart_only_changes")
        .nth(1)
        .expect("src/config/server.rs has restart_only_changes");
    let body = body.split("\n}\n").next().unwrap_or(body);
    body.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| *s == "state" || s.starts_with("server."))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_reload_column_agrees_with_what_a_reload_leaves_for_a_restart() {
    let restart = restart_only();
    assert!(restart.contains("server.listen") && restart.contains("state"));
    for (key, cells) in documented_keys() {
        let section = key.split('.').next().unwrap_or_default();
        let waits = match section {
            "server" => restart.contains(&key),
            "state" => restart.contains("state"),
            // built once at start (src/main.rs), whatever a reload says
            "store" => true,
            _ => continue,
        };
        let want = if waits { "restart" } else { "yes" };
        assert_eq!(cells[2], want, "config.md: reload of {key}");
    }
}

// ---- docs/reference/metrics.md and the registered metrics -----------------------------------

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

/// The `"floodgate_..."` string literals in every source file: the metrics floodgate registers.
fn registered_metrics() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = BTreeSet::new();
    module_files(&root.join("src"), "src", &mut files);
    let mut out = BTreeSet::new();
    for file in files.iter().filter(|f| f.ends_with(".rs")) {
        let text = read(file);
        for (i, _) in text.match_indices("\"floodgate_") {
            let literal: String = text[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if text[i + 1 + literal.len()..].starts_with('"') {
                out.insert(literal);
            }
        }
    }
    out
}

#[test]
fn the_metrics_reference_lists_exactly_the_registered_metrics() {
    let registered = registered_metrics();
    assert!(registered.len() >= 25, "{registered:?}");
    let documented = metric_names(&read("docs/reference/metrics.md"));
    let missing: Vec<_> = registered.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "docs/reference/metrics.md lacks {missing:?}"
    );
    let unknown: Vec<_> = documented.difference(&registered).collect();
    assert!(
        unknown.is_empty(),
        "docs/reference/metrics.md names metrics floodgate does not register: {unknown:?}"
    );
}

/// Every item of `src/` by name: what `fn`, `struct`, `enum`, `type`, `trait`, `mod`, `const`,
/// `static` and `macro_rules!` define, the file and directory names, and `as` aliases.
fn source_item_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for rel in source_modules().iter().filter(|m| m.ends_with(".rs")) {
        let module = rel.trim_start_matches("src/").trim_end_matches(".rs");
        names.extend(module.split('/').map(str::to_owned));
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        let text = std::fs::read_to_string(&file).unwrap();
        let words: Vec<&str> = text
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '!'))
            .filter(|w| !w.is_empty())
            .collect();
        for pair in words.windows(2) {
            let defines = [
                "fn",
                "struct",
                "enum",
                "type",
                "trait",
                "mod",
                "const",
                "static",
                "macro_rules!",
                "as",
            ];
            if defines.contains(&pair[0]) {
                names.insert(pair[1].to_owned());
            }
        }
    }
    names
}

/// The code ARCHITECTURE.md cites by path (`Proxy::handle`, `contain::contained`) exists: each
/// segment names a module, a type, a function or an alias of `src/`.
#[test]
fn every_code_path_architecture_cites_exists() {
    let text = read("ARCHITECTURE.md");
    let names = source_item_names();
    // Not floodgate's: std, a dependency, and the test-name patterns of the scenario suite.
    let foreign = ["SystemTime", "toml", "name"];
    let mut missing = Vec::new();
    for cited in text.split('`').skip(1).step_by(2) {
        let segments: Vec<&str> = cited.split("::").collect();
        let is_path = segments.len() > 1
            && segments
                .iter()
                .all(|s| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_'));
        if !is_path || foreign.contains(&segments[0]) {
            continue;
        }
        if segments.iter().any(|s| !names.contains(*s)) {
            missing.push(cited.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md cites code that does not exist: {missing:?}"
    );
}
