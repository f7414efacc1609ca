//! The strict JSON reader for JOSE headers, claims and JWKS (duplicate members refused).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshguard::auth::json::parse_strict(data);
});
