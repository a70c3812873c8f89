use super::*;
use crate::proxy::header_rewrite::Forwarded;

fn head(text: &str) -> Result<Option<ResponseHead>, CodecError> {
    parse_response_head(
        &mut BytesMut::from(text),
        &Method::GET,
        &mut HeaderMap::new(),
    )
}

fn framing_of(text: &str) -> BodyFraming {
    head(text).unwrap().unwrap().framing
}

#[test]
fn request_head_is_origin_form_http11_with_every_field() {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("api.example"));
    headers.append("x-multi", HeaderValue::from_static("a"));
    headers.append("x-multi", HeaderValue::from_static("b"));
    let uri: http::Uri = "/api/v1/x?q=1&r=%20".parse().unwrap();
    let extra = (CONTENT_LENGTH, HeaderValue::from_static("0"));
    let mut buf = Vec::new();
    encode_request_head(&mut buf, &Method::POST, &uri, &headers, Some(&extra), None);
    assert_eq!(
        String::from_utf8(buf).unwrap(),
        "POST /api/v1/x?q=1&r=%20 HTTP/1.1\r\nhost: api.example\r\nx-multi: a\r\n\
         x-multi: b\r\ncontent-length: 0\r\n\r\n"
    );
}

#[test]
fn forwarding_fields_extend_a_trusted_proxys_lists_once() {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("h"));
    headers.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
    headers.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    let uri: http::Uri = "/".parse().unwrap();
    let fwd = |trusted| Forwarded {
        peer: HeaderValue::from_static("127.0.0.1"),
        trusted,
    };
    let mut buf = Vec::new();
    encode_request_head(
        &mut buf,
        &Method::GET,
        &uri,
        &headers,
        None,
        Some(&fwd(true)),
    );
    assert_eq!(
        String::from_utf8(buf).unwrap(),
        "GET / HTTP/1.1\r\nhost: h\r\n\
         x-forwarded-for: 203.0.113.9, 198.51.100.7, 127.0.0.1\r\n\
         x-forwarded-proto: https\r\n\r\n"
    );
    let mut replaced = Vec::new();
    encode_request_head(
        &mut replaced,
        &Method::GET,
        &uri,
        &headers,
        None,
        Some(&fwd(false)),
    );
    assert_eq!(
        String::from_utf8(replaced).unwrap(),
        "GET / HTTP/1.1\r\nhost: h\r\n\
         x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n\r\n"
    );
    let mut untouched = Vec::new();
    encode_request_head(&mut untouched, &Method::GET, &uri, &headers, None, None);
    let text = String::from_utf8(untouched).unwrap();
    assert!(text.contains("x-forwarded-for: 203.0.113.9\r\nx-forwarded-for: 198.51.100.7\r\n"));
    assert!(text.contains("x-forwarded-proto: https\r\n"));
}

#[test]
fn request_framing_follows_the_declared_length_then_the_body() {
    let none = HeaderMap::new();
    let mut declared = HeaderMap::new();
    declared.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
    let unknown = SizeHint::new();
    let exact = SizeHint::with_exact(5);
    let f = |m: &Method, h: &HeaderMap, ended, hint: &SizeHint| {
        request_framing(m, h, ended, hint).unwrap()
    };
    assert_eq!(
        f(&Method::POST, &declared, false, &unknown),
        (RequestFraming::Length(12), None)
    );
    assert_eq!(
        f(&Method::GET, &none, true, &unknown),
        (RequestFraming::Empty, None)
    );
    let (framing, extra) = f(&Method::POST, &none, true, &unknown);
    assert_eq!(framing, RequestFraming::Empty);
    assert_eq!(extra.unwrap().1, "0");
    let (framing, extra) = f(&Method::PUT, &none, false, &exact);
    assert_eq!(framing, RequestFraming::Length(5));
    assert_eq!(extra.unwrap().1, "5");
    let (framing, extra) = f(&Method::POST, &none, false, &unknown);
    assert_eq!(framing, RequestFraming::Chunked);
    assert_eq!(
        extra.unwrap(),
        (TRANSFER_ENCODING, HeaderValue::from_static("chunked"))
    );
    declared.insert(CONTENT_LENGTH, HeaderValue::from_static("-1"));
    assert_eq!(
        request_framing(&Method::POST, &declared, false, &unknown),
        Err(CodecError::RequestLength)
    );
}

#[test]
fn chunk_size_lines_are_lowercase_hex() {
    for (len, line) in [
        (0, "0\r\n"),
        (10, "a\r\n"),
        (255, "ff\r\n"),
        (65536, "10000\r\n"),
    ] {
        let mut buf = Vec::new();
        encode_chunk_size(&mut buf, len);
        assert_eq!(buf, line.as_bytes());
    }
}

#[test]
fn a_head_is_parsed_only_once_complete() {
    let mut partial = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
    assert!(
        parse_response_head(&mut partial, &Method::GET, &mut HeaderMap::new())
            .unwrap()
            .is_none()
    );
    assert_eq!(
        partial.len(),
        36,
        "nothing is taken from an incomplete head"
    );
    let text = "HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: 1\r\nX-A: 2\r\n\r\nok";
    let mut buf = BytesMut::from(text);
    let h = parse_response_head(&mut buf, &Method::GET, &mut HeaderMap::new())
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..], b"ok", "the head is taken, the body left");
    assert_eq!(h.status, StatusCode::CREATED);
    assert_eq!(h.framing, BodyFraming::Length(2));
    assert!(h.keep_alive);
    let all: Vec<_> = h.headers.get_all("x-a").iter().collect();
    assert_eq!(all, ["1", "2"]);
}

