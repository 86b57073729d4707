//! Route dispatch and the handlers of every endpoint.
//!
//! Order: the access decision for keyless daemons first (`origin`: foreign pages and `Host`
//! names get 403), then as llama-swap: CORS preflight and `/health` (no auth), then auth, then
//! the route. Every error swapd produces goes through [`crate::http::send_error`].

use std::borrow::Cow;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{self, ResponseWriter};
use crate::supervisor::{AcquireError, Phase, Reply};

use super::extract::{self, ModelSource};
use super::forward::{self, Destination, Outgoing};
use super::origin;
use super::{client_of_request, read_body, ui_api, App};

pub fn handle(app: &App, request: tiny_http::Request, active: usize) {
    let method = request.method().as_str().to_ascii_uppercase();
    let url = request.url().to_string();
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, query),
        None => (url.as_str(), ""),
    };

    if app.fault_panic_path.as_deref() == Some(path) {
        panic!("fault injection: SWAPD_FAULT_PANIC_PATH matched {path}");
    }
    // Who may use a keyless swapd, before anything else (the preflight's answer included).
    let cors = {
        let config = app.config();
        let policy = origin::Policy::new(&config, app.hostname.as_deref());
        let facts = if policy.keyed {
            origin::Facts::default()
        } else {
            access_facts(&request, &method, path)
        };
        match origin::decide(&facts, &policy) {
            origin::Decision::Allow(cors) => cors,
            origin::Decision::Refuse(refusal) => {
                let message = origin::refusal_message(refusal, &facts);
                log::info!("{method} {path} refused: {message}");
                let code = origin::refusal_code(refusal);
                return http::send_error(request, 403, &message, Some(code), &[]);
            }
        }
    };
    if method == "OPTIONS" {
        return preflight(request, cors);
    }
    if path == "/health" {
        return http::send_text(request, 200, "OK");
    }
    let limits = app.limits();
    if active > limits.max_connections {
        return http::send_error(
            request,
            503,
            &format!(
                "swapd is at its limit of {} concurrent requests",
                limits.max_connections
            ),
            None,
            &[("Retry-After", "1")],
        );
    }
    if app.is_shutting_down() {
        return http::send_error(request, 503, "swapd is shutting down", None, &[]);
    }
    // The UI's files carry no data; its API calls are authorized like any other.
    if ui_api::is_ui_path(path) {
        return ui_api::serve_ui(request, &method, path);
    }
    if method == "GET" && path == "/" && ui_api::wants_html(&request) {
        // Relative, so that it works under a reverse proxy's path prefix.
        let _ = ResponseWriter::send_whole(request, 302, &[("Location", "ui/")], b"");
        return;
    }
    if !authorized(app, &request) {
        // A page's own script (X-Requested-With, as the UI sends) gets no Basic challenge, so
        // the browser shows no login dialog and the page can ask for the key itself.
        let challenge: &[(&str, &str)] = if header(&request, "X-Requested-With").is_some() {
            &[]
        } else {
            &[("WWW-Authenticate", "Basic realm=\"swapd\"")]
        };
        return http::send_error(
            request,
            401,
            "unauthorized: a valid API key is required (Authorization: Bearer, x-api-key or Basic)",
            None,
            challenge,
        );
    }
    if is_traversal(path) {
        return http::send_error(request, 400, "path traversal is not allowed", None, &[]);
    }

    if let Some(route) = crate::ollama::route(&method, path) {
        return crate::ollama::handle(app, request, route);
    }
    if let Some((source, upstream_path)) = extract::route(&method, path) {
        return model_request(app, request, &method, source, upstream_path, query);
    }
    match (method.as_str(), path) {
        ("GET", "/v1/models") | ("GET", "/models") => list_models(app, request),
        ("GET", "/running") => running(app, request),
        ("GET", "/unload") => {
            app.supervisor.unload(None);
            http::send_text(request, 200, "OK")
        }
        ("POST", "/api/models/unload") => {
            app.supervisor.unload(None);
            http::send_json(request, 200, &json!({"msg": "ok"}))
        }
        ("GET", "/metrics") => {
            let mut text = app.metrics.render(&gauges(app));
            if let Some(memory) = app.supervisor.memory_report() {
                text.push_str(&memory.render_prometheus());
            }
            text.push_str(&super::peers::render_metrics(app, &app.config()));
            let _ = ResponseWriter::send_whole(
                request,
                200,
                &[("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                text.as_bytes(),
            );
        }
        ("POST", "/api/config/reload") => reload_config(app, request),
        ("GET", "/api/metrics") => http::send_json(request, 200, &app.metrics.rows_json()),
        ("GET", "/api/events") => events(app, request),
        ("GET", "/api/profiles") => http::send_json(
            request,
            200,
            &super::routing::profiles_json(&app.routing, &app.config()),
        ),
        ("PUT", "/api/profiles/active") => set_profile(app, request),
        ("GET" | "HEAD", "/api/version") => http::send_json(
            request,
            200,
            &json!({
                "version": env!("CARGO_PKG_VERSION"),
                "commit": option_env!("SWAPD_COMMIT").unwrap_or("unknown"),
                "build_date": option_env!("SWAPD_BUILD_DATE").unwrap_or("unknown"),
            }),
        ),
        ("GET", "/logs") => {
            let history = app.logs.mux.history();
            let _ = ResponseWriter::send_whole(
                request,
                200,
                &[("Content-Type", "text/plain; charset=utf-8")],
                &history,
            );
        }
        ("GET", "/") => {
            let _ = ResponseWriter::send_whole(request, 302, &[("Location", "/v1/models")], b"");
        }
        _ => {
            let Some(request) = ui_api::route(app, request, &method, path, query) else {
                return;
            };
            if method == "POST" && path.starts_with("/api/models/unload/") {
                return unload_one(app, request, &path["/api/models/unload/".len()..]);
            }
            if method == "GET" && (path == "/logs/stream" || path.starts_with("/logs/stream/")) {
                return log_stream(app, request, path, query);
            }
            if let Some(rest) = path.strip_prefix("/upstream/") {
                return upstream(app, request, &method, rest, query);
            }
            http::send_error(
                request,
                404,
                &format!("no route for {method} {path}"),
                None,
                &[],
            )
        }
    }
}

/// Whether a path has a `..` segment in any spelling (`..`, `%2e%2E`, `.%2e`, `%2F`-joined).
fn is_traversal(path: &str) -> bool {
    let is_dot_dot = |text: &str| text.split(['/', '\\']).any(|segment| segment == "..");
    if path.contains('%') {
        is_dot_dot(&extract::percent_decode(path))
    } else {
        is_dot_dot(path)
    }
}

/// The headers the access decision reads, found in one pass without allocating.
fn access_facts<'a>(
    request: &'a tiny_http::Request,
    method: &'a str,
    path: &'a str,
) -> origin::Facts<'a> {
    let mut facts = origin::Facts {
        method,
        path,
        ..origin::Facts::default()
    };
    for header in request.headers() {
        let value = Some(header.value.as_str());
        let field = &header.field;
        if field.equiv("Host") {
            facts.host = value;
        } else if field.equiv("Origin") {
            facts.origin = value;
        } else if field.equiv("Sec-Fetch-Site") {
            facts.fetch_site = value;
        } else if field.equiv("Referer") {
            facts.referer = value;
        } else if field.equiv("Content-Type") {
            facts.content_type = value;
        }
    }
    facts
}

