//! What the ready trainers share: the softmax cross-entropy loss, the minibatch SGD loop that
//! turns a global model into an update, and evaluation on the test set.
//!
//! A network sees its parameters as one flat vector in the global model's order, so the update
//! is simply the final vector minus the starting one.

use fedsec_wire::model::Model;
use ndarray::{Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

use super::TrainOptions;
use super::layout::Layout;
use crate::data::Dataset;
use crate::trainer::{Evaluation, FitResult, TrainError};

/// A classifier whose parameters are a flat vector of its [`Layout`].
pub(crate) trait Network {
    /// The tensors the network trains.
    fn layout(&self) -> &Layout;

    /// The class scores (before softmax) of each row of `x`.
    fn logits(&self, params: &[f32], x: ArrayView2<'_, f32>) -> Array2<f32>;

    /// The mean cross-entropy of the batch, the L2 penalty, and the gradient of their sum
    /// with respect to `params`.
    fn loss_and_gradient(
        &self,
        params: &[f32],
        x: ArrayView2<'_, f32>,
        labels: &[u32],
        l2: f32,
    ) -> LossAndGradient;
}

/// The loss of a batch and its gradient.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LossAndGradient {
    /// Mean cross-entropy over the batch.
    pub(crate) cross_entropy: f64,
    /// `l2 / 2 · ‖W‖²` over the weight matrices.
    pub(crate) penalty: f64,
    /// d(cross_entropy + penalty) / d(params), in the layout's order.
    pub(crate) gradient: Vec<f32>,
}

/// Softmax cross-entropy of each row of `logits` against `labels`, computed stably (the row's
/// maximum is subtracted before exponentiating). Returns the summed loss over the rows and
/// d(mean loss)/d(logits) = (softmax − one-hot) / rows.
pub(crate) fn softmax_cross_entropy(logits: &Array2<f32>, labels: &[u32]) -> (f64, Array2<f32>) {
    let rows = logits.nrows().max(1) as f32;
    let mut d_logits = Array2::zeros(logits.dim());
    let mut total = 0.0;
    for ((row, mut d_row), &label) in logits.rows().into_iter().zip(d_logits.rows_mut()).zip(labels)
    {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z));
        let exps: Vec<f64> = row.iter().map(|&z| f64::from(z - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        let label = label as usize;
        total += sum.ln() - f64::from(row[label] - max);
        for (j, (d, e)) in d_row.iter_mut().zip(&exps).enumerate() {
            let target = if j == label { 1.0 } else { 0.0 };
            *d = ((e / sum - target) as f32) / rows;
        }
    }
    (total, d_logits)
}

/// The minibatch SGD state a ready trainer keeps: its data, options and call counter.
#[derive(Debug, Clone)]
pub(crate) struct Sgd {
    train: Dataset,
    test: Option<Dataset>,
    options: TrainOptions,
    calls: u64,
}

impl Sgd {
    /// Checks the data and options against a model of `classes` classes.
    pub(crate) fn new(
        train: Dataset,
        test: Option<Dataset>,
        classes: usize,
        options: TrainOptions,
    ) -> Result<Sgd, TrainError> {
        check_options(&options)?;
        if classes < 2 {
            return Err(TrainError::InvalidOption { option: "classes", rule: "at least 2" });
        }
        check_labels(&train, "training", classes)?;
        if let Some(test) = &test {
            check_labels(test, "test", classes)?;
            if test.feature_count() != train.feature_count() {
                return Err(TrainError::FeatureCountMismatch {
                    train: train.feature_count(),
                    test: test.feature_count(),
                });
            }
        }
        Ok(Sgd { train, test, options, calls: 0 })
    }

    /// Number of features the network sees.
    pub(crate) fn features(&self) -> usize {
        self.train.feature_count()
    }

    /// Trains `net` from `global` for the configured epochs; returns local − global.
    pub(crate) fn fit<N: Network>(
        &mut self,
        net: &N,
        global: &Model,
    ) -> Result<FitResult, TrainError> {
        net.layout().check(global)?;
        if self.train.is_empty() {
            return Err(TrainError::NoExamples);
        }
        let TrainOptions { epochs, learning_rate, batch_size, l2, seed } = self.options;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(self.calls);
        self.calls += 1;

        let start = global.flatten();
        let mut params = start.clone();
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        let (mut loss_sum, mut seen) = (0.0, 0usize);
        for epoch in 0..epochs {
            order.shuffle(&mut rng);
            for (batch, indices) in order.chunks(batch_size).enumerate() {
                let x = self.train.features.select(Axis(0), indices);
                let labels: Vec<u32> = indices.iter().map(|&i| self.train.labels[i]).collect();
                let step = net.loss_and_gradient(&params, x.view(), &labels, l2);
                if !step.cross_entropy.is_finite() || !step.penalty.is_finite() {
                    return Err(TrainError::NonFiniteLoss { epoch, batch });
                }
                for (p, g) in params.iter_mut().zip(&step.gradient) {
                    *p -= learning_rate * g;
                }
                loss_sum += step.cross_entropy * indices.len() as f64;
                seen += indices.len();
            }
        }
        let update: Vec<f32> = params.iter().zip(&start).map(|(p, s)| p - s).collect();
        if update.iter().any(|u| !u.is_finite()) {
            let batches = self.train.len().div_ceil(batch_size);
            return Err(TrainError::NonFiniteLoss { epoch: epochs - 1, batch: batches - 1 });
        }
        Ok(FitResult {
            update,
            examples: self.train.len() as u64,
            loss: loss_sum / seen.max(1) as f64,
        })
    }

    /// Mean cross-entropy and accuracy of `global` on the test set; `None` without one.
    pub(crate) fn evaluate<N: Network>(
        &self,
        net: &N,
        global: &Model,
    ) -> Result<Option<Evaluation>, TrainError> {
        net.layout().check(global)?;
        let Some(test) = self.test.as_ref().filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let logits = net.logits(&global.flatten(), test.features.view());
        let (loss, _) = softmax_cross_entropy(&logits, &test.labels);
        let hits = logits
            .rows()
            .into_iter()
            .zip(&test.labels)
            .filter(|(row, label)| argmax(row.iter().copied()) == **label as usize)
            .count();
        let n = test.len() as f64;
        Ok(Some(Evaluation {
            loss: loss / n,
            accuracy: hits as f64 / n,
            examples: test.len() as u64,
        }))
    }
}

/// The index of the largest value (the first one on ties).
fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

fn check_options(options: &TrainOptions) -> Result<(), TrainError> {
    let invalid = |option, rule| Err(TrainError::InvalidOption { option, rule });
    if options.epochs == 0 {
        return invalid("epochs", "at least 1");
    }
    if options.batch_size == 0 {
        return invalid("batch_size", "at least 1");
    }
    if !(options.learning_rate.is_finite() && options.learning_rate > 0.0) {
        return invalid("learning_rate", "finite and greater than 0");
    }
    if !(options.l2.is_finite() && options.l2 >= 0.0) {
        return invalid("l2", "finite and at least 0");
    }
    Ok(())
}

fn check_labels(data: &Dataset, set: &'static str, classes: usize) -> Result<(), TrainError> {
    data.check_sizes()?;
    match data.labels.iter().find(|&&l| l as usize >= classes) {
        Some(&label) => Err(TrainError::LabelOutOfRange { set, label, classes }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_cross_entropy_is_stable_and_exact() {
        // Huge logits would overflow a naive exp; equal logits give ln(classes).
        let logits = ndarray::array![[1000.0_f32, 1000.0, 1000.0], [0.0, 0.0, 50.0]];
        let (loss, d) = softmax_cross_entropy(&logits, &[1, 2]);
        assert!((loss - 3f64.ln()).abs() < 1e-9, "{loss}");
        let third = 1.0 / 3.0 / 2.0;
        assert!((d[[0, 0]] - third as f32).abs() < 1e-6);
        assert!((d[[0, 1]] - (third - 0.5) as f32).abs() < 1e-6);
        assert!(d[[1, 2]].abs() < 1e-6, "a confident right answer has no gradient");
    }

    #[test]
    fn bad_options_and_labels_are_refused() {
        let data = super::super::testdata::blobs(10, 1);
        let bad = TrainOptions { batch_size: 0, ..TrainOptions::default() };
        assert!(matches!(
            Sgd::new(data.clone(), None, 3, bad),
            Err(TrainError::InvalidOption { option: "batch_size", .. })
        ));
        let bad = TrainOptions { learning_rate: f32::NAN, ..TrainOptions::default() };
        assert!(matches!(
            Sgd::new(data.clone(), None, 3, bad),
            Err(TrainError::InvalidOption { option: "learning_rate", .. })
        ));
        assert!(matches!(
            Sgd::new(data.clone(), None, 2, TrainOptions::default()),
            Err(TrainError::LabelOutOfRange { set: "training", label: 2, classes: 2 })
        ));
        let narrow = data.select(&[0, 1]);
        let narrow = Dataset {
            features: narrow.features.select(Axis(1), &[0]),
            feature_names: vec!["x0".into()],
            ..narrow
        };
        assert!(matches!(
            Sgd::new(data, Some(narrow), 3, TrainOptions::default()),
            Err(TrainError::FeatureCountMismatch { train: 4, test: 1 })
        ));
    }
}
