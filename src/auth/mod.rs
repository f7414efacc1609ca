//! JWT authentication: find a provider's token, check it, and evaluate a rule's `requires`
//! tree. Plain Rust: time comes in as a value, keys and signature checks through `KeyStore`
//! and `SignatureVerifier`, so the host adapter decides how they are fetched and run.

pub mod alg;
pub mod b64;
pub mod cache;
pub mod der;
mod ec_point;
pub mod error;
pub mod extract;
pub mod json;
pub mod jwks;
pub mod jws;
mod montgomery;
pub mod outputs;
pub mod portable;
pub mod remote;
mod rsa_verify;
pub mod verify;
pub mod verify_signature_codec;

#[cfg(any(test, feature = "testkeys"))]
#[doc(hidden)]
pub mod testkeys;

use std::rc::Rc;

use cache::{TokenCache, VerifiedToken, REFUSED_TTL_S, VERIFIED_TTL_S};
use error::AuthError;
use extract::{extract, Extracted, Locations};
use remote::{Availability, FetchReason, KeyStore};
use smallvec::{smallvec, SmallVec};
use verify::SignatureVerifier;

use crate::config::{Config, KeySource, Requirement, RequirementKind};
use crate::names::Names;
use crate::request::Request;

/// What one provider concluded about one request.
#[derive(Debug, Clone)]
pub enum ProviderOutcome {
    Missing,
    Verified {
        token: Rc<VerifiedToken>,
        locations: Locations,
    },
    Failed(AuthError),
    /// The decision needs keys this VM does not hold yet.
    AwaitingKeys(FetchReason),
}

/// Everything authentication reads, borrowed for one decision.
pub struct AuthEnv<'a> {
    pub config: &'a Config,
    /// The configuration's names, shared (`Names::of(config)`).
    pub names: &'a Names,
    pub keys: &'a KeyStore,
    pub verifier: &'a dyn SignatureVerifier,
    pub now_ms: u64,
}

/// Finds and checks `provider`'s token in `request`, using and filling the token cache.
pub fn authenticate(
    env: &AuthEnv,
    cache: &mut TokenCache,
    provider_index: usize,
    request: &Request,
) -> ProviderOutcome {
    let Some(provider) = env.config.providers.get(provider_index) else {
        return ProviderOutcome::Failed(AuthError::IssuerNotAccepted);
    };
    let (token, locations) = match extract(&provider.locations, request) {
        Extracted::Missing => return ProviderOutcome::Missing,
        Extracted::Conflicting => return ProviderOutcome::Failed(AuthError::MultipleTokens),
        Extracted::Found { token, locations } => (token, locations),
    };
    let now_s = env.now_ms / 1_000;
    let availability = env
        .keys
        .availability(env.config, provider_index, env.now_ms);
    if let Availability::Ready { generation, .. } = availability {
        if let Some(cached) = cache.get(provider_index, &token, now_s, generation) {
            return match cached {
                Ok(token) => ProviderOutcome::Verified { token, locations },
                Err(error) => ProviderOutcome::Failed(error),
            };
        }
    }

    let mut jws = match jws::parse(&token) {
        Ok(jws) => jws,
        Err(error) => return ProviderOutcome::Failed(error),
    };
    if let Err(error) = verify::check_claims(provider, &jws, now_s) {
        return ProviderOutcome::Failed(error);
    }
    let (keys, generation) = match availability {
        Availability::Ready { keys, generation } => (keys, generation),
        Availability::Pending => return ProviderOutcome::AwaitingKeys(FetchReason::FirstKeys),
        Availability::Unavailable { retry_after_s } => {
            return ProviderOutcome::Failed(AuthError::KeysUnavailable { retry_after_s })
        }
    };
    let verdict = verify::check_signature(keys, &jws, env.verifier)
        .and_then(|()| verify::check_audience(provider, &jws));
    match verdict {
        Err(AuthError::UnknownKid) => {
            let may_refetch = matches!(provider.keys, KeySource::Remote(_))
                && env.keys.remote(provider_index).is_some_and(|remote| {
                    // A fetch already under way may bring the kid: wait for it too.
                    remote.may_refetch_for_unknown_kid(env.now_ms) || remote.lease.busy(env.now_ms)
                });
            // Not cached: once keys rotate, the same token must be looked at again.
            if may_refetch {
                ProviderOutcome::AwaitingKeys(FetchReason::UnknownKid)
            } else {
                ProviderOutcome::Failed(AuthError::UnknownKid)
            }
        }
        Err(error) => {
            cache.insert(
                provider_index,
                &token,
                Err(error),
                now_s,
                now_s + REFUSED_TTL_S,
                generation,
            );
            ProviderOutcome::Failed(error)
        }
        Ok(()) => {
            let expires = verify::cache_expiry_s(
                provider,
                &jws,
                now_s,
                std::time::Duration::from_secs(VERIFIED_TTL_S),
            );
            let verified = Rc::new(VerifiedToken {
                provider: provider_index,
                subject: jws.claims.sub.as_deref().map(Rc::from),
                principal: jws
                    .claims
                    .iss
                    .as_ref()
                    .zip(jws.claims.sub.as_ref())
                    .map(|(iss, sub)| format!("{iss}/{sub}")),
                upstream_headers: outputs::upstream_headers(
                    provider,
                    env.names,
                    &jws.claims.all,
                    jws.payload_b64,
                ),
                // Moved, not copied: nothing reads the token's claims after this.
                claims: std::mem::take(&mut jws.claims.all),
            });
            cache.insert(
                provider_index,
                &token,
                Ok(verified.clone()),
                now_s,
                expires,
                generation,
            );
            ProviderOutcome::Verified {
                token: verified,
                locations,
            }
        }
    }
}

