//! Buckets with leases, several workers over one set of shared slots.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::config::{KeyPart, Limit, LimitMode};
use crate::ratelimit::bucket::BucketState;
use crate::ratelimit::lease::{BatchPlan, LEASE_TABLE_CAPACITY, MAX_BATCH, MAX_LEASE_MS};

fn bucket(max: u64, per_fill: u64, interval_ms: u64) -> TokenBucket {
    TokenBucket {
        max_tokens: max,
        tokens_per_fill: per_fill,
        fill_interval: Duration::from_millis(interval_ms),
    }
}

fn policy(b: &TokenBucket, mode: LimitMode, shadow: bool) -> RateLimitPolicy {
    RateLimitPolicy {
        name: "p".to_string(),
        key: vec![KeyPart::Rule],
        limit: Limit::Local(*b),
        mode,
        shadow,
        headers_on_allowed: false,
    }
}

/// Shared slots that count the reads and writes made through them.
#[derive(Debug, Default)]
struct Counted {
    slots: MemorySlots,
    reads: usize,
    writes: usize,
}

impl SharedSlots for Counted {
    fn read(&mut self, name: &str) -> (Vec<u8>, Option<u32>) {
        self.reads += 1;
        self.slots.read(name)
    }

    fn write(&mut self, name: &str, value: &[u8], version: Option<u32>) -> Written {
        self.writes += 1;
        self.slots.write(name, value, version)
    }
}

fn counted() -> Buckets<Counted> {
    Buckets::new(
        Counted::default(),
        Some(SlotSeed::new([0; slots::SEED_BYTES])),
    )
}

fn allowed(take: Take) -> bool {
    !matches!(take, Take::Refused { .. })
}

/// The key's shared bucket as of `now_ms` (refilled).
fn shared(buckets: &MemoryBuckets, b: &TokenBucket, key: &str, now_ms: u64) -> Option<BucketState> {
    let seed = buckets.seed()?;
    let address = slots::locate(&seed, "p", key);
    let value = buckets
        .slots()
        .value(SlotName::default().of("p", address.slot));
    slots::peek(&value, &address.key, b, now_ms)
}

#[test]
fn small_buckets_and_frequent_fills_never_lease() {
    assert_eq!(BatchPlan::for_bucket(&bucket(31, 31, 60_000)), None);
    assert_eq!(
        BatchPlan::for_bucket(&bucket(1_000, 1_000, 39)),
        None,
        "a quarter of 39 ms is below the shortest lease"
    );
    assert_eq!(
        BatchPlan::for_bucket(&bucket(32, 1, 60_000)),
        Some(BatchPlan {
            size: 2,
            keep: 16,
            lifetime_ms: MAX_LEASE_MS
        })
    );
    assert_eq!(
        BatchPlan::for_bucket(&bucket(200, 10, 100)),
        Some(BatchPlan {
            size: 12,
            keep: 100,
            lifetime_ms: 25
        })
    );
    let huge = BatchPlan::for_bucket(&bucket(1_000_000_000, 1, 1_000)).unwrap();
    assert_eq!((huge.size, huge.lifetime_ms), (MAX_BATCH, MAX_LEASE_MS));
}

#[test]
fn a_batch_is_taken_only_while_half_the_bucket_stays_behind() {
    let b = bucket(64, 64, 60_000);
    let plan = BatchPlan::for_bucket(&b).unwrap();
    assert_eq!((plan.size, plan.keep), (4, 32));
    let at = |tokens| BucketState {
        tokens,
        last_fill_ms: 0,
    };
    assert!(plan.take(at(36), &b, 10).is_some());
    assert!(plan.take(at(35), &b, 10).is_none());
    let (after, grant) = plan.take(at(64), &b, 10).unwrap();
    assert_eq!(after.tokens, 60);
    assert_eq!(grant.tokens, 4);
    assert_eq!(grant.until_ms, 10 + MAX_LEASE_MS);
    // A lease ends by the next fill, and none is granted that would live under 10 ms.
    assert_eq!(plan.take(at(64), &b, 59_950).unwrap().1.until_ms, 60_000);
    assert!(plan.take(at(64), &b, 59_991).is_none());
}

