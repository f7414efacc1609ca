//! Every transition of the flow, with one fake worker (two where the lease is shared).

use std::time::Duration;

use super::fake::{FakeVm, Plan, Reservation, Shared, FETCH_TIMEOUT_MS, RLS_TIMEOUT_MS};
use super::*;
use crate::auth::remote::UNKNOWN_KID_REFETCH_INTERVAL_MS;
use crate::ratelimit::rls::RlsAnswer;

const START_MS: u64 = 1_000_000;
const PROVIDER: usize = 0;
const KEYS_DEADLINE_MS: u64 = FETCH_TIMEOUT_MS + LEASE_MARGIN_MS + KEYS_WAIT_MARGIN_MS;
const RLS_DEADLINE_MS: u64 = RLS_TIMEOUT_MS + RLS_ANSWER_MARGIN_MS;

struct Worker {
    flow: Flow,
    vm: FakeVm,
    now: u64,
}

impl Worker {
    fn new() -> Worker {
        Worker::sharing(0, Shared::new(1))
    }

    fn sharing(worker: usize, shared: std::rc::Rc<std::cell::RefCell<Shared>>) -> Worker {
        Worker {
            flow: Flow::new(START_MS),
            vm: FakeVm::new(worker, shared),
            now: START_MS,
        }
    }

    fn request(&mut self, stream: u32, plan: Plan) -> Effects {
        let request = self.vm.request(stream, plan);
        self.flow
            .request(&mut self.vm, StreamId(stream), request, self.now)
    }

    fn tick_at(&mut self, now: u64) -> Effects {
        self.now = now;
        self.flow.tick(&mut self.vm, now, &[])
    }

    fn gone(&mut self, stream: u32) {
        self.flow.stream_gone(&mut self.vm, StreamId(stream));
    }

    fn answer(&mut self, token: u32, over_limit: bool) -> Effects {
        let answer = GlobalAnswer::Answered(RlsAnswer {
            over_limit,
            limit: None,
            remaining: 0,
            reset_s: 1,
        });
        self.flow
            .rls_answered(&mut self.vm, token, answer, self.now)
    }

    fn fetch_ended(&mut self, end: FetchEnd) -> Effects {
        if end == FetchEnd::Fetched {
            self.vm.fetched(PROVIDER);
        }
        self.flow.fetch_ended(&mut self.vm, PROVIDER, end, self.now)
    }

    /// The next tick dispatches the queued fetch; the adapter reports it sent as `token`.
    fn dispatch_fetch(&mut self, token: u32) {
        let effects = self.tick_at(self.now + 1);
        assert_eq!(effects.fetches, vec![(PROVIDER, FetchReason::FirstKeys)]);
        self.flow.fetch_sent(PROVIDER, token);
    }

    fn reservation(&self, stream: u32) -> Option<Reservation> {
        let key = self.vm.reservation_key(stream);
        self.vm.shared.borrow().reservations.get(&key).copied()
    }
}

fn keys_then(then: Plan) -> Plan {
    Plan::Keys {
        provider: PROVIDER,
        version: 1,
        then: Box::new(then),
    }
}

fn forward(stream: u32) -> (StreamId, Outcome) {
    (StreamId(stream), Outcome::Forward(Mutations::default()))
}

fn status_of(effects: &Effects, stream: u32) -> Option<u32> {
    effects
        .outcomes
        .iter()
        .find(|(id, _)| *id == StreamId(stream))
        .map(|(_, outcome)| match outcome {
            Outcome::Forward(_) => 200,
            Outcome::Reply(reply) => reply.status,
        })
}

fn sent(flow: &mut Flow, effects: &Effects, first_token: u32) {
    for (n, (call, _)) in effects.rls_checks.iter().enumerate() {
        flow.rls_sent(*call, first_token + n as u32);
    }
}

