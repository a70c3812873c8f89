//! Spotting ambiguous message framing in a raw request head.  [pure]
//!
//! hyper resolves ambiguous framing quietly before the proxy sees the request: with both
//! `Content-Length` and `Transfer-Encoding` it drops `Content-Length` and reads the body as
//! chunked, and it keeps one of several equal `Content-Length` fields. That is safe for the body
//! hyper reads, but a request framed two ways is the signature of request smuggling, and RFC 9112
//! §6.1 lets a server refuse it (and requires closing the connection). So the bytes of each head
//! are scanned on their way into hyper, and the proxy refuses a head that was framed two ways
//! (400 JSON, connection closed). hyper itself answers a bare 400 to differing `Content-Length`
//! values and to a `Transfer-Encoding` that does not end in `chunked`.

/// The longest header name this scanner looks for, with its colon.
const LONGEST: usize = b"transfer-encoding:".len();

/// How a head declared its body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Framing {
    /// `Content-Length` fields, counting each comma-separated value of one field.
    pub content_lengths: u8,
    pub transfer_encoding: bool,
}

impl Framing {
    /// Framed two ways, or with the length said twice.
    pub fn is_ambiguous(&self) -> bool {
        self.content_lengths > 1 || (self.content_lengths > 0 && self.transfer_encoding)
    }
}

/// Scans one request head, fed in pieces as they arrive.
#[derive(Debug, Clone, Default)]
pub struct FramingScan {
    /// The start of the current line, lower-cased, up to [`LONGEST`] bytes.
    start: [u8; LONGEST],
    start_len: usize,
    /// 0 while the line holds nothing but `\r`.
    line_len: usize,
    /// The line starts with `c` or `t`: it may be a framing field.
    watched: bool,
    commas: u8,
    seen_request_line: bool,
    framing: Framing,
}

impl FramingScan {
    /// Feeds bytes; at the blank line that ends the head, returns how many of `bytes` belong
    /// to it and what it declared. The scan is then finished and must be reset for the next
    /// head. Line ends are found with `memchr` (SIMD); only the first bytes of each line are
    /// looked at one by one.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<(usize, Framing)> {
        let mut pos = 0;
        loop {
            let rest = &bytes[pos..];
            let newline = memchr::memchr(b'\n', rest);
            self.take(&rest[..newline.unwrap_or(rest.len())]);
            pos += newline? + 1;
            if self.end_line() {
                return Some((pos, self.framing));
            }
        }
    }

    /// Notes a piece of the current line (it holds no `\n`; `\r` is ignored everywhere). Only
    /// lines that start like one of the two framing fields are copied and have their commas
    /// counted; every other line is only noted as not blank.
    fn take(&mut self, piece: &[u8]) {
        for &b in piece {
            if b == b'\r' {
                continue;
            }
            if self.line_len == 0 {
                self.line_len = 1;
                self.watched = matches!(b, b'c' | b'C' | b't' | b'T');
            }
            if !self.watched || self.start_len == LONGEST {
                break;
            }
            self.start[self.start_len] = b.to_ascii_lowercase();
            self.start_len += 1;
        }
        if self.watched && self.may_be_content_length() {
            let commas = memchr::memchr_iter(b',', piece).count();
            self.commas = self
                .commas
                .saturating_add(u8::try_from(commas).unwrap_or(u8::MAX));
        }
    }

    /// The line seen so far is (or may still become) a `Content-Length` field.
    fn may_be_content_length(&self) -> bool {
        const NAME: &[u8] = b"content-length:";
        let n = self.start_len.min(NAME.len());
        self.start[..n] == NAME[..n]
    }

    /// Starts over, for the next head on the connection.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Closes a line; true when it was the blank line that ends the head.
    fn end_line(&mut self) -> bool {
        let line = &self.start[..self.start_len];
        if self.line_len == 0 {
            // Empty lines before the request line are allowed (RFC 9112 §2.2); after it, one
            // ends the head.
            return self.seen_request_line;
        }
        if !self.seen_request_line {
            self.seen_request_line = true;
        } else if line.starts_with(b"content-length:") {
            let values = self.commas.saturating_add(1);
            self.framing.content_lengths = self.framing.content_lengths.saturating_add(values);
        } else if line.starts_with(b"transfer-encoding:") {
            self.framing.transfer_encoding = true;
        }
        self.start_len = 0;
        self.line_len = 0;
        self.watched = false;
        self.commas = 0;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(head: &str) -> Option<(usize, Framing)> {
        FramingScan::default().feed(head.as_bytes())
    }

    #[test]
    fn an_ordinary_head_is_not_ambiguous() {
        let head = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let (end, framing) = scan(head).unwrap();
        assert_eq!(&head[end..], "hello");
        assert_eq!(framing.content_lengths, 1);
        assert!(!framing.is_ambiguous());
    }

    #[test]
    fn length_and_chunked_in_either_order_are_ambiguous() {
        for head in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 5\r\n\r\n",
        ] {
            assert!(scan(head).unwrap().1.is_ambiguous(), "{head:?}");
        }
    }

    #[test]
    fn a_length_said_twice_is_ambiguous_even_when_equal() {
        let two = "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert!(scan(two).unwrap().1.is_ambiguous());
        let list = "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n";
        assert!(scan(list).unwrap().1.is_ambiguous());
    }

    #[test]
    fn a_head_split_anywhere_gives_the_same_answer() {
        let head =
            "\r\nPOST / HTTP/1.1\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nbody";
        let whole = scan(head).unwrap();
        for cut in 0..head.len() {
            let mut s = FramingScan::default();
            let got = match s.feed(&head.as_bytes()[..cut]) {
                Some(done) => done,
                None => {
                    let (n, f) = s.feed(&head.as_bytes()[cut..]).unwrap();
                    (cut + n, f)
                }
            };
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    #[test]
    fn header_values_naming_the_fields_do_not_count() {
        let head = "GET / HTTP/1.1\r\nX-Note: content-length: 5\r\nContent-Length: 0\r\n\r\n";
        assert!(!scan(head).unwrap().1.is_ambiguous());
    }
}
