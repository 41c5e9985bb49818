//! Verifiable shares (protocol v2): a dealer's commitments to the shares it deals, the server's
//! degree test on them, and the one validity function `Open` that holder, server and auditor
//! all run on a forwarded share.
//!
//! For each secret (b_u and s_u^SK) and each holder v of H(u)∩U1, the dealer u publishes
//! S_{u,v} = share_v·G. One fixed-length [`Entry`] per holder, in canonical order, holds v, the
//! SHA-256 of the ciphertext sent to v and both commitments; the entries are the leaves of an
//! RFC 6962 Merkle tree whose root u signs with the size m
//! (Sign_id(`share-keys` ‖ ctx ‖ u ‖ m ‖ root)).
//!
//! - [`degree_test`] lets the server check, with one multi-scalar multiplication, that the m
//!   commitments and the public key C_0 (B_u, resp. s_u^PK) lie on polynomials of degree at
//!   most t − 1 — so any t shares that pass their commitments give the one secret behind C_0.
//! - [`open`] decides what a forwarded share is: **malformed** (the entry, ciphertext hash, path
//!   or signature does not check — what the server was to check before forwarding), **bad**
//!   (well signed, but it does not decrypt to two canonical scalars matching their commitments
//!   — the dealer's fault) or **ok**. The holder runs it with the key-agreement value it computes
//!   itself; the server and auditor with the one a complaint reveals and proves.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::VerifyingKey;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::aead::ShareKey;
use crate::context::RoundContext;
use crate::ids::ClientId;
use crate::kdf::{Label, labelled, push_lp};
use crate::keys::{PublicKey, SharedPoint};
use crate::merkle::{self, Hash};
use crate::shamir::ShareValue;
use crate::sign::signature_holds;

/// Length of an encoded [`Entry`].
pub const ENTRY_LEN: usize = 128;

/// Length of every share ciphertext: two 32-byte scalars and the 16-byte Poly1305 tag. The
/// server refuses a ShareKeys with any other length, so that no dealer can make a holder carry
/// a huge ciphertext into its complaint.
pub const CIPHERTEXT_LEN: usize = 64 + 16;

/// One holder's line in a dealer's commitments: v ‖ SHA-256(ct_{u→v}) ‖ S^b_{u,v} ‖ S^s_{u,v}.
/// The dealer's own entry has 32 zero bytes for the ciphertext hash (it sends itself nothing).
#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry(#[serde(with = "serde_bytes")] pub [u8; ENTRY_LEN]);

impl core::fmt::Debug for Entry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Entry(holder {}…)", hex4(&self.0[..4]))
    }
}