#[test]
fn a_request_allowed_at_once_is_forwarded_and_keeps_its_verdict() {
    let mut w = Worker::new();
    let effects = w.request(1, Plan::Allow);
    assert_eq!(effects.outcomes.to_vec(), vec![forward(1)]);
    assert_eq!(effects.tick, None, "nothing waits: the tick is left alone");
    assert_eq!(
        w.flow.verdict(StreamId(1)).map(|v| v.decision),
        Some("allowed")
    );
    w.gone(1);
    assert!(w.flow.verdict(StreamId(1)).is_none());
    assert!(w.flow.is_empty());
}

#[test]
fn a_request_denied_at_once_is_answered() {
    let mut w = Worker::new();
    let effects = w.request(1, Plan::Deny);
    assert_eq!(status_of(&effects, 1), Some(403));
    assert_eq!(
        w.flow.verdict(StreamId(1)).map(|v| v.decision),
        Some("denied")
    );
}

#[test]
fn a_delayed_request_is_held_until_its_token_is_due() {
    let mut w = Worker::new();
    let effects = w.request(1, Plan::Delay { wait_ms: 300 });
    assert!(effects.outcomes.is_empty());
    assert_eq!(effects.tick, Some(Duration::from_millis(300)));
    assert!(w.flow.verdict(StreamId(1)).is_some(), "decided, only held");
    assert!(w.tick_at(START_MS + 299).outcomes.is_empty());
    assert_eq!(
        w.tick_at(START_MS + 300).outcomes.to_vec(),
        vec![forward(1)]
    );
    assert_eq!(w.reservation(1), Some(Reservation::Held), "forwarded on it");
}

#[test]
fn a_later_wait_never_puts_off_a_sooner_tick() {
    let mut w = Worker::new();
    assert_eq!(
        w.request(1, Plan::Delay { wait_ms: 300 }).tick,
        Some(Duration::from_millis(300))
    );
    assert_eq!(w.request(2, Plan::Delay { wait_ms: 600 }).tick, None);
    assert_eq!(
        w.request(3, Plan::Delay { wait_ms: 100 }).tick,
        Some(Duration::from_millis(100))
    );
    let effects = w.tick_at(START_MS + 100);
    assert_eq!(effects.outcomes.to_vec(), vec![forward(3)]);
    assert_eq!(effects.tick, Some(Duration::from_millis(200)));
}

#[test]
fn a_request_for_the_rate_limit_service_sends_its_checks_and_goes_on_with_the_answers() {
    let mut w = Worker::new();
    let effects = w.request(
        1,
        Plan::Rls {
            checks: 2,
            reserve_ms: None,
        },
    );
    assert!(effects.outcomes.is_empty());
    assert_eq!(effects.rls_checks.len(), 2);
    assert_eq!(
        effects.tick, None,
        "the idle tick comes before the deadline"
    );
    sent(&mut w.flow, &effects, 10);
    assert!(w.flow.awaits_rls_answer(10) && w.flow.awaits_rls_answer(11));
    assert!(w.answer(10, false).outcomes.is_empty(), "one answer of two");
    assert_eq!(w.answer(11, false).outcomes.to_vec(), vec![forward(1)]);
    assert!(!w.flow.awaits_rls_answer(11));
}

#[test]
fn an_over_limit_answer_refuses_and_gives_the_reserved_token_back() {
    let mut w = Worker::new();
    let effects = w.request(
        1,
        Plan::Rls {
            checks: 1,
            reserve_ms: Some(200),
        },
    );
    sent(&mut w.flow, &effects, 10);
    let effects = w.answer(10, true);
    assert_eq!(status_of(&effects, 1), Some(503));
    assert_eq!(w.reservation(1), Some(Reservation::Refunded));
}

