//! Rate limits and quotas: the pure decision core.
//!
//! A request carries the list of [`Rule`]s that apply to its account tier and endpoint class. The
//! store keeps one [`Counters`] per account and runs [`decide`] on it under the account's lock (or,
//! in Redis, the same logic in a script). `decide` checks every rule and consumes all or none, so
//! a request refused by any limit changes no counter.
//!
//! Windows are fixed windows that open at the first admitted request (the semantics of the seed's
//! API: `Retry-After` is the time until the window that refused you closes), except the daily
//! quota, which is the UTC calendar day and resets at 00:00 UTC, and the monthly quota, the UTC
//! calendar month (28–31 days), which resets at 00:00 UTC on the 1st.
//!
//! governor is not used here: it implements GCRA for one key at a time, while floodgate needs
//! several limits of one request checked and consumed atomically, calendar-day quotas, and the exact
//! remaining count for `X-RateLimit-Remaining`.

mod cost;
mod decide;
pub mod headers;
mod policy;

pub use cost::BodyCost;
pub use decide::{
    decide, decide_units, usage_of, Counter, Counters, Decision, Receipt, Refusal, Usage,
    WindowList, WindowUsage,
};
pub use policy::{OnFailure, Tier};

/// Identifies one counter of an account: derived from the limit's scope and window, so it is
/// stable across restarts and config reloads for a rule that did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterId(pub u32);

/// What kind of window a limit counts in; names the limit in `X-RateLimit-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    Second,
    Minute,
    Hour,
    Daily,
    /// The UTC calendar month.
    Monthly,
    /// At most one request per fixed interval ("1 request per 3 seconds").
    Interval,
    /// Job submissions blocked for the rest of the UTC day after too many incorrect tasks.
    Penalty,
    /// Relax-mode jobs refused for the rest of the UTC day past the relax allowance.
    Relax,
}

impl LimitKind {
    /// The value of `X-RateLimit-Type` when this limit refuses a request.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Second => "second",
            LimitKind::Minute => "minute",
            LimitKind::Hour => "hour",
            LimitKind::Daily => "daily",
            LimitKind::Monthly => "monthly",
            LimitKind::Interval => "interval",
            LimitKind::Penalty => "penalty",
            LimitKind::Relax => "relax",
        }
    }
}

/// How a counter's window opens and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// Opens at the first admitted request and lasts this many milliseconds.
    Fixed { period_ms: u64 },
    /// The UTC calendar day.
    UtcDay,
    /// The UTC calendar month.
    UtcMonth,
}

/// A window as the two numbers its end is computed from: a window opened at `now_ms` starts at
/// the last multiple of `align_ms` (1 = at `now_ms` itself) and lasts `length_ms`; `align_ms`
/// 0 is the calendar month, whose length varies. See [`Window::end_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub align_ms: u64,
    pub length_ms: u64,
}

impl Span {
    /// `now_ms - now_ms % align_ms + length_ms`: the one formula for a window's end; for
    /// `align_ms` 0, the next 1st of a month at 00:00 UTC.
    pub fn end_for(self, now_ms: u64) -> u64 {
        match self.align_ms {
            0 => crate::clock::next_month_start_ms(now_ms),
            align => now_ms - now_ms % align + self.length_ms,
        }
    }
}

impl Window {
    /// The numbers this window's end is computed from: a fixed window starts when it is opened
    /// (`align_ms` 1), the UTC day at the last 00:00 UTC (`align_ms` = `length_ms` = a day).
    pub fn span(self) -> Span {
        match self {
            Window::Fixed { period_ms } => Span {
                align_ms: 1,
                length_ms: period_ms,
            },
            Window::UtcDay => Span {
                align_ms: crate::clock::DAY_MS,
                length_ms: crate::clock::DAY_MS,
            },
            Window::UtcMonth => Span {
                align_ms: 0,
                length_ms: 0,
            },
        }
    }

    /// When a window opened by a request at `now_ms` closes: [`Span::end_for`] of
    /// [`Window::span`], `now_ms - now_ms % align_ms + length_ms`.
    ///
    /// The Redis store computes the same end in its script (`src/store/redis/scripts.rs`,
    /// `CHECK_AND_CONSUME`) by the same formula, from the same two numbers sent with each rule:
    /// no window or day length is written down anywhere else. `tests/differential.rs` runs
    /// random requests through both stores and checks they decide alike.
    pub fn end_for(self, now_ms: u64) -> u64 {
        self.span().end_for(now_ms)
    }

    /// The length in whole seconds of the window open at `now_ms` (for the IETF
    /// `RateLimit-Policy` `w` parameter): a month's is that month's.
    pub fn seconds_at(self, now_ms: u64) -> u64 {
        match self {
            Window::Fixed { period_ms } => period_ms.div_ceil(1000),
            Window::UtcDay => 86_400,
            Window::UtcMonth => {
                let start = crate::clock::month_start_ms(now_ms);
                (crate::clock::next_month_start_ms(now_ms) - start) / 1000
            }
        }
    }
}

/// One limit as it applies to a request: `limit` requests per `window`, counted in `counter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub counter: CounterId,
    pub limit: u32,
    pub window: Window,
    pub kind: LimitKind,
}
