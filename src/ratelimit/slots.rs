//! Where buckets live across Envoy workers: proxy-wasm shared data, which has no delete. Each
//! policy owns a fixed number of slots (shared-data keys); a key hashes to one slot, and a slot
//! holds up to `KEYS_PER_SLOT` buckets. A new key takes the place of a bucket that is full again
//! (forgetting it loses nothing), else of the least recently used one. So memory is fixed per
//! policy whatever the key cardinality: `SLOTS_PER_POLICY` x `KEYS_PER_SLOT` buckets.
//! The host updates a slot with compare-and-swap; everything here is pure.

use super::bucket::{BucketState, Take, TakeMode};
use crate::config::TokenBucket;
use crate::hash::fnv1a;

pub const SLOTS_PER_POLICY: u64 = 4096;
pub const KEYS_PER_SLOT: usize = 8;
/// Keys longer than this are cut (and the cut tail hashed in), so slots stay small.
const MAX_KEY_BYTES: usize = 256;

pub fn slot_name(policy: &str, key: &str) -> String {
    let slot = fnv1a(&[policy.as_bytes(), key.as_bytes()]) % SLOTS_PER_POLICY;
    format!("meshguard.rl.{policy}.{slot}")
}

/// All slot names of a policy (created empty up front so every update can be a CAS).
pub fn all_slot_names(policy: &str) -> impl Iterator<Item = String> + '_ {
    (0..SLOTS_PER_POLICY).map(move |slot| format!("meshguard.rl.{policy}.{slot}"))
}

/// Keys are stored bounded: a long key keeps its head and a hash of the whole.
pub fn stored_key(key: &str) -> String {
    if key.len() <= MAX_KEY_BYTES {
        return key.to_owned();
    }
    let mut cut = MAX_KEY_BYTES - 17;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}#{:016x}",
        key.get(..cut).unwrap_or(""),
        fnv1a(&[key.as_bytes()])
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: String,
    state: BucketState,
    touched_ms: u64,
}

fn decode(bytes: &[u8]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    let mut read = |len: usize| -> Option<&[u8]> {
        let part = bytes.get(at..at.checked_add(len)?)?;
        at += len;
        Some(part)
    };
    while let Some(len) = read(2)
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
        .map(|b| usize::from(u16::from_le_bytes(b)))
    {
        let entry = (|| {
            let key = String::from_utf8(read(len)?.to_vec()).ok()?;
            let tokens = i64::from_le_bytes(read(8)?.try_into().ok()?);
            let last_fill_ms = u64::from_le_bytes(read(8)?.try_into().ok()?);
            let touched_ms = u64::from_le_bytes(read(8)?.try_into().ok()?);
            Some(Entry {
                key,
                state: BucketState {
                    tokens,
                    last_fill_ms,
                },
                touched_ms,
            })
        })();
        match entry {
            Some(entry) => entries.push(entry),
            None => break, // a torn or foreign value: keep what was readable
        }
    }
    entries
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.key.len() + 26).sum());
    for entry in entries {
        let len = u16::try_from(entry.key.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(entry.key.as_bytes().get(..usize::from(len)).unwrap_or(&[]));
        out.extend_from_slice(&entry.state.tokens.to_le_bytes());
        out.extend_from_slice(&entry.state.last_fill_ms.to_le_bytes());
        out.extend_from_slice(&entry.touched_ms.to_le_bytes());
    }
    out
}

/// Takes a token for `key` from the slot's current value; returns the new value to write.
pub fn take_in_slot(
    current: &[u8],
    key: &str,
    bucket: &TokenBucket,
    now_ms: u64,
    mode: TakeMode,
) -> (Vec<u8>, Take) {
    let key = stored_key(key);
    let mut entries = decode(current);
    let index = match entries.iter().position(|e| e.key == key) {
        Some(index) => index,
        None => {
            if entries.len() >= KEYS_PER_SLOT {
                let victim = entries
                    .iter()
                    .position(|e| e.state.is_idle(bucket, now_ms))
                    .or_else(|| {
                        entries
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, e)| e.touched_ms)
                            .map(|(i, _)| i)
                    })
                    .unwrap_or(0);
                if victim < entries.len() {
                    entries.swap_remove(victim);
                }
            }
            entries.push(Entry {
                key,
                state: BucketState::full(bucket, now_ms),
                touched_ms: now_ms,
            });
            entries.len() - 1
        }
    };
    let Some(entry) = entries.get_mut(index) else {
        return (
            encode(&entries),
            Take::Refused {
                retry_after_ms: 1_000,
                reset_ms: 1_000,
            },
        );
    };
    let (state, take) = entry.state.take(bucket, now_ms, mode);
    entry.state = state;
    entry.touched_ms = now_ms;
    (encode(&entries), take)
}

