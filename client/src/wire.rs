//! Conversions between the wire types of `fedsec.proto` and the core's types, client side:
//! the coordinator's replies become core messages (refusing malformed fields with an error
//! that names them); the client's messages become wire requests.

use std::time::Duration;

use fedsec_crypto::checkpoint::{Manifest, SignedManifest};
use fedsec_crypto::quant::QuantParams;
use fedsec_crypto::secagg::messages::{
    AdvertiseKeys, ConsistencyRequest, ConsistencySignature, EncryptedShares, ForwardedShares,
    KeysForward, MaskedInput, ShareKeys, SharesForward, Sig, SignedSurvivors, Survivors,
    UnmaskingRequest, UnmaskingResponse,
};
use fedsec_crypto::x509::{decode_chain, encode_chain};
use fedsec_crypto::{
    AdversaryClass, AttemptNonce, CheckpointHash, ClientId, GraphKind, PROTOCOL_VERSION,
    RoundContext, RoundId, RoundPlan, TaskId,
};
use fedsec_proto::v1;

use crate::error::{ClientError, Result};

fn malformed(field: &str, reason: impl std::fmt::Display) -> ClientError {
    ClientError::Malformed(format!("{field}: {reason}"))
}

fn fixed<const N: usize>(field: &str, bytes: &[u8]) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| malformed(field, format!("{} bytes, expected {N}", bytes.len())))
}

fn id(field: &str, bytes: &[u8]) -> Result<ClientId> {
    Ok(ClientId(fixed(field, bytes)?))
}

/// A plan and how its round runs, as a selected client receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The plan (its context binds every message).
    pub plan: RoundPlan,
    /// The version of the checkpoint to train on.
    pub checkpoint_version: u64,
    /// Masked-input chunk size in words.
    pub upload_chunk_words: u32,
    /// Per-phase deadlines.
    pub phase_deadlines: Vec<Duration>,
}

impl Assignment {
    /// The wire reference to this attempt.
    pub fn round_ref(&self) -> v1::RoundRef {
        v1::RoundRef {
            task_id: self.plan.task_id.0.to_vec(),
            round_id: self.plan.round_id.0,
            attempt: self.plan.attempt.0.to_vec(),
            context: self.plan.context().0.to_vec(),
        }
    }
}

/// The plan in a check-in answer.
pub fn plan(p: &v1::RoundPlan) -> Result<Assignment> {
    let q = p.quant.as_ref().ok_or_else(|| malformed("plan.quant", "missing"))?;
    let plan = RoundPlan {
        version: p.version,
        task_id: TaskId(fixed("plan.task_id", &p.task_id)?),
        round_id: RoundId(p.round_id),
        attempt: AttemptNonce(fixed("plan.attempt", &p.attempt)?),
        selected: p.selected.iter().map(|s| id("plan.selected", s)).collect::<Result<_>>()?,
        graph: match v1::GraphKind::try_from(p.graph) {
            Ok(v1::GraphKind::Complete) => GraphKind::Complete,
            Ok(v1::GraphKind::Harary) => GraphKind::Harary,
            _ => return Err(malformed("plan.graph", p.graph)),
        },
        degree: p.degree,
        threshold: p.threshold,
        dropout_ppm: p.dropout_ppm,
        corrupt_ppm: p.corrupt_ppm,
        adversary: match v1::AdversaryClass::try_from(p.adversary) {
            Ok(v1::AdversaryClass::Curious) => AdversaryClass::Curious,
            Ok(v1::AdversaryClass::SemiMalicious) => AdversaryClass::SemiMalicious,
            Ok(v1::AdversaryClass::Malicious) => AdversaryClass::Malicious,
            _ => return Err(malformed("plan.adversary", p.adversary)),
        },
        graph_seed: fixed("plan.graph_seed", &p.graph_seed)?,
        dim: p.dim,
        quant: QuantParams {
            clip: q.clip,
            value_scale: q.value_scale,
            weight_scale: q.weight_scale,
            max_examples: q.max_examples,
        },
        checkpoint: CheckpointHash(fixed("plan.checkpoint_sha256", &p.checkpoint_sha256)?),
    };
    if p.phase_deadline_ms.len() != 5 {
        return Err(malformed("plan.phase_deadline_ms", "five deadlines expected"));
    }
    if p.upload_chunk_words == 0 {
        return Err(malformed("plan.upload_chunk_words", "zero"));
    }
    Ok(Assignment {
        plan,
        checkpoint_version: p.checkpoint_version,
        upload_chunk_words: p.upload_chunk_words,
        phase_deadlines: p
            .phase_deadline_ms
            .iter()
            .map(|&ms| Duration::from_millis(u64::from(ms)))
            .collect(),
    })
}

