//! Quantization: clip, scale, stochastic rounding to two's-complement Z_2^32 and back, and the
//! bit-budget check that refuses a configuration that could wrap around.
//!
//! # Encoding
//!
//! A client with update x and example count e sends d + 1 words of `Z_2^32`:
//!
//! * its weight w = min(e / max_examples, 1) (weighted FedAvg);
//! * for each coordinate, q_i = SR(clip(x_i, −c, c) · w · value_scale);
//! * last, the weight coordinate SR(w · weight_scale).
//!
//! SR is stochastic rounding: ⌊v⌋ + 1 with probability v − ⌊v⌋, ⌊v⌋ otherwise, so that
//! E[SR(v)] = v (up to f64 precision: the coin is a 53-bit uniform) and the rounding noise of
//! many clients averages out instead of piling up in one direction. The integer is embedded in
//! `Z_2^32` as two's complement ([`from_signed`]); the server adds the masked vectors with
//! wrapping arithmetic, reads the sum back as signed integers ([`to_signed`]), divides by the
//! scales and then the value sums by the weight sum ([`QuantParams::weighted_average`]).
//!
//! # Error bound
//!
//! Each decoded coordinate differs from the client's true clipped, weighted value w·clip(x_i)
//! by less than one quantization step 1/value_scale (and its weight by less than
//! 1/weight_scale), so a sum over n clients differs from the true sum by less than
//! n/value_scale (n/weight_scale for the weight sum) — provided the sum does not wrap.
//!
//! # Bit budget
//!
//! A client's word has magnitude at most ⌊c·value_scale⌋ + 1 (the +1 is stochastic rounding
//! going up), so a sum of n words stays inside the signed range, and decodes exactly, when
//!
//! ```text
//!     n · (c·value_scale + 1) ≤ 2^31 − 1     and     n · (weight_scale + 1) ≤ 2^31 − 1
//! ```
//!
//! for n the largest round the task can select (target × over-selection). The check takes
//! c·scale rounded down to the integer the rounding can actually reach, so it is exact: it
//! refuses precisely the configurations where a sum could wrap. [`QuantParams::for_clients`]
//! derives the largest scales that fit: with m = ⌊(2^31 − 1)/n⌋ − 1, value_scale = m / c and
//! weight_scale = m (1,000 clients leave m ≈ 2^21: about 21 bits per value).
//! [`QuantParams::check_bit_budget`] refuses anything else with an error that says by how much
//! it overflows and what would fit.

use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, QuantRule, Result};

/// The largest magnitude a sum may reach and still decode exactly: 2^31 − 1.
pub const SUM_BOUND: u64 = i32::MAX as u64;

/// Quantization parameters, fixed by the round plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantParams {
    /// Clip bound c: every value is clipped to [−c, c].
    pub clip: f64,
    /// Scale of the model coordinates: a value v becomes the stochastic rounding of v · scale.
    pub value_scale: f64,
    /// Scale of the weight coordinate (w ∈ [0, 1]).
    pub weight_scale: f64,
    /// A client's weight is min(examples / max_examples, 1).
    pub max_examples: u64,
}

