//! The shape of core, checked: every module sits in a layer, imports only from its own layer or
//! lower ones, and no modules import each other in a circle. Read from the source (`crate::`,
//! `super::` paths) so a new import is checked the moment it is written, with no tool to run.
//!
//! Also what the workspace's crates may depend on: core never on the binaries, the simulated
//! driver on nothing of gpushare's (it stands in for NVIDIA's driver, which knows nothing of us).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: each is a folder of `core/src` (`service/allocator.rs`), and the
/// crate root re-exports its modules, so a module's public path names no layer
/// (`gpushare_core::allocator`).
const LAYERS: &[&str] = &[
    // No knowledge of GPUs or containers: files, JSON, test hooks, runc's log format.
    "util",
    // What things are: requests, config, the ledger's data, placement policy, spec edits.
    "model",
    // What gpushare does to the GPU (NVML) and the node (driver files, procfs, runtimes' state).
    "service", // What an operator reads: status, metrics, doctor.
    "report",
];

/// Modules not yet held to the layers, whose edges are not counted: none since the process
/// logic moved into the binaries (issue 18).
const LEAVING: &[&str] = &[];

/// Files of `core/src` that are not modules of a layer.
const ROOTS: &[&str] = &["lib", "layers"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// A module's file and layer (None: outside every layer's folder).
struct Module {
    file: PathBuf,
    layer: Option<usize>,
}

/// Every `.rs` file under `dir` with its module path (`policy/node.rs` is `policy::node`,
/// `policy/mod.rs` is `policy`).
fn files(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_stem()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        if p.is_dir() {
            let mut inner = prefix.to_vec();
            inner.push(name);
            files(&p, &inner, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let mut path = prefix.to_vec();
            if name != "mod" {
                path.push(name);
            }
            out.insert(path.join("::"), p);
        }
    }
}

/// Core's modules by the name the crate root gives them (`service/allocator.rs` is
/// `allocator`), less the roots and the layer folders' own `mod.rs`.
fn modules() -> BTreeMap<String, Module> {
    let mut all = BTreeMap::new();
    files(&src(), &[], &mut all);
    let mut out = BTreeMap::new();
    for (path, file) in all {
        if ROOTS.contains(&path.as_str()) || LAYERS.contains(&path.as_str()) {
            continue;
        }
        let (layer, name) = match path.split_once("::") {
            Some((l, rest)) if LAYERS.contains(&l) => {
                (LAYERS.iter().position(|x| *x == l), rest.to_string())
            }
            _ => (None, path),
        };
        out.insert(name, Module { file, layer });
    }
    out
}

/// The source without comments, so a doc link to another module is not an import.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut end = line.len();
        for (i, c) in line.char_indices() {
            match c {
                '"' if prev != '\\' => in_str = !in_str,
                '/' if prev == '/' && !in_str => {
                    end = i - 1;
                    break;
                }
                _ => {}
            }
            prev = if prev == '\\' && c == '\\' { ' ' } else { c };
        }
        out.push_str(&line[..end]);
        out.push('\n');
    }
    out
}

