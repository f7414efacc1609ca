//! The check a JWKS load makes of an EC key (RFC 7518 §6.2.1): its point, uncompressed
//! (`04||x||y`, as a JWK's `x` and `y` make it), is a point of the curve: x and y below the
//! field's prime p, and y² = x³ - 3x + b (mod p). P-256 and P-384 have prime order (cofactor 1),
//! so every such point is a valid public key; the point at infinity has no affine coordinates
//! and satisfies no such equation.
//!
//! The `p256`/`p384` crates check the same in `AffinePoint::from_coordinates`; this is
//! meshguard's own check, on the Montgomery arithmetic RSA verification already links
//! (`montgomery`), so that a module built without those crates (feature `portable-ecdsa` off:
//! the host's BoringSSL verifies ES256/ES384) still refuses a bad key at load. Its unit tests
//! hold it to the crates' verdicts.

use super::alg::Curve;
use super::montgomery::Modulus;

/// The SEC 1 tag of an uncompressed point.
const UNCOMPRESSED: u8 = 0x04;

/// P-256's field prime, 2^256 - 2^224 + 2^192 + 2^96 - 1 (SEC 2 §2.4.2), big-endian.
const P256_P: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
];
/// P-256's b (a = -3).
const P256_B: [u8; 32] = [
    0x5a, 0xc6, 0x35, 0xd8, 0xaa, 0x3a, 0x93, 0xe7, 0xb3, 0xeb, 0xbd, 0x55, 0x76, 0x98, 0x86, 0xbc,
    0x65, 0x1d, 0x06, 0xb0, 0xcc, 0x53, 0xb0, 0xf6, 0x3b, 0xce, 0x3c, 0x3e, 0x27, 0xd2, 0x60, 0x4b,
];
/// P-384's field prime, 2^384 - 2^128 - 2^96 + 2^32 - 1 (SEC 2 §2.5.1), big-endian.
const P384_P: [u8; 48] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff,
];
/// P-384's b (a = -3).
const P384_B: [u8; 48] = [
    0xb3, 0x31, 0x2f, 0xa7, 0xe2, 0x3e, 0xe7, 0xe4, 0x98, 0x8e, 0x05, 0x6b, 0xe3, 0xf8, 0x2d, 0x19,
    0x18, 0x1d, 0x9c, 0x6e, 0xfe, 0x81, 0x41, 0x12, 0x03, 0x14, 0x08, 0x8f, 0x50, 0x13, 0x87, 0x5a,
    0xc6, 0x56, 0x39, 0x8d, 0x8a, 0x2e, 0xd1, 0x9d, 0x2a, 0x85, 0xc8, 0xed, 0xd3, 0xec, 0x2a, 0xef,
];

/// Whether `point` is `04||x||y` with x and y each exactly the curve's field length, below p,
/// and y² = x³ - 3x + b (mod p).
pub fn on_curve(curve: Curve, point: &[u8]) -> bool {
    let (prime, b): (&[u8], &[u8]) = match curve {
        Curve::P256 => (&P256_P, &P256_B),
        Curve::P384 => (&P384_P, &P384_B),
    };
    let Some((&UNCOMPRESSED, coordinates)) = point.split_first() else {
        return false;
    };
    let Some((x, y)) = coordinates
        .split_at_checked(curve.field_len())
        .filter(|(_, y)| y.len() == curve.field_len())
    else {
        return false;
    };
    let Some(p) = Modulus::new(prime) else {
        return false;
    };
    let (Some(x), Some(y), Some(b)) = (p.residue(x), p.residue(y), p.residue(b)) else {
        return false;
    };
    // In Montgomery form (each value times R mod p), which products and sums keep.
    let [x, y, b] = [x, y, b].map(|value| p.to_montgomery(&value));
    // y² + 3x = x³ + b, so that only additions are needed besides the products.
    let left = p.add(&p.mont_mul(&y, &y), &p.add(&x, &p.add(&x, &x)));
    let right = p.add(&p.mont_mul(&p.mont_mul(&x, &x), &x), &b);
    left == right
}

