//! `/api/tags`, `/api/ps` and `/api/show`: what swapd tells Ollama clients about its models,
//! from the config and the supervisor's running set (the wording comes from
//! [`crate::ollama::catalog`]).

use super::{not_found, read_json, requested_model, resolve, send_json, started_at, Failure};
use crate::ollama::{catalog, translate};
use crate::proxy::App;
use crate::supervisor::Phase;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

pub(super) fn tags(app: &App, request: tiny_http::Request) {
    let config = app.config();
    let fallback = started_at(app);
    let mut models: Vec<Value> = config
        .models
        .values()
        .filter(|model| !model.unlisted)
        .map(|model| catalog::tags_entry(model, &catalog::model_file(model), fallback))
        .collect();
    // Peers' models after the local ones, by `<peer>/<model>` (as `/v1/models` lists them).
    for peer in config.peers.peers.values() {
        for model in &peer.models {
            let fqn = crate::config::peer_fqn(&peer.id, model);
            models.push(catalog::peer_tags_entry(&fqn, fallback));
        }
    }
    models.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    send_json(request, 200, &json!({ "models": models }));
}

/// How far in the future "never" is: Go's largest duration, as Ollama reports it.
const FOREVER: Duration = Duration::from_nanos(i64::MAX as u64);

pub(super) fn ps(app: &App, request: tiny_http::Request) {
    let config = app.config();
    let now = SystemTime::now();
    let memory = app.supervisor().memory_report();
    let mut running: Vec<(Duration, Value)> = app
        .supervisor()
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

pub(super) fn show(app: &App, mut request: tiny_http::Request) {
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
    if let Some(peer) = &resolved.peer {
        let answer = catalog::peer_show(&resolved.id, &peer.peer.id, started_at(app));
        return send_json(request, 200, &answer);
    }
    let config = app.config();
    let Some(model) = config.models.get(&resolved.id) else {
        return not_found(requested).send(request);
    };
    let file = catalog::model_file(model);
    send_json(request, 200, &catalog::show(model, &file, started_at(app)));
}
