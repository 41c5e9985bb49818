//! Softmax (multinomial logistic) regression: `p(class | x) = softmax(W x + b)`.

use fedsec_wire::model::Model;
use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

use super::TrainOptions;
use super::layout::Layout;
use super::sgd::{LossAndGradient, Network, Sgd, softmax_cross_entropy};
use crate::data::Dataset;
use crate::trainer::{Evaluation, FitResult, TrainError, Trainer};

/// Name of the weight tensor, shape `[classes, features]`.
const WEIGHT: &str = "softmax.weight";
/// Name of the bias tensor, shape `[classes]`.
const BIAS: &str = "softmax.bias";

/// A linear classifier trained with minibatch SGD on the cross-entropy loss.
///
/// Its model has two tensors: `softmax.weight` `[classes, features]` and `softmax.bias`
/// `[classes]`.
#[derive(Debug, Clone)]
pub struct SoftmaxRegression {
    net: SoftmaxNet,
    sgd: Sgd,
}

impl SoftmaxRegression {
    /// A trainer on `train` (and `test`, for [`Trainer::evaluate`]) for a federation's model
    /// of `classes` classes. Errors if a label is `classes` or more, if the sets have different
    /// numbers of features, or if an option is out of range.
    pub fn new(
        train: Dataset,
        test: Option<Dataset>,
        classes: usize,
        options: TrainOptions,
    ) -> Result<SoftmaxRegression, TrainError> {
        let sgd = Sgd::new(train, test, classes, options)?;
        Ok(SoftmaxRegression { net: SoftmaxNet::new(sgd.features(), classes), sgd })
    }

    /// The initial global model: all zeros (the loss is convex, so no symmetry needs
    /// breaking).
    pub fn initial_model(features: usize, classes: usize) -> Model {
        let layout = SoftmaxNet::new(features, classes).layout;
        layout.model(&vec![0.0; layout.len()])
    }
}

impl Trainer for SoftmaxRegression {
    fn fit(&mut self, global: &Model) -> Result<FitResult, TrainError> {
        self.sgd.fit(&self.net, global)
    }

    fn evaluate(&mut self, global: &Model) -> Result<Option<Evaluation>, TrainError> {
        self.sgd.evaluate(&self.net, global)
    }
}

/// The network: its sizes and layout.
#[derive(Debug, Clone)]
pub(crate) struct SoftmaxNet {
    features: usize,
    classes: usize,
    layout: Layout,
}

impl SoftmaxNet {
    pub(crate) fn new(features: usize, classes: usize) -> SoftmaxNet {
        let layout = Layout::new(vec![(WEIGHT, vec![classes, features]), (BIAS, vec![classes])]);
        SoftmaxNet { features, classes, layout }
    }

    /// The bias and weight views of a flat parameter vector (name order: bias, weight).
    fn unpack<'a>(&self, params: &'a [f32]) -> (ArrayView1<'a, f32>, ArrayView2<'a, f32>) {
        let (bias, weight) = params.split_at(self.classes);
        let weight = ArrayView2::from_shape((self.classes, self.features), weight)
            .expect("a flat vector of the layout holds classes × features weights after the bias");
        (ArrayView1::from(bias), weight)
    }
}

impl Network for SoftmaxNet {
    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn logits(&self, params: &[f32], x: ArrayView2<'_, f32>) -> Array2<f32> {
        let (bias, weight) = self.unpack(params);
        x.dot(&weight.t()) + bias
    }