#[test]
fn answers_with_a_reserved_token_hold_the_request_until_it_is_due() {
    let mut w = Worker::new();
    let effects = w.request(
        1,
        Plan::Rls {
            checks: 1,
            reserve_ms: Some(200),
        },
    );
    sent(&mut w.flow, &effects, 10);
    w.now += 50;
    let effects = w.answer(10, false);
    assert!(effects.outcomes.is_empty());
    assert_eq!(effects.tick, Some(Duration::from_millis(200)));
    assert_eq!(
        w.tick_at(START_MS + 250).outcomes.to_vec(),
        vec![forward(1)]
    );
}

#[test]
fn a_check_that_cannot_be_sent_counts_as_failed_at_once() {
    let mut w = Worker::new();
    let effects = w.request(
        1,
        Plan::Rls {
            checks: 2,
            reserve_ms: None,
        },
    );
    let (first, second) = (effects.rls_checks[0].0, effects.rls_checks[1].0);
    assert!(w
        .flow
        .rls_unsent(&mut w.vm, first, w.now)
        .outcomes
        .is_empty());
    let effects = w.flow.rls_unsent(&mut w.vm, second, w.now);
    assert_eq!(
        effects.outcomes.to_vec(),
        vec![forward(1)],
        "failure_mode_deny off"
    );
}

#[test]
fn an_answer_never_delivered_counts_as_failed_at_the_deadline() {
    let mut w = Worker::new();
    let effects = w.request(
        1,
        Plan::Rls {
            checks: 1,
            reserve_ms: None,
        },
    );
    sent(&mut w.flow, &effects, 10);
    assert!(w
        .tick_at(START_MS + RLS_DEADLINE_MS - 1)
        .outcomes
        .is_empty());
    assert_eq!(
        w.tick_at(START_MS + RLS_DEADLINE_MS).outcomes.to_vec(),
        vec![forward(1)]
    );
    assert!(!w.flow.awaits_rls_answer(10));
    assert!(
        w.answer(10, true).outcomes.is_empty(),
        "a late answer is ignored"
    );
}

#[test]
fn a_request_needing_keys_queues_one_fetch_for_the_tick_and_goes_on_when_they_arrive() {
    let mut w = Worker::new();
    let effects = w.request(1, keys_then(Plan::Allow));
    assert!(effects.outcomes.is_empty());
    assert_eq!(effects.tick, Some(DISPATCH_TICK));
    assert!(w.request(2, keys_then(Plan::Allow)).outcomes.is_empty());
    w.dispatch_fetch(7);
    assert_eq!(w.flow.fetch_of(7), Some(PROVIDER));
    let effects = w.fetch_ended(FetchEnd::Fetched);
    assert_eq!(effects.outcomes.to_vec(), vec![forward(1), forward(2)]);
    assert_eq!(w.vm.given_back, vec![(PROVIDER, FetchEnd::Fetched)]);
    assert_eq!(w.flow.fetch_of(7), None);
    assert!(!w.vm.shared.borrow().leases[PROVIDER].busy(w.now));
}

#[test]
fn a_failed_fetch_answers_the_waiting_requests_503() {
    let mut w = Worker::new();
    w.request(1, keys_then(Plan::Allow));
    w.dispatch_fetch(7);
    let effects = w.fetch_ended(FetchEnd::Failed);
    assert_eq!(status_of(&effects, 1), Some(503));
    assert_eq!(
        status_of(&w.request(2, keys_then(Plan::Allow)), 2),
        Some(503),
        "backing off: no fetch, no wait"
    );
}

#[test]
fn a_fetch_that_cannot_be_sent_answers_503_in_the_same_tick() {
    let mut w = Worker::new();
    w.request(1, keys_then(Plan::Allow));
    let effects = w.tick_at(w.now + 1);
    assert_eq!(effects.fetches.len(), 1);
    let effects = w.fetch_ended(FetchEnd::Failed);
    assert_eq!(status_of(&effects, 1), Some(503));
}

