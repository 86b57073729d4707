//! The streaming translator: upstream server-sent events in, Ollama NDJSON lines out.
//!
//! Each complete SSE event becomes at most one NDJSON line at once, so a token reaches the
//! client as soon as the upstream sends it; only the bytes of an event not yet complete are
//! kept. Tool-call fragments are the exception by necessity: OpenAI streams a call's arguments
//! in pieces, Ollama sends whole calls, so they are joined and sent in one line when the
//! upstream says the generation ended. The state machine is pure (bytes and a clock value in,
//! bytes out), so it is tested without sockets.

use serde_json::Value;

use super::translate::{self, CallFragment, Kind, Measured, Stats};

/// What feeding some bytes produced, for the handler's bookkeeping.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// At least one line with generated text, thinking or tool calls was written.
    pub generated: bool,
    /// The upstream reported an error inside the stream; an `{"error"}` line was written and
    /// the stream is over.
    pub failed: bool,
}

/// Translates one upstream SSE stream into Ollama NDJSON lines.
pub struct NdjsonStream {
    kind: Kind,
    model: String,
    /// The part of the current SSE line not yet terminated.
    partial: Vec<u8>,
    /// The `data:` lines of the event being read.
    data: Vec<u8>,
    has_data: bool,
    fragments: Vec<CallFragment>,
    calls_sent: bool,
    finish_reason: Option<String>,
    stats: Stats,
    failed: bool,
}

impl NdjsonStream {
    pub fn new(kind: Kind, model: &str) -> NdjsonStream {
        NdjsonStream {
            kind,
            model: model.to_string(),
            partial: Vec::new(),
            data: Vec::new(),
            has_data: false,
            fragments: Vec::new(),
            calls_sent: false,
            finish_reason: None,
            stats: Stats::default(),
            failed: false,
        }
    }

