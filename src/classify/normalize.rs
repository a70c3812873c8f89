//! Path normalisation, so that a limit cannot be dodged by spelling a path differently.
//!
//! Applied only to match routes; the request is forwarded with its path exactly as received.
//! Steps, in order: refuse what no honest client sends (NUL and other control characters, a raw
//! backslash, a `%` that starts no escape); percent-decode unreserved characters (RFC 3986 §2.3)
//! and upper-case the hex of the rest; decode `%2F` / `%5C` to a separator (or refuse them);
//! drop `;parameters` from each segment; remove dot segments (§5.2.4), collapse duplicate
//! slashes, drop a trailing slash; lower-case. Each step past the first follows a
//! [`PathRules`] switch. The result is idempotent: `norm(norm(p)) == norm(p)`.
//!
//! Why these steps: many upstream frameworks route `/API/V1/TXT2IMG`, `/api/v1/txt2img;x=1`,
//! `/api/v1%2Ftxt2img` or `/api/v1\txt2img` to the same handler as `/api/v1/txt2img`, so a
//! limiter that matched them literally would let each spelling through as the unlimited default
//! class. nginx decodes before `location` matching; Envoy can refuse escaped slashes instead.

use std::borrow::Cow;

/// What an escaped slash (`%2F`, or `%5C`, an escaped backslash) means to the matcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// A path separator, as nginx reads it before `location` matching.
    Decode,
    /// The request is refused with 400 `invalid_path` (Envoy's `REJECT_REQUEST`).
    Reject,
    /// Data inside a segment (RFC 3986's reading; for upstreams that never decode them).
    Keep,
}

/// How paths are normalised for matching (`[routing]`). [`PathRules::SECURE`] is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Lower-case before matching (`case_insensitive`).
    pub case_insensitive: bool,
    pub escaped_slashes: EscapedSlashes,
    /// Drop `;params` from each segment (`path_parameters = "ignore"`), as servlet containers
    /// and many routers do before routing.
    pub ignore_parameters: bool,
    /// Refuse control characters, raw backslashes and broken escapes (`invalid_paths =
    /// "reject"`). When off, a backslash separates segments and the rest match as written.
    pub reject_invalid: bool,
}

impl PathRules {
    /// Every spelling a common upstream framework could route to a limited handler is matched
    /// as that handler's path, or refused.
    pub const SECURE: PathRules = PathRules {
        case_insensitive: true,
        escaped_slashes: EscapedSlashes::Decode,
        ignore_parameters: true,
        reject_invalid: true,
    };

    /// RFC 3986 normalisation only: case, escaped slashes and parameters are kept as sent
    /// (for reading task ids out of a path, where they are data).
    pub const LITERAL: PathRules = PathRules {
        case_insensitive: false,
        escaped_slashes: EscapedSlashes::Keep,
        ignore_parameters: false,
        reject_invalid: false,
    };
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules::SECURE
    }
}

/// Why a path is refused (400 `invalid_path`): it is never forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path holds a NUL or another control character")]
    ControlCharacter,
    #[error("the path holds a backslash")]
    Backslash,
    #[error("the path holds a '%' that starts no valid escape")]
    BadEscape,
    #[error("the path holds an escaped slash (%2F or %5C)")]
    EscapedSlash,
}

/// Normalises the path part of a request target (anything from `?` on is ignored).
pub fn normalize_path<'a>(raw: &'a str, rules: &PathRules) -> Result<Cow<'a, str>, PathError> {
    let path = raw.split_once('?').map_or(raw, |(p, _)| p);
    if is_normal(path, rules) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, rules)?;
    let mut out = remove_dot_segments(&decoded, rules.ignore_parameters);
    if rules.case_insensitive {
        out.make_ascii_lowercase();
    }
    Ok(Cow::Owned(out))
}

