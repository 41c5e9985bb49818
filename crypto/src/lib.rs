//! # fedsec-crypto
//!
//! The IO-free core of fedsec's secure aggregation: the cryptographic primitives, the `Z_2^32`
//! vector kernel, quantization, and the SecAgg (Bonawitz et al., CCS 2017) / SecAgg+ (Bell et
//! al., CCS 2020) protocol as sans-IO state machines.
//!
//! What this crate does **not** do: network IO, clocks, storage. The protocol state machines
//! take messages (plain serde types) and return messages; time and transport belong to the
//! coordinator and the client library. Nor does it read certificates, model files or checkpoint
//! manifests: a peer's credential is checked by a [`sign::CredentialVerifier`] the caller plugs
//! in (the X.509 one, checkpoint manifests and model files live in `fedsec-wire`, beside the
//! wire types, where the client and the coordinator both find them). Randomness for public
//! choices (attempt nonce, graph seed, stochastic rounding) is passed in; every secret (key
//! pairs, self-mask seeds, Shamir coefficients) comes from the OS RNG.
//!
//! # Example: one round in memory
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//!
//! use fedsec_crypto::context::{AdversaryClass, GraphKind};
//! use fedsec_crypto::ids::CheckpointHash;
//! use fedsec_crypto::secagg::client::ClientPolicy;
//! use fedsec_crypto::secagg::driver::{make_plan, run_round};
//! use fedsec_crypto::sign::{IdentityKey, RawKeyCredentials};
//!
//! let mut rng = fedsec_crypto::rng::os_rng();
//! let mut keys: Vec<Arc<IdentityKey>> =
//!     (0..10).map(|_| Arc::new(IdentityKey::generate(&mut rng))).collect();
//! keys.sort_by_key(|k| k.id()); // canonical order
//! let mut ids: Vec<_> = keys.iter().map(|k| k.id()).collect();
//! let plan = make_plan(
//!     &mut ids,
//!     GraphKind::Complete,
//!     200_000, // δ = 0.2
//!     50_000,  // γ = 0.05
//!     AdversaryClass::SemiMalicious,
//!     4,
//!     CheckpointHash([0; 32]),
//!     &mut rng,
//! )?;
//! let inputs: Vec<Vec<u32>> = (0..10u32).map(|i| vec![i, 2 * i, u32::MAX, 1]).collect();
//! let out = run_round(
//!     &plan,
//!     &keys,
//!     &inputs,
//!     &BTreeMap::new(),
//!     &ClientPolicy::default(),
//!     Arc::new(RawKeyCredentials),
//! )?;
//! // The server learns the sum, in Z_2^32, and nothing else.
//! assert_eq!(out.sum?, vec![45, 90, 0u32.wrapping_sub(10), 10]);
//! # Ok::<(), fedsec_crypto::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod aead;
pub mod context;
pub mod error;
pub mod graph;
pub mod ids;
pub mod kdf;
pub mod kernel;
pub mod keys;
pub mod merkle;
pub mod params;
pub mod prg;
pub mod proofs;
pub mod quant;
pub mod rng;
pub mod secagg;
pub mod shamir;
pub mod sign;

pub use context::{AdversaryClass, GraphKind, PROTOCOL_VERSION, RoundContext, RoundPlan};
pub use error::{Error, Result};
pub use ids::{AttemptNonce, CheckpointHash, ClientId, RoundId, TaskId, WeightsHash};
