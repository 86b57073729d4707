//! A keyless swapd serves web pages only from localhost and its own origin, answers only
//! requests addressed to names this machine has (DNS rebinding), and says so at startup when it
//! is exposed; with `apiKeys` set everything stays llama-swap's. Requests are written on raw
//! sockets so the tests control `Host`, `Origin` and the fetch-metadata headers exactly, as a
//! browser would send them.

use std::time::Duration;

use crate::common::*;

const EVIL: &str = "https://evil.example";

/// One response read off a raw socket.
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field
                .trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    /// Every `Access-Control-Allow-*` header the response carries.
    fn allow_headers(&self) -> Vec<&str> {
        self.head
            .lines()
            .filter(|line| {
                line.to_ascii_lowercase()
                    .starts_with("access-control-allow")
            })
            .collect()
    }

    fn error_code(&self) -> String {
        let value: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body));
        value["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn error_message(&self) -> String {
        let value: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body));
        value["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Sends one request with exactly these headers (plus `Host: addr` unless one is given).
fn send(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Raw {
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("Host"))
    {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let response = raw_exchange(addr, request.as_bytes(), Duration::from_secs(30));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response to {method} {path}: {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    Raw {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn chat_body(model: &str) -> String {
    chat(model).to_string()
}

/// The refusal of a keyless swapd: 403 with the JSON envelope naming the setting.
fn assert_refused(reply: &Raw, code: &str, setting: &str, what: &str) {
    assert_eq!(reply.status, 403, "{what}: {}", reply.body);
    assert_eq!(reply.error_code(), code, "{what}: {}", reply.body);
    let message = reply.error_message();
    assert!(message.contains(setting), "{what}: {message}");
    assert!(
        reply.allow_headers().is_empty(),
        "{what}: a refusal carries no CORS allow headers: {}",
        reply.head
    );
}

/// The proxy log so far (where swapd's warnings go besides stdout).
fn proxy_log(daemon: &Daemon) -> String {
    get(&daemon.url("/logs")).body
}

#[test]
fn a_foreign_page_cannot_unload_load_or_reload_and_nothing_happens() {
    let daemon = Daemon::start(&simple_config(&["a", "b"], "", ""));
    let addr = daemon.addr.as_str();
    let loaded = send(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &chat_body("a"),
    );
    assert_eq!(loaded.status, 200, "{}", loaded.body);
    daemon.wait_running(&["a"]);
    let pid = daemon.pid_of("a").expect("a has a pid");

    let evil = [("Origin", EVIL), ("Content-Type", "application/json")];
    for (method, path, body) in [
        ("POST", "/api/models/unload", String::new()),
        ("POST", "/api/models/unload/a", String::new()),
        ("GET", "/unload", String::new()),
        ("POST", "/unload", String::new()),
        ("POST", "/api/config/reload", String::new()),
        ("POST", "/v1/chat/completions", chat_body("b")),
        ("GET", "/upstream/b/health", String::new()),
        ("GET", "/running", String::new()),
        ("GET", "/logs", String::new()),
    ] {
        let reply = send(addr, method, path, &evil, &body);
        assert_refused(
            &reply,
            "origin_not_allowed",
            "swapd.allowedOrigins",
            &format!("{method} {path} from {EVIL}"),
        );
    }

    // Form posts need no preflight, so a page can send them anywhere: refused before any
    // handler, whatever the route.
    for content_type in [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/plain;charset=UTF-8",
    ] {
        for (path, body) in [
            ("/api/models/unload", String::new()),
            ("/v1/chat/completions", chat_body("b")),
        ] {
            let reply = send(
                addr,
                "POST",
                path,
                &[("Origin", EVIL), ("Content-Type", content_type)],
                &body,
            );
            assert_refused(
                &reply,
                "origin_not_allowed",
                "swapd.allowedOrigins",
                &format!("{content_type} form post to {path}"),
            );
            assert!(
                reply.error_message().contains("form post"),
                "{}",
                reply.body
            );
        }
    }

    // Without an Origin (an <img src=…/unload>), the browser's fetch metadata or the Referer
    // shows that another site sent it.
    for headers in [
        &[
            ("Sec-Fetch-Site", "cross-site"),
            ("Sec-Fetch-Mode", "no-cors"),
        ][..],
        &[("Referer", "https://evil.example/page.html")][..],
    ] {
        let reply = send(addr, "GET", "/unload", headers, "");
        assert_refused(
            &reply,
            "origin_not_allowed",
            "swapd.allowedOrigins",
            &format!("GET /unload with {headers:?}"),
        );
        let reply = send(addr, "GET", "/upstream/b/health", headers, "");
        assert_eq!(reply.status, 403, "loading b by a link: {}", reply.body);
    }
    // A link from another site to a page without side effects still works.
    let link = send(
        addr,
        "GET",
        "/running",
        &[
            ("Sec-Fetch-Site", "cross-site"),
            ("Sec-Fetch-Mode", "navigate"),
        ],
        "",
    );
    assert_eq!(link.status, 200, "{}", link.body);

    // Nothing happened: a is still loaded, by the same process, and b was never started.
    assert_eq!(
        daemon.running_states(),
        [("a".to_string(), "ready".to_string())]
    );
    assert_eq!(daemon.pid_of("a"), Some(pid));
    assert!(pid_alive(pid));

    // The same request without an Origin (curl, an SDK) is served: the refusals above were
    // the origin rule, not a broken route.
    let unload = send(addr, "POST", "/api/models/unload", &[], "");
    assert_eq!(unload.status, 200, "{}", unload.body);
    wait_for("a unloaded", Duration::from_secs(20), || {
        daemon.running_states().is_empty().then_some(())
    });
}

#[test]
fn preflights_answer_only_allowed_origins() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    let addr = daemon.addr.as_str();
    let preflight = |origin: Option<&str>| {
        let mut headers = vec![
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ];
        if let Some(origin) = origin {
            headers.push(("Origin", origin));
        }
        send(addr, "OPTIONS", "/api/models/unload", &headers, "")
    };

    let foreign = preflight(Some(EVIL));
    assert_refused(
        &foreign,
        "origin_not_allowed",
        "swapd.allowedOrigins",
        "preflight from a foreign origin",
    );

    let own = format!("http://{addr}");
    for origin in [
        "http://localhost:5173",
        "http://127.0.0.1:3000",
        own.as_str(),
    ] {
        let allowed = preflight(Some(origin));
        assert_eq!(allowed.status, 204, "{origin}: {}", allowed.head);
        assert_eq!(
            allowed.header("Access-Control-Allow-Origin"),
            Some(origin),
            "an allowed page is named, not *"
        );
        assert_eq!(allowed.header("Vary"), Some("Origin"));
        assert!(allowed
            .header("Access-Control-Allow-Methods")
            .unwrap_or_default()
            .contains("POST"));
    }

    // No Origin: not a browser; llama-swap's answer.
    let plain = preflight(None);
    assert_eq!(plain.status, 204);
    assert_eq!(plain.header("Access-Control-Allow-Origin"), Some("*"));
}

#[test]
fn localhost_pages_and_swapd_own_origin_are_served() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    let addr = daemon.addr.as_str();
    let port = addr.rsplit(':').next().expect("a port");
    let own = format!("http://{addr}");
    for origin in [
        "http://localhost",
        "http://localhost:5173",
        "https://localhost:8443",
        "http://127.0.0.1:3000",
        "http://[::1]:8080",
        own.as_str(),
    ] {
        let running = send(addr, "GET", "/running", &[("Origin", origin)], "");
        assert_eq!(running.status, 200, "{origin}: {}", running.body);
        let models = send(addr, "GET", "/v1/models", &[("Origin", origin)], "");
        assert_eq!(models.status, 200, "{origin}: {}", models.body);
        assert_eq!(models.header("Access-Control-Allow-Origin"), Some(origin));
    }
    // swapd's own origin as the UI would use it: by name, with state-changing calls.
    let by_name = format!("localhost:{port}");
    let chat = send(
        addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("Host", &by_name),
            ("Origin", &format!("http://{by_name}")),
            ("Content-Type", "application/json"),
        ],
        &chat_body("a"),
    );
    assert_eq!(chat.status, 200, "{}", chat.body);
    daemon.wait_running(&["a"]);
    let unload = send(
        addr,
        "POST",
        "/api/models/unload",
        &[("Origin", &own), ("Sec-Fetch-Site", "same-origin")],
        "",
    );
    assert_eq!(unload.status, 200, "{}", unload.body);
    wait_for("a unloaded", Duration::from_secs(20), || {
        daemon.running_states().is_empty().then_some(())
    });
    // A page on another port of the same address is another origin.
    let other_port = send(
        addr,
        "POST",
        "/unload",
        &[
            ("Host", "192.168.77.1:8080"),
            ("Origin", "http://192.168.77.1:9090"),
        ],
        "",
    );
    assert_refused(
        &other_port,
        "origin_not_allowed",
        "swapd.allowedOrigins",
        "another port",
    );
}

#[test]
fn foreign_hosts_are_refused_except_on_health() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    let addr = daemon.addr.as_str();
    let port = addr.rsplit(':').next().expect("a port");

    // A DNS-rebinding page: same-origin to the browser, so no Origin on GET.
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
    ] {
        for (method, path) in [
            ("GET", "/running"),
            ("GET", "/logs"),
            ("POST", "/api/models/unload"),
            ("OPTIONS", "/v1/chat/completions"),
        ] {
            let reply = send(addr, method, path, &[("Host", &host)], "");
            assert_refused(
                &reply,
                "host_not_allowed",
                "swapd.allowedHosts",
                &format!("{method} {path} with Host {host}"),
            );
        }
        let health = send(
            addr,
            "GET",
            "/health",
            &[("Host", &host), ("Origin", EVIL)],
            "",
        );
        assert_eq!(
            health.status, 200,
            "/health is always open: {}",
            health.body
        );
        assert_eq!(health.body, "OK");
    }

    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("the machine's name")
        .trim()
        .to_string();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("10.0.0.7:{port}"),
        format!("[::1]:{port}"),
        format!("localhost:{port}"),
        "LOCALHOST".to_string(),
        format!("{hostname}:{port}"),
        format!("swapd:{port}"),
        format!("host.docker.internal:{port}"),
    ] {
        let reply = send(addr, "GET", "/running", &[("Host", &host)], "");
        assert_eq!(reply.status, 200, "Host {host}: {}", reply.body);
    }
    // HTTP/1.0 clients may send no Host at all.
    let bare = raw_exchange(
        addr,
        b"GET /running HTTP/1.0\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(
        bare.starts_with("HTTP/1.1 200") || bare.starts_with("HTTP/1.0 200"),
        "{bare}"
    );

    assert!(
        !proxy_log(&daemon).contains("without apiKeys"),
        "no exposure warning on loopback"
    );
}

