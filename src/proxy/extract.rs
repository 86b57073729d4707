//! Pure request inspection and rewriting: which routes carry a model and where, reading the
//! model from JSON, multipart or the query, and applying `useModelName` and `filters`.
//!
//! Nothing here touches sockets or state, so every rule is a table test.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::config::{Config, ModelConfig};

/// Where a route carries the requested model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    JsonBody,
    Multipart,
    Query,
}

/// The model-dispatched routes: `(method, path) -> (source, path sent upstream)`.
/// The version-less `/v/...` aliases are sent upstream without the `/v` (llama-swap #728).
pub fn route(method: &str, path: &str) -> Option<(ModelSource, Cow<'static, str>)> {
    const JSON_POST: &[&str] = &[
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/rerank",
        "/v1/reranking",
        "/rerank",
        "/reranking",
        "/infill",
        "/completion",
        "/v1/audio/speech",
        "/v1/images/generations",
        "/sdapi/v1/txt2img",
        "/sdapi/v1/img2img",
    ];
    const VERSIONLESS: &[&str] = &[
        "/v/chat/completions",
        "/v/responses",
        "/v/completions",
        "/v/messages",
        "/v/messages/count_tokens",
        "/v/embeddings",
        "/v/rerank",
        "/v/reranking",
    ];
    const MULTIPART_POST: &[&str] = &["/v1/audio/transcriptions", "/v1/images/edits"];
    const QUERY_GET: &[&str] = &["/v1/audio/voices", "/props", "/sdapi/v1/loras"];
    match method {
        "POST" => {
            if let Some(found) = JSON_POST.iter().find(|&&p| p == path) {
                return Some((ModelSource::JsonBody, Cow::Borrowed(found)));
            }
            if let Some(found) = VERSIONLESS.iter().find(|&&p| p == path) {
                return Some((ModelSource::JsonBody, Cow::Borrowed(&found[2..])));
            }
            if path == "/v1/audio/voices" {
                return Some((ModelSource::JsonBody, Cow::Borrowed("/v1/audio/voices")));
            }
            // An audio API served under /audioapi (llama-swap strips the prefix).
            if path == "/audioapi/v1/tasks/run" {
                return Some((ModelSource::JsonBody, Cow::Borrowed("/v1/tasks/run")));
            }
            MULTIPART_POST
                .iter()
                .find(|&&p| p == path)
                .map(|found| (ModelSource::Multipart, Cow::Borrowed(*found)))
        }
        "GET" => QUERY_GET
            .iter()
            .find(|&&p| p == path)
            .map(|found| (ModelSource::Query, Cow::Borrowed(*found))),
        _ => None,
    }
}

/// What a body or query said about the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub model: String,
    pub stream: bool,
}

/// Why a request's model could not be read. Each is a 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtractError {
    MissingModel,
    ModelNotString,
    InvalidJson(String),
    InvalidMultipart(String),
}

impl std::fmt::Display for ExtractError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExtractError::MissingModel => write!(
                f,
                "no model id could be identified in the request; set the 'model' field"
            ),
            ExtractError::ModelNotString => write!(f, "the 'model' field must be a string"),
            ExtractError::InvalidJson(e) => write!(f, "request body is not valid JSON: {e}"),
            ExtractError::InvalidMultipart(e) => write!(f, "invalid multipart form: {e}"),
        }
    }
}

/// Reads `model` and `stream` from a JSON body without building a tree of it.
pub fn from_json(body: &[u8]) -> Result<Requested, ExtractError> {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(default)]
        model: Option<Value>,
        #[serde(default)]
        stream: Option<Value>,
    }
    // serde would also accept a JSON array for a struct; a request body must be an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ExtractError::InvalidJson(
            "expected a JSON object".to_string(),
        ));
    }
    let peek: Peek =
        serde_json::from_slice(body).map_err(|e| ExtractError::InvalidJson(e.to_string()))?;
    let model = match peek.model {
        None | Some(Value::Null) => return Err(ExtractError::MissingModel),
        Some(Value::String(model)) if model.trim().is_empty() => {
            return Err(ExtractError::MissingModel)
        }
        Some(Value::String(model)) => model,
        Some(_) => return Err(ExtractError::ModelNotString),
    };
    Ok(Requested {
        model,
        stream: matches!(peek.stream, Some(Value::Bool(true))),
    })
}

/// Reads `model` (and `stream`) from a query string (`a=b&model=x`).
pub fn from_query(query: &str) -> Result<Requested, ExtractError> {
    let mut model = None;
    let mut stream = false;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "model" => model = Some(percent_decode(value)),
            "stream" => stream = value == "true",
            _ => {}
        }
    }
    match model {
        Some(model) if !model.is_empty() => Ok(Requested { model, stream }),
        _ => Err(ExtractError::MissingModel),
    }
}

