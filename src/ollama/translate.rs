//! Pure translation between Ollama's request and response shapes and the OpenAI-compatible
//! (and llama.cpp native) shapes of the upstreams.
//!
//! Nothing here touches sockets, clocks or state: every function takes values and returns
//! values, so each mapping rule is a table test. The handlers in [`super::handlers`] call these
//! and do the I/O; the streaming state machine lives in [`super::stream`] and reuses
//! [`Piece`] from here.
//!
//! This file holds the request side (`keep_alive`, options, messages, chat and generate
//! bodies) and the naming helpers; `reply.rs` holds the answer side (pieces, response lines,
//! stats) and `embed.rs` the embeddings mapping, all re-exported here under their old paths.

use std::time::Duration;

use serde_json::{json, Map, Value};

mod embed;
mod reply;

pub use embed::{
    embed_request, embed_response, embed_upstream_body, embedding_vectors,
    legacy_embedding_response, normalize, EmbedRequest,
};
pub use reply::{
    done_reason, error_message, finish_line, load_response, piece, response_line, tool_calls,
    whole_response, CallFragment, Kind, Measured, Piece, Stats,
};

/// What a request's `keep_alive` asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeepAlive {
    /// `0`: unload now (an empty request) or as soon as the model is idle.
    Unload,
    /// A negative value: never unload for idleness.
    Forever,
    /// Unload after this long idle.
    For(Duration),
}

/// Reads `keep_alive`: a Go duration string (`"5m"`, `"1h30m"`, `"0"`), a number of seconds
/// (fractions allowed), a negative value for "forever", or null/absent for "not set".
pub fn parse_keep_alive(value: Option<&Value>) -> Result<Option<KeepAlive>, String> {
    let seconds = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(number)) => number
            .as_f64()
            .ok_or_else(|| format!("keep_alive {number} is not a number of seconds"))?,
        Some(Value::String(text)) => {
            let text = text.trim();
            // Go's ParseDuration takes a bare "0"; a bare negative number is read as forever
            // too (Ollama's docs show `-1` as the way to keep a model loaded).
            match text.parse::<f64>() {
                Ok(0.0) => 0.0,
                Ok(value) if value < 0.0 => -1.0,
                Ok(_) => {
                    return Err(format!(
                        "keep_alive \"{text}\" has no unit; use a duration like \"{text}s\" or a number"
                    ))
                }
                Err(_) => parse_go_duration(text)
                    .ok_or_else(|| format!("keep_alive \"{text}\" is not a duration like \"5m\""))?,
            }
        }
        Some(other) => {
            return Err(format!(
                "keep_alive must be a duration string or a number of seconds, not {other}"
            ))
        }
    };
    Ok(Some(if seconds < 0.0 {
        KeepAlive::Forever
    } else if seconds == 0.0 {
        KeepAlive::Unload
    } else {
        KeepAlive::For(Duration::from_secs_f64(seconds.min(1e12)))
    }))
}

/// Parses a Go duration string (`"1h30m"`, `"1.5s"`, `"300ms"`, `"-1m"`) into seconds.
fn parse_go_duration(text: &str) -> Option<f64> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * scale;
    }
    Some(if negative { -total } else { total })
}

/// Ollama `options` mapped onto the upstream body, and what was left out.
#[derive(Debug, Default, PartialEq)]
pub struct MappedOptions {
    /// Options that have no per-request equivalent upstream (`num_ctx`, `num_gpu`, ...) or are
    /// unknown; the handler logs them at debug level.
    pub ignored: Vec<String>,
}

/// Sampling options that llama-server takes under the same name (OpenAI's or its extensions).
const SAME_NAME_OPTIONS: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "repeat_last_n",
    "frequency_penalty",
    "presence_penalty",
    "seed",
];

/// Load-time settings of Ollama's runner, which the upstream's command line decides instead.
const LOAD_TIME_OPTIONS: &[&str] = &[
    "num_ctx",
    "num_keep",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "use_mmap",
    "use_mlock",
    "num_thread",
    "numa",
    "low_vram",
    "vocab_only",
    "draft_num_predict",
];

