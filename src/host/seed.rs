//! The secret that places rate-limit keys in slots (`ratelimit::slots::SlotSeed`), kept in shared
//! data: every worker's VM must place a key in the same slot, and so must a VM that replaces a
//! failed one (`failure_policy: FAIL_RELOAD`). Shared data outlives VMs; a VM's memory does not.
//!
//! Who writes it first: Envoy configures a plugin in a throwaway VM on the main thread before any
//! worker has one (proxy-wasm-cpp-host `createWasm` runs `WasmHandleBase::canary`: clone the base
//! VM, start, configure, kill; workers configure theirs later in `getOrCreateThreadLocalPlugin`).
//! Seen in Envoy 1.40 at `--concurrency 2`: four "configured" lines per start, two on the main
//! thread (the canary, then the main thread's own copy) before "starting workers", then one per
//! worker; the first creates the seed, the other three log that they use the stored one.
//! Shared data has no create-if-absent (a set on a missing key ignores its cas), so nothing relies
//! on that order: a VM uses what it reads back after writing, and the root tick adopts the stored
//! seed if it ever differs.

use std::fmt;

use log::info;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use crate::ratelimit::slots::{SlotSeed, SEED_BYTES, SEED_NAME};

#[derive(Debug)]
pub enum SeedError {
    NoRandomness(getrandom::Error),
    NotStored(Status),
    NotReadBack,
}

impl fmt::Display for SeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeedError::NoRandomness(err) => write!(
                f,
                "local rate limits need a random seed, and the host's random source failed: {err}"
            ),
            SeedError::NotStored(status) => write!(
                f,
                "the rate-limit seed could not be written to shared data: {status:?}"
            ),
            SeedError::NotReadBack => {
                f.write_str("the rate-limit seed written to shared data could not be read back")
            }
        }
    }
}

/// The stored seed, if there is a readable one, and the cas of whatever is stored.
fn read() -> (Option<SlotSeed>, Option<u32>) {
    match hostcalls::get_shared_data(SEED_NAME) {
        Ok((value, cas)) => (value.and_then(|v| SlotSeed::from_stored(&v)), cas),
        Err(_) => (None, None),
    }
}

/// The seed every VM shares, made from the host's random source if there is none yet.
pub fn shared_seed() -> Result<SlotSeed, SeedError> {
    let (stored, cas) = read();
    if let Some(seed) = stored {
        info!("rate limits: using the stored slot seed");
        return Ok(seed);
    }
    let mut bytes = [0u8; SEED_BYTES];
    getrandom::fill(&mut bytes).map_err(SeedError::NoRandomness)?;
    // On a missing key the write is unconditional; if another VM wrote at the same moment, the
    // read below settles on whichever write came last.
    match hostcalls::set_shared_data(SEED_NAME, Some(&bytes), cas) {
        Ok(()) | Err(Status::CasMismatch) => {}
        Err(status) => return Err(SeedError::NotStored(status)),
    }
    let seed = read().0.ok_or(SeedError::NotReadBack)?;
    if seed.as_bytes() == &bytes {
        info!("rate limits: created the slot seed from the host's random source");
    } else {
        info!("rate limits: using the slot seed another VM created at the same time");
    }
    Ok(seed)
}

/// The stored seed now, for the root tick to check this VM still agrees.
pub fn stored_seed() -> Option<SlotSeed> {
    read().0
}
