//! The plaintext baseline: the same federated averaging without secure aggregation, on the
//! same participants, so that a secure run can be compared with it round by round.
//!
//! # How far apart the two can be
//!
//! Secure aggregation sums quantized vectors. Client i's value x (clipped to [−c, c]) and
//! weight w_i = min(examples / max_examples, 1) become the integers ⌊w_i·x·s⌉ and ⌊w_i·s_w⌉
//! (stochastic rounding; scales s = m/c and s_w = m from [`QuantParams::for_clients`]), each
//! off by less than one unit. Over the n summed clients the numerator Σ w_i·x is off by less
//! than n/s and the denominator W = Σ w_i by less than n/s_w, so the decoded average differs
//! from the exact one by at most
//!
//! ```text
//! |avg_q − avg| ≤ (n/s + c·n/s_w) / (W − n/s_w)
//! ```
//!
//! (|avg| ≤ c because every value is). The model moves by η times that, plus the roundings to
//! f32 in either computation (the average, η·avg and θ + η·avg, half an ulp each):
//! [`aggregation_bound`].

use fedsec_crypto::quant::QuantParams;
use fedsec_wire::model::Model;

use crate::experiment::SimError;

/// One client's contribution to a plaintext round: its update and example count.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// local − global, flattened.
    pub update: Vec<f32>,
    /// Examples it trained on.
    pub examples: u64,
}

/// Weighted FedAvg in the clear, with the secure path's clipping and weights:
/// θ + η · Σ w_i·clip(u_i) / Σ w_i. Returns `None` if no contribution has weight.
pub fn fedavg(
    theta: &[f32],
    contributions: &[Contribution],
    clip: f64,
    max_examples: u64,
    eta: f32,
) -> Option<Vec<f32>> {
    let weight = |e: u64| (e as f64 / max_examples as f64).min(1.0);
    let total: f64 = contributions.iter().map(|c| weight(c.examples)).sum();
    if total <= 0.0 {
        return None;
    }
    let mut sum = vec![0f64; theta.len()];
    for c in contributions {
        let w = weight(c.examples);
        for (s, u) in sum.iter_mut().zip(&c.update) {
            *s += w * f64::from(*u).clamp(-clip, clip);
        }
    }
    Some(theta.iter().zip(&sum).map(|(t, s)| t + eta * (s / total) as f32).collect())
}

/// The largest difference, coordinate by coordinate, between the model the secure path makes
/// from `contributions` and the one [`fedavg`] makes, as the [module docs](self) derive it;
/// `secure` and `plain` are the two results (for the f32 rounding terms). Infinite when the
/// total weight is too small for the quantization to bound the average.
pub fn aggregation_bound(
    quant: &QuantParams,
    contributions: &[Contribution],
    eta: f32,
    secure: &[f32],
    plain: &[f32],
) -> f64 {
    let n = contributions.len() as f64;
    let w: f64 = contributions.iter().map(|c| quant.weight(c.examples)).sum();
    let denominator = w - n / quant.weight_scale;
    if denominator <= 0.0 {
        return f64::INFINITY;
    }
    let average = (n / quant.value_scale + quant.clip * n / quant.weight_scale) / denominator;
    let largest = secure.iter().chain(plain).fold(0f32, |m, v| m.max(v.abs()));
    let ulp = |x: f64| x * f64::from(f32::EPSILON);
    let eta = f64::from(eta);
    // f32 roundings: the average (|avg| ≤ c) and η·avg, half an ulp each, in both paths; the
    // sum θ + η·avg, half an ulp of the result, in both paths.
    eta * average + 2.0 * (eta * ulp(quant.clip) + ulp(eta * quant.clip)) + ulp(f64::from(largest))
}

