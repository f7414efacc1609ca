//! Rate-limit buckets in proxy-wasm shared data, updated with compare-and-swap so the limit is
//! exact across every Envoy worker. The buckets' logic and this VM's leases are
//! `ratelimit::store::Buckets`; this file is its shared data. A slot is created when a key first
//! reaches it, under the creation lock (`ratelimit::create`): shared data has no delete, so
//! slots made up front would hold a policy's whole table (~0.5 MiB in Envoy) for any key count.

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use super::seed::{shared_seed, stored_seed, SeedError};
use super::state::now_ms;
use crate::config::{Config, Limit};
use crate::ratelimit::create::{self, RawShared, HOLDER_BYTES};
use crate::ratelimit::{Buckets, SharedSlots, Written};

/// Slot values in proxy-wasm shared data; `holder` marks the creation lock while this VM holds
/// it.
#[derive(Debug)]
pub struct SharedData {
    holder: [u8; HOLDER_BYTES],
}

/// Envoy's shared data, call by call.
struct Host;

impl RawShared for Host {
    fn get(&mut self, name: &str) -> Option<(Vec<u8>, u32)> {
        // A key that exists has a version; the SDK gives an empty value as `None`.
        match hostcalls::get_shared_data(name) {
            Ok((value, Some(version))) => Some((value.unwrap_or_default(), version)),
            _ => None,
        }
    }

    fn set(&mut self, name: &str, value: &[u8], version: Option<u32>) -> bool {
        hostcalls::set_shared_data(name, Some(value), version).is_ok()
    }
}

impl SharedSlots for SharedData {
    fn read(&mut self, name: &str) -> (Vec<u8>, Option<u32>) {
        if let Some((value, version)) = Host.get(name) {
            return (value, Some(version));
        }
        if create::ensure_slot(&mut Host, name, &self.holder, &mut now_ms) {
            if let Some((value, version)) = Host.get(name) {
                return (value, Some(version));
            }
        }
        (Vec::new(), None)
    }

    fn write(&mut self, name: &str, value: &[u8], version: Option<u32>) -> Written {
        // A slot that could not be created is never written: on a missing key Envoy's write
        // is unconditional, and could erase a take made by another worker that created it.
        let Some(version) = version else {
            return Written::Failed;
        };
        match hostcalls::set_shared_data(name, Some(value), Some(version)) {
            Ok(()) => Written::Done,
            Err(Status::CasMismatch) => Written::Conflict,
            Err(status) => {
                warn!("rate limits: cannot update shared data {name}: {status:?}");
                Written::Failed
            }
        }
    }
}

pub type HostBuckets = Buckets<SharedData>;

/// Gets the shared seed and makes the slots' creation lock for `config`'s local policies.
pub fn for_config(config: &Config) -> Result<HostBuckets, SeedError> {
    let local = config
        .rate_limits
        .iter()
        .any(|policy| matches!(policy.limit, Limit::Local(_)));
    if !local {
        let holder = [0u8; HOLDER_BYTES]; // never used: nothing is placed in a slot
        return Ok(Buckets::new(SharedData { holder }, None));
    }
    let mut holder = [0u8; HOLDER_BYTES];
    getrandom::fill(&mut holder).map_err(SeedError::NoRandomness)?;
    let slots = SharedData { holder };
    if !create::make_lock(&mut Host) {
        warn!("rate limits: cannot make the slots' creation lock in shared data; a key reaching a new slot will be refused");
    }
    Ok(Buckets::new(slots, Some(shared_seed()?)))
}

/// Adopts the stored seed if it is not this VM's (two VMs that created one at once).
pub fn recheck_seed(buckets: &mut HostBuckets, now_ms: u64) {
    let Some(seed) = buckets.seed() else {
        return;
    };
    match stored_seed() {
        Some(stored) if stored != seed => {
            warn!("rate limits: this VM's slot seed was not the stored one; adopting it");
            buckets.adopt_seed(stored, now_ms);
        }
        _ => {}
    }
}
