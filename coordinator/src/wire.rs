//! Conversions between the wire types of `fedsec.proto` and the core's types.
//!
//! Requests become core messages with `TryFrom`-style functions that refuse malformed fields
//! with [`Error::Malformed`] naming the field; replies become wire messages. Wire types never
//! go further than the service handlers.

use fedsec_crypto::checkpoint::SignedManifest;
use fedsec_crypto::secagg::messages::{
    AdvertiseKeys, ConsistencyRequest, ConsistencySignature, EncryptedShares, KeysForward,
    MaskedInput, RevealedShare, ShareKeys, SharesForward, Sig, UnmaskingRequest, UnmaskingResponse,
};
use fedsec_crypto::x509::{decode_chain, encode_chain};
use fedsec_crypto::{
    AdversaryClass, AttemptNonce, ClientId, GraphKind, PROTOCOL_VERSION, RoundContext, RoundId,
    TaskId,
};
use fedsec_proto::v1;

use crate::engine::{RoundInfo, RoundOutcome};
use crate::error::{Error, Result};

/// The attempt a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundKey {
    /// The task.
    pub task: TaskId,
    /// The round.
    pub round: RoundId,
    /// The attempt.
    pub attempt: AttemptNonce,
    /// Its round context.
    pub ctx: RoundContext,
}

impl RoundKey {
    /// The wire form.
    pub fn to_wire(&self) -> v1::RoundRef {
        v1::RoundRef {
            task_id: self.task.0.to_vec(),
            round_id: self.round.0,
            attempt: self.attempt.0.to_vec(),
            context: self.ctx.0.to_vec(),
        }
    }

    /// The key of a running attempt.
    pub fn of(info: &RoundInfo) -> Self {
        let p = &info.plan;
        RoundKey { task: p.task_id, round: p.round_id, attempt: p.attempt, ctx: p.context() }
    }
}

fn malformed(field: &str, reason: impl std::fmt::Display) -> Error {
    Error::Malformed(format!("{field}: {reason}"))
}

/// A fixed-length byte field.
pub fn fixed<const N: usize>(field: &str, bytes: &[u8]) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| malformed(field, format!("{} bytes, expected {N}", bytes.len())))
}

/// A task id field.
pub fn task_id(bytes: &[u8]) -> Result<TaskId> {
    Ok(TaskId(fixed("task_id", bytes)?))
}

/// The `round` field every phase message carries.
pub fn round_key(r: Option<&v1::RoundRef>) -> Result<RoundKey> {
    let r = r.ok_or_else(|| malformed("round", "missing"))?;
    Ok(RoundKey {
        task: TaskId(fixed("round.task_id", &r.task_id)?),
        round: RoundId(r.round_id),
        attempt: AttemptNonce(fixed("round.attempt", &r.attempt)?),
        ctx: RoundContext(fixed("round.context", &r.context)?),
    })
}

fn sig(field: &str, bytes: &[u8]) -> Result<Sig> {
    Ok(Sig(fixed(field, bytes)?))
}

fn client_id(field: &str, bytes: &[u8]) -> Result<ClientId> {
    Ok(ClientId(fixed(field, bytes)?))
}

/// The certificate chain as the core's credential bytes.
pub fn credential(chain: &[Vec<u8>]) -> Result<Vec<u8>> {
    if chain.is_empty() {
        return Err(malformed("certificate_chain", "empty"));
    }
    Ok(encode_chain(chain))
}

fn chain(credential: &[u8]) -> Vec<Vec<u8>> {
    // Credentials the coordinator accepted were encoded by `credential` above.
    decode_chain(credential).unwrap_or_else(|_| vec![credential.to_vec()])
}

