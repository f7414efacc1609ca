//! A bearer token as a client sends it: splitting, base64url, the JOSE header and claims.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = meshguard::auth::jws::parse(text);
        let _ = meshguard::auth::b64::decode(text);
    }
});
