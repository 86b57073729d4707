//! Table tests of the HTTP/1 codec: heads, framing, and bodies fed whole, byte by byte and cut
//! short.

use super::*;

/// Decodes `input` as if it arrived in pieces of `piece` bytes, consuming what the decoder
/// reports; returns the body and the bytes after it, or the first error (`Truncated` when the
/// input ends first).
fn decode(framing: Framing, input: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), CodecError> {
    let mut decoder = Decoder::new(framing);
    let mut body = Vec::new();
    let mut buffered: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        match decoder.step(&buffered)? {
            Step::Data { skip, len } => {
                body.extend_from_slice(&buffered[skip..skip + len]);
                buffered.drain(..skip + len);
                decoder.consume(len);
            }
            Step::Done { skip } => {
                buffered.drain(..skip);
                buffered.extend_from_slice(&input[fed..]);
                return Ok((body, buffered));
            }
            Step::More { skip } => {
                buffered.drain(..skip);
                if fed == input.len() {
                    decoder.end_of_input()?;
                    continue;
                }
                let next = (fed + piece).min(input.len());
                buffered.extend_from_slice(&input[fed..next]);
                fed = next;
            }
        }
    }
}

#[test]
fn bodies_decode_the_same_whole_and_byte_by_byte() {
    type Case = (
        &'static str,
        Framing,
        &'static [u8],
        Result<(&'static [u8], &'static [u8]), CodecError>,
    );
    let cases: Vec<Case> = vec![
        (
            "length",
            Framing::Length(5),
            b"helloNEXT",
            Ok((b"hello", b"NEXT")),
        ),
        (
            "length zero",
            Framing::Length(0),
            b"NEXT",
            Ok((b"", b"NEXT")),
        ),
        (
            "length truncated",
            Framing::Length(10),
            b"short",
            Err(CodecError::Truncated),
        ),
        (
            "until close",
            Framing::UntilClose,
            b"rest of stream",
            Ok((b"rest of stream", b"")),
        ),
        (
            "until close, empty",
            Framing::UntilClose,
            b"",
            Ok((b"", b"")),
        ),
        (
            "chunked",
            Framing::Chunked,
            b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\nNEXT",
            Ok((b"hello world", b"NEXT")),
        ),
        (
            "chunk extensions and trailers",
            Framing::Chunked,
            b"5;x=y\r\nhello\r\n6 ; name=\"v\"\r\n world\r\n0;end\r\nT: 1\r\nU: 2\r\n\r\n",
            Ok((b"hello world", b"")),
        ),
        (
            "upper and lower case hex, bare LF",
            Framing::Chunked,
            b"A\nabcdefghij\nb\r\nklmnopqrstu\r\n0\n\n",
            Ok((b"abcdefghijklmnopqrstu", b"")),
        ),
        (
            "empty chunked body",
            Framing::Chunked,
            b"0\r\n\r\n",
            Ok((b"", b"")),
        ),
        (
            "chunked cut in a size line",
            Framing::Chunked,
            b"5\r\nhello\r\n1",
            Err(CodecError::Truncated),
        ),
        (
            "chunked cut in data",
            Framing::Chunked,
            b"5\r\nhel",
            Err(CodecError::Truncated),
        ),
        (
            "chunked cut before trailers end",
            Framing::Chunked,
            b"0\r\nT: 1\r\n",
            Err(CodecError::Truncated),
        ),
        (
            "chunked until close is truncated",
            Framing::Chunked,
            b"",
            Err(CodecError::Truncated),
        ),
        (
            "garbage size",
            Framing::Chunked,
            b"ZZ\r\nabc\r\n0\r\n\r\n",
            Err(CodecError::ChunkSize),
        ),
        (
            "empty size",
            Framing::Chunked,
            b"\r\nabc\r\n",
            Err(CodecError::ChunkSize),
        ),
        (
            "signed size",
            Framing::Chunked,
            b"+5\r\nhello\r\n0\r\n\r\n",
            Err(CodecError::ChunkSize),
        ),
        (
            "size overflow",
            Framing::Chunked,
            b"12345678901234567\r\n",
            Err(CodecError::ChunkSize),
        ),
        (
            "data longer than size",
            Framing::Chunked,
            b"2\r\nabc\r\n0\r\n\r\n",
            Err(CodecError::ChunkEnd),
        ),
    ];
    for (name, framing, input, expected) in cases {
        let expected = expected.map(|(body, rest)| (body.to_vec(), rest.to_vec()));
        for piece in [input.len().max(1), 1, 3] {
            assert_eq!(
                decode(framing, input, piece),
                expected,
                "{name}, pieces of {piece}"
            );
        }
    }
}

