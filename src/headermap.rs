//! Envoy's serialized header map (the proxy-wasm ABI's `proxy_get_header_map_pairs` format),
//! decoded without trusting a byte of it. The SDK's own decoder turns names into `String`s with
//! `unwrap`, so one header name that is not UTF-8 would trap the VM; here names and values stay
//! bytes, and a short or inconsistent buffer yields what was readable.
//!
//! Layout: a little-endian `u32` count, then `count` pairs of `u32` (name length, value length),
//! then each name and value in order, each followed by a NUL byte.

/// One header as Envoy holds it: name and value as raw bytes.
pub type RawHeader = (Vec<u8>, Vec<u8>);

/// Bytes per entry in the size table: a `u32` name length and a `u32` value length.
const SIZE_ENTRY_BYTES: usize = 8;

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let end = at.checked_add(4)?;
    let word = <[u8; 4]>::try_from(bytes.get(at..end)?).ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

/// The name/value pairs of a serialized map, borrowed from it (no copy per header); the pairs
/// after the first inconsistency are not yielded.
pub fn pairs(bytes: &[u8]) -> Pairs<'_> {
    let count = u32_at(bytes, 0).unwrap_or(0);
    let data_at = count
        .checked_mul(SIZE_ENTRY_BYTES)
        .and_then(|table| table.checked_add(4))
        .filter(|&data_at| data_at <= bytes.len());
    Pairs {
        bytes,
        count: if data_at.is_some() { count } else { 0 },
        index: 0,
        data_at: data_at.unwrap_or(0),
        broken: data_at.is_none(),
    }
}

pub struct Pairs<'b> {
    bytes: &'b [u8],
    count: usize,
    index: usize,
    data_at: usize,
    broken: bool,
}

impl Pairs<'_> {
    /// Whether the map was found inconsistent (so far): then some headers were not yielded.
    /// Not being broken once every pair was read means every header Envoy holds was seen.
    pub fn broken(&self) -> bool {
        self.broken
    }
}

impl<'b> Pairs<'b> {
    fn take(&mut self, len: usize) -> Option<&'b [u8]> {
        let end = self.data_at.checked_add(len)?;
        let part = self.bytes.get(self.data_at..end)?;
        self.data_at = end.checked_add(1)?; // the NUL after each name and value
        Some(part)
    }
}

impl<'b> Iterator for Pairs<'b> {
    type Item = (&'b [u8], &'b [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let sizes_at = 4 + self.index * SIZE_ENTRY_BYTES;
        let pair = (|| {
            let name_len = u32_at(self.bytes, sizes_at)?;
            let value_len = u32_at(self.bytes, sizes_at + 4)?;
            let name = self.take(name_len)?;
            let value = self.take(value_len)?;
            Some((name, value))
        })();
        // An inconsistent entry ends the map: nothing after it is trusted.
        self.index = if pair.is_some() {
            self.index + 1
        } else {
            self.broken = true;
            self.count
        };
        pair
    }
}

/// Decodes a serialized map into owned pairs; entries after the first inconsistency are dropped.
pub fn decode(bytes: &[u8]) -> Vec<RawHeader> {
    pairs(bytes)
        .map(|(name, value)| (name.to_vec(), value.to_vec()))
        .collect()
}

/// Encodes headers the way Envoy serializes them (tests and fuzzing use it to build input).
pub fn encode(headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let count = u32::try_from(headers.len()).unwrap_or(u32::MAX);
    let mut out = count.to_le_bytes().to_vec();
    for (name, value) in headers {
        for len in [name.len(), value.len()] {
            out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        }
    }
    for (name, value) in headers {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_names_and_values_that_are_not_utf8() {
        let headers: [(&[u8], &[u8]); 3] = [
            (b":path", b"/x"),
            (b"user-agent", b"caf\xe9"),
            (b"x-\xff", b""),
        ];
        let decoded = decode(&encode(&headers));
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[1], (b"user-agent".to_vec(), b"caf\xe9".to_vec()));
        assert_eq!(decoded[2], (b"x-\xff".to_vec(), Vec::new()));
    }

    #[test]
    fn short_or_lying_buffers_give_what_was_readable() {
        let whole = encode(&[(b"a", b"1"), (b"b", b"2")]);
        for cut in 0..whole.len() {
            let decoded = decode(&whole[..cut]);
            assert!(decoded.len() <= 2, "cut {cut}");
        }
        assert_eq!(
            decode(&whole[..whole.len() - 1]).len(),
            2,
            "the last NUL is not needed"
        );
        // A count far beyond the buffer, and sizes that overflow.
        assert!(decode(&[0xff, 0xff, 0xff, 0xff]).is_empty());
        let mut lying = 1u32.to_le_bytes().to_vec();
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&lying).is_empty());
        assert!(decode(&[]).is_empty());
    }

    #[test]
    fn a_map_is_broken_when_some_header_could_not_be_read() {
        let read_all = |bytes: &[u8]| {
            let mut pairs = pairs(bytes);
            let count = pairs.by_ref().count();
            (count, pairs.broken())
        };
        let whole = encode(&[(b"a", b"1"), (b"b", b"2")]);
        assert_eq!(read_all(&whole), (2, false));
        assert_eq!(read_all(&encode(&[])), (0, false));
        // Cut anywhere before the last NUL (which is not needed): some header is missing.
        for cut in 0..whole.len() - 1 {
            assert!(read_all(&whole[..cut]).1, "cut {cut}");
        }
    }
}
