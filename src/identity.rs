//! Identity: which account a request belongs to, and its tier.  [pure]
//!
//! Accounts are known by a 128-bit hash of their API key ([`AccountId`]): counters, the state file
//! and the usage view never hold a raw key, and a lookup hashes the key once.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

/// An account, known by the 128-bit xxh3 hash of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub u128);

impl AccountId {
    pub fn from_key(key: &[u8]) -> Self {
        AccountId(xxhash_rust::xxh3::xxh3_128(key))
    }

    /// Anonymous callers are counted per client address, apart from any API key.
    pub fn from_ip(ip: IpAddr) -> Self {
        use std::io::Write;
        // "ip:" and the address as text, on the stack: the longest IPv6 form is 45 bytes.
        let mut text = [0u8; 64];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        write!(cursor, "ip:{ip}").expect("an address fits in 64 bytes");
        let len = cursor.position() as usize;
        AccountId(xxhash_rust::xxh3::xxh3_128(&text[..len]))
    }

    /// A short, non-reversible label for logs (never the key itself).
    pub fn short(&self) -> String {
        format!("{:08x}", self.prefix())
    }

    /// The hash's top 32 bits: [`short`](Self::short)'s label as a number.
    pub fn prefix(&self) -> u32 {
        (self.0 >> 96) as u32
    }
}

/// A hasher for keys that already are uniform hashes: it keeps the low 64 bits.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(buf);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

pub type BuildIdHasher = BuildHasherDefault<IdHasher>;

/// Index of a tier in the config's tier list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TierId(pub u16);

/// Where an API key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Header(HeaderName),
    /// `Authorization: Bearer <key>`.
    Bearer,
}

impl KeySource {
    /// The header field the key is read from.
    fn field(&self) -> &HeaderName {
        match self {
            KeySource::Header(name) => name,
            KeySource::Bearer => &AUTHORIZATION,
        }
    }
}

/// What happens to a key the config does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKeys {
    DefaultTier(TierId),
    Reject,
}

/// What happens to a request that carries no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymous {
    Reject,
    /// Counted per client IP in this tier.
    ClientIp(TierId),
}

/// An IP network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or(format!("{s:?} has a bad prefix length"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The identity rules from the config.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub sources: Vec<KeySource>,
    /// The file more accounts came from (`identity.accounts_file`), watched with the config.
    pub accounts_file: Option<std::path::PathBuf>,
    pub accounts: HashMap<AccountId, TierId, BuildIdHasher>,
    /// What operators call some accounts (`[account_names]`), for the status page.
    pub names: HashMap<AccountId, String, BuildIdHasher>,
    pub unknown_keys: UnknownKeys,
    pub anonymous: Anonymous,
    pub trusted_proxies: Vec<IpNet>,
}

/// Header fields that carry an API key, with their values.
pub type KeyFields = Vec<(HeaderName, HeaderValue)>;

/// A request head's fields, as identity reads them: a hyper request's map, or the fast path's
/// fields borrowed from the connection's buffer.
pub trait HeadFields {
    /// The values of the field `name`, in order.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]>;
}

impl HeadFields for HeaderMap {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub account: AccountId,
    pub tier: TierId,
}

/// Why a request has no usable identity; answered with 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("an API key is required")]
    MissingKey,
    #[error("unknown API key")]
    UnknownKey,
    /// Two places (say `x-api-key` and `Authorization: Bearer`) name different keys: which one
    /// counts is not for floodgate to guess, and the upstream might pick the other.
    #[error("the request names more than one API key")]
    ConflictingKeys,
}

impl IdentityConfig {
    /// How the status page shows an account: the operator's name for it, or its hash prefix.
    pub fn display_name(&self, account: AccountId) -> String {
        match self.names.get(&account) {
            Some(name) => name.clone(),
            None => account.short(),
        }
    }

    /// Resolves the caller of a request that came from `peer`.
    pub fn identify(
        &self,
        headers: &impl HeadFields,
        peer: IpAddr,
    ) -> Result<Caller, IdentityError> {
        match self.read_key(headers)? {
            Some(key) => {
                let account = AccountId::from_key(key);
                match (self.accounts.get(&account), self.unknown_keys) {
                    (Some(&tier), _) | (None, UnknownKeys::DefaultTier(tier)) => {
                        Ok(Caller { account, tier })
                    }
                    (None, UnknownKeys::Reject) => Err(IdentityError::UnknownKey),
                }
            }
            None => match self.anonymous {
                Anonymous::Reject => Err(IdentityError::MissingKey),
                Anonymous::ClientIp(tier) => Ok(Caller {
                    account: AccountId::from_ip(self.client_ip(headers, peer)),
                    tier,
                }),
            },
        }
    }

