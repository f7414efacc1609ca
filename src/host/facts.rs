//! Reading request and exchange facts from Envoy: only what the configuration needs at request
//! time, and what the access log needs at the end of the stream.

use proxy_wasm::hostcalls;

use super::state::now_ms;
use crate::accesslog;
use crate::config::RequestReads;
use crate::ratelimit::key::ip_of_address;
use crate::request::Request;

pub fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(proxy_wasm::types::MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

fn string_property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

/// What the access log needs, read at the end of the stream.
pub fn gather_exchange(start_ms: u64, configured: &[String]) -> accesslog::Exchange {
    accesslog::Exchange {
        start_ms,
        end_ms: now_ms(),
        request_id: request_header("x-request-id"),
        traceparent: request_header("traceparent"),
        b3_trace_id: request_header("x-b3-traceid"),
        method: request_header(":method").unwrap_or_default(),
        path: request_header(":path").unwrap_or_default(),
        authority: request_header(":authority").unwrap_or_default(),
        status: number_property(&["response", "code"]).or_else(|| {
            hostcalls::get_map_value(proxy_wasm::types::MapType::HttpResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| s.parse().ok())
        }),
        request_bytes: number_property(&["request", "total_size"]),
        response_bytes: number_property(&["response", "total_size"]),
        client_address: string_property(&["source", "address"]),
        headers: configured
            .iter()
            .filter(|name| !accesslog::is_secret(name))
            .filter_map(|name| request_header(name).map(|value| (name.clone(), value)))
            .collect(),
    }
}

/// Envoy encodes integer attributes as 8 little-endian bytes.
fn number_property(path: &[&str]) -> Option<u64> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    <[u8; 8]>::try_from(bytes.as_slice())
        .ok()
        .map(u64::from_le_bytes)
}

/// Fetches only what the configuration reads (see `RequestReads`).
pub fn gather_request(reads: &RequestReads) -> Request {
    let headers = reads
        .headers
        .iter()
        .filter_map(|name| request_header(name).map(|value| (name.clone(), value)))
        .collect();
    let client_ip = reads
        .client_ip
        .then(|| {
            hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
        })
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(|address| ip_of_address(&address).to_owned());
    Request {
        client_ip,
        method: if reads.method {
            request_header(":method").unwrap_or_default()
        } else {
            String::new()
        },
        path: request_header(":path").unwrap_or_default(),
        authority: if reads.authority {
            request_header(":authority").unwrap_or_default()
        } else {
            String::new()
        },
        headers,
    }
}
