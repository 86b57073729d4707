//! The Ollama endpoints' handlers: read the body, resolve the model, translate, take a lease
//! exactly as the OpenAI routes do, exchange with the upstream, translate back.
//!
//! Decisions live in the pure modules ([`super::translate`], [`super::stream`],
//! [`super::catalog`]); scheduling in the supervisor. Every error on these routes is Ollama's
//! `{"error": "..."}` with the status the OpenAI routes would use; once a stream has started,
//! an error is one more `{"error"}` line, which Ollama clients check for on every line.
//!
//! This file holds the dispatch and what every route shares (replies, model resolution,
//! admission, accounting, the upstream exchange); `generate.rs` (`/api/chat`,
//! `/api/generate`), `embed.rs` and `listing.rs` (`/api/tags`, `/api/ps`, `/api/show`) hold
//! the routes themselves.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::activity::inflight::{Entry, Tracked};
use crate::config::PeerConfig;
use crate::http::ResponseWriter;
use crate::proxy::acquire::{wait_for_lease, Waited};
use crate::proxy::forward::{cancel_message, cancellable, Outgoing};
use crate::proxy::{read_body, App, ClientSocket};
use crate::supervisor::{IdleOverride, Lease};
use crate::upstream::UpstreamError;

use super::catalog;
use super::translate::{self, KeepAlive, Kind};
use super::Route;

mod embed;
mod generate;
mod listing;

use embed::embed;
use generate::generation;
use listing::{ps, show, tags};

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
        .checked_sub(app.started_at().elapsed())
        .unwrap_or_else(SystemTime::now)
}

// ---------------------------------------------------------------------------------------------
// Request reading and model lookup
// ---------------------------------------------------------------------------------------------

/// The request body as JSON.
fn read_json(app: &App, request: &mut tiny_http::Request) -> Result<Value, Failure> {
    let limit = app.limits().max_body_bytes;
    let body = read_body(app, request, limit).map_err(|error| {
        let (status, message) = error.status_and_message(limit);
        Failure::new(status, message)
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Failure::new(400, "missing request body"));
    }
    serde_json::from_slice(&body)
        .map_err(|error| Failure::new(400, format!("request body is not valid JSON: {error}")))
}

/// A requested model found in the config: its id (a peer's model: `<peer>/<model>`) and the
/// name it was found by.
struct Resolved {
    id: String,
    name: String,
    /// Set for a peer's model.
    peer: Option<PeerModel>,
}

/// A peer's model: the peer, and the name the peer knows the model by.
struct PeerModel {
    peer: PeerConfig,
    model: String,
}

/// Finds a model by the name a client sent: exactly, without `:latest`, then ignoring case
/// (Ollama matches names case-insensitively); local models first, then peers' models (by
/// `<peer>/<model>`, or a bare name only one peer has), as on the OpenAI routes.
fn resolve(app: &App, requested: &str) -> Option<Resolved> {
    let config = app.config();
    let names = translate::lookup_names(requested);
    let local = |id: &str, name: &str| Resolved {
        id: id.to_string(),
        name: name.to_string(),
        peer: None,
    };
    for name in &names {
        if let Some(id) = config.resolve_model(name) {
            return Some(local(id, name));
        }
    }
    for name in &names {
        if let Some(id) = config
            .models
            .keys()
            .find(|id| id.eq_ignore_ascii_case(name))
        {
            return Some(local(id, id));
        }
    }
    names.iter().find_map(|name| {
        let (peer, model) = config.peers.resolve(name)?;
        Some(Resolved {
            id: crate::config::peer_fqn(&peer.id, model),
            name: name.to_string(),
            peer: Some(PeerModel {
                peer: peer.clone(),
                model: model.to_string(),
            }),
        })
    })
}

/// Where a translated request goes: a local model, through the lease that keeps it loaded, or
/// a peer's model.
enum Upstream {
    Local(Lease),
    Peer { id: String, peer: PeerConfig },
}

impl Upstream {
    fn base(&self) -> &str {
        match self {
            Upstream::Local(lease) => lease.upstream(),
            Upstream::Peer { peer, .. } => &peer.proxy,
        }
    }

    /// The model's id, for messages.
    fn model(&self) -> &str {
        match self {
            Upstream::Local(lease) => lease.model(),
            Upstream::Peer { id, .. } => id,
        }
    }

