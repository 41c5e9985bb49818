//! Signed checkpoint manifests: what a client checks before it trains on a checkpoint, and
//! their wire form (`v1::CheckpointManifest`), sent before a model's bytes.
//!
//! Every checkpoint of a task is versioned and signed by the coordinator's Ed25519 key. The
//! signature covers a [`Manifest`] — version, parent, SHA-256 and size of the safetensors bytes,
//! task, and a one-line summary of the round that produced it — in a canonical, length-prefixed
//! encoding under its own domain label ([`Label::Checkpoint`]). A checkpoint outlives the rounds
//! around it, so no round context enters that encoding, and the label keeps a manifest signature
//! from ever verifying as a round-protocol message. (The label stays in the core's one list of
//! domain labels, [`fedsec_crypto::kdf::Label`], so that no two domains can ever share one.)
//!
//! A client calls [`SignedManifest::verify_checkpoint`] with the bytes it downloaded and the
//! newest version it has seen: the signature, the size, the hash and the version order
//! (no rollback) are checked before a single byte is parsed.
//!
//! ```
//! use fedsec_crypto::ids::{CheckpointHash, TaskId};
//! use fedsec_wire::checkpoint::Manifest;
//! use fedsec_wire::model::{Model, Tensor};
//!
//! let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
//! let model = Model::new().with("w", Tensor::new(vec![2], vec![0.5, -1.0])?);
//! let bytes = model.to_safetensors()?;
//! let signed = Manifest {
//!     version: 1,
//!     parent_version: 0,
//!     sha256: CheckpointHash::of(&bytes),
//!     size_bytes: bytes.len() as u64,
//!     task_id: TaskId([1; 16]),
//!     round_summary: "round 1: 100 clients".into(),
//! }
//! .sign(&key);
//! let json = serde_json::to_string(&signed).expect("a manifest always serializes");
//! // ...stored next to the checkpoint, or sent over gRPC; the client then checks:
//! let received: fedsec_wire::checkpoint::SignedManifest = serde_json::from_str(&json)?;
//! let checked = received.verify_checkpoint(&key.verifying_key(), &bytes, Some(1))?;
//! assert_eq!(checked, model);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use fedsec_crypto::ids::{CheckpointHash, TaskId};
use fedsec_crypto::kdf::{Label, push_lp};
use fedsec_proto::v1;

use crate::model::{Model, ModelError};
use crate::{Wire, fixed};

/// Why a checkpoint or its manifest is refused. Each variant names the check that failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The signature on a checkpoint manifest does not verify under the coordinator's key.
    #[error("the signature on the manifest of checkpoint version {version} does not verify")]
    Signature {
        /// The manifest's version.
        version: u64,
    },
    /// A manifest names a parent that is not older than itself (only version 0 is its own parent).
    #[error("checkpoint version {version} names parent version {parent}, which is not older")]
    Parent {
        /// The manifest's version.
        version: u64,
        /// The parent it names.
        parent: u64,
    },
    /// The checkpoint's bytes are not as long as its signed manifest says.
    #[error("checkpoint is {actual} bytes long, its manifest says {manifest}")]
    Size {
        /// The manifest's size.
        manifest: u64,
        /// The bytes' length.
        actual: u64,
    },
    /// SHA-256 of the checkpoint's bytes is not the hash in its signed manifest.
    #[error("SHA-256 of checkpoint version {version} does not match its manifest")]
    HashMismatch {
        /// The manifest's version.
        version: u64,
    },
    /// A checkpoint is older than one already seen (no rollback).
    #[error("checkpoint version {version} is older than version {seen}, already seen: no rollback")]
    Rollback {
        /// The checkpoint's version.
        version: u64,
        /// The newest version seen before.
        seen: u64,
    },
    /// A byte field of a manifest's JSON form is not hex of the right length.
    #[error("checkpoint manifest field {field}: expected {bytes} hex bytes: {source}")]
    HexField {
        /// The field.
        field: &'static str,
        /// The bytes it holds.
        bytes: usize,
        /// What is wrong with its text.
        source: hex::FromHexError,
    },
    /// The checkpoint's bytes match their manifest but are not a model.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Result alias.
pub type Result<T, E = CheckpointError> = core::result::Result<T, E>;

