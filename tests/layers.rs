//! The module layers stay layered: no import cycle between the files of `src/`, and the pure core
//! and the lower layers import nothing from the I/O edges above them.
//!
//! The import graph is read from the source: every `crate::a::b` path and `super::x` path (in
//! `use` items or inline), resolved to the longest module file it names. Comments and inline
//! `#[cfg(test)] mod tests` blocks are left out; a parent's `mod child;` declaration is not an
//! import. A path through a parent's re-export (`pub use child::Item`) is an import of the child
//! that defines the item, so a facade `mod.rs` hides no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Every module file under `src/` (but `lib.rs`, `main.rs` and `tests.rs` children), by path.
fn modules() -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut out = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Module = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        let name = parts.last().cloned().unwrap_or_default();
        if name == "tests" || parts == ["lib"] || parts == ["main"] {
            continue;
        }
        out.insert(parts, file);
    }
    out
}

/// The code of a file without comments and without its inline unit tests.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths after each `prefix` in `code`: `crate::a::b::{c, d::e}` gives `a::b`, `a::b::c`
/// and `a::b::d::e`.
fn paths_after(code: &str, prefix: &str) -> Vec<Module> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let base: Module = rest[..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if rest[end..].starts_with('{') {
            let group = &rest[end + 1..rest[end..].find('}').map_or(rest.len(), |c| end + c)];
            for item in group.split(',') {
                let item = item.split_whitespace().next().unwrap_or("");
                let mut path = base.clone();
                path.extend(
                    item.split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                );
                out.push(path);
            }
        }
        out.push(base);
    }
    out
}

/// Items a module re-exports from its children (`pub use child::{A, B}`): item -> child.
type ReExports = BTreeMap<(Module, String), Module>;

fn re_exports(modules: &BTreeMap<Module, PathBuf>) -> ReExports {
    let mut out = ReExports::new();
    for (module, file) in modules {
        let code = code(file);
        let statements = code.split(';').map(str::trim);
        for statement in statements.filter(|s| s.starts_with("pub use ")) {
            let rest = statement
                .trim_start_matches("pub use ")
                .replace(char::is_whitespace, "");
            let rest = rest.replace(',', ", ");
            for path in paths_after(&format!(" {rest}"), " ") {
                let Some((item, within)) = path.split_last() else {
                    continue;
                };
                let mut child = module.clone();
                child.extend(within.iter().cloned());
                if within.first().is_some_and(|c| c != "crate" && c != "super")
                    && modules.contains_key(&child)
                {
                    out.insert(
                        (module.clone(), item.trim_end_matches(';').to_owned()),
                        child,
                    );
                }
            }
        }
    }
    out
}

/// The module a path names: the longest prefix that is a module file, followed through a
/// re-export to the child that defines the item.
fn resolve(modules: &BTreeMap<Module, PathBuf>, re: &ReExports, path: &[String]) -> Option<Module> {
    let n = (1..=path.len())
        .rev()
        .find(|&n| modules.contains_key(&path[..n]))?;
    let module = path[..n].to_vec();
    match path.get(n) {
        Some(item) => Some(
            re.get(&(module.clone(), item.clone()))
                .cloned()
                .unwrap_or(module),
        ),
        None => Some(module),
    }
}

