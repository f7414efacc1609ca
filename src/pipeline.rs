//! The request pipeline as one pure function: match rule -> auth -> (rate limit, later) ->
//! a decision the host adapter carries out.

use std::rc::Rc;

use smallvec::SmallVec;

use crate::accesslog;
use crate::auth::cache::{TokenCache, VerifiedToken};
use crate::auth::extract::{cookie_header_without, path_without_params, Location};
use crate::auth::remote::FetchReason;
use crate::auth::{authenticate, evaluate, AuthEnv, ProviderOutcome, Verdict};
use crate::authz::{self, AllowSide, Facts, Judgement};
use crate::config::{Access, Config, Rule, Unmatched};
use crate::names::Names;
use crate::ratelimit::bucket::Take;
use crate::ratelimit::key::KeyFacts;
use crate::ratelimit::{self, BucketStore, GlobalAnswer, GlobalCheck, Outcomes, PolicyOutcome};
use crate::reply::{self, LocalReply};
use crate::request::{Request, WrittenSent};
use crate::rules::{self, match_rule};

/// Header changes for the upstream request (removals first, then sets and adds), and headers for
/// the response on its way back. Names and token values are shared (`Names`, the cached token), and
/// the few changes of a request are kept inline: deciding copies no string for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mutations {
    pub remove: SmallVec<[Rc<str>; 4]>,
    /// Each replaces every value the client sent under its name.
    pub set: SmallVec<[(Rc<str>, Rc<str>); 2]>,
    /// Headers meshguard writes that the client is known not to have sent (`WrittenSent`).
    pub add: SmallVec<[(Rc<str>, Rc<str>); 2]>,
    /// A new `:path` (a token parameter removed).
    pub path: Option<String>,
    /// Added to the response (rate-limit headers of policies with `enable_ratelimit_headers`).
    pub response_headers: Vec<(String, String)>,
}

/// The verified tokens of a request, first provider first; one or two, kept inline.
pub type Identities = SmallVec<[Rc<VerifiedToken>; 2]>;

#[derive(Debug, Clone, PartialEq)]
pub struct Allowed {
    pub rule: Option<usize>,
    pub mutations: Mutations,
    pub identities: Identities,
    /// What each rate-limit policy of the rule decided.
    pub limits: Outcomes,
    /// What authorization recorded (dry-run refusals, audit marks), if anything.
    pub authz: Option<accesslog::AuthzRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow(Allowed),
    Deny {
        rule: Option<usize>,
        reply: LocalReply,
        /// What each rate-limit policy decided (for the log), when one refused.
        limits: Outcomes,
    },
    /// Ask the rate-limit service (`checks`), then decide with `after_global`. Boxed: it is
    /// the rare and largest decision, and the others are moved on every request.
    CheckGlobal(Box<PendingGlobal>),
    /// Hold the request `wait_ms` (delay mode), then forward it as `Allowed`.
    Delay {
        wait_ms: u64,
        allowed: Allowed,
    },
    /// Pause the request until these providers' keys are fetched, then decide again.
    AwaitKeys(Vec<(usize, FetchReason)>),
}

/// A decision that waits for nothing more: all that `after_global` can come to.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    Allow(Allowed),
    Deny {
        rule: Option<usize>,
        reply: LocalReply,
        limits: Outcomes,
    },
    Delay {
        wait_ms: u64,
        allowed: Allowed,
    },
}

/// What a decision leads to: settled, or waiting for the rate-limit service or for keys.
// The large variant is the common one: boxing it would allocate on every request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Settled(Settled),
    CheckGlobal(Box<PendingGlobal>),
    AwaitKeys(Vec<(usize, FetchReason)>),
}

impl From<Decision> for Next {
    fn from(decision: Decision) -> Next {
        match decision {
            Decision::Allow(allowed) => Next::Settled(Settled::Allow(allowed)),
            Decision::Deny {
                rule,
                reply,
                limits,
            } => Next::Settled(Settled::Deny {
                rule,
                reply,
                limits,
            }),
            Decision::Delay { wait_ms, allowed } => {
                Next::Settled(Settled::Delay { wait_ms, allowed })
            }
            Decision::CheckGlobal(pending) => Next::CheckGlobal(pending),
            Decision::AwaitKeys(needs) => Next::AwaitKeys(needs),
        }
    }
}

