//! End-to-end tests of fedsec live in `tests/`: they start `fedsec-coordinator` and
//! `fedsec-client` as separate processes that talk gRPC over mutual TLS on 127.0.0.1.
//!
//! The library holds [`bench`]: the coordinator's overhead over the secure-aggregation core,
//! measured in one process (the `coordinator-bench` binary prints it; a smoke test runs it
//! small). The `secagg-bench` binary times the secure-aggregation core alone against the limit
//! its measured primitives imply (`docs/performance.md`).

#![forbid(unsafe_code)]

pub mod bench;
