//! Our own HTTP response writer on top of tiny_http's raw connection writer.
//!
//! tiny_http's `Request::respond` copies through an 8 KiB chunk encoder and flushes only at the
//! end, so streamed responses (SSE, `/logs/stream`) would arrive all at once. Every response
//! swapd sends therefore goes through [`ResponseWriter`]: it writes the status line and headers
//! itself and flushes after every chunk. This module also owns the OpenAI-style error envelope
//! and the TCP state queries on a client connection's handle (`TCP_INFO`: did the client leave,
//! when did it last send data). The wire format itself (heads, chunked and length framing) is
//! [`codec`]'s, shared with the upstream client, the fake upstream and the benchmarks;
//! [`buffer`] feeds it from a socket.

// Unsafe code only in `tcp_info` (getsockopt).
#![deny(unsafe_code)]

use std::io::{self, Write};
use std::os::fd::RawFd;

pub mod buffer;
pub mod codec;

/// Chunks up to this size are framed inside the connection's write buffer (see `write_chunk`).
const SMALL_CHUNK: usize = 4096;

/// A response being written to one client, framed either by `Content-Length` or chunked.
pub struct ResponseWriter {
    inner: Box<dyn Write + Send + 'static>,
    chunked: bool,
    head_only: bool,
    scratch: Vec<u8>,
}

/// The reason phrase for a status code: tiny_http's table (the one swapd's listener also
/// uses), with `Status` as the placeholder for codes it does not know.
pub fn reason_phrase(status: u16) -> &'static str {
    match tiny_http::StatusCode(status).default_reason_phrase() {
        "Unknown" => "Status",
        phrase => phrase,
    }
}

impl ResponseWriter {
    /// Writes the status line and headers. `content_length: None` selects chunked framing.
    /// Headers named `content-length`, `transfer-encoding` or `connection` in `headers` are
    /// skipped: framing is this writer's job.
    pub fn start(
        request: tiny_http::Request,
        status: u16,
        headers: &[(&str, &str)],
        content_length: Option<u64>,
    ) -> io::Result<ResponseWriter> {
        let head_only = *request.method() == tiny_http::Method::Head;
        let close = client_wants_close(&request);
        let inner = request.into_writer();
        let mut writer = ResponseWriter {
            inner,
            chunked: content_length.is_none() && !head_only,
            head_only,
            scratch: Vec::with_capacity(512),
        };
        let framing = match content_length {
            Some(length) => codec::Framing::Length(length),
            None if !head_only => codec::Framing::Chunked,
            None => codec::Framing::UntilClose,
        };
        codec::write_response_head(&mut writer.scratch, status, headers, framing, close);
        writer.inner.write_all(&writer.scratch)?;
        writer.scratch.clear();
        Ok(writer)
    }

    /// Writes the head of a response with a fixed body and the body, in one flush.
    pub fn send_whole(
        request: tiny_http::Request,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<()> {
        let mut writer = ResponseWriter::start(request, status, headers, Some(body.len() as u64))?;
        writer.write_chunk(body)?;
        writer.finish()
    }

    /// Whether the body goes out chunked (not `Content-Length`, not a HEAD answer): a relay
    /// that writes the rest of the body straight to the socket frames it the same way.
    pub fn is_chunked(&self) -> bool {
        self.chunked && !self.head_only
    }

    /// Writes one piece of the body and flushes it to the client at once.
    pub fn write_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if self.head_only {
            return self.inner.flush();
        }
        if data.is_empty() {
            return self.inner.flush();
        }
        if self.chunked && data.len() <= SMALL_CHUNK {
            // Small chunks (SSE events, tokens) go through the connection's 8 KiB write buffer
            // as frame header, data and trailer, and leave in one system call at the flush;
            // the data is copied once.
            self.inner
                .write_all(codec::ChunkHeader::new(data.len()).as_bytes())?;
            self.inner.write_all(data)?;
            self.inner.write_all(codec::CHUNK_END)?;
        } else if self.chunked {
            // A large chunk would not fit the write buffer with its framing: one buffer and
            // one write instead of three system calls.
            self.scratch.clear();
            codec::encode_chunk(&mut self.scratch, data);
            self.inner.write_all(&self.scratch)?;
        } else {
            self.inner.write_all(data)?;
        }
        self.inner.flush()
    }

    /// Ends the body (the terminating chunk for chunked framing) and flushes.
    pub fn finish(mut self) -> io::Result<()> {
        if self.chunked {
            self.inner.write_all(codec::LAST_CHUNK)?;
        }
        self.inner.flush()
    }
}

fn client_wants_close(request: &tiny_http::Request) -> bool {
    let header = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Connection"))
        .map(|h| h.value.as_str().to_ascii_lowercase());
    match header {
        Some(value) => value.contains("close"),
        None => *request.http_version() == tiny_http::HTTPVersion(1, 0),
    }
}

/// The OpenAI-style `type` and `code` for an error status, as llama-swap derives them.
pub fn error_type_and_code(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("invalid_request_error", "bad_request"),
        401 => ("authentication_error", "unauthorized"),
        403 => ("authentication_error", "forbidden"),
        404 => ("invalid_request_error", "not_found"),
        409 => ("invalid_request_error", "conflict"),
        413 => ("invalid_request_error", "request_too_large"),
        429 => ("rate_limit_error", "rate_limit_exceeded"),
        502 => ("server_error", "bad_gateway"),
        503 => ("server_error", "service_unavailable"),
        504 => ("server_error", "gateway_timeout"),
        other if (400..500).contains(&other) => ("invalid_request_error", "invalid_request"),
        _ => ("server_error", "internal_error"),
    }
}

