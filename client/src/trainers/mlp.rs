//! A multilayer perceptron with one hidden ReLU layer:
//! `p(class | x) = softmax(W₂ · relu(W₁ x + b₁) + b₂)`.

use fedsec_wire::model::Model;
use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::TrainOptions;
use super::layout::Layout;
use super::sgd::{LossAndGradient, Network, Sgd, softmax_cross_entropy};
use crate::data::Dataset;
use crate::trainer::{Evaluation, FitResult, TrainError, Trainer};

/// Hidden layer weights, `[hidden, features]`.
const HIDDEN_WEIGHT: &str = "mlp.hidden.weight";
/// Hidden layer biases, `[hidden]`.
const HIDDEN_BIAS: &str = "mlp.hidden.bias";
/// Output layer weights, `[classes, hidden]`.
const OUT_WEIGHT: &str = "mlp.out.weight";
/// Output layer biases, `[classes]`.
const OUT_BIAS: &str = "mlp.out.bias";

/// A classifier with one hidden ReLU layer, trained with minibatch SGD on the cross-entropy
/// loss. It learns boundaries a linear model cannot (XOR, rings).
///
/// Its model has four tensors: `mlp.hidden.weight` `[hidden, features]`, `mlp.hidden.bias`
/// `[hidden]`, `mlp.out.weight` `[classes, hidden]` and `mlp.out.bias` `[classes]`.
#[derive(Debug, Clone)]
pub struct Mlp {
    net: MlpNet,
    sgd: Sgd,
}

impl Mlp {
    /// A trainer on `train` (and `test`, for [`Trainer::evaluate`]) for a federation's model
    /// with `hidden` hidden units and `classes` classes. Errors if `hidden` is 0, if a label
    /// is `classes` or more, if the sets have different numbers of features, or if an option
    /// is out of range.
    pub fn new(
        train: Dataset,
        test: Option<Dataset>,
        hidden: usize,
        classes: usize,
        options: TrainOptions,
    ) -> Result<Mlp, TrainError> {
        if hidden == 0 {
            return Err(TrainError::InvalidOption { option: "hidden", rule: "at least 1" });
        }
        let sgd = Sgd::new(train, test, classes, options)?;
        Ok(Mlp { net: MlpNet::new(sgd.features(), hidden, classes), sgd })
    }

    /// The initial global model, random from `seed`: zeros would give every hidden unit the
    /// same gradient, and they would never differ. Hidden weights are He-uniform
    /// (`±√(6 / features)`, for ReLU), output weights Glorot-uniform
    /// (`±√(6 / (hidden + classes))`), biases zero.
    pub fn initial_model(features: usize, hidden: usize, classes: usize, seed: u64) -> Model {
        let net = MlpNet::new(features, hidden, classes);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut uniform = |count: usize, bound: f64| -> Vec<f32> {
            let bound = bound as f32;
            (0..count).map(|_| rng.random_range(-bound..=bound)).collect()
        };
        let hidden_weight = uniform(hidden * features, (6.0 / features.max(1) as f64).sqrt());
        let out_weight = uniform(classes * hidden, (6.0 / (hidden + classes).max(1) as f64).sqrt());
        // Name order: hidden.bias, hidden.weight, out.bias, out.weight.
        let mut flat = vec![0.0; hidden];
        flat.extend(hidden_weight);
        flat.extend(std::iter::repeat_n(0.0, classes));
        flat.extend(out_weight);
        net.layout.model(&flat)
    }
}

impl Trainer for Mlp {
    fn fit(&mut self, global: &Model) -> Result<FitResult, TrainError> {
        self.sgd.fit(&self.net, global)
    }

    fn evaluate(&mut self, global: &Model) -> Result<Option<Evaluation>, TrainError> {
        self.sgd.evaluate(&self.net, global)
    }
}

/// The network: its sizes and layout.
#[derive(Debug, Clone)]
pub(crate) struct MlpNet {
    features: usize,
    hidden: usize,
    classes: usize,
    layout: Layout,
}