fn preflight(request: tiny_http::Request, cors: origin::Cors) {
    let requested = header(&request, "Access-Control-Request-Headers")
        .map(|h| {
            h.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty() && t.bytes().all(is_token_byte))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            "Content-Type, Authorization, Accept, X-Requested-With, x-api-key".to_string()
        });
    // A keyless swapd names the (allowed) page's origin rather than `*`, so a cache between
    // the browser and swapd must key on it.
    let origin = match cors {
        origin::Cors::Echo => header(&request, "Origin").unwrap_or("*").to_string(),
        origin::Cors::Any => "*".to_string(),
    };
    let mut headers = vec![
        ("Access-Control-Allow-Origin", origin.as_str()),
        (
            "Access-Control-Allow-Methods",
            "GET, POST, PUT, PATCH, DELETE, OPTIONS",
        ),
        ("Access-Control-Allow-Headers", &requested),
        ("Access-Control-Max-Age", "86400"),
    ];
    if cors == origin::Cors::Echo {
        headers.push(("Vary", "Origin"));
    }
    let _ = ResponseWriter::send_whole(request, 204, &headers, b"");
}

fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

pub fn header<'a>(request: &'a tiny_http::Request, name: &str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// With `apiKeys` set, a request needs one of them as Bearer, `x-api-key` or Basic password.
fn authorized(app: &App, request: &tiny_http::Request) -> bool {
    let config = app.config();
    if config.api_keys.is_empty() {
        return true;
    }
    let mut offered: Vec<Cow<str>> = Vec::new();
    if let Some(value) = header(request, "Authorization") {
        let value = value.trim();
        if let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        {
            offered.push(Cow::Borrowed(token.trim()));
        } else if let Some(encoded) = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))
        {
            if let Some(decoded) = base64_decode(encoded.trim()) {
                if let Some((_, password)) = String::from_utf8_lossy(&decoded).split_once(':') {
                    offered.push(Cow::Owned(password.to_string()));
                }
            }
        }
    }
    if let Some(value) = header(request, "x-api-key") {
        offered.push(Cow::Borrowed(value.trim()));
    }
    // Compare against every key without stopping early, so timing reveals nothing.
    let mut matched = false;
    for key in &config.api_keys {
        for candidate in &offered {
            matched |= http::constant_time_eq(key.as_bytes(), candidate.as_bytes());
        }
    }
    matched
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut accumulator = 0u32;
    let mut bits = 0;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        accumulator = (accumulator << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((accumulator >> bits) as u8);
        }
    }
    Some(out)
}

