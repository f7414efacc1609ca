//! Remote JWKS through the proxy: one worker fetches (the one that wins the shared lease),
//! stores the document in shared data, and every worker's VM adopts it from there.

use std::time::Duration;

use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, Status};

use super::facts::header_value;
use super::state::{InFlightFetch, VmState, DISPATCH_TICK};
use crate::auth::jwks::MAX_JWKS_BYTES;
use crate::auth::remote::{decode_record, encode_record, FetchLease, FetchReason, LEASE_MARGIN_MS};
use crate::config::{KeySource, RemoteJwks};

fn remote_of(state: &VmState, provider: usize) -> Option<(String, RemoteJwks)> {
    let provider = state.config.providers.get(provider)?;
    match &provider.keys {
        KeySource::Remote(remote) => Some((provider.name.clone(), remote.clone())),
        KeySource::Local(_) => None,
    }
}

fn record_key(name: &str, remote: &RemoteJwks) -> String {
    format!("meshguard.jwks.{name}.{}", remote.uri)
}

fn lease_key(name: &str, remote: &RemoteJwks) -> String {
    format!("meshguard.jwks-lease.{name}.{}", remote.uri)
}

fn read_lease(key: &str) -> (FetchLease, Option<u32>) {
    match hostcalls::get_shared_data(key) {
        Ok((Some(bytes), cas)) => (FetchLease::decode(&bytes), cas),
        Ok((None, cas)) => (FetchLease::default(), cas),
        Err(_) => (FetchLease::default(), None),
    }
}

/// Adopts what other workers stored: newer keys and the current lease. Returns whether this
/// VM's view of the provider changed (keys or failure state).
pub fn sync_from_shared(state: &mut VmState, provider: usize) -> bool {
    let Some((name, remote)) = remote_of(state, provider) else {
        return false;
    };
    let record = hostcalls::get_shared_data(&record_key(&name, &remote))
        .ok()
        .and_then(|(bytes, _)| bytes);
    let (lease, _) = read_lease(&lease_key(&name, &remote));
    let Some(view) = state.keys.remote_mut(provider) else {
        return false;
    };
    let mut changed = view.lease != lease;
    view.lease = lease;
    if let Some((fetched_at_ms, body)) = record.as_deref().and_then(decode_record) {
        let had_keys = view.keys.is_some();
        match view.adopt(fetched_at_ms, body) {
            Ok(adoption) => changed |= adoption.changed || !had_keys,
            Err(err) => warn!("provider {name}: shared JWKS unusable: {err}"),
        }
    }
    changed
}

/// Lease updates lost to other workers' writes are retried this often (each retry re-reads).
const LEASE_CAS_ATTEMPTS: usize = 4;

/// Whether this VM has a fetch of the provider's keys queued or in flight.
pub fn in_flight(state: &VmState, provider: usize) -> bool {
    state.fetches.values().any(|f| f.provider == provider)
        || state.queued_fetches.iter().any(|(p, _)| *p == provider)
}

/// Takes the fetch lease if no worker is fetching and the lease allows it now, and queues the
/// fetch for the root context (`dispatch_queued`). Returns whether this VM will fetch.
pub fn start_fetch(state: &mut VmState, provider: usize, reason: FetchReason, now_ms: u64) -> bool {
    let Some((name, remote)) = remote_of(state, provider) else {
        return false;
    };
    if in_flight(state, provider) {
        return false;
    }
    let key = lease_key(&name, &remote);
    let timeout_ms = u64::try_from(remote.timeout.as_millis()).unwrap_or(u64::MAX);
    let mut taken = None;
    // A lost compare-and-swap means another worker just wrote the lease (most likely took it
    // for the same rotation): read it again, so this VM sees that fetch as under way and its
    // request waits for it rather than being refused for want of keys.
    for _ in 0..LEASE_CAS_ATTEMPTS {
        let (mut lease, mut cas) = read_lease(&key);
        if cas.is_none() {
            // Create the lease so that taking it below is a compare-and-swap.
            let _ = hostcalls::set_shared_data(&key, Some(&lease.encode()), None);
            (lease, cas) = read_lease(&key);
        }
        if let Some(view) = state.keys.remote_mut(provider) {
            view.lease = lease;
        }
        let Some(wanted) = lease.try_start(now_ms, timeout_ms, reason) else {
            return false;
        };
        match hostcalls::set_shared_data(&key, Some(&wanted.encode()), cas) {
            Ok(()) => {
                taken = Some(wanted);
                break;
            }
            Err(Status::CasMismatch) => continue,
            Err(status) => {
                warn!("provider {name}: cannot write the JWKS fetch lease: {status:?}");
                return false;
            }
        }
    }
    let Some(taken) = taken else {
        return false;
    };
    if let Some(view) = state.keys.remote_mut(provider) {
        view.lease = taken;
    }
    state.queued_fetches.push((provider, reason));
    let _ = hostcalls::set_tick_period(DISPATCH_TICK);
    true
}

