//! The zero-knowledge proofs of protocol v2, over Ristretto255 with Fiat–Shamir challenges.
//!
//! - [`KeyProof`]: a Schnorr proof of knowledge of the secret behind an advertised public key.
//!   Without it a client could advertise another client's key plus r·G and so relate its pairwise
//!   mask or share key to someone else's secret. The challenge binds the round context, the
//!   owner and the key's role, so a proof cannot be replayed for another client, round or role.
//! - [`ComplaintProof`]: a Chaum–Pedersen proof that the key-agreement value K a complainer
//!   reveals is the right one, log_G(c_v^PK) = log_{c_u^PK}(K), so the server can open the
//!   disputed ciphertext itself and judge the complaint without trusting either party.
//!
//! Challenges are SHA-512 of the length-prefixed `label ‖ ctx ‖ parts` reduced wide mod ℓ
//! (`from_bytes_mod_order_wide`). Every point a proof carries must be a canonical, non-identity
//! encoding and every scalar a canonical one (`from_canonical_bytes`, never a reduction mod ℓ),
//! so each proof has exactly one encoding.
//!
//! Nonces are hedged: r = SHA-512 reduced wide of (`proof-nonce` ‖ the proof's label ‖ the
//! secret ‖ ctx ‖ the statement ‖ 32 bytes from the OS RNG). With the OS RNG sound they are
//! uniform; were its output known — a seeded simulation generator passed in by mistake, say —
//! r would still depend on the secret, so z = r + e·x would not give x away. The prover's
//! scalar multiplications are constant-time and its nonces zeroized; the verifier's
//! multiplications (public data only) are variable-time.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use rand_core::Rng;
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroizing;

use crate::context::RoundContext;
use crate::ids::ClientId;
use crate::kdf::Label;
use crate::keys::{PublicKey, SecretScalar, SharedPoint};
use crate::rng::os_rng;
use crate::secagg::commitments::Dealt;

/// SHA-512 of the length-prefixed `label ‖ ctx ‖ parts` (the encoding of
/// [`labelled`](crate::kdf::labelled)), fed to the hash part by part so that no buffer holds a
/// copy of a secret part.
fn sha512_labelled(label: Label, ctx: &RoundContext, parts: &[&[u8]]) -> Zeroizing<[u8; 64]> {
    let mut h = Sha512::new();
    for part in
        [label.as_bytes(), ctx.as_bytes().as_slice()].into_iter().chain(parts.iter().copied())
    {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    Zeroizing::new(h.finalize().into())
}

/// The challenge scalar H(`label` ‖ ctx ‖ parts), SHA-512 reduced wide mod ℓ.
pub fn challenge(label: Label, ctx: &RoundContext, parts: &[&[u8]]) -> Scalar {
    Scalar::from_bytes_mod_order_wide(&sha512_labelled(label, ctx, parts))
}

/// 32 bytes from the OS RNG, the fresh part of a hedged nonce.
fn os_entropy() -> Zeroizing<[u8; 32]> {
    let mut e = Zeroizing::new([0u8; 32]);
    os_rng().fill_bytes(e.as_mut());
    e
}

/// The hedged nonce of a proof under `label` by `secret` about `statement`:
/// SHA-512 wide of (`proof-nonce` ‖ ctx ‖ label ‖ secret ‖ secret·G ‖ statement ‖ entropy).
/// Never zero. The prover's own public key is in it, so two statements that differ only in the
/// key claimed for the secret never share a nonce.
fn hedged_nonce(
    label: Label,
    secret: &SecretScalar,
    ctx: &RoundContext,
    statement: &[&[u8]],
    entropy: &[u8; 32],
) -> SecretScalar {
    let ikm = secret.to_ikm();
    let public = secret.public().to_bytes();
    let mut parts: Vec<&[u8]> = vec![label.as_bytes(), ikm.as_ref(), &public];
    parts.extend_from_slice(statement);
    parts.push(entropy);
    let r = Zeroizing::new(Scalar::from_bytes_mod_order_wide(&sha512_labelled(
        Label::ProofNonce,
        ctx,
        &parts,
    )));
    if *r == Scalar::ZERO {
        // Probability 1/ℓ; a zero nonce would reveal x.
        return SecretScalar::random(&mut os_rng());
    }
    SecretScalar::from_scalar(*r)
}

/// A canonical, non-identity point; `None` otherwise.
fn point(bytes: &[u8]) -> Option<RistrettoPoint> {
    let p = CompressedRistretto::from_slice(bytes).ok()?.decompress()?;
    (!p.is_identity()).then_some(p)
}

/// A canonical scalar; `None` for an encoding of a value ≥ ℓ.
fn canonical_scalar(bytes: &[u8]) -> Option<Scalar> {
    Option::from(Scalar::from_canonical_bytes(bytes.try_into().ok()?))
}

/// The role of an advertised key, bound into its proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRole {
    /// c_u^PK, for share encryption.
    Encryption,
    /// s_u^PK, for pairwise masks.
    Masking,
}

