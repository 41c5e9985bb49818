//! # fedsec-client
//!
//! The client library of fedsec: takes part in secure federated training rounds on behalf of a
//! data site, and ready trainers for tabular data.

#![forbid(unsafe_code)]
