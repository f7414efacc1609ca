//! Where buckets live across Envoy workers: proxy-wasm shared data, which has no delete. Each
//! policy owns `SLOTS_PER_POLICY` slots (shared-data keys); a key belongs to one slot, and a slot
//! holds up to `KEYS_PER_SLOT` buckets of their own plus one overflow bucket. So memory is bounded
//! per policy whatever the key cardinality: a slot is made when a key first reaches it
//! (`super::create`), and a missing slot reads as an empty one. The host updates a slot with
//! compare-and-swap; everything here is pure.
//!
//! A key's slot is chosen by SipHash keyed with a secret seed (`SlotSeed`), so a client cannot
//! pick keys that share a slot with its own.
//!
//! No key gets fresh quota because its bucket was forgotten:
//! - a bucket is forgotten only when it is full again (`is_idle`): forgetting it loses nothing;
//! - a new key in a slot whose buckets are all in use (none full) gets no bucket of its own: it
//!   is charged to the slot's overflow bucket (the policy's token bucket, shared by every such
//!   key), which is itself forgotten only once full;
//! - a new key that does get a bucket (a place was free or full again) starts with no more
//!   tokens than the overflow holds, its refill clock starting now, because it may be a key the
//!   overflow has just refused.
//!
//! So a key refused at `t` gets no token before the bucket that refused it would have had one,
//! however many other keys arrive. The bound, per policy: `SLOTS_PER_POLICY` x `KEYS_PER_SLOT`
//! (32,768) buckets of their own, plus one overflow per slot. Past that many keys in use at once
//! (which, with a secret seed, an attacker reaches only by keeping that many keys busy), new keys
//! in a saturated slot share its overflow bucket: they are limited together, never refilled.
//!
//! Leased batches (`super::lease`) change none of this: a batch leaves a key's own bucket (never
//! the overflow) in one update, and what comes back of it comes back to that bucket only while
//! no fill has come since; a bucket with tokens out on lease is not full, so it is not forgotten
//! while they are out. Nothing about leases is stored in the slot: its format is unchanged.
//!
//! A take usually changes the key's record in place in the value read (`key_in_place`); a value
//! in any other form (the key has no bucket yet, the overflow is full again, bytes that
//! `Slot::encode` would not write) is decoded, changed and encoded again, with the same result.
//!
//! A slot's value is a list of records: `len: u16`, then `len` bytes of key, then
//! `tokens: i64`, `last_fill_ms: u64`, `touched_ms: u64` (little-endian). The overflow's record
//! has no key and `len` = `OVERFLOW_MARKER`, a length no stored key has; it comes last, so a
//! filter that predates it (an older version still draining during an upgrade) reads every
//! key's bucket and stops there.

use std::borrow::Cow;
use std::fmt;
use std::hash::Hasher;

use siphasher::sip::SipHasher24;

use super::bucket::{BucketState, Take, TakeMode};
use super::lease::{BatchPlan, GiveBack, Grant, LeaseId};
use crate::config::TokenBucket;

pub const SLOTS_PER_POLICY: u64 = 4096;
pub const KEYS_PER_SLOT: usize = 8;
/// Keys longer than this are cut (and the whole key hashed in), so slots stay small.
const MAX_KEY_BYTES: usize = 256;
/// A cut key ends with `#` and 16 hex digits of its hash.
const CUT_KEY_SUFFIX_BYTES: usize = 17;
/// The record length that marks a slot's overflow bucket: no stored key is this long.
const OVERFLOW_MARKER: u16 = u16::MAX;
const _: () = assert!(MAX_KEY_BYTES < OVERFLOW_MARKER as usize);
/// A record's bytes besides its key: length, tokens, last fill, last touched.
const RECORD_FIXED_BYTES: usize = 2 + 8 + 8 + 8;
/// SipHash's key is 128 bits; all of it secret, so placements cannot be guessed or searched.
pub const SEED_BYTES: usize = 16;
/// The shared-data key of the seed (see `host::seed`).
pub const SEED_NAME: &str = "meshguard.rl.seed";

/// The secret that places keys in slots. `Debug` never shows it: it must not reach a log.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SlotSeed([u8; SEED_BYTES]);

impl SlotSeed {
    pub const fn new(bytes: [u8; SEED_BYTES]) -> SlotSeed {
        SlotSeed(bytes)
    }

    /// A stored seed; `None` unless exactly `SEED_BYTES` long.
    pub fn from_stored(bytes: &[u8]) -> Option<SlotSeed> {
        <[u8; SEED_BYTES]>::try_from(bytes).ok().map(SlotSeed)
    }

    pub fn as_bytes(&self) -> &[u8; SEED_BYTES] {
        &self.0
    }

