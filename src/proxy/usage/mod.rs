//! The token-usage scanner: reads token counts and generation speeds from a response while the
//! proxy forwards it, chunk by chunk, without ever holding the whole body.
//!
//! It lives next to the proxy because the proxy (and the Ollama handlers) feed it every byte
//! they forward; what it finds is handed to [`crate::metrics`] as a plain [`TokenUsage`].
//!
//! For event streams it splits lines (carrying at most 64 KiB of a partial line) and parses
//! only `data:` lines that mention `"usage"`, `"timings"` or `"metrics"`; for plain JSON bodies
//! it keeps the last 32 KiB and looks for those objects there once the body is complete. The
//! fields read are those that llama-swap reads (see its `internal/server/metrics*.go`): OpenAI
//! `usage`, OpenAI Responses `response.usage`, Anthropic `usage` and `message.usage`, vLLM
//! `metrics`, and llama.cpp `timings`, which take precedence over `usage` when both are
//! present. The JSON readers themselves are in `fields.rs`.

mod fields;
#[cfg(test)]
mod tests;

use serde::de::DeserializeSeed;

use self::fields::{Envelope, Found, Lenient, TimingsVisit, UsageFields, UsageVisit, VllmVisit};
use crate::metrics::TokenUsage;

/// The longest partial event-stream line a [`UsageScanner`] carries between chunks.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// How much of the end of a JSON body a [`UsageScanner`] keeps.
pub const JSON_TAIL_BYTES: usize = 32 * 1024;

/// Incremental usage scanner fed with each response chunk as it is forwarded.
///
/// Memory is bounded: at most [`MAX_LINE_BYTES`] of a partial event-stream line, or the last
/// [`JSON_TAIL_BYTES`] of a JSON body (see [`UsageScanner::retained_bytes`]).
pub struct UsageScanner {
    is_event_stream: bool,
    /// Event streams: the current partial line. JSON bodies: the tail of the body.
    buffer: TailRing,
    /// The first bytes of the current partial line, kept so that a line longer than the carry
    /// can still be recognised as a `data:` line.
    line_prefix: [u8; 5],
    line_prefix_len: usize,
    found: Found,
}

impl UsageScanner {
    /// Creates a scanner for a response whose `Content-Type` is (`true`) or is not (`false`)
    /// `text/event-stream`.
    pub fn new(is_event_stream: bool) -> UsageScanner {
        let limit = if is_event_stream {
            MAX_LINE_BYTES
        } else {
            JSON_TAIL_BYTES
        };
        UsageScanner {
            is_event_stream,
            buffer: TailRing::new(limit),
            line_prefix: [0; 5],
            line_prefix_len: 0,
            found: Found::default(),
        }
    }