/// True when the path needs no work (one pass over its bytes; the common case): absolute, no
/// escapes, backslashes or control bytes, no empty or dot segments, no trailing slash, and no
/// `;` or upper case where those would be changed.
fn is_normal(path: &str, rules: &PathRules) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    if b.len() == 1 {
        return true;
    }
    let mut segment_start = 1;
    for (i, &c) in b.iter().enumerate().skip(1) {
        let plain = match c {
            b'%' | b'\\' | 0..=0x1f | 0x7f => false,
            b';' => !rules.ignore_parameters,
            b'A'..=b'Z' => !rules.case_insensitive,
            b'/' => {
                let ok = is_plain_segment(&b[segment_start..i]);
                segment_start = i + 1;
                ok
            }
            _ => true,
        };
        if !plain {
            return false;
        }
    }
    is_plain_segment(&b[segment_start..])
}

fn is_plain_segment(s: &[u8]) -> bool {
    !matches!(s, b"" | b"." | b"..")
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The byte a `%XX` escape at `i` stands for, if one starts there.
fn escape_at(b: &[u8], i: usize) -> Option<u8> {
    let (h, l) = (hex_value(*b.get(i + 1)?)?, hex_value(*b.get(i + 2)?)?);
    Some(h * 16 + l)
}

/// Decodes escapes per the rules and refuses what `reject_invalid` refuses. A `%` that starts
/// no escape (when allowed) is written `%25`, the way RFC 3986 spells a literal `%`: left bare,
/// a decoded hex digit after it could form a new escape (`%%61a` -> `%aa`), and normalising
/// again would change the path — found by the property tests.
fn decode(path: &str, rules: &PathRules) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match escape_at(b, i) {
                Some(v) => {
                    push_escape(&mut out, v, rules)?;
                    i += 3;
                }
                None if rules.reject_invalid => return Err(PathError::BadEscape),
                None => {
                    out.push_str("%25");
                    i += 1;
                }
            },
            b'\\' if rules.reject_invalid => return Err(PathError::Backslash),
            b'\\' => {
                out.push('/');
                i += 1;
            }
            c if is_control(c) && rules.reject_invalid => return Err(PathError::ControlCharacter),
            _ => {
                // Copy one whole character (paths may hold raw UTF-8).
                let len = path[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&path[i..i + len]);
                i += len;
            }
        }
    }
    Ok(out)
}

/// Writes the character an escape stands for: decoded when unreserved (or a slash the rules
/// decode), otherwise kept escaped with upper-case hex so both spellings compare equal.
fn push_escape(out: &mut String, v: u8, rules: &PathRules) -> Result<(), PathError> {
    if is_unreserved(v) {
        out.push(v as char);
        return Ok(());
    }
    if matches!(v, b'/' | b'\\') {
        match rules.escaped_slashes {
            EscapedSlashes::Decode => {
                out.push('/');
                return Ok(());
            }
            EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
            EscapedSlashes::Keep => {}
        }
    }
    if is_control(v) && rules.reject_invalid {
        return Err(PathError::ControlCharacter);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(v >> 4)] as char);
    out.push(HEX[usize::from(v & 0xf)] as char);
    Ok(())
}

