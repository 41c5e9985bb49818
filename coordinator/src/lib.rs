//! # fedsec-coordinator
//!
//! The server side of fedsec: the round engine that selects clients and runs the secure
//! aggregation phases, checkpoint storage, the audit log, and the mutual-TLS gRPC service.

#![forbid(unsafe_code)]
