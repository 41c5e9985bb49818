//! t-of-n Shamir secret sharing over the Ristretto255 scalar field.
//!
//! Bonawitz et al. (CCS 2017, §4) share each client's mask key s_u^SK and self-mask seed b_u
//! among its share holders. Both are Ristretto255 scalars, so sharing works directly over the
//! scalar field Z_ℓ (ℓ = 2^252 + …, prime): one share is one 32-byte scalar.
//!
//! A holder's x-coordinate is 1 + its index in the canonical order of the selected set (never
//! 0, where the secret lives). [`split`] evaluates a random polynomial of degree t − 1 with
//! f(0) = secret at each holder's x; any t shares give the secret back by Lagrange
//! interpolation at 0, and any t − 1 reveal nothing about it.
//!
//! The server reconstructs many secrets over the same set of holders (every b_v whose holders
//! all answered), so [`LagrangeCache`] computes the Lagrange coefficients of a holder set once —
//! one batch inversion and O(t²) small-integer products, folded into u128s so that only a
//! fraction of them are scalar multiplications — after which each reconstruction
//! costs t scalar multiplications. The coefficients depend only on the x-coordinates and are
//! public.

use std::collections::HashMap;
use std::sync::Arc;

use crypto_bigint::U256;
use crypto_bigint::modular::ConstMontyForm;
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result, ShamirRule};
use crate::keys::{PublicKey, SecretScalar};

/// One share's y-value. Secret: not `Clone`, zeroized on drop, `Debug` redacted.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ShareValue(Scalar);

impl ShareValue {
    /// The canonical 32-byte encoding (to encrypt for a holder).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// Decodes a share; canonical scalar encodings only, `None` otherwise.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<ShareValue> {
        Option::from(Scalar::from_canonical_bytes(*bytes)).map(ShareValue)
    }

    /// share·G, the public commitment to this share (protocol v2), computed in constant time.
    pub fn commitment(&self) -> RistrettoPoint {
        &self.0 * RISTRETTO_BASEPOINT_TABLE
    }

    /// Whether the share is zero (its commitment would be the identity).
    pub fn is_zero(&self) -> bool {
        bool::from(self.0.ct_eq(&Scalar::ZERO))
    }
}

impl core::fmt::Debug for ShareValue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ShareValue(<redacted>)")
    }
}

/// Splits `secret` into one share per x in `xs` (x-coordinates are 1 + canonical index, never
/// 0, all distinct), any `threshold` of which reconstruct it: a random polynomial of degree
/// `threshold − 1` with f(0) = `secret`, coefficients drawn from `rng`. Returns the shares in
/// the order of `xs`.
///
/// Errors if `threshold` is 0 or exceeds the number of holders (the secret could never be
/// reconstructed), or if an x is 0 or repeated.
pub fn split<R: CryptoRng + ?Sized>(
    secret: &Scalar,
    threshold: usize,
    xs: &[u32],
    rng: &mut R,
) -> Result<Vec<ShareValue>> {
    if threshold == 0 {
        return Err(Error::Shamir(ShamirRule::ZeroThreshold));
    }
    if threshold > xs.len() {
        return Err(Error::Shamir(ShamirRule::ThresholdAboveHolders {
            threshold,
            holders: xs.len(),
        }));
    }
    let mut sorted = xs.to_vec();
    sorted.sort_unstable();
    check_sorted_distinct_nonzero(&sorted)?;

    // f(x) = secret + a_1·x + … + a_{t−1}·x^{t−1}, its coefficients drawn as scalars (the same
    // draws as ever) and evaluated in Montgomery form: Horner's rule then costs one Montgomery
    // multiplication a step, where a `Scalar` product costs two (it converts in and out each
    // time). The coefficients, accumulators and byte buffers we hold are zeroized when dropped
    // (temporaries inside the arithmetic are not, as with `Scalar`'s own).
    let mut coefficients: Zeroizing<Vec<Montgomery>> =
        Zeroizing::new(Vec::with_capacity(threshold));
    coefficients.push(to_montgomery(secret));
    for _ in 1..threshold {
        let a = Zeroizing::new(Scalar::random(rng));
        coefficients.push(to_montgomery(&a));
    }

    let shares = xs
        .iter()
        .map(|&x| {
            let x = Montgomery::new(&U256::from_u32(x));
            // Horner, from the highest coefficient down.
            let mut y = Zeroizing::new(Montgomery::ZERO);
            for c in coefficients.iter().rev() {
                *y = *y * x + *c;
            }
            ShareValue(from_montgomery(&y))
        })
        .collect();
    Ok(shares)
}

