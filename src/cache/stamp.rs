//! Stamps: the order of what any cache layer may hold for one id.

use chrono::{DateTime, TimeZone, Utc};

use crate::domain::Context;

/// Orders what a cache may hold for one id, across deletes and re-creations: a context's
/// incarnation (its `created_at`), then its version, then whether the server's embedding of
/// that version is in (a version gains one once, after its write, with no new version). A delete
/// leaves a tombstone that outranks every version of the incarnation it ended, and a re-created
/// context outranks the tombstone.
/// Every layer keeps an entry only if its stamp is not older than the one it holds, so a fill
/// that raced a write can never put an older version back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    incarnation: DateTime<Utc>,
    version: i64,
    embedded: bool,
}

impl Stamp {
    pub fn of(context: &Context) -> Self {
        Self {
            incarnation: context.created_at,
            version: context.version,
            embedded: context.server_embedding.is_some(),
        }
    }

    /// The stamp of version `version` of the incarnation created at `created_at` (`i64::MAX`:
    /// its delete), `embedded` once the server's embedding of it is in.
    pub fn new(created_at: DateTime<Utc>, version: i64, embedded: bool) -> Self {
        Self {
            incarnation: created_at,
            version,
            embedded,
        }
    }

    /// The stamp of the delete that ended the incarnation created at `created_at`.
    pub fn tombstone(created_at: DateTime<Utc>) -> Self {
        Self {
            incarnation: created_at,
            version: i64::MAX,
            embedded: false,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.version == i64::MAX
    }

    /// A fixed-width text that sorts as the stamp does (for Redis, compared in Lua as strings):
    /// microseconds since the epoch, then the version, each zero-padded to 20 digits, then `:1`
    /// once the server's embedding is in. (An earlier release's stamps lack the suffix, and
    /// sort as the same version without it.)
    pub fn encode(&self) -> String {
        let micros = self.incarnation.timestamp_micros().max(0);
        let embedded = if self.embedded { ":1" } else { "" };
        format!("{micros:020}:{:020}{embedded}", self.version.max(0))
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (micros, rest) = text.split_once(':')?;
        let (version, embedded) = match rest.split_once(':') {
            Some((version, "1")) => (version, true),
            Some(_) => return None,
            None => (rest, false),
        };
        if micros.len() != 20 || version.len() != 20 {
            return None;
        }
        Some(Self {
            incarnation: Utc.timestamp_micros(micros.parse().ok()?).single()?,
            version: version.parse().ok()?,
            embedded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(micros: i64, version: i64) -> Stamp {
        Stamp {
            incarnation: Utc.timestamp_micros(micros).unwrap(),
            version,
            embedded: false,
        }
    }

    fn embedded(micros: i64, version: i64) -> Stamp {
        Stamp {
            embedded: true,
            ..stamp(micros, version)
        }
    }

    #[test]
    fn the_text_form_sorts_as_the_stamp_and_round_trips() {
        let stamps = [
            stamp(1, 1),
            embedded(1, 1),
            stamp(1, 2),
            stamp(1, 10),
            embedded(1, 10),
            stamp(1, i64::MAX),
            stamp(2, 1),
            stamp(1_800_000_000_000_000, 5),
        ];
        for pair in stamps.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].encode() < pair[1].encode(), "{:?}", pair);
        }
        for s in stamps {
            assert_eq!(Stamp::decode(&s.encode()), Some(s));
        }
        assert!(stamp(1, i64::MAX).is_tombstone());
        assert_eq!(Stamp::decode("12:34"), None);
        assert_eq!(Stamp::decode(&format!("{}:2", stamp(1, 1).encode())), None);
    }
}
