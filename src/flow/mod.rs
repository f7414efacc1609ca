//! Every stream's life from its request to its end, as one state machine per VM: which requests
//! wait (for signing keys, for the rate-limit service, for a delay-mode token), until when, and
//! what becomes of each; and the VM's key fetches. Plain Rust: the host adapter hands it events
//! (a new request, a fetch ended, a rate-limit answer, a tick, a stream gone) with the time, and
//! carries out the `Effects` it returns. What needs the VM's keys, caches and shared data it asks
//! of `Vm`.
//!
//! Every waiting state has a deadline, so no lost answer holds a request or a fetch for good, and
//! each stream's state is one entry of `streams`, removed in one place (`end`) when it goes.

use std::collections::BinaryHeap;
use std::time::Duration;

use hashbrown::HashMap;
use smallvec::SmallVec;

use crate::accesslog::Verdict;
use crate::auth::error::AuthError;
use crate::auth::remote::{FetchReason, LEASE_MARGIN_MS};
use crate::pipeline::{Decision, Mutations, Next, PendingGlobal, Settled};
use crate::ratelimit::{GlobalAnswer, GlobalCheck, Outcomes, PolicyOutcome};
use crate::reply::{self, LocalReply};
use crate::request::Request;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

/// With nothing waiting the root context ticks this often (key refreshes, metric flushes).
pub const IDLE_TICK: Duration = Duration::from_secs(1);
/// While requests wait for keys another worker fetches, look at shared data this often.
pub const WAITING_TICK: Duration = Duration::from_millis(10);
/// A fetch queued by a stream is dispatched by the root context's tick this soon.
pub const DISPATCH_TICK: Duration = Duration::from_millis(1);
/// A request waiting for keys outlives the fetch lease (fetch timeout + `LEASE_MARGIN_MS`) by
/// this much, so that the fetch's own end decides it rather than its deadline.
pub const KEYS_WAIT_MARGIN_MS: u64 = 500;
/// Envoy answers a rate-limit call by its timeout; past it by this much the answer is taken as
/// lost (`GlobalAnswer::Failed`), so that even an answer Envoy never delivers ends the wait.
pub const RLS_ANSWER_MARGIN_MS: u64 = 1_000;

/// A stream, by its proxy-wasm context id. Envoy numbers contexts as it makes them, so ids
/// follow the order requests came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

/// One of a stream's rate-limit checks (`check` indexes `PendingGlobal::checks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RlsCall {
    pub stream: StreamId,
    pub check: usize,
}

/// What a stream comes to; the adapter resumes a paused stream to carry it out.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Forward(Mutations),
    Reply(LocalReply),
}

/// A provider's fetch lease as this VM took it: when (which names it in shared data) and until
/// when no other worker may fetch. The lease's end is the fetch's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub started_ms: u64,
    pub until_ms: u64,
}

/// How a key fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchEnd {
    /// New keys were adopted.
    Fetched,
    /// The call could not be sent, or its answer was refused.
    Failed,
    /// No answer by the lease's end: counted failed.
    Unanswered,
}

/// What the flow asks of the VM it runs in: decisions with the VM's keys, token cache and
/// buckets, and the state it shares with other workers (fetch leases, keys, buckets).
pub trait Vm {
    fn decide(&mut self, request: &Request, now_ms: u64) -> Decision;
    /// Decides a request once the rate-limit service answered (`answers` in `checks` order).
    fn decide_with_answers(&mut self, pending: PendingGlobal, answers: &[GlobalAnswer]) -> Settled;
    /// Counts a settled decision in the metrics and says what the log will say about it.
    fn record(&mut self, settled: &Settled) -> Verdict;
    /// Gives back the tokens a held request reserved (it went away before its turn).
    fn release(&mut self, reservations: &[PolicyOutcome]);
    /// Adopts the provider's keys and lease as other workers stored them; whether this VM's
    /// view of them changed.
    fn adopt_shared_keys(&mut self, provider: usize) -> bool;
    /// Takes the provider's fetch lease if no worker holds it and a fetch is allowed now.
    fn take_fetch_lease(
        &mut self,
        provider: usize,
        reason: FetchReason,
        now_ms: u64,
    ) -> Option<Lease>;
    /// Records how this VM's fetch ended in the shared lease (unless another worker has taken
    /// the lease over since).
    fn give_back_fetch_lease(&mut self, provider: usize, lease: Lease, end: FetchEnd, now_ms: u64);
    /// Whether a worker (this one included) holds the provider's fetch lease, as last seen.
    fn shared_fetch_under_way(&self, provider: usize, now_ms: u64) -> bool;
    fn fetch_timeout_ms(&self, provider: usize) -> u64;
}