/// [`split`], drawn again until no holder's share is zero, so that every commitment to an honest
/// share is a non-identity point (protocol v2). A zero share has probability about m/ℓ a draw;
/// a zero secret with threshold 1 (every share zero) is refused, as is a run of draws that all
/// give one.
pub fn split_nonzero<R: CryptoRng + ?Sized>(
    secret: &Scalar,
    threshold: usize,
    xs: &[u32],
    rng: &mut R,
) -> Result<Vec<ShareValue>> {
    if threshold == 1 && *secret == Scalar::ZERO {
        return Err(Error::Shamir(ShamirRule::ZeroShare));
    }
    for _ in 0..SPLIT_DRAWS {
        let shares = split(secret, threshold, xs, rng)?;
        if !shares.iter().any(ShareValue::is_zero) {
            return Ok(shares);
        }
    }
    Err(Error::Shamir(ShamirRule::ZeroShare))
}

/// How many polynomials [`split_nonzero`] draws before it gives up (each fails with probability
/// about m/ℓ < 2^-200).
const SPLIT_DRAWS: usize = 8;

mod modulus {
    use crypto_bigint::{U256, const_monty_params};
    // ℓ = 2^252 + 27742317777372353535851937790883648493, the order of the Ristretto255 group.
    const_monty_params!(
        GroupOrder,
        U256,
        "1000000000000000000000000000000014def9dea2f79cd65812631a5cf5d3ed",
        "The order ℓ of the Ristretto255 group."
    );
}

/// An element of Z_ℓ in Montgomery form (crypto-bigint's constant-time arithmetic).
type Montgomery = ConstMontyForm<modulus::GroupOrder, { U256::LIMBS }>;

fn to_montgomery(s: &Scalar) -> Montgomery {
    let bytes = Zeroizing::new(s.to_bytes());
    let mut integer = U256::from_le_slice(bytes.as_ref());
    let m = Montgomery::new(&integer);
    integer.zeroize();
    m
}

fn from_montgomery(m: &Montgomery) -> Scalar {
    let mut integer = m.retrieve();
    let mut bytes = Zeroizing::new([0u8; 32]);
    let encoded = Zeroizing::new(integer.to_le_bytes());
    bytes.copy_from_slice(encoded.as_ref());
    integer.zeroize();
    Option::from(Scalar::from_canonical_bytes(*bytes))
        .expect("a value retrieved from Montgomery form is reduced below ℓ")
}

/// Lagrange interpolation at 0 of exactly the given shares (the caller passes t of them, in any
/// order). Errors on empty input, an x of 0, or a repeated x.
///
/// To reconstruct several secrets over the same holders, use a [`LagrangeCache`].
pub fn reconstruct(shares: &[(u32, &ShareValue)]) -> Result<SecretScalar> {
    let sorted = sort_shares(shares)?;
    let xs: Vec<u32> = sorted.iter().map(|&(x, _)| x).collect();
    let lambdas = lagrange_at_zero(&xs);
    Ok(combine(&lambdas, &sorted))
}

/// Lagrange coefficients at 0, cached per set of share holders (the sorted x set).
///
/// The coefficients depend only on the x-coordinates, so they are public; a cache may be shared
/// by all the reconstructions of a round.
#[derive(Debug, Default)]
pub struct LagrangeCache {
    by_holders: HashMap<Vec<u32>, Arc<Vec<Scalar>>>,
}

