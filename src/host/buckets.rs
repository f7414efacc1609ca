//! Rate-limit buckets in proxy-wasm shared data, updated with compare-and-swap so the limit is
//! exact across every Envoy worker.

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use super::seed::{shared_seed, stored_seed, SeedError};
use crate::config::{Config, Limit, RateLimitPolicy, TokenBucket};
use crate::ratelimit::bucket::{Take, TakeMode};
use crate::ratelimit::slots::{self, PaidBy, SlotSeed};
use crate::ratelimit::BucketStore;

/// Concurrent updates of one slot retry this often before giving up (and refusing).
const CAS_ATTEMPTS: usize = 64;

/// What a request gets when its bucket cannot be updated: refused, never let through uncounted.
const FAIL_CLOSED: Take = Take::Refused {
    retry_after_ms: 1_000,
    reset_ms: 1_000,
};

#[derive(Debug)]
pub struct HostBuckets {
    /// `None` when the configuration has no local policy (nothing is ever placed).
    seed: Option<SlotSeed>,
}

impl HostBuckets {
    /// Creates the slots of `config`'s local policies and gets the shared seed.
    pub fn for_config(config: &Config) -> Result<HostBuckets, SeedError> {
        let local = config
            .rate_limits
            .iter()
            .any(|policy| matches!(policy.limit, Limit::Local(_)));
        if !local {
            return Ok(HostBuckets { seed: None });
        }
        create_slots(config);
        Ok(HostBuckets {
            seed: Some(shared_seed()?),
        })
    }

    /// Adopts the stored seed if it is not this VM's (two VMs that created one at once).
    pub fn recheck_seed(&mut self) {
        let Some(seed) = self.seed else {
            return;
        };
        match stored_seed() {
            Some(stored) if stored != seed => {
                warn!("rate limits: this VM's slot seed was not the stored one; adopting it");
                self.seed = Some(stored);
            }
            _ => {}
        }
    }
}

/// Creates every slot of every local policy that does not exist yet, so that all later writes
/// are compare-and-swap (a write to a missing key cannot be conditional).
fn create_slots(config: &Config) {
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
    ) -> (Take, PaidBy) {
        let Some(seed) = self.seed else {
            return (FAIL_CLOSED, PaidBy::KeyBucket);
        };
        let address = slots::locate(&seed, &policy.name, key);
        for _ in 0..CAS_ATTEMPTS {
            let (current, cas) = read(&address.slot_name);
            let (value, take, paid_by) =
                slots::take_in_slot(&current, &address.key, bucket, now_ms, mode);
            match hostcalls::set_shared_data(&address.slot_name, Some(&value), cas) {
                Ok(()) => return (take, paid_by),
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
        // Nothing was taken, so nothing is for a refund to find.
        (FAIL_CLOSED, PaidBy::KeyBucket)
    }

    fn refund(
        &mut self,
        policy: &RateLimitPolicy,
        bucket: &TokenBucket,
        key: &str,
        paid_by: PaidBy,
    ) {
        let Some(seed) = self.seed else {
            return;
        };
        let address = slots::locate(&seed, &policy.name, key);
        for _ in 0..CAS_ATTEMPTS {
            let (current, cas) = read(&address.slot_name);
            let Some(value) = slots::refund_in_slot(&current, &address.key, paid_by, bucket) else {
                return;
            };
            match hostcalls::set_shared_data(&address.slot_name, Some(&value), cas) {
                Err(Status::CasMismatch) => continue,
                _ => return,
            }
        }
    }
}
