//! RSA signature verification only (RFC 8017 §8.1.2 RSASSA-PSS-VERIFY, §8.2.2
//! RSASSA-PKCS1-V1_5-VERIFY), for the keys a JWKS load accepts: a modulus of 2048 to 4096 bits
//! and e = 65537. Everything here is public (key, message, signature), so nothing needs to run
//! in constant time; what it needs is to be exactly RFC 8017, which the unit tests check
//! against the `rsa` crate (the verifier this replaces) on random keys and tampered signatures.
//!
//! The arithmetic is Montgomery multiplication over 32-bit limbs (`montgomery`, which the EC
//! point check at JWKS load shares): `s^65537 mod n` is 16 squarings and one multiplication. The general-purpose `rsa` crate and
//! its `num-bigint-dig` (Toom-3, division, general `modpow`) were 111 KB of the .wasm;
//! crypto-bigint's `BoxedMontyForm` (already built for P-256/P-384, but not its boxed Karatsuba
//! code) measured 76 KB more than the few KB here.

use hmac_sha256::Hash as Sha256;
use hmac_sha512::sha384::Hash as Sha384;
use hmac_sha512::Hash as Sha512;

use super::montgomery::{strip_leading_zeros, Modulus};

/// RSA moduli accepted: RFC 7518 §3.3's floor, and a ceiling that bounds what one token can
/// cost to check.
pub const RSA_MODULUS_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// The only RSA public exponent accepted: what IdPs use, and all jwt-simple accepted before.
pub const RSA_EXPONENT: [u8; 3] = [0x01, 0x00, 0x01];

/// `RSA_EXPONENT` is 2^16 + 1: sixteen squarings, then one multiplication.
const EXPONENT_SQUARINGS: usize = 16;

/// Why an RSA key is refused, for the operator's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RsaKeyRefusal {
    ModulusSize(usize),
    Exponent,
    /// An even modulus: no product of two odd primes.
    EvenModulus,
}

impl std::fmt::Display for RsaKeyRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RsaKeyRefusal::ModulusSize(bits) => write!(
                f,
                "RSA modulus is {bits} bits; {} to {} are accepted",
                RSA_MODULUS_BITS.start(),
                RSA_MODULUS_BITS.end()
            ),
            RsaKeyRefusal::Exponent => f.write_str("RSA exponent is not 65537"),
            RsaKeyRefusal::EvenModulus => f.write_str("RSA key refused: invalid modulus"),
        }
    }
}

/// A public key meshguard accepts (e is always `RSA_EXPONENT`).
pub struct RsaPublicKey {
    /// The modulus, odd.
    n: Modulus,
    /// The modulus's size in bits, and in bytes: every signature is exactly `len` bytes.
    bits: usize,
    len: usize,
}

impl RsaPublicKey {
    /// The key from its big-endian modulus and exponent, if meshguard accepts it.
    pub fn new(n: &[u8], e: &[u8]) -> Result<Self, RsaKeyRefusal> {
        let n = strip_leading_zeros(n);
        // `n` now has no leading zero byte, so its first byte has at most 7 leading zero bits.
        let bits = n
            .first()
            .map_or(0, |first| n.len() * 8 - first.leading_zeros() as usize);
        if !RSA_MODULUS_BITS.contains(&bits) {
            return Err(RsaKeyRefusal::ModulusSize(bits));
        }
        if strip_leading_zeros(e) != RSA_EXPONENT {
            return Err(RsaKeyRefusal::Exponent);
        }
        let n = Modulus::new(n).ok_or(RsaKeyRefusal::EvenModulus)?;
        Ok(RsaPublicKey {
            n,
            bits,
            len: bits.div_ceil(8),
        })
    }

    /// `signature^e mod n` as `len` big-endian bytes (RSAVP1 and I2OSP), if `signature` is an
    /// integer below `n` written in exactly `len` bytes.
    fn encoded_message(&self, signature: &[u8]) -> Option<Vec<u8>> {
        if signature.len() != self.len {
            return None;
        }
        let s = self.n.residue(signature)?;
        let base = self.n.to_montgomery(&s);
        let mut power = base.clone();
        for _ in 0..EXPONENT_SQUARINGS {
            power = self.n.mont_mul(&power, &power);
        }
        power = self.n.mont_mul(&power, &base);
        let bytes = self.n.out_of_montgomery_be(&power);
        // `m < n` fits in `len` bytes; the limbs' bytes above them are zero.
        let padding = bytes.len().checked_sub(self.len)?;
        bytes.get(padding..).map(<[u8]>::to_vec)
    }
}

/// The SHA-2 function of an RS*/PS* algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sha2 {
    Sha256,
    Sha384,
    Sha512,
}

