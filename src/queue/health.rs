//! An upstream account's health: whether it is in rotation, resting until a time, or disabled
//! until an operator enables it again — and what each upstream answer does to that.  [pure]
//!
//! A 429 rests an account for the upstream's Retry-After. A status or body that says the
//! credential is dead (by default 401 and 403; e.g. a body containing "banned") disables it:
//! sending it more jobs only fails them. Consecutive failures (5xx, timeouts, connection errors)
//! rest it with an exponential backoff; when the rest ends it gets one job at a time (a probe)
//! until a job succeeds.
//!
//! The record is what replicas share (in Redis) and what a restart keeps (beside the state
//! file): every change is a new record computed from the one stored, here, without I/O.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where an upstream account stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum State {
    #[default]
    Active,
    /// Out of rotation until `until_ms`.
    Resting,
    /// Out of rotation until an operator enables it.
    Disabled,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Resting => "resting",
            State::Disabled => "disabled",
        }
    }
}

/// An upstream account's health record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Health {
    #[serde(default)]
    pub state: State,
    /// End of the rest (Unix ms); 0 when not resting.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub until_ms: u64,
    /// Why it rests or is disabled, for the operator.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When the state last changed (Unix ms).
    #[serde(default)]
    pub since_ms: u64,
    /// Failures in a row (5xx, timeouts, connection errors) since the last success.
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub failures: u32,
    /// Back from a rest for failures: one job at a time until one succeeds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probing: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero32(n: &u32) -> bool {
    *n == 0
}

/// What an upstream answer says about the account that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The job was taken (any answer that is none of the below).
    Served,
    /// 429: rest for this long.
    RateLimited { rest_ms: u64 },
    /// A status or body a rule names: the credential is dead.
    Dead { reason: String },
    /// 5xx, a timeout or a connection error.
    Failed { what: String },
}

/// The rules that take an upstream account out of rotation (`[upstream_health]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRules {
    /// Statuses that disable the account.
    pub disable_statuses: Vec<u16>,
    /// Texts that disable the account when an error answer's (4xx or 5xx) body contains one,
    /// ASCII case ignored.
    pub disable_bodies: Vec<String>,
    /// Failures in a row that rest the account; 0 = never.
    pub failures_to_rest: u32,
    /// The first rest for failures; each further one doubles, up to `max_rest`.
    pub rest: Duration,
    pub max_rest: Duration,
}

impl Default for HealthRules {
    fn default() -> Self {
        Self {
            disable_statuses: vec![401, 403],
            disable_bodies: Vec::new(),
            failures_to_rest: 5,
            rest: Duration::from_secs(10),
            max_rest: Duration::from_secs(600),
        }
    }
}

impl HealthRules {
    /// Whether this answer says the credential is dead; the reason when it does. `body`: the
    /// start of an error answer's body, when rules look at bodies.
    pub fn dead(&self, status: u16, body: Option<&[u8]>) -> Option<String> {
        if self.disable_statuses.contains(&status) {
            return Some(format!("upstream answered {status}"));
        }
        if status < 400 {
            return None;
        }
        let body = body?;
        self.disable_bodies
            .iter()
            .find(|text| contains_ignoring_case(body, text.as_bytes()))
            .map(|text| format!("upstream answered {status} with {text:?}"))
    }

    /// Whether an answer with this status needs its body read for [`dead`](Self::dead).
    pub fn reads_body(&self, status: u16) -> bool {
        status >= 400 && !self.disable_bodies.is_empty()
    }

    /// The rest after `failures` in a row: `rest`, doubled for each failure past the threshold.
    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(self.failures_to_rest).min(20);
        self.rest.saturating_mul(1 << doublings).min(self.max_rest)
    }
}

