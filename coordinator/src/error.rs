//! The coordinator's one error type. Variants name the rule that was broken; the gRPC adapter
//! maps each to one status code in one place.

use fedsec_crypto::ClientId;
use fedsec_crypto::secagg::Phase;
use fedsec_wire::model::ModelError;

/// What can go wrong in the coordinator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The secure aggregation core refused a message or a step.
    #[error(transparent)]
    Protocol(#[from] fedsec_crypto::Error),
    /// A task configuration breaks the rule it carries.
    #[error("invalid task configuration: {0}")]
    InvalidConfig(ConfigRule),
    /// A checkpoint was reported stored while none was waiting to be.
    #[error("checkpoint version {version} committed, but no checkpoint is waiting")]
    NothingToCommit { version: u64 },
    /// An aggregation's result came back while no attempt was waiting for it.
    #[error("an aggregation finished, but no attempt is waiting for its sum")]
    NothingToAggregate,
    /// A checkpoint was reported stored that is not the one waiting.
    #[error("checkpoint version {committed} committed, but version {waiting} is waiting")]
    WrongCommit { committed: u64, waiting: u64 },
    /// The message names a task this coordinator does not run.
    #[error("unknown task {0}")]
    UnknownTask(fedsec_crypto::TaskId),
    /// The task has run all its rounds.
    #[error("the task has finished")]
    TaskFinished,
    /// A re-publication of the model was asked for at a time it cannot happen.
    #[error("the model cannot be re-published now: {why}; try again between attempts")]
    RepublishNotNow { why: &'static str },
    /// The version a re-publication would make is not above the current one, or past the
    /// highest a re-publication may make.
    #[error(
        "cannot re-publish as version {version}: it must be above the current version {current} and at most {max}"
    )]
    RepublishVersion { version: u64, current: u64, max: u64 },
    /// The weights given to re-publish do not have the task's tensor names and shapes.
    #[error("the weights to re-publish do not have the current model's tensor names and shapes")]
    RepublishLayout,
    /// The client is not in the attempt the message is for.
    #[error("client {0} is not selected for this round")]
    NotSelected(ClientId),
    /// The message is for another attempt than the one running (an old or unknown round).
    #[error(
        "no running attempt of this task has this round context (the task is at round {current_round})"
    )]
    NotCurrentAttempt { current_round: u64 },
    /// The phase the message belongs to has closed; it came too late.
    #[error("phase {phase} has closed")]
    PhaseClosed { phase: Phase },
    /// The phase the message belongs to has not opened yet.
    #[error("phase {phase} has not opened yet (the round is in {current})")]
    PhaseNotOpen { phase: Phase, current: Phase },
    /// A masked-input chunk does not fit the plan's chunking.
    #[error("masked-input chunk at offset {offset}: {reason}")]
    BadUpload { offset: u64, reason: String },
    /// A wire message has a malformed field.
    #[error(transparent)]
    Malformed(#[from] fedsec_wire::WireError),
    /// A model does not fit (a layout, a file, its tensors' shapes).
    #[error("invalid model: {0}")]
    Model(#[from] ModelError),
    /// The round was aborted; the global model is unchanged.
    #[error("the round was aborted: {0}")]
    RoundAborted(AbortReason),
    /// The client's partial masked input got no new chunk within the upload lease and was
    /// evicted: the client counts as dropped in this attempt and may not upload again in it.
    #[error("the masked-input upload was evicted after {idle_ms} ms without a new chunk")]
    UploadEvicted { idle_ms: u64 },
    /// The check of a message failed to run (a fault of the server, not of the message).
    #[error("the check of the message failed to run")]
    CheckNotRun,
    /// Another message of this client for the phase is being checked.
    #[error(
        "another message of this client for the phase is being checked; send again once it is answered"
    )]
    CheckInFlight,
}