impl core::fmt::Display for KeyRole {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            KeyRole::Encryption => "encryption",
            KeyRole::Masking => "mask",
        })
    }
}

impl KeyRole {
    /// The byte that names the role in the challenge.
    pub const fn code(self) -> u8 {
        match self {
            KeyRole::Encryption => 0x01,
            KeyRole::Masking => 0x02,
        }
    }
}

/// A Schnorr proof of knowledge of x with PK = x·G: R ‖ z (64 bytes), R = r·G,
/// z = r + e·x, e = H(`pok` ‖ ctx ‖ owner ‖ role ‖ PK ‖ R).
#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyProof(#[serde(with = "serde_bytes")] pub [u8; 64]);

impl core::fmt::Debug for KeyProof {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "KeyProof({:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2])
    }
}

impl KeyProof {
    fn challenge(
        ctx: &RoundContext,
        owner: &ClientId,
        role: KeyRole,
        public: &[u8; 32],
        r: &[u8],
    ) -> Scalar {
        challenge(Label::Pok, ctx, &[&owner.0, &[role.code()], public, r])
    }

    /// Proves knowledge of `secret`, whose public key `owner` advertises in `role`, with a
    /// hedged nonce drawn from the OS RNG.
    pub fn prove(
        secret: &SecretScalar,
        ctx: &RoundContext,
        owner: &ClientId,
        role: KeyRole,
    ) -> KeyProof {
        Self::prove_with_entropy(secret, ctx, owner, role, &os_entropy())
    }

    /// [`prove`](Self::prove) with the nonce's fresh part given: for known-answer files only.
    /// The nonce still depends on the secret, so a repeated `entropy` repeats the proof but
    /// reveals nothing.
    pub fn prove_with_entropy(
        secret: &SecretScalar,
        ctx: &RoundContext,
        owner: &ClientId,
        role: KeyRole,
        entropy: &[u8; 32],
    ) -> KeyProof {
        let public = secret.public().to_bytes();
        let nonce =
            hedged_nonce(Label::Pok, secret, ctx, &[&owner.0, &[role.code()], &public], entropy);
        let r = nonce.public().to_bytes();
        let e = Self::challenge(ctx, owner, role, &public, &r);
        let z = Zeroizing::new(nonce.expose() + e * secret.expose());
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&r);
        out[32..].copy_from_slice(&z.to_bytes());
        KeyProof(out)
    }

    /// Whether this proves knowledge of the secret of `public`, advertised by `owner` in `role`
    /// for the round `ctx`: R canonical and not the identity, z canonical, z·G = R + e·PK.
    pub fn verify(
        &self,
        public: &PublicKey,
        ctx: &RoundContext,
        owner: &ClientId,
        role: KeyRole,
    ) -> bool {
        let (Some(r), Some(z)) = (point(&self.0[..32]), canonical_scalar(&self.0[32..])) else {
            return false;
        };
        let e = Self::challenge(ctx, owner, role, &public.to_bytes(), &self.0[..32]);
        RistrettoPoint::vartime_double_scalar_mul_basepoint(&-e, public.point(), &z) == r
    }
}