/// Client headers to pass upstream (everything except hop-by-hop ones), as the header lines
/// they will be sent as: one buffer instead of two strings per header.
fn forwarded_headers(request: &tiny_http::Request) -> Vec<u8> {
    let mut lines = Vec::with_capacity(256);
    for header in request.headers() {
        let name = header.field.as_str().as_str();
        if forward::is_hop_by_hop(name) {
            continue;
        }
        lines.extend_from_slice(name.as_bytes());
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(header.value.as_str().as_bytes());
        lines.extend_from_slice(b"\r\n");
    }
    lines
}

fn body_error(request: tiny_http::Request, too_large: bool, limit: usize) {
    if too_large {
        http::send_error(
            request,
            413,
            &format!("request body is larger than the limit of {limit} bytes"),
            None,
            &[],
        );
    } else {
        http::send_error(
            request,
            400,
            "the request body could not be read (truncated?)",
            None,
            &[],
        );
    }
}

fn model_request(
    app: &App,
    mut request: tiny_http::Request,
    method: &str,
    source: ModelSource,
    upstream_path: Cow<'static, str>,
    query: &str,
) {
    let limits = app.limits();
    let body = match source {
        ModelSource::Query => Vec::new(),
        _ => match read_body(app, &mut request, limits.max_body_bytes) {
            Ok(body) => body,
            Err(too_large) => return body_error(request, too_large, limits.max_body_bytes),
        },
    };
    let content_type = header(&request, "Content-Type").unwrap_or("").to_string();
    let requested = match source {
        ModelSource::JsonBody => extract::from_json(&body),
        ModelSource::Multipart => extract::from_multipart(&body, &content_type),
        ModelSource::Query => extract::from_query(query),
    };
    let requested = match requested {
        Ok(requested) => requested,
        Err(error) => return http::send_error(request, 400, &error.to_string(), None, &[]),
    };
    let config = app.config();
    // Profile pins, then selectors, before aliases and filters (llama-swap's order).
    let (requested, body, query, _selector_lease) =
        match route_virtual(app, &config, requested, body, query, source, &content_type) {
            Ok(routed) => routed,
            Err((status, message)) => {
                return http::send_error(request, status, &message, None, &[]);
            }
        };
    let query = query.as_str();
    let Some(model_id) = config.resolve_model(&requested.model).map(str::to_string) else {
        // Local ids and aliases take precedence; only then may a peer serve the name.
        if let Some((peer, peer_model)) = config.peers.resolve(&requested.model) {
            let call = super::peers::PeerCall {
                method,
                source,
                body,
                requested: &requested.model,
                content_type: &content_type,
                upstream_path,
                query,
            };
            return super::peers::forward(app, request, &config, peer, peer_model, call);
        }
        return http::send_error(
            request,
            404,
            &format!("could not find model '{}'", requested.model),
            Some("model_not_found"),
            &[],
        );
    };
    let model = &config.models[&model_id];
    let body = match source {
        ModelSource::JsonBody if extract::needs_json_rewrite(model, &requested.model) => {
            match extract::rewrite_json(&body, model, &requested.model) {
                Ok(body) => body,
                Err(error) => return http::send_error(request, 400, &error.to_string(), None, &[]),
            }
        }
        ModelSource::Multipart => match &model.use_model_name {
            Some(name) => match extract::rewrite_multipart_model(&body, &content_type, name) {
                Ok(body) => body,
                Err(error) => return http::send_error(request, 400, &error.to_string(), None, &[]),
            },
            None => body,
        },
        _ => body,
    };
    let loading_state = model.send_loading_state
        && requested.stream
        && upstream_path.starts_with("/v1/chat/completions");
    let path_and_query = if query.is_empty() {
        upstream_path.into_owned()
    } else {
        format!("{upstream_path}?{query}")
    };
    let outgoing = Outgoing {
        method: method.to_string(),
        path_and_query,
        headers: forwarded_headers(&request),
        body,
        metered: !matches!(source, ModelSource::Query),
    };
    proxy_to(app, request, &model_id, outgoing, loading_state);
}

