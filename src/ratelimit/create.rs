//! Creating a rate-limit slot on first use, so that a policy's shared data holds only the slots
//! its keys have reached (each costs Envoy ~120 bytes; a policy has `SLOTS_PER_POLICY`).
//!
//! proxy-wasm's shared data has no create-if-absent: a `set` on a missing key ignores its
//! compare-and-swap version. Two workers that both found a slot missing and both wrote it would
//! each believe their write stood, and the later one would erase what a take had stored in
//! between: a refill. So a slot is created only by the holder of one creation lock (a shared-data
//! key of its own), and only after looking again, under the lock, that it is still missing.
//!
//! The lock is made when a VM is configured with a local policy. Envoy configures a plugin in a
//! VM on the main thread before any worker runs one (see `host::seed`), so it exists before any
//! worker takes it; a later VM finds it. A holder keeps it for three calls into Envoy within one
//! callback; one that never lets go (a VM that trapped in between) is overtaken once its
//! deadline has passed. A worker waits for the lock up to `LOCK_WAIT_MS` (a holder's thread may
//! be descheduled by a busy machine for milliseconds); one that still cannot get it creates
//! nothing, and its take fails closed.

/// The shared-data key of the creation lock (no slot's name ends in anything but digits).
pub const CREATION_LOCK_NAME: &str = "meshguard.rl.create-lock";
/// How long a holder may keep the lock before another worker may take it over.
pub const LOCK_TTL_MS: u64 = 1_000;
/// How long a worker waits for a lock another worker holds (for microseconds, normally).
pub const LOCK_WAIT_MS: u64 = 20;
/// Tries at most, whatever the clock says (a clock that stands still ends the wait too).
const MAX_TRIES: usize = 50_000;
/// A VM's mark on the lock it holds, so that it lets go only of its own hold.
pub const HOLDER_BYTES: usize = 8;

/// Shared data as Envoy keeps it.
pub trait RawShared {
    /// A key's value and version, `None` if the key is missing (or unreadable).
    fn get(&mut self, name: &str) -> Option<(Vec<u8>, u32)>;
    /// Envoy's `set`: conditional on `version` when the key exists, unconditional when it does
    /// not (whatever `version` says). `false` if it was not written.
    fn set(&mut self, name: &str, value: &[u8], version: Option<u32>) -> bool;
}

/// Makes the creation lock if there is none (when a VM is configured).
pub fn make_lock(raw: &mut impl RawShared) -> bool {
    raw.get(CREATION_LOCK_NAME).is_some() || raw.set(CREATION_LOCK_NAME, &[], None)
}

/// Makes sure slot `name` exists; `false` if it is still missing. `clock` gives the time in ms.
pub fn ensure_slot(
    raw: &mut impl RawShared,
    name: &str,
    holder: &[u8; HOLDER_BYTES],
    clock: &mut dyn FnMut() -> u64,
) -> bool {
    let start_ms = clock();
    if start_ms == 0 {
        return false; // no clock: a hold would look expired to every other worker at once
    }
    let mine = hold(start_ms.saturating_add(LOCK_TTL_MS), holder);
    for _ in 0..MAX_TRIES {
        if raw.get(name).is_some() {
            return true;
        }
        // Without a lock to take, creating could race: create nothing.
        let Some((lock, version)) = raw.get(CREATION_LOCK_NAME) else {
            return false;
        };
        if let Some(until_ms) = held_until(&lock) {
            let now_ms = clock();
            if until_ms > now_ms {
                if now_ms.saturating_sub(start_ms) >= LOCK_WAIT_MS {
                    return false;
                }
                continue;
            }
        }
        if !raw.set(CREATION_LOCK_NAME, &mine, Some(version)) {
            continue;
        }
        // Only a write of this VM's own hold proves it holds the lock (and gives the version to
        // let go with).
        let Some(held) = raw
            .get(CREATION_LOCK_NAME)
            .filter(|(value, _)| value == &mine)
        else {
            continue;
        };
        let exists = raw.get(name).is_some() || raw.set(name, &[], None);
        raw.set(CREATION_LOCK_NAME, &[], Some(held.1));
        return exists;
    }
    false
}

fn hold(until_ms: u64, holder: &[u8; HOLDER_BYTES]) -> Vec<u8> {
    let mut value = until_ms.to_le_bytes().to_vec();
    value.extend_from_slice(holder);
    value
}

