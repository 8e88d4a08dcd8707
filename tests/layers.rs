//! The layering of `src/`: every `crate::` path outside `#[cfg(test)]` items points to a top-level
//! module at or below its own in `LAYERS`, so the import graph has no cycle and the model layer
//! imports nothing from training, evaluation, pipeline, report or CLI. Text-level (no compiler):
//! `use crate::{a, b}` groups and inline `crate::x::y` paths both count; comments are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. `geom` and `cad` are one layer (the CadQuery subset builds on the geometry).
const LAYERS: &[&str] = &[
    "geom", "cad", "exec", "data", "model", "train", "search", "eval", "report", "pipeline", "cli",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The text without `//` comments and without the items that follow a `#[cfg(test)]` attribute.
fn strip(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_start().starts_with("#[cfg(test)]") {
            // skip the item: up to its matching closing brace, or its `;`
            let (mut depth, mut opened) = (0i64, false);
            i += 1;
            while i < lines.len() {
                let l = lines[i];
                depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
                opened |= l.contains('{');
                i += 1;
                if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        out.push_str(lines[i]);
        out.push('\n');
        i += 1;
    }
    out
}

/// The top-level modules a source text names through `crate::`.
fn targets(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (pos, _) in text.match_indices("crate::") {
        let rest = &text[pos + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // the first name of each top-level item of the group (nested groups skipped)
            let (mut depth, mut at_item) = (0usize, true);
            let mut chars = group.char_indices();
            while let Some((i, ch)) = chars.next() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_item = true,
                    c if at_item && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        for _ in 1..name.chars().count() {
                            chars.next();
                        }
                        out.insert(name);
                        at_item = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

/// module → (imported module → files that import it)
fn import_graph() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().to_string();
        let top = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        for t in targets(&strip(&std::fs::read_to_string(&f).unwrap())) {
            if t != top && t != "self" {
                graph
                    .entry(top.clone())
                    .or_default()
                    .entry(t)
                    .or_default()
                    .insert(rel.clone());
            }
        }
    }
    graph
}

#[test]
fn the_parser_sees_groups_paths_and_skips_tests_and_comments() {
    let text = "use crate::{geom::V3, cad::{self, Limits}};\nfn f() { crate::exec::run(); } // crate::cli\n#[cfg(test)]\nmod tests {\n    use crate::pipeline;\n}\n";
    let t = targets(&strip(text));
    assert_eq!(
        t,
        BTreeSet::from(["cad".to_string(), "exec".to_string(), "geom".to_string()])
    );
}

#[test]
fn every_import_points_down_the_layers() {
    let graph = import_graph();
    let level = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut upward = Vec::new();
    for (from, tos) in &graph {
        let Some(lf) = level(from) else {
            // `lib.rs` and `main.rs` sit outside the layers
            assert!(
                from == "lib" || from == "main",
                "src/{from}: a top-level module missing from LAYERS"
            );
            continue;
        };
        for (to, files) in tos {
            let lt = level(to)
                .unwrap_or_else(|| panic!("{from} imports crate::{to}, which is not a layer"));
            // geom and cad are one layer: cad builds on geom, never the reverse
            if lt > lf {
                upward.push(format!(
                    "{from} -> {to} ({})",
                    files.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up the layers {LAYERS:?}:\n{}",
        upward.join("\n")
    );
    // in particular the model layer knows nothing of training, evaluation, pipeline, report or CLI
    let model: Vec<&String> = graph
        .get("model")
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert!(
        model
            .iter()
            .all(|m| ["geom", "cad", "exec", "data"].contains(&m.as_str())),
        "model imports {model:?}"
    );
}
