//! Remote JWKS as explicit state: what keys each VM holds for a provider, and the fetch lease
//! all Envoy workers share (through proxy-wasm shared data), so that one worker fetches and
//! every worker uses the result. Pure logic; the host adapter moves the bytes.

use super::jwks::{parse_jwks, JwksError, KeySet, SymmetricKeys};
use crate::config::{Config, KeySource};

/// An unknown `kid` may trigger one early refetch per provider per this interval, across all
/// workers: a rotated key works within seconds, a flood of made-up kids cannot hammer the IdP.
pub const UNKNOWN_KID_REFETCH_INTERVAL_MS: u64 = 5_000;
/// Longest wait between fetch attempts after repeated failures.
pub const MAX_BACKOFF_MS: u64 = 30_000;
/// A fetch lease outlives the fetch timeout by this much, then another worker may take over.
pub const LEASE_MARGIN_MS: u64 = 1_000;

const RECORD_MAGIC: &str = "meshguard-jwks-v1 ";
const LEASE_MAGIC: &str = "meshguard-lease-v1";

/// The shared record of a fetched JWKS: when it was fetched, then the document as served.
pub fn encode_record(fetched_at_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{RECORD_MAGIC}{fetched_at_ms}\n").into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn decode_record(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let rest = bytes.strip_prefix(RECORD_MAGIC.as_bytes())?;
    let newline = rest.iter().position(|&b| b == b'\n')?;
    let (stamp, body) = rest.split_at(newline);
    let fetched_at_ms = std::str::from_utf8(stamp).ok()?.parse().ok()?;
    Some((fetched_at_ms, body.get(1..)?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchReason {
    /// No keys yet; requests wait for them.
    FirstKeys,
    /// Keys are older than `cache_duration`; requests go on with them meanwhile.
    Refresh,
    /// A token named a `kid` the keys do not have; that request waits.
    UnknownKid,
}

/// Who may fetch, and how recent attempts went. Shared by all workers of one Envoy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchLease {
    /// A worker is fetching until then.
    pub busy_until_ms: u64,
    pub last_started_ms: u64,
    pub failures: u32,
    pub last_failure_ms: u64,
}

impl FetchLease {
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{LEASE_MAGIC} {} {} {} {}",
            self.busy_until_ms, self.last_started_ms, self.failures, self.last_failure_ms
        )
        .into_bytes()
    }

    /// An unreadable lease is treated as none: the worst case is one extra fetch.
    pub fn decode(bytes: &[u8]) -> FetchLease {
        let text = std::str::from_utf8(bytes).unwrap_or("");
        let mut fields = text.split(' ');
        if fields.next() != Some(LEASE_MAGIC) {
            return FetchLease::default();
        }
        let mut number = || {
            fields
                .next()
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        FetchLease {
            busy_until_ms: number(),
            last_started_ms: number(),
            failures: u32::try_from(number()).unwrap_or(u32::MAX),
            last_failure_ms: number(),
        }
    }

    /// No fetch is tried before this, after failures: 1 s, 2 s, 4 s … up to 30 s.
    pub fn backoff_until_ms(&self) -> u64 {
        if self.failures == 0 {
            return 0;
        }
        let exponent = self.failures.saturating_sub(1).min(16);
        let backoff = 1_000u64
            .saturating_mul(1u64 << exponent)
            .min(MAX_BACKOFF_MS);
        self.last_failure_ms.saturating_add(backoff)
    }

    pub fn busy(&self, now_ms: u64) -> bool {
        now_ms < self.busy_until_ms
    }

    /// The lease to write if this worker may start a fetch now.
    pub fn try_start(
        &self,
        now_ms: u64,
        timeout_ms: u64,
        reason: FetchReason,
    ) -> Option<FetchLease> {
        if self.busy(now_ms) || now_ms < self.backoff_until_ms() {
            return None;
        }
        if reason == FetchReason::UnknownKid
            && now_ms
                < self
                    .last_started_ms
                    .saturating_add(UNKNOWN_KID_REFETCH_INTERVAL_MS)
        {
            return None;
        }
        Some(FetchLease {
            busy_until_ms: now_ms
                .saturating_add(timeout_ms)
                .saturating_add(LEASE_MARGIN_MS),
            last_started_ms: now_ms,
            ..*self
        })
    }

    pub fn finished(&self, succeeded: bool, now_ms: u64) -> FetchLease {
        if succeeded {
            FetchLease {
                busy_until_ms: 0,
                failures: 0,
                ..*self
            }
        } else {
            FetchLease {
                busy_until_ms: 0,
                failures: self.failures.saturating_add(1),
                last_failure_ms: now_ms,
                ..*self
            }
        }
    }
}

/// One VM's view of a remote provider's keys.
#[derive(Debug, Default)]
pub struct RemoteKeys {
    pub keys: Option<KeySet>,
    /// Bumped whenever `keys` changes; ties token-cache entries to the keys that checked them.
    pub generation: u64,
    pub fetched_at_ms: u64,
    /// The shared lease as last seen.
    pub lease: FetchLease,
}

/// What taking a fetched document did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adoption {
    /// The keys differ from those held before.
    pub changed: bool,
    /// Why keys in the document were left out (wrong types, unsupported curves...), for the
    /// operator's log: a set with one good key is used, the rest must not vanish silently.
    pub skipped: Vec<String>,
}