impl Sha2 {
    fn len(self) -> usize {
        match self {
            Sha2::Sha256 => 32,
            Sha2::Sha384 => 48,
            Sha2::Sha512 => 64,
        }
    }

    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        macro_rules! digest {
            ($hash:ty) => {{
                let mut hash = <$hash>::new();
                for part in parts {
                    hash.update(part);
                }
                hash.finalize().to_vec()
            }};
        }
        match self {
            Sha2::Sha256 => digest!(Sha256),
            Sha2::Sha384 => digest!(Sha384),
            Sha2::Sha512 => digest!(Sha512),
        }
    }

    /// DER of the DigestInfo before the hash (RFC 8017 §9.2 note 1).
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Sha2::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Sha2::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Sha2::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// RSASSA-PKCS1-v1_5 (RS256/384/512): the encoded message must be exactly
/// `00 01 FF..FF 00 || DigestInfo || H(message)`.
pub fn pkcs1v15_verifies(key: &RsaPublicKey, hash: Sha2, message: &[u8], signature: &[u8]) -> bool {
    let Some(em) = key.encoded_message(signature) else {
        return false;
    };
    let prefix = hash.digest_info_prefix();
    let digest = hash.digest(&[message]);
    // At least 8 bytes of FF (RFC 8017 §9.2 step 3); a 2048-bit key always has room.
    let Some(padding) = key.len.checked_sub(3 + prefix.len() + digest.len()) else {
        return false;
    };
    if padding < 8 {
        return false;
    }
    let mut expected = Vec::with_capacity(key.len);
    expected.extend([0x00, 0x01]);
    expected.resize(2 + padding, 0xff);
    expected.push(0x00);
    expected.extend_from_slice(prefix);
    expected.extend_from_slice(&digest);
    em == expected
}

/// RSASSA-PSS (PS256/384/512, RFC 7518 §3.5): MGF1 with the same hash, and a salt exactly as
/// long as the hash.
pub fn pss_verifies(key: &RsaPublicKey, hash: Sha2, message: &[u8], signature: &[u8]) -> bool {
    let Some(em) = key.encoded_message(signature) else {
        return false;
    };
    // EMSA-PSS-VERIFY with emBits = modBits - 1: where that is a whole number of bytes the
    // encoded message is one byte shorter than the modulus, and that byte must be zero.
    let em_bits = key.bits - 1;
    let em_len = em_bits.div_ceil(8);
    let Some((leading, em)) = em.split_at_checked(key.len - em_len) else {
        return false;
    };
    if leading.iter().any(|&b| b != 0) {
        return false;
    }
    let m_hash = hash.digest(&[message]);
    let h_len = m_hash.len();
    let s_len = h_len;
    // Steps 3 and 4.
    if em_len < h_len + s_len + 2 || em.last() != Some(&0xbc) {
        return false;
    }
    // Step 5: maskedDB || H || 0xbc.
    let Some((masked_db, rest)) = em.split_at_checked(em_len - h_len - 1) else {
        return false;
    };
    let h = rest.get(..h_len).unwrap_or_default();
    // Step 6: the bits of maskedDB's first byte above emBits must be zero.
    let unused_bits = 8 * em_len - em_bits;
    let top_mask = 0xffu8 >> unused_bits;
    if masked_db
        .first()
        .is_some_and(|first| first & !top_mask != 0)
    {
        return false;
    }
    // Steps 7 to 9: DB = maskedDB xor MGF1(H), its unused top bits cleared.
    let mut db = masked_db.to_vec();
    mgf1_xor(hash, h, &mut db);
    if let Some(first) = db.first_mut() {
        *first &= top_mask;
    }
    // Step 10: DB = 00..00 || 01 || salt.
    let Some((zeros, rest)) = db.split_at_checked(em_len - h_len - s_len - 2) else {
        return false;
    };
    let Some((&0x01, salt)) = rest.split_first() else {
        return false;
    };
    if zeros.iter().any(|&b| b != 0) {
        return false;
    }
    // Steps 12 to 14: H = Hash(00 x 8 || mHash || salt).
    hash.digest(&[&[0u8; 8], &m_hash, salt]) == h
}