    /// Token counts and timings seen so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Feeds upstream bytes; appends the NDJSON lines of every event they complete to `out`.
    pub fn feed(&mut self, bytes: &[u8], created_at: &str, out: &mut Vec<u8>) -> Fed {
        let mut fed = Fed::default();
        let mut rest = bytes;
        while !rest.is_empty() && !self.failed {
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let line = if self.partial.is_empty() {
                        trim_cr(&rest[..end]).to_vec()
                    } else {
                        self.partial.extend_from_slice(&rest[..end]);
                        let line = trim_cr(&self.partial).to_vec();
                        self.partial.clear();
                        line
                    };
                    rest = &rest[end + 1..];
                    self.line(&line, created_at, out, &mut fed);
                }
                None => {
                    self.partial.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        fed
    }

    /// One SSE line: `data:` lines gather, a blank line dispatches the event.
    fn line(&mut self, line: &[u8], created_at: &str, out: &mut Vec<u8>, fed: &mut Fed) {
        if line.is_empty() {
            self.dispatch(created_at, out, fed);
        } else if let Some(payload) = line.strip_prefix(b"data:") {
            let payload = payload.strip_prefix(b" ").unwrap_or(payload);
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(payload);
            self.has_data = true;
        }
        // `event:`, `id:`, `retry:` and comments carry nothing Ollama clients need.
    }

    fn dispatch(&mut self, created_at: &str, out: &mut Vec<u8>, fed: &mut Fed) {
        if !self.has_data {
            return;
        }
        self.has_data = false;
        let data = std::mem::take(&mut self.data);
        if data.trim_ascii() == b"[DONE]" {
            self.flush_calls(created_at, out, fed);
            return;
        }
        let Ok(value) = serde_json::from_slice::<Value>(&data) else {
            log::debug!(
                "ollama: skipped an upstream event that is not JSON: {}",
                String::from_utf8_lossy(&data)
            );
            return;
        };
        self.event(&value, created_at, out, fed);
    }

    /// One upstream JSON object.
    fn event(&mut self, value: &Value, created_at: &str, out: &mut Vec<u8>, fed: &mut Fed) {
        let piece = translate::piece(value);
        if let Some(message) = piece.error {
            write_line(out, &serde_json::json!({ "error": message }));
            self.failed = true;
            fed.failed = true;
            return;
        }
        self.stats.merge(piece.stats);
        self.fragments.extend(piece.tool_calls);
        if !piece.content.is_empty() || !piece.thinking.is_empty() {
            let line = translate::response_line(
                self.kind,
                &self.model,
                created_at,
                &piece.content,
                &piece.thinking,
                Vec::new(),
                false,
            );
            write_line(out, &Value::Object(line));
            fed.generated = true;
        }
        if let Some(reason) = piece.finish_reason {
            self.finish_reason = Some(reason);
            self.flush_calls(created_at, out, fed);
        }
    }

    /// Sends the joined tool calls (once), as Ollama does: whole calls in one line.
    fn flush_calls(&mut self, created_at: &str, out: &mut Vec<u8>, fed: &mut Fed) {
        if self.calls_sent || self.fragments.is_empty() {
            return;
        }
        self.calls_sent = true;
        let calls = translate::tool_calls(&self.fragments);
        let line =
            translate::response_line(self.kind, &self.model, created_at, "", "", calls, false);
        write_line(out, &Value::Object(line));
        fed.generated = true;
    }

    /// The end of the upstream stream: dispatches what is left and writes the final
    /// `done: true` line with the metrics (nothing after an error line).
    pub fn finish(&mut self, created_at: &str, measured: &Measured, out: &mut Vec<u8>) {
        if self.failed {
            return;
        }
        let mut fed = Fed::default();
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(trim_cr(&line), created_at, out, &mut fed);
        }
        self.dispatch(created_at, out, &mut fed);
        if self.failed {
            return;
        }
        self.flush_calls(created_at, out, &mut fed);
        let mut line =
            translate::response_line(self.kind, &self.model, created_at, "", "", Vec::new(), true);
        translate::finish_line(
            &mut line,
            translate::done_reason(self.finish_reason.as_deref()),
            &self.stats,
            measured,
        );
        write_line(out, &Value::Object(line));
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Appends one JSON value and a newline.
pub fn write_line(out: &mut Vec<u8>, value: &Value) {
    serde_json::to_writer(&mut *out, value).expect("a JSON value always serialises");
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(bytes: &[u8]) -> Vec<Value> {
        bytes
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).expect("every line is JSON"))
            .collect()
    }

    fn event(value: Value) -> Vec<u8> {
        format!("data: {value}\n\n").into_bytes()
    }

