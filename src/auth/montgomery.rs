//! Montgomery arithmetic modulo a public odd modulus, over little-endian 32-bit limbs: what
//! RSA's `s^65537 mod n` (`rsa_verify`) and the EC point check at JWKS load (`ec_point`) need,
//! and nothing more. Everything it sees is public (keys, signatures, curve constants), so
//! nothing here runs in constant time.

/// An odd modulus, with what Montgomery reduction needs.
pub struct Modulus {
    /// The modulus, odd, in little-endian 32-bit limbs (the top one not zero).
    n: Vec<u32>,
    /// `-n^-1 mod 2^32`, for Montgomery reduction.
    n0_inv: u32,
    /// The modulus's size in bits.
    bits: usize,
}

impl Modulus {
    /// The modulus of big-endian `n` (leading zero bytes allowed), if it is odd.
    pub fn new(n: &[u8]) -> Option<Self> {
        let n = strip_leading_zeros(n);
        // `n` now has no leading zero byte, so its first byte has at most 7 leading zero bits.
        let bits = n
            .first()
            .map_or(0, |first| n.len() * 8 - first.leading_zeros() as usize);
        let n = limbs(n, n.len().div_ceil(4));
        let n0 = n.first().copied().unwrap_or(0);
        if n0 % 2 == 0 {
            return None;
        }
        // Newton's iteration for n0^-1 mod 2^32: n0 is its own inverse mod 2^3, and each step
        // doubles the bits that are right (3, 6, 12, 24, 48).
        let mut inverse = n0;
        for _ in 0..4 {
            inverse = inverse.wrapping_mul(2u32.wrapping_sub(n0.wrapping_mul(inverse)));
        }
        Some(Modulus {
            n,
            n0_inv: inverse.wrapping_neg(),
            bits,
        })
    }

    /// Big-endian `bytes` as a residue, if they fit in the modulus's limbs and are below it.
    pub fn residue(&self, bytes: &[u8]) -> Option<Vec<u32>> {
        if strip_leading_zeros(bytes).len() > 4 * self.n.len() {
            return None;
        }
        let value = limbs(bytes, self.n.len());
        less_than(&value, &self.n).then_some(value)
    }

    /// `a` (below the modulus) in Montgomery form, `a * R mod n` (R = 2^(32 * limbs)).
    pub fn to_montgomery(&self, a: &[u32]) -> Vec<u32> {
        self.mont_mul(a, &self.r_squared())
    }

    /// `a` (in Montgomery form) out of it: `a * R^-1 mod n`, as big-endian bytes, one limb's
    /// four bytes for each limb.
    pub fn out_of_montgomery_be(&self, a: &[u32]) -> Vec<u8> {
        let mut one = vec![0u32; self.n.len()];
        if let Some(low) = one.first_mut() {
            *low = 1;
        }
        let m = self.mont_mul(a, &one);
        m.iter().rev().flat_map(|limb| limb.to_be_bytes()).collect()
    }

    /// `R^2 mod n`: 2^(bits - 1) (below `n`), doubled modulo `n` up to 2^limbs * R (the
    /// Montgomery form of 2^limbs), then squared five times in Montgomery form:
    /// (2^limbs)^32 = R, in Montgomery form R * R.
    pub fn r_squared(&self) -> Vec<u32> {
        let limb_count = self.n.len();
        let mut x = vec![0u32; limb_count];
        let top_bit = self.bits.saturating_sub(1);
        if let Some(limb) = x.get_mut(top_bit / 32) {
            *limb = 1 << (top_bit % 32);
        }
        for _ in top_bit..32 * limb_count + limb_count {
            let carry = x.iter_mut().fold(0u32, |carry, limb| {
                let out = *limb >> 31;
                *limb = *limb << 1 | carry;
                out
            });
            if carry == 1 || !less_than(&x, &self.n) {
                subtract(&mut x, &self.n);
            }
        }
        for _ in 0..5 {
            x = self.mont_mul(&x, &x);
        }
        x
    }

    /// Montgomery multiplication (CIOS): `a * b * R^-1 mod n`, for `a, b < n`.
    pub fn mont_mul(&self, a: &[u32], b: &[u32]) -> Vec<u32> {
        let mut t = vec![0u32; self.n.len()];
        // The two limbs above `t`'s.
        let mut top: u64 = 0;
        for &a_i in a {
            let mut carry = 0u64;
            for (t_j, &b_j) in t.iter_mut().zip(b) {
                let sum = u64::from(*t_j) + u64::from(a_i) * u64::from(b_j) + carry;
                *t_j = sum as u32;
                carry = sum >> 32;
            }
            top += carry;
            // Add the multiple of n that makes the low limb zero, and drop that limb.
            let m = t.first().copied().unwrap_or(0).wrapping_mul(self.n0_inv);
            let mut carry = 0u64;
            for (t_j, &n_j) in t.iter_mut().zip(&self.n) {
                let sum = u64::from(*t_j) + u64::from(m) * u64::from(n_j) + carry;
                *t_j = sum as u32;
                carry = sum >> 32;
            }
            top += carry;
            t.rotate_left(1);
            if let Some(last) = t.last_mut() {
                *last = top as u32;
            }
            top >>= 32;
        }
        // Now t + top * 2^(32 * limbs) < 2n.
        if top != 0 || !less_than(&t, &self.n) {
            subtract(&mut t, &self.n);
        }
        t
    }

    /// `a + b mod n`, for `a, b < n` (in Montgomery form or not: addition keeps it).
    pub fn add(&self, a: &[u32], b: &[u32]) -> Vec<u32> {
        let mut carry = false;
        let mut sum: Vec<u32> = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| {
                let (s, over) = x.overflowing_add(y);
                let (s, over_again) = s.overflowing_add(u32::from(carry));
                carry = over || over_again;
                s
            })
            .collect();
        // a + b < 2n: one subtraction at most.
        if carry || !less_than(&sum, &self.n) {
            subtract(&mut sum, &self.n);
        }
        sum
    }

    #[cfg(test)]
    pub fn limbs(&self) -> &[u32] {
        &self.n
    }
}

/// Big-endian bytes as `count` little-endian 32-bit limbs (`bytes` fits in them).
pub fn limbs(bytes: &[u8], count: usize) -> Vec<u32> {
    let mut out = vec![0u32; count];
    for (limb, chunk) in out.iter_mut().zip(bytes.rchunks(4)) {
        *limb = chunk
            .iter()
            .fold(0u32, |value, &byte| value << 8 | u32::from(byte));
    }
    out
}

/// `a < b`, both of the same number of limbs.
fn less_than(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// `a -= b` modulo 2^(32 * limbs).
fn subtract(a: &mut [u32], b: &[u32]) {
    let mut borrow = false;
    for (x, &y) in a.iter_mut().zip(b) {
        let (difference, under) = x.overflowing_sub(y);
        let (difference, under_again) = difference.overflowing_sub(u32::from(borrow));
        *x = difference;
        borrow = under || under_again;
    }
}

pub fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or(&[])
}
