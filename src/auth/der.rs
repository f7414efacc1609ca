//! The few DER structures Envoy's `verify_signature` needs: a SubjectPublicKeyInfo built from
//! JWK parts, and an ECDSA signature turned from JOSE's fixed `r||s` into DER.

use super::alg::Curve;

const RSA_ENCRYPTION_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const EC_PUBLIC_KEY_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let first = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        let significant = bytes.get(first..).unwrap_or(&[]);
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER holding the unsigned big-endian `magnitude`.
fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let start = magnitude
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(magnitude.len());
    let trimmed = magnitude.get(start..).unwrap_or(&[]);
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    match trimmed.first() {
        None => content.push(0),
        Some(&high) if high & 0x80 != 0 => content.push(0),
        Some(_) => {}
    }
    content.extend_from_slice(trimmed);
    tlv(TAG_INTEGER, &content)
}

fn spki(algorithm_identifier: &[u8], key_bits: &[u8]) -> Vec<u8> {
    let mut bit_string = Vec::with_capacity(key_bits.len() + 1);
    bit_string.push(0); // no unused bits
    bit_string.extend_from_slice(key_bits);
    let mut body = tlv(TAG_SEQUENCE, algorithm_identifier);
    body.extend(tlv(TAG_BIT_STRING, &bit_string));
    tlv(TAG_SEQUENCE, &body)
}

/// SubjectPublicKeyInfo for an RSA key given its modulus and exponent (big-endian).
pub fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let mut algorithm = tlv(TAG_OID, RSA_ENCRYPTION_OID);
    algorithm.extend(tlv(TAG_NULL, &[]));
    let mut key = unsigned_integer(modulus);
    key.extend(unsigned_integer(exponent));
    spki(&algorithm, &tlv(TAG_SEQUENCE, &key))
}

/// SubjectPublicKeyInfo for an EC key given its uncompressed point `04||x||y`.
pub fn ec_spki(curve: Curve, uncompressed_point: &[u8]) -> Vec<u8> {
    let curve_oid = match curve {
        Curve::P256 => P256_OID,
        Curve::P384 => P384_OID,
    };
    let mut algorithm = tlv(TAG_OID, EC_PUBLIC_KEY_OID);
    algorithm.extend(tlv(TAG_OID, curve_oid));
    spki(&algorithm, uncompressed_point)
}

/// JOSE ECDSA signatures are `r||s`, each exactly the curve's field length (RFC 7518 §3.4);
/// BoringSSL wants `SEQUENCE { INTEGER r, INTEGER s }`. A wrong length is `None`.
pub fn ecdsa_signature_to_der(curve: Curve, raw: &[u8]) -> Option<Vec<u8>> {
    let half = curve.field_len();
    if raw.len() != 2 * half {
        return None;
    }
    let (r, s) = raw.split_at(half);
    let mut body = unsigned_integer(r);
    body.extend(unsigned_integer(s));
    Some(tlv(TAG_SEQUENCE, &body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_simple::prelude::*;

    #[test]
    fn rsa_spki_is_read_back_by_an_independent_parser() {
        let key = RS256KeyPair::generate(2048).unwrap();
        let components = key.public_key().to_components();
        let der = rsa_spki(&components.n, &components.e);
        let parsed = RS256PublicKey::from_der(&der).unwrap().to_components();
        assert_eq!(parsed.n, components.n);
        assert_eq!(parsed.e, components.e);
    }

    #[test]
    fn ec_spki_is_read_back_for_both_curves() {
        let p256 = ES256KeyPair::generate();
        let point = p256.public_key().public_key().to_bytes_uncompressed();
        let der = ec_spki(Curve::P256, &point);
        let back = ES256PublicKey::from_der(&der).unwrap();
        assert_eq!(back.public_key().to_bytes_uncompressed(), point);

        let p384 = ES384KeyPair::generate();
        let point = p384.public_key().public_key().to_bytes_uncompressed();
        let der = ec_spki(Curve::P384, &point);
        let back = ES384PublicKey::from_der(&der).unwrap();
        assert_eq!(back.public_key().to_bytes_uncompressed(), point);
    }

    #[test]
    fn ecdsa_signature_gets_sign_padding_and_minimal_integers() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r has its high bit set: needs a 0x00 pad
        raw[63] = 0x01; // s is 1: leading zeros trimmed
        let der = ecdsa_signature_to_der(Curve::P256, &raw).unwrap();
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x01]);
        assert_eq!(der[1] as usize, der.len() - 2);
    }

    #[test]
    fn ecdsa_signature_of_the_wrong_length_is_refused() {
        assert!(ecdsa_signature_to_der(Curve::P256, &[1u8; 63]).is_none());
        assert!(ecdsa_signature_to_der(Curve::P384, &[1u8; 64]).is_none());
    }

    #[test]
    fn long_form_lengths() {
        let mut out = Vec::new();
        push_len(&mut out, 300);
        assert_eq!(out, vec![0x82, 0x01, 0x2c]);
        out.clear();
        push_len(&mut out, 200);
        assert_eq!(out, vec![0x81, 200]);
    }
}
