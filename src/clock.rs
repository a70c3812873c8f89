//! The one place floodgate reads the wall clock.
//!
//! Every limit decision takes "now" as a plain number of milliseconds since the Unix epoch, read
//! from a [`Clock`]. The job queues wait on the same clock: how long a job may wait, how long an
//! upstream account rests after a 429, how long a task holds its slot. Production uses
//! [`SystemClock`]; tests use [`ManualClock`] and move time by hand, so minute windows, the
//! 00:00 UTC day reset and queue timeouts are tested without sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Milliseconds in one UTC day.
pub const DAY_MS: u64 = 86_400_000;

/// 00:00 UTC on the 1st of the month after the one `now_ms` falls in: where a monthly quota's
/// window ends. The proleptic Gregorian calendar (leap years every 4 years except centuries not
/// divisible by 400), by Howard Hinnant's `civil_from_days` / `days_from_civil`; the Redis
/// store's script computes the same in Lua (`src/store/redis/scripts.rs`).
///
/// Never inlined: depending on `now_ms` alone, inlined it was hoisted out of the rule loops
/// and computed for every request, with a monthly rule or not (~190 instructions).
#[inline(never)]
pub fn next_month_start_ms(now_ms: u64) -> u64 {
    let (year, month) = year_month_of_day((now_ms / DAY_MS) as i64);
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    first_day_of(year, month) as u64 * DAY_MS
}

/// 00:00 UTC on the 1st of the month `now_ms` falls in (never inlined, as above).
#[inline(never)]
pub fn month_start_ms(now_ms: u64) -> u64 {
    let (year, month) = year_month_of_day((now_ms / DAY_MS) as i64);
    first_day_of(year, month) as u64 * DAY_MS
}

/// The (year, month 1–12) of a day counted from 1970-01-01.
fn year_month_of_day(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// The day, counted from 1970-01-01, of the 1st of `month` in `year`.
fn first_day_of(year: i64, month: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A wait on a [`Clock`]: resolves once the time asked for has passed on it.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of wall-clock time in milliseconds since the Unix epoch (UTC).
pub trait Clock: std::fmt::Debug + Send + Sync + 'static {
    fn now_ms(&self) -> u64;

    /// Resolves once `period` has passed on this clock. The real clock waits on the runtime's
    /// monotonic timer, so a step of the wall clock neither cuts nor stretches the wait.
    fn sleep(&self, period: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(period))
    }
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned read of wall time
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; clones share the same time. Waits on it end when a
/// move takes the time past them.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    inner: Arc<Manual>,
}

#[derive(Debug, Default)]
struct Manual {
    now: AtomicU64,
    moved: Notify,
}

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        let clock = Self::default();
        clock.inner.now.store(now_ms, Ordering::SeqCst);
        clock
    }

    pub fn set_ms(&self, now_ms: u64) {
        self.inner.now.store(now_ms, Ordering::SeqCst);
        self.inner.moved.notify_waiters();
    }

    pub fn advance_ms(&self, ms: u64) {
        self.inner.now.fetch_add(ms, Ordering::SeqCst);
        self.inner.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.inner.now.load(Ordering::SeqCst)
    }

    fn sleep(&self, period: Duration) -> Sleep {
        let inner = self.inner.clone();
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        let until = inner.now.load(Ordering::SeqCst).saturating_add(ms);
        Box::pin(async move {
            loop {
                let moved = inner.moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable(); // registered before the check: no move is missed
                if inner.now.load(Ordering::SeqCst) >= until {
                    return;
                }
                moved.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `YYYY-MM-DDTHH:MM:SS` of a time, by humantime's formatter (an independent calendar).
    fn civil(ms: u64) -> String {
        let at = UNIX_EPOCH + Duration::from_millis(ms);
        humantime::format_rfc3339_seconds(at).to_string()[..19].to_owned()
    }

    #[test]
    fn months_end_on_the_first_at_midnight_utc_across_years_and_leap_days() {
        let ms = |text: &str| {
            let t = humantime::parse_rfc3339(text).unwrap();
            t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
        };
        for (now, start, next) in [
            (
                "2026-11-30T23:59:59.999Z",
                "2026-11-01T00:00:00",
                "2026-12-01T00:00:00",
            ),
            (
                "2026-12-31T23:59:59.999Z",
                "2026-12-01T00:00:00",
                "2027-01-01T00:00:00",
            ),
            (
                "2027-01-01T00:00:00Z",
                "2027-01-01T00:00:00",
                "2027-02-01T00:00:00",
            ),
            (
                "2028-02-29T12:00:00Z",
                "2028-02-01T00:00:00",
                "2028-03-01T00:00:00",
            ),
            (
                "2027-02-28T23:00:00Z",
                "2027-02-01T00:00:00",
                "2027-03-01T00:00:00",
            ),
            (
                "2100-02-28T00:00:00Z",
                "2100-02-01T00:00:00",
                "2100-03-01T00:00:00",
            ),
            (
                "2000-02-29T00:00:00Z",
                "2000-02-01T00:00:00",
                "2000-03-01T00:00:00",
            ),
            (
                "1970-01-15T00:00:00Z",
                "1970-01-01T00:00:00",
                "1970-02-01T00:00:00",
            ),
        ] {
            assert_eq!(civil(month_start_ms(ms(now))), start, "start of {now}");
            assert_eq!(civil(next_month_start_ms(ms(now))), next, "end of {now}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_instant_lies_in_its_calendar_month(now in 0u64..8_000_000_000_000) {
            let (start, next) = (month_start_ms(now), next_month_start_ms(now));
            proptest::prop_assert!(start <= now && now < next);
            proptest::prop_assert!((28 * DAY_MS..=31 * DAY_MS).contains(&(next - start)));
            proptest::prop_assert_eq!(&civil(now)[..7], &civil(start)[..7]);
            proptest::prop_assert_eq!(&civil(next - 1)[..7], &civil(now)[..7]);
            proptest::prop_assert!(civil(next).ends_with("-01T00:00:00"));
        }
    }

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_passes_it_and_not_before() {
        let clock = ManualClock::new(1_000);
        let mut sleep = tokio::spawn(clock.sleep(Duration::from_millis(500)));
        clock.advance_ms(499);
        tokio::task::yield_now().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut sleep)
                .await
                .is_err(),
            "1 ms short"
        );
        clock.advance_ms(1);
        tokio::time::timeout(Duration::from_secs(5), sleep)
            .await
            .expect("ends once the time is reached")
            .unwrap();
    }

    #[tokio::test]
    async fn a_manual_sleep_of_zero_ends_at_once() {
        let clock = ManualClock::new(7);
        tokio::time::timeout(Duration::from_secs(5), clock.sleep(Duration::ZERO))
            .await
            .expect("nothing to wait for");
    }
}