    fn loss_and_gradient(
        &self,
        params: &[f32],
        x: ArrayView2<'_, f32>,
        labels: &[u32],
        l2: f32,
    ) -> LossAndGradient {
        let (_, weight) = self.unpack(params);
        let (total, d_logits) = softmax_cross_entropy(&self.logits(params, x), labels);
        let d_weight = d_logits.t().dot(&x) + &weight * l2;
        let d_bias = d_logits.sum_axis(Axis(0));
        let mut gradient = d_bias.to_vec();
        gradient.extend(d_weight.iter());
        LossAndGradient {
            cross_entropy: total / labels.len().max(1) as f64,
            penalty: f64::from(l2) / 2.0
                * weight.iter().map(|&w| f64::from(w).powi(2)).sum::<f64>(),
            gradient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainers::testdata::{assert_gradients_match, blobs, numeric_gradient, xor};

    fn add(global: &Model, update: &[f32]) -> Model {
        let flat: Vec<f32> = global.flatten().iter().zip(update).map(|(g, u)| g + u).collect();
        global.with_flat(&flat).unwrap()
    }

    #[test]
    fn learns_separable_classes() {
        let (train, test) = blobs(100, 7).split(0.3, 1);
        let options = TrainOptions { epochs: 3, ..TrainOptions::default() };
        let mut trainer = SoftmaxRegression::new(train, Some(test), 3, options).unwrap();
        let global = SoftmaxRegression::initial_model(4, 3);
        let before = trainer.evaluate(&global).unwrap().unwrap();
        assert!((before.loss - 3f64.ln()).abs() < 1e-6, "zero weights give ln 3: {before:?}");

        let fit = trainer.fit(&global).unwrap();
        assert_eq!(fit.examples, 210);
        assert!(fit.loss.is_finite() && fit.loss < 3f64.ln(), "{fit:?}");
        let after = trainer.evaluate(&add(&global, &fit.update)).unwrap().unwrap();
        assert_eq!(after.examples, 90);
        assert!(after.accuracy > 0.95, "{after:?}");
        assert!(after.loss < before.loss / 2.0, "{after:?}");
    }

    #[test]
    fn cannot_learn_xor() {
        let (train, test) = xor(600, 3).split(0.25, 2);
        let options = TrainOptions { epochs: 20, ..TrainOptions::default() };
        let mut trainer = SoftmaxRegression::new(train, Some(test), 2, options).unwrap();
        let global = SoftmaxRegression::initial_model(2, 2);
        let fit = trainer.fit(&global).unwrap();
        let eval = trainer.evaluate(&add(&global, &fit.update)).unwrap().unwrap();
        assert!(eval.accuracy < 0.75, "a line cannot separate XOR: {eval:?}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let data = blobs(3, 11);
        let net = SoftmaxNet::new(4, 3);
        let params: Vec<f32> =
            (0..net.layout.len()).map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0).collect();
        let l2 = 0.3;
        let loss = |p: &[f32]| {
            let r = net.loss_and_gradient(p, data.features.view(), &data.labels, l2);
            r.cross_entropy + r.penalty
        };
        let analytic = net.loss_and_gradient(&params, data.features.view(), &data.labels, l2);
        assert_gradients_match(&analytic.gradient, &numeric_gradient(&params, loss));
    }

    #[test]
    fn same_seed_same_update_and_each_call_reshuffles() {
        let options = TrainOptions { batch_size: 8, seed: 42, ..TrainOptions::default() };
        let make = || SoftmaxRegression::new(blobs(20, 5), None, 3, options.clone()).unwrap();
        let global = SoftmaxRegression::initial_model(4, 3);
        let (mut a, mut b) = (make(), make());
        let first = a.fit(&global).unwrap();
        assert_eq!(first, b.fit(&global).unwrap());
        assert!(first.update.iter().any(|&u| u != 0.0));
        let second = a.fit(&global).unwrap();
        assert_ne!(first.update, second.update, "the second call shuffles differently");
        assert_eq!(second, b.fit(&global).unwrap());

        let other_seed = TrainOptions { seed: 43, ..options };
        let mut c = SoftmaxRegression::new(blobs(20, 5), None, 3, other_seed).unwrap();
        assert_ne!(c.fit(&global).unwrap().update, first.update);
    }

    #[test]
    fn refuses_a_model_of_another_layout() {
        let mut trainer =
            SoftmaxRegression::new(blobs(5, 1), Some(blobs(2, 2)), 3, TrainOptions::default())
                .unwrap();
        let wrong = SoftmaxRegression::initial_model(5, 3);
        assert!(matches!(
            trainer.fit(&wrong),
            Err(TrainError::TensorShapeMismatch { name, expected, got })
                if name == WEIGHT && expected == [3, 4] && got == [3, 5]
        ));
        assert!(matches!(trainer.evaluate(&wrong), Err(TrainError::TensorShapeMismatch { .. })));
        let mlp = crate::trainers::Mlp::initial_model(4, 8, 3, 0);
        assert!(matches!(trainer.fit(&mlp), Err(TrainError::MissingTensor { .. })));
    }

    #[test]
    fn empty_training_set_and_divergence_are_errors() {
        let empty = blobs(1, 1).select(&[]);
        let mut trainer = SoftmaxRegression::new(empty, None, 3, TrainOptions::default()).unwrap();
        let global = SoftmaxRegression::initial_model(4, 3);
        assert!(matches!(trainer.fit(&global), Err(TrainError::NoExamples)));
        assert!(trainer.evaluate(&global).unwrap().is_none());

        // With l2 · learning_rate ≫ 1 each step multiplies the weights by about −1e10.
        let reckless =
            TrainOptions { learning_rate: 1e10, l2: 1.0, epochs: 5, ..TrainOptions::default() };
        let mut trainer = SoftmaxRegression::new(blobs(20, 1), None, 3, reckless).unwrap();
        assert!(matches!(trainer.fit(&global), Err(TrainError::NonFiniteLoss { .. })));
    }
}