#[test]
fn a_busy_key_is_served_from_its_lease_without_shared_data() {
    let b = bucket(1_000, 1_000, 60_000);
    let p = policy(&b, LimitMode::Reject, false);
    let mut buckets = counted();
    let (first, paid_by) = buckets.take(&p, &b, "k", 0, TakeMode::Reject);
    assert!(matches!(paid_by, PaidBy::Lease(_)));
    assert_eq!(
        first,
        Take::Allowed {
            remaining: 999,
            reset_ms: 60_000
        },
        "shared remaining plus the lease's own"
    );
    assert_eq!((buckets.slots.reads, buckets.slots.writes), (1, 1));
    let batch = BatchPlan::for_bucket(&b).unwrap().size;
    for n in 1..batch {
        let (take, _) = buckets.take(&p, &b, "k", 1, TakeMode::Reject);
        assert!(matches!(take, Take::Allowed { remaining, .. } if remaining == 999 - n));
    }
    assert_eq!((buckets.slots.reads, buckets.slots.writes), (1, 1));
    // The lease is used up: the next request takes the next batch, in one update.
    buckets.take(&p, &b, "k", 2, TakeMode::Reject);
    assert_eq!((buckets.slots.reads, buckets.slots.writes), (2, 2));
}

#[test]
fn delay_mode_and_shadow_policies_take_one_token_per_request() {
    let b = bucket(1_000, 1_000, 60_000);
    let delay = LimitMode::Delay {
        max_delay: Duration::from_millis(100),
    };
    for (p, mode) in [
        (
            policy(&b, delay, false),
            TakeMode::Delay { max_delay_ms: 100 },
        ),
        (policy(&b, LimitMode::Reject, true), TakeMode::Reject),
    ] {
        let mut buckets = counted();
        for _ in 0..3 {
            let (_, paid_by) = buckets.take(&p, &b, "k", 0, mode);
            assert_eq!(paid_by, PaidBy::KeyBucket);
        }
        assert_eq!(buckets.slots.writes, 3);
    }
}

#[test]
fn unused_tokens_go_back_when_the_lease_ends() {
    let b = bucket(100, 100, 60_000);
    let p = policy(&b, LimitMode::Reject, false);
    let mut one = MemoryBuckets::default();
    let mut two = one.worker();
    one.take(&p, &b, "k", 0, TakeMode::Reject);
    two.take(&p, &b, "k", 0, TakeMode::Reject);
    // Two leases of 6, one token of each used.
    assert_eq!(shared(&one, &b, "k", 0).unwrap().tokens, 88);
    assert_eq!(one.next_lease_end_ms(), Some(MAX_LEASE_MS));
    one.end_leases(MAX_LEASE_MS - 1, false);
    assert_eq!(shared(&one, &b, "k", 0).unwrap().tokens, 88, "not yet");
    one.end_leases(MAX_LEASE_MS, false);
    two.end_leases(MAX_LEASE_MS, false);
    assert_eq!(shared(&one, &b, "k", 0).unwrap().tokens, 98);
    assert_eq!((one.leases(), two.leases()), (0, 0));
    assert_eq!(one.next_lease_end_ms(), None);
}

#[test]
fn a_new_seed_ends_the_leases_into_the_buckets_they_came_from() {
    let b = bucket(100, 100, 60_000);
    let p = policy(&b, LimitMode::Reject, false);
    let mut buckets = MemoryBuckets::default();
    buckets.take(&p, &b, "k", 0, TakeMode::Reject);
    assert_eq!(shared(&buckets, &b, "k", 0).unwrap().tokens, 94);
    let old = buckets.worker();
    buckets.adopt_seed(SlotSeed::new([9; slots::SEED_BYTES]), 1);
    assert_eq!(buckets.leases(), 0);
    assert_eq!(shared(&old, &b, "k", 1).unwrap().tokens, 99);
    assert_eq!(
        shared(&buckets, &b, "k", 1),
        None,
        "nothing went to the new placement"
    );
}

