//! The upstream client against scripted servers on loopback sockets.

use super::*;
use std::net::TcpListener;
use std::thread;

/// Serves each accepted connection with `respond(connection_index, request_bytes)` for
/// every request read on it; an empty answer closes the connection.
fn server(answers: Vec<Vec<&'static [u8]>>) -> (String, thread::JoinHandle<Vec<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let mut seen = Vec::new();
        for answers in answers {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut requests = Vec::new();
            for answer in answers {
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).unwrap() == 0 {
                        break;
                    }
                    request.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&request).to_lowercase();
                if let Some(length) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|l| l.trim().parse::<usize>().ok())
                {
                    let mut body = vec![0u8; length];
                    stream.read_exact(&mut body).unwrap();
                    request.extend_from_slice(&body);
                }
                requests.push(request);
                if answer.is_empty() {
                    break;
                }
                stream.write_all(answer).unwrap();
            }
            seen.push(requests);
        }
        seen
    });
    (base, handle)
}

fn get(headers: &[u8]) -> Request<'_> {
    Request {
        method: "GET",
        path_and_query: "/x?a=%20b",
        headers,
        body: None,
    }
}

fn read_all(body: &mut Body<'_>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buffer = [0u8; 3];
    loop {
        let read = body.read(&mut buffer)?;
        if read == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buffer[..read]);
    }
}

#[test]
fn content_length_body_and_connection_reuse() {
    let (base, server) = server(vec![vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1 \r\n\r\nhello",
        b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nbye",
    ]]);
    let client = Client::new(Duration::from_secs(2));
    let response = client.send(&base, &get(b"X-Test: yes\r\n"), None).unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.header("x-a"), Some("1"));
    assert_eq!(response.content_length(), Some(5));
    let mut body = response.into_body();
    assert_eq!(read_all(&mut body).unwrap(), b"hello");
    drop(body);
    let post = Request {
        method: "POST",
        path_and_query: "/y",
        headers: b"",
        body: Some(b"{\"a\":1}"),
    };
    let response = client.send(&base, &post, None).unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(read_all(&mut response.into_body()).unwrap(), b"bye");
    let seen = server.join().unwrap();
    assert_eq!(seen.len(), 1, "both requests used one connection");
    let first = String::from_utf8(seen[0][0].clone()).unwrap();
    assert!(first.starts_with("GET /x?a=%20b HTTP/1.1\r\nHost: 127.0.0.1:"));
    assert!(first.contains("\r\nX-Test: yes\r\n"));
    assert!(!first.to_lowercase().contains("content-length"));
    let second = String::from_utf8(seen[0][1].clone()).unwrap();
    assert!(second.ends_with("Content-Length: 7\r\n\r\n{\"a\":1}"));
}

#[test]
fn chunked_body_is_decoded_with_extensions_and_trailers() {
    let (base, server) = server(vec![vec![
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nT: 1\r\n\r\n",
    ]]);
    let client = Client::new(Duration::from_secs(2));
    let response = client.send(&base, &get(b""), None).unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), None);
    let mut body = response.into_body();
    assert_eq!(read_all(&mut body).unwrap(), b"hello world");
    drop(body);
    let idle = client.idle.lock().unwrap();
    assert_eq!(
        idle.get(base.strip_prefix("http://").unwrap())
            .map(Vec::len),
        Some(1)
    );
    server.join().unwrap();
}

#[test]
fn stale_pooled_connection_is_replaced_and_the_request_resent() {
    // The first connection answers once and closes (like llama-server after a stream);
    // the second request must arrive on a new connection.
    let (base, server) = server(vec![
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", b""],
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"],
    ]);
    let client = Client::new(Duration::from_secs(2));
    let response = client.send(&base, &get(b""), None).unwrap();
    assert_eq!(read_all(&mut response.into_body()).unwrap(), b"a");
    let response = client.send(&base, &get(b""), None).unwrap();
    assert_eq!(read_all(&mut response.into_body()).unwrap(), b"b");
    let seen = server.join().unwrap();
    assert_eq!(seen.len(), 2);
}

