//! Leased batches: a worker takes a few tokens of a key's shared bucket in one compare-and-swap
//! and serves that key's next requests from them without touching shared data; what it has not
//! used goes back to the shared bucket when the lease ends. Pure: time is passed in, and the
//! shared side is `slots` (the batch is taken and given back inside one slot update).
//!
//! Exact in total, never more than the shared bucket alone would admit:
//! - a leased token has left the shared bucket, and a lease serves at most what it took;
//! - a lease ends no later than the bucket's next fill (`Grant::until_ms`), and what it gives
//!   back is added only if no fill has come since it was granted (`GiveBack::fill_stamp_ms`):
//!   so a fill never tops the bucket up while tokens sit in a lease (which would let the leased
//!   tokens and a full bucket be spent together), and a give-back can never lift the bucket
//!   above what it would hold had the tokens never left it. A give-back that comes too late is
//!   dropped: tokens lost until the fill, never tokens made.
//!
//! Refusals stay honest: a batch is taken only while the bucket keeps at least half its
//! capacity after it (`BatchPlan::keep`), so below half every worker takes one token per request
//! as before, and a worker is refused only once the shared bucket is empty. Each worker holds at
//! most one lease per key, and a refused worker holds none for that key (its ended lease is given
//! back in the same update that refuses it). So while a worker is refused, at most
//! (workers - 1) x `BatchPlan::size` tokens of that key sit unused in other workers' leases
//! (size <= capacity / 16 and <= `MAX_BATCH`), and only until those leases end: at most
//! `MAX_LEASE_MS` (and a quarter of the fill interval) after they were granted.
//!
//! Leases are for `mode: reject` policies that enforce; delay-mode and shadow policies take one
//! token per request from the shared bucket, as exact as before.

use super::bucket::{BucketState, Take};
use crate::config::TokenBucket;

/// Buckets smaller than this never lease: one token more or less is a large share of them.
pub const MIN_LEASE_BUCKET: u64 = 32;
/// A batch is at most this big, and at most `1 / BATCH_SHARE` of the bucket.
pub const MAX_BATCH: u64 = 32;
const BATCH_SHARE: u64 = 16;
/// A lease lives at most this long, and at most `1 / LIFETIME_SHARE` of the fill interval: the
/// longest other workers may find tokens in it that they cannot have.
pub const MAX_LEASE_MS: u64 = 100;
const LIFETIME_SHARE: u64 = 4;
/// No lease is granted that would live less than this (the next fill is that close): it would
/// cost a give-back for the few requests it could serve.
pub const MIN_LEASE_MS: u64 = 10;
/// A VM holds at most this many leases (least recently used ends first): bounded memory
/// whatever the key cardinality.
pub const LEASE_TABLE_CAPACITY: usize = 32;

fn interval_ms(bucket: &TokenBucket) -> u64 {
    u64::try_from(bucket.fill_interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn as_tokens(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// How a bucket is leased: chosen from its size and fill interval, no configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    /// Tokens per lease.
    pub size: u64,
    /// A batch is taken only if at least this many tokens stay in the shared bucket after it.
    pub keep: u64,
    pub lifetime_ms: u64,
}

impl BatchPlan {
    /// `None` for a bucket too small to lease, or whose fills come too often for a lease to
    /// live `MIN_LEASE_MS`.
    pub fn for_bucket(bucket: &TokenBucket) -> Option<BatchPlan> {
        let size = (bucket.max_tokens / BATCH_SHARE).min(MAX_BATCH);
        let lifetime_ms = (interval_ms(bucket) / LIFETIME_SHARE).min(MAX_LEASE_MS);
        if bucket.max_tokens < MIN_LEASE_BUCKET || size < 2 || lifetime_ms < MIN_LEASE_MS {
            return None;
        }
        Some(BatchPlan {
            size,
            keep: bucket.max_tokens / 2,
            lifetime_ms,
        })
    }

    /// Takes a batch from `state` (already refilled as of `now_ms`) if the bucket is
    /// comfortably full and the lease could live `MIN_LEASE_MS` before the next fill.
    pub fn take(
        &self,
        state: BucketState,
        bucket: &TokenBucket,
        now_ms: u64,
    ) -> Option<(BucketState, Grant)> {
        if state.tokens < as_tokens(self.keep).saturating_add(as_tokens(self.size)) {
            return None;
        }
        let next_fill_ms = state.last_fill_ms.saturating_add(interval_ms(bucket));
        let until_ms = now_ms.saturating_add(self.lifetime_ms).min(next_fill_ms);
        if until_ms < now_ms.saturating_add(MIN_LEASE_MS) {
            return None;
        }
        let after = BucketState {
            tokens: state.tokens - as_tokens(self.size),
            ..state
        };
        let grant = Grant {
            tokens: self.size,
            shared_remaining: u64::try_from(after.tokens).unwrap_or(0),
            until_ms,
            fill_stamp_ms: state.last_fill_ms,
        };
        Some((after, grant))
    }
}

/// A batch taken from a shared bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub tokens: u64,
    /// What the shared bucket held after the batch left it.
    pub shared_remaining: u64,
    /// The lease serves no request from this time on (at the latest, the bucket's next fill).
    pub until_ms: u64,
    /// The bucket's `last_fill_ms` when the batch was taken: a give-back counts only while it
    /// is still the same.
    pub fill_stamp_ms: u64,
}

/// Unused tokens of an ended lease, on their way back to the shared bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiveBack {
    pub tokens: u64,
    pub fill_stamp_ms: u64,
}

