//! One HTTP stream: gather the request, decide, carry out the decision.

use std::cell::RefCell;
use std::rc::Rc;

use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::facts::{finish_exchange, gather_request};
use super::jwks;
use super::state::{now_ms, Delayed, GlobalWait, VmState, Waiter, WAITING_TICK};
use crate::accesslog;
use crate::auth::error::AuthError;
use crate::auth::remote::LEASE_MARGIN_MS;
use crate::pipeline::{self, Allowed, Decision, Mutations, PendingGlobal};
use crate::ratelimit::{self, rls, GlobalAnswer};
use crate::reply::{self, LocalReply};
use crate::request::Request;

/// What to do with a stream once a decision is made.
pub enum StreamAction {
    Forward(Mutations),
    Reply(LocalReply),
    Wait,
}

/// Carries out an action on the current (effective) context. Called with no borrow of the
/// VM state held: resuming a stream can re-enter the VM.
pub fn carry_out(action: &StreamAction, resume: bool) -> Action {
    match action {
        StreamAction::Forward(mutations) => {
            for name in &mutations.remove {
                let _ = hostcalls::set_map_value(
                    proxy_wasm::types::MapType::HttpRequestHeaders,
                    name,
                    None,
                );
            }
            for (name, value) in &mutations.set {
                let _ = hostcalls::set_map_value(
                    proxy_wasm::types::MapType::HttpRequestHeaders,
                    name,
                    Some(value),
                );
            }
            if let Some(path) = &mutations.path {
                let _ = hostcalls::set_map_value(
                    proxy_wasm::types::MapType::HttpRequestHeaders,
                    ":path",
                    Some(path),
                );
            }
            if resume {
                let _ = hostcalls::resume_http_request();
            }
            Action::Continue
        }
        StreamAction::Reply(reply) => {
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
        StreamAction::Wait => Action::Pause,
    }
}

fn waiting_on_fetch(
    state: &VmState,
    needs: &[(usize, crate::auth::remote::FetchReason)],
    now_ms: u64,
) -> bool {
    needs.iter().any(|(provider, _)| {
        jwks::in_flight(state, *provider)
            || state
                .keys
                .remote(*provider)
                .is_some_and(|view| view.lease.busy(now_ms))
    })
}

/// Turns a decision into an action; a delayed request is parked until its token is due. The
/// decision is counted and kept for the stream's log record.
fn settle(state: &mut VmState, context_id: u32, decision: Decision, now: u64) -> StreamAction {
    if let Some(verdict) = pipeline::summarize(&state.config, &decision) {
        let shadow_limited = verdict
            .rate_limits
            .iter()
            .any(|l| l.decision == "shadow_limited");
        let counted = if shadow_limited && verdict.decision == "allowed" {
            "shadow_limited"
        } else {
            verdict.decision
        };
        state
            .metrics
            .count_request(verdict.rule.as_deref(), counted);
        if let Decision::Delay { wait_ms, .. } = &decision {
            state.metrics.record("meshguard_delay_wait_ms", *wait_ms);
        }
        state.verdicts.insert(context_id, verdict);
    }
    if let Decision::Allow(Allowed { mutations, .. })
    | Decision::Delay {
        allowed: Allowed { mutations, .. },
        ..
    } = &decision
    {
        if !mutations.response_headers.is_empty() {
            state
                .response_headers
                .insert(context_id, mutations.response_headers.clone());
        }
    }
    match decision {
        Decision::Allow(allowed) => StreamAction::Forward(allowed.mutations),
        Decision::Deny { reply, .. } => StreamAction::Reply(reply),
        Decision::Delay { wait_ms, allowed } => {
            state.delayed.push(Delayed {
                context_id,
                due_ms: now.saturating_add(wait_ms),
                mutations: allowed.mutations,
                limits: allowed.limits,
            });
            let _ = hostcalls::set_tick_period(state.tick_period(now));
            StreamAction::Wait
        }
        Decision::CheckGlobal(pending) => ask_rate_limit_service(state, context_id, pending, now),
        Decision::AwaitKeys(_) => StreamAction::Wait,
    }
}

/// Sends the request's checks to the rate-limit service; a call that cannot even be sent (no
/// such cluster) counts as unanswered at once.
fn ask_rate_limit_service(
    state: &mut VmState,
    context_id: u32,
    pending: PendingGlobal,
    now: u64,
) -> StreamAction {
    let mut answers = vec![None; pending.checks.len()];
    for (index, check) in pending.checks.iter().enumerate() {
        match hostcalls::dispatch_grpc_call(
            &check.cluster,
            rls::SERVICE,
            rls::METHOD,
            vec![],
            Some(&check.message),
            check.timeout,
        ) {
            Ok(token) => {
                state.metrics.increment("meshguard_rls_calls_total");
                state.global_calls.insert(token, (context_id, index));
            }
            Err(status) => {
                warn!(
                    "rate limit service: cannot call cluster {:?} ({status:?}); is it defined?",
                    check.cluster
                );
                state.metrics.increment("meshguard_rls_errors_total");
                if let Some(answer) = answers.get_mut(index) {
                    *answer = Some(GlobalAnswer::Failed);
                }
            }
        }
    }
    if answers.iter().all(Option::is_some) {
        let answers: Vec<GlobalAnswer> = answers.into_iter().flatten().collect();
        let config = state.config.clone();
        let decision = pipeline::after_global(&config, pending, &answers, &mut state.buckets);
        return settle(state, context_id, decision, now);
    }
    state
        .global
        .insert(context_id, GlobalWait { pending, answers });
    StreamAction::Wait
}

/// Handles a rate-limit service answer (in whichever context received it); once a request has
/// all its answers, decides and resumes it, then restores `current_context`.
pub fn on_grpc_response(
    state: &Rc<RefCell<VmState>>,
    token: u32,
    status_code: u32,
    size: usize,
    current_context: u32,
) {
    let now = now_ms();
    let decided = {
        let Ok(mut st) = state.try_borrow_mut() else {
            return;
        };
        let Some((context_id, index)) = st.global_calls.remove(&token) else {
            return;
        };
        let answer = if status_code == 0 {
            hostcalls::get_buffer(proxy_wasm::types::BufferType::GrpcReceiveBuffer, 0, size)
                .ok()
                .flatten()
                .and_then(|body| rls::decode_response(&body))
                .map_or(GlobalAnswer::Failed, GlobalAnswer::Answered)
        } else {
            warn!("rate limit service answered gRPC status {status_code}");
            GlobalAnswer::Failed
        };
        if answer == GlobalAnswer::Failed {
            st.metrics.increment("meshguard_rls_errors_total");
        }
        let complete = match st.global.get_mut(&context_id) {
            Some(wait) => {
                if let Some(slot) = wait.answers.get_mut(index) {
                    *slot = Some(answer);
                }
                wait.answers.iter().all(Option::is_some)
            }
            None => false,
        };
        match st.global.remove(&context_id).filter(|_| complete) {
            Some(wait) => {
                let answers: Vec<GlobalAnswer> = wait.answers.into_iter().flatten().collect();
                let config = st.config.clone();
                let decision =
                    pipeline::after_global(&config, wait.pending, &answers, &mut st.buckets);
                Some((context_id, settle(&mut st, context_id, decision, now)))
            }
            None => None,
        }
    };
    if let Some((context_id, action)) = decided {
        if !matches!(action, StreamAction::Wait)
            && hostcalls::set_effective_context(context_id).is_ok()
        {
            carry_out(&action, true);
            let _ = hostcalls::set_effective_context(current_context);
        }
    }
}

/// Decides for a new request; pauses it (as a waiter) when keys must be fetched first.
fn decide_new(state: &mut VmState, context_id: u32, request: Request, now: u64) -> StreamAction {
    let mut decision = state.decide(&request, now);
    if let Decision::AwaitKeys(needs) = &decision {
        // Another worker may have fetched them already.
        let mut changed = false;
        for (provider, _) in needs {
            changed |= jwks::sync_from_shared(state, *provider);
        }
        if changed {
            decision = state.decide(&request, now);
        }
    }
    let Decision::AwaitKeys(needs) = decision else {
        return settle(state, context_id, decision, now);
    };
    for (provider, reason) in &needs {
        jwks::start_fetch(state, *provider, *reason, now);
    }
    if !waiting_on_fetch(state, &needs, now) {
        // No fetch could start (a failure just recorded, or a refetch too soon): decide now.
        return match state.decide(&request, now) {
            Decision::AwaitKeys(_) => {
                StreamAction::Reply(reply::token_refused(AuthError::KeysUnavailable {
                    retry_after_s: 1,
                }))
            }
            other => settle(state, context_id, other, now),
        };
    }
    let longest_timeout = needs
        .iter()
        .map(|(provider, _)| jwks::timeout_of(state, *provider))
        .max()
        .unwrap_or_default();
    let timeout_ms = u64::try_from(longest_timeout.as_millis()).unwrap_or(u64::MAX);
    state.waiters.push(Waiter {
        context_id,
        request,
        deadline_ms: now
            .saturating_add(timeout_ms)
            .saturating_add(LEASE_MARGIN_MS + 500),
    });
    let _ = hostcalls::set_tick_period(WAITING_TICK);
    StreamAction::Wait
}

/// Re-decides every paused request (keys arrived, a fetch failed, or time passed) and resumes
/// those that are decided; then restores `current_context`.
pub fn resume_waiters(state: &Rc<RefCell<VmState>>, current_context: u32) {
    let now = now_ms();
    let actions: Vec<(u32, StreamAction)> = {
        let Ok(mut st) = state.try_borrow_mut() else {
            return;
        };
        let waiters = std::mem::take(&mut st.waiters);
        let mut still_waiting = Vec::new();
        let mut decided = Vec::new();
        for waiter in waiters {
            match st.decide(&waiter.request, now) {
                Decision::AwaitKeys(needs) => {
                    if now >= waiter.deadline_ms {
                        let reply =
                            reply::token_refused(AuthError::KeysUnavailable { retry_after_s: 1 });
                        decided.push((waiter.context_id, StreamAction::Reply(reply)));
                    } else {
                        if !waiting_on_fetch(&st, &needs, now) {
                            for (provider, reason) in &needs {
                                jwks::start_fetch(&mut st, *provider, *reason, now);
                            }
                        }
                        still_waiting.push(waiter);
                    }
                }
                other => {
                    let action = settle(&mut st, waiter.context_id, other, now);
                    if !matches!(action, StreamAction::Wait) {
                        decided.push((waiter.context_id, action));
                    }
                }
            }
        }
        st.waiters = still_waiting;
        decided
    };
    for (context_id, action) in &actions {
        if hostcalls::set_effective_context(*context_id).is_ok() {
            carry_out(action, true);
        }
    }
    if !actions.is_empty() {
        let _ = hostcalls::set_effective_context(current_context);
    }
}

/// Forwards the delayed requests whose tokens are now due; then restores `current_context`.
pub fn resume_delayed(state: &Rc<RefCell<VmState>>, current_context: u32) {
    let now = now_ms();
    let due: Vec<Delayed> = {
        let Ok(mut st) = state.try_borrow_mut() else {
            return;
        };
        let (due, later): (Vec<Delayed>, Vec<Delayed>) = std::mem::take(&mut st.delayed)
            .into_iter()
            .partition(|d| d.due_ms <= now);
        st.delayed = later;
        due
    };
    for delayed in &due {
        if hostcalls::set_effective_context(delayed.context_id).is_ok() {
            carry_out(&StreamAction::Forward(delayed.mutations.clone()), true);
        }
    }
    if !due.is_empty() {
        let _ = hostcalls::set_effective_context(current_context);
    }
}

/// Handles an HTTP call response if it is one of this VM's JWKS fetches.
pub fn on_call_response(
    state: &Rc<RefCell<VmState>>,
    token: u32,
    body_size: usize,
    current_context: u32,
) {
    let finished = match state.try_borrow_mut() {
        Ok(mut st) if jwks::is_fetch(&st, token) => {
            jwks::finish_fetch(&mut st, token, body_size, now_ms())
        }
        _ => None,
    };
    if finished.is_some() {
        resume_waiters(state, current_context);
    }
}

pub struct MeshguardHttp {
    pub context_id: u32,
    pub state: Rc<RefCell<VmState>>,
    pub start_ms: u64,
    /// The request's side of the access-log record, read with the request (log on only).
    pub exchange: Option<accesslog::Exchange>,
    /// Whether the decision is already in Envoy's filter state.
    pub exported: bool,
}

impl Context for MeshguardHttp {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        on_grpc_response(
            &self.state,
            token_id,
            status_code,
            response_size,
            self.context_id,
        );
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        on_call_response(&self.state, token_id, body_size, self.context_id);
    }
}

