//! Property tests: random interleavings of requests, fetch answers (keys, failure, lost),
//! rate-limit answers (answered, failed, lost), time passing (with the ticks the flow asked
//! for), extra ticks, hang-ups, key rotations and missing clusters, on two workers that share
//! fetch leases, keys and buckets. The world below plays Envoy and the adapter.

use std::cell::RefCell;
use std::rc::Rc;

use proptest::prelude::*;

use super::fake::{FakeVm, Plan, Reservation, Shared};
use super::*;
use crate::ratelimit::rls::RlsAnswer;

const WORKERS: usize = 2;
const PROVIDERS: usize = 2;
/// Longer than any deadline: keys (timeout + margins), the rate-limit service, delays, back-off.
const LONG_MS: u64 = 100_000;

#[derive(Debug, Clone)]
enum FetchAnswer {
    Keys,
    Failure,
    Lost,
}

#[derive(Debug, Clone)]
enum RlsReply {
    UnderLimit,
    OverLimit,
    Failed,
    Lost,
}

#[derive(Debug, Clone)]
enum Op {
    Request {
        worker: usize,
        plan: Plan,
        /// Needs a provider's keys first, the newest (a kid only a refetch brings) or any.
        keys: Option<(usize, bool)>,
    },
    AnswerFetch {
        pick: usize,
        answer: FetchAnswer,
    },
    AnswerRls {
        pick: usize,
        reply: RlsReply,
    },
    Leave {
        pick: usize,
    },
    Advance {
        ms: u64,
    },
    Tick {
        worker: usize,
        stale: bool,
    },
    RotateKeys,
    ToggleIdpCluster,
    ToggleRlsCluster,
}

fn plan() -> impl Strategy<Value = Plan> {
    prop_oneof![
        Just(Plan::Allow),
        Just(Plan::Deny),
        (1..500u64).prop_map(|wait_ms| Plan::Delay { wait_ms }),
        (1..3usize, proptest::option::of(1..300u64))
            .prop_map(|(checks, reserve_ms)| Plan::Rls { checks, reserve_ms }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..WORKERS, plan(), proptest::option::of((0..PROVIDERS, any::<bool>())))
            .prop_map(|(worker, plan, keys)| Op::Request { worker, plan, keys }),
        3 => (any::<usize>(), prop_oneof![Just(FetchAnswer::Keys), Just(FetchAnswer::Failure), Just(FetchAnswer::Lost)])
            .prop_map(|(pick, answer)| Op::AnswerFetch { pick, answer }),
        3 => (any::<usize>(), prop_oneof![Just(RlsReply::UnderLimit), Just(RlsReply::OverLimit), Just(RlsReply::Failed), Just(RlsReply::Lost)])
            .prop_map(|(pick, reply)| Op::AnswerRls { pick, reply }),
        2 => any::<usize>().prop_map(|pick| Op::Leave { pick }),
        4 => prop_oneof![0..20u64, 0..300u64, 0..3_000u64].prop_map(|ms| Op::Advance { ms }),
        1 => (0..WORKERS, any::<bool>()).prop_map(|(worker, stale)| Op::Tick { worker, stale }),
        1 => Just(Op::RotateKeys),
        1 => Just(Op::ToggleIdpCluster),
        1 => Just(Op::ToggleRlsCluster),
    ]
}

struct Worker {
    flow: Flow,
    vm: FakeVm,
    /// When Envoy will tick this worker's root context next.
    tick_at: u64,
    next_stream: u32,
}

struct StreamLog {
    worker: usize,
    id: u32,
    gone: bool,
    outcomes: usize,
}

struct World {
    now: u64,
    shared: Rc<RefCell<Shared>>,
    workers: Vec<Worker>,
    streams: Vec<StreamLog>,
    /// Fetches sent and not yet answered: worker, token.
    fetch_calls: Vec<(usize, u32)>,
    /// Rate-limit calls sent and not yet answered: worker, token.
    rls_calls: Vec<(usize, u32)>,
    next_token: u32,
    idp_cluster_missing: bool,
    rls_cluster_missing: bool,
}

const START_MS: u64 = 1_000_000;

