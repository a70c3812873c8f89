//! `[routing]`'s path rules: how a request path is normalised before routes are matched. Each
//! default is the one that leaves no spelling of a limited route in the unlimited default class
//! (see `classify::normalize`); each can be switched for an upstream that reads paths literally.

use toml::Spanned;

use super::error::{ConfigError, Source};
use super::raw::RawRouting;
use crate::classify::{EscapedSlashes, PathRules};

/// The path rules `[routing]` asks for, the secure ones where it says nothing.
pub(super) fn path_rules(src: &Source<'_>, r: &RawRouting) -> Result<PathRules, ConfigError> {
    let secure = PathRules::SECURE;
    Ok(PathRules {
        case_insensitive: r.case_insensitive.unwrap_or(secure.case_insensitive),
        escaped_slashes: one_of(
            src,
            "routing.escaped_slashes",
            r.escaped_slashes.as_ref(),
            &[
                ("decode", EscapedSlashes::Decode),
                ("reject", EscapedSlashes::Reject),
                ("keep", EscapedSlashes::Keep),
            ],
        )?
        .unwrap_or(secure.escaped_slashes),
        ignore_parameters: one_of(
            src,
            "routing.path_parameters",
            r.path_parameters.as_ref(),
            &[("ignore", true), ("keep", false)],
        )?
        .unwrap_or(secure.ignore_parameters),
        reject_invalid: one_of(
            src,
            "routing.invalid_paths",
            r.invalid_paths.as_ref(),
            &[("reject", true), ("forward", false)],
        )?
        .unwrap_or(secure.reject_invalid),
    })
}

/// The value a word names, from a closed list; the error lists the words.
fn one_of<T: Copy>(
    src: &Source<'_>,
    field: &str,
    v: Option<&Spanned<String>>,
    words: &[(&str, T)],
) -> Result<Option<T>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    match words.iter().find(|(w, _)| *w == v.get_ref()) {
        Some((_, value)) => Ok(Some(*value)),
        None => {
            let list: Vec<String> = words.iter().map(|(w, _)| format!("{w:?}")).collect();
            Err(src.at(
                field,
                v.span(),
                format!("{:?}: expected one of {}", v.get_ref(), list.join(", ")),
            ))
        }
    }
}
