//! JWS signature checks in pure Rust (RFC 7518 §3), over the signing input and the signature
//! bytes only: header and claims were parsed once, by `jws::parse`, and judged by our own claim
//! checks, so no algorithm may see (or refuse) more of the token than another.
//!
//! The primitives: `rsa_verify` (RSA, meshguard's own verify-only Montgomery code),
//! `p256`/`p384` (ECDSA, only with the feature `portable-ecdsa`: the shipped module leaves
//! ES256/ES384 to the host's `verify_signature`, see `verifies_in_wasm`), `curve25519-dalek` (Ed25519's curve arithmetic, see `ed25519_verifies`
//! for why) and the `hmac-sha256`/`hmac-sha512` crates, whose hashes also feed RSA, ECDSA and
//! Ed25519.

#[cfg(feature = "portable-ecdsa")]
use hmac_sha256::Hash as Sha256;
#[cfg(feature = "portable-ecdsa")]
use hmac_sha512::sha384::Hash as Sha384;
use hmac_sha512::Hash as Sha512;
#[cfg(feature = "portable-ecdsa")]
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;

use super::alg::{Algorithm, Curve, KeyFamily};
use super::ec_point;
use super::jwks::KeyMaterial;
use super::rsa_verify::{pkcs1v15_verifies, pss_verifies, Sha2};
pub use super::rsa_verify::{RsaKeyRefusal, RsaPublicKey, RSA_EXPONENT, RSA_MODULUS_BITS};
use crate::config::{KeySource, Provider};

/// Whether this build verifies ES256/ES384 in Wasm (feature `portable-ecdsa`). Without it,
/// only the host's `verify_signature` (Envoy >= 1.31) checks them.
pub const ECDSA_IN_WASM: bool = cfg!(feature = "portable-ecdsa");

/// Whether `verifies` can check `alg` in this build: every algorithm but ES256/ES384 when
/// `ECDSA_IN_WASM` is false.
pub fn verifies_in_wasm(alg: Algorithm) -> bool {
    ECDSA_IN_WASM || !matches!(alg.key_family(), KeyFamily::Ec(_))
}

/// The algorithms `provider` allows that this build cannot verify without the host's
/// `verify_signature`, and that its keys may need: for `local_jwks`, those some key fits; for
/// `remote_jwks`, all (the set is not known before it is fetched). Empty when nothing is lost.
fn needs_host_crypto(provider: &Provider) -> Vec<Algorithm> {
    provider
        .algorithms
        .iter()
        .copied()
        .filter(|&alg| !verifies_in_wasm(alg))
        .filter(|&alg| match &provider.keys {
            KeySource::Local(set) => set.keys.iter().any(|key| key.fits(alg)),
            KeySource::Remote(_) => true,
        })
        .collect()
}

/// The operator's warning for a provider whose ES256/ES384 tokens this VM will refuse: the host
/// has no `verify_signature` and this build no ECDSA of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCryptoMissing<'p> {
    pub provider: &'p str,
    pub algorithms: Vec<Algorithm>,
}

impl HostCryptoMissing<'_> {
    /// The warning for `provider` on a host without `verify_signature`, if it needs one.
    pub fn of(provider: &Provider) -> Option<HostCryptoMissing<'_>> {
        let algorithms = needs_host_crypto(provider);
        (!algorithms.is_empty()).then_some(HostCryptoMissing {
            provider: &provider.name,
            algorithms,
        })
    }
}

impl std::fmt::Display for HostCryptoMissing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.algorithms.iter().map(|alg| alg.name()).collect();
        let names = names.join("/");
        write!(
            f,
            "provider {:?}: its {names} tokens will be refused (401): ECDSA needs Envoy ≥ 1.31's \
             verify_signature, which this host lacks, or a module built with --features \
             portable-ecdsa",
            self.provider
        )
    }
}

