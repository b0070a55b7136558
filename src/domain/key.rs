//! What an API key looks like, for every layer that must recognise one (config checks
//! `auth.bootstrap_key` with it, auth every bearer). Making and hashing keys is `crate::auth`'s.

/// What every key starts with, so a leaked one is recognisable (and scannable).
pub const KEY_PREFIX: &str = "ctxd_";

/// Base62 characters after the prefix: 43 of them carry 256 bits.
pub const KEY_CHARS: usize = 43;

/// Whether `raw` looks like a key: the prefix and 43 base62 characters.
pub fn is_well_formed(raw: &str) -> bool {
    raw.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == KEY_CHARS && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}
