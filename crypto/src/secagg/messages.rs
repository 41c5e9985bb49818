//! The protocol's messages: plain serde types, each carrying the protocol version and the
//! round context it belongs to. Transport adapters convert them to and from wire types.
//!
//! Naming follows Bonawitz et al. (CCS 2017), §4: phase 0 AdvertiseKeys, 1 ShareKeys,
//! 2 MaskedInputCollection, 3 ConsistencyCheck, 4 Unmasking.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::context::{PROTOCOL_VERSION, RoundContext};
use crate::error::{Error, Malformation, Result};
use crate::ids::ClientId;
use crate::proofs::{ComplaintProof, KeyProof};
use crate::secagg::commitments::{Dealt, Entry};

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sig(#[serde(with = "serde_bytes")] pub [u8; 64]);

impl core::fmt::Debug for Sig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Sig(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Phase 0, client → server: the client's two public keys and self-mask commitment, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseKeys {
    /// Protocol version.
    pub version: u32,
    /// Round context.
    pub ctx: RoundContext,
    /// The sender.
    pub client: ClientId,
    /// The sender's certificate chain (or raw SPKI in simulations): peers verify it themselves.
    #[serde(with = "serde_bytes")]
    pub credential: Vec<u8>,
    /// c_u^PK, for share encryption.
    pub enc_pk: [u8; 32],
    /// s_u^PK, for pairwise masks.
    pub mask_pk: [u8; 32],
    /// B_u = b_u·G, the commitment to the self-mask seed.
    pub self_mask_commitment: [u8; 32],
    /// Proof of knowledge of c_u^SK (protocol v2): no one can advertise a key related to
    /// another's (another's key plus r·G) without knowing the other's secret.
    pub enc_pk_proof: KeyProof,
    /// Proof of knowledge of s_u^SK.
    pub mask_pk_proof: KeyProof,
    /// Sign_id(`advertise` ‖ ctx ‖ c^PK ‖ s^PK ‖ B ‖ proof(c) ‖ proof(s)).
    pub signature: Sig,
}

impl AdvertiseKeys {
    /// What the advertisement's signature covers after `advertise` ‖ ctx, in order.
    pub fn signed_parts(&self) -> [&[u8]; 5] {
        [
            &self.enc_pk,
            &self.mask_pk,
            &self.self_mask_commitment,
            &self.enc_pk_proof.0,
            &self.mask_pk_proof.0,
        ]
    }
}

/// Phase 0 → 1, server → client u: the advertisements of u's share holders that advertised
/// (u's own included, unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysForward {
    /// Protocol version.
    pub version: u32,
    /// Round context.
    pub ctx: RoundContext,
    /// The client this is for.
    pub recipient: ClientId,
    /// Advertisements of H(u) ∩ U1.
    pub adverts: Vec<AdvertiseKeys>,
}

/// One encrypted pair of shares (of s_u^SK and b_u) for one holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShares {
    /// The holder it is for.
    pub to: ClientId,
    /// ChaCha20-Poly1305 under K_{u→v}.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// Phase 1, client → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareKeys {
    /// Protocol version.
    pub version: u32,
    /// Round context.
    pub ctx: RoundContext,
    /// The sender u.
    pub client: ClientId,
    /// One ciphertext per neighbour in N(u) ∩ U1, in canonical order.
    pub shares: Vec<EncryptedShares>,
    /// The dealer's commitments (protocol v2): one entry per holder of H(u) ∩ U1, u's own
    /// included, in canonical order, each naming the SHA-256 of the ciphertext sent with it.
    pub entries: Vec<Entry>,
    /// Sign_id(`share-keys` ‖ ctx ‖ u ‖ m ‖ RFC 6962 root of the entries).
    pub root_signature: Sig,
}

/// One forwarded share: the ciphertext with the dealer's entry for the recipient, its place in
/// the dealer's signed Merkle tree and the dealer's signature (protocol v2), so the recipient
/// can check it against what the dealer signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedShares {
    /// Who dealt it.
    pub from: ClientId,
    /// The ciphertext and the evidence that the dealer committed to it.
    pub dealt: Dealt,
}

/// Phase 1 → 2, server → client v: the ciphertexts addressed to v by its neighbours in U2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharesForward {
    /// Protocol version.
    pub version: u32,
    /// Round context.
    pub ctx: RoundContext,
    /// The client this is for.
    pub recipient: ClientId,
    /// Ciphertexts from N(v) ∩ U2, in canonical order of sender.
    pub shares: Vec<ForwardedShares>,
}

/// One complaint (protocol v2, phase 1½): holder v shows the share dealer u dealt it, as the
/// server forwarded it, with the key-agreement value K = KA(c_v^SK, c_u^PK) and a
/// Chaum–Pedersen proof that K is the one v's advertised key gives
/// ([`complaints::complain`](super::complaints::complain)).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Complaint {
    /// The accused dealer u.
    pub accused: ClientId,
    /// The share as forwarded: entry, leaf index, m, path, u's signature and ciphertext.
    pub dealt: Dealt,
    /// K, compressed: it opens both directions of the pair, so it goes to the server alone.
    #[serde(with = "serde_bytes")]
    pub shared: [u8; 32],
    /// The proof that log_G(c_v^PK) = log_{c_u^PK}(K).
    pub proof: ComplaintProof,
}

