//! Connections at scale: thousands of simultaneous clients are each served, and swapd counts
//! them as open while they are (the count comes from the connection guard's registrations, not
//! from a scan of the process's descriptors).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

const CONNECTIONS: usize = 2000;

/// Raises this process's soft descriptor limit to the hard one: the test holds thousands of
/// sockets, more than a default soft limit of 1024.
fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

/// Reads one chunked streaming response to its terminating chunk; returns the status and the
/// body as text.
fn read_stream(stream: &mut TcpStream) -> Result<(u16, String), String> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if received.ends_with(b"\r\n0\r\n\r\n") {
            break;
        }
        match stream.read(&mut buffer) {
            Ok(0) => return Err(format!("closed after {} bytes", received.len())),
            Ok(read) => received.extend_from_slice(&buffer[..read]),
            Err(error) => return Err(format!("{error} after {} bytes", received.len())),
        }
        // A non-200 answer has a Content-Length body, not a chunked one.
        if received.len() >= 12 && !received.starts_with(b"HTTP/1.1 200") {
            return Err(String::from_utf8_lossy(&received).into_owned());
        }
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text))
}

#[test]
fn two_thousand_simultaneous_connections_are_all_served() {
    let limit = raise_fd_limit();
    assert!(
        limit > CONNECTIONS as u64 + 200,
        "the descriptor limit ({limit}) is too low for {CONNECTIONS} connections"
    );
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "    concurrencyLimit: 5000\n",
        "swapd:\n  maxConnections: 5000\n",
    ));
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Every connection is open before any of them sends its request, so all of them are held
    // at once; each then streams for about a second, so the requests overlap too.
    let mut streams: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|index| {
            let stream = TcpStream::connect(&daemon.addr)
                .unwrap_or_else(|e| panic!("connection {index} refused: {e}"));
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .expect("timeout");
            stream
        })
        .collect();
    let metrics_url = daemon.url("/metrics");
    let open = wait_for(
        "swapd to count every connection as open",
        Duration::from_secs(60),
        || {
            let text = get(&metrics_url).body;
            let open: u64 = text
                .lines()
                .find_map(|line| line.strip_prefix("swapd_open_connections "))?
                .trim()
                .parse()
                .ok()?;
            (open > CONNECTIONS as u64).then_some(open)
        },
    );
    // The held connections plus the one asking for /metrics (and perhaps a previous client's
    // connection not yet noticed as closed): each connection is counted once.
    assert!(
        open <= CONNECTIONS as u64 + 3,
        "swapd_open_connections is {open} with {CONNECTIONS} client connections"
    );

    let body = json!({"model": "a", "stream": true, "stream_chunks": 5, "stream_interval_ms": 200})
        .to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for (index, stream) in streams.iter_mut().enumerate() {
        stream
            .write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("connection {index}: cannot send the request: {e}"));
    }
    let mut failures = Vec::new();
    for (index, stream) in streams.iter_mut().enumerate() {
        match read_stream(stream) {
            Ok((200, text)) if text.contains("data: [DONE]") && text.contains("tok4") => {}
            Ok((status, text)) => failures.push(format!("#{index}: {status}: {text:.200}")),
            Err(error) => failures.push(format!("#{index}: {error:.200}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} connections were not served; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // Kept alive, every connection serves a second request too.
    let models = format!("GET /v1/models HTTP/1.1\r\nHost: {}\r\n\r\n", daemon.addr);
    for (index, stream) in streams.iter_mut().enumerate() {
        stream.write_all(models.as_bytes()).expect("second request");
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .unwrap_or_else(|e| panic!("connection {index}: no second answer: {e}"));
        assert_eq!(&head, b"HTTP/1.1 200", "connection {index}: second answer");
    }
    drop(streams);
    wait_for(
        "swapd to count the connections as closed",
        Duration::from_secs(60),
        || {
            let text = get(&metrics_url).body;
            let open: u64 = text
                .lines()
                .find_map(|line| line.strip_prefix("swapd_open_connections "))?
                .trim()
                .parse()
                .ok()?;
            (open <= 2).then_some(())
        },
    );
}