/// Maps `options` into `out` (the upstream body). `max_tokens_key` is `max_tokens` for the
/// OpenAI endpoints and `n_predict` for llama.cpp's native ones. A value of the wrong type is
/// an error naming the option.
pub fn map_options(
    options: Option<&Value>,
    out: &mut Map<String, Value>,
    max_tokens_key: &str,
) -> Result<MappedOptions, String> {
    let mut mapped = MappedOptions::default();
    let options = match options {
        None | Some(Value::Null) => return Ok(mapped),
        Some(Value::Object(options)) => options,
        Some(other) => return Err(format!("options must be an object, not {other}")),
    };
    for (key, value) in options {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "num_predict" => {
                let count = value
                    .as_i64()
                    .ok_or_else(|| format!("option num_predict must be an integer, not {value}"))?;
                // Ollama's -1 (no limit) and -2 (fill the context) are the upstream's default.
                if count >= 0 {
                    out.insert(max_tokens_key.to_string(), json!(count));
                }
            }
            "stop" => {
                let stops = match value {
                    Value::String(stop) => vec![Value::String(stop.clone())],
                    Value::Array(items) if items.iter().all(Value::is_string) => items.clone(),
                    _ => {
                        return Err(format!(
                            "option stop must be an array of strings, not {value}"
                        ))
                    }
                };
                out.insert("stop".to_string(), Value::Array(stops));
            }
            name if SAME_NAME_OPTIONS.contains(&name) => {
                if !value.is_number() {
                    return Err(format!("option {name} must be a number, not {value}"));
                }
                out.insert(name.to_string(), value.clone());
            }
            name if LOAD_TIME_OPTIONS.contains(&name) => mapped.ignored.push(name.to_string()),
            other => mapped.ignored.push(other.to_string()),
        }
    }
    Ok(mapped)
}

/// `format: "json"` or a JSON schema, as OpenAI's `response_format`.
pub fn response_format(format: Option<&Value>) -> Result<Option<Value>, String> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) if text == "json" => Ok(Some(json!({"type": "json_object"}))),
        Some(Value::Object(schema)) => Ok(Some(json!({
            "type": "json_schema",
            "json_schema": {"name": "schema", "schema": schema},
        }))),
        Some(other) => Err(format!(
            "format must be \"json\" or a JSON schema object, not {other}"
        )),
    }
}

/// `think` as llama-server's `chat_template_kwargs` (`enable_thinking`, and
/// `reasoning_effort` for a level).
pub fn think_kwargs(think: Option<&Value>) -> Result<Option<Value>, String> {
    match think {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(enabled)) => Ok(Some(json!({"enable_thinking": enabled}))),
        Some(Value::String(level))
            if matches!(level.as_str(), "low" | "medium" | "high" | "max") =>
        {
            Ok(Some(
                json!({"enable_thinking": true, "reasoning_effort": level}),
            ))
        }
        Some(other) => Err(format!(
            "think must be true, false, \"low\", \"medium\", \"high\" or \"max\", not {other}"
        )),
    }
}

/// The MIME type of a base64 image, from its first bytes (PNG when unrecognised, as the
/// upstream sniffs the data itself anyway).
pub fn image_mime(base64: &str) -> &'static str {
    let head = base64.trim_start();
    if head.starts_with("/9j/") {
        "image/jpeg"
    } else if head.starts_with("R0lGOD") {
        "image/gif"
    } else if head.starts_with("UklGR") {
        "image/webp"
    } else if head.starts_with("Qk") {
        "image/bmp"
    } else {
        "image/png"
    }
}