    /// SipHash-2-4 of `parts`, each prefixed by its length so `["ab", "c"]` ≠ `["a", "bc"]`.
    /// (One hash per request and policy: the faster 1-3 variant would buy nothing.)
    fn hash(&self, parts: &[&[u8]]) -> u64 {
        let mut hasher = SipHasher24::new_with_key(&self.0);
        for part in parts {
            hasher.write_u64(u64::try_from(part.len()).unwrap_or(u64::MAX));
            hasher.write(part);
        }
        hasher.finish()
    }
}

impl fmt::Debug for SlotSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SlotSeed(<secret>)")
    }
}

/// A key as its slot stores it: at most `MAX_KEY_BYTES` long. Borrows the request's key when it
/// is short enough to be stored as it is (most are: no allocation on the hot path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey<'a>(Cow<'a, str>);

impl<'a> StoredKey<'a> {
    /// A long key keeps its head and a keyed hash of the whole: keyed, so nobody can craft a
    /// different long key that lands in someone else's bucket.
    fn new(seed: &SlotSeed, key: &'a str) -> StoredKey<'a> {
        if key.len() <= MAX_KEY_BYTES {
            return StoredKey(Cow::Borrowed(key));
        }
        let mut cut = MAX_KEY_BYTES - CUT_KEY_SUFFIX_BYTES;
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        StoredKey(Cow::Owned(format!(
            "{}#{:016x}",
            key.get(..cut).unwrap_or(""),
            seed.hash(&[key.as_bytes()])
        )))
    }

    /// A key read from a slot; `None` if no `StoredKey::new` could have made it.
    fn read(bytes: &[u8]) -> Option<StoredKey<'static>> {
        if bytes.len() > MAX_KEY_BYTES {
            return None;
        }
        String::from_utf8(bytes.to_vec())
            .ok()
            .map(|key| StoredKey(Cow::Owned(key)))
    }

    fn to_owned_key(&self) -> StoredKey<'static> {
        StoredKey(Cow::Owned(self.0.clone().into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a key's bucket lives: its slot (see `SlotName`) and the key as the slot stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketAddress<'a> {
    pub slot: u64,
    pub key: StoredKey<'a>,
}

pub fn locate<'a>(seed: &SlotSeed, policy: &str, key: &'a str) -> BucketAddress<'a> {
    BucketAddress {
        slot: seed.hash(&[policy.as_bytes(), key.as_bytes()]) % SLOTS_PER_POLICY,
        key: StoredKey::new(seed, key),
    }
}

/// A slot's shared-data name, `meshguard.rl.<policy>.<slot>`, written into a buffer kept for
/// the purpose: no allocation per request once it has grown to the longest name.
#[derive(Debug, Default)]
pub struct SlotName(String);

impl SlotName {
    pub fn of(&mut self, policy: &str, slot: u64) -> &str {
        use std::fmt::Write;
        self.0.clear();
        self.0.push_str("meshguard.rl.");
        self.0.push_str(policy);
        // Writing to a String cannot fail.
        let _ = write!(self.0, ".{slot}");
        &self.0
    }
}

#[cfg(test)]
fn slot_name(policy: &str, slot: u64) -> String {
    SlotName::default().of(policy, slot).to_owned()
}

/// Which bucket paid for a take, so that a refund goes back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaidBy {
    KeyBucket,
    SlotOverflow,
    /// This VM's lease of the key's bucket (`lease::LeaseTable`), not shared data.
    Lease(LeaseId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: StoredKey<'static>,
    state: BucketState,
    touched_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Slot {
    /// Keys with a bucket of their own; at most `KEYS_PER_SLOT`.
    keyed: Vec<Entry>,
    /// The bucket of keys that found no place; absent while it would be full.
    overflow: Option<BucketState>,
}

/// Reads little-endian fields off the front of a slot value.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }
}

/// One bucket as written in a slot value.
struct Record {
    /// `None` for the overflow.
    key: Option<StoredKey<'static>>,
    state: BucketState,
    touched_ms: u64,
}

fn read_record(reader: &mut Reader<'_>) -> Option<Record> {
    let len = reader.u16()?;
    let key = match len {
        OVERFLOW_MARKER => None,
        len => Some(StoredKey::read(reader.bytes(usize::from(len))?)?),
    };
    let state = BucketState {
        tokens: reader.i64()?,
        last_fill_ms: reader.u64()?,
    };
    Some(Record {
        key,
        state,
        touched_ms: reader.u64()?,
    })
}

fn write_record(out: &mut Vec<u8>, key: Option<&StoredKey>, state: BucketState, touched_ms: u64) {
    let (len, key_bytes) = match key {
        // Cannot fail: a stored key is at most MAX_KEY_BYTES long.
        Some(key) => match u16::try_from(key.0.len()) {
            Ok(len) => (len, key.0.as_bytes()),
            Err(_) => return,
        },
        None => (OVERFLOW_MARKER, &[][..]),
    };
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(key_bytes);
    out.extend_from_slice(&state.tokens.to_le_bytes());
    out.extend_from_slice(&state.last_fill_ms.to_le_bytes());
    out.extend_from_slice(&touched_ms.to_le_bytes());
}

impl Slot {
    /// Whatever cannot be read (a torn or foreign value) ends the list: garbage is an empty slot,
    /// never a crash. Records past what a slot holds, or repeated, are dropped.
    fn decode(bytes: &[u8]) -> Slot {
        let mut slot = Slot::default();
        let mut reader = Reader(bytes);
        while let Some(Record {
            key,
            state,
            touched_ms,
        }) = read_record(&mut reader)
        {
            match key {
                Some(key)
                    if slot.keyed.len() < KEYS_PER_SLOT
                        && !slot.keyed.iter().any(|e| e.key == key) =>
                {
                    slot.keyed.push(Entry {
                        key,
                        state,
                        touched_ms,
                    });
                }
                None if slot.overflow.is_none() => slot.overflow = Some(state),
                _ => {}
            }
        }
        slot
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        let keyed_bytes: usize = self
            .keyed
            .iter()
            .map(|e| e.key.0.len() + RECORD_FIXED_BYTES)
            .sum();
        out.reserve(keyed_bytes + RECORD_FIXED_BYTES);
        for entry in &self.keyed {
            write_record(out, Some(&entry.key), entry.state, entry.touched_ms);
        }
        if let Some(overflow) = self.overflow {
            // The overflow's last use is not needed (it is forgotten by fullness alone).
            write_record(out, None, overflow, 0);
        }
    }

