//! The import graph between the library's files, computed from the source: `use crate::…`,
//! `crate::…` and `super::…` paths outside `#[cfg(test)]` code and comments, each resolved to
//! the file that defines the module it names. Circles are found with Tarjan's strongly
//! connected components.
//!
//! Issue 14 removed every circle: none may appear. The key space (`kv/`) stays pure (it
//! imports only itself and the bottom layer), and `cluster/` reaches the store's ops, replies
//! and key space through `kv/` only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files allowed in an import circle: none since issue 14 untied the last one (node, api,
/// cluster, store, events and the VIP driver). Keep it empty.
const KNOWN_CIRCLE: &[&str] = &[];

/// Every library source file, by module path (`["cluster", "transport"]`).
fn modules(root: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(root.join("src")).expect("under src");
            let mut segs: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            let file = segs.pop().expect("a file name");
            match file.as_str() {
                // The binary is its own crate; test files are not product code.
                "main.rs" | "tests.rs" if segs.is_empty() || file == "tests.rs" => continue,
                "lib.rs" if segs.is_empty() => {}
                "mod.rs" => {}
                other => segs.push(other.trim_end_matches(".rs").to_string()),
            }
            out.insert(segs, path);
        }
    }
    out
}

/// The source without comments and without `#[cfg(test)]` items (a `mod … { … }` or any item
/// that follows the attribute, up to its closing brace or semicolon).
fn product_code(text: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let code = match line.find("//") {
            // A `//` inside a string literal is rare in this code base; the cut only loses paths.
            Some(i) => &line[..i],
            None => line,
        };
        lines.push(code.to_string());
    }
    let joined = lines.join("\n");
    let mut out = String::new();
    let mut rest = joined.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "#[cfg(test)]".len()..];
        // Skip the item: to the first `;` if it comes before any `{`, else the balanced braces.
        let semi = after.find(';');
        let brace = after.find('{');
        let end = match (semi, brace) {
            (Some(s), Some(b)) if s < b => s + 1,
            (Some(s), None) => s + 1,
            (_, Some(b)) => {
                let mut depth = 0i32;
                let mut end = after.len();
                for (j, c) in after[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + j + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, None) => after.len(),
        };
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The module paths a file's code names: every `crate::a::b…` and `super::a…` path, with
/// `use …::{x, y::z}` groups expanded one level.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts = |w: &str| {
            let n = w.len();
            i + n <= bytes.len()
                && bytes[i..i + n].iter().collect::<String>() == w
                && (i == 0 || !is_ident(bytes[i - 1]))
        };
        if !(starts("crate::") || starts("super::")) {
            i += 1;
            continue;
        }
        // Read `seg::seg::…`, and a `{…}` group at the end.
        let mut segs = Vec::new();
        let mut j = i;
        loop {
            let s = j;
            while j < bytes.len() && is_ident(bytes[j]) {
                j += 1;
            }
            if s == j {
                break;
            }
            segs.push(bytes[s..j].iter().collect::<String>());
            if j + 1 < bytes.len() && bytes[j] == ':' && bytes[j + 1] == ':' {
                j += 2;
                continue;
            }
            break;
        }
        if j < bytes.len() && bytes[j] == '{' {
            let close = bytes[j..]
                .iter()
                .position(|c| *c == '}')
                .map_or(bytes.len(), |p| j + p);
            let group: String = bytes[j + 1..close].iter().collect();
            for item in group.split(',') {
                let first: String = item.trim().chars().take_while(|c| is_ident(*c)).collect();
                if first.is_empty() || first == "self" {
                    out.push(segs.clone());
                } else {
                    let mut p = segs.clone();
                    p.push(first);
                    out.push(p);
                }
            }
            j = close;
        } else {
            out.push(segs);
        }
        i = j.max(i + 1);
    }
    out
}

