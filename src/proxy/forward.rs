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
use crate::activity::inflight::Entry;

pub use crate::upstream::Outgoing;

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
    /// The response's `Content-Type`, for the activity log (empty when there was none).
    pub content_type: String,
    /// For the activity log's `error_msg`: the start of a non-200 body, or swapd's message.
    pub error: Option<OutcomeError>,
}

/// Why a forward did not end with a 200, as far as the activity log is concerned.
pub enum OutcomeError {
    /// The first bytes (at most [`ERROR_BODY_BYTES`]) of the upstream's error body.
    Body(Vec<u8>),
    /// swapd's own message (transport failure, cancel).
    Message(String),
}

/// How much of an upstream error body is kept for the activity log's `error_msg`.
pub const ERROR_BODY_BYTES: usize = 4096;

impl Outcome {
    fn failed(status: u16, bytes: u64, message: String) -> Outcome {
        Outcome {
            status,
            bytes,
            usage: Default::default(),
            time_to_first_token: None,
            content_type: String::new(),
            error: Some(OutcomeError::Message(message)),
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
    tracked: &Entry,
) -> Outcome {
    let model = lease.model().to_string();
    let base = lease.upstream().to_string();
    let (read_timeout, connect_timeout) = app.model_timeouts(&model);
    let target = Target {
        base: &base,
        kind: TargetKind::Model(&model),
        read_timeout,
        connect_timeout,
    };
    forward_to(
        app,
        destination,
        client,
        Some(lease),
        &target,
        outgoing,
        tracked,
    )
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
    tracked: &Entry,
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
    // Each connection the request goes out on is shared with the in-flight entry (no `dup`),
    // so an operator's cancel can cut the exchange, even while the upstream has not answered.
    let sent = app.upstream.send_observed(
        target.base,
        &request,
        Some(upstream_timeout),
        target.connect_timeout,
        &cancellable(tracked),
    );
    let response = match sent {
        Ok(response) => response,
        Err(_) if tracked.is_cancelled() => {
            tracked.detach_upstream();
            let message = cancel_message(&model);
            log::info!("{message} before the upstream answered");
            match destination {
                Destination::Fresh(request) => {
                    http::send_error(request, 503, &message, Some("request_cancelled"), &[])
                }
                Destination::Started(mut writer) => {
                    let _ = writer.write_chunk(&sse_error(499, &message));
                    let _ = writer.finish();
                }
            }
            return Outcome::failed(499, 0, message);
        }
        Err(error) => {
            tracked.detach_upstream();
            // Released before the error goes out, for the same reason as below: a client that
            // retries the moment it reads the error must find the slot free.
            drop(lease);
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
            return Outcome::failed(status, 0, message);
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
    let content_type = if app.request_metrics() {
        response.header("content-type").unwrap_or("").to_string()
    } else {
        String::new()
    };
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
                    Err(_) => return Outcome::failed(status, 0, client_left()),
                },
                Ok(writer) => writer,
                Err(_) => return Outcome::failed(status, 0, client_left()),
            }
        }
        Destination::Started(writer) => writer,
    };

    // Token usage is read from what passes through, piece by piece; compressed bodies are
    // passed on untouched and not scanned.
    let compressed = response.header("content-encoding").is_some();
    let mut scanner = (app.request_metrics() && !compressed)
        .then(|| crate::proxy::usage::UsageScanner::new(is_sse));
    let mut time_to_first_token = None;
    let mut error_body = (status != 200 && app.request_metrics()).then(Vec::new);
    let mut reader = response.into_body();
    let mut bytes = 0u64;
    let started = Instant::now();
    // A plain pass-through stream is moved by the relay thread (one wake-up per stream, not
    // per event); it hands back how the body ended, which the loop below then handles as if
    // it had read it itself (see relay.rs).
    let mut relay_end = None;
    if status == 200 && is_sse && content_length.is_none() && writer.is_chunked() {
        if let Some(relayed) =
            super::relay::relay_body(client, &mut reader, &mut scanner, tracked, upstream_timeout)
        {
            bytes = relayed.bytes;
            time_to_first_token = relayed.first_byte.map(|at| at.duration_since(sent_at));
            relay_end = Some(relayed.end);
        }
    }
    loop {
        // The body is written from the upstream connection's own buffer: no copy here.
        let next = match relay_end.take() {
            Some(super::relay::End::ClientLeft) => {
                log::debug!(model = model; "client left during the response from '{model}'");
                break;
            }
            Some(super::relay::End::Upstream(error)) => Err(error),
            // The body's end is still there for the loop to read.
            Some(super::relay::End::Complete) | None => reader.chunk(),
        };
        match next {
            Ok([]) if tracked.is_cancelled() => {
                // A cancel shut the socket down: for a body read until close, that looks
                // like its end, but the client must see the response cut.
                tracked.detach_upstream();
                return cut_for_cancel(writer, client, is_sse, &model, bytes);
            }
            Ok([]) => {
                tracked.detach_upstream();
                drop(lease.take());
                // Dropping the body hands a chunked response's connection back to the pool
                // (after the detach above), before the client sees the end and sends more.
                drop(reader);
                let _ = writer.finish();
                break;
            }
            Ok(chunk) => {
                let read = chunk.len();
                if content_length == Some(bytes + read as u64) {
                    tracked.detach_upstream();
                    drop(lease.take());
                }
                if let Some(kept) = error_body.as_mut() {
                    let room = ERROR_BODY_BYTES.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..read.min(room)]);
                }
                tracked.add_bytes(read as u64);
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
            Err(_) if tracked.is_cancelled() => {
                tracked.detach_upstream();
                return cut_for_cancel(writer, client, is_sse, &model, bytes);
            }
            Err(error) => {
                tracked.detach_upstream();
                let message = format!(
                    "{} failed after {bytes} bytes ({:.1}s): {error}",
                    target.kind.describe(),
                    started.elapsed().as_secs_f64()
                );
                log::warn!(model = model; "{message}");
                drop(lease.take());
                if is_sse {
                    let _ = writer.write_chunk(&sse_error(502, &message));
                }
                drop(writer);
                client.cut();
                return Outcome::failed(502, bytes, message);
            }
        }
    }
    tracked.detach_upstream();
    Outcome {
        status,
        bytes,
        usage: scanner.map(|s| s.finish()).unwrap_or_default(),
        time_to_first_token,
        content_type,
        error: error_body.map(OutcomeError::Body),
    }
}

