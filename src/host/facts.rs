//! Reading request and exchange facts from Envoy: only what the configuration needs, in as few
//! calls into Envoy as possible (each costs about a microsecond). Everything is read as bytes:
//! a client or a dependency may send any byte, and the SDK's `String` helpers trap the VM on one
//! that is not UTF-8 (they are forbidden by `clippy.toml`).

use std::borrow::Cow;
use std::net::IpAddr;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, Status};

use super::state::now_ms;
use crate::accesslog::{self, escaped};
use crate::authz::peer::PeerIdentity;
use crate::config::{Config, RequestReads};
use crate::headermap;
use crate::ratelimit::key::ip_of_address;
use crate::request::{text_of_cow, Request, WrittenSent};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
}

/// Sets the filter-state property at `path` (its parts joined by NUL bytes, as the ABI wants
/// them) to `value`. The SDK's `set_property` builds the path from a `Vec<&str>` on every call:
/// two allocations per request for a constant.
pub fn set_property(path: &[u8], value: &[u8]) -> Status {
    // SAFETY: both slices outlive the call; the host copies what it reads.
    unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) }
}

/// The whole header map, serialized as Envoy hands it over (read it with `headermap::pairs`). The
/// SDK's `get_map_bytes` still turns names into `String` with `unwrap`; this reads the same host
/// call and leaves decoding, without trusting a byte, to `headermap`.
pub fn header_map(map_type: MapType) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to `size` bytes it allocated through the SDK's exported
    // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes), and hands it to us:
    // taking it back as a `Vec` of that length and capacity frees it exactly once, as the SDK's
    // own readers do.
    unsafe {
        match proxy_get_header_map_pairs(map_type, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => Vec::new(),
        }
    }
}

/// One header's value as bytes (the first value, for a repeated header).
pub fn header_value(map_type: MapType, name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(map_type, name)
        .ok()
        .flatten()
}

pub fn request_header(name: &str) -> Option<Vec<u8>> {
    header_value(MapType::HttpRequestHeaders, name)
}

/// Envoy encodes integer attributes as 8 little-endian bytes.
fn number_property(path: &[&str]) -> Option<u64> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    <[u8; 8]>::try_from(bytes.as_slice())
        .ok()
        .map(u64::from_le_bytes)
}

/// The mesh identity in the mTLS peer certificate's first URI SAN, if the peer sent one.
fn peer_identity() -> Option<PeerIdentity> {
    let bytes = hostcalls::get_property(vec!["connection", "uri_san_peer_certificate"])
        .ok()
        .flatten()?;
    PeerIdentity::from_uri_san(std::str::from_utf8(&bytes).ok()?)
}

fn source_address() -> Option<String> {
    let bytes = hostcalls::get_property(vec!["source", "address"])
        .ok()
        .flatten()?;
    String::from_utf8(bytes).ok()
}

/// Where request headers come from: one call each, or the whole map in one call. The map is read
/// whenever a configured header matters (a token, a key, a match, a header meshguard writes): it
/// is one call instead of several, and only it shows every value of a repeated header and every
/// name (the underscore twins of written headers). Envoy joins a repeated `Authorization`
/// itself, but hands a filter asking by name only the first of other repeated headers; two
/// different tokens must be refused, never one of them picked.
pub enum Headers {
    EachByName,
    /// The serialized map: values are borrowed from it, never copied per header.
    Map(Vec<u8>),
}

impl Headers {
    /// How `config` needs the request headers read: the map is read here when it does.
    pub fn for_request(config: &Config) -> Headers {
        let reads = &config.reads;
        if config.access_log.enabled
            || !reads.headers.is_empty()
            || !config.output_headers.is_empty()
        {
            Headers::Map(header_map(MapType::HttpRequestHeaders))
        } else {
            Headers::EachByName
        }
    }

    /// The first value, as `get_map_value_bytes` gives it.
    fn get(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        match self {
            Headers::EachByName => request_header(name).map(Cow::Owned),
            Headers::Map(map) => headermap::pairs(map)
                .find(|(n, _)| *n == name.as_bytes())
                .map(|(_, v)| Cow::Borrowed(v)),
        }
    }

    /// Every value of a header, in the order the client sent them.
    fn all<'h>(&'h self, name: &'h str) -> impl Iterator<Item = Cow<'h, [u8]>> + 'h {
        let (one, map) = match self {
            Headers::EachByName => (request_header(name).map(Cow::Owned), None),
            Headers::Map(map) => (None, Some(headermap::pairs(map))),
        };
        one.into_iter().chain(
            map.into_iter()
                .flatten()
                .filter(move |(n, _)| *n == name.as_bytes())
                .map(|(_, v)| Cow::Borrowed(v)),
        )
    }

    /// Names on the request that are a header meshguard writes with `_` for `-` (`x_user` for
    /// `x-user`: CGI, WSGI and many frameworks read both as one), and which of the headers it
    /// writes the client sent: known only when the whole map was read and every header in it
    /// could be decoded.
    fn written_on_request(&self, written: &[String]) -> (Vec<String>, WrittenSent) {
        let Headers::Map(map) = self else {
            return (Vec::new(), WrittenSent::Unknown);
        };
        let mut twins: Vec<String> = Vec::new();
        let mut sent: Vec<String> = Vec::new();
        let mut pairs = headermap::pairs(map);
        for (name, _) in &mut pairs {
            if let Some(header) = written
                .iter()
                .find(|header| header.as_bytes().eq_ignore_ascii_case(name))
            {
                if !sent.contains(header) {
                    sent.push(header.clone());
                }
                continue;
            }
            if !name.contains(&b'_') {
                continue;
            }
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            let dashed = name.replace('_', "-");
            if written.contains(&dashed) && !twins.iter().any(|t| t == name) {
                twins.push(name.to_owned());
            }
        }
        let sent = if pairs.broken() {
            WrittenSent::Unknown
        } else {
            WrittenSent::Known(sent)
        };
        (twins, sent)
    }
}

