//! What one Wasm VM (one Envoy worker) holds: the configuration, the keys it has seen, the
//! verified-token cache, requests paused for keys, and key fetches in flight.

use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use hashbrown::HashMap;
use proxy_wasm::hostcalls;

use super::crypto::HostVerifier;
use crate::auth::cache::TokenCache;
use crate::auth::remote::KeyStore;
use crate::auth::AuthEnv;
use crate::config::Config;
use crate::pipeline::{decide, Decision};
use crate::request::Request;

/// A request paused until its provider's keys arrive (or its deadline passes).
pub struct Waiter {
    pub context_id: u32,
    pub request: Request,
    pub deadline_ms: u64,
}

pub struct VmState {
    pub config: Rc<Config>,
    pub keys: KeyStore,
    pub cache: TokenCache,
    pub verifier: HostVerifier,
    pub waiters: Vec<Waiter>,
    /// HTTP call token -> provider index, for JWKS fetches this VM started.
    pub fetches: HashMap<u32, usize>,
}

impl VmState {
    pub fn new(config: Config, verifier: HostVerifier) -> VmState {
        VmState {
            keys: KeyStore::new(&config),
            config: Rc::new(config),
            cache: TokenCache::default(),
            verifier,
            waiters: Vec::new(),
            fetches: HashMap::new(),
        }
    }

    pub fn decide(&mut self, request: &Request, now_ms: u64) -> Decision {
        let env = AuthEnv {
            config: &self.config,
            keys: &self.keys,
            verifier: &self.verifier,
            now_ms,
        };
        decide(&env, &mut self.cache, request)
    }

    pub fn has_remote_providers(&self) -> bool {
        (0..self.config.providers.len()).any(|p| self.keys.remote(p).is_some())
    }
}

pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

pub const IDLE_TICK: Duration = Duration::from_secs(1);
/// While requests wait for keys fetched by another worker, check shared data this often.
pub const WAITING_TICK: Duration = Duration::from_millis(10);
