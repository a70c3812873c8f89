//! `[[route]]` entries: method and path pattern to class, and the body field a route may
//! classify by.

use std::collections::HashMap;

use http::Method;
use toml::Spanned;

use crate::classify::{BodyClasses, ClassId, PathPattern, PathRules, Route};

use super::*;

pub(super) fn build_route(
    src: &Source<'_>,
    i: usize,
    r: &raw::RawRoute,
    classes: &mut Vec<String>,
    path_rules: &PathRules,
) -> Result<Route, ConfigError> {
    let field = format!("route[{i}]");
    let pattern = PathPattern::parse(r.path.get_ref(), path_rules)
        .map_err(|m| src.at(format!("{field}.path"), r.path.span(), m))?;
    let method_list: Vec<&Spanned<String>> = match (&r.method, &r.methods) {
        (Some(_), Some(_)) => {
            return Err(src.at(
                format!("{field}.method"),
                r.path.span(),
                "give method or methods, not both",
            ))
        }
        (Some(m), None) => vec![m],
        (None, Some(ms)) => ms.iter().collect(),
        (None, None) => vec![],
    };
    let mut methods = Vec::new();
    for m in method_list {
        let method =
            Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()).map_err(|_| {
                src.at(
                    format!("{field}.method"),
                    m.span(),
                    format!("{:?} is not an HTTP method", m.get_ref()),
                )
            })?;
        methods.push(method);
    }
    if r.class.is_empty() || r.class == "*" {
        return Err(src.at(
            format!("{field}.class"),
            r.path.span(),
            "a class needs a name other than \"*\"",
        ));
    }
    let class = class_named(classes, &r.class);
    Ok(Route {
        methods: (!methods.is_empty()).then_some(methods),
        pattern,
        class,
        by_body: body_classes(src, &field, r, classes)?,
    })
}

/// The id of class `name`, registering it when it is new.
pub(super) fn class_named(classes: &mut Vec<String>, name: &str) -> ClassId {
    let i = match classes.iter().position(|c| c == name) {
        Some(i) => i,
        None => {
            classes.push(name.to_owned());
            classes.len() - 1
        }
    };
    ClassId(i as u16)
}

/// A route's `body_pointer` and `body_classes`, which come together.
pub(super) fn body_classes(
    src: &Source<'_>,
    field: &str,
    r: &raw::RawRoute,
    classes: &mut Vec<String>,
) -> Result<Option<BodyClasses>, ConfigError> {
    let (pointer, table) = match (&r.body_pointer, &r.body_classes) {
        (None, None) => return Ok(None),
        (Some(p), Some(t)) => (p, t),
        (Some(p), None) => {
            let message = "needs body_classes (value -> class) beside it";
            return Err(src.at(format!("{field}.body_pointer"), p.span(), message));
        }
        (None, Some(t)) => {
            let message = "needs body_pointer (where the value is read) beside it";
            return Err(src.at(format!("{field}.body_classes"), t.span(), message));
        }
    };
    if !pointer.get_ref().starts_with('/') {
        let message = format!(
            "{:?} is not a JSON pointer (like \"/task_type\")",
            pointer.get_ref()
        );
        return Err(src.at(format!("{field}.body_pointer"), pointer.span(), message));
    }
    if table.get_ref().is_empty() {
        let message = "must map at least one value to a class";
        return Err(src.at(format!("{field}.body_classes"), table.span(), message));
    }
    let mut by_value = HashMap::new();
    for (value, class) in table.get_ref() {
        if class.is_empty() || class == "*" {
            let message = format!("{value:?}: a class needs a name other than \"*\"");
            return Err(src.at(format!("{field}.body_classes"), table.span(), message));
        }
        by_value.insert(value.clone(), class_named(classes, class));
    }
    let unreadable = match &r.unreadable_class {
        Some(c) if c.get_ref().is_empty() || c.get_ref() == "*" => {
            let message = "a class needs a name other than \"*\"";
            return Err(src.at(format!("{field}.unreadable_class"), c.span(), message));
        }
        Some(c) => Some(class_named(classes, c.get_ref())),
        None => None,
    };
    Ok(Some(BodyClasses {
        pointer: pointer.get_ref().clone(),
        by_value,
        unreadable,
    }))
}
