//! The relay against real sockets: a scripted upstream on 127.0.0.1, swapd's upstream client
//! reading its head, and a connected client socket pair standing in for the HTTP client.

use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;

const HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

/// A listening upstream whose single connection is handed to `script` after the request head
/// has been read; the script's result comes back through the join handle.
fn upstream<T: Send + 'static>(
    script: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (String, thread::JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        read_request(&mut stream);
        script(stream)
    });
    (base, handle)
}

fn read_request(stream: &mut TcpStream) {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).expect("read request") == 0 {
            return;
        }
        request.push(byte[0]);
    }
}

/// A connected pair: (the end the relay writes to, the end the test reads as the client).
fn client_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let test_end = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (relay_end, _) = listener.accept().expect("accept");
    test_end
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    (relay_end, test_end)
}

fn get() -> crate::upstream::Request<'static> {
    crate::upstream::Request {
        method: "GET",
        path_and_query: "/stream",
        headers: b"",
        body: None,
    }
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode_chunk(&mut out, data);
    out
}

/// Runs one relay over `body` on another thread and returns its report with the body's
/// parts put back.
fn relay(
    relay: &'static Relay,
    body: &mut crate::upstream::Body<'_>,
    client: TcpStream,
    read_timeout: Duration,
) -> (Relayed, Arc<AtomicU64>) {
    let counter = Arc::new(AtomicU64::new(0));
    let upstream = body.lend().expect("the body's connection is open");
    let handoff = Handoff {
        upstream,
        client: ClientEnd::Socket(client),
        scanner: Some(UsageScanner::new(true)),
        counter: counter.clone(),
        read_timeout,
    };
    let mut relayed = thread::scope(|scope| {
        scope
            .spawn(|| {
                relay
                    .run(handoff)
                    .unwrap_or_else(|_| panic!("the relay thread is gone"))
            })
            .join()
            .expect("relay run")
    });
    if let Some(upstream) = relayed.upstream.take() {
        body.restore(upstream);
    }
    (relayed, counter)
}

fn shared_test_relay() -> &'static Relay {
    static RELAY: OnceLock<Relay> = OnceLock::new();
    RELAY.get_or_init(|| Relay::start().expect("relay starts"))
}

#[test]
fn a_stream_is_relayed_piece_by_piece_and_its_upstream_connection_is_reused() {
    let (go_on, wait) = mpsc::channel::<()>();
    let (base, server) = upstream(move |mut stream| {
        // The head and the first event (what the upstream client reads with the head), then
        // two more events once the test has seen the first one arrive at the client.
        stream.write_all(HEAD).expect("head");
        stream.write_all(&chunk(b"data: one\n\n")).expect("first");
        wait.recv().expect("go on");
        stream.write_all(&chunk(b"data: two\n\n")).expect("second");
        stream
            .write_all(b"C\r\ndata: three\n\r\n0\r\n\r\n")
            .expect("third and end");
        // The same connection carries the next request (the body went back to the pool).
        read_request(&mut stream);
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .expect("second answer");
    });
    let client = crate::upstream::Client::new(Duration::from_secs(5));
    let response = client
        .send(&base, &get(), Some(Duration::from_secs(20)))
        .expect("head");
    let mut body = response.into_body();
    let (original, mut test_end) = client_pair();
    // The relay gets a duplicate, as from the connection's handle.
    let relay_end = original.try_clone().expect("dup");
    let reader = thread::spawn(move || {
        let mut first = vec![0u8; chunk(b"data: one\n\n").len()];
        test_end.read_exact(&mut first).expect("first event");
        go_on.send(()).expect("upstream waits");
        let mut rest = Vec::new();
        let expected = [chunk(b"data: two\n\n"), chunk(b"data: three\n")].concat();
        let mut buffer = [0u8; 256];
        while rest.len() < expected.len() {
            let read = test_end.read(&mut buffer).expect("rest");
            assert!(read > 0, "the relay closed the client");
            rest.extend_from_slice(&buffer[..read]);
        }
        (first, rest, expected)
    });
    let (relayed, counter) = relay(
        shared_test_relay(),
        &mut body,
        relay_end,
        Duration::from_secs(20),
    );
    assert!(matches!(relayed.end, End::Complete), "{:?}", relayed.end);
    let total = (b"data: one\n\n".len() + b"data: two\n\n".len() + b"data: three\n".len()) as u64;
    assert_eq!(relayed.bytes, total);
    assert_eq!(counter.load(Ordering::Relaxed), total);
    assert!(relayed.first_byte.is_some());
    assert!(relayed.scanner.is_some(), "the scanner comes back");
    let (first, rest, expected) = reader.join().expect("reader");
    assert_eq!(first, chunk(b"data: one\n\n"));
    assert_eq!(rest, expected);
    // The client socket is blocking again (the connection thread reads its next request).
    // SAFETY: F_GETFL on a socket this test owns.
    let flags = unsafe { libc::fcntl(original.as_raw_fd(), libc::F_GETFL) };
    assert!(
        flags >= 0 && flags & libc::O_NONBLOCK == 0,
        "flags {flags:#x}"
    );
    // The body's end is still there for the caller, and the connection goes back to the pool.
    assert_eq!(body.chunk().expect("end").len(), 0);
    drop(body);
    let response = client
        .send(&base, &get(), Some(Duration::from_secs(20)))
        .expect("second request on the pooled connection");
    assert_eq!(response.status(), 200);
    drop(response);
    server.join().expect("server");
}