impl QuantParams {
    /// Stable byte encoding for the round context.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&self.clip.to_bits().to_be_bytes());
        out.extend_from_slice(&self.value_scale.to_bits().to_be_bytes());
        out.extend_from_slice(&self.weight_scale.to_bits().to_be_bytes());
        out.extend_from_slice(&self.max_examples.to_be_bytes());
        out
    }

    /// Range checks on the parameters themselves.
    pub fn validate(&self) -> Result<()> {
        let finite_pos = |x: f64| x.is_finite() && x > 0.0;
        if !finite_pos(self.clip) || !finite_pos(self.value_scale) || !finite_pos(self.weight_scale)
        {
            return Err(Error::InvalidQuantization(QuantRule::NotFinitePositive));
        }
        if self.max_examples == 0 {
            return Err(Error::InvalidQuantization(QuantRule::NoExamples));
        }
        Ok(())
    }

    /// The largest scales that keep a sum of `n_max` vectors (the largest round the task can
    /// select) from wrapping: with m = ⌊(2^31 − 1)/n_max⌋ − 1, value_scale = m / `clip` and
    /// weight_scale = m, so that n_max·(m + 1) ≤ 2^31 − 1.
    ///
    /// Errors if `n_max` is 0, `clip` is not finite and positive, `max_examples` is 0, or the
    /// budget cannot be met (m would be 0: more than 2^30 − 1 clients).
    pub fn for_clients(n_max: usize, clip: f64, max_examples: u64) -> Result<Self> {
        if n_max == 0 {
            return Err(Error::InvalidQuantization(QuantRule::NoClients));
        }
        if !(clip.is_finite() && clip > 0.0) {
            return Err(Error::InvalidQuantization(QuantRule::NotFinitePositive));
        }
        let m = largest_word(n_max);
        if m == 0 {
            return Err(Error::BitBudget(format!(
                "{n_max} clients leave no room for any value: n·(c·scale + 1) ≤ 2^31−1 = {SUM_BOUND} \
                 needs at most {} clients per round",
                SUM_BOUND / 2
            )));
        }
        let params = QuantParams {
            clip,
            value_scale: m as f64 / clip,
            weight_scale: m as f64,
            max_examples,
        };
        params.check_bit_budget(n_max)?;
        Ok(params)
    }

    /// The bit-budget check for rounds of up to `n_max` clients: n_max·(⌊c·value_scale⌋ + 1)
    /// and n_max·(⌊weight_scale⌋ + 1) must not exceed 2^31 − 1. Otherwise
    /// [`Error::BitBudget`] says by how much the budget is exceeded and which scale or round
    /// size would fit.
    pub fn check_bit_budget(&self, n_max: usize) -> Result<()> {
        self.validate()?;
        if n_max == 0 {
            return Err(Error::InvalidQuantization(QuantRule::NoClients));
        }
        let clip = self.clip;
        check_coordinate(
            Coordinate {
                name: "value",
                formula: "n·(c·value_scale + 1)",
                scale_name: "value_scale",
                scaled_bound: self.clip * self.value_scale,
                scale_for_word: &|m| m as f64 / clip,
            },
            n_max,
        )?;
        check_coordinate(
            Coordinate {
                name: "weight",
                formula: "n·(weight_scale + 1)",
                scale_name: "weight_scale",
                scaled_bound: self.weight_scale,
                scale_for_word: &|m| m as f64,
            },
            n_max,
        )
    }

    /// A client's weight w = min(examples / max_examples, 1).
    pub fn weight(&self, examples: u64) -> f64 {
        if examples >= self.max_examples { 1.0 } else { examples as f64 / self.max_examples as f64 }
    }

    /// The masked-input plaintext: `update.len() + 1` words, the last the weight coordinate.
    ///
    /// Each value is clipped to [−c, c], multiplied by the weight w, scaled, stochastically
    /// rounded with `rng` (⌊v⌋ + Bernoulli(v − ⌊v⌋)) and embedded as two's complement. NaN or
    /// infinite inputs are refused with [`Error::InvalidQuantization`] naming the index; a
    /// configuration where even one client's word could overflow is refused with
    /// [`Error::BitBudget`].
    pub fn quantize<R: Rng + ?Sized>(
        &self,
        update: &[f32],
        examples: u64,
        rng: &mut R,
    ) -> Result<Vec<u32>> {
        self.check_bit_budget(1)?;
        let w = self.weight(examples);
        let mut words = Vec::with_capacity(update.len() + 1);
        for (i, &x) in update.iter().enumerate() {
            if !x.is_finite() {
                return Err(Error::InvalidQuantization(QuantRule::NotFinite { index: i }));
            }
            // (clip(x)·w)·scale: |clip(x)·w| ≤ c and rounding is monotone, so the result is at
            // most c·scale in magnitude, the bound `check_bit_budget` reasons about.
            let v = f64::from(x).clamp(-self.clip, self.clip) * w * self.value_scale;
            words.push(from_signed(stochastic_round(v, rng)));
        }
        words.push(from_signed(stochastic_round(w * self.weight_scale, rng)));
        Ok(words)
    }

    /// Decodes a sum of up to n_max quantized vectors (n_max as checked by
    /// [`check_bit_budget`](Self::check_bit_budget)) into (Σ w·x per coordinate, Σ w).
    pub fn decode_sum(&self, sum: &[u32]) -> Result<(Vec<f64>, f64)> {
        self.validate()?;
        let Some((&weight_word, value_words)) = sum.split_last() else {
            return Err(Error::InvalidQuantization(QuantRule::EmptySum));
        };
        let values =
            value_words.iter().map(|&q| f64::from(to_signed(q)) / self.value_scale).collect();
        let weight = f64::from(to_signed(weight_word)) / self.weight_scale;
        Ok((values, weight))
    }

    /// The weighted average Σ w·x / Σ w of a decoded sum, as f32. Errors if the sum is empty or
    /// its weight is not positive (no client contributed weight).
    pub fn weighted_average(&self, sum: &[u32]) -> Result<Vec<f32>> {
        let (values, weight) = self.decode_sum(sum)?;
        if weight <= 0.0 {
            return Err(Error::InvalidQuantization(QuantRule::NoWeight));
        }
        Ok(values.into_iter().map(|v| (v / weight) as f32).collect())
    }
}

