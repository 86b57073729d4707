//! The HTTP front: accepting requests, routing them, and the thin handlers.
//!
//! A handler reads the body (bounded), finds the model, resolves aliases, rewrites the body,
//! asks the supervisor for a lease and forwards. Decisions live elsewhere: parsing and rewriting
//! in [`extract`], scheduling in the supervisor, streaming in [`forward`].

// Unsafe code only in the two socket calls below, `origin` (gethostname) and `relay` (epoll,
// eventfd).
#![deny(unsafe_code)]

pub mod acquire;
pub mod extract;
pub mod forward;
pub mod guard;
pub mod hooks;
#[allow(unsafe_code)]
pub mod origin;
pub mod peers;
#[allow(unsafe_code)]
pub mod relay;
mod routes;
pub mod routing;
mod ui_api;
pub mod usage;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::activity::inflight::Inflight;
use crate::activity::ActivityLog;
use crate::config::{self, Config, Limits};
use crate::logs::Logs;
use crate::metrics::Metrics;
use crate::supervisor::{ReloadRequest, Supervisor};
use crate::upstream;

pub use hooks::Hooks;

/// Another API served on the same port (the Ollama API): given the request's upper-case method
/// and path, it handles the request if the route is one of its own (`None`) or gives it back.
/// The daemon plugs it in, so the proxy does not depend on the modules that implement it.
pub type Dialect = fn(&App, tiny_http::Request, &str, &str) -> Option<tiny_http::Request>;

/// Everything a handler needs, shared by all connection threads. The fields are private:
/// handlers in this module use them directly, other modules go through the accessors below.
pub struct App {
    // What the daemon hands the front: the config in force (written only by the reload path),
    // the supervisor, and the stores handlers write to.
    config: Arc<config::Current>,
    supervisor: Supervisor,
    logs: Arc<Logs>,
    metrics: Arc<Metrics>,
    /// Finished requests in llama-swap's activity shape (bounded by `metricsMaxInMemory`).
    activity: Arc<ActivityLog>,
    /// Requests being served, for `/api/events` and cancelling.
    inflight: Inflight,
    /// Connections to the upstreams, pooled per upstream.
    upstream: upstream::Client,
    /// Where reload requests go (served one at a time by the daemon's main thread).
    reloads: Sender<ReloadRequest>,
    /// APIs other than llama-swap's served on the same routes table (see [`Dialect`]).
    dialects: Vec<Dialect>,

    // The front's own state.
    local_addr: SocketAddr,
    started_at: Instant,
    /// This machine's host name, read once at startup for the `Host` check (see [`origin`]).
    hostname: Option<String>,
    guard: Arc<guard::ConnectionGuard>,
    active: AtomicUsize,
    shutting_down: AtomicBool,
    /// The active profile and the selectors' in-flight counts.
    routing: routing::RoutingState,
    /// Peer reachability and this swapd's loop-detection token (see [`peers`]).
    peers: peers::PeerRuntime,
    /// Test hooks (always off without the `test-hooks` feature).
    hooks: Hooks,
}

impl App {
    pub fn new(
        config: Arc<config::Current>,
        supervisor: Supervisor,
        logs: Arc<Logs>,
        metrics: Arc<Metrics>,
        local_addr: SocketAddr,
        reloads: Sender<ReloadRequest>,
        dialects: Vec<Dialect>,
    ) -> App {
        let activity = {
            let config = config.get();
            Arc::new(crate::activity::open(
                config.metrics_max_in_memory,
                config.activity_store.as_deref(),
            ))
        };
        App {
            config,
            supervisor,
            logs,
            metrics,
            activity,
            inflight: Inflight::new(),
            upstream: upstream::Client::new(Duration::from_secs(5)),
            reloads,
            dialects,
            local_addr,
            started_at: Instant::now(),
            hostname: origin::machine_hostname(),
            guard: Arc::new(guard::ConnectionGuard::new()),
            active: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            routing: routing::RoutingState::default(),
            peers: peers::PeerRuntime::new(),
            hooks: Hooks::from_environment(),
        }
    }

    /// The current configuration (a cheap `Arc` clone; reloads swap it whole).
    pub fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    pub fn limits(&self) -> Limits {
        self.config().limits.clone()
    }

    /// What the front does when a reload replaces the config, before handlers see the new one:
    /// the active profile ends and selector counters of removed selectors go, and a change in
    /// who may connect repeats the startup exposure warnings.
    pub fn config_changing(&self, old: &Config, new: &Config) {
        if old.access != new.access || old.api_keys.is_empty() != new.api_keys.is_empty() {
            for warning in origin::exposure_warnings(new, self.local_addr) {
                log::warn!("{warning}");
            }
        }
        self.routing.reset_for(new);
    }

    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn activity(&self) -> &ActivityLog {
        &self.activity
    }

