//! Secrets in the config: an API credential, a Redis password. Each may sit in the file or, for
//! container use, in a file of its own beside it (a mounted Kubernetes Secret) — read with the
//! config and again on every reload, never shown in logs or `Debug` output.

use std::path::Path;

use toml::Spanned;

use super::error::{ConfigError, Source};

/// A secret value; `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The secret in the file `f` names, for `field`: its text without surrounding whitespace (a
/// Secret mounted from `kubectl create secret --from-file` usually ends in a newline). An
/// unreadable or empty file is an error naming `field`.
pub(super) fn read_secret_file(
    src: &Source<'_>,
    field: &str,
    f: &Spanned<String>,
) -> Result<Secret, ConfigError> {
    let path = Path::new(f.get_ref());
    let text = std::fs::read_to_string(path)
        .map_err(|e| src.at(field, f.span(), format!("cannot read {path:?}: {e}")))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(src.at(field, f.span(), format!("{path:?} is empty")));
    }
    Ok(Secret(secret.to_owned()))
}

/// A secret given inline (`inline`) or in a file (`file`), not both; `None` when neither.
pub(super) fn inline_or_file(
    src: &Source<'_>,
    (field, inline): (&str, Option<&Spanned<String>>),
    (file_field, file): (&str, Option<&Spanned<String>>),
) -> Result<Option<Secret>, ConfigError> {
    match (inline, file) {
        (None, None) => Ok(None),
        (Some(_), Some(f)) => {
            let key = |path: &str| path.rsplit('.').next().unwrap_or(path).to_owned();
            let (a, b) = (key(field), key(file_field));
            Err(src.at(file_field, f.span(), format!("give {a} or {b}, not both")))
        }
        (Some(v), None) => Ok(Some(Secret(v.get_ref().clone()))),
        (None, Some(f)) => read_secret_file(src, file_field, f).map(Some),
    }
}
