//! The library's module graph, read from the sources: no import circle between the top-level
//! modules or between the modules of one folder, clap named only by the binary (`src/main.rs`
//! and `src/flags/`), and the layers (source, stage, backend, sink, config, paths, mock) never
//! reaching up to the umbrella error or the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A source file and the module path it defines (`sink::checkpoint::writer`).
struct SourceFile {
    module: Vec<String>,
    text: String,
}

fn library_files() -> Vec<SourceFile> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("list src") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    walk(&src, &mut paths);
    paths
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(&src).expect("under src").to_owned();
            let mut module: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|last| last == "mod") {
                module.pop();
            }
            // The binary's files are not the library's.
            if module == ["main"] || module.first().is_some_and(|first| first == "flags") {
                return None;
            }
            if module == ["lib"] {
                module.clear();
            }
            let text = fs::read_to_string(&path).expect("read a source file");
            Some(SourceFile { module, text })
        })
        .collect()
}

/// The code of a file without its comments, so that a doc link is no import.
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b…` and `super::…` path in `file`, resolved to the longest module of
/// `modules` it names.
fn references(file: &SourceFile, modules: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let code = code(&file.text);
    let mut found = BTreeSet::new();
    let words: Vec<&str> = code
        .split(|character: char| {
            !(character.is_alphanumeric() || character == '_' || character == ':')
        })
        .filter(|word| word.starts_with("crate::") || word.starts_with("super::"))
        .collect();
    // `use crate::{a, b::c}` names its modules inside braces.
    let braced = code.match_indices("crate::{").map(|(at, _)| {
        let rest = &code[at + "crate::{".len()..];
        let end = rest.find("};").unwrap_or(rest.len());
        rest[..end]
            .split(',')
            .map(|part| format!("crate::{}", part.trim()))
            .collect::<Vec<_>>()
    });
    let braced: Vec<String> = braced.flatten().collect();
    for word in words.iter().map(|word| word.to_string()).chain(braced) {
        let mut parts: Vec<String> = Vec::new();
        let mut segments = word.split("::").filter(|segment| !segment.is_empty());
        match segments.next() {
            Some("crate") => {}
            Some("super") => {
                // `super` of `a::b` (a file `a/b.rs`, or `a/b/mod.rs`) is `a`.
                parts = file.module[..file.module.len().saturating_sub(1)].to_vec();
                for segment in segments.by_ref() {
                    if segment == "super" {
                        parts.pop();
                    } else {
                        parts.push(segment.to_owned());
                        break;
                    }
                }
            }
            _ => continue,
        }
        parts.extend(segments.map(|segment| {
            segment
                .trim_matches(|c: char| !c.is_alphanumeric() && c != '_')
                .to_owned()
        }));
        while !parts.is_empty() && !modules.contains(&parts) {
            parts.pop();
        }
        if !parts.is_empty() {
            found.insert(parts);
        }
    }
    found
}

/// A circle in `edges`, if there is one.
fn find_circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|seen| seen == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

/// The graph at `depth` (1: top-level modules; 2: the modules of one folder, siblings only).
fn graph(files: &[SourceFile], depth: usize) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|file| file.module.clone()).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files.iter().filter(|file| file.module.len() >= depth) {
        let from = &file.module[..depth];
        for target in references(file, &modules) {
            if target.len() < depth || target[..depth - 1] != from[..depth - 1] {
                continue;
            }
            let to = &target[..depth];
            if to != from {
                edges
                    .entry(from.join("::"))
                    .or_default()
                    .insert(to.join("::"));
            }
        }
    }
    edges
}

#[test]
fn no_two_modules_import_each_other_directly_or_through_others() {
    let files = library_files();
    let top = graph(&files, 1);
    assert!(
        top.contains_key("engine") && top["engine"].contains("sink"),
        "{top:?}"
    );
    assert_eq!(find_circle(&top), None, "top-level modules: {top:#?}");
    let folders = graph(&files, 2);
    assert_eq!(
        find_circle(&folders),
        None,
        "modules of one folder: {folders:#?}"
    );
}

#[test]
fn clap_is_the_binarys_and_the_layers_never_reach_up() {
    let files = library_files();
    assert!(files.len() > 30, "the library's files were found");
    for file in &files {
        let code = code(&file.text);
        assert!(
            !code.contains("clap"),
            "{} names clap; only src/main.rs and src/flags/ may",
            file.module.join("::")
        );
        let layer = file.module.first().map(String::as_str).unwrap_or("");
        if [
            "source", "stage", "backend", "sink", "config", "paths", "mock",
        ]
        .contains(&layer)
        {
            for above in ["crate::error", "crate::engine", "crate::options"] {
                let reaches =
                    code.contains(above) && !(layer == "config" && above == "crate::options");
                assert!(
                    !reaches,
                    "{} imports {above}, above its layer",
                    file.module.join("::")
                );
            }
        }
    }
}
