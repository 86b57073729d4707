//! `/api/chat` and `/api/generate`: translate, admit, exchange with the upstream and answer
//! whole or as an NDJSON stream; an empty prompt loads or unloads the model (`keep_alive`).

use super::{
    acquire, admit, allow_origin, idle_override, not_found, now, read_json, read_whole, record,
    record_unmetered, requested_model, resolve, send_json, upstream_body, upstream_error_message,
    upstream_failure, Admission, Failure, Resolved, Upstream,
};
use crate::activity::inflight::Entry;
use crate::http::ResponseWriter;
use crate::ollama::stream::NdjsonStream;
use crate::ollama::translate::{KeepAlive, Kind, Measured};
use crate::ollama::{catalog, stream, translate};
use crate::proxy::forward::{cancel_message, cancellable};
use crate::proxy::{client_of_request, App, ClientSocket};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub(super) fn generation(app: &App, mut request: tiny_http::Request, kind: Kind) {
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
        peer: resolved.peer.as_ref(),
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
    let (timeout, connect_timeout) = lease.timeouts(app);
    let upstream_request = crate::upstream::Request {
        method: "POST",
        path_and_query: endpoint_path,
        headers: &outgoing.headers,
        body: Some(&outgoing.body),
    };
    let sent_at = Instant::now();
    let sent = app.upstream().send_observed(
        lease.base(),
        &upstream_request,
        Some(timeout),
        connect_timeout,
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
    if resolved.peer.is_some() {
        // A peer loads and unloads its models itself; there is nothing to do here.
    } else if unload {
        app.supervisor().unload(Some(&resolved.id));
    } else {
        match acquire(app, &resolved.id, client, true, path, started, None) {
            Ok(lease) => {
                app.supervisor()
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
    lease: Upstream,
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
        .request_metrics()
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
