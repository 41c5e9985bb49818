//! # fedsec-crypto
//!
//! The IO-free core of fedsec's secure aggregation: the cryptographic primitives, the `Z_2^32`
//! vector kernel, quantization, and the SecAgg (Bonawitz et al., CCS 2017) / SecAgg+ (Bell et
//! al., CCS 2020) protocol as sans-IO state machines.
//!
//! What this crate does **not** do: network IO, clocks, storage, X.509 parsing. The protocol
//! state machines take messages (plain serde types) and return messages; time, transport and
//! certificate chains belong to the coordinator and the client library. Randomness is passed in.

#![forbid(unsafe_code)]

pub mod aead;
pub mod context;
pub mod error;
pub mod graph;
pub mod ids;
pub mod kdf;
pub mod kernel;
pub mod keys;
pub mod params;
pub mod prg;
pub mod quant;
pub mod rng;
pub mod secagg;
pub mod shamir;
pub mod sign;

pub use context::{AdversaryClass, GraphKind, PROTOCOL_VERSION, RoundContext, RoundPlan};
pub use error::{Error, Result};
pub use ids::{AttemptNonce, CheckpointHash, ClientId, RoundId, TaskId};