/// Views of the four tensors in a flat parameter vector.
struct Params<'a> {
    hidden_bias: ArrayView1<'a, f32>,
    hidden_weight: ArrayView2<'a, f32>,
    out_bias: ArrayView1<'a, f32>,
    out_weight: ArrayView2<'a, f32>,
}

/// The forward pass of a batch, kept for the backward pass.
struct Forward {
    /// `relu(x W₁ᵀ + b₁)`, `[rows, hidden]`.
    activations: Array2<f32>,
    /// `activations W₂ᵀ + b₂`, `[rows, classes]`.
    logits: Array2<f32>,
}

impl MlpNet {
    pub(crate) fn new(features: usize, hidden: usize, classes: usize) -> MlpNet {
        let layout = Layout::new(vec![
            (HIDDEN_WEIGHT, vec![hidden, features]),
            (HIDDEN_BIAS, vec![hidden]),
            (OUT_WEIGHT, vec![classes, hidden]),
            (OUT_BIAS, vec![classes]),
        ]);
        MlpNet { features, hidden, classes, layout }
    }

    fn unpack<'a>(&self, params: &'a [f32]) -> Params<'a> {
        let (hidden_bias, rest) = params.split_at(self.hidden);
        let (hidden_weight, rest) = rest.split_at(self.hidden * self.features);
        let (out_bias, out_weight) = rest.split_at(self.classes);
        Params {
            hidden_bias: ArrayView1::from(hidden_bias),
            hidden_weight: ArrayView2::from_shape((self.hidden, self.features), hidden_weight)
                .expect("a flat vector of the layout holds hidden × features hidden weights"),
            out_bias: ArrayView1::from(out_bias),
            out_weight: ArrayView2::from_shape((self.classes, self.hidden), out_weight)
                .expect("a flat vector of the layout ends with classes × hidden output weights"),
        }
    }

    fn forward(&self, p: &Params<'_>, x: ArrayView2<'_, f32>) -> Forward {
        let activations = (x.dot(&p.hidden_weight.t()) + p.hidden_bias).mapv(|v| v.max(0.0));
        let logits = activations.dot(&p.out_weight.t()) + p.out_bias;
        Forward { activations, logits }
    }
}

impl Network for MlpNet {
    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn logits(&self, params: &[f32], x: ArrayView2<'_, f32>) -> Array2<f32> {
        self.forward(&self.unpack(params), x).logits
    }