    /// The read and connect timeouts: the model's or the peer's own, else swapd's.
    fn timeouts(&self, app: &App) -> (Duration, Option<Duration>) {
        match self {
            Upstream::Local(lease) => app.model_timeouts(lease.model()),
            Upstream::Peer { peer, .. } => app.peer_timeouts(peer),
        }
    }
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
    let failure = match wait_for_lease(app, model_id, client, explicit_load, tracked) {
        Ok(lease) => return Ok(lease),
        Err(Waited::ClientLeft) => return Err(None),
        Err(Waited::Cancelled(message)) => Failure::new(503, message),
        Err(Waited::Failed(error)) => {
            // The OpenAI routes' status; Ollama's errors carry no code.
            let (status, _, _) = crate::proxy::acquire::error_status(&error);
            let mut failure = Failure::new(status, error.to_string());
            failure.retry_after = status == 429;
            failure
        }
    };
    record_unmetered(app, model_id, path, failure.status, started);
    Err(Some(failure))
}

/// A translated request about to be served: what [`admit`] needs.
struct Admission<'a> {
    model_id: &'a str,
    /// Set for a peer's model: no lease, no `keep_alive`.
    peer: Option<&'a PeerModel>,
    /// The OpenAI-compatible endpoint and body sent upstream.
    upstream_path: &'a str,
    upstream_body: Vec<u8>,
    keep_alive: Option<KeepAlive>,
    /// The Ollama route, for the metrics.
    path: &'a str,
    started: Instant,
}

/// Registers the request in flight (the entry, for `/api/events` and the operator's cancel,
/// owns the upstream request from here on), takes a lease on a local model and applies
/// `keep_alive` while the lease is held (so even "unload now" cannot stop the model before this
/// request has run). Returns the entry, where the request goes and the time the model took to
/// be ready.
fn admit<'a>(
    app: &'a App,
    request: &tiny_http::Request,
    client: &ClientSocket,
    admission: Admission<'_>,
) -> Result<(Tracked<'a>, Upstream, Duration), Option<Failure>> {
    let model_id = admission.model_id;
    let headers = match admission.peer {
        None => upstream_headers(request),
        Some(peer) => {
            crate::proxy::peers::outgoing_headers(app, request, &peer.peer, model_id, true)
                .map_err(|message| {
                    record_unmetered(app, model_id, admission.path, 508, admission.started);
                    Some(Failure::new(508, message))
                })?
        }
    };
    let outgoing = Outgoing {
        method: "POST".to_string(),
        path_and_query: admission.upstream_path.to_string(),
        headers,
        body: admission.upstream_body,
        metered: true,
    };
    let tracked = app
        .inflight()
        .begin(model_id, outgoing, request.remote_addr().copied());
    if let Some(peer) = admission.peer {
        // A peer runs its models itself: nothing to wait for, and `keep_alive` is its business.
        app.metrics().label_peer(model_id, &peer.peer.id);
        let upstream = Upstream::Peer {
            id: model_id.to_string(),
            peer: peer.peer.clone(),
        };
        return Ok((tracked, upstream, Duration::ZERO));
    }
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
    app.supervisor()
        .set_idle(model_id, idle_override(admission.keep_alive));
    Ok((tracked, Upstream::Local(lease), load))
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
    if !app.request_metrics() {
        return;
    }
    app.metrics().record_request(crate::metrics::RequestRecord {
        model: model_id,
        path,
        status,
        duration: started.elapsed(),
        usage,
        time_to_first_token,
    });
    // The Ollama routes are inference requests too: they get activity rows (the response
    // type is not tracked here, and a failure's row carries only its status).
    app.activity().record(crate::activity::Finished {
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
/// routes; for a peer's model, the name the peer knows and the peer's `filters`.
fn upstream_body(app: &App, resolved: &Resolved, mut body: Value) -> Result<Vec<u8>, Failure> {
    if let Some(peer) = &resolved.peer {
        body["model"] = json!(peer.model);
        let bytes = serde_json::to_vec(&body).expect("a JSON value always serialises");
        let filters = &peer.peer.filters;
        if !filters.change_body_for(&resolved.name) {
            return Ok(bytes);
        }
        return crate::proxy::extract::rewrite_json_with(&bytes, filters, &resolved.name, None)
            .map_err(|error| Failure::new(400, error.to_string()));
    }
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
    upstream: &Upstream,
    path: &str,
    error: &UpstreamError,
    timeout: Duration,
) -> Failure {
    let model = upstream.model();
    let url = format!("{}{path}", upstream.base());
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
    lease: Upstream,
    tracked: &Entry,
) -> Result<(Value, crate::metrics::TokenUsage), Failure> {
    let (timeout, connect_timeout) = lease.timeouts(app);
    let outgoing = tracked.outgoing();
    let path = outgoing.path_and_query.as_str();
    let request = crate::upstream::Request {
        method: "POST",
        path_and_query: path,
        headers: &outgoing.headers,
        body: Some(&outgoing.body),
    };
    let cancelled = || Failure::new(503, cancel_message(lease.model()));
    let sent = app.upstream().send_observed(
        lease.base(),
        &request,
        Some(timeout),
        connect_timeout,
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
