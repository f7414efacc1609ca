//! A compact JWS carrying JWT claims (RFC 7515 §7.1, RFC 7519), split and decoded strictly,
//! before any signature check. Nothing here trusts the token.

use serde_json::{Map, Value};

use super::alg::Algorithm;
use super::error::AuthError;
use super::{b64, json};

/// Tokens longer than this are refused before decoding (RFC 8725 §3.4). Envoy's default header
/// limit is 60 KiB; real access tokens are 1–4 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// The registered claims meshguard checks, plus every claim for `claim_to_headers`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub aud: Vec<String>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub all: Map<String, Value>,
}

#[derive(Debug)]
pub struct Jws<'t> {
    /// `header.payload`, the bytes the signature covers: the only part of the token a signature
    /// check sees besides `signature`.
    pub signing_input: &'t str,
    /// The payload segment as sent, for `forward_payload_header`.
    pub payload_b64: &'t str,
    pub header: Header,
    pub claims: Claims,
    pub signature: Vec<u8>,
}

fn malformed(detail: &'static str) -> AuthError {
    AuthError::Malformed(detail)
}

/// Splits and decodes a compact JWS. `alg: none`, unknown algorithms, `crit` and a `typ`
/// other than JWT are refused here; `jku`, `x5u`, `jwk` and `x5c` are ignored (never fetched,
/// never trusted: RFC 8725 §3.10).
pub fn parse(token: &str) -> Result<Jws<'_>, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not three dot-separated parts"));
    };
    if header_b64.is_empty() || payload_b64.is_empty() {
        return Err(malformed("an empty part"));
    }
    let signing_input = token
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or(malformed("not three dot-separated parts"))?;

    let header_bytes = b64::decode(header_b64).ok_or(malformed("header is not base64url"))?;
    let header_json =
        json::parse_strict(&header_bytes).map_err(|_| malformed("header is not a JSON object"))?;
    // The header first: an unsigned `alg: none` token is reported as such.
    let header = parse_header(&header_json)?;
    if signature_b64.is_empty() {
        return Err(malformed("an empty signature"));
    }

    let payload_bytes = b64::decode(payload_b64).ok_or(malformed("payload is not base64url"))?;
    let payload_json = json::parse_strict(&payload_bytes)
        .map_err(|_| malformed("payload is not a JSON object"))?;
    let claims = parse_claims(payload_json)?;

    let signature = b64::decode(signature_b64).ok_or(malformed("signature is not base64url"))?;
    Ok(Jws {
        signing_input,
        payload_b64,
        header,
        claims,
        signature,
    })
}

fn parse_header(json: &Value) -> Result<Header, AuthError> {
    let object = json
        .as_object()
        .ok_or(malformed("header is not a JSON object"))?;
    let alg_name = object
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(malformed("header has no \"alg\""))?;
    let alg = Algorithm::from_name(alg_name).ok_or(AuthError::AlgorithmNotAllowed)?;
    if object.contains_key("crit") {
        // No extension is understood, so any `crit` must be refused (RFC 7515 §4.1.11).
        return Err(AuthError::CriticalHeader);
    }
    if let Some(typ) = object.get("typ") {
        let typ = typ.as_str().ok_or(malformed("\"typ\" is not a string"))?;
        let upper = typ.to_ascii_uppercase();
        if upper != "JWT" && !upper.ends_with("+JWT") {
            return Err(AuthError::NotJwt);
        }
    }
    let kid = match object.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("\"kid\" is not a string")),
    };
    Ok(Header { alg, kid })
}

/// NumericDate (RFC 7519 §2): non-negative seconds; fractions are dropped.
fn numeric_date(value: Option<&Value>, what: &'static str) -> Result<Option<u64>, AuthError> {
    match value {
        None => Ok(None),
        Some(Value::Number(number)) => {
            if let Some(seconds) = number.as_u64() {
                return Ok(Some(seconds));
            }
            match number.as_f64() {
                Some(seconds) if seconds.is_finite() && seconds >= 0.0 => {
                    Ok(Some(seconds.floor().min(u64::MAX as f64) as u64))
                }
                _ => Err(malformed(what)),
            }
        }
        Some(_) => Err(malformed(what)),
    }
}

fn optional_string(value: Option<&Value>, what: &'static str) -> Result<Option<String>, AuthError> {
    match value {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(malformed(what)),
    }
}

