//! JWS signature checks in pure Rust (RFC 7518 §3), over the signing input and the signature
//! bytes only: header and claims were parsed once, by `jws::parse`, and judged by our own claim
//! checks, so no algorithm may see (or refuse) more of the token than another.
//!
//! The primitives: `rsa_verify` (RSA, on crypto-bigint), `p256`/`p384` (ECDSA),
//! `ed25519-compact` and the `hmac-sha256`/`hmac-sha512` crates, whose hashes also feed RSA and
//! ECDSA.

use hmac_sha256::Hash as Sha256;
use hmac_sha512::sha384::Hash as Sha384;
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;

use super::alg::{Algorithm, Curve, KeyFamily};
use super::jwks::KeyMaterial;
use super::rsa_verify::{pkcs1v15_verifies, pss_verifies, Sha2};
pub use super::rsa_verify::{RsaKeyRefusal, RsaPublicKey, RSA_EXPONENT, RSA_MODULUS_BITS};

/// Whether `signature` is `alg`'s signature of `signing_input` under `key`. A key of another
/// kind than `alg` needs, or one outside what a JWKS load accepts, never verifies.
pub fn verifies(alg: Algorithm, key: &KeyMaterial, signing_input: &[u8], signature: &[u8]) -> bool {
    match (key, alg) {
        (KeyMaterial::Rsa { n, e, .. }, _) if alg.key_family() == KeyFamily::Rsa => {
            rsa_public_key(n, e)
                .is_ok_and(|public| rsa_verifies(alg, public, signing_input, signature))
        }
        (
            KeyMaterial::Ec {
                curve: Curve::P256,
                point,
                ..
            },
            Algorithm::ES256,
        ) => p256_verifies(point, signing_input, signature),
        (
            KeyMaterial::Ec {
                curve: Curve::P384,
                point,
                ..
            },
            Algorithm::ES384,
        ) => p384_verifies(point, signing_input, signature),
        (KeyMaterial::Ed25519 { public }, Algorithm::EdDSA) => {
            ed25519_verifies(public, signing_input, signature)
        }
        (KeyMaterial::Oct { secret }, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
            hmac_verifies(alg, secret, signing_input, signature)
        }
        _ => false,
    }
}

/// An RSA public key from its big-endian modulus and exponent, if meshguard accepts it.
pub fn rsa_public_key(n: &[u8], e: &[u8]) -> Result<RsaPublicKey, RsaKeyRefusal> {
    RsaPublicKey::new(n, e)
}

/// Whether `point` (uncompressed, `04||x||y`) is a point of `curve` that a key can have.
pub fn ec_point_accepted(curve: Curve, point: &[u8]) -> bool {
    match curve {
        Curve::P256 => p256_key(point).is_some(),
        Curve::P384 => p384_key(point).is_some(),
    }
}

/// The verifying key of an uncompressed point (`04||x||y`, as a JWK's x and y make it): x and y
/// below the field's prime, and y² = x³ + ax + b. `VerifyingKey::from_sec1_bytes` checks the
/// same, but reading compressed points too links the field's square root (25 KB of the .wasm),
/// which a JWK never needs.
macro_rules! ec_key {
    ($name:ident, $curve:ident) => {
        fn $name(point: &[u8]) -> Option<$curve::ecdsa::VerifyingKey> {
            use $curve::elliptic_curve::point::AffineCoordinates as _;
            let (&0x04, coordinates) = point.split_first()? else {
                return None;
            };
            let len = coordinates.len() / 2;
            if coordinates.len() != 2 * len {
                return None;
            }
            let (x, y) = coordinates.split_at(len);
            let x = $curve::FieldBytes::try_from(x).ok()?;
            let y = $curve::FieldBytes::try_from(y).ok()?;
            let point = $curve::AffinePoint::from_coordinates(&x, &y).into_option()?;
            $curve::ecdsa::VerifyingKey::from_affine(point).ok()
        }
    };
}
ec_key!(p256_key, p256);
ec_key!(p384_key, p384);

