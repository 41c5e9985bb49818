//! HKDF-SHA256 with length-prefixed inputs and the domain labels of the protocol.
//!
//! Every derived key binds a domain label and the round context, so no key can be replayed
//! across rounds or confused between uses. Inputs are length-prefixed (u64, big-endian), so
//! no two different input lists encode to the same bytes.

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::ids::RoundContext;

/// Domain labels. Each use of a key or signature has its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// The round context hash itself.
    Context,
    /// AdvertiseKeys signature.
    Advertise,
    /// Directional share-encryption keys K_{u→v}.
    ShareEnc,
    /// Pairwise mask seeds s_uv.
    PairMask,
    /// Self-mask seeds from b_u.
    SelfMask,
    /// ConsistencyCheck signature.
    Consistency,
    /// Graph permutation key.
    Graph,
    /// Challenge of a proof of knowledge of an advertised secret key (protocol v2).
    Pok,
    /// A dealer's signature on the Merkle root of its share commitments (protocol v2).
    ShareKeys,
    /// Challenge of a complaint's Chaum–Pedersen proof (protocol v2).
    Complaint,
    /// A complainer's signature on its whole complaints message, empty or not (protocol v2).
    Complaints,
    /// The hedged nonce of a proof (protocol v2): never on the wire.
    ProofNonce,
    /// Checkpoint manifest signature. Bound to no round: a checkpoint outlives rounds, so it
    /// is encoded by `fedsec_wire::checkpoint::Manifest::canonical_bytes`, never by
    /// [`labelled`]. It stays in this one list of labels so that no two domains share one.
    Checkpoint,
}

impl Label {
    /// The label's bytes, as they enter hashes and KDFs.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Label::Context => b"fedsec/v1/context",
            Label::Advertise => b"fedsec/v1/advertise",
            Label::ShareEnc => b"fedsec/v1/share-enc",
            Label::PairMask => b"fedsec/v1/pair-mask",
            Label::SelfMask => b"fedsec/v1/self-mask",
            Label::Consistency => b"fedsec/v1/consistency",
            Label::Graph => b"fedsec/v1/graph",
            Label::Pok => b"fedsec/v1/pok",
            Label::ShareKeys => b"fedsec/v1/share-keys",
            Label::Complaint => b"fedsec/v1/complaint",
            Label::Complaints => b"fedsec/v1/complaints",
            Label::ProofNonce => b"fedsec/v1/proof-nonce",
            Label::Checkpoint => b"fedsec/v1/checkpoint",
        }
    }
}

/// Appends `part` to `out` with a u64 big-endian length prefix.
pub fn push_lp(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u64).to_be_bytes());
    out.extend_from_slice(part);
}

/// Length-prefixed encoding of `label ‖ ctx ‖ parts…`.
pub fn labelled(label: Label, ctx: &RoundContext, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + parts.iter().map(|p| p.len() + 8).sum::<usize>());
    push_lp(&mut out, label.as_bytes());
    push_lp(&mut out, ctx.as_bytes());
    for p in parts {
        push_lp(&mut out, p);
    }
    out
}

/// HKDF-SHA256(ikm, info = label ‖ ctx ‖ parts), no salt, `N` bytes of output.
pub fn derive<const N: usize>(
    ikm: &[u8],
    label: Label,
    ctx: &RoundContext,
    parts: &[&[u8]],
) -> Zeroizing<[u8; N]> {
    let info = labelled(label, ctx, parts);
    let mut okm = Zeroizing::new([0u8; N]);
    Hkdf::<Sha256>::new(None, ikm)
        .expand(&info, okm.as_mut())
        .expect("HKDF-SHA256 output of at most 255 blocks is always valid");
    okm
}

/// SHA-256 of `label ‖ ctx ‖ parts` (length-prefixed): the bytes a signature covers.
pub fn signed_digest(label: Label, ctx: &RoundContext, parts: &[&[u8]]) -> [u8; 32] {
    Sha256::digest(labelled(label, ctx, parts)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct() {
        let all = [
            Label::Context,
            Label::Advertise,
            Label::ShareEnc,
            Label::PairMask,
            Label::SelfMask,
            Label::Consistency,
            Label::Graph,
            Label::Pok,
            Label::ShareKeys,
            Label::Complaint,
            Label::Complaints,
            Label::ProofNonce,
            Label::Checkpoint,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.as_bytes(), b.as_bytes());
            }
        }
    }

    #[test]
    fn length_prefix_separates_parts() {
        let ctx = RoundContext([7; 32]);
        let a: [u8; 16] = *derive(b"k", Label::PairMask, &ctx, &[b"ab", b"c"]);
        let b: [u8; 16] = *derive(b"k", Label::PairMask, &ctx, &[b"a", b"bc"]);
        assert_ne!(a, b);
    }

    #[test]
    fn context_and_label_bind_the_key() {
        let a: [u8; 16] = *derive(b"k", Label::PairMask, &RoundContext([1; 32]), &[]);
        let b: [u8; 16] = *derive(b"k", Label::PairMask, &RoundContext([2; 32]), &[]);
        let c: [u8; 16] = *derive(b"k", Label::SelfMask, &RoundContext([1; 32]), &[]);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}
