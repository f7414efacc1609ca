//! Rate-limit response headers: `RateLimit-Policy` and `RateLimit` as
//! draft-ietf-httpapi-ratelimit-headers (Structured Fields lists of `"name";q=..;w=..` and
//! `"name";r=..;t=..`), the legacy `X-RateLimit-Limit/Remaining/Reset`, and `Retry-After`.

use super::bucket::Take;
use super::PolicyOutcome;
use crate::config::Config;

fn seconds_up(ms: u64) -> u64 {
    ms.div_ceil(1_000)
}

fn remaining_and_reset(take: Take) -> (u64, u64) {
    match take {
        Take::Allowed {
            remaining,
            reset_ms,
        } => (remaining, seconds_up(reset_ms)),
        Take::Delayed { reset_ms, .. } | Take::Refused { reset_ms, .. } => {
            (0, seconds_up(reset_ms))
        }
    }
}

/// Headers describing `outcomes`; `primary` (the refusing or most constrained policy) fills the
/// legacy single-policy headers.
pub fn rate_limit_headers(
    config: &Config,
    outcomes: &[PolicyOutcome],
    primary: Option<usize>,
) -> Vec<(String, String)> {
    let mut policy_items = Vec::new();
    let mut state_items = Vec::new();
    for outcome in outcomes {
        let (Some(policy), Some(quota)) = (config.rate_limits.get(outcome.policy), outcome.quota)
        else {
            continue;
        };
        let (remaining, reset) = remaining_and_reset(outcome.take);
        let name = policy.name.replace(['"', '\\'], "");
        policy_items.push(format!("\"{name}\";q={};w={}", quota.limit, quota.window_s));
        state_items.push(format!("\"{name}\";r={remaining};t={reset}"));
    }
    let mut headers = Vec::new();
    if !policy_items.is_empty() {
        headers.push(("ratelimit-policy".to_string(), policy_items.join(", ")));
        headers.push(("ratelimit".to_string(), state_items.join(", ")));
    }
    let primary = primary.and_then(|i| outcomes.get(i)).or_else(|| {
        outcomes
            .iter()
            .min_by_key(|o| remaining_and_reset(o.take).0)
    });
    if let Some(outcome) = primary {
        let (remaining, reset) = remaining_and_reset(outcome.take);
        if let Some(quota) = outcome.quota {
            headers.push(("x-ratelimit-limit".to_string(), quota.limit.to_string()));
        }
        headers.push(("x-ratelimit-remaining".to_string(), remaining.to_string()));
        headers.push(("x-ratelimit-reset".to_string(), reset.to_string()));
        if let Take::Refused { retry_after_ms, .. } = outcome.take {
            headers.push((
                "retry-after".to_string(),
                seconds_up(retry_after_ms).max(1).to_string(),
            ));
        }
    }
    headers
}
