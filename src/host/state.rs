//! What one Wasm VM (one Envoy worker) holds: the flow of its streams, and what deciding needs
//! (the configuration, the keys it has seen, the verified-token cache, buckets and metrics).

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;

use super::buckets::HostBuckets;
use super::crypto::HostVerifier;
use super::jwks;
use super::metrics::{rule_metric, Counter, Metrics};
use crate::accesslog::Verdict;
use crate::auth::cache::TokenCache;
use crate::auth::remote::{FetchReason, KeyStore};
use crate::auth::AuthEnv;
use crate::config::Config;
use crate::flow::{FetchEnd, Flow, Lease, Vm};
use crate::names::Names;
use crate::pipeline::{self, decide, Decision, PendingGlobal, Settled};
use crate::ratelimit::{self, GlobalAnswer, PolicyOutcome};
use crate::request::Request;

pub struct VmState {
    pub flow: Flow,
    pub vm: HostVm,
}

/// The VM's side of the flow (`crate::flow::Vm`), on proxy-wasm shared data and metrics.
pub struct HostVm {
    pub config: Rc<Config>,
    /// The configuration's names, shared by decisions and verdicts.
    pub names: Names,
    pub keys: KeyStore,
    pub cache: TokenCache,
    pub verifier: HostVerifier,
    pub buckets: HostBuckets,
    /// Counters and histograms.
    pub metrics: Metrics,
}

impl VmState {
    /// The state of a freshly configured VM whose root context sets its tick to
    /// `flow::IDLE_TICK` now.
    pub fn new(
        config: Config,
        verifier: HostVerifier,
        buckets: HostBuckets,
        now_ms: u64,
    ) -> VmState {
        VmState {
            flow: Flow::new(now_ms),
            vm: HostVm {
                keys: KeyStore::new(&config),
                names: Names::of(&config),
                config: Rc::new(config),
                cache: TokenCache::default(),
                verifier,
                buckets,
                metrics: Metrics::default(),
            },
        }
    }
}

impl Vm for HostVm {
    fn decide(&mut self, request: &Request, now_ms: u64) -> Decision {
        let env = AuthEnv {
            config: &self.config,
            names: &self.names,
            keys: &self.keys,
            verifier: &self.verifier,
            now_ms,
        };
        let (hits, misses) = (self.cache.hits, self.cache.misses);
        let decision = decide(&env, &mut self.cache, &mut self.buckets, request);
        self.metrics
            .count(Counter::TokenCacheHits, self.cache.hits - hits);
        self.metrics
            .count(Counter::TokenCacheMisses, self.cache.misses - misses);
        decision
    }

    fn decide_with_answers(&mut self, pending: PendingGlobal, answers: &[GlobalAnswer]) -> Settled {
        pipeline::after_global(&self.config, pending, answers, &mut self.buckets)
    }

    fn record(&mut self, settled: &Settled) -> Verdict {
        let verdict = pipeline::verdict(&self.names, settled);
        let shadow_limited = verdict
            .rate_limits
            .iter()
            .any(|l| l.decision == "shadow_limited");
        let counted = if shadow_limited && verdict.decision == "allowed" {
            "shadow_limited"
        } else {
            verdict.decision
        };
        let rule = match settled {
            Settled::Allow(allowed) | Settled::Delay { allowed, .. } => allowed.rule,
            Settled::Deny { rule, .. } => *rule,
        };
        let named = rule.zip(verdict.rule.as_deref());
        self.metrics.count_request(named, counted);
        if let Some(authz) = &verdict.authz {
            if let ("denied", Some(rule)) = (authz.decision, &authz.rule) {
                self.metrics
                    .increment(&rule_metric("meshguard_authz_denied_total", rule));
            }
            for rule in &authz.dry_run_denied {
                self.metrics
                    .increment(&rule_metric("meshguard_authz_dry_run_denied_total", rule));
            }
            for rule in &authz.audit {
                self.metrics
                    .increment(&rule_metric("meshguard_authz_audited_total", rule));
            }
        }
        if let Settled::Delay { wait_ms, .. } = settled {
            self.metrics.record("meshguard_delay_wait_ms", *wait_ms);
        }
        verdict
    }

    fn release(&mut self, reservations: &[PolicyOutcome]) {
        ratelimit::release(&self.config, reservations, &mut self.buckets);
    }

    fn adopt_shared_keys(&mut self, provider: usize) -> bool {
        jwks::sync_from_shared(self, provider)
    }

    fn take_fetch_lease(
        &mut self,
        provider: usize,
        reason: FetchReason,
        now_ms: u64,
    ) -> Option<Lease> {
        jwks::take_lease(self, provider, reason, now_ms)
    }

    fn give_back_fetch_lease(&mut self, provider: usize, lease: Lease, end: FetchEnd, now_ms: u64) {
        jwks::give_back_lease(self, provider, lease, end, now_ms);
    }

    fn shared_fetch_under_way(&self, provider: usize, now_ms: u64) -> bool {
        self.keys
            .remote(provider)
            .is_some_and(|view| view.lease.busy(now_ms))
    }

    fn fetch_timeout_ms(&self, provider: usize) -> u64 {
        jwks::timeout_ms(self, provider)
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