/// Until when the lock is held; `None` if it is free (or holds bytes no VM writes).
fn held_until(lock: &[u8]) -> Option<u64> {
    let until = <[u8; 8]>::try_from(lock.get(..8)?).ok()?;
    (lock.len() == 8 + HOLDER_BYTES).then(|| u64::from_le_bytes(until))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Shared data with Envoy's semantics (`proxy-wasm-cpp-host` `SharedData`), and a hook
    /// called before each call: a test runs another worker there.
    #[derive(Default)]
    struct Envoy {
        values: HashMap<String, (Vec<u8>, u32)>,
        next_version: u32,
        calls: usize,
    }

    impl Envoy {
        fn set_value(&mut self, name: &str, value: &[u8], version: Option<u32>) -> bool {
            if let (Some((_, current)), Some(version)) = (self.values.get(name), version) {
                if *current != version {
                    return false;
                }
            }
            self.next_version += 1;
            self.values
                .insert(name.to_owned(), (value.to_vec(), self.next_version));
            true
        }
    }

    /// A worker's view of `Envoy`: before its `at`-th call, `interrupt` runs on the same data.
    struct Preempted<'e, F: FnMut(&mut Envoy)> {
        envoy: &'e mut Envoy,
        at: usize,
        interrupt: Option<F>,
    }

    impl<F: FnMut(&mut Envoy)> Preempted<'_, F> {
        fn before_call(&mut self) {
            self.envoy.calls += 1;
            if self.envoy.calls == self.at {
                if let Some(mut interrupt) = self.interrupt.take() {
                    interrupt(self.envoy);
                }
            }
        }
    }

    impl<F: FnMut(&mut Envoy)> RawShared for Preempted<'_, F> {
        fn get(&mut self, name: &str) -> Option<(Vec<u8>, u32)> {
            self.before_call();
            self.envoy.values.get(name).cloned()
        }

        fn set(&mut self, name: &str, value: &[u8], version: Option<u32>) -> bool {
            self.before_call();
            self.envoy.set_value(name, value, version)
        }
    }

    impl RawShared for Envoy {
        fn get(&mut self, name: &str) -> Option<(Vec<u8>, u32)> {
            self.values.get(name).cloned()
        }

        fn set(&mut self, name: &str, value: &[u8], version: Option<u32>) -> bool {
            self.set_value(name, value, version)
        }
    }

    const SLOT: &str = "meshguard.rl.p.7";
    const A: [u8; HOLDER_BYTES] = [1; HOLDER_BYTES];
    const B: [u8; HOLDER_BYTES] = [2; HOLDER_BYTES];

    /// What a worker does with a slot once it exists: a compare-and-swap take.
    fn take(envoy: &mut Envoy, mark: u8) {
        let (mut value, version) = envoy.get(SLOT).expect("the slot exists");
        value.push(mark);
        assert!(envoy.set(SLOT, &value, Some(version)));
    }

    #[test]
    fn a_missing_slot_is_created_empty_and_the_lock_let_go() {
        let mut envoy = Envoy::default();
        assert!(make_lock(&mut envoy));
        assert!(ensure_slot(&mut envoy, SLOT, &A, &mut || 1_000));
        assert_eq!(envoy.get(SLOT).map(|(v, _)| v), Some(Vec::new()));
        assert_eq!(
            envoy.get(CREATION_LOCK_NAME).map(|(v, _)| v),
            Some(Vec::new())
        );
        let before = envoy.next_version;
        assert!(
            ensure_slot(&mut envoy, SLOT, &B, &mut || 1_000),
            "an existing slot"
        );
        assert_eq!(
            envoy.next_version, before,
            "nothing written for a slot that exists"
        );
    }

    #[test]
    fn without_the_lock_or_a_clock_nothing_is_created() {
        let mut envoy = Envoy::default();
        assert!(!ensure_slot(&mut envoy, SLOT, &A, &mut || 1_000));
        assert!(envoy.get(SLOT).is_none());
        make_lock(&mut envoy);
        assert!(!ensure_slot(&mut envoy, SLOT, &A, &mut || 0));
        assert!(envoy.get(SLOT).is_none());
    }

    /// Another worker creates the slot (if it can) and takes from it before any one of this
    /// worker's calls: this worker's creation must never erase that take.
    #[test]
    fn no_take_is_erased_wherever_another_worker_comes_in() {
        for at in 1..=8 {
            let mut envoy = Envoy::default();
            make_lock(&mut envoy);
            let other_took = std::cell::Cell::new(false);
            let other = |envoy: &mut Envoy| {
                // While this worker holds the lock, the other one creates nothing.
                if ensure_slot(envoy, SLOT, &B, &mut || 1_000) {
                    take(envoy, b'b');
                    other_took.set(true);
                }
            };
            let mut worker = Preempted {
                envoy: &mut envoy,
                at,
                interrupt: Some(other),
            };
            assert!(
                ensure_slot(&mut worker, SLOT, &A, &mut || 1_000),
                "at call {at}"
            );
            take(&mut envoy, b'a');
            let value = envoy.get(SLOT).map(|(v, _)| v).unwrap_or_default();
            assert_eq!(
                value.contains(&b'b'),
                other_took.get(),
                "call {at}: the other worker's take was erased"
            );
            assert!(value.contains(&b'a'), "call {at}");
            assert_eq!(
                envoy.get(CREATION_LOCK_NAME).map(|(v, _)| v),
                Some(Vec::new()),
                "call {at}: the lock is let go"
            );
        }
    }

    /// Without the lock (each worker writing a slot it found missing), the same interleaving
    /// loses a take: what the lock is for.
    #[test]
    fn creating_without_the_lock_would_erase_a_take() {
        let mut envoy = Envoy::default();
        let found_missing = envoy.get(SLOT).is_none();
        // The other worker creates the slot and takes from it in between.
        envoy.set(SLOT, &[], None);
        take(&mut envoy, b'b');
        if found_missing {
            envoy.set(SLOT, &[], None); // it found the key missing: no version to give
        }
        take(&mut envoy, b'a');
        assert!(!envoy.get(SLOT).unwrap().0.contains(&b'b'));
    }

    /// Shared data whose lock worker A holds until 2,000 ms (written by hand, as if A stopped
    /// mid-creation).
    fn held_by_a() -> Envoy {
        let mut envoy = Envoy::default();
        make_lock(&mut envoy);
        let (_, version) = envoy.get(CREATION_LOCK_NAME).unwrap();
        assert!(envoy.set(
            CREATION_LOCK_NAME,
            &hold(1_000 + LOCK_TTL_MS, &A),
            Some(version)
        ));
        envoy
    }

    /// A worker that finds the lock held waits for it, up to `LOCK_WAIT_MS`, and then creates
    /// nothing; a hold past its deadline is overtaken.
    #[test]
    fn a_worker_waits_for_a_held_lock_and_overtakes_an_expired_one() {
        let mut envoy = held_by_a();
        // B's clock moves 1 ms a call: it waits `LOCK_WAIT_MS` and gives up.
        let mut now = 1_000;
        let mut ticking = || {
            now += 1;
            now
        };
        assert!(!ensure_slot(&mut envoy, SLOT, &B, &mut ticking));
        assert!(
            (1_000 + LOCK_WAIT_MS..1_000 + LOCK_WAIT_MS + 5).contains(&now),
            "{now}"
        );
        assert!(envoy.get(SLOT).is_none());
        // A clock that stands still ends the wait too.
        assert!(!ensure_slot(&mut envoy, SLOT, &B, &mut || 1_001));
        // Past A's deadline, B takes the lock over and creates the slot.
        assert!(ensure_slot(&mut envoy, SLOT, &B, &mut || 1_000
            + LOCK_TTL_MS
            + 1));
        assert!(envoy.get(SLOT).is_some());
        assert_eq!(
            envoy.get(CREATION_LOCK_NAME).map(|(v, _)| v),
            Some(Vec::new())
        );
    }

    /// The holder's thread is descheduled for a while: the waiting worker, still within its
    /// wait, finds the slot made once the holder has gone on.
    #[test]
    fn a_waiting_worker_finds_the_slot_the_holder_made() {
        let mut envoy = held_by_a();
        // A finishes (creates the slot, takes, lets go) while B waits, at B's fifth call.
        let finish = |envoy: &mut Envoy| {
            assert!(envoy.set(SLOT, &[], None));
            take(envoy, b'a');
            let (_, version) = envoy.get(CREATION_LOCK_NAME).unwrap();
            assert!(envoy.set(CREATION_LOCK_NAME, &[], Some(version)));
        };
        let mut worker = Preempted {
            envoy: &mut envoy,
            at: 5,
            interrupt: Some(finish),
        };
        let mut now = 1_000;
        assert!(ensure_slot(&mut worker, SLOT, &B, &mut || {
            now += 1;
            now
        }));
        take(&mut envoy, b'b');
        assert_eq!(envoy.get(SLOT).map(|(v, _)| v), Some(b"ab".to_vec()));
    }

    #[test]
    fn a_worker_lets_go_only_of_its_own_hold() {
        let mut envoy = Envoy::default();
        make_lock(&mut envoy);
        // Another worker takes the lock over right after this one's write of its hold.
        let overtake = |envoy: &mut Envoy| {
            let (_, version) = envoy.get(CREATION_LOCK_NAME).unwrap();
            assert!(envoy.set(CREATION_LOCK_NAME, &hold(9_999, &B), Some(version)));
        };
        let mut worker = Preempted {
            envoy: &mut envoy,
            at: 4, // get slot, get lock, set lock, then before reading its hold back
            interrupt: Some(overtake),
        };
        ensure_slot(&mut worker, SLOT, &A, &mut || 1_000);
        let lock = envoy
            .get(CREATION_LOCK_NAME)
            .map(|(v, _)| v)
            .unwrap_or_default();
        assert_eq!(lock, hold(9_999, &B), "the other worker's hold stands");
    }

    #[test]
    fn a_lock_holding_other_bytes_counts_as_free() {
        assert_eq!(held_until(&[]), None);
        assert_eq!(held_until(&[1, 2, 3]), None);
        assert_eq!(held_until(&hold(5, &A)), Some(5));
        assert_eq!(held_until(&[0; 8 + HOLDER_BYTES + 1]), None);
    }
}
