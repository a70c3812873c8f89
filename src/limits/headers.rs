//! Renders a [`Decision`](super::Decision) as `X-RateLimit-*` (and optionally IETF `RateLimit`)
//! response headers.

use std::cell::RefCell;
use std::sync::OnceLock;

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use super::{Refusal, Usage, WindowUsage};

pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub static X_RATELIMIT_DAILY_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-daily-limit");
pub static X_RATELIMIT_DAILY_REMAINING: HeaderName =
    HeaderName::from_static("x-ratelimit-daily-remaining");
pub static X_RATELIMIT_TYPE: HeaderName = HeaderName::from_static("x-ratelimit-type");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Header values for small numbers are rendered once: they are most of what these headers
/// carry, and a clone of a prepared value costs no allocation. Larger ones are [`rendered`].
fn number(n: u32) -> HeaderValue {
    static SMALL: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let small = SMALL.get_or_init(|| (0..=1024u32).map(HeaderValue::from).collect());
    small
        .get(n as usize)
        .cloned()
        .unwrap_or_else(|| rendered(n.into()))
}

/// A number as a header value, without an allocation of its own: the digits go into a block
/// this thread keeps, and the value shares it (one allocation per few hundred values, where
/// `HeaderValue::from` makes two per value).
pub fn rendered(n: u64) -> HeaderValue {
    /// Bytes per block: about 400 values of a typical remaining count.
    const BLOCK: usize = 4096;
    thread_local! {
        static DIGITS: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    }
    let mut text = itoa::Buffer::new();
    let text = text.format(n).as_bytes();
    DIGITS.with(|digits| {
        let mut digits = digits.borrow_mut();
        if digits.capacity() - digits.len() < text.len() {
            *digits = BytesMut::with_capacity(BLOCK);
        }
        digits.extend_from_slice(text);
        HeaderValue::from_maybe_shared(digits.split().freeze()).expect("digits are a valid value")
    })
}

/// Which limit a header reports, for [`limit`]'s cache.
const PRIMARY: usize = 0;
const DAILY: usize = 1;

/// A limit past the prepared table: limits repeat from request to request (they come from the
/// config), so each thread keeps the last primary and daily limit it rendered.
fn limit(n: u32, which: usize) -> HeaderValue {
    thread_local! {
        static LAST: RefCell<[Option<(u32, HeaderValue)>; 2]> = const { RefCell::new([None, None]) };
    }
    if n <= 1024 {
        return number(n);
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        let last = &mut last[which];
        match &*last {
            Some((m, v)) if *m == n => v.clone(),
            _ => {
                let v = rendered(n.into());
                *last = Some((n, v.clone()));
                v
            }
        }
    })
}

/// Writes the usage headers every response of a limited class carries.
pub fn write_usage(headers: &mut HeaderMap, usage: &Usage, ietf: bool) {
    // Limits at even places (the primary window's, then the daily one's), remaining counts at
    // odd ones.
    for (at, field) in usage_fields(usage).into_iter().enumerate() {
        if let Some((name, n)) = field {
            let value = match at % 2 {
                0 => limit(n, [PRIMARY, DAILY][at / 2]),
                _ => number(n),
            };
            headers.insert(name.clone(), value);
        }
    }
    if ietf {
        write_ietf(headers, usage);
    }
}

/// The usage fields [`write_usage`] writes (IETF ones aside), with their numbers: the limit
/// and remaining count of the primary window, then of the daily one. A daily-only quota still
/// answers the two fields every client reads first.
pub fn usage_fields(usage: &Usage) -> [Option<(&'static HeaderName, u32)>; 4] {
    let mut fields = [None; 4];
    if let Some(p) = usage.primary {
        fields[0] = Some((&X_RATELIMIT_LIMIT, p.limit));
        fields[1] = Some((&X_RATELIMIT_REMAINING, p.remaining));
    }
    if let Some(d) = usage.daily {
        fields[2] = Some((&X_RATELIMIT_DAILY_LIMIT, d.limit));
        fields[3] = Some((&X_RATELIMIT_DAILY_REMAINING, d.remaining));
        if usage.primary.is_none() {
            fields[0] = Some((&X_RATELIMIT_LIMIT, d.limit));
            fields[1] = Some((&X_RATELIMIT_REMAINING, d.remaining));
        }
    }
    fields
}

/// Writes the headers a 429 adds to the usage headers.
pub fn write_refusal(headers: &mut HeaderMap, refusal: &Refusal) {
    headers.insert(
        X_RATELIMIT_TYPE.clone(),
        HeaderValue::from_static(refusal.kind.name()),
    );
    headers.insert(RETRY_AFTER, rendered(refusal.retry_after_secs));
}

/// IETF draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy: "minute";q=3;w=60` and
/// `RateLimit: "minute";r=2;t=41`, one item per window.
fn write_ietf(headers: &mut HeaderMap, usage: &Usage) {
    let windows: Vec<&WindowUsage> = usage.primary.iter().chain(usage.daily.iter()).collect();
    if windows.is_empty() {
        return;
    }
    let policy = windows
        .iter()
        .map(|w| format!("\"{}\";q={};w={}", w.kind.name(), w.limit, w.window_secs))
        .collect::<Vec<_>>()
        .join(", ");
    let state = windows
        .iter()
        .map(|w| format!("\"{}\";r={};t={}", w.kind.name(), w.remaining, w.reset_secs))
        .collect::<Vec<_>>()
        .join(", ");
    if let (Ok(p), Ok(s)) = (
        HeaderValue::from_str(&policy),
        HeaderValue::from_str(&state),
    ) {
        headers.insert(RATELIMIT_POLICY.clone(), p);
        headers.insert(RATELIMIT.clone(), s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_numbers_keep_their_digits_across_blocks() {
        // Enough values to fill several blocks, all held at once: a block handed to new
        // values must not change the ones rendered into it before.
        let values: Vec<(u64, HeaderValue)> = (0..5_000u64)
            .map(|i| i * 7_919 + u64::from(i % 3 == 0) * u64::MAX / 3)
            .map(|n| (n, rendered(n)))
            .collect();
        for (n, v) in &values {
            assert_eq!(v.to_str().unwrap(), n.to_string());
        }
        assert_eq!(rendered(u64::MAX).to_str().unwrap(), u64::MAX.to_string());
    }

    #[test]
    fn numbers_and_limits_render_as_their_digits_in_and_past_the_table() {
        for n in [0, 7, 1024, 1025, 60_000, 1_000_000_000, u32::MAX] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string());
            for which in [PRIMARY, DAILY] {
                assert_eq!(limit(n, which).to_str().unwrap(), n.to_string());
                assert_eq!(
                    limit(n, which).to_str().unwrap(),
                    n.to_string(),
                    "cached {n}"
                );
            }
        }
    }
}
