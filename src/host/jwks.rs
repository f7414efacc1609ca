//! Remote JWKS through the proxy: one worker fetches (the one that wins the shared lease),
//! stores the document in shared data, and every worker's VM adopts it from there. When to
//! fetch and how long to wait is the flow's (`crate::flow`); this moves the bytes.

use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, Status};

use super::facts::header_value;
use super::metrics::Counter;
use super::state::HostVm;
use crate::auth::jwks::MAX_JWKS_BYTES;
use crate::auth::remote::{decode_record, encode_record, FetchLease, FetchReason};
use crate::config::{KeySource, RemoteJwks};
use crate::flow::{FetchEnd, Lease};

fn remote_of(vm: &HostVm, provider: usize) -> Option<(String, RemoteJwks)> {
    let provider = vm.config.providers.get(provider)?;
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
pub fn sync_from_shared(vm: &mut HostVm, provider: usize) -> bool {
    let Some((name, remote)) = remote_of(vm, provider) else {
        return false;
    };
    let record = hostcalls::get_shared_data(&record_key(&name, &remote))
        .ok()
        .and_then(|(bytes, _)| bytes);
    let (lease, _) = read_lease(&lease_key(&name, &remote));
    let Some(view) = vm.keys.remote_mut(provider) else {
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

/// Takes the provider's fetch lease if no worker is fetching and the lease allows a fetch now.
/// The flow queues the fetch for the root context (`dispatch`).
pub fn take_lease(
    vm: &mut HostVm,
    provider: usize,
    reason: FetchReason,
    now_ms: u64,
) -> Option<Lease> {
    let (name, remote) = remote_of(vm, provider)?;
    let key = lease_key(&name, &remote);
    let timeout_ms = u64::try_from(remote.timeout.as_millis()).unwrap_or(u64::MAX);
    // A lost compare-and-swap means another worker just wrote the lease (most likely took it
    // for the same key rotation): read it again, so this VM sees that fetch as under way and
    // its request waits for it rather than being refused for want of keys.
    for _ in 0..LEASE_CAS_ATTEMPTS {
        let (mut lease, mut cas) = read_lease(&key);
        if cas.is_none() {
            // Create the lease so that taking it below is a compare-and-swap.
            let _ = hostcalls::set_shared_data(&key, Some(&lease.encode()), None);
            (lease, cas) = read_lease(&key);
        }
        if let Some(view) = vm.keys.remote_mut(provider) {
            view.lease = lease;
        }
        let wanted = lease.try_start(now_ms, timeout_ms, reason)?;
        match hostcalls::set_shared_data(&key, Some(&wanted.encode()), cas) {
            Ok(()) => return Some(adopt_taken(vm, provider, wanted)),
            Err(Status::CasMismatch) => continue,
            Err(status) => {
                warn!("provider {name}: cannot write the JWKS fetch lease: {status:?}");
                return None;
            }
        }
    }
    None
}

fn adopt_taken(vm: &mut HostVm, provider: usize, taken: FetchLease) -> Lease {
    if let Some(view) = vm.keys.remote_mut(provider) {
        view.lease = taken;
    }
    Lease {
        started_ms: taken.last_started_ms,
        until_ms: taken.busy_until_ms,
    }
}

/// Sends a fetch of the provider's keys. Called from the root context's tick only, so that its
/// answer comes back to the root context, which lives as long as the VM. `None` if it could
/// not be sent.
pub fn dispatch(vm: &mut HostVm, provider: usize, reason: FetchReason) -> Option<u32> {
    let (name, remote) = remote_of(vm, provider)?;
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
            vm.metrics.count(Counter::JwksFetches, 1);
            Some(token)
        }
        Err(status) => {
            warn!(
                "provider {name}: cannot call cluster {:?} for JWKS ({status:?}); is the cluster defined?",
                remote.cluster
            );
            None
        }
    }
}

/// Reads the answer to the provider's fetch (in whichever context received it), and adopts
/// and shares the keys it brings.
pub fn finish_fetch(vm: &mut HostVm, provider: usize, body_size: usize, now_ms: u64) -> FetchEnd {
    let Some((name, remote)) = remote_of(vm, provider) else {
        return FetchEnd::Failed;
    };
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
            match vm
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
                "provider {name}: JWKS fetch from {} failed (timeout after {} or connection error)",
                remote.uri,
                crate::config::as_debug(remote.timeout)
            );
            false
        }
    };
    if succeeded {
        FetchEnd::Fetched
    } else {
        FetchEnd::Failed
    }
}

/// Records how this VM's fetch ended in the shared lease, unless another worker took the lease
/// over since (it expired): that worker's fetch is under way, and must not be cut short.
pub fn give_back_lease(vm: &mut HostVm, provider: usize, taken: Lease, end: FetchEnd, now_ms: u64) {
    let Some((name, remote)) = remote_of(vm, provider) else {
        return;
    };
    if end == FetchEnd::Unanswered {
        warn!("provider {name}: JWKS fetch unanswered past its deadline; counted failed");
    }
    if end != FetchEnd::Fetched {
        vm.metrics.count(Counter::JwksFetchFailures, 1);
    }
    let key = lease_key(&name, &remote);
    for _ in 0..LEASE_CAS_ATTEMPTS {
        let (lease, cas) = read_lease(&key);
        if lease.last_started_ms != taken.started_ms {
            return;
        }
        let done = lease.finished(end == FetchEnd::Fetched, now_ms);
        match hostcalls::set_shared_data(&key, Some(&done.encode()), cas) {
            Ok(()) => {
                if let Some(view) = vm.keys.remote_mut(provider) {
                    view.lease = done;
                }
                return;
            }
            Err(Status::CasMismatch) => continue,
            Err(_) => return,
        }
    }
}

/// A tick's look at shared data: adopts other workers' keys and leases, and returns the
/// providers whose keys are older than their `cache_duration`.
pub fn sync_all(vm: &mut HostVm, now_ms: u64) -> Vec<usize> {
    let mut stale = Vec::new();
    for provider in 0..vm.config.providers.len() {
        let Some((_, remote)) = remote_of(vm, provider) else {
            continue;
        };
        sync_from_shared(vm, provider);
        let cache_ms = u64::try_from(remote.cache_duration.as_millis()).unwrap_or(u64::MAX);
        if vm
            .keys
            .remote(provider)
            .is_some_and(|view| view.is_stale(now_ms, cache_ms))
        {
            stale.push(provider);
        }
    }
    stale
}

pub fn timeout_ms(vm: &HostVm, provider: usize) -> u64 {
    remote_of(vm, provider).map_or(1_000, |(_, remote)| {
        u64::try_from(remote.timeout.as_millis()).unwrap_or(u64::MAX)
    })
}
