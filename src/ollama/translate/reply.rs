//! Response-side translation: one upstream (OpenAI-shaped) answer or stream event read into a
//! [`Piece`], and the Ollama response lines (`/api/chat`, `/api/generate`) built from pieces,
//! token counts and timings. [`crate::ollama::stream`] drives these per event.

use std::time::Duration;

use serde_json::{json, Map, Value};

/// One tool-call fragment as OpenAI streams it (or a whole call in a non-streamed answer).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CallFragment {
    pub index: usize,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// Token counts and llama.cpp timings from an upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Stats {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// From llama.cpp's `timings`: milliseconds.
    pub prompt_ms: Option<f64>,
    pub predicted_ms: Option<f64>,
    pub prompt_n: Option<u64>,
    pub predicted_n: Option<u64>,
    pub cache_n: Option<u64>,
}

impl Stats {
    /// Takes whatever `other` knows over what this one knows.
    pub fn merge(&mut self, other: Stats) {
        macro_rules! take {
            ($($field:ident),*) => { $( if other.$field.is_some() { self.$field = other.$field; } )* };
        }
        take!(
            prompt_tokens,
            completion_tokens,
            prompt_ms,
            predicted_ms,
            prompt_n,
            predicted_n,
            cache_n
        );
    }

    pub fn prompt_eval_count(&self) -> Option<u64> {
        self.prompt_tokens.or_else(|| {
            self.prompt_n
                .map(|prompt| prompt + self.cache_n.unwrap_or(0))
        })
    }

    pub fn eval_count(&self) -> Option<u64> {
        self.completion_tokens.or(self.predicted_n)
    }
}

/// What one upstream JSON object (a stream event or a whole answer) contributes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Piece {
    pub content: String,
    pub thinking: String,
    pub tool_calls: Vec<CallFragment>,
    /// `stop`, `length`, `tool_calls`, ... when this object ends the generation.
    pub finish_reason: Option<String>,
    pub stats: Stats,
    /// An error the upstream reported inside a 200 stream.
    pub error: Option<String>,
}

fn as_text(value: Option<&Value>) -> String {
    value
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Reads a piece from an OpenAI chat chunk or answer (`choices[0].delta` / `.message`), an
/// OpenAI completion (`choices[0].text`), or a llama.cpp native answer (`content`, `stop`).
pub fn piece(value: &Value) -> Piece {
    let mut piece = Piece::default();
    if let Some(error) = value.get("error") {
        piece.error = Some(error_message(error));
        return piece;
    }
    if let Some(choice) = value.get("choices").and_then(|c| c.get(0)) {
        let message = choice.get("delta").or_else(|| choice.get("message"));
        if let Some(message) = message {
            piece.content = as_text(message.get("content"));
            piece.thinking = as_text(
                message
                    .get("reasoning_content")
                    .or_else(|| message.get("reasoning"))
                    .or_else(|| message.get("thinking")),
            );
            if let Some(Value::Array(calls)) = message.get("tool_calls") {
                for (position, call) in calls.iter().enumerate() {
                    let function = call.get("function");
                    piece.tool_calls.push(CallFragment {
                        index: call
                            .get("index")
                            .and_then(Value::as_u64)
                            .map_or(position, |index| index as usize),
                        id: call.get("id").and_then(Value::as_str).map(str::to_string),
                        name: function
                            .and_then(|f| f.get("name"))
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        arguments: match function.and_then(|f| f.get("arguments")) {
                            Some(Value::String(text)) => text.clone(),
                            Some(Value::Null) | None => String::new(),
                            Some(other) => other.to_string(),
                        },
                    });
                }
            }
        } else {
            piece.content = as_text(choice.get("text"));
        }
        piece.finish_reason = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string);
    } else if let Some(content) = value.get("content").and_then(Value::as_str) {
        // llama.cpp's native /infill and /completion.
        piece.content = content.to_string();
        if value.get("stop").and_then(Value::as_bool) == Some(true) {
            let limit = value.get("stopped_limit").and_then(Value::as_bool) == Some(true)
                || value.get("stop_type").and_then(Value::as_str) == Some("limit");
            piece.finish_reason = Some(if limit { "length" } else { "stop" }.to_string());
        }
    }
    let number = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64);
    if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
        piece.stats.prompt_tokens = number(usage, "prompt_tokens");
        piece.stats.completion_tokens = number(usage, "completion_tokens");
    }
    if piece.stats.prompt_tokens.is_none() {
        piece.stats.prompt_tokens = number(value, "tokens_evaluated");
    }
    if piece.stats.completion_tokens.is_none() {
        piece.stats.completion_tokens = number(value, "tokens_predicted");
    }
    if let Some(timings) = value.get("timings").filter(|t| t.is_object()) {
        piece.stats.prompt_ms = timings.get("prompt_ms").and_then(Value::as_f64);
        piece.stats.predicted_ms = timings.get("predicted_ms").and_then(Value::as_f64);
        piece.stats.prompt_n = number(timings, "prompt_n");
        piece.stats.predicted_n = number(timings, "predicted_n");
        piece.stats.cache_n = number(timings, "cache_n");
    }
    piece
}

/// The message of an upstream error body: OpenAI's `{"error":{"message"}}`, llama.cpp's
/// `{"error":{"code","message"}}`, or a bare string.
pub fn error_message(error: &Value) -> String {
    match error {
        Value::String(message) => message.clone(),
        Value::Object(fields) => fields
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| error.to_string()),
        other => other.to_string(),
    }
}