/// Streams to forward or answer now, in order. A new request's own outcome is usually the only
/// one: kept inline, so a request decided at once allocates nothing for it.
pub type StreamOutcomes = SmallVec<[(StreamId, Outcome); 1]>;

/// What the adapter is to do after an event. Only a tick dispatches fetches (so the root
/// context sends them, and their answers outlive any stream).
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    /// Streams to forward or answer now.
    pub outcomes: StreamOutcomes,
    /// Rate-limit checks to send; each then reported with `rls_sent` or `rls_unsent`.
    pub rls_checks: Vec<(RlsCall, GlobalCheck)>,
    /// Key fetches to send; each then reported with `fetch_sent` or `fetch_ended`.
    pub fetches: Vec<(usize, FetchReason)>,
    /// A new tick period for the root context, when the next tick must come sooner.
    pub tick: Option<Duration>,
}

/// What a stream holds while it lives.
#[derive(Debug)]
enum Stream {
    /// Paused until its providers' keys arrive; decided again on every tick and fetch end.
    AwaitingKeys {
        request: Request<'static>,
        deadline_ms: u64,
    },
    /// Paused until the rate-limit service answered every check; what is unanswered at the
    /// deadline counts as failed.
    AwaitingRls {
        pending: Box<PendingGlobal>,
        calls: Vec<RlsCallState>,
        deadline_ms: u64,
    },
    /// Allowed, and held until its delay-mode token is due.
    Delayed {
        due_ms: u64,
        /// Boxed: few streams are held, and every entry of `streams` is as large as the largest.
        held: Box<Held>,
        record: Record,
    },
    /// Forwarded or answered; kept for its log record and response.
    Decided(Record),
}

/// What a delayed stream holds until its turn.
#[derive(Debug)]
struct Held {
    mutations: Mutations,
    /// The rate-limit outcomes; the delayed ones are tokens reserved for this request.
    reservations: Outcomes,
}

/// What a decided stream keeps for the rest of its life.
#[derive(Debug, Default)]
struct Record {
    /// For the access log and Envoy's filter state; none when refused for want of keys.
    verdict: Option<Verdict>,
    /// Added to the response (rate-limit headers).
    response_headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RlsCallState {
    /// Handed to the adapter, not yet reported sent.
    Sending,
    Sent {
        token: u32,
    },
    Answered(GlobalAnswer),
}

#[derive(Debug)]
struct Fetch {
    provider: usize,
    reason: FetchReason,
    lease: Lease,
    stage: FetchStage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FetchStage {
    /// Waiting for the root context's next tick.
    Queued,
    /// Handed to the adapter, not yet reported sent.
    Dispatched,
    Sent {
        token: u32,
    },
}

#[derive(Debug)]
pub struct Flow {
    streams: HashMap<StreamId, Stream>,
    /// Which stream each rate-limit call in flight belongs to: an index into `streams` (its
    /// entry holds the same tokens), so an answer finds its stream without a scan.
    rls_tokens: HashMap<u32, RlsCall>,
    /// This VM's key fetches, at most one per provider.
    fetches: Vec<Fetch>,
    /// When the root context's tick is next due, as last asked for.
    next_tick_ms: u64,
}

impl Flow {
    /// A flow whose root context has just set its tick to `IDLE_TICK`.
    pub fn new(now_ms: u64) -> Flow {
        Flow {
            streams: HashMap::new(),
            rls_tokens: HashMap::new(),
            fetches: Vec::new(),
            next_tick_ms: now_ms.saturating_add(millis(IDLE_TICK)),
        }
    }