    /// Feeds the next chunk of the response body.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.is_event_stream {
            self.feed_event_stream(bytes);
        } else {
            self.buffer.push(bytes);
        }
    }

    /// The bytes of buffer memory held, never more than 64 KiB.
    pub fn retained_bytes(&self) -> usize {
        self.buffer.buf.capacity()
    }

    /// Ends the body and returns what was found; timings override usage field by field.
    pub fn finish(mut self) -> TokenUsage {
        if self.is_event_stream {
            // A stream may end without a final line feed.
            if self.buffer.total > 0 {
                self.end_carried_line();
            }
        } else {
            let complete = self.buffer.total <= self.buffer.limit as u64;
            let tail = self.buffer.linearize();
            // A body that fits the window is parsed whole, which reads only its top-level
            // fields; otherwise, or if it is not one JSON value, the objects are searched for.
            if !(complete && parse_event(&mut self.found, tail)) {
                search_objects(&mut self.found, tail);
            }
        }
        self.found.usage()
    }

    fn feed_event_stream(&mut self, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            let line = &bytes[..newline];
            if self.buffer.total > 0 {
                self.carry(line);
                self.end_carried_line();
            } else if line.len() <= MAX_LINE_BYTES {
                scan_line(&mut self.found, line);
            } else if line.starts_with(b"data:") {
                search_objects(&mut self.found, &line[line.len() - MAX_LINE_BYTES..]);
            }
            bytes = &bytes[newline + 1..];
        }
        if !bytes.is_empty() {
            self.carry(bytes);
        }
    }

    /// Appends part of the current line to the carry.
    fn carry(&mut self, bytes: &[u8]) {
        if self.line_prefix_len < self.line_prefix.len() {
            let n = (self.line_prefix.len() - self.line_prefix_len).min(bytes.len());
            self.line_prefix[self.line_prefix_len..self.line_prefix_len + n]
                .copy_from_slice(&bytes[..n]);
            self.line_prefix_len += n;
        }
        self.buffer.push(bytes);
    }

    /// Scans the carried line, which is now complete, and empties the carry.
    fn end_carried_line(&mut self) {
        let overlong = self.buffer.total > MAX_LINE_BYTES as u64;
        let is_data = self.line_prefix[..self.line_prefix_len] == *b"data:";
        let line = self.buffer.linearize();
        if !overlong {
            scan_line(&mut self.found, line);
        } else if is_data {
            // Only the end of the line was kept: search it for the objects, which are usually
            // at the end (an OpenAI Responses `response.completed` event carries the whole
            // response, with `usage` near its end).
            search_objects(&mut self.found, line);
        }
        self.buffer.clear();
        self.line_prefix_len = 0;
    }
}

/// Keeps the last `limit` bytes pushed; the buffer grows as needed, never beyond `limit`.
struct TailRing {
    buf: Vec<u8>,
    /// Once `buf` is full: the index of the oldest byte, where the next byte is written.
    head: usize,
    limit: usize,
    /// Bytes pushed since the last `clear`.
    total: u64,
}