/// Acquires the model (watching the client while it waits) and forwards.
fn proxy_to(
    app: &App,
    request: tiny_http::Request,
    model_id: &str,
    outgoing: Outgoing,
    loading_state: bool,
) {
    let started = Instant::now();
    let client = client_of_request(&request);
    // The in-flight entry owns the request from here on (no copy of path or headers).
    let tracked = app
        .inflight
        .begin(model_id, outgoing, request.remote_addr().copied());
    let outgoing = tracked.entry.outgoing();
    if let Some(lease) = app.supervisor.try_lease(model_id) {
        let outcome = forward::forward(
            app,
            Destination::Fresh(request),
            &client,
            lease,
            outgoing,
            &tracked.entry,
        );
        return finished(app, model_id, outgoing, started, outcome);
    }
    let mut ticket = app.supervisor.request(model_id);
    let mut request = Some(request);
    let mut loading: Option<LoadingStream> = None;
    let lease = loop {
        match ticket.wait(Duration::from_millis(250)) {
            Some(Reply::Granted(lease)) => break lease,
            Some(Reply::Failed(error)) => {
                let (status, code, extra) = acquire_error_status(&error);
                let message = error.to_string();
                match (request.take(), loading.take()) {
                    (Some(request), _) => http::send_error(request, status, &message, code, extra),
                    (None, Some(stream)) => stream.fail(status, &message),
                    (None, None) => {}
                }
                log::info!(
                    model = model_id;
                    "{} {} model={model_id} {status} ({message})",
                    outgoing.method,
                    outgoing.path_and_query
                );
                let outcome = forward::Outcome {
                    status,
                    bytes: 0,
                    usage: Default::default(),
                    time_to_first_token: None,
                    content_type: String::new(),
                    error: Some(forward::OutcomeError::Message(message)),
                };
                record(app, model_id, outgoing, started, &outcome);
                return;
            }
            Some(Reply::Queued) => {
                if loading_state {
                    if let Some(request) = request.take() {
                        match LoadingStream::start(request, model_id) {
                            Some(stream) => loading = Some(stream),
                            None => return,
                        }
                    }
                }
            }
            None => {
                // Still waiting: if the client left, withdraw (dropping the ticket cancels).
                if client.is_gone() {
                    log::info!(model = model_id; "client left while waiting for '{model_id}'; request withdrawn");
                    return;
                }
                if tracked.entry.is_cancelled() {
                    // Dropping the ticket withdraws the request from the queue.
                    let message = forward::cancel_message(model_id);
                    log::info!("{message} while it waited for the model");
                    match (request.take(), loading.take()) {
                        (Some(request), _) => {
                            http::send_error(request, 503, &message, Some("request_cancelled"), &[])
                        }
                        (None, Some(stream)) => stream.fail(503, &message),
                        (None, None) => {}
                    }
                    let outcome = forward::Outcome {
                        status: 499,
                        bytes: 0,
                        usage: Default::default(),
                        time_to_first_token: None,
                        content_type: String::new(),
                        error: Some(forward::OutcomeError::Message(message)),
                    };
                    record(app, model_id, outgoing, started, &outcome);
                    return;
                }
                if let Some(stream) = loading.as_mut() {
                    if stream.tick().is_err() {
                        return;
                    }
                }
            }
        }
    };
    // The grant may have raced with the client's departure (it is checked every 250 ms above):
    // send nothing upstream for nobody, and let the supervisor stop a model started in vain.
    if client.is_gone() {
        log::info!("client left while waiting for '{model_id}'; request withdrawn");
        lease.withdraw();
        return;
    }
    let destination = match (request, loading) {
        (Some(request), _) => Destination::Fresh(request),
        (None, Some(stream)) => match stream.done(started) {
            Some(writer) => Destination::Started(writer),
            None => return,
        },
        (None, None) => return,
    };
    let outcome = forward::forward(app, destination, &client, lease, outgoing, &tracked.entry);
    finished(app, model_id, outgoing, started, outcome);
}

/// Records a forwarded request in the metrics and the access log.
fn finished(
    app: &App,
    model_id: &str,
    outgoing: &Outgoing,
    started: Instant,
    outcome: forward::Outcome,
) {
    record(app, model_id, outgoing, started, &outcome);
    log::info!(
        model = model_id;
        "{} {} model={model_id} {} {}B {:.1}ms",
        outgoing.method,
        outgoing.path_and_query,
        outcome.status,
        outcome.bytes,
        started.elapsed().as_secs_f64() * 1000.0
    );
}

/// Adds a finished request to the metrics and the activity log.
fn record(
    app: &App,
    model_id: &str,
    outgoing: &Outgoing,
    started: Instant,
    outcome: &forward::Outcome,
) {
    if !app.request_metrics {
        return;
    }
    let path = outgoing
        .path_and_query
        .split('?')
        .next()
        .unwrap_or_default();
    let duration = started.elapsed();
    app.metrics.record_request(crate::metrics::RequestRecord {
        model: model_id,
        path,
        status: outcome.status,
        duration,
        usage: outcome.usage,
        time_to_first_token: outcome.time_to_first_token,
    });
    if outgoing.metered {
        forward::record_activity(app, model_id, path, duration, outcome);
    }
}

