//! Strict base64url without padding (RFC 7515 §2): no `=`, no whitespace, canonical last char.

use ct_codecs::{Base64UrlSafeNoPadding, Decoder};

pub fn decode(text: &str) -> Option<Vec<u8>> {
    Base64UrlSafeNoPadding::decode_to_vec(text, None).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_canonical_base64url() {
        assert_eq!(decode("eyJhIjoxfQ").unwrap(), br#"{"a":1}"#);
        assert_eq!(decode("_-8").unwrap(), vec![0xff, 0xef]);
    }

    #[test]
    fn refuses_padding_whitespace_and_standard_alphabet() {
        assert!(decode("eyJhIjoxfQ==").is_none());
        assert!(decode("eyJh Ijox").is_none());
        assert!(decode("/+8").is_none());
    }
}