/// The code less its `#[cfg(test)]` modules: a test may set its scene up with any module (gc's
/// tests allocate first). Formatted code closes a module with `}` at the indent it opened it.
fn without_tests(code: &str) -> String {
    let mut out = String::new();
    let mut lines = code.lines().peekable();
    while let Some(line) = lines.next() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let opens_tests = line.trim() == "#[cfg(test)]"
            && lines.peek().is_some_and(|next| {
                let next = next.trim_start();
                (next.starts_with("mod ") || next.starts_with("pub mod ")) && next.ends_with('{')
            });
        if opens_tests {
            let end = format!("{indent}}}");
            for inner in lines.by_ref() {
                if inner == end {
                    break;
                }
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The leading `a::b::c` of `s` (lower-case path segments only: the modules, not the item).
fn segments(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let n = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        if n == 0 {
            break;
        }
        out.push(rest[..n].to_string());
        match rest[n..].strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    out
}

/// The module a path names: its longest prefix that is a module (`service::allocator::X`
/// and `allocator::X` both name `allocator`).
fn resolve(path: &[String], known: &BTreeMap<String, Module>) -> Option<String> {
    let path = match path.first() {
        Some(l) if LAYERS.contains(&l.as_str()) => &path[1..],
        _ => path,
    };
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| known.contains_key(m))
}

/// The modules `module`'s source names through `crate::` and `super::`.
fn imports(
    module: &str,
    is_mod_rs: bool,
    text: &str,
    known: &BTreeMap<String, Module>,
) -> BTreeSet<String> {
    let code = without_tests(&code(text));
    let mut out = BTreeSet::new();
    let here: Vec<String> = module.split("::").map(str::to_string).collect();
    // `super` of `policy/node.rs` is `policy`; of `policy/mod.rs`, the crate root.
    let parent: Vec<String> = if is_mod_rs {
        here[..here.len().saturating_sub(1)].to_vec()
    } else {
        here[..here.len() - 1].to_vec()
    };
    for (base, key) in [(Vec::new(), "crate::"), (parent, "super::")] {
        for (i, _) in code.match_indices(key) {
            if i > 0 && code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let after = &code[i + key.len()..];
            let tails: Vec<&str> = match after.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())]
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![after],
            };
            for tail in tails {
                let mut path = base.clone();
                path.extend(segments(tail));
                if let Some(m) = resolve(&path, known) {
                    if m != module {
                        out.insert(m);
                    }
                }
            }
        }
    }
    out
}

/// Each module's imports of other modules (those leaving core not counted).
fn graph(known: &BTreeMap<String, Module>) -> BTreeMap<String, BTreeSet<String>> {
    let mut g = BTreeMap::new();
    for (m, module) in known {
        if LEAVING.contains(&m.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&module.file).expect("readable source");
        let is_mod_rs = module.file.file_name().is_some_and(|n| n == "mod.rs");
        let mut deps = imports(m, is_mod_rs, &text, known);
        deps.retain(|d| !LEAVING.contains(&d.as_str()));
        g.insert(m.clone(), deps);
    }
    g
}

#[test]
fn every_module_is_in_a_layer() {
    let outside: Vec<String> = modules()
        .into_iter()
        .filter(|(m, module)| module.layer.is_none() && !LEAVING.contains(&m.as_str()))
        .map(|(_, module)| module.file.display().to_string())
        .collect();
    assert!(
        outside.is_empty(),
        "modules outside the layer folders (move each into core/src/<layer>/, {LAYERS:?}, and re-export it in lib.rs): {outside:?}"
    );
}

