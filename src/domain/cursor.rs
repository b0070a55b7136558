//! Opaque pagination cursors. A cursor is the last key of a page, base64url-encoded, so clients
//! pass it back without reading it and pages are found by key (never by OFFSET).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Where the next page starts: after this context id, or below this version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    AfterId(String),
    BeforeVersion(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cursor is not one this server issued for this list")]
pub struct CursorError;

impl Cursor {
    pub fn encode(&self) -> String {
        let raw = match self {
            Cursor::AfterId(id) => format!("i:{id}"),
            Cursor::BeforeVersion(v) => format!("v:{v}"),
        };
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(encoded: &str) -> Result<Self, CursorError> {
        let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| CursorError)?;
        let raw = String::from_utf8(bytes).map_err(|_| CursorError)?;
        match raw.split_once(':') {
            Some(("i", id)) if !id.is_empty() => Ok(Cursor::AfterId(id.to_owned())),
            Some(("v", v)) => v
                .parse()
                .map(Cursor::BeforeVersion)
                .map_err(|_| CursorError),
            _ => Err(CursorError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        for cursor in [
            Cursor::AfterId("ctx:with:colons".into()),
            Cursor::BeforeVersion(42),
        ] {
            assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
        }
    }

    #[test]
    fn garbage_is_not_a_cursor() {
        for raw in ["", "!!!", "eA", &URL_SAFE_NO_PAD.encode("v:abc")] {
            assert_eq!(Cursor::decode(raw), Err(CursorError), "{raw}");
        }
    }
}
