//! The Ollama endpoints' handlers: read the body, resolve the model, translate, take a lease
//! exactly as the OpenAI routes do, exchange with the upstream, translate back.
//!
//! Decisions live in the pure modules ([`super::translate`], [`super::stream`],
//! [`super::catalog`]); scheduling in the supervisor. Every error on these routes is Ollama's
//! `{"error": "..."}` with the status the OpenAI routes would use; once a stream has started,
//! an error is one more `{"error"}` line, which Ollama clients check for on every line.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::activity::inflight::{Entry, Tracked};
use crate::http::ResponseWriter;
use crate::proxy::forward::{cancel_message, cancellable, Outgoing};
use crate::proxy::{client_of_request, read_body, App, ClientSocket};
use crate::supervisor::{AcquireError, IdleOverride, Lease, Phase, Reply};
use crate::upstream::UpstreamError;

use super::catalog;
use super::stream::{self, NdjsonStream};
use super::translate::{self, KeepAlive, Kind, Measured};
use super::Route;

/// The most swapd reads of a non-streamed upstream answer (embeddings of a large batch are big).
const MAX_UPSTREAM_BODY: u64 = 256 * 1024 * 1024;

pub fn handle(app: &App, request: tiny_http::Request, route: Route) {
    match route {
        Route::Tags => tags(app, request),
        Route::Ps => ps(app, request),
        Route::Show => show(app, request),
        Route::Chat => generation(app, request, Kind::Chat),
        Route::Generate => generation(app, request, Kind::Generate),
        Route::Embed => embed(app, request, false),
        Route::Embeddings => embed(app, request, true),
        Route::Unsupported(path) => send_error(
            request,
            501,
            &format!(
                "{path} is not supported: swapd serves the models listed in its config file; \
                 add or change models there (and reload) instead"
            ),
            &[],
        ),
        Route::WrongMethod(path) => {
            send_error(request, 405, &format!("method not allowed on {path}"), &[])
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

fn header<'a>(request: &'a tiny_http::Request, name: &str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The `Access-Control-Allow-Origin` value: swapd answers these routes itself, so it sets what
/// the upstream would have set on the OpenAI routes (the same as `/v1/models`).
fn allow_origin(request: &tiny_http::Request) -> String {
    header(request, "Origin").unwrap_or("*").to_string()
}

fn send_json(request: tiny_http::Request, status: u16, value: &Value) {
    let body = serde_json::to_vec(value).expect("a JSON value always serialises");
    let origin = allow_origin(&request);
    let _ = ResponseWriter::send_whole(
        request,
        status,
        &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("Access-Control-Allow-Origin", &origin),
        ],
        &body,
    );
}

/// Ollama's error shape: `{"error": "..."}`.
fn send_error(request: tiny_http::Request, status: u16, message: &str, extra: &[(&str, &str)]) {
    let body = serde_json::to_vec(&json!({ "error": message })).expect("JSON serialises");
    let origin = allow_origin(&request);
    let mut headers = vec![
        ("Content-Type", "application/json; charset=utf-8"),
        ("Access-Control-Allow-Origin", origin.as_str()),
    ];
    headers.extend_from_slice(extra);
    let _ = ResponseWriter::send_whole(request, status, &headers, &body);
}

/// A failure to send as an Ollama error.
struct Failure {
    status: u16,
    message: String,
    retry_after: bool,
}

impl Failure {
    fn new(status: u16, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
            retry_after: false,
        }
    }

    fn send(self, request: tiny_http::Request) {
        let extra: &[(&str, &str)] = if self.retry_after {
            &[("Retry-After", "1")]
        } else {
            &[]
        };
        send_error(request, self.status, &self.message, extra);
    }
}

fn now() -> String {
    catalog::timestamp(SystemTime::now())
}

/// When swapd started, for listings of models without a known file.
fn started_at(app: &App) -> SystemTime {
    SystemTime::now()
        .checked_sub(app.started_at.elapsed())
        .unwrap_or_else(SystemTime::now)
}

// ---------------------------------------------------------------------------------------------
// Request reading and model lookup
// ---------------------------------------------------------------------------------------------

/// The request body as JSON.
fn read_json(app: &App, request: &mut tiny_http::Request) -> Result<Value, Failure> {
    let limit = app.limits().max_body_bytes;
    let body = read_body(app, request, limit).map_err(|too_large| {
        if too_large {
            Failure::new(
                413,
                format!("request body is larger than the limit of {limit} bytes"),
            )
        } else {
            Failure::new(400, "the request body could not be read (truncated?)")
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Failure::new(400, "missing request body"));
    }
    serde_json::from_slice(&body)
        .map_err(|error| Failure::new(400, format!("request body is not valid JSON: {error}")))
}

/// A requested model found in the config: its id and the name it was found by.
struct Resolved {
    id: String,
    name: String,
}

/// Finds a model by the name a client sent: exactly, without `:latest`, then ignoring case
/// (Ollama matches names case-insensitively).
fn resolve(app: &App, requested: &str) -> Option<Resolved> {
    let config = app.config();
    let names = translate::lookup_names(requested);
    for name in &names {
        if let Some(id) = config.resolve_model(name) {
            return Some(Resolved {
                id: id.to_string(),
                name: name.to_string(),
            });
        }
    }
    for name in &names {
        if let Some(id) = config
            .models
            .keys()
            .find(|id| id.eq_ignore_ascii_case(name))
        {
            return Some(Resolved {
                id: id.clone(),
                name: id.clone(),
            });
        }
    }
    None
}

fn requested_model(body: &Value) -> &str {
    body.get("model")
        .or_else(|| body.get("name"))
        .and_then(Value::as_str)
        .map_or("", str::trim)
}

fn not_found(requested: &str) -> Failure {
    Failure::new(404, format!("model '{requested}' not found"))
}

// ---------------------------------------------------------------------------------------------
// Acquiring a model: the same supervisor path as the OpenAI routes
// ---------------------------------------------------------------------------------------------

/// Takes a lease on `model_id`, starting or swapping as the supervisor decides. `Err(None)`:
/// the client left while waiting (the dropped ticket withdraws the request). An
/// `explicit_load` (an empty request that only loads the model) holds its start: the model is
/// loaded even if the client leaves; any other start is abandoned when its clients leave. A
/// failure is recorded (metrics and access log) under `path` before it is returned.
fn acquire(
    app: &App,
    model_id: &str,
    client: &ClientSocket,
    explicit_load: bool,
    path: &str,
    started: Instant,
    tracked: Option<&Entry>,
) -> Result<Lease, Option<Failure>> {
    let result = wait_for_lease(app, model_id, client, explicit_load, tracked);
    if let Err(Some(failure)) = &result {
        record_unmetered(app, model_id, path, failure.status, started);
    }
    result
}

fn wait_for_lease(
    app: &App,
    model_id: &str,
    client: &ClientSocket,
    explicit_load: bool,
    tracked: Option<&Entry>,
) -> Result<Lease, Option<Failure>> {
    if let Some(lease) = app.supervisor.try_lease(model_id) {
        return Ok(lease);
    }
    let mut ticket = if explicit_load {
        app.supervisor.request_load(model_id)
    } else {
        app.supervisor.request(model_id)
    };
    loop {
        match ticket.wait(Duration::from_millis(250)) {
            // The grant may have raced with the client's departure: give it back unused, so a
            // model started only for this client does not stay loaded.
            Some(Reply::Granted(lease)) if !explicit_load && client.is_gone() => {
                log::info!("client left while waiting for '{model_id}'; request withdrawn");
                lease.withdraw();
                return Err(None);
            }
            Some(Reply::Granted(lease)) => return Ok(lease),
            Some(Reply::Failed(error)) => {
                let status = match &error {
                    AcquireError::UnknownModel(_) => 404,
                    AcquireError::TooManyRequests(_) => 429,
                    AcquireError::StartFailed(_)
                    | AcquireError::Unloaded(_)
                    | AcquireError::ShuttingDown
                    | AcquireError::TooLarge(_) => 503,
                    #[allow(unreachable_patterns)] // non_exhaustive for other crates only.
                    _ => 500,
                };
                let mut failure = Failure::new(status, error.to_string());
                failure.retry_after = status == 429;
                return Err(Some(failure));
            }
            Some(Reply::Queued) => {}
            None => {
                if client.is_gone() {
                    log::info!("client left while waiting for '{model_id}'; request withdrawn");
                    return Err(None);
                }
                if tracked.is_some_and(Entry::is_cancelled) {
                    // Dropping the ticket withdraws the request from the queue.
                    let message = cancel_message(model_id);
                    log::info!("{message} while it waited for the model");
                    return Err(Some(Failure::new(503, message)));
                }
            }
        }
    }
}

/// A translated request about to be served: what [`admit`] needs.
struct Admission<'a> {
    model_id: &'a str,
    /// The OpenAI-compatible endpoint and body sent upstream.
    upstream_path: &'a str,
    upstream_body: Vec<u8>,
    keep_alive: Option<KeepAlive>,
    /// The Ollama route, for the metrics.
    path: &'a str,
    started: Instant,
}

/// Registers the request in flight (the entry, for `/api/events` and the operator's cancel,
/// owns the upstream request from here on), takes a lease on the model and applies
/// `keep_alive` while the lease is held (so even "unload now" cannot stop the model before this
/// request has run). Returns the entry, the lease and the time the model took to be ready.
fn admit<'a>(
    app: &'a App,
    request: &tiny_http::Request,
    client: &ClientSocket,
    admission: Admission<'_>,
) -> Result<(Tracked<'a>, Lease, Duration), Option<Failure>> {
    let outgoing = Outgoing {
        method: "POST".to_string(),
        path_and_query: admission.upstream_path.to_string(),
        headers: upstream_headers(request),
        body: admission.upstream_body,
        metered: true,
    };
    let model_id = admission.model_id;
    let tracked = app
        .inflight
        .begin(model_id, outgoing, request.remote_addr().copied());
    let lease = acquire(
        app,
        model_id,
        client,
        false,
        admission.path,
        admission.started,
        Some(&tracked.entry),
    )?;
    let load = admission.started.elapsed();
    app.supervisor
        .set_idle(model_id, idle_override(admission.keep_alive));
    Ok((tracked, lease, load))
}