#[test]
fn no_import_from_a_higher_layer() {
    let known = modules();
    let mut wrong = Vec::new();
    for (m, deps) in graph(&known) {
        let Some(own) = known[&m].layer else { continue };
        for d in deps {
            if let Some(theirs) = known[&d].layer {
                if theirs > own {
                    wrong.push(format!("{m} ({}) -> {d} ({})", LAYERS[own], LAYERS[theirs]));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports from a higher layer:\n{}",
        wrong.join("\n")
    );
}

/// One cycle through `start`, if any: the path `start -> ... -> start`.
fn cycle_through(start: &str, g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // Breadth first, so the shortest cycle is the one shown.
    let mut from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(m) = queue.pop_front() {
        for d in g.get(m).into_iter().flatten() {
            if d == start {
                let mut path = vec![start.to_string()];
                let mut at = m;
                while at != start {
                    path.push(at.to_string());
                    at = from[at];
                }
                path.push(start.to_string());
                let last = path.len() - 1;
                path[1..last].reverse();
                return Some(path);
            }
            if !from.contains_key(d.as_str()) {
                from.insert(d, m);
                queue.push_back(d);
            }
        }
    }
    None
}

#[test]
fn no_import_cycle() {
    let g = graph(&modules());
    let mut seen = BTreeSet::new();
    let mut cycles = Vec::new();
    for m in g.keys() {
        if seen.contains(m) {
            continue;
        }
        if let Some(c) = cycle_through(m, &g) {
            seen.extend(c.iter().cloned());
            cycles.push(c.join(" -> "));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// The workspace's `Cargo.toml` files, read as TOML.
fn manifest(crate_dir: &str) -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crate_dir)
        .join("Cargo.toml");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The names of every dependency a manifest lists (normal, dev and build).
fn dependencies(m: &toml::Table) -> Vec<String> {
    ["dependencies", "dev-dependencies", "build-dependencies"]
        .iter()
        .filter_map(|k| m.get(*k).and_then(|v| v.as_table()))
        .flat_map(|t| t.keys().cloned())
        .collect()
}

#[test]
fn core_never_names_the_binaries() {
    let root = manifest(".");
    let bins: Vec<String> = root["bin"]
        .as_array()
        .expect("the root package's [[bin]]s")
        .iter()
        .map(|b| b["name"].as_str().expect("a name").to_string())
        .collect();
    let package = root["package"]["name"]
        .as_str()
        .expect("a name")
        .to_string();
    let deps = dependencies(&manifest("core"));
    assert!(
        !deps.contains(&package),
        "core depends on the root package {package}: {deps:?}"
    );
    let mut named = Vec::new();
    let mut all = BTreeMap::new();
    files(&src(), &[], &mut all);
    for (m, path) in all {
        if m == "layers" {
            continue;
        }
        let code = code(&std::fs::read_to_string(&path).expect("readable source"));
        for name in bins.iter().chain([&package]) {
            let as_crate = format!("{}::", name.replace('-', "_"));
            if code.contains(&as_crate) || code.contains(&format!("bin/{name}/")) {
                named.push(format!("{m} names {name}"));
            }
        }
    }
    assert!(
        named.is_empty(),
        "core names the binaries:\n{}",
        named.join("\n")
    );
}

#[test]
fn the_simulated_driver_depends_on_nothing_of_ours() {
    let ours: Vec<String> = dependencies(&manifest("sim"))
        .into_iter()
        .filter(|d| d.starts_with("gpushare"))
        .collect();
    assert!(ours.is_empty(), "sim/Cargo.toml depends on {ours:?}");
}

/// The checker itself: a cycle and an upward import in made-up sources are found.
#[test]
fn the_checker_sees_cycles_and_layers() {
    let known: BTreeMap<String, Module> = ["a", "b", "p", "p::q"]
        .iter()
        .map(|m| {
            let module = Module {
                file: PathBuf::new(),
                layer: None,
            };
            (m.to_string(), module)
        })
        .collect();
    let text = "use crate::b::Thing; // crate::a in a comment\nlet s = \"//\"; fn f() { crate::p::q::go() }";
    assert_eq!(
        imports("a", false, text, &known),
        BTreeSet::from(["b".to_string(), "p::q".to_string()])
    );
    assert_eq!(
        imports("p::q", false, "use super::X; use crate::{a, b::Y};", &known),
        BTreeSet::from(["p".to_string(), "a".to_string(), "b".to_string()])
    );
    // A path through the layer's folder names the same module.
    assert_eq!(
        imports("a", false, "use crate::service::b::Thing;", &known),
        BTreeSet::from(["b".to_string()])
    );
    let with_tests = "use crate::b::X;\n#[cfg(test)]\nmod tests {\n    use crate::p::Y;\n    fn f() {\n    }\n}\nfn g() { crate::p::q::go() }\n";
    assert_eq!(
        imports("a", false, with_tests, &known),
        BTreeSet::from(["b".to_string(), "p::q".to_string()])
    );
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["p"]),
        ("p", vec!["a"]),
        ("p::q", vec![]),
    ]
    .into_iter()
    .map(|(m, d)| (m.to_string(), d.into_iter().map(str::to_string).collect()))
    .collect();
    assert_eq!(
        cycle_through("a", &g),
        Some(
            vec!["a", "b", "p", "a"]
                .into_iter()
                .map(String::from)
                .collect()
        )
    );
    assert_eq!(cycle_through("p::q", &g), None);
}
