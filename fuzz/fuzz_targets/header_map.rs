//! Envoy's serialized header map as the host hands it over (any bytes: names and values that are
//! not UTF-8, counts and sizes that lie), decoded and turned into log text and decision text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshguard::accesslog::escaped;
use meshguard::headermap;
use meshguard::request::text_of;

fuzz_target!(|data: &[u8]| {
    for (name, value) in headermap::decode(data) {
        let _ = escaped(&name);
        let _ = text_of(&value);
        let _ = escaped(&value);
    }
});