    pub fn inflight(&self) -> &Inflight {
        &self.inflight
    }

    pub fn upstream(&self) -> &upstream::Client {
        &self.upstream
    }

    /// The read and connect timeouts for the local model `model`: its own `timeouts` where
    /// set, else swapd's (`swapd.upstreamTimeout`; `None`: the upstream client's connect
    /// timeout).
    pub fn model_timeouts(&self, model: &str) -> (Duration, Option<Duration>) {
        let config = self.config();
        let timeouts = config
            .models
            .get(model)
            .map(|model| model.timeouts)
            .unwrap_or_default();
        let read = timeouts
            .response_header
            .unwrap_or(config.limits.upstream_timeout);
        (read, timeouts.connect)
    }

    /// The read and connect timeouts for `peer`: its own `timeouts` where set, else swapd's
    /// (`swapd.upstreamTimeout`; a peer always has a connect timeout, 2 s by default).
    pub fn peer_timeouts(&self, peer: &crate::config::PeerConfig) -> (Duration, Option<Duration>) {
        let read = peer
            .read_timeout
            .unwrap_or_else(|| self.config().limits.upstream_timeout);
        (read, Some(peer.connect_timeout))
    }

    /// When this App was made (the daemon's start, for uptimes).
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// Whether requests are metered (only a benchmark's test hook turns it off).
    pub fn request_metrics(&self) -> bool {
        self.hooks.request_metrics
    }

