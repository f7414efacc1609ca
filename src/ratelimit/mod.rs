//! Traffic shaping: a rule's rate-limit policies, applied after auth. Pure: buckets are reached
//! through `BucketStore`, which `store::Buckets` implements over slot values shared by every
//! worker (proxy-wasm shared data in the host, exact across workers; memory in tests), with
//! each worker's leased batches in front (`lease`).

pub mod bucket;
pub mod create;
pub mod headers;
pub mod key;
pub mod lease;
pub mod rls;
pub mod slots;
pub mod store;

use bucket::{Take, TakeMode};
use key::{build_key, KeyFacts};
use slots::PaidBy;
use smallvec::SmallVec;
pub use store::{Buckets, MemoryBuckets, MemorySlots, SharedSlots, Written};

use crate::config::{Config, Limit, LimitMode, RateLimitPolicy, TokenBucket};

/// Buckets shared by every worker.
pub trait BucketStore {
    /// Takes a token for `key`; says which bucket paid, for a refund.
    fn take(
        &mut self,
        policy: &RateLimitPolicy,
        bucket: &TokenBucket,
        key: &str,
        now_ms: u64,
        mode: TakeMode,
    ) -> (Take, PaidBy);
    fn refund(
        &mut self,
        policy: &RateLimitPolicy,
        bucket: &TokenBucket,
        key: &str,
        paid_by: PaidBy,
    );
}

/// What a policy advertises in `RateLimit-Policy`: `q` requests per `w` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub window_s: u64,
}

impl Quota {
    /// A bucket's quota comes back in full over `ceil(max / per_fill)` intervals.
    pub fn of_bucket(bucket: &TokenBucket) -> Quota {
        let interval_ms = u64::try_from(bucket.fill_interval.as_millis()).unwrap_or(u64::MAX);
        let fills = bucket.max_tokens.div_ceil(bucket.tokens_per_fill.max(1));
        Quota {
            limit: bucket.max_tokens,
            window_s: interval_ms.saturating_mul(fills).div_ceil(1_000).max(1),
        }
    }
}

/// What one policy decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutcome {
    /// Index into `Config::rate_limits`.
    pub policy: usize,
    pub key: String,
    pub take: Take,
    /// The local bucket that paid, where a refund goes; `None` for a rate-limit service's count.
    pub paid_by: Option<PaidBy>,
    pub shadow: bool,
    /// `None` when a rate-limit service did not say.
    pub quota: Option<Quota>,
}

/// What each policy of a rule decided; a rule has one or two, kept inline.
pub type Outcomes = SmallVec<[PolicyOutcome; 2]>;

/// A question for the rate-limit service, one per `service` policy of the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalCheck {
    pub policy: usize,
    pub cluster: String,
    pub timeout: std::time::Duration,
    /// An encoded `RateLimitRequest`.
    pub message: Vec<u8>,
    pub key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalAnswer {
    Answered(rls::RlsAnswer),
    /// No answer: the call failed, timed out, or the reply was unreadable.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every policy allowed (shadow refusals included here: they never refuse).
    Allowed(Outcomes),
    /// Allowed after `wait_ms`; tokens are reserved (refund them if the request goes away).
    Delayed { wait_ms: u64, outcomes: Outcomes },
    /// `refused_by` (an index into the outcomes) said no; tokens taken by the others were refunded.
    Refused {
        outcomes: Outcomes,
        refused_by: usize,
    },
    /// A rate-limit service did not answer and its policy has `failure_mode_deny`.
    ServiceUnavailable { policy: usize },
}

fn take_mode(policy: &RateLimitPolicy) -> TakeMode {
    match policy.mode {
        // A shadow policy never holds a request, so it never reserves.
        LimitMode::Delay { max_delay } if !policy.shadow => TakeMode::Delay {
            max_delay_ms: u64::try_from(max_delay.as_millis()).unwrap_or(u64::MAX),
        },
        _ => TakeMode::Reject,
    }
}

/// Applies `policies` in order. A request passes only if every enforcing policy lets it; when
/// one refuses, tokens already taken from the others are given back, so a refused request
/// costs nothing elsewhere. Policies with `service` (global limits) are not local buckets and
/// are asked separately (`global_checks`, then `combine`).
pub fn apply(
    config: &Config,
    policies: &[usize],
    facts: &KeyFacts,
    store: &mut dyn BucketStore,
    now_ms: u64,
) -> Verdict {
    let mut outcomes = Outcomes::new();
    for &index in policies {
        let Some(policy) = config.rate_limits.get(index) else {
            continue;
        };
        let Limit::Local(bucket) = &policy.limit else {
            continue;
        };
        let key = build_key(&policy.key, facts);
        let (take, paid_by) = store.take(policy, bucket, &key, now_ms, take_mode(policy));
        outcomes.push(PolicyOutcome {
            policy: index,
            key,
            take,
            paid_by: Some(paid_by),
            shadow: policy.shadow,
            quota: Some(Quota::of_bucket(bucket)),
        });
        if matches!(take, Take::Refused { .. }) && !policy.shadow {
            let refused_by = outcomes.len() - 1;
            for earlier in outcomes.iter().take(refused_by) {
                if matches!(earlier.take, Take::Allowed { .. } | Take::Delayed { .. }) {
                    refund(config, earlier, store);
                }
            }
            return Verdict::Refused {
                outcomes,
                refused_by,
            };
        }
    }
    let wait_ms = outcomes
        .iter()
        .filter_map(|o| match o.take {
            Take::Delayed { wait_ms, .. } => Some(wait_ms),
            _ => None,
        })
        .max();
    match wait_ms {
        Some(wait_ms) => Verdict::Delayed { wait_ms, outcomes },
        None => Verdict::Allowed(outcomes),
    }
}

