//! A bounded per-VM cache of verification outcomes, so a token's signature is checked once,
//! not on every request. Failures are cached too (for less time), so a replayed bad token
//! costs no crypto. An entry is tied to the generation of the provider's keys: new keys
//! re-verify everything.
//!
//! Keyed by the token itself in a hashbrown map (foldhash): lookups are exact, so no collision
//! can ever hand one token's identity to another, and hashing costs a fraction of a SHA-256
//! digest inside Wasm (measured: see README, Performance). Memory is bounded by entry count
//! and by the bytes of the tokens held.

use std::hash::{Hash, Hasher};
use std::rc::Rc;

use hashbrown::{Equivalent, HashMap};
use serde_json::{Map, Value};

use super::error::AuthError;

/// How long a verified token is trusted without re-verification, at most.
pub const VERIFIED_TTL_S: u64 = 300;
/// How long a refusal is remembered.
pub const REFUSED_TTL_S: u64 = 60;
pub const DEFAULT_CAPACITY: usize = 2048;
/// Token bytes held at most (per VM), whatever the token sizes.
pub const DEFAULT_MAX_BYTES: usize = 4 * 1024 * 1024;

/// What a verified token contributes to the request.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub provider: usize,
    /// Shared with every verdict that names it.
    pub subject: Option<Rc<str>>,
    /// `iss/sub`, Istio's request principal, when the token has both.
    pub principal: Option<String>,
    pub claims: Map<String, Value>,
    /// Header names and values, shared with every request that forwards them.
    pub upstream_headers: Vec<(Rc<str>, Rc<str>)>,
}

#[derive(Debug, Clone)]
struct Entry {
    outcome: Result<Rc<VerifiedToken>, AuthError>,
    expires_at_s: u64,
    keys_generation: u64,
}

#[derive(Debug)]
pub struct TokenCache {
    /// One map per provider, keyed by the token.
    by_provider: Vec<HashMap<TokenKey, Entry>>,
    entries: usize,
    bytes: usize,
    capacity: usize,
    max_bytes: usize,
    pub hits: u64,
    pub misses: u64,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::with_limits(DEFAULT_CAPACITY, DEFAULT_MAX_BYTES)
    }
}

