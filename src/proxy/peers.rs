//! Forwarding to peers (`peers:` in the config): other swapd, llama-swap or OpenAI-compatible
//! servers whose models this swapd routes to without scheduling anything.
//!
//! A peer request is a plain forward: no lease, no queue, no concurrency limit (the peer
//! schedules its own models). The body's `model` becomes the peer's own name for it, the
//! peer's filters apply (`useModelName` does not), `apiKey` replaces the client's credentials,
//! and `X-Forwarded-For` / `Via` record the hop. Each swapd has a random instance token that it
//! puts in `Via`; a request that arrives carrying this swapd's own token and would go to a
//! peer again has come round a loop, and is answered 508 instead of recursing.
//!
//! Reachability: one background thread checks every peer (`GET /v1/models`) at a modest
//! interval and keeps the last result (reachable, last error, round-trip time) in a table that
//! `/running`, `/metrics` and `/api/events` read. A request that fails to reach a peer wakes
//! the checker at once, so the table does not wait for the next round to say so.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::config::{Config, PeerConfig};
use crate::http;

use super::extract::{self, ModelSource};
use super::forward::{self, Destination, Outgoing, Target, TargetKind};
use super::{client_of_request, App};

/// How often every peer is checked when nothing else asks (a test hook may change it, see
/// `hooks.rs`).
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// The longest a reachability check waits for the peer's answer.
const CHECK_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a check's answer that is read.
const CHECK_MAX_BODY: usize = 1024 * 1024;

/// What the last check of one peer found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerHealth {
    /// `None` until the first check has finished.
    pub reachable: Option<bool>,
    pub last_error: Option<String>,
    /// Round-trip time of the last successful check.
    pub rtt: Option<Duration>,
    /// When the last check finished (Unix milliseconds).
    pub checked_at_ms: u64,
}

/// Peer state shared by connection threads and the checker thread.
pub struct PeerRuntime {
    /// This swapd's token in `Via` (`1.1 swapd-<token>`), random per process.
    token: String,
    health: Mutex<BTreeMap<String, PeerHealth>>,
    wake: crossbeam_channel::Sender<()>,
    woken: crossbeam_channel::Receiver<()>,
}

impl Default for PeerRuntime {
    fn default() -> PeerRuntime {
        PeerRuntime::new()
    }
}

impl PeerRuntime {
    pub fn new() -> PeerRuntime {
        let (wake, woken) = crossbeam_channel::bounded(1);
        PeerRuntime {
            token: instance_token(),
            health: Mutex::new(BTreeMap::new()),
            wake,
            woken,
        }
    }

    /// The `Via` entry this swapd adds.
    pub fn via_entry(&self) -> String {
        format!("1.1 swapd-{}", self.token)
    }

    /// Whether a `Via` header value shows this request already passed through this swapd.
    pub fn has_passed_here(&self, via: &str) -> bool {
        via.split(',')
            .any(|entry| entry.trim().ends_with(&format!("swapd-{}", self.token)))
    }

    pub fn health(&self) -> BTreeMap<String, PeerHealth> {
        self.health
            .lock()
            .expect("the peer health lock is never held across a panic")
            .clone()
    }

    fn set_health(&self, peer: &str, health: PeerHealth) {
        self.health
            .lock()
            .expect("the peer health lock is never held across a panic")
            .insert(peer.to_string(), health);
    }

    /// Asks the checker to run now (a request just failed to reach a peer).
    fn wake_checker(&self) {
        let _ = self.wake.try_send(());
    }
}

/// A random token for this process: std's hasher keys are random per process.
fn instance_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", hasher.finish())
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the route handler read from a model request, handed over when the model is a peer's.
pub struct PeerCall<'a> {
    pub method: &'a str,
    /// Where the model was named; for an `/upstream/` request, the route its remaining path
    /// would take (`Query` when it is no inference route: not metered).
    pub source: ModelSource,
    /// An `/upstream/<name>/…` request: body and query go as they are, except that a JSON
    /// body whose `model` is the name the path gave is renamed (and filtered) as a model
    /// request would be.
    pub passthrough: bool,
    pub body: Vec<u8>,
    pub requested: &'a str,
    pub content_type: &'a str,
    pub upstream_path: Cow<'static, str>,
    pub query: &'a str,
}