#[test]
fn an_unanswered_fetch_counts_failed_at_its_deadline_and_a_new_one_can_start() {
    let mut w = Worker::new();
    w.request(1, keys_then(Plan::Allow));
    w.dispatch_fetch(7);
    let lease_end = START_MS + FETCH_TIMEOUT_MS + LEASE_MARGIN_MS;
    assert!(w.tick_at(lease_end - 1).outcomes.is_empty());
    let effects = w.tick_at(lease_end);
    assert_eq!(w.vm.given_back, vec![(PROVIDER, FetchEnd::Unanswered)]);
    assert_eq!(
        status_of(&effects, 1),
        Some(503),
        "backing off after the failure"
    );
    assert_eq!(w.flow.fetch_of(7), None, "a late answer is not taken");
    // After the back-off a new request starts a new fetch.
    let backoff_end = w.vm.shared.borrow().leases[PROVIDER].backoff_until_ms();
    w.now = backoff_end;
    assert!(w.request(2, keys_then(Plan::Allow)).outcomes.is_empty());
    assert_eq!(w.tick_at(backoff_end + 1).fetches.len(), 1);
}

#[test]
fn a_request_waits_for_another_workers_fetch_and_adopts_its_keys_on_a_tick() {
    let shared = Shared::new(1);
    let mut a = Worker::sharing(0, shared.clone());
    let mut b = Worker::sharing(1, shared);
    a.request(1, keys_then(Plan::Allow));
    let effects = b.request(1, keys_then(Plan::Allow));
    assert!(effects.outcomes.is_empty(), "waits for a's fetch");
    assert!(
        b.tick_at(START_MS + 1).fetches.is_empty(),
        "b fetches nothing"
    );
    a.dispatch_fetch(7);
    a.fetch_ended(FetchEnd::Fetched);
    b.vm.adopt_shared_keys(PROVIDER); // the adapter's tick reads shared data first
    assert_eq!(b.tick_at(START_MS + 11).outcomes.to_vec(), vec![forward(1)]);
}

#[test]
fn a_request_waiting_for_keys_past_its_deadline_gets_503() {
    let shared = Shared::new(1);
    let mut a = Worker::sharing(0, shared.clone());
    let mut b = Worker::sharing(1, shared);
    a.request(1, keys_then(Plan::Allow));
    a.dispatch_fetch(7); // and never answered
    b.request(1, keys_then(Plan::Allow));
    assert!(b
        .tick_at(START_MS + KEYS_DEADLINE_MS - 1)
        .outcomes
        .is_empty());
    let effects = b.tick_at(START_MS + KEYS_DEADLINE_MS);
    assert_eq!(status_of(&effects, 1), Some(503));
}

#[test]
fn an_unknown_kid_waits_for_a_refetch_under_way_and_is_then_known() {
    let mut w = Worker::new();
    w.request(1, keys_then(Plan::Allow));
    w.dispatch_fetch(7);
    w.fetch_ended(FetchEnd::Fetched);
    // The identity provider rotates; a token with the new kid arrives.
    w.vm.shared.borrow_mut().idp_version = 2;
    w.now = START_MS + UNKNOWN_KID_REFETCH_INTERVAL_MS;
    let rotated = Plan::Keys {
        provider: PROVIDER,
        version: 2,
        then: Box::new(Plan::Allow),
    };
    assert!(w.request(2, rotated.clone()).outcomes.is_empty());
    let effects = w.tick_at(w.now + 1);
    assert_eq!(effects.fetches, vec![(PROVIDER, FetchReason::UnknownKid)]);
    w.flow.fetch_sent(PROVIDER, 8);
    // Another request with the new kid waits for the same refetch.
    assert!(w.request(3, rotated).outcomes.is_empty());
    assert_eq!(
        w.fetch_ended(FetchEnd::Fetched).outcomes.to_vec(),
        vec![forward(2), forward(3)]
    );
}

