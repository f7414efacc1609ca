//! One HTTP stream's callbacks: gather the request, hand it to the flow, carry out what the
//! flow says. `perform` turns the flow's effects into host calls, from any callback.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};

use super::facts::{self, finish_exchange, finish_status, gather_request, Headers};
use super::jwks;
use super::metrics::Counter;
use super::state::{now_ms, VmState};
use crate::accesslog;
use crate::auth::remote::FetchReason;
use crate::flow::{Effects, FetchEnd, Outcome, RlsCall, StreamId};
use crate::ratelimit::{rls, GlobalAnswer, GlobalCheck};
use crate::reply;

/// Bytes reserved for the decision exported to filter state: most fit.
const VERDICT_CAPACITY: usize = 256;

/// Carries out an outcome on the current (effective) context; `resume` a paused stream. Called
/// with no borrow of the VM state held: resuming a stream can re-enter the VM.
pub fn carry_out(outcome: &Outcome, resume: bool) -> Action {
    match outcome {
        Outcome::Forward(mutations) => {
            for name in &mutations.remove {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
            }
            for (name, value) in &mutations.set {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
            }
            for (name, value) in &mutations.add {
                let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value);
            }
            if let Some(path) = &mutations.path {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, ":path", Some(path));
            }
            if resume {
                let _ = hostcalls::resume_http_request();
            }
            Action::Continue
        }
        Outcome::Reply(reply) => {
            let headers: Vec<(&str, &str)> = reply
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            if let Err(status) =
                hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
            {
                warn!("cannot send local reply: {status:?}");
            }
            Action::Pause
        }
    }
}

/// Carries out the flow's effects from the callback of context `current`: sends the calls it
/// asks for (reporting each back, which may bring more effects), sets the tick, and forwards or
/// answers streams, resuming them, then restores `current`. The outcome of `opening`, the
/// stream whose request headers are being handled, is returned for the caller instead.
///
/// A request decided at once brings only its own outcome: then nothing here allocates (the
/// outcomes are inline, and the queue is used only when a call brings more effects).
pub fn perform(
    state: &Rc<RefCell<VmState>>,
    effects: Effects,
    current: u32,
    opening: Option<StreamId>,
    now_ms: u64,
) -> Option<Outcome> {
    set_tick(&effects);
    let Effects {
        mut outcomes,
        rls_checks,
        fetches,
        ..
    } = effects;
    let mut queue = VecDeque::new();
    send_calls(state, fetches, rls_checks, &mut queue, now_ms);
    while let Some(effects) = queue.pop_front() {
        outcomes.extend(effects.outcomes);
        send_calls(
            state,
            effects.fetches,
            effects.rls_checks,
            &mut queue,
            now_ms,
        );
    }
    // Once every request of this event is decided, those a call brought included: a lease
    // taken or kept ends on a tick (asked for only if sooner than the ticks set above).
    wake_for_leases(state, now_ms);
    let mut own = None;
    let mut switched = false;
    for (id, outcome) in outcomes {
        if Some(id) == opening {
            own = Some(outcome);
        } else if hostcalls::set_effective_context(id.0).is_ok() {
            switched = true;
            carry_out(&outcome, true);
        }
    }
    if switched {
        let _ = hostcalls::set_effective_context(current);
    }
    own
}

/// Sets a tick by the earliest end of this VM's leases, unless one is due by then already.
fn wake_for_leases(state: &Rc<RefCell<VmState>>, now_ms: u64) {
    let mut effects = Effects::default();
    if let Ok(mut st) = state.try_borrow_mut() {
        let VmState { flow, vm } = &mut *st;
        if let Some(end_ms) = vm.buckets.next_lease_end_ms() {
            flow.wake_by(end_ms, now_ms, &mut effects);
        }
    }
    set_tick(&effects);
}