/// What the coordinator signs about one checkpoint of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The checkpoint's version within its task; 0 is the task's initial checkpoint.
    pub version: u64,
    /// The version this one was trained from; the parent of version 0 is 0.
    pub parent_version: u64,
    /// SHA-256 of the checkpoint's safetensors bytes.
    pub sha256: CheckpointHash,
    /// Length of the checkpoint's safetensors bytes.
    pub size_bytes: u64,
    /// The task the checkpoint belongs to.
    pub task_id: TaskId,
    /// A human-readable line about the round that produced the checkpoint.
    pub round_summary: String,
}

impl Manifest {
    /// The bytes the signature covers: the label `fedsec/v1/checkpoint`, then version,
    /// parent version, SHA-256, size, task id and summary (UTF-8), each with a u64 big-endian
    /// length prefix; integers are u64 big-endian.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 7 + 20 + 8 * 3 + 32 + 16 + self.round_summary.len());
        push_lp(&mut out, Label::Checkpoint.as_bytes());
        push_lp(&mut out, &self.version.to_be_bytes());
        push_lp(&mut out, &self.parent_version.to_be_bytes());
        push_lp(&mut out, &self.sha256.0);
        push_lp(&mut out, &self.size_bytes.to_be_bytes());
        push_lp(&mut out, &self.task_id.0);
        push_lp(&mut out, self.round_summary.as_bytes());
        out
    }

    /// Signs the manifest with the coordinator's key.
    pub fn sign(&self, key: &SigningKey) -> SignedManifest {
        SignedManifest {
            manifest: self.clone(),
            signature: key.sign(&self.canonical_bytes()).to_bytes(),
        }
    }

    /// Checks that `bytes` are the checkpoint this manifest describes: the size, then SHA-256
    /// (compared in constant time). Says nothing about who signed the manifest.
    pub fn check_bytes(&self, bytes: &[u8]) -> Result<()> {
        let actual = bytes.len() as u64;
        if actual != self.size_bytes {
            return Err(CheckpointError::Size { manifest: self.size_bytes, actual });
        }
        if !bool::from(CheckpointHash::of(bytes).0.ct_eq(&self.sha256.0)) {
            return Err(CheckpointError::HashMismatch { version: self.version });
        }
        Ok(())
    }

    /// Checks that the parent is older than the version (version 0 is its own parent).
    fn check_parent(&self) -> Result<()> {
        let (version, parent) = (self.version, self.parent_version);
        if parent < version || (version == 0 && parent == 0) {
            Ok(())
        } else {
            Err(CheckpointError::Parent { version, parent })
        }
    }
}

/// A manifest and the coordinator's Ed25519 signature over its
/// [canonical bytes](Manifest::canonical_bytes).
///
/// Serialized as flat JSON whose fields are those of the `CheckpointManifest` gRPC message
/// (`version`, `parent_version`, `sha256`, `size_bytes`, `task_id`, `round_summary`,
/// `signature`), byte fields in lower-case hex. Deserializing checks the lengths of the byte
/// fields, not the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "SignedManifestJson", try_from = "SignedManifestJson")]
pub struct SignedManifest {
    /// What was signed.
    pub manifest: Manifest,
    /// Ed25519 signature over `manifest.canonical_bytes()`.
    pub signature: [u8; 64],
}

impl SignedManifest {
    /// Verifies the signature (strictly: malleable encodings and small-order keys are refused)
    /// and that the parent version is older than the version.
    pub fn verify(&self, key: &VerifyingKey) -> Result<()> {
        let version = self.manifest.version;
        key.verify_strict(
            &self.manifest.canonical_bytes(),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| CheckpointError::Signature { version })?;
        self.manifest.check_parent()
    }

    /// Checks everything a client must check before training on `bytes`, then parses them.
    ///
    /// In order: the signature ([`verify`](Self::verify)); no rollback (a version older than
    /// `last_seen_version` is refused, the same version again is fine); the size; SHA-256 of
    /// `bytes`, compared in constant time; and finally the safetensors parse.
    pub fn verify_checkpoint(
        &self,
        key: &VerifyingKey,
        bytes: &[u8],
        last_seen_version: Option<u64>,
    ) -> Result<Model> {
        self.verify(key)?;
        let m = &self.manifest;
        if let Some(seen) = last_seen_version
            && m.version < seen
        {
            return Err(CheckpointError::Rollback { version: m.version, seen });
        }
        m.check_bytes(bytes)?;
        Ok(Model::from_safetensors(bytes)?)
    }
}