fn hex4(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Entry {
    /// The entry for `holder`, from the ciphertext hash and the two commitments.
    pub fn new(
        holder: &ClientId,
        ciphertext_hash: &[u8; 32],
        self_mask: &[u8; 32],
        mask_key: &[u8; 32],
    ) -> Entry {
        let mut e = [0u8; ENTRY_LEN];
        e[..32].copy_from_slice(&holder.0);
        e[32..64].copy_from_slice(ciphertext_hash);
        e[64..96].copy_from_slice(self_mask);
        e[96..].copy_from_slice(mask_key);
        Entry(e)
    }

    /// The holder it names.
    pub fn holder(&self) -> ClientId {
        ClientId(self.0[..32].try_into().expect("32 bytes"))
    }

    /// The SHA-256 of the ciphertext it names (zeros in the dealer's own entry).
    pub fn ciphertext_hash(&self) -> [u8; 32] {
        self.0[32..64].try_into().expect("32 bytes")
    }

    /// S^b, the commitment to the holder's share of b_u, as encoded.
    pub fn self_mask_commitment(&self) -> [u8; 32] {
        self.0[64..96].try_into().expect("32 bytes")
    }

    /// S^s, the commitment to the holder's share of s_u^SK, as encoded.
    pub fn mask_key_commitment(&self) -> [u8; 32] {
        self.0[96..].try_into().expect("32 bytes")
    }

    /// Both commitments decoded, or `None` if either is not a canonical, non-identity point.
    pub fn commitments(&self) -> Option<(RistrettoPoint, RistrettoPoint)> {
        Some((
            decode_commitment(&self.self_mask_commitment())?,
            decode_commitment(&self.mask_key_commitment())?,
        ))
    }

    /// The Merkle leaf hash of this entry.
    pub fn leaf(&self) -> Hash {
        merkle::leaf_hash(&self.0)
    }
}

fn decode_commitment(bytes: &[u8; 32]) -> Option<RistrettoPoint> {
    let p = CompressedRistretto(*bytes).decompress()?;
    (!p.is_identity()).then_some(p)
}

/// The dealer's entries for `holders` (canonical order), each with the ciphertext hash and the
/// commitments share·G of its two shares: b's share first. `None` unless there are as many
/// hashes and shares of each secret as holders.
pub fn entries(
    holders: &[ClientId],
    ciphertext_hashes: &[[u8; 32]],
    self_mask_shares: &[ShareValue],
    mask_key_shares: &[ShareValue],
) -> Option<Vec<Entry>> {
    let m = holders.len();
    if ciphertext_hashes.len() != m || self_mask_shares.len() != m || mask_key_shares.len() != m {
        return None;
    }
    let entries = holders
        .iter()
        .zip(ciphertext_hashes)
        .zip(self_mask_shares.iter().zip(mask_key_shares))
        .map(|((holder, hash), (b, s))| {
            let b = b.commitment().compress().to_bytes();
            let s = s.commitment().compress().to_bytes();
            Entry::new(holder, hash, &b, &s)
        })
        .collect();
    Some(entries)
}

/// The bytes a dealer signs: `share-keys` ‖ ctx ‖ u ‖ m (u32, big-endian) ‖ root.
pub fn signed_root(ctx: &RoundContext, dealer: &ClientId, size: u32, root: &Hash) -> Vec<u8> {
    labelled(Label::ShareKeys, ctx, &[&dealer.0, &size.to_be_bytes(), root])
}

/// The plaintext a holder receives: its share of b_u, then its share of s_u^SK (64 bytes).
pub fn plaintext(self_mask: &ShareValue, mask_key: &ShareValue) -> Zeroizing<[u8; 64]> {
    let mut p = Zeroizing::new([0u8; 64]);
    p[..32].copy_from_slice(self_mask.to_bytes().as_ref());
    p[32..].copy_from_slice(mask_key.to_bytes().as_ref());
    p
}

/// The holders' x-coordinates α_1..α_m of one dealer and the public weights
/// w_i = Π_{j≠i} (α_i − α_j)^-1 of the points α_0 = 0, α_1..α_m: Σ w_i·p(α_i) = 0 for every
/// polynomial p of degree below m. Built only from x-coordinates that are sorted, distinct and
/// non-zero (else a weight would be the inverse of zero, and the test would accept anything);
/// the same for every dealer with the same holders, so a server computes it once per holder set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DualWeights {
    xs: Vec<u32>,
    weights: Vec<Scalar>,
}

impl DualWeights {
    /// The weights for `xs` (sorted, distinct, non-zero; an error otherwise).
    pub fn new(xs: &[u32]) -> crate::error::Result<DualWeights> {
        crate::shamir::check_sorted_distinct_nonzero(xs)?;
        let alphas: Vec<i64> =
            core::iter::once(0).chain(xs.iter().map(|&x| i64::from(x))).collect();
        let mut weights: Vec<Scalar> = alphas
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                product(alphas.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, &b)| a - b))
            })
            .collect();
        Scalar::invert_batch_alloc(&mut weights);
        debug_assert!(weights.iter().all(|w| *w != Scalar::ZERO));
        Ok(DualWeights { xs: xs.to_vec(), weights })
    }

    /// The holders' x-coordinates.
    pub fn xs(&self) -> &[u32] {
        &self.xs
    }

    /// w_0..w_m.
    pub fn weights(&self) -> &[Scalar] {
        &self.weights
    }
}

/// Π of non-zero integers mod ℓ. The differences of x-coordinates are below 2^32 in
/// magnitude, so several multiply exactly in a u128 before one product mod ℓ: a few times
/// fewer scalar multiplications than one per factor.
fn product(factors: impl Iterator<Item = i64>) -> Scalar {
    let mut negative = false;
    let mut total = Scalar::ONE;
    let mut run: u128 = 1;
    for f in factors {
        negative ^= f < 0;
        let f = u128::from(f.unsigned_abs());
        match run.checked_mul(f) {
            Some(r) => run = r,
            None => {
                total *= Scalar::from(run);
                run = f;
            }
        }
    }
    total *= Scalar::from(run);
    if negative { -total } else { total }
}

/// What the degree test needs of one dealer: the threshold, the weights of its holders'
/// x-coordinates, the two public keys at x = 0 and the commitments at each holder.
#[derive(Debug)]
pub struct DegreeTest<'a> {
    /// t: any t shares reconstruct, so the polynomials have degree at most t − 1.
    pub threshold: usize,
    /// The holders' x-coordinates (canonical order) and their weights.
    pub weights: &'a DualWeights,
    /// B_u = b_u·G.
    pub self_mask_key: &'a PublicKey,
    /// s_u^PK.
    pub mask_key: &'a PublicKey,
    /// (S^b, S^s) at each holder, in the order of the x-coordinates.
    pub commitments: &'a [(RistrettoPoint, RistrettoPoint)],
}