/// One image as an OpenAI content part. Accepts plain base64 (Ollama's form) and data URIs.
fn image_part(image: &Value) -> Result<Value, String> {
    let text = image
        .as_str()
        .ok_or_else(|| format!("images must be base64 strings, not {image}"))?;
    let url = if text.starts_with("data:") {
        text.to_string()
    } else {
        format!("data:{};base64,{}", image_mime(text), text.trim())
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A user turn with text and images, as OpenAI content parts.
fn content_with_images(text: &str, images: &[Value]) -> Result<Value, String> {
    let mut parts = Vec::with_capacity(images.len() + 1);
    if !text.is_empty() {
        parts.push(json!({"type": "text", "text": text}));
    }
    for image in images {
        parts.push(image_part(image)?);
    }
    Ok(Value::Array(parts))
}

/// An Ollama tool call (`{id?, function:{index?, name, arguments:{...}}}`) as OpenAI's
/// (`{id, type:"function", function:{name, arguments:"<JSON string>"}}`).
fn tool_call_to_openai(call: &Value, position: usize) -> Result<Value, String> {
    let function = call
        .get("function")
        .ok_or_else(|| format!("a tool call needs a function: {call}"))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a tool call's function needs a name: {call}"))?;
    let arguments = match function.get("arguments") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    let id = match call.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => format!("call_{position}"),
    };
    Ok(json!({
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }))
}

/// Ollama chat messages as OpenAI messages: images become content parts, tool calls get string
/// arguments and ids, `thinking` becomes `reasoning_content`, and a tool result names its call
/// (`tool_call_id`, found by `tool_name` when the client did not send the id).
pub fn chat_messages(messages: &Value) -> Result<Vec<Value>, String> {
    let items = match messages {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => return Err(format!("messages must be an array, not {other}")),
    };
    let mut out = Vec::with_capacity(items.len());
    // Calls made so far: (id, function name), to link tool results that only carry a name.
    let mut calls: Vec<(String, String)> = Vec::new();
    for (index, message) in items.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(format!("message {index} must be an object"));
        };
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("message {index} needs a role"))?
            .to_ascii_lowercase();
        let content = match message.get("content") {
            None | Some(Value::Null) => "",
            Some(Value::String(text)) => text.as_str(),
            Some(other) => {
                return Err(format!(
                    "message {index}: content must be a string, not {other}"
                ))
            }
        };
        let mut translated = Map::new();
        translated.insert("role".into(), json!(role));
        match message.get("images") {
            Some(Value::Array(images)) if !images.is_empty() => {
                translated.insert("content".into(), content_with_images(content, images)?);
            }
            None | Some(Value::Null) | Some(Value::Array(_)) => {
                translated.insert("content".into(), json!(content));
            }
            Some(other) => {
                return Err(format!(
                    "message {index}: images must be an array, not {other}"
                ))
            }
        }
        if let Some(thinking) = message.get("thinking").and_then(Value::as_str) {
            if !thinking.is_empty() {
                translated.insert("reasoning_content".into(), json!(thinking));
            }
        }
        if let Some(Value::Array(tool_calls)) = message.get("tool_calls") {
            let mut converted = Vec::with_capacity(tool_calls.len());
            for call in tool_calls {
                let call = tool_call_to_openai(call, calls.len())?;
                calls.push((
                    call["id"].as_str().unwrap_or_default().to_string(),
                    call["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ));
                converted.push(call);
            }
            if !converted.is_empty() {
                translated.insert("tool_calls".into(), Value::Array(converted));
            }
        }
        if role == "tool" {
            let name = message.get("tool_name").and_then(Value::as_str);
            if let Some(name) = name {
                translated.insert("name".into(), json!(name));
            }
            let id = match message.get("tool_call_id").and_then(Value::as_str) {
                Some(id) => Some(id.to_string()),
                None => name.and_then(|name| {
                    calls
                        .iter()
                        .rev()
                        .find(|(_, called)| called == name)
                        .map(|(id, _)| id.clone())
                }),
            };
            if let Some(id) = id {
                translated.insert("tool_call_id".into(), json!(id));
            }
        }
        out.push(Value::Object(translated));
    }
    Ok(out)
}

/// Which upstream endpoint a request goes to, and how its answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions` (raw generate, or fill-in-middle on upstreams other than llama-server)
    Completions,
    /// llama.cpp's `/infill` (fill-in-middle on llama-server)
    Infill,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Infill => "/infill",
        }
    }
}

/// An Ollama generation request (chat or generate) translated for the upstream.
#[derive(Debug, PartialEq)]
pub struct Translated {
    /// The model name as the client sent it.
    pub model: String,
    /// Stream the answer as NDJSON (Ollama's default is true).
    pub stream: bool,
    pub keep_alive: Option<KeepAlive>,
    /// Nothing to generate: the request only loads (or, with `keep_alive: 0`, unloads) the
    /// model.
    pub load_only: bool,
    pub endpoint: Endpoint,
    /// The upstream body (with `model` set to the client's name; filters are applied later).
    pub body: Value,
    pub ignored_options: Vec<String>,
}