impl RemoteKeys {
    /// Takes a fetched document if it is newer than what this VM holds. A document with no
    /// usable key is refused and the last good keys stay.
    pub fn adopt(&mut self, fetched_at_ms: u64, body: &[u8]) -> Result<Adoption, JwksError> {
        if self.keys.is_some() && fetched_at_ms <= self.fetched_at_ms {
            return Ok(Adoption::default());
        }
        let parsed = parse_jwks(body, SymmetricKeys::Refused)?;
        let changed = self.keys.as_ref() != Some(&parsed.keys);
        self.keys = Some(parsed.keys);
        self.fetched_at_ms = fetched_at_ms;
        if changed {
            self.generation = self.generation.wrapping_add(1);
        }
        Ok(Adoption {
            changed,
            skipped: parsed.skipped,
        })
    }

    pub fn is_stale(&self, now_ms: u64, cache_duration_ms: u64) -> bool {
        self.keys.is_some() && now_ms >= self.fetched_at_ms.saturating_add(cache_duration_ms)
    }

    pub fn may_refetch_for_unknown_kid(&self, now_ms: u64) -> bool {
        !self.lease.busy(now_ms)
            && now_ms >= self.lease.backoff_until_ms()
            && now_ms
                >= self
                    .lease
                    .last_started_ms
                    .saturating_add(UNKNOWN_KID_REFETCH_INTERVAL_MS)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Availability<'k> {
    Ready {
        keys: &'k KeySet,
        generation: u64,
    },
    /// None yet, a fetch is due or under way: wait.
    Pending,
    /// None yet, and the last fetch failed: fail closed until the next attempt.
    Unavailable {
        retry_after_s: u64,
    },
}

/// Keys for every provider: local sets from the config, remote ones as this VM last saw them.
#[derive(Debug, Default)]
pub struct KeyStore {
    remote: Vec<Option<RemoteKeys>>,
}

impl KeyStore {
    pub fn new(config: &Config) -> KeyStore {
        KeyStore {
            remote: config
                .providers
                .iter()
                .map(|p| match p.keys {
                    KeySource::Remote(_) => Some(RemoteKeys::default()),
                    KeySource::Local(_) => None,
                })
                .collect(),
        }
    }

    pub fn remote(&self, provider: usize) -> Option<&RemoteKeys> {
        self.remote.get(provider).and_then(Option::as_ref)
    }

    pub fn remote_mut(&mut self, provider: usize) -> Option<&mut RemoteKeys> {
        self.remote.get_mut(provider).and_then(Option::as_mut)
    }