/// What a complaint's proof is about: the accused dealer u, the complainer v, digests of the
/// disputed share as forwarded, both encryption keys and the revealed key-agreement value
/// K = c_v^SK·c_u^PK. Built from the forwarded share itself ([`ComplaintStatement::new`]), so
/// the digests a proof binds are always those of the share that is judged.
#[derive(Debug, Clone, Copy)]
pub struct ComplaintStatement<'a> {
    /// The accused dealer u.
    pub accused: &'a ClientId,
    /// The complainer v.
    pub complainer: &'a ClientId,
    /// SHA-256 of the entry, its index, m, path and the dealer's signature
    /// ([`Dealt::evidence_digest`]).
    pub evidence: [u8; 32],
    /// SHA-256 of the disputed ciphertext.
    pub ciphertext: [u8; 32],
    /// c_u^PK.
    pub accused_key: &'a PublicKey,
    /// c_v^PK.
    pub complainer_key: &'a PublicKey,
    /// K.
    pub shared: &'a SharedPoint,
}

impl<'a> ComplaintStatement<'a> {
    /// The statement about `dealt`, the share u dealt v.
    pub fn new(
        accused: &'a ClientId,
        complainer: &'a ClientId,
        dealt: &Dealt,
        accused_key: &'a PublicKey,
        complainer_key: &'a PublicKey,
        shared: &'a SharedPoint,
    ) -> Self {
        ComplaintStatement {
            accused,
            complainer,
            evidence: dealt.evidence_digest(),
            ciphertext: Sha256::digest(&dealt.ciphertext).into(),
            accused_key,
            complainer_key,
            shared,
        }
    }

    /// The parts of the statement, in challenge order (before R1, R2).
    fn parts(&self) -> [Zeroizing<Vec<u8>>; 7] {
        [
            Zeroizing::new(self.accused.0.to_vec()),
            Zeroizing::new(self.complainer.0.to_vec()),
            Zeroizing::new(self.evidence.to_vec()),
            Zeroizing::new(self.ciphertext.to_vec()),
            Zeroizing::new(self.accused_key.to_bytes().to_vec()),
            Zeroizing::new(self.complainer_key.to_bytes().to_vec()),
            Zeroizing::new(self.shared.to_bytes().to_vec()),
        ]
    }

    fn challenge(&self, ctx: &RoundContext, r1: &[u8], r2: &[u8]) -> Scalar {
        let parts = self.parts();
        let mut all: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        all.extend([r1, r2]);
        challenge(Label::Complaint, ctx, &all)
    }
}

/// A Chaum–Pedersen proof that log_G(c_v^PK) = log_{c_u^PK}(K): R1 ‖ R2 ‖ z (96 bytes),
/// R1 = r·G, R2 = r·c_u^PK, z = r + e·c_v^SK, e = H(`complaint` ‖ ctx ‖ u ‖ v ‖ evidence ‖
/// SHA-256(ct) ‖ c_u^PK ‖ c_v^PK ‖ K ‖ R1 ‖ R2).
#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ComplaintProof(#[serde(with = "serde_bytes")] pub [u8; 96]);

impl core::fmt::Debug for ComplaintProof {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ComplaintProof({:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2])
    }
}

impl ComplaintProof {
    /// Proves the statement with `secret` = c_v^SK, with a hedged nonce drawn from the OS RNG.
    /// `None` unless the statement is true of this secret: c_v^PK = secret·G and
    /// K = secret·c_u^PK (a prover never signs a false statement with its key).
    pub fn prove(
        secret: &SecretScalar,
        statement: &ComplaintStatement<'_>,
        ctx: &RoundContext,
    ) -> Option<ComplaintProof> {
        Self::prove_with_entropy(secret, statement, ctx, &os_entropy())
    }

