//! A line-level look at the raw YAML text, for the two jobs serde_yaml cannot do for us.
//!
//! `serde_yaml::Value` keeps no positions, yet errors must name a line, and `${env.X}` must be
//! replaced in the raw text except inside comments. Both need to know, for each byte, whether
//! it is in a comment, a quoted scalar or a block scalar, and, for each line, which key it
//! starts. This is a deliberately small approximation of YAML's lexical rules that is exact
//! for ordinary block-style configs; where it is unsure it reports nothing rather than
//! something wrong.

use super::error::Segment;

/// What a byte of the raw text is part of, as far as substitution cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    /// Plain (unquoted) scalars, keys and YAML punctuation.
    Plain,
    /// Inside a `"..."` scalar, where `\` and `"` must be escaped.
    DoubleQuoted,
    /// Inside a `'...'` scalar, where `'` must be doubled.
    SingleQuoted,
    /// A `#` comment up to the end of the line.
    Comment,
    /// The content lines of a `|` or `>` block scalar, taken literally.
    BlockScalar,
}

/// One line of the raw text.
#[derive(Debug, Clone)]
pub(crate) struct Line<'a> {
    /// One-based line number.
    pub(crate) number: usize,
    /// Byte offset of the line's first byte in the whole text.
    pub(crate) start: usize,
    /// The line without its line break.
    pub(crate) text: &'a str,
    /// Whether the line starts a new node of the block structure (rather than continuing a
    /// block scalar, a multi-line quoted or plain scalar, or a flow collection).
    pub(crate) structural: bool,
    /// Length in bytes of the part of `text` before any comment.
    pub(crate) code_len: usize,
}

/// The result of scanning: the lines, and where the lexical context changes.
#[derive(Debug, Clone)]
pub(crate) struct Scan<'a> {
    pub(crate) lines: Vec<Line<'a>>,
    changes: Vec<(usize, Context)>,
}

impl Scan<'_> {
    /// The lexical context of the byte at `offset`.
    pub(crate) fn context_at(&self, offset: usize) -> Context {
        let after = self.changes.partition_point(|(start, _)| *start <= offset);
        if after == 0 {
            Context::Plain
        } else {
            self.changes[after - 1].1
        }
    }

    /// The line containing the byte at `offset`.
    pub(crate) fn line_at(&self, offset: usize) -> Option<&Line<'_>> {
        let after = self.lines.partition_point(|line| line.start <= offset);
        after.checked_sub(1).and_then(|index| self.lines.get(index))
    }
}

/// Where the scanner is inside the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Expecting the start of a node (after indentation, `- `, `: `, `[`, `,` ...).
    Node,
    /// Inside a plain scalar.
    Plain,
    /// Inside a double-quoted scalar.
    Double,
    /// Inside a single-quoted scalar.
    Single,
    /// After a complete node (a closed quote, a flow collection end, an alias).
    AfterNode,
}

fn context_of(mode: Mode) -> Context {
    match mode {
        Mode::Double => Context::DoubleQuoted,
        Mode::Single => Context::SingleQuoted,
        Mode::Node | Mode::Plain | Mode::AfterNode => Context::Plain,
    }
}

fn record(changes: &mut Vec<(usize, Context)>, offset: usize, context: Context) {
    if changes.last().map(|(_, last)| *last) != Some(context) {
        changes.push((offset, context));
    }
}

fn is_blank_byte(byte: Option<u8>) -> bool {
    matches!(byte, None | Some(b' ') | Some(b'\t'))
}