impl core::fmt::Debug for Complaint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Complaint")
            .field("accused", &self.accused)
            .field("index", &self.dealt.index)
            .field("size", &self.dealt.size)
            .field("shared", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Phase 1½, client → server (protocol v2): every complaint of one client about a share it was
/// dealt — possibly none — computed once per attempt and resent identically, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Complaints {
    /// Protocol version.
    pub version: u32,
    /// Round context.
    pub ctx: RoundContext,
    /// The complainer v.
    pub client: ClientId,
    /// At most one complaint per dealer of N(v) ∩ U2, in canonical order of the accused.
    pub complaints: Vec<Complaint>,
    /// Sign_id(`complaints` ‖ ctx ‖ v ‖ SHA-256 of the complaints' encoding): the audit log
    /// can show that v made exactly these complaints, an empty list included.
    pub signature: Sig,
}

/// Phase 1½ → 2, server → the senders of a complaints message (protocol v2): the excluded set
/// E, without evidence (the evidence goes to the audit log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusions {
    /// Protocol version.
    pub version: u32,
    /// Round context.
    pub ctx: RoundContext,
    /// E, a bitmap over the canonical order of the selected set.
    pub excluded: Survivors,
}

/// Phase 2, client → server: y_u, or a chunk of it, as little-endian `u32` words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    /// Protocol version.
    pub version: u32,
    /// Round context.
    pub ctx: RoundContext,
    /// The sender.
    pub client: ClientId,
    /// Word offset of this chunk in the vector.
    pub offset: u32,
    /// Little-endian `u32` words.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl MaskedInput {
    /// Number of words in this chunk.
    pub fn words(&self) -> usize {
        self.data.len() / 4
    }

    /// Splits a complete masked input into chunks of at most `chunk_words` words.
    pub fn chunks(&self, chunk_words: usize) -> Vec<MaskedInput> {
        let step = chunk_words.max(1) * 4;
        self.data
            .chunks(step)
            .enumerate()
            .map(|(i, c)| MaskedInput {
                version: self.version,
                ctx: self.ctx,
                client: self.client,
                offset: self.offset + (i * chunk_words.max(1)) as u32,
                data: c.to_vec(),
            })
            .collect()
    }
}

/// The set U3 as a bitmap over the canonical order of U (bit i of byte i/8, LSB first).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Survivors(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl Survivors {
    /// The bitmap of `members` (canonical indices) over n clients.
    pub fn from_indices(n: usize, members: impl IntoIterator<Item = usize>) -> Self {
        let mut bits = vec![0u8; n.div_ceil(8)];
        for i in members {
            bits[i / 8] |= 1 << (i % 8);
        }
        Survivors(bits)
    }

    /// Checks the length and that the padding bits are clear, then returns the members.
    pub fn indices(&self, n: usize) -> Result<Vec<usize>> {
        if self.0.len() != n.div_ceil(8) {
            return Err(Error::Malformed(Malformation::BitmapLength {
                got: self.0.len(),
                clients: n,
                expected: n.div_ceil(8),
            }));
        }
        if !n.is_multiple_of(8) && self.0[n / 8] >> (n % 8) != 0 {
            return Err(Error::Malformed(Malformation::BitmapPadding));
        }
        Ok((0..n).filter(|&i| self.contains(i)).collect())
    }

    /// Whether index i is set.
    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1)
    }

    /// SHA-256 of the bitmap: what consistency signatures cover.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.0).into()
    }
}

/// Phase 2 → 3, server → clients of U3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyRequest {
    /// Protocol version.
    pub version: u32,
    /// Round context.
    pub ctx: RoundContext,
    /// U3.
    pub survivors: Survivors,
    /// E, the excluded set every member of U3 masked under (protocol v2).
    pub excluded: Survivors,
}

impl ConsistencyRequest {
    /// What a consistency signature covers after `consistency` ‖ ctx: SHA-256(U3 bitmap) ‖
    /// SHA-256(E bitmap).
    pub fn signed_parts(survivors: &Survivors, excluded: &Survivors) -> [[u8; 32]; 2] {
        [survivors.digest(), excluded.digest()]
    }
}

/// Phase 3, client → server: Sign_id(`consistency` ‖ ctx ‖ SHA-256(U3) ‖ SHA-256(E)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencySignature {
    /// Protocol version.
    pub version: u32,
    /// Round context.
    pub ctx: RoundContext,
    /// The signer.
    pub client: ClientId,
    /// The signature.
    pub signature: Sig,
}

/// A consistency signature as the server forwards it, with the signer's credential so that a
/// client can verify signers that are not its neighbours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedSurvivors {
    /// The signer.
    pub client: ClientId,
    /// The signer's credential.
    #[serde(with = "serde_bytes")]
    pub credential: Vec<u8>,
    /// Its signature on U3.
    pub signature: Sig,
}

