//! The JWS algorithms meshguard verifies, and what each needs from a key.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

/// What kind of key an algorithm verifies with; a key of another kind never matches
/// (this is what makes RS256/HS256 confusion impossible).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    Ec(Curve),
    Ed25519,
    Oct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    /// Length in bytes of one coordinate, and of `r` or `s` in a JOSE signature.
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
    ];

    /// The JOSE name; `none` and anything unknown give `None`.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|alg| alg.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
        }
    }

    pub fn key_family(self) -> KeyFamily {
        match self {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => KeyFamily::Rsa,
            Algorithm::ES256 => KeyFamily::Ec(Curve::P256),
            Algorithm::ES384 => KeyFamily::Ec(Curve::P384),
            Algorithm::EdDSA => KeyFamily::Ed25519,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyFamily::Oct,
        }
    }

    /// The digest name Envoy's `verify_signature` takes.
    pub fn hash_name(self) -> &'static str {
        match self {
            Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256 | Algorithm::HS256 => "sha256",
            Algorithm::RS384 | Algorithm::PS384 | Algorithm::ES384 | Algorithm::HS384 => "sha384",
            Algorithm::RS512 | Algorithm::PS512 | Algorithm::HS512 | Algorithm::EdDSA => "sha512",
        }
    }

    /// RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
    pub fn min_hmac_key_len(self) -> usize {
        match self {
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => 32,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_none_is_not_an_algorithm() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
        }
        assert_eq!(Algorithm::from_name("none"), None);
        assert_eq!(Algorithm::from_name("rs256"), None);
        assert_eq!(Algorithm::from_name("ES512"), None);
    }

    #[test]
    fn hmac_and_rsa_never_share_a_key_family() {
        assert_eq!(Algorithm::HS256.key_family(), KeyFamily::Oct);
        assert_eq!(Algorithm::RS256.key_family(), KeyFamily::Rsa);
        assert_ne!(Algorithm::HS256.key_family(), Algorithm::RS256.key_family());
    }
}
