//! Verifies one fixed valid Ed25519 signature (RFC 8037 A.4) `repeat` times per request (plugin
//! configuration `"<repeat>"`) with the candidate the build's feature picks, so callgrind's
//! instructions per request with repeat 10, less repeat 0, over 10, is one verify in V8. A failed
//! verify answers 500: scripts/ed25519_probe.py refuses to count a candidate that is wrong.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::hint::black_box;

const PUBLIC: [u8; 32] = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
const SIGNATURE: [u8; 64] = hex(
    "860c98d2297f3060a33f42739672d61b53cf3adefed3d3c672f320dc021b411e\
     9d59b8628dc351e248b88b29468e0e41855b0fb7d83bb15be902bfccb8cd0a02",
);
const INPUT: &[u8] = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    }
}

const fn hex<const N: usize>(s: &str) -> [u8; N] {
    let b = s.as_bytes();
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = nibble(b[2 * i]) << 4 | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

#[cfg(feature = "compact")]
fn verifies(public: &[u8; 32], input: &[u8], signature: &[u8; 64]) -> bool {
    let key = ed25519_compact::PublicKey::new(*public);
    key.verify(input, &ed25519_compact::Signature::new(*signature)).is_ok()
}

#[cfg(feature = "ed25519-dalek")]
fn verifies(public: &[u8; 32], input: &[u8], signature: &[u8; 64]) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(public).is_ok_and(|key| {
        key.verify_strict(input, &ed25519_dalek::Signature::from_bytes(signature)).is_ok()
    })
}

/// meshguard's `auth::portable::ed25519_verifies` and `ed25519_point`, as they are there.
#[cfg(any(feature = "dalek", feature = "dalek-no-tables"))]
fn verifies(public: &[u8; 32], input: &[u8], signature: &[u8; 64]) -> bool {
    use curve25519_dalek::{EdwardsPoint, Scalar};

    fn ed25519_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
        let [first, middle @ .., last] = *bytes;
        let non_canonical = last & 0x7f == 0x7f && middle.iter().all(|&b| b == 0xff) && first >= 0xed;
        if non_canonical {
            return None;
        }
        curve25519_dalek::edwards::CompressedEdwardsY(*bytes)
            .decompress()
            .filter(|point| !point.is_small_order())
    }

    let Some((r, s)) = signature.split_first_chunk::<32>() else {
        return false;
    };
    let Some(s) = <[u8; 32]>::try_from(s)
        .ok()
        .and_then(|s| Option::<Scalar>::from(Scalar::from_canonical_bytes(s)))
    else {
        return false;
    };
    let (Some(a), Some(r_point)) = (ed25519_point(public), ed25519_point(r)) else {
        return false;
    };
    let mut hash = hmac_sha512::Hash::new();
    hash.update(r);
    hash.update(public);
    hash.update(input);
    let h = Scalar::from_bytes_mod_order_wide(&hash.finalize());
    (EdwardsPoint::vartime_double_scalar_mul_basepoint(&h, &-a, &s) - r_point).is_small_order()
}

/// No candidate: the module every candidate's size is compared with.
#[cfg(not(any(feature = "compact", feature = "ed25519-dalek", feature = "dalek", feature = "dalek-no-tables")))]
fn verifies(_: &[u8; 32], _: &[u8], _: &[u8; 64]) -> bool {
    true
}

#[derive(Clone, Copy, Default)]
struct Probe {
    repeat: usize,
}

impl Context for Probe {}

impl RootContext for Probe {
    fn on_configure(&mut self, _: usize) -> bool {
        let text = self
            .get_plugin_configuration()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        self.repeat = text.trim().parse().unwrap_or(0);
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(*self))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let mut all = true;
        for _ in 0..self.repeat {
            all &= verifies(black_box(&PUBLIC), black_box(INPUT), black_box(&SIGNATURE));
        }
        if all {
            Action::Continue
        } else {
            self.send_http_response(500, vec![], Some(b"verify failed"));
            Action::Pause
        }
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Probe::default()) });
}}
