//! A bounded per-VM cache of verification outcomes, keyed by (provider, SHA-256 of the token),
//! so a token's signature is checked once, not on every request. Failures are cached too (for
//! less time) so a replayed bad token costs no crypto. An entry is tied to the generation of
//! the provider's keys: new keys re-verify everything.

use std::rc::Rc;

use hashbrown::HashMap;
use serde_json::{Map, Value};

use super::error::AuthError;

/// How long a verified token is trusted without re-verification, at most.
pub const VERIFIED_TTL_S: u64 = 300;
/// How long a refusal is remembered.
pub const REFUSED_TTL_S: u64 = 60;
pub const DEFAULT_CAPACITY: usize = 2048;

/// What a verified token contributes to the request.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub provider: usize,
    pub subject: Option<String>,
    pub claims: Map<String, Value>,
    pub upstream_headers: Vec<(String, String)>,
}

pub type Digest = [u8; 32];

pub fn digest(token: &str) -> Digest {
    hmac_sha256::Hash::hash(token.as_bytes())
}

#[derive(Debug, Clone)]
struct Entry {
    outcome: Result<Rc<VerifiedToken>, AuthError>,
    expires_at_s: u64,
    keys_generation: u64,
}

#[derive(Debug)]
pub struct TokenCache {
    entries: HashMap<(usize, Digest), Entry>,
    capacity: usize,
    pub hits: u64,
    pub misses: u64,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::with_capacity(DEFAULT_CAPACITY)
    }
}

impl TokenCache {
    pub fn with_capacity(capacity: usize) -> Self {
        TokenCache {
            entries: HashMap::with_capacity(capacity.min(256)),
            capacity: capacity.max(1),
            hits: 0,
            misses: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(
        &mut self,
        provider: usize,
        digest: &Digest,
        now_s: u64,
        keys_generation: u64,
    ) -> Option<Result<Rc<VerifiedToken>, AuthError>> {
        let key = (provider, *digest);
        let fresh = match self.entries.get(&key) {
            Some(entry) => now_s < entry.expires_at_s && entry.keys_generation == keys_generation,
            None => false,
        };
        if !fresh {
            self.entries.remove(&key);
            self.misses += 1;
            return None;
        }
        self.hits += 1;
        self.entries.get(&key).map(|entry| entry.outcome.clone())
    }

    pub fn insert(
        &mut self,
        provider: usize,
        digest: Digest,
        outcome: Result<Rc<VerifiedToken>, AuthError>,
        now_s: u64,
        expires_at_s: u64,
        keys_generation: u64,
    ) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&(provider, digest)) {
            self.make_room(now_s);
        }
        self.entries.insert(
            (provider, digest),
            Entry {
                outcome,
                expires_at_s,
                keys_generation,
            },
        );
    }

    /// Drops expired entries; if that frees too little, drops an arbitrary quarter. Cheap
    /// and bounded, which matters more here than strict LRU order.
    fn make_room(&mut self, now_s: u64) {
        self.entries.retain(|_, entry| entry.expires_at_s > now_s);
        if self.entries.len() >= self.capacity {
            let drop_count = (self.capacity / 4).max(1);
            let victims: Vec<_> = self.entries.keys().take(drop_count).copied().collect();
            for victim in victims {
                self.entries.remove(&victim);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified() -> Result<Rc<VerifiedToken>, AuthError> {
        Ok(Rc::new(VerifiedToken {
            provider: 0,
            subject: Some("alice".into()),
            claims: Map::new(),
            upstream_headers: vec![],
        }))
    }

    #[test]
    fn serves_an_entry_until_it_expires() {
        let mut cache = TokenCache::default();
        let d = digest("a.b.c");
        cache.insert(0, d, verified(), 0, 100, 1);
        assert!(cache.get(0, &d, 99, 1).unwrap().is_ok());
        assert!(cache.get(0, &d, 100, 1).is_none());
        assert_eq!((cache.hits, cache.misses), (1, 1));
    }

    #[test]
    fn entries_are_per_provider_and_per_key_generation() {
        let mut cache = TokenCache::default();
        let d = digest("a.b.c");
        cache.insert(0, d, verified(), 0, 100, 1);
        assert!(cache.get(1, &d, 10, 1).is_none());
        assert!(cache.get(0, &d, 10, 2).is_none());
        assert!(cache.get(0, &digest("a.b.d"), 10, 1).is_none());
    }

    #[test]
    fn refusals_are_cached_as_refusals() {
        let mut cache = TokenCache::default();
        let d = digest("x.y.z");
        cache.insert(0, d, Err(AuthError::BadSignature), 0, 60, 0);
        assert_eq!(
            cache.get(0, &d, 1, 0).unwrap().unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn expired_entries_are_dropped_first_when_full() {
        let mut cache = TokenCache::with_capacity(2);
        cache.insert(0, digest("old"), verified(), 0, 5, 0);
        cache.insert(0, digest("live"), verified(), 0, 500, 0);
        cache.insert(0, digest("new"), verified(), 10, 500, 0);
        assert!(cache.get(0, &digest("live"), 10, 0).is_some());
        assert!(cache.get(0, &digest("new"), 10, 0).is_some());
    }

    #[test]
    fn stays_within_capacity_under_a_flood_of_distinct_tokens() {
        let mut cache = TokenCache::with_capacity(64);
        for i in 0..10_000u64 {
            cache.insert(
                0,
                digest(&i.to_string()),
                Err(AuthError::BadSignature),
                0,
                1_000 + i,
                0,
            );
            assert!(cache.len() <= 64);
        }
        // The newest entry is still there.
        assert!(cache.get(0, &digest("9999"), 0, 0).is_some());
    }
}