/// What `keep_alive` does to the model's idle time; absent restores the config's `ttl`.
fn idle_override(keep_alive: Option<KeepAlive>) -> Option<IdleOverride> {
    match keep_alive? {
        KeepAlive::Unload => Some(IdleOverride::After(Duration::ZERO)),
        KeepAlive::Forever => Some(IdleOverride::Never),
        KeepAlive::For(idle) => Some(IdleOverride::After(idle)),
    }
}

/// [`record`] for a request that ended without an upstream answer to read tokens from.
fn record_unmetered(app: &App, model_id: &str, path: &str, status: u16, started: Instant) {
    record(
        app,
        model_id,
        path,
        status,
        started,
        Default::default(),
        None,
    );
}

/// Adds a finished request to the metrics and the access log.
fn record(
    app: &App,
    model_id: &str,
    path: &str,
    status: u16,
    started: Instant,
    usage: crate::metrics::TokenUsage,
    time_to_first_token: Option<Duration>,
) {
    log::info!(
        "POST {path} model={model_id} {status} {:.1}ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    if !app.request_metrics {
        return;
    }
    app.metrics.record_request(crate::metrics::RequestRecord {
        model: model_id,
        path,
        status,
        duration: started.elapsed(),
        usage,
        time_to_first_token,
    });
    // The Ollama routes are inference requests too: they get activity rows (the response
    // type is not tracked here, and a failure's row carries only its status).
    app.activity.record(crate::activity::Finished {
        model: model_id,
        path,
        content_type: "",
        status,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        usage,
        error: None,
    });
}

