//! Model requests (`/v1/chat/completions` and the other inference routes) and `/upstream/…`:
//! body read, profile pins and selectors, model lookup and body rewrite, then acquiring the
//! model (with llama-swap's `sendLoadingState` stream while it loads) and forwarding.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::COMFYUI_MODEL_ID;
use crate::http::{self, ResponseWriter};
use crate::supervisor::{AcquireError, Phase, Reply};

use super::super::extract::{self, ModelSource};
use super::super::forward::{self, Destination, Outgoing};
use super::super::{client_of_request, read_body, App};
use super::{body_error, header, SSE_HEADERS};

/// Client headers to pass upstream (everything except hop-by-hop ones), as the header lines
/// they will be sent as: one buffer instead of two strings per header.
pub(super) fn forwarded_headers(request: &tiny_http::Request) -> Vec<u8> {
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

pub(super) fn model_request(
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
            Err(error) => return body_error(request, error, limits.max_body_bytes),
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
            let call = super::super::peers::PeerCall {
                method,
                source,
                passthrough: false,
                body,
                requested: &requested.model,
                content_type: &content_type,
                upstream_path,
                query,
            };
            return super::super::peers::forward(app, request, peer, peer_model, call);
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
    let outgoing = outgoing(&request, method, &upstream_path, query, body, source);
    proxy_to(app, request, &model_id, outgoing, loading_state);
}

/// A local model request as it goes upstream: metered unless its model came from the query
/// (a `GET` route).
fn outgoing(
    request: &tiny_http::Request,
    method: &str,
    path: &str,
    query: &str,
    body: Vec<u8>,
    source: ModelSource,
) -> Outgoing {
    Outgoing {
        method: method.to_string(),
        path_and_query: crate::upstream::path_and_query(path, query),
        headers: forwarded_headers(request),
        body,
        metered: !matches!(source, ModelSource::Query),
    }
}

/// The request after profile pins and selectors: the model it now names, its body and query
/// rewritten to match, and the selector's in-flight lease (held until the request ends).
type Routed = (
    extract::Requested,
    Vec<u8>,
    String,
    Option<super::super::routing::SelectorLease>,
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
) -> Result<Routed, super::super::routing::RouteError> {
    let original = requested.model.clone();
    if let Some(pinned) = super::super::routing::apply_pin(&app.routing, config, &requested.model)?
    {
        requested.model = pinned;
    }
    let mut lease = None;
    if let Some(selector) = config.selectors.get(&requested.model) {
        let statuses = app.supervisor.snapshot();
        let (target, selector_lease) =
            super::super::routing::select(&app.routing, selector, &statuses)?;
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
            super::super::routing::replace_json_model(&body, &requested.model).map_err(bad)?,
            query.to_string(),
        ),
        ModelSource::Multipart => (
            extract::rewrite_multipart_model(&body, content_type, &requested.model)
                .map_err(|error| bad(error.to_string()))?,
            query.to_string(),
        ),
        ModelSource::Query => (
            body,
            super::super::routing::replace_query_model(query, &requested.model),
        ),
    };
    Ok((requested, body, query, lease))
}