/// Whether `public` is a canonically encoded Ed25519 point of large order (what `verify`
/// requires of a key anyway; checked at load so a useless key is reported, not kept).
pub fn ed25519_key_accepted(public: &[u8]) -> bool {
    ed25519_compact::PublicKey::from_slice(public).is_ok_and(|key| key.validate().is_ok())
}

/// RS* are RSASSA-PKCS1-v1_5 (RFC 7518 §3.3), PS* RSASSA-PSS with MGF1 of the same hash and a
/// salt as long as the hash (§3.5). The signature must be exactly as long as the modulus.
fn rsa_verifies(alg: Algorithm, key: RsaPublicKey, input: &[u8], signature: &[u8]) -> bool {
    match alg {
        Algorithm::RS256 => pkcs1v15_verifies(&key, Sha2::Sha256, input, signature),
        Algorithm::RS384 => pkcs1v15_verifies(&key, Sha2::Sha384, input, signature),
        Algorithm::RS512 => pkcs1v15_verifies(&key, Sha2::Sha512, input, signature),
        Algorithm::PS256 => pss_verifies(&key, Sha2::Sha256, input, signature),
        Algorithm::PS384 => pss_verifies(&key, Sha2::Sha384, input, signature),
        Algorithm::PS512 => pss_verifies(&key, Sha2::Sha512, input, signature),
        _ => false,
    }
}

/// ECDSA P-256 with SHA-256 (ES256, RFC 7518 §3.4). The signature is JOSE's fixed `r||s`
/// (64 bytes), never DER. A high `s` is accepted, as BoringSSL (the host path) and FIPS 186
/// accept it: refusing it here alone would make the answer depend on the path again.
fn p256_verifies(point: &[u8], input: &[u8], signature: &[u8]) -> bool {
    let (Some(key), Ok(signature)) = (
        p256_key(point),
        p256::ecdsa::Signature::from_slice(signature),
    ) else {
        return false;
    };
    key.verify_prehash(&Sha256::hash(input), &signature).is_ok()
}

/// ECDSA P-384 with SHA-384 (ES384): as ES256, with a 96-byte `r||s`.
fn p384_verifies(point: &[u8], input: &[u8], signature: &[u8]) -> bool {
    let (Some(key), Ok(signature)) = (
        p384_key(point),
        p384::ecdsa::Signature::from_slice(signature),
    ) else {
        return false;
    };
    key.verify_prehash(&Sha384::hash(input), &signature).is_ok()
}

/// Ed25519 (EdDSA, RFC 8037 §3.1). `verify` refuses small-order keys and `R`, and a
/// non-canonical `S`.
fn ed25519_verifies(public: &[u8], input: &[u8], signature: &[u8]) -> bool {
    let (Ok(key), Ok(signature)) = (
        ed25519_compact::PublicKey::from_slice(public),
        ed25519_compact::Signature::from_slice(signature),
    ) else {
        return false;
    };
    key.verify(input, &signature).is_ok()
}

