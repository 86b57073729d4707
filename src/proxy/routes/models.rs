//! The model list (`/v1/models`), `/running`, and unloading one model.

use serde_json::{json, Value};

use crate::http::{self, ResponseWriter};
use crate::supervisor::Phase;

use super::super::{extract, App};
use super::header;

pub(super) fn list_models(app: &App, request: tiny_http::Request) {
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
            model.capabilities.filter_metadata(&mut llamaswap);
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
            for (key, value) in model.capabilities.openai_fields() {
                record[key] = value;
            }
            if model.capabilities.context > 0 {
                record["meta"]["n_ctx"] = json!(model.capabilities.context);
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
    data.extend(super::super::routing::list_records(
        &app.routing,
        &config,
        &statuses,
        created,
    ));
    data.extend(super::super::peers::model_records(&config, created));
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

pub(super) fn running(app: &App, request: tiny_http::Request) {
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
        body["peers"] = super::super::peers::running_json(app, &config);
    }
    http::send_json(request, 200, &body);
}

pub(super) fn unload_one(app: &App, request: tiny_http::Request, name: &str) {
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