impl From<Settled> for Decision {
    fn from(settled: Settled) -> Decision {
        match settled {
            Settled::Allow(allowed) => Decision::Allow(allowed),
            Settled::Deny {
                rule,
                reply,
                limits,
            } => Decision::Deny {
                rule,
                reply,
                limits,
            },
            Settled::Delay { wait_ms, allowed } => Decision::Delay { wait_ms, allowed },
        }
    }
}

pub fn decide(
    env: &AuthEnv,
    cache: &mut TokenCache,
    buckets: &mut dyn BucketStore,
    request: &Request,
) -> Decision {
    let config = env.config;
    let names = env.names;
    let mut mutations = Mutations::default();
    // Anti-spoofing: whatever a client sent under a header meshguard writes is dropped on
    // every request, whether or not this request ends up setting it.
    mutations.remove.extend(
        names
            .written()
            .iter()
            .filter(|name| request.written_sent.may_have(name))
            .cloned(),
    );
    mutations.remove.extend(
        request
            .underscore_twins
            .iter()
            .map(|twin| names.header(twin)),
    );
    let preflight = config.authz.bypass_cors_preflight && is_cors_preflight(request);
    let Some((rule_index, rule)) = match_rule(&config.rules, request) else {
        return match config.unmatched {
            Unmatched::Deny => Decision::Deny {
                rule: None,
                reply: reply::no_rule_matches(),
                limits: Outcomes::new(),
            },
            Unmatched::Allow => {
                let allowed = Allowed {
                    rule: None,
                    mutations,
                    identities: Identities::new(),
                    limits: Outcomes::new(),
                    authz: None,
                };
                match authorize(config, None, allowed, request) {
                    Ok(allowed) => Decision::Allow(allowed),
                    Err(denied) => *denied,
                }
            }
        };
    };
    let requirement = match &rule.access {
        Access::Requires(requirement) if !preflight => requirement,
        // A CORS preflight carries no credentials (Fetch standard): as Envoy's jwt_authn
        // `bypass_cors_preflight`, it is not authenticated, and its rule's own conditions, which
        // would need a token, are not asked; deny rules still judge it.
        access => {
            let own = matches!(access, Access::AllowUnauthenticated).then_some(rule);
            let allowed = Allowed {
                rule: Some(rule_index),
                mutations,
                identities: Identities::new(),
                limits: Outcomes::new(),
                authz: None,
            };
            return match authorize(config, own, allowed, request) {
                Ok(allowed) => limit(config, rule, allowed, request, buckets, env.now_ms),
                Err(denied) => *denied,
            };
        }
    };

    let mut outcomes: SmallVec<[Option<ProviderOutcome>; 4]> =
        smallvec::smallvec![None; config.providers.len()];
    let verdict = evaluate(
        requirement,
        &mut |provider| match outcomes.get_mut(provider) {
            Some(slot) => slot
                .get_or_insert_with(|| authenticate(env, cache, provider, request))
                .clone(),
            None => ProviderOutcome::Missing,
        },
    );
    match verdict {
        Verdict::Satisfied(providers) => {
            let mut identities = Identities::new();
            // Empty (so not allocated) unless a provider that strips its token found it there.
            let mut params_to_strip: Vec<&str> = Vec::new();
            let mut cookies_to_strip: Vec<&str> = Vec::new();
            for index in providers {
                let (Some(Some(ProviderOutcome::Verified { token, locations })), Some(provider)) =
                    (outcomes.get(index), config.providers.get(index))
                else {
                    continue;
                };
                if !provider.forward {
                    let found = &provider.locations;
                    for location in locations {
                        match *location {
                            Location::Header(at) => {
                                if let Some(header) = found.headers.get(at) {
                                    push_unique_name(&mut mutations.remove, names, &header.name);
                                }
                            }
                            Location::Param(at) => {
                                if let Some(param) = found.params.get(at) {
                                    push_unique(&mut params_to_strip, param);
                                }
                            }
                            Location::Cookie(at) => {
                                if let Some(cookie) = found.cookies.get(at) {
                                    push_unique(&mut cookies_to_strip, cookie);
                                }
                            }
                        }
                    }
                }
                mutations.set.extend(token.upstream_headers.iter().cloned());
                identities.push(token.clone());
            }
            if !params_to_strip.is_empty() {
                mutations.path = Some(path_without_params(&request.path, &params_to_strip));
            }
            if !cookies_to_strip.is_empty() {
                let cookies: Vec<&str> = request.header_values("cookie").collect();
                match cookie_header_without(&cookies, &cookies_to_strip) {
                    Some(rest) => mutations.set.push((names.header("cookie"), Rc::from(rest))),
                    None => push_unique_name(&mut mutations.remove, names, "cookie"),
                }
            }
            settle_sets(&mut mutations, names, &request.written_sent);
            let allowed = Allowed {
                rule: Some(rule_index),
                mutations,
                identities,
                limits: Outcomes::new(),
                authz: None,
            };
            match authorize(config, Some(rule), allowed, request) {
                Ok(allowed) => limit(config, rule, allowed, request, buckets, env.now_ms),
                Err(denied) => *denied,
            }
        }
        Verdict::Missing => Decision::Deny {
            rule: Some(rule_index),
            reply: reply::token_missing(&rule.name),
            limits: Outcomes::new(),
        },
        Verdict::Failed(error) => Decision::Deny {
            rule: Some(rule_index),
            reply: reply::token_refused(error),
            limits: Outcomes::new(),
        },
        Verdict::AwaitingKeys => Decision::AwaitKeys(
            outcomes
                .iter()
                .enumerate()
                .filter_map(|(index, outcome)| match outcome {
                    Some(ProviderOutcome::AwaitingKeys(reason)) => Some((index, *reason)),
                    _ => None,
                })
                .collect(),
        ),
    }
}