impl LagrangeCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The coefficients λ_i = Π_{j≠i} x_j / (x_j − x_i) for the sorted, distinct, non-zero `xs`
    /// (an error otherwise), in the order of `xs`; computed once per holder set.
    pub fn coefficients(&mut self, xs: &[u32]) -> Result<Arc<Vec<Scalar>>> {
        check_sorted_distinct_nonzero(xs)?;
        if let Some(lambdas) = self.by_holders.get(xs) {
            return Ok(Arc::clone(lambdas));
        }
        let lambdas = Arc::new(lagrange_at_zero(xs));
        self.by_holders.insert(xs.to_vec(), Arc::clone(&lambdas));
        Ok(lambdas)
    }

    /// Reconstructs the secret from exactly the given shares (in any order) with cached
    /// coefficients. Errors as [`reconstruct`] does.
    pub fn reconstruct(&mut self, shares: &[(u32, &ShareValue)]) -> Result<SecretScalar> {
        let sorted = sort_shares(shares)?;
        let xs: Vec<u32> = sorted.iter().map(|&(x, _)| x).collect();
        let lambdas = self.coefficients(&xs)?;
        Ok(combine(&lambdas, &sorted))
    }

    /// Reconstructs the secret and checks it against its published point (b_v·G = B_v,
    /// s_v^SK·G = s_v^PK), so that a bad share is detected rather than silently summed
    /// (DESIGN.md, phase 4). On a mismatch returns
    /// `Error::Shamir(ShamirRule::Mismatch)`; the caller, who
    /// knows whose secret it is, maps it to [`Error::ReconstructionMismatch`].
    pub fn reconstruct_checked(
        &mut self,
        shares: &[(u32, &ShareValue)],
        expected: &PublicKey,
    ) -> Result<SecretScalar> {
        let secret = self.reconstruct(shares)?;
        if !expected.matches(secret.expose()) {
            return Err(Error::Shamir(ShamirRule::Mismatch));
        }
        Ok(secret)
    }

    /// Number of holder sets cached.
    pub fn len(&self) -> usize {
        self.by_holders.len()
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.by_holders.is_empty()
    }
}

/// Refuses empty input, x = 0, and anything not strictly increasing.
pub(crate) fn check_sorted_distinct_nonzero(xs: &[u32]) -> Result<()> {
    match xs.first() {
        None => return Err(Error::Shamir(ShamirRule::NoShares)),
        Some(0) => return Err(Error::Shamir(ShamirRule::ZeroX)),
        Some(_) => {}
    }
    for pair in xs.windows(2) {
        if pair[0] == pair[1] {
            return Err(Error::Shamir(ShamirRule::DuplicateX(pair[0])));
        }
        if pair[0] > pair[1] {
            return Err(Error::Shamir(ShamirRule::UnsortedX { before: pair[0], after: pair[1] }));
        }
    }
    Ok(())
}

/// The shares sorted by x, checked (non-empty, no zero, no duplicate).
fn sort_shares<'a>(shares: &[(u32, &'a ShareValue)]) -> Result<Vec<(u32, &'a ShareValue)>> {
    let mut sorted = shares.to_vec();
    sorted.sort_unstable_by_key(|&(x, _)| x);
    let xs: Vec<u32> = sorted.iter().map(|&(x, _)| x).collect();
    check_sorted_distinct_nonzero(&xs)?;
    Ok(sorted)
}

/// Σ λ_i·y_i over shares sorted like the coefficients.
fn combine(lambdas: &[Scalar], sorted: &[(u32, &ShareValue)]) -> SecretScalar {
    debug_assert_eq!(lambdas.len(), sorted.len());
    let mut acc = Zeroizing::new(Scalar::ZERO);
    for (lambda, (_, share)) in lambdas.iter().zip(sorted) {
        *acc += lambda * share.0;
    }
    SecretScalar::from_scalar(*acc)
}

/// Accumulates a product of small integers, folding factors into one u128 for as long as it
/// does not overflow (four u32 factors at least; fourteen for the 9-bit gaps of a typical
/// holder set) before one scalar multiplication. A u128 is below ℓ, so needs no reduction.
struct SmallProduct {
    acc: Scalar,
    pending: u128,
}

impl SmallProduct {
    fn new() -> Self {
        SmallProduct { acc: Scalar::ONE, pending: 1 }
    }

    fn mul(&mut self, factor: u32) {
        match self.pending.checked_mul(u128::from(factor)) {
            Some(p) => self.pending = p,
            None => {
                self.acc *= Scalar::from(self.pending);
                self.pending = u128::from(factor);
            }
        }
    }