/// Forwards a model request to the peer that serves `peer_model`, and records it.
pub fn forward(
    app: &App,
    request: tiny_http::Request,
    peer: &PeerConfig,
    peer_model: &str,
    call: PeerCall<'_>,
) {
    let started = Instant::now();
    let via = super::routes::header(&request, "Via")
        .unwrap_or("")
        .to_string();
    if let Some(message) = loop_message(app, &via, peer, call.requested) {
        return http::send_error(request, 508, &message, Some("loop_detected"), &[]);
    }
    let renamed = call.requested != peer_model;
    let rewrite = !call.passthrough
        || (matches!(call.source, ModelSource::JsonBody)
            && extract::from_json(&call.body).is_ok_and(|named| named.model == call.requested));
    let body = match call.source {
        _ if !rewrite => call.body,
        ModelSource::JsonBody => {
            if renamed || peer.filters.change_body_for(call.requested) {
                let new_model = renamed.then_some(peer_model);
                let filters = &peer.filters;
                match extract::rewrite_json_with(&call.body, filters, call.requested, new_model) {
                    Ok(body) => body,
                    Err(error) => {
                        return http::send_error(request, 400, &error.to_string(), None, &[])
                    }
                }
            } else {
                call.body
            }
        }
        ModelSource::Multipart if renamed => {
            match extract::rewrite_multipart_model(&call.body, call.content_type, peer_model) {
                Ok(body) => body,
                Err(error) => return http::send_error(request, 400, &error.to_string(), None, &[]),
            }
        }
        _ => call.body,
    };
    let query = match call.source {
        ModelSource::Query if renamed && rewrite => {
            Cow::Owned(rewrite_query_model(call.query, peer_model))
        }
        _ => Cow::Borrowed(call.query),
    };
    let outgoing = Outgoing {
        method: call.method.to_string(),
        path_and_query: crate::upstream::path_and_query(&call.upstream_path, &query),
        headers: peer_headers(app, &request, peer, &via, None),
        body,
        metered: !matches!(call.source, ModelSource::Query),
    };
    let client = client_of_request(&request);
    // Peer requests are in flight (and cancellable) like local ones.
    let tracked = app
        .inflight
        .begin(call.requested, outgoing, request.remote_addr().copied());
    let outgoing = tracked.entry.outgoing();
    let (read_timeout, connect_timeout) = app.peer_timeouts(peer);
    let target = Target {
        base: &peer.proxy,
        kind: TargetKind::Peer {
            id: &peer.id,
            address: peer.address(),
        },
        read_timeout,
        connect_timeout,
    };
    let outcome = forward::forward_to(
        app,
        Destination::Fresh(request),
        &client,
        None,
        &target,
        outgoing,
        &tracked.entry,
    );
    if outcome.status == 502 && outcome.bytes == 0 {
        app.peers.wake_checker();
    }
    if app.request_metrics() {
        let path = outgoing
            .path_and_query
            .split('?')
            .next()
            .unwrap_or_default();
        app.metrics.label_peer(call.requested, &peer.id);
        app.metrics.record_request(crate::metrics::RequestRecord {
            model: call.requested,
            path,
            status: outcome.status,
            duration: started.elapsed(),
            usage: outcome.usage,
            time_to_first_token: outcome.time_to_first_token,
        });
        if outgoing.metered {
            // llama-swap records peer requests in its activity log too.
            forward::record_activity(app, call.requested, path, started.elapsed(), &outcome);
        }
    }
    log::info!(
        model = call.requested;
        "{} {} model={} peer={} {} {}B {}",
        outgoing.method,
        outgoing.path_and_query,
        call.requested,
        peer.id,
        outcome.status,
        outcome.bytes,
        forward::Millis(started.elapsed())
    );
}

/// The error (logged) for a request that already passed through this swapd, by its `Via`.
fn loop_message(app: &App, via: &str, peer: &PeerConfig, requested: &str) -> Option<String> {
    if !app.peers.has_passed_here(via) {
        return None;
    }
    let message = format!(
        "loop detected: this request for '{requested}' already passed through this swapd (Via: {via}); peer '{}' at {} leads back here",
        peer.id,
        peer.address()
    );
    log::warn!("{message}");
    Some(message)
}

/// The header lines for a request that swapd sends to `peer` outside [`forward`]: the client's
/// headers as for any peer request (its credentials replaced by the peer's `apiKey`, the hop
/// added to `X-Forwarded-For` and `Via`), and with `json` (an Ollama request that swapd
/// translated to the OpenAI API) `Content-Type: application/json` instead of the client's.
/// `Err` with the message (logged) when the request already passed through this swapd.
pub fn outgoing_headers(
    app: &App,
    request: &tiny_http::Request,
    peer: &PeerConfig,
    requested: &str,
    json: bool,
) -> Result<Vec<u8>, String> {
    let via = super::routes::header(request, "Via").unwrap_or("");
    if let Some(message) = loop_message(app, via, peer, requested) {
        return Err(message);
    }
    if !json {
        return Ok(peer_headers(app, request, peer, via, None));
    }
    let mut lines = b"Content-Type: application/json\r\n".to_vec();
    lines.extend_from_slice(&peer_headers(app, request, peer, via, Some("content-type")));
    Ok(lines)
}

