//! The coordinator's one error type. Variants name the rule that was broken; the gRPC adapter
//! maps each to one status code in one place.

use fedsec_crypto::ClientId;

/// What can go wrong in the coordinator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The secure aggregation core refused a message or a step.
    #[error(transparent)]
    Protocol(#[from] fedsec_crypto::Error),
    /// A task configuration is out of range.
    #[error("invalid task configuration: {0}")]
    InvalidConfig(String),
    /// The message names a task this coordinator does not run.
    #[error("unknown task {0}")]
    UnknownTask(fedsec_crypto::TaskId),
    /// The task has run all its rounds.
    #[error("the task has finished")]
    TaskFinished,
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
    PhaseClosed { phase: &'static str },
    /// The phase the message belongs to has not opened yet.
    #[error("phase {phase} has not opened yet (the round is in {current})")]
    PhaseNotOpen { phase: &'static str, current: &'static str },
    /// A masked-input chunk does not fit the plan's chunking.
    #[error("masked-input chunk at offset {offset}: {reason}")]
    BadUpload { offset: u64, reason: String },
    /// A wire message has a malformed field.
    #[error(transparent)]
    Malformed(#[from] fedsec_wire::WireError),
    /// The round was aborted; the global model is unchanged.
    #[error("the round was aborted: {0}")]
    RoundAborted(String),
}

/// Result alias.
pub type Result<T, E = Error> = core::result::Result<T, E>;
