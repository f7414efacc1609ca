//! The protobuf wire format, as far as meshguard's few messages need it (Envoy's
//! `verify_signature` arguments and the rate-limit service's request and response). Writing
//! and reading four field kinds does not justify a protobuf code generator in the filter.

pub fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// A length-delimited field (string, bytes or embedded message).
pub fn push_bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    push_varint(out, (field << 3) | 2);
    push_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub fn push_varint_field(out: &mut Vec<u8>, field: u64, value: u64) {
    push_varint(out, field << 3);
    push_varint(out, value);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(u64),
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The fields of one message, in order; `None` if the bytes are not a well-formed message.
pub fn fields(bytes: &[u8]) -> Option<Vec<(u64, FieldValue<'_>)>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < bytes.len() {
        let tag = read_varint(bytes, &mut at)?;
        let value = match tag & 7 {
            0 => FieldValue::Varint(read_varint(bytes, &mut at)?),
            1 | 5 => {
                let width = if tag & 7 == 1 { 8 } else { 4 };
                let raw = bytes.get(at..at.checked_add(width)?)?;
                at += width;
                FieldValue::Fixed(
                    raw.iter()
                        .rev()
                        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
                )
            }
            2 => {
                let len = usize::try_from(read_varint(bytes, &mut at)?).ok()?;
                let end = at.checked_add(len)?;
                let value = bytes.get(at..end)?;
                at = end;
                FieldValue::Bytes(value)
            }
            _ => return None,
        };
        out.push((tag >> 3, value));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_each_field_kind() {
        let mut message = Vec::new();
        push_varint_field(&mut message, 1, 300);
        push_bytes_field(&mut message, 2, b"abc");
        message.extend_from_slice(&[0x19, 1, 0, 0, 0, 0, 0, 0, 0]); // field 3, fixed64 = 1
        assert_eq!(
            fields(&message).unwrap(),
            vec![
                (1, FieldValue::Varint(300)),
                (2, FieldValue::Bytes(b"abc")),
                (3, FieldValue::Fixed(1))
            ]
        );
    }

    #[test]
    fn truncated_or_odd_input_is_none() {
        assert_eq!(fields(&[0x12, 5, b'a']), None);
        assert_eq!(fields(&[0x08]), None);
        assert_eq!(fields(&[0x0b]), None); // group wire type
        assert_eq!(
            fields(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            None
        );
        assert_eq!(fields(&[]), Some(vec![]));
    }
}
