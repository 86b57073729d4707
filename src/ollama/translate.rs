//! Pure translation between Ollama's request and response shapes and the OpenAI-compatible
//! (and llama.cpp native) shapes of the upstreams.
//!
//! Nothing here touches sockets, clocks or state: every function takes values and returns
//! values, so each mapping rule is a table test. The handlers in [`super::handlers`] call these
//! and do the I/O; the streaming state machine lives in [`super::stream`] and reuses
//! [`Piece`] from here.

use std::time::Duration;

use serde_json::{json, Map, Value};

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

fn nanos(duration: Duration) -> u64 {
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

/// A parsed `/api/embed` (or legacy `/api/embeddings`) request.
#[derive(Debug, PartialEq)]
pub struct EmbedRequest {
    pub model: String,
    pub inputs: Vec<String>,
    pub dimensions: Option<usize>,
    pub keep_alive: Option<KeepAlive>,
    pub truncate: bool,
}

/// `/api/embed`: `input` is a string or an array of strings. `legacy` reads `/api/embeddings`'
/// single `prompt`.
pub fn embed_request(request: &Value, legacy: bool) -> Result<EmbedRequest, String> {
    let request = object(request)?;
    let model = model_name(request)?;
    let keep_alive = parse_keep_alive(request.get("keep_alive"))?;
    let inputs = if legacy {
        match string_field(request, "prompt")? {
            "" => Vec::new(),
            prompt => vec![prompt.to_string()],
        }
    } else {
        match request.get("input") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(text)) if text.is_empty() => Vec::new(),
            Some(Value::String(text)) => vec![text.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_string).ok_or_else(|| {
                        format!("input must be a string or an array of strings, not {item}")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(format!(
                    "input must be a string or an array of strings, not {other}"
                ))
            }
        }
    };
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .filter(|&d| d > 0)
                .ok_or_else(|| format!("dimensions must be a positive integer, not {value}"))?
                as usize,
        ),
    };
    let truncate = request
        .get("truncate")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    Ok(EmbedRequest {
        model,
        inputs,
        dimensions,
        keep_alive,
        truncate,
    })
}

/// The upstream body for an embedding request.
pub fn embed_upstream_body(request: &EmbedRequest) -> Value {
    let mut body = json!({"model": request.model, "input": request.inputs});
    if let Some(dimensions) = request.dimensions {
        body["dimensions"] = json!(dimensions);
    }
    body
}

/// Scales a vector to unit length (left alone when it is all zeros).
pub fn normalize(vector: &mut [f64]) {
    let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in vector.iter_mut() {
            *x /= norm;
        }
    }
}

/// The vectors of an OpenAI embeddings answer, in input order.
pub fn embedding_vectors(upstream: &Value) -> Result<Vec<Vec<f64>>, String> {
    let data = upstream
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| "the upstream's embeddings answer has no data array".to_string())?;
    let mut indexed: Vec<(usize, Vec<f64>)> = Vec::with_capacity(data.len());
    for (position, item) in data.iter().enumerate() {
        let vector = item
            .get("embedding")
            .and_then(Value::as_array)
            .ok_or_else(|| "an upstream embedding is not an array of numbers".to_string())?
            .iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| "an upstream embedding holds a non-number".to_string())
            })
            .collect::<Result<Vec<f64>, String>>()?;
        let index = item
            .get("index")
            .and_then(Value::as_u64)
            .map_or(position, |i| i as usize);
        indexed.push((index, vector));
    }
    indexed.sort_by_key(|(index, _)| *index);
    Ok(indexed.into_iter().map(|(_, vector)| vector).collect())
}

/// `/api/embed`'s answer: one unit-length vector per input (shortened to `dimensions` first).
pub fn embed_response(
    model: &str,
    upstream: &Value,
    dimensions: Option<usize>,
    measured: &Measured,
) -> Result<Value, String> {
    let mut vectors = embedding_vectors(upstream)?;
    for vector in vectors.iter_mut() {
        if let Some(dimensions) = dimensions {
            vector.truncate(dimensions);
        }
        normalize(vector);
    }
    let mut out = json!({
        "model": model,
        "embeddings": vectors,
        "total_duration": nanos(measured.total),
        "load_duration": nanos(measured.load),
    });
    if let Some(count) = upstream
        .pointer("/usage/prompt_tokens")
        .and_then(Value::as_u64)
    {
        out["prompt_eval_count"] = json!(count);
    }
    Ok(out)
}