/// Phase 3 → 4, server → clients of U4: U3 and at least q signatures on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskingRequest {
    /// Protocol version.
    pub version: u32,
    /// Round context.
    pub ctx: RoundContext,
    /// U3, as signed.
    pub survivors: Survivors,
    /// The signatures collected.
    pub signatures: Vec<SignedSurvivors>,
}

/// One revealed share: the holder's share of a secret of `owner`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealedShare {
    /// Whose secret this is a share of.
    pub owner: ClientId,
    /// The share (a canonical scalar).
    pub share: [u8; 32],
}

impl core::fmt::Debug for RevealedShare {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "RevealedShare({}, <share>)", self.owner)
    }
}

/// Phase 4, client → server: shares of b_v for v ∈ H(u) ∩ U3 and of s_v^SK for
/// v ∈ N(u) ∩ (U2 \ U3) — never both for the same v.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskingResponse {
    /// Protocol version.
    pub version: u32,
    /// Round context.
    pub ctx: RoundContext,
    /// The holder.
    pub client: ClientId,
    /// Shares of self-mask seeds b_v of survivors.
    pub self_mask_shares: Vec<RevealedShare>,
    /// Shares of mask keys s_v^SK of dropped clients.
    pub mask_key_shares: Vec<RevealedShare>,
}

/// Checks a message's version and context.
pub(crate) fn check_header(
    version: u32,
    ctx: &RoundContext,
    expected: &RoundContext,
) -> Result<()> {
    if version != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion { got: version, supported: PROTOCOL_VERSION });
    }
    if ctx != expected {
        return Err(Error::WrongContext);
    }
    Ok(())
}

/// SHA-256 of a message's canonical serde encoding: how retries are recognised as identical.
///
/// The encoding streams into the hash through a small buffer, without the whole encoding in
/// memory (an unmasking request to 10,000 clients is about 4 MB).
pub fn message_digest<T: Serialize>(msg: &T) -> [u8; 32] {
    let hashing = Hashing { hash: Sha256::new(), buf: [0; Hashing::BUF], len: 0 };
    postcard::serialize_with_flavor(msg, hashing).expect("protocol messages always serialize")
}

/// A postcard output that hashes what it is given: small writes (postcard writes a 32-byte
/// id a byte at a time) gather in `buf`, which goes to the hash when full; large ones go to it
/// directly.
struct Hashing {
    hash: Sha256,
    buf: [u8; Self::BUF],
    len: usize,
}

impl Hashing {
    const BUF: usize = 4096;

    fn flush(&mut self) {
        self.hash.update(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl postcard::ser_flavors::Flavor for Hashing {
    type Output = [u8; 32];

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.len == Self::BUF {
            self.flush();
        }
        self.buf[self.len] = byte;
        self.len += 1;
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.len + data.len() > Self::BUF {
            self.flush();
        }
        if data.len() >= Self::BUF {
            self.hash.update(data);
        } else {
            self.buf[self.len..self.len + data.len()].copy_from_slice(data);
            self.len += data.len();
        }
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<[u8; 32]> {
        self.flush();
        // A response to the unmasking request carries revealed shares: none stays behind.
        zeroize::Zeroize::zeroize(&mut self.buf);
        Ok(self.hash.finalize().into())
    }
}

/// Encodes a message with the crate's canonical encoding (postcard).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("protocol messages always serialize")
}

/// Decodes a message encoded with [`encode`].
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Malformed(Malformation::Encoding(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed digest is SHA-256 of the whole encoding, whatever the sizes of the pieces
    /// relative to the buffer (credentials of 0 to 9,000 bytes, requests past 100 KB).
    #[test]
    fn streamed_digest_is_the_hash_of_the_encoding() {
        let ctx = RoundContext([7; 32]);
        for (count, step) in [(0usize, 1usize), (1, 4095), (3, 4096), (5, 4097), (40, 3001)] {
            let signatures = (0..count)
                .map(|i| SignedSurvivors {
                    client: ClientId([i as u8; 32]),
                    credential: vec![i as u8 ^ 0x5a; (i * step) % 9000],
                    signature: Sig([i as u8; 64]),
                })
                .collect();
            let msg = UnmaskingRequest {
                version: PROTOCOL_VERSION,
                ctx,
                survivors: Survivors::from_indices(1000, (0..1000).step_by(3)),
                signatures,
            };
            let whole: [u8; 32] = Sha256::digest(encode(&msg)).into();
            assert_eq!(message_digest(&msg), whole, "{count} signatures, step {step}");
        }
        let small = ConsistencySignature {
            version: PROTOCOL_VERSION,
            ctx,
            client: ClientId([1; 32]),
            signature: Sig([2; 64]),
        };
        assert_eq!(message_digest(&small), <[u8; 32]>::from(Sha256::digest(encode(&small))));
    }
}
