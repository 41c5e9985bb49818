//! Newtype identifiers.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A client's identity: SHA-256 of its certificate's public key (DER `SubjectPublicKeyInfo`).
///
/// The canonical order of clients is the byte order of their ids; a client's Shamir
/// x-coordinate is 1 + its index in that order within the selected set.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub [u8; 32]);

impl ClientId {
    /// The id of the holder of this DER-encoded `SubjectPublicKeyInfo`.
    pub fn from_spki_der(spki: &[u8]) -> Self {
        ClientId(Sha256::digest(spki).into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex of all 32 bytes.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl core::fmt::Display for ClientId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Eight bytes are plenty to tell clients apart in logs.
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl core::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ClientId({self})")
    }
}

/// A training task.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct TaskId(pub [u8; 16]);

impl TaskId {
    /// Lower-case hex of all 16 bytes.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The task named by 32 hex digits (either case), or `None`.
    pub fn from_hex(text: &str) -> Option<TaskId> {
        let bytes = hex::decode(text.trim()).ok()?;
        Some(TaskId(bytes.try_into().ok()?))
    }
}

impl core::fmt::Display for TaskId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A round of a task; never reused within a task.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct RoundId(pub u64);

/// A fresh random nonce per attempt of a round: a retried round is a new attempt.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct AttemptNonce(pub [u8; 16]);

/// SHA-256 of a checkpoint's bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct CheckpointHash(pub [u8; 32]);

impl CheckpointHash {
    /// SHA-256 of `bytes`, the checkpoint's safetensors file.
    pub fn of(bytes: &[u8]) -> Self {
        CheckpointHash(Sha256::digest(bytes).into())
    }
}

/// SHA-256 of a model's weights in a canonical encoding, independent of the file that carries
/// them (computed by `fedsec_wire::model::Model::weights_hash`): two checkpoints with the
/// same tensors — names, shapes and every value, bit for bit — have the same hash, whatever
/// their version, metadata or byte layout.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct WeightsHash(pub [u8; 32]);

/// The round context: SHA-256 of the length-prefixed plan ([`crate::RoundPlan::context`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RoundContext(pub [u8; 32]);

impl RoundContext {
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl core::fmt::Debug for RoundContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "RoundContext(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}
