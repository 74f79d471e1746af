//! The module graph of `src/` against docs/ARCHITECTURE.md §4: no import cycle between
//! modules, no import from a lower layer up into a higher one, `error` (`ApiError`, the HTTP
//! error) imported only by the edges (L3 and up), and every module's `//!` "May use:" line
//! naming each crate module it imports.
//!
//! A node of the graph is a top-level module with its children, except a child the layout
//! table puts in another layer than its parent (`keys::service` is L2 under the L1 `keys`,
//! `broker::codec` L0 under the L1 `broker`): that child is a node of its own. Cycles are
//! also checked with every child folded into its top-level module. Imports within a node
//! need not be listed; a listed `keys` covers `keys::…`; words naming no crate module
//! (external crates, prose, parenthesised detail) are ignored; `L0–L2` and `everything` are
//! ranges. Files named `*tests.rs` need no "May use:" line.

mod imports;
mod layout;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    str::FromStr,
};

use imports::{join, may_use, scan, Module};
use layout::{covers, cycles, layers, listed, Graph};
use proc_macro2::TokenStream;

/// `src/a/b.rs` and `src/a/b/mod.rs` → `a::b` (`lib.rs`/`main.rs` → the crate root).
pub fn module_of(rel: &Path) -> Module {
    let mut parts: Vec<String> =
        rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A source file: its path under `src/` and its text.
struct Source {
    rel: String,
    text: String,
}

fn split(m: &str) -> Module {
    m.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Every problem of the crate made of `files` against the layout `doc`.
fn check(files: &[Source], doc: &str) -> Vec<String> {
    let g = Graph { layers: layers(doc) };
    let files: Vec<(Module, &Source)> =
        files.iter().map(|f| (module_of(Path::new(&f.rel)), f)).collect();
    let modules: BTreeSet<String> =
        files.iter().filter(|(m, _)| !m.is_empty()).map(|(m, _)| join(m)).collect();
    let resolve = |path: &Module| -> Option<String> {
        (1..=path.len()).rev().map(|k| join(&path[..k])).find(|m| modules.contains(m))
    };

    let mut problems = Vec::new();
    // node → node, and the same with children folded into their top-level module; one
    // example import per edge.
    let (mut nodes, mut tops) = (BTreeMap::new(), BTreeMap::new());
    let mut examples: [BTreeMap<(String, String), String>; 2] = Default::default();
    for (module, file) in &files {
        if module.is_empty() {
            continue; // lib.rs / main.rs: the crate root wires everything (L4)
        }
        let rel = format!("src/{}", file.rel);
        let tokens = TokenStream::from_str(&file.text).unwrap_or_else(|e| panic!("{rel}: {e:?}"));
        let mut paths = Vec::new();
        scan(tokens, module, &mut paths);
        let from = g.node(module);
        let Some(layer) = g.layer(module) else {
            problems.push(format!("{rel}: `{}` has no layer in ARCHITECTURE.md §4", join(module)));
            continue;
        };
        let test_only = rel.ends_with("tests.rs");
        let allowed = may_use(&file.text);
        if allowed.is_none() && !test_only {
            problems.push(format!("{rel}: no `May use:` in its `//!` doc"));
        }
        let allowed = allowed.map(|t| listed(&t, &modules, &g)).unwrap_or_default();
        let mut unlisted = BTreeSet::new();
        for path in &paths {
            let Some(target) = resolve(path) else { continue };
            let to = g.node(&split(&target));
            if to == from {
                continue; // its own module or children
            }
            if to == "error" && layer < 3 && from != "error" {
                problems.push(format!("{rel}: L{layer} speaks HTTP: it uses {target} (ApiError)"));
            }
            let example = || format!("{rel} uses {target}");
            nodes.entry(from.clone()).or_insert_with(BTreeSet::new).insert(to.clone());
            examples[0].entry((from.clone(), to.clone())).or_insert_with(example);
            let (top_from, top_to) = (module[0].clone(), split(&target)[0].clone());
            if top_from != top_to {
                tops.entry(top_from.clone()).or_insert_with(BTreeSet::new).insert(top_to.clone());
                examples[1].entry((top_from, top_to)).or_insert_with(example);
            }
            if !test_only && !allowed.iter().any(|a| covers(a, &target)) {
                unlisted.insert(target);
            }
        }
        if !unlisted.is_empty() {
            let names: Vec<_> = unlisted.into_iter().collect();
            let names = names.join(", ");
            problems.push(format!("{rel}: imports {names} but its `May use:` does not say so"));
        }
    }

    for (from, tos) in &nodes {
        for to in tos {
            if let (Some(a), Some(b)) = (g.layer(&split(from)), g.layer(&split(to))) {
                if b > a {
                    let why = &examples[0][&(from.clone(), to.clone())];
                    problems.push(format!("upward import L{a} {from} → L{b} {to} ({why})"));
                }
            }
        }
    }
    let views = [("", &nodes, &examples[0]), (" (children folded in)", &tops, &examples[1])];
    for (view, graph, example) in views {
        for scc in cycles(graph) {
            let inside: BTreeSet<&String> = scc.iter().collect();
            let mut why = Vec::new();
            for from in &scc {
                for to in graph[from].iter().filter(|t| inside.contains(t)) {
                    let e = &example[&(from.clone(), to.clone())];
                    why.push(format!("    {from} → {to}: {e}"));
                }
            }
            let among = scc.join(", ");
            problems.push(format!("import cycle{view} among {{{among}}}:\n{}", why.join("\n")));
        }
    }
    problems.dedup();
    problems
}

#[test]
fn modules_form_layers_without_cycles_and_say_what_they_use() {
    // `MODULE_GRAPH_ROOT=/some/checkout` checks another tree with this build of the checker.
    let root = std::env::var_os("MODULE_GRAPH_ROOT")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let src = root.join("src");
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: Vec<Source> = paths
        .iter()
        .map(|p| Source {
            rel: p.strip_prefix(&src).unwrap().display().to_string(),
            text: std::fs::read_to_string(p).unwrap(),
        })
        .collect();
    assert!(files.len() > 40, "read the sources: {} files", files.len());
    let problems = check(&files, &doc);
    assert!(problems.is_empty(), "module graph problems:\n{}", problems.join("\n"));
}

// === the checker itself, on small made-up crates ===

const DOC: &str = "## 4. Module layout\n```\nsrc/low.rs   L0  pure\nsrc/error/   L0  ApiError\n\
    src/mid.rs   L1  adapter\nsrc/mid/up.rs L2 a domain child\nsrc/edge.rs  L3  edge\n```\n## 5. Next\n";

fn crate_of(files: &[(&str, &str)]) -> Vec<Source> {
    files
        .iter()
        .map(|(rel, text)| Source { rel: rel.to_string(), text: text.to_string() })
        .collect()
}

#[test]
fn the_checker_finds_cycles_upward_imports_http_below_the_edge_and_unlisted_imports() {
    let fine = crate_of(&[
        ("low.rs", "//! May use: nothing.\n"),
        ("error/mod.rs", "//! May use: nothing.\n"),
        ("mid.rs", "//! May use: low.\nuse crate::low::X;\n"),
        ("mid/up.rs", "//! May use: mid, low.\nuse super::Y;\n"),
        (
            "edge.rs",
            "//! May use: mid::up, error.\nfn f() { crate::mid::up::g(); crate::error::E; }\n",
        ),
    ]);
    assert_eq!(check(&fine, DOC), Vec::<String>::new());

    let bad = crate_of(&[
        ("low.rs", "//! May use: mid.\nuse crate::mid::Z;\n"),
        ("error/mod.rs", "//! May use: nothing.\n"),
        ("mid.rs", "//! May use: low, error.\nuse crate::{low::X, error::ApiError};\n"),
        ("mid/up.rs", "//! May use: low.\nuse super::Y;\n"),
        ("edge.rs", "//! Owns: no line.\n"),
        ("stray.rs", "//! May use: low.\n"),
    ]);
    let found = check(&bad, DOC).join("\n");
    for want in [
        "upward import L0 low → L1 mid (src/low.rs uses mid)",
        "src/mid.rs: L1 speaks HTTP: it uses error",
        "src/mid/up.rs: imports mid but its `May use:` does not say so",
        "src/edge.rs: no `May use:`",
        "src/stray.rs: `stray` has no layer",
        "import cycle among {low, mid}",
        "import cycle (children folded in) among {low, mid}",
    ] {
        assert!(found.contains(want), "{want:?} not in:\n{found}");
    }
}

#[test]
fn a_child_in_another_layer_is_its_own_node_but_folds_into_its_parent_for_cycles() {
    let files = crate_of(&[
        ("low.rs", "//! May use: nothing.\n"),
        ("error/mod.rs", "//! May use: nothing.\n"),
        ("mid.rs", "//! May use: edge.\nuse crate::edge::E;\n"),
        ("mid/up.rs", "//! May use: L0–L1.\nuse crate::{low::X, mid::Y};\n"),
        ("edge.rs", "//! May use: everything.\nuse crate::mid::up::U;\n"),
    ]);
    let found = check(&files, DOC).join("\n");
    assert!(found.contains("upward import L1 mid → L3 edge"), "{found}");
    assert!(found.contains("import cycle (children folded in) among {edge, mid}"), "{found}");
    assert!(!found.contains("does not say so"), "ranges and `everything` list: {found}");
}
