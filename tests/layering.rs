//! The layers of `src/`, as DESIGN.md writes them, hold: no module imports one above its own
//! layer, no two top-level modules import each other (directly or round a cycle), and no SDK
//! type appears outside the adapters. The rules are checked on a fixture tree first, so the
//! test is shown to fail when an upward import, a cycle or a leaked SDK type is added.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One layer of DESIGN.md's table: its rank and the top-level modules (folders or files of
/// `src/`) in it.
#[derive(Debug, Clone)]
struct Layer {
    rank: usize,
    name: String,
    modules: Vec<String>,
}

/// The layer table of DESIGN.md: the lines between `<!-- layers -->` and `<!-- /layers -->`,
/// each `N. name: module, module (what it holds)`.
fn layers_from_design(design: &str) -> Vec<Layer> {
    let start = design.find("<!-- layers -->").expect("DESIGN.md has a <!-- layers --> table");
    let end = design.find("<!-- /layers -->").expect("DESIGN.md closes the layers table");
    design[start..end]
        .lines()
        .filter_map(|l| {
            let (rank, rest) = l.trim().split_once(". ")?;
            let rank: usize = rank.parse().ok()?;
            let (name, rest) = rest.split_once(':')?;
            let modules = rest.split('(').next()?.split(',').map(|m| m.trim().trim_matches('`').to_string()).collect();
            Some(Layer { rank, name: name.trim().to_string(), modules })
        })
        .collect()
}

/// Rust text with comments and string literals blanked out, so a `crate::` in a doc comment or
/// a message is not an import.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && i + 1 < b.len() && (b[i + 1] == b'"' || b[i + 1] == b'#') && !prev_ident(b, i) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == b'"' {
                let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = (j + close.len()).min(b.len());
                out.push_str("\"\"");
            } else {
                out.push('r');
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('"', '\n'); a lifetime has no closing quote this close.
            let mut j = i + 1;
            if b[j] == b'\\' {
                j += 2;
            } else {
                j += 1;
            }
            while j < b.len() && b[j] != b'\'' {
                j += 1;
            }
            i = j + 1;
            out.push_str("' '");
        } else {
            let ch = src[i..].chars().next().expect("in range");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The code without its `#[cfg(test)]` modules: tests may use anything (a test webhook
/// receiver is an axum server).
fn without_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(open) = after.find('{') else { break };
        let head = &after[..open];
        if !head.contains("mod ") || head.contains(';') {
            // An attribute on something else: keep it.
            out.push_str("#[cfg(test)]");
            rest = &after["#[cfg(test)]".len()..];
            continue;
        }
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn prev_ident(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// The module a path under `src/` belongs to, as the cycle check sees it: `layer::name` inside
/// a layer folder with several modules, else the top-level module.
fn module_of(rel: &Path, layers: &[Layer]) -> Option<(String, usize)> {
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    let top = parts.first()?;
    let layer = layers.iter().find(|l| l.modules.iter().any(|m| m == top))?;
    let grouped = layer.modules.len() == 1
        && matches!(layer.name.as_str(), "domain" | "seams" | "config" | "monitor" | "features");
    let module = match (grouped, parts.get(1)) {
        (true, Some(second)) if second != "mod" => format!("{top}::{second}"),
        _ => top.clone(),
    };
    Some((module, layer.rank))
}

/// The modules a file's code names through `crate::…`, as (module, layer rank).
fn imports(code: &str, layers: &[Layer]) -> BTreeSet<(String, usize)> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `pgvault_crate::`, not ours
        }
        let path: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        if segments.is_empty() {
            continue;
        }
        let rel: PathBuf = segments.iter().take(2).collect();
        if let Some(m) = module_of(&rel, layers) {
            out.insert(m);
        }
    }
    out
}

/// Crates only the adapters (and the composition root that builds them) may name.
const SDK_CRATES: &[&str] = &[
    "azure_core",
    "azure_identity",
    "azure_storage_blob",
    "azure_storage_queue",
    "azure_security_keyvault_secrets",
    "azure_security_keyvault_keys",
    "azure_storage_sas",
    "azure_storage_common",
];
/// Crates of the edges (HTTP server and command line): never below the handlers and the CLI.
const EDGE_CRATES: &[&str] = &["axum", "clap"];

/// What would make the domain do I/O: it stays pure types and plans.
const IO_PATHS: &[&str] = &["tokio", "tokio_postgres", "reqwest", "std::fs", "std::process", "std::net"];