/// Returns a token to `key`'s bucket; `None` when the bucket is gone (nothing to give back).
pub fn refund_in_slot(current: &[u8], key: &str, bucket: &TokenBucket) -> Option<Vec<u8>> {
    let key = stored_key(key);
    let mut entries = decode(current);
    let entry = entries.iter_mut().find(|e| e.key == key)?;
    entry.state = entry.state.refund(bucket);
    Some(encode(&entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bucket() -> TokenBucket {
        TokenBucket {
            max_tokens: 2,
            tokens_per_fill: 2,
            fill_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn buckets_round_trip_through_the_slot_value() {
        let b = bucket();
        let (value, first) = take_in_slot(&[], "alice", &b, 10, TakeMode::Reject);
        assert_eq!(
            first,
            Take::Allowed {
                remaining: 1,
                reset_ms: 1_000
            }
        );
        let (value, second) = take_in_slot(&value, "alice", &b, 20, TakeMode::Reject);
        assert!(matches!(second, Take::Allowed { remaining: 0, .. }));
        let (value, third) = take_in_slot(&value, "alice", &b, 30, TakeMode::Reject);
        assert!(matches!(third, Take::Refused { .. }));
        let (_, other) = take_in_slot(&value, "bob", &b, 30, TakeMode::Reject);
        assert!(
            matches!(other, Take::Allowed { remaining: 1, .. }),
            "keys are isolated"
        );
    }

    #[test]
    fn a_full_slot_forgets_idle_buckets_first_then_the_least_recently_used() {
        let b = bucket();
        let mut value = Vec::new();
        for i in 0..KEYS_PER_SLOT {
            // Drain each bucket so none is idle.
            for _ in 0..2 {
                value = take_in_slot(
                    &value,
                    &format!("k{i}"),
                    &b,
                    100 + i as u64,
                    TakeMode::Reject,
                )
                .0;
            }
        }
        let (value, _) = take_in_slot(&value, "newcomer", &b, 500, TakeMode::Reject);
        let keys: Vec<String> = decode(&value).into_iter().map(|e| e.key).collect();
        assert_eq!(keys.len(), KEYS_PER_SLOT);
        assert!(
            !keys.contains(&"k0".to_string()),
            "the least recently used went"
        );
        assert!(keys.contains(&"k7".to_string()));
        // k1 is still drained: it is not reset by the newcomer.
        let (_, k1) = take_in_slot(&value, "k1", &b, 600, TakeMode::Reject);
        assert!(matches!(k1, Take::Refused { .. }));
    }

    #[test]
    fn garbage_is_an_empty_slot_not_a_crash() {
        for junk in [&b"\xff"[..], b"\x05\x00ab", b"\x02\x00\xff\xfe12345678"] {
            let (_, take) = take_in_slot(junk, "k", &bucket(), 0, TakeMode::Reject);
            assert!(matches!(take, Take::Allowed { .. }));
        }
    }

    #[test]
    fn refunds_find_their_bucket() {
        let b = bucket();
        let (value, _) = take_in_slot(&[], "k", &b, 0, TakeMode::Reject);
        let refunded = refund_in_slot(&value, "k", &b).unwrap();
        let (_, take) = take_in_slot(&refunded, "k", &b, 0, TakeMode::Reject);
        assert_eq!(
            take,
            Take::Allowed {
                remaining: 1,
                reset_ms: 1_000
            }
        );
        assert!(refund_in_slot(&value, "other", &b).is_none());
    }

    #[test]
    fn slot_names_are_stable_and_spread() {
        assert_eq!(slot_name("p", "alice"), slot_name("p", "alice"));
        let distinct: std::collections::HashSet<String> =
            (0..1000).map(|i| slot_name("p", &i.to_string())).collect();
        assert!(
            distinct.len() > 850,
            "{} slots for 1000 keys",
            distinct.len()
        );
        assert_eq!(all_slot_names("p").count() as u64, SLOTS_PER_POLICY);
    }

    #[test]
    fn long_keys_are_bounded_and_still_distinct() {
        let a = stored_key(&"a".repeat(10_000));
        let b = stored_key(&format!("{}b", "a".repeat(9_999)));
        assert!(a.len() <= MAX_KEY_BYTES && b.len() <= MAX_KEY_BYTES);
        assert_ne!(a, b);
        assert_eq!(stored_key("short"), "short");
    }
}