/// Replaces the value of `model=` in a query string.
fn rewrite_query_model(query: &str, model: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("model", _)) => format!("model={}", percent_encode(model)),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The client's headers for the peer: hop-by-hop ones dropped (the upstream client writes
/// `Host` from the peer URL), credentials replaced when the peer has an `apiKey`, and the hop
/// recorded in `X-Forwarded-For` and `Via`.
/// `skip` names one more client header to leave out.
fn peer_headers(
    app: &App,
    request: &tiny_http::Request,
    peer: &PeerConfig,
    via: &str,
    skip: Option<&str>,
) -> Vec<u8> {
    let mut lines = Vec::with_capacity(512);
    let mut forwarded_for = String::new();
    for header in request.headers() {
        let name = header.field.as_str().as_str();
        if forward::is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("via")
            || skip.is_some_and(|skip| name.eq_ignore_ascii_case(skip))
        {
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for = header.value.as_str().to_string();
            continue;
        }
        if peer.api_key.is_some()
            && (name.eq_ignore_ascii_case("authorization")
                || name.eq_ignore_ascii_case("x-api-key"))
        {
            continue;
        }
        push_header(&mut lines, name, header.value.as_str());
    }
    if let Some(key) = &peer.api_key {
        push_header(&mut lines, "Authorization", &format!("Bearer {key}"));
        push_header(&mut lines, "x-api-key", key);
    }
    if let Some(client) = request.remote_addr() {
        if !forwarded_for.is_empty() {
            forwarded_for.push_str(", ");
        }
        forwarded_for.push_str(&client.ip().to_string());
    }
    if !forwarded_for.is_empty() {
        push_header(&mut lines, "X-Forwarded-For", &forwarded_for);
    }
    let mut via = via.trim().to_string();
    if !via.is_empty() {
        via.push_str(", ");
    }
    via.push_str(&app.peers.via_entry());
    push_header(&mut lines, "Via", &via);
    lines
}

fn push_header(lines: &mut Vec<u8>, name: &str, value: &str) {
    lines.extend_from_slice(name.as_bytes());
    lines.extend_from_slice(b": ");
    lines.extend_from_slice(value.as_bytes());
    lines.extend_from_slice(b"\r\n");
}

/// `/v1/models` records of every peer model, by FQN, in llama-swap's shape.
pub fn model_records(config: &Config, created: u64) -> Vec<Value> {
    let mut records = Vec::new();
    for peer in config.peers.peers.values() {
        for model in &peer.models {
            records.push(json!({
                "id": crate::config::peer_fqn(&peer.id, model),
                "object": "model",
                "created": created,
                "owned_by": peer.id,
                "name": format!("{}: {model}", peer.id),
                "meta": {"llamaswap": {"type": "peer", "peerID": peer.id, "modelID": model}},
                "status": {"value": "unloaded"},
            }));
        }
    }
    records
}

/// Peer models in the `/api/events` `modelStatus` list (state `peer`, reachability alongside).
pub fn model_status(app: &App, config: &Config) -> Vec<Value> {
    let health = app.peers.health();
    let mut entries = Vec::new();
    for peer in config.peers.peers.values() {
        let reachable = health.get(&peer.id).and_then(|h| h.reachable);
        for model in &peer.models {
            entries.push(json!({
                "id": crate::config::peer_fqn(&peer.id, model),
                "name": format!("{}: {model}", peer.id),
                "description": "",
                "state": "peer",
                "unlisted": false,
                "aliases": [],
                "peerID": peer.id,
                "reachable": reachable,
            }));
        }
    }
    entries
}

/// The `peers` section of `GET /running`.
pub fn running_json(app: &App, config: &Config) -> Value {
    let health = app.peers.health();
    let mut peers = serde_json::Map::new();
    for peer in config.peers.peers.values() {
        let known = health.get(&peer.id).cloned().unwrap_or_default();
        peers.insert(
            peer.id.clone(),
            json!({
                "proxy": peer.proxy,
                "models": peer.models,
                "reachable": known.reachable,
                "lastError": known.last_error,
                "rttMs": known.rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
                "checkedAt": (known.checked_at_ms > 0).then_some(known.checked_at_ms),
            }),
        );
    }
    Value::Object(peers)
}

