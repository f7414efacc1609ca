//! The pluginConfig, as Envoy or Istio hands it to the filter.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshguard::config::parse(data);
});