/// The round plan a selected client runs.
pub fn plan_to_wire(info: &RoundInfo) -> v1::RoundPlan {
    let p = &info.plan;
    v1::RoundPlan {
        version: p.version,
        task_id: p.task_id.0.to_vec(),
        round_id: p.round_id.0,
        attempt: p.attempt.0.to_vec(),
        selected: p.selected.iter().map(|c| c.0.to_vec()).collect(),
        graph: match p.graph {
            GraphKind::Complete => v1::GraphKind::Complete,
            GraphKind::Harary => v1::GraphKind::Harary,
        } as i32,
        degree: p.degree,
        threshold: p.threshold,
        dropout_ppm: p.dropout_ppm,
        corrupt_ppm: p.corrupt_ppm,
        adversary: match p.adversary {
            AdversaryClass::Curious => v1::AdversaryClass::Curious,
            AdversaryClass::SemiMalicious => v1::AdversaryClass::SemiMalicious,
            AdversaryClass::Malicious => v1::AdversaryClass::Malicious,
        } as i32,
        graph_seed: p.graph_seed.to_vec(),
        dim: p.dim,
        quant: Some(v1::QuantParams {
            clip: p.quant.clip,
            value_scale: p.quant.value_scale,
            weight_scale: p.quant.weight_scale,
            max_examples: p.quant.max_examples,
        }),
        checkpoint_sha256: p.checkpoint.0.to_vec(),
        checkpoint_version: info.checkpoint_version,
        upload_chunk_words: info.upload_chunk_words,
        phase_deadline_ms: info.phase_deadlines.iter().map(|d| d.as_millis() as u32).collect(),
    }
}

/// Phase 0 request.
pub fn advertise(req: &v1::AdvertiseKeysRequest, from: ClientId) -> Result<AdvertiseKeys> {
    let key = round_key(req.round.as_ref())?;
    Ok(AdvertiseKeys {
        version: PROTOCOL_VERSION,
        ctx: key.ctx,
        client: from,
        credential: credential(&req.certificate_chain)?,
        enc_pk: fixed("enc_pk", &req.enc_pk)?,
        mask_pk: fixed("mask_pk", &req.mask_pk)?,
        self_mask_commitment: fixed("self_mask_commitment", &req.self_mask_commitment)?,
        signature: sig("signature", &req.signature)?,
    })
}

/// Phase 0 reply.
pub fn keys_to_wire(key: &RoundKey, fwd: &KeysForward) -> v1::AdvertiseKeysResponse {
    v1::AdvertiseKeysResponse {
        round: Some(key.to_wire()),
        adverts: fwd
            .adverts
            .iter()
            .map(|a| v1::Advertisement {
                client_id: a.client.0.to_vec(),
                certificate_chain: chain(&a.credential),
                enc_pk: a.enc_pk.to_vec(),
                mask_pk: a.mask_pk.to_vec(),
                self_mask_commitment: a.self_mask_commitment.to_vec(),
                signature: a.signature.0.to_vec(),
            })
            .collect(),
    }
}

/// Phase 1 request.
pub fn share_keys(req: &v1::ShareKeysRequest, from: ClientId) -> Result<ShareKeys> {
    let key = round_key(req.round.as_ref())?;
    let shares = req
        .shares
        .iter()
        .map(|s| {
            Ok(EncryptedShares {
                to: client_id("shares.to", &s.to)?,
                ciphertext: s.ciphertext.clone(),
            })
        })
        .collect::<Result<_>>()?;
    Ok(ShareKeys { version: PROTOCOL_VERSION, ctx: key.ctx, client: from, shares })
}

/// Phase 1 reply.
pub fn shares_to_wire(key: &RoundKey, fwd: &SharesForward) -> v1::ShareKeysResponse {
    v1::ShareKeysResponse {
        round: Some(key.to_wire()),
        shares: fwd
            .shares
            .iter()
            .map(|s| v1::ForwardedShares {
                from: s.from.0.to_vec(),
                ciphertext: s.ciphertext.clone(),
            })
            .collect(),
    }
}

/// Phase 2: one chunk.
pub fn chunk(req: v1::MaskedInputChunk, from: ClientId) -> Result<(RoundKey, MaskedInput)> {
    let key = round_key(req.round.as_ref())?;
    let msg = MaskedInput {
        version: PROTOCOL_VERSION,
        ctx: key.ctx,
        client: from,
        offset: req.offset,
        data: req.data,
    };
    Ok((key, msg))
}

/// Phase 2 reply.
pub fn survivors_to_wire(
    key: &RoundKey,
    req: &ConsistencyRequest,
) -> v1::UploadMaskedInputResponse {
    v1::UploadMaskedInputResponse { round: Some(key.to_wire()), survivors: req.survivors.0.clone() }
}

/// Phase 3 request.
pub fn consistency(
    req: &v1::ConsistencyCheckRequest,
    from: ClientId,
) -> Result<ConsistencySignature> {
    let key = round_key(req.round.as_ref())?;
    Ok(ConsistencySignature {
        version: PROTOCOL_VERSION,
        ctx: key.ctx,
        client: from,
        signature: sig("signature", &req.signature)?,
    })
}

