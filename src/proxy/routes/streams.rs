//! The long-lived streams swapd produces itself: `/logs/stream[/<id>]` (a log buffer's
//! history, then live) and `/api/events` (llama-swap's server-sent events for its UI).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{self, ResponseWriter};

use super::super::{client_of_request, extract, App};
use super::SSE_HEADERS;

pub(super) fn log_stream(app: &App, request: tiny_http::Request, path: &str, query: &str) {
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
            let mut entry = json!({
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
            });
            let flags = model.capabilities.flags();
            if !flags.is_empty() {
                entry["capabilities"] = Value::Object(flags);
            }
            if model.capabilities.context > 0 {
                entry["context_length"] = json!(model.capabilities.context);
            }
            entry
        })
        .collect();
    models.extend(super::super::peers::model_status(app, &config));
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
pub(super) fn events(app: &App, request: tiny_http::Request) {
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
