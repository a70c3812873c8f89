//! Classification: method + normalised path -> endpoint class.  [pure]
//!
//! Routes are tried in file order; the first match wins; unmatched requests fall into the default
//! class. Patterns: `/exact`, `/prefix/*` (the prefix itself and everything under it) and
//! `/template/{id}` (each `{name}` matches one non-empty segment).

mod normalize;

pub use normalize::{normalize_path, EscapedSlashes, PathError, PathRules};

use std::collections::HashMap;

use http::Method;

/// Index of an endpoint class in the config's class list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId(pub u16);

/// A path pattern, stored normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Exact(String),
    /// Matches the prefix path itself and any path below it.
    Prefix(String),
    /// Segments; `None` is a `{name}` placeholder.
    Template(Vec<Option<String>>),
}

impl PathPattern {
    /// Parses a route path as written in the config, normalised by the rules requests are.
    pub fn parse(raw: &str, rules: &PathRules) -> Result<Self, String> {
        if !raw.starts_with('/') {
            return Err(format!("route path {raw:?} must start with '/'"));
        }
        if let Some(prefix) = raw.strip_suffix("/*") {
            let norm = normalized(prefix, rules)?;
            return Ok(PathPattern::Prefix(if norm == "/" {
                String::new()
            } else {
                norm
            }));
        }
        if raw.contains('*') {
            return Err(format!(
                "route path {raw:?}: '*' is only allowed as a final \"/*\""
            ));
        }
        if raw.contains('{') || raw.contains('}') {
            return Self::parse_template(raw, rules);
        }
        Ok(PathPattern::Exact(normalized(raw, rules)?))
    }

    fn parse_template(raw: &str, rules: &PathRules) -> Result<Self, String> {
        let norm = normalized(raw, rules)?;
        let mut segments = Vec::new();
        for seg in norm.split('/').skip(1) {
            let is_param = seg.starts_with('{') && seg.ends_with('}') && seg.len() > 2;
            if is_param {
                segments.push(None);
            } else if seg.contains('{') || seg.contains('}') {
                return Err(format!(
                    "route path {raw:?}: a placeholder must be a whole segment like {{id}}"
                ));
            } else {
                segments.push(Some(seg.to_owned()));
            }
        }
        Ok(PathPattern::Template(segments))
    }

    /// Whether a normalised path matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/' || p.is_empty())
            }
            PathPattern::Template(segs) => {
                let mut parts = path.split('/').skip(1);
                let all = segs.iter().all(|s| match (s, parts.next()) {
                    (Some(lit), Some(part)) => lit == part,
                    (None, Some(part)) => !part.is_empty(),
                    (_, None) => false,
                });
                all && parts.next().is_none()
            }
        }
    }
}

/// A route's path normalised, or why the rules refuse it.
fn normalized(raw: &str, rules: &PathRules) -> Result<String, String> {
    normalize_path(raw, rules)
        .map(std::borrow::Cow::into_owned)
        .map_err(|e| format!("route path {raw:?}: {e}"))
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathPattern::Exact(p) => f.write_str(p),
            PathPattern::Prefix(p) => write!(f, "{p}/*"),
            PathPattern::Template(segs) => {
                for s in segs {
                    write!(f, "/{}", s.as_deref().unwrap_or("{}"))?;
                }
                Ok(())
            }
        }
    }
}

/// One route: which requests belong to `class`.
#[derive(Debug, Clone)]
pub struct Route {
    /// `None` matches every method.
    pub methods: Option<Vec<Method>>,
    pub pattern: PathPattern,
    pub class: ClassId,
    /// The class named by a JSON field of the body instead, when the route has one.
    pub by_body: Option<BodyClasses>,
}

/// A class chosen by a JSON body field, for unified APIs where one URL serves many task types
/// (`{"task_type": "txt2img", ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyClasses {
    /// JSON pointer to the field.
    pub pointer: String,
    /// The field's value (a string, or a number as text) -> class.
    pub by_value: HashMap<String, ClassId>,
    /// The class of a body too long to read whole (`unreadable_class`); `None`: refused.
    pub unreadable: Option<ClassId>,
}

/// A body whose class cannot be told: longer than the inspect limit, on a route with no
/// `unreadable_class`. Refused (413) rather than classed by the route, which may be looser
/// than the class the body names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this route takes its class from a field of the JSON body, and the body is longer than \
     [server] inspect_limit, so its class cannot be read"
)]
pub struct Unclassifiable;

impl BodyClasses {
    /// The class a body's field names; `Ok(None)` when the whole body was read and is not
    /// JSON or names no listed value (the route's own class applies). A body not read whole
    /// gets `unreadable_class`, or is refused: padding must not buy a looser class.
    pub fn class_of(&self, body: &[u8], complete: bool) -> Result<Option<ClassId>, Unclassifiable> {
        if !complete {
            return self.unreadable.map(Some).ok_or(Unclassifiable);
        }
        let value = crate::json::string_at(body, &self.pointer);
        Ok(value.and_then(|v| self.by_value.get(&v).copied()))
    }
}

