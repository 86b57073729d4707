//! The shape rules of the source, read from the files (no process started): the layering rule
//! (ARCHITECTURE.md, "Module layering": the graph of which top-level module uses which has no
//! cycle and goes downward only), the 800-line limit for source files outside tests and the
//! vendored crate, and a leading `//!` line in every file under `src/`.
//!
//! Every `.rs` file under `src/` (except the vendored crate and `src/bin`) belongs to the
//! top-level module its path starts with (`src/proxy/routes.rs` → `proxy`; `src/main.rs` is the
//! binary, `main`). Its references to other top-level modules are its paths `crate::x…`
//! (`swapd::x…` in `main.rs`), `use crate::{x, y}` groups, and `super::` chains that climb to
//! the crate root; comments and string literals are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// `text` with comments, string and character literals blanked out (same length, so the
/// remaining code keeps its shape).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
            continue;
        }
        // Raw strings: r"…", r#"…"#, br#"…"# (the `r` starts a token, or follows a lone `b`).
        let starts_token = |at: usize| at == 0 || !is_ident(chars[at - 1]);
        if c == 'r'
            && matches!(next, Some('"') | Some('#'))
            && (starts_token(i) || (i >= 1 && chars[i - 1] == 'b' && starts_token(i - 1)))
        {
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) == Some(&'"') {
                j += 1;
                loop {
                    if j >= chars.len() {
                        break;
                    }
                    if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
                continue;
            }
        }
        if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                if chars[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j + 1;
            continue;
        }
        if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or else a lifetime or label.
            if next == Some('\\') {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                out.push_str("' '");
                i = j + 1;
                continue;
            }
            if chars.get(i + 2) == Some(&'\'') {
                out.push_str("' '");
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Punct(char),
    PathSep,
}

fn tokens(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' || c == '$' {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // `$crate` in a macro means the same as `crate`.
            out.push(Token::Ident(word.trim_start_matches('$').to_string()));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token::PathSep);
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

