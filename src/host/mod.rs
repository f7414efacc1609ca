//! The proxy-wasm adapter: the only code that calls `proxy_wasm`. It gathers facts (request
//! headers, call answers, the time), hands them to the flow (`crate::flow`) as events, and turns
//! the flow's effects into host calls: header changes, a local reply, resuming a paused stream,
//! sending a rate-limit check or a key fetch, setting the tick.

mod buckets;
mod crypto;
mod facts;
mod http;
mod jwks;
mod logger;
mod metrics;
mod root;
mod seed;
mod state;

pub fn register() {
    logger::install();
    proxy_wasm::set_root_context(|context_id| Box::new(root::MeshguardRoot::new(context_id)));
}