/// Sends the key fetches and rate-limit checks the flow asked for, reporting each back; what
/// that brings goes to `queue`.
fn send_calls(
    state: &Rc<RefCell<VmState>>,
    fetches: Vec<(usize, FetchReason)>,
    rls_checks: Vec<(RlsCall, GlobalCheck)>,
    queue: &mut VecDeque<Effects>,
    now_ms: u64,
) {
    for (provider, reason) in fetches {
        let Ok(mut st) = state.try_borrow_mut() else {
            continue; // the fetch's deadline ends it
        };
        let VmState { flow, vm } = &mut *st;
        match jwks::dispatch(vm, provider, reason) {
            Some(token) => flow.fetch_sent(provider, token),
            None => receive(
                flow.fetch_ended(vm, provider, FetchEnd::Failed, now_ms),
                queue,
            ),
        }
    }
    for (call, check) in rls_checks {
        let Ok(mut st) = state.try_borrow_mut() else {
            continue; // the stream's deadline ends its wait
        };
        let VmState { flow, vm } = &mut *st;
        match hostcalls::dispatch_grpc_call(
            &check.cluster,
            rls::SERVICE,
            rls::METHOD,
            vec![],
            Some(&check.message),
            check.timeout,
        ) {
            Ok(token) => {
                vm.metrics.count(Counter::RlsCalls, 1);
                flow.rls_sent(call, token);
            }
            Err(status) => {
                warn!(
                    "rate limit service: cannot call cluster {:?} ({status:?}); is it defined?",
                    check.cluster
                );
                vm.metrics.count(Counter::RlsErrors, 1);
                receive(flow.rls_unsent(vm, call, now_ms), queue);
            }
        }
    }
}

/// Sets the tick as soon as the flow asks: it asks again only for a sooner one.
fn set_tick(effects: &Effects) {
    if let Some(period) = effects.tick {
        let _ = hostcalls::set_tick_period(period);
    }
}

/// Queues effects a call brought, setting their tick at once.
fn receive(effects: Effects, queue: &mut VecDeque<Effects>) {
    set_tick(&effects);
    queue.push_back(effects);
}

/// Handles a rate-limit service answer (in whichever context received it).
pub fn on_grpc_response(
    state: &Rc<RefCell<VmState>>,
    token: u32,
    status_code: u32,
    size: usize,
    current_context: u32,
) {
    let now = now_ms();
    let effects = {
        let Ok(mut st) = state.try_borrow_mut() else {
            return;
        };
        let VmState { flow, vm } = &mut *st;
        if !flow.awaits_rls_answer(token) {
            return;
        }
        let answer = if status_code == 0 {
            hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
                .ok()
                .flatten()
                .and_then(|body| rls::decode_response(&body))
                .map_or(GlobalAnswer::Failed, GlobalAnswer::Answered)
        } else {
            warn!("rate limit service answered gRPC status {status_code}");
            GlobalAnswer::Failed
        };
        if answer == GlobalAnswer::Failed {
            vm.metrics.count(Counter::RlsErrors, 1);
        }
        flow.rls_answered(vm, token, answer, now)
    };
    perform(state, effects, current_context, None, now);
}

/// Handles an HTTP call response if it is one of this VM's JWKS fetches.
pub fn on_call_response(
    state: &Rc<RefCell<VmState>>,
    token: u32,
    body_size: usize,
    current_context: u32,
) {
    let now = now_ms();
    let effects = {
        let Ok(mut st) = state.try_borrow_mut() else {
            return;
        };
        let VmState { flow, vm } = &mut *st;
        let Some(provider) = flow.fetch_of(token) else {
            return;
        };
        let end = jwks::finish_fetch(vm, provider, body_size, now);
        flow.fetch_ended(vm, provider, end, now)
    };
    perform(state, effects, current_context, None, now);
}

/// Every stream's context: one type for both cases, because the SDK instantiates all of its
/// `Context` and `HttpContext` default methods for each type that implements them (wasm-opt
/// folds most of the copies; a second type still cost 563 bytes of the module).
pub enum MeshguardHttp {
    Configured(ConfiguredStream),
    /// No valid configuration was ever loaded: fail closed.
    Unconfigured,
}

impl Context for MeshguardHttp {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let MeshguardHttp::Configured(stream) = self {
            on_grpc_response(
                &stream.state,
                token_id,
                status_code,
                response_size,
                stream.context_id,
            );
        }
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let MeshguardHttp::Configured(stream) = self {
            on_call_response(&stream.state, token_id, body_size, stream.context_id);
        }
    }
}

