//! `[server] admin_token` / `admin_token_file`: the bearer token that guards the admin
//! listener's private endpoints. `/usage` tells anyone who asks where any account stands, so an
//! admin port bound beyond loopback (for Prometheus, in a cluster) must not serve it to every
//! neighbour; `/metrics`, `/healthz` and `/readyz` stay open for scrapers and probes.

use super::error::{ConfigError, Source};
use super::raw::RawServer;
use super::secret::inline_or_file;

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Whether an `Authorization` header value is `Bearer <this token>`. Compares in time that
    /// does not depend on where the first difference is, so the token cannot be guessed byte by
    /// byte from response times.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(bearer) else {
            return false;
        };
        let want = self.0.as_bytes();
        let mut diff = u8::from(given.len() != want.len());
        for (i, w) in want.iter().enumerate() {
            diff |= w ^ given.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }

    /// The token itself, for `floodgate accounts` to send (never to log).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The token of `Bearer <token>` (the scheme in any case, RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Reads the token from the config or its file (the file re-read on every reload, so a rotated
/// Secret applies without a restart).
pub(super) fn admin_token(
    src: &Source<'_>,
    s: &RawServer,
) -> Result<Option<AdminToken>, ConfigError> {
    let inline = ("server.admin_token", s.admin_token.as_ref());
    let file = ("server.admin_token_file", s.admin_token_file.as_ref());
    let Some(secret) = inline_or_file(src, inline, file)? else {
        return Ok(None);
    };
    let (field, v) = match (inline, file) {
        ((field, Some(v)), _) | (_, (field, Some(v))) => (field, v),
        _ => unreachable!("one of them gave the secret"),
    };
    let text = secret.expose();
    let token = text.trim();
    if token.is_empty() {
        return Err(src.at(field, v.span(), "the admin token is empty"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(src.at(
            field,
            v.span(),
            "the admin token must be printable ASCII without spaces (it travels in a header)",
        ));
    }
    Ok(Some(AdminToken(token.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let t = AdminToken("s3cret-token".into());
        assert!(t.admits(Some(b"Bearer s3cret-token")));
        assert!(t.admits(Some(b"bearer s3cret-token")));
        for wrong in [
            &b"Bearer s3cret-toke"[..],
            b"Bearer s3cret-tokenX",
            b"Bearer S3CRET-TOKEN",
            b"Basic s3cret-token",
            b"s3cret-token",
            b"Bearer ",
            b"",
        ] {
            assert!(
                !t.admits(Some(wrong)),
                "{:?}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(!t.admits(None));
    }

    #[test]
    fn debug_output_hides_the_token() {
        let t = AdminToken("s3cret-token".into());
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
