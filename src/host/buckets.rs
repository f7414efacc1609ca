//! Rate-limit buckets in proxy-wasm shared data, updated with compare-and-swap so the limit is
//! exact across every Envoy worker.

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use crate::config::{Config, Limit, RateLimitPolicy, TokenBucket};
use crate::ratelimit::bucket::{Take, TakeMode};
use crate::ratelimit::{slots, BucketStore};

/// Concurrent updates of one slot retry this often before giving up (and refusing).
const CAS_ATTEMPTS: usize = 64;

#[derive(Debug, Default)]
pub struct HostBuckets;

/// Creates every slot of every local policy that does not exist yet, so that all later writes
/// are compare-and-swap (a write to a missing key cannot be conditional).
pub fn create_slots(config: &Config) {
    for policy in &config.rate_limits {
        if !matches!(policy.limit, Limit::Local(_)) {
            continue;
        }
        for name in slots::all_slot_names(&policy.name) {
            if let Ok((None, _)) | Err(Status::NotFound) =
                hostcalls::get_shared_data(&name).map(|(v, c)| (v.map(drop), c))
            {
                let _ = hostcalls::set_shared_data(&name, Some(&[]), None);
            }
        }
    }
}

fn read(name: &str) -> (Vec<u8>, Option<u32>) {
    match hostcalls::get_shared_data(name) {
        Ok((value, cas)) => (value.unwrap_or_default(), cas),
        Err(_) => (Vec::new(), None),
    }
}

impl BucketStore for HostBuckets {
    fn take(
        &mut self,
        policy: &RateLimitPolicy,
        bucket: &TokenBucket,
        key: &str,
        now_ms: u64,
        mode: TakeMode,
    ) -> Take {
        let name = slots::slot_name(&policy.name, key);
        for _ in 0..CAS_ATTEMPTS {
            let (current, cas) = read(&name);
            let (value, take) = slots::take_in_slot(&current, key, bucket, now_ms, mode);
            match hostcalls::set_shared_data(&name, Some(&value), cas) {
                Ok(()) => return take,
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    warn!(
                        "rate limit {}: cannot update shared data: {status:?}",
                        policy.name
                    );
                    break;
                }
            }
        }
        // Fail closed: never let a request through uncounted.
        Take::Refused {
            retry_after_ms: 1_000,
            reset_ms: 1_000,
        }
    }

    fn refund(&mut self, policy: &RateLimitPolicy, bucket: &TokenBucket, key: &str) {
        let name = slots::slot_name(&policy.name, key);
        for _ in 0..CAS_ATTEMPTS {
            let (current, cas) = read(&name);
            let Some(value) = slots::refund_in_slot(&current, key, bucket) else {
                return;
            };
            match hostcalls::set_shared_data(&name, Some(&value), cas) {
                Err(Status::CasMismatch) => continue,
                _ => return,
            }
        }
    }
}