impl World {
    fn new() -> World {
        let shared = Shared::new(PROVIDERS);
        let workers = (0..WORKERS)
            .map(|worker| Worker {
                flow: Flow::new(START_MS),
                vm: FakeVm::new(worker, shared.clone()),
                tick_at: START_MS + millis(IDLE_TICK),
                next_stream: 1,
            })
            .collect();
        World {
            now: START_MS,
            shared,
            workers,
            streams: Vec::new(),
            fetch_calls: Vec::new(),
            rls_calls: Vec::new(),
            next_token: 1,
            idp_cluster_missing: false,
            rls_cluster_missing: false,
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Request { worker, plan, keys } => {
                let plan = match keys {
                    Some((provider, newest)) => Plan::Keys {
                        provider,
                        version: if newest {
                            self.shared.borrow().idp_version
                        } else {
                            1
                        },
                        then: Box::new(plan),
                    },
                    None => plan,
                };
                let w = &mut self.workers[worker];
                let id = w.next_stream;
                w.next_stream += 1;
                self.streams.push(StreamLog {
                    worker,
                    id,
                    gone: false,
                    outcomes: 0,
                });
                let request = w.vm.request(id, plan);
                let effects = w.flow.request(&mut w.vm, StreamId(id), request, self.now);
                self.perform(worker, effects);
            }
            Op::AnswerFetch { pick, answer } => {
                if self.fetch_calls.is_empty() {
                    return;
                }
                let (worker, token) = self.fetch_calls.remove(pick % self.fetch_calls.len());
                let w = &mut self.workers[worker];
                // The adapter takes only answers to fetches the flow still waits for.
                let Some(provider) = w.flow.fetch_of(token) else {
                    return;
                };
                let end = match answer {
                    FetchAnswer::Keys => {
                        w.vm.fetched(provider);
                        FetchEnd::Fetched
                    }
                    FetchAnswer::Failure => FetchEnd::Failed,
                    FetchAnswer::Lost => return,
                };
                let effects = w.flow.fetch_ended(&mut w.vm, provider, end, self.now);
                self.perform(worker, effects);
            }
            Op::AnswerRls { pick, reply } => {
                if self.rls_calls.is_empty() {
                    return;
                }
                let (worker, token) = self.rls_calls.remove(pick % self.rls_calls.len());
                let answered = |over_limit| {
                    GlobalAnswer::Answered(RlsAnswer {
                        over_limit,
                        limit: None,
                        remaining: 0,
                        reset_s: 1,
                    })
                };
                let answer = match reply {
                    RlsReply::UnderLimit => answered(false),
                    RlsReply::OverLimit => answered(true),
                    RlsReply::Failed => GlobalAnswer::Failed,
                    RlsReply::Lost => return,
                };
                let w = &mut self.workers[worker];
                let effects = w.flow.rls_answered(&mut w.vm, token, answer, self.now);
                self.perform(worker, effects);
            }
            Op::Leave { pick } => {
                let live: Vec<usize> = (0..self.streams.len())
                    .filter(|i| !self.streams[*i].gone)
                    .collect();
                if let Some(&index) = live.get(pick % live.len().max(1)) {
                    self.leave(index);
                }
            }
            Op::Advance { ms } => self.advance_to(self.now + ms),
            Op::Tick { worker, stale } => {
                let stale: Vec<usize> = if stale {
                    (0..PROVIDERS).collect()
                } else {
                    vec![]
                };
                self.tick(worker, &stale);
            }
            Op::RotateKeys => self.shared.borrow_mut().idp_version += 1,
            Op::ToggleIdpCluster => self.idp_cluster_missing = !self.idp_cluster_missing,
            Op::ToggleRlsCluster => self.rls_cluster_missing = !self.rls_cluster_missing,
        }
    }

    fn leave(&mut self, index: usize) {
        let log = &mut self.streams[index];
        log.gone = true;
        let w = &mut self.workers[log.worker];
        w.flow.stream_gone(&mut w.vm, StreamId(log.id));
    }

    /// Time passes; Envoy ticks each worker when the flow asked it to.
    fn advance_to(&mut self, to: u64) {
        loop {
            let next = (0..WORKERS)
                .map(|w| (self.workers[w].tick_at, w))
                .min()
                .filter(|(at, _)| *at <= to);
            let Some((at, worker)) = next else { break };
            self.now = self.now.max(at);
            self.tick(worker, &[]);
        }
        self.now = to;
        for (worker, w) in self.workers.iter().enumerate() {
            for (id, deadline) in w.flow.deadlines() {
                assert!(
                    deadline > self.now,
                    "worker {worker} stream {id:?} still waits at {} past {deadline}",
                    self.now
                );
            }
        }
    }

    fn tick(&mut self, worker: usize, stale: &[usize]) {
        let w = &mut self.workers[worker];
        // The adapter reads what other workers stored before the flow's tick.
        for provider in 0..PROVIDERS {
            w.vm.adopt_shared_keys(provider);
        }
        let effects = w.flow.tick(&mut w.vm, self.now, stale);
        assert!(effects.tick.is_some(), "a tick always sets the next one");
        self.perform(worker, effects);
        for (provider, deadline) in self.workers[worker].flow.fetch_deadlines() {
            assert!(
                deadline > self.now,
                "worker {worker} still holds provider {provider}'s fetch past its deadline"
            );
        }
    }