#[test]
fn allowed_origins_and_hosts_open_what_they_name() {
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "",
        "swapd:\n  allowedOrigins: [\"https://app.example.com\", \"*.corp.example\", \"chrome-extension://*\"]\n  allowedHosts: [llm.example.com, \"*.lan.example\"]\n",
    ));
    let addr = daemon.addr.as_str();
    for (origin, status) in [
        ("https://app.example.com", 200),
        ("https://app.example.com:443", 200),
        ("http://app.example.com", 403),
        ("https://app.example.com:8443", 403),
        ("https://tools.corp.example", 200),
        ("http://a.b.corp.example:8080", 200),
        ("https://corp.example", 403),
        ("https://corp.example.evil", 403),
        ("chrome-extension://abcdefgh", 200),
        ("moz-extension://abcdefgh", 403),
        (EVIL, 403),
    ] {
        let reply = send(
            addr,
            "POST",
            "/api/models/unload",
            &[("Origin", origin), ("Content-Type", "application/json")],
            "",
        );
        assert_eq!(reply.status, status, "{origin}: {}", reply.body);
    }
    for (host, status) in [
        ("llm.example.com", 200),
        ("LLM.example.com:8080", 200),
        ("gpu.lan.example:8080", 200),
        ("lan.example", 403),
        ("other.example", 403),
    ] {
        let reply = send(addr, "GET", "/running", &[("Host", host)], "");
        assert_eq!(reply.status, status, "Host {host}: {}", reply.body);
    }
    // Behind a reverse proxy that passes the public Host on: the page it serves is swapd's
    // own origin, so the UI works without listing the origin too.
    let proxied = send(
        addr,
        "POST",
        "/api/models/unload",
        &[
            ("Host", "llm.example.com"),
            ("Origin", "https://llm.example.com"),
            ("X-Forwarded-Proto", "https"),
        ],
        "",
    );
    assert_eq!(proxied.status, 200, "{}", proxied.body);
}

