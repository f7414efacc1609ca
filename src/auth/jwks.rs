//! JSON Web Key Sets (RFC 7517) from `local_jwks` or an identity provider, parsed once into
//! keys ready for verification. Keys that are unusable are skipped with a reason; a set with
//! no usable key is an error.

use std::fmt;

use serde_json::Value;

use super::alg::{Algorithm, Curve, KeyFamily};
use super::{b64, der, json, portable};

/// Upper bound on a JWKS document; IdPs serve a few KiB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Upper bound on keys kept from one set, so a token without `kid` tries a bounded number.
pub const MAX_KEYS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// Modulus and exponent (big-endian), plus their SubjectPublicKeyInfo for the host.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        spki: Vec<u8>,
    },
    /// Uncompressed point `04||x||y`, plus its SubjectPublicKeyInfo for the host.
    Ec {
        curve: Curve,
        point: Vec<u8>,
        spki: Vec<u8>,
    },
    Ed25519 {
        public: Vec<u8>,
    },
    Oct {
        secret: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The key's own `alg`, when it names one: then only that algorithm may use it.
    pub alg: Option<Algorithm>,
    pub material: KeyMaterial,
}

impl Jwk {
    pub fn family(&self) -> KeyFamily {
        match &self.material {
            KeyMaterial::Rsa { .. } => KeyFamily::Rsa,
            KeyMaterial::Ec { curve, .. } => KeyFamily::Ec(*curve),
            KeyMaterial::Ed25519 { .. } => KeyFamily::Ed25519,
            KeyMaterial::Oct { .. } => KeyFamily::Oct,
        }
    }

    /// Whether a token signed with `alg` may be checked against this key.
    pub fn fits(&self, alg: Algorithm) -> bool {
        if self.family() != alg.key_family() || self.alg.is_some_and(|own| own != alg) {
            return false;
        }
        match &self.material {
            KeyMaterial::Oct { secret } => secret.len() >= alg.min_hmac_key_len(),
            _ => true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
}

impl KeySet {
    /// Keys a token may be verified with: by exact `kid` when it has one, else every key
    /// that fits the algorithm (as Envoy's jwt_authn does).
    pub fn candidates<'k>(
        &'k self,
        kid: Option<&'k str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'k Jwk> + 'k {
        self.keys.iter().filter(move |key| {
            key.fits(alg)
                && match kid {
                    Some(kid) => key.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }
}

/// Whether `oct` (HMAC) keys are allowed: only in `local_jwks`, never from a remote set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymmetricKeys {
    Allowed,
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    TooLarge(usize),
    NotJson(String),
    NoKeysArray,
    NoUsableKey(Vec<String>),
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::TooLarge(len) => {
                write!(
                    f,
                    "JWKS is {len} bytes, more than the {MAX_JWKS_BYTES} allowed"
                )
            }
            JwksError::NotJson(err) => write!(f, "JWKS is not valid JSON: {err}"),
            JwksError::NoKeysArray => f.write_str("JWKS has no \"keys\" array"),
            JwksError::NoUsableKey(reasons) if reasons.is_empty() => {
                f.write_str("JWKS has no keys")
            }
            JwksError::NoUsableKey(reasons) => {
                write!(f, "JWKS has no usable key ({})", reasons.join("; "))
            }
        }
    }
}

/// A parsed set and the reasons any keys in it were skipped (for the operator's log).
#[derive(Debug)]
pub struct ParsedJwks {
    pub keys: KeySet,
    pub skipped: Vec<String>,
}

pub fn parse_jwks(bytes: &[u8], symmetric: SymmetricKeys) -> Result<ParsedJwks, JwksError> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge(bytes.len()));
    }
    let document = json::parse_strict(bytes).map_err(JwksError::NotJson)?;
    let entries = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::NoKeysArray)?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        if keys.len() == MAX_KEYS {
            skipped.push(format!("keys after the first {MAX_KEYS} are ignored"));
            break;
        }
        match parse_jwk(entry, symmetric) {
            Ok(key) => keys.push(key),
            Err(reason) => skipped.push(format!("key {index}: {reason}")),
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey(skipped));
    }
    Ok(ParsedJwks {
        keys: KeySet { keys },
        skipped,
    })
}

fn member<'v>(entry: &'v Value, name: &str) -> Result<Option<&'v str>, String> {
    match entry.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(format!("\"{name}\" is not a string")),
    }
}

fn required_bytes(entry: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = member(entry, name)?.ok_or_else(|| format!("\"{name}\" is missing"))?;
    b64::decode(text).ok_or_else(|| format!("\"{name}\" is not base64url"))
}

