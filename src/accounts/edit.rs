//! The accounts API's request bodies, read and checked: a change of settings (`PUT`), a reset,
//! a grant. Every mistake names its field, for a 422 the caller can act on; whether a tier or a
//! class exists is checked against the config when the record is resolved.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::{AccountRecord, Block};
use crate::classify::ClassId;
use crate::config::Config;
use crate::limits::LimitKind;

/// A request body the accounts API cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// Not JSON, or not a JSON object (400).
    #[error("the body must be a JSON object: {0}")]
    NotAnObject(String),
    /// A field with a value that cannot be used (422).
    #[error("{field}: {message}")]
    Field {
        code: &'static str,
        field: String,
        message: String,
    },
}

impl EditError {
    fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        EditError::Field {
            code: "invalid_field",
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What a reset zeroes: the open windows of these kinds, and the day's penalty tallies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    pub kinds: Vec<LimitKind>,
    pub penalties: bool,
}

/// Units given back in a class's open window of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub class: ClassId,
    pub kind: LimitKind,
    pub units: u32,
}

/// The most an account's own limits take, as JSON: a record (and each of its kept changes)
/// stays small.
const MAX_LIMITS_BYTES: usize = 4096;

/// The windows a reset or a grant may name, by their `X-RateLimit-Type` names.
const WINDOWS: [LimitKind; 6] = [
    LimitKind::Second,
    LimitKind::Minute,
    LimitKind::Hour,
    LimitKind::Daily,
    LimitKind::Monthly,
    LimitKind::Interval,
];

fn object(body: &[u8]) -> Result<Map<String, Value>, EditError> {
    let empty = body.iter().all(u8::is_ascii_whitespace);
    if empty {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(EditError::NotAnObject(
            "it is JSON but not an object".into(),
        )),
        Err(e) => Err(EditError::NotAnObject(e.to_string())),
    }
}

/// `record` with a `PUT` body's fields applied: `tier`, `limits`, `concurrency`, `max_queue`,
/// `blocked`; `null` clears a field. `now_ms` dates nothing here; a block's `until` may be
/// in the past (then it blocks nothing).
pub fn parse_put(body: &[u8], record: &AccountRecord) -> Result<AccountRecord, EditError> {
    let fields = object(body)?;
    if fields.is_empty() {
        return Err(EditError::field(
            "(body)",
            "give at least one of tier, limits, concurrency, max_queue, blocked",
        ));
    }
    let mut out = record.clone();
    for (name, value) in &fields {
        match name.as_str() {
            "tier" => out.tier = optional(value, name, |v| string(v, name))?,
            "limits" => out.limits = optional(value, name, |v| limits(v, name))?.flatten(),
            "concurrency" => out.concurrency = optional(value, name, |v| whole(v, name, 1))?,
            "max_queue" => out.max_queue = optional(value, name, |v| whole(v, name, 0))?,
            "blocked" => out.blocked = optional(value, name, block)?,
            _ => {
                return Err(EditError::field(
                    name.clone(),
                    "unknown field; expected tier, limits, concurrency, max_queue or blocked",
                ))
            }
        }
    }
    Ok(out)
}

/// `None` for JSON `null`, else the value read by `read`.
fn optional<T>(
    value: &Value,
    _name: &str,
    read: impl FnOnce(&Value) -> Result<T, EditError>,
) -> Result<Option<T>, EditError> {
    match value {
        Value::Null => Ok(None),
        v => read(v).map(Some),
    }
}

fn string(v: &Value, field: &str) -> Result<String, EditError> {
    match v.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(s.to_owned()),
        _ => Err(EditError::field(field, "must be a non-empty string")),
    }
}

fn whole(v: &Value, field: &str, min: u64) -> Result<u32, EditError> {
    match v.as_u64() {
        Some(n) if n >= min && n <= u64::from(u32::MAX) => Ok(n as u32),
        _ => Err(EditError::field(
            field,
            format!("must be a whole number of at least {min}"),
        )),
    }
}

/// A limits list; an empty list is no limits of the account's own.
fn limits(v: &Value, field: &str) -> Result<Option<Value>, EditError> {
    if v.to_string().len() > MAX_LIMITS_BYTES {
        return Err(EditError::field(
            field,
            format!("at most {MAX_LIMITS_BYTES} bytes of limit entries"),
        ));
    }
    match v {
        Value::Array(a) if a.is_empty() => Ok(None),
        Value::Array(a) if a.iter().all(Value::is_object) => Ok(Some(v.clone())),
        _ => Err(EditError::field(
            field,
            "must be a list of limit entries shaped like [[tiers.NAME.limits]]",
        )),
    }
}