    /// Plays the adapter: sends what the flow asks for, reports back, carries out outcomes.
    /// A tick period is set as soon as the flow asks for it: a later request is a sooner tick.
    fn perform(&mut self, worker: usize, effects: Effects) {
        let mut queue = Vec::new();
        self.receive(worker, effects, &mut queue);
        while let Some(effects) = queue.pop() {
            let now = self.now;
            for (provider, _) in effects.fetches {
                let w = &mut self.workers[worker];
                if self.idp_cluster_missing {
                    let more = w
                        .flow
                        .fetch_ended(&mut w.vm, provider, FetchEnd::Failed, now);
                    self.receive(worker, more, &mut queue);
                } else {
                    let token = self.next_token;
                    self.next_token += 1;
                    w.flow.fetch_sent(provider, token);
                    self.fetch_calls.push((worker, token));
                }
            }
            for (call, _) in effects.rls_checks {
                let w = &mut self.workers[worker];
                if self.rls_cluster_missing {
                    let more = w.flow.rls_unsent(&mut w.vm, call, now);
                    self.receive(worker, more, &mut queue);
                } else {
                    let token = self.next_token;
                    self.next_token += 1;
                    w.flow.rls_sent(call, token);
                    self.rls_calls.push((worker, token));
                }
            }
            for (id, outcome) in effects.outcomes {
                let log = self
                    .streams
                    .iter_mut()
                    .find(|s| s.worker == worker && StreamId(s.id) == id)
                    .expect("an outcome for a stream that exists");
                assert!(!log.gone, "an outcome for {id:?} after it went away");
                log.outcomes += 1;
                assert_eq!(log.outcomes, 1, "a second outcome for {id:?}");
                if matches!(outcome, Outcome::Forward(_)) {
                    let key = self.workers[worker].vm.reservation_key(id.0);
                    if let Some(state) = self.shared.borrow_mut().reservations.get_mut(&key) {
                        assert_eq!(
                            *state,
                            Reservation::Held,
                            "{key} forwarded on a token it lost"
                        );
                        *state = Reservation::Used;
                    }
                }
            }
        }
        self.check_fetches_and_ticks();
    }

    fn receive(&mut self, worker: usize, effects: Effects, queue: &mut Vec<Effects>) {
        if let Some(period) = effects.tick {
            assert!(
                period >= Duration::from_millis(1),
                "a zero period stops ticks"
            );
            self.workers[worker].tick_at = self.now + millis(period);
        }
        queue.push(effects);
    }

    /// At most one fetch per provider is in flight across workers, and each worker's next tick
    /// comes by its earliest deadline.
    fn check_fetches_and_ticks(&self) {
        for provider in 0..PROVIDERS {
            let in_flight = self
                .workers
                .iter()
                .flat_map(|w| w.flow.fetch_deadlines())
                .filter(|(p, deadline)| *p == provider && *deadline > self.now)
                .count();
            assert!(
                in_flight <= 1,
                "{in_flight} fetches of provider {provider} in flight"
            );
        }
        for (worker, w) in self.workers.iter().enumerate() {
            let deadlines = w.flow.deadlines().into_iter().map(|(_, d)| d);
            let fetches = w.flow.fetch_deadlines().into_iter().map(|(_, d)| d);
            for deadline in deadlines.chain(fetches) {
                assert!(
                    w.tick_at <= deadline.max(self.now + 1),
                    "worker {worker} ticks at {} after a deadline at {deadline}",
                    w.tick_at
                );
            }
        }
    }

    /// Past every deadline every stream has ended once; once all are gone and their deadlines
    /// passed, nothing is left, and every reserved token was used or given back.
    fn check_the_end(&mut self) {
        self.advance_to(self.now + LONG_MS);
        for log in &self.streams {
            assert!(
                log.gone || log.outcomes == 1,
                "worker {} stream {} never ended",
                log.worker,
                log.id
            );
        }
        for index in 0..self.streams.len() {
            if !self.streams[index].gone {
                self.leave(index);
            }
        }
        self.advance_to(self.now + LONG_MS);
        for (worker, w) in self.workers.iter().enumerate() {
            assert!(
                w.flow.is_empty(),
                "worker {worker}'s flow still holds {:?}",
                w.flow
            );
        }
        for (key, state) in &self.shared.borrow().reservations {
            assert_ne!(
                *state,
                Reservation::Held,
                "{key}'s token neither used nor given back"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_stream_ends_once_and_nothing_waits_or_stays_past_its_deadline(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut world = World::new();
        for op in ops {
            world.run(op);
        }
        world.check_the_end();
    }
}
