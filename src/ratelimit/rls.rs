//! Envoy's rate-limit service API (RLS v3, `envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`), the messages meshguard sends and reads: one descriptor built from the
//! policy key, and the first descriptor status of the answer.

use std::borrow::Cow;

use super::key::{key_part_value, KeyFacts};
use crate::config::KeyPart;
use crate::proto::{fields, push_bytes_field, push_varint_field, FieldValue};

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// Descriptor entries for a key, named as Envoy's own rate-limit actions name them where one
/// exists (`remote_address`, `generic_key`), so envoyproxy/ratelimit configurations carry over.
/// A missing part is sent as `-`, like a local key.
pub fn descriptor_entries(parts: &[KeyPart], facts: &KeyFacts) -> Vec<(String, String)> {
    parts
        .iter()
        .map(|part| {
            let name = match part {
                KeyPart::ClientIp => "remote_address".to_owned(),
                KeyPart::Header(name) | KeyPart::Claim(name) => name.clone(),
                KeyPart::Rule => "rule".to_owned(),
                KeyPart::Path => "path".to_owned(),
                KeyPart::Const(_) => "generic_key".to_owned(),
            };
            let value = key_part_value(part, facts).map_or_else(|| "-".to_owned(), Cow::into_owned);
            (name, value)
        })
        .collect()
}

/// `RateLimitRequest{domain=1, descriptors=2 [RateLimitDescriptor{entries=1 [Entry{key=1, value=2}]}], hits_addend=3}`.
pub fn encode_request(domain: &str, entries: &[(String, String)], hits_addend: u32) -> Vec<u8> {
    let mut descriptor = Vec::new();
    for (key, value) in entries {
        let mut entry = Vec::with_capacity(key.len() + value.len() + 4);
        push_bytes_field(&mut entry, 1, key.as_bytes());
        push_bytes_field(&mut entry, 2, value.as_bytes());
        push_bytes_field(&mut descriptor, 1, &entry);
    }
    let mut out = Vec::with_capacity(descriptor.len() + domain.len() + 8);
    push_bytes_field(&mut out, 1, domain.as_bytes());
    push_bytes_field(&mut out, 2, &descriptor);
    push_varint_field(&mut out, 3, u64::from(hits_addend));
    out
}

/// What the service said about our descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RlsAnswer {
    pub over_limit: bool,
    /// `current_limit`: requests per unit, and the unit in seconds.
    pub limit: Option<(u64, u64)>,
    pub remaining: u64,
    pub reset_s: u64,
}

const CODE_OVER_LIMIT: u64 = 2;

fn unit_seconds(unit: u64) -> u64 {
    match unit {
        1 => 1,
        2 => 60,
        3 => 3_600,
        4 => 86_400,
        7 => 604_800,
        5 => 2_592_000,
        6 => 31_536_000,
        _ => 0,
    }
}

/// Reads `RateLimitResponse`; `None` when the bytes are not one.
pub fn decode_response(bytes: &[u8]) -> Option<RlsAnswer> {
    let mut answer = RlsAnswer::default();
    let mut first_status = None;
    for (field, value) in fields(bytes)? {
        match (field, value) {
            (1, FieldValue::Varint(code)) => answer.over_limit = code == CODE_OVER_LIMIT,
            (2, FieldValue::Bytes(status)) if first_status.is_none() => first_status = Some(status),
            _ => {}
        }
    }
    for (field, value) in fields(first_status.unwrap_or_default())? {
        match (field, value) {
            (2, FieldValue::Bytes(limit)) => {
                let mut per_unit = 0;
                let mut unit = 0;
                for (field, value) in fields(limit)? {
                    match (field, value) {
                        (1, FieldValue::Varint(n)) => per_unit = n,
                        (2, FieldValue::Varint(u)) => unit = unit_seconds(u),
                        _ => {}
                    }
                }
                answer.limit = Some((per_unit, unit));
            }
            (3, FieldValue::Varint(remaining)) => answer.remaining = remaining,
            (4, FieldValue::Bytes(duration)) => {
                for (field, value) in fields(duration)? {
                    if let (1, FieldValue::Varint(seconds)) = (field, value) {
                        answer.reset_s = seconds;
                    }
                }
            }
            _ => {}
        }
    }
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_matches_the_rls_wire_format() {
        let bytes = encode_request("mg", &[("k".into(), "v".into())], 1);
        assert_eq!(
            bytes,
            vec![0x0a, 2, b'm', b'g', 0x12, 8, 0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 1]
        );
    }

    #[test]
    fn reads_an_over_limit_answer() {
        // overall_code=OVER_LIMIT, statuses[0]={code=2, current_limit={10, MINUTE}, remaining=0, reset={seconds=42}}
        let answer = [
            0x08, 2, 0x12, 14, 0x08, 2, 0x12, 4, 0x08, 10, 0x10, 2, 0x18, 0, 0x22, 2, 0x08, 42,
        ];
        assert_eq!(
            decode_response(&answer),
            Some(RlsAnswer {
                over_limit: true,
                limit: Some((10, 60)),
                remaining: 0,
                reset_s: 42
            })
        );
        assert_eq!(
            decode_response(&[0x08, 1]).map(|a| a.over_limit),
            Some(false)
        );
        assert_eq!(decode_response(&[0x12, 9, 1]), None);
    }
}