#[test]
fn oversized_framing_lines_are_refused() {
    let long_extension = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(MAX_LINE + 10));
    let long_trailer = format!("0\r\nT: {}\r\n\r\n", "x".repeat(MAX_LINE + 10));
    let endless = "1".repeat(MAX_LINE + 2);
    for input in [long_extension, long_trailer, endless] {
        for piece in [input.len(), 7] {
            assert_eq!(
                decode(Framing::Chunked, input.as_bytes(), piece),
                Err(CodecError::LineTooLong)
            );
        }
    }
    // A line of exactly the limit is fine.
    let at_limit = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(MAX_LINE - 3));
    assert_eq!(
        decode(Framing::Chunked, at_limit.as_bytes(), 5),
        Ok((b"hello".to_vec(), Vec::new()))
    );
}

#[test]
fn a_partly_used_piece_stays_in_place() {
    let mut decoder = Decoder::new(Framing::Chunked);
    let input = b"6\r\nabcdef\r\n0\r\n\r\n";
    assert_eq!(decoder.step(input), Ok(Step::Data { skip: 3, len: 6 }));
    decoder.consume(2);
    assert_eq!(
        decoder.step(&input[5..]),
        Ok(Step::Data { skip: 0, len: 4 })
    );
    decoder.consume(4);
    assert_eq!(decoder.step(&input[9..]), Ok(Step::Done { skip: 7 }));
    assert!(decoder.is_done());
}

#[test]
fn response_heads_parse() {
    type Case = (&'static [u8], Result<(u16, bool, Framing), CodecError>);
    let cases: Vec<Case> = vec![
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Ok((200, true, Framing::Length(5))),
        ),
        (
            b"HTTP/1.0 404 Not Found\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
            Ok((404, true, Framing::Length(2))),
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
            Ok((200, false, Framing::Length(2))),
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
            Ok((200, false, Framing::UntilClose)),
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\n\r\n",
            Ok((200, false, Framing::UntilClose)),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
            Ok((200, true, Framing::Chunked)),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            Ok((200, true, Framing::UntilClose)),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            Ok((200, true, Framing::Length(3))),
        ),
        (
            b"HTTP/1.1 204 No Content\nX: y\n\n",
            Ok((204, true, Framing::UntilClose)),
        ),
        (
            b"HTTP/1.1 599\r\n\r\n",
            Ok((599, true, Framing::UntilClose)),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            Err(CodecError::ContentLength),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            Err(CodecError::ContentLength),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            Err(CodecError::ContentLength),
        ),
        (b"HTTP/1.1 2 OK\r\n\r\n", Err(CodecError::Status)),
        (b"HTTP/1.1 099 Low\r\n\r\n", Err(CodecError::Status)),
        (b"HTTP/1.1 +20 OK\r\n\r\n", Err(CodecError::Status)),
        (
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            Err(CodecError::HeaderLine),
        ),
        (b"HTTP/2 200\r\n\r\n", Err(CodecError::StartLine)),
        (b"SSH-2.0-OpenSSH\r\n\r\n", Err(CodecError::StartLine)),
        (
            b"\x00\xffTHIS IS NOT HTTP\r\n\r\n",
            Err(CodecError::StartLine),
        ),
        (b"", Err(CodecError::StartLine)),
    ];
    for (head, expected) in cases {
        let parsed = parse_response_head(head).map(|h| (h.status, h.keep_alive, h.framing));
        assert_eq!(parsed, expected, "{}", String::from_utf8_lossy(head));
    }
}

#[test]
fn header_spans_point_at_trimmed_names_and_values() {
    let head = b"HTTP/1.1 200 OK\r\nX-A:  1 \r\nContent-Type:\ttext/plain\t\r\nEmpty:\r\n\r\n";
    let parsed = parse_response_head(head).expect("a valid head");
    let pairs: Vec<(&[u8], &[u8])> = parsed
        .headers
        .iter()
        .map(|h| (h.name(head), h.value(head)))
        .collect();
    assert_eq!(
        pairs,
        vec![
            (&b"X-A"[..], &b"1"[..]),
            (b"Content-Type", b"text/plain"),
            (b"Empty", b""),
        ]
    );
}

#[test]
fn request_heads_parse() {
    type Case = (
        &'static [u8],
        Result<(&'static str, &'static str, u8, bool, Framing), CodecError>,
    );
    let cases: Vec<Case> = vec![
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            Ok(("GET", "/health", 1, true, Framing::Length(0))),
        ),
        (
            b"POST /v1/x?a=1 HTTP/1.1\r\nContent-Length: 7\r\n\r\n",
            Ok(("POST", "/v1/x?a=1", 1, true, Framing::Length(7))),
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            Ok(("POST", "/", 1, true, Framing::Chunked)),
        ),
        (
            b"GET / HTTP/1.0\r\n\r\n",
            Ok(("GET", "/", 0, false, Framing::Length(0))),
        ),
        (
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            Ok(("GET", "/", 0, true, Framing::Length(0))),
        ),
        (
            b"GET  /  HTTP/1.1\nConnection: close\n\n",
            Ok(("GET", "/", 1, false, Framing::Length(0))),
        ),
        (b"GET /\r\n\r\n", Err(CodecError::StartLine)),
        (b"GET / HTTP/1.1 extra\r\n\r\n", Err(CodecError::StartLine)),
        (b"GET / SPDY/3\r\n\r\n", Err(CodecError::StartLine)),
        (
            b"GET / HTTP/1.1\r\nbroken\r\n\r\n",
            Err(CodecError::HeaderLine),
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            Err(CodecError::ContentLength),
        ),
    ];
    for (head, expected) in cases {
        let parsed = parse_request_head(head).map(|h| {
            let text = |(start, end): (usize, usize)| {
                std::str::from_utf8(&head[start..end]).expect("ASCII")
            };
            (
                text(h.method),
                text(h.target),
                h.minor,
                h.keep_alive,
                h.framing,
            )
        });
        assert_eq!(parsed, expected, "{}", String::from_utf8_lossy(head));
    }
}

