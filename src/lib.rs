//! meshguard: JWT auth, traffic shaping and structured logging for Envoy, as one proxy-wasm
//! filter. The cores (`config`, `rules`, `auth`, `pipeline`, `flow`) are plain Rust, tested
//! natively; `host` is the only module that talks to Envoy through proxy-wasm.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod accesslog;
pub mod auth;
pub mod authz;
pub mod config;
pub mod flow;
pub mod hash;
pub mod headermap;
#[cfg(feature = "cli")]
pub mod import;
pub mod names;
pub mod pipeline;
pub mod proto;
pub mod ratelimit;
pub mod reply;
pub mod request;
pub mod rules;

#[cfg(target_arch = "wasm32")]
mod host;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    host::register();
}}