/// `OPTIONS` with `Origin` and `Access-Control-Request-Method`, as Envoy's jwt_authn tells a
/// CORS preflight.
fn is_cors_preflight(request: &Request) -> bool {
    let present = |name: &str| request.header_values(name).any(|v| !v.is_empty());
    request.method == "OPTIONS" && present("origin") && present("access-control-request-method")
}

/// The authorization step, after authentication: deny rules, audit rules, then the request's
/// own rule's `when` (`rule` is None when it is not to be asked). The tokens it reads are the
/// ones authentication verified (`allowed.identities`).
fn authorize(
    config: &Config,
    rule: Option<&Rule>,
    mut allowed: Allowed,
    request: &Request,
) -> Result<Allowed, Box<Decision>> {
    let authz = &config.authz;
    let asks_rule = rule.is_some_and(|r| !r.when.is_empty());
    if authz.deny.is_empty() && authz.audit.is_empty() && !asks_rule {
        return Ok(allowed);
    }
    let facts = Facts {
        request,
        tokens: &allowed.identities,
        providers: &config.providers,
    };
    let own = rule.filter(|_| asks_rule).map(|r| AllowSide {
        rule: &r.name,
        when: &r.when,
        dry_run: r.dry_run,
    });
    let judgement = authz::judge(authz, own, &facts, &|matcher| {
        rules::matches(matcher, request)
    });
    let record = authz_record(&judgement, &allowed, request);
    let refusal = match (judgement.denied_by, &judgement.unmet, rule) {
        (Some(deny_rule), _, _) => Some(reply::denied_by_rule(deny_rule)),
        (None, Some(unmet), Some(rule)) => Some(
            // No token was sent (a bad one was refused by authentication) and one could have
            // met the condition: ask for it, as the rule's own `requires` would (RBAC says 403).
            if allowed.identities.is_empty() && unmet.condition.is_none_or(|c| c.reads_token) {
                reply::token_missing(&rule.name)
            } else if let Some(scopes) = unmet.scopes {
                reply::insufficient_scope(&rule.name, scopes)
            } else {
                reply::conditions_unmet(&rule.name)
            },
        ),
        _ => None,
    };
    match refusal {
        Some(mut reply) => {
            reply.authz = record;
            Err(Box::new(Decision::Deny {
                rule: allowed.rule,
                reply,
                limits: Outcomes::new(),
            }))
        }
        None => {
            allowed.authz = record;
            Ok(allowed)
        }
    }
}