    pub fn availability<'k>(
        &'k self,
        config: &'k Config,
        provider: usize,
        now_ms: u64,
    ) -> Availability<'k> {
        if let Some(KeySource::Local(keys)) = config.providers.get(provider).map(|p| &p.keys) {
            return Availability::Ready {
                keys,
                generation: 0,
            };
        }
        let Some(remote) = self.remote(provider) else {
            return Availability::Unavailable { retry_after_s: 1 };
        };
        match &remote.keys {
            Some(keys) => Availability::Ready {
                keys,
                generation: remote.generation,
            },
            None => {
                let backoff_until = remote.lease.backoff_until_ms();
                if now_ms < backoff_until {
                    let retry_after_s = backoff_until.saturating_sub(now_ms).div_ceil(1_000).max(1);
                    Availability::Unavailable { retry_after_s }
                } else {
                    Availability::Pending
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::testkeys;

    #[test]
    fn record_round_trips_and_rejects_foreign_bytes() {
        let record = encode_record(1234, b"{\"keys\":[]}\n");
        assert_eq!(
            decode_record(&record),
            Some((1234, &b"{\"keys\":[]}\n"[..]))
        );
        assert_eq!(decode_record(b"garbage"), None);
        assert_eq!(decode_record(b"meshguard-jwks-v1 12x\n{}"), None);
    }

    #[test]
    fn lease_round_trips_and_garbage_is_no_lease() {
        let lease = FetchLease {
            busy_until_ms: 5,
            last_started_ms: 4,
            failures: 3,
            last_failure_ms: 2,
        };
        assert_eq!(FetchLease::decode(&lease.encode()), lease);
        assert_eq!(FetchLease::decode(b"\xff\x00"), FetchLease::default());
    }

    #[test]
    fn only_one_worker_fetches_at_a_time() {
        let idle = FetchLease::default();
        let taken = idle
            .try_start(1_000, 1_000, FetchReason::FirstKeys)
            .unwrap();
        assert_eq!(taken.busy_until_ms, 1_000 + 1_000 + LEASE_MARGIN_MS);
        assert!(taken
            .try_start(2_000, 1_000, FetchReason::FirstKeys)
            .is_none());
        // A lease whose holder vanished expires.
        assert!(taken
            .try_start(3_000, 1_000, FetchReason::FirstKeys)
            .is_some());
    }

    #[test]
    fn failures_back_off_exponentially_up_to_a_cap() {
        let mut lease = FetchLease::default();
        let mut waits = Vec::new();
        for _ in 0..8 {
            lease = lease.finished(false, 10_000);
            waits.push(lease.backoff_until_ms() - 10_000);
        }
        assert_eq!(
            waits,
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        assert!(lease
            .try_start(10_500, 1_000, FetchReason::Refresh)
            .is_none());
        assert!(lease
            .try_start(40_000, 1_000, FetchReason::Refresh)
            .is_some());
        assert_eq!(lease.finished(true, 50_000).failures, 0);
    }

    #[test]
    fn unknown_kid_refetches_are_spaced_out() {
        let lease = FetchLease::default()
            .try_start(10_000, 1_000, FetchReason::FirstKeys)
            .unwrap()
            .finished(true, 10_100);
        assert!(lease
            .try_start(11_000, 1_000, FetchReason::UnknownKid)
            .is_none());
        assert!(lease
            .try_start(11_000, 1_000, FetchReason::Refresh)
            .is_some());
        assert!(lease
            .try_start(
                10_000 + UNKNOWN_KID_REFETCH_INTERVAL_MS,
                1_000,
                FetchReason::UnknownKid
            )
            .is_some());
    }

    #[test]
    fn garbage_keeps_the_last_good_keys() {
        let mut remote = RemoteKeys::default();
        let good = testkeys::jwks_json(&[testkeys::ec_jwk("k1")]);
        assert_eq!(
            remote.adopt(1, good.as_bytes()).map(|a| a.changed),
            Ok(true)
        );
        let generation = remote.generation;
        assert!(remote.adopt(2, b"<html>down</html>").is_err());
        assert!(remote.keys.as_ref().unwrap().has_kid("k1"));
        assert_eq!(remote.generation, generation);
        assert_eq!(remote.fetched_at_ms, 1);
    }

    #[test]
    fn same_keys_refetched_keep_their_generation_and_older_records_are_ignored() {
        let mut remote = RemoteKeys::default();
        let good = testkeys::jwks_json(&[testkeys::ec_jwk("k1")]);
        remote.adopt(5, good.as_bytes()).unwrap();
        let generation = remote.generation;
        assert_eq!(
            remote.adopt(6, good.as_bytes()).map(|a| a.changed),
            Ok(false)
        );
        assert_eq!(remote.generation, generation);
        assert_eq!(remote.fetched_at_ms, 6);
        let rotated = testkeys::jwks_json(&[testkeys::ec_jwk("k2")]);
        assert_eq!(
            remote.adopt(4, rotated.as_bytes()).map(|a| a.changed),
            Ok(false)
        );
        assert_eq!(
            remote.adopt(7, rotated.as_bytes()).map(|a| a.changed),
            Ok(true)
        );
        assert_ne!(remote.generation, generation);
    }

    #[test]
    fn keys_left_out_of_an_adopted_set_are_reported() {
        let mut remote = RemoteKeys::default();
        let body = format!(
            r#"{{"keys":[{},{{"kty":"EC","crv":"P-256","kid":7,"x":1,"y":[]}}]}}"#,
            testkeys::ec_jwk("k1")
        );
        let adoption = remote.adopt(1, body.as_bytes()).unwrap();
        assert!(adoption.changed);
        assert_eq!(
            adoption.skipped,
            vec![r#"key 1: "kid" is not a string"#.to_owned()]
        );
        assert!(remote.keys.as_ref().unwrap().has_kid("k1"));
    }

    #[test]
    fn staleness_follows_cache_duration() {
        let mut remote = RemoteKeys::default();
        assert!(!remote.is_stale(1_000_000, 10));
        remote
            .adopt(
                100,
                testkeys::jwks_json(&[testkeys::ec_jwk("k")]).as_bytes(),
            )
            .unwrap();
        assert!(!remote.is_stale(109, 10));
        assert!(remote.is_stale(110, 10));
    }
}
