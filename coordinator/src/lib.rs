//! # fedsec-coordinator
//!
//! The server side of fedsec: the round engine that selects clients and runs the secure
//! aggregation phases, checkpoint storage, the audit log, and the mutual-TLS gRPC service.
//!
//! The [`engine`] is sans-IO, like the protocol core it drives: it takes messages and the
//! current time and returns replies, deadlines and outputs (checkpoints to store, audit
//! events); it never reads a clock, opens a socket or touches a file. The tonic service is a
//! thin adapter over it.

#![forbid(unsafe_code)]

pub mod engine;
pub mod error;

pub use error::{Error, Result};
