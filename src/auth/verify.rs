//! Token checks for one provider, in the order that spends least on bad tokens: cheap claim
//! checks first, then key selection, then the signature, then the audience.

use std::time::Duration;

use super::error::AuthError;
use super::jwks::{Jwk, KeySet};
use super::jws::Jws;
use super::portable;
use crate::config::Provider;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// The signature does not verify with this key.
    Invalid,
    /// Nothing here can check this algorithm: the host has no signature function for it and
    /// this build no code (ES256/ES384 without the feature `portable-ecdsa`).
    Unavailable,
}

/// Checks a JWS signature with one key, over `jws.signing_input` and `jws.signature` only.
/// The host adapter's implementation uses Envoy's BoringSSL where it can; `PortableVerifier`
/// is the pure-Rust path used everywhere else.
pub trait SignatureVerifier {
    fn verify(&self, jws: &Jws, key: &Jwk) -> Result<(), SignatureError>;
}

/// Pure-Rust signature checks (`auth::portable`), which work in any Wasm host.
#[derive(Debug, Default, Clone, Copy)]
pub struct PortableVerifier;

impl SignatureVerifier for PortableVerifier {
    fn verify(&self, jws: &Jws, key: &Jwk) -> Result<(), SignatureError> {
        if !portable::verifies_in_wasm(jws.header.alg) {
            return Err(SignatureError::Unavailable);
        }
        if portable::verifies(
            jws.header.alg,
            &key.material,
            jws.signing_input.as_bytes(),
            &jws.signature,
        ) {
            Ok(())
        } else {
            Err(SignatureError::Invalid)
        }
    }
}

/// The checks that need no key: algorithm allowed, issuer, lifetime (with clock skew).
/// `iat` is not checked, as in Envoy's jwt_authn.
pub fn check_claims(provider: &Provider, jws: &Jws, now_s: u64) -> Result<(), AuthError> {
    if !provider.algorithms.contains(&jws.header.alg) {
        return Err(AuthError::AlgorithmNotAllowed);
    }
    if jws.claims.iss.as_deref() != Some(provider.issuer.as_str()) {
        return Err(AuthError::IssuerNotAccepted);
    }
    let skew = provider.clock_skew.as_secs();
    match jws.claims.exp {
        Some(exp) if now_s > exp.saturating_add(skew) => return Err(AuthError::Expired),
        None if provider.require_expiration => return Err(AuthError::ExpirationRequired),
        _ => {}
    }
    if let Some(nbf) = jws.claims.nbf {
        if now_s.saturating_add(skew) < nbf {
            return Err(AuthError::NotYetValid);
        }
    }
    Ok(())
}

/// Selects keys by `kid` (or every fitting key when the token has none) and verifies.
pub fn check_signature(
    keys: &KeySet,
    jws: &Jws,
    verifier: &dyn SignatureVerifier,
) -> Result<(), AuthError> {
    let kid = jws.header.kid.as_deref();
    if let Some(kid) = kid {
        if !keys.has_kid(kid) {
            return Err(AuthError::UnknownKid);
        }
    }
    let mut failure = AuthError::NoMatchingKey;
    for key in keys.candidates(kid, jws.header.alg) {
        match verifier.verify(jws, key) {
            Ok(()) => return Ok(()),
            // No other key of the same algorithm can do better.
            Err(SignatureError::Unavailable) => return Err(AuthError::AlgorithmUnavailable),
            Err(SignatureError::Invalid) => failure = AuthError::BadSignature,
        }
    }
    Err(failure)
}

/// A provider with `audiences` accepts a token whose `aud` (string or list) names any of them.
pub fn check_audience(provider: &Provider, jws: &Jws) -> Result<(), AuthError> {
    if provider.audiences.is_empty()
        || jws
            .claims
            .aud
            .iter()
            .any(|aud| provider.audiences.contains(aud))
    {
        Ok(())
    } else {
        Err(AuthError::AudienceNotAllowed)
    }
}