/// The header lines sent upstream: JSON, plus the client's credentials (an upstream started
/// with its own API key sees what it would see on the OpenAI routes).
fn upstream_headers(request: &tiny_http::Request) -> Vec<u8> {
    let mut lines = b"Content-Type: application/json\r\n".to_vec();
    for name in ["Authorization", "x-api-key"] {
        if let Some(value) = header(request, name) {
            lines.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
    }
    lines
}

/// The upstream body with the model's `useModelName` and `filters` applied, as on the OpenAI
/// routes.
fn upstream_body(app: &App, resolved: &Resolved, mut body: Value) -> Result<Vec<u8>, Failure> {
    body["model"] = json!(resolved.name);
    let config = app.config();
    let bytes = serde_json::to_vec(&body).expect("a JSON value always serialises");
    let Some(model) = config.models.get(&resolved.id) else {
        return Err(not_found(&resolved.name));
    };
    if crate::proxy::extract::needs_json_rewrite(model, &resolved.name) {
        crate::proxy::extract::rewrite_json(&bytes, model, &resolved.name)
            .map_err(|error| Failure::new(400, error.to_string()))
    } else {
        Ok(bytes)
    }
}

fn upstream_failure(
    lease: &Lease,
    path: &str,
    error: &UpstreamError,
    timeout: Duration,
) -> Failure {
    let model = lease.model();
    let url = format!("{}{path}", lease.upstream());
    match error {
        UpstreamError::Timeout => Failure::new(
            504,
            format!(
                "upstream for model '{model}' did not answer within {}s ({url})",
                timeout.as_secs()
            ),
        ),
        _ => Failure::new(
            502,
            format!("upstream for model '{model}' failed: {error} ({url})"),
        ),
    }
}

/// Reads a whole (bounded) upstream body.
fn read_whole(body: &mut crate::upstream::Body<'_>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    body.take(MAX_UPSTREAM_BODY).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The message of an upstream error answer (OpenAI or llama.cpp shape, or its text).
fn upstream_error_message(status: u16, bytes: &[u8]) -> String {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => match value.get("error") {
            Some(error) => translate::error_message(error),
            None => value.to_string(),
        },
        Err(_) if bytes.is_empty() => format!("upstream answered status {status}"),
        Err(_) => String::from_utf8_lossy(bytes).trim().to_string(),
    }
}

/// Sends the in-flight entry's request upstream as one JSON exchange and returns the parsed
/// answer (errors translated; an operator's cancel cuts it).
fn exchange_json(
    app: &App,
    lease: Lease,
    tracked: &Entry,
) -> Result<(Value, crate::metrics::TokenUsage), Failure> {
    let timeout = app.limits().upstream_timeout;
    let outgoing = tracked.outgoing();
    let path = outgoing.path_and_query.as_str();
    let request = crate::upstream::Request {
        method: "POST",
        path_and_query: path,
        headers: &outgoing.headers,
        body: Some(&outgoing.body),
    };
    let cancelled = || Failure::new(503, cancel_message(lease.model()));
    let sent = app.upstream.send_observed(
        lease.upstream(),
        &request,
        Some(timeout),
        None,
        &cancellable(tracked),
    );
    let response = match sent {
        Ok(response) => response,
        Err(_) if tracked.is_cancelled() => return Err(cancelled()),
        Err(error) => return Err(upstream_failure(&lease, path, &error, timeout)),
    };
    let status = response.status();
    let mut reader = response.into_body();
    let bytes = read_whole(&mut reader);
    drop(reader);
    tracked.detach_upstream();
    if tracked.is_cancelled() {
        return Err(cancelled());
    }
    let bytes = bytes.map_err(|error| {
        Failure::new(
            502,
            format!(
                "upstream for model '{}' failed while answering: {error}",
                lease.model()
            ),
        )
    })?;
    drop(lease);
    if status >= 400 {
        return Err(Failure::new(status, upstream_error_message(status, &bytes)));
    }
    let usage = {
        let mut scanner = crate::proxy::usage::UsageScanner::new(false);
        scanner.feed(&bytes);
        scanner.finish()
    };
    let value = serde_json::from_slice(&bytes).map_err(|error| {
        Failure::new(
            502,
            format!("the upstream's answer is not JSON ({error}); status {status}"),
        )
    })?;
    Ok((value, usage))
}

// ---------------------------------------------------------------------------------------------
// /api/chat and /api/generate
// ---------------------------------------------------------------------------------------------

fn generation(app: &App, mut request: tiny_http::Request, kind: Kind) {
    let started = Instant::now();
    let path = match kind {
        Kind::Chat => "/api/chat",
        Kind::Generate => "/api/generate",
    };
    let body = match read_json(app, &mut request) {
        Ok(body) => body,
        Err(failure) => return failure.send(request),
    };
    let resolved = resolve(app, requested_model(&body));
    let llama_server = resolved.as_ref().is_some_and(|resolved| {
        app.config()
            .models
            .get(&resolved.id)
            .is_some_and(|model| catalog::is_llama_server(&model.cmd))
    });
    let translated = match kind {
        Kind::Chat => translate::chat_request(&body),
        Kind::Generate => translate::generate_request(&body, llama_server),
    };
    let translated = match translated {
        Ok(translated) => translated,
        Err(message) => return Failure::new(400, message).send(request),
    };
    let Some(resolved) = resolved else {
        return not_found(&translated.model).send(request);
    };
    if !translated.ignored_options.is_empty() {
        log::debug!(
            "{path} model={}: options without a per-request upstream equivalent ignored: {}",
            resolved.id,
            translated.ignored_options.join(", ")
        );
    }
    let client = client_of_request(&request);

    if translated.load_only {
        return load_or_unload(app, request, &client, &resolved, kind, &translated, started);
    }

    let upstream_body = match upstream_body(app, &resolved, translated.body.clone()) {
        Ok(body) => body,
        Err(failure) => return failure.send(request),
    };
    let admission = Admission {
        model_id: &resolved.id,
        upstream_path: translated.endpoint.path(),
        upstream_body,
        keep_alive: translated.keep_alive,
        path,
        started,
    };
    let (tracked, lease, load) = match admit(app, &request, &client, admission) {
        Ok(admitted) => admitted,
        Err(failure) => return failure.map_or((), |failure| failure.send(request)),
    };
    let entry = &tracked.entry;
    let outgoing = entry.outgoing();

    let endpoint_path = outgoing.path_and_query.as_str();
    let timeout = app.limits().upstream_timeout;
    let upstream_request = crate::upstream::Request {
        method: "POST",
        path_and_query: endpoint_path,
        headers: &outgoing.headers,
        body: Some(&outgoing.body),
    };
    let sent_at = Instant::now();
    let sent = app.upstream.send_observed(
        lease.upstream(),
        &upstream_request,
        Some(timeout),
        None,
        &cancellable(entry),
    );
    let response = match sent {
        Ok(response) => response,
        Err(_) if entry.is_cancelled() => {
            entry.detach_upstream();
            drop(lease);
            let message = cancel_message(&resolved.id);
            log::info!("{message} before the upstream answered");
            record_unmetered(app, &resolved.id, path, 499, started);
            return Failure::new(503, message).send(request);
        }
        Err(error) => {
            entry.detach_upstream();
            let failure = upstream_failure(&lease, endpoint_path, &error, timeout);
            log::warn!("{}", failure.message);
            drop(lease);
            record_unmetered(app, &resolved.id, path, failure.status, started);
            return failure.send(request);
        }
    };
    let status = response.status();
    let is_sse = response
        .header("content-type")
        .is_some_and(|value| value.starts_with("text/event-stream"));

    if status < 400 && is_sse {
        let mut reader = response.into_body();
        let context = StreamContext {
            kind,
            model: &translated.model,
            started,
            load,
            sent_at,
        };
        let (status, usage, first) =
            stream_ndjson(app, request, &mut reader, lease, &context, entry);
        entry.detach_upstream();
        record(app, &resolved.id, path, status, started, usage, first);
        return;
    }

    // A whole answer: a non-streamed request, an error, or an upstream that did not stream.
    let mut reader = response.into_body();
    let bytes = read_whole(&mut reader);
    drop(reader);
    drop(lease);
    entry.detach_upstream();
    let bytes = match bytes {
        Ok(_) | Err(_) if entry.is_cancelled() => {
            let message = cancel_message(&resolved.id);
            log::info!("{message} while the upstream answered");
            record_unmetered(app, &resolved.id, path, 499, started);
            return Failure::new(503, message).send(request);
        }
        Ok(bytes) => bytes,
        Err(error) => {
            let failure = Failure::new(
                502,
                format!(
                    "upstream for model '{}' failed while answering: {error}",
                    resolved.id
                ),
            );
            record_unmetered(app, &resolved.id, path, 502, started);
            return failure.send(request);
        }
    };
    if status >= 400 {
        record_unmetered(app, &resolved.id, path, status, started);
        return Failure::new(status, upstream_error_message(status, &bytes)).send(request);
    }
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(error) => {
            record_unmetered(app, &resolved.id, path, 502, started);
            return Failure::new(502, format!("the upstream's answer is not JSON ({error})"))
                .send(request);
        }
    };
    let usage = {
        let mut scanner = crate::proxy::usage::UsageScanner::new(false);
        scanner.feed(&bytes);
        scanner.finish()
    };
    let measured = Measured {
        total: started.elapsed(),
        load,
        ..Measured::default()
    };
    let answer = translate::whole_response(kind, &translated.model, &now(), &value, &measured);
    record(app, &resolved.id, path, 200, started, usage, None);
    if translated.stream {
        // The client asked for a stream: one NDJSON line (the final one).
        let mut line = Vec::new();
        stream::write_line(&mut line, &answer);
        let origin = allow_origin(&request);
        let _ = ResponseWriter::send_whole(
            request,
            200,
            &[
                ("Content-Type", "application/x-ndjson"),
                ("Access-Control-Allow-Origin", &origin),
            ],
            &line,
        );
    } else {
        send_json(request, 200, &answer);
    }
}