    /// A new request: decided at once, or paused for keys, for the rate-limit service, or for
    /// a delay-mode token. Effects: this stream's outcome, its rate-limit checks, a tick.
    pub fn request(
        &mut self,
        vm: &mut dyn Vm,
        id: StreamId,
        request: Request,
        now_ms: u64,
    ) -> Effects {
        let mut effects = Effects::default();
        // Envoy does not reuse a live stream's id; should one come again, its old entry ends.
        self.end(vm, id);
        let mut decision = vm.decide(&request, now_ms);
        if let Decision::AwaitKeys(needs) = &decision {
            // Another worker may have fetched them already.
            let mut adopted = false;
            for (provider, _) in needs {
                adopted |= vm.adopt_shared_keys(*provider);
            }
            if adopted {
                decision = vm.decide(&request, now_ms);
            }
        }
        let needs = match Next::from(decision) {
            Next::Settled(settled) => {
                self.settle(vm, id, settled, now_ms, &mut effects);
                return effects;
            }
            Next::CheckGlobal(pending) => {
                self.ask_rls(vm, id, pending, now_ms, &mut effects);
                return effects;
            }
            Next::AwaitKeys(needs) => needs,
        };
        for (provider, reason) in &needs {
            self.start_fetch(vm, *provider, *reason, now_ms, &mut effects);
        }
        if !self.fetch_under_way(vm, &needs, now_ms) {
            // No fetch could start (a failure just recorded, or a refetch too soon): decide now.
            match Next::from(vm.decide(&request, now_ms)) {
                Next::Settled(settled) => self.settle(vm, id, settled, now_ms, &mut effects),
                Next::CheckGlobal(pending) => {
                    self.ask_rls(vm, id, pending, now_ms, &mut effects);
                }
                Next::AwaitKeys(_) => self.refuse_for_want_of_keys(id, &mut effects),
            }
            return effects;
        }
        let longest_timeout_ms = needs
            .iter()
            .map(|(provider, _)| vm.fetch_timeout_ms(*provider))
            .max()
            .unwrap_or(0);
        let deadline_ms = now_ms
            .saturating_add(longest_timeout_ms)
            .saturating_add(LEASE_MARGIN_MS + KEYS_WAIT_MARGIN_MS);
        self.streams.insert(
            id,
            Stream::AwaitingKeys {
                request: request.into_owned(),
                deadline_ms,
            },
        );
        let look_again_ms = now_ms.saturating_add(millis(WAITING_TICK));
        self.tick_by(look_again_ms.min(deadline_ms), now_ms, &mut effects);
        effects
    }

    /// The adapter sent a rate-limit check; its answer will name `token`.
    pub fn rls_sent(&mut self, call: RlsCall, token: u32) {
        let Some(Stream::AwaitingRls { calls, .. }) = self.streams.get_mut(&call.stream) else {
            return;
        };
        if let Some(state @ RlsCallState::Sending) = calls.get_mut(call.check) {
            *state = RlsCallState::Sent { token };
            self.rls_tokens.insert(token, call);
        }
    }

    /// A rate-limit check could not be sent (no such cluster): it counts as failed at once.
    /// Effects: the stream's outcome once every check is answered, a tick.
    pub fn rls_unsent(&mut self, vm: &mut dyn Vm, call: RlsCall, now_ms: u64) -> Effects {
        let mut effects = Effects::default();
        self.answer_rls(vm, call, GlobalAnswer::Failed, now_ms, &mut effects);
        effects
    }

    /// Whether `token` is a rate-limit call of a stream still waiting for it.
    pub fn awaits_rls_answer(&self, token: u32) -> bool {
        self.rls_tokens.contains_key(&token)
    }

    /// The rate-limit service answered (or failed) the call `token`. Effects: the stream's
    /// outcome once every check is answered, a tick.
    pub fn rls_answered(
        &mut self,
        vm: &mut dyn Vm,
        token: u32,
        answer: GlobalAnswer,
        now_ms: u64,
    ) -> Effects {
        let mut effects = Effects::default();
        if let Some(call) = self.rls_tokens.remove(&token) {
            self.answer_rls(vm, call, answer, now_ms, &mut effects);
        }
        effects
    }

    /// The adapter sent the provider's fetch; its answer will name `token`.
    pub fn fetch_sent(&mut self, provider: usize, token: u32) {
        if let Some(fetch) = self
            .fetches
            .iter_mut()
            .find(|f| f.provider == provider && f.stage == FetchStage::Dispatched)
        {
            fetch.stage = FetchStage::Sent { token };
        }
    }

