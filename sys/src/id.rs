//! The id rule: sandbox, container and exec ids name directories and files on the host and
//! in the guest, so they are 1 to [`MAX_LEN`] characters of `[A-Za-z0-9_.-]` and do not
//! start with `.` (which also rules out `.` and `..`).
//!
//! Callers map [`IdError`] into their own error, naming the field the id came from; its
//! message reads on from the id: `sandbox id "a/b": holds '/'; an id is 1 to 128 ...`.

use thiserror::Error;

/// The longest id.
pub const MAX_LEN: usize = 128;

/// The rule in words, for messages.
pub const RULE: &str = "1 to 128 characters of [A-Za-z0-9_.-], not starting with '.'";

/// Why an id breaks [the rule](self).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// The id is empty.
    #[error("must not be empty; an id is {RULE}")]
    Empty,
    /// The id is longer than [`MAX_LEN`] bytes.
    #[error("is {0} characters long; an id is {RULE}")]
    TooLong(usize),
    /// The id starts with `.`.
    #[error("starts with '.'; an id is {RULE}")]
    LeadingDot,
    /// The id holds a character outside `[A-Za-z0-9_.-]`.
    #[error("holds {0:?}; an id is {RULE}")]
    BadChar(char),
}

/// Checks `id` against [the rule](self).
pub fn check(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_LEN {
        return Err(IdError::TooLong(id.len()));
    }
    if id.starts_with('.') {
        return Err(IdError::LeadingDot);
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        Some(c) => Err(IdError::BadChar(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_ids_pass() {
        for id in ["a", "pod-1_a.b", "A9", "x..y", &"z".repeat(MAX_LEN)] {
            assert_eq!(check(id), Ok(()), "{id:?}");
        }
    }

    #[test]
    fn bad_ids_say_why() {
        assert_eq!(check(""), Err(IdError::Empty));
        assert_eq!(check(&"z".repeat(MAX_LEN + 1)), Err(IdError::TooLong(129)));
        assert_eq!(check("."), Err(IdError::LeadingDot));
        assert_eq!(check(".."), Err(IdError::LeadingDot));
        assert_eq!(check(".hidden"), Err(IdError::LeadingDot));
        assert_eq!(check("../x"), Err(IdError::LeadingDot));
        assert_eq!(check("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(check("a b"), Err(IdError::BadChar(' ')));
        assert_eq!(check("é"), Err(IdError::BadChar('é')));
        assert_eq!(check("a\0"), Err(IdError::BadChar('\0')));
        for e in [
            IdError::Empty,
            IdError::TooLong(129),
            IdError::LeadingDot,
            IdError::BadChar('/'),
        ] {
            assert!(e.to_string().ends_with(RULE), "{e}");
        }
        assert!(IdError::BadChar('/').to_string().starts_with("holds '/'"));
    }
}
