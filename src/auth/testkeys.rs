//! Keys and tokens for unit tests and the micro-benchmarks (feature `testkeys`). (Integration
//! tests sign with an independent JOSE library.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::OnceLock;

use ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use jwt_simple::prelude::*;
use p256::ecdsa::signature::Signer as _;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::sha2::{Sha256, Sha384, Sha512};
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _};
use serde_json::{json, Value};

use super::alg::{Algorithm, Curve, KeyFamily};

/// One key of every kind, so a token of any algorithm can be signed.
pub struct TestKeys {
    pub rsa: RS256KeyPair,
    pub ec: ES256KeyPair,
    pub ec384: ES384KeyPair,
    pub ed: Ed25519KeyPair,
    /// Long enough for HS512 (RFC 7518 §3.2: at least the hash's output length).
    pub hmac: [u8; 64],
}

impl TestKeys {
    fn generate(hmac: [u8; 64]) -> TestKeys {
        TestKeys {
            rsa: RS256KeyPair::generate(2048).unwrap(),
            ec: ES256KeyPair::generate(),
            ec384: ES384KeyPair::generate(),
            ed: Ed25519KeyPair::generate(),
            hmac,
        }
    }
}

/// The keys the tests' JWKS publish.
pub fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| TestKeys::generate([0x4b; 64]))
}

/// Keys of the same kinds that no JWKS publishes: "signed by another key".
pub fn other_keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| TestKeys::generate([0x6f; 64]))
}

pub fn b64e(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

pub fn rsa_jwk(kid: &str) -> Value {
    public_jwk(keys(), KeyFamily::Rsa, kid)
}

pub fn ec_jwk(kid: &str) -> Value {
    public_jwk(keys(), Algorithm::ES256.key_family(), kid)
}

pub fn ed_jwk(kid: &str) -> Value {
    public_jwk(keys(), KeyFamily::Ed25519, kid)
}

pub fn oct_jwk(kid: &str, secret: &[u8]) -> Value {
    json!({"kty": "oct", "kid": kid, "k": b64e(secret)})
}

/// The JWK of `keys`' key of this family (for `Oct`, the whole 64-byte secret).
pub fn public_jwk(keys: &TestKeys, family: KeyFamily, kid: &str) -> Value {
    match family {
        KeyFamily::Rsa => {
            let parts = keys.rsa.public_key().to_components();
            json!({"kty": "RSA", "kid": kid, "n": b64e(&parts.n), "e": b64e(&parts.e)})
        }
        KeyFamily::Ec(curve) => {
            let (name, point) = match curve {
                Curve::P256 => (
                    "P-256",
                    keys.ec.public_key().public_key().to_bytes_uncompressed(),
                ),
                Curve::P384 => (
                    "P-384",
                    keys.ec384.public_key().public_key().to_bytes_uncompressed(),
                ),
            };
            let half = (point.len() - 1) / 2;
            json!({"kty": "EC", "crv": name, "kid": kid,
                   "x": b64e(&point[1..1 + half]), "y": b64e(&point[1 + half..])})
        }
        KeyFamily::Ed25519 => {
            json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64e(&keys.ed.public_key().to_bytes())})
        }
        KeyFamily::Oct => oct_jwk(kid, &keys.hmac),
    }
}

pub fn jwks_json(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// A token with exactly this header and payload JSON and these signature bytes.
pub fn raw_token(header: &str, payload: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64e(header.as_bytes()),
        b64e(payload.as_bytes()),
        b64e(signature)
    )
}

/// An HS256 token over exactly this header and payload JSON.
pub fn hs256_token(header: &str, payload: &str, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64e(header.as_bytes()), b64e(payload.as_bytes()));
    let mac = hmac_sha256::HMAC::mac(input.as_bytes(), secret);
    format!("{input}.{}", b64e(&mac))
}

/// A token over exactly this header and payload JSON, signed for `alg` with `keys`' key of that
/// kind, however odd the JSON (jwt-simple's signers write their own header). The header should
/// name `alg`; nothing here checks that it does.
pub fn signed_token(keys: &TestKeys, alg: Algorithm, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64e(header.as_bytes()), b64e(payload.as_bytes()));
    let signature = sign(keys, alg, input.as_bytes());
    format!("{input}.{}", b64e(&signature))
}