#[test]
fn a_client_that_leaves_ends_the_relay_as_client_left() {
    let (base, server) = upstream(|mut stream| {
        stream.write_all(HEAD).expect("head");
        // Events until the relay stops taking them (it drops nothing itself: the test does).
        for _ in 0..100_000 {
            if stream.write_all(&chunk(b"data: x\n\n")).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
    });
    let client = crate::upstream::Client::new(Duration::from_secs(5));
    let response = client
        .send(&base, &get(), Some(Duration::from_secs(20)))
        .expect("head");
    let mut body = response.into_body();
    let (relay_end, test_end) = client_pair();
    drop(test_end);
    let (relayed, _) = relay(
        shared_test_relay(),
        &mut body,
        relay_end,
        Duration::from_secs(20),
    );
    assert!(matches!(relayed.end, End::ClientLeft), "{:?}", relayed.end);
    drop(body);
    server.join().expect("server");
}

#[test]
fn a_truncated_body_and_a_silent_upstream_are_upstream_errors() {
    let (base, server) = upstream(|mut stream| {
        stream.write_all(HEAD).expect("head");
        stream.write_all(&chunk(b"data: x\n\n")).expect("event");
        // Closing here cuts the body short.
    });
    let client = crate::upstream::Client::new(Duration::from_secs(5));
    let response = client
        .send(&base, &get(), Some(Duration::from_secs(20)))
        .expect("head");
    let mut body = response.into_body();
    let (relay_end, _test_end) = client_pair();
    let (relayed, _) = relay(
        shared_test_relay(),
        &mut body,
        relay_end,
        Duration::from_secs(20),
    );
    match relayed.end {
        End::Upstream(error) => assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof),
        other => panic!("expected a truncated body, got {other:?}"),
    }
    server.join().expect("server");

    // Silent after one event: the read timeout ends it like a blocking read's would.
    let (hold, release) = mpsc::channel::<()>();
    let (base, server) = upstream(move |mut stream| {
        stream.write_all(HEAD).expect("head");
        stream.write_all(&chunk(b"data: x\n\n")).expect("event");
        let _ = release.recv();
    });
    let response = client
        .send(&base, &get(), Some(Duration::from_secs(20)))
        .expect("head");
    let mut body = response.into_body();
    let (relay_end, _test_end) = client_pair();
    let (relayed, _) = relay(
        shared_test_relay(),
        &mut body,
        relay_end,
        Duration::from_millis(300),
    );
    match relayed.end {
        End::Upstream(error) => {
            assert_eq!(error.raw_os_error(), Some(libc::EAGAIN), "{error}")
        }
        other => panic!("expected the read timeout, got {other:?}"),
    }
    assert_eq!(relayed.bytes, b"data: x\n\n".len() as u64);
    drop(hold);
    server.join().expect("server");
}

#[test]
fn a_slow_client_holds_back_its_upstream_and_still_gets_every_byte() {
    const PIECE: usize = 16 * 1024;
    const PIECES: usize = 2048; // 32 MiB: more than the sockets on both sides can buffer.
    let sent = Arc::new(AtomicU64::new(0));
    let progress = sent.clone();
    let (base, server) = upstream(move |mut stream| {
        stream.write_all(HEAD).expect("head");
        let piece = chunk(&[b'a'; PIECE]);
        for _ in 0..PIECES {
            stream.write_all(&piece).expect("piece");
            progress.fetch_add(PIECE as u64, Ordering::Relaxed);
        }
        stream.write_all(codec::LAST_CHUNK).expect("end");
    });
    let client = crate::upstream::Client::new(Duration::from_secs(5));
    let response = client
        .send(&base, &get(), Some(Duration::from_secs(20)))
        .expect("head");
    let mut body = response.into_body();
    let (relay_end, mut test_end) = client_pair();
    let total = (PIECE * PIECES) as u64;
    let reader = thread::spawn(move || {
        // Not reading for a while: the upstream must be held back, not buffered in swapd.
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let held_at = sent.load(Ordering::Relaxed);
        let mut received = 0u64;
        let mut buffer = vec![0u8; 64 * 1024];
        let mut decoder = codec::Decoder::new(codec::Framing::Chunked);
        let mut pending = Vec::new();
        while !decoder.is_done() {
            let read = test_end.read(&mut buffer).expect("read");
            assert!(read > 0, "the relay closed the client early");
            pending.extend_from_slice(&buffer[..read]);
            let mut at = 0;
            loop {
                match decoder.step(&pending[at..]).expect("framing") {
                    codec::Step::Data { skip, len } => {
                        assert!(pending[at + skip..at + skip + len]
                            .iter()
                            .all(|&b| b == b'a'));
                        decoder.consume(len);
                        received += len as u64;
                        at += skip + len;
                    }
                    codec::Step::More { skip } | codec::Step::Done { skip } => {
                        at += skip;
                        break;
                    }
                }
            }
            pending.drain(..at);
            // The relay never writes the last chunk (the connection thread does): stop when
            // everything has arrived.
            if received == total {
                break;
            }
        }
        (held_at, received)
    });
    let (relayed, _) = relay(
        shared_test_relay(),
        &mut body,
        relay_end,
        Duration::from_secs(20),
    );
    assert!(matches!(relayed.end, End::Complete), "{:?}", relayed.end);
    assert_eq!(relayed.bytes, total);
    let (held_at, received) = reader.join().expect("reader");
    assert_eq!(received, total);
    assert!(
        held_at < total,
        "the upstream sent all {total} bytes while the client read nothing"
    );
    server.join().expect("server");
}