    #[test]
    fn each_event_becomes_one_line_as_it_arrives() {
        let mut stream = NdjsonStream::new(Kind::Chat, "m:latest");
        let mut out = Vec::new();
        let first = event(json!({"choices": [{"delta": {"content": "Hel"}}]}));
        // Split inside the event: nothing until the blank line arrives.
        let fed = stream.feed(&first[..10], "t1", &mut out);
        assert!(out.is_empty() && !fed.generated);
        let fed = stream.feed(&first[10..], "t1", &mut out);
        assert!(fed.generated);
        assert_eq!(
            lines(&out),
            [json!({"model": "m:latest", "created_at": "t1",
                          "message": {"role": "assistant", "content": "Hel"}, "done": false})]
        );
        out.clear();
        let mut rest = event(json!({"choices": [{"delta": {"reasoning_content": "hmm"}}]}));
        rest.extend(b"data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r\n\r\n");
        rest.extend(event(
            json!({"choices": [{"delta": {}, "finish_reason": "length"}],
            "timings": {"prompt_n": 4, "prompt_ms": 2.0, "predicted_n": 2, "predicted_ms": 3.0}}),
        ));
        rest.extend(event(
            json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}),
        ));
        rest.extend(b"data: [DONE]\n\n");
        stream.feed(&rest, "t2", &mut out);
        let measured = Measured {
            total: std::time::Duration::from_millis(9),
            ..Measured::default()
        };
        stream.finish("t3", &measured, &mut out);
        let got = lines(&out);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0]["message"]["thinking"], "hmm");
        assert_eq!(got[0]["message"]["content"], "");
        assert_eq!(got[1]["message"]["content"], "lo");
        assert_eq!(
            got[2],
            json!({"model": "m:latest", "created_at": "t3",
                   "message": {"role": "assistant", "content": ""}, "done": true,
                   "done_reason": "length", "total_duration": 9_000_000u64, "load_duration": 0,
                   "prompt_eval_count": 5, "prompt_eval_duration": 2_000_000u64,
                   "eval_count": 2, "eval_duration": 3_000_000u64})
        );
    }

    #[test]
    fn tool_call_fragments_arrive_whole_in_one_line() {
        let mut stream = NdjsonStream::new(Kind::Chat, "m");
        let mut out = Vec::new();
        let mut bytes = event(json!({"choices": [{"delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"ci"}}]}}]}));
        bytes.extend(event(json!({"choices": [{"delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "ty\":\"Oslo\"}"}}]}}]})));
        let fed = stream.feed(&bytes, "t", &mut out);
        assert!(out.is_empty(), "fragments are held until the call is whole");
        assert!(!fed.generated);
        stream.feed(
            &event(json!({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})),
            "t",
            &mut out,
        );
        stream.finish("t", &Measured::default(), &mut out);
        let got = lines(&out);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0]["message"]["tool_calls"],
            json!([{"id": "call_1", "function": {"index": 0, "name": "weather", "arguments": {"city": "Oslo"}}}])
        );
        assert_eq!(got[0]["done"], false);
        assert_eq!(
            (got[1]["done"].as_bool(), got[1]["done_reason"].as_str()),
            (Some(true), Some("stop"))
        );
    }

    #[test]
    fn generate_lines_and_native_infill_events() {
        let mut stream = NdjsonStream::new(Kind::Generate, "m");
        let mut out = Vec::new();
        let mut bytes = event(json!({"content": "x = ", "stop": false}));
        bytes.extend(event(
            json!({"content": "", "stop": true, "stopped_limit": true,
                                  "tokens_evaluated": 7, "tokens_predicted": 3}),
        ));
        stream.feed(&bytes, "t", &mut out);
        stream.finish("t", &Measured::default(), &mut out);
        let got = lines(&out);
        assert_eq!(
            got[0],
            json!({"model": "m", "created_at": "t", "response": "x = ", "done": false})
        );
        assert_eq!(got[1]["done_reason"], "length");
        assert_eq!(
            (
                got[1]["prompt_eval_count"].as_u64(),
                got[1]["eval_count"].as_u64()
            ),
            (Some(7), Some(3))
        );
        assert_eq!(got[1]["response"], "");
    }

    #[test]
    fn an_upstream_error_ends_the_stream_with_an_error_line() {
        let mut stream = NdjsonStream::new(Kind::Chat, "m");
        let mut out = Vec::new();
        let mut bytes = event(json!({"choices": [{"delta": {"content": "a"}}]}));
        bytes.extend(event(
            json!({"error": {"code": 500, "message": "context full"}}),
        ));
        bytes.extend(event(
            json!({"choices": [{"delta": {"content": "ignored"}}]}),
        ));
        let fed = stream.feed(&bytes, "t", &mut out);
        assert!(fed.failed);
        stream.finish("t", &Measured::default(), &mut out);
        let got = lines(&out);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1], json!({"error": "context full"}));
    }

    #[test]
    fn a_last_event_without_a_blank_line_is_still_read() {
        let mut stream = NdjsonStream::new(Kind::Generate, "m");
        let mut out = Vec::new();
        stream.feed(
            b": comment\nevent: x\ndata: {\"choices\":[{\"text\":\"end\"}]}",
            "t",
            &mut out,
        );
        assert!(out.is_empty());
        stream.finish("t", &Measured::default(), &mut out);
        let got = lines(&out);
        assert_eq!(got[0]["response"], "end");
        assert_eq!(got[1]["done"], true);
    }
}