impl TokenCache {
    pub fn with_limits(capacity: usize, max_bytes: usize) -> Self {
        TokenCache {
            by_provider: Vec::new(),
            entries: 0,
            bytes: 0,
            capacity: capacity.max(1),
            max_bytes,
            hits: 0,
            misses: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(
        &mut self,
        provider: usize,
        token: &str,
        now_s: u64,
        keys_generation: u64,
    ) -> Option<Result<Rc<VerifiedToken>, AuthError>> {
        let Some(map) = self.by_provider.get_mut(provider) else {
            self.misses += 1;
            return None;
        };
        match map.get(&Token(token)) {
            Some(entry)
                if now_s < entry.expires_at_s && entry.keys_generation == keys_generation =>
            {
                self.hits += 1;
                Some(entry.outcome.clone())
            }
            Some(_) => {
                map.remove(&Token(token));
                self.entries -= 1;
                self.bytes -= token.len();
                self.misses += 1;
                None
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    pub fn insert(
        &mut self,
        provider: usize,
        token: &str,
        outcome: Result<Rc<VerifiedToken>, AuthError>,
        now_s: u64,
        expires_at_s: u64,
        keys_generation: u64,
    ) {
        if token.len() > self.max_bytes {
            return;
        }
        if self.by_provider.len() <= provider {
            self.by_provider.resize_with(provider + 1, HashMap::new);
        }
        let entry = Entry {
            outcome,
            expires_at_s,
            keys_generation,
        };
        if let Some(existing) = self
            .by_provider
            .get_mut(provider)
            .and_then(|map| map.get_mut(&Token(token)))
        {
            *existing = entry;
            return;
        }
        if self.entries >= self.capacity || self.bytes + token.len() > self.max_bytes {
            self.make_room(now_s, token.len());
        }
        if let Some(map) = self.by_provider.get_mut(provider) {
            map.insert(TokenKey(token.into()), entry);
            self.entries += 1;
            self.bytes += token.len();
        }
    }

    /// Drops expired entries; if that frees too little, drops an arbitrary quarter of each
    /// provider's entries. Cheap and bounded, which matters more here than strict LRU order.
    fn make_room(&mut self, now_s: u64, incoming: usize) {
        for map in &mut self.by_provider {
            map.retain(|_, entry| entry.expires_at_s > now_s);
        }
        self.recount();
        if self.entries >= self.capacity || self.bytes + incoming > self.max_bytes {
            for map in &mut self.by_provider {
                let victims: Vec<TokenKey> =
                    map.keys().take(map.len().div_ceil(4)).cloned().collect();
                for victim in victims {
                    map.remove(&victim);
                }
            }
            self.recount();
        }
    }

    fn recount(&mut self) {
        self.entries = self.by_provider.iter().map(HashMap::len).sum();
        self.bytes = self
            .by_provider
            .iter()
            .flat_map(|map| map.keys())
            .map(|token| token.0.len())
            .sum();
    }
}

/// A token held as a key. Equal keys are found by comparing eight bytes at a time: the libc
/// `memcmp` behind `str`'s equality walks byte by byte in Wasm (about 8x slower in V8), and a
/// cache hit compares every byte of a token (hundreds to thousands) on every request.
#[derive(Debug, Clone)]
struct TokenKey(Box<str>);

/// A token looked up, borrowed from the request; hashes as the `TokenKey` holding it. (Written
/// out, not derived: clippy refuses a derived `Hash` beside a hand-written `PartialEq`.)
struct Token<'a>(&'a str);

impl Hash for TokenKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Hash for Token<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for TokenKey {
    fn eq(&self, other: &Self) -> bool {
        same_bytes(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl Eq for TokenKey {}

impl Equivalent<TokenKey> for Token<'_> {
    fn equivalent(&self, key: &TokenKey) -> bool {
        same_bytes(self.0.as_bytes(), key.0.as_bytes())
    }
}

/// `a == b`, eight bytes at a time.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a_words, mut b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut differ = 0u64;
    for (x, y) in (&mut a_words).zip(&mut b_words) {
        differ |= word(x) ^ word(y);
    }
    differ == 0 && a_words.remainder() == b_words.remainder()
}

fn word(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(<[u8; 8]>::try_from(bytes).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified() -> Result<Rc<VerifiedToken>, AuthError> {
        Ok(Rc::new(VerifiedToken {
            provider: 0,
            subject: Some("alice".into()),
            principal: None,
            claims: Map::new(),
            upstream_headers: vec![],
        }))
    }

    #[test]
    fn serves_an_entry_until_it_expires() {
        let mut cache = TokenCache::default();
        cache.insert(0, "a.b.c", verified(), 0, 100, 1);
        assert!(cache.get(0, "a.b.c", 99, 1).unwrap().is_ok());
        assert!(cache.get(0, "a.b.c", 100, 1).is_none());
        assert_eq!((cache.hits, cache.misses), (1, 1));
        assert!(cache.is_empty());
    }

    #[test]
    fn entries_are_per_provider_per_key_generation_and_exact() {
        let mut cache = TokenCache::default();
        cache.insert(0, "a.b.c", verified(), 0, 100, 1);
        assert!(cache.get(1, "a.b.c", 10, 1).is_none());
        assert!(cache.get(0, "a.b.d", 10, 1).is_none());
        assert!(cache.get(0, "a.b.c ", 10, 1).is_none());
        assert!(cache.get(0, "a.b.c", 10, 2).is_none());
    }

    #[test]
    fn refusals_are_cached_as_refusals() {
        let mut cache = TokenCache::default();
        cache.insert(0, "x.y.z", Err(AuthError::BadSignature), 0, 60, 0);
        assert_eq!(
            cache.get(0, "x.y.z", 1, 0).unwrap().unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn expired_entries_are_dropped_first_when_full() {
        let mut cache = TokenCache::with_limits(2, DEFAULT_MAX_BYTES);
        cache.insert(0, "old", verified(), 0, 5, 0);
        cache.insert(0, "live", verified(), 0, 500, 0);
        cache.insert(0, "new", verified(), 10, 500, 0);
        assert!(cache.get(0, "live", 10, 0).is_some());
        assert!(cache.get(0, "new", 10, 0).is_some());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn stays_within_capacity_under_a_flood_of_distinct_tokens() {
        let mut cache = TokenCache::with_limits(64, DEFAULT_MAX_BYTES);
        for i in 0..10_000u64 {
            cache.insert(
                i as usize % 3,
                &i.to_string(),
                Err(AuthError::BadSignature),
                0,
                1_000 + i,
                0,
            );
            assert!(cache.len() <= 64);
        }
        assert!(
            cache.get(0, "9999", 0, 0).is_some(),
            "the newest entry is kept"
        );
    }

    #[test]
    fn stays_within_its_byte_budget_whatever_the_token_size() {
        let mut cache = TokenCache::with_limits(10_000, 64 * 1024);
        for i in 0..500 {
            let token = format!("{i}{}", "x".repeat(8 * 1024));
            cache.insert(0, &token, Err(AuthError::BadSignature), 0, 60, 0);
            assert!(cache.bytes() <= 64 * 1024, "{} bytes held", cache.bytes());
        }
        assert!(!cache.is_empty());
    }

    #[test]
    fn tokens_differing_in_any_one_byte_are_different_entries() {
        let token: String = (0..37).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let mut cache = TokenCache::default();
        cache.insert(0, &token, verified(), 0, 100, 1);
        for at in 0..token.len() {
            let mut other = token.clone().into_bytes();
            other[at] = b'.';
            let other = String::from_utf8(other).unwrap();
            assert!(cache.get(0, &other, 10, 1).is_none(), "byte {at}");
        }
        assert!(cache.get(0, &token[..36], 10, 1).is_none());
        assert!(cache.get(0, &token, 10, 1).is_some());
    }

    proptest::proptest! {
        #[test]
        fn same_bytes_is_equality(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            flip in proptest::prelude::any::<(usize, u8)>(),
        ) {
            proptest::prop_assert_eq!(same_bytes(&a, &b), a == b);
            proptest::prop_assert!(same_bytes(&a, &a));
            if !a.is_empty() && flip.1 != 0 {
                let mut c = a.clone();
                let at = flip.0 % c.len();
                c[at] ^= flip.1;
                proptest::prop_assert!(!same_bytes(&a, &c));
            }
        }
    }
}