/// The request body as an object, or a 400 message.
fn object(request: &Value) -> Result<&Map<String, Value>, String> {
    request
        .as_object()
        .ok_or_else(|| "the request body must be a JSON object".to_string())
}

fn model_name(request: &Map<String, Value>) -> Result<String, String> {
    // `name` is the legacy spelling some clients still send.
    match request.get("model").or_else(|| request.get("name")) {
        Some(Value::String(model)) if !model.trim().is_empty() => Ok(model.trim().to_string()),
        None | Some(Value::Null) | Some(Value::String(_)) => Err("model is required".to_string()),
        Some(other) => Err(format!("model must be a string, not {other}")),
    }
}

fn stream_flag(request: &Map<String, Value>) -> Result<bool, String> {
    match request.get("stream") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(stream)) => Ok(*stream),
        Some(other) => Err(format!("stream must be true or false, not {other}")),
    }
}

/// Adds what every generation body shares: stream flags, options, format and think.
fn common_fields(
    request: &Map<String, Value>,
    body: &mut Map<String, Value>,
    stream: bool,
    endpoint: Endpoint,
) -> Result<MappedOptions, String> {
    body.insert("stream".into(), json!(stream));
    if stream && endpoint != Endpoint::Infill {
        // The final chunk then carries the token counts for the done line.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let max_tokens_key = match endpoint {
        Endpoint::Infill => "n_predict",
        Endpoint::Chat | Endpoint::Completions => "max_tokens",
    };
    let mapped = map_options(request.get("options"), body, max_tokens_key)?;
    if let Some(format) = response_format(request.get("format"))? {
        match endpoint {
            Endpoint::Infill => {
                if let Some(schema) = format.pointer("/json_schema/schema") {
                    body.insert("json_schema".into(), schema.clone());
                } else {
                    body.insert("json_schema".into(), json!({}));
                }
            }
            Endpoint::Chat | Endpoint::Completions => {
                body.insert("response_format".into(), format);
            }
        }
    }
    if let Some(kwargs) = think_kwargs(request.get("think"))? {
        body.insert("chat_template_kwargs".into(), kwargs);
    }
    Ok(mapped)
}

/// `POST /api/chat` → `/v1/chat/completions`.
pub fn chat_request(request: &Value) -> Result<Translated, String> {
    let request = object(request)?;
    let model = model_name(request)?;
    let stream = stream_flag(request)?;
    let keep_alive = parse_keep_alive(request.get("keep_alive"))?;
    let messages = chat_messages(request.get("messages").unwrap_or(&Value::Null))?;
    let load_only = messages.is_empty();
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    match request.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) if tools.is_empty() => {}
        Some(tools @ Value::Array(_)) => {
            body.insert("tools".into(), tools.clone());
        }
        Some(other) => return Err(format!("tools must be an array, not {other}")),
    }
    let mapped = common_fields(request, &mut body, stream, Endpoint::Chat)?;
    Ok(Translated {
        model,
        stream,
        keep_alive,
        load_only,
        endpoint: Endpoint::Chat,
        body: Value::Object(body),
        ignored_options: mapped.ignored,
    })
}

fn string_field<'a>(request: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(format!("{key} must be a string, not {other}")),
    }
}