impl DegreeTest<'_> {
    /// Whether both committed vectors lie on polynomials of degree at most t − 1 through the
    /// public keys at 0. Draws g (degree ≤ m − t, uniform coefficients) and ρ from the OS RNG,
    /// after the dealer's message is complete, and accepts iff
    /// Σ_{i=0..m} w_i·g(α_i)·(C^b_i + ρ·C^s_i) is the identity. A dealer whose commitments are
    /// off such polynomials passes with probability at most 2/ℓ; an honest one always passes.
    /// Needs m ≥ t (the dealer's rule: at least t holders, itself included; m + 1 points leave
    /// the dual code m + 1 − t ≥ 1 dimensions) and one pair of commitments per holder.
    pub fn passes(&self) -> bool {
        self.passes_with(&mut crate::rng::os_rng())
    }

    /// [`passes`](Self::passes) with g and ρ from `rng`: for tests only (a predictable g lets a
    /// dealer pass off the polynomial).
    pub(crate) fn passes_with<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> bool {
        let m = self.weights.xs.len();
        if self.threshold == 0 || m < self.threshold || self.commitments.len() != m {
            return false;
        }
        let g: Vec<Scalar> = (0..=m - self.threshold).map(|_| Scalar::random(rng)).collect();
        let rho = Scalar::random(rng);
        let eval = |x: Scalar| g.iter().rev().fold(Scalar::ZERO, |acc, c| acc * x + c);
        let w = &self.weights.weights;
        let mut scalars = Vec::with_capacity(2 * (m + 1));
        let mut points = Vec::with_capacity(2 * (m + 1));
        let c0 = w[0] * g[0];
        scalars.extend([c0, c0 * rho]);
        points.extend([*self.self_mask_key.point(), *self.mask_key.point()]);
        for ((&x, w), (b, s)) in self.weights.xs.iter().zip(&w[1..]).zip(self.commitments) {
            let c = w * eval(Scalar::from(x));
            scalars.extend([c, c * rho]);
            points.extend([*b, *s]);
        }
        RistrettoPoint::vartime_multiscalar_mul(scalars, points).is_identity()
    }
}

/// A forwarded share as the holder receives it and a complaint carries it: the dealer's entry
/// for the holder, its leaf index, the tree size m, the Merkle path, the dealer's signature on
/// the root and the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dealt {
    /// The dealer's entry for this holder.
    pub entry: Entry,
    /// Its index among the dealer's entries.
    pub index: u32,
    /// The number of the dealer's entries, m.
    pub size: u32,
    /// The RFC 6962 inclusion path of the entry.
    pub path: Vec<Hash>,
    /// Sign_id(`share-keys` ‖ ctx ‖ u ‖ m ‖ root) by the dealer.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
    /// ChaCha20-Poly1305 of the two shares under K_{u→v}.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

impl Dealt {
    /// SHA-256(entry ‖ idx ‖ m ‖ path ‖ sig), idx, m and the path length-prefixed: the
    /// evidence a complaint's proof binds.
    pub fn evidence_digest(&self) -> [u8; 32] {
        let mut enc = Vec::with_capacity(ENTRY_LEN + 64 + 24 + 32 * self.path.len());
        enc.extend_from_slice(&self.entry.0);
        push_lp(&mut enc, &self.index.to_be_bytes());
        push_lp(&mut enc, &self.size.to_be_bytes());
        push_lp(&mut enc, &self.path.concat());
        enc.extend_from_slice(&self.signature);
        Sha256::digest(&enc).into()
    }
}

/// Why a forwarded share is malformed: a check the server makes before forwarding failed, so
/// whoever shows it to a holder tampered with it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error,
)]
pub enum Malformed {
    /// The entry names another holder.
    #[error("the entry names another holder")]
    OtherHolder,
    /// SHA-256 of the ciphertext is not the entry's ciphertext hash.
    #[error("the ciphertext is not the one the entry names")]
    CiphertextHash,
    /// The index, size and path fit no tree.
    #[error("the Merkle path fits no tree of that size")]
    Path,
    /// The dealer's signature on the recomputed root does not verify.
    #[error("the dealer's signature does not verify on the recomputed root")]
    Signature,
}

/// Why a well-signed share is bad: the dealer's fault.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error,
)]
pub enum Bad {
    /// The ciphertext is not [`CIPHERTEXT_LEN`] bytes (the server refuses such a ShareKeys).
    #[error("the ciphertext is not {CIPHERTEXT_LEN} bytes")]
    CiphertextLength,
    /// The ciphertext does not decrypt under K_{u→v}.
    #[error("the ciphertext does not decrypt")]
    Undecryptable,
    /// The plaintext is not 64 bytes.
    #[error("the plaintext is not two scalars")]
    Length,
    /// A share is not a canonical scalar encoding.
    #[error("a share is not a canonical scalar")]
    NonCanonical,
    /// A commitment is not a canonical, non-identity point.
    #[error("a commitment is not a canonical non-identity point")]
    Commitment,
    /// The share of b_u does not match its commitment.
    #[error("the self-mask share does not match its commitment")]
    SelfMaskShare,
    /// The share of s_u^SK does not match its commitment.
    #[error("the mask-key share does not match its commitment")]
    MaskKeyShare,
}