fn contains_ignoring_case(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

impl Health {
    /// Out of rotation at `now_ms`: disabled, or resting.
    pub fn is_out(&self, now_ms: u64) -> bool {
        self.state == State::Disabled || self.rests_at(now_ms)
    }

    pub fn rests_at(&self, now_ms: u64) -> bool {
        self.state == State::Resting && now_ms < self.until_ms
    }

    /// The state as seen at `now_ms`: a rest that has ended is active.
    pub fn state_at(&self, now_ms: u64) -> State {
        match self.state {
            State::Resting if now_ms >= self.until_ms => State::Active,
            s => s,
        }
    }

    /// The record after `outcome`; `None` when it does not change (most answers).
    pub fn after(&self, outcome: &Outcome, rules: &HealthRules, now_ms: u64) -> Option<Health> {
        match outcome {
            Outcome::Served => self.served(),
            Outcome::RateLimited { rest_ms } => {
                self.rest(now_ms, *rest_ms, "upstream answered 429")
            }
            Outcome::Dead { reason } => self.disabled(now_ms, reason),
            Outcome::Failed { what } => self.failed(rules, now_ms, what),
        }
    }

    /// Disabled by an operator or a rule; a disabled account stays as it was disabled.
    pub fn disabled(&self, now_ms: u64, reason: &str) -> Option<Health> {
        if self.state == State::Disabled {
            return None;
        }
        Some(Health {
            state: State::Disabled,
            reason: reason.to_owned(),
            since_ms: now_ms,
            ..Health::default()
        })
    }

    /// Back in rotation (an operator's enable): failures forgotten, any rest ended.
    pub fn enabled(&self, now_ms: u64) -> Option<Health> {
        let active = Health {
            since_ms: now_ms,
            ..Health::default()
        };
        (self.state_at(now_ms) != State::Active || self.failures > 0 || self.probing)
            .then_some(active)
    }

    /// No failures on record and no probe: a job served changes nothing.
    pub fn is_clean(&self) -> bool {
        self.failures == 0 && !self.probing
    }

    fn served(&self) -> Option<Health> {
        if self.is_clean() {
            return None;
        }
        Some(Health {
            failures: 0,
            probing: false,
            ..self.clone()
        })
    }

    fn rest(&self, now_ms: u64, rest_ms: u64, reason: &str) -> Option<Health> {
        let until_ms = now_ms.saturating_add(rest_ms);
        if self.state == State::Disabled || (self.rests_at(now_ms) && self.until_ms >= until_ms) {
            return None;
        }
        Some(Health {
            state: State::Resting,
            until_ms,
            reason: reason.to_owned(),
            since_ms: now_ms,
            ..self.clone()
        })
    }

    fn failed(&self, rules: &HealthRules, now_ms: u64, what: &str) -> Option<Health> {
        // Failures during a rest are of jobs sent before it: the rest already answers them,
        // and counting them would lengthen the next rest for one burst.
        if self.state == State::Disabled || self.rests_at(now_ms) {
            return None;
        }
        let failures = self.failures.saturating_add(1);
        let counted = Health {
            failures,
            ..self.clone()
        };
        if rules.failures_to_rest == 0 || failures < rules.failures_to_rest {
            return Some(counted);
        }
        let rest = rules.backoff(failures).as_millis() as u64;
        let reason = format!("{failures} failures in a row, the last: {what}");
        let mut rested = counted.rest(now_ms, rest, &reason)?;
        rested.probing = true;
        Some(rested)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> HealthRules {
        HealthRules {
            failures_to_rest: 3,
            rest: Duration::from_secs(10),
            max_rest: Duration::from_secs(60),
            disable_bodies: vec!["Banned".into()],
            ..HealthRules::default()
        }
    }

    fn failed(h: &Health, now: u64) -> Health {
        let what = Outcome::Failed { what: "502".into() };
        h.after(&what, &rules(), now).expect("a failure is counted")
    }

    #[test]
    fn a_429_rests_until_its_retry_after_and_then_the_account_is_back() {
        let h = Health::default()
            .after(&Outcome::RateLimited { rest_ms: 5_000 }, &rules(), 1_000)
            .unwrap();
        assert_eq!((h.state, h.until_ms), (State::Resting, 6_000));
        assert!(h.is_out(5_999));
        assert!(!h.is_out(6_000));
        assert_eq!(h.state_at(6_000), State::Active);
        let shorter = Outcome::RateLimited { rest_ms: 1_000 };
        assert_eq!(
            h.after(&shorter, &rules(), 2_000),
            None,
            "a shorter rest changes nothing"
        );
    }

    #[test]
    fn dead_credentials_disable_until_enabled_and_nothing_else_moves_them() {
        let r = rules();
        assert_eq!(r.dead(401, None).as_deref(), Some("upstream answered 401"));
        assert!(r.dead(403, None).is_some());
        assert!(r
            .dead(400, Some(b"{\"error\":\"account BANNED\"}"))
            .is_some());
        assert_eq!(r.dead(400, Some(b"bad prompt")), None);
        assert_eq!(
            r.dead(200, Some(b"banned")),
            None,
            "a success is never dead"
        );
        let dead = Outcome::Dead {
            reason: "upstream answered 401".into(),
        };
        let h = Health::default().after(&dead, &r, 7).unwrap();
        assert_eq!((h.state, h.since_ms), (State::Disabled, 7));
        assert!(h.is_out(u64::MAX));
        assert_eq!(h.after(&Outcome::Served, &r, 8), None);
        assert_eq!(h.after(&Outcome::RateLimited { rest_ms: 1 }, &r, 8), None);
        let back = h.enabled(9).unwrap();
        assert_eq!((back.state, back.since_ms), (State::Active, 9));
        assert_eq!(
            back.enabled(10),
            None,
            "enabling an active account changes nothing"
        );
    }

    #[test]
    fn failures_in_a_row_rest_with_a_doubling_backoff_and_a_probe_brings_it_back() {
        let mut h = Health::default();
        h = failed(&h, 0);
        h = failed(&h, 0);
        assert_eq!((h.state, h.failures), (State::Active, 2));
        h = failed(&h, 0);
        assert_eq!(
            (h.state, h.until_ms, h.probing),
            (State::Resting, 10_000, true)
        );
        // The probe after the rest fails: twice as long.
        h = failed(&h, 10_000);
        assert_eq!(h.until_ms, 30_000);
        h = failed(&h, 30_000);
        assert_eq!(h.until_ms, 70_000);
        h = failed(&h, 70_000);
        assert_eq!(h.until_ms, 130_000, "capped at max_rest");
        let healed = h.after(&Outcome::Served, &rules(), 130_000).unwrap();
        assert_eq!((healed.failures, healed.probing), (0, false));
        assert!(!healed.is_out(130_000));
    }

    #[test]
    fn failures_of_jobs_sent_before_a_rest_do_not_lengthen_it() {
        let mut h = Health::default();
        for _ in 0..3 {
            h = failed(&h, 0);
        }
        assert_eq!(h.until_ms, 10_000);
        let what = Outcome::Failed { what: "502".into() };
        for at in [1, 2, 3] {
            assert_eq!(
                h.after(&what, &rules(), at),
                None,
                "a burst during the rest"
            );
        }
        assert_eq!(
            failed(&h, 10_000).until_ms,
            30_000,
            "the failed probe doubles it once"
        );
    }

    #[test]
    fn a_success_between_failures_starts_the_count_again() {
        let h = failed(&failed(&Health::default(), 0), 0);
        let h = h.after(&Outcome::Served, &rules(), 0).unwrap();
        let h = failed(&failed(&h, 0), 0);
        assert_eq!((h.state, h.failures), (State::Active, 2));
    }

    #[test]
    fn the_record_reads_back_as_written() {
        let h = failed(&failed(&failed(&Health::default(), 0), 0), 0);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Health>(&json).unwrap(), h);
        assert_eq!(
            serde_json::from_str::<Health>("{}").unwrap(),
            Health::default()
        );
    }
}