#[test]
fn star_restores_llama_swap_behaviour_with_a_warning() {
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "",
        "swapd:\n  allowedOrigins: [\"*\"]\n  allowedHosts: [\"*\"]\n",
    ));
    let addr = daemon.addr.as_str();
    let port = addr.rsplit(':').next().expect("a port");
    let reply = send(
        addr,
        "POST",
        "/api/models/unload",
        &[
            ("Host", &format!("evil.example:{port}")),
            ("Origin", EVIL),
            ("Content-Type", "text/plain"),
        ],
        "",
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let preflight = send(
        addr,
        "OPTIONS",
        "/v1/chat/completions",
        &[("Origin", EVIL), ("Access-Control-Request-Method", "POST")],
        "",
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("Access-Control-Allow-Origin"), Some(EVIL));
    let log = proxy_log(&daemon);
    assert!(
        log.contains("swapd.allowedOrigins is \"*\"") && log.contains("any web page"),
        "{log}"
    );
    assert!(
        log.contains("swapd.allowedHosts is \"*\"") && log.contains("DNS rebinding"),
        "{log}"
    );
}

#[test]
fn with_api_keys_everything_stays_llama_swap_compatible() {
    let daemon = Daemon::start_with_args(
        &simple_config(&["a"], "", "apiKeys: [sk-test]"),
        &["--listen", "0.0.0.0:0"],
    );
    let port = daemon.addr.rsplit(':').next().expect("a port").to_string();
    let addr = format!("127.0.0.1:{port}");
    let evil_host = format!("evil.example:{port}");
    let foreign = [
        ("Host", evil_host.as_str()),
        ("Origin", EVIL),
        ("Sec-Fetch-Site", "cross-site"),
    ];

    let preflight = send(
        &addr,
        "OPTIONS",
        "/api/models/unload",
        &[
            foreign[0],
            foreign[1],
            ("Access-Control-Request-Method", "POST"),
        ],
        "",
    );
    assert_eq!(preflight.status, 204, "{}", preflight.head);
    assert_eq!(preflight.header("Access-Control-Allow-Origin"), Some("*"));

    let mut with_key = foreign.to_vec();
    with_key.push(("Authorization", "Bearer sk-test"));
    with_key.push(("Content-Type", "application/json"));
    let chat = send(
        &addr,
        "POST",
        "/v1/chat/completions",
        &with_key,
        &chat_body("a"),
    );
    assert_eq!(chat.status, 200, "{}", chat.body);
    let models = send(&addr, "GET", "/v1/models", &with_key, "");
    assert_eq!(models.status, 200, "{}", models.body);
    assert_eq!(models.header("Access-Control-Allow-Origin"), Some(EVIL));
    let unload = send(&addr, "GET", "/unload", &with_key, "");
    assert_eq!(unload.status, 200, "{}", unload.body);

    // The key protects: the same foreign request without it is a 401, not a 403.
    let without = send(&addr, "POST", "/api/models/unload", &foreign, "");
    assert_eq!(without.status, 401, "{}", without.body);

    let log = get_with_headers(
        &format!("http://{addr}/logs"),
        &[("Authorization", "Bearer sk-test")],
    )
    .body;
    assert!(
        !log.contains("without apiKeys"),
        "no exposure warning with keys: {log}"
    );
}