/// The record of a judgement, or None when authorization let the request through quietly.
fn authz_record(
    judgement: &Judgement,
    allowed: &Allowed,
    request: &Request,
) -> Option<accesslog::AuthzRecord> {
    let first_dry_run = judgement.dry_run_denials.first();
    let (decision, rule, condition) = if let Some(rule) = judgement.denied_by {
        ("denied", Some(rule), None)
    } else if let Some(unmet) = &judgement.unmet {
        ("denied", Some(unmet.rule), unmet.condition)
    } else if let Some(denial) = first_dry_run {
        ("dry_run_denied", Some(denial.rule), denial.condition)
    } else if !judgement.audited.is_empty() {
        ("audited", None, None)
    } else {
        return None;
    };
    let principal = allowed
        .identities
        .iter()
        .find_map(|token| {
            (token.principal.clone()).or_else(|| token.subject.as_deref().map(str::to_owned))
        })
        .or_else(|| request.peer.as_ref().map(|peer| peer.principal.clone()));
    Some(accesslog::AuthzRecord {
        decision,
        rule: rule.map(str::to_owned),
        condition: condition.map(|c| c.label.clone()),
        principal,
        dry_run_denied: judgement
            .dry_run_denials
            .iter()
            .map(|d| d.rule.to_owned())
            .collect(),
        audit: judgement.audited.iter().map(|r| (*r).to_owned()).collect(),
    })
}

/// The rate-limit step: the rule's policies, keyed by what the request and its tokens carry.
/// Local buckets decide at once; `service` policies need the rate-limit service's answer.
fn limit(
    config: &Config,
    rule: &Rule,
    allowed: Allowed,
    request: &Request,
    buckets: &mut dyn BucketStore,
    now_ms: u64,
) -> Decision {
    if rule.rate_limits.is_empty() {
        return Decision::Allow(allowed);
    }
    let (local, checks) = {
        let facts = KeyFacts {
            request,
            rule: &rule.name,
            claims: allowed
                .identities
                .iter()
                .map(|token| &token.claims)
                .collect(),
        };
        let local = ratelimit::apply(config, &rule.rate_limits, &facts, buckets, now_ms);
        let checks = match local {
            ratelimit::Verdict::Allowed(_) | ratelimit::Verdict::Delayed { .. } => {
                ratelimit::global_checks(config, &rule.rate_limits, &facts)
            }
            _ => Vec::new(),
        };
        (local, checks)
    };
    if checks.is_empty() {
        return finish(config, allowed, local).into();
    }
    Decision::CheckGlobal(Box::new(PendingGlobal {
        checks,
        local,
        allowed,
    }))
}

/// A request waiting for the rate-limit service.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingGlobal {
    pub checks: Vec<GlobalCheck>,
    /// What the local policies decided (their tokens are taken or reserved).
    pub local: ratelimit::Verdict,
    pub allowed: Allowed,
}

impl PendingGlobal {
    /// Tokens reserved by delay-mode policies, to give back if the request goes away.
    pub fn reservations(&self) -> &[PolicyOutcome] {
        match &self.local {
            ratelimit::Verdict::Delayed { outcomes, .. } => outcomes,
            _ => &[],
        }
    }
}

/// The decision once the rate-limit service answered every check (in the order of `checks`).
pub fn after_global(
    config: &Config,
    pending: PendingGlobal,
    answers: &[GlobalAnswer],
    buckets: &mut dyn BucketStore,
) -> Settled {
    let pairs: Vec<(GlobalCheck, GlobalAnswer)> = pending
        .checks
        .into_iter()
        .zip(
            answers
                .iter()
                .copied()
                .chain(std::iter::repeat(GlobalAnswer::Failed)),
        )
        .collect();
    let verdict = ratelimit::combine(config, pending.local, &pairs, buckets);
    finish(config, pending.allowed, verdict)
}

fn with_limits(config: &Config, mut allowed: Allowed, outcomes: Outcomes) -> Allowed {
    let advertised: Vec<PolicyOutcome> = outcomes
        .iter()
        .filter(|o| {
            config
                .rate_limits
                .get(o.policy)
                .is_some_and(|p| p.headers_on_allowed)
        })
        .cloned()
        .collect();
    if !advertised.is_empty() {
        allowed.mutations.response_headers =
            ratelimit::headers::rate_limit_headers(config, &advertised, None);
    }
    allowed.limits = outcomes;
    allowed
}

fn finish(config: &Config, allowed: Allowed, verdict: ratelimit::Verdict) -> Settled {
    match verdict {
        ratelimit::Verdict::Allowed(outcomes) => {
            Settled::Allow(with_limits(config, allowed, outcomes))
        }
        ratelimit::Verdict::Delayed { wait_ms, outcomes } => Settled::Delay {
            wait_ms,
            allowed: with_limits(config, allowed, outcomes),
        },
        ratelimit::Verdict::Refused {
            outcomes,
            refused_by,
        } => Settled::Deny {
            rule: allowed.rule,
            reply: reply::LocalReply {
                authz: allowed.authz,
                ..reply::rate_limited(config, &outcomes, refused_by)
            },
            limits: outcomes,
        },
        ratelimit::Verdict::ServiceUnavailable { policy } => Settled::Deny {
            rule: allowed.rule,
            reply: reply::rate_limit_service_unavailable(
                config
                    .rate_limits
                    .get(policy)
                    .map_or("", |p| p.name.as_str()),
            ),
            limits: Outcomes::new(),
        },
    }
}

