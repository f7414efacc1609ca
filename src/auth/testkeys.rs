//! Keys and tokens for unit tests and the micro-benchmarks (feature `testkeys`). (Integration
//! tests sign with an independent JOSE library.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::OnceLock;

use ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use jwt_simple::prelude::*;
use serde_json::{json, Value};

pub struct TestKeys {
    pub rsa: RS256KeyPair,
    pub ec: ES256KeyPair,
    pub ed: Ed25519KeyPair,
}

pub fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| TestKeys {
        rsa: RS256KeyPair::generate(2048).unwrap(),
        ec: ES256KeyPair::generate(),
        ed: Ed25519KeyPair::generate(),
    })
}

pub fn b64e(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

pub fn rsa_jwk(kid: &str) -> Value {
    let parts = keys().rsa.public_key().to_components();
    json!({"kty": "RSA", "kid": kid, "n": b64e(&parts.n), "e": b64e(&parts.e)})
}

pub fn ec_jwk(kid: &str) -> Value {
    let point = keys().ec.public_key().public_key().to_bytes_uncompressed();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64e(&point[1..33]), "y": b64e(&point[33..])})
}

pub fn ed_jwk(kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64e(&keys().ed.public_key().to_bytes())})
}

pub fn oct_jwk(kid: &str, secret: &[u8]) -> Value {
    json!({"kty": "oct", "kid": kid, "k": b64e(secret)})
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

pub fn claims(extra: Value, valid_for_s: u64) -> JWTClaims<Value> {
    Claims::with_custom_claims(extra, Duration::from_secs(valid_for_s))
        .with_issuer("https://idp.test")
        .with_subject("alice")
        .with_audience("orders")
}

pub fn rs256_token(kid: &str, claims: JWTClaims<Value>) -> String {
    keys().rsa.clone().with_key_id(kid).sign(claims).unwrap()
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