    /// The key the configured sources name. Every non-empty key found — in any source, in any
    /// repeat of a header — must be the same one.
    fn read_key<'h>(
        &'h self,
        headers: &'h impl HeadFields,
    ) -> Result<Option<&'h [u8]>, IdentityError> {
        let mut found: Option<&[u8]> = None;
        for source in &self.sources {
            let (name, bearer) = (source.field(), *source == KeySource::Bearer);
            for value in headers.values(name) {
                let key = match bearer {
                    false => Some(value),
                    true => bearer_token(value),
                };
                let Some(key) = key.map(<[u8]>::trim_ascii).filter(|k| !k.is_empty()) else {
                    continue;
                };
                match found {
                    Some(first) if first != key => return Err(IdentityError::ConflictingKeys),
                    _ => found = Some(key),
                }
            }
        }
        Ok(found)
    }

    /// The request's fields that carry its API key (each configured source present, first
    /// value), as the client sent them: what floodgate shows the upstream when it calls on the
    /// client's behalf (polling a task the client created).
    pub fn key_fields(&self, headers: &HeaderMap) -> KeyFields {
        let mut fields = KeyFields::new();
        for source in &self.sources {
            let name = source.field();
            if let Some(value) = headers.get(name) {
                if !fields.iter().any(|(n, _)| n == name) {
                    fields.push((name.clone(), value.clone()));
                }
            }
        }
        fields
    }

    /// The client address: the peer, or, when the peer is a trusted proxy, the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client_ip(&self, headers: &impl HeadFields, peer: IpAddr) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut hops: Vec<IpAddr> = headers
            .values(&X_FORWARDED_FOR)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        while let Some(ip) = hops.pop() {
            if !self.is_trusted(ip) {
                return ip;
            }
        }
        peer
    }

    /// Whether `ip` is one of `trusted_proxies` (its forwarding fields are believed).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(ip))
    }
}

fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(unknown: UnknownKeys, anonymous: Anonymous) -> IdentityConfig {
        let mut accounts = HashMap::default();
        accounts.insert(AccountId::from_key(b"vip"), TierId(1));
        IdentityConfig {
            accounts_file: None,
            sources: vec![
                KeySource::Header(HeaderName::from_static("x-api-key")),
                KeySource::Bearer,
            ],
            accounts,
            names: HashMap::default(),
            unknown_keys: unknown,
            anonymous,
            trusted_proxies: vec![IpNet::parse("10.0.0.0/8").unwrap()],
        }
    }

    #[test]
    fn an_address_hashes_as_its_text_did() {
        // Account ids are kept in state files: the hash input must not change.
        for ip in [
            "10.1.2.3",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let text = format!("ip:{ip}");
            assert_eq!(
                AccountId::from_ip(ip),
                AccountId(xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
            );
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn key_fields_are_the_sources_the_request_carries_as_sent() {
        let c = config(UnknownKeys::Reject, Anonymous::Reject);
        let h = headers(&[
            ("authorization", "Bearer vip"),
            ("x-api-key", "vip"),
            ("x-other", "nope"),
        ]);
        let fields = c.key_fields(&h);
        let names: Vec<(&str, &str)> = fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            [("x-api-key", "vip"), ("authorization", "Bearer vip")],
            "in source order"
        );
        assert!(c.key_fields(&headers(&[("x-other", "k")])).is_empty());
    }

    #[test]
    fn key_from_header_then_bearer() {
        let c = config(UnknownKeys::DefaultTier(TierId(0)), Anonymous::Reject);
        let vip = c.identify(&headers(&[("x-api-key", "vip")]), PEER).unwrap();
        assert_eq!(vip.tier, TierId(1));
        let bearer = c
            .identify(&headers(&[("authorization", "Bearer vip")]), PEER)
            .unwrap();
        assert_eq!(bearer, vip);
        let other = c
            .identify(&headers(&[("authorization", "bearer someone")]), PEER)
            .unwrap();
        assert_eq!(other.tier, TierId(0));
        assert_eq!(
            c.identify(&headers(&[]), PEER),
            Err(IdentityError::MissingKey)
        );
        assert_eq!(
            c.identify(&headers(&[("x-api-key", "  ")]), PEER),
            Err(IdentityError::MissingKey)
        );
    }

    #[test]
    fn different_keys_in_different_places_conflict() {
        let c = config(UnknownKeys::DefaultTier(TierId(0)), Anonymous::Reject);
        let conflict = headers(&[("x-api-key", "alice"), ("authorization", "Bearer bob")]);
        assert_eq!(
            c.identify(&conflict, PEER),
            Err(IdentityError::ConflictingKeys)
        );
        let twice = headers(&[("x-api-key", "alice"), ("x-api-key", "bob")]);
        assert_eq!(
            c.identify(&twice, PEER),
            Err(IdentityError::ConflictingKeys)
        );
        let same = headers(&[("x-api-key", "vip"), ("authorization", "Bearer vip")]);
        assert_eq!(c.identify(&same, PEER).unwrap().tier, TierId(1));
        let basic = headers(&[
            ("x-api-key", "vip"),
            ("authorization", "Basic dXNlcjpwdw=="),
        ]);
        assert_eq!(
            c.identify(&basic, PEER).unwrap().tier,
            TierId(1),
            "a non-bearer Authorization names no key"
        );
    }

    #[test]
    fn unknown_keys_can_be_rejected() {
        let c = config(UnknownKeys::Reject, Anonymous::Reject);
        assert_eq!(
            c.identify(&headers(&[("x-api-key", "nobody")]), PEER),
            Err(IdentityError::UnknownKey)
        );
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_configured_proxies() {
        let c = config(UnknownKeys::Reject, Anonymous::ClientIp(TierId(0)));
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 10.1.1.1")]);
        assert_eq!(
            c.client_ip(&h, "10.0.0.5".parse().unwrap()),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            c.client_ip(&h, "8.8.8.8".parse().unwrap()),
            "8.8.8.8".parse::<IpAddr>().unwrap()
        );
        let a = c.identify(&h, "10.0.0.5".parse().unwrap()).unwrap();
        assert_eq!(a.account, AccountId::from_ip("1.2.3.4".parse().unwrap()));
    }
}