#[test]
fn a_relay_whose_thread_is_gone_hands_the_stream_back() {
    let (base, server) = upstream(|mut stream| {
        stream.write_all(HEAD).expect("head");
        stream.write_all(&chunk(b"data: x\n\n")).expect("event");
        stream.write_all(codec::LAST_CHUNK).expect("end");
    });
    let client = crate::upstream::Client::new(Duration::from_secs(5));
    let response = client
        .send(&base, &get(), Some(Duration::from_secs(20)))
        .expect("head");
    let mut body = response.into_body();
    // A relay whose thread has ended: its job channel has no receiver.
    let (jobs, incoming) = crossbeam_channel::unbounded();
    drop(incoming);
    let started = Relay::start().expect("relay starts");
    let gone = Relay {
        jobs,
        wake: started.wake.clone(),
    };
    let (relay_end, _test_end) = client_pair();
    let handoff = Handoff {
        upstream: body.lend().expect("open"),
        client: ClientEnd::Socket(relay_end),
        scanner: Some(UsageScanner::new(true)),
        counter: Arc::new(AtomicU64::new(0)),
        read_timeout: Duration::from_secs(20),
    };
    let Err(handoff) = gone.run(handoff) else {
        panic!("a relay without its thread took a stream");
    };
    assert!(handoff.scanner.is_some());
    body.restore(handoff.upstream);
    // The caller reads the body itself, from where it was.
    let mut rest = Vec::new();
    loop {
        let piece = body.chunk().expect("body").to_vec();
        if piece.is_empty() {
            break;
        }
        body.consume(piece.len());
        rest.extend_from_slice(&piece);
    }
    assert_eq!(rest, b"data: x\n\n");
    server.join().expect("server");
}

/// Holds back partial segments on `stream` (TCP_CORK) until it is uncorked or shut down.
#[allow(unsafe_code)]
fn cork(stream: &TcpStream) {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket this test owns, with an int option value that lives for
    // the call.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0, "TCP_CORK: {}", io::Error::last_os_error());
}

#[test]
fn a_close_that_comes_with_the_last_data_ends_the_stream_at_once() {
    // The last event and the upstream's close arrive as one segment (corked, then shut down),
    // so the relay, already waiting, gets a single edge for both: it must see the end of file
    // without waiting for another edge that never comes (until the read timeout).
    let (go_on, wait) = mpsc::channel::<()>();
    let (base, server) = upstream(move |mut stream| {
        stream.write_all(HEAD).expect("head");
        stream.write_all(&chunk(b"data: one\n\n")).expect("first");
        wait.recv().expect("go on");
        cork(&stream);
        stream.write_all(&chunk(b"data: two\n\n")).expect("second");
        // No last chunk: the body ends short, with the FIN on the same segment.
        stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    });
    let client = crate::upstream::Client::new(Duration::from_secs(5));
    let response = client
        .send(&base, &get(), Some(Duration::from_secs(20)))
        .expect("head");
    let mut body = response.into_body();
    let (relay_end, mut test_end) = client_pair();
    let reader = thread::spawn(move || {
        // The first event at the client: the relay has the stream and waits for more.
        let mut first = vec![0u8; chunk(b"data: one\n\n").len()];
        test_end.read_exact(&mut first).expect("first event");
        go_on.send(()).expect("upstream waits");
        // The client stays connected (a hang-up on its side would wake the relay too).
        test_end
    });
    let (relayed, _) = relay(
        shared_test_relay(),
        &mut body,
        relay_end,
        Duration::from_secs(15),
    );
    match relayed.end {
        End::Upstream(error) => assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}"),
        other => panic!("expected a truncated body, got {other:?}"),
    }
    let total = (b"data: one\n\n".len() + b"data: two\n\n".len()) as u64;
    assert_eq!(relayed.bytes, total);
    let test_end = reader.join().expect("reader");
    server.join().expect("server");
    drop(test_end);
}
