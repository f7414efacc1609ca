//! The wire format of Envoy's `verify_signature` foreign function: protobuf messages
//! `VerifySignatureArguments` and `VerifySignatureResult`
//! (envoy `source/extensions/common/wasm/ext/verify_signature.proto`).

use crate::proto::{fields, push_bytes_field, FieldValue};

/// `VerifySignatureArguments{hash_function=1, public_key=2 (DER SPKI), signature=3, text=4}`.
pub fn encode_arguments(
    hash_function: &str,
    public_key_der: &[u8],
    signature: &[u8],
    text: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(public_key_der.len() + signature.len() + text.len() + 24);
    push_bytes_field(&mut out, 1, hash_function.as_bytes());
    push_bytes_field(&mut out, 2, public_key_der);
    push_bytes_field(&mut out, 3, signature);
    push_bytes_field(&mut out, 4, text);
    out
}

/// `VerifySignatureResult{result=1 (bool)}`: true only when field 1 is present and non-zero.
/// Anything unreadable is `None`, which callers treat as "host path unusable".
pub fn decode_result(bytes: &[u8]) -> Option<bool> {
    let mut result = false;
    for (field, value) in fields(bytes)? {
        if let (1, FieldValue::Varint(flag)) = (field, value) {
            result = flag != 0;
        }
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fields_in_protobuf_wire_format() {
        let encoded = encode_arguments("sha256", &[1, 2], &[3], &[4; 200]);
        assert_eq!(
            &encoded[..8],
            &[0x0a, 6, b's', b'h', b'a', b'2', b'5', b'6']
        );
        assert_eq!(&encoded[8..12], &[0x12, 2, 1, 2]);
        assert_eq!(&encoded[12..15], &[0x1a, 1, 3]);
        // 200 needs a two-byte varint length.
        assert_eq!(&encoded[15..18], &[0x22, 0xc8, 0x01]);
        assert_eq!(encoded.len(), 18 + 200);
    }

    #[test]
    fn decodes_results() {
        assert_eq!(decode_result(&[0x08, 0x01]), Some(true));
        assert_eq!(decode_result(&[]), Some(false));
        // result=false with an error string
        assert_eq!(decode_result(&[0x12, 3, b'b', b'a', b'd']), Some(false));
        assert_eq!(
            decode_result(&[0x08, 0x01, 0x12, 2, b'o', b'k']),
            Some(true)
        );
        assert_eq!(decode_result(&[0x12, 50, b'x']), None);
        assert_eq!(decode_result(&[0x0b, 0, 0, 0, 0]), None);
        assert_eq!(decode_result(&[0x08]), None);
    }
}