/// The legacy `/api/embeddings` answer: one flat vector, as the upstream computed it.
pub fn legacy_embedding_response(upstream: &Value) -> Result<Value, String> {
    let vectors = embedding_vectors(upstream)?;
    let vector = vectors.into_iter().next().unwrap_or_default();
    Ok(json!({ "embedding": vector }))
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
mod tests {
    use super::*;

    fn secs(s: f64) -> Option<KeepAlive> {
        Some(KeepAlive::For(Duration::from_secs_f64(s)))
    }

    #[test]
    fn keep_alive_forms() {
        let table: &[(Value, Option<KeepAlive>)] = &[
            (json!("5m"), secs(300.0)),
            (json!("1h30m"), secs(5400.0)),
            (json!("300ms"), secs(0.3)),
            (json!("1.5s"), secs(1.5)),
            (json!("24h"), secs(86_400.0)),
            (json!("0"), Some(KeepAlive::Unload)),
            (json!("0s"), Some(KeepAlive::Unload)),
            (json!(0), Some(KeepAlive::Unload)),
            (json!(-1), Some(KeepAlive::Forever)),
            (json!("-1"), Some(KeepAlive::Forever)),
            (json!("-1m"), Some(KeepAlive::Forever)),
            (json!(30), secs(30.0)),
            (json!(2.5), secs(2.5)),
            (Value::Null, None),
        ];
        for (value, expected) in table {
            assert_eq!(&parse_keep_alive(Some(value)).unwrap(), expected, "{value}");
        }
        assert_eq!(parse_keep_alive(None).unwrap(), None);
        for bad in [
            json!("3600"),
            json!("5 minutes"),
            json!("m"),
            json!(true),
            json!([1]),
        ] {
            let error = parse_keep_alive(Some(&bad)).unwrap_err();
            assert!(error.contains("keep_alive"), "{bad}: {error}");
        }
    }

    #[test]
    fn options_map_to_upstream_names() {
        let options = json!({
            "temperature": 0.2, "top_p": 0.9, "top_k": 7, "num_predict": 12,
            "stop": ["\n", "END"], "seed": 42, "repeat_penalty": 1.1,
            "num_ctx": 4096, "mirostat": 1, "min_p": 0.05,
        });
        let mut out = Map::new();
        let mapped = map_options(Some(&options), &mut out, "max_tokens").unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"temperature": 0.2, "top_p": 0.9, "top_k": 7, "max_tokens": 12,
                   "stop": ["\n", "END"], "seed": 42, "repeat_penalty": 1.1, "min_p": 0.05})
        );
        let mut ignored = mapped.ignored.clone();
        ignored.sort();
        assert_eq!(ignored, ["mirostat", "num_ctx"]);

        let mut out = Map::new();
        map_options(
            Some(&json!({"num_predict": 5, "stop": "x"})),
            &mut out,
            "n_predict",
        )
        .unwrap();
        assert_eq!(Value::Object(out), json!({"n_predict": 5, "stop": ["x"]}));

        let mut out = Map::new();
        map_options(Some(&json!({"num_predict": -1})), &mut out, "max_tokens").unwrap();
        assert!(out.is_empty(), "-1 means no limit: {out:?}");

        for bad in [
            json!({"temperature": "hot"}),
            json!({"stop": 3}),
            json!({"num_predict": 1.5}),
            json!([1]),
        ] {
            let mut out = Map::new();
            assert!(
                map_options(Some(&bad), &mut out, "max_tokens").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn format_and_think() {
        assert_eq!(
            response_format(Some(&json!("json"))).unwrap(),
            Some(json!({"type": "json_object"}))
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        assert_eq!(
            response_format(Some(&schema)).unwrap(),
            Some(
                json!({"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}})
            )
        );
        assert_eq!(response_format(Some(&json!(""))).unwrap(), None);
        assert!(response_format(Some(&json!("yaml"))).is_err());
        assert_eq!(
            think_kwargs(Some(&json!(true))).unwrap(),
            Some(json!({"enable_thinking": true}))
        );
        assert_eq!(
            think_kwargs(Some(&json!("high"))).unwrap(),
            Some(json!({"enable_thinking": true, "reasoning_effort": "high"}))
        );
        assert!(think_kwargs(Some(&json!("extreme"))).is_err());
    }

    #[test]
    fn messages_translate_images_tools_and_thinking() {
        let messages = json!([
            {"role": "system", "content": "be brief"},
            {"role": "USER", "content": "what is this?", "images": ["iVBORw0KGgo=", "/9j/4AAQ"]},
            {"role": "assistant", "content": "", "thinking": "hmm",
             "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "sunny", "tool_name": "weather"},
        ]);
        let out = chat_messages(&messages).unwrap();
        assert_eq!(out[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(
            out[1],
            json!({"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
            ]})
        );
        assert_eq!(
            out[2],
            json!({"role": "assistant", "content": "", "reasoning_content": "hmm",
                   "tool_calls": [{"id": "call_0", "type": "function",
                                   "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]})
        );
        assert_eq!(
            out[3],
            json!({"role": "tool", "content": "sunny", "name": "weather", "tool_call_id": "call_0"})
        );
        assert!(chat_messages(&json!([{"content": "no role"}])).is_err());
        assert!(chat_messages(&json!([{"role": "user", "content": ["parts"]}])).is_err());
        assert!(chat_messages(&json!("text")).is_err());
    }

    #[test]
    fn chat_request_defaults_to_streaming_and_maps_everything() {
        let request = json!({
            "model": "m:latest", "messages": [{"role": "user", "content": "hi"}],
            "format": "json", "options": {"temperature": 0, "num_ctx": 8192}, "think": false,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "keep_alive": "10m",
        });
        let translated = chat_request(&request).unwrap();
        assert!(translated.stream);
        assert!(!translated.load_only);
        assert_eq!(translated.model, "m:latest");
        assert_eq!(translated.keep_alive, secs(600.0));
        assert_eq!(translated.ignored_options, ["num_ctx"]);
        assert_eq!(
            translated.body,
            json!({
                "model": "m:latest", "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                "stream": true, "stream_options": {"include_usage": true},
                "temperature": 0, "response_format": {"type": "json_object"},
                "chat_template_kwargs": {"enable_thinking": false},
            })
        );
        let load = chat_request(&json!({"model": "m", "stream": false})).unwrap();
        assert!(load.load_only && !load.stream);
        assert_eq!(load.body["stream"], false);
        assert!(load.body.get("stream_options").is_none());
        for bad in [
            json!({"messages": []}),
            json!({"model": 3}),
            json!({"model": "m", "stream": "yes"}),
            json!([]),
        ] {
            assert!(chat_request(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generate_routes_by_mode() {
        let chat = generate_request(
            &json!({"model": "m", "prompt": "p", "system": "s", "stream": false}),
            true,
        )
        .unwrap();
        assert_eq!(chat.endpoint, Endpoint::Chat);
        assert_eq!(
            chat.body["messages"],
            json!([{"role": "system", "content": "s"}, {"role": "user", "content": "p"}])
        );
        let raw =
            generate_request(&json!({"model": "m", "prompt": "p", "raw": true}), true).unwrap();
        assert_eq!(raw.endpoint, Endpoint::Completions);
        assert_eq!(raw.body["prompt"], "p");
        let infill = generate_request(
            &json!({"model": "m", "prompt": "def f(", "suffix": "return x", "options": {"num_predict": 9}}),
            true,
        )
        .unwrap();
        assert_eq!(infill.endpoint, Endpoint::Infill);
        assert_eq!(infill.body["input_prefix"], "def f(");
        assert_eq!(infill.body["input_suffix"], "return x");
        assert_eq!(infill.body["n_predict"], 9);
        assert!(infill.body.get("stream_options").is_none());
        let fim =
            generate_request(&json!({"model": "m", "prompt": "a", "suffix": "b"}), false).unwrap();
        assert_eq!(fim.endpoint, Endpoint::Completions);
        assert_eq!(
            (fim.body["prompt"].as_str(), fim.body["suffix"].as_str()),
            (Some("a"), Some("b"))
        );
        let images = generate_request(
            &json!({"model": "m", "prompt": "see", "images": ["R0lGODlh"]}),
            true,
        )
        .unwrap();
        assert_eq!(
            images.body["messages"][0]["content"][1]["image_url"]["url"],
            "data:image/gif;base64,R0lGODlh"
        );
        let templated = generate_request(
            &json!({"model": "m", "prompt": "p", "template": "{{ .Prompt }}", "context": [1, 2]}),
            true,
        )
        .unwrap();
        assert_eq!(templated.ignored_options, ["template", "context"]);
        let load = generate_request(&json!({"model": "m", "keep_alive": 0}), true).unwrap();
        assert!(load.load_only);
        assert_eq!(load.keep_alive, Some(KeepAlive::Unload));
        assert!(generate_request(
            &json!({"model": "m", "prompt": "p", "raw": true, "system": "s"}),
            true
        )
        .is_err());
        assert!(generate_request(&json!({"model": "m", "prompt": 1}), true).is_err());
    }

    #[test]
    fn pieces_from_every_upstream_shape() {
        let chunk =
            json!({"choices": [{"index": 0, "delta": {"content": "a", "reasoning_content": "r"}}]});
        let got = piece(&chunk);
        assert_eq!((got.content.as_str(), got.thinking.as_str()), ("a", "r"));
        let text = piece(&json!({"choices": [{"text": "t", "finish_reason": "length"}]}));
        assert_eq!(
            (text.content.as_str(), text.finish_reason.as_deref()),
            ("t", Some("length"))
        );
        let native = piece(&json!({"content": "n", "stop": true, "stopped_limit": true,
                                   "tokens_evaluated": 4, "tokens_predicted": 2}));
        assert_eq!(native.finish_reason.as_deref(), Some("length"));
        assert_eq!(
            (native.stats.prompt_tokens, native.stats.completion_tokens),
            (Some(4), Some(2))
        );
        let last = piece(&json!({"choices": [{"delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 25, "completion_tokens": 5},
            "timings": {"prompt_n": 22, "cache_n": 3, "prompt_ms": 13.0, "predicted_n": 5, "predicted_ms": 17.5}}));
        assert_eq!(last.stats.prompt_eval_count(), Some(25));
        assert_eq!(last.stats.eval_count(), Some(5));
        let no_usage = Stats {
            prompt_n: Some(22),
            cache_n: Some(3),
            predicted_n: Some(5),
            ..Stats::default()
        };
        assert_eq!(
            (no_usage.prompt_eval_count(), no_usage.eval_count()),
            (Some(25), Some(5))
        );
        let error = piece(&json!({"error": {"code": 500, "message": "boom"}}));
        assert_eq!(error.error.as_deref(), Some("boom"));
    }

    #[test]
    fn tool_call_fragments_join_per_index() {
        let fragments = [
            CallFragment {
                index: 0,
                id: Some("call_a".into()),
                name: Some("weather".into()),
                arguments: "{\"ci".into(),
            },
            CallFragment {
                index: 1,
                id: Some("call_b".into()),
                name: Some("time".into()),
                arguments: String::new(),
            },
            CallFragment {
                index: 0,
                id: None,
                name: None,
                arguments: "ty\":\"Paris\"}".into(),
            },
        ];
        assert_eq!(
            tool_calls(&fragments),
            vec![
                json!({"id": "call_a", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}}),
                json!({"id": "call_b", "function": {"index": 1, "name": "time", "arguments": {}}}),
            ]
        );
    }

    #[test]
    fn final_line_carries_metrics() {
        let stats = Stats {
            prompt_tokens: Some(25),
            completion_tokens: Some(5),
            prompt_ms: Some(13.0),
            predicted_ms: Some(17.5),
            ..Stats::default()
        };
        let measured = Measured {
            total: Duration::from_millis(40),
            load: Duration::from_millis(2),
            ..Measured::default()
        };
        let mut line = response_line(Kind::Chat, "m", "t", "", "", Vec::new(), true);
        finish_line(&mut line, "stop", &stats, &measured);
        assert_eq!(
            Value::Object(line),
            json!({"model": "m", "created_at": "t", "message": {"role": "assistant", "content": ""},
                   "done": true, "done_reason": "stop", "total_duration": 40_000_000u64,
                   "load_duration": 2_000_000u64, "prompt_eval_count": 25,
                   "prompt_eval_duration": 13_000_000u64, "eval_count": 5, "eval_duration": 17_500_000u64})
        );
        let mut line = response_line(Kind::Generate, "m", "t", "", "", Vec::new(), true);
        finish_line(&mut line, "length", &Stats::default(), &Measured::default());
        assert!(line.get("eval_count").is_none() && line.get("eval_duration").is_none());
        assert_eq!(line["response"], "");
    }

    #[test]
    fn whole_answers_translate() {
        let upstream = json!({"choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": "", "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": "{\"x\":1}"}}]}}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}});
        let out = whole_response(Kind::Chat, "m:latest", "t", &upstream, &Measured::default());
        assert_eq!(
            out["message"]["tool_calls"],
            json!([{"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}])
        );
        assert_eq!(
            (out["done"].as_bool(), out["done_reason"].as_str()),
            (Some(true), Some("stop"))
        );
        assert_eq!(
            (
                out["prompt_eval_count"].as_u64(),
                out["eval_count"].as_u64()
            ),
            (Some(3), Some(4))
        );
        let generate = whole_response(
            Kind::Generate,
            "m",
            "t",
            &json!({"choices": [{"text": "xyz", "finish_reason": "length"}]}),
            &Measured::default(),
        );
        assert_eq!(
            (
                generate["response"].as_str(),
                generate["done_reason"].as_str()
            ),
            (Some("xyz"), Some("length"))
        );
        assert_eq!(
            load_response(Kind::Chat, "m", "t", true)["done_reason"],
            "unload"
        );
        assert_eq!(
            load_response(Kind::Generate, "m", "t", false)["response"],
            ""
        );
    }

    #[test]
    fn embeddings() {
        let request = embed_request(
            &json!({"model": "e", "input": ["a", "b"], "dimensions": 2}),
            false,
        )
        .unwrap();
        assert_eq!(request.inputs, ["a", "b"]);
        assert_eq!(
            embed_upstream_body(&request),
            json!({"model": "e", "input": ["a", "b"], "dimensions": 2})
        );
        assert_eq!(
            embed_request(&json!({"model": "e", "input": "x"}), false)
                .unwrap()
                .inputs,
            ["x"]
        );
        assert!(embed_request(&json!({"model": "e", "input": ""}), false)
            .unwrap()
            .inputs
            .is_empty());
        assert!(embed_request(&json!({"model": "e", "input": [1]}), false).is_err());
        assert_eq!(
            embed_request(&json!({"model": "e", "prompt": "p"}), true)
                .unwrap()
                .inputs,
            ["p"]
        );
        let upstream = json!({"data": [{"index": 1, "embedding": [0.0, 2.0, 9.0]}, {"index": 0, "embedding": [3.0, 4.0, 1.0]}],
                              "usage": {"prompt_tokens": 6}});
        let out = embed_response("e", &upstream, Some(2), &Measured::default()).unwrap();
        assert_eq!(out["embeddings"], json!([[0.6, 0.8], [0.0, 1.0]]));
        assert_eq!(out["prompt_eval_count"], 6);
        let legacy =
            legacy_embedding_response(&json!({"data": [{"embedding": [3.0, 4.0]}]})).unwrap();
        assert_eq!(legacy, json!({"embedding": [3.0, 4.0]}));
        assert!(embed_response("e", &json!({"oops": 1}), None, &Measured::default()).is_err());
    }

    #[test]
    fn names_times_and_numbers() {
        assert_eq!(listed_name("qwen"), "qwen:latest");
        assert_eq!(listed_name("qwen:7b"), "qwen:7b");
        assert_eq!(listed_name("org/m"), "org/m:latest");
        assert_eq!(listed_name("host:8080/m"), "host:8080/m:latest");
        assert_eq!(lookup_names("a:latest"), ["a:latest", "a"]);
        assert_eq!(lookup_names("a"), ["a"]);
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_691_176_965, 499_127_000),
            "2023-08-04T19:22:45.499127Z"
        );
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(4_102_444_800, 0), "2100-01-01T00:00:00Z");
        assert_eq!(human_number(7_615_616_512), "7.6B");
        assert_eq!(human_number(8_000_000_000), "8B");
        assert_eq!(human_number(494_032_768), "494.03M");
        assert_eq!(human_number(135_000_000), "135M");
        assert_eq!(human_number(91_456), "91K");
        assert_eq!(human_number(999), "999");
        assert_eq!(image_mime("UklGRh4AAABXRUJQ"), "image/webp");
    }
}
