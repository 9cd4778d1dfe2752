//! The import rules ARCHITECTURE.md states, checked on the source text of
//! `src/`, so a change that breaks one fails `cargo test` instead of
//! waiting for a reviewer:
//!
//! - no import cycle between top-level modules;
//! - a module uses a sibling's submodule only when the sibling declares it
//!   `pub mod` (its public face), never a `pub(crate)` internal;
//! - `cli` is imported by nobody;
//! - only `outbox` mentions sled;
//! - the pure core mentions no tokio, sled, rumqttc or file system, and
//!   reads no clock;
//! - only `runtime` spawns tasks (a blocking call awaited where it is made,
//!   `spawn_blocking` for the outbox's `fdatasync`, is not a task).
//!
//! Comments and string literals are blanked before looking, so prose and
//! URLs cannot trip it. `cargo test --lib architecture -- --nocapture`
//! prints the dependency graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The pure core: files and folders (relative to `src/`) that take their
/// inputs as values, time included.
const PURE: &[&str] = &[
    "rules/",
    "payload.rs",
    "topic/",
    "source/lines.rs",
    "source/modbus/frame.rs",
    "source/modbus/decode.rs",
    "upstream/ack.rs",
    "backoff.rs",
    "health.rs",
    "alert.rs",
    "homeassistant.rs",
    "outbox/event.rs",
    "diagnostic.rs",
    "http/status.rs",
    "http/limits.rs",
    "push/",
];

/// What the pure core must not name: I/O crates, the file system and
/// network, and the clocks.
const IMPURE: &[&str] = &[
    "tokio",
    "sled",
    "rumqttc",
    "std::fs",
    "std::net",
    "Instant::now",
    "SystemTime",
    ".elapsed()",
    "wall_ms()",
    "Clock",
];

/// What starts a task. `spawn_blocking` is not in it: the caller awaits
/// the blocking call it moves off the async threads; nothing outlives it.
const SPAWNS: &[&str] = &["tokio::spawn", "JoinSet"];

struct File {
    /// Relative to `src/`, with `/`.
    rel: String,
    /// Its module path: `outbox/writer.rs` is `["outbox", "writer"]`.
    module: Vec<String>,
    /// The text with comments and literals blanked.
    code: String,
    /// `code` without its `#[cfg(test)] mod tests` (and empty for test files).
    production: String,
}

impl File {
    fn top(&self) -> Option<&str> {
        self.module.first().map(String::as_str)
    }

    fn is_under(&self, prefix: &str) -> bool {
        self.rel == prefix || (prefix.ends_with('/') && self.rel.starts_with(prefix))
    }
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn read_tree() -> Vec<File> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("src/ is readable")
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let src = src_dir();
    let mut paths = Vec::new();
    walk(&src, &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&src)
                .expect("walked from src/")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&p).expect("a source file is UTF-8");
            let code = blank_comments_and_literals(&text);
            let module = module_path(&rel);
            let is_test_file = module
                .last()
                .is_some_and(|m| m == "tests" || m.ends_with("_test"));
            let production = if is_test_file {
                String::new()
            } else {
                without_test_module(&code)
            };
            File {
                rel,
                module,
                code,
                production,
            }
        })
        .collect()
}

/// `lib.rs` → `[]`, `a.rs` and `a/mod.rs` → `[a]`, `a/b.rs` → `[a, b]`.
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if parts
        .last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        parts.pop();
    }
    parts
}

