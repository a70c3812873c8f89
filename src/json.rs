//! Reading one field out of a small JSON document (a job request, a task answer): the body
//! field a route classifies by, a job's mode, a task's id and status. Pure: bytes in, text out.

/// The string (or number, as text) at a JSON pointer in a JSON document.
pub fn string_at(bytes: &[u8], pointer: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    match doc.pointer(pointer)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::string_at;

    #[test]
    fn strings_and_numbers_are_read_as_text() {
        let doc = br#"{"a": {"b": "fast", "n": 4, "o": {}}}"#;
        assert_eq!(string_at(doc, "/a/b").as_deref(), Some("fast"));
        assert_eq!(string_at(doc, "/a/n").as_deref(), Some("4"));
        assert_eq!(string_at(doc, "/a/o"), None);
        assert_eq!(string_at(doc, "/missing"), None);
        assert_eq!(string_at(b"not json", "/a"), None);
    }
}
