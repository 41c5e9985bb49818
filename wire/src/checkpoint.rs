//! Signed checkpoint manifests, sent before a model's bytes.

use fedsec_crypto::checkpoint::{Manifest, SignedManifest};
use fedsec_crypto::{CheckpointHash, TaskId};
use fedsec_proto::v1;

use crate::{Result, Wire, fixed};

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

    fn from_wire(m: &v1::CheckpointManifest) -> Result<Self> {
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