/// An empty chat or generate request: load the model (and set its idle time), or with
/// `keep_alive: 0` unload it without loading it first. Always one JSON object.
fn load_or_unload(
    app: &App,
    request: tiny_http::Request,
    client: &ClientSocket,
    resolved: &Resolved,
    kind: Kind,
    translated: &translate::Translated,
    started: Instant,
) {
    let path = match kind {
        Kind::Chat => "/api/chat",
        Kind::Generate => "/api/generate",
    };
    let unload = translated.keep_alive == Some(KeepAlive::Unload);
    if unload {
        app.supervisor.unload(Some(&resolved.id));
    } else {
        match acquire(app, &resolved.id, client, true, path, started, None) {
            Ok(lease) => {
                app.supervisor
                    .set_idle(&resolved.id, idle_override(translated.keep_alive));
                drop(lease);
            }
            Err(failure) => return failure.map_or((), |failure| failure.send(request)),
        }
    }
    record_unmetered(app, &resolved.id, path, 200, started);
    let answer = translate::load_response(kind, &translated.model, &now(), unload);
    send_json(request, 200, &answer);
}

/// What the stream translation needs to know about its request.
struct StreamContext<'a> {
    kind: Kind,
    model: &'a str,
    started: Instant,
    load: Duration,
    sent_at: Instant,
}