/// Providers by index, in the order a `requires` tree was satisfied; kept inline (a tree names
/// a few).
pub type Providers = SmallVec<[usize; 4]>;

/// The result of a `requires` tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Satisfied by these providers (empty when `allow_missing` let a tokenless request in).
    Satisfied(Providers),
    Missing,
    Failed(AuthError),
    AwaitingKeys,
}

/// Evaluates `requirement`, asking `outcome` for each provider it needs (callers memoise).
/// `any` stops at the first satisfied branch; `all` at the first failure. A failed token is
/// never folded into "missing" (Envoy CVE fix, PR #15194), so `allow_missing` cannot admit it.
pub fn evaluate(
    requirement: &Requirement,
    outcome: &mut dyn FnMut(usize) -> ProviderOutcome,
) -> Verdict {
    let verdict = match &requirement.kind {
        RequirementKind::Provider(index) => match outcome(*index) {
            ProviderOutcome::Missing => Verdict::Missing,
            ProviderOutcome::Verified { .. } => Verdict::Satisfied(smallvec![*index]),
            ProviderOutcome::Failed(error) => Verdict::Failed(error),
            ProviderOutcome::AwaitingKeys(_) => Verdict::AwaitingKeys,
        },
        RequirementKind::Any(children) => {
            let mut awaiting = false;
            let mut failure: Option<AuthError> = None;
            let mut satisfied = None;
            for child in children {
                match evaluate(child, outcome) {
                    Verdict::Satisfied(providers) => {
                        satisfied = Some(providers);
                        break;
                    }
                    Verdict::AwaitingKeys => awaiting = true,
                    Verdict::Failed(error) => failure = Some(most_specific(failure, error)),
                    Verdict::Missing => {}
                }
            }
            match (satisfied, awaiting, failure) {
                (Some(providers), _, _) => Verdict::Satisfied(providers),
                (None, true, _) => Verdict::AwaitingKeys,
                (None, false, Some(error)) => Verdict::Failed(error),
                (None, false, None) => Verdict::Missing,
            }
        }
        RequirementKind::All(children) => {
            let mut providers = Providers::new();
            let mut awaiting = false;
            let mut missing = false;
            let mut failed = None;
            for child in children {
                match evaluate(child, outcome) {
                    Verdict::Satisfied(more) => providers.extend(more),
                    Verdict::AwaitingKeys => awaiting = true,
                    Verdict::Missing => missing = true,
                    Verdict::Failed(error) => {
                        failed = Some(error);
                        break;
                    }
                }
            }
            match (failed, awaiting, missing) {
                (Some(error), _, _) => Verdict::Failed(error),
                (None, true, _) => Verdict::AwaitingKeys,
                (None, false, true) => Verdict::Missing,
                (None, false, false) => Verdict::Satisfied(providers),
            }
        }
    };
    match verdict {
        Verdict::Missing if requirement.allow_missing => Verdict::Satisfied(Providers::new()),
        other => other,
    }
}

fn most_specific(current: Option<AuthError>, candidate: AuthError) -> AuthError {
    match current {
        Some(existing) if existing.specificity() >= candidate.specificity() => existing,
        _ => candidate,
    }
}

#[cfg(test)]
mod tests;