/// Scans `text` line by line, tracking quotes, comments, block scalars and flow collections.
pub(crate) fn scan(text: &str) -> Scan<'_> {
    let mut lines = Vec::new();
    let mut changes = Vec::new();
    let mut mode = Mode::Node;
    let mut flow_depth = 0usize;
    let mut block_parent: Option<usize> = None;
    // The column of the key or `-` owning a plain scalar that may continue on the next line.
    let mut plain_indent: Option<usize> = None;
    let mut offset = 0usize;

    for (index, raw_line) in text.split('\n').enumerate() {
        let start = offset;
        offset += raw_line.len() + 1;
        let line_text = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        let bytes = line_text.as_bytes();
        let indent = bytes.iter().take_while(|byte| **byte == b' ').count();
        let blank = line_text.trim().is_empty();
        let mut line = Line {
            number: index + 1,
            start,
            text: line_text,
            structural: false,
            code_len: line_text.len(),
        };

        if let Some(parent) = block_parent {
            if blank || indent > parent {
                record(&mut changes, start, Context::BlockScalar);
                lines.push(line);
                continue;
            }
            block_parent = None;
        }

        let quoted = matches!(mode, Mode::Double | Mode::Single);
        if blank && !quoted {
            record(&mut changes, start, Context::Plain);
            lines.push(line);
            continue;
        }

        let mut position = 0;
        if !quoted {
            let continues_plain = plain_indent
                .is_some_and(|parent| indent > parent && bytes.get(indent) != Some(&b'#'));
            if flow_depth > 0 {
                mode = Mode::Node;
            } else if continues_plain {
                mode = Mode::Plain;
            } else {
                plain_indent = None;
                mode = Mode::Node;
                line.structural = true;
            }
            position = indent;
        }
        record(&mut changes, start, context_of(mode));

        let mut parent_col = indent;
        let mut node_col = indent;
        let mut pending_block = false;
        let mut comment_at: Option<usize> = None;
        while position < bytes.len() {
            let byte = bytes[position];
            let after_space = position == 0 || matches!(bytes[position - 1], b' ' | b'\t');
            let next = bytes.get(position + 1).copied();
            match mode {
                Mode::Double => {
                    if byte == b'\\' {
                        position += 2;
                        continue;
                    }
                    if byte == b'"' {
                        mode = Mode::AfterNode;
                        record(&mut changes, start + position + 1, Context::Plain);
                    }
                }
                Mode::Single => {
                    if byte == b'\'' {
                        if next == Some(b'\'') {
                            position += 2;
                            continue;
                        }
                        mode = Mode::AfterNode;
                        record(&mut changes, start + position + 1, Context::Plain);
                    }
                }
                Mode::Node => match byte {
                    b' ' | b'\t' => {}
                    b'#' if after_space => {
                        comment_at = Some(position);
                        break;
                    }
                    b'-' | b'?' | b':' if is_blank_byte(next) => {
                        if byte == b'-' {
                            parent_col = position;
                        }
                    }
                    b'"' => {
                        mode = Mode::Double;
                        node_col = position;
                        record(&mut changes, start + position, Context::DoubleQuoted);
                    }
                    b'\'' => {
                        mode = Mode::Single;
                        node_col = position;
                        record(&mut changes, start + position, Context::SingleQuoted);
                    }
                    b'[' | b'{' => flow_depth += 1,
                    b']' | b'}' => {
                        flow_depth = flow_depth.saturating_sub(1);
                        mode = Mode::AfterNode;
                    }
                    b',' if flow_depth > 0 => {}
                    b'|' | b'>' if flow_depth == 0 => {
                        pending_block = true;
                        mode = Mode::AfterNode;
                    }
                    b'&' | b'!' | b'*' => {
                        while position < bytes.len() && !matches!(bytes[position], b' ' | b'\t') {
                            position += 1;
                        }
                        if byte == b'*' {
                            mode = Mode::AfterNode;
                        }
                        continue;
                    }
                    _ => {
                        mode = Mode::Plain;
                        node_col = position;
                    }
                },
                Mode::Plain => {
                    let ends_flow_key =
                        flow_depth > 0 && matches!(next, Some(b',') | Some(b']') | Some(b'}'));
                    if byte == b':' && (is_blank_byte(next) || ends_flow_key) {
                        parent_col = node_col;
                        mode = Mode::Node;
                    } else if byte == b'#' && after_space {
                        comment_at = Some(position);
                        break;
                    } else if flow_depth > 0 && byte == b',' {
                        mode = Mode::Node;
                    } else if flow_depth > 0 && matches!(byte, b']' | b'}') {
                        flow_depth -= 1;
                        mode = Mode::AfterNode;
                    }
                }
                Mode::AfterNode => match byte {
                    b':' => {
                        parent_col = node_col;
                        mode = Mode::Node;
                    }
                    b'#' if after_space => {
                        comment_at = Some(position);
                        break;
                    }
                    b',' if flow_depth > 0 => mode = Mode::Node,
                    b']' | b'}' => flow_depth = flow_depth.saturating_sub(1),
                    _ => {}
                },
            }
            position += 1;
        }

        if let Some(comment) = comment_at {
            record(&mut changes, start + comment, Context::Comment);
            line.code_len = comment;
        }
        match mode {
            Mode::Plain if comment_at.is_none() && flow_depth == 0 => {
                // Continuation lines must be indented past the key (or `-`) that owns
                // the scalar.
                if plain_indent.is_none() {
                    plain_indent = Some(parent_col);
                }
            }
            Mode::Double | Mode::Single => {}
            _ => {
                plain_indent = None;
                mode = Mode::Node;
            }
        }
        if comment_at.is_some() && mode == Mode::Plain {
            mode = Mode::Node;
        }
        if pending_block {
            block_parent = Some(parent_col);
        }
        lines.push(line);
    }

    Scan { lines, changes }
}