/// Interprets a word of `Z_2^32` as a two's-complement `i32`.
pub fn to_signed(w: u32) -> i32 {
    w as i32
}

/// Embeds an `i32` into `Z_2^32` as two's complement.
pub fn from_signed(v: i32) -> u32 {
    v as u32
}

/// m = ⌊(2^31 − 1)/n⌋ − 1: the largest per-client word magnitude minus the rounding's +1, such
/// that n·(m + 1) ≤ 2^31 − 1. Zero when no positive scale fits.
fn largest_word(n: usize) -> u64 {
    (SUM_BOUND / n as u64).saturating_sub(1)
}

/// ⌊v⌋ + Bernoulli(v − ⌊v⌋), the coin a 53-bit uniform in [0, 1): E = v to f64 precision.
/// The caller guarantees |v| + 1 fits an i32 (`check_bit_budget(1)`).
fn stochastic_round<R: Rng + ?Sized>(v: f64, rng: &mut R) -> i32 {
    const TWO_POW_MINUS_53: f64 = 1.0 / (1u64 << 53) as f64;
    let floor = v.floor();
    let frac = v - floor;
    let u = (rng.next_u64() >> 11) as f64 * TWO_POW_MINUS_53;
    let q = if u < frac { floor + 1.0 } else { floor };
    q as i32
}

/// One coordinate kind for the budget check.
struct Coordinate<'a> {
    name: &'static str,
    formula: &'static str,
    scale_name: &'static str,
    /// c·scale (or the scale itself for the weight): the largest |v| before rounding.
    scaled_bound: f64,
    /// The scale whose scaled bound is the word m.
    scale_for_word: &'a dyn Fn(u64) -> f64,
}