/// Every rule broken in `files` (path under `src/` -> text).
fn violations(files: &BTreeMap<PathBuf, String>, layers: &[Layer]) -> Vec<String> {
    let mut out = Vec::new();
    let rank_of = |name: &str| layers.iter().find(|l| l.name == name).map(|l| l.rank);
    let adapters = rank_of("adapters").expect("DESIGN.md names an adapters layer");
    let edges_rank = rank_of("edges").expect("DESIGN.md names an edges layer");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in files {
        let Some((me, my_rank)) = module_of(rel, layers) else { continue };
        let code = without_test_modules(&code_only(text));
        for (dep, dep_rank) in imports(&code, layers) {
            if dep_rank > my_rank {
                out.push(format!(
                    "{}: {me} (layer {my_rank}) imports {dep} (layer {dep_rank}), a layer above it",
                    rel.display()
                ));
            }
            if dep != me {
                graph.entry(me.clone()).or_default().insert(dep);
            }
        }
        graph.entry(me.clone()).or_default();
        for krate in SDK_CRATES {
            if my_rank != adapters && contains_path(&code, krate) {
                out.push(format!("{}: {me} names the SDK crate {krate}, which only the adapters may", rel.display()));
            }
        }
        for path in IO_PATHS {
            if my_rank == 0 && contains_path(&code, path) {
                out.push(format!("{}: {me} uses {path}: the domain does no I/O", rel.display()));
            }
        }
        for krate in EDGE_CRATES {
            if my_rank < edges_rank && contains_path(&code, krate) {
                out.push(format!("{}: {me} names {krate}, which only the handlers and the CLI may", rel.display()));
            }
        }
    }
    for cycle in cycles(&graph) {
        out.push(format!("import cycle between modules: {}", cycle.join(" -> ")));
    }
    out
}

fn contains_path(code: &str, krate: &str) -> bool {
    let needle = format!("{krate}::");
    code.match_indices(&needle).any(|(at, _)| !prev_ident(code.as_bytes(), at))
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.graph.contains_key(w) {
                continue;
            }
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.found.push(comp);
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
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn read_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    out
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn design_layers() -> Vec<Layer> {
    let layers = layers_from_design(&std::fs::read_to_string(repo().join("DESIGN.md")).unwrap());
    assert!(layers.len() >= 6, "DESIGN.md's layer table: {layers:?}");
    layers
}

#[test]
fn the_rules_catch_an_upward_import_a_cycle_and_a_leaked_sdk_type() {
    let layers = design_layers();
    let fixture: BTreeMap<PathBuf, String> = [
        ("domain/manifest.rs", "//! uses crate::features in a comment only\nuse crate::domain::layout::Tags;\nconst S: &str = \"crate::features::x\";\n"),
        ("domain/layout.rs", "pub type Tags = ();\n#[cfg(test)]\nmod tests {\n    use crate::features::backup::run;\n}\n"),
        // An upward import: the domain naming a feature.
        ("domain/policy.rs", "use crate::features::backup::run;\n"),
        // A cycle between two features.
        ("features/backup.rs", "use crate::features::restore::x;\npub fn run() {}\n"),
        ("features/restore.rs", "pub fn x() { crate::features::backup::run() }\n"),
        // An SDK type in a feature, and clap in the domain.
        ("features/catalog.rs", "fn f(_: azure_core::http::Url) {}\n"),
        ("domain/jobs.rs", "#[derive(clap::ValueEnum)] enum E { A }\nfn f() { std::fs::read(\"x\"); }\n"),
        // Allowed: the adapters name the SDK, the CLI names everything.
        ("azure/blob.rs", "use azure_core::http::Url;\nuse crate::seams::store::BlobStore;\n"),
        ("cli/mod.rs", "use crate::azure::blob;\nuse crate::handler::app;\nuse clap::Parser;\n"),
    ]
    .into_iter()
    .map(|(p, t)| (PathBuf::from(p), t.to_string()))
    .collect();
    let v = violations(&fixture, &layers);
    let has = |needle: &str| v.iter().any(|l| l.contains(needle));
    assert!(has("domain/policy.rs: domain::policy (layer 0) imports features::backup"), "{v:#?}");
    assert!(has("import cycle between modules: features::backup -> features::restore"), "{v:#?}");
    assert!(has("features/catalog.rs: features::catalog names the SDK crate azure_core"), "{v:#?}");
    assert!(has("domain/jobs.rs: domain::jobs names clap"), "{v:#?}");
    assert!(has("domain/jobs.rs: domain::jobs uses std::fs: the domain does no I/O"), "{v:#?}");
    assert_eq!(v.len(), 5, "comments, strings, test modules, the adapters and the CLI are allowed: {v:#?}");
}

#[test]
fn src_keeps_the_layers_design_md_writes() {
    let layers = design_layers();
    let tree = read_tree(&repo().join("src"));
    // Every top-level module of src/ is in the table, so a new one must be placed.
    for rel in tree.keys() {
        let top = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        assert!(
            layers.iter().any(|l| l.modules.contains(&top)),
            "src/{} is in no layer of DESIGN.md's table: place it there",
            rel.display()
        );
    }
    let v = violations(&tree, &layers);
    assert!(v.is_empty(), "layering broken:\n{}", v.join("\n"));
}
