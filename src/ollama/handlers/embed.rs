//! `/api/embed` and the legacy `/api/embeddings`: admission like the OpenAI routes, one
//! `/v1/embeddings` exchange, and the vectors translated back.

use super::{
    admit, exchange_json, not_found, read_json, record, record_unmetered, resolve, send_json,
    upstream_body, Admission, Failure,
};
use crate::ollama::translate;
use crate::ollama::translate::{KeepAlive, Measured};
use crate::proxy::{client_of_request, App};
use serde_json::json;
use std::time::Instant;

pub(super) fn embed(app: &App, mut request: tiny_http::Request, legacy: bool) {
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
        if resolved.peer.is_none() {
            app.supervisor().unload(Some(&resolved.id));
        }
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
        peer: resolved.peer.as_ref(),
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