fn check_coordinate(coordinate: Coordinate<'_>, n_max: usize) -> Result<()> {
    let bound = coordinate.scaled_bound.floor();
    // `as` saturates: an absurd scale becomes u128::MAX and is refused below.
    let per_client = (bound as u128).saturating_add(1);
    let need = (n_max as u128).saturating_mul(per_client);
    if need <= u128::from(SUM_BOUND) {
        return Ok(());
    }
    let need_f = n_max as f64 * (bound + 1.0);
    let over_pct = (need_f - SUM_BOUND as f64) / SUM_BOUND as f64 * 100.0;
    let m = largest_word(n_max);
    let lower_scale = if m == 0 {
        format!("no {} fits {n_max} clients", coordinate.scale_name)
    } else {
        format!("lower {} to at most {}", coordinate.scale_name, (coordinate.scale_for_word)(m))
    };
    let max_clients = u128::from(SUM_BOUND) / per_client;
    let fewer_clients = if max_clients == 0 {
        "even a single client overflows".to_string()
    } else {
        format!("the clients per round to at most {max_clients}")
    };
    Err(Error::BitBudget(format!(
        "{} coordinate: {} = {n_max}·({bound} + 1) = {need_f:.4e} exceeds 2^31−1 = {SUM_BOUND} \
         by {over_pct:.1} %; {lower_scale} or {fewer_clients}",
        coordinate.name, coordinate.formula,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    const B: f64 = SUM_BOUND as f64;

    fn add_into(sum: &mut [u32], words: &[u32]) {
        for (s, w) in sum.iter_mut().zip(words) {
            *s = s.wrapping_add(*w);
        }
    }

    proptest! {
        #[test]
        fn round_trip_is_within_one_step(
            seed in any::<u64>(),
            update in proptest::collection::vec(-1e6f32..1e6, 0..40),
            clip in 0.01f64..100.0,
            n_max in 1usize..100_000,
            max_examples in 1u64..1000,
            examples in 0u64..2000,
        ) {
            let p = QuantParams::for_clients(n_max, clip, max_examples).unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let words = p.quantize(&update, examples, &mut rng).unwrap();
            prop_assert_eq!(words.len(), update.len() + 1);
            let (values, weight) = p.decode_sum(&words).unwrap();
            let w = p.weight(examples);
            // One step, with slack for the f64 rounding of the products themselves.
            let slack = 1.0 + 1e-9;
            for (x, v) in update.iter().zip(&values) {
                let truth = f64::from(*x).clamp(-clip, clip) * w;
                prop_assert!(
                    (v - truth).abs() < slack / p.value_scale,
                    "x = {x}: decoded {v}, true {truth}, step {}", 1.0 / p.value_scale
                );
            }
            prop_assert!((weight - w).abs() < slack / p.weight_scale);
        }
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        // Coarse scales, so that rounding to nearest would be far off the truth.
        let p = QuantParams { clip: 1.0, value_scale: 10.0, weight_scale: 10.0, max_examples: 3 };
        let x = 0.37_f32;
        let mut rng = ChaCha20Rng::seed_from_u64(42);
        const N: usize = 20_000;
        let (mut sum_pos, mut sum_neg, mut sum_w) = (0.0, 0.0, 0.0);
        for _ in 0..N {
            // One example of three: w = 1/3, so the weight coordinate is 3.33… before rounding.
            let words = p.quantize(&[x, -x], 1, &mut rng).unwrap();
            let (values, w) = p.decode_sum(&words).unwrap();
            sum_pos += values[0];
            sum_neg += values[1];
            sum_w += w;
        }
        let w = 1.0 / 3.0;
        let cases = [
            ("value", sum_pos / N as f64, f64::from(x) * w, p.value_scale),
            ("negated value", sum_neg / N as f64, -f64::from(x) * w, p.value_scale),
            ("weight", sum_w / N as f64, w, p.weight_scale),
        ];
        for (what, mean, truth, scale) in cases {
            let v = truth * scale;
            let frac = v - v.floor();
            // Standard error of the mean of (⌊v⌋ + Bernoulli(frac)) / scale.
            let se = (frac * (1.0 - frac)).sqrt() / scale / (N as f64).sqrt();
            assert!(
                (mean - truth).abs() < 4.0 * se,
                "{what}: mean {mean} vs true {truth}, standard error {se}"
            );
            // The test has the power to see a biased rounding: nearest is ≫ 4 SE away.
            assert!((v.round() / scale - truth).abs() > 20.0 * se);
        }
    }

    #[test]
    fn sum_of_n_max_extreme_vectors_does_not_wrap() {
        let clip = 2.5;
        for n_max in [1usize, 2, 3, 7, 1000, 4096] {
            let p = QuantParams::for_clients(n_max, clip, 100).unwrap();
            p.check_bit_budget(n_max).unwrap();
            // The scales use the budget: n·c·scale is within a few n of 2^31 − 1.
            assert!(n_max as f64 * (clip * p.value_scale + 2.0) > B, "n = {n_max}");

            let update = [clip as f32, -clip as f32, 10.0 * clip as f32, -1e30, 0.0];
            let mut rng = ChaCha20Rng::seed_from_u64(n_max as u64);
            let mut sum = vec![0u32; update.len() + 1];
            for _ in 0..n_max {
                add_into(&mut sum, &p.quantize(&update, 1000, &mut rng).unwrap());
            }
            let (values, weight) = p.decode_sum(&sum).unwrap();
            let n = n_max as f64;
            let expected = [n * clip, -n * clip, n * clip, -n * clip, 0.0];
            for (i, (v, e)) in values.iter().zip(expected).enumerate() {
                assert!(
                    (v - e).abs() < n / p.value_scale,
                    "n = {n_max}, coordinate {i}: decoded {v}, expected {e}"
                );
            }
            assert!((weight - n).abs() < n / p.weight_scale, "n = {n_max}: weight {weight}");
            let avg = p.weighted_average(&sum).unwrap();
            assert!((f64::from(avg[0]) - clip).abs() < 1e-5);
            assert!((f64::from(avg[1]) + clip).abs() < 1e-5);
        }
    }

    #[test]
    fn worst_case_rounding_up_still_fits() {
        // Every client rounds up to ⌊c·scale⌋ + 1 in magnitude: the budget still holds.
        for n_max in [1usize, 2, 1000, 65_537] {
            let p = QuantParams::for_clients(n_max, 1.0, 1).unwrap();
            let worst = -((p.clip * p.value_scale).floor() as i64 + 1);
            let total = worst * n_max as i64;
            assert!(total >= -(SUM_BOUND as i64), "n = {n_max}");
            let mut sum = 0u32;
            for _ in 0..n_max {
                sum = sum.wrapping_add(from_signed(worst as i32));
            }
            assert_eq!(i64::from(to_signed(sum)), total);
        }
    }

    #[test]
    fn check_bit_budget_refuses_double_scale_and_says_by_how_much() {
        let n = 1000;
        let p = QuantParams::for_clients(n, 1.5, 10).unwrap();
        let doubled = QuantParams { value_scale: 2.0 * p.value_scale, ..p };
        let Err(Error::BitBudget(msg)) = doubled.check_bit_budget(n) else {
            panic!("doubling the scale must exceed the budget");
        };
        let need = n as f64 * ((doubled.clip * doubled.value_scale).floor() + 1.0);
        let pct = (need - B) / B * 100.0;
        assert!(pct > 99.0 && pct < 101.0, "{pct}");
        assert!(msg.contains(&format!("by {pct:.1} %")), "{msg}");
        assert!(msg.contains("2147483647"), "{msg}");
        // The suggested scale is the one for_clients derives, and the suggested round size fits.
        assert!(msg.contains(&format!("value_scale to at most {}", p.value_scale)), "{msg}");
        let max_clients = SUM_BOUND / ((doubled.clip * doubled.value_scale).floor() as u64 + 1);
        assert!(msg.contains(&format!("clients per round to at most {max_clients}")), "{msg}");
        doubled.check_bit_budget(max_clients as usize).unwrap();
        assert!(doubled.check_bit_budget(max_clients as usize + 1).is_err());

        let doubled_weight = QuantParams { weight_scale: 2.0 * p.weight_scale, ..p };
        let Err(Error::BitBudget(msg)) = doubled_weight.check_bit_budget(n) else {
            panic!("doubling the weight scale must exceed the budget");
        };
        assert!(msg.starts_with("weight coordinate") && msg.contains("weight_scale"), "{msg}");

        // More clients than the scales were made for is refused too.
        assert!(matches!(p.check_bit_budget(2 * n), Err(Error::BitBudget(_))));
        assert!(p.check_bit_budget(n - 1).is_ok());
    }

    #[test]
    fn for_clients_refuses_what_cannot_work() {
        let rule = |r: Result<QuantParams>| match r {
            Err(Error::InvalidQuantization(rule)) => rule,
            other => panic!("expected InvalidQuantization, got {other:?}"),
        };
        assert_eq!(rule(QuantParams::for_clients(0, 1.0, 1)), QuantRule::NoClients);
        for clip in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(rule(QuantParams::for_clients(10, clip, 1)), QuantRule::NotFinitePositive);
        }
        assert_eq!(rule(QuantParams::for_clients(10, 1.0, 0)), QuantRule::NoExamples);
        // 2^30 clients leave no positive scale; 2^30 − 1 leave exactly one unit.
        let too_many = 1usize << 30;
        assert!(matches!(QuantParams::for_clients(too_many, 1.0, 1), Err(Error::BitBudget(_))));
        let p = QuantParams::for_clients(too_many - 1, 1.0, 1).unwrap();
        assert_eq!(p.weight_scale, 1.0);
        assert_eq!(p.check_bit_budget(0), Err(Error::InvalidQuantization(QuantRule::NoClients)));
    }

    #[test]
    fn a_single_client_overflow_is_refused_by_quantize() {
        let p = QuantParams { clip: 1.0, value_scale: 3e9, weight_scale: 1.0, max_examples: 1 };
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        assert!(matches!(p.quantize(&[1.0], 1, &mut rng), Err(Error::BitBudget(_))));
    }

    #[test]
    fn weight_is_clamped_to_one() {
        let p = QuantParams::for_clients(10, 1.0, 200).unwrap();
        assert_eq!(p.weight(0), 0.0);
        assert_eq!(p.weight(50), 0.25);
        assert_eq!(p.weight(200), 1.0);
        assert_eq!(p.weight(201), 1.0);
        assert_eq!(p.weight(u64::MAX), 1.0);
    }

    #[test]
    fn non_finite_inputs_are_refused_by_index() {
        let p = QuantParams::for_clients(10, 1.0, 1).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        for (update, index) in [
            (vec![0.5, 1.0, f32::NAN], 2),
            (vec![f32::INFINITY], 0),
            (vec![0.0, f32::NEG_INFINITY], 1),
        ] {
            assert_eq!(
                p.quantize(&update, 1, &mut rng),
                Err(Error::InvalidQuantization(QuantRule::NotFinite { index })),
                "{update:?}"
            );
        }
    }

    #[test]
    fn weighted_average_weighs_by_examples() {
        let p = QuantParams::for_clients(3, 1.0, 100).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let clients = [([0.5f32, -0.2], 10u64), ([0.1, 0.9], 50), ([-0.4, 3.0], 400)];
        let mut sum = vec![0u32; 3];
        let (mut num, mut den) = ([0.0f64; 2], 0.0);
        for (update, examples) in clients {
            add_into(&mut sum, &p.quantize(&update, examples, &mut rng).unwrap());
            let w = p.weight(examples);
            for (n, x) in num.iter_mut().zip(update) {
                *n += w * f64::from(x).clamp(-1.0, 1.0);
            }
            den += w;
        }
        let avg = p.weighted_average(&sum).unwrap();
        for (a, n) in avg.iter().zip(num) {
            assert!((f64::from(*a) - n / den).abs() < 1e-5, "{a} vs {}", n / den);
        }
    }

    #[test]
    fn empty_or_weightless_sums_are_refused() {
        let p = QuantParams::for_clients(3, 1.0, 100).unwrap();
        let empty = Err(Error::InvalidQuantization(QuantRule::EmptySum));
        assert_eq!(p.decode_sum(&[]), empty);
        assert_eq!(p.weighted_average(&[]), empty.map(|_| vec![]));
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let zero_weight = p.quantize(&[0.5, 0.5], 0, &mut rng).unwrap();
        assert_eq!(zero_weight, vec![0, 0, 0]);
        assert_eq!(
            p.weighted_average(&zero_weight),
            Err(Error::InvalidQuantization(QuantRule::NoWeight))
        );
    }

    #[test]
    fn twos_complement_round_trips() {
        for v in [0, 1, -1, i32::MAX, i32::MIN, 12345, -12345] {
            assert_eq!(to_signed(from_signed(v)), v);
        }
        assert_eq!(from_signed(-1), u32::MAX);
        assert_eq!(to_signed(0x8000_0000), i32::MIN);
        // Adding in Z_2^32 is adding the signed values while the sum stays in range.
        assert_eq!(to_signed(from_signed(-7).wrapping_add(from_signed(3))), -4);
    }
}
