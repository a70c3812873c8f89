//! What an incorrect task is: the operator's rules over the upstream's answers.
//!
//! Upstreams say "incorrect" in different ways — a 400, a `code` field of 24 in a 200, a
//! `failReason` of "Banned prompt detected" on a failed task — so a rule ([`Matcher`]) may test
//! the status, the value at a JSON pointer, and substrings of that value (or of the whole body);
//! every condition a rule gives must hold, and any rule matching makes the task incorrect.

use serde_json::Value;

/// Which answer a rule judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// The job's own response (a sync job's answer, a task-mode create response).
    Response,
    /// A get-task response showing the task ended and did not succeed.
    Task,
}

/// One rule: all its given conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub on: On,
    /// Any of these statuses; empty = any status.
    pub statuses: Vec<u16>,
    /// Where `values` and `contains` look; alone, the field must be present (and not null).
    /// `None` = `contains` searches the whole body.
    pub pointer: Option<String>,
    /// The value at `pointer` (a string, or a number as text) is one of these, ignoring case.
    pub values: Vec<String>,
    /// The text looked at contains one of these, ignoring case (stored lowercase).
    pub contains: Vec<String>,
}

impl Matcher {
    fn needs_body(&self) -> bool {
        self.pointer.is_some() || !self.contains.is_empty()
    }

    fn status_matches(&self, status: u16) -> bool {
        self.statuses.is_empty() || self.statuses.contains(&status)
    }

    fn body_matches(&self, body: &Body<'_>) -> bool {
        let text = match &self.pointer {
            Some(p) => body.at(p),
            None => Some(body.text()),
        };
        let Some(text) = text else {
            return false;
        };
        let value_ok = self.values.is_empty()
            || self
                .values
                .iter()
                .any(|v| v.eq_ignore_ascii_case(text.trim()));
        let contains_ok = self.contains.is_empty() || {
            let lower = text.to_lowercase();
            self.contains.iter().any(|c| lower.contains(c.as_str()))
        };
        value_ok && contains_ok
    }
}

/// The operator's definition of an incorrect task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judge {
    matchers: Vec<Matcher>,
}

impl Judge {
    /// A judge over `matchers`; `contains` entries are lowercased here once.
    pub fn new(mut matchers: Vec<Matcher>) -> Self {
        for m in &mut matchers {
            for c in &mut m.contains {
                *c = c.to_lowercase();
            }
        }
        Self { matchers }
    }

    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.matchers.len()
    }

    /// Whether any rule judging `on` answers looks at the body of one with `status`: when not,
    /// floodgate streams that answer through without reading it.
    pub fn needs_body(&self, on: On, status: u16) -> bool {
        self.relevant(on, status).any(Matcher::needs_body)
    }

    /// Whether an answer is an incorrect task. `body` is what was read of it (`None` when it
    /// was not read); `complete` when that is the whole body. A pointer needs the whole body
    /// (JSON is only parsed whole); whole-body substrings are searched in what was read.
    pub fn is_incorrect(&self, on: On, status: u16, body: Option<&[u8]>, complete: bool) -> bool {
        let body = body.map(|b| Body::new(b, complete));
        self.relevant(on, status)
            .any(|m| match (&body, m.needs_body()) {
                (_, false) => true,
                (Some(b), true) => m.body_matches(b),
                (None, true) => false,
            })
    }

    fn relevant(&self, on: On, status: u16) -> impl Iterator<Item = &Matcher> {
        self.matchers
            .iter()
            .filter(move |m| m.on == on && m.status_matches(status))
    }
}

/// An answer's body, parsed as JSON at most once.
struct Body<'a> {
    raw: &'a [u8],
    json: Option<Value>,
}

impl<'a> Body<'a> {
    fn new(raw: &'a [u8], complete: bool) -> Self {
        let json = complete.then(|| serde_json::from_slice(raw).ok()).flatten();
        Self { raw, json }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(self.raw).into_owned()
    }