#[test]
fn body_framing_follows_rfc9112_section_6_3() {
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        BodyFraming::Empty
    );
    assert_eq!(
        framing_of("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"),
        BodyFraming::Empty
    );
    assert_eq!(
        framing_of("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
        BodyFraming::Empty
    );
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        BodyFraming::Chunked
    );
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
        BodyFraming::UntilClose
    );
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\n\r\n"),
        BodyFraming::UntilClose
    );
    let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n");
    let h = parse_response_head(&mut buf, &Method::HEAD, &mut HeaderMap::new())
        .unwrap()
        .unwrap();
    assert_eq!(h.framing, BodyFraming::Empty);
    assert_eq!(
        h.headers[CONTENT_LENGTH], "9",
        "a HEAD answer keeps its length for the client"
    );
}

#[test]
fn transfer_encoding_beats_content_length_and_ends_the_connection() {
    let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.framing, BodyFraming::Chunked);
    assert!(!h.headers.contains_key(CONTENT_LENGTH));
    assert!(!h.keep_alive);
}

#[test]
fn conflicting_or_malformed_lengths_are_errors() {
    for bad in ["5, 6", "+5", "5 5", "", "99999999999999999999"] {
        let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
        assert_eq!(
            head(&text).unwrap_err(),
            CodecError::ContentLength,
            "{bad:?}"
        );
    }
    let twice = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
    assert_eq!(head(twice).unwrap_err(), CodecError::ContentLength);
    let same = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
    assert_eq!(framing_of(same), BodyFraming::Length(5));
}

#[test]
fn connection_reuse_needs_http11_without_close() {
    let close =
        head("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\n");
    assert!(!close.unwrap().unwrap().keep_alive);
    let old = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!old.keep_alive);
}

#[test]
fn hop_by_hop_fields_and_those_connection_names_are_left_out() {
    let text = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
                X-Hop: secret\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n";
    let h = head(text).unwrap().unwrap();
    let names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-kept"]);
    assert_eq!(
        h.framing,
        BodyFraming::Chunked,
        "framing is read before the field is dropped"
    );
    assert!(h.keep_alive);
}

#[test]
fn oversized_or_garbled_heads_are_errors() {
    let big = format!(
        "HTTP/1.1 200 OK\r\nx-filler: {}\r\n",
        "0".repeat(MAX_HEAD_BYTES)
    );
    assert_eq!(head(&big).unwrap_err(), CodecError::HeadTooLarge);
    let whole = format!("{big}\r\n");
    assert_eq!(
        head(&whole).unwrap_err(),
        CodecError::HeadTooLarge,
        "complete but too large"
    );
    assert!(matches!(
        head("SMTP ready\r\n\r\n"),
        Err(CodecError::Head(_))
    ));
    let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
    let text = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    assert_eq!(
        head(&text).unwrap_err(),
        CodecError::Head(httparse::Error::TooManyHeaders)
    );
}

/// Decodes `wire` fed in pieces of `step` bytes; the data, the trailers, and whether it ended.
fn decode_in_steps(
    wire: &[u8],
    step: usize,
) -> Result<(Vec<u8>, Option<HeaderMap>, bool), CodecError> {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = BytesMut::new();
    let (mut data, mut trailers) = (Vec::new(), None);
    for piece in wire.chunks(step) {
        buf.extend_from_slice(piece);
        while let Some(chunk) = decoder.decode(&mut buf)? {
            match chunk {
                Chunk::Data(d) => data.extend_from_slice(&d),
                Chunk::Trailers(t) => trailers = Some(t),
                Chunk::End => return Ok((data, trailers, true)),
            }
        }
    }
    Ok((data, trailers, false))
}

#[test]
fn chunked_bodies_decode_however_the_bytes_arrive() {
    let wire = b"5;ext=1\r\nhello\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
    for step in [1, 2, 3, 7, wire.len()] {
        let (data, trailers, ended) = decode_in_steps(wire, step).unwrap();
        assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
        assert!(trailers.is_none());
        assert!(ended);
    }
}

#[test]
fn chunked_trailers_are_kept() {
    let wire = b"2\r\nok\r\n0\r\nx-checksum: abc\r\nx-n: 1\r\n\r\n";
    for step in [1, 5, wire.len()] {
        let (data, trailers, ended) = decode_in_steps(wire, step).unwrap();
        assert_eq!(data, b"ok");
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["x-checksum"], "abc");
        assert_eq!(trailers["x-n"], "1");
        assert!(ended);
    }
}

#[test]
fn malformed_chunking_is_an_error() {
    for bad in [
        &b"zz\r\n"[..],
        b"5\nhello",
        b"5\r\nhelloXX",
        b"10000000000000000\r\n",
        b"\r\n",
    ] {
        assert_eq!(
            decode_in_steps(bad, bad.len()).unwrap_err(),
            CodecError::Chunk,
            "{bad:?}"
        );
    }
    let endless = vec![b'a'; MAX_CHUNK_LINE + 1];
    assert_eq!(
        decode_in_steps(&endless, endless.len()).unwrap_err(),
        CodecError::Chunk
    );
}

#[test]
fn a_spare_map_lends_its_table_not_its_fields() {
    let mut spare = HeaderMap::with_capacity(32);
    spare.insert("x-left-over", HeaderValue::from_static("1"));
    let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n");
    let h = parse_response_head(&mut buf, &Method::GET, &mut spare)
        .unwrap()
        .unwrap();
    assert!(h.headers.get("x-left-over").is_none());
    assert_eq!(h.headers.get("x-a").unwrap(), "1");
    assert!(h.headers.capacity() >= 32, "the spare's table is reused");
    assert!(spare.is_empty());
}
