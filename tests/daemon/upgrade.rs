//! Protocol upgrades (websockets) through `/upstream/<model>/` and `/comfyui/`: the 101 and
//! every byte after it pass both ways, the session holds the model, and
//! `compat.ignoreWebsockets` upgrades never start or hold one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;

/// Sends an upgrade request for `path` and reads the answer's head; returns the socket, the
/// head and any bytes read after it.
pub(crate) fn upgrade(addr: &str, path: &str) -> (TcpStream, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut received = Vec::new();
    let mut piece = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut piece).expect("read the answer's head");
        assert!(
            n > 0,
            "closed before a head: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&piece[..n]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    (stream, head, received[head_end..].to_vec())
}

/// Reads until `expected` has arrived after `already`.
pub(crate) fn read_exactly(stream: &mut TcpStream, mut already: Vec<u8>, expected: &[u8]) {
    let mut piece = [0u8; 4096];
    while already.len() < expected.len() {
        let n = stream.read(&mut piece).expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&already));
        already.extend_from_slice(&piece[..n]);
    }
    assert_eq!(
        String::from_utf8_lossy(&already),
        String::from_utf8_lossy(expected)
    );
}

fn inflight(daemon: &Daemon, model: &str) -> Option<u64> {
    let metrics = get(&daemon.url("/metrics")).body;
    let prefix = format!("swapd_inflight{{model=\"{model}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

#[test]
fn upgrades_pass_through_and_hold_the_model() {
    let config = simple_config(&["a", "b"], "", "").replace(
        "--model b --pid-file {DIR}/b.pid\n",
        "--model b --pid-file {DIR}/b.pid\n    compat:\n      ignoreWebsockets: true\n",
    );
    let daemon = Daemon::start(&config);

    // The upgrade starts a, gets the model's 101 (its own headers kept), then both ways pass.
    let (mut session, head, early) = upgrade(&daemon.addr, "/upstream/a/ws?room=1");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("X-Upgraded-Target: /ws?room=1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo\r\n"),
        "{head}"
    );
    read_exactly(&mut session, early, b"welcome\n");
    for message in ["first message", "second, longer message"] {
        session.write_all(message.as_bytes()).expect("send");
        read_exactly(&mut session, Vec::new(), message.as_bytes());
    }
    // The open session counts as a request in flight on a, so no TTL or swap takes it away.
    wait_for("the session in flight", Duration::from_secs(30), || {
        (inflight(&daemon, "a") == Some(1)).then_some(())
    });
    drop(session);
    wait_for("the session to end", Duration::from_secs(30), || {
        (inflight(&daemon, "a") == Some(0)).then_some(())
    });

    // An answer other than 101 is passed on as it is.
    let (mut refused, head, rest) = upgrade(&daemon.addr, "/upstream/a/elsewhere");
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    let mut body = rest;
    let _ = refused.read_to_end(&mut body);
    assert!(String::from_utf8_lossy(&body).contains("upgrades only at /ws"));

    // compat.ignoreWebsockets: no start, then (once b is up) a session that is not counted.
    let (_, head, _) = upgrade(&daemon.addr, "/upstream/b/ws");
    assert!(head.starts_with("HTTP/1.1 409"), "{head}");
    assert!(
        !daemon
            .running_states()
            .iter()
            .any(|(model, _)| model == "b"),
        "the upgrade started b"
    );
    assert_eq!(get(&daemon.url("/upstream/b/props")).status, 200);
    let (mut session, head, early) = upgrade(&daemon.addr, "/upstream/b/ws");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    read_exactly(&mut session, early, b"welcome\n");
    session.write_all(b"ping").expect("send");
    read_exactly(&mut session, Vec::new(), b"ping");
    assert_eq!(inflight(&daemon, "b"), Some(0));
}

#[test]
fn comfyui_websockets_never_start_comfyui() {
    let daemon = Daemon::start(&simple_config(&["comfyui_auto"], "", ""));
    let (_, head, _) = upgrade(&daemon.addr, "/comfyui/ws");
    assert!(head.starts_with("HTTP/1.1 409"), "{head}");
    assert!(daemon.running_states().is_empty());
    assert_eq!(get(&daemon.url("/comfyui/")).status, 200);
    let (mut session, head, early) = upgrade(&daemon.addr, "/comfyui/ws?clientId=7");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("X-Upgraded-Target: /ws?clientId=7\r\n"),
        "{head}"
    );
    read_exactly(&mut session, early, b"welcome\n");
    session.write_all(b"{\"type\":\"status\"}").expect("send");
    read_exactly(&mut session, Vec::new(), b"{\"type\":\"status\"}");
    assert_eq!(inflight(&daemon, "comfyui_auto"), Some(0));
}

#[test]
fn requests_with_a_body_or_h2c_are_not_upgrades() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    // curl --http2 on a plain-http URL: the request is answered as HTTP/1.1, body and all.
    let body = r#"{"model":"a","messages":[]}"#;
    let request = format!(
        "POST /upstream/a/v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_exchange(&daemon.addr, request.as_bytes(), Duration::from_secs(30));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\"request_body\":{\"messages\":[],\"model\":\"a\"}"),
        "{answer}"
    );
    // A websocket-style upgrade header on a request with a body is not an upgrade either.
    let request = format!(
        "POST /upstream/a/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_exchange(&daemon.addr, request.as_bytes(), Duration::from_secs(30));
    assert!(!answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert!(
        answer.contains("\"model\":\"a\""),
        "the body arrived: {answer}"
    );
}