/// The JSON body of every error swapd itself produces:
/// `{"error":{"message","type","param":null,"code"}}` (llama-swap adds `"src"`; we do too).
pub fn error_body(status: u16, message: &str, code: Option<&str>) -> Vec<u8> {
    let (kind, default_code) = error_type_and_code(status);
    let body = serde_json::json!({
        "src": "swapd",
        "error": {
            "message": message,
            "type": kind,
            "param": null,
            "code": code.unwrap_or(default_code),
        }
    });
    serde_json::to_vec(&body).expect("a JSON value always serialises")
}

/// Sends an error envelope. Write errors are ignored: the client is gone.
pub fn send_error(
    request: tiny_http::Request,
    status: u16,
    message: &str,
    code: Option<&str>,
    extra: &[(&str, &str)],
) {
    let accept = request
        .headers()
        .iter()
        .find(|header| header.field.equiv("Accept"))
        .map(|header| header.value.as_str().to_string())
        .unwrap_or_default();
    let (content_type, body) = error_variant(&accept, status, message, code);
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", content_type)];
    headers.extend_from_slice(extra);
    let _ = ResponseWriter::send_whole(request, status, &headers, &body);
}

/// The error body for a client's `Accept` header (llama-swap §2.7): `text/plain` gets
/// `swapd: <message>`, `text/html` a tiny page, anything else the JSON envelope. Unlike
/// llama-swap, a client that also accepts `application/json` (axios sends
/// `application/json, text/plain, */*`) keeps getting JSON, so JSON clients never get text.
pub fn error_variant(
    accept: &str,
    status: u16,
    message: &str,
    code: Option<&str>,
) -> (&'static str, Vec<u8>) {
    let accept = accept.to_ascii_lowercase();
    if accept.contains("application/json") {
        return ("application/json", error_body(status, message, code));
    }
    if accept.contains("text/plain") {
        return (
            "text/plain; charset=utf-8",
            format!("swapd: {message}").into_bytes(),
        );
    }
    if accept.contains("text/html") {
        let escaped = message
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&#34;")
            .replace('\'', "&#39;");
        return (
            "text/html; charset=utf-8",
            format!("<html><body><h1>swapd</h1><p>{escaped}</p></body></html>").into_bytes(),
        );
    }
    ("application/json", error_body(status, message, code))
}

/// Sends a JSON value with status 200 (or `status`).
pub fn send_json(request: tiny_http::Request, status: u16, value: &serde_json::Value) {
    let body = serde_json::to_vec(value).expect("a JSON value always serialises");
    let _ = ResponseWriter::send_whole(
        request,
        status,
        &[("Content-Type", "application/json")],
        &body,
    );
}

/// Sends a short plain-text body.
pub fn send_text(request: tiny_http::Request, status: u16, text: &str) {
    let _ = ResponseWriter::send_whole(
        request,
        status,
        &[("Content-Type", "text/plain; charset=utf-8")],
        text.as_bytes(),
    );
}

/// The kernel's TCP_INFO for a socket.
#[allow(unsafe_code)]
pub fn tcp_info(fd: RawFd) -> Option<libc::tcp_info> {
    // SAFETY: getsockopt writes at most `length` bytes into a zeroed tcp_info.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let result = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut length,
        );
        (result == 0).then_some(info)
    }
}

/// Whether the peer of a connected socket has closed or reset its side. Reads the TCP state
/// rather than the socket, so it is not fooled by tiny_http shutting down its own read side.
pub fn peer_has_closed(fd: RawFd) -> bool {
    const TCP_ESTABLISHED: u8 = 1;
    tcp_info(fd).is_none_or(|info| info.tcpi_state != TCP_ESTABLISHED)
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    let mut difference = 0u8;
    for (a, b) in left.iter().zip(right) {
        difference |= a ^ b;
    }
    std::hint::black_box(difference) == 0
}

/// Decodes `%XX` escapes and `+` (form encoding); invalid escapes are kept as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_variants_follow_accept() {
        let (kind, body) = error_variant("text/plain", 404, "no <model>", None);
        assert_eq!(
            (kind, body.as_slice()),
            ("text/plain; charset=utf-8", &b"swapd: no <model>"[..])
        );
        let (kind, body) = error_variant(
            "text/html,application/xhtml+xml,*/*;q=0.8",
            404,
            "no <model>",
            None,
        );
        assert_eq!(kind, "text/html; charset=utf-8");
        assert_eq!(
            String::from_utf8(body).expect("utf-8"),
            "<html><body><h1>swapd</h1><p>no &lt;model&gt;</p></body></html>"
        );
        for accept in [
            "",
            "*/*",
            "application/json",
            "application/json, text/plain, */*",
        ] {
            let (kind, body) = error_variant(accept, 404, "x", None);
            assert_eq!(kind, "application/json", "{accept}");
            assert_eq!(body, error_body(404, "x", None));
        }
    }

    #[test]
    fn error_envelope_has_openai_shape() {
        let body: serde_json::Value =
            serde_json::from_slice(&error_body(404, "nope", None)).expect("error body is JSON");
        assert_eq!(body["error"]["message"], "nope");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "not_found");
        let body: serde_json::Value = serde_json::from_slice(&error_body(
            429,
            "Too many requests",
            Some("concurrency_limit"),
        ))
        .expect("error body is JSON");
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["code"], "concurrency_limit");
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
