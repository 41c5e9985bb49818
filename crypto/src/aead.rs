//! Share encryption: ChaCha20-Poly1305 under directional keys K_{u→v}.
//!
//! K_{u→v} = HKDF(KA(c_u^SK, c_v^PK), `share-enc` ‖ ctx ‖ u ‖ v) differs from K_{v→u}, and
//! each key encrypts exactly one message (u's pair of shares for v), so the fixed all-zero
//! nonce never repeats under a key. AAD = ctx ‖ u ‖ v binds the ciphertext to its sender,
//! recipient and round.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::Zeroizing;

use crate::context::RoundContext;
use crate::ids::ClientId;
use crate::kdf::{Label, derive};
use crate::keys::{PublicKey, SecretScalar, SharedPoint};

/// A one-message key for u → v.
pub struct ShareKey(Zeroizing<[u8; 32]>);

impl core::fmt::Debug for ShareKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ShareKey(<redacted>)")
    }
}

impl ShareKey {
    /// K_{from→to} from `mine` (the secret of whichever of the two computes it) and the other's
    /// public key.
    pub fn derive(
        mine: &SecretScalar,
        theirs: &PublicKey,
        ctx: &RoundContext,
        from: &ClientId,
        to: &ClientId,
    ) -> Self {
        let shared = mine.agree(theirs);
        ShareKey(derive::<32>(shared.as_ref(), Label::ShareEnc, ctx, &[&from.0, &to.0]))
    }

    /// K_{from→to} from the key-agreement value itself, K = c_from^SK·c_to^PK: how a holder,
    /// and the server and an auditor with the value a complaint reveals, open a disputed share
    /// (protocol v2). The same bytes as [`ShareKey::derive`] from either side.
    pub fn from_shared(
        shared: &SharedPoint,
        ctx: &RoundContext,
        from: &ClientId,
        to: &ClientId,
    ) -> Self {
        ShareKey(derive::<32>(shared.to_bytes().as_ref(), Label::ShareEnc, ctx, &[&from.0, &to.0]))
    }

    fn aad(ctx: &RoundContext, from: &ClientId, to: &ClientId) -> [u8; 96] {
        let mut aad = [0u8; 96];
        aad[..32].copy_from_slice(&ctx.0);
        aad[32..64].copy_from_slice(&from.0);
        aad[64..].copy_from_slice(&to.0);
        aad
    }

    /// Encrypts the one message this key is for. Consumes the key.
    pub fn seal(
        self,
        ctx: &RoundContext,
        from: &ClientId,
        to: &ClientId,
        plaintext: &[u8],
    ) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(&Key::from(*self.0));
        cipher
            .encrypt(
                &Nonce::from([0u8; 12]),
                Payload { msg: plaintext, aad: &Self::aad(ctx, from, to) },
            )
            .expect("ChaCha20-Poly1305 encrypts any message below 256 GiB")
    }

    /// Decrypts and authenticates; `None` if the ciphertext is not authentic.
    pub fn open(
        self,
        ctx: &RoundContext,
        from: &ClientId,
        to: &ClientId,
        ciphertext: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        let cipher = ChaCha20Poly1305::new(&Key::from(*self.0));
        cipher
            .decrypt(
                &Nonce::from([0u8; 12]),
                Payload { msg: ciphertext, aad: &Self::aad(ctx, from, to) },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn directional_keys_differ_and_round_trip() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(6);
        let cu = SecretScalar::random(&mut rng);
        let cv = SecretScalar::random(&mut rng);
        let (u, v) = (ClientId([1; 32]), ClientId([2; 32]));
        let ctx = RoundContext([3; 32]);
        let k_uv = ShareKey::derive(&cu, &cv.public(), &ctx, &u, &v);
        let k_vu = ShareKey::derive(&cu, &cv.public(), &ctx, &v, &u);
        assert_ne!(*k_uv.0, *k_vu.0);
        let ct = k_uv.seal(&ctx, &u, &v, b"shares");
        // v derives the same u→v key from its side.
        let k_uv_at_v = ShareKey::derive(&cv, &cu.public(), &ctx, &u, &v);
        assert_eq!(&**k_uv_at_v.open(&ctx, &u, &v, &ct).unwrap(), b"shares");
        // Wrong direction, wrong round, or a flipped bit: refused.
        assert!(
            ShareKey::derive(&cv, &cu.public(), &ctx, &v, &u).open(&ctx, &v, &u, &ct).is_none()
        );
        let other = RoundContext([4; 32]);
        assert!(
            ShareKey::derive(&cv, &cu.public(), &ctx, &u, &v).open(&other, &u, &v, &ct).is_none()
        );
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(
            ShareKey::derive(&cv, &cu.public(), &ctx, &u, &v).open(&ctx, &u, &v, &bad).is_none()
        );
    }

    #[test]
    fn the_key_from_the_agreed_point_is_the_directional_key_from_either_side() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let cu = SecretScalar::random(&mut rng);
        let cv = SecretScalar::random(&mut rng);
        let (u, v) = (ClientId([1; 32]), ClientId([2; 32]));
        let ctx = RoundContext([3; 32]);
        let k = cu.agree_point(&cv.public());
        let seal = ShareKey::from_shared(&k, &ctx, &u, &v);
        assert_eq!(*seal.0, *ShareKey::derive(&cv, &cu.public(), &ctx, &u, &v).0);
        assert_eq!(*seal.0, *ShareKey::derive(&cu, &cv.public(), &ctx, &u, &v).0);
        let open = ShareKey::from_shared(&cv.agree_point(&cu.public()), &ctx, &v, &u);
        assert_eq!(*open.0, *ShareKey::derive(&cu, &cv.public(), &ctx, &v, &u).0);
        assert_ne!(*seal.0, *open.0);
    }
}