/// Maps requests to endpoint classes.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
    default_class: ClassId,
    rules: PathRules,
}

impl Router {
    pub fn new(routes: Vec<Route>, default_class: ClassId, rules: PathRules) -> Self {
        Self {
            routes,
            default_class,
            rules,
        }
    }

    /// The class of a request, from its method and raw request-target path (a route that picks
    /// its class from the body answers with its own class here). `Err`: the path is refused.
    pub fn classify(&self, method: &Method, raw_path: &str) -> Result<ClassId, PathError> {
        self.classify_route(method, raw_path)
            .map(|(class, _)| class)
    }

    /// The class of a request by method and path, and the body rule of its route when the
    /// body may name another class.
    pub fn classify_route(
        &self,
        method: &Method,
        raw_path: &str,
    ) -> Result<(ClassId, Option<&BodyClasses>), PathError> {
        let path = normalize_path(raw_path, &self.rules)?;
        Ok(self
            .routes
            .iter()
            .find(|r| {
                r.methods.as_ref().is_none_or(|m| m.contains(method)) && r.pattern.matches(&path)
            })
            .map_or((self.default_class, None), |r| {
                (r.class, r.by_body.as_ref())
            }))
    }

    /// How paths are normalised before matching.
    pub fn rules(&self) -> &PathRules {
        &self.rules
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn default_class(&self) -> ClassId {
        self.default_class
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let route = |path: &str, method: Option<Method>, class| Route {
            methods: method.map(|m| vec![m]),
            pattern: PathPattern::parse(path, &PathRules::LITERAL).unwrap(),
            class: ClassId(class),
            by_body: None,
        };
        Router::new(
            vec![
                route("/api/v1/txt2img", Some(Method::POST), 1),
                route("/api/v1/prompt/*", Some(Method::POST), 2),
                route("/mj/message/{id}", Some(Method::GET), 3),
            ],
            ClassId(0),
            PathRules::LITERAL,
        )
    }

    #[test]
    fn exact_prefix_and_template_routes() {
        let r = router();
        assert_eq!(
            r.classify(&Method::POST, "/api/v1/txt2img").unwrap(),
            ClassId(1)
        );
        assert_eq!(
            r.classify(&Method::GET, "/api/v1/txt2img").unwrap(),
            ClassId(0),
            "method must match"
        );
        assert_eq!(
            r.classify(&Method::POST, "/api/v1/prompt/enhance").unwrap(),
            ClassId(2)
        );
        assert_eq!(
            r.classify(&Method::POST, "/api/v1/prompt/a/b").unwrap(),
            ClassId(2)
        );
        assert_eq!(
            r.classify(&Method::POST, "/api/v1/prompt").unwrap(),
            ClassId(2)
        );
        assert_eq!(
            r.classify(&Method::POST, "/api/v1/promptx").unwrap(),
            ClassId(0)
        );
        assert_eq!(
            r.classify(&Method::GET, "/mj/message/123").unwrap(),
            ClassId(3)
        );
        assert_eq!(
            r.classify(&Method::GET, "/mj/message/123/x").unwrap(),
            ClassId(0)
        );
        assert_eq!(r.classify(&Method::GET, "/mj/message").unwrap(), ClassId(0));
    }

    #[test]
    fn a_body_field_names_a_listed_class_only_from_a_whole_json_body() {
        let rule = BodyClasses {
            pointer: "/task_type".into(),
            by_value: HashMap::from([("txt2img".into(), ClassId(4)), ("7".into(), ClassId(5))]),
            unreadable: None,
        };
        let body = br#"{"task_type": "txt2img"}"#;
        assert_eq!(rule.class_of(body, true), Ok(Some(ClassId(4))));
        assert_eq!(
            rule.class_of(body, false),
            Err(Unclassifiable),
            "a cut-off body is refused"
        );
        let lenient = BodyClasses {
            unreadable: Some(ClassId(9)),
            ..rule.clone()
        };
        assert_eq!(lenient.class_of(body, false), Ok(Some(ClassId(9))));
        assert_eq!(
            rule.class_of(br#"{"task_type": 7}"#, true),
            Ok(Some(ClassId(5)))
        );
        assert_eq!(rule.class_of(br#"{"task_type": "other"}"#, true), Ok(None));
        assert_eq!(rule.class_of(br#"{"model": "txt2img"}"#, true), Ok(None));
        assert_eq!(rule.class_of(b"task_type=txt2img", true), Ok(None));
    }

    #[test]
    fn bad_patterns_are_refused() {
        let r = &PathRules::SECURE;
        assert!(PathPattern::parse("api", r).is_err());
        assert!(PathPattern::parse("/a/*/b", r).is_err());
        assert!(PathPattern::parse("/a/x{id}", r).is_err());
        assert!(PathPattern::parse("/a\\b", r).is_err());
    }
}
