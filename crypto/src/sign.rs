//! Ed25519 identity signatures over labelled, ctx-bound messages, and client credentials.
//!
//! A client signs with the key of its TLS certificate; every signed message starts with a
//! domain label and the round context, so a signature can be neither replayed in another
//! round nor confused with a TLS handshake signature made with the same key.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;

use crate::context::RoundContext;
use crate::error::{Error, Result};
use crate::ids::ClientId;
use crate::kdf::{Label, labelled};
use crate::keys::PublicKey;
use crate::proofs::{KeyProof, KeyRole};

/// DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410): the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The DER `SubjectPublicKeyInfo` of an Ed25519 key.
pub fn ed25519_spki_der(key: &VerifyingKey) -> [u8; 44] {
    let mut out = [0u8; 44];
    out[..12].copy_from_slice(&ED25519_SPKI_PREFIX);
    out[12..].copy_from_slice(key.as_bytes());
    out
}

/// A client's long-term identity: its certificate's Ed25519 key. Not `Clone`; zeroized on
/// drop by ed25519-dalek; `Debug` shows only the id.
pub struct IdentityKey {
    key: SigningKey,
    id: ClientId,
}

impl IdentityKey {
    /// Wraps an existing signing key (the one of the client's certificate).
    pub fn from_signing_key(key: SigningKey) -> Self {
        let id = ClientId::from_spki_der(&ed25519_spki_der(&key.verifying_key()));
        IdentityKey { key, id }
    }

    /// A fresh identity (tests, simulations, `pki init`).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_signing_key(SigningKey::generate(rng))
    }

    /// SHA-256 of the key's SPKI.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// A credential that carries just the raw SPKI (see [`RawKeyCredentials`]).
    pub fn raw_credential(&self) -> Vec<u8> {
        ed25519_spki_der(&self.key.verifying_key()).to_vec()
    }

    /// Signs `label ‖ ctx ‖ parts`.
    pub fn sign(&self, label: Label, ctx: &RoundContext, parts: &[&[u8]]) -> [u8; 64] {
        self.key.sign(&labelled(label, ctx, parts)).to_bytes()
    }
}

impl core::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "IdentityKey({}, <redacted>)", self.id)
    }
}

/// The one rule by which every party — client, server, auditor, simulation — checks an Ed25519
/// signature: ed25519-dalek's `verify_strict`, one signature at a time. It refuses a
/// non-canonical or small-order R, a non-canonical s and a weak key. Batch verification is not
/// used anywhere: ed25519-dalek's batch equation decodes R leniently (a non-canonical encoding
/// of a point passes it), so a party that batch-verified would count a crafted signature that
/// a party checking one at a time refuses.
pub fn signature_holds(key: &VerifyingKey, message: &[u8], sig: &[u8; 64]) -> bool {
    key.verify_strict(message, &Signature::from_bytes(sig)).is_ok()
}

/// Verifies `sig` by `key` over `label ‖ ctx ‖ parts` by [`signature_holds`].
pub fn verify(
    key: &VerifyingKey,
    signer: ClientId,
    label: Label,
    ctx: &RoundContext,
    parts: &[&[u8]],
    sig: &[u8; 64],
) -> Result<()> {
    if signature_holds(key, &labelled(label, ctx, parts), sig) {
        Ok(())
    } else {
        Err(Error::BadSignature(signer))
    }
}

/// Verifies many signatures by [`signature_holds`], one at a time, and names the first signer
/// whose signature fails.
pub fn verify_many(items: &[SignedItem]) -> Result<()> {
    for (id, key, msg, sig) in items {
        if !signature_holds(key, msg, sig) {
            return Err(Error::BadSignature(*id));
        }
    }
    Ok(())
}

/// Checks a peer's credential (certificate chain) and returns its signing key.
///
/// The protocol core is IO-free and knows nothing of certificates: the coordinator and the
/// client library plug in a verifier, normally `fedsec_wire::x509::X509Credentials`, which checks
/// the chain against the federation CA. Whatever the credential, the verifier must check that
/// SHA-256 of the leaf's SPKI equals the claimed id.
///
/// The verifier also checks peers' identity signatures and decodes their advertised keys, so
/// that a party that verifies the same bytes many times over — the in-memory simulation, where thousands of clients check the
/// same consistency signatures — can remember a result instead of recomputing it. Overriding
/// the provided methods is only for that: an implementation must return exactly what they
/// return for the same arguments.
pub trait CredentialVerifier: Send + Sync {
    /// Verifies `credential` for `claimed` and returns the identity key it certifies.
    fn verify(&self, claimed: &ClientId, credential: &[u8]) -> Result<VerifyingKey>;