/// Replaces comments and the contents of string and char literals with
/// spaces (newlines kept), so only code is left to search.
fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !is_ident(chars.get(i.wrapping_sub(1)).copied())
        {
            // A raw string: r"...", r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            out.push('"');
            i = j + 1;
            while i < chars.len() {
                if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
                    out.push('"');
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    out.push(blank(ch));
                }
                i += 1;
            }
            out.push('"');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\''), or a lifetime ('a).
            let literal_end = if next == Some('\\') {
                (i + 2..chars.len()).find(|&k| chars[k] == '\'' && k > i + 2)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match literal_end {
                Some(end) => {
                    out.push('\'');
                    out.extend(std::iter::repeat_n(' ', end - i - 1));
                    out.push('\'');
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// The code before a trailing `#[cfg(test)]` + `mod ...` at column 0.
fn without_test_module(code: &str) -> String {
    let lines: Vec<&str> = code.lines().collect();
    let cut = lines
        .windows(2)
        .position(|w| w[0].trim_end() == "#[cfg(test)]" && w[1].starts_with("mod "))
        .unwrap_or(lines.len());
    lines[..cut].join("\n")
}

/// Every module path the code names from the crate root: `crate::a::b::C`
/// gives `[a, b, C]`; `crate::{a, b::c}` gives `[a]` and `[b, c]`;
/// `super::` chains are resolved from the file's module; and after
/// `use crate::a` (or `crate::a::{self}`), `a::b::C` gives `[a, b, C]` too.
fn crate_paths(file: &File) -> Vec<Vec<String>> {
    let mut out = rooted_paths(file);
    let aliases: BTreeSet<String> = out
        .iter()
        .filter(|p| p.len() == 1 || (p.len() == 2 && p[1] == "self"))
        .map(|p| p[0].clone())
        .filter(|a| file.top() != Some(a.as_str()))
        .collect();
    let chars: Vec<char> = file.code.chars().collect();
    for alias in aliases {
        let needle = format!("{alias}::");
        for (at, _) in file.code.match_indices(&needle) {
            let before = file.code[..at].chars().next_back();
            if is_ident(before) || before == Some(':') {
                continue;
            }
            let mut i = file.code[..at].chars().count();
            out.extend(path_tree(&chars, &mut i, Vec::new()));
        }
    }
    out
}

/// The paths that start at `crate::` or `super::`.
fn rooted_paths(file: &File) -> Vec<Vec<String>> {
    let code = &file.code;
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = !is_ident(i.checked_sub(1).map(|k| bytes[k]));
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        if starts_word && rest.starts_with("crate::") {
            i += "crate::".len();
            out.extend(path_tree(&bytes, &mut i, Vec::new()));
        } else if starts_word && rest.starts_with("super::") {
            let mut base = file.module.clone();
            while bytes[i..].iter().take(7).collect::<String>() == "super::" {
                base.pop();
                i += "super::".len();
            }
            out.extend(path_tree(&bytes, &mut i, base));
        } else {
            i += 1;
        }
    }
    out
}

/// Reads `a::b::{c, d::e}` at `i`, each leaf prefixed by `base`.
fn path_tree(chars: &[char], i: &mut usize, base: Vec<String>) -> Vec<Vec<String>> {
    let skip_ws = |i: &mut usize| {
        while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
            *i += 1;
        }
    };
    let mut path = base;
    loop {
        skip_ws(i);
        if chars.get(*i) == Some(&'{') {
            *i += 1;
            let mut all = Vec::new();
            loop {
                skip_ws(i);
                match chars.get(*i) {
                    Some('}') => {
                        *i += 1;
                        return all;
                    }
                    Some(',') => *i += 1,
                    None => return all,
                    _ => {
                        let before = *i;
                        all.extend(path_tree(chars, i, path.clone()));
                        if *i == before {
                            *i += 1;
                        }
                    }
                }
            }
        }
        let start = *i;
        while is_ident(chars.get(*i).copied()) {
            *i += 1;
        }
        if *i == start {
            return vec![path];
        }
        path.push(chars[start..*i].iter().collect());
        let sep: String = chars[*i..chars.len().min(*i + 2)].iter().collect();
        if sep != "::" {
            return vec![path];
        }
        *i += 2;
    }
}

/// Word-bounded occurrences of `needle` in `code`.
fn mentions(code: &str, needle: &str) -> bool {
    code.match_indices(needle).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + needle.len()..].chars().next();
        let bounded_before = needle.starts_with('.') || !is_ident(before);
        let bounded_after = needle.ends_with(')') || !is_ident(after);
        bounded_before && bounded_after
    })
}