    /// The provider whose fetch `token` is, while this VM waits for it.
    pub fn fetch_of(&self, token: u32) -> Option<usize> {
        self.fetches
            .iter()
            .find(|f| f.stage == FetchStage::Sent { token })
            .map(|f| f.provider)
    }

    /// The provider's fetch ended (the adapter has adopted what it brought): its lease goes
    /// back, and every request waiting for keys is decided again. Effects: those requests'
    /// outcomes and rate-limit checks, a tick.
    pub fn fetch_ended(
        &mut self,
        vm: &mut dyn Vm,
        provider: usize,
        end: FetchEnd,
        now_ms: u64,
    ) -> Effects {
        let mut effects = Effects::default();
        let Some(index) = self
            .fetches
            .iter()
            .position(|f| f.provider == provider && f.stage != FetchStage::Queued)
        else {
            return effects;
        };
        let fetch = self.fetches.swap_remove(index);
        vm.give_back_fetch_lease(provider, fetch.lease, end, now_ms);
        self.decide_waiting_for_keys(vm, now_ms, &mut effects);
        effects
    }

    /// The root context's tick: fetches past their deadline count failed, stale keys are
    /// refetched, requests waiting for keys are decided again, those past a deadline are
    /// decided, delayed requests whose time has come go on, and queued fetches go out.
    /// Effects: all of those, and always the next tick period.
    pub fn tick(&mut self, vm: &mut dyn Vm, now_ms: u64, stale_keys: &[usize]) -> Effects {
        let mut effects = Effects::default();
        let (overdue, in_time): (Vec<Fetch>, Vec<Fetch>) = std::mem::take(&mut self.fetches)
            .into_iter()
            .partition(|f| f.lease.until_ms <= now_ms);
        self.fetches = in_time;
        for fetch in overdue {
            vm.give_back_fetch_lease(fetch.provider, fetch.lease, FetchEnd::Unanswered, now_ms);
        }
        for provider in stale_keys {
            self.start_fetch(vm, *provider, FetchReason::Refresh, now_ms, &mut effects);
        }
        self.decide_waiting_for_keys(vm, now_ms, &mut effects);
        self.decide_unanswered(vm, now_ms, &mut effects);
        self.forward_due(now_ms, &mut effects);
        for fetch in &mut self.fetches {
            if fetch.stage == FetchStage::Queued {
                fetch.stage = FetchStage::Dispatched;
                effects.fetches.push((fetch.provider, fetch.reason));
            }
        }
        let period = self.tick_period(now_ms);
        self.next_tick_ms = now_ms.saturating_add(millis(period));
        effects.tick = Some(period);
        effects
    }

    /// The stream is gone (its client left, or it ended): what it held goes with it, and the
    /// tokens it reserved go back.
    pub fn stream_gone(&mut self, vm: &mut dyn Vm, id: StreamId) {
        self.end(vm, id);
    }

    /// What the log and Envoy's filter state say about the stream, once it is decided.
    pub fn verdict(&self, id: StreamId) -> Option<&Verdict> {
        match self.streams.get(&id)? {
            Stream::Delayed { record, .. } | Stream::Decided(record) => record.verdict.as_ref(),
            Stream::AwaitingKeys { .. } | Stream::AwaitingRls { .. } => None,
        }
    }

    /// Headers to add to the stream's response.
    pub fn response_headers(&self, id: StreamId) -> &[(String, String)] {
        match self.streams.get(&id) {
            Some(Stream::Delayed { record, .. } | Stream::Decided(record)) => {
                &record.response_headers
            }
            _ => &[],
        }
    }

    /// The one place a stream's entry is removed.
    fn end(&mut self, vm: &mut dyn Vm, id: StreamId) {
        match self.streams.remove(&id) {
            Some(Stream::AwaitingRls { pending, calls, .. }) => {
                self.forget_calls(&calls);
                vm.release(pending.reservations());
            }
            Some(Stream::Delayed { held, .. }) => vm.release(&held.reservations),
            Some(Stream::AwaitingKeys { .. } | Stream::Decided(_)) | None => {}
        }
    }