/// Adds the activity row of a finished forward (a metered request, local or peer).
pub fn record_activity(
    app: &App,
    model: &str,
    path: &str,
    duration: std::time::Duration,
    outcome: &Outcome,
) {
    let error = outcome.error.as_ref().map(|error| match error {
        OutcomeError::Body(body) => crate::activity::ErrorSource::Body(body),
        OutcomeError::Message(message) => crate::activity::ErrorSource::Message(message),
    });
    app.activity.record(crate::activity::Finished {
        model,
        path,
        content_type: &outcome.content_type,
        status: outcome.status,
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        usage: outcome.usage,
        error,
    });
}

/// A duration as an access line shows it, milliseconds to one decimal (`12.3ms`), from
/// integer tenths: float formatting cost more than the rest of the line.
pub struct Millis(pub std::time::Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tenths = (self.0.as_micros() + 50) / 100;
        write!(f, "{}.{}ms", tenths / 10, tenths % 10)
    }
}

/// The message recorded when the client left before the head could be sent.
fn client_left() -> String {
    "the client left before the response started".to_string()
}

/// The `observe` callback for `upstream::Client::send_observed` that makes an exchange
/// cancellable: each connection the request goes out on is shared with the in-flight entry
/// (no `dup`: the pool's own socket handle), and a request cancelled before it is sent is not
/// sent at all.
pub fn cancellable(tracked: &Entry) -> impl Fn(&std::sync::Arc<std::net::TcpStream>) -> bool + '_ {
    move |socket| {
        if tracked.is_cancelled() {
            return false;
        }
        tracked.attach_upstream(socket.clone());
        true
    }
}

/// The message of a request an operator cancelled.
pub fn cancel_message(model: &str) -> String {
    format!("request to model '{model}' was cancelled by an operator")
}

/// Ends a response an operator cancelled: an error event for a stream, then the client
/// connection is shut down so the client sees the response end abnormally. The status
/// recorded is 499 (nginx's "client closed request"), since no upstream status describes it.
fn cut_for_cancel(
    mut writer: ResponseWriter,
    client: &ClientSocket,
    is_sse: bool,
    model: &str,
    bytes: u64,
) -> Outcome {
    let message = cancel_message(model);
    log::info!("{message} after {bytes} response bytes");
    if is_sse {
        let _ = writer.write_chunk(&sse_error(499, &message));
    }
    drop(writer);
    client.cut();
    Outcome::failed(499, bytes, message)
}

/// An error as one SSE event, for streams whose status line has already been sent.
pub fn sse_error(status: u16, message: &str) -> Vec<u8> {
    let mut event = b"data: ".to_vec();
    event.extend_from_slice(&http::error_body(status, message, None));
    event.extend_from_slice(b"\n\n");
    event
}

#[cfg(test)]
mod tests {
    use super::Millis;
    use std::time::Duration;

    #[test]
    fn access_line_durations_round_to_a_tenth_of_a_millisecond() {
        for (micros, shown) in [
            (0, "0.0ms"),
            (49, "0.0ms"),
            (50, "0.1ms"),
            (12_345, "12.3ms"),
            (12_350, "12.4ms"),
            (999_960, "1000.0ms"),
        ] {
            assert_eq!(Millis(Duration::from_micros(micros)).to_string(), shown);
        }
    }
}