pub use crate::http::percent_decode;

/// The boundary of a `multipart/form-data` content type.
pub fn multipart_boundary(content_type: &str) -> Option<&str> {
    if !content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return None;
    }
    content_type.split(';').find_map(|part| {
        let (key, value) = part.trim().split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"'))
            .filter(|b| !b.is_empty())
    })
}

/// One part of a multipart body: the byte range of its content and its field name.
struct Part {
    name: Option<String>,
    content: std::ops::Range<usize>,
}

fn multipart_parts(body: &[u8], boundary: &str) -> Result<Vec<Part>, ExtractError> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut positions = Vec::new();
    let mut from = 0;
    while let Some(found) = find(&body[from..], delimiter) {
        positions.push(from + found);
        from += found + delimiter.len();
    }
    if positions.len() < 2 {
        return Err(ExtractError::InvalidMultipart(
            "the boundary does not occur in the body".to_string(),
        ));
    }
    let mut parts = Vec::new();
    for window in positions.windows(2) {
        let start = window[0] + delimiter.len();
        let end = window[1];
        // Each part: CRLF, headers, CRLF CRLF, content, CRLF.
        let section = &body[start..end];
        let Some(header_end) = find(section, b"\r\n\r\n") else {
            return Err(ExtractError::InvalidMultipart(
                "a part has no header terminator".to_string(),
            ));
        };
        let headers = String::from_utf8_lossy(&section[..header_end]);
        let name = headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            if !key.trim().eq_ignore_ascii_case("content-disposition") {
                return None;
            }
            value.split(';').find_map(|item| {
                let (k, v) = item.trim().split_once('=')?;
                (k.trim() == "name").then(|| v.trim().trim_matches('"').to_string())
            })
        });
        let content_start = start + header_end + 4;
        let mut content_end = end;
        if content_end >= content_start + 2 && &body[content_end - 2..content_end] == b"\r\n" {
            content_end -= 2;
        }
        parts.push(Part {
            name,
            content: content_start..content_end.max(content_start),
        });
    }
    Ok(parts)
}

/// The first occurrence of `needle`: candidates are found by scanning for its first byte
/// (a tight loop the compiler vectorises), then compared whole. Comparing every window was
/// ten times slower on a 1 MiB upload.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let last_start = haystack.len().checked_sub(needle.len())?;
    let mut from = 0;
    while from <= last_start {
        let candidate = from
            + haystack[from..=last_start]
                .iter()
                .position(|&b| b == first)?;
        if &haystack[candidate + 1..candidate + needle.len()] == rest {
            return Some(candidate);
        }
        from = candidate + 1;
    }
    None
}

/// Reads the `model` (and `stream`) form fields of a multipart body.
pub fn from_multipart(body: &[u8], content_type: &str) -> Result<Requested, ExtractError> {
    let boundary = multipart_boundary(content_type).ok_or_else(|| {
        ExtractError::InvalidMultipart("expected multipart/form-data with a boundary".to_string())
    })?;
    let parts = multipart_parts(body, boundary)?;
    let field = |name: &str| {
        parts
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| {
                String::from_utf8_lossy(&body[p.content.clone()])
                    .trim()
                    .to_string()
            })
    };
    let model = field("model")
        .filter(|m| !m.is_empty())
        .ok_or(ExtractError::MissingModel)?;
    Ok(Requested {
        model,
        stream: field("stream").as_deref() == Some("true"),
    })
}

/// Replaces the `model` field's content of a multipart body.
pub fn rewrite_multipart_model(
    body: &[u8],
    content_type: &str,
    model: &str,
) -> Result<Vec<u8>, ExtractError> {
    let boundary = multipart_boundary(content_type).ok_or_else(|| {
        ExtractError::InvalidMultipart("expected multipart/form-data with a boundary".to_string())
    })?;
    let parts = multipart_parts(body, boundary)?;
    let part = parts
        .iter()
        .find(|p| p.name.as_deref() == Some("model"))
        .ok_or(ExtractError::MissingModel)?;
    let mut out = Vec::with_capacity(body.len() + model.len());
    out.extend_from_slice(&body[..part.content.start]);
    out.extend_from_slice(model.as_bytes());
    out.extend_from_slice(&body[part.content.end..]);
    Ok(out)
}

/// Whether forwarding this model's JSON requests needs the body rewritten.
pub fn needs_json_rewrite(model: &ModelConfig, requested: &str) -> bool {
    model.use_model_name.is_some() || model.filters.change_body_for(requested)
}

