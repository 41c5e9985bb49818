//! Synthetic datasets for the trainers' tests.

use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::data::Dataset;

fn dataset(rows: Vec<Vec<f32>>, labels: Vec<u32>) -> Dataset {
    let features = rows[0].len();
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    let names = (0..features).map(|i| format!("x{i}")).collect();
    Dataset::new(Array2::from_shape_vec((labels.len(), features), flat).unwrap(), labels, names)
        .unwrap()
}

/// Three linearly separable classes in 4 features: class `c` lies within ±1 (per feature) of
/// 3·e_c, so the plane x_a = x_b separates classes a and b. Shuffled.
pub(crate) fn blobs(per_class: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut examples: Vec<(Vec<f32>, u32)> = Vec::new();
    for class in 0..3u32 {
        for _ in 0..per_class {
            let row = (0..4)
                .map(|f| {
                    let centre = if f == class as usize { 3.0 } else { 0.0 };
                    centre + rng.random_range(-1.0..1.0f32)
                })
                .collect();
            examples.push((row, class));
        }
    }
    rand::seq::SliceRandom::shuffle(examples.as_mut_slice(), &mut rng);
    let (rows, labels) = examples.into_iter().unzip();
    dataset(rows, labels)
}

/// XOR in 2 features: points uniform in [-1, 1]² (kept 0.1 away from the axes), labelled 1
/// where the two coordinates have different signs. No line gets more than about 2/3 right.
pub(crate) fn xor(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut coordinate = || loop {
        let v = rng.random_range(-1.0..1.0f32);
        if v.abs() > 0.1 {
            return v;
        }
    };
    let (rows, labels) = (0..n)
        .map(|_| {
            let (a, b) = (coordinate(), coordinate());
            (vec![a, b], u32::from((a > 0.0) != (b > 0.0)))
        })
        .unzip();
    dataset(rows, labels)
}

/// Central finite differences of `loss` at `params`, one coordinate at a time.
pub(crate) fn numeric_gradient(params: &[f32], loss: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    let eps = 1e-3_f32;
    (0..params.len())
        .map(|i| {
            let mut p = params.to_vec();
            p[i] = params[i] + eps;
            let up = loss(&p);
            p[i] = params[i] - eps;
            let down = loss(&p);
            (up - down) / f64::from(2.0 * eps)
        })
        .collect()
}

/// Asserts that `analytic` matches `numeric` to within 1e-3 absolute plus 1 % relative.
pub(crate) fn assert_gradients_match(analytic: &[f32], numeric: &[f64]) {
    assert_eq!(analytic.len(), numeric.len());
    for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        let tolerance = 1e-3 + 1e-2 * n.abs();
        assert!((f64::from(a) - n).abs() < tolerance, "coordinate {i}: analytic {a}, numeric {n}");
    }
}