    #[cfg(test)]
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// A new key's bucket: full, unless the overflow is in use; then no richer than the
    /// overflow, because the new key may be one the overflow has just refused. Its refill clock
    /// starts now, so its next token is due no sooner than the overflow's.
    fn newcomer_state(&self, bucket: &TokenBucket, now_ms: u64) -> BucketState {
        let full = BucketState::full(bucket, now_ms);
        match self.overflow {
            Some(overflow) => BucketState {
                tokens: overflow.refilled(bucket, now_ms).tokens.min(full.tokens),
                ..full
            },
            None => full,
        }
    }

    /// Gives `key` a bucket of its own if there is room or a bucket that is full again (the one
    /// unused longest); returns its index, or `None` when every bucket is in use.
    fn admit(&mut self, key: &StoredKey, bucket: &TokenBucket, now_ms: u64) -> Option<usize> {
        let entry = Entry {
            key: key.to_owned_key(),
            state: self.newcomer_state(bucket, now_ms),
            touched_ms: now_ms,
        };
        if self.keyed.len() < KEYS_PER_SLOT {
            self.keyed.push(entry);
            return Some(self.keyed.len() - 1);
        }
        let (index, place) = self
            .keyed
            .iter_mut()
            .enumerate()
            .filter(|(_, e)| e.state.is_idle(bucket, now_ms))
            .min_by_key(|(_, e)| e.touched_ms)?;
        *place = entry;
        Some(index)
    }

