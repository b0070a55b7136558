//! The key a webhook secret stands for, as Standard Webhooks defines it: pure, so that config
//! can refuse a bad secret at start and the pusher sign with the same reading of it.

/// The key a secret signs with: a `whsec_` secret is the base64 of the key after the prefix
/// (as Standard Webhooks' libraries make them), any other secret is its UTF-8 bytes.
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return Ok(secret.as_bytes().to_vec());
    };
    let key = LENIENT_BASE64
        .decode(encoded)
        .map_err(|e| format!("a whsec_ secret must be base64 after the prefix: {e}"))?;
    if key.is_empty() {
        return Err("a whsec_ secret must hold a key after the prefix".to_owned());
    }
    Ok(key)
}

/// Standard base64, padded or not.
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whsec_secret_is_base64_and_any_other_its_bytes() {
        // The key of Standard Webhooks' own test vectors.
        assert_eq!(
            webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            [
                49, 242, 144, 246, 191, 6, 41, 138, 171, 79, 8, 212, 60, 63, 8, 44, 246, 72, 163,
                98, 218, 45, 164, 176
            ]
        );
        assert_eq!(webhook_key("hunter2").unwrap(), b"hunter2");
        assert!(webhook_key("whsec_not base64!").is_err());
        assert!(webhook_key("whsec_").is_err());
    }
}