/// HMAC (HS256/384/512, RFC 7518 §3.2), compared in constant time by the HMAC crates. A key
/// shorter than the hash output is refused here too, not only when keys are chosen.
fn hmac_verifies(alg: Algorithm, secret: &[u8], input: &[u8], signature: &[u8]) -> bool {
    if secret.len() < alg.min_hmac_key_len() {
        return false;
    }
    match alg {
        Algorithm::HS256 => <&[u8; 32]>::try_from(signature)
            .is_ok_and(|tag| hmac_sha256::HMAC::verify(input, secret, tag)),
        Algorithm::HS384 => <&[u8; 48]>::try_from(signature)
            .is_ok_and(|tag| hmac_sha512::sha384::HMAC::verify(input, secret, tag)),
        Algorithm::HS512 => <&[u8; 64]>::try_from(signature)
            .is_ok_and(|tag| hmac_sha512::HMAC::verify(input, secret, tag)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use p256::elliptic_curve::scalar::IsHigh as _;
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    use rsa::traits::PublicKeyParts as _;

    use super::*;
    use crate::auth::b64;
    use crate::auth::der::ecdsa_signature_to_der;

    fn b64d(text: &str) -> Vec<u8> {
        b64::decode(text).unwrap()
    }

    fn p256_point(x: &str, y: &str) -> KeyMaterial {
        let mut point = vec![0x04];
        point.extend(b64d(x));
        point.extend(b64d(y));
        KeyMaterial::Ec {
            curve: Curve::P256,
            point,
            spki: Vec::new(),
        }
    }

    /// (algorithm, key, signing input, signature): the examples printed in RFC 7515 A.1 and
    /// A.3 and RFC 8037 A.4, made by other implementations than ours.
    fn rfc_examples() -> [(Algorithm, KeyMaterial, &'static str, Vec<u8>); 3] {
        [
            (
                Algorithm::HS256,
                KeyMaterial::Oct {
                    secret: b64d("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"),
                },
                "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
                b64d("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            ),
            (
                Algorithm::ES256,
                p256_point(
                    "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                    "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
                ),
                "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
                b64d("DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"),
            ),
            (
                Algorithm::EdDSA,
                KeyMaterial::Ed25519 {
                    public: b64d("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
                },
                "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc",
                b64d("hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"),
            ),
        ]
    }

    #[test]
    fn the_rfc_examples_verify_and_a_changed_input_does_not() {
        for (alg, key, input, signature) in rfc_examples() {
            assert!(verifies(alg, &key, input.as_bytes(), &signature), "{alg}");
            let changed = input.replacen('e', "f", 1);
            assert!(
                !verifies(alg, &key, changed.as_bytes(), &signature),
                "{alg}"
            );
        }
    }

    #[test]
    fn an_ecdsa_signature_in_der_or_of_the_wrong_length_is_refused() {
        let [_, (alg, key, input, signature), _] = rfc_examples();
        let der = ecdsa_signature_to_der(Curve::P256, &signature).unwrap();
        let mut padded = signature.clone();
        padded.push(0);
        for wrong in [der, padded, signature[..63].to_vec(), Vec::new()] {
            assert!(!verifies(alg, &key, input.as_bytes(), &wrong), "{wrong:?}");
        }
    }

    #[test]
    fn an_ecdsa_signature_with_a_high_s_is_accepted_as_boringssl_accepts_it() {
        // For every valid (r, s), (r, n - s) is valid too; exactly one of the two has a high s.
        let [_, (alg, key, input, signature), _] = rfc_examples();
        let parsed = p256::ecdsa::Signature::from_slice(&signature).unwrap();
        let (r, s) = parsed.split_scalars();
        let twin = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
        assert_ne!(bool::from(s.is_high()), bool::from((-s).is_high()));
        assert!(verifies(alg, &key, input.as_bytes(), &twin.to_bytes()));
    }

    /// Points of both curves: valid ones, each with one bit flipped, coordinates at or above
    /// the prime, all zeros, and points of the wrong length.
    fn ec_points(curve: Curve) -> Vec<Vec<u8>> {
        // Secret scalars 0x0101..01 to 0x1010..10: below both curves' orders.
        let valid: Vec<Vec<u8>> = (1..=16u8)
            .map(|byte| match curve {
                Curve::P256 => p256::ecdsa::SigningKey::from_slice(&[byte; 32])
                    .unwrap()
                    .verifying_key()
                    .to_sec1_point(false)
                    .as_bytes()
                    .to_vec(),
                Curve::P384 => p384::ecdsa::SigningKey::from_slice(&[byte; 48])
                    .unwrap()
                    .verifying_key()
                    .to_sec1_point(false)
                    .as_bytes()
                    .to_vec(),
            })
            .collect();
        let len = curve.field_len();
        let mut points = valid.clone();
        for point in &valid {
            for bit in (0..8 * point.len()).step_by(7) {
                let mut flipped = point.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                points.push(flipped);
            }
        }
        let mut all_ones = vec![0x04];
        all_ones.extend(vec![0xff; 2 * len]);
        let mut zeros = vec![0x04];
        zeros.extend(vec![0; 2 * len]);
        points.extend([all_ones, zeros, vec![0x04], Vec::new()]);
        points
    }

    #[test]
    fn the_ec_point_check_accepts_exactly_what_from_sec1_bytes_accepts() {
        for curve in [Curve::P256, Curve::P384] {
            let points = ec_points(curve);
            let accepted = points
                .iter()
                .filter(|p| ec_point_accepted(curve, p))
                .count();
            assert_eq!(accepted, 16, "only the valid points, for {curve:?}");
            for point in points {
                let sec1 = match curve {
                    Curve::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).is_ok(),
                    Curve::P384 => p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).is_ok(),
                };
                assert_eq!(
                    ec_point_accepted(curve, &point),
                    sec1,
                    "{curve:?} {point:?}"
                );
            }
        }
    }

    #[test]
    fn rsa_keys_outside_2048_to_4096_bits_or_without_e_65537_are_refused() {
        let small = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let n = small.n().to_bytes_be();
        let e = small.e().to_bytes_be();
        let input = b"header.payload";
        let signature = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(small)
            .sign(input)
            .to_vec();
        let key = KeyMaterial::Rsa {
            n: n.clone(),
            e: e.clone(),
            spki: Vec::new(),
        };
        assert!(!verifies(Algorithm::RS256, &key, input, &signature));
        assert_eq!(
            rsa_public_key(&n, &e).err(),
            Some(RsaKeyRefusal::ModulusSize(1024))
        );

        let mut huge = vec![0x01];
        huge.extend([0xff; 512]);
        assert_eq!(
            rsa_public_key(&huge, &RSA_EXPONENT).err(),
            Some(RsaKeyRefusal::ModulusSize(4097))
        );
        let fits = [0xff; 256];
        assert_eq!(
            rsa_public_key(&fits, &[0x03]).err(),
            Some(RsaKeyRefusal::Exponent)
        );
        let mut even = [0xff; 256];
        even[255] = 0xfe;
        assert_eq!(
            rsa_public_key(&even, &RSA_EXPONENT).err(),
            Some(RsaKeyRefusal::EvenModulus)
        );
        assert_eq!(
            RsaKeyRefusal::EvenModulus.to_string(),
            "RSA key refused: invalid modulus",
            "as the rsa crate's refusal read"
        );
    }

    #[test]
    fn an_hmac_key_shorter_than_the_hash_is_refused_by_the_verifier_too() {
        let input = b"header.payload";
        for (alg, secret_len, verdict) in [
            (Algorithm::HS256, 31, false),
            (Algorithm::HS256, 32, true),
            (Algorithm::HS384, 47, false),
            (Algorithm::HS384, 48, true),
            (Algorithm::HS512, 63, false),
            (Algorithm::HS512, 64, true),
        ] {
            let secret = vec![0x5a; secret_len];
            let tag = match alg {
                Algorithm::HS256 => hmac_sha256::HMAC::mac(input, &secret).to_vec(),
                Algorithm::HS384 => hmac_sha512::sha384::HMAC::mac(input, &secret).to_vec(),
                _ => hmac_sha512::HMAC::mac(input, &secret).to_vec(),
            };
            let key = KeyMaterial::Oct { secret };
            assert_eq!(
                verifies(alg, &key, input, &tag),
                verdict,
                "{alg} {secret_len}"
            );
            assert!(!verifies(alg, &key, input, &tag[1..]), "{alg} short tag");
        }
    }
}
