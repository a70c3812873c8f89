//! What a backend does: change one account's counters atomically. Every operation of the store
//! ([`super::Store`]) is written once on top of this, as a pure function of the counters and the
//! time run by [`Backend::update`] — the memory store runs it under the account's map entry lock,
//! Redis on counters it read and writes back with compare-and-set. Check-and-consume, on every
//! request's path, has its own entry so that Redis can do it in one script round trip; the memory
//! store runs it as an update like the rest.

use std::future::Future;

use super::StoreError;
use crate::identity::AccountId;
use crate::limits::{decide_units, Counter, Counters, Decision, Rule, WindowList};

/// A change to one account: a pure function of its counters and the time, returning its answer
/// and whether it changed them.
pub trait Update<R>: Fn(&mut Counters, u64) -> (R, bool) + Send + Sync {}

impl<R, F: Fn(&mut Counters, u64) -> (R, bool) + Send + Sync> Update<R> for F {}

/// Where an account's counters live, and the one way to change them.
pub trait Backend: Sync {
    /// Runs `f` on `account`'s counters at the time the backend decides at (the caller's
    /// `now_ms` in memory; Redis reads its own clock), atomically: no other change to the account
    /// comes between what `f` read and what it wrote. `f` returns its answer and whether it
    /// changed the counters (a change the memory store notes for the journal and, in strict
    /// mode, waits to be on disk). `f` may run more than once — Redis runs it again when another
    /// replica wrote the account in between — so it is a pure function of the counters and the
    /// time.
    fn update<R: Send>(
        &self,
        account: AccountId,
        now_ms: u64,
        f: impl Update<R>,
    ) -> impl Future<Output = Result<R, StoreError>> + Send;

    /// Checks every rule and consumes all or none ([`consume`]). `rules` is not empty (an
    /// empty list has nothing to check or count, and [`super::Store`] answers it itself).
    fn check_and_consume(
        &self,
        account: AccountId,
        rules: &[Rule],
        units: u32,
        now_ms: u64,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send {
        self.update(account, now_ms, consume_units(rules, units))
    }

    /// [`Backend::check_and_consume`], with every window the request was checked against
    /// listed as the decision left it (for the IETF fields).
    fn check_and_consume_listed(
        &self,
        account: AccountId,
        rules: &[Rule],
        units: u32,
        now_ms: u64,
    ) -> impl Future<Output = Result<(Decision, WindowList), StoreError>> + Send {
        self.update(account, now_ms, consume_listed(rules, units))
    }
}

/// [`decide`](crate::limits::decide) as an update: admitted, the request changed the counters; refused, it did not.
#[inline]
pub fn consume(rules: &[Rule]) -> impl Update<Decision> + '_ {
    consume_units(rules, 1)
}

/// [`decide_units`] as an update, for a request costing `units`.
#[inline]
pub fn consume_units(rules: &[Rule], units: u32) -> impl Update<Decision> + '_ {
    move |counters: &mut Counters, now_ms: u64| {
        let decision = decide_units(rules, units, counters, now_ms);
        let changed = decision.is_admitted();
        (decision, changed)
    }
}

/// [`consume_units`], with every window of `rules` listed as the decision left them.
pub fn consume_listed(rules: &[Rule], units: u32) -> impl Update<(Decision, WindowList)> + '_ {
    move |counters: &mut Counters, now_ms: u64| {
        let decision = decide_units(rules, units, counters, now_ms);
        let listed = WindowList::of(rules, counters, now_ms);
        ((decision, listed), decision.is_admitted())
    }
}

/// A read as an update: the counters whose window is still open, unchanged.
pub fn open_counters(counters: &mut Counters, now_ms: u64) -> (Vec<Counter>, bool) {
    (counters.open(now_ms).copied().collect(), false)
}