fn parse_claims(json: Value) -> Result<Claims, AuthError> {
    let Value::Object(all) = json else {
        return Err(malformed("payload is not a JSON object"));
    };
    let aud = match all.get("aud") {
        None => Vec::new(),
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(malformed("\"aud\" is not a string or an array of strings"))?,
        Some(_) => return Err(malformed("\"aud\" is not a string or an array of strings")),
    };
    Ok(Claims {
        iss: optional_string(all.get("iss"), "\"iss\" is not a string")?,
        sub: optional_string(all.get("sub"), "\"sub\" is not a string")?,
        aud,
        exp: numeric_date(all.get("exp"), "\"exp\" is not a NumericDate")?,
        nbf: numeric_date(all.get("nbf"), "\"nbf\" is not a NumericDate")?,
        all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::testkeys::{b64e, raw_token};

    #[test]
    fn splits_a_well_formed_token() {
        let token = raw_token(
            r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#,
            r#"{"iss":"https://idp","sub":"alice","aud":["a","b"],"exp":2000000000,"nbf":1.9,"x":{"y":1}}"#,
            &[1, 2, 3],
        );
        let jws = parse(&token).unwrap();
        assert_eq!(jws.header.alg, Algorithm::ES256);
        assert_eq!(jws.header.kid.as_deref(), Some("k1"));
        assert_eq!(jws.claims.iss.as_deref(), Some("https://idp"));
        assert_eq!(jws.claims.aud, vec!["a", "b"]);
        assert_eq!(jws.claims.exp, Some(2_000_000_000));
        assert_eq!(jws.claims.nbf, Some(1));
        assert_eq!(jws.signature, vec![1, 2, 3]);
        assert_eq!(jws.signing_input.matches('.').count(), 1);
        assert!(token.starts_with(jws.signing_input));
    }

    #[test]
    fn alg_none_and_unknown_algorithms_are_not_allowed() {
        for alg in ["none", "None", "ES512", "HS1", ""] {
            let token = raw_token(&format!(r#"{{"alg":"{alg}"}}"#), "{}", &[1]);
            assert_eq!(
                parse(&token).unwrap_err(),
                AuthError::AlgorithmNotAllowed,
                "{alg}"
            );
        }
        // An unsigned token has an empty third part; it is refused for its algorithm.
        let unsigned = format!("{}.{}.", b64e(br#"{"alg":"none"}"#), b64e(b"{}"));
        assert_eq!(
            parse(&unsigned).unwrap_err(),
            AuthError::AlgorithmNotAllowed
        );
        let empty_signature = format!("{}.{}.", b64e(br#"{"alg":"RS256"}"#), b64e(b"{}"));
        assert!(matches!(
            parse(&empty_signature),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn crit_is_refused_even_when_empty() {
        for crit in [r#"["exp"]"#, "[]", r#"["b64"]"#] {
            let token = raw_token(&format!(r#"{{"alg":"RS256","crit":{crit}}}"#), "{}", &[1]);
            assert_eq!(parse(&token).unwrap_err(), AuthError::CriticalHeader);
        }
    }

    #[test]
    fn typ_must_be_a_jwt_type() {
        for (typ, ok) in [
            ("JWT", true),
            ("jwt", true),
            ("at+jwt", true),
            ("JOSE", false),
            ("JWE", false),
        ] {
            let token = raw_token(&format!(r#"{{"alg":"RS256","typ":"{typ}"}}"#), "{}", &[1]);
            assert_eq!(parse(&token).is_ok(), ok, "{typ}");
        }
    }

    #[test]
    fn embedded_key_headers_are_ignored_not_used() {
        let token = raw_token(
            r#"{"alg":"RS256","jku":"http://evil/jwks","x5u":"http://evil","jwk":{"kty":"oct","k":"AA"}}"#,
            "{}",
            &[1],
        );
        let jws = parse(&token).unwrap();
        assert_eq!(jws.header.kid, None);
    }

    #[test]
    fn duplicate_members_make_a_token_malformed() {
        let dup_header = raw_token(r#"{"alg":"HS256","alg":"RS256"}"#, "{}", &[1]);
        assert!(matches!(parse(&dup_header), Err(AuthError::Malformed(_))));
        let dup_claim = raw_token(r#"{"alg":"RS256"}"#, r#"{"exp":1,"exp":99999999999}"#, &[1]);
        assert!(matches!(parse(&dup_claim), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn structural_errors_are_malformed() {
        let header = b64e(br#"{"alg":"RS256"}"#);
        let payload = b64e(b"{}");
        for token in [
            String::new(),
            "abc".into(),
            format!("{header}.{payload}"),
            format!("{header}.{payload}.AQ.AQ"),
            format!("{header}..AQ"),
            format!("{header}.{payload}.A=="),
            format!("{header}.{}.AQ", b64e(b"[1]")),
            format!("{header}.{}.AQ", b64e(b"not json")),
            format!("{}.{payload}.AQ", b64e(b"\xff\xfe")),
            format!("{header}.{}.AQ", b64e(br#"{"exp":-1}"#)),
            format!("{header}.{}.AQ", b64e(br#"{"exp":"soon"}"#)),
            format!("{header}.{}.AQ", b64e(br#"{"aud":[1]}"#)),
            format!("{header}.{}.AQ", b64e(br#"{"iss":7}"#)),
            format!("{}.{payload}.AQ", b64e(br#"{"alg":"RS256","kid":7}"#)),
        ] {
            assert!(
                matches!(parse(&token), Err(AuthError::Malformed(_))),
                "{token}"
            );
        }
    }

    #[test]
    fn huge_numbers_saturate_instead_of_wrapping() {
        let token = raw_token(r#"{"alg":"RS256"}"#, r#"{"exp":1e300}"#, &[1]);
        assert_eq!(parse(&token).unwrap().claims.exp, Some(u64::MAX));
    }

    #[test]
    fn oversized_tokens_are_refused_before_decoding() {
        let token = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(parse(&token).unwrap_err(), AuthError::TooLarge);
    }
}
