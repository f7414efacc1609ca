//! A rate-limit service's gRPC reply (RateLimitResponse protobuf), as a broken RLS may send it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshguard::ratelimit::rls::decode_response(data);
});
