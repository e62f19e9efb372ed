//! The module graph the architecture promises: the library never reaches
//! into the CLI, the GPU layer does not depend on the simulator, and no
//! two library areas import each other (directly or round a cycle).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Library area -> the areas its code names as `crate::AREA`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut areas = BTreeSet::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if !["main", "lib", "cli"].contains(&name.as_str()) {
            areas.insert(name);
        }
    }
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap();
            let area = rel.iter().next().unwrap().to_string_lossy();
            let area = area.trim_end_matches(".rs").to_string();
            if !areas.contains(&area) {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                !text.contains("crate::cli") && !text.contains("clap::"),
                "{}: library code must not use the CLI or clap",
                rel.display()
            );
            let deps = g.entry(area.clone()).or_default();
            for (i, _) in text.match_indices("crate::") {
                // doc links (`[`crate::plan::Gate`]`) are not imports
                let line_start = text[..i].rfind('\n').map_or(0, |x| x + 1);
                if text[line_start..i].trim_start().starts_with("//") {
                    continue;
                }
                let name: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if name != area && areas.contains(&name) {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

#[test]
fn the_gpu_layer_does_not_depend_on_the_simulator() {
    let g = graph();
    assert!(!g["gpu"].contains("sim"), "gpu imports sim: {:?}", g["gpu"]);
}

#[test]
fn the_library_has_no_import_cycle() {
    let g = graph();
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(i) = path.iter().position(|x| x == n) {
            panic!("import cycle: {}", path[i..].join(" -> ") + " -> " + n);
        }
        if done.contains(n) {
            return;
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            visit(m, g, path, done);
        }
        path.pop();
        done.insert(n.to_string());
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        visit(n, &g, &mut Vec::new(), &mut done);
    }
}