/// The JSON form of a [`SignedManifest`]: flat, byte fields in hex.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedManifestJson {
    version: u64,
    parent_version: u64,
    sha256: String,
    size_bytes: u64,
    task_id: String,
    round_summary: String,
    signature: String,
}

impl From<SignedManifest> for SignedManifestJson {
    fn from(s: SignedManifest) -> Self {
        let m = s.manifest;
        SignedManifestJson {
            version: m.version,
            parent_version: m.parent_version,
            sha256: hex::encode(m.sha256.0),
            size_bytes: m.size_bytes,
            task_id: hex::encode(m.task_id.0),
            round_summary: m.round_summary,
            signature: hex::encode(s.signature),
        }
    }
}

impl TryFrom<SignedManifestJson> for SignedManifest {
    type Error = CheckpointError;

    fn try_from(j: SignedManifestJson) -> Result<Self> {
        Ok(SignedManifest {
            manifest: Manifest {
                version: j.version,
                parent_version: j.parent_version,
                sha256: CheckpointHash(hex_array("sha256", &j.sha256)?),
                size_bytes: j.size_bytes,
                task_id: TaskId(hex_array("task_id", &j.task_id)?),
                round_summary: j.round_summary,
            },
            signature: hex_array("signature", &j.signature)?,
        })
    }
}

/// Decodes a hex field of exactly `N` bytes.
fn hex_array<const N: usize>(field: &'static str, text: &str) -> Result<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|source| CheckpointError::HexField {
        field,
        bytes: N,
        source,
    })?;
    Ok(out)
}

impl Wire for SignedManifest {
    type Proto = v1::CheckpointManifest;

    fn to_wire(&self) -> v1::CheckpointManifest {
        let m = &self.manifest;
        v1::CheckpointManifest {
            version: m.version,
            parent_version: m.parent_version,
            sha256: m.sha256.0.to_vec(),
            size_bytes: m.size_bytes,
            task_id: m.task_id.0.to_vec(),
            round_summary: m.round_summary.clone(),
            signature: self.signature.to_vec(),
        }
    }

