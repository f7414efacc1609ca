//! Token-bucket arithmetic, as a pure function of (state, now): Envoy local_ratelimit's
//! refill-on-access bucket, plus reservations for "delay" mode. A delayed request takes a
//! token that is not there yet (the count goes below zero), so every waiter knows exactly when
//! its token is due and waiters on one key are served first come, first served.

use crate::config::TokenBucket;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Tokens available; below zero when delayed requests hold tokens not yet refilled.
    pub tokens: i64,
    /// When the last fill was counted.
    pub last_fill_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeMode {
    Reject,
    Delay { max_delay_ms: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Allowed {
        remaining: u64,
        reset_ms: u64,
    },
    /// Allowed once `wait_ms` has passed; the token is reserved.
    Delayed {
        wait_ms: u64,
        reset_ms: u64,
    },
    Refused {
        retry_after_ms: u64,
        reset_ms: u64,
    },
}

fn interval_ms(bucket: &TokenBucket) -> u64 {
    u64::try_from(bucket.fill_interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn max_tokens(bucket: &TokenBucket) -> i64 {
    i64::try_from(bucket.max_tokens).unwrap_or(i64::MAX)
}

impl BucketState {
    pub fn full(bucket: &TokenBucket, now_ms: u64) -> BucketState {
        BucketState {
            tokens: max_tokens(bucket),
            last_fill_ms: now_ms,
        }
    }

    /// Adds the fills due since `last_fill_ms`. A clock that went backwards adds nothing.
    pub fn refilled(self, bucket: &TokenBucket, now_ms: u64) -> BucketState {
        if now_ms <= self.last_fill_ms {
            return self;
        }
        let interval = interval_ms(bucket);
        let fills = (now_ms - self.last_fill_ms) / interval;
        if fills == 0 {
            return self;
        }
        let added = i64::try_from(fills.saturating_mul(bucket.tokens_per_fill)).unwrap_or(i64::MAX);
        BucketState {
            tokens: self.tokens.saturating_add(added).min(max_tokens(bucket)),
            last_fill_ms: self
                .last_fill_ms
                .saturating_add(fills.saturating_mul(interval)),
        }
    }

    /// Whether the bucket is full as of `now`: forgetting it loses nothing.
    pub fn is_idle(self, bucket: &TokenBucket, now_ms: u64) -> bool {
        self.refilled(bucket, now_ms).tokens >= max_tokens(bucket)
    }

    /// Milliseconds until the bucket holds at least one more token than now.
    fn next_fill_in(self, bucket: &TokenBucket, now_ms: u64) -> u64 {
        self.last_fill_ms
            .saturating_add(interval_ms(bucket))
            .saturating_sub(now_ms)
    }

    /// Milliseconds until a token is due for the next taker.
    fn wait_for_token(self, bucket: &TokenBucket, now_ms: u64) -> u64 {
        let missing = u64::try_from(1i64.saturating_sub(self.tokens)).unwrap_or(0);
        let fills = missing.div_ceil(bucket.tokens_per_fill.max(1));
        let due = self
            .last_fill_ms
            .saturating_add(fills.saturating_mul(interval_ms(bucket)));
        due.saturating_sub(now_ms)
    }

    /// Takes one token.
    pub fn take(self, bucket: &TokenBucket, now_ms: u64, mode: TakeMode) -> (BucketState, Take) {
        let state = self.refilled(bucket, now_ms);
        let reset_ms = state.next_fill_in(bucket, now_ms);
        if state.tokens >= 1 {
            let after = BucketState {
                tokens: state.tokens - 1,
                ..state
            };
            let remaining = u64::try_from(after.tokens).unwrap_or(0);
            return (
                after,
                Take::Allowed {
                    remaining,
                    reset_ms,
                },
            );
        }
        let wait_ms = state.wait_for_token(bucket, now_ms);
        match mode {
            TakeMode::Delay { max_delay_ms } if wait_ms <= max_delay_ms => {
                let after = BucketState {
                    tokens: state.tokens - 1,
                    ..state
                };
                (after, Take::Delayed { wait_ms, reset_ms })
            }
            _ => (
                state,
                Take::Refused {
                    retry_after_ms: wait_ms,
                    reset_ms,
                },
            ),
        }
    }

    /// Gives a token back (a request refused by another policy, or a delayed one cancelled).
    pub fn refund(self, bucket: &TokenBucket) -> BucketState {
        BucketState {
            tokens: self.tokens.saturating_add(1).min(max_tokens(bucket)),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bucket(max: u64, per_fill: u64, interval_ms: u64) -> TokenBucket {
        TokenBucket {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Duration::from_millis(interval_ms),
        }
    }

    fn take_n(
        mut state: BucketState,
        b: &TokenBucket,
        now: u64,
        n: usize,
        mode: TakeMode,
    ) -> (BucketState, Vec<Take>) {
        let mut takes = Vec::new();
        for _ in 0..n {
            let (next, take) = state.take(b, now, mode);
            state = next;
            takes.push(take);
        }
        (state, takes)
    }

    #[test]
    fn a_full_bucket_allows_exactly_max_tokens() {
        let b = bucket(5, 5, 1_000);
        let (_, takes) = take_n(BucketState::full(&b, 0), &b, 10, 7, TakeMode::Reject);
        let allowed = takes
            .iter()
            .filter(|t| matches!(t, Take::Allowed { .. }))
            .count();
        assert_eq!(allowed, 5);
        assert_eq!(
            takes[4],
            Take::Allowed {
                remaining: 0,
                reset_ms: 990
            }
        );
        assert_eq!(
            takes[5],
            Take::Refused {
                retry_after_ms: 990,
                reset_ms: 990
            }
        );
    }

    #[test]
    fn refills_by_whole_intervals_up_to_max() {
        let b = bucket(10, 3, 100);
        let empty = BucketState {
            tokens: 0,
            last_fill_ms: 0,
        };
        assert_eq!(empty.refilled(&b, 99).tokens, 0);
        assert_eq!(
            empty.refilled(&b, 100),
            BucketState {
                tokens: 3,
                last_fill_ms: 100
            }
        );
        assert_eq!(
            empty.refilled(&b, 250),
            BucketState {
                tokens: 6,
                last_fill_ms: 200
            }
        );
        assert_eq!(empty.refilled(&b, 10_000).tokens, 10);
    }

    #[test]
    fn a_clock_that_jumps_back_refills_nothing_and_breaks_nothing() {
        let b = bucket(2, 1, 100);
        let state = BucketState {
            tokens: 0,
            last_fill_ms: 5_000,
        };
        assert_eq!(state.refilled(&b, 1_000), state);
        let (_, take) = state.take(&b, 1_000, TakeMode::Reject);
        assert!(matches!(take, Take::Refused { .. }));
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        let b = bucket(u64::MAX, u64::MAX, 1);
        let state = BucketState {
            tokens: 0,
            last_fill_ms: 0,
        };
        assert_eq!(state.refilled(&b, u64::MAX).tokens, i64::MAX);
        let slow = bucket(1, 1, u64::MAX);
        let (_, take) = BucketState {
            tokens: 0,
            last_fill_ms: u64::MAX - 1,
        }
        .take(&slow, u64::MAX, TakeMode::Reject);
        assert!(matches!(take, Take::Refused { .. }));
    }

    #[test]
    fn delayed_requests_queue_in_order_within_max_delay() {
        let b = bucket(1, 1, 100);
        let mode = TakeMode::Delay { max_delay_ms: 250 };
        let (state, takes) = take_n(BucketState::full(&b, 0), &b, 0, 5, mode);
        assert!(matches!(takes[0], Take::Allowed { .. }));
        assert!(matches!(takes[1], Take::Delayed { wait_ms: 100, .. }));
        assert!(matches!(takes[2], Take::Delayed { wait_ms: 200, .. }));
        // The next token would be due in 300 ms: past max_delay.
        assert!(matches!(
            takes[3],
            Take::Refused {
                retry_after_ms: 300,
                ..
            }
        ));
        assert!(matches!(takes[4], Take::Refused { .. }));
        assert_eq!(state.tokens, -2);
        // Once their time has come, the reservations are paid and the bucket recovers.
        assert_eq!(state.refilled(&b, 300).tokens, 1);
    }

    #[test]
    fn refunds_return_tokens_but_never_overfill() {
        let b = bucket(2, 1, 100);
        let state = BucketState {
            tokens: 1,
            last_fill_ms: 0,
        };
        assert_eq!(state.refund(&b).tokens, 2);
        assert_eq!(state.refund(&b).refund(&b).tokens, 2);
    }

    #[test]
    fn idle_means_full_as_of_now() {
        let b = bucket(3, 1, 100);
        let state = BucketState {
            tokens: 1,
            last_fill_ms: 0,
        };
        assert!(!state.is_idle(&b, 150));
        assert!(state.is_idle(&b, 200));
    }
}