/// The names a file re-exports (`pub use a::b::{c, d}` gives `c`, `d`): a
/// path through one of them names the item, not a module.
fn reexported(file: &File) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in file.code.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let leaves = rest
            .trim_end_matches(';')
            .split(['{', '}', ','])
            .filter_map(|part| part.trim().rsplit("::").next())
            .filter(|leaf| !leaf.is_empty() && *leaf != "self");
        out.extend(leaves.map(String::from));
    }
    out
}

/// The submodules a file declares, and whether each is `pub`.
fn declared_modules(file: &File) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    for line in file.code.lines() {
        let t = line.trim();
        let (public, rest) = if let Some(r) = t.strip_prefix("pub mod ") {
            (true, r)
        } else if let Some(r) = t.strip_prefix("mod ") {
            (false, r)
        } else if let Some(r) = t
            .strip_prefix("pub(crate) mod ")
            .or(t.strip_prefix("pub(super) mod "))
        {
            (false, r)
        } else {
            continue;
        };
        let name: String = rest.chars().take_while(|c| is_ident(Some(*c))).collect();
        if !name.is_empty() {
            out.insert(name, public);
        }
    }
    out
}

struct Tree {
    files: Vec<File>,
    tops: BTreeSet<String>,
    /// Module path → its file.
    by_module: BTreeMap<Vec<String>, usize>,
}

impl Tree {
    fn read() -> Tree {
        let files = read_tree();
        let tops = files
            .iter()
            .filter(|f| {
                f.module.len() == 1 && f.rel != "main.rs" && f.rel != "architecture_test.rs"
            })
            .map(|f| f.module[0].clone())
            .collect();
        let by_module = files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.rel != "main.rs")
            .map(|(i, f)| (f.module.clone(), i))
            .collect();
        Tree {
            files,
            tops,
            by_module,
        }
    }

    /// The files (relative to `src/`) for which `pred` holds.
    fn matching(&self, pred: impl Fn(&File) -> bool) -> Vec<&str> {
        self.files
            .iter()
            .filter(|f| pred(f))
            .map(|f| f.rel.as_str())
            .collect()
    }

    /// Top-level module → the top-level modules it names.
    fn graph(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut g: BTreeMap<String, BTreeSet<String>> = self
            .tops
            .iter()
            .map(|t| (t.clone(), BTreeSet::new()))
            .collect();
        for f in &self.files {
            let Some(from) = f.top() else { continue };
            for p in crate_paths(f) {
                if let Some(to) = p.first().filter(|t| self.tops.contains(*t) && *t != from)
                    && let Some(deps) = g.get_mut(from)
                {
                    deps.insert(to.clone());
                }
            }
        }
        g
    }
}

/// A cycle in `g`, as the modules along it, if there is one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut done, &mut Vec::new()))
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let tree = Tree::read();
    let g = tree.graph();
    for (m, deps) in &g {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("{m:<14} -> {}", deps.join(", "));
    }
    assert!(g.len() > 10, "read {} modules: is src/ there?", g.len());
    assert_eq!(find_cycle(&g), None, "an import cycle");
}