#[test]
fn heads_are_found_across_reads() {
    let buffer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nbody";
    assert_eq!(find_head_end(buffer, 0), Some(25));
    assert_eq!(find_head_end(buffer, 25), Some(44));
    assert_eq!(find_head_end(buffer, 44), None);
    assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r", 0), None);
    assert_eq!(find_head_end(b"x", 10), None);
}

#[test]
fn response_framing_follows_method_and_status() {
    let head = |status| ResponseHead {
        status,
        keep_alive: true,
        framing: Framing::Length(10),
        headers: Vec::new(),
    };
    assert_eq!(response_framing(&head(200), false), Framing::Length(10));
    assert_eq!(response_framing(&head(200), true), Framing::Length(0));
    for status in [101, 204, 304] {
        assert_eq!(response_framing(&head(status), false), Framing::Length(0));
    }
}

#[test]
fn heads_and_chunks_serialise() {
    let mut out = Vec::new();
    write_request_head(
        &mut out,
        "POST",
        &["/api", "/v1/x?a=%20b"],
        "127.0.0.1:9",
        b"X-Test: yes\r\n",
        Some(7),
    );
    assert_eq!(
        out,
        b"POST /api/v1/x?a=%20b HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Test: yes\r\nContent-Length: 7\r\n\r\n"
    );
    out.clear();
    write_request_head(&mut out, "GET", &["/"], "h", b"", None);
    assert_eq!(out, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");

    type Case = (u16, Framing, bool, &'static [u8]);
    let cases: Vec<Case> = vec![
        (200, Framing::Length(12), false, b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Length: 12\r\n\r\n"),
        (404, Framing::Chunked, true, b"HTTP/1.1 404 Not Found\r\nContent-Type: a/b\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"),
        (599, Framing::UntilClose, false, b"HTTP/1.1 599 Status\r\nContent-Type: a/b\r\n\r\n"),
    ];
    for (status, framing, close, expected) in cases {
        out.clear();
        let headers = [
            ("Content-Type", "a/b"),
            ("content-length", "1"),
            ("Transfer-Encoding", "gzip"),
            ("Connection", "upgrade"),
        ];
        write_response_head(&mut out, status, &headers, framing, close);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(expected)
        );
    }

    for (size, line) in [
        (0usize, &b"0\r\n"[..]),
        (1, b"1\r\n"),
        (15, b"F\r\n"),
        (16, b"10\r\n"),
        (4096, b"1000\r\n"),
        (usize::MAX, b"FFFFFFFFFFFFFFFF\r\n"),
    ] {
        assert_eq!(ChunkHeader::new(size).as_bytes(), line, "{size}");
    }
    out.clear();
    encode_chunk(&mut out, b"hello world");
    encode_chunk(&mut out, b"");
    out.extend_from_slice(LAST_CHUNK);
    assert_eq!(out, b"B\r\nhello world\r\n0\r\n\r\n");
    assert_eq!(
        decode(Framing::Chunked, &out, 2),
        Ok((b"hello world".to_vec(), Vec::new()))
    );
}

#[test]
fn skipping_a_body_takes_its_framing_and_stops_at_its_end() {
    let input = b"5;x\r\nhello\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\nNEXT";
    let mut decoder = Decoder::new(Framing::Chunked);
    assert_eq!(decoder.skip(input), Ok((input.len() - 4, true)));
    // Split inside a size line: the partial line stays for the next read.
    let mut decoder = Decoder::new(Framing::Chunked);
    assert_eq!(decoder.skip(&input[..14]), Ok((12, false)));
    assert_eq!(decoder.skip(&input[12..]), Ok((input.len() - 16, true)));
    let mut decoder = Decoder::new(Framing::Length(3));
    assert_eq!(decoder.skip(b"ab"), Ok((2, false)));
    assert_eq!(decoder.skip(b"cNEXT"), Ok((1, true)));
    let mut decoder = Decoder::new(Framing::Chunked);
    assert_eq!(decoder.skip(b"Q\r\n"), Err(CodecError::ChunkSize));
}
