//! ARCHITECTURE.md's "depends on" lines are rules: every reference from one top-level
//! module of `src/` to another (a `use` line, a grouped `use crate::{..}`, an inline
//! path such as `crate::store::wall_secs()`, or `super::` climbing out of a module)
//! must be one the map allows. A reference the map does not allow fails here with the
//! file and line, so the map and the code cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The rules: module -> the modules it may use. A rule is a list item of the
/// `## Layers` section: "- `a`, `b` depend on `c` and `d`." (or "on nothing").
fn rules(architecture: &str) -> BTreeMap<String, BTreeSet<String>> {
    let section = architecture
        .split("\n## ")
        .find(|s| s.starts_with("Layers"))
        .expect("ARCHITECTURE.md has a `## Layers` section");
    let backticked = |text: &str| -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut rules = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("- `")) {
        let Some((subjects, allowed)) = line.split_once(" depend") else {
            continue;
        };
        let allowed = allowed.trim_start_matches('s');
        let Some(allowed) = allowed.trim_start().strip_prefix("on") else {
            continue;
        };
        let allowed: BTreeSet<String> = backticked(allowed).into_iter().collect();
        for module in backticked(subjects) {
            rules.insert(module, allowed.clone());
        }
    }
    rules
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/`: `broker/client/mod.rs` is
/// `["broker", "client"]`, `throttle.rs` is `["throttle"]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a line, without its comment (doc comments name modules in prose).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) if !line[..i].contains('"') => &line[..i],
        _ => line,
    }
}

/// Every top-level module `text` refers to through `crate::` or `super::`, with the
/// line it is on. `within` is the file's module path.
fn references(text: &str, within: &[String]) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let lines: Vec<&str> = text.lines().map(code).collect();
    // Grouped uses may span lines: scan the file as one string, remembering lines.
    let joined = lines.join("\n");
    let line_of = |offset: usize| joined[..offset].matches('\n').count() + 1;
    let inline_mod_depth = inline_mod_depths(&joined);
    let mut at = 0;
    while let Some(i) = joined[at..].find("crate::") {
        let start = at + i;
        at = start + "crate::".len();
        if joined[..start].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // `tern_crate::` or the like
        }
        for name in first_segments(&joined[at..])
            .into_iter()
            .filter(|n| !n.is_empty())
        {
            found.push((line_of(start), name));
        }
    }
    // `super::` that climbs out of the file's top-level module names a sibling.
    let mut at = 0;
    while let Some(i) = joined[at..].find("super::") {
        let start = at + i;
        if joined[..start].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            at = start + 1;
            continue;
        }
        let mut depth = 0;
        let mut rest = &joined[start..];
        while let Some(r) = rest.strip_prefix("super::") {
            depth += 1;
            rest = r;
        }
        at = start + depth * "super::".len();
        // `super` climbs the file's own module path, and any inline `mod` it is in.
        if depth >= within.len() + inline_mod_depth[start] {
            for name in first_segments(rest).into_iter().filter(|n| !n.is_empty()) {
                found.push((line_of(start), name));
            }
        }
    }
    found
}

/// For each byte of `code`, how many inline `mod NAME { .. }` blocks it is inside.
fn inline_mod_depths(code: &str) -> Vec<usize> {
    let mut depths = Vec::with_capacity(code.len());
    let mut open: Vec<bool> = Vec::new(); // each open brace: is it a `mod`'s?
    let mut depth = 0;
    for (i, c) in code.char_indices() {
        match c {
            '{' => {
                let before = code[..i].trim_end();
                let words: Vec<&str> = before.rsplit(char::is_whitespace).take(2).collect();
                let is_mod = words.len() == 2 && words[1] == "mod";
                open.push(is_mod);
                depth += usize::from(is_mod);
            }
            '}' if open.pop() == Some(true) => depth -= 1,
            _ => {}
        }
        depths.extend(std::iter::repeat_n(depth, c.len_utf8()));
    }
    depths
}

/// The first path segment after `crate::`: one name, or each name of a `{..}` group.
fn first_segments(after: &str) -> Vec<String> {
    if let Some(group) = after.strip_prefix('{') {
        let mut names = Vec::new();
        let mut depth = 0;
        let mut current = String::new();
        let mut taking = true;
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    names.push(std::mem::take(&mut current));
                    taking = true;
                }
                ':' if depth == 0 => taking = false,
                c if depth == 0 && taking && (c.is_alphanumeric() || c == '_') => current.push(c),
                _ => {}
            }
        }
        names.push(current);
        names.retain(|n| !n.is_empty() && n != "self");
        names
    } else {
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        vec![name]
    }
}

#[test]
fn modules_use_only_what_the_architecture_map_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let rules = rules(&architecture);
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut broken = Vec::new();
    let mut seen_modules = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let path = module_path(relative);
        let module = path[0].clone();
        if module == "lib" || module == "main" {
            continue; // the crate root and the binary tie everything together
        }
        seen_modules.insert(module.clone());
        let Some(allowed) = rules.get(&module) else {
            broken.push(format!(
                "src/{}: module `{module}` has no \"depends on\" line in ARCHITECTURE.md",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, target) in references(&text, &path) {
            if target == module || allowed.contains(&target) || allowed.contains("everything") {
                continue;
            }
            broken.push(format!(
                "src/{}:{line}: `{module}` uses `{target}`, which ARCHITECTURE.md does not allow",
                relative.display()
            ));
        }
    }
    for module in rules.keys() {
        if !seen_modules.contains(module) {
            broken.push(format!(
                "ARCHITECTURE.md has a rule for `{module}`, which is not a module of src/"
            ));
        }
    }
    assert!(broken.is_empty(), "\n{}", broken.join("\n"));
}

#[test]
fn the_checker_sees_every_form_of_reference() {
    let text = "use crate::store::Op;\n\
                use crate::{auth::Access, message::{Ticket, Seq}, self};\n\
                let x = crate::bridge::OUTBOX; // crate::admin in a comment\n\
                use super::super::transport::Stream;\n\
                use super::Sibling;\n\
                mod tests { use super::super::Cousin; }\n";
    let refs: Vec<String> = references(text, &["broker".into(), "client".into()])
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(refs, ["store", "auth", "message", "bridge", "transport"]);
    let rules = rules(
        "# Map\n\n## Layers\n\n- `protocol` depends on nothing.\n\
         - `throttle`, `civil` depend on nothing.\n\
         - `store` depends on `message` and `protocol`.\n\n## Invariants\n\n- `x` depends on `y`.\n",
    );
    assert_eq!(rules["protocol"], BTreeSet::new());
    assert_eq!(rules["civil"], BTreeSet::new());
    assert_eq!(
        rules["store"],
        ["message".to_owned(), "protocol".to_owned()].into()
    );
    assert!(
        !rules.contains_key("x"),
        "only the Layers section holds rules"
    );
}