    /// This verifier for one attempt: credentials judged at the plan's instant T
    /// (`cert_time`, Unix seconds) and, where `until` is given (the server's admission), still
    /// valid at the attempt's last deadline. `None` for verifiers that read no time (raw keys):
    /// they judge alike at every instant.
    fn for_attempt(
        &self,
        cert_time: u64,
        until: Option<u64>,
    ) -> Option<std::sync::Arc<dyn CredentialVerifier>> {
        let _ = (cert_time, until);
        None
    }

    /// Verifies one signature by `signer` (whose key is `key`) over `message` by
    /// [`signature_holds`].
    fn verify_signature(
        &self,
        signer: ClientId,
        key: &VerifyingKey,
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<()> {
        if signature_holds(key, message, signature) {
            Ok(())
        } else {
            Err(Error::BadSignature(signer))
        }
    }

    /// Verifies many signatures, as [`verify_many`] does.
    fn verify_signatures(&self, items: &[SignedItem]) -> Result<()> {
        verify_many(items)
    }

    /// Whether `proof` proves knowledge of the secret of `key`, advertised by `owner` in `role`
    /// for the round `ctx` ([`KeyProof::verify`]).
    fn key_proof_holds(
        &self,
        proof: &KeyProof,
        key: &PublicKey,
        ctx: &RoundContext,
        owner: &ClientId,
        role: KeyRole,
    ) -> bool {
        proof.verify(key, ctx, owner, role)
    }

    /// Decodes a public key `owner` advertised: a canonical, non-identity Ristretto255 point.
    fn public_key(&self, owner: ClientId, bytes: &[u8; 32]) -> Result<PublicKey> {
        PublicKey::from_bytes(bytes).ok_or(Error::BadPublicKey(owner))
    }
}

/// One signature to check: the signer, its key, the signed message, the signature. The
/// message is shared: a batch of consistency signatures all sign the same one.
pub type SignedItem = (ClientId, VerifyingKey, std::sync::Arc<[u8]>, [u8; 64]);

/// Credentials that are bare Ed25519 SPKIs: for in-memory simulations and tests, where the
/// identities are known to be genuine by construction (no CA is involved).
#[derive(Debug, Default, Clone, Copy)]
pub struct RawKeyCredentials;

impl CredentialVerifier for RawKeyCredentials {
    fn verify(&self, claimed: &ClientId, credential: &[u8]) -> Result<VerifyingKey> {
        identity_key_of_spki(claimed, credential)
            .map_err(|reason| Error::BadCredential { client: *claimed, reason })
    }
}

/// Why a credential is refused ([`Error::BadCredential`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialRefusal {
    /// The certified key is not an Ed25519 `SubjectPublicKeyInfo`.
    #[error("not an Ed25519 SubjectPublicKeyInfo")]
    NotEd25519,
    /// SHA-256 of the certified key's SPKI is not the claimed client id.
    #[error("SHA-256 of the public key does not match the client id")]
    IdMismatch,
    /// The certified key is not a valid Ed25519 point.
    #[error("invalid Ed25519 key")]
    InvalidKey,
    /// The certified key has small order.
    #[error("small-order Ed25519 key")]
    SmallOrderKey,
    /// The certified key is not the canonical encoding of its point.
    #[error("non-canonical Ed25519 key encoding")]
    NonCanonicalKey,
    /// The certified key has a small-order component (it is not in the prime-order subgroup).
    #[error("Ed25519 key with a small-order component")]
    MixedOrderKey,
    /// The verifier refused the credential itself (its certificate chain, say); the core
    /// cannot know every verifier's reasons, so this one is the verifier's sentence.
    #[error("{0}")]
    Credential(String),
}