/// Whether `signature` is `alg`'s signature of `signing_input` under `key`. A key of another
/// kind than `alg` needs, or one outside what a JWKS load accepts, never verifies; nor does an
/// algorithm this build cannot check (`verifies_in_wasm`).
pub fn verifies(alg: Algorithm, key: &KeyMaterial, signing_input: &[u8], signature: &[u8]) -> bool {
    match (key, alg) {
        (KeyMaterial::Rsa { n, e, .. }, _) if alg.key_family() == KeyFamily::Rsa => {
            rsa_public_key(n, e)
                .is_ok_and(|public| rsa_verifies(alg, public, signing_input, signature))
        }
        #[cfg(feature = "portable-ecdsa")]
        (
            KeyMaterial::Ec {
                curve: Curve::P256,
                point,
                ..
            },
            Algorithm::ES256,
        ) => p256_verifies(point, signing_input, signature),
        #[cfg(feature = "portable-ecdsa")]
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

/// Whether `point` (uncompressed, `04||x||y`) is a point of `curve` that a key can have:
/// meshguard's own check (`ec_point`), the same in every build, with or without the ECDSA
/// verifier below.
pub fn ec_point_accepted(curve: Curve, point: &[u8]) -> bool {
    ec_point::on_curve(curve, point)
}

/// The verifying key of an uncompressed point (`04||x||y`, as a JWK's x and y make it): x and y
/// below the field's prime, and y² = x³ + ax + b. `VerifyingKey::from_sec1_bytes` checks the
/// same, but reading compressed points too links the field's square root (25 KB of the .wasm),
/// which a JWK never needs.
#[cfg(feature = "portable-ecdsa")]
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
#[cfg(feature = "portable-ecdsa")]
ec_key!(p256_key, p256);
#[cfg(feature = "portable-ecdsa")]
ec_key!(p384_key, p384);

/// Whether `public` is a canonically encoded Ed25519 point of large order (what `verify`
/// requires of a key anyway; checked at load so a useless key is reported, not kept).
pub fn ed25519_key_accepted(public: &[u8]) -> bool {
    <&[u8; 32]>::try_from(public).is_ok_and(|public| ed25519_point(public).is_some())
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

#[cfg(feature = "portable-ecdsa")]
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

#[cfg(feature = "portable-ecdsa")]
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

/// Ed25519 (EdDSA, RFC 8037 §3.1, RFC 8032 §5.1.7) with the acceptance rules of
/// ed25519-compact, which verified it until curve25519-dalek's 32-bit field arithmetic (a native
/// `i64.mul` in Wasm, where ed25519-compact's 128-bit products are calls) made it about twice as
/// fast in V8: `S` below the group order `L`; the key `A` and `R` canonical encodings of points not
/// of small order; and the cofactored equation `[8](sB - hA - R) = 0`, `h` = SHA-512(R‖A‖M) mod `L`.
/// (ed25519-dalek's `verify_strict` differs: it checks `sB - hA = R` without the cofactor and
/// takes a non-canonical `A`.)
fn ed25519_verifies(public: &[u8], input: &[u8], signature: &[u8]) -> bool {
    use curve25519_dalek::{EdwardsPoint, Scalar};

    let (Ok(public), Some((r, s))) = (
        <&[u8; 32]>::try_from(public),
        <&[u8; 64]>::try_from(signature)
            .ok()
            .and_then(|signature| signature.split_first_chunk::<32>()),
    ) else {
        return false;
    };
    let Some(s) = <[u8; 32]>::try_from(s)
        .ok()
        .and_then(|s| Option::<Scalar>::from(Scalar::from_canonical_bytes(s)))
    else {
        return false;
    };
    let (Some(a), Some(r_point)) = (ed25519_point(public), ed25519_point(r)) else {
        return false;
    };
    let mut hash = Sha512::new();
    hash.update(r);
    hash.update(public);
    hash.update(input);
    let h = Scalar::from_bytes_mod_order_wide(&hash.finalize());
    (EdwardsPoint::vartime_double_scalar_mul_basepoint(&h, &-a, &s) - r_point).is_small_order()
}

/// The point `bytes` encodes, if the encoding is canonical (`y` below p = 2^255 - 19: dalek's
/// decompression alone would take `y` mod p) and the point is not of small order.
fn ed25519_point(bytes: &[u8; 32]) -> Option<curve25519_dalek::EdwardsPoint> {
    let [first, middle @ .., last] = *bytes;
    // The only encodings of y >= p: 0xed..=0xff, then thirty 0xff, then 0x7f (sign bit aside).
    let non_canonical = last & 0x7f == 0x7f && middle.iter().all(|&b| b == 0xff) && first >= 0xed;
    if non_canonical {
        return None;
    }
    curve25519_dalek::edwards::CompressedEdwardsY(*bytes)
        .decompress()
        .filter(|point| !point.is_small_order())
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
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    use rsa::traits::PublicKeyParts as _;
    use serde_json::json;

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
            // ES256 without `portable-ecdsa`: refused, valid or not.
            let valid = verifies_in_wasm(alg);
            assert_eq!(
                verifies(alg, &key, input.as_bytes(), &signature),
                valid,
                "{alg}"
            );
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

    #[cfg(feature = "portable-ecdsa")]
    #[test]
    fn an_ecdsa_signature_with_a_high_s_is_accepted_as_boringssl_accepts_it() {
        use p256::elliptic_curve::scalar::IsHigh as _;

        // For every valid (r, s), (r, n - s) is valid too; exactly one of the two has a high s.
        let [_, (alg, key, input, signature), _] = rfc_examples();
        let parsed = p256::ecdsa::Signature::from_slice(&signature).unwrap();
        let (r, s) = parsed.split_scalars();
        let twin = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
        assert_ne!(bool::from(s.is_high()), bool::from((-s).is_high()));
        assert!(verifies(alg, &key, input.as_bytes(), &twin.to_bytes()));
    }

    #[test]
    fn providers_whose_ecdsa_tokens_need_the_host_are_named_once_each() {
        use crate::auth::testkeys::{ec_jwk, jwks_json, rsa_jwk};
        let local = |keys: &[serde_json::Value]| json!({"inline": jwks_json(keys)});
        let remote = json!({"cluster": "idp", "uri": "http://idp.test/jwks.json"});
        let document = json!({
            "providers": {
                "a_ec_local": {"issuer": "a", "local_jwks": local(&[ec_jwk("e"), rsa_jwk("r")])},
                "b_rsa_local": {"issuer": "b", "local_jwks": local(&[rsa_jwk("r")])},
                "c_remote": {"issuer": "c", "remote_jwks": remote},
                "d_remote_rsa": {"issuer": "d", "remote_jwks": remote, "algorithms": ["RS256"]},
                "e_ec_not_allowed": {"issuer": "e", "local_jwks": local(&[ec_jwk("e"), rsa_jwk("r")]),
                                     "algorithms": ["RS256"]}
            },
            "rules": [{"name": "api", "match": {"prefix": "/"}, "allow_unauthenticated": true}]
        });
        let config = crate::config::parse(document.to_string().as_bytes()).unwrap();
        let mut warnings: Vec<String> = config
            .providers
            .iter()
            .filter_map(HostCryptoMissing::of)
            .map(|missing| missing.to_string())
            .collect();
        warnings.sort();
        let expected: &[&str] = if ECDSA_IN_WASM {
            &[]
        } else {
            &[
                "provider \"a_ec_local\": its ES256 tokens will be refused (401): ECDSA needs \
                 Envoy ≥ 1.31's verify_signature, which this host lacks, or a module built with \
                 --features portable-ecdsa",
                "provider \"c_remote\": its ES256/ES384 tokens will be refused (401): ECDSA \
                 needs Envoy ≥ 1.31's verify_signature, which this host lacks, or a module built \
                 with --features portable-ecdsa",
            ]
        };
        assert_eq!(warnings, expected);
    }

    #[cfg(feature = "portable-ecdsa")]
    #[test]
    fn the_verifier_takes_as_a_key_exactly_the_points_a_jwks_load_accepts() {
        for curve in [Curve::P256, Curve::P384] {
            for point in ec_point::tests::points(curve) {
                let verifier_key = match curve {
                    Curve::P256 => p256_key(&point).is_some(),
                    Curve::P384 => p384_key(&point).is_some(),
                };
                assert_eq!(
                    ec_point_accepted(curve, &point),
                    verifier_key,
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

/// The Ed25519 verifier against the one it replaced (ed25519-compact's `verify` and
/// `validate`): RFC 8032's vectors, and every edge case where Ed25519 verifiers are known to
/// differ ("Taming the many EdDSAs", Chalkias et al. 2020), give the same answer from both.
#[cfg(test)]
mod ed25519_tests {
    use curve25519_dalek::constants::EIGHT_TORSION;
    use curve25519_dalek::edwards::CompressedEdwardsY;
    use curve25519_dalek::{EdwardsPoint, Scalar};

    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn compact_verifies(public: &[u8], input: &[u8], signature: &[u8]) -> bool {
        let (Ok(key), Ok(signature)) = (
            ed25519_compact::PublicKey::from_slice(public),
            ed25519_compact::Signature::from_slice(signature),
        ) else {
            return false;
        };
        key.verify(input, &signature).is_ok()
    }

    fn compact_key_accepted(public: &[u8]) -> bool {
        ed25519_compact::PublicKey::from_slice(public).is_ok_and(|key| key.validate().is_ok())
    }

    /// Both verifiers' answer, which must be the same.
    fn verdict(public: &[u8], input: &[u8], signature: &[u8]) -> bool {
        let new = ed25519_verifies(public, input, signature);
        assert_eq!(
            new,
            compact_verifies(public, input, signature),
            "A {public:02x?} signature {signature:02x?}"
        );
        new
    }

    fn key_verdict(public: &[u8]) -> bool {
        let new = ed25519_key_accepted(public);
        assert_eq!(new, compact_key_accepted(public), "A {public:02x?}");
        new
    }

    /// A signature made the way RFC 8032 signs, but with our own scalars, so that keys and `R`
    /// with a small-order component (or of small order) can be built: `s = r + h·a`.
    fn sign_raw(
        a: Scalar,
        public: [u8; 32],
        r: Scalar,
        r_encoded: [u8; 32],
        input: &[u8],
    ) -> Vec<u8> {
        let mut hash = Sha512::new();
        hash.update(r_encoded);
        hash.update(public);
        hash.update(input);
        let h = Scalar::from_bytes_mod_order_wide(&hash.finalize());
        [r_encoded, (r + h * a).to_bytes()].concat()
    }

    const SECRET: [u8; 32] = [7; 32];
    const NONCE: [u8; 32] = [9; 32];

    fn honest_key() -> (Scalar, EdwardsPoint) {
        let a = Scalar::from_bytes_mod_order(SECRET);
        (a, EdwardsPoint::mul_base(&a))
    }

    #[test]
    fn rfc_8032_test_vectors_verify_and_a_changed_message_or_signature_does_not() {
        // RFC 8032 §7.1: TEST 1, 2, 3 and SHA(abc) (seed, public key, message, signature).
        for (seed, public, message, signature) in [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
            (
                "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
                "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
                "af82",
                "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
            ),
            (
                "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
                "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
                "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
            ),
        ] {
            let (public, message, signature) = (hex(public), hex(message), hex(signature));
            // The vectors are copied right: the seed gives this key and this signature.
            let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::from_slice(&hex(seed)).unwrap());
            assert_eq!(pair.pk.as_ref(), public.as_slice());
            assert_eq!(pair.sk.sign(&message, None).as_ref(), signature.as_slice());

            assert!(key_verdict(&public));
            assert!(verdict(&public, &message, &signature));
            let key = KeyMaterial::Ed25519 { public: public.clone() };
            assert!(verifies(Algorithm::EdDSA, &key, &message, &signature));
            let mut longer = message.clone();
            longer.push(0);
            assert!(!verdict(&public, &longer, &signature));
            for bit in [0, 100, 255, 256, 300, 511] {
                let mut flipped = signature.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(!verdict(&public, &message, &flipped), "bit {bit}");
            }
            assert!(!verdict(&public, &message, &signature[..63]));
            assert!(!verdict(&public[..31], &message, &signature));
        }
    }

    #[test]
    fn a_non_canonical_s_is_refused_though_s_minus_l_verifies() {
        // S + L is S for the group, so only the canonical-S rule refuses it (RFC 8032 §5.1.7).
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let public = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let signature = hex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b");
        assert!(verdict(&public, b"", &signature));
        let mut plus_l = signature.clone();
        let mut carry = 0u16;
        for (byte, l) in plus_l[32..].iter_mut().zip(L) {
            let sum = u16::from(*byte) + u16::from(l) + carry;
            *byte = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0);
        assert!(!verdict(&public, b"", &plus_l));
        let mut exactly_l = signature[..32].to_vec();
        exactly_l.extend(L);
        assert!(!verdict(&public, b"", &exactly_l));
    }

    #[test]
    fn a_small_order_key_or_r_is_refused_though_the_equation_holds() {
        let input = b"any message at all";
        let (a, honest) = honest_key();
        let honest = honest.compress().to_bytes();
        // Each point's encoding, and with the sign of x flipped: for the two points with x = 0
        // that is a "negative zero" no encoder writes, which decodes all the same.
        let encodings = EIGHT_TORSION.into_iter().flat_map(|torsion| {
            let canonical = torsion.compress().to_bytes();
            let mut flipped = canonical;
            flipped[31] ^= 0x80;
            [canonical, flipped]
        });
        for small in encodings {
            assert!(!key_verdict(&small), "{small:02x?}");
            // A small-order key with R = the identity and s = 0 satisfies the cofactored
            // equation for every message: only the small-order rule refuses it.
            let identity = EdwardsPoint::default().compress().to_bytes();
            assert!(!verdict(&small, input, &[identity, [0; 32]].concat()));
            // An honest key and a small-order R with s = h·a: sB - hA - R = -R, of small order.
            let forged = sign_raw(a, honest, Scalar::ZERO, small, input);
            assert!(!verdict(&honest, input, &forged), "{small:02x?}");
        }
    }

    #[test]
    fn a_key_or_r_with_a_small_order_component_verifies_under_the_cofactored_equation() {
        // ed25519-dalek's verify_strict refuses these 7 times in 8 (sB - hA = R without the
        // cofactor); ed25519-compact, and so meshguard, accepts them.
        let input = b"mixed order";
        let (a, honest) = honest_key();
        let r = Scalar::from_bytes_mod_order(NONCE);
        for torsion in EIGHT_TORSION.into_iter().skip(1) {
            let mixed_key = (honest + torsion).compress().to_bytes();
            assert!(key_verdict(&mixed_key));
            let r_encoded = EdwardsPoint::mul_base(&r).compress().to_bytes();
            let signature = sign_raw(a, mixed_key, r, r_encoded, input);
            assert!(verdict(&mixed_key, input, &signature));

            let honest_key = honest.compress().to_bytes();
            let mixed_r = (EdwardsPoint::mul_base(&r) + torsion).compress().to_bytes();
            let signature = sign_raw(a, honest_key, r, mixed_r, input);
            assert!(verdict(&honest_key, input, &signature));
        }
    }

    #[test]
    fn a_non_canonical_encoding_of_a_point_is_refused_though_it_decodes() {
        // y = p + k for k = 0..=18 (p = 2^255 - 19), either sign: the only encodings of y >= p.
        let mut decodes_to_large_order = 0;
        for k in 0..=18u8 {
            for sign in [0, 0x80] {
                let mut encoded = [0xff; 32];
                encoded[0] = 0xed + k;
                encoded[31] = 0x7f | sign;
                if CompressedEdwardsY(encoded)
                    .decompress()
                    .is_some_and(|point| !point.is_small_order())
                {
                    decodes_to_large_order += 1;
                }
                assert!(!key_verdict(&encoded), "{encoded:02x?}");
                let (a, honest) = honest_key();
                let honest = honest.compress().to_bytes();
                let signature = sign_raw(a, honest, Scalar::ONE, encoded, b"m");
                assert!(!verdict(&honest, b"m", &signature));
            }
        }
        // Without the canonical check, dalek's decompression would have taken some of them.
        assert!(decodes_to_large_order > 0);
    }

    #[test]
    fn many_keys_messages_and_flipped_bits_get_the_same_answer_from_both() {
        for round in 0..24u8 {
            let pair =
                ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([round + 1; 32]));
            let message: Vec<u8> = (0..u16::from(round) * 13)
                .map(|i| (i % 251) as u8)
                .collect();
            let signature = pair.sk.sign(&message, None);
            assert!(key_verdict(pair.pk.as_ref()));
            assert!(verdict(pair.pk.as_ref(), &message, signature.as_ref()));
            for bit in (usize::from(round)..512).step_by(29) {
                let mut flipped = signature.to_vec();
                flipped[bit / 8] ^= 1 << (bit % 8);
                verdict(pair.pk.as_ref(), &message, &flipped);
                let mut key = pair.pk.to_vec();
                key[bit % 256 / 8] ^= 1 << (bit % 8);
                key_verdict(&key);
                verdict(&key, &message, signature.as_ref());
            }
        }
    }
}