    /// The text at a JSON pointer: a string as is, a number or anything else as JSON text.
    fn at(&self, pointer: &str) -> Option<String> {
        match self.json.as_ref()?.pointer(pointer)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKERS: [&str; 7] = [
        "banned prompt",
        "image filter",
        "banned keyword",
        "empty prompt",
        "invalid prompt",
        "invalid parameter",
        "invalid link",
    ];

    fn seed_judge() -> Judge {
        Judge::new(vec![
            Matcher {
                on: On::Response,
                statuses: vec![400, 422],
                pointer: None,
                values: vec![],
                contains: vec![],
            },
            Matcher {
                on: On::Response,
                statuses: vec![],
                pointer: Some("/code".into()),
                values: vec!["24".into()],
                contains: vec![],
            },
            Matcher {
                on: On::Response,
                statuses: vec![],
                pointer: Some("/description".into()),
                values: vec![],
                contains: MARKERS.iter().map(|m| m.to_string()).collect(),
            },
            Matcher {
                on: On::Task,
                statuses: vec![],
                pointer: Some("/failReason".into()),
                values: vec![],
                contains: vec!["Banned Prompt".into(), "image filter".into()],
            },
        ])
    }

    fn judge(on: On, status: u16, body: &str) -> bool {
        seed_judge().is_incorrect(on, status, Some(body.as_bytes()), true)
    }

    #[test]
    fn a_status_alone_decides_without_the_body() {
        let j = seed_judge();
        assert!(j.is_incorrect(On::Response, 400, None, false));
        assert!(j.is_incorrect(On::Response, 422, Some(b"<html>"), true));
        assert!(!j.is_incorrect(On::Response, 500, None, false));
    }

    #[test]
    fn pointer_values_and_substrings_match_ignoring_case() {
        assert!(judge(On::Response, 200, r#"{"code": 24, "result": null}"#));
        assert!(judge(On::Response, 200, r#"{"code": "24"}"#));
        assert!(!judge(On::Response, 200, r#"{"code": 1, "result": "t-1"}"#));
        for marker in MARKERS {
            let body = format!(
                r#"{{"code": 4, "description": "Error: {}!"}}"#,
                marker.to_uppercase()
            );
            assert!(judge(On::Response, 200, &body), "{marker}");
        }
        assert!(!judge(
            On::Response,
            200,
            r#"{"code": 1, "description": "Submit success"}"#
        ));
    }

    #[test]
    fn a_marker_outside_the_pointer_does_not_count() {
        // The prompt may say anything; only the field the operator named is read.
        assert!(!judge(
            On::Response,
            200,
            r#"{"code": 1, "description": "ok", "prompt": "an invalid link, banned prompt"}"#
        ));
    }

    #[test]
    fn task_rules_judge_only_task_answers() {
        let failed = r#"{"status": "FAILURE", "failReason": "Banned prompt detected"}"#;
        assert!(judge(On::Task, 200, failed));
        assert!(
            !judge(On::Response, 200, failed),
            "response rules read /description"
        );
        assert!(!judge(
            On::Task,
            200,
            r#"{"status": "FAILURE", "failReason": "timeout"}"#
        ));
    }

    #[test]
    fn bodies_that_are_not_json_or_not_whole_never_match_a_pointer() {
        let j = seed_judge();
        assert!(!j.is_incorrect(On::Response, 200, Some(b"\x00\xffbinary"), true));
        assert!(!j.is_incorrect(On::Response, 200, Some(br#"{"code": 24"#), false));
        assert!(!j.is_incorrect(On::Response, 200, None, false));
    }

    #[test]
    fn whole_body_substrings_search_what_was_read() {
        let j = Judge::new(vec![Matcher {
            on: On::Response,
            statuses: vec![400],
            pointer: None,
            values: vec![],
            contains: vec!["Invalid Link".into()],
        }]);
        assert!(j.is_incorrect(On::Response, 400, Some(b"error: invalid link ..."), false));
        assert!(!j.is_incorrect(On::Response, 200, Some(b"invalid link"), true));
        assert!(!j.is_incorrect(On::Response, 400, Some(b"quota exceeded"), true));
    }

    #[test]
    fn a_pointer_alone_asks_for_the_field_to_be_present() {
        let j = Judge::new(vec![Matcher {
            on: On::Response,
            statuses: vec![],
            pointer: Some("/error".into()),
            values: vec![],
            contains: vec![],
        }]);
        let incorrect = |body: &str| j.is_incorrect(On::Response, 200, Some(body.as_bytes()), true);
        assert!(incorrect(r#"{"error": {"code": "invalid_parameter"}}"#));
        assert!(!incorrect(r#"{"error": null, "result": "t-1"}"#));
        assert!(!incorrect(r#"{"result": "t-1"}"#));
    }

    #[test]
    fn needs_body_only_when_a_relevant_rule_reads_it() {
        let j = seed_judge();
        assert!(j.needs_body(On::Response, 200));
        assert!(j.needs_body(On::Task, 200));
        let status_only = Judge::new(vec![Matcher {
            on: On::Response,
            statuses: vec![400],
            pointer: None,
            values: vec![],
            contains: vec![],
        }]);
        assert!(!status_only.needs_body(On::Response, 400));
        assert!(!status_only.needs_body(On::Task, 200));
        assert!(!Judge::default().needs_body(On::Response, 200));
    }
}
