//! Config fuzzing: `swapd::config::parse` must never panic and must answer quickly, whatever
//! text it is given. Valid configs are mutated thousands of times (byte flips, line deletions
//! and duplications, indentation changes, YAML snippets, type swaps, huge numbers, deep
//! nesting, random unicode) and random whole documents are generated, all from a small
//! deterministic PRNG, so a failure is reproducible from its seed and iteration.
//!
//! A panic is caught with `catch_unwind`, the input is shrunk line by line while it still
//! panics, and the test fails with the seed, the panic message and the shrunk input (also
//! written to `target/config-fuzz-failure-*.yaml`).

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// SplitMix64: tiny, fast, good enough for mutation choices, and fully deterministic.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const EXAMPLE: &str = include_str!("../config/example.yaml");
const DEMO: &str = include_str!("../config/demo.yaml");

/// Valid configs exercising most of the loader: macros (global, per model, typed), env
/// references, anchors and merge keys, block scalars with comments, groups, hooks, filters,
/// the swapd section, cmdStop with ${PID}.
const SEEDS: &[&str] = &[
    EXAMPLE,
    DEMO,
    "models:\n  m:\n    cmd: srv --port ${PORT}\n",
    "\
healthCheckTimeout: 20
logLevel: debug
logTimeFormat: rfc3339
startPort: 9000
globalTTL: 60
apiKeys: [k1, \"k2\"]
macros:
  base: /bin/srv --host 127.0.0.1
  ctx: 4096
  flag: true
x-common: &common
  ttl: 30
  unloadTimeout: 3
models:
  \"org/a\":
    <<: *common
    cmd: |
      ${base}   # the server
      --port ${PORT}
      -c ${ctx}
    aliases: [alpha, \"a-1\"]
    filters:
      stripParams: \"temperature, top_p\"
      setParams:
        temperature: 0.5
        chat_template_kwargs.enable_thinking: false
      setParamsByID:
        alpha-think:
          top_k: 20
  b:
    cmd: ${base} --port ${PORT} --name ${MODEL_ID}
    cmdStop: kill -TERM ${PID}
    env: [\"A=1\", \"B=two\"]
    checkEndpoint: none
    concurrencyLimit: 2
    sendLoadingState: true
    metadata: {size: 7, tags: [x, y]}
    macros:
      ctx: 8192
  c:
    cmd: /bin/other
    proxy: http://127.0.0.1:7000
    unlisted: true
    useModelName: real-c
groups:
  main:
    swap: true
    exclusive: true
    members: [\"org/a\", b]
  side:
    swap: false
    exclusive: false
    persistent: true
    members:
      - c
hooks:
  on_startup:
    preload: [alpha]
swapd:
  logBufferBytes: 4096
  maxBodyBytes: 1000000
  headerTimeout: 2
  maxConnections: 10
  upstreamTimeout: 5
  shutdownTimeout: 1
",
    "\
macros:
  \"llama\": >-
    ${env.SWAPD_BIN}
    --host 127.0.0.1
  port_arg: \"--port ${PORT}\"
models:
  \"m\u{e9}t\u{e9}o\":
    name: \"\u{65e5}\u{672c}\u{8a9e} \u{1f600}\"
    description: 'it''s \"quoted\"'
    cmd: \"${llama} --port ${PORT} -m '/models/a b.gguf'\"
    ttl: 0
  plain:
    cmd: >
      ${llama}
      --port ${PORT}
# trailing comment ${env.NOT_SET}
",
];

/// Snippets spliced into documents: YAML syntax, swapd keys with odd values, substitution
/// fragments, and things that are hard for hand-written scanners.
const SNIPPETS: &[&str] = &[
    "models:",
    "models: []",
    "models: {}",
    "models: ~",
    "groups:",
    "groups: {g: {members: [a, a]}}",
    "groups: {g: {members: [nope]}}",
    "macros: {a: \"${b}\", b: \"${a}\"}",
    "macros: {PORT: 1}",
    "macros: {\"bad name\": 1}",
    "macros: {x: [1, 2]}",
    "hooks: {on_startup: {preload: [ghost]}}",
    "swapd: {maxBodyBytes: -1}",
    "swapd: {headerTimeout: 99999999999999999999}",
    "startPort: 65535",
    "startPort: -1",
    "startPort: 70000",
    "healthCheckTimeout: 1e400",
    "ttl: .nan",
    "ttl: -.inf",
    "ttl: 0x7fffffffffffffff",
    "ttl: 18446744073709551616",
    "concurrencyLimit: 0",
    "concurrencyLimit: -5",
    "cmd: \"\"",
    "cmd: \"'unterminated\"",
    "cmd: '\"unterminated'",
    "cmd: a \\",
    "cmd: [a, b]",
    "cmd: ${PORT}${PORT}${PORT}",
    "cmdStop: ${PID}",
    "proxy: \"http://[::1\"",
    "proxy: \"\"",
    "checkEndpoint: \"\"",
    "aliases: [a, a, \"\"]",
    "env: [\"=\", \"A\", \"B==\"]",
    "filters: {stripParams: 5}",
    "filters: {setParams: [1]}",
    "filters: {setParamsByID: {x: 1}}",
    "metadata: !!binary aGVsbG8=",
    "matrix: {}",
    "profiles: {}",
    "peers: {}",
    "selectors: []",
    "<<: *missing",
    "<<: [*a, *b]",
    "&a x: 1",
    "*a: 1",
    "? complex key\n: value",
    "? [a, b]\n: c",
    "{a: 1}: 2",
    "!!str 12",
    "!custom {a: 1}",
    "!!map [1, 2]",
    "---",
    "...",
    "%YAML 1.2",
    "%TAG ! tag:example.com,2000:",
    "- item",
    "- - - deep",
    "key: |",
    "key: >-",
    "key: |+2",
    "key: \"multi\n  line\"",
    "key: 'it''s'",
    "\"\\u0000\": x",
    "\"\\uD800\": x",
    "a: \"\\x\"",
    "${",
    "${env.",
    "${env.}",
    "${env.X",
    "${env.SWAPD_X}",
    "${env.1X}",
    "${PORT",
    "${MODEL_ID}",
    "${PID}",
    "${}",
    "$${x}",
    "#",
    "# ${env.NOPE}",
    "\t",
    "\u{feff}",
    "\r",
    "\r\n",
    "\u{0}",
    "\u{85}",
    "\u{2028}",
    "\u{200b}",
    "\u{202e}",
    "e\u{301}",
    "\u{1f600}",
    "\u{10ffff}",
    "\u{fffd}",
    ":",
    ": :",
    "- :",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\"",
    "'",
    "|",
    ">",
    "&",
    "*",
    "!",
    "%",
    "@",
    "`",
];

/// Replacement values for type swaps.
const VALUES: &[&str] = &[
    "",
    "~",
    "null",
    "true",
    "no",
    "0",
    "-0",
    "1",
    "-1",
    "65535",
    "65536",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "99999999999999999999999999999999999999",
    "1e308",
    "1e309",
    "-1e309",
    "0.5",
    ".inf",
    ".nan",
    "0x10",
    "0o17",
    "1_000",
    "[]",
    "{}",
    "[1, [2, [3]]]",
    "{a: {b: {c: d}}}",
    "\"\"",
    "''",
    "\"${PORT}\"",
    "'${env.X}'",
    "${x}",
    "!!binary aGk=",
    "*anchor",
    "&anchor value",
    "|\n  block",
    "\"\\u00e9\\U0001F600\"",
    "\u{65e5}\u{672c}",
];

/// Known keys, so random documents reach deep into the typed checks.
const KEYS: &[&str] = &[
    "models",
    "groups",
    "macros",
    "hooks",
    "on_startup",
    "preload",
    "swapd",
    "cmd",
    "cmdStop",
    "proxy",
    "aliases",
    "env",
    "checkEndpoint",
    "ttl",
    "unloadTimeout",
    "unlisted",
    "useModelName",
    "name",
    "description",
    "concurrencyLimit",
    "filters",
    "stripParams",
    "setParams",
    "setParamsByID",
    "metadata",
    "sendLoadingState",
    "members",
    "swap",
    "exclusive",
    "persistent",
    "healthCheckTimeout",
    "logLevel",
    "logTimeFormat",
    "logToStdout",
    "startPort",
    "globalTTL",
    "metricsMaxInMemory",
    "apiKeys",
    "includeAliasesInList",
    "logBufferBytes",
    "maxBodyBytes",
    "headerTimeout",
    "maxConnections",
    "upstreamTimeout",
    "shutdownTimeout",
    "x-anchor",
    "<<",
    "a",
    "b",
    "m",
    "org/m",
];

/// Characters for random unicode insertions, weighted towards the awkward ones.
fn random_char(rng: &mut Rng) -> char {
    match rng.below(6) {
        0 => char::from(rng.below(128) as u8),
        1 => rng.pick(&[
            '\u{0}',
            '\t',
            '\r',
            '\n',
            '\u{b}',
            '\u{c}',
            '\u{7f}',
            '\u{85}',
            '\u{a0}',
            '\u{feff}',
            '\u{200b}',
            '\u{200d}',
            '\u{2028}',
            '\u{2029}',
            '\u{202e}',
            '\u{fffd}',
            '\u{fffe}',
            '\u{ffff}',
            '\u{301}',
            '\u{10ffff}',
        ]),
        2 => char::from_u32(0x80 + rng.below(0x780) as u32).unwrap_or('\u{e9}'),
        3 => char::from_u32(0x4e00 + rng.below(0x5000) as u32).unwrap_or('\u{4e00}'),
        4 => char::from_u32(0x1f300 + rng.below(0x300) as u32).unwrap_or('\u{1f600}'),
        _ => loop {
            if let Some(c) = char::from_u32(rng.below(0x110000) as u32) {
                break c;
            }
        },
    }
}

/// A char boundary at or before `index`.
fn floor_boundary(text: &str, mut index: usize) -> usize {
    index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn random_boundary(rng: &mut Rng, text: &str) -> usize {
    floor_boundary(text, rng.below(text.len() + 1))
}

fn deep_nesting(rng: &mut Rng) -> String {
    let limit = if rng.chance(5) { 1000 } else { 150 };
    let depth = 1 + rng.below(limit);
    match rng.below(4) {
        0 => format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        1 => format!("{}x{}", "{a: ".repeat(depth), "}".repeat(depth)),
        2 => {
            let mut out = String::new();
            for level in 0..depth.min(400) {
                out.push_str(&" ".repeat(level * 2));
                out.push_str(rng.pick(KEYS));
                out.push_str(":\n");
            }
            out
        }
        _ => {
            let mut out = String::new();
            for level in 0..depth.min(400) {
                out.push_str(&" ".repeat(level));
                out.push_str("- \n");
            }
            out
        }
    }
}

fn huge_number(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => "9".repeat(1 + rng.below(400)),
        1 => format!("-{}", "9".repeat(1 + rng.below(60))),
        2 => format!("1e{}", rng.below(100_000)),
        3 => format!("0x{}", "f".repeat(1 + rng.below(40))),
        _ => format!("{}.{}", rng.next(), rng.next()),
    }
}

/// Applies one random mutation to `text`.
fn mutate(rng: &mut Rng, text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let line_index = rng.below(lines.len());
    let with_lines = |edit: &dyn Fn(&mut Vec<String>)| {
        let mut owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        edit(&mut owned);
        owned.join("\n")
    };
    match rng.below(16) {
        // Byte flip: any byte may become any other; the result is read lossily as UTF-8, as
        // a file with a corrupt byte would be.
        0 => {
            let mut bytes = text.as_bytes().to_vec();
            if !bytes.is_empty() {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        // ASCII byte replacement (keeps UTF-8 valid when it hits an ASCII byte).
        1 => {
            let at = random_boundary(rng, text);
            let end = floor_boundary(text, at + 1 + rng.below(3));
            let end = if end <= at {
                text[at..].chars().next().map_or(at, |c| at + c.len_utf8())
            } else {
                end
            };
            let replacement = char::from(32 + rng.below(95) as u8).to_string();
            format!("{}{}{}", &text[..at], replacement, &text[end..])
        }
        2 => with_lines(&|lines| {
            lines.remove(line_index);
        }),
        3 => with_lines(&|lines| {
            let line = lines[line_index].clone();
            lines.insert(line_index, line);
        }),
        4 => {
            let other = rng.below(lines.len());
            with_lines(&|lines| lines.swap(line_index, other))
        }
        // Indentation: add or remove spaces, or turn them into a tab.
        5 => {
            let change = rng.below(4);
            let amount = 1 + rng.below(6);
            with_lines(&|lines| {
                let line = &mut lines[line_index];
                *line = match change {
                    0 => format!("{}{}", " ".repeat(amount), line),
                    1 => line.trim_start().to_string(),
                    2 => format!("\t{}", line.trim_start()),
                    _ => {
                        let trimmed = line.trim_start().len();
                        let indent = line.len() - trimmed;
                        format!(
                            "{}{}",
                            " ".repeat(indent.saturating_sub(amount)),
                            line.trim_start()
                        )
                    }
                }
            })
        }
        // A snippet on a new line with random indentation.
        6 => {
            let indent = " ".repeat(rng.below(9));
            let snippet = rng.pick(SNIPPETS).to_string();
            with_lines(&|lines| lines.insert(line_index, format!("{indent}{snippet}")))
        }
        // A snippet anywhere.
        7 => {
            let at = random_boundary(rng, text);
            format!("{}{}{}", &text[..at], rng.pick(SNIPPETS), &text[at..])
        }
        // Type swap: the value after a `key:` becomes something of another type.
        8 => {
            let value = if rng.chance(20) {
                huge_number(rng)
            } else {
                rng.pick(VALUES).to_string()
            };
            with_lines(&|lines| {
                let line = &mut lines[line_index];
                if let Some(colon) = line.find(':') {
                    *line = format!("{}: {}", &line[..colon], value);
                } else if let Some(dash) = line.find("- ") {
                    *line = format!("{}- {}", &line[..dash], value);
                }
            })
        }
        9 => {
            let number = huge_number(rng);
            with_lines(&|lines| {
                let line = &mut lines[line_index];
                if let Some(colon) = line.find(':') {
                    *line = format!("{}: {}", &line[..colon], number);
                }
            })
        }
        10 => {
            let nesting = deep_nesting(rng);
            let key = rng.pick(KEYS).to_string();
            let indent = " ".repeat(rng.below(7));
            with_lines(&|lines| lines.insert(line_index, format!("{indent}{key}: {nesting}")))
        }
        11 => {
            let at = random_boundary(rng, text);
            let count = 1 + rng.below(8);
            let inserted: String = (0..count).map(|_| random_char(rng)).collect();
            format!("{}{}{}", &text[..at], inserted, &text[at..])
        }
        // Delete a range of characters.
        12 => {
            let at = random_boundary(rng, text);
            let end = floor_boundary(text, at + rng.below(64));
            format!("{}{}", &text[..at], &text[end.max(at)..])
        }
        // Truncate the document.
        13 => text[..random_boundary(rng, text)].to_string(),
        // A very long line or key.
        14 => {
            let long = match rng.below(3) {
                0 => "x".repeat(1 + rng.below(100_000)),
                1 => "${a}".repeat(1 + rng.below(2_000)),
                _ => "\u{e9}".repeat(1 + rng.below(20_000)),
            };
            with_lines(&|lines| {
                let line = &mut lines[line_index];
                if line.contains(':') {
                    line.push_str(&long);
                } else {
                    *line = format!("{long}: {line}");
                }
            })
        }
        // Splice a piece of another seed.
        _ => {
            let other = rng.pick(SEEDS);
            let other_lines: Vec<&str> = other.split('\n').collect();
            let from = rng.below(other_lines.len());
            let to = (from + 1 + rng.below(10)).min(other_lines.len());
            let piece = other_lines[from..to].join("\n");
            with_lines(&|lines| lines.insert(line_index, piece.clone()))
        }
    }
}

/// A random scalar in YAML syntax.
fn random_scalar(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => rng.pick(VALUES).to_string(),
        1 => huge_number(rng),
        2 => format!("{}", rng.next() as i64 % 100_000),
        3 => {
            let count = rng.below(12);
            let text: String = (0..count).map(|_| random_char(rng)).collect();
            format!("{:?}", text) // Rust's debug escaping is close to YAML double-quoted.
        }
        4 => format!(
            "{} --port ${{PORT}} {}",
            rng.pick(&["srv", "/bin/x", "${m}", "${env.X}"]),
            rng.pick(&["", "-c ${ctx}", "${MODEL_ID}", "'a b'", "\"q\""])
        ),
        5 => rng.pick(KEYS).to_string(),
        6 => rng.pick(SNIPPETS).to_string(),
        _ => "http://127.0.0.1:${PORT}".to_string(),
    }
}

/// A random YAML node in block or flow style, `depth` levels at most.
fn random_node(rng: &mut Rng, depth: usize, indent: usize, out: &mut String) {
    let kind = if depth == 0 { 0 } else { rng.below(5) };
    match kind {
        0 | 1 => {
            out.push(' ');
            out.push_str(&random_scalar(rng));
            out.push('\n');
        }
        2 => {
            // Block mapping.
            out.push('\n');
            for _ in 0..1 + rng.below(5) {
                out.push_str(&" ".repeat(indent + 2));
                out.push_str(rng.pick(KEYS));
                out.push(':');
                random_node(rng, depth - 1, indent + 2, out);
            }
        }
        3 => {
            // Block sequence.
            out.push('\n');
            for _ in 0..1 + rng.below(4) {
                out.push_str(&" ".repeat(indent + 2));
                out.push('-');
                random_node(rng, depth - 1, indent + 2, out);
            }
        }
        _ => {
            // Flow collection.
            out.push(' ');
            random_flow(rng, depth, out);
            out.push('\n');
        }
    }
}

fn random_flow(rng: &mut Rng, depth: usize, out: &mut String) {
    if depth == 0 || rng.chance(30) {
        out.push_str(&random_scalar(rng).replace('\n', " "));
        return;
    }
    if rng.chance(50) {
        out.push('[');
        for index in 0..rng.below(4) {
            if index > 0 {
                out.push_str(", ");
            }
            random_flow(rng, depth - 1, out);
        }
        out.push(']');
    } else {
        out.push('{');
        for index in 0..rng.below(4) {
            if index > 0 {
                out.push_str(", ");
            }
            out.push_str(rng.pick(KEYS));
            out.push_str(": ");
            random_flow(rng, depth - 1, out);
        }
        out.push('}');
    }
}

/// A whole random document: either a structured tree over the known keys, token soup, or
/// random characters.
fn random_document(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 | 1 => {
            let mut out = String::new();
            for _ in 0..1 + rng.below(6) {
                out.push_str(rng.pick(KEYS));
                out.push(':');
                let depth = 1 + rng.below(5);
                random_node(rng, depth, 0, &mut out);
            }
            out
        }
        2 => {
            let mut out = String::new();
            for _ in 0..rng.below(200) {
                match rng.below(6) {
                    0 => out.push_str(rng.pick(KEYS)),
                    1 => out.push_str(rng.pick(SNIPPETS)),
                    2 => out.push_str(rng.pick(VALUES)),
                    3 => out.push_str(&" ".repeat(rng.below(5))),
                    4 => out.push('\n'),
                    _ => out.push_str(rng.pick(&[": ", "- ", ", ", "[", "]", "{", "}"])),
                }
            }
            out
        }
        _ => (0..rng.below(2000)).map(|_| random_char(rng)).collect(),
    }
}

/// The panic message of the last panic on this process, captured by our hook.
fn last_panic() -> &'static Mutex<Option<String>> {
    static LAST: OnceLock<Mutex<Option<String>>> = OnceLock::new();
    LAST.get_or_init(|| Mutex::new(None))
}

/// Installs (once) a panic hook that records messages instead of printing them, so thousands
/// of expected-to-be-absent panics would not flood the output; other threads' panics (the
/// test harness's own assertion failures) are still recorded and reported by the harness.
fn quiet_panics() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let fuzzing = std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with("fuzz-"));
            if fuzzing {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "<non-string panic>".to_string());
                *last_panic().lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("{payload} at {location}"));
            } else {
                previous(info);
            }
        }));
    });
}