#[cfg(test)]
pub(crate) mod tests {
    use p256::elliptic_curve::point::AffineCoordinates as _;

    use super::*;

    /// The check a JWKS load made before this module, with the `p256`/`p384` crates: the
    /// uncompressed tag, then `AffinePoint::from_coordinates` and `VerifyingKey::from_affine`.
    macro_rules! crates_check {
        ($curve:ident, $point:expr) => {{
            let point: &[u8] = $point;
            point.split_first().is_some_and(|(&tag, coordinates)| {
                let (x, y) = coordinates.split_at(coordinates.len() / 2);
                tag == 0x04
                    && x.len() == y.len()
                    && $curve::FieldBytes::try_from(x)
                        .ok()
                        .zip($curve::FieldBytes::try_from(y).ok())
                        .and_then(|(x, y)| {
                            $curve::AffinePoint::from_coordinates(&x, &y).into_option()
                        })
                        .is_some_and(|affine| {
                            $curve::ecdsa::VerifyingKey::from_affine(affine).is_ok()
                        })
            })
        }};
    }

    /// The crates' verdict on an encoded point; for an uncompressed one, `from_sec1_bytes`
    /// (the general decoder) agrees.
    fn crates_accept(curve: Curve, point: &[u8]) -> bool {
        let (check, sec1) = match curve {
            Curve::P256 => (
                crates_check!(p256, point),
                p256::ecdsa::VerifyingKey::from_sec1_bytes(point).is_ok(),
            ),
            Curve::P384 => (
                crates_check!(p384, point),
                p384::ecdsa::VerifyingKey::from_sec1_bytes(point).is_ok(),
            ),
        };
        if point.first() == Some(&UNCOMPRESSED) {
            assert_eq!(check, sec1, "{curve:?} {point:02x?}");
        }
        check
    }

    fn prime(curve: Curve) -> Vec<u8> {
        match curve {
            Curve::P256 => P256_P.to_vec(),
            Curve::P384 => P384_P.to_vec(),
        }
    }