/// Streams an upstream SSE answer to the client as NDJSON, one line per event as it arrives.
/// Returns the status for the metrics, the token usage and the time to the first token.
fn stream_ndjson(
    app: &App,
    request: tiny_http::Request,
    reader: &mut crate::upstream::Body<'_>,
    lease: Lease,
    context: &StreamContext,
    tracked: &Entry,
) -> (u16, crate::metrics::TokenUsage, Option<Duration>) {
    let mut lease = Some(lease);
    let client = client_of_request(&request);
    let origin = allow_origin(&request);
    let writer = ResponseWriter::start(
        request,
        200,
        &[
            ("Content-Type", "application/x-ndjson"),
            ("Cache-Control", "no-cache"),
            ("X-Accel-Buffering", "no"),
            ("Access-Control-Allow-Origin", &origin),
        ],
        None,
    );
    let Ok(mut writer) = writer else {
        return (200, Default::default(), None);
    };
    // The head goes out at once: the first token may be seconds away (prompt processing).
    if writer.write_chunk(&[]).is_err() {
        return (200, Default::default(), None);
    }
    let mut translator = NdjsonStream::new(context.kind, context.model);
    let mut scanner = app
        .request_metrics
        .then(|| crate::proxy::usage::UsageScanner::new(true));
    let mut out = Vec::with_capacity(512);
    let mut first_piece: Option<Instant> = None;
    let mut status = 200;
    loop {
        let chunk = match reader.chunk() {
            Ok([]) => {
                drop(lease.take());
                break;
            }
            Ok(chunk) => chunk,
            Err(error) => {
                let model = lease.as_ref().map_or("", |lease| lease.model());
                let cancelled = tracked.is_cancelled();
                let message = if cancelled {
                    cancel_message(model)
                } else {
                    format!("upstream for model '{model}' failed during the stream: {error}")
                };
                log::warn!("{message}");
                drop(lease.take());
                out.clear();
                stream::write_line(&mut out, &json!({ "error": message }));
                let _ = writer.write_chunk(&out);
                let _ = writer.finish();
                return (if cancelled { 499 } else { 502 }, Default::default(), None);
            }
        };
        let read = chunk.len();
        if let Some(scanner) = scanner.as_mut() {
            scanner.feed(chunk);
        }
        let fed = translator.feed(chunk, &now(), &mut out);
        reader.consume(read);
        if fed.generated && first_piece.is_none() {
            first_piece = Some(Instant::now());
        }
        if !out.is_empty() {
            tracked.add_bytes(out.len() as u64);
            if writer.write_chunk(&out).is_err() {
                // The client went away: dropping the reader closes the upstream connection.
                log::debug!(
                    "client left during an Ollama stream from '{}'",
                    context.model
                );
                return (200, Default::default(), None);
            }
            out.clear();
        }
        if fed.failed {
            status = 502;
            break;
        }
    }
    drop(lease);
    let measured = Measured {
        total: context.started.elapsed(),
        load: context.load,
        to_first_piece: first_piece.map(|at| at.duration_since(context.sent_at)),
        generating: first_piece.map(|at| at.elapsed()),
    };
    translator.finish(&now(), &measured, &mut out);
    let _ = writer.write_chunk(&out);
    let _ = writer.finish();
    if client.is_gone() {
        log::debug!("client left at the end of an Ollama stream");
    }
    let usage = scanner.map(|s| s.finish()).unwrap_or_default();
    (
        status,
        usage,
        first_piece.map(|at| at.duration_since(context.sent_at)),
    )
}

