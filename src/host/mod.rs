//! The proxy-wasm adapter: the only code that calls `proxy_wasm`. It gathers request facts,
//! calls the pipeline, and carries out the decision: header changes, a local reply, or a pause
//! while signing keys are fetched.

mod buckets;
mod crypto;
mod facts;
mod http;
mod jwks;
mod metrics;
mod root;
mod seed;
mod state;

use proxy_wasm::types::LogLevel;

pub fn register() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(root::MeshguardRoot::new(context_id)));
}