/// `POST /api/generate` → a chat turn (templated by the upstream, as Ollama templates it), a
/// plain completion (`raw`), or fill-in-middle (`suffix`: llama.cpp's `/infill` when the
/// upstream is llama-server, else `/v1/completions` with `suffix`).
pub fn generate_request(
    request: &Value,
    upstream_is_llama_server: bool,
) -> Result<Translated, String> {
    let request = object(request)?;
    let model = model_name(request)?;
    let stream = stream_flag(request)?;
    let keep_alive = parse_keep_alive(request.get("keep_alive"))?;
    let prompt = string_field(request, "prompt")?;
    let suffix = string_field(request, "suffix")?;
    let system = string_field(request, "system")?;
    let raw = match request.get("raw") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(raw)) => *raw,
        Some(other) => return Err(format!("raw must be true or false, not {other}")),
    };
    let images: &[Value] = match request.get("images") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(images)) => images,
        Some(other) => return Err(format!("images must be an array, not {other}")),
    };
    if raw && (!system.is_empty() || request.get("template").is_some_and(|t| !t.is_null())) {
        return Err("raw mode does not support template or system".to_string());
    }
    let load_only = prompt.is_empty() && suffix.is_empty() && images.is_empty();
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    let endpoint = if !suffix.is_empty() {
        if !images.is_empty() {
            return Err("images cannot be combined with suffix (fill-in-middle)".to_string());
        }
        if upstream_is_llama_server {
            body.insert("input_prefix".into(), json!(prompt));
            body.insert("input_suffix".into(), json!(suffix));
            body.insert("prompt".into(), json!(""));
            Endpoint::Infill
        } else {
            body.insert("prompt".into(), json!(prompt));
            body.insert("suffix".into(), json!(suffix));
            Endpoint::Completions
        }
    } else if raw {
        if !images.is_empty() {
            return Err("images need raw: false (they are sent as chat content)".to_string());
        }
        body.insert("prompt".into(), json!(prompt));
        Endpoint::Completions
    } else {
        let mut messages = Vec::new();
        if !system.is_empty() {
            messages.push(json!({"role": "system", "content": system}));
        }
        let content = if images.is_empty() {
            json!(prompt)
        } else {
            content_with_images(prompt, images)?
        };
        messages.push(json!({"role": "user", "content": content}));
        body.insert("messages".into(), Value::Array(messages));
        Endpoint::Chat
    };
    let mut mapped = common_fields(request, &mut body, stream, endpoint)?;
    // The upstream applies the model's own chat template; the deprecated token context has no
    // equivalent upstream.
    for ignored in ["template", "context"] {
        if request.get(ignored).is_some_and(|value| !value.is_null()) {
            mapped.ignored.push(ignored.to_string());
        }
    }
    Ok(Translated {
        model,
        stream,
        keep_alive,
        load_only,
        endpoint,
        body: Value::Object(body),
        ignored_options: mapped.ignored,
    })
}

/// The name a model is listed under: Ollama clients expect an explicit tag, so an id without
/// one gets `:latest`.
pub fn listed_name(id: &str) -> String {
    let base = id.rsplit('/').next().unwrap_or(id);
    if base.contains(':') {
        id.to_string()
    } else {
        format!("{id}:latest")
    }
}

/// The names to look a requested model up by, in order: as sent, then without `:latest`
/// (clients treat `x` and `x:latest` as one model).
pub fn lookup_names(requested: &str) -> Vec<&str> {
    let mut names = vec![requested];
    if let Some(base) = requested.strip_suffix(":latest") {
        names.push(base);
    }
    names
}

/// RFC 3339 UTC with nanoseconds, trailing zeros trimmed (as Go prints it), from Unix time.
pub fn rfc3339(seconds: u64, nanos: u32) -> String {
    crate::timefmt::rfc3339(
        std::time::Duration::new(seconds, nanos),
        crate::timefmt::Fraction::TrimmedNanos,
    )
}

/// Ollama's human-readable parameter count (`format.HumanNumber`): `7.6B`, `494.03M`, `64K`.
pub fn human_number(count: u64) -> String {
    const THOUSAND: f64 = 1e3;
    const MILLION: f64 = 1e6;
    const BILLION: f64 = 1e9;
    let value = count as f64;
    if value >= BILLION {
        let number = value / BILLION;
        if number == number.floor() {
            format!("{number:.0}B")
        } else {
            format!("{number:.1}B")
        }
    } else if value >= MILLION {
        let number = value / MILLION;
        if number == number.floor() {
            format!("{number:.0}M")
        } else {
            format!("{number:.2}M")
        }
    } else if value >= THOUSAND {
        format!("{:.0}K", value / THOUSAND)
    } else {
        count.to_string()
    }
}

#[cfg(test)]
mod tests;