    fn finish(self) -> Scalar {
        self.acc * Scalar::from(self.pending)
    }
}

/// λ_i = Π_{j≠i} x_j / (x_j − x_i) for sorted, distinct, non-zero xs.
///
/// With P = Π_j x_j, λ_i = P / (x_i · Π_{j≠i} (x_j − x_i)). The xs are sorted, so exactly i of
/// the differences (those with j < i) are negative: the denominator is (−1)^i · x_i ·
/// Π_{j≠i} |x_j − x_i|, a product of integers below 2^32, none divisible by the prime ℓ, so it is
/// non-zero and all t denominators are inverted together in one batch inversion.
fn lagrange_at_zero(xs: &[u32]) -> Vec<Scalar> {
    let mut all = SmallProduct::new();
    for &x in xs {
        all.mul(x);
    }
    let numerator = all.finish();

    let mut denominators: Vec<Scalar> = xs
        .iter()
        .map(|&xi| {
            let mut d = SmallProduct::new();
            d.mul(xi);
            for &xj in xs {
                if xj != xi {
                    d.mul(xj.abs_diff(xi));
                }
            }
            d.finish()
        })
        .collect();
    Scalar::invert_batch_alloc(&mut denominators);

    denominators
        .into_iter()
        .enumerate()
        .map(|(i, inv)| {
            let lambda = numerator * inv;
            if i % 2 == 1 { -lambda } else { lambda }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use rand_chacha::ChaCha20Rng;

    fn xs(n: usize) -> Vec<u32> {
        (1..=n as u32).collect()
    }

    /// λ_i by the textbook formula, one inversion per coefficient.
    fn naive_lagrange(xs: &[u32]) -> Vec<Scalar> {
        xs.iter()
            .map(|&xi| {
                let mut num = Scalar::ONE;
                let mut den = Scalar::ONE;
                for &xj in xs {
                    if xj != xi {
                        num *= Scalar::from(xj);
                        den *= Scalar::from(xj) - Scalar::from(xi);
                    }
                }
                num * den.invert()
            })
            .collect()
    }

    #[test]
    fn the_montgomery_modulus_is_the_group_order() {
        // (ℓ − 1) + 1 is 0 modulo m only if m divides ℓ, a prime: m = ℓ.
        let minus_one = to_montgomery(&-Scalar::ONE);
        assert_eq!(minus_one + Montgomery::ONE, Montgomery::ZERO);
        assert_eq!(from_montgomery(&minus_one), -Scalar::ONE);
        let x = Scalar::from(0x1234_5678_9abc_def0_u64) * Scalar::from(77u32);
        assert_eq!(from_montgomery(&(to_montgomery(&x) * to_montgomery(&x))), x * x);
    }

    proptest! {
        /// The Montgomery-form evaluation gives exactly the textbook polynomial's values, from
        /// the same random draws: shares are bit for bit what scalar arithmetic gives, so a
        /// seeded run reproduces.
        #[test]
        fn shares_are_the_polynomial_evaluated_with_scalars(
            seed in any::<u64>(),
            t in 1usize..=40,
            xs in proptest::collection::btree_set(1u32..=u32::MAX, 1..=48),
        ) {
            let xs: Vec<u32> = xs.into_iter().collect();
            prop_assume!(t <= xs.len());
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let secret = Scalar::random(&mut rng);
            let shares = split(&secret, t, &xs, &mut rng).unwrap();

            let mut replay = ChaCha20Rng::seed_from_u64(seed);
            let mut coefficients = vec![Scalar::random(&mut replay)];
            coefficients.extend((1..t).map(|_| Scalar::random(&mut replay)));
            for (share, &x) in shares.iter().zip(&xs) {
                let x = Scalar::from(x);
                let expected = coefficients.iter().rev().fold(Scalar::ZERO, |y, c| y * x + c);
                prop_assert_eq!(share.0, expected);
            }
        }
    }

    proptest! {
        #[test]
        fn any_t_shares_reconstruct_and_t_minus_1_do_not(
            seed in any::<u64>(),
            (t, n) in (1usize..=8).prop_flat_map(|t| (Just(t), t..=12usize)),
            offset in 0u32..1000,
        ) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let secret = Scalar::random(&mut rng);
            // Holders need not be 1..=n: any distinct non-zero xs, here shifted.
            let holders: Vec<u32> = (1..=n as u32).map(|x| x + offset).collect();
            let shares = split(&secret, t, &holders, &mut rng).unwrap();
            prop_assert_eq!(shares.len(), n);

            let mut picked: Vec<usize> = (0..n).collect();
            picked.shuffle(&mut rng);
            let subset: Vec<(u32, &ShareValue)> =
                picked[..t].iter().map(|&i| (holders[i], &shares[i])).collect();

            let plain = reconstruct(&subset).unwrap();
            prop_assert_eq!(plain.expose(), &secret);
            let mut cache = LagrangeCache::new();
            let cached = cache.reconstruct(&subset).unwrap();
            prop_assert_eq!(cached.expose(), &secret);

            if t >= 2 {
                let short = reconstruct(&subset[..t - 1]).unwrap();
                prop_assert_ne!(short.expose(), &secret);
                let short = cache.reconstruct(&subset[..t - 1]).unwrap();
                prop_assert_ne!(short.expose(), &secret);
            }
        }

        #[test]
        fn batched_coefficients_match_textbook_formula(
            holders in proptest::collection::btree_set(1u32..=u32::MAX, 1..40),
        ) {
            // A BTreeSet iterates in order: sorted and distinct.
            let holders: Vec<u32> = holders.into_iter().collect();
            let mut cache = LagrangeCache::new();
            let fast = cache.coefficients(&holders).unwrap();
            prop_assert_eq!(&*fast, &naive_lagrange(&holders));
            // Interpolating the constant 1 gives 1: Σ λ_i = 1.
            let sum: Scalar = fast.iter().sum();
            prop_assert_eq!(sum, Scalar::ONE);
        }
    }

    #[test]
    fn cache_matches_uncached_and_reuses_coefficients() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let holders = xs(20);
        let mut cache = LagrangeCache::new();
        for _ in 0..5 {
            let secret = Scalar::random(&mut rng);
            let shares = split(&secret, 11, &holders, &mut rng).unwrap();
            // Any order in, same answer out.
            let mut subset: Vec<(u32, &ShareValue)> =
                holders.iter().copied().zip(shares.iter()).skip(3).take(11).collect();
            subset.reverse();
            let a = reconstruct(&subset).unwrap();
            let b = cache.reconstruct(&subset).unwrap();
            assert_eq!(a.expose(), b.expose());
            assert_eq!(a.expose(), &secret);
        }
        assert_eq!(cache.len(), 1, "one holder set, one cache entry");
        let first = cache.coefficients(&holders[3..14]).unwrap();
        let again = cache.coefficients(&holders[3..14]).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
    }

    #[test]
    fn threshold_one_gives_the_secret_to_everyone() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let secret = Scalar::random(&mut rng);
        let shares = split(&secret, 1, &xs(3), &mut rng).unwrap();
        for s in &shares {
            assert_eq!(*s.to_bytes(), secret.to_bytes());
        }
    }

    #[test]
    fn malformed_inputs_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let secret = Scalar::random(&mut rng);
        let shares = split(&secret, 2, &xs(3), &mut rng).unwrap();
        let is_shamir = |r: Result<SecretScalar>| matches!(r, Err(Error::Shamir(_)));

        // Duplicate x.
        let dup = [(1, &shares[0]), (1, &shares[1])];
        assert!(is_shamir(reconstruct(&dup)));
        assert!(is_shamir(LagrangeCache::new().reconstruct(&dup)));
        // x = 0.
        let zero = [(0, &shares[0]), (2, &shares[1])];
        assert!(is_shamir(reconstruct(&zero)));
        assert!(is_shamir(LagrangeCache::new().reconstruct(&zero)));
        // Empty.
        assert!(is_shamir(reconstruct(&[])));
        assert!(is_shamir(LagrangeCache::new().reconstruct(&[])));

        // Coefficients want sorted, distinct, non-zero xs.
        let mut cache = LagrangeCache::new();
        assert!(cache.coefficients(&[]).is_err());
        assert!(cache.coefficients(&[0, 1]).is_err());
        assert!(cache.coefficients(&[2, 1]).is_err());
        assert!(cache.coefficients(&[1, 1]).is_err());
        assert!(cache.is_empty());

        // Split refuses the same, and thresholds that cannot work.
        let rule = |r: Result<Vec<ShareValue>>| match r {
            Err(Error::Shamir(rule)) => rule,
            other => panic!("expected a Shamir refusal, got {:?}", other.map(|v| v.len())),
        };
        assert_eq!(rule(split(&secret, 2, &[1, 2, 2], &mut rng)), ShamirRule::DuplicateX(2));
        assert_eq!(rule(split(&secret, 2, &[0, 1, 2], &mut rng)), ShamirRule::ZeroX);
        assert_eq!(rule(split(&secret, 0, &[1, 2], &mut rng)), ShamirRule::ZeroThreshold);
        assert_eq!(
            rule(split(&secret, 3, &[1, 2], &mut rng)),
            ShamirRule::ThresholdAboveHolders { threshold: 3, holders: 2 }
        );
        assert_eq!(
            rule(split(&secret, 1, &[], &mut rng)),
            ShamirRule::ThresholdAboveHolders { threshold: 1, holders: 0 }
        );
    }

    #[test]
    fn shares_are_returned_in_the_order_of_xs() {
        let mut rng = ChaCha20Rng::seed_from_u64(10);
        let secret = Scalar::random(&mut rng);
        let holders = [5u32, 2, 9];
        let shares = split(&secret, 2, &holders, &mut rng).unwrap();
        // Shares 5 and 9 reconstruct only if labelled with the x they were made for.
        let right = reconstruct(&[(5, &shares[0]), (9, &shares[2])]).unwrap();
        assert_eq!(right.expose(), &secret);
        let wrong = reconstruct(&[(9, &shares[0]), (5, &shares[2])]).unwrap();
        assert_ne!(wrong.expose(), &secret);
    }

    #[test]
    fn bytes_round_trip_and_non_canonical_is_rejected() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let shares = split(&Scalar::random(&mut rng), 2, &xs(2), &mut rng).unwrap();
        let bytes = shares[0].to_bytes();
        let back = ShareValue::from_bytes(&bytes).unwrap();
        assert_eq!(*back.to_bytes(), *bytes);

        // ℓ itself and anything above it are not canonical.
        let ell: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        assert!(ShareValue::from_bytes(&ell).is_none());
        assert!(ShareValue::from_bytes(&[0xff; 32]).is_none());
        let mut ell_minus_1 = ell;
        ell_minus_1[0] -= 1;
        assert!(ShareValue::from_bytes(&ell_minus_1).is_some());
    }

    #[test]
    fn debug_of_share_is_redacted() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let shares = split(&Scalar::random(&mut rng), 2, &xs(2), &mut rng).unwrap();
        let shown = format!("{:?}", shares[0]);
        assert!(shown.contains("redacted"));
        let hex: String = shares[0].to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex[..8]));
    }

    #[test]
    fn reconstruct_checked_detects_a_tampered_share() {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let secret = SecretScalar::random(&mut rng);
        let public = secret.public();
        let holders = xs(5);
        let shares = split(secret.expose(), 3, &holders, &mut rng).unwrap();
        let mut cache = LagrangeCache::new();

        let honest: Vec<(u32, &ShareValue)> =
            holders.iter().copied().zip(shares.iter()).take(3).collect();
        let ok = cache.reconstruct_checked(&honest, &public).unwrap();
        assert_eq!(ok.expose(), secret.expose());

        let mut bytes = *shares[1].to_bytes();
        bytes[0] ^= 1;
        let tampered_share = ShareValue::from_bytes(&bytes).unwrap();
        let tampered = [(1, &shares[0]), (2, &tampered_share), (3, &shares[2])];
        let err = cache.reconstruct_checked(&tampered, &public).unwrap_err();
        assert_eq!(err, Error::Shamir(ShamirRule::Mismatch));
    }
}