fn acquire_error_status(
    error: &AcquireError,
) -> (
    u16,
    Option<&'static str>,
    &'static [(&'static str, &'static str)],
) {
    match error {
        AcquireError::UnknownModel(_) => (404, Some("model_not_found"), &[]),
        AcquireError::TooManyRequests(_) => {
            (429, Some("concurrency_limit"), &[("Retry-After", "1")])
        }
        AcquireError::StartFailed(_) => (503, Some("model_start_failed"), &[]),
        AcquireError::Unloaded(_) => (503, Some("model_unloaded"), &[]),
        AcquireError::ShuttingDown => (503, Some("shutting_down"), &[]),
        AcquireError::TooLarge(_) => (503, Some("model_too_large"), &[]),
        #[allow(unreachable_patterns)] // AcquireError is non_exhaustive for other crates only.
        _ => (500, None, &[]),
    }
}

/// The head of every server-sent event stream swapd produces itself.
const SSE_HEADERS: &[(&str, &str)] = &[
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
];

/// llama-swap's `sendLoadingState`: a streaming chat request to a cold model gets an
/// immediate SSE response whose `reasoning_content` reports loading, then the real stream.
struct LoadingStream {
    writer: ResponseWriter,
    ticks: u32,
}

impl LoadingStream {
    fn start(request: tiny_http::Request, model_id: &str) -> Option<LoadingStream> {
        let writer = ResponseWriter::start(request, 200, SSE_HEADERS, None).ok()?;
        let mut stream = LoadingStream { writer, ticks: 0 };
        stream
            .send(&format!("━━━━━\nswapd loading model: {model_id}\n"))
            .ok()?;
        Some(stream)
    }

    fn send(&mut self, text: &str) -> std::io::Result<()> {
        let chunk = json!({
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"reasoning_content": text}}],
        });
        let event = format!("data: {chunk}\n\n");
        self.writer.write_chunk(event.as_bytes())
    }

    /// Called every 250 ms while waiting: a dot every 750 ms shows progress.
    fn tick(&mut self) -> std::io::Result<()> {
        self.ticks += 1;
        if self.ticks % 3 == 0 {
            self.send(".")
        } else {
            Ok(())
        }
    }

    fn done(mut self, started: Instant) -> Option<ResponseWriter> {
        self.send(&format!(
            "\nDone! ({:.2}s)\n━━━━━\n",
            started.elapsed().as_secs_f64()
        ))
        .ok()?;
        Some(self.writer)
    }

    fn fail(mut self, status: u16, message: &str) {
        let _ = self
            .writer
            .write_chunk(&forward::sse_error(status, message));
        let _ = self.writer.finish();
    }
}

fn list_models(app: &App, request: tiny_http::Request) {
    let config = app.config();
    let statuses = app.supervisor.snapshot();
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let loaded = |id: &str| {
        statuses
            .iter()
            .any(|s| s.model == id && s.phase != Phase::Stopped)
    };
    let mut data = Vec::new();
    for (id, model) in &config.models {
        if model.unlisted {
            continue;
        }
        let record = |record_id: &str, kind: &str| {
            let mut llamaswap = match &model.metadata {
                Value::Object(map) => map.clone(),
                _ => serde_json::Map::new(),
            };
            llamaswap.insert("type".into(), json!(kind));
            if kind == "model" && !model.aliases.is_empty() {
                llamaswap.insert("aliases".into(), json!(model.aliases));
            }
            if kind == "alias" {
                llamaswap.insert("modelID".into(), json!(id));
            }
            let mut record = json!({
                "id": record_id,
                "object": "model",
                "created": created,
                "owned_by": "swapd",
                "meta": {"llamaswap": llamaswap},
                "status": {"value": if loaded(id) { "loaded" } else { "unloaded" }},
            });
            if let Some(name) = &model.name {
                record["name"] = json!(name);
            }
            if let Some(description) = &model.description {
                record["description"] = json!(description);
            }
            record
        };
        data.push(record(id, "model"));
        if config.include_aliases_in_list {
            for alias in &model.aliases {
                data.push(record(alias, "alias"));
            }
        }
    }
    data.extend(super::routing::list_records(
        &app.routing,
        &config,
        &statuses,
        created,
    ));
    data.extend(super::peers::model_records(&config, created));
    data.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let body = serde_json::to_vec(&json!({"object": "list", "data": data}))
        .expect("a JSON value always serialises");
    let origin = header(&request, "Origin").unwrap_or("*").to_string();
    let _ = ResponseWriter::send_whole(
        request,
        200,
        &[
            ("Content-Type", "application/json"),
            ("Access-Control-Allow-Origin", &origin),
        ],
        &body,
    );
}