#[test]
fn a_failed_new_connection_is_tried_once_more() {
    // The first connection takes the request and closes without an answer.
    let (base, first) = server(vec![
        vec![b""],
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
    ]);
    let client = Client::new(Duration::from_secs(2));
    let response = client.send(&base, &get(b""), None).unwrap();
    assert_eq!(read_all(&mut response.into_body()).unwrap(), b"ok");
    assert_eq!(first.join().unwrap().len(), 2);
    // Twice in a row is the upstream's answer.
    let (base, second) = server(vec![vec![b""], vec![b""]]);
    assert!(matches!(
        client.send(&base, &get(b""), None),
        Err(UpstreamError::Io(_))
    ));
    assert_eq!(second.join().unwrap().len(), 2);
}

#[test]
fn body_until_close_and_truncation_and_head_requests() {
    let (base, server) = server(vec![
        vec![b"HTTP/1.1 200 OK\r\n\r\nrest of stream"],
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"],
    ]);
    let client = Client::new(Duration::from_secs(2));
    // The server thread closes each connection after answering, ending the first body.
    let response = client.send(&base, &get(b""), None).unwrap();
    assert_eq!(response.content_length(), None);
    assert_eq!(
        read_all(&mut response.into_body()).unwrap(),
        b"rest of stream"
    );
    let response = client.send(&base, &get(b""), None).unwrap();
    let error = read_all(&mut response.into_body()).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    let head = Request {
        method: "HEAD",
        path_and_query: "/",
        headers: b"",
        body: None,
    };
    let response = client.send(&base, &head, None).unwrap();
    assert_eq!(response.header("content-length"), Some("10"));
    assert_eq!(read_all(&mut response.into_body()).unwrap(), b"");
    server.join().unwrap();
}

#[test]
fn garbage_and_silence_are_errors() {
    // Garbage on the first connection and on the one retry.
    let (base, server) = server(vec![
        vec![b"SSH-2.0-OpenSSH\r\n\r\n"],
        vec![b"SSH-2.0-OpenSSH\r\n\r\n"],
    ]);
    let client = Client::new(Duration::from_secs(2));
    match client.send(&base, &get(b""), None) {
        Err(UpstreamError::Protocol(_)) => {}
        other => panic!(
            "expected a protocol error, got {:?}",
            other.map(|r| r.status())
        ),
    }
    server.join().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    match client.send(&base, &get(b""), Some(Duration::from_millis(100))) {
        Err(UpstreamError::Timeout) => {}
        other => panic!("expected a timeout, got {:?}", other.map(|r| r.status())),
    }
    drop(listener);
    match client.send(&base, &get(b""), None) {
        Err(UpstreamError::Connect(_)) => {}
        other => panic!(
            "expected a connect error, got {:?}",
            other.map(|r| r.status())
        ),
    }
    assert!(matches!(
        client.send("https://example.com", &get(b""), None),
        Err(UpstreamError::BadUrl(_))
    ));
}

#[test]
fn base_urls_split_into_authority_and_path() {
    assert_eq!(
        split_base("http://localhost:5800").unwrap(),
        ("localhost:5800", "")
    );
    assert_eq!(
        split_base("http://127.0.0.1:9/api/").unwrap(),
        ("127.0.0.1:9", "/api")
    );
    assert!(split_base("http:///x").is_err());
}

#[test]
fn response_heads_parse() {
    let parsed = codec::parse_response_head(
        b"HTTP/1.0 404 Not Found\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
    )
    .unwrap();
    assert_eq!(parsed.status, 404);
    assert!(parsed.keep_alive);
    assert_eq!(parsed.framing, Framing::Length(2));
    let parsed =
        codec::parse_response_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").unwrap();
    assert!(!parsed.keep_alive);
    assert_eq!(parsed.framing, Framing::UntilClose);
    assert!(codec::parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    assert!(codec::parse_response_head(b"HTTP/1.1 2 OK\r\n\r\n").is_err());
    assert!(codec::parse_response_head(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_err());
}