#[test]
fn a_stream_gone_while_waiting_for_keys_leaves_the_fetch_to_the_vm() {
    let mut w = Worker::new();
    w.request(1, keys_then(Plan::Allow));
    w.gone(1);
    w.dispatch_fetch(7);
    assert!(w.fetch_ended(FetchEnd::Fetched).outcomes.is_empty());
    assert!(w.flow.is_empty());
    assert_eq!(
        status_of(&w.request(2, keys_then(Plan::Allow)), 2),
        Some(200)
    );
}

#[test]
fn a_stream_gone_while_waiting_for_the_rate_limit_service_gives_its_token_back() {
    let mut w = Worker::new();
    let effects = w.request(
        1,
        Plan::Rls {
            checks: 1,
            reserve_ms: Some(200),
        },
    );
    sent(&mut w.flow, &effects, 10);
    w.gone(1);
    assert_eq!(w.reservation(1), Some(Reservation::Released));
    assert!(!w.flow.awaits_rls_answer(10));
    assert!(w.answer(10, false).outcomes.is_empty());
    assert!(w.flow.is_empty());
}

#[test]
fn a_stream_gone_while_delayed_gives_its_token_back_and_is_never_forwarded() {
    let mut w = Worker::new();
    w.request(1, Plan::Delay { wait_ms: 300 });
    w.gone(1);
    assert_eq!(w.reservation(1), Some(Reservation::Released));
    assert!(w.tick_at(START_MS + 300).outcomes.is_empty());
    assert!(w.flow.is_empty());
}

#[test]
fn a_stream_gone_once_decided_gives_nothing_back() {
    let mut w = Worker::new();
    w.request(1, Plan::Delay { wait_ms: 300 });
    w.tick_at(START_MS + 300);
    w.gone(1);
    assert_eq!(w.reservation(1), Some(Reservation::Held), "it was used");
    assert!(w.flow.is_empty());
}

#[test]
fn a_tick_refetches_stale_keys_and_asks_for_the_next_tick() {
    let mut w = Worker::new();
    let effects = w.tick_at(START_MS + 5);
    assert_eq!(effects.tick, Some(IDLE_TICK));
    w.now = START_MS + 10;
    let effects = w.flow.tick(&mut w.vm, w.now, &[PROVIDER]);
    assert_eq!(effects.fetches, vec![(PROVIDER, FetchReason::Refresh)]);
    assert_eq!(
        effects.tick,
        Some(IDLE_TICK),
        "sooner than the fetch's deadline"
    );
}

#[test]
fn waiting_for_keys_ticks_often_to_see_other_workers_results() {
    let shared = Shared::new(1);
    let mut a = Worker::sharing(0, shared.clone());
    let mut b = Worker::sharing(1, shared);
    a.request(1, keys_then(Plan::Allow));
    assert_eq!(
        b.request(1, keys_then(Plan::Allow)).tick,
        Some(WAITING_TICK)
    );
    assert_eq!(b.tick_at(START_MS + 10).tick, Some(WAITING_TICK));
}

#[test]
fn an_unknown_rate_limit_token_or_fetch_changes_nothing() {
    let mut w = Worker::new();
    w.request(1, Plan::Allow);
    assert_eq!(w.answer(99, false), Effects::default());
    assert_eq!(
        w.flow
            .fetch_ended(&mut w.vm, PROVIDER, FetchEnd::Fetched, w.now),
        Effects::default()
    );
    assert!(w.vm.given_back.is_empty());
}

#[test]
fn streams_are_walked_by_key_then_in_the_order_they_came() {
    let streams = vec![
        (5, StreamId(3)),
        (0, StreamId(9)),
        (5, StreamId(1)),
        (2, StreamId(7)),
        (0, StreamId(2)),
    ];
    let order: Vec<u32> = in_order(streams).map(|id| id.0).collect();
    assert_eq!(order, [2, 9, 7, 1, 3]);
    assert_eq!(in_order(Vec::new()).count(), 0);
}
