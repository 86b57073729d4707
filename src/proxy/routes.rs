//! Route dispatch: the order every request goes through, authorization, and the helpers the
//! handlers share. The handlers live in the sibling files, one per route family:
//! `inference` (model requests and `/upstream/…`), `models` (`/v1/models`, `/running`,
//! unloading), `streams` (`/logs/stream…` and `/api/events`) and `admin` (`/metrics`, reload,
//! profiles).
//!
//! Order: the access decision for keyless daemons first (`origin`: foreign pages and `Host`
//! names get 403), then as llama-swap: CORS preflight and `/health` (no auth), then auth, then
//! the route. Every error swapd produces goes through [`crate::http::send_error`].

mod admin;
mod inference;
mod models;
mod streams;
mod websocket;

use std::borrow::Cow;

use serde_json::json;

use crate::http::{self, ResponseWriter};

use super::extract;
use super::origin;
use super::{ui_api, App, BodyError};

pub fn handle(app: &App, request: tiny_http::Request, active: usize) {
    let method = request.method().as_str().to_ascii_uppercase();
    let url = request.url().to_string();
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, query),
        None => (url.as_str(), ""),
    };

    if app.hooks.fault_panic_path.as_deref() == Some(path) {
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
    // `/wol-health` is what llama-swap's wake-on-LAN proxy polls.
    if path == "/health" || path == "/wol-health" {
        return http::send_text(request, 200, "OK");
    }
    if method == "GET" && path == "/favicon.ico" {
        // Open, as in llama-swap, so that a browser on an API page of a keyed swapd gets no
        // login dialog for it; swapd has no icon (its UI declares an empty one).
        let cache = [("Cache-Control", "max-age=86400")];
        let _ = ResponseWriter::send_whole(request, 204, &cache, b"");
        return;
    }
    if method == "GET" && path == "/upstream" {
        let _ = ResponseWriter::send_whole(request, 302, &[("Location", "/ui/models")], b"");
        return;
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

    let mut request = request;
    for dialect in &app.dialects {
        match dialect(app, request, &method, path) {
            Some(unclaimed) => request = unclaimed,
            None => return,
        }
    }
    if let Some((source, upstream_path)) = extract::route(&method, path) {
        return inference::model_request(app, request, &method, source, upstream_path, query);
    }
    match (method.as_str(), path) {
        ("GET", "/v1/models") | ("GET", "/models") => models::list_models(app, request),
        ("GET", "/running") => models::running(app, request),
        ("GET", "/unload") => {
            app.supervisor.unload(None);
            http::send_text(request, 200, "OK")
        }
        ("POST", "/api/models/unload") => {
            app.supervisor.unload(None);
            http::send_json(request, 200, &json!({"msg": "ok"}))
        }
        ("GET", "/metrics") => {
            let mut text = app.metrics.render(&admin::gauges(app));
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
        ("POST", "/api/config/reload") => admin::reload_config(app, request),
        ("GET", "/api/metrics") => http::send_json(request, 200, &app.metrics.rows_json()),
        ("GET", "/api/events") => streams::events(app, request),
        ("GET", "/api/profiles") => http::send_json(
            request,
            200,
            &super::routing::profiles_json(&app.routing, &app.config()),
        ),
        ("PUT", "/api/profiles/active") => admin::set_profile(app, request),
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
                return models::unload_one(app, request, &path["/api/models/unload/".len()..]);
            }
            if method == "GET" && (path == "/logs/stream" || path.starts_with("/logs/stream/")) {
                return streams::log_stream(app, request, path, query);
            }
            if let Some(rest) = path.strip_prefix("/upstream/") {
                return inference::upstream(app, request, &method, rest, query);
            }
            if let Some(rest) = path.strip_prefix("/comfyui/") {
                return inference::comfyui(app, request, &method, rest, query);
            }
            if path == "/comfyui" {
                return redirect_to_directory(request, &method, "/comfyui/", query);
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

/// Redirects to `directory` (a path ending in `/`, for the relative URLs of a page served
/// there), keeping the query: 301 for GET and HEAD, 308 (method kept) otherwise, as llama-swap
/// does for `/upstream/<model>` and `/comfyui`.
fn redirect_to_directory(request: tiny_http::Request, method: &str, directory: &str, query: &str) {
    let location = crate::upstream::path_and_query(directory, query);
    let status = if matches!(method, "GET" | "HEAD") {
        301
    } else {
        308
    };
    let _ = ResponseWriter::send_whole(request, status, &[("Location", &location)], b"");
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

/// Answers a request whose body could not be read (see [`BodyError`]).
fn body_error(request: tiny_http::Request, error: BodyError, limit: usize) {
    let (status, message) = error.status_and_message(limit);
    http::send_error(request, status, &message, None, &[]);
}

/// The head of every server-sent event stream swapd produces itself.
const SSE_HEADERS: &[(&str, &str)] = &[
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
];
