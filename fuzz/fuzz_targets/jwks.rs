//! A JWKS document as an identity provider (or a broken one) serves it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshguard::auth::jwks::{parse_jwks, SymmetricKeys};

fuzz_target!(|data: &[u8]| {
    let _ = parse_jwks(data, SymmetricKeys::Allowed);
    let _ = parse_jwks(data, SymmetricKeys::Refused);
});
