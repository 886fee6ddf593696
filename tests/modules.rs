//! Imports between the library's modules only go down: no two modules of
//! src/ import each other, directly or round a loop.
//!
//! A module is `src/NAME.rs` or the folder `src/NAME/`. An edge A -> B is a
//! `crate::B` path in A's code outside its tests (the `#[cfg(test)]` item
//! and what follows it are left out, as are comments). `lib.rs` only
//! declares modules and composes them; `main.rs` and `src/cli/` are the
//! binary, a crate of its own.

mod tree;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tree::rust_files;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Code without comments and without its tests.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The first path segment of every `crate::` path in `code`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    paths_after(code, "crate::")
}

/// The first segment after `prefix` (such as `crate::wire::`) of every path
/// in `code` that starts with it.
fn paths_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        // `prefix` must start a path, not end another one (`xcrate::`).
        let starts = rest[..i].chars().next_back().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        rest = &rest[i + prefix.len()..];
        if !starts {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{C, D}, e}`: the first segment of each item.
            let (mut depth, mut item_start, mut end) = (0usize, true, group.len());
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = j;
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        item_start = false;
                        out.insert(ident(&group[j..]));
                    }
                    _ => {}
                }
            }
            rest = &group[end..];
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// The module graph of the library under `src`.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        let name = top.strip_suffix(".rs").unwrap_or(&top).to_owned();
        if matches!(name.as_str(), "lib" | "main" | "cli" | "bin") {
            continue;
        }
        texts.entry(name).or_default().push_str(&code(&std::fs::read_to_string(&f).unwrap()));
    }
    let names: BTreeSet<String> = texts.keys().cloned().collect();
    texts
        .iter()
        .map(|(m, t)| {
            let deps = crate_paths(t).into_iter().filter(|d| d != m && names.contains(d)).collect();
            (m.clone(), deps)
        })
        .collect()
}

/// Every set of two or more modules that reach each other (Tarjan's
/// strongly connected components).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on.insert(v);
            for w in &self.g[v] {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    scc.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t =
        T { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn library_modules_import_each_other_in_no_loop() {
    let g = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(g.len() > 10, "the graph was read: {g:?}");
    let found = cycles(&g);
    let edges: Vec<String> = g.iter().flat_map(|(m, ds)| ds.iter().map(move |d| format!("{m}->{d}"))).collect();
    assert!(found.is_empty(), "modules importing each other in a loop: {found:?}\nedges: {}", edges.join(" "));
}

/// The graph of the children of the folder `src/<path>` (files and
/// subfolders, `mod.rs` left out: it is the folder's face, declaring and
/// using its children, which use it back), from `crate::<path>::` paths
/// and, in the folder's own files, `super::` paths.
fn folder_graph(src: &Path, path: &[String]) -> Graph {
    let dir = path.iter().fold(src.to_path_buf(), |d, p| d.join(p));
    let prefix = format!("crate::{}::", path.join("::"));
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "mod" || !(p.is_dir() || p.extension().is_some_and(|e| e == "rs")) {
            continue;
        }
        let mut files = Vec::new();
        if p.is_dir() {
            rust_files(&p, &mut files);
        } else {
            files.push(p.clone());
        }
        let text = texts.entry(name).or_default();
        for f in files {
            let c = code(&std::fs::read_to_string(&f).unwrap());
            text.push_str(&c);
            if f.parent() == Some(dir.as_path()) {
                // `super::x` from a file of this folder names a sibling.
                text.push_str(&c.replace("super::", &prefix));
            }
        }
    }
    let names: BTreeSet<String> = texts.keys().cloned().collect();
    texts
        .iter()
        .map(|(m, t)| {
            (m.clone(), paths_after(t, &prefix).into_iter().filter(|d| d != m && names.contains(d)).collect())
        })
        .collect()
}

/// Every folder of the library under `src` (not the binary's `cli`), as
/// module paths.
fn folders(src: &Path, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let dir = path.iter().fold(src.to_path_buf(), |d, p| d.join(p));
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() && !(path.is_empty() && name == "cli") {
            path.push(name);
            out.push(path.clone());
            folders(src, path, out);
            path.pop();
        }
    }
}

#[test]
fn modules_within_each_folder_import_each_other_in_no_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    folders(&src, &mut Vec::new(), &mut all);
    assert!(all.len() >= 3, "the folders were found: {all:?}");
    let mut found = Vec::new();
    for f in &all {
        for c in cycles(&folder_graph(&src, f)) {
            found.push(format!("src/{}: {c:?}", f.join("/")));
        }
    }
    assert!(found.is_empty(), "modules of one folder importing each other in a loop:\n{}", found.join("\n"));
}

#[test]
fn the_reader_finds_every_kind_of_crate_path_and_the_cycle_finder_finds_loops() {
    let paths = crate_paths("use crate::a::B;\nuse crate::{c, d::{E, F}, g::H};\nlet x = crate::i::f();");
    assert_eq!(paths.into_iter().collect::<Vec<_>>(), ["a", "c", "d", "g", "i"]);
    let inner = paths_after("use crate::w::x::Y;\nuse crate::w::{z, q::R};\nuse crate::v::w::n;", "crate::w::");
    assert_eq!(inner.into_iter().collect::<Vec<_>>(), ["q", "x", "z"]);
    assert!(code("use crate::a; // crate::b\n#[cfg(test)]\nmod tests { use crate::c; }").contains("crate::a"));
    assert!(!code("use crate::a; // crate::b\n#[cfg(test)]\nmod tests { use crate::c; }").contains("crate::b"));
    let mut g = Graph::new();
    for (a, b) in [("x", "y"), ("y", "z"), ("z", "x"), ("z", "w")] {
        g.entry(a.into()).or_default().insert(b.into());
        g.entry(b.into()).or_default();
    }
    assert_eq!(cycles(&g), [vec!["x".to_owned(), "y".to_owned(), "z".to_owned()]]);
    g.get_mut("z").unwrap().remove("x");
    assert!(cycles(&g).is_empty());
}
