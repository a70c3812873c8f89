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

/// Whether an object anywhere in the document names a key twice. JSON parsers disagree on
/// which of the two counts (the last, here; the first, in some upstreams), so a value read from
/// such a document cannot be trusted to be the one the upstream acts on. False for a document
/// that is not JSON.
pub fn has_duplicate_keys(bytes: &[u8]) -> bool {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    /// Walks a document, answering whether it saw a key twice in one object.
    struct Walk;

    impl<'de> DeserializeSeed<'de> for Walk {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_any(Walk)
        }
    }

    impl<'de> Visitor<'de> for Walk {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_str<E>(self, _: &str) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            let mut twice = false;
            while let Some(inner) = seq.next_element_seed(Walk)? {
                twice |= inner;
            }
            Ok(twice)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut keys = std::collections::HashSet::new();
            let mut twice = false;
            while let Some(key) = map.next_key::<String>()? {
                twice |= !keys.insert(key);
                twice |= map.next_value_seed(Walk)?;
            }
            Ok(twice)
        }
    }

    let mut doc = serde_json::Deserializer::from_slice(bytes);
    Walk.deserialize(&mut doc).unwrap_or(false)
}

/// The value at a JSON pointer, taken out of the parsed document.
fn value_at(bytes: &[u8], pointer: &str) -> Option<serde_json::Value> {
    let mut doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    doc.pointer_mut(pointer).map(serde_json::Value::take)
}

#[cfg(test)]
mod tests {
    use super::{has_duplicate_keys, number_at, string_at};

    #[test]
    fn a_key_named_twice_in_any_object_is_seen() {
        assert!(has_duplicate_keys(br#"{"n": 1, "n": 9}"#));
        assert!(has_duplicate_keys(
            br#"{"a": [{"x": 1}, {"y": 2, "y": 3}]}"#
        ));
        assert!(!has_duplicate_keys(
            br#"{"n": 1, "a": {"n": 2}, "b": [{"n": 3}, {"n": 4}]}"#
        ));
        assert!(!has_duplicate_keys(b"not json"));
    }

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