fn block(v: &Value) -> Result<Block, EditError> {
    let Value::Object(b) = v else {
        return Err(EditError::field(
            "blocked",
            "must be {\"reason\": \"...\", \"until\": \"RFC 3339 time\" | null} or null",
        ));
    };
    if let Some(other) = b.keys().find(|k| *k != "reason" && *k != "until") {
        return Err(EditError::field(
            format!("blocked.{other}"),
            "unknown field; expected reason or until",
        ));
    }
    let reason = match b.get("reason").and_then(Value::as_str) {
        Some(r) if !r.trim().is_empty() && r.len() <= 500 => r.to_owned(),
        _ => {
            return Err(EditError::field(
                "blocked.reason",
                "must be a non-empty string of at most 500 bytes",
            ))
        }
    };
    let until_ms = match b.get("until") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => {
            Some(parse_time(t).map_err(|m| EditError::field("blocked.until", m))?)
        }
        Some(_) => {
            return Err(EditError::field(
                "blocked.until",
                "must be an RFC 3339 time like \"2026-12-31T00:00:00Z\", or null",
            ))
        }
    };
    Ok(Block { reason, until_ms })
}

/// A reset's body: `{"windows": [...] | "all", "penalties": bool}`. `windows` must be given:
/// a refund never zeroes more than it names.
pub fn parse_reset(body: &[u8]) -> Result<Reset, EditError> {
    let fields = object(body)?;
    if !fields.contains_key("windows") {
        return Err(EditError::field("windows", windows_expected()));
    }
    let mut reset = Reset {
        kinds: Vec::new(),
        penalties: false,
    };
    for (name, value) in &fields {
        match (name.as_str(), value) {
            ("windows", Value::String(all)) if all == "all" => reset.kinds = WINDOWS.to_vec(),
            ("windows", Value::Array(names)) => {
                reset.kinds = names
                    .iter()
                    .map(|n| n.as_str().and_then(window_named))
                    .collect::<Option<_>>()
                    .ok_or_else(|| EditError::field("windows", windows_expected()))?;
            }
            ("windows", _) => return Err(EditError::field("windows", windows_expected())),
            ("penalties", Value::Bool(b)) => reset.penalties = *b,
            ("penalties", _) => return Err(EditError::field("penalties", "must be true or false")),
            _ => {
                return Err(EditError::field(
                    name.clone(),
                    "unknown field; expected windows or penalties",
                ))
            }
        }
    }
    Ok(reset)
}

/// A grant's body: `{"class": "...", "window": "daily", "units": N}`, the class checked
/// against `config`.
pub fn parse_grant(body: &[u8], config: &Config) -> Result<Grant, EditError> {
    let fields = object(body)?;
    if let Some(other) = fields
        .keys()
        .find(|k| !["class", "window", "units"].contains(&k.as_str()))
    {
        return Err(EditError::field(
            other.clone(),
            "unknown field; expected class, window and units",
        ));
    }
    let name = fields
        .get("class")
        .and_then(Value::as_str)
        .ok_or_else(|| EditError::field("class", "must name a class"))?;
    let class = config
        .classes
        .iter()
        .position(|c| c == name)
        .ok_or_else(|| EditError::Field {
            code: "unknown_class",
            field: "class".into(),
            message: format!(
                "unknown class {name:?} (the config's classes: {})",
                config.classes.join(", ")
            ),
        })?;
    let kind = fields
        .get("window")
        .and_then(Value::as_str)
        .and_then(window_named)
        .ok_or_else(|| EditError::field("window", window_expected()))?;
    let units = fields
        .get("units")
        .ok_or_else(|| EditError::field("units", "must be a whole number of at least 1"))
        .and_then(|v| whole(v, "units", 1))?;
    Ok(Grant {
        class: ClassId(class as u16),
        kind,
        units,
    })
}

fn window_named(name: &str) -> Option<LimitKind> {
    WINDOWS.into_iter().find(|k| k.name() == name)
}

fn window_expected() -> String {
    let names: Vec<&str> = WINDOWS.iter().map(|k| k.name()).collect();
    format!("must be one of {}", names.join(", "))
}

fn windows_expected() -> String {
    format!(
        "must be \"all\" or a list of windows, each {}",
        window_expected().trim_start_matches("must be ")
    )
}

/// An RFC 3339 time (`Z` or an offset like `+02:00`) as clock ms.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let bad = |e: &dyn std::fmt::Display| {
        format!("{text:?} is not an RFC 3339 time like \"2026-12-31T00:00:00Z\": {e}")
    };
    let t = text.trim();
    let (base, offset_secs) = match utc_offset(t.as_bytes()) {
        // The offset is six ASCII bytes, so the cut is on a character boundary.
        Some(secs) => (format!("{}Z", &t[..t.len() - 6]), secs),
        None => (t.to_owned(), 0),
    };
    let at = humantime::parse_rfc3339(&base).map_err(|e| bad(&e))?;
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_err(|e| bad(&e))?
        .as_millis() as i64;
    u64::try_from(ms - offset_secs * 1000).map_err(|e| bad(&e))
}