    fn forget_calls(&mut self, calls: &[RlsCallState]) {
        for call in calls {
            if let RlsCallState::Sent { token } = call {
                self.rls_tokens.remove(token);
            }
        }
    }

    /// Keeps a settled decision for the stream; an allowed or denied one is its outcome now, a
    /// delayed one is held until its token is due.
    fn settle(
        &mut self,
        vm: &mut dyn Vm,
        id: StreamId,
        settled: Settled,
        now_ms: u64,
        effects: &mut Effects,
    ) {
        let verdict = Some(vm.record(&settled));
        let stream = match settled {
            Settled::Allow(mut allowed) => {
                let response_headers = std::mem::take(&mut allowed.mutations.response_headers);
                effects
                    .outcomes
                    .push((id, Outcome::Forward(allowed.mutations)));
                Stream::Decided(Record {
                    verdict,
                    response_headers,
                })
            }
            Settled::Deny { reply, .. } => {
                effects.outcomes.push((id, Outcome::Reply(reply)));
                Stream::Decided(Record {
                    verdict,
                    response_headers: Vec::new(),
                })
            }
            Settled::Delay {
                wait_ms,
                mut allowed,
            } => {
                let due_ms = now_ms.saturating_add(wait_ms);
                self.tick_by(due_ms, now_ms, effects);
                let response_headers = std::mem::take(&mut allowed.mutations.response_headers);
                Stream::Delayed {
                    due_ms,
                    held: Box::new(Held {
                        mutations: allowed.mutations,
                        reservations: allowed.limits,
                    }),
                    record: Record {
                        verdict,
                        response_headers,
                    },
                }
            }
        };
        self.streams.insert(id, stream);
    }

    /// Fail closed: keys are not to be had in time.
    fn refuse_for_want_of_keys(&mut self, id: StreamId, effects: &mut Effects) {
        let reply = reply::token_refused(AuthError::KeysUnavailable { retry_after_s: 1 });
        effects.outcomes.push((id, Outcome::Reply(reply)));
        self.streams.insert(id, Stream::Decided(Record::default()));
    }

    fn ask_rls(
        &mut self,
        vm: &mut dyn Vm,
        id: StreamId,
        pending: Box<PendingGlobal>,
        now_ms: u64,
        effects: &mut Effects,
    ) {
        if pending.checks.is_empty() {
            let settled = vm.decide_with_answers(*pending, &[]);
            self.settle(vm, id, settled, now_ms, effects);
            return;
        }
        let longest_timeout_ms = pending
            .checks
            .iter()
            .map(|check| millis(check.timeout))
            .max()
            .unwrap_or(0);
        let deadline_ms = now_ms
            .saturating_add(longest_timeout_ms)
            .saturating_add(RLS_ANSWER_MARGIN_MS);
        for (check, message) in pending.checks.iter().enumerate() {
            let call = RlsCall { stream: id, check };
            effects.rls_checks.push((call, message.clone()));
        }
        let calls = vec![RlsCallState::Sending; pending.checks.len()];
        self.streams.insert(
            id,
            Stream::AwaitingRls {
                pending,
                calls,
                deadline_ms,
            },
        );
        self.tick_by(deadline_ms, now_ms, effects);
    }

    fn answer_rls(
        &mut self,
        vm: &mut dyn Vm,
        call: RlsCall,
        answer: GlobalAnswer,
        now_ms: u64,
        effects: &mut Effects,
    ) {
        let Some(Stream::AwaitingRls { calls, .. }) = self.streams.get_mut(&call.stream) else {
            return;
        };
        match calls.get_mut(call.check) {
            Some(state @ RlsCallState::Sending) => *state = RlsCallState::Answered(answer),
            Some(state @ RlsCallState::Sent { .. }) => {
                if let RlsCallState::Sent { token } = state {
                    self.rls_tokens.remove(token);
                }
                *state = RlsCallState::Answered(answer);
            }
            Some(RlsCallState::Answered(_)) | None => return,
        }
        if !calls
            .iter()
            .all(|state| matches!(state, RlsCallState::Answered(_)))
        {
            return;
        }
        if let Some(Stream::AwaitingRls { pending, calls, .. }) = self.streams.remove(&call.stream)
        {
            self.settle_answered(vm, call.stream, pending, &calls, now_ms, effects);
        }
    }

