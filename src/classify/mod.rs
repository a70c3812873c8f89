//! Classification: method + normalised path -> endpoint class.  [pure]
//!
//! Routes are tried in file order; the first match wins; unmatched requests fall into the default
//! class. Patterns: `/exact`, `/prefix/*` (the prefix itself and everything under it) and
//! `/template/{id}` (each `{name}` matches one non-empty segment).

mod normalize;

pub use normalize::normalize_path;

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
    /// Parses a route path as written in the config.
    pub fn parse(raw: &str, case_insensitive: bool) -> Result<Self, String> {
        if !raw.starts_with('/') {
            return Err(format!("route path {raw:?} must start with '/'"));
        }
        if let Some(prefix) = raw.strip_suffix("/*") {
            let norm = normalize_path(prefix, case_insensitive).into_owned();
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
            return Self::parse_template(raw, case_insensitive);
        }
        Ok(PathPattern::Exact(
            normalize_path(raw, case_insensitive).into_owned(),
        ))
    }

    fn parse_template(raw: &str, case_insensitive: bool) -> Result<Self, String> {
        let norm = normalize_path(raw, case_insensitive);
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
}

impl BodyClasses {
    /// The class a body's field names; `None` when the body is not all read, not JSON, or its
    /// value is not listed (the route's own class applies).
    pub fn class_of(&self, body: &[u8], complete: bool) -> Option<ClassId> {
        if !complete {
            return None;
        }
        let value = crate::proxy::inspect::json_string_at(body, &self.pointer)?;
        self.by_value.get(&value).copied()
    }
}

/// Maps requests to endpoint classes.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
    default_class: ClassId,
    case_insensitive: bool,
}

impl Router {
    pub fn new(routes: Vec<Route>, default_class: ClassId, case_insensitive: bool) -> Self {
        Self {
            routes,
            default_class,
            case_insensitive,
        }
    }

    /// The class of a request, from its method and raw request-target path (a route that picks
    /// its class from the body answers with its own class here).
    pub fn classify(&self, method: &Method, raw_path: &str) -> ClassId {
        self.classify_route(method, raw_path).0
    }

    /// The class of a request by method and path, and the body rule of its route when the
    /// body may name another class.
    pub fn classify_route(
        &self,
        method: &Method,
        raw_path: &str,
    ) -> (ClassId, Option<&BodyClasses>) {
        let path = normalize_path(raw_path, self.case_insensitive);
        self.routes
            .iter()
            .find(|r| {
                r.methods.as_ref().is_none_or(|m| m.contains(method)) && r.pattern.matches(&path)
            })
            .map_or((self.default_class, None), |r| {
                (r.class, r.by_body.as_ref())
            })
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
            pattern: PathPattern::parse(path, false).unwrap(),
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
            false,
        )
    }

    #[test]
    fn exact_prefix_and_template_routes() {
        let r = router();
        assert_eq!(r.classify(&Method::POST, "/api/v1/txt2img"), ClassId(1));
        assert_eq!(
            r.classify(&Method::GET, "/api/v1/txt2img"),
            ClassId(0),
            "method must match"
        );
        assert_eq!(
            r.classify(&Method::POST, "/api/v1/prompt/enhance"),
            ClassId(2)
        );
        assert_eq!(r.classify(&Method::POST, "/api/v1/prompt/a/b"), ClassId(2));
        assert_eq!(r.classify(&Method::POST, "/api/v1/prompt"), ClassId(2));
        assert_eq!(r.classify(&Method::POST, "/api/v1/promptx"), ClassId(0));
        assert_eq!(r.classify(&Method::GET, "/mj/message/123"), ClassId(3));
        assert_eq!(r.classify(&Method::GET, "/mj/message/123/x"), ClassId(0));
        assert_eq!(r.classify(&Method::GET, "/mj/message"), ClassId(0));
    }

    #[test]
    fn a_body_field_names_a_listed_class_only_from_a_whole_json_body() {
        let rule = BodyClasses {
            pointer: "/task_type".into(),
            by_value: HashMap::from([("txt2img".into(), ClassId(4)), ("7".into(), ClassId(5))]),
        };
        let body = br#"{"task_type": "txt2img"}"#;
        assert_eq!(rule.class_of(body, true), Some(ClassId(4)));
        assert_eq!(
            rule.class_of(body, false),
            None,
            "a cut-off body names nothing"
        );
        assert_eq!(
            rule.class_of(br#"{"task_type": 7}"#, true),
            Some(ClassId(5))
        );
        assert_eq!(rule.class_of(br#"{"task_type": "other"}"#, true), None);
        assert_eq!(rule.class_of(br#"{"model": "txt2img"}"#, true), None);
        assert_eq!(rule.class_of(b"task_type=txt2img", true), None);
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(PathPattern::parse("api", false).is_err());
        assert!(PathPattern::parse("/a/*/b", false).is_err());
        assert!(PathPattern::parse("/a/x{id}", false).is_err());
    }
}