fn running(app: &App, request: tiny_http::Request) {
    let config = app.config();
    let memory = app.supervisor.memory_report();
    let running: Vec<Value> = app
        .supervisor
        .snapshot()
        .into_iter()
        .filter(|s| s.phase != Phase::Stopped)
        .filter_map(|s| {
            let model = config.models.get(&s.model)?;
            let mut entry = json!({
                "model": s.model,
                "state": s.phase.as_str(),
                "cmd": model.cmd_display,
                "proxy": model.proxy,
                "ttl": model.ttl.as_secs(),
                "pid": s.pid,
            });
            if let Some(name) = &model.name {
                entry["name"] = json!(name);
            }
            if let Some(description) = &model.description {
                entry["description"] = json!(description);
            }
            if let Some(memory) = &memory {
                entry["memory"] = memory.running_json(&s.model);
            }
            Some(entry)
        })
        .collect();
    let mut body = json!({ "running": running });
    if let Some(memory) = &memory {
        body["memory"] = memory.summary_json();
    }
    if !config.peers.is_empty() {
        body["peers"] = super::peers::running_json(app, &config);
    }
    http::send_json(request, 200, &body);
}

fn unload_one(app: &App, request: tiny_http::Request, name: &str) {
    let decoded = extract::percent_decode(name);
    let config = app.config();
    match config.resolve_model(&decoded) {
        Some(id) => {
            app.supervisor.unload(Some(id));
            http::send_text(request, 200, "OK");
        }
        None => http::send_error(
            request,
            404,
            &format!("model '{decoded}' not found"),
            Some("model_not_found"),
            &[],
        ),
    }
}

fn upstream(app: &App, mut request: tiny_http::Request, method: &str, rest: &str, query: &str) {
    let config = app.config();
    // The active profile's pins apply to /upstream paths too; selectors do not.
    let pinned = match super::routing::apply_upstream_pin(&app.routing, &config, rest) {
        Ok(pinned) => pinned,
        Err((status, message)) => return http::send_error(request, status, &message, None, &[]),
    };
    let rest = pinned.as_deref().unwrap_or(rest);
    let Some((model_id, remainder)) = extract::upstream_target(&config, rest) else {
        return http::send_error(
            request,
            404,
            &format!("no model matches the path /upstream/{rest}"),
            Some("model_not_found"),
            &[],
        );
    };
    if remainder.is_empty() {
        let location = format!("/upstream/{rest}/");
        let status = if matches!(method, "GET" | "HEAD") {
            301
        } else {
            308
        };
        let _ = ResponseWriter::send_whole(request, status, &[("Location", &location)], b"");
        return;
    }
    let limits = app.limits();
    let body = match read_body(app, &mut request, limits.max_body_bytes) {
        Ok(body) => body,
        Err(too_large) => return body_error(request, too_large, limits.max_body_bytes),
    };
    let path_and_query = if query.is_empty() {
        remainder.to_string()
    } else {
        format!("{remainder}?{query}")
    };
    let outgoing = Outgoing {
        method: method.to_string(),
        path_and_query,
        headers: forwarded_headers(&request),
        body,
        metered: method == "POST"
            && extract::route("POST", remainder)
                .is_some_and(|(source, _)| !matches!(source, ModelSource::Query)),
    };
    proxy_to(app, request, &model_id, outgoing, false);
}