/// The top-level modules the code refers to. `depth` is how many modules deep the file is
/// (`src/proxy/mod.rs` is 1, `src/proxy/routes.rs` 2); `root` is the crate-root keyword
/// (`crate`, or `swapd` for the binary).
fn references(code: &str, depth: usize, root: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let tokens = tokens(code);
    let mut found = BTreeSet::new();
    // Inline `mod name { … }` blocks make `super` climb one more level.
    let mut inline: Vec<usize> = Vec::new();
    let mut braces = 0usize;
    let ident = |at: usize| match tokens.get(at) {
        Some(Token::Ident(word)) => Some(word.as_str()),
        _ => None,
    };
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Punct('{') => braces += 1,
            Token::Punct('}') => {
                braces = braces.saturating_sub(1);
                if inline.last() == Some(&braces) {
                    inline.pop();
                }
            }
            Token::Ident(word)
                if word == "mod"
                    && ident(i + 1).is_some()
                    && tokens.get(i + 2) == Some(&Token::Punct('{')) =>
            {
                inline.push(braces);
            }
            Token::Ident(word) if word == root || word == "super" => {
                // Only the first segment of a path: `a::crate` is not a crate path.
                let preceded = i > 0 && tokens[i - 1] == Token::PathSep;
                if preceded || tokens.get(i + 1) != Some(&Token::PathSep) {
                    i += 1;
                    continue;
                }
                let mut at = i;
                if word == "super" {
                    let mut climbs = 0;
                    while ident(at) == Some("super") && tokens.get(at + 1) == Some(&Token::PathSep)
                    {
                        climbs += 1;
                        at += 2;
                    }
                    if climbs < depth + inline.len() {
                        i = at;
                        continue;
                    }
                } else {
                    at += 2;
                }
                match tokens.get(at) {
                    Some(Token::Ident(name)) if known.contains(name) => {
                        found.insert(name.clone());
                    }
                    Some(Token::Punct('{')) => {
                        // `use crate::{a, b::c, d::{e, f}}`: the first segment of each item.
                        let mut level = 0;
                        let mut expect_item = true;
                        for token in &tokens[at..] {
                            match token {
                                Token::Punct('{') => {
                                    level += 1;
                                    expect_item = level == 1;
                                }
                                Token::Punct('}') => {
                                    level -= 1;
                                    if level == 0 {
                                        break;
                                    }
                                }
                                Token::Punct(',') if level == 1 => expect_item = true,
                                Token::Ident(name) if expect_item && level == 1 => {
                                    if known.contains(name) {
                                        found.insert(name.clone());
                                    }
                                    expect_item = false;
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
                i = at;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module graph of the crate in `src`: module → used module → files that use it.
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(src).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "vendor" || name == "bin" {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else if name.ends_with(".rs") {
            files.push(path);
        }
    }
    let top_of = |path: &Path| -> (String, usize) {
        let relative = path.strip_prefix(src).expect("under src/");
        let parts: Vec<String> = relative
            .iter()
            .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        let depth = parts.len() - usize::from(parts.last().is_some_and(|p| p == "mod"));
        (parts[0].clone(), depth)
    };
    let known: BTreeSet<String> = files
        .iter()
        .map(|path| top_of(path).0)
        .filter(|top| top != "lib" && top != "main")
        .collect();
    let mut graph = Graph::new();
    for path in &files {
        let (top, depth) = top_of(path);
        if top == "lib" {
            continue; // The crate root only declares the modules.
        }
        let (root, depth) = if top == "main" {
            ("swapd", 0)
        } else {
            ("crate", depth)
        };
        let text = std::fs::read_to_string(path).expect("a readable source file");
        let used = references(&code_only(&text), depth, root, &known);
        let edges = graph.entry(top.clone()).or_default();
        for target in used.into_iter().filter(|target| *target != top) {
            edges
                .entry(target)
                .or_default()
                .insert(path.strip_prefix(src).unwrap().display().to_string());
        }
    }
    graph
}

/// A cycle in the graph, as the modules along it (first repeated at the end), if any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|edges| edges.keys()) {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = path.iter().position(|n| n == next).expect("on the path");
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

fn describe(graph: &Graph) -> String {
    let mut text = String::new();
    for (module, edges) in graph {
        let targets: Vec<&str> = edges.keys().map(String::as_str).collect();
        let targets = if targets.is_empty() {
            "(nothing)".to_string()
        } else {
            targets.join(", ")
        };
        text.push_str(&format!("  {module} → {targets}\n"));
    }
    text
}

#[test]
fn top_level_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    // The graph is read, not assumed empty: the daemon wires everything together.
    assert!(
        graph.get("daemon").is_some_and(|edges| edges.len() >= 3),
        "the daemon module should use several others; parsed graph:\n{}",
        describe(&graph)
    );
    if let Some(cycle) = find_cycle(&graph) {
        let mut message = format!("import cycle between modules: {}\n", cycle.join(" → "));
        for pair in cycle.windows(2) {
            let files = &graph[&pair[0]][&pair[1]];
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            message.push_str(&format!(
                "  {} → {} in {}\n",
                pair[0],
                pair[1],
                files.join(", ")
            ));
        }
        message.push_str("whole graph:\n");
        message.push_str(&describe(&graph));
        panic!("{message}");
    }
    println!("module graph (no cycle):\n{}", describe(&graph));
}

/// The layers of ARCHITECTURE.md's dependency rule, top first: a module may use only modules
/// of a lower layer, never one of its own layer or above (so `proxy` and `reload`, for
/// instance, do not use each other). A new top-level module must be placed here.
const LAYERS: &[&[&str]] = &[
    &["main"],
    &["daemon"],
    &["ollama"],
    &["proxy", "reload"],
    &["supervisor", "activity"],
    &["logs", "metrics"],
    &["config", "upstream", "systemd"],
    &["http", "timefmt", "logbuf"],
];

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    let layer_of = |module: &str| LAYERS.iter().position(|layer| layer.contains(&module));
    let mut problems = Vec::new();
    for (module, edges) in &graph {
        let Some(from) = layer_of(module) else {
            problems.push(format!(
                "{module} is in no layer (add it to LAYERS and ARCHITECTURE.md)"
            ));
            continue;
        };
        for (target, files) in edges {
            match layer_of(target) {
                None => problems.push(format!("{target} is in no layer (add it to LAYERS)")),
                Some(to) if to <= from => {
                    let files: Vec<&str> = files.iter().map(String::as_str).collect();
                    problems.push(format!(
                        "{module} → {target} goes up or sideways (in {})",
                        files.join(", ")
                    ));
                }
                Some(_) => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the layering is broken:\n  {}\nwhole graph:\n{}",
        problems.join("\n  "),
        describe(&graph)
    );
}

#[test]
fn the_scanner_sees_paths_and_skips_comments_and_strings() {
    let known: BTreeSet<String> = ["config", "proxy", "http", "logs", "metrics", "daemon"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let code = r##"
        use crate::config::{self, Config};
        use crate::{http, logs::Logs};
        // crate::daemon in a comment
        /* crate::daemon /* nested */ crate::daemon */
        let a = "crate::daemon in a string";
        let b = r#"crate::daemon "raw""#;
        let c = '"'; let d = '\''; fn f<'a>(x: &'a str) {}
        fn g() { super::super::metrics::x(); super::local(); }
        mod tests { use super::*; fn h() { super::super::super::proxy::y(); } }
    "##;
    let found = references(&code_only(code), 2, "crate", &known);
    let expected: BTreeSet<String> = ["config", "http", "logs", "metrics", "proxy"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn a_cycle_is_found_and_named() {
    let mut graph = Graph::new();
    let edge = |graph: &mut Graph, from: &str, to: &str| {
        graph
            .entry(from.to_string())
            .or_default()
            .entry(to.to_string())
            .or_default()
            .insert(format!("{from}.rs"));
    };
    edge(&mut graph, "daemon", "proxy");
    edge(&mut graph, "proxy", "supervisor");
    edge(&mut graph, "daemon", "supervisor");
    assert_eq!(find_cycle(&graph), None);
    edge(&mut graph, "supervisor", "proxy");
    assert_eq!(
        find_cycle(&graph),
        Some(vec![
            "proxy".to_string(),
            "supervisor".to_string(),
            "proxy".to_string()
        ])
    );
}

/// Issue #17's size rule: no Rust source file over this many lines outside tests and the
/// vendored crate, in `src/` (with `src/bin/`) and `benches/`.
const MAX_LINES: usize = 800;

/// A file that holds only tests: `tests.rs`, `*_tests.rs`, or anything under a `tests/` folder.
fn is_test_file(relative: &Path) -> bool {
    let name = relative
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("");
    name == "tests.rs"
        || name.ends_with("_tests.rs")
        || relative
            .parent()
            .is_some_and(|dir| dir.components().any(|part| part.as_os_str() == "tests"))
}

/// Every non-test, non-vendored Rust file under `src/` and `benches/`, relative to the crate.
fn source_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("benches"), &mut files);
    let mut relative: Vec<PathBuf> = files
        .iter()
        .map(|path| {
            path.strip_prefix(root)
                .expect("under the crate")
                .to_path_buf()
        })
        .filter(|path| !path.starts_with("src/vendor") && !is_test_file(path))
        .collect();
    relative.sort();
    relative
}

fn read_source(relative: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn test_files_are_told_apart_from_source_files() {
    for test_file in [
        "src/config/tests/macros.rs",
        "src/proxy/usage/tests.rs",
        "src/supervisor/stale_tests.rs",
    ] {
        assert!(
            is_test_file(Path::new(test_file)),
            "{test_file} is a test file"
        );
    }
    for source in [
        "src/proxy/routes.rs",
        "src/metrics/mod.rs",
        "benches/proxy.rs",
        "src/bin/fake-upstream.rs",
    ] {
        assert!(
            !is_test_file(Path::new(source)),
            "{source} is a source file"
        );
    }
    let files = source_files();
    assert!(
        files.contains(&PathBuf::from("src/proxy/mod.rs")),
        "{files:?}"
    );
    assert!(
        files.contains(&PathBuf::from("benches/proxy.rs")),
        "{files:?}"
    );
    assert!(
        !files.iter().any(|file| file.starts_with("src/vendor")),
        "{files:?}"
    );
}

#[test]
fn no_source_file_is_over_the_line_limit() {
    let too_long: Vec<String> = source_files()
        .iter()
        .filter_map(|file| {
            let lines = read_source(file).lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", file.display()))
        })
        .collect();
    assert!(
        too_long.is_empty(),
        "source files over {MAX_LINES} lines (split them by job; tests go in a sibling tests.rs):\n  {}",
        too_long.join("\n  ")
    );
}

#[test]
fn every_source_file_starts_by_saying_what_it_owns() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let silent: Vec<String> = files
        .iter()
        .map(|path| {
            path.strip_prefix(root)
                .expect("under the crate")
                .to_path_buf()
        })
        .filter(|path| !path.starts_with("src/vendor"))
        .filter(|path| {
            let text = read_source(path);
            let first = text
                .lines()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("");
            !first.starts_with("//!")
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        silent.is_empty(),
        "files without a leading `//!` line:\n  {}",
        silent.join("\n  ")
    );
}
