//! The job mode a request asks for, read from a field of its JSON body.

use crate::json::string_at as json_string_at;

/// How fast the upstream should run a job; relax jobs are the ones with a daily allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Fast,
    Turbo,
    Relax,
}

impl Mode {
    /// `fast`, `turbo` or `relax`, in any case (APIs write `relax` and `RELAX`).
    pub fn parse(text: &str) -> Option<Mode> {
        let text = text.trim();
        [Mode::Fast, Mode::Turbo, Mode::Relax]
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(text))
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Fast => "fast",
            Mode::Turbo => "turbo",
            Mode::Relax => "relax",
        }
    }

    /// Fast and turbo jobs earn relax allowance when they succeed; relax jobs do not.
    pub fn earns(self) -> bool {
        self != Mode::Relax
    }

    /// The mode named at `pointer` in a request body. `None` when the body was not read whole,
    /// is not JSON, or names no known mode: the caller's default applies, and the body is
    /// forwarded untouched either way.
    pub fn of(body: &[u8], complete: bool, pointer: &str) -> Option<Mode> {
        if !complete {
            return None;
        }
        Mode::parse(&json_string_at(body, pointer)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_read_case_insensitively_from_the_pointer() {
        let body = br#"{"prompt": "a cat", "process_mode": "RELAX", "input": {"mode": "turbo"}}"#;
        assert_eq!(Mode::of(body, true, "/process_mode"), Some(Mode::Relax));
        assert_eq!(Mode::of(body, true, "/input/mode"), Some(Mode::Turbo));
        assert_eq!(Mode::of(body, true, "/mode"), None, "absent");
        assert_eq!(
            Mode::of(body, false, "/process_mode"),
            None,
            "not read whole"
        );
        assert_eq!(Mode::of(b"\x89PNG\r\n", true, "/mode"), None, "not JSON");
        assert_eq!(
            Mode::of(br#"{"mode": "slow"}"#, true, "/mode"),
            None,
            "unknown"
        );
        assert_eq!(Mode::of(br#"{"mode": 3}"#, true, "/mode"), None);
    }

    #[test]
    fn only_fast_and_turbo_earn() {
        assert!(Mode::Fast.earns() && Mode::Turbo.earns() && !Mode::Relax.earns());
    }
}