/// Applies `useModelName`, `stripParams`, `setParams` and `setParamsByID` (chosen by the
/// requested name) to a JSON object body. `model` is protected from filters. Returns the new
/// body; callers then send a fresh `Content-Length`.
pub fn rewrite_json(
    body: &[u8],
    model: &ModelConfig,
    requested: &str,
) -> Result<Vec<u8>, ExtractError> {
    rewrite_json_with(
        body,
        &model.filters,
        requested,
        model.use_model_name.as_deref(),
    )
}

/// Applies `filters` (for the `requested` name) and, if given, sets `model` to `new_model`:
/// the rewrite for local models (`useModelName`) and for peers (the peer's own model name).
pub fn rewrite_json_with(
    body: &[u8],
    filters: &crate::config::Filters,
    requested: &str,
    new_model: Option<&str>,
) -> Result<Vec<u8>, ExtractError> {
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| ExtractError::InvalidJson(e.to_string()))?;
    let Value::Object(object) = &mut value else {
        return Err(ExtractError::InvalidJson(
            "expected a JSON object".to_string(),
        ));
    };
    for key in &filters.strip_params {
        if key != "model" {
            object.remove(key);
        }
    }
    apply_set_params(object, &filters.set_params);
    if let Some(by_id) = filters.set_params_by_id.get(requested) {
        apply_set_params(object, by_id);
    }
    if let Some(name) = new_model {
        object.insert("model".to_string(), Value::String(name.to_string()));
    }
    Ok(serde_json::to_vec(&value).expect("a JSON value always serialises"))
}

/// Sets keys; a dotted key `a.b` sets a nested field (sjson paths, as llama-swap).
fn apply_set_params(object: &mut Map<String, Value>, params: &Map<String, Value>) {
    for (key, value) in params {
        if key == "model" {
            continue;
        }
        let mut target = &mut *object;
        let mut segments: Vec<&str> = key.split('.').collect();
        let last = segments.pop().unwrap_or(key);
        for segment in segments {
            let entry = target
                .entry(segment.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            target = entry.as_object_mut().expect("just made an object");
        }
        target.insert(last.to_string(), value.clone());
    }
}

/// What `/upstream/<name>/…` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// A local model, by its id.
    Local(String),
    /// A peer's model, by the name as given: its FQN (`<peer>/<model>`) or a bare name that
    /// exactly one peer lists.
    Peer(String),
}