impl GiveBack {
    /// `state` (refilled as of now) with the tokens back, unless a fill has come since they
    /// were leased (then they are dropped). Never above capacity.
    pub fn apply(self, state: BucketState, bucket: &TokenBucket) -> BucketState {
        if state.last_fill_ms != self.fill_stamp_ms {
            return state;
        }
        BucketState {
            tokens: state
                .tokens
                .saturating_add(as_tokens(self.tokens))
                .min(as_tokens(bucket.max_tokens)),
            ..state
        }
    }
}

/// Names a lease, so that a token handed back by a request goes to the lease it came from and
/// not to a later one for the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseId(pub u32);

/// One of this VM's leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub policy: String,
    pub key: String,
    /// The policy's bucket, to give back to it and to compute `reset`.
    pub bucket: TokenBucket,
    /// Tokens not yet used.
    pub tokens: u64,
    pub shared_remaining: u64,
    pub granted_ms: u64,
    pub until_ms: u64,
    pub fill_stamp_ms: u64,
    pub used_ms: u64,
}

impl Lease {
    fn serves(&self, now_ms: u64) -> bool {
        self.tokens > 0 && self.granted_ms <= now_ms && now_ms < self.until_ms
    }

    /// What goes back to the shared bucket when this lease ends; `None` when nothing is left.
    pub fn give_back(&self) -> Option<GiveBack> {
        (self.tokens > 0).then_some(GiveBack {
            tokens: self.tokens,
            fill_stamp_ms: self.fill_stamp_ms,
        })
    }
}

/// What the table says about a request's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// Served from the lease: no shared data needed.
    Leased(Take, LeaseId),
    /// No live lease: take from the shared bucket, giving back this ended lease's tokens in the
    /// same update.
    Shared(Option<GiveBack>),
}

/// A VM's leases, at most `LEASE_TABLE_CAPACITY`.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: Vec<Lease>,
    next_id: u32,
}

impl LeaseTable {
    /// Serves one request for `key` from its lease if one is live; else ends the lease it had.
    pub fn serve(&mut self, policy: &str, key: &str, now_ms: u64) -> Served {
        let Some(index) = self
            .leases
            .iter()
            .position(|l| l.key == key && l.policy == policy)
        else {
            return Served::Shared(None);
        };
        let Some(lease) = self.leases.get_mut(index) else {
            return Served::Shared(None);
        };
        if !lease.serves(now_ms) {
            return Served::Shared(self.leases.swap_remove(index).give_back());
        }
        lease.tokens -= 1;
        lease.used_ms = now_ms;
        let next_fill_ms = lease
            .fill_stamp_ms
            .saturating_add(interval_ms(&lease.bucket));
        let take = Take::Allowed {
            remaining: lease.shared_remaining.saturating_add(lease.tokens),
            reset_ms: next_fill_ms.saturating_sub(now_ms),
        };
        Served::Leased(take, lease.id)
    }

    /// Records a batch just taken, one token of it already used by the request that took it.
    /// Returns the lease's id and the lease it pushed out of a full table (least recently used),
    /// whose tokens are to be given back.
    pub fn insert(
        &mut self,
        policy: &str,
        key: &str,
        bucket: &TokenBucket,
        grant: Grant,
        now_ms: u64,
    ) -> (LeaseId, Option<Lease>) {
        let id = LeaseId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        let evicted = if self.leases.len() >= LEASE_TABLE_CAPACITY {
            self.leases
                .iter()
                .enumerate()
                .min_by_key(|(_, l)| l.used_ms)
                .map(|(index, _)| index)
                .map(|index| self.leases.swap_remove(index))
        } else {
            None
        };
        self.leases.push(Lease {
            id,
            policy: policy.to_owned(),
            key: key.to_owned(),
            bucket: *bucket,
            tokens: grant.tokens.saturating_sub(1),
            shared_remaining: grant.shared_remaining,
            granted_ms: now_ms,
            until_ms: grant.until_ms,
            fill_stamp_ms: grant.fill_stamp_ms,
            used_ms: now_ms,
        });
        (id, evicted)
    }

    /// A token a request took from lease `id` and did not use (another policy refused it).
    /// Lost if that lease has ended meanwhile: the give-back of its tokens is already made.
    pub fn give_one_back(&mut self, id: LeaseId) {
        if let Some(lease) = self.leases.iter_mut().find(|l| l.id == id) {
            lease.tokens = lease.tokens.saturating_add(1);
        }
    }

    /// Removes the leases that have ended by `now_ms` (all of them with `all`); returns those
    /// with tokens to give back.
    pub fn end(&mut self, now_ms: u64, all: bool) -> Vec<Lease> {
        let mut ended = Vec::new();
        let mut index = 0;
        while let Some(lease) = self.leases.get(index) {
            if all || !lease.serves(now_ms) {
                let lease = self.leases.swap_remove(index);
                if lease.tokens > 0 {
                    ended.push(lease);
                }
            } else {
                index += 1;
            }
        }
        ended
    }

    /// When the next lease with unused tokens ends: the VM's tick should come by then.
    pub fn next_end_ms(&self) -> Option<u64> {
        self.leases
            .iter()
            .filter(|l| l.tokens > 0)
            .map(|l| l.until_ms)
            .min()
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Unused tokens this VM can still serve for `key` of `policy` as of `now_ms`.
    pub fn unused(&self, policy: &str, key: &str, now_ms: u64) -> u64 {
        self.leases
            .iter()
            .filter(|l| l.policy == policy && l.key == key && l.serves(now_ms))
            .map(|l| l.tokens)
            .sum()
    }
}