/// Plays the rounds of a secure run without secure aggregation: round j averages the updates
/// of `participants[j]` (the clients whose inputs were in that round's sum) trained from the
/// plaintext model. Returns the model after each round.
pub fn replay(
    initial: &Model,
    participants: &[Vec<usize>],
    mut train: impl FnMut(usize, &Model) -> Result<Contribution, SimError>,
    clip: f64,
    max_examples: u64,
    eta: f32,
) -> Result<Vec<Model>, SimError> {
    let mut model = initial.clone();
    let mut out = Vec::with_capacity(participants.len());
    for round in participants {
        let mut contributions = Vec::with_capacity(round.len());
        for &i in round {
            contributions.push(train(i, &model)?);
        }
        if let Some(next) = fedavg(&model.flatten(), &contributions, clip, max_examples, eta) {
            model = model.with_flat(&next)?;
        }
        out.push(model.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use fedsec_crypto::secagg::client::ClientPolicy;
    use fedsec_crypto::secagg::driver::{make_plan, run_round};
    use fedsec_crypto::sign::{IdentityKey, RawKeyCredentials};
    use fedsec_crypto::{AdversaryClass, CheckpointHash, ClientId, GraphKind};
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    use super::*;

    #[test]
    fn fedavg_weights_by_examples_and_clips() {
        let theta = [1.0f32, 0.0];
        let c = |u: [f32; 2], examples| Contribution { update: u.to_vec(), examples };
        // Weights 1 and 0.5 (max_examples 10); the 5.0 is clipped to 2.
        let got = fedavg(&theta, &[c([0.5, 5.0], 10), c([-1.0, 1.0], 5)], 2.0, 10, 0.5).unwrap();
        let want0 = 1.0 + 0.5 * ((0.5 - 0.5) / 1.5);
        let want1 = 0.5 * ((2.0 + 0.5) / 1.5);
        assert!(
            (f64::from(got[0]) - want0).abs() < 1e-6 && (f64::from(got[1]) - want1).abs() < 1e-6
        );
        assert_eq!(fedavg(&theta, &[c([1.0, 1.0], 0)], 2.0, 10, 1.0), None, "no weight");
    }

    /// One aggregation from the same θ and the same updates: the secure path (quantize, mask,
    /// sum, unmask, decode — the real protocol core) against plaintext FedAvg.
    #[test]
    fn secure_and_plaintext_aggregation_differ_by_at_most_the_quantization_bound() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (n, d, clip, max_examples, eta) = (12usize, 300usize, 1.5f64, 200u64, 0.7f32);
        let theta: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let contributions: Vec<Contribution> = (0..n)
            .map(|_| Contribution {
                // Some values beyond the clip bound, to exercise clipping on both paths.
                update: (0..d).map(|_| rng.random_range(-2.0f32..2.0)).collect(),
                examples: rng.random_range(1..400),
            })
            .collect();
        let identities: Vec<Arc<IdentityKey>> =
            (0..n).map(|_| Arc::new(IdentityKey::generate(&mut rng))).collect();
        let mut ids: Vec<ClientId> = identities.iter().map(|k| k.id()).collect();
        let mut plan = make_plan(
            &mut ids,
            GraphKind::Harary,
            100_000,
            50_000,
            AdversaryClass::SemiMalicious,
            (d + 1) as u32,
            CheckpointHash([1; 32]),
            &mut rng,
        )
        .unwrap();
        plan.quant = QuantParams::for_clients(n, clip, max_examples).unwrap();
        let by_index: Vec<Arc<IdentityKey>> = plan
            .selected
            .iter()
            .map(|id| identities.iter().find(|k| k.id() == *id).unwrap().clone())
            .collect();
        let order: Vec<usize> = by_index
            .iter()
            .map(|k| identities.iter().position(|j| j.id() == k.id()).unwrap())
            .collect();
        let inputs: Vec<Vec<u32>> = order
            .iter()
            .map(|&i| {
                let c = &contributions[i];
                plan.quant.quantize(&c.update, c.examples, &mut rng).unwrap()
            })
            .collect();
        let policy =
            ClientPolicy { min_adversary: AdversaryClass::Curious, ..ClientPolicy::default() };
        let outcome = run_round(
            &plan,
            &by_index,
            &inputs,
            &BTreeMap::new(),
            &policy,
            Arc::new(RawKeyCredentials),
        )
        .unwrap();
        let sum = outcome.sum.unwrap();
        // The engine's step: θ + η · weighted average of the decoded sum.
        let average = plan.quant.weighted_average(&sum).unwrap();
        let secure: Vec<f32> = theta.iter().zip(&average).map(|(t, u)| t + eta * u).collect();
        let plain = fedavg(&theta, &contributions, clip, max_examples, eta).unwrap();
        let bound = aggregation_bound(&plan.quant, &contributions, eta, &secure, &plain);
        let worst = secure
            .iter()
            .zip(&plain)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .fold(0f64, f64::max);
        assert!(worst <= bound, "difference {worst} exceeds the bound {bound}");
        assert!(worst > 0.0, "quantization is not free: the comparison sees it");
        assert!(bound < 1e-5, "the bound is small at these scales: {bound}");
    }
}