impl HttpContext for MeshguardHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "test-trap")]
        trap_when_asked();
        let config = match self.state.try_borrow() {
            Ok(st) => st.config.clone(),
            Err(_) => return carry_out(&StreamAction::Reply(reply::internal_error()), false),
        };
        // One clock read per request: the decision's "now" is the record's start.
        self.start_ms = now_ms();
        let (request, exchange) = gather_request(&config, self.start_ms);
        self.exchange = exchange;
        let action = match self.state.try_borrow_mut() {
            Ok(mut st) => decide_new(&mut st, self.context_id, request, self.start_ms),
            Err(_) => StreamAction::Reply(reply::internal_error()),
        };
        self.export_verdict();
        carry_out(&action, false)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.export_verdict();
        self.add_response_headers();
        Action::Continue
    }

    fn on_log(&mut self) {
        self.export_verdict();
        let (verdict, config) = match self.state.try_borrow_mut() {
            Ok(mut st) => (st.verdicts.remove(&self.context_id), st.config.clone()),
            Err(_) => return,
        };
        let Some(verdict) = verdict else {
            return; // the stream ended before a decision (client gone while waiting)
        };
        let Some(mut exchange) = self.exchange.take() else {
            return; // the access log is off
        };
        finish_exchange(&mut exchange, &config);
        let sample_key = exchange
            .request_id
            .clone()
            .unwrap_or_else(|| self.start_ms.to_string());
        if accesslog::should_log(&config.access_log, &verdict, exchange.status, &sample_key) {
            info!("{}", accesslog::render(&exchange, &verdict));
        }
    }
}