    fn uncompressed(x: &[u8], y: &[u8]) -> Vec<u8> {
        [&[UNCOMPRESSED], x, y].concat()
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Big-endian `a + k` in as many bytes as `a` (no carry out in the cases used).
    fn plus(a: &[u8], k: u8) -> Vec<u8> {
        let mut out = a.to_vec();
        let mut carry = u16::from(k);
        for byte in out.iter_mut().rev() {
            let sum = u16::from(*byte) + carry;
            *byte = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0);
        out
    }

    /// Big-endian `a - b`, both as long, for `a >= b`.
    fn minus(a: &[u8], b: &[u8]) -> Vec<u8> {
        let mut out = a.to_vec();
        let mut borrow = 0i16;
        for (byte, &b) in out.iter_mut().zip(b).rev() {
            let difference = i16::from(*byte) - i16::from(b) - borrow;
            borrow = i16::from(difference < 0);
            *byte = difference.rem_euclid(256) as u8;
        }
        assert_eq!(borrow, 0);
        out
    }

    /// Public keys of secret scalars 0x0101..01 to 0x1010..10 (below both curves' orders).
    fn valid_points(curve: Curve) -> Vec<Vec<u8>> {
        (1..=16u8)
            .map(|byte| match curve {
                Curve::P256 => p256::ecdsa::SigningKey::from_slice(&[byte; 32])
                    .unwrap()
                    .verifying_key()
                    .to_sec1_point(false)
                    .as_bytes()
                    .to_vec(),
                Curve::P384 => p384::ecdsa::SigningKey::from_slice(&[byte; 48])
                    .unwrap()
                    .verifying_key()
                    .to_sec1_point(false)
                    .as_bytes()
                    .to_vec(),
            })
            .collect()
    }

    /// Points of small x, whose x + p still fits the field length: (x, y) valid, and the
    /// same point with x written as x + p (computed with Python's pow(v, (p + 1) / 4, p)).
    fn small_x_points(curve: Curve) -> [(u8, Vec<u8>); 2] {
        match curve {
            Curve::P256 => [
                (
                    0,
                    hex("66485c780e2f83d72433bd5d84a06bb6541c2af31dae871728bf856a174f93f4"),
                ),
                (
                    5,
                    hex("459243b9aa581806fe913bce99817ade11ca503c64d9a3c533415c083248fbcc"),
                ),
            ],
            Curve::P384 => [
                (0, hex("c306610fb0ae5a159cf45c06069f22a6c5eb3641c602d42dea2c4b4f75550793406d80d2b91ad54f9048bd487af1ade1")),
                (2, hex("8cdeadbbd04911a3c1931e26df3fa6439dca9c7eb286fbd46fc319f0e2bb780232baf57825fc0c1912ada2fefe84024c")),
            ],
        }
    }

    /// Every point the tests try, valid or not.
    pub(crate) fn points(curve: Curve) -> Vec<Vec<u8>> {
        let len = curve.field_len();
        let p = prime(curve);
        let valid = valid_points(curve);
        let mut points = valid.clone();
        for point in &valid {
            // One bit of the tag, x or y flipped.
            for bit in (0..8 * point.len()).step_by(7) {
                let mut flipped = point.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                points.push(flipped);
            }
            let (x, y) = point[1..].split_at(len);
            // A coordinate at p, above it, zero; the negated point (valid); wrong lengths.
            for other in [p.clone(), plus(&p, 1), vec![0xff; len], vec![0; len]] {
                points.push(uncompressed(&other, y));
                points.push(uncompressed(x, &other));
            }
            points.push(uncompressed(x, &minus(&p, y)));
            points.push([&point[..], &[0]].concat());
            points.push(point[..point.len() - 1].to_vec());
            points.push(uncompressed(&[&[0][..], x].concat(), &y[1..]));
            // The compressed and hybrid encodings of the same point: a JWK never makes them.
            let odd = y[len - 1] & 1;
            points.push([&[0x02 | odd][..], x].concat());
            points.push([&[0x06 | odd][..], x, y].concat());
        }
        for (small, y) in small_x_points(curve) {
            let mut x = vec![0; len];
            x[len - 1] = small;
            points.push(uncompressed(&x, &y));
            points.push(uncompressed(&plus(&p, small), &y));
        }
        // The point at infinity's SEC 1 encoding, all zeros, all ones, the tag alone, nothing.
        points.extend([
            vec![0x00],
            uncompressed(&vec![0; len], &vec![0; len]),
            uncompressed(&vec![0xff; len], &vec![0xff; len]),
            vec![UNCOMPRESSED],
            Vec::new(),
        ]);
        points
    }

    #[test]
    fn the_own_check_gives_the_crates_verdict_on_every_point() {
        for curve in [Curve::P256, Curve::P384] {
            let mut accepted = 0;
            for point in points(curve) {
                let expected = crates_accept(curve, &point);
                accepted += usize::from(expected);
                assert_eq!(on_curve(curve, &point), expected, "{curve:?} {point:02x?}");
            }
            // The 16 keys, their negations, and the two small-x points.
            assert_eq!(accepted, 16 + 16 + 2, "{curve:?}");
        }
    }

    #[test]
    fn a_coordinate_written_as_itself_plus_p_is_refused() {
        for curve in [Curve::P256, Curve::P384] {
            let len = curve.field_len();
            for (small, y) in small_x_points(curve) {
                let mut x = vec![0; len];
                x[len - 1] = small;
                assert!(
                    on_curve(curve, &uncompressed(&x, &y)),
                    "{curve:?} x = {small}"
                );
                let wrapped = uncompressed(&plus(&prime(curve), small), &y);
                assert!(!on_curve(curve, &wrapped), "{curve:?} x = p + {small}");
            }
        }
    }

    #[test]
    fn a_point_of_the_other_curve_is_refused() {
        for point in valid_points(Curve::P256) {
            assert!(!on_curve(Curve::P384, &point));
        }
        for point in valid_points(Curve::P384) {
            assert!(!on_curve(Curve::P256, &point));
        }
    }
}