#[test]
fn a_give_back_after_a_fill_is_dropped_and_never_overfills() {
    let b = bucket(100, 50, 1_000);
    let p = policy(&b, LimitMode::Reject, false);
    let mut buckets = MemoryBuckets::default();
    // The bucket's fills come at 1_000, 2_000, ...: a lease taken at 950 is cut at 1_000.
    buckets.take(&p, &b, "k", 0, TakeMode::Reject);
    buckets.end_leases(0, true);
    buckets.take(&p, &b, "k", 950, TakeMode::Reject);
    assert_eq!(buckets.next_lease_end_ms(), Some(1_000));
    // Its unused tokens are not added after the fill.
    let before = shared(&buckets, &b, "k", 1_000).unwrap();
    buckets.end_leases(1_000, false);
    assert_eq!(shared(&buckets, &b, "k", 1_000).unwrap(), before);
    assert!(before.tokens <= 100);
}

#[test]
fn a_token_refunded_by_another_policy_goes_back_to_its_lease() {
    let b = bucket(100, 100, 60_000);
    let p = policy(&b, LimitMode::Reject, false);
    let mut buckets = counted();
    let (_, paid_by) = buckets.take(&p, &b, "k", 0, TakeMode::Reject);
    buckets.refund(&p, &b, "k", paid_by);
    assert_eq!(buckets.slots.writes, 1, "no shared write for it");
    let (take, _) = buckets.take(&p, &b, "k", 1, TakeMode::Reject);
    assert_eq!(
        take,
        Take::Allowed {
            remaining: 99,
            reset_ms: 59_999
        }
    );
}

#[test]
fn the_lease_table_is_bounded_and_gives_back_what_it_pushes_out() {
    let b = bucket(100, 100, 60_000);
    let p = policy(&b, LimitMode::Reject, false);
    let mut buckets = MemoryBuckets::default();
    let keys: Vec<String> = (0..=LEASE_TABLE_CAPACITY)
        .map(|i| format!("k{i}"))
        .collect();
    for (now, key) in keys.iter().enumerate() {
        buckets.take(&p, &b, key, now as u64, TakeMode::Reject);
    }
    assert_eq!(buckets.leases(), LEASE_TABLE_CAPACITY);
    let oldest = shared(&buckets, &b, "k0", 50).unwrap();
    assert_eq!(oldest.tokens, 99, "k0's unused tokens came back");
    assert_eq!(shared(&buckets, &b, "k1", 50).unwrap().tokens, 94);
}

#[derive(Debug, Clone)]
enum Op {
    Take {
        worker: usize,
        key: usize,
    },
    /// A take that another policy then refuses: its token is refunded.
    TakeRefunded {
        worker: usize,
        key: usize,
    },
    Tick {
        worker: usize,
    },
    /// The worker's configuration is replaced: every lease ends.
    Reconfigure {
        worker: usize,
    },
    Wait {
        ms: u64,
    },
}

const KEYS: usize = 2;
const START_MS: u64 = 1_000;

fn ops(workers: usize) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        8 => (0..workers, 0..KEYS).prop_map(|(worker, key)| Op::Take { worker, key }),
        1 => (0..workers, 0..KEYS).prop_map(|(worker, key)| Op::TakeRefunded { worker, key }),
        2 => (0..workers).prop_map(|worker| Op::Tick { worker }),
        1 => (0..workers).prop_map(|worker| Op::Reconfigure { worker }),
        3 => (0u64..40).prop_map(|ms| Op::Wait { ms }),
    ];
    prop::collection::vec(op, 1..400)
}

fn leasing_bucket() -> impl Strategy<Value = TokenBucket> {
    (32u64..=120, 1u64..=60, 40u64..=400).prop_map(|(max, per_fill, ms)| bucket(max, per_fill, ms))
}

/// Takes of one key that count (not refunded): when, and whether let through.
type Takes = Vec<(u64, bool)>;

