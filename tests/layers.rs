//! Dependencies point one way (ARCHITECTURE.md, "Layers"): a top-level module may use
//! modules of its own layer or below, never above, and the modules of one layer never
//! use each other in a cycle. Read from the `crate::<module>` paths in `src/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// From the bottom up.
const LAYERS: [&[&str]; 6] = [
    &["host", "fsx", "csv_text", "choice"],
    &["kernel", "tome", "model", "onnx"],
    &["diffusion", "engine"],
    &["spec", "plan", "store", "metrics", "report"],
    &["runner"],
    &["cli"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("src/{module} is in no layer of tests/layers.rs"))
}

/// module -> (used module -> first `file:line` that uses it).
fn uses() -> BTreeMap<String, BTreeMap<String, String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut files = Vec::new();
        collect_rs(&path, &mut files);
        let used: &mut BTreeMap<String, String> = out.entry(name.clone()).or_default();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for (at, _) in code.match_indices("crate::") {
                    let rest = &code[at + "crate::".len()..];
                    let module: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !module.is_empty() && module != name {
                        let place = format!("{}:{}", file.display(), i + 1);
                        used.entry(module).or_insert(place);
                    }
                }
            }
        }
    }
    out
}

fn collect_rs(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            collect_rs(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let mut upward = Vec::new();
    for (module, used) in uses() {
        for (dep, place) in used {
            if layer_of(&dep) > layer_of(&module) {
                upward.push(format!("{module} -> {dep} ({place})"));
            }
        }
    }
    assert!(upward.is_empty(), "upward uses:\n{}", upward.join("\n"));
}

#[test]
fn modules_of_one_layer_use_each_other_without_cycles() {
    let graph = uses();
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for dep in graph.get(m).into_iter().flat_map(|d| d.keys()) {
            if let Some(c) = visit(dep, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("modules use each other in a cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn every_module_is_in_a_layer() {
    for module in uses().keys() {
        layer_of(module);
    }
}
