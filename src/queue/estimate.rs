//! How long a waiting job is likely to wait: one estimator for every place that says so — the
//! `Retry-After` of a `429 concurrency`, the position and wait `/usage` shows a queued client,
//! and the job queues on the status page.
//!
//! The estimate is deliberately simple and says what it assumes: jobs ahead of a waiting one
//! start `concurrency` at a time, each round taking as long as recent jobs held their slot (a
//! moving average, so a burst of slow jobs moves it within a few jobs). It ignores the pool's
//! other tenants, which round-robin leaves to share the upstream accounts: under contention the
//! real wait is longer, which a client that retries a little late does not mind.

use std::time::Duration;

/// Until the first job ends, a job is assumed to hold its slot this long.
const FIRST_GUESS_MS: f64 = 1_000.0;

/// Weight of the newest job's duration in the moving average.
const NEWEST_WEIGHT: f64 = 0.2;

/// Recent job durations of one pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobDurations {
    avg_ms: f64,
}

impl Default for JobDurations {
    fn default() -> Self {
        Self {
            avg_ms: FIRST_GUESS_MS,
        }
    }
}

impl JobDurations {
    /// A job ended after holding its slot for `held`.
    pub fn record(&mut self, held: Duration) {
        let ms = held.as_secs_f64() * 1_000.0;
        self.avg_ms = (1.0 - NEWEST_WEIGHT) * self.avg_ms + NEWEST_WEIGHT * ms;
    }

    /// How long a job holds its slot, recently.
    pub fn typical(&self) -> Duration {
        Duration::from_secs_f64(self.avg_ms / 1_000.0)
    }

    /// The wait of a job at 1-based `position` in a queue whose tenant runs `concurrency` jobs
    /// at once: the rounds of jobs that start before it (its own round included) times the
    /// typical job.
    pub fn wait(&self, position: usize, concurrency: u32) -> Duration {
        let rounds = (position.max(1) as u64).div_ceil(u64::from(concurrency.max(1)));
        Duration::from_secs_f64(rounds as f64 * self.avg_ms / 1_000.0)
    }

    /// [`wait`](Self::wait) as a `Retry-After`: whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self, position: usize, concurrency: u32) -> u64 {
        let ms = self.wait(position, concurrency).as_millis() as u64;
        ms.div_ceil(1_000).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(jobs: &[u64]) -> JobDurations {
        let mut d = JobDurations::default();
        for &ms in jobs {
            d.record(Duration::from_millis(ms));
        }
        d
    }

    #[test]
    fn jobs_ahead_start_concurrency_at_a_time() {
        let d = after(&[4_000; 60]); // settled on 4 s jobs
        assert_eq!(d.typical().as_millis().div_ceil(10), 400);
        // concurrency 2: positions 1 and 2 go in the first round, 3 and 4 in the second
        assert_eq!(d.retry_after_secs(1, 2), 4);
        assert_eq!(d.retry_after_secs(2, 2), 4);
        assert_eq!(d.retry_after_secs(3, 2), 8);
        assert_eq!(d.retry_after_secs(5, 2), 12);
        assert_eq!(d.wait(3, 1).as_secs_f64().round(), 12.0);
    }

    #[test]
    fn the_average_follows_recent_jobs() {
        let d = after(&[1_000; 30]);
        let slower = after(&[1_000, 1_000, 1_000, 10_000, 10_000, 10_000, 10_000]);
        assert!(slower.typical() > d.typical() * 5, "{:?}", slower.typical());
    }

    #[test]
    fn retry_after_is_whole_seconds_and_never_zero() {
        let quick = after(&[10; 40]);
        assert_eq!(quick.retry_after_secs(1, 1), 1);
        assert_eq!(quick.retry_after_secs(0, 0), 1);
        let d = after(&[1_500; 60]);
        assert_eq!(d.retry_after_secs(1, 1), 2, "1.5 s rounds up");
    }

    #[test]
    fn before_any_job_ended_the_first_guess_is_one_second_a_round() {
        let d = JobDurations::default();
        assert_eq!(d.retry_after_secs(3, 1), 3);
    }
}