/// Dispatches the queued fetches. Called from the root context's tick only, so each answer
/// comes back to the root context, which lives as long as the VM.
pub fn dispatch_queued(state: &mut VmState, now_ms: u64) {
    for (provider, reason) in std::mem::take(&mut state.queued_fetches) {
        dispatch(state, provider, reason, now_ms);
    }
}

fn dispatch(state: &mut VmState, provider: usize, reason: FetchReason, now_ms: u64) {
    let Some((name, remote)) = remote_of(state, provider) else {
        return;
    };
    let headers = vec![
        (":method", "GET"),
        (":path", remote.path.as_str()),
        (":authority", remote.authority.as_str()),
        ("accept", "application/json"),
    ];
    match hostcalls::dispatch_http_call(&remote.cluster, headers, None, vec![], remote.timeout) {
        Ok(token) => {
            info!(
                "provider {name}: fetching JWKS from {} ({reason:?})",
                remote.uri
            );
            state.metrics.increment("meshguard_jwks_fetches_total");
            let timeout_ms = u64::try_from(remote.timeout.as_millis()).unwrap_or(u64::MAX);
            let deadline_ms = now_ms
                .saturating_add(timeout_ms)
                .saturating_add(LEASE_MARGIN_MS);
            state.fetches.insert(
                token,
                InFlightFetch {
                    provider,
                    deadline_ms,
                },
            );
        }
        Err(status) => {
            warn!(
                "provider {name}: cannot call cluster {:?} for JWKS ({status:?}); is the cluster defined?",
                remote.cluster
            );
            record_outcome(state, provider, false, now_ms);
        }
    }
}

/// Counts as failed every fetch whose answer is overdue (its timeout plus `LEASE_MARGIN_MS`),
/// so that a lost answer never blocks the provider for good. Returns whether any was.
pub fn expire_fetches(state: &mut VmState, now_ms: u64) -> bool {
    let overdue: Vec<u32> = state
        .fetches
        .iter()
        .filter(|(_, fetch)| fetch.deadline_ms <= now_ms)
        .map(|(token, _)| *token)
        .collect();
    for token in &overdue {
        if let Some(fetch) = state.fetches.remove(token) {
            if let Some((name, _)) = remote_of(state, fetch.provider) {
                warn!("provider {name}: JWKS fetch unanswered past its deadline; counted failed");
            }
            record_outcome(state, fetch.provider, false, now_ms);
        }
    }
    !overdue.is_empty()
}

/// Whether `token` is one of this VM's JWKS fetches.
pub fn is_fetch(state: &VmState, token: u32) -> bool {
    state.fetches.contains_key(&token)
}