/// Resolves `.` and `..`, drops empty segments (duplicate and trailing slashes) and, when
/// asked, each segment's `;parameters` first (so `..;x` climbs like `..`); always absolute.
fn remove_dot_segments(path: &str, ignore_parameters: bool) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        let seg = match seg.split_once(';') {
            Some((name, _)) if ignore_parameters => name,
            _ => seg,
        };
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
    use super::*;

    fn norm(p: &str, rules: &PathRules) -> String {
        normalize_path(p, rules).unwrap().into_owned()
    }

    const CASE_SENSITIVE: PathRules = PathRules {
        case_insensitive: false,
        ..PathRules::SECURE
    };

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
            "/API/V1/TXT2IMG",
            "/api/v1/txt2img;x=1",
            "/api;a/v1;b/txt2img;c",
            "/api/v1%2Ftxt2img",
            "/api/v1%2ftxt2img",
            "/api/v1%5Ctxt2img",
            "/api/v1/x/..;/txt2img",
            "/api/v1%2F..%2Fv1%2Ftxt2img",
        ] {
            assert_eq!(norm(p, &PathRules::SECURE), "/api/v1/txt2img", "{p}");
        }
    }

    #[test]
    fn literal_rules_keep_reserved_escapes_with_canonical_hex() {
        let r = &PathRules::LITERAL;
        assert_eq!(norm("/a%2fb", r), "/a%2Fb");
        assert_eq!(norm("/a%2Fb", r), "/a%2Fb");
        assert_eq!(norm("/a%252E", r), "/a%252E");
        assert_eq!(norm("/a%zz", r), "/a%25zz");
        assert_eq!(norm("/a%4", r), "/a%254");
        assert_eq!(norm("/%%61a", r), "/%25aa");
        assert_eq!(norm("/a;b", r), "/a;b");
        assert_eq!(norm("/A", r), "/A");
    }

    #[test]
    fn what_no_honest_client_sends_is_refused() {
        let r = &PathRules::SECURE;
        for (p, e) in [
            ("/api/v1/txt2img%00", PathError::ControlCharacter),
            ("/api/v1/txt2img%0a", PathError::ControlCharacter),
            ("/api/v1/txt2img\u{1}", PathError::ControlCharacter),
            ("/api/v1/txt2img%7F", PathError::ControlCharacter),
            ("/api/v1\\txt2img", PathError::Backslash),
            ("/api/v1/txt2img%zz", PathError::BadEscape),
            ("/api/v1/txt2img%4", PathError::BadEscape),
            ("/api/v1/txt2img%", PathError::BadEscape),
        ] {
            assert_eq!(normalize_path(p, r), Err(e), "{p:?}");
        }
    }

    #[test]
    fn each_rule_can_be_switched() {
        let reject = PathRules {
            escaped_slashes: EscapedSlashes::Reject,
            ..PathRules::SECURE
        };
        assert_eq!(
            normalize_path("/a%2Fb", &reject),
            Err(PathError::EscapedSlash)
        );
        assert_eq!(
            normalize_path("/a%5cb", &reject),
            Err(PathError::EscapedSlash)
        );
        let keep = PathRules {
            escaped_slashes: EscapedSlashes::Keep,
            ignore_parameters: false,
            ..CASE_SENSITIVE
        };
        assert_eq!(norm("/a%2fb;x", &keep), "/a%2Fb;x");
        let lenient = PathRules {
            reject_invalid: false,
            ..PathRules::SECURE
        };
        assert_eq!(norm("/api/v1\\txt2img", &lenient), "/api/v1/txt2img");
        assert_eq!(norm("/a%00%zz", &lenient), "/a%00%25zz");
        assert_eq!(norm("/API", &CASE_SENSITIVE), "/API");
    }

    #[test]
    fn dot_segments_cannot_climb_above_root() {
        let r = &PathRules::SECURE;
        assert_eq!(norm("/../../x", r), "/x");
        assert_eq!(norm("", r), "/");
        assert_eq!(norm("/", r), "/");
        assert_eq!(norm("relative/./x", r), "/relative/x");
        assert_eq!(norm("/..;/..;/x", r), "/x");
    }

    #[test]
    fn idempotent_on_tricky_inputs() {
        for rules in [PathRules::SECURE, PathRules::LITERAL] {
            for p in [
                "/%2e%2e/a",
                "/a/%2E/b/",
                "/%7e/..//x",
                "/%41%2f",
                "/é/%C3%A9",
                "/a/.../b",
                "/a%3Bb;c/%253B",
                "/%2F%2e%2E%5C",
            ] {
                let once = norm(p, &rules);
                assert_eq!(norm(&once, &rules), once, "{p}");
            }
        }
    }
}
