//! Log endpoints through the daemon, read the way curl reads them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;

/// Opens a GET on a raw socket (like `curl -N`) and returns it.
fn open_get(addr: &str, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("write");
    stream
}

/// Reads from `stream` until `needle` has been seen or `timeout` passes.
fn read_until(stream: &mut TcpStream, seen: &mut String, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; 8192];
    while Instant::now() < deadline {
        if seen.contains(needle) {
            return true;
        }
        if let Ok(n) = stream.read(&mut buffer) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    }
    seen.contains(needle)
}

#[test]
fn model_stream_shows_child_output_live() {
    let daemon = Daemon::start(&simple_config(&["org/a"], "    aliases: [alpha]\n", ""));
    let mut by_alias = open_get(&daemon.addr, "/logs/stream/alpha");
    let mut by_id = open_get(&daemon.addr, "/logs/stream/org/a?no-history");
    let mut seen_alias = String::new();
    let mut seen_id = String::new();
    assert!(read_until(
        &mut by_alias,
        &mut seen_alias,
        "\r\n\r\n",
        Duration::from_secs(30)
    ));
    assert!(seen_alias.contains("200 OK"), "{seen_alias}");
    assert!(seen_alias
        .to_ascii_lowercase()
        .contains("x-accel-buffering: no"));
    assert!(seen_alias
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked"));
    assert_eq!(
        post_json(
            &daemon.url("/v1/chat/completions"),
            &crate::common::chat("alpha")
        )
        .status,
        200
    );
    // fake-upstream logs "listening" at start and one line per request.
    assert!(
        read_until(
            &mut by_alias,
            &mut seen_alias,
            "fake-upstream",
            Duration::from_secs(30)
        ),
        "{seen_alias}"
    );
    assert!(
        read_until(
            &mut by_id,
            &mut seen_id,
            "/v1/chat/completions",
            Duration::from_secs(30)
        ),
        "{seen_id}"
    );
}

#[test]
fn history_and_live_on_every_log_endpoint() {
    let daemon = Daemon::start(&simple_config(&["a"], "", "logToStdout: both"));
    assert_eq!(
        post_json(
            &daemon.url("/v1/chat/completions"),
            &crate::common::chat("a")
        )
        .status,
        200
    );
    let logs = get(&daemon.url("/logs"));
    assert_eq!(logs.status, 200);
    assert!(logs
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/plain"));
    assert!(logs.body.contains("starting a"), "{}", logs.body);
    for path in [
        "/logs/stream",
        "/logs/stream/proxy",
        "/logs/stream/upstream",
        "/logs/stream/a",
    ] {
        let mut stream = open_get(&daemon.addr, path);
        let mut seen = String::new();
        let needle = if path.ends_with("proxy") || path == "/logs/stream" {
            "starting a"
        } else {
            "fake-upstream"
        };
        assert!(
            read_until(&mut stream, &mut seen, needle, Duration::from_secs(30)),
            "{path}: {seen}"
        );
    }
    // no-history skips what came before.
    let mut stream = open_get(&daemon.addr, "/logs/stream/proxy?no-history");
    let mut seen = String::new();
    assert!(
        read_until(&mut stream, &mut seen, "\r\n\r\n", Duration::from_secs(10)),
        "no-history: no head: {seen:?}"
    );
    assert!(seen.starts_with("HTTP/1.1 200"), "no-history: {seen}");
    // Something new after subscribing does arrive (so the stream is live), and nothing older.
    assert_eq!(
        post_json(
            &daemon.url("/v1/chat/completions"),
            &crate::common::chat("a")
        )
        .status,
        200
    );
    assert!(
        read_until(&mut stream, &mut seen, "model=a", Duration::from_secs(10)),
        "no-history: the live line did not arrive: {seen}"
    );
    assert!(!seen.contains("starting a"), "{seen}");
    let unknown = get(&daemon.url("/logs/stream/nope"));
    assert_eq!(unknown.status, 400);
    assert!(unknown.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("'proxy', 'upstream'"));
}

#[test]
fn log_streams_end_when_swapd_shuts_down() {
    let mut daemon = Daemon::start(&simple_config(&["a"], "", ""));
    let mut stream = open_get(&daemon.addr, "/logs/stream");
    let mut seen = String::new();
    assert!(read_until(
        &mut stream,
        &mut seen,
        "\r\n\r\n",
        Duration::from_secs(30)
    ));
    assert_eq!(daemon.terminate(), Some(0));
    assert!(
        read_until(&mut stream, &mut seen, "0\r\n\r\n", Duration::from_secs(30)),
        "the stream ended cleanly: {seen:?}"
    );
}