/// Where one key (or sequence item) of the block structure starts.
#[derive(Debug, Clone)]
struct Entry {
    path: Vec<Segment>,
    line: usize,
    column: usize,
}

/// Finds the line and column of key paths in block-style YAML.
#[derive(Debug, Clone, Default)]
pub(crate) struct Locator {
    entries: Vec<Entry>,
}

/// An open node of the block structure while walking lines.
struct Frame {
    column: usize,
    segment: Segment,
}

impl Locator {
    /// Builds the index of every key and sequence item that starts a line (or follows `- `).
    pub(crate) fn new(scan: &Scan<'_>) -> Locator {
        let mut entries = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        for line in scan.lines.iter().filter(|line| line.structural) {
            let code = line.text[..line.code_len].trim_end();
            if code.starts_with("---") || code.starts_with("...") {
                stack.clear();
                continue;
            }
            if code.starts_with('%') {
                continue;
            }
            let mut column = code.len() - code.trim_start_matches(' ').len();
            let mut rest = &code[column..];
            while rest == "-" || rest.starts_with("- ") || rest.starts_with("-\t") {
                while stack.last().is_some_and(|frame| frame.column > column) {
                    stack.pop();
                }
                let mut item = 0;
                if let Some(top) = stack.last() {
                    if top.column == column {
                        if let Segment::Index(previous) = top.segment {
                            item = previous + 1;
                            stack.pop();
                        }
                    }
                }
                stack.push(Frame {
                    column,
                    segment: Segment::Index(item),
                });
                entries.push(Entry {
                    path: stack.iter().map(|frame| frame.segment.clone()).collect(),
                    line: line.number,
                    column: column + 1,
                });
                let after = &rest[1..];
                let trimmed = after.trim_start();
                column += 1 + after.len() - trimmed.len();
                rest = trimmed;
            }
            if rest.is_empty() {
                continue;
            }
            if let Some(key) = parse_key(rest) {
                while stack.last().is_some_and(|frame| frame.column >= column) {
                    stack.pop();
                }
                stack.push(Frame {
                    column,
                    segment: Segment::Key(key),
                });
                entries.push(Entry {
                    path: stack.iter().map(|frame| frame.segment.clone()).collect(),
                    line: line.number,
                    column: column + 1,
                });
            }
        }
        Locator { entries }
    }

    /// The one-based line and column where exactly `path` starts, if it can be found.
    pub(crate) fn exact(&self, path: &[Segment]) -> Option<(usize, usize)> {
        self.entries
            .iter()
            .find(|entry| entry.path == path)
            .map(|entry| (entry.line, entry.column))
    }

    /// The position of `path`, or of its closest ancestor that can be found.
    #[cfg(test)]
    pub(crate) fn nearest(&self, path: &[Segment]) -> Option<(usize, usize)> {
        (1..=path.len())
            .rev()
            .find_map(|length| self.exact(&path[..length]))
    }

    /// The key path of the node that `line` belongs to: the last key starting on or before it.
    pub(crate) fn path_at_line(&self, line: usize) -> Option<&[Segment]> {
        self.entries
            .iter()
            .take_while(|entry| entry.line <= line)
            .last()
            .map(|entry| entry.path.as_slice())
    }
}

