//! Websocket (and any other protocol upgrade) passthrough on `/upstream/<model>/…` and
//! `/comfyui/…`, as llama-swap's reverse proxy passes them.
//!
//! The upgrade request goes to the model on an upstream connection of its own. If the model
//! answers `101 Switching Protocols`, the client gets that answer and from then on both
//! connections carry raw bytes: this connection's thread copies upstream → client, a second
//! thread copies client → upstream, and when either side ends both sockets are shut down. Any
//! other answer is passed on as a normal response. The session holds a lease on the model,
//! so it counts as a request in flight (no TTL unload, no swap away) — unless the model has
//! `compat.ignoreWebsockets`, whose upgrades never start it and are never counted.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::http::{self, ResponseWriter};
use crate::supervisor::Lease;
use crate::upstream::{Request, Switched, Upgrade};

use super::super::acquire::{wait_for_lease, Waited};
use super::super::{client_of_request, App};
use super::{header, inference};

/// Longest wait for each read of the model's answer to the upgrade request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer body passed on when the model refuses the upgrade.
const MAX_REFUSAL_BODY: usize = 1 << 20;

/// Whether `request` asks for a protocol upgrade this module passes on: `Connection: upgrade`
/// and an `Upgrade`, without a body (a websocket handshake has none, and only then does
/// tiny_http hand over the raw connection), and not `h2c` (curl's HTTP/2 attempt, which the
/// request itself answers as HTTP/1.1).
pub(super) fn is_upgrade(request: &tiny_http::Request) -> bool {
    let Some(protocol) = header(request, "Upgrade") else {
        return false;
    };
    let bodyless = header(request, "Transfer-Encoding").is_none()
        && header(request, "Content-Length").is_none_or(|length| length.trim() == "0");
    bodyless
        && !protocol.trim().eq_ignore_ascii_case("h2c")
        && header(request, "Connection").is_some_and(|value| {
            value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// Passes the upgrade request `request` to the local model `model_id`, at `path` (with its
/// query) on the model's server.
pub(super) fn pass(app: &App, request: tiny_http::Request, model_id: &str, path: &str) {
    let config = app.config();
    let Some(model) = config.models.get(model_id) else {
        return http::send_error(request, 404, "model not found", None, &[]);
    };
    let (lease, base) = if model.ignore_websockets {
        if !inference::is_ready(app, model_id) {
            let message = format!(
                "model {model_id} is not loaded; websocket upgrades do not start it (compat.ignoreWebsockets)"
            );
            return http::send_error(request, 409, &message, None, &[]);
        }
        (None, model.proxy.clone())
    } else {
        let client = client_of_request(&request);
        match wait_for_lease(app, model_id, &client, false, None) {
            Ok(lease) => {
                let base = lease.upstream().to_string();
                (Some(lease), base)
            }
            Err(Waited::Failed(error)) => return inference::send_acquire_error(request, &error),
            // The client left while the model was starting (no entry, so no cancel).
            Err(Waited::ClientLeft | Waited::Cancelled(_)) => return,
        }
    };
    drop(config);
    let headers = inference::forwarded_headers(&request);
    relay(app, request, model_id, &base, path, headers, lease);
}

/// Passes the upgrade request `request` for the peer model `name` to `peer`, at `path` (with
/// its query) on the peer's server, with the headers of any peer request.
pub(super) fn pass_to_peer(
    app: &App,
    request: tiny_http::Request,
    name: &str,
    peer: &crate::config::PeerConfig,
    path: &str,
) {
    match super::super::peers::outgoing_headers(app, &request, peer, name, false) {
        Ok(headers) => relay(app, request, name, &peer.proxy, path, headers, None),
        Err(message) => http::send_error(request, 508, &message, Some("loop_detected"), &[]),
    }
}

/// Sends the upgrade with `headers` (the client's, hop-by-hop ones left out) to `base` and,
/// after a 101, copies both ways until either side ends; `lease` is held meanwhile.
fn relay(
    app: &App,
    request: tiny_http::Request,
    model_id: &str,
    base: &str,
    path: &str,
    mut headers: Vec<u8>,
    lease: Option<Lease>,
) {
    let protocol = header(&request, "Upgrade")
        .unwrap_or("websocket")
        .to_string();
    headers.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: ");
    headers.extend_from_slice(protocol.as_bytes());
    headers.extend_from_slice(b"\r\n");
    let method = request.method().as_str().to_string();
    let outgoing = Request {
        method: &method,
        path_and_query: path,
        headers: &headers,
        body: None,
    };
    let started = Instant::now();
    let switched = match app.upstream().upgrade(base, &outgoing, HANDSHAKE_TIMEOUT) {
        Ok(Upgrade::Switched(switched)) => switched,
        Ok(Upgrade::Refused(response)) => {
            log::info!(
                "{model_id}: upgrade to {protocol} at {path} refused with {}",
                response.status()
            );
            return pass_refusal(request, response);
        }
        Err(error) => {
            let message = format!("upstream error: {error}");
            return http::send_error(request, 502, &message, Some("upstream_error"), &[]);
        }
    };
    let Some(connection) = request.connection().cloned() else {
        return http::send_error(request, 500, "no client connection to upgrade", None, &[]);
    };
    let Some(client_socket) = connection.tcp_stream() else {
        return http::send_error(request, 501, "upgrades need a TCP client", None, &[]);
    };
    let mut answer = tiny_http::Response::empty(101);
    for span in &switched.parsed.headers {
        let (name, value) = (span.name(&switched.head), span.value(&switched.head));
        // tiny_http writes Connection and Upgrade for an upgrade itself.
        if let Ok(header) = tiny_http::Header::from_bytes(name, value) {
            answer.add_header(header);
        }
    }
    let client_reader = request.upgrade(&protocol, answer);
    log::info!("{model_id}: {protocol} session at {path} opened");
    let (to_client, to_upstream) = copy_both_ways(switched, client_reader, client_socket);
    log::info!(
        "{model_id}: {protocol} session at {path} closed after {:.1} s ({to_upstream} bytes in, {to_client} bytes out)",
        started.elapsed().as_secs_f64()
    );
    drop(lease);
}

/// Copies upstream → client on this thread and client → upstream on another until either side
/// ends, then shuts both down. Returns the bytes sent each way (to the client, to upstream).
fn copy_both_ways(
    switched: Switched,
    mut client_reader: Box<dyn tiny_http::ReadWrite + Send>,
    client_socket: &TcpStream,
) -> (u64, u64) {
    let Switched {
        stream: upstream,
        early,
        ..
    } = switched;
    let mut to_client = 0u64;
    std::thread::scope(|scope| {
        let upstream = &upstream;
        let inbound = std::thread::Builder::new()
            .name("ws-in".into())
            .stack_size(64 * 1024)
            .spawn_scoped(scope, move || {
                let copied = copy(&mut client_reader, &mut &*upstream);
                // The client is done: end the session on both sides.
                let _ = upstream.shutdown(Shutdown::Both);
                let _ = client_socket.shutdown(Shutdown::Both);
                copied
            })
            .expect("spawning a websocket thread");
        if (&*client_socket).write_all(&early).is_ok() {
            to_client = early.len() as u64 + copy(&mut &*upstream, &mut &*client_socket);
        }
        // The upstream is done (or the client cannot be written to): end both sides.
        let _ = client_socket.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        let to_upstream = inbound.join().unwrap_or(0);
        (to_client, to_upstream)
    })
}

/// Copies until end of input or an error on either side; returns the bytes copied.
fn copy(from: &mut dyn Read, to: &mut dyn Write) -> u64 {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => return total,
            Ok(read) => {
                if to.write_all(&buffer[..read]).is_err() {
                    return total;
                }
                total += read as u64;
            }
        }
    }
}

/// Passes on a model's answer that is not a 101, read whole (up to [`MAX_REFUSAL_BODY`]).
fn pass_refusal(request: tiny_http::Request, response: crate::upstream::Response<'_>) {
    let status = response.status();
    let headers: Vec<(String, String)> = response
        .headers()
        .filter(|(name, _)| !super::super::forward::is_hop_by_hop(name))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let mut body = Vec::new();
    let read = response
        .into_body()
        .take(MAX_REFUSAL_BODY as u64 + 1)
        .read_to_end(&mut body);
    if read.is_err() || body.len() > MAX_REFUSAL_BODY {
        let message = "upstream error: unreadable answer to an upgrade request";
        return http::send_error(request, 502, message, Some("upstream_error"), &[]);
    }
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let _ = ResponseWriter::send_whole(request, status, &headers, &body);
}