    fn from_wire(m: &v1::CheckpointManifest) -> crate::Result<Self> {
        Ok(SignedManifest {
            manifest: Manifest {
                version: m.version,
                parent_version: m.parent_version,
                sha256: CheckpointHash(fixed("manifest.sha256", &m.sha256)?),
                size_bytes: m.size_bytes,
                task_id: TaskId(fixed("manifest.task_id", &m.task_id)?),
                round_summary: m.round_summary.clone(),
            },
            signature: fixed("manifest.signature", &m.signature)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tensor;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn checkpoint() -> Vec<u8> {
        Model::new()
            .with("w", Tensor::new(vec![2, 2], vec![1.0, -2.0, 0.5, 3.25]).unwrap())
            .with("b", Tensor::new(vec![2], vec![0.0, -0.125]).unwrap())
            .to_safetensors()
            .unwrap()
    }

    fn manifest(version: u64, bytes: &[u8]) -> Manifest {
        Manifest {
            version,
            parent_version: version.saturating_sub(1),
            sha256: CheckpointHash::of(bytes),
            size_bytes: bytes.len() as u64,
            task_id: TaskId([0x5a; 16]),
            round_summary: format!("round {version}: 97 of 100 clients"),
        }
    }

    #[test]
    fn signed_manifest_verifies_under_its_key_only() {
        let bytes = checkpoint();
        let signed = manifest(3, &bytes).sign(&key(1));
        assert_eq!(signed.verify(&key(1).verifying_key()), Ok(()));
        assert_eq!(
            signed.verify(&key(2).verifying_key()),
            Err(CheckpointError::Signature { version: 3 })
        );
        let model = signed.verify_checkpoint(&key(1).verifying_key(), &bytes, None).unwrap();
        assert_eq!(model.to_safetensors().unwrap(), bytes);
    }

    #[test]
    fn every_single_field_tamper_breaks_the_signature() {
        let bytes = checkpoint();
        let signed = manifest(3, &bytes).sign(&key(1));
        let vk = key(1).verifying_key();
        type Tamper = fn(&mut SignedManifest);
        let tampers: [(&str, Tamper); 7] = [
            ("version", |s| s.manifest.version += 1),
            ("parent", |s| s.manifest.parent_version -= 1),
            ("hash", |s| s.manifest.sha256.0[31] ^= 1),
            ("size", |s| s.manifest.size_bytes += 1),
            ("task", |s| s.manifest.task_id.0[0] ^= 0x80),
            ("summary", |s| s.manifest.round_summary.push('!')),
            ("signature", |s| s.signature[10] ^= 4),
        ];
        for (field, tamper) in tampers {
            let mut t = signed.clone();
            tamper(&mut t);
            assert!(
                matches!(t.verify(&vk), Err(CheckpointError::Signature { .. })),
                "tampered {field} still verifies"
            );
            assert!(t.verify_checkpoint(&vk, &bytes, None).is_err(), "tampered {field} accepted");
        }
    }

    #[test]
    fn encoding_is_labelled_and_length_prefixed() {
        // A summary of one NUL byte differs from an empty one: every field is length-prefixed.
        let mut a = manifest(1, b"x");
        a.round_summary = String::new();
        let mut b = a.clone();
        b.round_summary = "\0".into();
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        assert!(
            a.canonical_bytes()
                .starts_with(&[&20u64.to_be_bytes()[..], b"fedsec/v1/checkpoint"].concat())
        );
    }

    #[test]
    fn one_flipped_bit_in_the_checkpoint_is_a_hash_mismatch() {
        let mut bytes = checkpoint();
        let signed = manifest(4, &bytes).sign(&key(1));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            signed.verify_checkpoint(&key(1).verifying_key(), &bytes, None),
            Err(CheckpointError::HashMismatch { version: 4 })
        );
    }

    #[test]
    fn a_truncated_checkpoint_is_a_size_mismatch() {
        let bytes = checkpoint();
        let signed = manifest(4, &bytes).sign(&key(1));
        let short = &bytes[..bytes.len() - 4];
        assert_eq!(
            signed.verify_checkpoint(&key(1).verifying_key(), short, None),
            Err(CheckpointError::Size { manifest: bytes.len() as u64, actual: short.len() as u64 })
        );
    }

    #[test]
    fn older_versions_are_refused_and_the_same_version_is_accepted() {
        let bytes = checkpoint();
        let vk = key(1).verifying_key();
        let signed = manifest(5, &bytes).sign(&key(1));
        assert_eq!(
            signed.verify_checkpoint(&vk, &bytes, Some(6)),
            Err(CheckpointError::Rollback { version: 5, seen: 6 })
        );
        assert!(signed.verify_checkpoint(&vk, &bytes, Some(5)).is_ok());
        assert!(signed.verify_checkpoint(&vk, &bytes, Some(4)).is_ok());
    }

    #[test]
    fn a_parent_must_be_older_than_its_child() {
        let bytes = checkpoint();
        let vk = key(1).verifying_key();
        let initial = manifest(0, &bytes);
        assert_eq!(initial.parent_version, 0);
        assert_eq!(initial.sign(&key(1)).verify(&vk), Ok(()));
        let mut own_parent = manifest(2, &bytes);
        own_parent.parent_version = 2;
        assert_eq!(
            own_parent.sign(&key(1)).verify(&vk),
            Err(CheckpointError::Parent { version: 2, parent: 2 })
        );
    }

    #[test]
    fn json_is_flat_hex_and_round_trips() {
        let signed = manifest(7, &checkpoint()).sign(&key(1));
        let json = serde_json::to_string(&signed).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["version"], 7);
        assert_eq!(value["parent_version"], 6);
        assert_eq!(value["task_id"], "5a".repeat(16));
        assert_eq!(value["sha256"], hex::encode(signed.manifest.sha256.0));
        assert_eq!(value["signature"].as_str().map(str::len), Some(128));
        let back: SignedManifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.verify(&key(1).verifying_key()), Ok(()));
    }

    #[test]
    fn json_with_a_short_hash_is_refused() {
        let signed = manifest(7, &checkpoint()).sign(&key(1));
        let mut value = serde_json::to_value(&signed).unwrap();
        value["sha256"] = "abcd".into();
        let err = serde_json::from_value::<SignedManifest>(value).unwrap_err();
        // serde_json keeps only the message of a `try_from` error: it is the HexField one.
        let expected = CheckpointError::HexField {
            field: "sha256",
            bytes: 32,
            source: hex::FromHexError::InvalidStringLength,
        };
        assert_eq!(err.to_string(), expected.to_string());
    }
}