    /// [`prove`](Self::prove) with the nonce's fresh part given: for known-answer files only.
    pub fn prove_with_entropy(
        secret: &SecretScalar,
        statement: &ComplaintStatement<'_>,
        ctx: &RoundContext,
        entropy: &[u8; 32],
    ) -> Option<ComplaintProof> {
        if secret.public() != *statement.complainer_key
            || secret.agree_point(statement.accused_key).to_bytes() != statement.shared.to_bytes()
        {
            return None;
        }
        let parts = statement.parts();
        let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        let nonce = hedged_nonce(Label::Complaint, secret, ctx, &parts, entropy);
        let r1 = nonce.public().to_bytes();
        let r2 = (nonce.expose() * statement.accused_key.point()).compress().to_bytes();
        let e = statement.challenge(ctx, &r1, &r2);
        let z = Zeroizing::new(nonce.expose() + e * secret.expose());
        let mut out = [0u8; 96];
        out[..32].copy_from_slice(&r1);
        out[32..64].copy_from_slice(&r2);
        out[64..].copy_from_slice(&z.to_bytes());
        Some(ComplaintProof(out))
    }

    /// Whether this proves the statement: R1, R2 canonical and not the identity, z canonical,
    /// z·G = R1 + e·c_v^PK and z·c_u^PK = R2 + e·K. (The statement's keys are
    /// [`PublicKey`]s and K a [`SharedPoint`], each decoded canonical and non-identity.)
    pub fn verify(&self, statement: &ComplaintStatement<'_>, ctx: &RoundContext) -> bool {
        let (Some(r1), Some(r2), Some(z)) =
            (point(&self.0[..32]), point(&self.0[32..64]), canonical_scalar(&self.0[64..]))
        else {
            return false;
        };
        let e = statement.challenge(ctx, &self.0[..32], &self.0[32..64]);
        let first = RistrettoPoint::vartime_double_scalar_mul_basepoint(
            &-e,
            statement.complainer_key.point(),
            &z,
        ) == r1;
        let second = RistrettoPoint::vartime_multiscalar_mul(
            [z, -e],
            [statement.accused_key.point(), statement.shared.point()],
        ) == r2;
        first && second
    }
}

