//! `[identity]`, `[accounts]`, `[account_names]` and the accounts file: where a request's key is
//! found, which tier each key has, what the status page calls it.

use std::collections::HashMap;
use std::path::PathBuf;

use http::HeaderName;
use toml::Spanned;

use crate::identity::{
    AccountId, Anonymous, IdentityConfig, IpNet, KeySource, TierId, UnknownKeys,
};
use crate::limits::Tier;

use super::*;

pub(super) fn build_identity(
    src: &Source<'_>,
    raw: &RawConfig,
    tiers: &mut Vec<Tier>,
    classes: &[String],
) -> Result<IdentityConfig, ConfigError> {
    let id = &raw.identity;
    if tiers.is_empty() {
        // No tiers at all: an unlimited proxy still needs one tier to put callers in.
        tiers.push(Tier::new(
            "default".into(),
            vec![Box::default(); classes.len()],
        ));
    }
    // `at`: the file the name was written in (the config, or the accounts file).
    let tier_in = |at: &Source<'_>, field: &str, name: &Spanned<String>| {
        tiers
            .iter()
            .position(|t| t.name == *name.get_ref())
            .map(|i| TierId(i as u16))
            .ok_or_else(|| {
                let known: Vec<&str> = tiers.iter().map(|t| t.name.as_str()).collect();
                at.at(
                    field,
                    name.span(),
                    format!(
                        "unknown tier {:?} (tiers: {})",
                        name.get_ref(),
                        known.join(", ")
                    ),
                )
            })
    };
    let tier_of = |field: &str, name: &Spanned<String>| tier_in(src, field, name);
    let default_tier = match &id.default_tier {
        Some(t) => Some(tier_of("identity.default_tier", t)?),
        None if tiers.len() == 1 => Some(TierId(0)),
        None => None,
    };
    let need_default = |field: &str, span: std::ops::Range<usize>| {
        default_tier.ok_or_else(|| {
            src.at(
                field,
                span,
                "needs identity.default_tier (there are several tiers)",
            )
        })
    };
    let unknown_keys = match id
        .unknown_keys
        .as_ref()
        .map(|v| (v.get_ref().as_str(), v.span()))
    {
        None => match default_tier {
            Some(t) => UnknownKeys::DefaultTier(t),
            None => UnknownKeys::Reject,
        },
        Some(("default_tier", span)) => {
            UnknownKeys::DefaultTier(need_default("identity.unknown_keys", span)?)
        }
        Some(("reject", _)) => UnknownKeys::Reject,
        Some((other, span)) => {
            return Err(src.at(
                "identity.unknown_keys",
                span,
                format!("{other:?}: expected \"default_tier\" or \"reject\""),
            ))
        }
    };
    let anonymous = match id
        .anonymous
        .as_ref()
        .map(|v| (v.get_ref().as_str(), v.span()))
    {
        None | Some(("reject", _)) => Anonymous::Reject,
        Some(("client_ip", span)) => Anonymous::ClientIp(need_default("identity.anonymous", span)?),
        Some((other, span)) => {
            return Err(src.at(
                "identity.anonymous",
                span,
                format!("{other:?}: expected \"reject\" or \"client_ip\""),
            ))
        }
    };
    let mut accounts = HashMap::default();
    for (key, tier) in &raw.accounts {
        accounts.insert(
            AccountId::from_key(key.as_bytes()),
            tier_of(&format!("accounts.{key:?}"), tier)?,
        );
    }
    for (i, acct) in raw.account.iter().enumerate() {
        if let Some(tier) = &acct.tier {
            let tier = tier_of(&format!("account[{i}].tier"), tier)?;
            accounts.insert(AccountId::from_key(acct.key.as_bytes()), tier);
        }
    }
    let mut names: HashMap<AccountId, String, _> = raw
        .account_names
        .iter()
        .map(|(key, name)| (AccountId::from_key(key.as_bytes()), name.clone()))
        .collect();
    let accounts_file = match &id.accounts_file {
        Some(path) => {
            let (text, file) = read_accounts_file(src, path)?;
            for (key, name) in &file.account_names {
                names.insert(AccountId::from_key(key.as_bytes()), name.clone());
            }
            let at = Source::new(&text);
            for (key, name) in &file.accounts {
                let field = format!("accounts.{key:?}");
                let tier = tier_in(&at, &field, name).map_err(|e| in_file(path, e))?;
                if accounts
                    .insert(AccountId::from_key(key.as_bytes()), tier)
                    .is_some()
                {
                    let message = "also given a tier in the config file; give it in one place";
                    return Err(in_file(path, at.at(field, name.span(), message)));
                }
            }
            Some(PathBuf::from(path.get_ref()))
        }
        None => None,
    };
    Ok(IdentityConfig {
        accounts_file,
        sources: key_sources(src, id.sources.as_deref())?,
        accounts,
        names,
        unknown_keys,
        anonymous,
        trusted_proxies: id
            .trusted_proxies
            .iter()
            .map(|p| {
                IpNet::parse(p.get_ref())
                    .map_err(|m| src.at("identity.trusted_proxies", p.span(), m))
            })
            .collect::<Result<_, _>>()?,
    })
}

/// Reads and parses `identity.accounts_file` (relative paths are from the working directory).
fn read_accounts_file(
    src: &Source<'_>,
    path: &Spanned<String>,
) -> Result<(String, RawAccountsFile), ConfigError> {
    let text = std::fs::read_to_string(path.get_ref()).map_err(|e| {
        let message = format!("cannot read {:?}: {e}", path.get_ref());
        src.at("identity.accounts_file", path.span(), message)
    })?;
    let file = parse_raw(&Source::new(&text), &text).map_err(|e| in_file(path, e))?;
    Ok((text, file))
}

/// An error inside the accounts file, named as such:
/// `line 3: identity.accounts_file.accounts."k": … (in accounts.toml)`.
fn in_file(path: &Spanned<String>, e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Invalid(mut located) => {
            located.field = format!("identity.accounts_file.{}", located.field);
            located.message = format!("{} (in {})", located.message, path.get_ref());
            ConfigError::Invalid(located)
        }
        other => other,
    }
}

fn key_sources(
    src: &Source<'_>,
    sources: Option<&[Spanned<String>]>,
) -> Result<Vec<KeySource>, ConfigError> {
    let Some(sources) = sources else {
        return Ok(vec![
            KeySource::Header(HeaderName::from_static("x-api-key")),
            KeySource::Bearer,
        ]);
    };
    if sources.is_empty() {
        return Err(invalid("identity.sources", "must list at least one source"));
    }
    sources
        .iter()
        .map(|s| match s.get_ref().to_ascii_lowercase().as_str() {
            "bearer" | "authorization" => Ok(KeySource::Bearer),
            name => HeaderName::from_bytes(name.as_bytes())
                .map(KeySource::Header)
                .map_err(|_| {
                    src.at(
                        "identity.sources",
                        s.span(),
                        format!("{:?} is not a header name or \"bearer\"", s.get_ref()),
                    )
                }),
        })
        .collect()
}