/// Joins fragments per `index` into Ollama tool calls (`arguments` as a JSON object).
pub fn tool_calls(fragments: &[CallFragment]) -> Vec<Value> {
    let mut joined: Vec<CallFragment> = Vec::new();
    for fragment in fragments {
        match joined.iter_mut().find(|call| call.index == fragment.index) {
            Some(call) => {
                if call.id.is_none() {
                    call.id = fragment.id.clone();
                }
                if let Some(name) = &fragment.name {
                    call.name.get_or_insert_with(String::new).push_str(name);
                }
                call.arguments.push_str(&fragment.arguments);
            }
            None => joined.push(fragment.clone()),
        }
    }
    joined.sort_by_key(|call| call.index);
    joined
        .into_iter()
        .map(|call| {
            let arguments = if call.arguments.trim().is_empty() {
                json!({})
            } else {
                // An upstream that produced invalid JSON gets its text passed on unchanged.
                serde_json::from_str(&call.arguments).unwrap_or(Value::String(call.arguments))
            };
            let mut out = json!({
                "function": {
                    "index": call.index,
                    "name": call.name.unwrap_or_default(),
                    "arguments": arguments,
                }
            });
            if let Some(id) = call.id {
                out["id"] = json!(id);
            }
            out
        })
        .collect()
}

/// `done_reason` from the upstream's `finish_reason`.
pub fn done_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "length",
        _ => "stop",
    }
}

/// Which response shape a line takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/api/chat`: `message: {role, content, thinking?, tool_calls?}`
    Chat,
    /// `/api/generate`: top-level `response`, `thinking?`, `tool_calls?`
    Generate,
}

/// One response object, without the final fields: `{model, created_at, message|response,
/// done}`.
pub fn response_line(
    kind: Kind,
    model: &str,
    created_at: &str,
    content: &str,
    thinking: &str,
    tool_calls: Vec<Value>,
    done: bool,
) -> Map<String, Value> {
    let mut line = Map::new();
    line.insert("model".into(), json!(model));
    line.insert("created_at".into(), json!(created_at));
    match kind {
        Kind::Chat => {
            let mut message = Map::new();
            message.insert("role".into(), json!("assistant"));
            message.insert("content".into(), json!(content));
            if !thinking.is_empty() {
                message.insert("thinking".into(), json!(thinking));
            }
            if !tool_calls.is_empty() {
                message.insert("tool_calls".into(), Value::Array(tool_calls));
            }
            line.insert("message".into(), Value::Object(message));
        }
        Kind::Generate => {
            line.insert("response".into(), json!(content));
            if !thinking.is_empty() {
                line.insert("thinking".into(), json!(thinking));
            }
            if !tool_calls.is_empty() {
                line.insert("tool_calls".into(), Value::Array(tool_calls));
            }
        }
    }
    line.insert("done".into(), json!(done));
    line
}

/// Time measured by swapd, for the final object's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measured {
    /// The whole request, from arrival to the final object.
    pub total: Duration,
    /// Waiting for the model (its start, when it was not running).
    pub load: Duration,
    /// From sending upstream to the first generated piece (used when the upstream reports no
    /// timings).
    pub to_first_piece: Option<Duration>,
    /// From the first generated piece to the end (likewise).
    pub generating: Option<Duration>,
}

pub(super) fn nanos(duration: Duration) -> u64 {
    duration.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// Adds `done_reason` and the metrics to the final object. Counts and durations the upstream
/// did not report (and swapd could not measure) are left out, as Ollama leaves out zeros.
pub fn finish_line(
    line: &mut Map<String, Value>,
    reason: &str,
    stats: &Stats,
    measured: &Measured,
) {
    line.insert("done_reason".into(), json!(reason));
    line.insert("total_duration".into(), json!(nanos(measured.total)));
    line.insert("load_duration".into(), json!(nanos(measured.load)));
    if let Some(count) = stats.prompt_eval_count() {
        line.insert("prompt_eval_count".into(), json!(count));
    }
    let prompt_duration = stats
        .prompt_ms
        .map(|ms| (ms * 1e6) as u64)
        .or(measured.to_first_piece.map(nanos));
    if let Some(duration) = prompt_duration {
        line.insert("prompt_eval_duration".into(), json!(duration));
    }
    if let Some(count) = stats.eval_count() {
        line.insert("eval_count".into(), json!(count));
    }
    let eval_duration = stats
        .predicted_ms
        .map(|ms| (ms * 1e6) as u64)
        .or(measured.generating.map(nanos));
    if let Some(duration) = eval_duration {
        line.insert("eval_duration".into(), json!(duration));
    }
}

/// The single object of a non-streamed answer.
pub fn whole_response(
    kind: Kind,
    model: &str,
    created_at: &str,
    upstream: &Value,
    measured: &Measured,
) -> Value {
    let piece = piece(upstream);
    let calls = tool_calls(&piece.tool_calls);
    let mut line = response_line(
        kind,
        model,
        created_at,
        &piece.content,
        &piece.thinking,
        calls,
        true,
    );
    finish_line(
        &mut line,
        done_reason(piece.finish_reason.as_deref()),
        &piece.stats,
        measured,
    );
    Value::Object(line)
}

/// The reply to a load-only or unload request: one object, `done_reason` `load` or `unload`.
pub fn load_response(kind: Kind, model: &str, created_at: &str, unloaded: bool) -> Value {
    let mut line = response_line(kind, model, created_at, "", "", Vec::new(), true);
    line.insert(
        "done_reason".into(),
        json!(if unloaded { "unload" } else { "load" }),
    );
    Value::Object(line)
}
