//! A stand-in VM for the flow's tests: each request's decision follows a plan, keys and fetch
//! leases are plain data, and what workers share (leases, fetched keys, reserved tokens) sits
//! in one `Shared` that several fakes (several workers) hold, as Envoy's shared data is.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use hashbrown::HashMap;

use super::{FetchEnd, Lease, Vm};
use crate::accesslog::Verdict;
use crate::auth::error::AuthError;
use crate::auth::remote::{FetchLease, FetchReason, RemoteKeys};
use crate::pipeline::{Allowed, Decision, PendingGlobal, Settled};
use crate::ratelimit::bucket::Take;
use crate::ratelimit::slots::PaidBy;
use crate::ratelimit::{self, GlobalAnswer, GlobalCheck, PolicyOutcome};
use crate::reply;
use crate::request::Request;

pub const FETCH_TIMEOUT_MS: u64 = 1_000;
pub const RLS_TIMEOUT_MS: u64 = 100;

/// What a request's decision will be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Allow,
    Deny,
    /// Held `wait_ms` on a reserved token.
    Delay {
        wait_ms: u64,
    },
    /// Asks the rate-limit service `checks` questions, holding a reserved token meanwhile if
    /// `reserve_ms` (and delayed that long after the answers); refused if one says over limit.
    Rls {
        checks: usize,
        reserve_ms: Option<u64>,
    },
    /// Needs keys of the provider at least as new as `version` (older keys lack the token's
    /// kid), then goes on as `then`.
    Keys {
        provider: usize,
        version: u64,
        then: Box<Plan>,
    },
}

/// Where a reserved token went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    Held,
    /// Its request was forwarded on it.
    Used,
    /// Its request went away first.
    Released,
    /// Its request was refused after all.
    Refunded,
}

#[derive(Debug)]
pub struct Shared {
    pub leases: Vec<FetchLease>,
    /// The version of the keys a fetch stored for each provider.
    pub records: Vec<Option<u64>>,
    /// What the identity provider serves now.
    pub idp_version: u64,
    /// Reserved tokens by key (`w<worker>/<stream>`).
    pub reservations: HashMap<String, Reservation>,
}

impl Shared {
    pub fn new(providers: usize) -> Rc<RefCell<Shared>> {
        Rc::new(RefCell::new(Shared {
            leases: vec![FetchLease::default(); providers],
            records: vec![None; providers],
            idp_version: 1,
            reservations: HashMap::new(),
        }))
    }
}

pub struct FakeVm {
    pub worker: usize,
    pub shared: Rc<RefCell<Shared>>,
    /// Each provider's lease as this worker last saw it.
    pub views: Vec<FetchLease>,
    /// The version of each provider's keys this worker holds.
    pub keys: Vec<Option<u64>>,
    plans: HashMap<String, Plan>,
    /// Every lease given back: provider, how the fetch ended.
    pub given_back: Vec<(usize, FetchEnd)>,
    /// How many decisions were settled (and recorded).
    pub recorded: usize,
}

impl FakeVm {
    pub fn new(worker: usize, shared: Rc<RefCell<Shared>>) -> FakeVm {
        let providers = shared.borrow().leases.len();
        FakeVm {
            worker,
            shared,
            views: vec![FetchLease::default(); providers],
            keys: vec![None; providers],
            plans: HashMap::new(),
            given_back: Vec::new(),
            recorded: 0,
        }
    }

    /// A request for stream `stream` that will be decided as `plan`.
    pub fn request(&mut self, stream: u32, plan: Plan) -> Request<'static> {
        let path = format!("/{stream}");
        self.plans.insert(path.clone(), plan);
        Request::get(&path, &[])
    }

    pub fn reservation_key(&self, stream: u32) -> String {
        format!("w{}/{stream}", self.worker)
    }

    /// The keys a fetch brought: shared with every worker, and held by this one.
    pub fn fetched(&mut self, provider: usize) {
        let mut shared = self.shared.borrow_mut();
        let version = shared.idp_version;
        if let Some(record) = shared.records.get_mut(provider) {
            *record = Some(version);
        }
        drop(shared);
        self.keys[provider] = Some(version);
    }

    fn reserve(&mut self, stream: &str, wait_ms: u64) -> PolicyOutcome {
        let key = format!("w{}{stream}", self.worker);
        let previous = self
            .shared
            .borrow_mut()
            .reservations
            .insert(key.clone(), Reservation::Held);
        assert_eq!(previous, None, "{key} decided twice");
        PolicyOutcome {
            policy: 0,
            key,
            take: Take::Delayed {
                wait_ms,
                reset_ms: 0,
            },
            paid_by: Some(PaidBy::KeyBucket),
            shadow: false,
            quota: None,
        }
    }

    fn decide_plan(&mut self, path: &str, plan: &Plan, now_ms: u64) -> Decision {
        let allowed = Allowed {
            rule: None,
            mutations: Default::default(),
            identities: Default::default(),
            limits: Default::default(),
            authz: None,
        };
        match plan {
            Plan::Allow => Decision::Allow(allowed),
            Plan::Deny => Decision::Deny {
                rule: None,
                reply: reply::no_rule_matches(),
                limits: Default::default(),
            },
            Plan::Delay { wait_ms } => {
                let reserved = self.reserve(path, *wait_ms);
                Decision::Delay {
                    wait_ms: *wait_ms,
                    allowed: Allowed {
                        limits: smallvec::smallvec![reserved],
                        ..allowed
                    },
                }
            }
            Plan::Rls { checks, reserve_ms } => {
                let local = match reserve_ms {
                    Some(wait_ms) => ratelimit::Verdict::Delayed {
                        wait_ms: *wait_ms,
                        outcomes: smallvec::smallvec![self.reserve(path, *wait_ms)],
                    },
                    None => ratelimit::Verdict::Allowed(Default::default()),
                };
                let checks = (0..*checks)
                    .map(|policy| GlobalCheck {
                        policy,
                        cluster: "rls".into(),
                        timeout: Duration::from_millis(RLS_TIMEOUT_MS),
                        message: Vec::new(),
                        key: String::new(),
                    })
                    .collect();
                Decision::CheckGlobal(Box::new(PendingGlobal {
                    checks,
                    local,
                    allowed,
                }))
            }
            Plan::Keys {
                provider,
                version,
                then,
            } => {
                let view = RemoteKeys {
                    lease: self.views[*provider],
                    ..RemoteKeys::default()
                };
                match self.keys[*provider] {
                    Some(held) if held >= *version => self.decide_plan(path, then, now_ms),
                    None if now_ms < view.lease.backoff_until_ms() => Decision::Deny {
                        rule: None,
                        reply: reply::token_refused(AuthError::KeysUnavailable {
                            retry_after_s: 1,
                        }),
                        limits: Default::default(),
                    },
                    None => Decision::AwaitKeys(vec![(*provider, FetchReason::FirstKeys)]),
                    Some(_)
                        if view.lease.busy(now_ms) || view.may_refetch_for_unknown_kid(now_ms) =>
                    {
                        Decision::AwaitKeys(vec![(*provider, FetchReason::UnknownKid)])
                    }
                    Some(_) => Decision::Deny {
                        rule: None,
                        reply: reply::token_refused(AuthError::UnknownKid),
                        limits: Default::default(),
                    },
                }
            }
        }
    }

    fn settle_reservations(&self, outcomes: &[PolicyOutcome], to: Reservation) {
        let mut shared = self.shared.borrow_mut();
        for outcome in outcomes {
            let state = shared.reservations.get_mut(&outcome.key);
            assert_eq!(
                state.as_deref(),
                Some(&Reservation::Held),
                "{} {to:?} when not held",
                outcome.key
            );
            if let Some(state) = state {
                *state = to;
            }
        }
    }
}

