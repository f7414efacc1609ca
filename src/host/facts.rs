//! Reading request and exchange facts from Envoy: only what the configuration needs, in as few
//! calls into Envoy as possible (each costs about a microsecond).

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

use super::state::now_ms;
use crate::accesslog;
use crate::config::{Config, RequestReads};
use crate::ratelimit::key::ip_of_address;
use crate::request::Request;

pub fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

/// Envoy encodes integer attributes as 8 little-endian bytes.
fn number_property(path: &[&str]) -> Option<u64> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    <[u8; 8]>::try_from(bytes.as_slice())
        .ok()
        .map(u64::from_le_bytes)
}

fn source_address() -> Option<String> {
    let bytes = hostcalls::get_property(vec!["source", "address"])
        .ok()
        .flatten()?;
    String::from_utf8(bytes).ok()
}

/// Where request headers come from: one call each, or the whole map in one call. The map is read
/// whenever a configured header matters (a token, a key, a match): it is one call instead of
/// several, and only it shows every value of a repeated header. Envoy joins a repeated
/// `Authorization` itself, but hands a filter asking by name only the first of other repeated
/// headers; two different tokens must be refused, never one of them picked.
enum Headers {
    EachByName,
    Map(Vec<(String, String)>),
}

impl Headers {
    /// The first value, as `get_map_value` gives it.
    fn get(&self, name: &str) -> Option<String> {
        match self {
            Headers::EachByName => request_header(name),
            Headers::Map(map) => map.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()),
        }
    }

    /// Every value of a header, in the order the client sent them.
    fn all(&self, name: &str) -> Vec<String> {
        match self {
            Headers::EachByName => request_header(name).into_iter().collect(),
            Headers::Map(map) => map
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .collect(),
        }
    }
}

/// The request, as the decision needs it, and (when the access log is on) the request's side of
/// the log record, read before meshguard changes any header.
pub fn gather_request(config: &Config, start_ms: u64) -> (Request, Option<accesslog::Exchange>) {
    let reads: &RequestReads = &config.reads;
    let logging = config.access_log.enabled;
    let headers = if logging || !reads.headers.is_empty() {
        Headers::Map(hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default())
    } else {
        Headers::EachByName
    };
    let client_address = (reads.client_ip || logging).then(source_address).flatten();
    let path = headers.get(":path").unwrap_or_default();
    let method = (reads.method || logging)
        .then(|| headers.get(":method"))
        .flatten();
    let authority = (reads.authority || logging)
        .then(|| headers.get(":authority"))
        .flatten();
    let exchange = logging.then(|| accesslog::Exchange {
        start_ms,
        request_id: headers.get("x-request-id"),
        traceparent: headers.get("traceparent"),
        b3_trace_id: headers.get("x-b3-traceid"),
        method: method.clone().unwrap_or_default(),
        path: path.clone(),
        authority: authority.clone().unwrap_or_default(),
        client_address: client_address.clone(),
        // Headers meshguard itself writes are logged as they went upstream (read at the end).
        headers: config
            .access_log
            .request_headers
            .iter()
            .filter(|name| !accesslog::is_secret(name) && !config.output_headers.contains(name))
            .filter_map(|name| headers.get(name).map(|value| (name.clone(), value)))
            .collect(),
        ..accesslog::Exchange::default()
    });
    let request = Request {
        client_ip: reads
            .client_ip
            .then_some(client_address)
            .flatten()
            .map(|address| ip_of_address(&address).to_owned()),
        method: if reads.method {
            method.unwrap_or_default()
        } else {
            String::new()
        },
        path,
        authority: if reads.authority {
            authority.unwrap_or_default()
        } else {
            String::new()
        },
        headers: reads
            .headers
            .iter()
            .flat_map(|name| {
                headers
                    .all(name)
                    .into_iter()
                    .map(move |value| (name.clone(), value))
            })
            .collect(),
    };
    (request, exchange)
}

/// Completes the record at the end of the stream: the response's side, and the headers
/// meshguard wrote upstream.
pub fn finish_exchange(exchange: &mut accesslog::Exchange, config: &Config) {
    exchange.end_ms = now_ms();
    exchange.status = number_property(&["response", "code"]).or_else(|| {
        hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse().ok())
    });
    exchange.request_bytes = number_property(&["request", "total_size"]);
    exchange.response_bytes = number_property(&["response", "total_size"]);
    for name in &config.access_log.request_headers {
        if config.output_headers.contains(name) && !accesslog::is_secret(name) {
            if let Some(value) = request_header(name) {
                exchange.headers.push((name.clone(), value));
            }
        }
    }
}
