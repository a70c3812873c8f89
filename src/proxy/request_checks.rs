//! Request hygiene: requests floodgate refuses before identifying anyone, because their meaning
//! is not clear or they are bigger than any honest client sends.  [pure]
//!
//! - A head that declared its body two ways (both `Content-Length` and `Transfer-Encoding`, or
//!   `Content-Length` twice): 400, connection closed. The listener spots it in the raw bytes
//!   (`server::framing`) because hyper resolves it before the request reaches the proxy.
//! - More header fields than `[server] max_header_count`: 431.
//!
//! Conflicting API keys are the identity stage's to refuse (`identity`).

use http::HeaderMap;

/// Marks a request whose raw head was framed two ways (set by the listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmbiguousFraming;

/// Why a request is refused before anything else looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HygieneError {
    #[error(
        "the request declares its body length more than one way (Content-Length with \
         Transfer-Encoding, or Content-Length twice)"
    )]
    AmbiguousFraming,
    #[error("the request has {count} header fields; at most {max} are accepted")]
    TooManyHeaders { count: usize, max: usize },
}

/// Checks a request head.
pub fn check(
    headers: &HeaderMap,
    ambiguous_framing: bool,
    max_header_count: usize,
) -> Result<(), HygieneError> {
    if ambiguous_framing {
        return Err(HygieneError::AmbiguousFraming);
    }
    let count = headers.len(); // every value, duplicates included
    if count > max_header_count {
        return Err(HygieneError::TooManyHeaders {
            count,
            max: max_header_count,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_are_counted_with_duplicates() {
        let mut h = HeaderMap::new();
        for i in 0..3 {
            h.append("x-dup", i.into());
        }
        assert_eq!(check(&h, false, 3), Ok(()));
        assert_eq!(
            check(&h, false, 2),
            Err(HygieneError::TooManyHeaders { count: 3, max: 2 })
        );
    }

    #[test]
    fn ambiguous_framing_is_refused_first() {
        assert_eq!(
            check(&HeaderMap::new(), true, 100),
            Err(HygieneError::AmbiguousFraming)
        );
    }
}
