//! Renders a [`Decision`](super::Decision) as `X-RateLimit-*` (and optionally IETF `RateLimit`)
//! response headers.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::OnceLock;

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use super::{Refusal, Usage, WindowList};

pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub static X_RATELIMIT_DAILY_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-daily-limit");
pub static X_RATELIMIT_DAILY_REMAINING: HeaderName =
    HeaderName::from_static("x-ratelimit-daily-remaining");
pub static X_RATELIMIT_MONTHLY_LIMIT: HeaderName =
    HeaderName::from_static("x-ratelimit-monthly-limit");
pub static X_RATELIMIT_MONTHLY_REMAINING: HeaderName =
    HeaderName::from_static("x-ratelimit-monthly-remaining");
pub static X_RATELIMIT_MONTHLY_RESET: HeaderName =
    HeaderName::from_static("x-ratelimit-monthly-reset");
pub static X_RATELIMIT_COST: HeaderName = HeaderName::from_static("x-ratelimit-cost");
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
const MONTHLY: usize = 2;

/// A limit past the prepared table: limits repeat from request to request (they come from the
/// config), so each thread keeps the last primary, daily and monthly limit it rendered.
fn limit(n: u32, which: usize) -> HeaderValue {
    thread_local! {
        static LAST: RefCell<[Option<(u32, HeaderValue)>; 3]> =
            const { RefCell::new([None, None, None]) };
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

/// What the IETF fields say of a request: every window it was checked against, and the policy
/// name of each (its rules', [`Tier::policy_names`], in the same order).
///
/// [`Tier::policy_names`]: super::Tier::policy_names
#[derive(Debug, Clone, Default)]
pub struct Ietf<'a> {
    pub names: &'a [Box<str>],
    pub windows: WindowList,
}

/// Writes the usage headers every response of a limited class carries; with `ietf` (the IETF
/// fields on), the `RateLimit-Policy` / `RateLimit` fields too.
pub fn write_usage(headers: &mut HeaderMap, usage: &Usage, ietf: Option<Ietf<'_>>) {
    for &(name, n) in usage_fields(usage).iter() {
        // A limit is rendered through its cache, a remaining count from the table.
        let limits = [
            (&X_RATELIMIT_LIMIT, PRIMARY),
            (&X_RATELIMIT_DAILY_LIMIT, DAILY),
            (&X_RATELIMIT_MONTHLY_LIMIT, MONTHLY),
        ];
        let which = limits.iter().find(|(l, _)| std::ptr::eq(*l, name));
        let value = match which {
            Some(&(_, which)) => limit(n, which),
            None => number(n),
        };
        headers.insert(name.clone(), value);
    }
    if let Some(ietf) = ietf {
        write_ietf(headers, &ietf);
    }
}

/// The usage fields of one answer, in order, with no empty slots: most answers carry two of
/// the eight, and the listener walks them for every field the upstream sent.
#[derive(Debug, Clone, Copy)]
pub struct UsageFields {
    fields: [(&'static HeaderName, u32); 8],
    len: usize,
}

impl UsageFields {
    fn push(&mut self, name: &'static HeaderName, n: u32) {
        self.fields[self.len] = (name, n);
        self.len += 1;
    }

    pub fn iter(&self) -> std::slice::Iter<'_, (&'static HeaderName, u32)> {
        self.fields[..self.len].iter()
    }
}

/// The usage fields [`write_usage`] writes (IETF ones aside), with their numbers: the limit
/// and remaining count of the primary window, then of the daily one, then of the monthly one
/// and the seconds until it resets, then what the request cost when more than one unit. A
/// quota alone (daily or monthly) still answers the two fields every client reads first.
pub fn usage_fields(usage: &Usage) -> UsageFields {
    let mut fields = UsageFields {
        fields: [(&X_RATELIMIT_LIMIT, 0); 8],
        len: 0,
    };
    if let Some(first) = usage.primary.or(usage.daily).or(usage.monthly) {
        fields.push(&X_RATELIMIT_LIMIT, first.limit);
        fields.push(&X_RATELIMIT_REMAINING, first.remaining);
    }
    if let Some(d) = usage.daily {
        fields.push(&X_RATELIMIT_DAILY_LIMIT, d.limit);
        fields.push(&X_RATELIMIT_DAILY_REMAINING, d.remaining);
    }
    if let Some(m) = usage.monthly {
        fields.push(&X_RATELIMIT_MONTHLY_LIMIT, m.limit);
        fields.push(&X_RATELIMIT_MONTHLY_REMAINING, m.remaining);
        fields.push(&X_RATELIMIT_MONTHLY_RESET, m.reset_secs);
    }
    if usage.cost > 0 {
        fields.push(&X_RATELIMIT_COST, usage.cost);
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

/// IETF draft-ietf-httpapi-ratelimit-headers: one quota policy per window the request was
/// checked against, named by its policy name:
/// `RateLimit-Policy: "txt2img.minute";q=3;w=60, "txt2img.daily";q=100;w=86400` and
/// `RateLimit: "txt2img.minute";r=2;t=41, "txt2img.daily";r=97;t=50400`. A window without a
/// name (none given) is named by its kind.
fn write_ietf(headers: &mut HeaderMap, ietf: &Ietf<'_>) {
    let (windows, names) = (&ietf.windows.0, ietf.names);
    if windows.is_empty() {
        return;
    }
    let mut policy = String::with_capacity(40 * windows.len());
    let mut state = String::with_capacity(40 * windows.len());
    for (i, w) in windows.iter().enumerate() {
        if i > 0 {
            policy.push_str(", ");
            state.push_str(", ");
        }
        let name = names
            .get(i)
            .map_or_else(|| sf_string(w.kind.name()), Box::clone);
        let _ = write!(policy, "{name};q={};w={}", w.limit, w.window_secs);
        let _ = write!(state, "{name};r={};t={}", w.remaining, w.reset_secs);
    }
    if let (Ok(p), Ok(s)) = (
        HeaderValue::from_str(&policy),
        HeaderValue::from_str(&state),
    ) {
        headers.insert(RATELIMIT_POLICY.clone(), p);
        headers.insert(RATELIMIT.clone(), s);
    }
}

/// `text` as a structured-field String (RFC 9651 §3.3.3): quoted, `"` and `\` escaped, and any
/// character a String cannot hold (outside printable ASCII) written as `_`.
pub fn sf_string(text: &str) -> Box<str> {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{LimitKind, WindowUsage};

    fn window(kind: LimitKind, limit: u32, remaining: u32, reset_secs: u32) -> WindowUsage {
        let window_secs = match kind {
            LimitKind::Daily => 86_400,
            _ => 60,
        };
        WindowUsage {
            limit,
            remaining,
            reset_secs,
            window_secs,
            kind,
        }
    }

    #[test]
    fn the_ietf_fields_name_every_listed_window_and_only_when_on() {
        let usage = Usage {
            primary: Some(window(LimitKind::Minute, 3, 2, 41)),
            ..Usage::default()
        };
        let windows = WindowList(
            [
                window(LimitKind::Minute, 3, 2, 41),
                window(LimitKind::Minute, 300, 250, 12),
                window(LimitKind::Daily, 100, 97, 50_400),
            ]
            .into(),
        );
        let names: Vec<Box<str>> = ["txt2img.minute", "account.minute"]
            .into_iter()
            .map(sf_string)
            .collect();
        let mut h = HeaderMap::new();
        let ietf = Ietf {
            names: &names,
            windows,
        };
        write_usage(&mut h, &usage, Some(ietf));
        assert_eq!(
            h[&RATELIMIT_POLICY],
            "\"txt2img.minute\";q=3;w=60, \"account.minute\";q=300;w=60, \"daily\";q=100;w=86400"
        );
        assert_eq!(
            h[&RATELIMIT],
            "\"txt2img.minute\";r=2;t=41, \"account.minute\";r=250;t=12, \"daily\";r=97;t=50400",
            "a window without a name is named by its kind"
        );
        let mut off = HeaderMap::new();
        write_usage(&mut off, &usage, None);
        assert!(off.get(&RATELIMIT).is_none() && off.get(&RATELIMIT_POLICY).is_none());
        assert_eq!(off[&X_RATELIMIT_LIMIT], "3");
        let mut none = HeaderMap::new();
        write_usage(&mut none, &usage, Some(Ietf::default()));
        assert!(
            none.get(&RATELIMIT).is_none(),
            "no window listed (a store failing open)"
        );
    }

    #[test]
    fn names_become_valid_structured_field_strings() {
        assert_eq!(&*sf_string("gen.minute"), "\"gen.minute\"");
        assert_eq!(&*sf_string("a \"b\" \\c"), "\"a \\\"b\\\" \\\\c\"");
        assert_eq!(&*sf_string("bild-größe"), "\"bild-gr__e\"");
    }

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
            for which in [PRIMARY, DAILY, MONTHLY] {
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
