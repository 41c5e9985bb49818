//! The mask PRG: AES-128-CTR, seekable, keyed from the KDF.
//!
//! Word i of the mask expanded from a seed is the little-endian `u32` at bytes `4i..4i+4` of the
//! AES-128-CTR keystream (128-bit big-endian counter starting at zero, all-zero IV). Each seed
//! keys exactly one mask, so the fixed IV never repeats under a key. Seeking to word i costs
//! nothing, so one mask can be expanded by range on several cores.

use aes::Aes128;
use ctr::Ctr128BE;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use zeroize::Zeroizing;

use crate::context::RoundContext;
use crate::ids::ClientId;
use crate::kdf::{Label, derive};
use crate::keys::{PublicKey, SecretScalar};

/// The cipher behind the PRG.
pub(crate) type MaskCipher = Ctr128BE<Aes128>;

/// A 128-bit mask seed. Not `Clone`, zeroized on drop, `Debug` redacted.
pub struct MaskSeed(Zeroizing<[u8; 16]>);

impl core::fmt::Debug for MaskSeed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MaskSeed(<redacted>)")
    }
}

impl MaskSeed {
    /// Wraps raw seed bytes (known-answer tests, benchmarks).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        MaskSeed(Zeroizing::new(bytes))
    }

    /// The self-mask seed of client `u`: HKDF(b_u, `self-mask` ‖ ctx ‖ u).
    pub fn self_mask(b_u: &SecretScalar, ctx: &RoundContext, u: &ClientId) -> Self {
        let ikm = b_u.to_ikm();
        MaskSeed(derive::<16>(ikm.as_ref(), Label::SelfMask, ctx, &[&u.0]))
    }

    /// The pairwise mask seed s_uv = HKDF(KA(s_u^SK, s_v^PK), `pair-mask` ‖ ctx ‖ min ‖ max).
    /// Symmetric: u and v compute the same seed.
    pub fn pairwise(
        mine: &SecretScalar,
        theirs: &PublicKey,
        ctx: &RoundContext,
        a: &ClientId,
        b: &ClientId,
    ) -> Self {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let shared = mine.agree(theirs);
        MaskSeed(derive::<16>(shared.as_ref(), Label::PairMask, ctx, &[&lo.0, &hi.0]))
    }

    pub(crate) fn cipher_at_word(&self, word: usize) -> MaskCipher {
        let mut c = MaskCipher::new(&(*self.0).into(), &[0u8; 16].into());
        c.seek(word as u64 * 4);
        c
    }

    /// Expands words `offset..offset + out.len()` of the mask into `out` (overwriting it).
    pub fn expand_into(&self, offset: usize, out: &mut [u32]) {
        let mut c = self.cipher_at_word(offset);
        let mut buf = Zeroizing::new([0u8; 4 * 1024]);
        for chunk in out.chunks_mut(1024) {
            let bytes = &mut buf[..chunk.len() * 4];
            bytes.fill(0);
            c.apply_keystream(bytes);
            for (w, b) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
                *w = u32::from_le_bytes(b.try_into().expect("chunks_exact(4)"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeking_matches_streaming() {
        let seed = MaskSeed::from_bytes([5; 16]);
        let mut all = vec![0u32; 5000];
        seed.expand_into(0, &mut all);
        let mut part = vec![0u32; 1234];
        seed.expand_into(1777, &mut part);
        assert_eq!(&all[1777..1777 + 1234], &part[..]);
    }

    #[test]
    fn pairwise_seed_is_symmetric() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let su = SecretScalar::random(&mut rng);
        let sv = SecretScalar::random(&mut rng);
        let (u, v) = (ClientId([1; 32]), ClientId([2; 32]));
        let ctx = RoundContext([0; 32]);
        let a = MaskSeed::pairwise(&su, &sv.public(), &ctx, &u, &v);
        let b = MaskSeed::pairwise(&sv, &su.public(), &ctx, &v, &u);
        assert_eq!(*a.0, *b.0);
    }
}
