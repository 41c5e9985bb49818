//! Assembling the streamed checkpoint: the manifest first, then the bytes, never more than it
//! announced, and nothing allocated for a model larger than the site takes (`max_model_bytes`).
//!
//! Sans-IO: the driver feeds each [`v1::ModelChunk`] of the `DownloadModel` stream in; the
//! signature, size and hash are verified afterwards by [`crate::round::Round`].

use fedsec_proto::v1;
use fedsec_wire::{Reason, WireError};

use crate::error::{ClientError, Result};

/// How much is reserved up front: the announced size is unverified until the whole checkpoint
/// is, so a larger model grows its buffer as its bytes arrive.
const RESERVE_AT_MOST: u64 = 1 << 26;

/// A checkpoint being received.
#[derive(Debug)]
pub struct ModelDownload {
    limit: u64,
    manifest: Option<v1::CheckpointManifest>,
    data: Vec<u8>,
}

impl ModelDownload {
    /// A download that refuses a checkpoint announcing more than `max_model_bytes`.
    pub fn new(max_model_bytes: u64) -> Self {
        ModelDownload { limit: max_model_bytes, manifest: None, data: Vec::new() }
    }

    /// Takes the next chunk of the stream.
    pub fn push(&mut self, chunk: v1::ModelChunk) -> Result<()> {
        match chunk.part {
            Some(v1::model_chunk::Part::Manifest(m)) if self.manifest.is_none() => {
                // Checked before anything is allocated for the model.
                if m.size_bytes > self.limit {
                    let (announced, limit) = (m.size_bytes, self.limit);
                    return Err(ClientError::ModelTooLarge { announced, limit });
                }
                self.data.reserve(m.size_bytes.min(RESERVE_AT_MOST) as usize);
                self.manifest = Some(m);
            }
            Some(v1::model_chunk::Part::Data(d)) if self.manifest.is_some() => {
                let size = self.manifest.as_ref().map_or(0, |m| m.size_bytes);
                if (self.data.len() + d.len()) as u64 > size {
                    let reason = Reason::TooLong(size);
                    return Err(WireError { field: "model_chunk.data", reason }.into());
                }
                self.data.extend_from_slice(&d);
            }
            _ => {
                let reason = Reason::Order("the manifest first, then the data");
                return Err(WireError { field: "model_chunk.part", reason }.into());
            }
        }
        Ok(())
    }

    /// The manifest and the bytes, once the stream ended.
    pub fn finish(self) -> Result<(v1::CheckpointManifest, Vec<u8>)> {
        let manifest = self
            .manifest
            .ok_or(WireError { field: "model_chunk.manifest", reason: Reason::Missing })?;
        Ok((manifest, self.data))
    }

    /// Bytes reserved for the model so far.
    pub fn reserved(&self) -> usize {
        self.data.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(size_bytes: u64) -> v1::ModelChunk {
        let m = v1::CheckpointManifest { size_bytes, ..Default::default() };
        v1::ModelChunk { part: Some(v1::model_chunk::Part::Manifest(m)) }
    }

    fn data(bytes: &[u8]) -> v1::ModelChunk {
        v1::ModelChunk { part: Some(v1::model_chunk::Part::Data(bytes.to_vec())) }
    }

    #[test]
    fn a_model_announced_above_the_limit_is_refused_before_allocating() {
        let mut d = ModelDownload::new(1000);
        let err = d.push(manifest(1001)).unwrap_err();
        assert!(
            matches!(err, ClientError::ModelTooLarge { announced: 1001, limit: 1000 }),
            "{err}"
        );
        assert_eq!(d.reserved(), 0, "nothing allocated");
        let mut d = ModelDownload::new(1000);
        assert!(matches!(
            d.push(manifest(u64::MAX)),
            Err(ClientError::ModelTooLarge { announced: u64::MAX, .. })
        ));
        assert_eq!(d.reserved(), 0);
    }

    #[test]
    fn a_model_within_the_limit_is_assembled_and_never_beyond_its_size() {
        let mut d = ModelDownload::new(1000);
        d.push(manifest(6)).unwrap();
        d.push(data(b"abc")).unwrap();
        d.push(data(b"def")).unwrap();
        assert!(matches!(d.push(data(b"g")), Err(ClientError::Malformed(_))), "beyond its size");
        let (m, bytes) = d.finish().unwrap();
        assert_eq!((m.size_bytes, bytes.as_slice()), (6, &b"abcdef"[..]));
        let mut d = ModelDownload::new(1000);
        assert!(matches!(d.push(data(b"abc")), Err(ClientError::Malformed(_))), "data first");
        assert!(matches!(ModelDownload::new(1).finish(), Err(ClientError::Malformed(_))));
    }
}
