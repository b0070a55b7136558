//! API keys themselves: `ctxd_` and 43 base62 characters (256 bits) from the OS random source.
//! Only a key's SHA-256 is ever stored; the key is shown once, when it is made.

use sha2::{Digest, Sha256};

pub use crate::domain::{KEY_CHARS, KEY_PREFIX, is_well_formed};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key in clear. Its `Debug` never shows it; only [`ApiKey::expose`] does.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl ApiKey {
    /// A new key from the OS random source.
    pub fn generate() -> anyhow::Result<Self> {
        let mut key = String::with_capacity(KEY_PREFIX.len() + KEY_CHARS);
        key.push_str(KEY_PREFIX);
        let mut buffer = [0u8; 64];
        while key.len() < KEY_PREFIX.len() + KEY_CHARS {
            getrandom::fill(&mut buffer)
                .map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
            // 248 = 4 * 62: bytes above it are dropped, so every character is equally likely.
            for byte in buffer.iter().filter(|b| **b < 248) {
                if key.len() == KEY_PREFIX.len() + KEY_CHARS {
                    break;
                }
                key.push(char::from(BASE62[usize::from(*byte % 62)]));
            }
        }
        Ok(Self(key))
    }

    /// A key given by the operator (the bootstrap key), if it has the right shape.
    pub fn parse(raw: &str) -> Option<Self> {
        is_well_formed(raw).then(|| Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> [u8; 32] {
        hash(&self.0)
    }
}

/// SHA-256 of a presented key.
pub fn hash(raw: &str) -> [u8; 32] {
    Sha256::digest(raw.as_bytes()).into()
}

/// Equality that takes the same time wherever the inputs differ.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_has_the_documented_shape_and_is_never_repeated() {
        let a = ApiKey::generate().unwrap();
        let b = ApiKey::generate().unwrap();
        assert!(is_well_formed(a.expose()), "{}", a.expose());
        assert_eq!(a.expose().len(), 48);
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "ApiKey(***)");
    }

    #[test]
    fn malformed_keys_are_told_apart() {
        let good = format!("ctxd_{}", "a".repeat(43));
        assert!(is_well_formed(&good));
        assert!(!is_well_formed(&good[..good.len() - 1]));
        assert!(!is_well_formed(&format!("ctxd_{}", "a".repeat(44))));
        assert!(!is_well_formed(&format!("ctxx_{}", "a".repeat(43))));
        assert!(!is_well_formed(&format!("ctxd_{}-", "a".repeat(42))));
        assert!(ApiKey::parse("secret").is_none());
    }

    #[test]
    fn hashes_compare_equal_only_when_equal() {
        let (a, b) = (hash("ctxd_a"), hash("ctxd_b"));
        assert!(constant_time_eq(&a, &a));
        assert!(!constant_time_eq(&a, &b));
        let mut c = a;
        c[31] ^= 1;
        assert!(!constant_time_eq(&a, &c));
    }

    #[test]
    fn generated_characters_cover_the_alphabet() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.extend(ApiKey::generate().unwrap().expose()[5..].bytes());
        }
        assert_eq!(seen.len(), 62);
    }
}