/// The seconds east of UTC of a time ending in `+HH:MM` or `-HH:MM`; `None` for any other end.
fn utc_offset(t: &[u8]) -> Option<i64> {
    let [sign, h1, h2, b':', m1, m2] = *t.get(t.len().checked_sub(6)?..)? else {
        return None;
    };
    let digit = |b: u8| b.is_ascii_digit().then(|| i64::from(b - b'0'));
    let (hours, minutes) = (digit(h1)? * 10 + digit(h2)?, digit(m1)? * 10 + digit(m2)?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    let secs = hours * 3600 + minutes * 60;
    match sign {
        b'+' => Some(secs),
        b'-' => Some(-secs),
        _ => None,
    }
}

/// Clock ms as an RFC 3339 UTC time, to the second.
pub fn format_time(ms: u64) -> String {
    // RFC 3339 ends with the year 9999; a later time (only a hand-edited record has one) is
    // shown as that.
    const LAST_MS: u64 = 253_402_300_799_000;
    let at: SystemTime = UNIX_EPOCH + Duration::from_millis(ms.min(LAST_MS));
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_sets_clears_and_names_the_bad_field() {
        let record = parse_put(
            br#"{"tier": "pro", "concurrency": 3, "blocked": {"reason": "unpaid", "until": "2026-12-31T00:00:00+01:00"}}"#,
            &AccountRecord::default(),
        )
        .unwrap();
        assert_eq!(record.tier.as_deref(), Some("pro"));
        assert_eq!(record.concurrency, Some(3));
        let block = record.blocked.clone().unwrap();
        assert_eq!(
            block.until_ms,
            Some(parse_time("2026-12-30T23:00:00Z").unwrap())
        );
        let cleared = parse_put(br#"{"blocked": null, "tier": null}"#, &record).unwrap();
        assert_eq!((cleared.tier, cleared.blocked), (None, None));
        assert_eq!(cleared.concurrency, Some(3));
        let bad = parse_put(br#"{"concurrency": 0}"#, &record).unwrap_err();
        assert!(matches!(bad, EditError::Field { ref field, .. } if field == "concurrency"));
        let bad = parse_put(
            br#"{"blocked": {"reason": "x", "until": "tomorrow"}}"#,
            &record,
        );
        assert!(matches!(bad, Err(EditError::Field { ref field, .. }) if field == "blocked.until"));
        let bad = parse_put(br#"{"plan": "pro"}"#, &record);
        assert!(matches!(bad, Err(EditError::Field { ref field, .. }) if field == "plan"));
        assert!(matches!(
            parse_put(b"[1]", &record),
            Err(EditError::NotAnObject(_))
        ));
        assert!(matches!(
            parse_put(b"{", &record),
            Err(EditError::NotAnObject(_))
        ));
    }

    #[test]
    fn a_reset_reads_its_windows() {
        let r = parse_reset(br#"{"windows": ["minute", "daily"], "penalties": true}"#).unwrap();
        assert_eq!(r.kinds, vec![LimitKind::Minute, LimitKind::Daily]);
        assert!(r.penalties);
        let all = parse_reset(br#"{"windows": "all"}"#).unwrap();
        assert_eq!((all.kinds.len(), all.penalties), (6, false));
        assert!(parse_reset(b"").is_err(), "a reset names its windows");
        assert!(parse_reset(br#"{"windows": ["fortnight"]}"#).is_err());
    }

    #[test]
    fn times_read_and_print_in_utc() {
        let ms = parse_time("2027-01-01T00:00:00Z").unwrap();
        assert_eq!(format_time(ms), "2027-01-01T00:00:00Z");
        assert_eq!(parse_time("2027-01-01T02:00:00+02:00").unwrap(), ms);
        assert_eq!(parse_time("2026-12-31T19:00:00-05:00").unwrap(), ms);
        assert!(parse_time("2027-13-01T00:00:00Z").is_err());
        for odd in [
            "",
            "+01:00",
            "2027-01-01T00:00:00é+01:00",
            "ééééééé",
            "2027-01-01T00:00:00+0é:00",
            "2027-01-01T00:00:00+99:99",
        ] {
            assert!(parse_time(odd).is_err(), "{odd:?}");
        }
        assert_eq!(format_time(u64::MAX), "9999-12-31T23:59:59Z");
    }
}