#[test]
fn listening_beyond_loopback_without_keys_warns_at_startup() {
    let daemon =
        Daemon::start_with_args(&simple_config(&["a"], "", ""), &["--listen", "0.0.0.0:0"]);
    let port = daemon.addr.rsplit(':').next().expect("a port").to_string();
    let log = get(&format!("http://127.0.0.1:{port}/logs")).body;
    let warning = log
        .lines()
        .find(|line| line.contains("without apiKeys"))
        .unwrap_or_else(|| panic!("no exposure warning in the log:\n{log}"));
    assert!(warning.contains(&format!("0.0.0.0:{port}")), "{warning}");
    assert!(warning.contains("set apiKeys"), "{warning}");
    assert!(warning.contains("other machines"), "{warning}");
    // The origin and host rules still hold on every interface.
    let reply = send(
        &format!("127.0.0.1:{port}"),
        "POST",
        "/api/models/unload",
        &[("Origin", EVIL)],
        "",
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
}

#[test]
fn a_reload_changes_the_allowed_origins() {
    let config = simple_config(&["a"], "", "");
    let daemon = Daemon::start(&config);
    let addr = daemon.addr.as_str();
    let refused = send(addr, "POST", "/api/models/unload", &[("Origin", EVIL)], "");
    assert_eq!(refused.status, 403, "{}", refused.body);

    let path = daemon.dir.path().join("config.yaml");
    let text = std::fs::read_to_string(&path).expect("read config");
    std::fs::write(
        &path,
        format!("{text}\nswapd:\n  allowedOrigins: [\"{EVIL}\"]\n"),
    )
    .expect("write config");
    let reload = send(addr, "POST", "/api/config/reload", &[], "");
    assert_eq!(reload.status, 200, "{}", reload.body);
    let allowed = send(addr, "POST", "/api/models/unload", &[("Origin", EVIL)], "");
    assert_eq!(allowed.status, 200, "{}", allowed.body);
}

#[test]
fn a_bad_allowed_origin_is_a_config_error_naming_line_and_key() {
    let dir = TempDir::new("security-config");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "models:\n  a:\n    cmd: srv --port ${PORT}\nswapd:\n  allowedOrigins:\n    - https://ok.example\n    - https://app.example.com/path\n",
    )
    .expect("write config");
    let output = std::process::Command::new(SWAPD)
        .arg("--check-config")
        .arg(&path)
        .output()
        .expect("run swapd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("bad.yaml:7"), "{stderr}");
    assert!(stderr.contains("swapd.allowedOrigins[1]"), "{stderr}");
    assert!(stderr.contains("has a path"), "{stderr}");
}

/// nginx in the foreground on its own prefix, stopped (SIGTERM, then SIGKILL) on drop.
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: TempDir,
}