/// x·G for a scalar that is public or about to be (a commitment to a share).
pub fn commit(x: &Scalar) -> RistrettoPoint {
    x * RISTRETTO_BASEPOINT_TABLE
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng(seed: u64) -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(seed)
    }

    const CTX: RoundContext = RoundContext([5; 32]);
    const U: ClientId = ClientId([1; 32]);
    const V: ClientId = ClientId([2; 32]);

    #[test]
    fn a_key_proof_holds_for_its_key_owner_role_and_round_only() {
        let mut r = rng(1);
        let x = SecretScalar::random(&mut r);
        let pk = x.public();
        let proof = KeyProof::prove(&x, &CTX, &U, KeyRole::Encryption);
        assert!(proof.verify(&pk, &CTX, &U, KeyRole::Encryption));
        assert!(!proof.verify(&pk, &CTX, &V, KeyRole::Encryption));
        assert!(!proof.verify(&pk, &CTX, &U, KeyRole::Masking));
        assert!(!proof.verify(&pk, &RoundContext([6; 32]), &U, KeyRole::Encryption));
        let other = SecretScalar::random(&mut r).public();
        assert!(!proof.verify(&other, &CTX, &U, KeyRole::Encryption));
        for byte in 0..64 {
            let mut bad = proof;
            bad.0[byte] ^= 0x10;
            assert!(!bad.verify(&pk, &CTX, &U, KeyRole::Encryption), "byte {byte}");
        }
    }

    /// Another's key plus r·G: whoever advertises it knows r but not the other's secret, and
    /// cannot prove knowledge of the sum's secret — and a proof for the other's own key does
    /// not carry over.
    #[test]
    fn a_key_related_to_anothers_cannot_be_proved() {
        let mut r = rng(2);
        let victim = SecretScalar::random(&mut r);
        let victim_proof = KeyProof::prove(&victim, &CTX, &V, KeyRole::Masking);
        let offset = SecretScalar::random(&mut r);
        let related = PublicKey::from_bytes(
            &(victim.public().point() + offset.public().point()).compress().to_bytes(),
        )
        .unwrap();
        // The attacker's best tries: the victim's proof, and a proof made with its own part.
        assert!(!victim_proof.verify(&related, &CTX, &U, KeyRole::Masking));
        let own = KeyProof::prove(&offset, &CTX, &U, KeyRole::Masking);
        assert!(!own.verify(&related, &CTX, &U, KeyRole::Masking));
        // The victim's proof does not even pass for the victim's key in the attacker's name.
        assert!(!victim_proof.verify(&victim.public(), &CTX, &U, KeyRole::Masking));
    }

    /// z + ℓ encodes the same value non-canonically; R encoded as the identity; both refused.
    #[test]
    fn non_canonical_and_identity_encodings_are_refused() {
        let mut r = rng(3);
        let x = SecretScalar::random(&mut r);
        let pk = x.public();
        let proof = KeyProof::prove(&x, &CTX, &U, KeyRole::Encryption);
        let plus_l = add_group_order(&proof.0[32..].try_into().unwrap());
        if let Some(plus_l) = plus_l {
            let mut bad = proof;
            bad.0[32..].copy_from_slice(&plus_l);
            assert!(!bad.verify(&pk, &CTX, &U, KeyRole::Encryption));
        }
        let mut identity = proof;
        identity.0[..32].copy_from_slice(&[0; 32]);
        assert!(!identity.verify(&pk, &CTX, &U, KeyRole::Encryption));
    }

    /// The little-endian encoding of s + ℓ, if it fits in 256 bits.
    pub(crate) fn add_group_order(s: &[u8; 32]) -> Option<[u8; 32]> {
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(s[i]) + u16::from(L[i]) + carry;
            out[i] = v as u8;
            carry = v >> 8;
        }
        (carry == 0).then_some(out)
    }

    /// The nonce is hedged: the same fresh bytes give the same proof for the same secret and
    /// statement, and unrelated nonces for another secret — so known fresh bytes still leave
    /// r unknown to whoever lacks the secret.
    #[test]
    fn a_hedged_nonce_depends_on_the_secret_and_the_fresh_bytes() {
        let mut r = rng(6);
        let (x, y) = (SecretScalar::random(&mut r), SecretScalar::random(&mut r));
        let fresh = [42u8; 32];
        let a = KeyProof::prove_with_entropy(&x, &CTX, &U, KeyRole::Masking, &fresh);
        assert_eq!(a, KeyProof::prove_with_entropy(&x, &CTX, &U, KeyRole::Masking, &fresh));
        let b = KeyProof::prove_with_entropy(&y, &CTX, &U, KeyRole::Masking, &fresh);
        assert_ne!(a.0[..32], b.0[..32]);
        let c = KeyProof::prove_with_entropy(&x, &CTX, &U, KeyRole::Masking, &[43; 32]);
        assert_ne!(a.0[..32], c.0[..32]);
        assert!(a.verify(&x.public(), &CTX, &U, KeyRole::Masking));
        // Two proofs from the OS RNG differ.
        assert_ne!(
            KeyProof::prove(&x, &CTX, &U, KeyRole::Masking),
            KeyProof::prove(&x, &CTX, &U, KeyRole::Masking)
        );
    }

    /// A forwarded share to complain about (its content does not matter to the proof).
    fn dealt() -> Dealt {
        use crate::secagg::commitments::Entry;
        Dealt {
            entry: Entry::new(&V, &[1; 32], &[2; 32], &[3; 32]),
            index: 1,
            size: 3,
            path: vec![[4; 32], [5; 32]],
            signature: [6; 64],
            ciphertext: vec![7; 80],
        }
    }

    #[test]
    fn a_complaint_proof_holds_for_the_true_shared_value_only() {
        let mut r = rng(4);
        let (u, v) = (SecretScalar::random(&mut r), SecretScalar::random(&mut r));
        let (upk, vpk) = (u.public(), v.public());
        let k = v.agree_point(&upk);
        assert_eq!(*k.to_bytes(), *u.agree_point(&vpk).to_bytes(), "both sides agree on K");
        let shown = dealt();
        let statement = ComplaintStatement::new(&U, &V, &shown, &upk, &vpk, &k);
        let proof = ComplaintProof::prove(&v, &statement, &CTX).unwrap();
        assert!(proof.verify(&statement, &CTX));
        assert!(!proof.verify(&statement, &RoundContext([9; 32])));
        // Any other K fails, and the prover refuses to prove a false statement.
        let wrong = SecretScalar::random(&mut r).agree_point(&upk);
        assert!(!proof.verify(&ComplaintStatement { shared: &wrong, ..statement }, &CTX));
        assert!(
            ComplaintProof::prove(&v, &ComplaintStatement { shared: &wrong, ..statement }, &CTX)
                .is_none()
        );
        let other = SecretScalar::random(&mut r).public();
        assert!(
            ComplaintProof::prove(
                &v,
                &ComplaintStatement { complainer_key: &other, ..statement },
                &CTX
            )
            .is_none()
        );
        // Each bound field matters: ids, the evidence and ciphertext of the share shown, both
        // keys.
        let mut changed_share = dealt();
        changed_share.index = 2;
        let mut changed_ct = dealt();
        changed_ct.ciphertext[0] ^= 1;
        for changed in [
            ComplaintStatement { accused: &V, ..statement },
            ComplaintStatement { complainer: &U, ..statement },
            ComplaintStatement::new(&U, &V, &changed_share, &upk, &vpk, &k),
            ComplaintStatement::new(&U, &V, &changed_ct, &upk, &vpk, &k),
            ComplaintStatement { accused_key: &other, ..statement },
            ComplaintStatement { complainer_key: &other, ..statement },
        ] {
            assert!(!proof.verify(&changed, &CTX));
        }
        for byte in 0..96 {
            let mut bad = proof;
            bad.0[byte] ^= 0x04;
            assert!(!bad.verify(&statement, &CTX), "byte {byte}");
        }
        let plus_l = add_group_order(&proof.0[64..].try_into().unwrap()).expect("z + ℓ < 2^254");
        let mut bad = proof;
        bad.0[64..].copy_from_slice(&plus_l);
        assert!(!bad.verify(&statement, &CTX));
    }

    /// Two complaints by one complainer with the same fresh bytes never share a nonce (which
    /// would give its secret away): the statement, its own public key included, is in the nonce.
    #[test]
    fn complaints_with_the_same_fresh_bytes_have_different_nonces() {
        let mut r = rng(7);
        let v = SecretScalar::random(&mut r);
        let vpk = v.public();
        let fresh = [1u8; 32];
        let mut nonces = std::collections::HashSet::new();
        for _ in 0..4 {
            let u = SecretScalar::random(&mut r).public();
            let k = v.agree_point(&u);
            let shown = dealt();
            let statement = ComplaintStatement::new(&U, &V, &shown, &u, &vpk, &k);
            let proof = ComplaintProof::prove_with_entropy(&v, &statement, &CTX, &fresh).unwrap();
            assert!(nonces.insert(proof.0[..32].to_vec()));
        }
    }
}
