//! What the benchmarks share: the day they run on, the million accounts they use, and the
//! memory store's check-and-consume as the proxy's requests run it.

use floodgate::identity::AccountId;
use floodgate::limits::{Decision, Rule};
use floodgate::store::{consume, MemoryStore};

/// 2026-11-23T00:00:00Z.
pub const DAY0: u64 = 1_795_392_000_000;

/// splitmix64: a fast bijective mixer, so `account(i)` is a distinct, uniform-looking id per `i`.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `i`th account of the 1M set: distinct for distinct `i` (the low half is a bijection of
/// `i`), pseudo-random, and computed in a few ns without touching memory, so iterating `i` in
/// order visits the store's buckets in a pseudo-random order.
pub fn account(i: u64) -> AccountId {
    let lo = splitmix64(i);
    let hi = splitmix64(i ^ 0xA5A5_A5A5_A5A5_A5A5);
    AccountId(((hi as u128) << 64) | lo as u128)
}

/// One request's check-and-consume in the memory store, under the account's lock.
#[inline]
pub fn check_and_consume(
    store: &MemoryStore,
    account: AccountId,
    rules: &[Rule],
    now_ms: u64,
) -> Decision {
    store.apply(account, now_ms, consume(rules)).0
}
