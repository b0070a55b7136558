//! Context ids: 1..=255 characters of `[A-Za-z0-9._:-]`.

use std::fmt;

/// The longest id accepted, in bytes (ids are ASCII, so also in characters).
pub const MAX_ID_LEN: usize = 255;

/// A context id that has been checked against the contract's alphabet and length.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContextId(String);

/// Why a string is not a context id; the message is shown to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("a context id must not be empty")]
    Empty,
    #[error("a context id is at most {MAX_ID_LEN} characters, this one has {0}")]
    TooLong(usize),
    #[error("a context id may hold only A-Z, a-z, 0-9, '.', '_', ':' and '-'; found {0:?}")]
    BadChar(char),
}

impl ContextId {
    /// Checks `raw` against the contract: 1..=255 characters of `[A-Za-z0-9._:-]`.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        if raw.is_empty() {
            return Err(InvalidId::Empty);
        }
        if let Some(bad) = raw.chars().find(|c| !Self::allowed(*c)) {
            return Err(InvalidId::BadChar(bad));
        }
        if raw.len() > MAX_ID_LEN {
            return Err(InvalidId::TooLong(raw.len()));
        }
        Ok(Self(raw.to_owned()))
    }

    /// A fresh id `ctx_<uuid v4>` for `POST /contexts` without an id.
    pub fn generate() -> Self {
        Self(format!("ctx_{}", uuid::Uuid::new_v4()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
    }
}

impl fmt::Display for ContextId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ContextId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for ContextId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_allowed_character_is_accepted() {
        let id = "AZaz09._:-";
        assert_eq!(ContextId::parse(id).unwrap().as_str(), id);
    }

    #[test]
    fn an_empty_id_is_rejected() {
        assert_eq!(ContextId::parse(""), Err(InvalidId::Empty));
    }

    #[test]
    fn an_id_of_255_characters_is_accepted_and_256_is_not() {
        assert!(ContextId::parse(&"a".repeat(255)).is_ok());
        assert_eq!(
            ContextId::parse(&"a".repeat(256)),
            Err(InvalidId::TooLong(256))
        );
    }

    #[test]
    fn slashes_spaces_and_non_ascii_are_rejected() {
        for (raw, bad) in [("a/b", '/'), ("a b", ' '), ("café", 'é'), ("a%2F", '%')] {
            assert_eq!(ContextId::parse(raw), Err(InvalidId::BadChar(bad)), "{raw}");
        }
    }

    #[test]
    fn a_generated_id_is_ctx_and_a_uuid_and_parses() {
        let id = ContextId::generate();
        assert!(id.as_str().starts_with("ctx_"));
        assert_eq!(id.as_str().len(), 4 + 36);
        assert_eq!(ContextId::parse(id.as_str()).unwrap(), id);
    }
}