fn push_unique<'n>(list: &mut Vec<&'n str>, item: &'n str) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Setting a header replaces every value the client sent, so one that is set needs no removal
/// first (another call into Envoy); the last value set under a name is the one that goes
/// upstream, as successive replaces would leave it. A header meshguard writes that the client is
/// known not to have sent is added instead of replaced.
fn settle_sets(mutations: &mut Mutations, names: &Names, sent: &WrittenSent) {
    let mut last_first: SmallVec<[(Rc<str>, Rc<str>); 2]> = SmallVec::new();
    for (name, value) in mutations.set.drain(..).rev() {
        if !last_first.iter().any(|(kept, _)| *kept == name) {
            last_first.push((name, value));
        }
    }
    mutations
        .remove
        .retain(|name| !last_first.iter().any(|(set, _)| set == name));
    for (name, value) in last_first.into_iter().rev() {
        if names.written().contains(&name) && !sent.may_have(&name) {
            mutations.add.push((name, value));
        } else {
            mutations.set.push((name, value));
        }
    }
}

fn push_unique_name(list: &mut SmallVec<[Rc<str>; 4]>, names: &Names, name: &str) {
    if !list.iter().any(|existing| &**existing == name) {
        list.push(names.header(name));
    }
}

fn limit_entries(names: &Names, limits: &[PolicyOutcome]) -> SmallVec<[accesslog::LimitEntry; 2]> {
    limits
        .iter()
        .map(|outcome| {
            let (decision, remaining) = match outcome.take {
                Take::Allowed { remaining, .. } => ("allowed", Some(remaining)),
                Take::Delayed { .. } => ("delayed", Some(0)),
                Take::Refused { .. } if outcome.shadow => ("shadow_limited", Some(0)),
                Take::Refused { .. } => ("limited", Some(0)),
            };
            accesslog::LimitEntry {
                policy: names.policy(outcome.policy).unwrap_or_else(|| Rc::from("")),
                decision,
                remaining,
            }
        })
        .collect()
}

/// What the log and Envoy's filter state say about a decision; `None` while it is pending.
/// Names are shared from `names`, never copied.
pub fn summarize(names: &Names, decision: &Decision) -> Option<accesslog::Verdict> {
    match decision {
        Decision::Allow(allowed) | Decision::Delay { allowed, .. } => {
            Some(allowed_verdict(names, allowed))
        }
        Decision::Deny {
            rule,
            reply,
            limits,
        } => Some(denied_verdict(names, *rule, reply, limits)),
        Decision::CheckGlobal(_) | Decision::AwaitKeys(_) => None,
    }
}

/// What the log and Envoy's filter state say about a settled decision.
pub fn verdict(names: &Names, settled: &Settled) -> accesslog::Verdict {
    match settled {
        Settled::Allow(allowed) | Settled::Delay { allowed, .. } => allowed_verdict(names, allowed),
        Settled::Deny {
            rule,
            reply,
            limits,
        } => denied_verdict(names, *rule, reply, limits),
    }
}

fn allowed_verdict(names: &Names, allowed: &Allowed) -> accesslog::Verdict {
    let first = allowed.identities.first();
    accesslog::Verdict {
        rule: allowed.rule.and_then(|r| names.rule(r)),
        provider: first.and_then(|token| names.provider(token.provider)),
        subject: first.and_then(|token| token.subject.clone()),
        decision: accesslog::Decision::Allowed.name(),
        reason: None,
        rate_limits: limit_entries(names, &allowed.limits),
        authz: allowed.authz.clone(),
    }
}

fn denied_verdict(
    names: &Names,
    rule: Option<usize>,
    reply: &LocalReply,
    limits: &[PolicyOutcome],
) -> accesslog::Verdict {
    accesslog::Verdict {
        rule: rule.and_then(|r| names.rule(r)),
        provider: None,
        subject: None,
        decision: accesslog::Decision::of_status(reply.status).name(),
        reason: Some(reply.reason.clone()),
        rate_limits: limit_entries(names, limits),
        authz: reply.authz.clone(),
    }
}