impl TailRing {
    fn new(limit: usize) -> TailRing {
        TailRing {
            buf: Vec::new(),
            head: 0,
            limit,
            total: 0,
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if bytes.len() >= self.limit {
            bytes = &bytes[bytes.len() - self.limit..];
            self.buf.clear();
            self.head = 0;
        }
        if self.buf.len() < self.limit {
            let n = (self.limit - self.buf.len()).min(bytes.len());
            self.reserve(n);
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        // From here on the buffer is full and the oldest bytes are overwritten.
        while !bytes.is_empty() {
            let n = (self.limit - self.head).min(bytes.len());
            self.buf[self.head..self.head + n].copy_from_slice(&bytes[..n]);
            self.head = (self.head + n) % self.limit;
            bytes = &bytes[n..];
        }
    }

    /// Grows the capacity geometrically but exactly, so that it never exceeds `limit`.
    fn reserve(&mut self, additional: usize) {
        let needed = self.buf.len() + additional;
        if needed > self.buf.capacity() {
            let target = needed.max(self.buf.capacity() * 2).max(256).min(self.limit);
            self.buf.reserve_exact(target - self.buf.len());
        }
    }

    /// The kept bytes in order, oldest first.
    fn linearize(&mut self) -> &[u8] {
        self.buf.rotate_left(self.head);
        self.head = 0;
        &self.buf
    }

    /// Forgets the bytes but keeps the allocation for the next line.
    fn clear(&mut self) {
        self.buf.clear();
        self.head = 0;
        self.total = 0;
    }
}

/// Scans one event-stream line (without its line feed).
fn scan_line(found: &mut Found, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(payload) = line.strip_prefix(b"data:") else {
        return;
    };
    let payload = payload.trim_ascii();
    if payload == b"[DONE]" || !mentions_usage_or_timings(payload) {
        return;
    }
    // Invalid JSON is ignored, as llama-swap does.
    parse_event(found, payload);
}

/// Whether `payload` contains the key `"usage"` or `"timings"` (a cheap pre-filter).
fn mentions_usage_or_timings(payload: &[u8]) -> bool {
    let mut rest = payload;
    while let Some(quote) = rest.iter().position(|&b| b == b'"') {
        rest = &rest[quote..];
        if rest.starts_with(b"\"usage\"")
            || rest.starts_with(b"\"timings\"")
            || rest.starts_with(b"\"metrics\"")
        {
            return true;
        }
        rest = &rest[1..];
    }
    false
}

/// Parses one JSON document and merges its usage and timings into `found`; on invalid JSON
/// nothing is merged and `false` is returned.
fn parse_event(found: &mut Found, json: &[u8]) -> bool {
    let mut trial = *found;
    if parse_seed(json, Lenient(Envelope(&mut trial))).is_some() {
        *found = trial;
        true
    } else {
        false
    }
}

/// Deserializes all of `json` with `seed`; `None` if it is not exactly one JSON value.
fn parse_seed<'de, S: DeserializeSeed<'de>>(json: &'de [u8], seed: S) -> Option<S::Value> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value = seed.deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    Some(value)
}

/// Finds the last `"usage"` and `"timings"` objects in a window of JSON text that need not
/// start at a value boundary, and merges them into `found`.
fn search_objects(found: &mut Found, window: &[u8]) {
    let usage = last_object(window, b"\"usage\"", |object| {
        parse_seed(object, Lenient(UsageVisit::default()))
            .flatten()
            .filter(UsageFields::is_some)
    });
    if let Some(usage) = usage {
        found.merge_usage(usage);
    }
    let timings = last_object(window, b"\"timings\"", |object| {
        parse_seed(object, Lenient(TimingsVisit::default())).flatten()
    });
    if timings.is_some() {
        found.timings = timings;
    }
    let vllm = last_object(window, b"\"metrics\"", |object| {
        parse_seed(object, Lenient(VllmVisit::default())).flatten()
    });
    if vllm.is_some() {
        found.vllm = vllm;
    }
}

/// Looks for `key` followed by `:` and an object, from the end of `window` backwards, and
/// returns the first such object that `parse` accepts.
///
/// A key is recognised only at an unescaped quote: inside a JSON string every quote is
/// escaped, so text such as `\"usage\": {` in generated content is never taken for a key, even
/// when the window starts in the middle of a string.
fn last_object<T>(
    window: &[u8],
    key: &[u8],
    mut parse: impl FnMut(&[u8]) -> Option<T>,
) -> Option<T> {
    let mut end = window.len();
    while let Some(position) = rfind(&window[..end], key) {
        end = position;
        if is_escaped(window, position) {
            continue;
        }
        let mut index = skip_whitespace(window, position + key.len());
        if window.get(index) != Some(&b':') {
            continue;
        }
        index = skip_whitespace(window, index + 1);
        if window.get(index) != Some(&b'{') {
            continue;
        }
        if let Some(close) = matching_brace(window, index) {
            if let Some(value) = parse(&window[index..close]) {
                return Some(value);
            }
        }
    }
    None
}

/// The position of the last occurrence of `needle` in `haystack`.
fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    (0..=haystack.len() - needle.len())
        .rev()
        .find(|&start| haystack[start..].starts_with(needle))
}

/// Whether the byte at `position` is preceded by an odd number of backslashes.
fn is_escaped(window: &[u8], position: usize) -> bool {
    window[..position]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count()
        % 2
        == 1
}

fn skip_whitespace(window: &[u8], mut index: usize) -> usize {
    while window.get(index).is_some_and(u8::is_ascii_whitespace) {
        index += 1;
    }
    index
}

/// Given the index of a `{`, returns the index just past its matching `}`, skipping braces and
/// brackets inside strings (whose quotes may be escaped); `None` if it is not closed in
/// `window`.
fn matching_brace(window: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, &byte) in window[open..].iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(open + offset + 1);
                }
            }
            _ => {}
        }
    }
    None
}