impl MeshguardHttp {
    /// Puts the decision in Envoy's filter state (`wasm.meshguard`), once, so Envoy's own access
    /// loggers can print it (`%FILTER_STATE(wasm.meshguard:PLAIN)%`).
    fn export_verdict(&mut self) {
        if self.exported {
            return;
        }
        let json = match self.state.try_borrow() {
            Ok(st) => st
                .verdicts
                .get(&self.context_id)
                .and_then(|v| serde_json::to_string(v).ok()),
            Err(_) => None,
        };
        if let Some(json) = json {
            let _ = hostcalls::set_property(vec!["meshguard"], Some(json.as_bytes()));
            self.exported = true;
        }
    }

    fn add_response_headers(&self) {
        let headers = match self.state.try_borrow_mut() {
            Ok(mut st) if !st.response_headers.is_empty() => {
                st.response_headers.remove(&self.context_id)
            }
            _ => None,
        };
        for (name, value) in headers.iter().flatten() {
            let _ = hostcalls::set_map_value(
                proxy_wasm::types::MapType::HttpResponseHeaders,
                name,
                Some(value),
            );
        }
    }
}

impl Drop for MeshguardHttp {
    fn drop(&mut self) {
        // A paused request whose client went away gives up its place (and a delayed one
        // its reserved tokens).
        if let Ok(mut st) = self.state.try_borrow_mut() {
            st.waiters
                .retain(|waiter| waiter.context_id != self.context_id);
            st.response_headers.remove(&self.context_id);
            st.verdicts.remove(&self.context_id);
            let config = st.config.clone();
            if let Some(index) = st
                .delayed
                .iter()
                .position(|d| d.context_id == self.context_id)
            {
                let delayed = st.delayed.swap_remove(index);
                ratelimit::release(&config, &delayed.limits, &mut st.buckets);
            }
            // A request waiting for the rate-limit service: its calls are forgotten (Envoy
            // cancels them with the stream) and the delay tokens it reserved are given back.
            if let Some(wait) = st.global.remove(&self.context_id) {
                ratelimit::release(&config, wait.pending.reservations(), &mut st.buckets);
            }
            st.global_calls
                .retain(|_, (context_id, _)| *context_id != self.context_id);
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

/// Serves streams when no valid configuration was ever loaded: fail closed.
pub struct Unconfigured;

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        carry_out(&StreamAction::Reply(reply::internal_error()), false)
    }
}