/// Phase 3 reply.
pub fn unmask_request_to_wire(
    key: &RoundKey,
    req: &UnmaskingRequest,
) -> v1::ConsistencyCheckResponse {
    v1::ConsistencyCheckResponse {
        round: Some(key.to_wire()),
        survivors: req.survivors.0.clone(),
        signatures: req
            .signatures
            .iter()
            .map(|s| v1::SignedSurvivors {
                client_id: s.client.0.to_vec(),
                certificate_chain: chain(&s.credential),
                signature: s.signature.0.to_vec(),
            })
            .collect(),
    }
}

fn revealed(field: &str, shares: &[v1::RevealedShare]) -> Result<Vec<RevealedShare>> {
    shares
        .iter()
        .map(|s| {
            Ok(RevealedShare { owner: client_id(field, &s.owner)?, share: fixed(field, &s.share)? })
        })
        .collect()
}

/// Phase 4 request.
pub fn unmasking(req: &v1::UnmaskRequest, from: ClientId) -> Result<UnmaskingResponse> {
    let key = round_key(req.round.as_ref())?;
    Ok(UnmaskingResponse {
        version: PROTOCOL_VERSION,
        ctx: key.ctx,
        client: from,
        self_mask_shares: revealed("self_mask_shares", &req.self_mask_shares)?,
        mask_key_shares: revealed("mask_key_shares", &req.mask_key_shares)?,
    })
}

/// How an attempt ended.
pub fn result_to_wire(r: &RoundOutcome, task: TaskId) -> v1::RoundResult {
    v1::RoundResult {
        round: Some(RoundKey { task, round: r.round_id, attempt: r.attempt, ctx: r.ctx }.to_wire()),
        completed: r.completed,
        new_checkpoint_version: r.new_checkpoint_version.unwrap_or(0),
        participants: r.participants() as u32,
        abort_reason: r.abort_reason.clone().unwrap_or_default(),
        set_sizes: r.set_sizes.iter().map(|&s| s as u32).collect(),
        phase_seconds: r.phase_seconds.clone(),
    }
}

/// A signed checkpoint manifest.
pub fn manifest_to_wire(m: &SignedManifest) -> v1::CheckpointManifest {
    v1::CheckpointManifest {
        version: m.manifest.version,
        parent_version: m.manifest.parent_version,
        sha256: m.manifest.sha256.0.to_vec(),
        size_bytes: m.manifest.size_bytes,
        task_id: m.manifest.task_id.0.to_vec(),
        round_summary: m.manifest.round_summary.clone(),
        signature: m.signature.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rref() -> v1::RoundRef {
        v1::RoundRef {
            task_id: vec![1; 16],
            round_id: 4,
            attempt: vec![2; 16],
            context: vec![3; 32],
        }
    }

    #[test]
    fn malformed_fields_are_named() {
        let id = ClientId([5; 32]);
        let mut req = v1::AdvertiseKeysRequest {
            round: Some(rref()),
            certificate_chain: vec![vec![0x30, 0x00]],
            enc_pk: vec![0; 32],
            mask_pk: vec![0; 31],
            self_mask_commitment: vec![0; 32],
            signature: vec![0; 64],
        };
        let err = advertise(&req, id).unwrap_err();
        assert_eq!(err.to_string(), "malformed message: mask_pk: 31 bytes, expected 32");
        req.mask_pk = vec![0; 32];
        req.round.as_mut().unwrap().context = vec![0; 3];
        assert!(advertise(&req, id).unwrap_err().to_string().contains("round.context"));
        req.round = None;
        assert!(advertise(&req, id).unwrap_err().to_string().contains("round: missing"));
        let req = v1::UnmaskRequest {
            round: Some(rref()),
            self_mask_shares: vec![v1::RevealedShare { owner: vec![1; 32], share: vec![0; 33] }],
            mask_key_shares: vec![],
        };
        assert!(unmasking(&req, id).unwrap_err().to_string().contains("self_mask_shares"));
    }

    #[test]
    fn the_sender_is_the_authenticated_peer() {
        let id = ClientId([5; 32]);
        let req = v1::ConsistencyCheckRequest { round: Some(rref()), signature: vec![9; 64] };
        let msg = consistency(&req, id).unwrap();
        assert_eq!(msg.client, id);
        assert_eq!(msg.ctx, RoundContext([3; 32]));
    }
}