pub(super) fn upstream(
    app: &App,
    mut request: tiny_http::Request,
    method: &str,
    rest: &str,
    query: &str,
) {
    let config = app.config();
    // The active profile's pins apply to /upstream paths too; selectors do not.
    let pinned = match super::super::routing::apply_upstream_pin(&app.routing, &config, rest) {
        Ok(pinned) => pinned,
        Err((status, message)) => return http::send_error(request, status, &message, None, &[]),
    };
    let rest = pinned.as_deref().unwrap_or(rest);
    let Some((target, remainder)) = extract::upstream_target(&config, rest) else {
        return http::send_error(
            request,
            404,
            &format!("no model matches the path /upstream/{rest}"),
            Some("model_not_found"),
            &[],
        );
    };
    if remainder.is_empty() {
        let directory = format!("/upstream/{rest}/");
        return super::redirect_to_directory(request, method, &directory, query);
    }
    if let extract::UpstreamTarget::Local(model_id) = &target {
        // A static file of a model's own web UI never loads the model (a stale browser tab
        // would otherwise swap it back in): 409 unless it is ready.
        if config
            .upstream_ignore_paths
            .matches(&extract::percent_decode(remainder))
            && !is_ready(app, model_id)
        {
            let message =
                format!("model {model_id} is not loaded; path matches upstream.ignorePaths");
            return http::send_error(request, 409, &message, None, &[]);
        }
    }
    if super::websocket::is_upgrade(&request) {
        let path = crate::upstream::path_and_query(remainder, query);
        return match &target {
            extract::UpstreamTarget::Local(model_id) => {
                super::websocket::pass(app, request, model_id, &path)
            }
            extract::UpstreamTarget::Peer(name) => match config.peers.resolve(name) {
                Some((peer, _)) => super::websocket::pass_to_peer(app, request, name, peer, &path),
                None => http::send_error(request, 404, "peer model not found", None, &[]),
            },
        };
    }
    let limits = app.limits();
    let body = match read_body(app, &mut request, limits.max_body_bytes) {
        Ok(body) => body,
        Err(error) => return body_error(request, error, limits.max_body_bytes),
    };
    // Only POSTs to an inference route are metered (a GET route's source is `Query`).
    let source = match extract::route(method, remainder) {
        Some((source, _)) if method == "POST" => source,
        _ => ModelSource::Query,
    };
    let model_id = match target {
        extract::UpstreamTarget::Local(model_id) => model_id,
        extract::UpstreamTarget::Peer(name) => {
            // `upstream_target` named it from this same config, so it resolves.
            let Some((peer, peer_model)) = config.peers.resolve(&name) else {
                return http::send_error(request, 404, "peer model not found", None, &[]);
            };
            let content_type = header(&request, "Content-Type").unwrap_or("").to_string();
            let call = super::super::peers::PeerCall {
                method,
                source,
                passthrough: true,
                body,
                requested: &name,
                content_type: &content_type,
                upstream_path: Cow::Owned(remainder.to_string()),
                query,
            };
            return super::super::peers::forward(app, request, peer, peer_model, call);
        }
    };
    let outgoing = outgoing(&request, method, remainder, query, body, source);
    proxy_to(app, request, &model_id, outgoing, false);
}

/// `/comfyui/<rest>`: everything under it goes to the model `comfyui_auto`, with the prefix
/// taken off. Only `/comfyui/` itself may load the model; any other path gets 409 while it is
/// not ready, so that an open ComfyUI tab cannot load it again after it was unloaded.
pub(super) fn comfyui(
    app: &App,
    mut request: tiny_http::Request,
    method: &str,
    rest: &str,
    query: &str,
) {
    if !app.config().models.contains_key(COMFYUI_MODEL_ID) {
        let message = format!("local model {COMFYUI_MODEL_ID} not found");
        return http::send_error(request, 404, &message, Some("model_not_found"), &[]);
    }
    let remainder = format!("/{rest}");
    if extract::percent_decode(&remainder) != "/" && !is_ready(app, COMFYUI_MODEL_ID) {
        let message =
            format!("model {COMFYUI_MODEL_ID} is not loaded; only /comfyui/ can start it");
        return http::send_error(request, 409, &message, None, &[]);
    }
    if super::websocket::is_upgrade(&request) {
        let path = crate::upstream::path_and_query(&remainder, query);
        return super::websocket::pass(app, request, COMFYUI_MODEL_ID, &path);
    }
    let limits = app.limits();
    let body = match read_body(app, &mut request, limits.max_body_bytes) {
        Ok(body) => body,
        Err(error) => return body_error(request, error, limits.max_body_bytes),
    };
    let outgoing = outgoing(
        &request,
        method,
        &remainder,
        query,
        body,
        ModelSource::Query,
    );
    proxy_to(app, request, COMFYUI_MODEL_ID, outgoing, false);
}

/// Whether the local model `model_id` is ready to serve right now.
pub(super) fn is_ready(app: &App, model_id: &str) -> bool {
    app.supervisor
        .snapshot()
        .iter()
        .any(|status| status.model == model_id && status.phase == Phase::Ready)
}

/// Answers a request whose model could not be had.
pub(super) fn send_acquire_error(request: tiny_http::Request, error: &AcquireError) {
    let (status, code, extra) = super::super::acquire::error_status(error);
    http::send_error(request, status, &error.to_string(), code, extra);
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
                let (status, code, extra) = super::super::acquire::error_status(&error);
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
        "{} {} model={model_id} {} {}B {}",
        outgoing.method,
        outgoing.path_and_query,
        outcome.status,
        outcome.bytes,
        forward::Millis(started.elapsed())
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
    if !app.hooks.request_metrics {
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
