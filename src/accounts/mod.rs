//! Accounts changed at runtime — the admin listener's accounts API: an account's plan (tier),
//! its own limits, its job caps and a block, laid over what the config says, plus the audit
//! trail of every change.
//!
//! Pure: an [`AccountRecord`] is what an operator set (names and numbers as given, kept in the
//! state file or Redis); [`Overrides`] is every record resolved against the running config —
//! tier ids, rules, queue settings — which the request path consults. Records are resolved again
//! on every reload, so a change survives a config change; one whose tier or class the new config
//! no longer has is reported and dropped ([`Overrides::resolve`]), never a failed start.

mod edit;
mod overrides;

use serde::{Deserialize, Serialize};

pub use edit::{
    format_time, parse_grant, parse_put, parse_reset, parse_time, EditError, Grant, Reset,
};
pub use overrides::{config_tier, tier_named, AccountOverride, Blocked, Overrides};

/// How many changes an account's record keeps for `GET /accounts/{account}`.
pub const KEPT_CHANGES: usize = 20;

/// What an operator set for one account, as set: the tier by name, the limits in the config's
/// shape. Every field `None` (and no block) is an account back to what the config says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// `[[tiers.NAME.limits]]` entries, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Block>,
    /// The latest changes, oldest first, at most [`KEPT_CHANGES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
}

/// A block: every request of the account refused with 403 until `until_ms` (or until lifted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub reason: String,
    /// Clock ms; `None`: until an operator lifts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

/// One change, as the audit trail keeps it: who, what, before → after, when. Never an API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub at_ms: u64,
    pub who: String,
    /// `set`, `clear`, `reset` or `grant` (the `action` label of
    /// `floodgate_admin_changes_total`).
    pub action: String,
    pub before: serde_json::Value,
    pub after: serde_json::Value,
}

impl AccountRecord {
    /// Whether anything is set (a record with only its history changes nothing).
    pub fn changes_anything(&self) -> bool {
        self.tier.is_some()
            || self.limits.is_some()
            || self.concurrency.is_some()
            || self.max_queue.is_some()
            || self.blocked.is_some()
    }

    /// What is set, as the API shows it (`before` and `after` of a change).
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "tier": self.tier,
            "limits": self.limits,
            "concurrency": self.concurrency,
            "max_queue": self.max_queue,
            "blocked": self.blocked.as_ref().map(Block::view),
        })
    }

    /// Whether there is nothing to keep: no setting and no history.
    pub fn is_empty(&self) -> bool {
        !self.changes_anything() && self.changes.is_empty()
    }

    /// The record without its block and history: tells a block from other changes.
    pub fn without_block(mut self) -> Self {
        self.blocked = None;
        self.changes.clear();
        self
    }

    /// Drops every setting, keeps the history.
    pub fn clear(&mut self) {
        *self = AccountRecord {
            changes: std::mem::take(&mut self.changes),
            ..AccountRecord::default()
        };
    }

    /// Appends to the history, dropping the oldest beyond [`KEPT_CHANGES`].
    pub fn log(&mut self, change: Change) {
        self.changes.push(change);
        let over = self.changes.len().saturating_sub(KEPT_CHANGES);
        self.changes.drain(..over);
    }
}

impl Block {
    /// The block as the API shows it: the end as an RFC 3339 time.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "reason": self.reason,
            "until": self.until_ms.map(format_time),
        })
    }

    /// Whether the block holds at `now_ms`.
    pub fn holds(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|until| now_ms < until)
    }
}