    /// Requests being handled right now.
    pub fn active_requests(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// The client end of one request: enough to notice it left, or to cut it. It holds the
/// connection's own handle (from the vendored tiny_http), so both are O(1) and can never act on
/// another socket that happens to reuse a descriptor number.
pub struct ClientSocket {
    socket: Option<tiny_http::ConnectionHandle>,
}

impl ClientSocket {
    /// Whether the client has closed its connection (checked without consuming data).
    pub fn is_gone(&self) -> bool {
        self.socket
            .as_ref()
            .is_some_and(|socket| crate::http::peer_has_closed(socket.as_raw_fd()))
    }

    /// Shuts the connection down so the client sees the response end abnormally.
    pub fn cut(&self) {
        if let Some(socket) = &self.socket {
            // An error means the connection is already closed.
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Binds the listening socket and prepares it with [`prepare_listener`].
pub fn bind(address: &str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(address)?;
    prepare_listener(&listener)?;
    Ok(listener)
}

/// Readies a listening socket, however it was made (bound here or inherited), for serving:
/// no Nagle delay, which every accepted connection inherits on Linux, and the system's largest
/// accept queue, so that a burst of thousands of connects is neither refused nor left waiting
/// for a SYN retry (std's `TcpListener::bind` asks for 128). Idle and slow clients are handled
/// by [`guard::ConnectionGuard`], not by a socket read timeout (see there why).
#[allow(unsafe_code)]
pub fn prepare_listener(listener: &TcpListener) -> std::io::Result<()> {
    let fd = listener.as_raw_fd();
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own with a correctly sized option value, and listen()
    // on a socket that is already listening, which only changes its backlog. The kernel caps
    // the backlog at net.core.somaxconn, the system's maximum.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        if libc::listen(fd, libc::c_int::MAX) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Serves `listener` (prepared with [`prepare_listener`]) with swapd's handler: tiny_http's
/// accept thread hands each connection to its own thread, which registers it with the
/// connection guard and runs [`handler`]'s requests.
///
/// It also starts the connection guard's thread (idle and slow clients, see [`guard`]).
pub fn serve(app: &Arc<App>, listener: TcpListener) -> std::io::Result<tiny_http::Server> {
    app.guard.start(app.limits().header_timeout);
    tiny_http::Server::from_listener_with_handler(listener, handler(app.clone()), CONNECTION_STACK)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Stack size of the connection threads that run the handlers. Only the pages a thread touches
/// are resident (about 20 KiB); the size is address space. It is 1 MiB rather than less because
/// glibc caches the stacks of exited threads up to 40 MiB in total, touched pages included, so
/// bigger stacks mean fewer of them cached after a burst of connections (see
/// `release_stack_pages` in the vendored tiny_http). It leaves ample room for serde_json's
/// recursion (depth limit 128).
pub const CONNECTION_STACK: usize = 1024 * 1024;

/// What tiny_http runs on each connection's thread: registration with the connection guard
/// when the connection opens, then swapd's handler for every request read on it (one thread
/// per connection, no queue between reading and handling).
pub struct Handler {
    app: Arc<App>,
}

impl tiny_http::Handler for Handler {
    type Connection = guard::Registration;

    fn connected(&self, socket: Option<&tiny_http::ConnectionHandle>) -> guard::Registration {
        self.app.guard.register(socket)
    }

    fn handle(&self, connection: &mut guard::Registration, request: tiny_http::Request) {
        handle_one(&self.app, connection, request)
    }
}

pub fn handler(app: Arc<App>) -> Arc<Handler> {
    Arc::new(Handler { app })
}

fn handle_one(app: &App, connection: &guard::Registration, request: tiny_http::Request) {
    // A declared body counts as being received until a handler reads it: answering without
    // reading it makes tiny_http drain it first, which a stalling client must not make endless.
    // Not with `Expect: 100-continue`: that client sends nothing until a read asks for it.
    let has_header = |name: &'static str| request.headers().iter().any(|h| h.field.equiv(name));
    let body_owed = !has_header("Expect")
        && request
            .body_length()
            .map_or_else(|| has_header("Transfer-Encoding"), |length| length > 0);
    let marked = connection.begin(body_owed);
    let active = app.active.fetch_add(1, Ordering::SeqCst) + 1;
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        routes::handle(app, request, active)
    }));
    if handled.is_err() {
        // The request was dropped during unwinding, which makes tiny_http answer a 500 with
        // swapd's JSON error envelope (see src/vendor/README-swapd.md).
        log::error!("a request handler panicked; the request got a 500");
    }
    app.active.fetch_sub(1, Ordering::SeqCst);
    drop(marked);
}

/// Stops taking requests: new connections are refused, new requests on open connections get
/// 503, requests in progress go on until they finish or `deadline` passes.
///
/// `listener_fd` is `None` for a socket systemd passed (socket activation): shutting that
/// socket down would break it for the next swapd too, since systemd holds the same socket.
/// The caller has ended the accept loop another way, and new connections wait in the
/// socket's queue for the next instance.
#[allow(unsafe_code)]
pub fn stop_accepting(app: &App, listener_fd: Option<RawFd>, deadline: Instant) {
    app.shutting_down.store(true, Ordering::SeqCst);
    app.guard.stop();
    if let Some(listener_fd) = listener_fd {
        // SAFETY: shutting down the read side of our listening socket makes accept() fail,
        // which ends tiny_http's accept thread; the descriptor itself stays valid.
        unsafe {
            libc::shutdown(listener_fd, libc::SHUT_RD);
        }
    }
    while app.active_requests() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Why a request body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// It is (or declares itself) larger than the limit: 413.
    TooLarge,
    /// It could not be read or was cut short: 400.
    Unreadable,
}

impl BodyError {
    /// The status and message the client gets; `limit` is the limit that was applied.
    pub fn status_and_message(self, limit: usize) -> (u16, String) {
        match self {
            BodyError::TooLarge => (
                413,
                format!("request body is larger than the limit of {limit} bytes"),
            ),
            BodyError::Unreadable => (
                400,
                "the request body could not be read (truncated?)".to_string(),
            ),
        }
    }
}

/// Reads a request body up to `limit` bytes.
pub(crate) fn read_body(
    app: &App,
    request: &mut tiny_http::Request,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if request.body_length().is_some_and(|length| length > limit) {
        return Err(BodyError::TooLarge);
    }
    let _reading = app.guard.reading_body(request.connection());
    let declared = request.body_length();
    let chunked = request
        .headers()
        .iter()
        .any(|h| h.field.equiv("Transfer-Encoding"));
    let mut body = Vec::with_capacity(request.body_length().unwrap_or(0).min(limit));
    let read = request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body);
    match read {
        Ok(_) if body.len() > limit => Err(BodyError::TooLarge),
        // tiny_http reports a body cut short by the client as a normal end.
        Ok(_) if declared.is_some_and(|length| body.len() < length) => Err(BodyError::Unreadable),
        Ok(_) if chunked && client_of_request(request).is_gone() => Err(BodyError::Unreadable),
        Ok(_) => Ok(body),
        Err(_) => Err(BodyError::Unreadable),
    }
}

/// The client socket of a request (for the rare checks that need it).
pub(crate) fn client_of_request(request: &tiny_http::Request) -> ClientSocket {
    ClientSocket {
        socket: request.connection().cloned(),
    }
}
