//! The client library's error type.

use std::path::PathBuf;

/// What can go wrong while taking part in a federation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A key or certificate file is not what it should be.
    #[error("{path}: {reason}")]
    Credential {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The connection to the coordinator failed.
    #[error("cannot connect to the coordinator: {0}")]
    Connect(String),
    /// The coordinator answered with an error status.
    #[error("the coordinator refused {call}: {status}")]
    Status {
        /// The call.
        call: &'static str,
        /// Its status.
        status: Box<tonic::Status>,
    },
    /// A message from the coordinator has a malformed field.
    #[error("from the coordinator: {0}")]
    Malformed(#[from] fedsec_wire::WireError),
    /// The secure aggregation core refused (a plan below the floor, a bad peer, a bad
    /// checkpoint…): the client takes no part in that attempt.
    #[error(transparent)]
    Protocol(#[from] fedsec_crypto::Error),
    /// Local training failed.
    #[error("training failed: {0}")]
    Training(#[from] crate::trainer::TrainError),
    /// The attempt was aborted by the coordinator.
    #[error("the round was aborted: {0}")]
    Aborted(String),
    /// The coordinator sent a plan for another task than the one this client joined.
    #[error("the plan is for task {got}, this client takes part in task {expected}")]
    WrongTask {
        /// The client's task.
        expected: fedsec_crypto::TaskId,
        /// The plan's.
        got: fedsec_crypto::TaskId,
    },
    /// The trainer's update does not have the plan's length (the plan's vector is the update
    /// and one weight word).
    #[error("the trainer's update has {got} values, the plan's model {expected}")]
    UpdateLength {
        /// The update's length.
        got: usize,
        /// The model's length in the plan.
        expected: usize,
    },
    /// A reply came that the round was not waiting for (a driver bug, or a confused
    /// coordinator): the attempt ends.
    #[error("the round expected {expected}, got {got}")]
    OutOfOrder {
        /// What the round waited for.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// A simulated dropout ([`crate::TestHooks::drop_out`]): the client stops as if its
    /// process had died.
    #[error("dropped out of round {round} before phase {phase} (simulated)")]
    DroppedOut {
        /// The round.
        round: u64,
        /// The phase whose message was never sent.
        phase: fedsec_crypto::secagg::Phase,
    },
}

impl ClientError {
    pub(crate) fn status(call: &'static str, status: tonic::Status) -> Self {
        ClientError::Status { call, status: Box::new(status) }
    }
}

/// Result alias.
pub type Result<T, E = ClientError> = core::result::Result<T, E>;