/// The file a path names, from the file of module `from`: the longest prefix that is a module.
fn resolve(path: &[String], from: &[String], mods: &BTreeMap<Vec<String>, PathBuf>) -> Option<PathBuf> {
    let mut base: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => rest = &path[1..],
        Some("super") => {
            base = from.to_vec();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut best = mods.get(&base).cloned();
    let mut cur = base;
    for seg in rest {
        cur.push(seg.clone());
        match mods.get(&cur) {
            Some(f) => best = Some(f.clone()),
            None => break,
        }
    }
    best
}

/// Tarjan's strongly connected components (iteratively), those of two or more files.
fn circles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<BTreeSet<PathBuf>> {
    let nodes: Vec<&PathBuf> = edges.keys().collect();
    let index_of: BTreeMap<&PathBuf, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let adj: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            edges[*n]
                .iter()
                .filter_map(|t| index_of.get(t).copied())
                .collect()
        })
        .collect();
    let n = nodes.len();
    let (mut index, mut low, mut on) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
    let (mut stack, mut next, mut out) = (Vec::new(), 0usize, Vec::new());
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        // (node, next edge to look at)
        let mut work = vec![(root, 0usize)];
        while let Some(&mut (v, ref mut e)) = work.last_mut() {
            if *e == 0 && index[v] == usize::MAX {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on[v] = true;
            }
            if *e < adj[v].len() {
                let w = adj[v][*e];
                *e += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = BTreeSet::new();
                while let Some(w) = stack.pop() {
                    on[w] = false;
                    comp.insert(nodes[w].clone());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    out.push(comp);
                }
            }
        }
    }
    out
}

fn import_graph(root: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mods = modules(root);
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (module, file) in &mods {
        let code = product_code(&std::fs::read_to_string(file).expect("read source"));
        let targets = edges.entry(file.clone()).or_default();
        for path in paths_in(&code) {
            if let Some(t) = resolve(&path, module, &mods) {
                if &t != file {
                    targets.insert(t);
                }
            }
        }
    }
    edges
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

#[test]
fn no_import_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = circles(&import_graph(root));
    let names: Vec<Vec<String>> = found
        .iter()
        .map(|c| c.iter().map(|p| rel(root, p)).collect())
        .collect();
    let outside: Vec<&String> = names
        .iter()
        .flatten()
        .filter(|n| !KNOWN_CIRCLE.contains(&n.as_str()))
        .collect();
    assert!(outside.is_empty(), "import circles: {names:?}");
    assert!(KNOWN_CIRCLE.is_empty(), "no circle is left to allow");
}

/// The edges out of the files under `dir` that go to a file matched by none of `allowed`
/// (path prefixes from the package root).
fn edges_outside(dir: &str, allowed: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for (file, targets) in &import_graph(root) {
        let from = rel(root, file);
        if !from.starts_with(dir) {
            continue;
        }
        for t in targets {
            let to = rel(root, t);
            if !allowed.iter().any(|a| to.starts_with(a)) {
                out.push(format!("{from} -> {to}"));
            }
        }
    }
    out
}

/// `kv/` is the pure key space below `cluster/`: it imports nothing of the crate above it
/// (only itself and the bottom layer's size limits), and no async runtime.
#[test]
fn kv_imports_nothing_above_it() {
    let bad = edges_outside("src/kv/", &["src/kv/", "src/sizes.rs"]);
    assert!(bad.is_empty(), "kv imports above itself: {bad:?}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (module, file) in modules(root) {
        if module.first().map(String::as_str) != Some("kv") {
            continue;
        }
        let code = product_code(&std::fs::read_to_string(&file).expect("read source"));
        assert!(!code.contains("tokio"), "{} uses tokio", rel(root, &file));
    }
}

/// `cluster/` carries and applies the store's ops through `kv/`, never the store itself.
#[test]
fn cluster_does_not_import_the_store() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut store = Vec::new();
    for (file, targets) in &import_graph(root) {
        let from = rel(root, file);
        if !from.starts_with("src/cluster/") {
            continue;
        }
        store.extend(
            targets
                .iter()
                .map(|t| rel(root, t))
                .filter(|to| to.starts_with("src/store/"))
                .map(|to| format!("{from} -> {to}")),
        );
    }
    assert!(store.is_empty(), "cluster imports the store: {store:?}");
}