impl Vm for FakeVm {
    fn decide(&mut self, request: &Request, now_ms: u64) -> Decision {
        let plan = self.plans.get(request.path.as_ref()).cloned();
        let plan = plan.unwrap_or_else(|| panic!("no plan for {}", request.path));
        self.decide_plan(&request.path, &plan, now_ms)
    }

    fn decide_with_answers(&mut self, pending: PendingGlobal, answers: &[GlobalAnswer]) -> Settled {
        assert_eq!(answers.len(), pending.checks.len());
        let refused = answers
            .iter()
            .any(|answer| matches!(answer, GlobalAnswer::Answered(a) if a.over_limit));
        let reserved = pending.reservations().to_vec();
        if refused {
            self.settle_reservations(&reserved, Reservation::Refunded);
            return Settled::Deny {
                rule: None,
                reply: reply::rate_limit_service_unavailable("global"),
                limits: Default::default(),
            };
        }
        match pending.local {
            ratelimit::Verdict::Delayed { wait_ms, outcomes } => Settled::Delay {
                wait_ms,
                allowed: Allowed {
                    limits: outcomes,
                    ..pending.allowed
                },
            },
            _ => Settled::Allow(pending.allowed),
        }
    }

    fn record(&mut self, settled: &Settled) -> Verdict {
        self.recorded += 1;
        Verdict {
            decision: match settled {
                Settled::Allow(_) | Settled::Delay { .. } => "allowed",
                Settled::Deny { .. } => "denied",
            },
            ..Verdict::default()
        }
    }

    fn release(&mut self, reservations: &[PolicyOutcome]) {
        self.settle_reservations(reservations, Reservation::Released);
    }

    fn adopt_shared_keys(&mut self, provider: usize) -> bool {
        let shared = self.shared.borrow();
        let lease = shared.leases[provider];
        let mut changed = self.views[provider] != lease;
        self.views[provider] = lease;
        if let Some(stored) = shared.records[provider] {
            if self.keys[provider].is_none_or(|held| stored > held) {
                self.keys[provider] = Some(stored);
                changed = true;
            }
        }
        changed
    }

    fn take_fetch_lease(
        &mut self,
        provider: usize,
        reason: FetchReason,
        now_ms: u64,
    ) -> Option<Lease> {
        let mut shared = self.shared.borrow_mut();
        let lease = shared.leases[provider];
        self.views[provider] = lease;
        let taken = lease.try_start(now_ms, FETCH_TIMEOUT_MS, reason)?;
        shared.leases[provider] = taken;
        self.views[provider] = taken;
        Some(Lease {
            started_ms: now_ms,
            until_ms: taken.busy_until_ms,
        })
    }

    fn give_back_fetch_lease(&mut self, provider: usize, lease: Lease, end: FetchEnd, now_ms: u64) {
        self.given_back.push((provider, end));
        let mut shared = self.shared.borrow_mut();
        let current = shared.leases[provider];
        if current.last_started_ms == lease.started_ms {
            shared.leases[provider] = current.finished(end == FetchEnd::Fetched, now_ms);
        }
        self.views[provider] = shared.leases[provider];
    }

    fn shared_fetch_under_way(&self, provider: usize, now_ms: u64) -> bool {
        self.views[provider].busy(now_ms)
    }

    fn fetch_timeout_ms(&self, _provider: usize) -> u64 {
        FETCH_TIMEOUT_MS
    }
}
