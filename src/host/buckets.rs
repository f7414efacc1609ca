//! Rate-limit buckets in proxy-wasm shared data, updated with compare-and-swap so the limit is
//! exact across every Envoy worker. The buckets' logic and this VM's leases are
//! `ratelimit::store::Buckets`; this file is its shared data and the slots' creation.

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use super::seed::{shared_seed, stored_seed, SeedError};
use crate::config::{Config, Limit};
use crate::ratelimit::slots;
use crate::ratelimit::{Buckets, SharedSlots, Written};

/// Slot values in proxy-wasm shared data.
#[derive(Debug)]
pub struct SharedData;

impl SharedSlots for SharedData {
    fn read(&mut self, name: &str) -> (Vec<u8>, Option<u32>) {
        match hostcalls::get_shared_data(name) {
            Ok((value, cas)) => (value.unwrap_or_default(), cas),
            Err(_) => (Vec::new(), None),
        }
    }

    fn write(&mut self, name: &str, value: &[u8], version: Option<u32>) -> Written {
        match hostcalls::set_shared_data(name, Some(value), version) {
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

/// Creates the slots of `config`'s local policies and gets the shared seed.
pub fn for_config(config: &Config) -> Result<HostBuckets, SeedError> {
    let local = config
        .rate_limits
        .iter()
        .any(|policy| matches!(policy.limit, Limit::Local(_)));
    if !local {
        return Ok(Buckets::new(SharedData, None));
    }
    create_slots(config);
    Ok(Buckets::new(SharedData, Some(shared_seed()?)))
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
