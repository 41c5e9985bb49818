//! # fedsec-client
//!
//! The client library of fedsec: takes part in secure federated training rounds on behalf of a
//! data site, and ready trainers for tabular data.
//!
//! Its core is [`round::Round`], one attempt of one round as a sans-IO state machine: the plan
//! checks, checkpoint verification (signature, hash, no rollback), clipping, quantization,
//! masking, the contribution ledger and the five protocol phases, with no network, clock or
//! file in it. [`Client::connect`] reads the site's certificate and key and connects to the
//! coordinator over mutual TLS; [`Client::run`] then drives rounds over gRPC until the task
//! finishes — check-in, calls, reconnects, identical resends after a dropped connection, local
//! training through the site's [`Trainer`], persisting the state when the round says so. The
//! simulation harness drives the very same [`round::Round`] in memory. Identity: [`pki`] makes the site's
//! Ed25519 key and certificate request for the organisation's CA; [`tls`] presents the
//! resulting certificate to the coordinator.
//!
//! A site provides a [`Trainer`]: given the round's global model, it trains on local data and
//! returns the update (local − global) and how many examples it used. The library does
//! everything else. What a trainer does **not** do: it never sees keys, masks or the network;
//! clipping and quantization of its update happen outside it.
//!
//! # Under pressure
//!
//! [`Client::run`] backs off instead of hammering a busy or absent coordinator ([`backoff`]):
//! after leaving an attempt (about 1 s, doubling up to 30 s with each attempt left in a row),
//! and on `UNAVAILABLE` or `RESOURCE_EXHAUSTED`, every wait jittered so that clients turned away
//! together come back apart, and never shorter than the `retry-after-ms` the coordinator names
//! ([`fedsec_proto::RETRY_AFTER_MS_METADATA`]). A checkpoint whose manifest announces more than
//! [`ClientConfig::max_model_bytes`] is refused before anything is allocated for it
//! ([`download`]), and [`ClientConfig::insecure`] is refused toward a coordinator that is not a
//! loopback address.
//!
//! # Test hooks
//!
//! Simulated dropouts, latency, stragglers and a dump of each cleartext quantized update, for
//! tests of the whole system and the simulation, exist only with the cargo feature `test-hooks`
//! ([`hooks`]); the shipped library and binary (`cargo build -p fedsec-client`) have none.
//!
//! # Example: a ready trainer on a CSV file
//!
//! ```no_run
//! use std::path::Path;
//!
//! use fedsec_client::data::{Dataset, Standardizer};
//! use fedsec_client::trainers::{SoftmaxRegression, TrainOptions};
//! use fedsec_client::Trainer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let data = Dataset::from_csv(Path::new("site.csv"), "label")?;
//! let (mut train, mut test) = data.split(0.2, 7);
//! let scaling = Standardizer::fit(&train); // in a federation: the agreed standardizer
//! scaling.apply(&mut train)?;
//! scaling.apply(&mut test)?;
//! let features = train.feature_count();
//! let mut trainer =
//!     SoftmaxRegression::new(train, Some(test), 3, TrainOptions { seed: 7, ..Default::default() })?;
//! let global = SoftmaxRegression::initial_model(features, 3);
//! let fit = trainer.fit(&global)?;
//! println!("{} examples, loss {:.3}", fit.examples, fit.loss);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod backoff;
pub mod client;
pub mod config;
pub mod data;
pub mod download;
pub mod error;
pub mod hooks;
pub mod pki;
pub mod round;
pub mod state;
pub mod tls;
pub mod trainer;
pub mod trainers;

pub use client::{Client, RunSummary};
pub use config::ClientConfig;
pub use error::{ClientError, Result};
#[cfg(feature = "test-hooks")]
pub use hooks::TestHooks;
pub use round::{Membership, Round, RoundReport, Step};
pub use trainer::{Evaluation, FitResult, TrainError, Trainer};