    /// Decides a stream with the rate-limit answers it has; a call still unanswered counts
    /// as failed.
    fn settle_answered(
        &mut self,
        vm: &mut dyn Vm,
        id: StreamId,
        pending: Box<PendingGlobal>,
        calls: &[RlsCallState],
        now_ms: u64,
        effects: &mut Effects,
    ) {
        self.forget_calls(calls);
        let answers: Vec<GlobalAnswer> = calls
            .iter()
            .map(|state| match state {
                RlsCallState::Answered(answer) => *answer,
                RlsCallState::Sending | RlsCallState::Sent { .. } => GlobalAnswer::Failed,
            })
            .collect();
        let settled = vm.decide_with_answers(*pending, &answers);
        self.settle(vm, id, settled, now_ms, effects);
    }

    /// Takes the lease and queues a fetch for the root context, unless this VM already fetches
    /// the provider's keys or another worker holds the lease.
    fn start_fetch(
        &mut self,
        vm: &mut dyn Vm,
        provider: usize,
        reason: FetchReason,
        now_ms: u64,
        effects: &mut Effects,
    ) {
        if self.fetches.iter().any(|f| f.provider == provider) {
            return;
        }
        let Some(lease) = vm.take_fetch_lease(provider, reason, now_ms) else {
            return;
        };
        self.fetches.push(Fetch {
            provider,
            reason,
            lease,
            stage: FetchStage::Queued,
        });
        self.tick_by(
            now_ms.saturating_add(millis(DISPATCH_TICK)),
            now_ms,
            effects,
        );
    }

    fn fetch_under_way(&self, vm: &dyn Vm, needs: &[(usize, FetchReason)], now_ms: u64) -> bool {
        needs.iter().any(|(provider, _)| {
            self.fetches.iter().any(|f| f.provider == *provider)
                || vm.shared_fetch_under_way(*provider, now_ms)
        })
    }

    /// Decides again every request waiting for keys, in the order they came: the keys may be
    /// here, the fetch may have failed, the deadline may have passed, or no fetch may be under
    /// way any more (then one starts).
    fn decide_waiting_for_keys(&mut self, vm: &mut dyn Vm, now_ms: u64, effects: &mut Effects) {
        let waiting = self
            .streams
            .iter()
            .filter(|(_, stream)| matches!(stream, Stream::AwaitingKeys { .. }))
            .map(|(id, _)| (0, *id))
            .collect();
        for id in in_order(waiting) {
            let Some(Stream::AwaitingKeys {
                request,
                deadline_ms,
            }) = self.streams.remove(&id)
            else {
                continue;
            };
            match Next::from(vm.decide(&request, now_ms)) {
                Next::Settled(settled) => self.settle(vm, id, settled, now_ms, effects),
                Next::CheckGlobal(pending) => {
                    self.ask_rls(vm, id, pending, now_ms, effects);
                }
                Next::AwaitKeys(_) if now_ms >= deadline_ms => {
                    self.refuse_for_want_of_keys(id, effects);
                }
                Next::AwaitKeys(needs) => {
                    if !self.fetch_under_way(vm, &needs, now_ms) {
                        for (provider, reason) in &needs {
                            self.start_fetch(vm, *provider, *reason, now_ms, effects);
                        }
                    }
                    self.streams.insert(
                        id,
                        Stream::AwaitingKeys {
                            request,
                            deadline_ms,
                        },
                    );
                }
            }
        }
    }

    /// Decides the requests whose rate-limit answers are overdue, as if those had failed.
    fn decide_unanswered(&mut self, vm: &mut dyn Vm, now_ms: u64, effects: &mut Effects) {
        let overdue = self
            .streams
            .iter()
            .filter(|(_, stream)| {
                matches!(stream, Stream::AwaitingRls { deadline_ms, .. } if *deadline_ms <= now_ms)
            })
            .map(|(id, _)| (0, *id))
            .collect();
        for id in in_order(overdue) {
            if let Some(Stream::AwaitingRls { pending, calls, .. }) = self.streams.remove(&id) {
                self.settle_answered(vm, id, pending, &calls, now_ms, effects);
            }
        }
    }