/// Handles a JWKS response (in whichever context received it). Returns the provider.
pub fn finish_fetch(
    state: &mut VmState,
    token: u32,
    body_size: usize,
    now_ms: u64,
) -> Option<usize> {
    let provider = state.fetches.remove(&token)?.provider;
    let (name, remote) = remote_of(state, provider)?;
    // As bytes: the IdP's reply may carry anything, and the SDK's `String` reader traps on it.
    let status = header_value(MapType::HttpCallResponseHeaders, ":status");
    let succeeded = match status.as_deref() {
        Some(b"200") if body_size <= MAX_JWKS_BYTES => {
            let body = hostcalls::get_buffer(
                proxy_wasm::types::BufferType::HttpCallResponseBody,
                0,
                body_size,
            )
            .ok()
            .flatten()
            .unwrap_or_default();
            match state
                .keys
                .remote_mut(provider)
                .map(|view| view.adopt(now_ms, &body))
            {
                Some(Ok(adoption)) => {
                    for reason in &adoption.skipped {
                        warn!(
                            "provider {name}: JWKS from {}: {reason}; key left out",
                            remote.uri
                        );
                    }
                    let record = encode_record(now_ms, &body);
                    if let Err(status) =
                        hostcalls::set_shared_data(&record_key(&name, &remote), Some(&record), None)
                    {
                        warn!("provider {name}: cannot share fetched JWKS: {status:?}");
                    }
                    info!("provider {name}: JWKS fetched from {}", remote.uri);
                    true
                }
                Some(Err(err)) => {
                    warn!(
                        "provider {name}: JWKS from {} refused: {err}; keeping the last good keys",
                        remote.uri
                    );
                    false
                }
                None => false,
            }
        }
        Some(b"200") => {
            warn!(
                "provider {name}: JWKS from {} is {body_size} bytes, over {MAX_JWKS_BYTES}",
                remote.uri
            );
            false
        }
        Some(other) => {
            warn!(
                "provider {name}: JWKS fetch from {} answered {}",
                remote.uri,
                crate::accesslog::escaped(other)
            );
            false
        }
        None => {
            warn!(
                "provider {name}: JWKS fetch from {} failed (timeout after {:?} or connection error)",
                remote.uri, remote.timeout
            );
            false
        }
    };
    record_outcome(state, provider, succeeded, now_ms);
    Some(provider)
}

fn record_outcome(state: &mut VmState, provider: usize, succeeded: bool, now_ms: u64) {
    if !succeeded {
        state
            .metrics
            .increment("meshguard_jwks_fetch_failures_total");
    }
    let Some((name, remote)) = remote_of(state, provider) else {
        return;
    };
    let key = lease_key(&name, &remote);
    for _ in 0..4 {
        let (lease, cas) = read_lease(&key);
        let done = lease.finished(succeeded, now_ms);
        match hostcalls::set_shared_data(&key, Some(&done.encode()), cas) {
            Ok(()) => {
                if let Some(view) = state.keys.remote_mut(provider) {
                    view.lease = done;
                }
                return;
            }
            Err(Status::CasMismatch) => continue,
            Err(_) => return,
        }
    }
}

/// Background work for one tick: adopt other workers' results, refresh stale keys.
pub fn on_tick(state: &mut VmState, now_ms: u64) -> bool {
    let mut changed = false;
    for provider in 0..state.config.providers.len() {
        let Some((_, remote)) = remote_of(state, provider) else {
            continue;
        };
        changed |= sync_from_shared(state, provider);
        let cache_ms = u64::try_from(remote.cache_duration.as_millis()).unwrap_or(u64::MAX);
        let stale = state
            .keys
            .remote(provider)
            .is_some_and(|view| view.is_stale(now_ms, cache_ms));
        let waited_on = !state.waiters.is_empty()
            && state
                .keys
                .remote(provider)
                .is_some_and(|view| view.keys.is_none());
        if stale {
            start_fetch(state, provider, FetchReason::Refresh, now_ms);
        } else if waited_on {
            // The worker holding the lease may have gone; take over once it expires.
            start_fetch(state, provider, FetchReason::FirstKeys, now_ms);
        }
    }
    changed
}

pub fn timeout_of(state: &VmState, provider: usize) -> Duration {
    remote_of(state, provider).map_or(Duration::from_secs(1), |(_, remote)| remote.timeout)
}