#[test]
fn siblings_use_only_what_a_component_declares_pub() {
    let tree = Tree::read();
    let mut wrong = Vec::new();
    let mut used = BTreeSet::new();
    for f in &tree.files {
        for p in crate_paths(f) {
            if p.first().map(String::as_str) == f.top() {
                continue;
            }
            // Walk down the path while it names modules.
            for depth in 2..=p.len() {
                let module = p[..depth].to_vec();
                if !tree.by_module.contains_key(&module) {
                    break;
                }
                let parent = &tree.files[tree.by_module[&p[..depth - 1]]];
                if reexported(parent).contains(&p[depth - 1]) {
                    break;
                }
                if declared_modules(parent).get(&p[depth - 1]) == Some(&true) {
                    used.insert(module.join("::"));
                } else {
                    wrong.push(format!("{} uses {}", f.rel, module.join("::")));
                }
            }
        }
    }
    println!("public submodules used by siblings: {used:?}");
    assert!(wrong.is_empty(), "internals used from outside: {wrong:#?}");
}

#[test]
fn nothing_imports_the_command_line() {
    let tree = Tree::read();
    let users = tree.matching(|f| {
        f.top() != Some("cli")
            && f.rel != "lib.rs"
            && f.rel != "main.rs"
            && crate_paths(f)
                .iter()
                .any(|p| p.first().is_some_and(|t| t == "cli"))
    });
    assert!(users.is_empty(), "cli is imported by {users:?}");
}

#[test]
fn only_the_outbox_mentions_sled() {
    let tree = Tree::read();
    let users = tree.matching(|f| {
        !f.is_under("outbox/") && f.rel != "architecture_test.rs" && mentions(&f.code, "sled")
    });
    assert!(users.is_empty(), "sled outside the outbox: {users:?}");
}

#[test]
fn the_pure_core_does_no_io_and_reads_no_clock() {
    let tree = Tree::read();
    let pure: Vec<&File> = tree
        .files
        .iter()
        .filter(|f| PURE.iter().any(|p| f.is_under(p)))
        .collect();
    println!("pure core: {} files checked", pure.len());
    assert!(
        pure.len() >= PURE.len(),
        "only {} files matched {PURE:?}",
        pure.len()
    );
    let wrong = naming(pure, IMPURE, |f| &f.code);
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn only_the_runtime_spawns_tasks() {
    let tree = Tree::read();
    let others = tree.files.iter().filter(|f| f.top() != Some("runtime"));
    let wrong = naming(others, SPAWNS, |f| &f.production);
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// `FILE mentions NEEDLE` for each of `needles` that the part of each file
/// `code` picks names.
fn naming<'f>(
    files: impl IntoIterator<Item = &'f File>,
    needles: &[&str],
    code: impl Fn(&File) -> &str,
) -> Vec<String> {
    files
        .into_iter()
        .flat_map(|f| {
            needles
                .iter()
                .filter(|n| mentions(code(f), n))
                .map(move |n| format!("{} mentions {n}", f.rel))
        })
        .collect()
}

/// The scanner itself: a rule broken on purpose is seen, prose and URLs are not.
#[test]
fn the_scanner_sees_paths_through_groups_and_super_but_not_in_comments_or_strings() {
    let code = "use crate::{alpha, beta::{gamma, Delta}};\n\
                // crate::commented\n\
                let s = \"crate::quoted mqtt://host\"; let c = '\"';\n\
                use super::super::epsilon::Zeta;\n\
                /* crate::blocked /* nested */ */ fn f<'a>(x: &'a str) {}\n\
                use crate::omega;\n\
                omega::sub::Item::new(); x::omega::no();\n";
    let f = File {
        rel: "one/two/three.rs".into(),
        module: module_path("one/two/three.rs"),
        code: blank_comments_and_literals(code),
        production: String::new(),
    };
    let paths: Vec<String> = crate_paths(&f).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        paths,
        [
            "alpha",
            "beta::gamma",
            "beta::Delta",
            "one::epsilon::Zeta",
            "omega",
            "omega::sub::Item::new"
        ]
    );
    let cycle: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(
        find_cycle(&cycle),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    assert!(mentions("use sled::Db;", "sled") && !mentions("let sledge = 1;", "sled"));
    assert!(mentions("t.started.elapsed().as_secs()", ".elapsed()"));
    assert!(!mentions("elapsed(start, t)", ".elapsed()"));
}