/// The rule a task configuration breaks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigRule {
    /// `clients_per_round` is 0.
    #[error("clients_per_round must be at least 1")]
    NoClients,
    /// `min_clients` is 0 or above the clients a round may select.
    #[error(
        "min_clients = {min_clients} must be between 1 and clients_per_round × over_selection = {max_selected}"
    )]
    MinClients { min_clients: usize, max_selected: usize },
    /// `over_selection` is below 1 or not finite.
    #[error("over_selection = {0} must be at least 1")]
    OverSelection(f64),
    /// The dropout or corrupt fraction is not below 1 (in parts per million).
    #[error(
        "dropout and corrupt fractions must be below 1 (got {dropout_ppm} and {corrupt_ppm} ppm)"
    )]
    Fractions { dropout_ppm: u32, corrupt_ppm: u32 },
    /// `server_learning_rate` is not finite and positive.
    #[error("server_learning_rate = {0} must be finite and positive")]
    ServerLearningRate(f32),
    /// `upload_chunk_words` or `max_uploads_in_flight` is 0.
    #[error("upload_chunk_words and max_uploads_in_flight must be at least 1")]
    UploadLimits,
    /// A deadline or the upload lease (`upload_idle`) is zero.
    #[error("every deadline and the upload lease (upload_idle) must be positive")]
    Deadline,
    /// The smallest round the task may run admits no secure graph parameters (a selection of
    /// that many clients could not start). `nearest` holds the nearest sizes below and above it,
    /// within the task's range, that have parameters.
    #[error(
        "a round of min_clients = {min_clients} clients has no secure parameters ({source}); {}",
        nearest_sizes(*nearest)
    )]
    NoSecureParameters {
        min_clients: usize,
        source: fedsec_crypto::Error,
        nearest: (Option<u32>, Option<u32>),
    },
    /// The initial model has no parameters.
    #[error("the initial model has no parameters")]
    EmptyModel,
    /// The model has more parameters than a masked vector holds (2^32 − 2, with the weight).
    #[error("the model has {0} parameters; a masked vector holds at most 2^32 − 2")]
    ModelTooLarge(usize),
}

/// What `ConfigRule::NoSecureParameters` suggests.
fn nearest_sizes(nearest: (Option<u32>, Option<u32>)) -> String {
    match nearest {
        (Some(b), Some(a)) => format!("min_clients = {b} or {a} would have"),
        (Some(n), None) | (None, Some(n)) => format!("min_clients = {n} would have"),
        (None, None) => "no size near it has any: change δ, γ, the graph or the class".into(),
    }
}

/// Why an attempt was aborted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AbortReason {
    /// The protocol could not go on (too few clients in a phase, a sum that cannot be
    /// unmasked…): the core's refusal.
    #[error(transparent)]
    Protocol(fedsec_crypto::Error),
    /// The unmasked sum does not decode into a model of the task's layout.
    #[error("the sum does not decode: {0}")]
    SumDoesNotDecode(Box<Error>),
    /// The new model does not serialize.
    #[error("the new model does not serialize: {0}")]
    ModelDoesNotSerialize(ModelError),
    /// The computation of the sum failed (a bug); nothing was revealed beyond the unmasking.
    #[error("the aggregation failed")]
    AggregationFailed,
    /// The sum leaves the weights unchanged bit for bit: no new version is published, since
    /// clients never train twice on the same weights. The clients that contributed count as
    /// contributors on this checkpoint; the others can take part in the retry.
    #[error("the sum leaves the model's weights unchanged; no new version is published")]
    WeightsUnchanged,
    /// A phase closed but what the server held could not be saved durably, so its output was
    /// never released (a phase close is durable before any client receives its output).
    #[error("the attempt's state could not be saved: {0}")]
    NotSaved(String),
    /// After a restart, the attempt's saved state was missing, failed its check or did not
    /// match the audit log: the attempt cannot resume.
    #[error("the attempt cannot resume after the coordinator restarted: {0}")]
    CannotResume(String),
}

/// Result alias.
pub type Result<T, E = Error> = core::result::Result<T, E>;
