//! Every account record resolved against the running config: what the request path consults.
//!
//! The map sits in [`crate::shared::Policy`] beside the config it was resolved against, so the
//! two are swapped together (a reload re-resolves every record) and a request reads both from
//! one snapshot. With no account changed at runtime, each lookup is one length check.

use std::collections::HashMap;
use std::sync::Arc;

use super::{AccountRecord, Block};
use crate::config::{Config, Located};
use crate::identity::{AccountId, BuildIdHasher, Caller, TierId, UnknownKeys};
use crate::limits::Tier;
use crate::queue::QueueSettings;

/// One account's runtime changes, resolved.
#[derive(Debug, Clone)]
pub struct AccountOverride {
    /// The plan set at runtime; `None`: the config's.
    pub tier: Option<TierId>,
    /// The account's rules (its tier's, with its own laid over); `None`: its tier's.
    pub rules: Option<Tier>,
    /// Its job caps; `None`: the config's.
    pub queue: Option<QueueSettings>,
    pub block: Option<Block>,
}

/// A request of a blocked account: refused with 403 (`account_blocked`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this account is blocked: {reason}")]
pub struct Blocked {
    pub reason: String,
    /// When the block ends (clock ms), if it does.
    pub until_ms: Option<u64>,
    /// Whole seconds until then (`Retry-After`).
    pub retry_after_secs: Option<u64>,
}

/// Every account's runtime changes, resolved against one config.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Whether any account has changes: the request path's one test while none has (a field
    /// of its own, read without following the map's pointer).
    any: bool,
    by_account: Arc<HashMap<AccountId, Arc<AccountOverride>, BuildIdHasher>>,
}

impl Overrides {
    /// Resolves every record against `config`. A record the config can no longer honour (its
    /// tier or a class of its limits is gone) is left out, with a warning naming the account
    /// and the field: a config change never fails for it.
    pub fn resolve<'r>(
        config: &Config,
        records: impl IntoIterator<Item = (&'r AccountId, &'r AccountRecord)>,
    ) -> (Self, Vec<String>) {
        let mut map = HashMap::default();
        let mut warnings = Vec::new();
        for (&account, record) in records {
            match resolve(config, account, record) {
                Ok(Some(o)) => {
                    map.insert(account, Arc::new(o));
                }
                Ok(None) => {}
                Err(e) => warnings.push(format!(
                    "account {:032x}: its runtime change is dropped: {e}",
                    account.0
                )),
            }
        }
        (Self::of(map), warnings)
    }

    /// These overrides with `account`'s replaced by `record` resolved against `config` (or
    /// removed): an edit re-resolves one account, not all of them.
    pub fn with(
        &self,
        config: &Config,
        account: AccountId,
        record: &AccountRecord,
    ) -> Result<Self, Located> {
        let mut map = (*self.by_account).clone();
        match resolve(config, account, record)? {
            Some(o) => map.insert(account, Arc::new(o)),
            None => map.remove(&account),
        };
        Ok(Self::of(map))
    }

    fn of(map: HashMap<AccountId, Arc<AccountOverride>, BuildIdHasher>) -> Self {
        Self {
            any: !map.is_empty(),
            by_account: Arc::new(map),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.any
    }

    pub fn len(&self) -> usize {
        self.by_account.len()
    }

    /// The account's runtime changes, if it has any.
    #[inline]
    pub fn get(&self, account: AccountId) -> Option<&AccountOverride> {
        if !self.any {
            return None;
        }
        self.by_account.get(&account).map(|o| &**o)
    }

    /// The account's whole rule set: its own, or its tier's.
    #[inline]
    pub fn tier<'a>(&'a self, config: &'a Config, caller: Caller) -> &'a Tier {
        match self.get(caller.account).and_then(|o| o.rules.as_ref()) {
            Some(tier) => tier,
            None => config.tier(caller.tier),
        }
    }

    /// The job queue settings that apply to `caller`.
    pub fn queue<'a>(&'a self, config: &'a Config, caller: &Caller) -> &'a QueueSettings {
        match self.get(caller.account).and_then(|o| o.queue.as_ref()) {
            Some(q) => q,
            None => config.jobs.settings(caller),
        }
    }

    /// Every account with runtime changes.
    pub fn iter(&self) -> impl Iterator<Item = (AccountId, &AccountOverride)> {
        self.by_account.iter().map(|(a, o)| (*a, &**o))
    }
}

impl AccountOverride {
    /// `caller` with its runtime plan, or its block at `now_ms`.
    pub fn admit(&self, caller: Caller, now_ms: u64) -> Result<Caller, Blocked> {
        if let Some(block) = self.block.as_ref().filter(|b| b.holds(now_ms)) {
            return Err(Blocked {
                reason: block.reason.clone(),
                until_ms: block.until_ms,
                retry_after_secs: block.until_ms.map(|u| (u - now_ms).div_ceil(1000)),
            });
        }
        Ok(Caller {
            account: caller.account,
            tier: self.tier.unwrap_or(caller.tier),
        })
    }
}

/// The tier the config gives `account`: its `[accounts]` entry, else the unknown keys' tier.
pub fn config_tier(config: &Config, account: AccountId) -> Option<TierId> {
    match (
        config.identity.accounts.get(&account),
        config.identity.unknown_keys,
    ) {
        (Some(&t), _) | (None, UnknownKeys::DefaultTier(t)) => Some(t),
        (None, UnknownKeys::Reject) => None,
    }
}

/// One record against `config`; `Ok(None)`: it changes nothing. The error names the field.
fn resolve(
    config: &Config,
    account: AccountId,
    record: &AccountRecord,
) -> Result<Option<AccountOverride>, Located> {
    if !record.changes_anything() {
        return Ok(None);
    }
    let located = |field: &str, message: String| Located {
        field: field.into(),
        line: None,
        message,
    };
    let tier = match &record.tier {
        None => None,
        Some(name) => Some(tier_named(config, name).ok_or_else(|| {
            let known: Vec<&str> = config.tiers.iter().map(|t| t.name.as_str()).collect();
            located(
                "tier",
                format!(
                    "unknown tier {name:?} (the config's tiers: {})",
                    known.join(", ")
                ),
            )
        })?),
    };
    let base = tier
        .or_else(|| config_tier(config, account))
        .unwrap_or(TierId(0));
    let rules = match &record.limits {
        None => None,
        Some(limits) => Some(config.account_limits(config.tier(base), limits)?),
    };
    let queue = (record.concurrency.is_some() || record.max_queue.is_some()).then(|| {
        let caller = Caller {
            account,
            tier: base,
        };
        let mut q = config.jobs.settings(&caller).clone();
        if let Some(c) = record.concurrency {
            q.concurrency = Some(c);
        }
        if let Some(m) = record.max_queue {
            q.max_queue = m as usize;
        }
        q
    });
    Ok(Some(AccountOverride {
        tier,
        rules,
        queue,
        block: record.blocked.clone(),
    }))
}

/// The id of the config's tier called `name`.
pub fn tier_named(config: &Config, name: &str) -> Option<TierId> {
    let at = config.tiers.iter().position(|t| t.name == name)?;
    Some(TierId(at as u16))
}
