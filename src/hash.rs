//! A stable, unkeyed hash: the same value on every Envoy worker's VM and across restarts, for
//! access-log sampling. Not for anything a client could aim at: rate-limit slots use a keyed
//! SipHash (`ratelimit::slots`), since anyone can compute this one.

/// FNV-1a over `parts`, each followed by a separator byte so `["ab", "c"]` ≠ `["a", "bc"]`.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `fnv1a` with its bits mixed (murmur3's finaliser), for when the high bits must be uniform:
/// FNV alone leaves similar inputs close together.
pub fn mixed(parts: &[&[u8]]) -> u64 {
    let mut hash = fnv1a(parts);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_separated_and_the_hash_is_stable() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(fnv1a(&[b"x"]), fnv1a(&[b"x"]));
        // Similar ids land all over the range once mixed: about half have the top bit set.
        let high = (0..1000)
            .filter(|i| mixed(&[format!("req-{i}").as_bytes()]) >> 63 == 1)
            .count();
        assert!((400..600).contains(&high), "{high}");
    }
}