    /// The bucket that pays for `key` now: its own, else the overflow.
    fn payer(
        &mut self,
        key: &StoredKey,
        bucket: &TokenBucket,
        now_ms: u64,
    ) -> (&mut BucketState, PaidBy) {
        if self
            .overflow
            .is_some_and(|overflow| overflow.is_idle(bucket, now_ms))
        {
            self.overflow = None;
        }
        let index = match self.keyed.iter().position(|e| e.key == *key) {
            Some(index) => Some(index),
            None => self.admit(key, bucket, now_ms),
        };
        if let Some(entry) = index.and_then(|index| self.keyed.get_mut(index)) {
            entry.touched_ms = now_ms;
            return (&mut entry.state, PaidBy::KeyBucket);
        }
        let overflow = self
            .overflow
            .get_or_insert_with(|| BucketState::full(bucket, now_ms));
        (overflow, PaidBy::SlotOverflow)
    }
}

/// Where a key's own bucket sits in a slot value that reads back exactly as `Slot::encode`
/// would write it (so changing its fixed fields in place is the same as decode, change, encode):
/// the offset of its `tokens` field. `None` when the key has no bucket of its own there, the
/// value is not in that form, or the slot's overflow is full again (the slow path drops it).
fn key_in_place(value: &[u8], key: &StoredKey, bucket: &TokenBucket, now_ms: u64) -> Option<usize> {
    let mut reader = Reader(value);
    let mut keyed = 0;
    let mut found = None;
    let mut overflow_seen = false;
    while !reader.0.is_empty() {
        if overflow_seen {
            return None; // the overflow comes last
        }
        let len = reader.u16()?;
        let key_bytes = match len {
            OVERFLOW_MARKER => None,
            len => Some(reader.bytes(usize::from(len))?),
        };
        let offset = value.len() - reader.0.len();
        let state = BucketState {
            tokens: reader.i64()?,
            last_fill_ms: reader.u64()?,
        };
        let touched_ms = reader.u64()?;
        match key_bytes {
            None => {
                if touched_ms != 0 || state.is_idle(bucket, now_ms) {
                    return None;
                }
                overflow_seen = true;
            }
            Some(bytes) => {
                keyed += 1;
                if keyed > KEYS_PER_SLOT
                    || bytes.len() > MAX_KEY_BYTES
                    || std::str::from_utf8(bytes).is_err()
                {
                    return None;
                }
                if bytes == key.0.as_bytes() {
                    if found.is_some() {
                        return None; // repeated: decode would drop it
                    }
                    found = Some(offset);
                }
            }
        }
    }
    found
}

/// Reads the bucket whose `tokens` field is at `offset`.
fn state_at(value: &[u8], offset: usize) -> Option<BucketState> {
    let mut reader = Reader(value.get(offset..)?);
    Some(BucketState {
        tokens: reader.i64()?,
        last_fill_ms: reader.u64()?,
    })
}

/// Writes a bucket over the fixed fields at `offset`, and its last use if `touched_ms` says.
fn write_state_at(value: &mut [u8], offset: usize, state: BucketState, touched_ms: Option<u64>) {
    let fields = [
        Some(state.tokens.to_le_bytes()),
        Some(state.last_fill_ms.to_le_bytes()),
        touched_ms.map(u64::to_le_bytes),
    ];
    for (index, field) in fields.into_iter().enumerate() {
        let start = offset.saturating_add(index * 8);
        if let (Some(field), Some(place)) = (field, value.get_mut(start..start.saturating_add(8))) {
            place.copy_from_slice(&field);
        }
    }
}

/// What a take asks of a key's shared bucket besides its one token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TakeExtras<'p> {
    /// An ended lease's unused tokens, given back first.
    pub give_back: Option<GiveBack>,
    /// Take a batch for a lease instead of one token, if the bucket allows it.
    pub batch: Option<&'p BatchPlan>,
}

/// What a take in a slot came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotTake {
    pub take: Take,
    pub paid_by: PaidBy,
    /// A batch taken for a lease (the take's own token is one of it).
    pub grant: Option<Grant>,
}

/// One take from a key's own bucket: the ended lease's tokens back, then a batch if the plan
/// allows one, else one token.
fn take_from(
    state: BucketState,
    bucket: &TokenBucket,
    now_ms: u64,
    mode: TakeMode,
    extras: TakeExtras<'_>,
) -> (BucketState, Take, Option<Grant>) {
    let mut state = state.refilled(bucket, now_ms);
    if let Some(give_back) = extras.give_back {
        state = give_back.apply(state, bucket);
    }
    if let Some((after, grant)) = extras
        .batch
        .and_then(|plan| plan.take(state, bucket, now_ms))
    {
        let take = Take::Allowed {
            remaining: grant
                .shared_remaining
                .saturating_add(grant.tokens.saturating_sub(1)),
            reset_ms: grant
                .fill_stamp_ms
                .saturating_add(
                    u64::try_from(bucket.fill_interval.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1),
                )
                .saturating_sub(now_ms),
        };
        return (after, take, Some(grant));
    }
    let (after, take) = state.take(bucket, now_ms, mode);
    (after, take, None)
}

/// Takes a token (or a batch, see `TakeExtras`) for `key` from the slot's current value, which
/// becomes the value to write back: changed in place when the key has a bucket of its own there
/// (the usual case), re-encoded otherwise.
pub fn take_in_slot(
    value: &mut Vec<u8>,
    key: &StoredKey,
    bucket: &TokenBucket,
    now_ms: u64,
    mode: TakeMode,
    extras: TakeExtras<'_>,
) -> SlotTake {
    if let Some(offset) = key_in_place(value, key, bucket, now_ms) {
        if let Some(state) = state_at(value, offset) {
            let (after, take, grant) = take_from(state, bucket, now_ms, mode, extras);
            write_state_at(value, offset, after, Some(now_ms));
            return SlotTake {
                take,
                paid_by: PaidBy::KeyBucket,
                grant,
            };
        }
    }
    take_decoded(value, key, bucket, now_ms, mode, extras)
}

/// `take_in_slot` the long way: decode the slot, take, encode.
fn take_decoded(
    value: &mut Vec<u8>,
    key: &StoredKey,
    bucket: &TokenBucket,
    now_ms: u64,
    mode: TakeMode,
    extras: TakeExtras<'_>,
) -> SlotTake {
    let mut slot = Slot::decode(value);
    let (state, paid_by) = slot.payer(key, bucket, now_ms);
    let extras = match paid_by {
        PaidBy::KeyBucket => extras,
        // Leases come from a key's own bucket only; an ended lease of a bucket that is gone
        // was given back by its fill.
        _ => TakeExtras::default(),
    };
    let (after, take, grant) = take_from(*state, bucket, now_ms, mode, extras);
    *state = after;
    slot.encode_into(value);
    SlotTake {
        take,
        paid_by,
        grant,
    }
}