    fn loss_and_gradient(
        &self,
        params: &[f32],
        x: ArrayView2<'_, f32>,
        labels: &[u32],
        l2: f32,
    ) -> LossAndGradient {
        let p = self.unpack(params);
        let Forward { activations, logits } = self.forward(&p, x);
        let (total, d_logits) = softmax_cross_entropy(&logits, labels);
        let d_out_weight = d_logits.t().dot(&activations) + &p.out_weight * l2;
        let d_out_bias = d_logits.sum_axis(Axis(0));
        // Back through the ReLU: the gradient passes where the unit was active.
        let mut d_hidden = d_logits.dot(&p.out_weight);
        d_hidden.zip_mut_with(&activations, |d, &a| {
            if a <= 0.0 {
                *d = 0.0;
            }
        });
        let d_hidden_weight = d_hidden.t().dot(&x) + &p.hidden_weight * l2;
        let d_hidden_bias = d_hidden.sum_axis(Axis(0));

        let mut gradient = Vec::with_capacity(params.len());
        gradient.extend(d_hidden_bias.iter());
        gradient.extend(d_hidden_weight.iter());
        gradient.extend(d_out_bias.iter());
        gradient.extend(d_out_weight.iter());
        let squares =
            |w: &ArrayView2<'_, f32>| w.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
        LossAndGradient {
            cross_entropy: total / labels.len().max(1) as f64,
            penalty: f64::from(l2) / 2.0 * (squares(&p.hidden_weight) + squares(&p.out_weight)),
            gradient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainers::testdata::{assert_gradients_match, blobs, numeric_gradient, xor};

    #[test]
    fn learns_xor() {
        let (train, test) = xor(600, 3).split(0.25, 2);
        let options = TrainOptions { epochs: 40, batch_size: 16, ..TrainOptions::default() };
        let mut trainer = Mlp::new(train, Some(test), 16, 2, options).unwrap();
        let global = Mlp::initial_model(2, 16, 2, 9);
        let fit = trainer.fit(&global).unwrap();
        assert_eq!(fit.examples, 450);
        let flat: Vec<f32> = global.flatten().iter().zip(&fit.update).map(|(g, u)| g + u).collect();
        let eval = trainer.evaluate(&global.with_flat(&flat).unwrap()).unwrap().unwrap();
        assert!(eval.accuracy > 0.9, "{eval:?}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let data = blobs(3, 13);
        let net = MlpNet::new(4, 5, 3);
        // Non-zero biases, so that their gradients are tested away from the starting point;
        // and the first seed whose hidden pre-activations all lie 0.05 or more from the ReLU's
        // kink, which a finite difference of step 1e-3 (on features below 4) cannot cross.
        let params = (0..)
            .map(|seed| {
                let params = Mlp::initial_model(4, 5, 3, seed).flatten();
                params.iter().enumerate().map(|(i, p)| p + ((i % 5) as f32 - 2.0) / 20.0).collect()
            })
            .find(|params: &Vec<f32>| {
                let p = net.unpack(params);
                let pre = data.features.dot(&p.hidden_weight.t()) + p.hidden_bias;
                pre.iter().all(|v| v.abs() >= 0.05)
            })
            .unwrap();
        let l2 = 0.2;
        let loss = |p: &[f32]| {
            let r = net.loss_and_gradient(p, data.features.view(), &data.labels, l2);
            r.cross_entropy + r.penalty
        };
        let analytic = net.loss_and_gradient(&params, data.features.view(), &data.labels, l2);
        assert!(analytic.gradient.iter().filter(|g| g.abs() > 1e-3).count() > params.len() / 2);
        assert_gradients_match(&analytic.gradient, &numeric_gradient(&params, loss));
    }

    #[test]
    fn initial_model_is_seeded_and_breaks_symmetry() {
        let model = Mlp::initial_model(4, 8, 3, 1);
        assert_eq!(model, Mlp::initial_model(4, 8, 3, 1));
        assert_ne!(model, Mlp::initial_model(4, 8, 3, 2));
        let weight = model.get(HIDDEN_WEIGHT).unwrap();
        assert_eq!(weight.shape, [8, 4]);
        let bound = (6.0f32 / 4.0).sqrt();
        assert!(weight.values.iter().all(|w| w.abs() <= bound));
        assert_ne!(weight.values[..4], weight.values[4..8], "hidden units start different");
        assert_eq!(model.get(OUT_WEIGHT).unwrap().shape, [3, 8]);
        assert!(model.get(OUT_BIAS).unwrap().values.iter().all(|&b| b == 0.0));
    }

    #[test]
    fn same_seed_same_update_and_wrong_layout_refused() {
        let options = TrainOptions { batch_size: 4, seed: 3, ..TrainOptions::default() };
        let make = || Mlp::new(blobs(10, 4), None, 6, 3, options.clone()).unwrap();
        let global = Mlp::initial_model(4, 6, 3, 0);
        let first = make().fit(&global).unwrap();
        assert!(first.update.iter().any(|&u| u != 0.0));
        assert_eq!(first, make().fit(&global).unwrap());

        let wider = Mlp::initial_model(4, 7, 3, 0);
        assert!(matches!(
            make().fit(&wider),
            Err(TrainError::TensorShapeMismatch { name, .. }) if name == HIDDEN_BIAS
        ));
        let softmax = crate::trainers::SoftmaxRegression::initial_model(4, 3);
        assert!(matches!(make().fit(&softmax), Err(TrainError::MissingTensor { .. })));
        assert!(matches!(
            Mlp::new(blobs(1, 1), None, 0, 3, TrainOptions::default()),
            Err(TrainError::InvalidOption { option: "hidden", .. })
        ));
    }
}