/// Each module's imports of other modules.
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let modules = modules();
    let re = re_exports(&modules);
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let code = code(file);
        // `super::` from `a/b.rs` is `a`; from `a/b/mod.rs` it is `a` too.
        let parent: Module = module[..module.len().saturating_sub(1)].to_vec();
        let mut deps = BTreeSet::new();
        let crate_paths = paths_after(&code, "crate::");
        let super_paths = paths_after(&code, "super::").into_iter().map(|p| {
            let mut full = parent.clone();
            full.extend(p);
            full
        });
        for path in crate_paths.into_iter().chain(super_paths) {
            if let Some(m) = resolve(&modules, &re, &path) {
                if &m != module {
                    deps.insert(m);
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'g Module, usize>,
        low: BTreeMap<&'g Module, usize>,
        stack: Vec<&'g Module>,
        on_stack: BTreeSet<&'g Module>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g Module) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let Some((w, _)) = s.graph.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(w.join("/"));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn the_files_of_src_import_each_other_without_cycles() {
    let graph = graph();
    assert!(
        graph.len() > 50,
        "the walk found the modules: {}",
        graph.len()
    );
    let found = cycles(&graph);
    assert!(found.is_empty(), "import cycles between files: {found:?}");
}

/// The I/O edges and wiring, and the pure core and the layers below them: what each of the
/// latter may not import. Every top-level module is in one of the two lists.
const EDGES: [&str; 9] = [
    "proxy",
    "server",
    "app",
    "admin",
    "shared",
    "reload",
    "store",
    "status",
    "access_log",
];
const BELOW_THE_EDGES: [&str; 11] = [
    "accounts",
    "classify",
    "identity",
    "limits",
    "penalties",
    "clock",
    "json",
    "config",
    "queue",
    "metrics",
    "allocator",
];

/// The imports in `graph` from a module below the edges to an edge, as "from -> to".
fn upward_imports(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<String> {
    let mut up = Vec::new();
    for (module, deps) in graph {
        if !BELOW_THE_EDGES.contains(&module[0].as_str()) {
            continue;
        }
        for dep in deps {
            if EDGES.contains(&dep[0].as_str()) {
                up.push(format!("{} -> {}", module.join("/"), dep.join("/")));
            }
        }
    }
    up
}

/// The graph of top-level modules (`proxy/jobs.rs` is `proxy`): a cycle here is two parts of
/// the architecture that lean on each other, even when no two files do.
fn top_level(graph: &BTreeMap<Module, BTreeSet<Module>>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut out: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, deps) in graph {
        let from = vec![module[0].clone()];
        let entry = out.entry(from.clone()).or_default();
        for dep in deps {
            let to = vec![dep[0].clone()];
            if to != from {
                entry.insert(to);
            }
        }
    }
    out
}

#[test]
fn every_top_level_module_is_in_a_layer() {
    let graph = graph();
    let unplaced: BTreeSet<&str> = graph
        .keys()
        .map(|m| m[0].as_str())
        .filter(|m| !EDGES.contains(m) && !BELOW_THE_EDGES.contains(m))
        .collect();
    assert!(unplaced.is_empty(), "modules in no layer: {unplaced:?}");
}

#[test]
fn the_core_imports_nothing_from_the_edges() {
    let up = upward_imports(&graph());
    assert!(up.is_empty(), "imports that point up the layers: {up:#?}");
}

#[test]
fn the_top_level_modules_import_each_other_without_cycles() {
    let found = cycles(&top_level(&graph()));
    assert!(
        found.is_empty(),
        "cycles between top-level modules: {found:?}"
    );
}

#[test]
fn the_checker_sees_a_cycle_and_an_upward_import() {
    // The parser on known text: a grouped import, an inline path, a super path, a comment.
    let code = "use crate::a::{b, c::d};\n// crate::z\nfn f() { crate::e::f(); super::g::h(); }";
    let crate_paths = paths_after(code, "crate::");
    let names: Vec<String> = crate_paths.iter().map(|p| p.join("::")).collect();
    assert!(names.contains(&"a::b".into()) && names.contains(&"a::c::d".into()));
    assert!(names.contains(&"e::f".into()));
    assert!(
        names.contains(&"z".into()),
        "paths_after alone does not skip comments"
    );
    assert_eq!(paths_after(code, "super::")[0], vec!["g", "h"]);
    // The cycle finder on a known graph.
    let m = |s: &str| vec![s.to_owned()];
    let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    g.insert(m("a"), [m("b")].into());
    g.insert(m("b"), [m("c")].into());
    g.insert(m("c"), [m("a")].into());
    g.insert(m("d"), [m("a")].into());
    assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
    g.insert(m("c"), BTreeSet::new());
    assert!(cycles(&g).is_empty());
    // The upward rule on a known graph: the core importing an edge, and an edge the core.
    let path = |s: &str| s.split('/').map(str::to_owned).collect::<Module>();
    let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    g.insert(path("limits/decide"), [path("proxy/jobs")].into());
    g.insert(path("proxy/jobs"), [path("limits/decide")].into());
    assert_eq!(upward_imports(&g), ["limits/decide -> proxy/jobs"]);
    // Files without a cycle can still make one between their top-level modules.
    let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    g.insert(path("access_log"), [path("proxy/respond")].into());
    g.insert(path("proxy"), [path("access_log")].into());
    g.insert(path("proxy/respond"), BTreeSet::new());
    assert!(cycles(&g).is_empty(), "no file-level cycle");
    assert_eq!(cycles(&top_level(&g)), vec![vec!["access_log", "proxy"]]);
}

/// One convention for unit tests: inline `#[cfg(test)] mod tests` at the end of the file they
/// test, never a `tests.rs` child.
#[test]
fn unit_tests_are_inline() {
    fn tests_files(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                tests_files(&path, out);
            } else if path.file_name().is_some_and(|n| n == "tests.rs") {
                out.push(path.display().to_string());
            }
        }
    }
    let mut found = Vec::new();
    tests_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut found,
    );
    assert!(found.is_empty(), "unit tests belong inline: {found:?}");
}