/// A checkpoint manifest as sent before the model's bytes.
pub fn manifest(m: &v1::CheckpointManifest) -> Result<SignedManifest> {
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

fn chain(credential: &[u8]) -> Result<Vec<Vec<u8>>> {
    decode_chain(credential).map_err(|e| malformed("certificate_chain", e))
}

/// Phase 0 request.
pub fn advertise(r: v1::RoundRef, a: &AdvertiseKeys) -> Result<v1::AdvertiseKeysRequest> {
    Ok(v1::AdvertiseKeysRequest {
        round: Some(r),
        certificate_chain: chain(&a.credential)?,
        enc_pk: a.enc_pk.to_vec(),
        mask_pk: a.mask_pk.to_vec(),
        self_mask_commitment: a.self_mask_commitment.to_vec(),
        signature: a.signature.0.to_vec(),
    })
}

/// Phase 0 reply.
pub fn keys(ctx: RoundContext, me: ClientId, r: &v1::AdvertiseKeysResponse) -> Result<KeysForward> {
    let adverts = r
        .adverts
        .iter()
        .map(|a| {
            if a.certificate_chain.is_empty() {
                return Err(malformed("adverts.certificate_chain", "empty"));
            }
            Ok(AdvertiseKeys {
                version: PROTOCOL_VERSION,
                ctx,
                client: id("adverts.client_id", &a.client_id)?,
                credential: encode_chain(&a.certificate_chain),
                enc_pk: fixed("adverts.enc_pk", &a.enc_pk)?,
                mask_pk: fixed("adverts.mask_pk", &a.mask_pk)?,
                self_mask_commitment: fixed(
                    "adverts.self_mask_commitment",
                    &a.self_mask_commitment,
                )?,
                signature: Sig(fixed("adverts.signature", &a.signature)?),
            })
        })
        .collect::<Result<_>>()?;
    Ok(KeysForward { version: PROTOCOL_VERSION, ctx, recipient: me, adverts })
}

/// Phase 1 request.
pub fn share_keys(r: v1::RoundRef, s: &ShareKeys) -> v1::ShareKeysRequest {
    v1::ShareKeysRequest {
        round: Some(r),
        shares: s
            .shares
            .iter()
            .map(|e: &EncryptedShares| v1::EncryptedShares {
                to: e.to.0.to_vec(),
                ciphertext: e.ciphertext.clone(),
            })
            .collect(),
    }
}

/// Phase 1 reply.
pub fn shares(ctx: RoundContext, me: ClientId, r: &v1::ShareKeysResponse) -> Result<SharesForward> {
    let shares = r
        .shares
        .iter()
        .map(|s| {
            Ok(ForwardedShares {
                from: id("shares.from", &s.from)?,
                ciphertext: s.ciphertext.clone(),
            })
        })
        .collect::<Result<_>>()?;
    Ok(SharesForward { version: PROTOCOL_VERSION, ctx, recipient: me, shares })
}

/// Phase 2: the masked input in chunks of `chunk_words` words.
pub fn chunks(r: &v1::RoundRef, y: &MaskedInput, chunk_words: usize) -> Vec<v1::MaskedInputChunk> {
    y.chunks(chunk_words)
        .into_iter()
        .map(|c| v1::MaskedInputChunk { round: Some(r.clone()), offset: c.offset, data: c.data })
        .collect()
}

/// Phase 2 reply: U3.
pub fn survivors(ctx: RoundContext, r: &v1::UploadMaskedInputResponse) -> ConsistencyRequest {
    ConsistencyRequest { version: PROTOCOL_VERSION, ctx, survivors: Survivors(r.survivors.clone()) }
}

/// Phase 3 request.
pub fn consistency(r: v1::RoundRef, s: &ConsistencySignature) -> v1::ConsistencyCheckRequest {
    v1::ConsistencyCheckRequest { round: Some(r), signature: s.signature.0.to_vec() }
}

/// Phase 3 reply.
pub fn unmask_request(
    ctx: RoundContext,
    r: &v1::ConsistencyCheckResponse,
) -> Result<UnmaskingRequest> {
    let signatures = r
        .signatures
        .iter()
        .map(|s| {
            if s.certificate_chain.is_empty() {
                return Err(malformed("signatures.certificate_chain", "empty"));
            }
            Ok(SignedSurvivors {
                client: id("signatures.client_id", &s.client_id)?,
                credential: encode_chain(&s.certificate_chain),
                signature: Sig(fixed("signatures.signature", &s.signature)?),
            })
        })
        .collect::<Result<_>>()?;
    Ok(UnmaskingRequest {
        version: PROTOCOL_VERSION,
        ctx,
        survivors: Survivors(r.survivors.clone()),
        signatures,
    })
}

/// Phase 4 request.
pub fn unmask(r: v1::RoundRef, u: &UnmaskingResponse) -> v1::UnmaskRequest {
    let shares = |v: &[fedsec_crypto::secagg::messages::RevealedShare]| {
        v.iter()
            .map(|s| v1::RevealedShare { owner: s.owner.0.to_vec(), share: s.share.to_vec() })
            .collect()
    };
    v1::UnmaskRequest {
        round: Some(r),
        self_mask_shares: shares(&u.self_mask_shares),
        mask_key_shares: shares(&u.mask_key_shares),
    }
}
