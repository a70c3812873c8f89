//! Reading one field out of a small JSON document (a job request, a task answer): the body
//! field a route classifies by, a job's mode, a request's cost, a task's id and status. Pure:
//! bytes in, text out.

/// The string (or number, as text) at a JSON pointer in a JSON document.
pub fn string_at(bytes: &[u8], pointer: &str) -> Option<String> {
    match value_at(bytes, pointer)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The number at a JSON pointer in a JSON document: `None` when the field is missing, is not a
/// number (a string of digits included), or the document is not JSON.
pub fn number_at(bytes: &[u8], pointer: &str) -> Option<serde_json::Number> {
    match value_at(bytes, pointer)? {
        serde_json::Value::Number(n) => Some(n),
        _ => None,
    }
}

/// The value at a JSON pointer, taken out of the parsed document.
fn value_at(bytes: &[u8], pointer: &str) -> Option<serde_json::Value> {
    let mut doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    doc.pointer_mut(pointer).map(serde_json::Value::take)
}

#[cfg(test)]
mod tests {
    use super::{number_at, string_at};

    #[test]
    fn strings_and_numbers_are_read_as_text() {
        let doc = br#"{"a": {"b": "fast", "n": 4, "o": {}}}"#;
        assert_eq!(string_at(doc, "/a/b").as_deref(), Some("fast"));
        assert_eq!(string_at(doc, "/a/n").as_deref(), Some("4"));
        assert_eq!(string_at(doc, "/a/o"), None);
        assert_eq!(string_at(doc, "/missing"), None);
        assert_eq!(string_at(b"not json", "/a"), None);
    }

    #[test]
    fn numbers_are_read_only_where_the_document_has_a_number() {
        let doc = br#"{"n": 4, "f": 2.5, "s": "4", "list": [7]}"#;
        assert_eq!(number_at(doc, "/n").and_then(|n| n.as_u64()), Some(4));
        assert_eq!(number_at(doc, "/f").and_then(|n| n.as_f64()), Some(2.5));
        assert_eq!(number_at(doc, "/list/0").and_then(|n| n.as_u64()), Some(7));
        assert_eq!(
            number_at(doc, "/s"),
            None,
            "a string of digits is not a number"
        );
        assert_eq!(number_at(doc, "/missing"), None);
        assert_eq!(number_at(b"n=4", "/n"), None);
    }
}
