//! Path normalisation, so that a limit cannot be dodged by spelling a path differently.
//!
//! Applied only to match routes; the request is forwarded with its path exactly as received.
//! Steps, in order: percent-decode unreserved characters (RFC 3986 §2.3) and upper-case the hex of
//! the rest, remove dot segments (§5.2.4), collapse duplicate slashes, drop a trailing slash, and
//! (when the operator asks) lower-case. The result is idempotent: `norm(norm(p)) == norm(p)`.

use std::borrow::Cow;

/// Normalises the path part of a request target (anything from `?` on is ignored).
pub fn normalize_path(raw: &str, case_insensitive: bool) -> Cow<'_, str> {
    let path = raw.split_once('?').map_or(raw, |(p, _)| p);
    if is_normal(path) && !(case_insensitive && path.bytes().any(|b| b.is_ascii_uppercase())) {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut out = remove_dot_segments(&decoded);
    if case_insensitive {
        out.make_ascii_lowercase();
    }
    Cow::Owned(out)
}

/// True when the path needs no work: no escapes, no empty or dot segments, no trailing slash.
fn is_normal(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    if b.len() > 1 && b[b.len() - 1] == b'/' {
        return false;
    }
    !b.contains(&b'%')
        && path[1..]
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
        || path == "/"
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes `%XX` escapes of unreserved characters; other escapes keep their meaning (a `%2F` is
/// not a separator) and get upper-case hex so both spellings compare equal. A `%` that starts no
/// escape is written `%25`, the way RFC 3986 spells a literal `%`: left bare, a decoded hex digit
/// after it could form a new escape (`%%61a` -> `%aa`), and normalising again would change the
/// path — found by the property tests.
fn decode_unreserved(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_value(b[i + 1]), hex_value(b[i + 2])) {
                let v = h * 16 + l;
                if is_unreserved(v) {
                    out.push(v as char);
                } else {
                    out.push('%');
                    out.push(b[i + 1].to_ascii_uppercase() as char);
                    out.push(b[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
        }
        if b[i] == b'%' {
            out.push_str("%25");
            i += 1;
            continue;
        }
        // Copy one whole character (paths may hold raw UTF-8 in principle).
        let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&path[i..i + ch_len]);
        i += ch_len;
    }
    out
}

/// Resolves `.` and `..`, drops empty segments (duplicate and trailing slashes); always absolute.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize_path;

    #[test]
    fn every_spelling_of_txt2img_normalises_the_same() {
        for p in [
            "/api/v1/txt2img",
            "/api/v1//txt2img",
            "/api/v1/./txt2img",
            "/api/v1/x/../txt2img",
            "/api/v1/%74xt2img",
            "/api/v1/txt2img/",
            "/api/v1/txt2img?x=1",
            "//api/v1/txt2img//",
            "/api/v1/%2e/txt2img",
        ] {
            assert_eq!(normalize_path(p, false), "/api/v1/txt2img", "{p}");
        }
    }

    #[test]
    fn reserved_escapes_stay_encoded_with_canonical_hex() {
        assert_eq!(normalize_path("/a%2fb", false), "/a%2Fb");
        assert_eq!(normalize_path("/a%2Fb", false), "/a%2Fb");
        assert_eq!(normalize_path("/a%252E", false), "/a%252E");
        assert_eq!(normalize_path("/a%zz", false), "/a%25zz");
        assert_eq!(normalize_path("/a%4", false), "/a%254");
        assert_eq!(normalize_path("/%%61a", false), "/%25aa");
    }

    #[test]
    fn dot_segments_cannot_climb_above_root() {
        assert_eq!(normalize_path("/../../x", false), "/x");
        assert_eq!(normalize_path("", false), "/");
        assert_eq!(normalize_path("/", false), "/");
        assert_eq!(normalize_path("relative/./x", false), "/relative/x");
    }

    #[test]
    fn case_folding_only_when_asked() {
        assert_eq!(normalize_path("/API/V1/Txt2Img", true), "/api/v1/txt2img");
        assert_eq!(normalize_path("/API", false), "/API");
    }

    #[test]
    fn idempotent_on_tricky_inputs() {
        for p in [
            "/%2e%2e/a",
            "/a/%2E/b/",
            "/%7e/..//x",
            "/%41%2f",
            "/é/%C3%A9",
            "/a/.../b",
        ] {
            let once = normalize_path(p, true).into_owned();
            assert_eq!(normalize_path(&once, true), once, "{p}");
        }
    }
}
