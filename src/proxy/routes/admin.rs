//! The daemon's management routes: the gauges behind `/metrics`, `POST /api/config/reload`
//! and `PUT /api/profiles/active`.

use std::time::Duration;

use serde_json::json;

use crate::http;

use super::super::{read_body, App};
use super::body_error;

/// The gauges other parts of swapd own, for `/metrics`.
pub(super) fn gauges(app: &App) -> crate::metrics::Gauges {
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

/// `POST /api/config/reload`: reloads now and answers what changed, or why the new file was
/// rejected (the old config keeps serving).
pub(super) fn reload_config(app: &App, request: tiny_http::Request) {
    let (reply, outcome) = crossbeam_channel::bounded(1);
    let sent = app
        .reloads
        .send(crate::supervisor::ReloadRequest { reply: Some(reply) });
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

/// `PUT /api/profiles/active`.
pub(super) fn set_profile(app: &App, mut request: tiny_http::Request) {
    let body = match read_body(app, &mut request, 64 * 1024) {
        Ok(body) => body,
        Err(error) => return body_error(request, error, 64 * 1024),
    };
    match super::super::routing::set_profile(&app.routing, &app.config(), &body) {
        Ok(answer) => {
            log::info!("profile: active is now {}", answer["active"]);
            http::send_json(request, 200, &answer)
        }
        Err((status, message)) => http::send_error(request, status, &message, None, &[]),
    }
}
