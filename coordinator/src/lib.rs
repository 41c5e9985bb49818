//! # fedsec-coordinator
//!
//! The server side of fedsec: the round engine that selects clients and runs the secure
//! aggregation phases, checkpoint storage, the audit log, and the mutual-TLS gRPC service.
//!
//! The [`engine`] is sans-IO, like the protocol core it drives: it takes messages and the
//! current time and returns replies, deadlines and outputs (checkpoints to store, audit
//! events); it never reads a clock, opens a socket or touches a file. The [`runtime`] runs
//! each task's engine on a thread of its own behind a command queue, stores its checkpoints
//! and writes the audit log. The tonic [`service`] is a thin adapter over the runtime:
//! handlers authenticate the peer ([`auth`]), convert the wire message ([`wire`]), call one
//! engine method (or read the task's published view) and map the error in one place.
//! In front of the services, the [`edge`] bounds what any peer can make the coordinator
//! spend: handshakes per source address, connections, streams, each method's message size, and
//! each client's rate of calls and of model bytes, with identity and the deny-list checked
//! before a request's body is read.
//!
//! What this crate does **not** do: train models (clients do), see any client's update (only
//! the sum is ever unmasked), or hold the federation CA's key in production ([`pki`] makes a
//! development CA only).

#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod config;
pub mod connections;
pub mod edge;
pub mod engine;
pub mod error;
pub mod lock;
pub mod metrics;
pub mod offline;
pub mod operator;
pub mod pki;
pub mod quickstart;
pub mod revocation;
pub mod runtime;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod wire;

pub use error::{Error, Result};