fn parse_jwk(entry: &Value, symmetric: SymmetricKeys) -> Result<Jwk, String> {
    if !entry.is_object() {
        return Err("not a JSON object".into());
    }
    if let Some(usage) = member(entry, "use")? {
        if usage != "sig" {
            return Err(format!("\"use\" is {usage:?}, not \"sig\""));
        }
    }
    let kid = member(entry, "kid")?.map(str::to_owned);
    let alg = match member(entry, "alg")? {
        None => None,
        Some(name) => Some(
            Algorithm::from_name(name)
                .ok_or_else(|| format!("\"alg\" {name:?} is not supported"))?,
        ),
    };
    let kty = member(entry, "kty")?.ok_or("\"kty\" is missing")?;
    let material = match kty {
        "RSA" => parse_rsa(entry)?,
        "EC" => parse_ec(entry)?,
        "OKP" => parse_okp(entry)?,
        "oct" => match symmetric {
            SymmetricKeys::Allowed => KeyMaterial::Oct {
                secret: required_bytes(entry, "k")?,
            },
            SymmetricKeys::Refused => {
                return Err("\"oct\" keys are only accepted in local_jwks".into())
            }
        },
        other => return Err(format!("\"kty\" {other:?} is not supported")),
    };
    let key = Jwk { kid, alg, material };
    if let Some(alg) = alg {
        if !key.fits(alg) {
            return Err(format!(
                "\"alg\" {alg} does not fit a {kty} key of this size"
            ));
        }
    }
    Ok(key)
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or(&[])
}

fn parse_rsa(entry: &Value) -> Result<KeyMaterial, String> {
    let n_raw = required_bytes(entry, "n")?;
    let e_raw = required_bytes(entry, "e")?;
    let n = strip_leading_zeros(&n_raw).to_vec();
    let e = strip_leading_zeros(&e_raw).to_vec();
    // Exactly the keys the portable verifier can use (2048 to 4096 bits, e = 65537).
    portable::rsa_public_key(&n, &e).map_err(|refusal| refusal.to_string())?;
    let spki = der::rsa_spki(&n, &e);
    Ok(KeyMaterial::Rsa { n, e, spki })
}

fn parse_ec(entry: &Value) -> Result<KeyMaterial, String> {
    let curve = match member(entry, "crv")? {
        Some("P-256") => Curve::P256,
        Some("P-384") => Curve::P384,
        Some(other) => return Err(format!("\"crv\" {other:?} is not supported")),
        None => return Err("\"crv\" is missing".into()),
    };
    let x = required_bytes(entry, "x")?;
    let y = required_bytes(entry, "y")?;
    if x.len() != curve.field_len() || y.len() != curve.field_len() {
        return Err("EC coordinates have the wrong length for the curve".into());
    }
    let mut point = Vec::with_capacity(1 + 2 * curve.field_len());
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    if !portable::ec_point_accepted(curve, &point) {
        return Err("EC point is not on the curve".into());
    }
    let spki = der::ec_spki(curve, &point);
    Ok(KeyMaterial::Ec { curve, point, spki })
}