fn log_stream(app: &App, request: tiny_http::Request, path: &str, query: &str) {
    let id = path
        .strip_prefix("/logs/stream")
        .unwrap_or("")
        .trim_start_matches('/');
    let id = extract::percent_decode(id);
    let buffer = match id.as_str() {
        "" => app.logs.mux.clone(),
        "proxy" => app.logs.proxy.clone(),
        "upstream" => app.logs.upstream.clone(),
        name => match app.config().resolve_model(name) {
            Some(model_id) => app.logs.model(model_id),
            None => {
                return http::send_error(
                    request,
                    400,
                    &format!(
                        "invalid logger '{name}'. Use 'proxy', 'upstream' or a model's ID or alias"
                    ),
                    None,
                    &[],
                )
            }
        },
    };
    let no_history = query
        .split('&')
        .any(|pair| pair.split('=').next() == Some("no-history"));
    let (history, subscription) = if no_history {
        (Vec::new(), buffer.subscribe_live())
    } else {
        buffer.subscribe()
    };
    let client = client_of_request(&request);
    let Ok(mut writer) = ResponseWriter::start(
        request,
        200,
        &[
            ("Content-Type", "text/plain; charset=utf-8"),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Accel-Buffering", "no"),
            ("Cache-Control", "no-cache"),
        ],
        None,
    ) else {
        return;
    };
    if writer.write_chunk(&history).is_err() {
        return;
    }
    loop {
        match subscription.receiver().recv_timeout(Duration::from_secs(1)) {
            Ok(chunk) => {
                if writer.write_chunk(&chunk).is_err() {
                    return;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if client.is_gone() || app.is_shutting_down() {
                    let _ = writer.finish();
                    return;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                let _ = writer.finish();
                return;
            }
        }
    }
}

/// The gauges other parts of swapd own, for `/metrics`.
fn gauges(app: &App) -> crate::metrics::Gauges {
    crate::metrics::Gauges {
        models: app
            .supervisor
            .snapshot()
            .into_iter()
            .map(|status| crate::metrics::ModelGauge {
                model: status.model,
                state: status.phase.as_str(),
                inflight: status.inflight as u64,
                queued: status.queued as u64,
            })
            .collect(),
        log_dropped_bytes: app.logs.dropped_bytes_total(),
        open_connections: app.guard.open_connections() as u64,
    }
}

/// The model list in llama-swap's `modelStatus` shape.
fn model_status(app: &App) -> Value {
    let config = app.config();
    let statuses = app.supervisor.snapshot();
    let mut models: Vec<Value> = config
        .models
        .values()
        .map(|model| {
            let status = statuses.iter().find(|s| s.model == model.id);
            let state = status.map_or("stopped", |s| s.phase.as_str());
            // swapd's additions for its UI: the group, the TTL and the load right now.
            let group = config
                .groups
                .iter()
                .find(|group| group.members.contains(&model.id))
                .map(|group| group.id.as_str());
            json!({
                "id": model.id,
                "name": model.name.clone().unwrap_or_default(),
                "description": model.description.clone().unwrap_or_default(),
                "state": state,
                "unlisted": model.unlisted,
                "aliases": model.aliases,
                "group": group,
                "ttl": model.ttl.as_secs(),
                "inflight": status.map_or(0, |s| s.inflight),
                "queued": status.map_or(0, |s| s.queued),
            })
        })
        .collect();
    models.extend(super::peers::model_status(app, &config));
    Value::Array(models)
}

/// One llama-swap event frame: `event:message` with `{"type":T,"data":"<JSON string>"}`.
fn event_frame(kind: &str, data: &Value) -> Vec<u8> {
    // Written by hand to keep llama-swap's key order (serde_json sorts keys).
    let kind = Value::String(kind.to_string());
    let data = Value::String(data.to_string());
    format!("event:message\ndata:{{\"type\":{kind},\"data\":{data}}}\n\n").into_bytes()
}

/// `GET /api/events`: model states, log data and new request rows as server-sent events, in
/// llama-swap's message format so its clients can follow swapd.
fn events(app: &App, request: tiny_http::Request) {
    let client = client_of_request(&request);
    let (proxy_history, proxy_logs) = app.logs.proxy.subscribe();
    let (upstream_history, upstream_logs) = app.logs.upstream.subscribe();
    let rows = app.activity.subscribe();
    let Ok(mut writer) = ResponseWriter::start(request, 200, SSE_HEADERS, None) else {
        return;
    };
    let log_event = |source: &str, bytes: &[u8]| {
        event_frame(
            "logData",
            &json!({"source": source, "data": String::from_utf8_lossy(bytes)}),
        )
    };
    let mut status = model_status(app);
    let mut first = log_event("proxy", &proxy_history);
    first.extend_from_slice(&log_event("upstream", &upstream_history));
    first.extend_from_slice(&event_frame("modelStatus", &status));
    let mut profile = app.routing.active_profile();
    first.extend_from_slice(&event_frame(
        "profileChanged",
        &json!({ "active": profile }),
    ));
    let mut inflight_seen = std::collections::HashMap::new();
    let entries = app.inflight.snapshot();
    let now: Vec<(u64, u64)> = entries.iter().map(|e| (e.id, e.bytes())).collect();
    crate::activity::inflight::diff(&mut inflight_seen, &now);
    let requests: Vec<Value> = entries.iter().map(|e| e.to_json()).collect();
    first.extend_from_slice(&event_frame(
        "inflight",
        &json!({"operation": "snapshot", "requests": requests}),
    ));
    if writer.write_chunk(&first).is_err() {
        return;
    }
    let mut last_status_check = Instant::now();
    loop {
        let frame = crossbeam_channel::select! {
            recv(proxy_logs.receiver()) -> chunk => chunk.ok().map(|c| log_event("proxy", &c)),
            recv(upstream_logs.receiver()) -> chunk => chunk.ok().map(|c| log_event("upstream", &c)),
            recv(rows) -> row => row.ok().map(|row| event_frame("activity", &row.to_json())),
            default(Duration::from_millis(250)) => Some(Vec::new()),
        };
        let Some(mut frame) = frame else {
            // A source closed: swapd is shutting down.
            let _ = writer.finish();
            return;
        };
        if last_status_check.elapsed() >= Duration::from_millis(250) {
            last_status_check = Instant::now();
            let now = model_status(app);
            if now != status {
                status = now;
                frame.extend_from_slice(&event_frame("modelStatus", &status));
            }
            let active = app.routing.active_profile();
            if active != profile {
                profile = active;
                frame.extend_from_slice(&event_frame(
                    "profileChanged",
                    &json!({ "active": profile }),
                ));
            }
            // In-flight changes, at most one update per request per 250 ms.
            let entries = app.inflight.snapshot();
            let now: Vec<(u64, u64)> = entries.iter().map(|e| (e.id, e.bytes())).collect();
            let (upserts, removes) = crate::activity::inflight::diff(&mut inflight_seen, &now);
            for entry in entries.iter().filter(|e| upserts.contains(&e.id)) {
                frame.extend_from_slice(&event_frame(
                    "inflight",
                    &json!({"operation": "upsert", "request": entry.to_json()}),
                ));
            }
            for id in removes {
                frame.extend_from_slice(&event_frame(
                    "inflight",
                    &json!({"operation": "remove", "id": id}),
                ));
            }
            if client.is_gone() || app.is_shutting_down() {
                let _ = writer.finish();
                return;
            }
        }
        if !frame.is_empty() && writer.write_chunk(&frame).is_err() {
            return;
        }
    }
}

/// `POST /api/config/reload`: reloads now and answers what changed, or why the new file was
/// rejected (the old config keeps serving).
fn reload_config(app: &App, request: tiny_http::Request) {
    let (reply, outcome) = crossbeam_channel::bounded(1);
    let sent = app
        .reloads
        .send(crate::reload::ReloadRequest { reply: Some(reply) });
    match sent
        .ok()
        .and_then(|_| outcome.recv_timeout(Duration::from_secs(60)).ok())
    {
        Some(Ok(summary)) => http::send_json(
            request,
            200,
            &json!({
                "msg": "ok",
                "added": summary.added,
                "removed": summary.removed,
                "restarting": summary.changed,
                "updated": summary.updated,
            }),
        ),
        Some(Err(error)) => http::send_error(
            request,
            400,
            &format!("config rejected, the old config keeps serving: {error}"),
            Some("invalid_config"),
            &[],
        ),
        None => http::send_error(request, 503, "the reload did not finish", None, &[]),
    }
}

/// The request after profile pins and selectors: the model it now names, its body and query
/// rewritten to match, and the selector's in-flight lease (held until the request ends).
type Routed = (
    extract::Requested,
    Vec<u8>,
    String,
    Option<super::routing::SelectorLease>,
);

/// Applies the active profile's pin (no chaining), then a selector, to the requested model.
fn route_virtual(
    app: &App,
    config: &crate::config::Config,
    mut requested: extract::Requested,
    body: Vec<u8>,
    query: &str,
    source: ModelSource,
    content_type: &str,
) -> Result<Routed, super::routing::RouteError> {
    let original = requested.model.clone();
    if let Some(pinned) = super::routing::apply_pin(&app.routing, config, &requested.model)? {
        requested.model = pinned;
    }
    let mut lease = None;
    if let Some(selector) = config.selectors.get(&requested.model) {
        let statuses = app.supervisor.snapshot();
        let (target, selector_lease) = super::routing::select(&app.routing, selector, &statuses)?;
        log::info!(
            "selector {}: {} → {target}",
            selector.id,
            selector.strategy.as_str()
        );
        requested.model = target;
        lease = Some(selector_lease);
    }
    if requested.model == original {
        return Ok((requested, body, query.to_string(), lease));
    }
    let bad = |error: String| (400, error);
    let (body, query) = match source {
        ModelSource::JsonBody => (
            super::routing::replace_json_model(&body, &requested.model).map_err(bad)?,
            query.to_string(),
        ),
        ModelSource::Multipart => (
            extract::rewrite_multipart_model(&body, content_type, &requested.model)
                .map_err(|error| bad(error.to_string()))?,
            query.to_string(),
        ),
        ModelSource::Query => (
            body,
            super::routing::replace_query_model(query, &requested.model),
        ),
    };
    Ok((requested, body, query, lease))
}

/// `PUT /api/profiles/active`.
fn set_profile(app: &App, mut request: tiny_http::Request) {
    let body = match read_body(app, &mut request, 64 * 1024) {
        Ok(body) => body,
        Err(too_large) => return body_error(request, too_large, 64 * 1024),
    };
    match super::routing::set_profile(&app.routing, &app.config(), &body) {
        Ok(answer) => {
            log::info!("profile: active is now {}", answer["active"]);
            http::send_json(request, 200, &answer)
        }
        Err((status, message)) => http::send_error(request, status, &message, None, &[]),
    }
}