/// What [`open`] decides.
#[derive(Debug)]
pub enum Verdict {
    /// Both shares, each matching its commitment: b's share, then s^SK's.
    Ok(ShareValue, ShareValue),
    /// Well signed but wrong: the dealer is at fault.
    Bad(Bad),
    /// Not what the dealer signed: whoever forwarded it is at fault.
    Malformed(Malformed),
}

impl Verdict {
    /// Whether the share is ok.
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok(..))
    }
}

/// Who dealt a share to whom, and the key agreement that opens it.
#[derive(Clone, Copy)]
pub struct Parties<'a> {
    /// The round.
    pub ctx: &'a RoundContext,
    /// The dealer u.
    pub dealer: &'a ClientId,
    /// u's identity key (from its certificate).
    pub dealer_key: &'a VerifyingKey,
    /// The holder v.
    pub holder: &'a ClientId,
    /// K = KA(c_v^SK, c_u^PK) = KA(c_u^SK, c_v^PK).
    pub shared: &'a SharedPoint,
}

impl core::fmt::Debug for Parties<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Parties")
            .field("dealer", self.dealer)
            .field("holder", self.holder)
            .field("shared", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The one validity function, run alike by the holder (with the K it computes), the server and
/// the auditor (with the K a complaint reveals and proves). K is a [`SharedPoint`], so it is a
/// canonical non-identity point before `open` can be called: a complainer's invalid K voids its
/// complaint and can never make a dealer's share bad.
pub fn open(parties: &Parties<'_>, dealt: &Dealt) -> Verdict {
    if dealt.entry.holder() != *parties.holder {
        return Verdict::Malformed(Malformed::OtherHolder);
    }
    let hash: [u8; 32] = Sha256::digest(&dealt.ciphertext).into();
    if hash != dealt.entry.ciphertext_hash() {
        return Verdict::Malformed(Malformed::CiphertextHash);
    }
    let Some(root) =
        merkle::root_from_path(&dealt.entry.leaf(), dealt.index, dealt.size, &dealt.path)
    else {
        return Verdict::Malformed(Malformed::Path);
    };
    let signed = signed_root(parties.ctx, parties.dealer, dealt.size, &root);
    if !signature_holds(parties.dealer_key, &signed, &dealt.signature) {
        return Verdict::Malformed(Malformed::Signature);
    }
    if dealt.ciphertext.len() != CIPHERTEXT_LEN {
        return Verdict::Bad(Bad::CiphertextLength);
    }
    let key = ShareKey::from_shared(parties.shared, parties.ctx, parties.dealer, parties.holder);
    let Some(plain) = key.open(parties.ctx, parties.dealer, parties.holder, &dealt.ciphertext)
    else {
        return Verdict::Bad(Bad::Undecryptable);
    };
    if plain.len() != 64 {
        return Verdict::Bad(Bad::Length);
    }
    let b_bytes = Zeroizing::new(<[u8; 32]>::try_from(&plain[..32]).expect("32 bytes"));
    let s_bytes = Zeroizing::new(<[u8; 32]>::try_from(&plain[32..]).expect("32 bytes"));
    let (Some(b), Some(s)) = (ShareValue::from_bytes(&b_bytes), ShareValue::from_bytes(&s_bytes))
    else {
        return Verdict::Bad(Bad::NonCanonical);
    };
    let Some((sb, ss)) = dealt.entry.commitments() else {
        return Verdict::Bad(Bad::Commitment);
    };
    if b.commitment() != sb {
        return Verdict::Bad(Bad::SelfMaskShare);
    }
    if s.commitment() != ss {
        return Verdict::Bad(Bad::MaskKeyShare);
    }
    Verdict::Ok(b, s)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::SecretScalar;
    use crate::proofs::{ComplaintProof, ComplaintStatement};
    use crate::shamir;
    use crate::sign::IdentityKey;
    use rand::SeedableRng;

    fn rng(seed: u64) -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(seed)
    }

    pub(crate) const CTX: RoundContext = RoundContext([3; 32]);

    /// One dealer u (holder 0, with its own entry) dealing to m − 1 others, x = 1..=m.
    pub(crate) struct Dealing {
        signing: ed25519_dalek::SigningKey,
        pub(crate) dealer: IdentityKey,
        pub(crate) dealer_enc: SecretScalar,
        pub(crate) holders: Vec<(ClientId, SecretScalar)>,
        b: SecretScalar,
        s: SecretScalar,
        threshold: usize,
        xs: Vec<u32>,
        pub(crate) entries: Vec<Entry>,
        pub(crate) signature: [u8; 64],
        ciphertexts: Vec<Vec<u8>>,
    }

    /// What a dishonest dealer changes: the plaintext it encrypts for holder i, the shares it
    /// commits to.
    pub(crate) type Tamper<'a> = &'a dyn Fn(usize, &mut [u8; 64], &mut [u8; 32], &mut [u8; 32]);

    pub(crate) fn deal(m: usize, threshold: usize, seed: u64, tamper: Tamper<'_>) -> Dealing {
        let mut r = rng(seed);
        let signing = ed25519_dalek::SigningKey::generate(&mut r);
        let dealer = IdentityKey::from_signing_key(signing.clone());
        let dealer_enc = SecretScalar::random(&mut r);
        let mut holders = vec![(dealer.id(), SecretScalar::random(&mut r))];
        for _ in 1..m {
            holders.push((IdentityKey::generate(&mut r).id(), SecretScalar::random(&mut r)));
        }
        let (b, s) = (SecretScalar::random(&mut r), SecretScalar::random(&mut r));
        let xs: Vec<u32> = (1..=m as u32).collect();
        let bs = shamir::split_nonzero(b.expose(), threshold, &xs, &mut r).unwrap();
        let ss = shamir::split_nonzero(s.expose(), threshold, &xs, &mut r).unwrap();
        let ids: Vec<ClientId> = holders.iter().map(|h| h.0).collect();
        let mut entries = Vec::new();
        let mut ciphertexts = Vec::new();
        for i in 0..m {
            let mut plain = *plaintext(&bs[i], &ss[i]);
            let mut cb = bs[i].commitment().compress().to_bytes();
            let mut cs = ss[i].commitment().compress().to_bytes();
            tamper(i, &mut plain, &mut cb, &mut cs);
            let ct = if i == 0 {
                Vec::new()
            } else {
                let k = dealer_enc.agree_point(&holders[i].1.public());
                ShareKey::from_shared(&k, &CTX, &ids[0], &ids[i])
                    .seal(&CTX, &ids[0], &ids[i], &plain)
            };
            let hash = if i == 0 { [0; 32] } else { Sha256::digest(&ct).into() };
            entries.push(Entry::new(&ids[i], &hash, &cb, &cs));
            ciphertexts.push(ct);
        }
        let mut dealing = Dealing {
            signing,
            dealer,
            dealer_enc,
            holders,
            b,
            s,
            threshold,
            xs,
            entries,
            signature: [0; 64],
            ciphertexts,
        };
        dealing.sign();
        dealing
    }

    pub(crate) fn honest(_: usize, _: &mut [u8; 64], _: &mut [u8; 32], _: &mut [u8; 32]) {}

    impl Dealing {
        /// Signs the root of the current entries, as the dealer does.
        fn sign(&mut self) {
            use ed25519_dalek::Signer;
            let tree = merkle::Tree::new(self.entries.iter().map(Entry::leaf).collect()).unwrap();
            let m = self.entries.len() as u32;
            self.signature = self
                .signing
                .sign(&signed_root(&CTX, &self.dealer.id(), m, &tree.root()))
                .to_bytes();
        }

        /// A dealer that sends holder i another ciphertext, names it in the entry and signs.
        pub(crate) fn send_instead(&mut self, i: usize, ciphertext: Vec<u8>) {
            let hash: [u8; 32] = Sha256::digest(&ciphertext).into();
            let e = self.entries[i];
            self.entries[i] =
                Entry::new(&e.holder(), &hash, &e.self_mask_commitment(), &e.mask_key_commitment());
            self.ciphertexts[i] = ciphertext;
            self.sign();
        }

        pub(crate) fn dealt(&self, i: usize) -> Dealt {
            let tree = merkle::Tree::new(self.entries.iter().map(Entry::leaf).collect()).unwrap();
            Dealt {
                entry: self.entries[i],
                index: i as u32,
                size: self.entries.len() as u32,
                path: tree.path(i as u32).unwrap(),
                signature: self.signature,
                ciphertext: self.ciphertexts[i].clone(),
            }
        }

        /// `open` on holder i's share with the key-agreement value `k`.
        fn open_with(&self, i: usize, k: &SharedPoint, dealt: &Dealt) -> Verdict {
            let parties = Parties {
                ctx: &CTX,
                dealer: &self.dealer.id(),
                dealer_key: &self.dealer.verifying_key(),
                holder: &self.holders[i].0,
                shared: k,
            };
            open(&parties, dealt)
        }

        /// Holder i's verdict, with the K it computes itself.
        fn open_as_holder(&self, i: usize, dealt: &Dealt) -> Verdict {
            self.open_with(i, &self.holders[i].1.agree_point(&self.dealer_enc.public()), dealt)
        }

        /// The server's verdict on the same share, as a complaint shows it: the holder reveals
        /// its K with a Chaum–Pedersen proof, the judge decodes the revealed bytes, checks the
        /// proof against the share it is shown, and opens the share with that K.
        fn open_as_judge(&self, i: usize, dealt: &Dealt) -> Verdict {
            let (accused_key, complainer_key) =
                (self.dealer_enc.public(), self.holders[i].1.public());
            let holder_k = self.holders[i].1.agree_point(&accused_key);
            let (dealer, holder) = (self.dealer.id(), self.holders[i].0);
            let statement = ComplaintStatement::new(
                &dealer,
                &holder,
                dealt,
                &accused_key,
                &complainer_key,
                &holder_k,
            );
            let proof = ComplaintProof::prove(&self.holders[i].1, &statement, &CTX).unwrap();
            let revealed = *holder_k.to_bytes();
            // The judge's side: only the revealed bytes and the proof.
            let k = SharedPoint::from_bytes(&revealed).expect("a canonical point");
            let judged =
                ComplaintStatement::new(&dealer, &holder, dealt, &accused_key, &complainer_key, &k);
            assert!(proof.verify(&judged, &CTX), "the complaint's proof holds");
            self.open_with(i, &k, dealt)
        }

        fn degree_test(&self, seed: u64) -> bool {
            let Some(commitments) =
                self.entries.iter().map(Entry::commitments).collect::<Option<Vec<_>>>()
            else {
                return false;
            };
            DegreeTest {
                threshold: self.threshold,
                weights: &DualWeights::new(&self.xs).unwrap(),
                self_mask_key: &self.b.public(),
                mask_key: &self.s.public(),
                commitments: &commitments,
            }
            .passes_with(&mut rng(seed))
        }
    }

    #[test]
    fn an_honest_dealing_opens_for_every_holder_and_passes_the_degree_test() {
        for (m, t) in [(2, 1), (5, 3), (9, 8), (17, 6), (40, 20)] {
            let d = deal(m, t, m as u64, &honest);
            assert!(d.degree_test(1), "m = {m}, t = {t}");
            let mut b_shares = Vec::new();
            for i in 1..m {
                let dealt = d.dealt(i);
                let Verdict::Ok(b, _) = d.open_as_holder(i, &dealt) else {
                    panic!("holder {i} of {m}");
                };
                assert!(d.open_as_judge(i, &dealt).is_ok());
                b_shares.push((d.xs[i], b));
            }
            // Any t shares that pass give b back.
            if t <= b_shares.len() {
                let picked: Vec<(u32, &ShareValue)> =
                    b_shares.iter().rev().take(t).map(|(x, s)| (*x, s)).collect();
                assert_eq!(shamir::reconstruct(&picked).unwrap().expose(), d.b.expose());
            }
        }
    }

    #[test]
    fn dual_weights_annihilate_every_polynomial_of_lower_degree() {
        let xs = [1u32, 2, 4, 7, 9];
        let w = DualWeights::new(&xs).unwrap();
        let w = w.weights();
        let mut r = rng(5);
        for degree in 0..xs.len() {
            let p: Vec<Scalar> = (0..=degree).map(|_| Scalar::random(&mut r)).collect();
            let eval = |x: Scalar| p.iter().rev().fold(Scalar::ZERO, |acc, c| acc * x + c);
            let total: Scalar = core::iter::once(0u32)
                .chain(xs)
                .zip(w)
                .map(|(x, w)| w * eval(Scalar::from(x)))
                .sum();
            assert_eq!(total, Scalar::ZERO, "degree {degree}");
        }
        // Degree m is not annihilated: the test has something to catch.
        let p: Vec<Scalar> = (0..=xs.len()).map(|_| Scalar::random(&mut r)).collect();
        let eval = |x: Scalar| p.iter().rev().fold(Scalar::ZERO, |acc, c| acc * x + c);
        let total: Scalar =
            core::iter::once(0u32).chain(xs).zip(w).map(|(x, w)| w * eval(Scalar::from(x))).sum();
        assert_ne!(total, Scalar::ZERO);
    }

    /// The weights computed with several differences per u128 equal the product of one
    /// scalar per difference, signs included, with x-coordinates up to u32::MAX (so that a
    /// run overflows a u128 at its fifth factor).
    #[test]
    fn dual_weights_are_the_inverse_products_of_the_differences() {
        let naive = |xs: &[u32]| -> Vec<Scalar> {
            let alphas: Vec<Scalar> =
                core::iter::once(0u32).chain(xs.iter().copied()).map(Scalar::from).collect();
            alphas
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    alphas
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .fold(Scalar::ONE, |acc, (_, b)| acc * (a - b))
                        .invert()
                })
                .collect()
        };
        let big: Vec<u32> = (0..40).map(|i| u32::MAX - 7 * (39 - i)).collect();
        let spread: Vec<u32> = (0..60).map(|i| 1 + i * 71_582_788).collect();
        let harary: Vec<u32> = (1..=40).chain(961..=1000).collect();
        for xs in [vec![5u32], vec![1, 2, 4, 7, 9], big, spread, harary] {
            assert_eq!(DualWeights::new(&xs).unwrap().weights(), naive(&xs), "{xs:?}");
        }
    }

    /// A dealer whose commitments are off the polynomial — one share changed (and committed
    /// to as changed), a polynomial of degree t, another secret at 0 — fails the test.
    #[test]
    fn commitments_off_the_polynomial_fail_the_degree_test() {
        let (m, t) = (12, 5);
        // Holder 4's share of b replaced by another value, consistently encrypted and committed.
        let other = SecretScalar::random(&mut rng(99));
        let other_commitment = other.public().to_bytes();
        let other_bytes = *other.to_ikm();
        let d = deal(m, t, 7, &|i, plain, cb, _| {
            if i == 4 {
                plain[..32].copy_from_slice(&other_bytes);
                *cb = other_commitment;
            }
        });
        assert!(!d.degree_test(1));
        // The share itself opens: only the degree test can tell.
        assert!(d.open_as_holder(4, &d.dealt(4)).is_ok());
        // The same for the mask-key polynomial.
        let d = deal(m, t, 7, &|i, plain, _, cs| {
            if i == 9 {
                plain[32..].copy_from_slice(&other_bytes);
                *cs = other_commitment;
            }
        });
        assert!(!d.degree_test(1));
        // Shares of a polynomial of degree t (threshold t + 1) are not of degree t − 1.
        let mut high = deal(m, t + 1, 8, &honest);
        high.threshold = t;
        assert!(!high.degree_test(1));
        // The commitments of another secret than the advertised B_u.
        let mut swapped = deal(m, t, 9, &honest);
        swapped.b = SecretScalar::random(&mut rng(10));
        assert!(!swapped.degree_test(1));
        // An honest dealing passes under any draw of g and ρ.
        let honest = deal(m, t, 11, &honest);
        assert!((0..20).all(|seed| honest.degree_test(seed)));
    }

    #[test]
    fn an_identity_commitment_is_refused_and_too_few_holders_fail_the_degree_test() {
        let identity = [0u8; 32];
        let d = deal(8, 3, 12, &|i, _, cb, _| {
            if i == 2 {
                *cb = identity;
            }
        });
        // The server's decoding of the entries refuses it before any degree test.
        assert!(d.entries[2].commitments().is_none());
        assert!(!d.degree_test(1));
        // x-coordinates that are not sorted, distinct and non-zero give no weights at all
        // (a zero denominator would make every weight zero, and the test accept anything).
        for xs in [&[1u32, 2, 2, 4][..], &[0, 1, 2], &[3, 2, 1], &[]] {
            assert!(DualWeights::new(xs).is_err(), "{xs:?}");
        }
        // m = t is the least the test takes (u's own entry counted); below, it refuses.
        assert!(deal(5, 5, 13, &honest).degree_test(1));
        let mut few = deal(5, 5, 14, &honest);
        few.threshold = 6;
        assert!(!few.degree_test(1));
    }

    /// A share sent as a non-canonical scalar (share + ℓ, the same value mod ℓ) is bad for the
    /// holder and the server alike; so are an undecryptable ciphertext and a share off its
    /// commitment.
    #[test]
    fn bad_shares_are_judged_bad_by_holder_and_server_alike() {
        let d = deal(6, 3, 14, &|i, plain, _, _| match i {
            1 => {
                let share: [u8; 32] = plain[..32].try_into().unwrap();
                let plus_l = crate::proofs::tests::add_group_order(&share).expect("s + ℓ < 2^254");
                plain[..32].copy_from_slice(&plus_l);
            }
            2 => plain[40] ^= 1,
            _ => {}
        });
        // What holder 1 decrypts is its share plus ℓ: the same value mod ℓ, not canonical.
        let k = d.holders[1].1.agree_point(&d.dealer_enc.public());
        let key = ShareKey::from_shared(&k, &CTX, &d.dealer.id(), &d.holders[1].0);
        let plain = key.open(&CTX, &d.dealer.id(), &d.holders[1].0, &d.ciphertexts[1]).unwrap();
        let sent: [u8; 32] = plain[..32].try_into().unwrap();
        assert!(ShareValue::from_bytes(&sent).is_none());
        assert_eq!(
            crate::proofs::commit(&Scalar::from_bytes_mod_order(sent)).compress().to_bytes(),
            d.entries[1].self_mask_commitment(),
            "reduced mod ℓ it would match its commitment"
        );
        for verdict in [d.open_as_holder(1, &d.dealt(1)), d.open_as_judge(1, &d.dealt(1))] {
            assert!(matches!(verdict, Verdict::Bad(Bad::NonCanonical)), "{verdict:?}");
        }
        for verdict in [d.open_as_holder(2, &d.dealt(2)), d.open_as_judge(2, &d.dealt(2))] {
            assert!(matches!(verdict, Verdict::Bad(Bad::MaskKeyShare)), "{verdict:?}");
        }
        // A dealer that encrypts under a key other than K_{u→v}, and hashes what it sends.
        let mut d = deal(6, 3, 15, &honest);
        let elsewhere = SecretScalar::random(&mut rng(30)).agree_point(&d.holders[3].1.public());
        let wrong_key = ShareKey::from_shared(&elsewhere, &CTX, &d.dealer.id(), &d.holders[3].0)
            .seal(&CTX, &d.dealer.id(), &d.holders[3].0, &[0; 64]);
        d.send_instead(3, wrong_key);
        for verdict in [d.open_as_holder(3, &d.dealt(3)), d.open_as_judge(3, &d.dealt(3))] {
            assert!(matches!(verdict, Verdict::Bad(Bad::Undecryptable)), "{verdict:?}");
        }
        // The other holders' shares are fine.
        assert!(d.open_as_holder(4, &d.dealt(4)).is_ok());
        // A dealer that signs a longer ciphertext (which decrypts) is at fault too.
        let mut d = deal(6, 3, 18, &honest);
        let k = d.dealer_enc.agree_point(&d.holders[2].1.public());
        let long = ShareKey::from_shared(&k, &CTX, &d.dealer.id(), &d.holders[2].0).seal(
            &CTX,
            &d.dealer.id(),
            &d.holders[2].0,
            &[0; 1000],
        );
        d.send_instead(2, long);
        for verdict in [d.open_as_holder(2, &d.dealt(2)), d.open_as_judge(2, &d.dealt(2))] {
            assert!(matches!(verdict, Verdict::Bad(Bad::CiphertextLength)), "{verdict:?}");
        }
    }

    /// What the server must check before forwarding: a changed ciphertext, entry, index, size,
    /// path or signature, or another holder's entry, is malformed — never bad, so a holder
    /// shown it knows the server tampered.
    #[test]
    fn a_share_changed_after_signing_is_malformed() {
        let d = deal(7, 3, 16, &honest);
        let good = d.dealt(3);
        let mut cases: Vec<(Dealt, Malformed)> = Vec::new();
        let mut c = good.clone();
        c.ciphertext[0] ^= 1;
        cases.push((c, Malformed::CiphertextHash));
        let mut c = good.clone();
        c.entry.0[70] ^= 1;
        cases.push((c, Malformed::Signature));
        let mut c = good.clone();
        c.index = 2;
        cases.push((c, Malformed::Signature));
        let mut c = good.clone();
        c.index = 7;
        cases.push((c, Malformed::Path));
        let mut c = good.clone();
        c.size = 8;
        cases.push((c, Malformed::Signature));
        let mut c = good.clone();
        c.path[0][0] ^= 1;
        cases.push((c, Malformed::Signature));
        let mut c = good.clone();
        c.path.pop();
        cases.push((c, Malformed::Path));
        let mut c = good.clone();
        c.signature[5] ^= 1;
        cases.push((c, Malformed::Signature));
        cases.push((d.dealt(4), Malformed::OtherHolder));
        for (i, (dealt, why)) in cases.iter().enumerate() {
            for verdict in [d.open_as_holder(3, dealt), d.open_as_judge(3, dealt)] {
                assert!(
                    matches!(verdict, Verdict::Malformed(w) if w == *why),
                    "case {i}: {verdict:?}, expected {why:?}"
                );
            }
        }
        assert!(d.open_as_holder(3, &good).is_ok());
    }

    #[test]
    fn the_evidence_digest_binds_every_part() {
        let d = deal(5, 2, 17, &honest);
        let good = d.dealt(2);
        let base = good.evidence_digest();
        let mut changes = Vec::new();
        let mut c = good.clone();
        c.entry.0[0] ^= 1;
        changes.push(c);
        let mut c = good.clone();
        c.index += 1;
        changes.push(c);
        let mut c = good.clone();
        c.size += 1;
        changes.push(c);
        let mut c = good.clone();
        c.path[0][31] ^= 1;
        changes.push(c);
        let mut c = good.clone();
        c.signature[63] ^= 1;
        changes.push(c);
        for c in changes {
            assert_ne!(c.evidence_digest(), base);
        }
        // The ciphertext is bound separately (by its own hash in the complaint).
        let mut c = good.clone();
        c.ciphertext.push(0);
        assert_eq!(c.evidence_digest(), base);
    }
}
