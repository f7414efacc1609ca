//! One structured record per request: who called, what was decided, and why. Built from plain
//! facts the host gathers; rendered as one JSON line. Secrets never reach it: credential headers
//! are dropped even when configured, the query is cut from the path, and no token is a field.

use std::rc::Rc;

use serde::{Serialize, Serializer};
use smallvec::SmallVec;

use crate::config::AccessLog;

/// Headers whose values are credentials: never logged, whatever `request_headers` says.
pub const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

pub fn is_secret(header: &str) -> bool {
    SECRET_HEADERS.contains(&header)
}

/// Bytes as log text: UTF-8 as it is; in a value that is not, every stray byte as `\xNN` and a
/// backslash as `\\`, so `caf\xe9` shows exactly what the client sent.
pub fn escaped(bytes: &[u8]) -> String {
    use std::fmt::Write;
    if let Ok(text) = std::str::from_utf8(bytes) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// How a request ended, for sampling and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allowed,
    Unauthenticated,
    Forbidden,
    RateLimited,
    Unavailable,
}

impl Decision {
    pub fn name(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Forbidden => "forbidden",
            Decision::RateLimited => "rate_limited",
            Decision::Unavailable => "unavailable",
        }
    }

    /// The decision a local reply's status stands for.
    pub fn of_status(status: u32) -> Decision {
        match status {
            401 => Decision::Unauthenticated,
            403 => Decision::Forbidden,
            429 => Decision::RateLimited,
            _ => Decision::Unavailable,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitEntry {
    pub policy: Rc<str>,
    /// `allowed`, `delayed`, `limited`, or `shadow_limited`.
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
}

/// What authorization concluded, when it did more than let a request through quietly: a
/// refusal, a dry run's would-be refusal, audit rules that held. Names rules and conditions,
/// never a claim value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct AuthzRecord {
    /// `denied`, `dry_run_denied` or `audited`.
    pub decision: &'static str,
    /// The rule that refused, or the first whose dry run would have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The condition that failed (`rules[2].when[0]: scopes`), when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// The caller: the token's `iss/sub`, or the mTLS peer's SPIFFE id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Every dry-run rule that would have refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dry_run_denied: Vec<String>,
    /// Audit rules that held.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<String>,
}

/// What meshguard decided, kept from the request phase to the log phase.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Verdict {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<Rc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Rc<str>>,
    /// `allowed`, `unauthenticated`, `forbidden`, `rate_limited`, `unavailable`.
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "SmallVec::is_empty")]
    pub rate_limits: SmallVec<[LimitEntry; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz: Option<AuthzRecord>,
}

/// Facts about the exchange, read from Envoy at the end of the stream.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    pub start_ms: u64,
    pub end_ms: u64,
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
    pub b3_trace_id: Option<String>,
    pub method: String,
    /// `:path` as Envoy holds it; the query is cut before logging.
    pub path: String,
    pub authority: String,
    pub status: Option<u64>,
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
    pub client_address: Option<String>,
    /// The configured `request_headers` present on the request (secrets already excluded).
    pub headers: Vec<(String, String)>,
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    authority: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u64>,
    duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_address: Option<&'a str>,
    #[serde(flatten)]
    verdict: &'a Verdict,
    #[serde(skip_serializing_if = "ByName::is_empty")]
    request_headers: ByName<'a>,
}

/// Headers by name, as a JSON object's keys are written (sorted), a repeated name keeping its
/// last value; borrowed, not copied. Kept in order as they are added, a handful at most (the
/// configured ones): a `BTreeMap` would add its own code and a stable sort to the module.
#[derive(Default)]
struct ByName<'a>(Vec<(&'a str, &'a str)>);

impl<'a> ByName<'a> {
    fn insert(&mut self, name: &'a str, value: &'a str) {
        match self.0.binary_search_by(|(n, _)| n.cmp(&name)) {
            Ok(at) => {
                if let Some(entry) = self.0.get_mut(at) {
                    entry.1 = value;
                }
            }
            Err(at) => self.0.insert(at, (name, value)),
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for ByName<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().copied())
    }
}

/// RFC 3339, UTC, milliseconds: `2026-11-25T01:02:03.456Z`.
pub fn rfc3339(unix_ms: u64) -> String {
    let days = unix_ms / 86_400_000;
    let ms_of_day = unix_ms % 86_400_000;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1_000 % 60,
        ms_of_day % 1_000
    )
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id_of(traceparent: &str) -> Option<&str> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Renders the record as one line of JSON.
pub fn render(exchange: &Exchange, verdict: &Verdict) -> String {
    let path = exchange
        .path
        .split_once('?')
        .map_or(exchange.path.as_str(), |(path, _)| path);
    let trace_id = exchange
        .traceparent
        .as_deref()
        .and_then(trace_id_of)
        .or(exchange.b3_trace_id.as_deref());
    let mut request_headers = ByName::default();
    for (name, value) in &exchange.headers {
        if !is_secret(name) {
            request_headers.insert(name, value);
        }
    }
    let record = Record {
        time: rfc3339(exchange.start_ms),
        request_id: exchange.request_id.as_deref(),
        trace_id,
        method: &exchange.method,
        path,
        authority: &exchange.authority,
        status: exchange.status,
        duration_ms: exchange.end_ms.saturating_sub(exchange.start_ms),
        request_bytes: exchange.request_bytes,
        response_bytes: exchange.response_bytes,
        client_address: exchange.client_address.as_deref(),
        verdict,
        request_headers,
    };
    // Room for a typical line up front: growing the buffer would copy it several times.
    let mut line = Vec::with_capacity(LINE_CAPACITY);
    match serde_json::to_writer(&mut line, &record) {
        // serde_json writes UTF-8 only.
        Ok(()) => String::from_utf8(line).unwrap_or_else(|_| String::from("{}")),
        Err(_) => String::from("{}"),
    }
}

/// Bytes reserved for a log line: most records fit.
const LINE_CAPACITY: usize = 768;

/// Whether this request is written: never when disabled; always when it was denied, limited or
/// answered 5xx; allowed ones at `sample_rate`, chosen by a hash of the request id (so every
/// log line of a sampled request agrees) or of the start time when there is none.
pub fn should_log(
    config: &AccessLog,
    verdict: &Verdict,
    status: Option<u64>,
    sample_key: &str,
) -> bool {
    if !config.enabled {
        return false;
    }
    let limited = verdict.rate_limits.iter().any(|l| l.decision != "allowed");
    // A dry run's would-be refusal and an audit rule's mark are why those rules exist: never
    // sampled away.
    if verdict.decision != "allowed"
        || limited
        || verdict.authz.is_some()
        || status.is_some_and(|s| s >= 500)
    {
        return true;
    }
    if config.sample_rate >= 1.0 {
        return true;
    }
    let hash = crate::hash::mixed(&[sample_key.as_bytes()]);
    config.sample_rate > 0.0 && (hash >> 11) as f64 / (1u64 << 53) as f64 <= config.sample_rate
}

#[cfg(test)]
mod tests;