fn env_none(_: &str) -> Option<String> {
    None
}

/// The variables the seeds use (HOME, SWAPD_*), so mutations of them get past substitution.
fn env_known(name: &str) -> Option<String> {
    (name == "HOME" || name.starts_with("SWAPD_")).then(|| "/opt/fuzz".to_string())
}

fn env_some(name: &str) -> Option<String> {
    match name.len() % 3 {
        0 => Some("/opt/bin/srv".to_string()),
        1 => Some(format!("${{{name}}} \u{e9} 'q\" #x")),
        _ => None,
    }
}

/// Parses `text`; `Err(message)` when it panicked.
/// On success: how long it took and whether the text loaded as a valid config.
fn parse_catching(text: &str, env: fn(&str) -> Option<String>) -> Result<(Duration, bool), String> {
    *last_panic().lock().unwrap_or_else(|e| e.into_inner()) = None;
    let started = Instant::now();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        swapd::config::parse(text, Path::new("fuzz.yaml"), &env).is_ok()
    }));
    let elapsed = started.elapsed();
    match result {
        Ok(loaded) => Ok((elapsed, loaded)),
        Err(_) => Err(last_panic()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| "<panic without message>".to_string())),
    }
}

/// Removes lines (then characters at the ends) while the input still panics.
fn shrink(text: &str, env: fn(&str) -> Option<String>) -> String {
    let mut current: Vec<String> = text.split('\n').map(str::to_string).collect();
    let mut attempts = 0;
    let mut index = 0;
    while index < current.len() && attempts < 2000 {
        attempts += 1;
        let mut candidate = current.clone();
        candidate.remove(index);
        if parse_catching(&candidate.join("\n"), env).is_err() {
            current = candidate;
        } else {
            index += 1;
        }
    }
    current.join("\n")
}

