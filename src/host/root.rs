//! The root context, one per VM: loads and validates the configuration, detects the host's
//! signature function, and drives background work on its tick.

use std::cell::RefCell;
use std::rc::Rc;

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use super::buckets;
use super::crypto::{detect_host_crypto, HostVerifier};
use super::http::{on_call_response, on_grpc_response, perform, ConfiguredStream, MeshguardHttp};
use super::jwks;
use super::state::{now_ms, VmState};
use crate::auth::portable::{self, HostCryptoMissing};
use crate::config;
use crate::flow;

pub struct MeshguardRoot {
    context_id: u32,
    state: Option<Rc<RefCell<VmState>>>,
    host_crypto: Option<bool>,
}

impl MeshguardRoot {
    pub fn new(context_id: u32) -> Self {
        MeshguardRoot {
            context_id,
            state: None,
            host_crypto: None,
        }
    }
}

/// The plugin is going away (Envoy deletes its root context, right after `on_done`): this VM's
/// leased rate-limit tokens go back now. Here rather than in `on_done`, so that the module need
/// not export `proxy_on_done`, which Envoy would otherwise enter for every stream too.
impl Drop for MeshguardRoot {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            if let Ok(mut state) = state.try_borrow_mut() {
                state.vm.buckets.end_leases(now_ms(), true);
            }
        }
    }
}

impl Context for MeshguardRoot {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Some(state) = &self.state {
            on_grpc_response(state, token_id, status_code, response_size, self.context_id);
        }
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(state) = &self.state {
            on_call_response(state, token_id, body_size, self.context_id);
        }
    }
}

impl RootContext for MeshguardRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // `hostcalls`, not the trait's helper: that one unwraps the host's status.
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match config::parse(&bytes) {
            Ok(config) => config,
            Err(err) => {
                // One line naming the JSON path and the reason; the last good config stays.
                error!("configuration refused: {err}");
                return false;
            }
        };
        let host_crypto = *self.host_crypto.get_or_insert_with(detect_host_crypto);
        info!(
            "configured {} providers, {} rules; signatures verified {}",
            config.providers.len(),
            config.rules.len(),
            match (host_crypto, portable::ECDSA_IN_WASM) {
                (true, _) => "by the host (Envoy verify_signature) where possible",
                (false, true) => "in Wasm (pure Rust); the host has no verify_signature",
                (false, false) => {
                    "in Wasm (pure Rust) but for ES256/ES384, which need the host's \
                     verify_signature: this host has none"
                }
            }
        );
        if !host_crypto {
            for missing in config.providers.iter().filter_map(HostCryptoMissing::of) {
                warn!("{missing}");
            }
        }
        if let Some(old) = &self.state {
            // The old configuration's leases end now: their tokens go back before it goes.
            if let Ok(mut old) = old.try_borrow_mut() {
                old.vm.buckets.end_leases(now_ms(), true);
            }
        }
        let buckets = match buckets::for_config(&config) {
            Ok(buckets) => buckets,
            Err(err) => {
                error!("configuration refused: {err}");
                return false;
            }
        };
        let state = VmState::new(config, HostVerifier { host_crypto }, buckets, now_ms());
        let _ = hostcalls::set_tick_period(flow::IDLE_TICK);
        self.state = Some(Rc::new(RefCell::new(state)));
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let now = now_ms();
        let effects = {
            let Ok(mut st) = state.try_borrow_mut() else {
                return;
            };
            let VmState { flow, vm } = &mut *st;
            let stale = jwks::sync_all(vm, now);
            vm.buckets.end_leases(now, false);
            let effects = flow.tick(vm, now, &stale);
            buckets::recheck_seed(&mut vm.buckets, now);
            vm.metrics.flush();
            effects
        };
        // Fetches go out from here, so that they are answered to the root context.
        perform(&state, effects, self.context_id, None, now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        match &self.state {
            Some(state) => Some(Box::new(MeshguardHttp::Configured(ConfiguredStream {
                context_id,
                state: state.clone(),
                start_ms: 0,
                exchange: None,
                export_pending: state
                    .try_borrow()
                    .map_or(true, |st| st.vm.config.access_log.filter_state),
            }))),
            None => Some(Box::new(MeshguardHttp::Unconfigured)),
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