/// The questions for the rate-limit service that `policies` need (their `service` policies).
pub fn global_checks(config: &Config, policies: &[usize], facts: &KeyFacts) -> Vec<GlobalCheck> {
    policies
        .iter()
        .filter_map(|&index| {
            let policy = config.rate_limits.get(index)?;
            let Limit::Service(service) = &policy.limit else {
                return None;
            };
            let entries = rls::descriptor_entries(&policy.key, facts);
            Some(GlobalCheck {
                policy: index,
                cluster: service.cluster.clone(),
                timeout: service.timeout,
                message: rls::encode_request(&service.domain, &entries, 1),
                key: build_key(&policy.key, facts),
            })
        })
        .collect()
}

/// Folds the service's answers into the local verdict. An over-limit answer refuses (and gives
/// back local tokens); a missing answer refuses only with `failure_mode_deny`.
pub fn combine(
    config: &Config,
    local: Verdict,
    answers: &[(GlobalCheck, GlobalAnswer)],
    store: &mut dyn BucketStore,
) -> Verdict {
    let (mut outcomes, wait_ms) = match local {
        Verdict::Allowed(outcomes) => (outcomes, None),
        Verdict::Delayed { wait_ms, outcomes } => (outcomes, Some(wait_ms)),
        refused => return refused,
    };
    let give_back = |outcomes: &[PolicyOutcome], store: &mut dyn BucketStore| {
        for outcome in outcomes {
            if matches!(outcome.take, Take::Allowed { .. } | Take::Delayed { .. }) {
                refund(config, outcome, store);
            }
        }
    };
    for (check, answer) in answers {
        let Some(policy) = config.rate_limits.get(check.policy) else {
            continue;
        };
        let failure_mode_deny = matches!(&policy.limit, Limit::Service(s) if s.failure_mode_deny);
        match answer {
            GlobalAnswer::Failed if failure_mode_deny && !policy.shadow => {
                give_back(&outcomes, store);
                return Verdict::ServiceUnavailable {
                    policy: check.policy,
                };
            }
            GlobalAnswer::Failed => {}
            GlobalAnswer::Answered(answer) => {
                let reset_ms = answer.reset_s.saturating_mul(1_000);
                let take = if answer.over_limit {
                    Take::Refused {
                        retry_after_ms: reset_ms,
                        reset_ms,
                    }
                } else {
                    Take::Allowed {
                        remaining: answer.remaining,
                        reset_ms,
                    }
                };
                outcomes.push(PolicyOutcome {
                    policy: check.policy,
                    key: check.key.clone(),
                    take,
                    paid_by: None,
                    shadow: policy.shadow,
                    quota: answer
                        .limit
                        .map(|(limit, window_s)| Quota { limit, window_s }),
                });
                if answer.over_limit && !policy.shadow {
                    let refused_by = outcomes.len() - 1;
                    give_back(outcomes.get(..refused_by).unwrap_or_default(), store);
                    return Verdict::Refused {
                        outcomes,
                        refused_by,
                    };
                }
            }
        }
    }
    match wait_ms {
        Some(wait_ms) => Verdict::Delayed { wait_ms, outcomes },
        None => Verdict::Allowed(outcomes),
    }
}

fn refund(config: &Config, outcome: &PolicyOutcome, store: &mut dyn BucketStore) {
    let Some(paid_by) = outcome.paid_by else {
        return;
    };
    if let Some(policy) = config.rate_limits.get(outcome.policy) {
        if let Limit::Local(bucket) = &policy.limit {
            store.refund(policy, bucket, &outcome.key, paid_by);
        }
    }
}

/// Gives back the tokens a delayed request reserved (it was cancelled before its turn).
pub fn release(config: &Config, outcomes: &[PolicyOutcome], store: &mut dyn BucketStore) {
    for outcome in outcomes
        .iter()
        .filter(|o| matches!(o.take, Take::Delayed { .. }))
    {
        refund(config, outcome, store);
    }
}

#[cfg(test)]
mod tests;
