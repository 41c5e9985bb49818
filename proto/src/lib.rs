//! # fedsec-proto
//!
//! The wire types of fedsec: `fedsec.proto` (package `fedsec.v1`) and the tonic/prost code
//! generated from it at build time with protox, so a machine with only cargo builds it.
//!
//! This crate holds wire types only: no logic, no dependency on the rest of fedsec. The
//! coordinator and the client library convert these messages into the secure aggregation
//! core's types at the edge (`TryFrom`), refusing malformed ones with a precise error.
//!
//! ```
//! use fedsec_proto::v1::{GetRoundResultRequest, RoundRef};
//! use prost::Message;
//!
//! let req = GetRoundResultRequest {
//!     round: Some(RoundRef { task_id: vec![1; 16], round_id: 7, attempt: vec![2; 16], context: vec![3; 32] }),
//! };
//! let bytes = req.encode_to_vec();
//! assert_eq!(GetRoundResultRequest::decode(bytes.as_slice()).unwrap(), req);
//! ```

/// Package `fedsec.v1`.
#[allow(missing_debug_implementations, clippy::all)] // generated code
pub mod v1 {
    tonic::include_proto!("fedsec.v1");
}

/// The encoded `FileDescriptorSet` of `fedsec.proto`, for the gRPC reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fedsec_descriptor");

/// Largest gRPC message either side accepts, in bytes. Set deliberately on both ends (never
/// "unlimited"): the biggest unary message is the unmasking request, which carries up to one
/// consistency signature and certificate chain per selected client.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The gRPC metadata key (ASCII value: a decimal count of milliseconds) by which the
/// coordinator tells a client refused with `RESOURCE_EXHAUSTED` (a rate limit, the uploads in
/// flight) or `UNAVAILABLE` how long to wait before calling again. The client library waits at
/// least that long (capped at a bound of its own, so a coordinator cannot park it for ever),
/// plus its own jitter. Both ends name the key through this constant.
pub const RETRY_AFTER_MS_METADATA: &str = "retry-after-ms";

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn descriptor_set_names_both_services() {
        // A FileDescriptorSet stores names as plain UTF-8 strings.
        let text = String::from_utf8_lossy(FILE_DESCRIPTOR_SET);
        for name in ["fedsec.v1", "Federation", "Admin", "UploadMaskedInput", "ReloadDenyList"] {
            assert!(text.contains(name), "{name} missing from the descriptor set");
        }
    }

    #[test]
    fn masked_input_chunk_overhead_is_small() {
        // One chunk of 2^18 words: the wire adds a few dozen bytes to the 4 bytes per word.
        let chunk = v1::MaskedInputChunk {
            round: Some(v1::RoundRef {
                task_id: vec![0; 16],
                round_id: u64::MAX,
                attempt: vec![0; 16],
                context: vec![0; 32],
            }),
            offset: u32::MAX,
            data: vec![0xab; 4 << 18],
        };
        let len = chunk.encode_to_vec().len();
        assert!(len - (4 << 18) < 100, "overhead {}", len - (4 << 18));
    }
}