/// Reads the key at the start of `text` (`key: ...`, `"key": ...`, `'key': ...`), if any.
fn parse_key(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let (key, after) = match bytes.first()? {
        b'"' => {
            let mut key = String::new();
            let mut chars = text[1..].char_indices();
            let mut end = None;
            while let Some((index, character)) = chars.next() {
                match character {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            key.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(index + 2);
                        break;
                    }
                    other => key.push(other),
                }
            }
            (key, &text[end?..])
        }
        b'\'' => {
            let mut key = String::new();
            let mut end = None;
            let mut chars = text[1..].char_indices().peekable();
            while let Some((index, character)) = chars.next() {
                if character == '\'' {
                    if chars.peek().map(|(_, next)| *next) == Some('\'') {
                        chars.next();
                        key.push('\'');
                        continue;
                    }
                    end = Some(index + 2);
                    break;
                }
                key.push(character);
            }
            (key, &text[end?..])
        }
        b'[' | b'{' | b'|' | b'>' | b'*' | b'&' | b'!' | b'#' | b'%' | b'@' | b'`' | b'?' => {
            return None
        }
        _ => {
            let colon = (0..bytes.len()).find(|index| {
                bytes[*index] == b':' && is_blank_byte(bytes.get(index + 1).copied())
            })?;
            let key = text[..colon].trim_end();
            if key.is_empty() {
                return None;
            }
            return Some(key.to_string());
        }
    };
    let after = after.trim_start();
    let mut after_bytes = after.bytes();
    if after_bytes.next() == Some(b':') && is_blank_byte(after_bytes.next()) {
        Some(key)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_path(parts: &[&str]) -> Vec<Segment> {
        parts
            .iter()
            .map(|part| match part.parse::<usize>() {
                Ok(index) => Segment::Index(index),
                Err(_) => Segment::Key(part.to_string()),
            })
            .collect()
    }

    const SAMPLE: &str = "\
# a comment: with colon
startPort: 5800   # trailing
apiKeys:
- one
- two
models:
  \"qwen:7b\":
    cmd: |
      server --port ${PORT}
      # not: a key
    aliases:
      - a
      - b
  other:
    proxy: 'http://x:1'
    env: [\"A=1\",
      \"B=2\"]
    name: plain
      continued: not a key
groups:
  g:
    members:
    - x: 1
      y: 2
";

    #[test]
    fn locator_finds_keys_items_and_quoted_keys() {
        let scan = scan(SAMPLE);
        let locator = Locator::new(&scan);
        assert_eq!(locator.exact(&key_path(&["startPort"])), Some((2, 1)));
        assert_eq!(locator.exact(&key_path(&["apiKeys", "1"])), Some((5, 1)));
        assert_eq!(
            locator.exact(&key_path(&["models", "qwen:7b"])),
            Some((7, 3))
        );
        assert_eq!(
            locator.exact(&key_path(&["models", "qwen:7b", "aliases", "1"])),
            Some((13, 7))
        );
        assert_eq!(
            locator.exact(&key_path(&["models", "other", "proxy"])),
            Some((15, 5))
        );
        assert_eq!(
            locator.exact(&key_path(&["models", "other", "name"])),
            Some((18, 5))
        );
        assert_eq!(
            locator.exact(&key_path(&["groups", "g", "members", "0", "y"])),
            Some((24, 7))
        );
        // Block scalar content and plain continuations are not keys.
        assert_eq!(
            locator.exact(&key_path(&["models", "qwen:7b", "cmd", "# not"])),
            None
        );
        assert_eq!(
            locator.exact(&key_path(&["models", "other", "continued"])),
            None
        );
        assert_eq!(
            locator.exact(&key_path(&["models", "other", "name", "continued"])),
            None
        );
        // A missing key falls back to its parent.
        assert_eq!(
            locator.nearest(&key_path(&["models", "other", "ttl"])),
            Some((14, 3))
        );
        assert_eq!(
            locator.path_at_line(9),
            Some(key_path(&["models", "qwen:7b", "cmd"]).as_slice())
        );
    }

    #[test]
    fn contexts_distinguish_comments_quotes_and_blocks() {
        let text = "a: \"x # y\" # real\nb: 'it''s' #c\nc: |\n  # kept\nd: v#notcomment\n";
        let scan = scan(text);
        let at = |needle: &str| scan.context_at(text.find(needle).expect("needle"));
        assert_eq!(at("x #"), Context::DoubleQuoted);
        assert_eq!(at("# real"), Context::Comment);
        assert_eq!(at("it''s"), Context::SingleQuoted);
        assert_eq!(at("#c"), Context::Comment);
        assert_eq!(at("# kept"), Context::BlockScalar);
        assert_eq!(at("#notcomment"), Context::Plain);
        assert_eq!(at("d:"), Context::Plain);
    }

    #[test]
    fn multi_line_double_quotes_are_tracked() {
        let text = "a: \"one\n  # two\"\nb: 1 # three\n";
        let scan = scan(text);
        assert_eq!(
            scan.context_at(text.find("# two").expect("needle")),
            Context::DoubleQuoted
        );
        assert_eq!(
            scan.context_at(text.find("# three").expect("needle")),
            Context::Comment
        );
        let locator = Locator::new(&scan);
        assert_eq!(locator.exact(&key_path(&["b"])), Some((3, 1)));
    }
}
