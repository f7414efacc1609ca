//! Rate-limit response headers: `RateLimit-Policy` and `RateLimit` as
//! draft-ietf-httpapi-ratelimit-headers (Structured Fields lists of `"name";q=..;w=..` and
//! `"name";r=..;t=..`), the legacy `X-RateLimit-Limit/Remaining/Reset`, and `Retry-After`.

use super::bucket::Take;
use super::PolicyOutcome;
use crate::config::{Config, Limit};

fn seconds_up(ms: u64) -> u64 {
    ms.div_ceil(1_000)
}

/// The window in which a bucket's quota (`max_tokens`) comes back in full.
fn window_s(bucket: &crate::config::TokenBucket) -> u64 {
    let interval_ms = u64::try_from(bucket.fill_interval.as_millis()).unwrap_or(u64::MAX);
    let fills = bucket.max_tokens.div_ceil(bucket.tokens_per_fill.max(1));
    seconds_up(interval_ms.saturating_mul(fills)).max(1)
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
        let Some(policy) = config.rate_limits.get(outcome.policy) else {
            continue;
        };
        let Limit::Local(bucket) = &policy.limit else {
            continue;
        };
        let (remaining, reset) = remaining_and_reset(outcome.take);
        let name = policy.name.replace(['"', '\\'], "");
        policy_items.push(format!(
            "\"{name}\";q={};w={}",
            bucket.max_tokens,
            window_s(bucket)
        ));
        state_items.push(format!("\"{name}\";r={remaining};t={reset}"));
    }
    let mut headers = Vec::new();
    if policy_items.is_empty() {
        return headers;
    }
    headers.push(("ratelimit-policy".to_string(), policy_items.join(", ")));
    headers.push(("ratelimit".to_string(), state_items.join(", ")));
    let primary = primary.and_then(|i| outcomes.get(i)).or_else(|| {
        outcomes
            .iter()
            .min_by_key(|o| remaining_and_reset(o.take).0)
    });
    if let Some(outcome) = primary {
        if let Some(Limit::Local(bucket)) = config.rate_limits.get(outcome.policy).map(|p| &p.limit)
        {
            let (remaining, reset) = remaining_and_reset(outcome.take);
            headers.push((
                "x-ratelimit-limit".to_string(),
                bucket.max_tokens.to_string(),
            ));
            headers.push(("x-ratelimit-remaining".to_string(), remaining.to_string()));
            headers.push(("x-ratelimit-reset".to_string(), reset.to_string()));
        }
        if let Take::Refused { retry_after_ms, .. } = outcome.take {
            headers.push((
                "retry-after".to_string(),
                seconds_up(retry_after_ms).max(1).to_string(),
            ));
        }
    }
    headers
}
