//! Buckets shared by every worker, over any store of slot values with compare-and-swap
//! (`SharedSlots`: proxy-wasm shared data in the host, a map in tests), with this VM's leases
//! (`lease`) in front: most requests of a busy key are served from a lease, without a shared-data
//! read or write.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::bucket::{Take, TakeMode};
use super::lease::{BatchPlan, Lease, LeaseTable, Served};
use super::slots::{self, PaidBy, SlotName, SlotSeed, TakeExtras};
use super::BucketStore;
use crate::config::{RateLimitPolicy, TokenBucket};

/// Concurrent updates of one slot retry this often before giving up (and refusing).
pub const CAS_ATTEMPTS: usize = 64;

/// What a request gets when its bucket cannot be updated: refused, never let through uncounted.
pub const FAIL_CLOSED: Take = Take::Refused {
    retry_after_ms: 1_000,
    reset_ms: 1_000,
};

/// How a conditional write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// Another worker wrote the slot since it was read: read again.
    Conflict,
    /// The store refused the write; give up.
    Failed,
}

/// Slot values shared by every worker, written with compare-and-swap.
pub trait SharedSlots {
    /// The slot's value and its version for a conditional write (`None` if it has none).
    fn read(&mut self, name: &str) -> (Vec<u8>, Option<u32>);
    /// Writes `value` if the slot is still at `version`.
    fn write(&mut self, name: &str, value: &[u8], version: Option<u32>) -> Written;
}

/// Reads the slot, lets `change` edit its value in place, and writes it back if `change` says
/// so (`Some`), again from a fresh read while another worker wrote in between. `None` when
/// nothing was written: `change` said so, or the store failed or stayed contended.
fn update<S: SharedSlots + ?Sized, R>(
    slots: &mut S,
    name: &str,
    mut change: impl FnMut(&mut Vec<u8>) -> Option<R>,
) -> Option<R> {
    for _ in 0..CAS_ATTEMPTS {
        let (mut value, version) = slots.read(name);
        let result = change(&mut value)?;
        match slots.write(name, &value, version) {
            Written::Done => return Some(result),
            Written::Conflict => continue,
            Written::Failed => return None,
        }
    }
    None
}

/// Rate-limit buckets for one VM: the shared slots, the seed that places keys in them, and this
/// VM's leases.
#[derive(Debug)]
pub struct Buckets<S> {
    slots: S,
    /// `None` when nothing is ever placed (no local policy, or no seed): every take fails closed.
    seed: Option<SlotSeed>,
    leases: LeaseTable,
    name: SlotName,
}

impl<S: SharedSlots> Buckets<S> {
    pub fn new(slots: S, seed: Option<SlotSeed>) -> Buckets<S> {
        Buckets {
            slots,
            seed,
            leases: LeaseTable::default(),
            name: SlotName::default(),
        }
    }

    pub fn seed(&self) -> Option<SlotSeed> {
        self.seed
    }

    /// Places keys with `seed` from now on. The leases end first, their tokens going back to
    /// the buckets they came from (placed by the old seed).
    pub fn adopt_seed(&mut self, seed: SlotSeed, now_ms: u64) {
        self.end_leases(now_ms, true);
        self.seed = Some(seed);
    }

    /// Ends the leases whose time is up (every lease with `all`, when the VM is reconfigured)
    /// and gives their unused tokens back. For the root context's tick.
    pub fn end_leases(&mut self, now_ms: u64, all: bool) {
        for lease in self.leases.end(now_ms, all) {
            self.give_back(&lease, now_ms);
        }
    }

    /// When the root context should tick next to end a lease: the earliest end of a lease with
    /// tokens left.
    pub fn next_lease_end_ms(&self) -> Option<u64> {
        self.leases.next_end_ms()
    }

    pub fn leases(&self) -> usize {
        self.leases.len()
    }

    /// Tokens this VM's lease of `key` can still serve as of `now_ms`.
    pub fn leased(&self, policy: &str, key: &str, now_ms: u64) -> u64 {
        self.leases.unused(policy, key, now_ms)
    }

    fn give_back(&mut self, lease: &Lease, now_ms: u64) {
        let (Some(seed), Some(give_back)) = (self.seed, lease.give_back()) else {
            return;
        };
        let address = slots::locate(&seed, &lease.policy, &lease.key);
        let name = self.name.of(&lease.policy, address.slot);
        let bucket = lease.bucket;
        update(&mut self.slots, name, |value| {
            slots::give_back_in_slot(value, &address.key, &bucket, now_ms, give_back).then_some(())
        });
    }
}