/// `/metrics` lines for peer reachability.
pub fn render_metrics(app: &App, config: &Config) -> String {
    use std::fmt::Write as _;
    if config.peers.is_empty() {
        return String::new();
    }
    let health = app.peers.health();
    let mut out = String::new();
    out.push_str("# HELP swapd_peer_up 1 if the last check reached the peer, 0 if not.\n# TYPE swapd_peer_up gauge\n");
    for peer in config.peers.peers.values() {
        let up = health.get(&peer.id).and_then(|h| h.reachable) == Some(true);
        let _ = writeln!(
            out,
            "swapd_peer_up{{peer=\"{}\",address=\"{}\"}} {}",
            escape(&peer.id),
            escape(peer.address()),
            u8::from(up)
        );
    }
    out.push_str("# HELP swapd_peer_rtt_seconds Round-trip time of the last successful check.\n# TYPE swapd_peer_rtt_seconds gauge\n");
    for peer in config.peers.peers.values() {
        if let Some(rtt) = health.get(&peer.id).and_then(|h| h.rtt) {
            let _ = writeln!(
                out,
                "swapd_peer_rtt_seconds{{peer=\"{}\"}} {}",
                escape(&peer.id),
                rtt.as_secs_f64()
            );
        }
    }
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Starts the reachability checker: every interval (or when woken), each configured peer of
/// the current config is checked in turn, without holding any lock while it waits.
pub fn spawn_checker(app: Arc<App>) {
    let interval = app
        .hooks
        .peer_check_interval
        .unwrap_or(DEFAULT_CHECK_INTERVAL);
    let spawned = thread::Builder::new()
        .name("peer-checker".to_string())
        .stack_size(256 * 1024)
        .spawn(move || loop {
            if app.is_shutting_down() {
                return;
            }
            let config = app.config();
            for peer in config.peers.peers.values() {
                let health = check(&app, peer);
                app.peers.set_health(&peer.id, health);
            }
            // Peers removed by a reload leave the table.
            app.peers
                .health
                .lock()
                .expect("the peer health lock is never held across a panic")
                .retain(|id, _| config.peers.peers.contains_key(id));
            drop(config);
            match app.peers.woken.recv_timeout(interval) {
                Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
        });
    if let Err(error) = spawned {
        log::error!("cannot start the peer checker thread: {error}");
    }
}

/// One check: `GET /v1/models` on the peer. Any HTTP answer means the peer is reachable; a
/// 401/403 is noted as the last error (a wrong `apiKey`).
fn check(app: &App, peer: &PeerConfig) -> PeerHealth {
    let mut headers = Vec::new();
    if let Some(key) = &peer.api_key {
        push_header(&mut headers, "Authorization", &format!("Bearer {key}"));
        push_header(&mut headers, "x-api-key", key);
    }
    push_header(&mut headers, "Via", &app.peers.via_entry());
    let request = crate::upstream::Request {
        method: "GET",
        path_and_query: "/v1/models",
        headers: &headers,
        body: None,
    };
    let started = Instant::now();
    let sent = app.upstream.send_with_connect_timeout(
        &peer.proxy,
        &request,
        Some(CHECK_READ_TIMEOUT),
        peer.connect_timeout,
    );
    let previous = app
        .peers
        .health()
        .get(&peer.id)
        .cloned()
        .unwrap_or_default();
    let health = match sent {
        Ok(response) => {
            let status = response.status();
            let mut body = response.into_body();
            // Read to the end so the connection can go back to the pool; a model list larger
            // than this is not worth it (the connection is then closed instead).
            let mut total = 0usize;
            while total < CHECK_MAX_BODY {
                match body.chunk() {
                    Ok([]) | Err(_) => break,
                    Ok(chunk) => {
                        let read = chunk.len();
                        total += read;
                        body.consume(read);
                    }
                }
            }
            PeerHealth {
                reachable: Some(true),
                last_error: (status >= 400)
                    .then(|| format!("GET /v1/models answered {status}"))
                    .or(previous.last_error.filter(|_| status >= 400)),
                rtt: Some(started.elapsed()),
                checked_at_ms: unix_millis(),
            }
        }
        Err(error) => PeerHealth {
            reachable: Some(false),
            last_error: Some(format!("{error}")),
            rtt: previous.rtt,
            checked_at_ms: unix_millis(),
        },
    };
    if previous.reachable != health.reachable {
        match health.reachable {
            Some(true) => log::info!("peer '{}' at {} is reachable", peer.id, peer.address()),
            _ => log::warn!(
                "peer '{}' at {} is unreachable: {}",
                peer.id,
                peer.address(),
                health.last_error.as_deref().unwrap_or("unknown error")
            ),
        }
    }
    health
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_recognised_by_this_swapd_token_only() {
        let runtime = PeerRuntime::new();
        let other = PeerRuntime::new();
        let ours = runtime.via_entry();
        assert!(runtime.has_passed_here(&ours));
        assert!(runtime.has_passed_here(&format!("1.1 nginx, {ours}")));
        assert!(!runtime.has_passed_here(&other.via_entry()));
        assert!(!runtime.has_passed_here(""));
    }

    #[test]
    fn query_model_is_renamed() {
        assert_eq!(
            rewrite_query_model("a=1&model=p%2Fm&b=2", "m x"),
            "a=1&model=m%20x&b=2"
        );
    }
}