struct Failure {
    what: String,
    message: String,
    input: String,
}

fn report(failures: &[Failure], slowest: &[(Duration, String)]) -> String {
    let mut out = String::new();
    for (index, failure) in failures.iter().enumerate().take(5) {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("config-fuzz-failure-{index}.yaml"));
        let _ = std::fs::write(&file, &failure.input);
        out.push_str(&format!(
            "\n=== {}: panicked: {}\n--- shrunk input ({} bytes, also in {}):\n{:?}\n",
            failure.what,
            failure.message,
            failure.input.len(),
            file.display(),
            failure.input
        ));
    }
    for (elapsed, what) in slowest {
        out.push_str(&format!("\nslow: {what} took {elapsed:?}"));
    }
    out
}

/// Runs `iterations` cases from `make_case`, all of them, on a named thread so the panic hook
/// knows to capture. Fails on any panic, or on a single parse slower than `hang_guard` (far
/// above any real parse: it only catches a parse that effectively never ends). How long the
/// run took is printed, not asserted: timing belongs in the benches, and this machine is
/// shared.
fn run_cases(
    name: &str,
    iterations: usize,
    hang_guard: Duration,
    make_case: impl Fn(u64) -> (String, String, fn(&str) -> Option<String>) + Send + 'static,
) {
    quiet_panics();
    let name = name.to_string();
    let outcome = std::thread::Builder::new()
        .name(format!("fuzz-{name}"))
        .stack_size(64 * 1024 * 1024)
        .spawn(move || {
            let started = Instant::now();
            let mut failures = Vec::new();
            let mut slow = Vec::new();
            let mut done = 0;
            let mut loaded = 0;
            let mut distinct = std::collections::BTreeSet::new();
            for iteration in 0..iterations as u64 {
                let (what, text, env) = make_case(iteration);
                match parse_catching(&text, env) {
                    Ok((elapsed, ok)) => {
                        loaded += usize::from(ok);
                        if elapsed > hang_guard {
                            slow.push((elapsed, format!("{what} ({} bytes)", text.len())));
                        }
                    }
                    Err(message) => {
                        // One report per distinct panic site.
                        let site = message.rsplit(" at ").next().unwrap_or("").to_string();
                        if distinct.insert(site) {
                            let input = shrink(&text, env);
                            failures.push(Failure {
                                what,
                                message,
                                input,
                            });
                        }
                    }
                }
                done += 1;
            }
            (done, loaded, started.elapsed(), failures, slow)
        })
        .expect("spawn the fuzz thread")
        .join();
    let (done, loaded, elapsed, failures, slow) =
        outcome.expect("the fuzz thread itself never panics");
    eprintln!("{name}: {done} inputs in {elapsed:?}, {loaded} of them valid configs");
    assert_eq!(done, iterations, "{name}: every input was parsed");
    assert!(
        failures.is_empty() && slow.is_empty(),
        "{name}: {} panic site(s), {} slow input(s){}",
        failures.len(),
        slow.len(),
        report(&failures, &slow)
    );
}

