//! Forwarding one request to an upstream and streaming its answer back.
//!
//! Every upstream read is written and flushed to the client at once. Upstream statuses,
//! headers (minus hop-by-hop ones) and bodies pass through untouched, errors included. A
//! transport error before any response byte is retried once on a fresh connection (the body is
//! still in hand), because llama-server closes kept-alive connections after a stream without
//! saying so. When a stream breaks half-way the client connection is cut, so the client sees an
//! error instead of waiting forever.

use std::time::Instant;

use crate::http::{self, ResponseWriter};
use crate::supervisor::Lease;
use crate::upstream::UpstreamError;

use super::{App, ClientSocket};

/// The request as it will be sent upstream.
pub struct Outgoing {
    pub method: String,
    /// Path and query, e.g. `/v1/chat/completions` or `/slots?id=1`.
    pub path_and_query: String,
    /// Client header lines to pass on, each `Name: value\r\n` (hop-by-hop, Host and
    /// Content-Length already removed).
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
}

/// Headers that describe one connection, not the message, and must not be forwarded.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// The result of a forward, for the access log and metrics.
pub struct Outcome {
    pub status: u16,
    pub bytes: u64,
    pub usage: crate::metrics::TokenUsage,
    /// For streamed (SSE) responses: from sending upstream to the first body byte.
    pub time_to_first_token: Option<std::time::Duration>,
}

impl Outcome {
    fn failed(status: u16, bytes: u64) -> Outcome {
        Outcome {
            status,
            bytes,
            usage: Default::default(),
            time_to_first_token: None,
        }
    }
}

/// Where the response goes: a fresh client request, or a stream already started (the
/// loading-state SSE), onto which the upstream body is appended.
pub enum Destination {
    Fresh(tiny_http::Request),
    Started(ResponseWriter),
}

/// What a forward talks to: a leased local model, or a peer (no lease: peers are not
/// scheduled here).
pub struct Target<'a> {
    /// Base URL the path is appended to.
    pub base: &'a str,
    pub kind: TargetKind<'a>,
    pub read_timeout: std::time::Duration,
    /// `None` uses the upstream client's own connect timeout.
    pub connect_timeout: Option<std::time::Duration>,
}

pub enum TargetKind<'a> {
    Model(&'a str),
    Peer { id: &'a str, address: &'a str },
}

impl TargetKind<'_> {
    /// The start of every message about this target.
    fn describe(&self) -> String {
        match self {
            TargetKind::Model(model) => format!("upstream for model '{model}'"),
            TargetKind::Peer { id, address } => {
                format!("peer proxy error: peer '{id}' at {address}")
            }
        }
    }

    fn log_model(&self) -> &str {
        match self {
            TargetKind::Model(model) => model,
            TargetKind::Peer { id, .. } => id,
        }
    }
}

/// Sends `outgoing` to the leased upstream and streams the answer to the client.
pub fn forward(
    app: &App,
    destination: Destination,
    client: &ClientSocket,
    lease: Lease,
    outgoing: &Outgoing,
) -> Outcome {
    let model = lease.model().to_string();
    let base = lease.upstream().to_string();
    let target = Target {
        base: &base,
        kind: TargetKind::Model(&model),
        read_timeout: app.limits().upstream_timeout,
        connect_timeout: None,
    };
    forward_to(app, destination, client, Some(lease), &target, outgoing)
}