impl HttpContext for MeshguardHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self {
            MeshguardHttp::Configured(stream) => stream.on_request_headers(),
            MeshguardHttp::Unconfigured => {
                carry_out(&Outcome::Reply(reply::internal_error()), false)
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let MeshguardHttp::Configured(stream) = self {
            stream.export_verdict();
            stream.add_response_headers();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let MeshguardHttp::Configured(stream) = self {
            stream.on_log();
        }
    }
}

/// A stream served with a configuration (the host's side of it; the flow keeps its state).
pub struct ConfiguredStream {
    pub context_id: u32,
    pub state: Rc<RefCell<VmState>>,
    pub start_ms: u64,
    /// The request's side of the access-log record, read with the request (log on only).
    pub exchange: Option<accesslog::Exchange>,
    /// Whether the decision still has to go to Envoy's filter state: set when the stream opens
    /// if `access_log.filter_state` asks for the export, cleared once it is done.
    pub export_pending: bool,
}

impl ConfiguredStream {
    fn on_request_headers(&mut self) -> Action {
        #[cfg(feature = "test-trap")]
        trap_when_asked();
        let refused = || carry_out(&Outcome::Reply(reply::internal_error()), false);
        let Ok(config) = self.state.try_borrow().map(|st| st.vm.config.clone()) else {
            return refused();
        };
        // One clock read per request: the decision's "now" is the record's start.
        self.start_ms = now_ms();
        let headers = Headers::for_request(&config);
        let (request, exchange) = gather_request(&config, &headers, self.start_ms);
        self.exchange = exchange;
        let id = StreamId(self.context_id);
        let effects = match self.state.try_borrow_mut() {
            Ok(mut st) => {
                let VmState { flow, vm } = &mut *st;
                flow.request(vm, id, request, self.start_ms)
            }
            Err(_) => return refused(),
        };
        let outcome = perform(
            &self.state,
            effects,
            self.context_id,
            Some(id),
            self.start_ms,
        );
        self.export_verdict();
        match outcome {
            Some(outcome) => carry_out(&outcome, false),
            None => Action::Pause,
        }
    }

    fn on_log(&mut self) {
        self.export_verdict();
        let Some(mut exchange) = self.exchange.take() else {
            return; // the access log is off
        };
        let Ok(st) = self.state.try_borrow() else {
            return;
        };
        let Some(verdict) = st.flow.verdict(StreamId(self.context_id)) else {
            return; // the stream ended before a decision (client gone while waiting)
        };
        let config = &st.vm.config;
        finish_status(&mut exchange);
        let sample_key = exchange
            .request_id
            .clone()
            .unwrap_or_else(|| self.start_ms.to_string());
        if accesslog::should_log(&config.access_log, verdict, exchange.status, &sample_key) {
            finish_exchange(&mut exchange, config);
            // Straight to Envoy: through the `log` crate the SDK would copy the line once more
            // (and unwrap the host's status).
            let _ = hostcalls::log(LogLevel::Info, &accesslog::render(&exchange, verdict));
        }
    }

    /// Puts the decision in Envoy's filter state (`wasm.meshguard`), once, so Envoy's own access
    /// loggers can print it (`%FILTER_STATE(wasm.meshguard:PLAIN)%`).
    fn export_verdict(&mut self) {
        if !self.export_pending {
            return;
        }
        let json = match self.state.try_borrow() {
            Ok(st) => st.flow.verdict(StreamId(self.context_id)).and_then(|v| {
                // Room for a typical decision up front: growing would copy it several times.
                let mut json = Vec::with_capacity(VERDICT_CAPACITY);
                serde_json::to_writer(&mut json, v).ok().map(|()| json)
            }),
            Err(_) => None,
        };
        if let Some(json) = json {
            let _ = facts::set_property(b"meshguard", &json);
            self.export_pending = false;
        }
    }

    fn add_response_headers(&self) {
        let headers = match self.state.try_borrow() {
            Ok(st) => st.flow.response_headers(StreamId(self.context_id)).to_vec(),
            Err(_) => return,
        };
        for (name, value) in &headers {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
        }
    }
}

impl Drop for ConfiguredStream {
    fn drop(&mut self) {
        // The stream's one exit: what it held goes, and tokens it reserved go back.
        if let Ok(mut st) = self.state.try_borrow_mut() {
            let VmState { flow, vm } = &mut *st;
            flow.stream_gone(vm, StreamId(self.context_id));
        }
    }
}

/// Test-only build (feature `test-trap`): a request carrying `x-meshguard-test-trap` makes the
/// filter panic, which aborts (panic = "abort") and traps the VM, as a bug would. The tests use
/// it to show what Envoy's `failure_policy` (Istio's `failStrategy`) does then.
#[cfg(feature = "test-trap")]
#[allow(clippy::panic)] // the one deliberate panic, in a build that is never shipped
fn trap_when_asked() {
    if super::facts::request_header("x-meshguard-test-trap").is_some() {
        panic!("x-meshguard-test-trap: trapping as asked (test-trap build)");
    }
}