/// The request, as the decision needs it, and (when the access log is on) the request's side of
/// the log record, read before meshguard changes any header. Values meshguard decides on are
/// taken as text with bytes that are not UTF-8 replaced (U+FFFD: such a token is malformed, such
/// a header equals no configured value); the log shows them escaped (`\xe9`). The request
/// borrows its text from `headers` (as `Headers::for_request` read them) and names from `config`.
pub fn gather_request<'a>(
    config: &'a Config,
    headers: &'a Headers,
    start_ms: u64,
) -> (Request<'a>, Option<accesslog::Exchange>) {
    let reads: &RequestReads = &config.reads;
    let logging = config.access_log.enabled;
    let client_address = (reads.client_ip || reads.remote_ip || reads.direct_ip || logging)
        .then(source_address)
        .flatten();
    let remote_ip = client_address
        .as_deref()
        .and_then(|address| ip_of_address(address).parse::<IpAddr>().ok());
    let path = (reads.path || logging)
        .then(|| headers.get(":path"))
        .flatten()
        .unwrap_or_default();
    let method = (reads.method || logging)
        .then(|| headers.get(":method"))
        .flatten();
    let authority = (reads.authority || logging)
        .then(|| headers.get(":authority"))
        .flatten();
    let logged = |name: &str| headers.get(name).map(|value| escaped(&value));
    let exchange = logging.then(|| accesslog::Exchange {
        start_ms,
        request_id: logged("x-request-id"),
        traceparent: logged("traceparent"),
        b3_trace_id: logged("x-b3-traceid"),
        method: method.as_deref().map(escaped).unwrap_or_default(),
        path: escaped(&path),
        authority: authority.as_deref().map(escaped).unwrap_or_default(),
        client_address: client_address.clone(),
        // Headers meshguard itself writes are logged as they went upstream (read at the end).
        headers: config
            .access_log
            .request_headers
            .iter()
            .filter(|name| !config.output_headers.contains(name))
            .filter_map(|name| logged(name).map(|value| (name.clone(), value)))
            .collect(),
        ..accesslog::Exchange::default()
    });
    // Envoy hands Wasm one downstream address, the one it derived (`source.address`): the
    // direct peer unless the connection manager trusts X-Forwarded-For hops. Where it does, the
    // operator has Envoy write the direct peer into `direct_peer_header` before any filter runs.
    let direct_ip = if reads.direct_ip {
        match &config.direct_peer_header {
            Some(name) => headers.get(name).and_then(|value| {
                let text = std::str::from_utf8(&value).ok()?;
                ip_of_address(text.trim()).parse::<IpAddr>().ok()
            }),
            None => remote_ip,
        }
    } else {
        None
    };
    let (underscore_twins, written_sent) = headers.written_on_request(&config.output_headers);
    let request = Request {
        remote_ip: remote_ip.filter(|_| reads.remote_ip),
        direct_ip,
        port: reads
            .port
            .then(|| number_property(&["destination", "port"]))
            .flatten()
            .and_then(|port| u16::try_from(port).ok()),
        peer: reads.peer.then(peer_identity).flatten(),
        client_ip: reads
            .client_ip
            .then_some(client_address)
            .flatten()
            .map(|address| ip_of_address(&address).to_owned()),
        method: match method {
            Some(method) if reads.method => text_of_cow(method),
            _ => Cow::Borrowed(""),
        },
        path: text_of_cow(path),
        authority: match authority {
            Some(authority) if reads.authority => text_of_cow(authority),
            _ => Cow::Borrowed(""),
        },
        headers: reads
            .headers
            .iter()
            .flat_map(|name| {
                headers
                    .all(name)
                    .map(move |value| (Cow::Borrowed(name.as_str()), text_of_cow(value)))
            })
            .collect(),
        underscore_twins,
        written_sent,
    };
    (request, exchange)
}

/// The response's status and the stream's end: all that `accesslog::should_log` needs, so a
/// record that is sampled away costs no more calls into Envoy.
pub fn finish_status(exchange: &mut accesslog::Exchange) {
    exchange.end_ms = now_ms();
    exchange.status = number_property(&["response", "code"]).or_else(|| {
        header_value(MapType::HttpResponseHeaders, ":status")
            .and_then(|status| std::str::from_utf8(&status).ok()?.parse().ok())
    });
}

/// Completes a record that will be written: the byte counts (where configured) and the headers
/// meshguard wrote upstream.
pub fn finish_exchange(exchange: &mut accesslog::Exchange, config: &Config) {
    if config.access_log.byte_counts {
        exchange.request_bytes = number_property(&["request", "total_size"]);
        exchange.response_bytes = number_property(&["response", "total_size"]);
    }
    for name in &config.access_log.request_headers {
        if config.output_headers.contains(name) {
            if let Some(value) = request_header(name) {
                exchange.headers.push((name.clone(), escaped(&value)));
            }
        }
    }
}
