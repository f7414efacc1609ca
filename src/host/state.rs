//! What one Wasm VM (one Envoy worker) holds: the configuration, the keys it has seen, the
//! verified-token cache, requests paused for keys, and key fetches in flight.

use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use hashbrown::HashMap;
use proxy_wasm::hostcalls;

use super::buckets::HostBuckets;
use super::crypto::HostVerifier;
use super::metrics::Metrics;
use crate::auth::cache::TokenCache;
use crate::auth::remote::KeyStore;
use crate::auth::AuthEnv;
use crate::config::Config;
use crate::pipeline::{decide, Decision, Mutations, PendingGlobal};
use crate::ratelimit::{GlobalAnswer, PolicyOutcome};
use crate::request::Request;

/// A request paused until its provider's keys arrive (or its deadline passes).
pub struct Waiter {
    pub context_id: u32,
    pub request: Request,
    pub deadline_ms: u64,
}

/// A request held by a delay-mode rate limit until its token is due.
pub struct Delayed {
    pub context_id: u32,
    pub due_ms: u64,
    pub mutations: Mutations,
    /// The reservations to give back if the request goes away first.
    pub limits: Vec<PolicyOutcome>,
}

/// A JWKS fetch this VM dispatched (from its root context, so no stream's end cancels it).
pub struct InFlightFetch {
    pub provider: usize,
    /// Envoy answers by the fetch's timeout; past this the VM counts it failed and may fetch
    /// again, whatever became of the answer.
    pub deadline_ms: u64,
}

/// A request waiting for the rate-limit service's answers.
pub struct GlobalWait {
    pub pending: PendingGlobal,
    /// One per check, in order; `None` until answered.
    pub answers: Vec<Option<GlobalAnswer>>,
}

pub struct VmState {
    pub config: Rc<Config>,
    pub keys: KeyStore,
    pub cache: TokenCache,
    pub verifier: HostVerifier,
    pub waiters: Vec<Waiter>,
    pub delayed: Vec<Delayed>,
    pub buckets: HostBuckets,
    /// Requests waiting for the rate-limit service, by context id.
    pub global: HashMap<u32, GlobalWait>,
    /// Counters and histograms.
    pub metrics: Metrics,
    /// What was decided for each stream, kept for its access-log record.
    pub verdicts: HashMap<u32, crate::accesslog::Verdict>,
    /// Headers to add to a stream's response, by context id.
    pub response_headers: HashMap<u32, Vec<(String, String)>>,
    /// gRPC call token -> (context id, index of the check).
    pub global_calls: HashMap<u32, (u32, usize)>,
    /// HTTP call token -> the JWKS fetch this VM dispatched.
    pub fetches: HashMap<u32, InFlightFetch>,
    /// Providers whose fetch lease this VM took, to be dispatched by the root context's next
    /// tick: a call dispatched from a stream's context is answered to that stream, and dropped
    /// by the SDK (and cancelled by Envoy) once the stream is gone.
    pub queued_fetches: Vec<(usize, crate::auth::remote::FetchReason)>,
}

impl VmState {
    pub fn new(config: Config, verifier: HostVerifier, buckets: HostBuckets) -> VmState {
        VmState {
            keys: KeyStore::new(&config),
            config: Rc::new(config),
            cache: TokenCache::default(),
            verifier,
            waiters: Vec::new(),
            delayed: Vec::new(),
            buckets,
            global: HashMap::new(),
            global_calls: HashMap::new(),
            response_headers: HashMap::new(),
            metrics: Metrics::default(),
            verdicts: HashMap::new(),
            fetches: HashMap::new(),
            queued_fetches: Vec::new(),
        }
    }

    pub fn decide(&mut self, request: &Request, now_ms: u64) -> Decision {
        let env = AuthEnv {
            config: &self.config,
            keys: &self.keys,
            verifier: &self.verifier,
            now_ms,
        };
        let (hits, misses) = (self.cache.hits, self.cache.misses);
        let decision = decide(&env, &mut self.cache, &mut self.buckets, request);
        self.metrics
            .add("meshguard_token_cache_hits_total", self.cache.hits - hits);
        self.metrics.add(
            "meshguard_token_cache_misses_total",
            self.cache.misses - misses,
        );
        decision
    }

    /// How often the root context should tick: soon enough for the next delayed request, fast
    /// while requests wait for keys, else once a second (key refreshes, metric flushes).
    pub fn tick_period(&self, now_ms: u64) -> Duration {
        let mut period = IDLE_TICK;
        if !self.waiters.is_empty() {
            period = WAITING_TICK;
        }
        if !self.queued_fetches.is_empty() {
            period = DISPATCH_TICK;
        }
        if let Some(due) = self.delayed.iter().map(|d| d.due_ms).min() {
            let until = Duration::from_millis(due.saturating_sub(now_ms).max(1));
            period = period.min(until);
        }
        period
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
/// A fetch queued by a stream is dispatched by the root context this soon.
pub const DISPATCH_TICK: Duration = Duration::from_millis(1);
