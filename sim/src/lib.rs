//! # fedsec-sim
//!
//! The simulation harness of fedsec (in progress): it will run the real coordinator and N real
//! clients on one machine over gRPC and mutual TLS, on small real datasets shipped in the
//! repository, and report accuracy, phase timings and bytes.
//!
//! What is here today: the shipped datasets and their fixed train/test splits ([`datasets`]),
//! and the split of a dataset across clients, IID or non-IID by a Dirichlet prior ([`split`]).

#![forbid(unsafe_code)]

pub mod datasets;
pub mod split;