/// Each seed parses (the fuzz starts from valid documents, so mutations reach deep checks).
#[test]
fn seeds_are_valid_configs() {
    for (index, seed) in SEEDS.iter().enumerate() {
        if let Err(error) = swapd::config::parse(seed, Path::new("seed.yaml"), &env_known) {
            panic!("seed {index} does not load: {error}");
        }
    }
}

#[test]
fn mutated_valid_configs_never_panic() {
    run_cases("mutations", 6_000, Duration::from_secs(60), |iteration| {
        let mut rng = Rng::new(0x5eed_0000 + iteration);
        let seed_index = rng.below(SEEDS.len());
        let mut text = SEEDS[seed_index].to_string();
        let rounds = 1 + rng.below(8);
        for _ in 0..rounds {
            text = mutate(&mut rng, &text);
        }
        let env: fn(&str) -> Option<String> = match rng.below(10) {
            0..=6 => env_known,
            7 | 8 => env_none,
            _ => env_some,
        };
        (
            format!("mutation seed={iteration} base={seed_index} rounds={rounds}"),
            text,
            env,
        )
    });
}

#[test]
fn random_documents_never_panic() {
    run_cases("documents", 4_000, Duration::from_secs(60), |iteration| {
        let mut rng = Rng::new(0xd0c_0000 + iteration);
        let text = random_document(&mut rng);
        let env: fn(&str) -> Option<String> = if rng.chance(50) { env_none } else { env_some };
        (format!("document seed={iteration}"), text, env)
    });
}