/// Gives an ended lease's tokens back to `key`'s bucket; `false` when there is nothing to write
/// (the bucket is gone, or a fill came since the lease was granted).
pub fn give_back_in_slot(
    value: &mut Vec<u8>,
    key: &StoredKey,
    bucket: &TokenBucket,
    now_ms: u64,
    give_back: GiveBack,
) -> bool {
    let back = |state: BucketState| {
        let refilled = state.refilled(bucket, now_ms);
        let after = give_back.apply(refilled, bucket);
        (after != refilled).then_some(after)
    };
    if let Some(offset) = key_in_place(value, key, bucket, now_ms) {
        let Some(after) = state_at(value, offset).and_then(back) else {
            return false;
        };
        write_state_at(value, offset, after, None);
        return true;
    }
    let mut slot = Slot::decode(value);
    let Some(entry) = slot.keyed.iter_mut().find(|e| e.key == *key) else {
        return false;
    };
    let Some(after) = back(entry.state) else {
        return false;
    };
    entry.state = after;
    slot.encode_into(value);
    true
}

/// Returns a token to the bucket that paid; `false` when that bucket is gone (it was full again,
/// so there is nothing to give back) or it was a lease.
pub fn refund_in_slot(
    value: &mut Vec<u8>,
    key: &StoredKey,
    paid_by: PaidBy,
    bucket: &TokenBucket,
) -> bool {
    let mut slot = Slot::decode(value);
    let state = match paid_by {
        PaidBy::KeyBucket => match slot.keyed.iter_mut().find(|e| e.key == *key) {
            Some(entry) => &mut entry.state,
            None => return false,
        },
        PaidBy::SlotOverflow => match slot.overflow.as_mut() {
            Some(state) => state,
            None => return false,
        },
        PaidBy::Lease(_) => return false,
    };
    *state = state.refund(bucket);
    slot.encode_into(value);
    true
}

