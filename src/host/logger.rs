//! meshguard's `log` backend: each record is one `proxy_log` call. The SDK's own logger (and its
//! panic hook) `unwrap` the host's answer, so a host that refused a line would trap the VM; a
//! line the host does not take is dropped instead.

use std::panic;

use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

struct HostLogger;

static LOGGER: HostLogger = HostLogger;

/// Installs the logger (once per VM; a second call changes nothing) at `info`; Envoy's own
/// level filters further.
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
        panic::set_hook(Box::new(|panic_info| {
            let _ = hostcalls::log(LogLevel::Critical, &panic_info.to_string());
        }));
    }
}

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let _ = hostcalls::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}