/// Hand-picked hostile documents: deep nesting, alias bombs, huge scalars, many models,
/// port exhaustion, long macro chains.
#[test]
fn pathological_documents_finish_quickly() {
    let mut cases: Vec<(String, String)> = vec![
        ("deep flow sequence".into(), format!("models: {}{}", "[".repeat(100_000), "]".repeat(100_000))),
        ("deep flow mapping".into(), format!("models: {}1{}", "{a: ".repeat(50_000), "}".repeat(50_000))),
        ("unbalanced flow".into(), format!("models: {}", "[{".repeat(50_000))),
        ("deep block mapping".into(), (0..1_500).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect()),
        ("deep block sequence".into(), (0..1_500).map(|i| format!("{}-\n", " ".repeat(i))).collect()),
        (
            "alias bomb".into(),
            "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\nmodels:\n  m:\n    cmd: srv --port ${PORT}\n    metadata: *h\n".into(),
        ),
        (
            "merge key bomb".into(),
            {
                let mut text = String::from("x0: &x0 {k0: 1}\n");
                for i in 1..200 {
                    text.push_str(&format!("x{i}: &x{i} {{<<: [*x{}], k{i}: {i}}}\n", i - 1));
                }
                text.push_str("models:\n  m:\n    cmd: srv --port ${PORT}\n    metadata: *x199\n");
                text
            },
        ),
        ("one huge line".into(), format!("models:\n  m:\n    cmd: srv --port ${{PORT}} {}\n", "a".repeat(2_000_000))),
        ("huge key".into(), format!("{}: 1\n", "k".repeat(1_000_000))),
        ("many env references".into(), "${env.X}".repeat(200_000)),
        ("many unterminated references".into(), "${".repeat(200_000)),
        ("many dollar signs".into(), "$".repeat(1_000_000)),
        ("many quotes".into(), "'\"".repeat(500_000)),
        ("many comment markers".into(), " #".repeat(500_000)),
        ("many colons".into(), ": ".repeat(500_000)),
        // Longer runs of "- " are quadratic in swapd's locator; see compact_sequence_nesting_is_linear.
        ("many dashes".into(), "- ".repeat(1_000)),
        ("many lines".into(), "\n".repeat(1_000_000)),
        ("many CRs".into(), "\r".repeat(1_000_000)),
        ("NUL bytes".into(), "\u{0}".repeat(100_000)),
        ("BOMs".into(), "\u{feff}".repeat(100_000)),
        ("combining marks".into(), format!("models:\n  m{}:\n    cmd: x --port ${{PORT}}\n", "\u{301}".repeat(100_000))),
        (
            "port exhaustion".into(),
            {
                let mut text = String::from("startPort: 65530\nmodels:\n");
                for i in 0..20 {
                    text.push_str(&format!("  m{i}:\n    cmd: srv --port ${{PORT}}\n"));
                }
                text
            },
        ),
        (
            "many models".into(),
            {
                let mut text = String::from("startPort: 10000\nmodels:\n");
                for i in 0..3_000 {
                    text.push_str(&format!("  m{i}:\n    cmd: srv --port ${{PORT}}\n    aliases: [a{i}]\n"));
                }
                text.push_str("groups:\n  g:\n    members: [");
                text.push_str(&(0..3_000).map(|i| format!("m{i}")).collect::<Vec<_>>().join(", "));
                text.push_str("]\n");
                text
            },
        ),
        (
            "many macros".into(),
            {
                let mut text = String::from("macros:\n");
                for i in 0..2_000 {
                    text.push_str(&format!("  m{i}: \"${{m{}}}x\"\n", i.max(1) - 1));
                }
                text.push_str("models:\n  m:\n    cmd: srv --port ${PORT} ${m1999}\n");
                text
            },
        ),
        (
            "macro referencing a macro twice, 16 levels".into(),
            {
                // Each level doubles the text: 2^16 copies of "x". Bounded here; see the
                // report for what a longer chain does.
                let mut text = String::from("macros:\n  m0: x\n");
                for i in 1..=16 {
                    text.push_str(&format!("  m{i}: \"${{m{0}}}${{m{0}}}\"\n", i - 1));
                }
                text.push_str("models:\n  m:\n    cmd: srv --port ${PORT} ${m16}\n");
                text
            },
        ),
        ("tabs as indentation".into(), "models:\n\tm:\n\t\tcmd: srv --port ${PORT}\n".into()),
        ("document stream".into(), "---\nmodels: {}\n---\nmodels: {}\n".into()),
        ("tagged everything".into(), "!!map\nmodels: !!map\n  m: !x\n    cmd: !!str srv --port ${PORT}\n    ttl: !!int 5\n".into()),
        ("binary metadata".into(), "models:\n  m:\n    cmd: srv --port ${PORT}\n    metadata: !!binary \"////\"\n".into()),
        ("float keys".into(), "models:\n  1.5:\n    cmd: srv --port ${PORT}\n  .nan:\n    cmd: srv --port ${PORT}\n".into()),
        ("null and bool keys".into(), "models:\n  ~:\n    cmd: srv --port ${PORT}\n  true:\n    cmd: srv --port ${PORT}\n".into()),
        ("complex keys".into(), "models:\n  ? [a, b]\n  : cmd: srv\n".into()),
    ];
    // Every seed truncated at every 97th character boundary.
    for seed in SEEDS {
        let mut at = 0;
        while at < seed.len() {
            let boundary = floor_boundary(seed, at);
            cases.push((
                format!("truncated at {boundary}"),
                seed[..boundary].to_string(),
            ));
            at += 97;
        }
    }
    let cases = std::sync::Arc::new(cases);
    let count = cases.len();
    let shared = cases.clone();
    run_cases(
        "pathological",
        count,
        Duration::from_secs(60),
        move |iteration| {
            let (what, text) = &shared[iteration as usize];
            (
                what.clone(),
                text.clone(),
                env_none as fn(&str) -> Option<String>,
            )
        },
    );
}