/// Splits `/upstream/<model>/<rest>` by the longest path-segment prefix that names a model id,
/// an alias or a peer's model (ids may contain `/`; a local name wins over a peer's for the
/// same prefix, as everywhere). Returns what it names and the rest (with its leading `/`,
/// percent-encoding untouched).
pub fn upstream_target<'a>(
    config: &Config,
    after_prefix: &'a str,
) -> Option<(UpstreamTarget, &'a str)> {
    let mut best = None;
    for (index, _) in after_prefix
        .match_indices('/')
        .chain(std::iter::once((after_prefix.len(), "")))
    {
        let candidate = &after_prefix[..index];
        if candidate.is_empty() {
            continue;
        }
        let decoded = percent_decode(candidate);
        if let Some(id) = config.resolve_model(&decoded) {
            best = Some((
                UpstreamTarget::Local(id.to_string()),
                &after_prefix[index..],
            ));
        } else if config.peers.resolve(&decoded).is_some() {
            best = Some((UpstreamTarget::Peer(decoded), &after_prefix[index..]));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_path() {
        assert_eq!(
            route("POST", "/v1/chat/completions"),
            Some((ModelSource::JsonBody, Cow::Borrowed("/v1/chat/completions")))
        );
        assert_eq!(
            route("POST", "/v/chat/completions"),
            Some((ModelSource::JsonBody, Cow::Borrowed("/chat/completions")))
        );
        assert_eq!(
            route("POST", "/v1/audio/transcriptions").map(|r| r.0),
            Some(ModelSource::Multipart)
        );
        assert_eq!(
            route("GET", "/props").map(|r| r.0),
            Some(ModelSource::Query)
        );
        assert_eq!(
            route("POST", "/audioapi/v1/tasks/run"),
            Some((ModelSource::JsonBody, Cow::Borrowed("/v1/tasks/run")))
        );
        assert_eq!(route("GET", "/v1/chat/completions"), None);
        assert_eq!(route("POST", "/nope"), None);
    }

    #[test]
    fn json_model_extraction() {
        assert_eq!(
            from_json(br#"{"model":"a","stream":true}"#),
            Ok(Requested {
                model: "a".into(),
                stream: true
            })
        );
        assert_eq!(
            from_json(br#"{"messages":[],"model":"x/y"}"#),
            Ok(Requested {
                model: "x/y".into(),
                stream: false
            })
        );
        assert_eq!(
            from_json(br#"{"model":5}"#),
            Err(ExtractError::ModelNotString)
        );
        assert_eq!(
            from_json(br#"{"model":""}"#),
            Err(ExtractError::MissingModel)
        );
        assert_eq!(from_json(br#"{}"#), Err(ExtractError::MissingModel));
        assert!(matches!(
            from_json(b"{nope"),
            Err(ExtractError::InvalidJson(_))
        ));
        assert!(matches!(
            from_json(b"[1]"),
            Err(ExtractError::InvalidJson(_))
        ));
        assert!(matches!(
            from_json(b"\xff\xfe"),
            Err(ExtractError::InvalidJson(_))
        ));
    }

    #[test]
    fn find_locates_the_first_occurrence() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"aaab", b"aab"), Some(1));
        assert_eq!(find(b"abc", b"abc"), Some(0));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"abc", b""), None);
        assert_eq!(find(b"xx--b", b"--b"), Some(2));
        assert_eq!(find(b"--a--b", b"--b"), Some(3));
    }

    #[test]
    fn query_model_extraction() {
        assert_eq!(
            from_query("model=a%2Fb&x=1").map(|r| r.model),
            Ok("a/b".to_string())
        );
        assert_eq!(from_query("x=1"), Err(ExtractError::MissingModel));
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    fn multipart_body(model: &str) -> (Vec<u8>, String) {
        let body = format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF....\r\n--XyZ--\r\n"
        );
        (
            body.into_bytes(),
            "multipart/form-data; boundary=XyZ".to_string(),
        )
    }

    #[test]
    fn multipart_model_extraction_and_rewrite() {
        let (body, content_type) = multipart_body("whisper");
        assert_eq!(
            from_multipart(&body, &content_type).map(|r| r.model),
            Ok("whisper".into())
        );
        let rewritten = rewrite_multipart_model(&body, &content_type, "large-v3").expect("rewrite");
        assert_eq!(
            from_multipart(&rewritten, &content_type).map(|r| r.model),
            Ok("large-v3".into())
        );
        assert!(String::from_utf8_lossy(&rewritten).contains("RIFF...."));
        assert!(matches!(
            from_multipart(&body, "multipart/form-data; boundary=other"),
            Err(ExtractError::InvalidMultipart(_))
        ));
        assert!(matches!(
            from_multipart(&body, "application/json"),
            Err(ExtractError::InvalidMultipart(_))
        ));
    }

    fn model_with_filters() -> ModelConfig {
        let mut set_params = Map::new();
        set_params.insert("temperature".into(), Value::from(0.5));
        set_params.insert("model".into(), Value::from("evil"));
        set_params.insert(
            "chat_template_kwargs.enable_thinking".into(),
            Value::from(false),
        );
        let mut by_id = std::collections::BTreeMap::new();
        let mut thinking = Map::new();
        thinking.insert("top_k".into(), Value::from(20));
        by_id.insert("m-think".to_string(), thinking);
        ModelConfig {
            id: "m".into(),
            cmd: vec!["x".into()],
            cmd_display: "x".into(),
            cmd_stop: None,
            proxy: "http://localhost:1".into(),
            aliases: vec![],
            env: vec![],
            check_endpoint: None,
            ttl: std::time::Duration::ZERO,
            unload_timeout: std::time::Duration::from_secs(10),
            unlisted: false,
            use_model_name: Some("upstream-name".into()),
            name: None,
            description: None,
            concurrency_limit: 10,
            filters: crate::config::Filters {
                strip_params: vec!["model".into(), "top_p".into()],
                set_params,
                set_params_by_id: by_id,
            },
            metadata: Value::Null,
            capabilities: Default::default(),
            ignore_websockets: false,
            timeouts: Default::default(),
            send_loading_state: false,
            port: None,
        }
    }

    #[test]
    fn json_rewrites_apply_in_order_and_protect_model() {
        let model = model_with_filters();
        let body = br#"{"model":"m-think","top_p":0.9,"messages":[]}"#;
        assert!(needs_json_rewrite(&model, "m-think"));
        let out: Value =
            serde_json::from_slice(&rewrite_json(body, &model, "m-think").expect("rewrite"))
                .expect("json");
        assert_eq!(out["model"], "upstream-name");
        assert!(out.get("top_p").is_none());
        assert_eq!(out["temperature"], 0.5);
        assert_eq!(out["top_k"], 20);
        assert_eq!(out["chat_template_kwargs"]["enable_thinking"], false);
        assert_eq!(out["messages"], serde_json::json!([]));
        let plain: Value =
            serde_json::from_slice(&rewrite_json(body, &model, "m").expect("rewrite"))
                .expect("json");
        assert!(plain.get("top_k").is_none());
    }
}