/// MGF1 (RFC 8017 §B.2.1) of `seed`, xored into `out`.
fn mgf1_xor(hash: Sha2, seed: &[u8], out: &mut [u8]) {
    let mut counter: u32 = 0;
    for chunk in out.chunks_mut(hash.len()) {
        let mask = hash.digest(&[seed, &counter.to_be_bytes()]);
        for (byte, mask) in chunk.iter_mut().zip(mask) {
            *byte ^= mask;
        }
        counter = counter.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use proptest::prelude::*;
    use rsa::sha2::{Sha256, Sha384, Sha512};
    use rsa::signature::{
        RandomizedSigner as _, SignatureEncoding as _, Signer as _, Verifier as _,
    };
    use rsa::traits::PublicKeyParts as _;
    use rsa::{pkcs1v15, pss, RsaPrivateKey};

    use super::*;
    use crate::auth::montgomery::limbs;

    /// Sizes at the edges of the arithmetic: whole limbs, one bit into a limb (and into a byte,
    /// where PSS's encoded message is a byte shorter than the modulus), and the largest accepted.
    const KEY_BITS: [usize; 6] = [2048, 2049, 2081, 2095, 3072, 4096];

    fn keys() -> &'static Vec<RsaPrivateKey> {
        static KEYS: OnceLock<Vec<RsaPrivateKey>> = OnceLock::new();
        KEYS.get_or_init(|| {
            KEY_BITS
                .iter()
                .map(|&bits| RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).unwrap())
                .collect()
        })
    }

    const ALGORITHMS: [(bool, Sha2); 6] = [
        (false, Sha2::Sha256),
        (false, Sha2::Sha384),
        (false, Sha2::Sha512),
        (true, Sha2::Sha256),
        (true, Sha2::Sha384),
        (true, Sha2::Sha512),
    ];

    fn sign(key: &RsaPrivateKey, pss: bool, hash: Sha2, message: &[u8]) -> Vec<u8> {
        let key = key.clone();
        let mut rng = rsa::rand_core::OsRng;
        match (pss, hash) {
            (false, Sha2::Sha256) => pkcs1v15::SigningKey::<Sha256>::new(key)
                .sign(message)
                .to_vec(),
            (false, Sha2::Sha384) => pkcs1v15::SigningKey::<Sha384>::new(key)
                .sign(message)
                .to_vec(),
            (false, Sha2::Sha512) => pkcs1v15::SigningKey::<Sha512>::new(key)
                .sign(message)
                .to_vec(),
            (true, Sha2::Sha256) => pss::SigningKey::<Sha256>::new(key)
                .sign_with_rng(&mut rng, message)
                .to_vec(),
            (true, Sha2::Sha384) => pss::SigningKey::<Sha384>::new(key)
                .sign_with_rng(&mut rng, message)
                .to_vec(),
            (true, Sha2::Sha512) => pss::SigningKey::<Sha512>::new(key)
                .sign_with_rng(&mut rng, message)
                .to_vec(),
        }
    }

    /// The `rsa` crate's verdict, as the verifier this module replaces gave it.
    fn rsa_crate_verifies(
        key: &RsaPrivateKey,
        pss: bool,
        hash: Sha2,
        message: &[u8],
        signature: &[u8],
    ) -> bool {
        let public = key.to_public_key();
        if pss {
            let Ok(signature) = pss::Signature::try_from(signature) else {
                return false;
            };
            match hash {
                Sha2::Sha256 => {
                    pss::VerifyingKey::<Sha256>::new(public).verify(message, &signature)
                }
                Sha2::Sha384 => {
                    pss::VerifyingKey::<Sha384>::new(public).verify(message, &signature)
                }
                Sha2::Sha512 => {
                    pss::VerifyingKey::<Sha512>::new(public).verify(message, &signature)
                }
            }
            .is_ok()
        } else {
            let Ok(signature) = pkcs1v15::Signature::try_from(signature) else {
                return false;
            };
            match hash {
                Sha2::Sha256 => {
                    pkcs1v15::VerifyingKey::<Sha256>::new(public).verify(message, &signature)
                }
                Sha2::Sha384 => {
                    pkcs1v15::VerifyingKey::<Sha384>::new(public).verify(message, &signature)
                }
                Sha2::Sha512 => {
                    pkcs1v15::VerifyingKey::<Sha512>::new(public).verify(message, &signature)
                }
            }
            .is_ok()
        }
    }

    fn ours(key: &RsaPrivateKey, pss: bool, hash: Sha2, message: &[u8], signature: &[u8]) -> bool {
        let public = RsaPublicKey::new(&key.n().to_bytes_be(), &key.e().to_bytes_be()).unwrap();
        if pss {
            pss_verifies(&public, hash, message, signature)
        } else {
            pkcs1v15_verifies(&public, hash, message, signature)
        }
    }

    #[derive(Debug, Clone)]
    enum Tamper {
        None,
        SignatureBit(usize),
        MessageBit(usize),
        Random(Vec<u8>),
        Modulus,
        ModulusMinusOne,
        AllOnes,
        Shorter,
        LeadingZero,
        OtherAlgorithm,
    }

    fn tamper() -> impl Strategy<Value = Tamper> {
        prop_oneof![
            3 => Just(Tamper::None),
            3 => any::<usize>().prop_map(Tamper::SignatureBit),
            1 => any::<usize>().prop_map(Tamper::MessageBit),
            1 => proptest::collection::vec(any::<u8>(), 512).prop_map(Tamper::Random),
            1 => Just(Tamper::Modulus),
            1 => Just(Tamper::ModulusMinusOne),
            1 => Just(Tamper::AllOnes),
            1 => Just(Tamper::Shorter),
            1 => Just(Tamper::LeadingZero),
            1 => Just(Tamper::OtherAlgorithm),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn verdicts_are_the_rsa_crates_on_random_keys_messages_and_tampered_signatures(
            key_index in 0..KEY_BITS.len(),
            algorithm in 0..ALGORITHMS.len(),
            mut message in proptest::collection::vec(any::<u8>(), 0..300),
            tamper in tamper(),
        ) {
            let key = &keys()[key_index];
            let (pss, hash) = ALGORITHMS[algorithm];
            let mut signature = sign(key, pss, hash, &message);
            let n = key.n().to_bytes_be();
            let mut check_pss = pss;
            match &tamper {
                Tamper::None => {}
                Tamper::SignatureBit(bit) => {
                    let len = signature.len();
                    signature[bit / 8 % len] ^= 1 << (bit % 8);
                }
                Tamper::MessageBit(bit) if !message.is_empty() => {
                    let len = message.len();
                    message[bit / 8 % len] ^= 1 << (bit % 8);
                }
                Tamper::MessageBit(_) => message.push(0),
                Tamper::Random(bytes) => signature = bytes[..signature.len()].to_vec(),
                Tamper::Modulus => signature = n.clone(),
                Tamper::ModulusMinusOne => {
                    signature = n.clone();
                    *signature.last_mut().unwrap() -= 1;
                }
                Tamper::AllOnes => signature = vec![0xff; signature.len()],
                Tamper::Shorter => { signature.remove(0); }
                Tamper::LeadingZero => signature.insert(0, 0),
                Tamper::OtherAlgorithm => check_pss = !pss,
            }
            let expected = rsa_crate_verifies(key, check_pss, hash, &message, &signature);
            prop_assert_eq!(ours(key, check_pss, hash, &message, &signature), expected);
            if let Tamper::None = tamper {
                prop_assert!(expected, "a fresh signature verifies");
            }
        }
    }

    fn big(limbs: &[u32]) -> rsa::BigUint {
        rsa::BigUint::from_slice(limbs)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// `mont_mul(a, b) * R = a * b (mod n)` and the result is fully reduced, also for
        /// `a`, `b` at `n - 1`.
        #[test]
        fn montgomery_multiplication_is_a_times_b_over_r_mod_n(
            key_index in 0..KEY_BITS.len(),
            a in proptest::collection::vec(any::<u32>(), 128),
            b in proptest::collection::vec(any::<u32>(), 128),
            edge in 0..4u8,
        ) {
            let key = &keys()[key_index];
            let public = RsaPublicKey::new(&key.n().to_bytes_be(), &key.e().to_bytes_be()).unwrap();
            let n = big(public.n.limbs());
            let count = public.n.limbs().len();
            let reduce = |random: &[u32], at_edge: bool| {
                let value = if at_edge { &n - 1u32 } else { big(&random[..count]) % &n };
                limbs(&value.to_bytes_be(), count)
            };
            let a = reduce(&a, edge & 1 == 1);
            let b = reduce(&b, edge & 2 == 2);
            let product = public.n.mont_mul(&a, &b);
            prop_assert!(big(&product) < n);
            prop_assert_eq!((big(&product) << (32 * count)) % &n, (big(&a) * big(&b)) % &n);
            let r = rsa::BigUint::from(1u32) << (32 * count);
            prop_assert_eq!(big(&public.n.r_squared()), (&r * &r) % &n);
        }
    }

    #[test]
    fn every_key_size_and_algorithm_verifies_its_own_signature_and_not_another_message() {
        for key in keys() {
            for (pss, hash) in ALGORITHMS {
                let signature = sign(key, pss, hash, b"header.payload");
                assert!(
                    ours(key, pss, hash, b"header.payload", &signature),
                    "{} {pss} {hash:?}",
                    key.n().bits()
                );
                assert!(!ours(key, pss, hash, b"header.payloaD", &signature));
                assert!(!ours(key, !pss, hash, b"header.payload", &signature));
            }
        }
    }

    #[test]
    fn a_modulus_with_leading_zero_bytes_is_the_same_key() {
        let key = &keys()[0];
        let signature = sign(key, false, Sha2::Sha256, b"m");
        let mut n = vec![0, 0, 0];
        n.extend(key.n().to_bytes_be());
        let public = RsaPublicKey::new(&n, &[0, 1, 0, 1]).unwrap();
        assert!(pkcs1v15_verifies(&public, Sha2::Sha256, b"m", &signature));
    }
}