/// A config whose flow collections nest 20 000 deep (40 KB of brackets) is rejected at once.
/// Before the nesting pre-check in `config::parse` this took over 10 s in a debug build (about
/// 100 s at 100 000 deep), all inside serde_yaml's parser.
#[test]
fn deep_flow_nesting_fails_fast() {
    let text = format!("models: {}{}", "[".repeat(20_000), "]".repeat(20_000));
    let started = Instant::now();
    let result = swapd::config::parse(&text, Path::new("deep.yaml"), &env_none);
    let elapsed = started.elapsed();
    // Rejected by the nesting pre-check (so without handing the text to serde_yaml), which
    // the message shows; how long it took is printed, not asserted (timing is for benches).
    let message = result
        .map(|_| ())
        .expect_err("a 20 000-deep document is not a config")
        .to_string();
    assert!(
        message.contains("nested deeper than 64 levels"),
        "not rejected by the nesting pre-check: {message}"
    );
    eprintln!("rejecting 40 KB of nesting took {elapsed:?}");
}

/// Macros may use earlier macros, so each of N lines `mK: "${mK-1}${mK-1}"` doubles the
/// expansion: without a cap 22 lines made a 4 MiB cmd and 40 lines exhausted memory. The
/// loader must refuse (or cap) such an expansion quickly.
#[test]
fn macro_expansion_is_bounded() {
    let depth = 26;
    let mut text = String::from("macros:\n  m0: x\n");
    for i in 1..=depth {
        text.push_str(&format!("  m{i}: \"${{m{0}}}${{m{0}}}\"\n", i - 1));
    }
    text.push_str(&format!(
        "models:\n  m:\n    cmd: srv --port ${{PORT}} ${{m{depth}}}\n"
    ));
    let started = Instant::now();
    let result = swapd::config::parse(&text, Path::new("bomb.yaml"), &env_none);
    let elapsed = started.elapsed();
    let size = result
        .as_ref()
        .map(|loaded| loaded.config.models["m"].cmd_display.len())
        .unwrap_or(0);
    // The cap is what bounds the work: checked by size; the time is printed, not asserted.
    assert!(
        size < 1024 * 1024,
        "a {}-line config expanded to a {size}-byte cmd",
        depth + 4
    );
    eprintln!("a {}-line macro bomb took {elapsed:?}", depth + 4);
}

/// One line of N `- ` (a sequence nested N deep in compact form). Regression: `Locator::new`
/// (src/config/scan.rs) stored the whole stack path for every item, N²/2 path segments (16 KB
/// of dashes took 2 s and 760 MB; the 1 MB line of the pathological set was OOM-killed at
/// 24 GB). The nesting pre-check in `config::parse` now rejects such a line before the scan.
#[test]
fn compact_sequence_nesting_is_linear() {
    let text = "- ".repeat(10_000);
    let started = Instant::now();
    let result = swapd::config::parse(&text, Path::new("dashes.yaml"), &env_none);
    let elapsed = started.elapsed();
    // Checked by the path it took (the pre-check's message), not by a time bound.
    let message = result
        .map(|_| ())
        .expect_err("10 000 nested sequences are not a config")
        .to_string();
    assert!(
        message.contains("sequences nested deeper than 64 levels"),
        "not rejected by the nesting pre-check: {message}"
    );
    eprintln!("rejecting 20 KB of '- ' took {elapsed:?}");
}
