//! Ollama's REST API (`/api/chat`, `/api/generate`, `/api/tags`, ...) on top of swapd's models,
//! so clients that only speak Ollama can use swapd.
//!
//! Requests are translated to each model's OpenAI-compatible upstream (or llama.cpp's native
//! `/infill`) and answers back to Ollama's shapes, streaming NDJSON line by line as the upstream
//! produces tokens. Underneath, the request takes the same path as an OpenAI one: the same
//! authentication (checked before dispatch), the same `acquire → lease → upstream` machinery with
//! swapping, queueing, `concurrencyLimit` and its 429s, and the same metrics. The module is split
//! into pure parts (translation, the stream state machine, the GGUF reader, model descriptions)
//! and the thin handlers that do the I/O.

pub mod catalog;
pub mod gguf;
mod handlers;
pub mod stream;
pub mod translate;

use crate::proxy::App;

/// The Ollama endpoints swapd serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Tags,
    Ps,
    Show,
    Chat,
    Generate,
    Embed,
    /// The legacy `/api/embeddings`.
    Embeddings,
    /// Model management Ollama has and swapd does not (`/api/pull`, ...): a clear error.
    Unsupported(&'static str),
    /// A known Ollama path with the wrong method.
    WrongMethod(&'static str),
}

/// Which Ollama endpoint a request is for. `None` leaves the request to swapd's other routes
/// (`/api/version`, `/api/events`, `/api/metrics`, `/api/models/unload` are swapd's own).
pub fn route(method: &str, path: &str) -> Option<Route> {
    const PATHS: &[(&str, &[&str])] = &[
        ("/api/tags", &["GET", "HEAD"]),
        ("/api/ps", &["GET"]),
        ("/api/show", &["POST"]),
        ("/api/chat", &["POST"]),
        ("/api/generate", &["POST"]),
        ("/api/embed", &["POST"]),
        ("/api/embeddings", &["POST"]),
        ("/api/pull", &["POST"]),
        ("/api/push", &["POST"]),
        ("/api/create", &["POST"]),
        ("/api/copy", &["POST"]),
        ("/api/delete", &["DELETE"]),
    ];
    if let Some(rest) = path.strip_prefix("/api/blobs/") {
        return (!rest.is_empty()).then_some(Route::Unsupported("/api/blobs"));
    }
    let (known, methods) = PATHS.iter().find(|(known, _)| *known == path)?;
    if !methods.contains(&method) {
        return Some(Route::WrongMethod(known));
    }
    Some(match *known {
        "/api/tags" => Route::Tags,
        "/api/ps" => Route::Ps,
        "/api/show" => Route::Show,
        "/api/chat" => Route::Chat,
        "/api/generate" => Route::Generate,
        "/api/embed" => Route::Embed,
        "/api/embeddings" => Route::Embeddings,
        other => Route::Unsupported(other),
    })
}

/// Serves one Ollama request (authentication and the connection limits are already checked).
pub fn handle(app: &App, request: tiny_http::Request, route: Route) {
    handlers::handle(app, request, route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("GET", "/api/tags"), Some(Route::Tags));
        assert_eq!(route("HEAD", "/api/tags"), Some(Route::Tags));
        assert_eq!(route("POST", "/api/chat"), Some(Route::Chat));
        assert_eq!(
            route("GET", "/api/chat"),
            Some(Route::WrongMethod("/api/chat"))
        );
        assert_eq!(
            route("DELETE", "/api/delete"),
            Some(Route::Unsupported("/api/delete"))
        );
        assert_eq!(
            route("HEAD", "/api/blobs/sha256:ab"),
            Some(Route::Unsupported("/api/blobs"))
        );
        // swapd's own /api routes are not Ollama's.
        for path in [
            "/api/version",
            "/api/events",
            "/api/metrics",
            "/api/models/unload",
            "/api/config/reload",
        ] {
            assert_eq!(route("GET", path), None, "{path}");
            assert_eq!(route("POST", path), None, "{path}");
        }
    }
}
