//! Ready trainers for tabular classification, on ndarray: [`SoftmaxRegression`] (a linear
//! model) and [`Mlp`] (one hidden ReLU layer). Both train with minibatch SGD on the
//! cross-entropy loss, starting from the global model, and evaluate on an optional test set.
//!
//! The coordinator makes the initial model with [`SoftmaxRegression::initial_model`] or
//! [`Mlp::initial_model`]; every site builds the trainer with the same sizes, and a trainer
//! refuses a global model of another layout.

mod layout;
mod mlp;
mod sgd;
mod softmax;
#[cfg(test)]
mod testdata;

pub use mlp::Mlp;
pub use softmax::SoftmaxRegression;

/// How a ready trainer trains locally in each round.
///
/// The defaults follow federated averaging (McMahan et al., AISTATS 2017): one local epoch
/// per round keeps sites with different data from drifting apart between averages, and small
/// batches make many steps per epoch. A learning rate of 0.1 suits standardized features
/// (see [`crate::data::Standardizer`]); raw features of large magnitude need a smaller one.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// Passes over the local training set per round (default 1; at least 1).
    pub epochs: usize,
    /// SGD step size (default 0.1; finite and > 0).
    pub learning_rate: f32,
    /// Examples per SGD step; the last batch of an epoch may be smaller (default 32; at
    /// least 1).
    pub batch_size: usize,
    /// L2 penalty `l2 / 2 · ‖W‖²` on the weight matrices, not the biases (default 0: none;
    /// finite and ≥ 0).
    pub l2: f32,
    /// Seed of the shuffling. Each call to `fit` shuffles with a stream of its own (derived
    /// from the seed and the call's number), so a run is reproducible and rounds still see
    /// different orders. Give each site its own seed (default 0).
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { epochs: 1, learning_rate: 0.1, batch_size: 32, l2: 0.0, seed: 0 }
    }
}