impl<S: SharedSlots> BucketStore for Buckets<S> {
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
        let plan = match mode {
            TakeMode::Reject if !policy.shadow => BatchPlan::for_bucket(bucket),
            _ => None,
        };
        let mut extras = TakeExtras::default();
        if let Some(plan) = &plan {
            match self.leases.serve(&policy.name, key, now_ms) {
                Served::Leased(take, id) => return (take, PaidBy::Lease(id)),
                Served::Shared(give_back) => {
                    extras = TakeExtras {
                        give_back,
                        batch: Some(plan),
                    }
                }
            }
        }
        let address = slots::locate(&seed, &policy.name, key);
        let name = self.name.of(&policy.name, address.slot);
        let taken = update(&mut self.slots, name, |value| {
            Some(slots::take_in_slot(
                value,
                &address.key,
                bucket,
                now_ms,
                mode,
                extras,
            ))
        });
        let Some(taken) = taken else {
            // Nothing was taken, so nothing is for a refund to find.
            return (FAIL_CLOSED, PaidBy::KeyBucket);
        };
        let Some(grant) = taken.grant else {
            return (taken.take, taken.paid_by);
        };
        let (id, evicted) = self.leases.insert(&policy.name, key, bucket, grant, now_ms);
        if let Some(evicted) = evicted {
            self.give_back(&evicted, now_ms);
        }
        (taken.take, PaidBy::Lease(id))
    }

    fn refund(
        &mut self,
        policy: &RateLimitPolicy,
        bucket: &TokenBucket,
        key: &str,
        paid_by: PaidBy,
    ) {
        if let PaidBy::Lease(id) = paid_by {
            self.leases.give_one_back(id);
            return;
        }
        let Some(seed) = self.seed else {
            return;
        };
        let address = slots::locate(&seed, &policy.name, key);
        let name = self.name.of(&policy.name, address.slot);
        update(&mut self.slots, name, |value| {
            slots::refund_in_slot(value, &address.key, paid_by, bucket).then_some(())
        });
    }
}

/// A slot's value and its version.
type Versioned = (Vec<u8>, u32);

/// Slot values in one process's memory, shared by every clone (the workers of a test).
#[derive(Debug, Clone, Default)]
pub struct MemorySlots {
    values: Rc<RefCell<HashMap<String, Versioned>>>,
}

impl MemorySlots {
    #[cfg(test)]
    pub fn value(&self, name: &str) -> Vec<u8> {
        self.values
            .borrow()
            .get(name)
            .map(|(value, _)| value.clone())
            .unwrap_or_default()
    }
}

impl SharedSlots for MemorySlots {
    fn read(&mut self, name: &str) -> (Vec<u8>, Option<u32>) {
        match self.values.borrow().get(name) {
            Some((value, version)) => (value.clone(), Some(*version)),
            None => (Vec::new(), None),
        }
    }

    fn write(&mut self, name: &str, value: &[u8], version: Option<u32>) -> Written {
        let mut values = self.values.borrow_mut();
        let current = values.get(name).map(|(_, v)| *v);
        if version.is_some() && current != version {
            return Written::Conflict;
        }
        let next = current.map_or(1, |v| v.wrapping_add(1));
        values.insert(name.to_owned(), (value.to_vec(), next));
        Written::Done
    }
}

/// Buckets in one process's memory: for tests and the native tools.
pub type MemoryBuckets = Buckets<MemorySlots>;

impl Default for Buckets<MemorySlots> {
    /// A fixed seed: no client reaches these buckets, and runs place keys alike.
    fn default() -> MemoryBuckets {
        Buckets::new(
            MemorySlots::default(),
            Some(SlotSeed::new([0; slots::SEED_BYTES])),
        )
    }
}

impl Buckets<MemorySlots> {
    /// Another worker's buckets over the same slots (same seed, leases of its own).
    pub fn worker(&self) -> MemoryBuckets {
        Buckets::new(self.slots.clone(), self.seed)
    }

    #[cfg(test)]
    pub fn slots(&self) -> &MemorySlots {
        &self.slots
    }

    #[cfg(test)]
    pub fn lease_table(&self) -> &LeaseTable {
        &self.leases
    }
}

#[cfg(test)]
mod tests;