/// The layers of docs/architecture.md, top to bottom, as path prefixes (the longest prefix
/// that matches a file decides its layer). A file may import files of its own layer or below,
/// never above.
const LAYERS: &[(&str, &[&str])] = &[
    ("face", &["src/cli/args.rs", "src/cli/run.rs"]),
    ("tools", &["src/demo/", "src/bench/"]),
    ("lab", &["src/lab/"]),
    ("operator", &["src/cli/", "src/certs.rs"]),
    // Failover drills and backups: clients of the admin API (the CLI and the node run them).
    ("apps", &["src/drill/", "src/backup/"]),
    ("composition", &["src/node/"]),
    (
        "surfaces",
        &["src/api/", "src/store/", "src/address/", "src/events/"],
    ),
    ("status", &["src/status/"]),
    ("shared state", &["src/node/shared.rs", "src/metrics.rs"]),
    ("coordination", &["src/cluster/"]),
    ("key space", &["src/kv/"]),
    (
        "rules and data",
        &[
            "src/failover/",
            "src/config/",
            "src/health/",
            "src/service/",
            "src/tls/",
            // What a hot restart hands from one program to the next (descriptors, role).
            "src/handover.rs",
            // The proxy's config schema is part of the config; the admin API's client is a
            // library the config checks addresses with and the CLI and proxy call through.
            "src/address/proxy/config.rs",
            "src/api/client.rs",
        ],
    ),
    (
        "bottom",
        &[
            "src/lib.rs",
            "src/config/rules.rs",
            "src/version.rs",
            "src/sizes.rs",
            "src/clock.rs",
            // The last log lines in memory (a tracing layer): drills collect them.
            "src/logring.rs",
            "src/net.rs",
            "src/failstop.rs",
            "src/malloc.rs",
            "src/systemd.rs",
            // The VIP's value type and the keeper's protocol: imports nothing of the crate.
            "src/address/vip/mod.rs",
        ],
    ),
];

/// The layer of a file (index into [`LAYERS`]: 0 is the top), by its longest matching prefix.
fn layer_of(rel: &str) -> Option<usize> {
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, prefixes))| prefixes.iter().map(move |p| (i, *p)))
        .filter(|(_, p)| rel.starts_with(p))
        .max_by_key(|(_, p)| p.len())
        .map(|(i, _)| i)
}

/// Every file has a layer, and no import points from a lower layer up to a higher one.
#[test]
fn imports_only_point_down() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut up = Vec::new();
    for (file, targets) in &import_graph(root) {
        let from = rel(root, file);
        let Some(lf) = layer_of(&from) else {
            panic!("{from} is in no layer: add it to LAYERS and docs/architecture.md");
        };
        for to in targets.iter().map(|t| rel(root, t)) {
            let lt = layer_of(&to).unwrap_or_else(|| panic!("{to} is in no layer"));
            if lt < lf {
                up.push(format!("{from} ({}) -> {to} ({})", LAYERS[lf].0, LAYERS[lt].0));
            }
        }
    }
    for (_, file) in modules(root) {
        let r = rel(root, &file);
        assert!(layer_of(&r).is_some(), "{r} is in no layer");
    }
    assert!(up.is_empty(), "imports pointing up: {up:#?}");
}

/// The surfaces (admin API, store server, events, floating address) take the narrow handles
/// `node::run` gives them (`AdminContext`, `StoreContext`, `Cluster`, a role watch), never the
/// whole `Node`, and never import the composition root.
#[test]
fn surfaces_do_not_take_the_whole_node() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut bad = Vec::new();
    for (module, file) in modules(root) {
        let part = module.first().map(String::as_str).unwrap_or("");
        if !["api", "store", "events", "address"].contains(&part) {
            continue;
        }
        let code = product_code(&std::fs::read_to_string(&file).expect("read source"));
        let names_node = code.split(|c: char| !is_ident(c)).any(|word| word == "Node");
        if names_node {
            bad.push(format!("{} names Node", rel(root, &file)));
        }
    }
    for (file, targets) in &import_graph(root) {
        let from = rel(root, file);
        if !["src/api/", "src/store/", "src/events/", "src/address/"]
            .iter()
            .any(|p| from.starts_with(p))
        {
            continue;
        }
        for to in targets.iter().map(|t| rel(root, t)) {
            if to == "src/node/mod.rs" {
                bad.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(bad.is_empty(), "surfaces that take the whole node: {bad:?}");
}

/// The checker itself finds what it must: a circle through `super::` and a `use crate::{…}`
/// group, none through a test module or a comment.
#[test]
fn the_checker_sees_circles_and_ignores_tests_and_comments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a")).expect("mkdir");
    let write = |p: &str, t: &str| std::fs::write(src.join(p), t).expect("write");
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write("a/mod.rs", "pub mod x;\nuse crate::{b, c::Thing};\n");
    write("a/x.rs", "// crate::c is only named in a comment\n");
    write("b.rs", "pub fn f() { super::a::x::g(); }\n");
    write(
        "c.rs",
        "pub struct Thing;\n#[cfg(test)]\nmod tests {\n    use crate::a;\n}\n",
    );
    let edges = import_graph(dir.path());
    let found = circles(&edges);
    let names: Vec<Vec<String>> = found
        .iter()
        .map(|c| {
            c.iter()
                .map(|p| p.strip_prefix(&src).expect("src").display().to_string())
                .collect()
        })
        .collect();
    // a -> b (group), b -> a/x (super path), a/x -> nothing: no circle yet.
    assert!(names.is_empty(), "{names:?}");
    write("a/x.rs", "pub fn g() { crate::a::h(); }\n");
    write(
        "a/mod.rs",
        "pub mod x;\nuse crate::{b, c::Thing};\npub fn h() {}\n",
    );
    let found = circles(&import_graph(dir.path()));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].len(), 3, "a/mod.rs, b.rs, a/x.rs: {found:?}");
}