impl Nginx {
    /// Starts nginx with `locations` (server-block text) on a free port. nginx is required:
    /// without it the test fails, naming the package, rather than passing without running
    /// (`.ci/run` installs it).
    fn start(locations: &str) -> Nginx {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .unwrap_or_else(|| {
                panic!("nginx is not installed; this test runs README's reverse-proxy example with it (apt-get install nginx)")
            });
        let dir = TempDir::new("nginx");
        let prefix = dir.path().to_str().expect("utf-8 temp path").to_string();
        let port = free_port_range(1);
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let conf = format!(
            "{user}\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n  \
             proxy_temp_path {prefix}/proxy;\n  fastcgi_temp_path {prefix}/fastcgi;\n  \
             uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n  \
             server {{\n    listen 127.0.0.1:{port};\n{locations}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("write nginx.conf");
        let child = std::process::Command::new(binary)
            .args(["-p", &prefix, "-c", &format!("{prefix}/nginx.conf")])
            .args(["-g", "daemon off;"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx {
            child,
            port,
            _dir: dir,
        };
        wait_for("nginx to listen", Duration::from_secs(30), || {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(nginx._dir.path().join("error.log"));
                panic!("nginx exited ({status}): {log:?}");
            }
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
        nginx
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill(self.child.id(), libc::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// README's reverse-proxy example, run: nginx under a path prefix passing `Host` on.
#[test]
fn behind_nginx_with_a_path_prefix_the_proxied_origin_is_swapd_own() {
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "",
        "swapd:\n  allowedHosts: [llm.example.com]\n",
    ));
    let nginx = Nginx::start(&format!(
        "    location /swapd/ {{\n      proxy_pass http://{swapd}/;\n      \
         proxy_set_header Host $http_host;\n      proxy_http_version 1.1;\n      \
         proxy_buffering off;\n    }}\n    \
         location /plain/ {{\n      proxy_pass http://{swapd}/;\n      proxy_http_version 1.1;\n    }}",
        swapd = daemon.addr
    ));
    let front = nginx.addr();
    let public = format!("llm.example.com:{}", nginx.port);
    let page = format!("http://{public}");
    let through = |path: &str, host: &str, origin: &str, body: &str| {
        send(
            &front,
            "POST",
            path,
            &[
                ("Host", host),
                ("Origin", origin),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    };

    let chat = through(
        "/swapd/v1/chat/completions",
        &public,
        &page,
        &chat_body("a"),
    );
    assert_eq!(chat.status, 200, "{}", chat.body);
    daemon.wait_running(&["a"]);
    let foreign = through("/swapd/api/models/unload", &public, EVIL, "");
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    assert_eq!(foreign.error_code(), "origin_not_allowed");
    let rebinding = through(
        "/swapd/api/models/unload",
        &format!("evil.example:{}", nginx.port),
        &format!("http://evil.example:{}", nginx.port),
        "",
    );
    assert_eq!(rebinding.status, 403, "{}", rebinding.body);
    assert_eq!(rebinding.error_code(), "host_not_allowed");
    daemon.wait_running(&["a"]);
    // nginx's default Host is the upstream address: the page is then not swapd's own origin.
    let default_host = through("/plain/api/models/unload", &public, &page, "");
    assert_eq!(default_host.status, 403, "{}", default_host.body);
    assert!(default_host.error_message().contains("allowedOrigins"));

    let unload = through("/swapd/api/models/unload", &public, &page, "");
    assert_eq!(unload.status, 200, "{}", unload.body);
    wait_for("a unloaded", Duration::from_secs(20), || {
        daemon.running_states().is_empty().then_some(())
    });
}