/// The Ed25519 identity key in `spki` (a DER `SubjectPublicKeyInfo`), after checking that
/// SHA-256 of `spki` is `claimed` and that the key is a valid Ed25519 point, canonically
/// encoded, of neither small nor mixed order. Honest keys (a·B) always pass; refusing the rest
/// leaves the one signature rule ([`signature_holds`]) nothing that depends on a key's torsion,
/// so any cofactorless verifier that requires canonical R and s reaches its verdicts (a
/// cofactored one, such as ZIP-215, accepts R + T for a small-order T, which this rule refuses).
/// Every [`CredentialVerifier`] ends with this check on the key its credential certifies.
pub fn identity_key_of_spki(
    claimed: &ClientId,
    spki: &[u8],
) -> Result<VerifyingKey, CredentialRefusal> {
    if spki.len() != 44 || spki[..12] != ED25519_SPKI_PREFIX {
        return Err(CredentialRefusal::NotEd25519);
    }
    if ClientId::from_spki_der(spki) != *claimed {
        return Err(CredentialRefusal::IdMismatch);
    }
    let bytes: [u8; 32] = spki[12..].try_into().expect("length checked above");
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| CredentialRefusal::InvalidKey)?;
    if key.is_weak() {
        return Err(CredentialRefusal::SmallOrderKey);
    }
    let point = key.to_edwards();
    if point.compress().to_bytes() != bytes {
        return Err(CredentialRefusal::NonCanonicalKey);
    }
    if !point.is_torsion_free() {
        return Err(CredentialRefusal::MixedOrderKey);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn signature_binds_label_and_context() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let id = IdentityKey::generate(&mut rng);
        let ctx = RoundContext([1; 32]);
        let sig = id.sign(Label::Consistency, &ctx, &[b"x"]);
        let vk = id.verifying_key();
        assert!(verify(&vk, id.id(), Label::Consistency, &ctx, &[b"x"], &sig).is_ok());
        assert!(verify(&vk, id.id(), Label::Advertise, &ctx, &[b"x"], &sig).is_err());
        assert!(
            verify(&vk, id.id(), Label::Consistency, &RoundContext([2; 32]), &[b"x"], &sig)
                .is_err()
        );
    }

    #[test]
    fn raw_credential_checks_id() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        let a = IdentityKey::generate(&mut rng);
        let b = IdentityKey::generate(&mut rng);
        assert!(RawKeyCredentials.verify(&a.id(), &a.raw_credential()).is_ok());
        assert!(matches!(
            RawKeyCredentials.verify(&b.id(), &a.raw_credential()),
            Err(Error::BadCredential { reason: CredentialRefusal::IdMismatch, .. })
        ));
    }

    /// A key with a small-order component (a·B + T, T of order 8) and a non-canonical encoding
    /// of an honest key's point are refused as credentials.
    #[test]
    fn mixed_order_and_non_canonical_keys_are_refused() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(6);
        let honest = IdentityKey::generate(&mut rng).verifying_key();
        let spki = |bytes: [u8; 32]| {
            let mut out = ED25519_SPKI_PREFIX.to_vec();
            out.extend_from_slice(&bytes);
            out
        };
        let check = |bytes: [u8; 32]| {
            let der = spki(bytes);
            identity_key_of_spki(&ClientId::from_spki_der(&der), &der)
        };
        assert!(check(honest.to_bytes()).is_ok());
        let mixed = (honest.to_edwards() + EIGHT_TORSION[1]).compress().to_bytes();
        assert_eq!(check(mixed), Err(CredentialRefusal::MixedOrderKey));
        // y + p for a point whose y < 19 is a second encoding of it; y = 1 (the identity) is one.
        let mut one_plus_p = [0xffu8; 32];
        one_plus_p[0] = 0xee;
        one_plus_p[31] = 0x7f;
        assert!(check(one_plus_p).is_err());
        // y + p for every y < 19 on the curve: a second encoding of a point, refused as such
        // when the point is not of small order (then it is refused as small order).
        let mut non_canonical = 0;
        for y in 2u8..19 {
            let mut bytes = [0xffu8; 32];
            bytes[0] = 0xed + y;
            bytes[31] = 0x7f;
            match VerifyingKey::from_bytes(&bytes) {
                Ok(k) if !k.is_weak() => {
                    assert_eq!(check(bytes), Err(CredentialRefusal::NonCanonicalKey), "y = {y}");
                    non_canonical += 1;
                }
                _ => assert!(check(bytes).is_err()),
            }
        }
        assert!(non_canonical > 0, "some y < 19 is on the curve");
        // The canonical encoding of the identity is refused as small order.
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(check(one), Err(CredentialRefusal::SmallOrderKey));
    }

    #[test]
    fn verify_many_names_the_first_bad_signer() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let ctx = RoundContext([9; 32]);
        let ids: Vec<_> = (0..4).map(|_| IdentityKey::generate(&mut rng)).collect();
        let mut items: Vec<_> = ids
            .iter()
            .map(|k| {
                let msg = labelled(Label::Consistency, &ctx, &[b"u3"]);
                (k.id(), k.verifying_key(), msg.into(), k.sign(Label::Consistency, &ctx, &[b"u3"]))
            })
            .collect();
        assert!(verify_many(&items).is_ok());
        items[2].3[0] ^= 1;
        assert_eq!(verify_many(&items), Err(Error::BadSignature(ids[2].id())));
    }
}