/// How long a verified token may be served from the cache: until its expiry (plus skew) or
/// the cache TTL, whichever is first.
pub fn cache_expiry_s(provider: &Provider, jws: &Jws, now_s: u64, ttl: Duration) -> u64 {
    let ttl_end = now_s.saturating_add(ttl.as_secs());
    match jws.claims.exp {
        Some(exp) => exp
            .saturating_add(provider.clock_skew.as_secs())
            .min(ttl_end),
        None => ttl_end,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::alg::Algorithm;
    use crate::auth::jwks::{parse_jwks, SymmetricKeys};
    use crate::auth::jws::parse;
    use crate::auth::testkeys::{b64e, jwks_json, keys, other_keys, public_jwk, signed_token};

    /// The key of `keys()` that verifies `alg`, as a JWKS load makes it.
    fn published_key(alg: Algorithm) -> Jwk {
        let jwks = jwks_json(&[public_jwk(keys(), alg.key_family(), "k")]);
        let mut set = parse_jwks(jwks.as_bytes(), SymmetricKeys::Allowed).unwrap();
        set.keys.keys.remove(0)
    }

    fn token_by(signer: &crate::auth::testkeys::TestKeys, alg: Algorithm) -> String {
        let header = json!({"alg": alg.name(), "typ": "JWT"}).to_string();
        let payload = json!({"iss": "https://idp.test", "sub": "alice"}).to_string();
        signed_token(signer, alg, &header, &payload)
    }

    fn portable_verdict(token: &str, alg: Algorithm) -> Result<(), SignatureError> {
        PortableVerifier.verify(&parse(token).unwrap(), &published_key(alg))
    }

    /// What a bad `alg` signature gets: `Unavailable` for ES256/ES384 in a build without
    /// `portable-ecdsa`, whatever the signature, so that no such token is ever accepted.
    fn refusal(alg: Algorithm) -> SignatureError {
        if portable::verifies_in_wasm(alg) {
            SignatureError::Invalid
        } else {
            SignatureError::Unavailable
        }
    }

    #[test]
    fn a_valid_token_of_every_algorithm_verifies_where_this_build_can_check_it() {
        for alg in Algorithm::ALL {
            let valid = portable_verdict(&token_by(keys(), alg), alg);
            if portable::verifies_in_wasm(alg) {
                assert_eq!(valid, Ok(()), "{alg}");
            } else {
                assert_eq!(valid, Err(SignatureError::Unavailable), "{alg}");
            }
        }
    }

    #[test]
    fn one_flipped_signature_bit_fails_for_every_algorithm() {
        for alg in Algorithm::ALL {
            let token = token_by(keys(), alg);
            let (input, signature_b64) = token.rsplit_once('.').unwrap();
            let mut signature = crate::auth::b64::decode(signature_b64).unwrap();
            let middle = signature.len() / 2;
            signature[middle] ^= 0x01;
            let flipped = format!("{input}.{}", b64e(&signature));
            assert_eq!(portable_verdict(&flipped, alg), Err(refusal(alg)), "{alg}");
        }
    }

    #[test]
    fn a_token_signed_by_another_key_fails_for_every_algorithm() {
        for alg in Algorithm::ALL {
            assert_eq!(
                portable_verdict(&token_by(other_keys(), alg), alg),
                Err(refusal(alg)),
                "{alg}"
            );
        }
    }

    #[test]
    fn a_key_of_another_kind_never_verifies() {
        // `KeySet::candidates` already keeps such keys away; the verifier refuses them too.
        for alg in Algorithm::ALL {
            let token = token_by(keys(), alg);
            let token = parse(&token).unwrap();
            for other in Algorithm::ALL {
                let key = published_key(other);
                if key.family() != alg.key_family() {
                    assert_eq!(
                        PortableVerifier.verify(&token, &key),
                        Err(refusal(alg)),
                        "{alg} token, {other} key"
                    );
                }
            }
        }
    }
}
