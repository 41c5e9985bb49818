//! End-to-end tests of fedsec live in `tests/`: they start `fedsec-coordinator` and
//! `fedsec-client` as separate processes that talk gRPC over mutual TLS on 127.0.0.1.
//! This library is empty.

#![forbid(unsafe_code)]