/// Runs `ops` on `workers` workers over one set of slots; returns, per key, when a refunded take
/// came before any that counts (it made the bucket then), and every take that counts.
fn run(
    b: &TokenBucket,
    workers: usize,
    ops: &[Op],
) -> Result<Vec<(Option<u64>, Takes)>, TestCaseError> {
    let p = policy(b, LimitMode::Reject, false);
    let first = MemoryBuckets::default();
    let mut all: Vec<MemoryBuckets> = (1..workers).map(|_| first.worker()).collect();
    all.insert(0, first);
    let size = BatchPlan::for_bucket(b).map_or(0, |plan| plan.size);
    let keys: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
    let mut takes = vec![Vec::new(); KEYS];
    let mut created: Vec<Option<u64>> = vec![None; KEYS];
    let mut now = START_MS;
    for op in ops {
        match *op {
            Op::Take { worker, key } | Op::TakeRefunded { worker, key } => {
                let (Some(buckets), Some(name)) = (all.get_mut(worker), keys.get(key)) else {
                    continue;
                };
                let (take, paid_by) = buckets.take(&p, b, name, now, TakeMode::Reject);
                if matches!(op, Op::TakeRefunded { .. }) {
                    if allowed(take) {
                        buckets.refund(&p, b, name, paid_by);
                    }
                    // It counts for nothing, but it may be what made the key's bucket: the
                    // bucket's refill clock starts then, and so must the exact one's.
                    if takes[key].is_empty() {
                        created[key].get_or_insert(now);
                    }
                } else {
                    takes[key].push((now, allowed(take)));
                }
                if !allowed(take) {
                    // Honest refusals: the refused worker holds nothing of the key, the others
                    // at most a batch each, and the shared bucket is empty.
                    let own = buckets.lease_table().unused("p", name, now);
                    prop_assert_eq!(own, 0);
                    let others: u64 = all
                        .iter()
                        .map(|w| w.lease_table().unused("p", name, now))
                        .sum();
                    prop_assert!(others <= (workers as u64 - 1) * size);
                    let left = shared(&all[0], b, name, now).map_or(0, |s| s.tokens);
                    prop_assert!(left < 1, "refused with {} tokens in the bucket", left);
                }
            }
            Op::Tick { worker } => {
                if let Some(buckets) = all.get_mut(worker) {
                    buckets.end_leases(now, false);
                }
            }
            Op::Reconfigure { worker } => {
                if let Some(buckets) = all.get_mut(worker) {
                    buckets.end_leases(now, true);
                }
            }
            Op::Wait { ms } => now += ms,
        }
        for name in &keys {
            // What can still be spent never exceeds the bucket: shared plus live leases.
            let Some(state) = shared(&all[0], b, name, now) else {
                continue;
            };
            let leased: u64 = all
                .iter()
                .map(|w| w.lease_table().unused("p", name, now))
                .sum();
            prop_assert!(
                state.tokens + leased as i64 <= b.max_tokens as i64,
                "{} shared + {} leased > {}",
                state.tokens,
                leased,
                b.max_tokens
            );
        }
    }
    Ok(created.into_iter().zip(takes).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn leases_never_let_through_more_than_one_exact_bucket(
        b in leasing_bucket(),
        (workers, ops) in (2usize..=3).prop_flat_map(|w| (Just(w), ops(w))),
    ) {
        for (created, takes) in run(&b, workers, &ops)? {
            let Some(&(first, _)) = takes.first() else {
                continue;
            };
            // The exact bucket starts full when the key's bucket was made, refill clock and all.
            let start = created.unwrap_or(first);
            // What was let through, taken one by one from a single exact bucket: all of it fits.
            let mut exact = BucketState::full(&b, start);
            // The same requests, each offered to a single exact bucket: never fewer by any time.
            let mut greedy = BucketState::full(&b, start);
            let (mut through, mut greedy_through) = (0u64, 0u64);
            for (now, let_through) in takes {
                let (next, take) = greedy.take(&b, now, TakeMode::Reject);
                greedy = next;
                greedy_through += u64::from(allowed(take));
                if let_through {
                    let (next, take) = exact.take(&b, now, TakeMode::Reject);
                    prop_assert!(allowed(take), "a token at {} that one exact bucket has not", now);
                    exact = next;
                    through += 1;
                }
                prop_assert!(through <= greedy_through);
            }
        }
    }
}