    /// Forwards the delayed requests whose tokens are due, earliest first.
    fn forward_due(&mut self, now_ms: u64, effects: &mut Effects) {
        let due = self
            .streams
            .iter()
            .filter_map(|(id, stream)| match stream {
                Stream::Delayed { due_ms, .. } if *due_ms <= now_ms => Some((*due_ms, *id)),
                _ => None,
            })
            .collect();
        for id in in_order(due) {
            if let Some(Stream::Delayed { held, record, .. }) = self.streams.remove(&id) {
                effects
                    .outcomes
                    .push((id, Outcome::Forward(held.mutations)));
                self.streams.insert(id, Stream::Decided(record));
            }
        }
    }

    /// Asks for a tick by `at_ms` for the adapter's own timed work (a rate-limit lease ending),
    /// unless one is due by then already; the flow keeps counting on the tick it then expects.
    pub fn wake_by(&mut self, at_ms: u64, now_ms: u64, effects: &mut Effects) {
        self.tick_by(at_ms, now_ms, effects);
    }

    /// Asks for a tick by `at_ms` unless one is due by then already. Asking again for a later
    /// tick would only put it off: Envoy starts the period anew at every call.
    fn tick_by(&mut self, at_ms: u64, now_ms: u64, effects: &mut Effects) {
        let at_ms = at_ms.max(now_ms.saturating_add(1));
        if at_ms < self.next_tick_ms {
            self.next_tick_ms = at_ms;
            effects.tick = Some(Duration::from_millis(at_ms - now_ms));
        }
    }

    /// Time to the next thing to do: a delayed request's turn or any deadline, a queued fetch,
    /// a look at shared data while requests wait for keys; else `IDLE_TICK`.
    fn tick_period(&self, now_ms: u64) -> Duration {
        let mut at_ms = now_ms.saturating_add(millis(IDLE_TICK));
        for stream in self.streams.values() {
            let by_ms = match stream {
                Stream::AwaitingKeys { deadline_ms, .. } => {
                    (*deadline_ms).min(now_ms.saturating_add(millis(WAITING_TICK)))
                }
                Stream::AwaitingRls { deadline_ms, .. } => *deadline_ms,
                Stream::Delayed { due_ms, .. } => *due_ms,
                Stream::Decided(_) => continue,
            };
            at_ms = at_ms.min(by_ms);
        }
        for fetch in &self.fetches {
            let by_ms = match fetch.stage {
                FetchStage::Queued => now_ms.saturating_add(millis(DISPATCH_TICK)),
                FetchStage::Dispatched | FetchStage::Sent { .. } => fetch.lease.until_ms,
            };
            at_ms = at_ms.min(by_ms);
        }
        Duration::from_millis(at_ms.saturating_sub(now_ms).max(1))
    }
}

/// The streams by `(key, id)`: by the key, then in the order they came (ids grow with each
/// stream). One element type for every ordered walk over the streams, and a heap sort: the
/// slice sorts are several KB of the module per instantiation, the heap's one is a fraction of
/// that, and the keys are distinct, so every sort gives the same order.
fn in_order(streams: Vec<(u64, StreamId)>) -> impl Iterator<Item = StreamId> {
    BinaryHeap::from(streams)
        .into_sorted_vec()
        .into_iter()
        .map(|(_, id)| id)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
impl Flow {
    /// Whether the flow holds nothing: no stream, call or fetch.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.rls_tokens.is_empty() && self.fetches.is_empty()
    }

    /// Every waiting stream with the time it must be dealt with by.
    fn deadlines(&self) -> Vec<(StreamId, u64)> {
        self.streams
            .iter()
            .filter_map(|(id, stream)| match stream {
                Stream::AwaitingKeys { deadline_ms, .. }
                | Stream::AwaitingRls { deadline_ms, .. } => Some((*id, *deadline_ms)),
                Stream::Delayed { due_ms, .. } => Some((*id, *due_ms)),
                Stream::Decided(_) => None,
            })
            .collect()
    }

    /// This VM's fetches: provider and deadline.
    fn fetch_deadlines(&self) -> Vec<(usize, u64)> {
        self.fetches
            .iter()
            .map(|f| (f.provider, f.lease.until_ms))
            .collect()
    }
}