/// The bucket of `key` in a slot value as of `now_ms` (for the property tests).
#[cfg(test)]
pub fn peek(
    value: &[u8],
    key: &StoredKey,
    bucket: &TokenBucket,
    now_ms: u64,
) -> Option<BucketState> {
    Slot::decode(value)
        .keyed
        .into_iter()
        .find(|e| e.key == *key)
        .map(|e| e.state.refilled(bucket, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const SEED: SlotSeed = SlotSeed::new([7; SEED_BYTES]);

    fn bucket() -> TokenBucket {
        TokenBucket {
            max_tokens: 2,
            tokens_per_fill: 2,
            fill_interval: Duration::from_secs(1),
        }
    }

    fn key(text: &str) -> StoredKey<'_> {
        StoredKey::new(&SEED, text)
    }

    fn take(value: &[u8], k: &str, b: &TokenBucket, now_ms: u64) -> (Vec<u8>, Take, PaidBy) {
        let mut value = value.to_vec();
        let taken = take_in_slot(
            &mut value,
            &key(k),
            b,
            now_ms,
            TakeMode::Reject,
            TakeExtras::default(),
        );
        (value, taken.take, taken.paid_by)
    }

    fn refund(value: &[u8], k: &str, paid_by: PaidBy, b: &TokenBucket) -> Option<Vec<u8>> {
        let mut value = value.to_vec();
        refund_in_slot(&mut value, &key(k), paid_by, b).then_some(value)
    }

    /// A slot holding `KEYS_PER_SLOT` keys `k0..k7`, each drained at `now_ms`.
    fn slot_of_drained_keys(b: &TokenBucket, now_ms: u64) -> Vec<u8> {
        let mut value = Vec::new();
        for i in 0..KEYS_PER_SLOT {
            for _ in 0..b.max_tokens {
                value = take(&value, &format!("k{i}"), b, now_ms).0;
            }
        }
        value
    }

    fn is_refused(take: Take) -> bool {
        matches!(take, Take::Refused { .. })
    }

    #[test]
    fn buckets_round_trip_through_the_slot_value() {
        let b = bucket();
        let (value, first, paid_by) = take(&[], "alice", &b, 10);
        assert_eq!(
            first,
            Take::Allowed {
                remaining: 1,
                reset_ms: 1_000
            }
        );
        assert_eq!(paid_by, PaidBy::KeyBucket);
        let (value, second, _) = take(&value, "alice", &b, 20);
        assert!(matches!(second, Take::Allowed { remaining: 0, .. }));
        let (value, third, _) = take(&value, "alice", &b, 30);
        assert!(is_refused(third));
        let (_, other, _) = take(&value, "bob", &b, 30);
        assert!(
            matches!(other, Take::Allowed { remaining: 1, .. }),
            "keys are isolated"
        );
    }

    #[test]
    fn colliding_newcomers_do_not_refill_a_drained_key() {
        // The attack of issue 12: drain a key, then send new keys to its slot until it is full.
        let b = bucket();
        let mut value = Vec::new();
        for now_ms in [0, 1] {
            value = take(&value, "/rl/search", &b, now_ms).0;
        }
        let (mut value, refused, _) = take(&value, "/rl/search", &b, 2);
        assert!(is_refused(refused));
        for i in 0..KEYS_PER_SLOT {
            value = take(&value, &format!("/rl/collide-{i}"), &b, 3).0;
        }
        let (_, again, paid_by) = take(&value, "/rl/search", &b, 4);
        assert!(is_refused(again), "the drained key stays drained");
        assert_eq!(paid_by, PaidBy::KeyBucket);
    }

    #[test]
    fn a_slot_full_of_drained_keys_charges_a_newcomer_to_the_overflow() {
        let b = bucket();
        let value = slot_of_drained_keys(&b, 100);
        let (value, newcomer, paid_by) = take(&value, "newcomer", &b, 500);
        assert!(matches!(newcomer, Take::Allowed { remaining: 1, .. }));
        assert_eq!(paid_by, PaidBy::SlotOverflow);
        let slot = Slot::decode(&value);
        assert_eq!(slot.keyed.len(), KEYS_PER_SLOT, "nobody was evicted");
        for i in 0..KEYS_PER_SLOT {
            let (_, drained, _) = take(&value, &format!("k{i}"), &b, 600);
            assert!(is_refused(drained), "k{i} is still drained");
        }
        // Newcomers share the overflow: a second one gets its last token, a third none.
        let (value, second, _) = take(&value, "second", &b, 600);
        assert!(matches!(second, Take::Allowed { remaining: 0, .. }));
        let (_, third, paid_by) = take(&value, "third", &b, 600);
        assert!(is_refused(third));
        assert_eq!(paid_by, PaidBy::SlotOverflow);
    }

    #[test]
    fn a_newcomer_takes_the_place_of_a_bucket_that_is_full_again() {
        let b = bucket();
        let value = slot_of_drained_keys(&b, 100);
        // k0 refills at 1_100; the others are drained again just before.
        let mut value = value;
        for i in 1..KEYS_PER_SLOT {
            value = take(&value, &format!("k{i}"), &b, 1_100).0;
        }
        let (value, newcomer, paid_by) = take(&value, "newcomer", &b, 1_100);
        assert!(matches!(newcomer, Take::Allowed { remaining: 1, .. }));
        assert_eq!(paid_by, PaidBy::KeyBucket);
        let keys: Vec<String> = Slot::decode(&value)
            .keyed
            .into_iter()
            .map(|e| e.key.0.into_owned())
            .collect();
        assert!(!keys.contains(&"k0".to_string()), "the full bucket went");
        assert!(keys.contains(&"newcomer".to_string()));
    }

    #[test]
    fn a_newcomer_starts_no_richer_than_the_overflow_it_may_have_drained() {
        let b = bucket();
        let mut value = slot_of_drained_keys(&b, 100);
        for _ in 0..b.max_tokens {
            value = take(&value, "attacker", &b, 200).0;
        }
        let (mut value, refused, paid_by) = take(&value, "attacker", &b, 200);
        assert!(is_refused(refused));
        assert_eq!(paid_by, PaidBy::SlotOverflow);
        // k0..k6 are drained again; k7 is full at 1_100, so a place frees up then.
        for i in 0..KEYS_PER_SLOT - 1 {
            value = take(&value, &format!("k{i}"), &b, 1_099).0;
            value = take(&value, &format!("k{i}"), &b, 1_099).0;
        }
        let (value, placed, paid_by) = take(&value, "attacker", &b, 1_100);
        assert_eq!(paid_by, PaidBy::KeyBucket, "the attacker got k7's place");
        // The overflow refilled at 1_200; at 1_100 the attacker's new bucket has nothing.
        assert!(is_refused(placed));
        let (_, later, _) = take(&value, "attacker", &b, 2_100);
        assert!(matches!(later, Take::Allowed { .. }));
    }

    #[test]
    fn the_overflow_is_forgotten_once_full_again() {
        let b = bucket();
        let value = slot_of_drained_keys(&b, 100);
        let (value, _, _) = take(&value, "newcomer", &b, 100);
        assert!(Slot::decode(&value).overflow.is_some());
        // At 1_100 everything is full: the next key takes a place, the overflow is dropped.
        let (value, _, paid_by) = take(&value, "later", &b, 1_100);
        assert_eq!(paid_by, PaidBy::KeyBucket);
        assert_eq!(Slot::decode(&value).overflow, None);
    }

    #[test]
    fn garbage_is_an_empty_slot_not_a_crash() {
        let overflow_only = [&OVERFLOW_MARKER.to_le_bytes()[..], &[0; 3]].concat();
        for junk in [
            &b"\xff"[..],
            b"\x05\x00ab",
            b"\x02\x00\xff\xfe12345678",
            &overflow_only,
            b"\x01\x01",
        ] {
            let (_, take, _) = take(junk, "k", &bucket(), 0);
            assert!(matches!(take, Take::Allowed { .. }));
        }
    }

    #[test]
    fn no_real_key_reads_back_as_the_overflow() {
        let b = bucket();
        let longest = "x".repeat(100_000);
        for text in ["", "\u{0}", "#overflow", longest.as_str()] {
            let (value, _, paid_by) = take(&[], text, &b, 0);
            assert_eq!(paid_by, PaidBy::KeyBucket);
            let slot = Slot::decode(&value);
            assert_eq!(slot.overflow, None, "{text:.10}");
            assert_eq!(slot.keyed.len(), 1);
        }
    }

    #[test]
    fn a_value_without_overflow_reads_as_an_older_filter_wrote_it() {
        // Before the overflow existed, a slot was the same records without one.
        let mut older = Vec::new();
        older.extend_from_slice(&3u16.to_le_bytes());
        older.extend_from_slice(b"bob");
        older.extend_from_slice(&0i64.to_le_bytes());
        older.extend_from_slice(&100u64.to_le_bytes());
        older.extend_from_slice(&150u64.to_le_bytes());
        let slot = Slot::decode(&older);
        assert_eq!(
            slot.keyed,
            vec![Entry {
                key: StoredKey(Cow::Borrowed("bob")),
                state: BucketState {
                    tokens: 0,
                    last_fill_ms: 100
                },
                touched_ms: 150
            }]
        );
        assert_eq!(slot.encode(), older);
    }

    #[test]
    fn refunds_go_back_to_the_bucket_that_paid() {
        let b = bucket();
        let (value, _, paid_by) = take(&[], "k", &b, 0);
        let refunded = refund(&value, "k", paid_by, &b).unwrap();
        let (_, again, _) = take(&refunded, "k", &b, 0);
        assert_eq!(
            again,
            Take::Allowed {
                remaining: 1,
                reset_ms: 1_000
            }
        );
        assert!(refund(&value, "other", PaidBy::KeyBucket, &b).is_none());
        assert!(refund(&value, "k", PaidBy::SlotOverflow, &b).is_none());

        let full = slot_of_drained_keys(&b, 0);
        let (value, _, paid_by) = take(&full, "newcomer", &b, 0);
        assert_eq!(paid_by, PaidBy::SlotOverflow);
        let refunded = refund(&value, "newcomer", paid_by, &b).unwrap();
        let (_, other, _) = take(&refunded, "other", &b, 0);
        assert!(
            matches!(other, Take::Allowed { remaining: 1, .. }),
            "the overflow got its token back"
        );
    }

    #[test]
    fn slot_names_differ_between_seeds_and_are_stable_under_one() {
        let other = SlotSeed::new([8; SEED_BYTES]);
        assert_eq!(locate(&SEED, "p", "alice"), locate(&SEED, "p", "alice"));
        let moved = (0..100)
            .filter(|i| {
                let key = format!("user-{i}");
                locate(&SEED, "p", &key).slot != locate(&other, "p", &key).slot
            })
            .count();
        assert!(moved > 95, "{moved} of 100 keys changed slot with the seed");
    }

    #[test]
    fn slot_names_spread() {
        let distinct: std::collections::HashSet<u64> = (0..1000)
            .map(|i| locate(&SEED, "p", &i.to_string()).slot)
            .collect();
        assert!(
            distinct.len() > 850,
            "{} slots for 1000 keys",
            distinct.len()
        );
        let slot = locate(&SEED, "p", "x").slot;
        assert!(slot < SLOTS_PER_POLICY);
        assert_eq!(slot_name("p", slot), format!("meshguard.rl.p.{slot}"));
    }

    #[test]
    fn long_keys_are_bounded_and_still_distinct() {
        let (long_a, long_b) = ("a".repeat(10_000), format!("{}b", "a".repeat(9_999)));
        let a = key(&long_a);
        let b = key(&long_b);
        assert!(a.0.len() <= MAX_KEY_BYTES && b.0.len() <= MAX_KEY_BYTES);
        assert_ne!(a, b);
        assert_eq!(key("short").as_str(), "short");
        let other_seed = StoredKey::new(&SlotSeed::new([8; SEED_BYTES]), &long_a);
        assert_ne!(a, other_seed, "the cut key's hash is keyed");
    }

    #[test]
    fn the_seed_never_shows_in_debug_output() {
        assert_eq!(format!("{SEED:?}"), "SlotSeed(<secret>)");
        assert_eq!(SlotSeed::from_stored(SEED.as_bytes()), Some(SEED));
        assert_eq!(SlotSeed::from_stored(&[7; SEED_BYTES - 1]), None);
    }

    /// Distinct keys in a property run: more than a slot holds, so it saturates.
    const KEYS_IN_PLAY: usize = 3 * KEYS_PER_SLOT;

    fn takes() -> impl Strategy<Value = (TokenBucket, Vec<(usize, u64)>)> {
        let bucket =
            (1u64..=4, 1u64..=4, 10u64..=200).prop_map(|(max, per_fill, ms)| TokenBucket {
                max_tokens: max,
                tokens_per_fill: per_fill,
                fill_interval: Duration::from_millis(ms),
            });
        // Small steps in time, often none: bursts of many keys at one instant.
        let steps =
            prop::collection::vec((0..KEYS_IN_PLAY, prop_oneof![Just(0u64), 0u64..60]), 1..300);
        (bucket, steps)
    }

    /// Runs the takes in one slot; returns each take's time, key and answer.
    fn run(b: &TokenBucket, steps: &[(usize, u64)]) -> Vec<(u64, usize, Take)> {
        let mut value = Vec::new();
        let mut now_ms = 1_000;
        let mut answers = Vec::new();
        for &(k, step) in steps {
            now_ms += step;
            let (next, answer, _) = take(&value, &format!("key-{k}"), b, now_ms);
            value = next;
            let slot = Slot::decode(&value);
            assert!(slot.keyed.len() <= KEYS_PER_SLOT);
            let mut records = 0;
            let mut reader = Reader(&value);
            while read_record(&mut reader).is_some() {
                records += 1;
            }
            assert!(records <= KEYS_PER_SLOT + 1, "{records} records");
            answers.push((now_ms, k, answer));
        }
        answers
    }

    proptest! {
        #[test]
        fn a_take_in_place_writes_what_decode_take_encode_writes(
            (b, steps) in takes(),
            leases in prop::collection::vec(any::<bool>(), 300),
            junk in prop::collection::vec(any::<u8>(), 0..3),
        ) {
            let plan = BatchPlan { size: 2, keep: 0, lifetime_ms: 10 };
            let mut value = Vec::new();
            let mut now_ms = 1_000;
            for (&(k, step), &lease) in steps.iter().zip(leases.iter().cycle()) {
                now_ms += step;
                let text = format!("key-{k}");
                let extras = TakeExtras {
                    give_back: lease.then_some(GiveBack { tokens: 1, fill_stamp_ms: 1_000 }),
                    batch: lease.then_some(&plan),
                };
                let mut slow = value.clone();
                let expected = take_decoded(&mut slow, &key(&text), &b, now_ms, TakeMode::Reject, extras);
                let answer = take_in_slot(&mut value, &key(&text), &b, now_ms, TakeMode::Reject, extras);
                prop_assert_eq!(answer, expected);
                prop_assert_eq!(&value, &slow);
            }
            // A value with bytes after its records is not changed in place.
            let mut tail = value.clone();
            tail.extend_from_slice(&junk);
            let mut slow = tail.clone();
            let expected = take_decoded(&mut slow, &key("key-0"), &b, now_ms, TakeMode::Reject, TakeExtras::default());
            let answer = take_in_slot(&mut tail, &key("key-0"), &b, now_ms, TakeMode::Reject, TakeExtras::default());
            prop_assert_eq!(answer, expected);
            prop_assert_eq!(tail, slow);
        }

        #[test]
        fn a_refused_key_gets_no_token_before_its_retry_time((b, steps) in takes()) {
            let mut refused_until = [0u64; KEYS_IN_PLAY];
            for (now_ms, k, answer) in run(&b, &steps) {
                match answer {
                    Take::Refused { retry_after_ms, .. } => {
                        refused_until[k] = refused_until[k].max(now_ms + retry_after_ms);
                    }
                    _ => prop_assert!(
                        now_ms >= refused_until[k],
                        "key-{k} got a token at {now_ms}, refused until {}", refused_until[k]
                    ),
                }
            }
        }

        #[test]
        fn a_slot_grants_no_more_than_its_buckets_and_overflow_hold((b, steps) in takes()) {
            let granted: Vec<u64> = run(&b, &steps)
                .into_iter()
                .filter(|(_, _, answer)| !is_refused(*answer))
                .map(|(now_ms, _, _)| now_ms)
                .collect();
            let interval_ms = b.fill_interval.as_millis() as u64;
            let buckets = (KEYS_PER_SLOT + 1) as u64;
            for (i, start) in granted.iter().enumerate() {
                for (j, end) in granted.iter().enumerate().skip(i) {
                    // A bucket gives at most what it holds plus the fills that fall in the window.
                    let fills = (end - start) / interval_ms + 1;
                    let most = buckets * (b.max_tokens + b.tokens_per_fill * fills);
                    prop_assert!((j - i + 1) as u64 <= most, "{} tokens in [{start}, {end}]", j - i + 1);
                }
            }
        }
    }
}