// ---------------------------------------------------------------------------------------------
// /api/embed and /api/embeddings
// ---------------------------------------------------------------------------------------------

fn embed(app: &App, mut request: tiny_http::Request, legacy: bool) {
    let started = Instant::now();
    let path = if legacy {
        "/api/embeddings"
    } else {
        "/api/embed"
    };
    let body = match read_json(app, &mut request) {
        Ok(body) => body,
        Err(failure) => return failure.send(request),
    };
    let parsed = match translate::embed_request(&body, legacy) {
        Ok(parsed) => parsed,
        Err(message) => return Failure::new(400, message).send(request),
    };
    let Some(resolved) = resolve(app, &parsed.model) else {
        return not_found(&parsed.model).send(request);
    };
    if !parsed.truncate {
        log::debug!("{path}: truncate=false is not enforced; the upstream decides");
    }
    let client = client_of_request(&request);
    let empty = || {
        if legacy {
            json!({ "embedding": [] })
        } else {
            json!({ "model": parsed.model, "embeddings": [] })
        }
    };
    if parsed.inputs.is_empty() && parsed.keep_alive == Some(KeepAlive::Unload) {
        app.supervisor.unload(Some(&resolved.id));
        return send_json(request, 200, &empty());
    }
    let mut upstream_request = translate::embed_upstream_body(&parsed);
    let upstream_bytes = if parsed.inputs.is_empty() {
        Vec::new()
    } else {
        upstream_request["model"] = json!(resolved.name);
        match upstream_body(app, &resolved, upstream_request) {
            Ok(bytes) => bytes,
            Err(failure) => return failure.send(request),
        }
    };
    let admission = Admission {
        model_id: &resolved.id,
        upstream_path: "/v1/embeddings",
        upstream_body: upstream_bytes,
        keep_alive: parsed.keep_alive,
        path,
        started,
    };
    let (tracked, lease, load) = match admit(app, &request, &client, admission) {
        Ok(admitted) => admitted,
        Err(failure) => return failure.map_or((), |failure| failure.send(request)),
    };
    let entry = &tracked.entry;
    if parsed.inputs.is_empty() {
        drop(lease);
        record_unmetered(app, &resolved.id, path, 200, started);
        return send_json(request, 200, &empty());
    }
    let (value, usage) = match exchange_json(app, lease, entry) {
        Ok(answer) => answer,
        Err(failure) => {
            record_unmetered(app, &resolved.id, path, failure.status, started);
            return failure.send(request);
        }
    };
    let measured = Measured {
        total: started.elapsed(),
        load,
        ..Measured::default()
    };
    let answer = if legacy {
        translate::legacy_embedding_response(&value)
    } else {
        translate::embed_response(&parsed.model, &value, parsed.dimensions, &measured)
    };
    match answer {
        Ok(answer) => {
            record(app, &resolved.id, path, 200, started, usage, None);
            send_json(request, 200, &answer);
        }
        Err(message) => {
            record(app, &resolved.id, path, 502, started, usage, None);
            Failure::new(502, message).send(request);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /api/tags, /api/ps, /api/show
// ---------------------------------------------------------------------------------------------

fn tags(app: &App, request: tiny_http::Request) {
    let config = app.config();
    let fallback = started_at(app);
    let mut models: Vec<Value> = config
        .models
        .values()
        .filter(|model| !model.unlisted)
        .map(|model| catalog::tags_entry(model, &catalog::model_file(model), fallback))
        .collect();
    models.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    send_json(request, 200, &json!({ "models": models }));
}

/// How far in the future "never" is: Go's largest duration, as Ollama reports it.
const FOREVER: Duration = Duration::from_nanos(i64::MAX as u64);

fn ps(app: &App, request: tiny_http::Request) {
    let config = app.config();
    let now = SystemTime::now();
    let memory = app.supervisor.memory_report();
    let mut running: Vec<(Duration, Value)> = app
        .supervisor
        .snapshot()
        .into_iter()
        .filter(|status| status.phase == Phase::Ready)
        .filter_map(|status| {
            let model = config.models.get(&status.model)?;
            let file = catalog::model_file(model);
            let left = status.expires_in.unwrap_or(FOREVER);
            let name = translate::listed_name(&model.id);
            let mut entry = json!({
                "name": name,
                "model": name,
                "size": file.size,
                "digest": catalog::digest(model, &file),
                "details": catalog::details(&file),
                "expires_at": catalog::timestamp(now + left),
                // GPU memory is measured only under `swapd.memory` (and with nvidia-smi).
                "size_vram": memory
                    .as_ref()
                    .and_then(|m| m.models.get(&status.model))
                    .and_then(|m| m.observed.gpu)
                    .unwrap_or(0),
            });
            if let Some(context) = catalog::context_size(&model.cmd) {
                entry["context_length"] = json!(context);
            }
            Some((left, entry))
        })
        .collect();
    // Longest time left first, as Ollama orders them.
    running.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let models: Vec<Value> = running.into_iter().map(|(_, entry)| entry).collect();
    send_json(request, 200, &json!({ "models": models }));
}

fn show(app: &App, mut request: tiny_http::Request) {
    let body = match read_json(app, &mut request) {
        Ok(body) => body,
        Err(failure) => return failure.send(request),
    };
    let requested = requested_model(&body);
    if requested.is_empty() {
        return Failure::new(400, "model is required").send(request);
    }
    let Some(resolved) = resolve(app, requested) else {
        return not_found(requested).send(request);
    };
    let config = app.config();
    let Some(model) = config.models.get(&resolved.id) else {
        return not_found(requested).send(request);
    };
    let file = catalog::model_file(model);
    send_json(request, 200, &catalog::show(model, &file, started_at(app)));
}
