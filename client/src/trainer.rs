//! The [`Trainer`] trait: what a data site implements (or takes ready-made from
//! [`crate::trainers`]) to take part in federated training.
//!
//! The library hands the trainer the round's global model and gets back an update; everything
//! else (clipping, quantization, masking, the protocol) happens outside the trainer, so a
//! trainer never sees a key or a mask.

use fedsec_wire::model::Model;

use crate::data::DataError;

/// Local training and evaluation on a data site's own examples.
///
/// The secure aggregation averages the clients' updates weighted by their example counts, so
/// [`FitResult::examples`] is the weight this site's update gets.
pub trait Trainer: Send {
    /// Trains locally starting from `global`; returns the update (local − global, flattened in
    /// `global`'s order) and the number of examples it used.
    fn fit(&mut self, global: &Model) -> Result<FitResult, TrainError>;

    /// Evaluates `global` on local held-out data, if the trainer has any.
    fn evaluate(&mut self, global: &Model) -> Result<Option<Evaluation>, TrainError>;
}

/// A boxed trainer is a trainer (a binary picks the model at run time).
impl<T: Trainer + ?Sized> Trainer for Box<T> {
    fn fit(&mut self, global: &Model) -> Result<FitResult, TrainError> {
        (**self).fit(global)
    }

    fn evaluate(&mut self, global: &Model) -> Result<Option<Evaluation>, TrainError> {
        (**self).evaluate(global)
    }
}

/// What one local training run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct FitResult {
    /// Local model − global model, flattened in the global model's order
    /// ([`Model::flatten`]).
    pub update: Vec<f32>,
    /// How many examples the update was trained on (the site's weight in the average).
    pub examples: u64,
    /// Mean training loss over the examples seen during the run.
    pub loss: f64,
}

/// How well a model does on a site's held-out examples.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Mean loss per example.
    pub loss: f64,
    /// Fraction of examples classified correctly, in `[0, 1]`.
    pub accuracy: f64,
    /// How many examples were evaluated.
    pub examples: u64,
}

/// Why a trainer could not be built, or could not train or evaluate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The global model lacks a tensor this trainer trains.
    #[error("the global model has no tensor {name} (this trainer needs shape {expected:?})")]
    MissingTensor {
        /// The tensor's name.
        name: String,
        /// The shape this trainer expects.
        expected: Vec<usize>,
    },
    /// A tensor of the global model does not have the shape this trainer trains.
    #[error(
        "tensor {name} of the global model has shape {got:?}, this trainer trains {expected:?}"
    )]
    TensorShapeMismatch {
        /// The tensor's name.
        name: String,
        /// The shape this trainer expects.
        expected: Vec<usize>,
        /// The shape the global model has.
        got: Vec<usize>,
    },
    /// The global model has a tensor this trainer does not train.
    #[error("the global model has a tensor {name} that this trainer does not train")]
    UnexpectedTensor {
        /// The tensor's name.
        name: String,
    },
    /// There are no training examples, so there is nothing to fit.
    #[error("the training set has no examples")]
    NoExamples,
    /// The examples are unusable (see [`DataError`]).
    #[error(transparent)]
    Data(#[from] DataError),
    /// A label names a class the federation does not have.
    #[error("{set} set: label {label} is not a class id below the model's {classes} classes")]
    LabelOutOfRange {
        /// `"training"` or `"test"`.
        set: &'static str,
        /// The offending label.
        label: u32,
        /// How many classes the model has.
        classes: usize,
    },
    /// The test set's features differ in number from the training set's.
    #[error("the test set has {test} features, the training set {train}")]
    FeatureCountMismatch {
        /// Features in the training set.
        train: usize,
        /// Features in the test set.
        test: usize,
    },
    /// A training option or model size is outside the range it must lie in.
    #[error("invalid option {option}: {rule}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// Training diverged: the loss (or the model) stopped being a finite number.
    #[error(
        "the loss became non-finite in epoch {epoch}, batch {batch}; lower the learning rate or standardize the features"
    )]
    NonFiniteLoss {
        /// The epoch, from 0.
        epoch: usize,
        /// The batch within the epoch, from 0.
        batch: usize,
    },
}

impl TrainError {
    /// Whether the task's model does not fit this trainer (its tensors' names or shapes, or a
    /// label beyond its classes): no later round can fix that.
    pub fn is_model_mismatch(&self) -> bool {
        matches!(
            self,
            TrainError::MissingTensor { .. }
                | TrainError::TensorShapeMismatch { .. }
                | TrainError::UnexpectedTensor { .. }
                | TrainError::LabelOutOfRange { .. }
        )
    }

    /// Whether retrying with the next global model could help: only a diverged loss depends on
    /// the model's values; every other refusal is about the data, the options or the model's
    /// shape, which stay the same for the whole task.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, TrainError::NonFiniteLoss { .. })
    }
}