fn parse_okp(entry: &Value) -> Result<KeyMaterial, String> {
    match member(entry, "crv")? {
        Some("Ed25519") => {}
        Some(other) => return Err(format!("\"crv\" {other:?} is not supported")),
        None => return Err("\"crv\" is missing".into()),
    }
    let public = required_bytes(entry, "x")?;
    if !portable::ed25519_key_accepted(&public) {
        return Err("Ed25519 key is not 32 valid bytes".into());
    }
    Ok(KeyMaterial::Ed25519 { public })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::testkeys;

    #[test]
    fn parses_every_supported_key_type() {
        let jwks = testkeys::jwks_json(&[
            testkeys::rsa_jwk("r1"),
            testkeys::ec_jwk("e1"),
            testkeys::ed_jwk("d1"),
            testkeys::oct_jwk("h1", &[7u8; 32]),
        ]);
        let parsed = parse_jwks(jwks.as_bytes(), SymmetricKeys::Allowed).unwrap();
        let families: Vec<_> = parsed.keys.keys.iter().map(Jwk::family).collect();
        assert_eq!(
            families,
            vec![
                KeyFamily::Rsa,
                KeyFamily::Ec(Curve::P256),
                KeyFamily::Ed25519,
                KeyFamily::Oct
            ]
        );
        assert!(parsed.skipped.is_empty());
    }

    #[test]
    fn remote_sets_never_yield_hmac_keys() {
        let jwks =
            testkeys::jwks_json(&[testkeys::oct_jwk("h1", &[7u8; 32]), testkeys::ec_jwk("e1")]);
        let parsed = parse_jwks(jwks.as_bytes(), SymmetricKeys::Refused).unwrap();
        assert_eq!(parsed.keys.keys.len(), 1);
        assert!(parsed.skipped[0].contains("only accepted in local_jwks"));
    }

    #[test]
    fn bad_keys_are_skipped_and_a_set_of_only_bad_keys_is_an_error() {
        let jwks = r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"},{"kty":"EC","crv":"P-521","x":"AA","y":"AA"},{"kty":"EC","crv":"P-256","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},{"kty":"RSA","use":"enc"},7]}"#;
        let err = parse_jwks(jwks.as_bytes(), SymmetricKeys::Allowed).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("RSA modulus is 17 bits"), "{text}");
        assert!(text.contains("P-521"), "{text}");
        assert!(text.contains("not on the curve"), "{text}");
        assert!(
            text.contains("\\\"enc\\\"") || text.contains("\"enc\""),
            "{text}"
        );
        assert!(text.contains("key 4: not a JSON object"), "{text}");
    }

    #[test]
    fn an_rsa_key_with_an_empty_or_all_zero_modulus_is_skipped_not_a_panic() {
        // Found by fuzzing (fuzz target `jwks`): the bit count underflowed for an empty `n`.
        for n in ["", "AAAA"] {
            let jwks = format!(r#"{{"keys":[{{"kty":"RSA","kid":"r","n":"{n}","e":"AQAB"}}]}}"#);
            let text = parse_jwks(jwks.as_bytes(), SymmetricKeys::Allowed)
                .unwrap_err()
                .to_string();
            assert!(text.contains("RSA modulus is 0 bits"), "{text}");
        }
    }

    #[test]
    fn documents_that_are_not_sets_are_errors() {
        assert_eq!(
            parse_jwks(b"{}", SymmetricKeys::Allowed).unwrap_err(),
            JwksError::NoKeysArray
        );
        assert!(matches!(
            parse_jwks(b"<html>", SymmetricKeys::Allowed),
            Err(JwksError::NotJson(_))
        ));
        assert_eq!(
            parse_jwks(br#"{"keys":[]}"#, SymmetricKeys::Allowed).unwrap_err(),
            JwksError::NoUsableKey(vec![])
        );
        let huge = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(matches!(
            parse_jwks(&huge, SymmetricKeys::Allowed),
            Err(JwksError::TooLarge(_))
        ));
    }

    #[test]
    fn a_key_whose_alg_does_not_fit_its_type_is_skipped() {
        let mut ec = testkeys::ec_jwk("e1");
        ec["alg"] = "RS256".into();
        let jwks = testkeys::jwks_json(&[ec, testkeys::ed_jwk("d1")]);
        let parsed = parse_jwks(jwks.as_bytes(), SymmetricKeys::Allowed).unwrap();
        assert_eq!(parsed.keys.keys.len(), 1);
        assert!(parsed.skipped[0].contains("does not fit"));
    }

    #[test]
    fn short_hmac_keys_fit_no_algorithm() {
        let jwks = testkeys::jwks_json(&[testkeys::oct_jwk("h1", &[7u8; 16])]);
        let parsed = parse_jwks(jwks.as_bytes(), SymmetricKeys::Allowed).unwrap();
        assert!(!parsed.keys.keys[0].fits(Algorithm::HS256));
        let long = testkeys::jwks_json(&[testkeys::oct_jwk("h1", &[7u8; 48])]);
        let parsed = parse_jwks(long.as_bytes(), SymmetricKeys::Allowed).unwrap();
        assert!(parsed.keys.keys[0].fits(Algorithm::HS384));
        assert!(!parsed.keys.keys[0].fits(Algorithm::HS512));
    }

    #[test]
    fn candidates_match_kid_exactly_or_try_all_without_kid() {
        let jwks = testkeys::jwks_json(&[
            testkeys::ec_jwk("a"),
            testkeys::ec_jwk("b"),
            testkeys::rsa_jwk("c"),
        ]);
        let set = parse_jwks(jwks.as_bytes(), SymmetricKeys::Allowed)
            .unwrap()
            .keys;
        assert_eq!(set.candidates(Some("b"), Algorithm::ES256).count(), 1);
        assert_eq!(set.candidates(Some("B"), Algorithm::ES256).count(), 0);
        assert_eq!(set.candidates(Some("c"), Algorithm::ES256).count(), 0);
        assert_eq!(set.candidates(None, Algorithm::ES256).count(), 2);
        assert_eq!(set.candidates(None, Algorithm::HS256).count(), 0);
    }
}
