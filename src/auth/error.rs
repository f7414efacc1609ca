//! Why a token was not accepted, worded for the `error_description` a client sees and the
//! log an operator reads. No variant ever carries token bytes.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    TooLarge,
    Malformed(&'static str),
    MultipleTokens,
    AlgorithmNotAllowed,
    CriticalHeader,
    NotJwt,
    IssuerNotAccepted,
    ExpirationRequired,
    Expired,
    NotYetValid,
    UnknownKid,
    NoMatchingKey,
    BadSignature,
    /// The token's algorithm (ES256/ES384) needs the host's `verify_signature`, which this
    /// host lacks, and this build has no ECDSA of its own (feature `portable-ecdsa`).
    AlgorithmUnavailable,
    AudienceNotAllowed,
    /// No signing keys were ever obtained for the provider (fail closed).
    KeysUnavailable {
        retry_after_s: u64,
    },
}

impl AuthError {
    /// The HTTP status the behaviour table gives this failure.
    pub fn status(self) -> u32 {
        match self {
            AuthError::AudienceNotAllowed => 403,
            AuthError::KeysUnavailable { .. } => 503,
            _ => 401,
        }
    }

    /// Short reason for `error_description` and logs.
    pub fn description(self) -> &'static str {
        match self {
            AuthError::TooLarge => "token is too large",
            AuthError::Malformed(_) => "token is malformed",
            AuthError::MultipleTokens => "more than one token in the request",
            AuthError::AlgorithmNotAllowed => "token algorithm is not allowed",
            AuthError::CriticalHeader => "token has a critical header that is not supported",
            AuthError::NotJwt => "token type is not JWT",
            AuthError::IssuerNotAccepted => "token issuer is not accepted",
            AuthError::ExpirationRequired => "token has no expiration",
            AuthError::Expired => "token is expired",
            AuthError::NotYetValid => "token is not yet valid",
            AuthError::UnknownKid => "token key id is not known",
            AuthError::NoMatchingKey => "no key matches the token algorithm",
            AuthError::BadSignature => "token signature does not verify",
            AuthError::AlgorithmUnavailable => "token algorithm cannot be verified on this host",
            AuthError::AudienceNotAllowed => "token audience is not allowed",
            AuthError::KeysUnavailable { .. } => "signing keys are not available",
        }
    }

    /// Which failure to report when several providers fail on one request: the most specific.
    /// A token meant for another issuer says least; a valid token with the wrong audience most.
    pub fn specificity(self) -> u8 {
        match self {
            AuthError::IssuerNotAccepted => 1,
            AuthError::AudienceNotAllowed => 4,
            AuthError::KeysUnavailable { .. } => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Malformed(detail) => write!(f, "token is malformed: {detail}"),
            other => f.write_str(other.description()),
        }
    }
}
