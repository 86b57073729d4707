//! The web UI's files and the llama-swap UI API: `/ui/…`, `GET /api/metrics/activity`,
//! `GET /api/metrics/stats` and `POST /api/inflight/{id}/cancel`, plus swapd's
//! `GET /api/status` (version, uptime, memory) for the UI's header.
//!
//! The UI is three files written by hand in `src/ui/` (no build step, no framework), compiled
//! into the binary. Each is also kept gzip-compressed next to its source (`make ui-gz`
//! writes them; a test checks they match), so a browser that accepts gzip gets a quarter of
//! the bytes without swapd carrying a compressor. ETags are hashes of the bytes, computed at
//! compile time.
//!
//! The files are served without an API key: they hold no data, and a page that loads lets
//! the user type the key that its API calls then send. Every API call stays behind the key.

use serde_json::json;

use crate::activity::query;
use crate::http::{self, ResponseWriter};

use super::routes::header;
use super::App;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    gzipped: &'static [u8],
    etag: &'static str,
}

/// FNV-1a, 64-bit: a compile-time fingerprint of a file for its ETag.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut index = 0;
    while index < bytes.len() {
        hash ^= bytes[index] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        index += 1;
    }
    hash
}

/// The ETag text `"<16 hex digits>"` of a hash, built at compile time.
const fn etag_bytes(hash: u64) -> [u8; 18] {
    let mut out = [b'"'; 18];
    let digits = b"0123456789abcdef";
    let mut index = 0;
    while index < 16 {
        out[1 + index] = digits[((hash >> (60 - 4 * index)) & 0xf) as usize];
        index += 1;
    }
    out
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {{
        const BYTES: &[u8] = include_bytes!(concat!("../ui/", $name));
        const ETAG: [u8; 18] = etag_bytes(fnv1a(BYTES));
        Asset {
            name: $name,
            content_type: $content_type,
            bytes: BYTES,
            gzipped: include_bytes!(concat!("../ui/", $name, ".gz")),
            etag: match std::str::from_utf8(&ETAG) {
                Ok(text) => text,
                Err(_) => panic!("an ETag is ASCII"),
            },
        }
    }};
}

const ASSETS: [Asset; 3] = [
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
];

/// Whether `path` is the UI's: `/ui` and everything under `/ui/`.
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// Serves `/ui/…`: `/ui` redirects to `/ui/` (so relative URLs resolve under a proxy's path
/// prefix too); extension-less paths get the page, as llama-swap's single-page app does.
pub fn serve_ui(request: tiny_http::Request, method: &str, path: &str) {
    if method != "GET" && method != "HEAD" {
        return http::send_error(request, 405, "the UI only answers GET", None, &[]);
    }
    if path == "/ui" {
        // Relative, so that `/prefix/ui` goes to `/prefix/ui/` behind a reverse proxy.
        let _ = ResponseWriter::send_whole(request, 301, &[("Location", "ui/")], b"");
        return;
    }
    let name = path.trim_start_matches("/ui/");
    let asset = if name.is_empty() || !name.contains('.') {
        Some(&ASSETS[0])
    } else {
        ASSETS.iter().find(|asset| asset.name == name)
    };
    let Some(asset) = asset else {
        return http::send_error(request, 404, &format!("no UI file {path}"), None, &[]);
    };
    let cache = "no-cache";
    if header(&request, "If-None-Match").is_some_and(|tags| etag_matches(tags, asset.etag)) {
        let _ = ResponseWriter::send_whole(
            request,
            304,
            &[("ETag", asset.etag), ("Cache-Control", cache)],
            b"",
        );
        return;
    }
    let gzip = header(&request, "Accept-Encoding").is_some_and(accepts_gzip);
    let mut headers = vec![
        ("Content-Type", asset.content_type),
        ("ETag", asset.etag),
        ("Cache-Control", cache),
        ("Vary", "Accept-Encoding"),
        ("X-Content-Type-Options", "nosniff"),
    ];
    let body = if gzip {
        headers.push(("Content-Encoding", "gzip"));
        asset.gzipped
    } else {
        asset.bytes
    };
    let _ = ResponseWriter::send_whole(request, 200, &headers, body);
}