/// The parts of the crate that may import the lab (`src/lab/`, the test and benchmark kit): the
/// lab itself, the demo, the benchmarks and the binary's face. Product code never does.
const LAB_USERS: &[&str] = &["lab", "demo", "bench", "cli"];

/// Whether `rel` (a path from the package root) is in part `part` of the crate: `src/PART.rs`
/// or a file under `src/PART/`.
fn in_part(rel: &Path, part: &str) -> bool {
    let dir = Path::new("src").join(part);
    rel.starts_with(&dir) || rel == dir.with_extension("rs")
}

/// Every import of the lab from a file outside [`LAB_USERS`], as (importer, lab file), paths
/// from `root`.
fn product_imports_of_lab(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (from, targets) in &import_graph(root) {
        let from = from.strip_prefix(root).unwrap_or(from);
        if LAB_USERS.iter().any(|part| in_part(from, part)) {
            continue;
        }
        for to in targets {
            let to = to.strip_prefix(root).unwrap_or(to);
            if in_part(to, "lab") {
                out.push((from.display().to_string(), to.display().to_string()));
            }
        }
    }
    out
}

#[test]
fn the_product_does_not_import_the_lab() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("src/lab/mod.rs").exists(),
        "the lab is src/lab/ (moved? update LAB_USERS)"
    );
    let found = product_imports_of_lab(root);
    assert!(
        found.is_empty(),
        "product code imports the lab (the test and benchmark kit): {found:?}"
    );
}

/// The lab check itself: the demo and the benchmarks may import the lab, a test module of a
/// product file may too, and a product file that imports it (by a `use`, an inline `crate::`
/// path or a `super::` path) is caught.
#[test]
fn the_lab_check_catches_a_product_import_of_the_lab() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    for d in ["lab", "bench", "node"] {
        std::fs::create_dir_all(src.join(d)).expect("mkdir");
    }
    let write = |p: &str, t: &str| std::fs::write(src.join(p), t).expect("write");
    write(
        "lib.rs",
        "pub mod bench;\npub mod demo;\npub mod lab;\npub mod node;\n",
    );
    write("lab/mod.rs", "pub mod harness;\n");
    write("lab/harness.rs", "pub struct LocalCluster;\npub fn launch() {}\n");
    write("bench/mod.rs", "use crate::lab::harness::LocalCluster;\n");
    write("demo.rs", "pub fn run() { crate::lab::harness::launch(); }\n");
    write("node/mod.rs", "pub mod role;\n");
    write(
        "node/role.rs",
        "// crate::lab::harness in a comment\n#[cfg(test)]\nmod tests {\n    use crate::lab::harness::LocalCluster;\n}\n",
    );
    assert_eq!(product_imports_of_lab(dir.path()), Vec::<(String, String)>::new());
    write("node/role.rs", "use crate::lab::harness::LocalCluster;\n");
    assert_eq!(
        product_imports_of_lab(dir.path()),
        vec![("src/node/role.rs".to_string(), "src/lab/harness.rs".to_string())]
    );
    write(
        "node/role.rs",
        "pub fn f() { super::super::lab::harness::launch(); }\n",
    );
    write("node/mod.rs", "pub mod role;\nuse crate::lab;\n");
    assert_eq!(
        product_imports_of_lab(dir.path()),
        vec![
            ("src/node/mod.rs".to_string(), "src/lab/mod.rs".to_string()),
            ("src/node/role.rs".to_string(), "src/lab/harness.rs".to_string()),
        ]
    );
}
