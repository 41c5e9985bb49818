//! Ristretto255 key pairs and key agreement.
//!
//! Ristretto255 has prime order, so there is no cofactor to clear, and a secret key is a
//! [`Scalar`] that Shamir sharing splits directly. Identity points are rejected on decoding.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A Ristretto255 secret scalar. Not `Clone`, zeroized on drop, `Debug` redacted.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretScalar(Scalar);

impl SecretScalar {
    /// A uniformly random non-zero scalar.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        loop {
            let s = Scalar::random(rng);
            if s != Scalar::ZERO {
                return SecretScalar(s);
            }
        }
    }

    /// Wraps a scalar (a reconstructed secret, for instance).
    pub fn from_scalar(s: Scalar) -> Self {
        SecretScalar(s)
    }

    /// The scalar, for Shamir sharing. Handle with care.
    pub fn expose(&self) -> &Scalar {
        &self.0
    }

    /// s·G.
    pub fn public(&self) -> PublicKey {
        let p = &self.0 * RISTRETTO_BASEPOINT_TABLE;
        PublicKey { point: p, bytes: p.compress().to_bytes() }
    }

    /// The 32-byte shared secret s·P, the input keying material of a KDF (never a key itself).
    pub fn agree(&self, peer: &PublicKey) -> Zeroizing<[u8; 32]> {
        Zeroizing::new((self.0 * peer.point).compress().to_bytes())
    }

    /// The key-agreement value s·P as a point (protocol v2): what a holder opens a dealer's
    /// share with and reveals, with a proof, in a complaint.
    pub fn agree_point(&self, peer: &PublicKey) -> SharedPoint {
        SharedPoint::from_point(self.0 * peer.point)
    }

    /// The canonical 32 bytes of the scalar, for use as KDF input keying material.
    pub fn to_ikm(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }
}

impl core::fmt::Debug for SecretScalar {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SecretScalar(<redacted>)")
    }
}

/// A validated Ristretto255 point: canonical encoding, never the identity.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    point: RistrettoPoint,
    bytes: [u8; 32],
}

impl PublicKey {
    /// Decodes a canonical, non-identity point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        let point = CompressedRistretto(*bytes).decompress()?;
        if point.is_identity() {
            return None;
        }
        Some(PublicKey { point, bytes: *bytes })
    }

    /// The compressed encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.bytes
    }

    /// The point.
    pub fn point(&self) -> &RistrettoPoint {
        &self.point
    }

    /// Whether `secret`·G equals this point (a reconstructed key checked against its public key).
    pub fn matches(&self, secret: &Scalar) -> bool {
        (secret * RISTRETTO_BASEPOINT_TABLE) == self.point
    }
}

impl core::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PublicKey(")?;
        for b in &self.bytes[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// A key-agreement value K = c_v^SK·c_u^PK (protocol v2): a canonical, non-identity point.
/// Secret while only the pair knows it, so not `Copy`, zeroized on drop, `Debug` redacted; a
/// complaint reveals it, with a proof that it is the right one.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SharedPoint {
    point: RistrettoPoint,
    bytes: [u8; 32],
}

impl SharedPoint {
    fn from_point(point: RistrettoPoint) -> Self {
        SharedPoint { bytes: point.compress().to_bytes(), point }
    }

    /// Decodes a revealed K: a canonical, non-identity point, `None` otherwise.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        let point = CompressedRistretto(*bytes).decompress()?;
        if point.is_identity() {
            return None;
        }
        Some(SharedPoint { point, bytes: *bytes })
    }

    /// The encoding (a KDF's input keying material, or a complaint's revealed K).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.bytes)
    }

    /// The point.
    pub fn point(&self) -> &RistrettoPoint {
        &self.point
    }
}

impl core::fmt::Debug for SharedPoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SharedPoint(<redacted>)")
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.bytes.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = <[u8; 32]>::deserialize(d)?;
        PublicKey::from_bytes(&bytes).ok_or_else(|| {
            serde::de::Error::custom("not a canonical non-identity ristretto255 point")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn agreement_is_symmetric() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let a = SecretScalar::random(&mut rng);
        let b = SecretScalar::random(&mut rng);
        assert_eq!(*a.agree(&b.public()), *b.agree(&a.public()));
    }

    #[test]
    fn identity_is_rejected() {
        assert!(PublicKey::from_bytes(&[0u8; 32]).is_none());
        // Non-canonical encoding (all ones) is rejected too.
        assert!(PublicKey::from_bytes(&[0xff; 32]).is_none());
    }

    #[test]
    fn debug_is_redacted() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let s = SecretScalar::random(&mut rng);
        let shown = format!("{s:?}");
        assert!(shown.contains("redacted"));
        let hex: String = s.expose().to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex[..8]));
    }
}