/// Whether an `If-None-Match` value names `etag` (or is `*`).
fn etag_matches(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// Whether an `Accept-Encoding` value accepts gzip (with a quality above zero).
fn accepts_gzip(header: &str) -> bool {
    header.split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let zero = parts.any(|param| {
            let param = param.trim().replace(' ', "");
            param
                .strip_prefix("q=")
                .and_then(|quality| quality.parse::<f64>().ok())
                == Some(0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !zero
    })
}

/// Whether a request for `/` comes from a browser (which gets the UI instead of the model
/// list that API clients are redirected to).
pub fn wants_html(request: &tiny_http::Request) -> bool {
    header(request, "Accept").is_some_and(|accept| accept.contains("text/html"))
}

/// The UI API routes; `None` when `path` is none of them (the request is handed back).
pub fn route(
    app: &App,
    request: tiny_http::Request,
    method: &str,
    path: &str,
    query_text: &str,
) -> Option<tiny_http::Request> {
    match (method, path) {
        ("GET", "/api/metrics/activity") => match query::parse_query(query_text) {
            Ok(parsed) => http::send_json(request, 200, &app.activity.page_json(&parsed)),
            Err(message) => http::send_error(request, 400, &message, None, &[]),
        },
        ("GET", "/api/status") => {
            // swapd's own addition for the UI's header.
            http::send_json(
                request,
                200,
                &json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_seconds": app.started_at.elapsed().as_secs(),
                    "memory_bytes": crate::metrics::resident_memory_bytes(),
                    "inflight": app.inflight.snapshot().len(),
                    "auth": !app.config().api_keys.is_empty(),
                }),
            );
        }
        ("GET", "/api/metrics/stats") => {
            let model = query::query_pairs(query_text)
                .find(|(key, value)| key == "model" && !value.is_empty())
                .map(|(_, value)| value);
            http::send_json(request, 200, &app.activity.stats_json(model.as_deref()));
        }
        ("POST", _) if path.starts_with("/api/inflight/") => {
            let id = path
                .strip_prefix("/api/inflight/")
                .and_then(|rest| rest.strip_suffix("/cancel"))
                .and_then(|id| id.parse::<u64>().ok());
            match id {
                Some(id) if app.inflight.cancel(id) => {
                    log::info!("in-flight request {id} cancelled through the API");
                    http::send_json(request, 200, &json!({"msg": "ok"}));
                }
                Some(id) => http::send_error(
                    request,
                    404,
                    &format!("no request {id} is in flight"),
                    None,
                    &[],
                ),
                None => http::send_error(
                    request,
                    404,
                    &format!("no route for POST {path} (use /api/inflight/<id>/cancel)"),
                    None,
                    &[],
                ),
            }
        }
        _ => return Some(request),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_quoted_hex_and_differ_per_file() {
        for asset in &ASSETS {
            assert_eq!(asset.etag.len(), 18, "{}", asset.name);
            assert!(asset.etag.starts_with('"') && asset.etag.ends_with('"'));
        }
        assert_ne!(ASSETS[0].etag, ASSETS[1].etag);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(&etag_bytes(0x0123_4567_89ab_cdef), b"\"0123456789abcdef\"");
    }

    #[test]
    fn if_none_match_forms() {
        let tag = "\"00000000000000ff\"";
        assert!(etag_matches(tag, tag));
        assert!(etag_matches(&format!("\"x\", W/{tag}"), tag));
        assert!(etag_matches("*", tag));
        assert!(!etag_matches("\"other\"", tag));
    }

    #[test]
    fn accept_encoding_forms() {
        let cases = [
            ("gzip", true),
            ("gzip, deflate, br, zstd", true),
            ("deflate, br", false),
            ("gzip;q=0", false),
            ("gzip; q=0.000", false),
            ("gzip;q=0.5", true),
            ("*", true),
            ("identity", false),
        ];
        for (header, expected) in cases {
            assert_eq!(accepts_gzip(header), expected, "{header}");
        }
    }

    #[test]
    fn assets_stay_within_the_budget() {
        let total: usize = ASSETS.iter().map(|asset| asset.bytes.len()).sum();
        assert!(total <= 60 * 1024, "UI assets are {total} bytes");
    }

    /// The gzipped copies must be the current sources: run `make ui-gz` after editing
    /// `src/ui/`. Decompressed with the system's `gzip`, which Debian always has.
    #[test]
    fn gzipped_copies_are_current() {
        for asset in &ASSETS {
            let mut child = std::process::Command::new("gzip")
                .arg("-dc")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("gzip must be installed to check the UI's compressed copies");
            let mut stdin = child.stdin.take().expect("piped");
            let bytes = asset.gzipped;
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                stdin.write_all(bytes).expect("write to gzip");
            });
            let output = child.wait_with_output().expect("gzip ran");
            writer.join().expect("writer thread");
            assert!(output.status.success(), "{}.gz is not gzip", asset.name);
            assert!(
                output.stdout == asset.bytes,
                "src/ui/{}.gz is stale: run `make ui-gz`",
                asset.name
            );
        }
    }
}