/// Sends `outgoing` to `target` and streams the answer to the client; `lease` (if any) is
/// given back as soon as the upstream body has been read.
pub fn forward_to(
    app: &App,
    destination: Destination,
    client: &ClientSocket,
    lease: Option<Lease>,
    target: &Target<'_>,
    outgoing: &Outgoing,
) -> Outcome {
    let model = target.kind.log_model().to_string();
    let sent_at = Instant::now();
    let request = crate::upstream::Request {
        method: &outgoing.method,
        path_and_query: &outgoing.path_and_query,
        headers: &outgoing.headers,
        body: (!outgoing.body.is_empty()
            || !matches!(
                outgoing.method.as_str(),
                "GET" | "HEAD" | "DELETE" | "OPTIONS"
            ))
        .then_some(outgoing.body.as_slice()),
    };
    let upstream_timeout = target.read_timeout;
    // `send` resends on a stale pooled connection and retries a failed new one once.
    let sent = match target.connect_timeout {
        None => app
            .upstream
            .send(target.base, &request, Some(upstream_timeout)),
        Some(connect_timeout) => app.upstream.send_with_connect_timeout(
            target.base,
            &request,
            Some(upstream_timeout),
            connect_timeout,
        ),
    };
    let response = match sent {
        Ok(response) => response,
        Err(error) => {
            let url = format!("{}{}", target.base, outgoing.path_and_query);
            let what = target.kind.describe();
            let (status, message) = match &error {
                UpstreamError::Timeout => (
                    504,
                    format!(
                        "{what} did not answer within {}s ({url})",
                        upstream_timeout.as_secs()
                    ),
                ),
                _ => (502, format!("{what} failed: {error} ({url})")),
            };
            log::warn!(model = model; "{message}");
            match destination {
                Destination::Fresh(request) => {
                    http::send_error(request, status, &message, None, &[])
                }
                Destination::Started(mut writer) => {
                    let _ = writer.write_chunk(&sse_error(status, &message));
                    let _ = writer.finish();
                }
            }
            return Outcome::failed(status, 0);
        }
    };
    // The lease is given back as soon as the upstream body has been read in full, before the
    // last bytes go to the client: a client that sends its next request the moment this
    // response ends must find the slot free (the gate counts the release before that request
    // can arrive).
    let mut lease = lease;

    let status = response.status();
    let is_sse = response
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let content_length = response.content_length();
    let mut writer = match destination {
        Destination::Fresh(request) => {
            let mut headers: Vec<(&str, &str)> = response
                .headers()
                .filter(|(name, _)| !is_hop_by_hop(name))
                .collect();
            // A peer swapd already says so; once is enough.
            if is_sse
                && !headers
                    .iter()
                    .any(|(name, _)| name.eq_ignore_ascii_case("x-accel-buffering"))
            {
                headers.push(("X-Accel-Buffering", "no"));
            }
            match ResponseWriter::start(request, status, &headers, content_length) {
                // A stream's head goes out at once: the first event may be seconds away
                // (prompt processing), and clients wait for the head before reading.
                Ok(mut writer) if is_sse => match writer.write_chunk(&[]) {
                    Ok(()) => writer,
                    Err(_) => return Outcome::failed(status, 0),
                },
                Ok(writer) => writer,
                Err(_) => return Outcome::failed(status, 0),
            }
        }
        Destination::Started(writer) => writer,
    };

    // Token usage is read from what passes through, piece by piece; compressed bodies are
    // passed on untouched and not scanned.
    let compressed = response.header("content-encoding").is_some();
    let mut scanner =
        (app.request_metrics && !compressed).then(|| crate::metrics::UsageScanner::new(is_sse));
    let mut time_to_first_token = None;
    let mut reader = response.into_body();
    let mut bytes = 0u64;
    let started = Instant::now();
    loop {
        // The body is written from the upstream connection's own buffer: no copy here.
        match reader.chunk() {
            Ok([]) => {
                drop(lease.take());
                let _ = writer.finish();
                break;
            }
            Ok(chunk) => {
                let read = chunk.len();
                if content_length == Some(bytes + read as u64) {
                    drop(lease.take());
                }
                if bytes == 0 && is_sse {
                    time_to_first_token = Some(sent_at.elapsed());
                }
                bytes += read as u64;
                if let Some(scanner) = scanner.as_mut() {
                    scanner.feed(chunk);
                }
                if writer.write_chunk(chunk).is_err() {
                    // The client went away: dropping the reader closes the upstream
                    // connection, and returning drops the lease.
                    log::debug!(model = model; "client left during the response from '{model}'");
                    break;
                }
                reader.consume(read);
            }
            Err(error) => {
                let message = format!(
                    "{} failed after {bytes} bytes ({:.1}s): {error}",
                    target.kind.describe(),
                    started.elapsed().as_secs_f64()
                );
                log::warn!(model = model; "{message}");
                if is_sse {
                    let _ = writer.write_chunk(&sse_error(502, &message));
                }
                drop(writer);
                client.cut();
                return Outcome::failed(502, bytes);
            }
        }
    }
    Outcome {
        status,
        bytes,
        usage: scanner.map(|s| s.finish()).unwrap_or_default(),
        time_to_first_token,
    }
}

/// An error as one SSE event, for streams whose status line has already been sent.
pub fn sse_error(status: u16, message: &str) -> Vec<u8> {
    let mut event = b"data: ".to_vec();
    event.extend_from_slice(&http::error_body(status, message, None));
    event.extend_from_slice(b"\n\n");
    event
}