/// The JWS signature (RFC 7518 §3) of `input`, made with RustCrypto's `rsa` and sha2 digests,
/// p256/p384's RFC 6979 signers, ed25519-compact and the HMAC crates.
fn sign(keys: &TestKeys, alg: Algorithm, input: &[u8]) -> Vec<u8> {
    let rsa = || rsa::RsaPrivateKey::from_pkcs8_der(&keys.rsa.to_der().unwrap()).unwrap();
    let mut rng = rsa::rand_core::OsRng;
    match alg {
        Algorithm::RS256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(rsa())
            .sign(input)
            .to_vec(),
        Algorithm::RS384 => rsa::pkcs1v15::SigningKey::<Sha384>::new(rsa())
            .sign(input)
            .to_vec(),
        Algorithm::RS512 => rsa::pkcs1v15::SigningKey::<Sha512>::new(rsa())
            .sign(input)
            .to_vec(),
        // The salt is as long as the hash (RFC 7518 §3.5), `SigningKey::new`'s default.
        Algorithm::PS256 => rsa::pss::SigningKey::<Sha256>::new(rsa())
            .sign_with_rng(&mut rng, input)
            .to_vec(),
        Algorithm::PS384 => rsa::pss::SigningKey::<Sha384>::new(rsa())
            .sign_with_rng(&mut rng, input)
            .to_vec(),
        Algorithm::PS512 => rsa::pss::SigningKey::<Sha512>::new(rsa())
            .sign_with_rng(&mut rng, input)
            .to_vec(),
        Algorithm::ES256 => {
            let key = p256::ecdsa::SigningKey::from_slice(&keys.ec.to_bytes()).unwrap();
            let signature: p256::ecdsa::Signature = key.sign(input);
            signature.to_bytes().to_vec()
        }
        Algorithm::ES384 => {
            let key = p384::ecdsa::SigningKey::from_slice(&keys.ec384.to_bytes()).unwrap();
            let signature: p384::ecdsa::Signature = key.sign(input);
            signature.to_bytes().to_vec()
        }
        Algorithm::EdDSA => {
            let pair = ed25519_compact::KeyPair::from_slice(&keys.ed.to_bytes()).unwrap();
            pair.sk.sign(input, None).to_vec()
        }
        Algorithm::HS256 => hmac_sha256::HMAC::mac(input, keys.hmac).to_vec(),
        Algorithm::HS384 => hmac_sha512::sha384::HMAC::mac(input, keys.hmac).to_vec(),
        Algorithm::HS512 => hmac_sha512::HMAC::mac(input, keys.hmac).to_vec(),
    }
}

pub fn claims(extra: Value, valid_for_s: u64) -> JWTClaims<Value> {
    Claims::with_custom_claims(extra, Duration::from_secs(valid_for_s))
        .with_issuer("https://idp.test")
        .with_subject("alice")
        .with_audience("orders")
}

pub fn rs256_token(kid: &str, claims: JWTClaims<Value>) -> String {
    keys().rsa.clone().with_key_id(kid).sign(claims).unwrap()
}

pub fn ps256_token(kid: &str, claims: JWTClaims<Value>) -> String {
    PS256KeyPair::from_der(&keys().rsa.to_der().unwrap())
        .unwrap()
        .with_key_id(kid)
        .sign(claims)
        .unwrap()
}

pub fn es256_token(kid: &str, claims: JWTClaims<Value>) -> String {
    ES256KeyPair::from_bytes(&keys().ec.to_bytes())
        .unwrap()
        .with_key_id(kid)
        .sign(claims)
        .unwrap()
}

pub fn eddsa_token(kid: &str, claims: JWTClaims<Value>) -> String {
    Ed25519KeyPair::from_bytes(&keys().ed.to_bytes())
        .unwrap()
        .with_key_id(kid)
        .sign(claims)
        .unwrap()
}
