//! The messages of the six phases: each client request and each coordinator reply.

use crate::x509::encode_chain;
use fedsec_crypto::merkle::MAX_PATH;
use fedsec_crypto::proofs::ComplaintProof;
use fedsec_crypto::proofs::KeyProof;
use fedsec_crypto::secagg::commitments::{Dealt, Entry};
use fedsec_crypto::secagg::messages::{
    AdvertiseKeys, Complaint, Complaints, ConsistencyRequest, ConsistencySignature,
    EncryptedShares, Exclusions, ForwardedShares, KeysForward, MaskedInput, RevealedShare,
    ShareKeys, SharesForward, Sig, SignedSurvivors, Survivors, UnmaskingRequest, UnmaskingResponse,
};
use fedsec_crypto::{ClientId, PROTOCOL_VERSION};
use fedsec_proto::v1;

use crate::{PhaseMessage, Reason, Result, RoundKey, WireError, client_id, fixed};

/// A certificate chain as the core's credential bytes.
fn credential(field: &'static str, chain: &[Vec<u8>]) -> Result<Vec<u8>> {
    if chain.is_empty() {
        return Err(WireError { field, reason: Reason::Empty });
    }
    Ok(encode_chain(chain))
}

/// The certificate chain of a credential. A credential that is not an encoded chain (a bare
/// key, in tests of the core) travels as a chain of one.
///
/// The inverse of [`credential`] for every chain the wire carries, so a chain is forwarded as
/// it came: empty certificates, or more or longer ones than a verifier accepts, included (the
/// verifier's [`decode_chain`](crate::x509::decode_chain) refuses those by its bounds).
fn chain(credential: &[u8]) -> Vec<Vec<u8>> {
    split_chain(credential).unwrap_or_else(|| vec![credential.to_vec()])
}

/// The certificates of an [`encode_chain`]d credential, without bounds on their number or
/// length; `None` if the bytes are not such an encoding of at least one certificate.
fn split_chain(mut rest: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut chain = Vec::new();
    while let Some((len, after)) = rest.split_first_chunk::<4>() {
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        let cert = after.get(..len)?;
        chain.push(cert.to_vec());
        rest = &after[len..];
    }
    (rest.is_empty() && !chain.is_empty()).then_some(chain)
}

fn round(key: &RoundKey) -> Option<v1::RoundRef> {
    Some(key.to_wire())
}

/// Phase 0 request: the client's advertisement.
impl PhaseMessage for AdvertiseKeys {
    type Proto = v1::AdvertiseKeysRequest;

    fn to_wire(&self, key: &RoundKey) -> Self::Proto {
        v1::AdvertiseKeysRequest {
            round: round(key),
            certificate_chain: chain(&self.credential),
            enc_pk: self.enc_pk.to_vec(),
            mask_pk: self.mask_pk.to_vec(),
            self_mask_commitment: self.self_mask_commitment.to_vec(),
            signature: self.signature.0.to_vec(),
            enc_pk_proof: self.enc_pk_proof.0.to_vec(),
            mask_pk_proof: self.mask_pk_proof.0.to_vec(),
        }
    }

    fn from_wire(req: &Self::Proto, sender: ClientId) -> Result<Self> {
        Ok(AdvertiseKeys {
            version: PROTOCOL_VERSION,
            ctx: RoundKey::from_ref(req.round.as_ref())?.ctx,
            client: sender,
            credential: credential("certificate_chain", &req.certificate_chain)?,
            enc_pk: fixed("enc_pk", &req.enc_pk)?,
            mask_pk: fixed("mask_pk", &req.mask_pk)?,
            self_mask_commitment: fixed("self_mask_commitment", &req.self_mask_commitment)?,
            enc_pk_proof: KeyProof(fixed("enc_pk_proof", &req.enc_pk_proof)?),
            mask_pk_proof: KeyProof(fixed("mask_pk_proof", &req.mask_pk_proof)?),
            signature: Sig(fixed("signature", &req.signature)?),
        })
    }
}

/// Phase 0 reply: the advertisements of the recipient's share holders.
impl PhaseMessage for KeysForward {
    type Proto = v1::AdvertiseKeysResponse;

    fn to_wire(&self, key: &RoundKey) -> Self::Proto {
        v1::AdvertiseKeysResponse {
            round: round(key),
            adverts: self
                .adverts
                .iter()
                .map(|a| v1::Advertisement {
                    client_id: a.client.0.to_vec(),
                    certificate_chain: chain(&a.credential),
                    enc_pk: a.enc_pk.to_vec(),
                    mask_pk: a.mask_pk.to_vec(),
                    self_mask_commitment: a.self_mask_commitment.to_vec(),
                    signature: a.signature.0.to_vec(),
                    enc_pk_proof: a.enc_pk_proof.0.to_vec(),
                    mask_pk_proof: a.mask_pk_proof.0.to_vec(),
                })
                .collect(),
        }
    }

    fn from_wire(resp: &Self::Proto, recipient: ClientId) -> Result<Self> {
        let ctx = RoundKey::from_ref(resp.round.as_ref())?.ctx;
        let adverts = resp
            .adverts
            .iter()
            .map(|a| {
                Ok(AdvertiseKeys {
                    version: PROTOCOL_VERSION,
                    ctx,
                    client: client_id("adverts.client_id", &a.client_id)?,
                    credential: credential("adverts.certificate_chain", &a.certificate_chain)?,
                    enc_pk: fixed("adverts.enc_pk", &a.enc_pk)?,
                    mask_pk: fixed("adverts.mask_pk", &a.mask_pk)?,
                    self_mask_commitment: fixed(
                        "adverts.self_mask_commitment",
                        &a.self_mask_commitment,
                    )?,
                    enc_pk_proof: KeyProof(fixed("adverts.enc_pk_proof", &a.enc_pk_proof)?),
                    mask_pk_proof: KeyProof(fixed("adverts.mask_pk_proof", &a.mask_pk_proof)?),
                    signature: Sig(fixed("adverts.signature", &a.signature)?),
                })
            })
            .collect::<Result<_>>()?;
        Ok(KeysForward { version: PROTOCOL_VERSION, ctx, recipient, adverts })
    }
}

/// Phase 1 request: the client's encrypted shares, one ciphertext per holder.
impl PhaseMessage for ShareKeys {
    type Proto = v1::ShareKeysRequest;

    fn to_wire(&self, key: &RoundKey) -> Self::Proto {
        v1::ShareKeysRequest {
            round: round(key),
            shares: self
                .shares
                .iter()
                .map(|e| v1::EncryptedShares {
                    to: e.to.0.to_vec(),
                    ciphertext: e.ciphertext.clone(),
                })
                .collect(),
            entries: self.entries.iter().map(|e| e.0.to_vec()).collect(),
            root_signature: self.root_signature.0.to_vec(),
        }
    }

    fn from_wire(req: &Self::Proto, sender: ClientId) -> Result<Self> {
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
        let entries =
            req.entries.iter().map(|e| Ok(Entry(fixed("entries", e)?))).collect::<Result<_>>()?;
        Ok(ShareKeys {
            version: PROTOCOL_VERSION,
            ctx: RoundKey::from_ref(req.round.as_ref())?.ctx,
            client: sender,
            shares,
            entries,
            root_signature: Sig(fixed("root_signature", &req.root_signature)?),
        })
    }
}

/// Phase 1 reply: the ciphertexts addressed to the recipient.
impl PhaseMessage for SharesForward {
    type Proto = v1::ShareKeysResponse;

    fn to_wire(&self, key: &RoundKey) -> Self::Proto {
        v1::ShareKeysResponse {
            round: round(key),
            shares: self.shares.iter().map(|s| forwarded_to_wire(&s.from, &s.dealt)).collect(),
        }
    }

    fn from_wire(resp: &Self::Proto, recipient: ClientId) -> Result<Self> {
        let shares = resp
            .shares
            .iter()
            .map(|s| {
                let (from, dealt) = forwarded_from_wire(&FORWARDED, s)?;
                Ok(ForwardedShares { from, dealt })
            })
            .collect::<Result<_>>()?;
        Ok(SharesForward {
            version: PROTOCOL_VERSION,
            ctx: RoundKey::from_ref(resp.round.as_ref())?.ctx,
            recipient,
            shares,
        })
    }
}

/// A forwarded share on the wire: its dealer and what it dealt.
fn forwarded_to_wire(from: &ClientId, dealt: &Dealt) -> v1::ForwardedShares {
    v1::ForwardedShares {
        from: from.0.to_vec(),
        ciphertext: dealt.ciphertext.clone(),
        entry: dealt.entry.0.to_vec(),
        index: dealt.index,
        size: dealt.size,
        path: dealt.path.iter().map(|h| h.to_vec()).collect(),
        signature: dealt.signature.to_vec(),
    }
}

/// The field names of a forwarded share where it sits in a message, for errors.
struct ShareFields {
    from: &'static str,
    entry: &'static str,
    path: &'static str,
    signature: &'static str,
}

const FORWARDED: ShareFields = ShareFields {
    from: "shares.from",
    entry: "shares.entry",
    path: "shares.path",
    signature: "shares.signature",
};

const COMPLAINED: ShareFields = ShareFields {
    from: "complaints.share.from",
    entry: "complaints.share.entry",
    path: "complaints.share.path",
    signature: "complaints.share.signature",
};

/// A forwarded share from the wire: fixed lengths checked, at most [`MAX_PATH`] path hashes.
fn forwarded_from_wire(f: &ShareFields, s: &v1::ForwardedShares) -> Result<(ClientId, Dealt)> {
    let from = client_id(f.from, &s.from)?;
    let entry = Entry(fixed(f.entry, &s.entry)?);
    if s.path.len() > MAX_PATH {
        return Err(WireError {
            field: f.path,
            reason: Reason::TooMany { got: s.path.len(), max: MAX_PATH },
        });
    }
    let path = s.path.iter().map(|h| fixed(f.path, h)).collect::<Result<_>>()?;
    Ok((
        from,
        Dealt {
            entry,
            index: s.index,
            size: s.size,
            path,
            signature: fixed(f.signature, &s.signature)?,
            ciphertext: s.ciphertext.clone(),
        },
    ))
}

/// Phase 1½ request (protocol v2): the client's complaints, possibly none.
impl PhaseMessage for Complaints {
    type Proto = v1::ComplaintsRequest;

    fn to_wire(&self, key: &RoundKey) -> Self::Proto {
        v1::ComplaintsRequest {
            round: round(key),
            complaints: self
                .complaints
                .iter()
                .map(|c| v1::Complaint {
                    accused: c.accused.0.to_vec(),
                    share: Some(forwarded_to_wire(&c.accused, &c.dealt)),
                    shared_key: c.shared.to_vec(),
                    proof: c.proof.0.to_vec(),
                })
                .collect(),
            signature: self.signature.0.to_vec(),
        }
    }

    fn from_wire(req: &Self::Proto, sender: ClientId) -> Result<Self> {
        let complaints = req
            .complaints
            .iter()
            .map(|c| {
                let accused = client_id("complaints.accused", &c.accused)?;
                let share = c
                    .share
                    .as_ref()
                    .ok_or(WireError { field: "complaints.share", reason: Reason::Missing })?;
                let (from, dealt) = forwarded_from_wire(&COMPLAINED, share)?;
                if from != accused {
                    return Err(WireError {
                        field: "complaints.share.from",
                        reason: Reason::Mismatch("complaints.accused"),
                    });
                }
                Ok(Complaint {
                    accused,
                    dealt,
                    shared: fixed("complaints.shared_key", &c.shared_key)?,
                    proof: ComplaintProof(fixed("complaints.proof", &c.proof)?),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Complaints {
            version: PROTOCOL_VERSION,
            ctx: RoundKey::from_ref(req.round.as_ref())?.ctx,
            client: sender,
            complaints,
            signature: Sig(fixed("signature", &req.signature)?),
        })
    }
}

/// Phase 1½ reply (protocol v2): E.
impl PhaseMessage for Exclusions {
    type Proto = v1::ComplaintsResponse;

    fn to_wire(&self, key: &RoundKey) -> Self::Proto {
        v1::ComplaintsResponse { round: round(key), excluded: self.excluded.0.clone() }
    }

    fn from_wire(resp: &Self::Proto, _recipient: ClientId) -> Result<Self> {
        Ok(Exclusions {
            version: PROTOCOL_VERSION,
            ctx: RoundKey::from_ref(resp.round.as_ref())?.ctx,
            excluded: Survivors(resp.excluded.clone()),
        })
    }
}

/// Phase 2 request: one chunk of the masked input (see [`chunks`]).
impl PhaseMessage for MaskedInput {
    type Proto = v1::MaskedInputChunk;

    fn to_wire(&self, key: &RoundKey) -> Self::Proto {
        v1::MaskedInputChunk { round: round(key), offset: self.offset, data: self.data.clone() }
    }

    fn from_wire(req: &Self::Proto, sender: ClientId) -> Result<Self> {
        Ok(MaskedInput {
            version: PROTOCOL_VERSION,
            ctx: RoundKey::from_ref(req.round.as_ref())?.ctx,
            client: sender,
            offset: req.offset,
            data: req.data.clone(),
        })
    }
}

/// Phase 2 request: the masked input `y` as chunks of `chunk_words` words, in order.
pub fn chunks(key: &RoundKey, y: &MaskedInput, chunk_words: usize) -> Vec<v1::MaskedInputChunk> {
    y.chunks(chunk_words).iter().map(|c| c.to_wire(key)).collect()
}

/// Phase 2 reply: U3.
impl PhaseMessage for ConsistencyRequest {
    type Proto = v1::UploadMaskedInputResponse;

    fn to_wire(&self, key: &RoundKey) -> Self::Proto {
        v1::UploadMaskedInputResponse {
            round: round(key),
            survivors: self.survivors.0.clone(),
            excluded: self.excluded.0.clone(),
        }
    }

    fn from_wire(resp: &Self::Proto, _recipient: ClientId) -> Result<Self> {
        Ok(ConsistencyRequest {
            version: PROTOCOL_VERSION,
            ctx: RoundKey::from_ref(resp.round.as_ref())?.ctx,
            survivors: Survivors(resp.survivors.clone()),
            excluded: Survivors(resp.excluded.clone()),
        })
    }
}

/// Phase 3 request: the client's signature on U3.
impl PhaseMessage for ConsistencySignature {
    type Proto = v1::ConsistencyCheckRequest;

    fn to_wire(&self, key: &RoundKey) -> Self::Proto {
        v1::ConsistencyCheckRequest { round: round(key), signature: self.signature.0.to_vec() }
    }

    fn from_wire(req: &Self::Proto, sender: ClientId) -> Result<Self> {
        Ok(ConsistencySignature {
            version: PROTOCOL_VERSION,
            ctx: RoundKey::from_ref(req.round.as_ref())?.ctx,
            client: sender,
            signature: Sig(fixed("signature", &req.signature)?),
        })
    }
}

/// Phase 3 reply: U3 and the signatures on it.
impl PhaseMessage for UnmaskingRequest {
    type Proto = v1::ConsistencyCheckResponse;

    fn to_wire(&self, key: &RoundKey) -> Self::Proto {
        v1::ConsistencyCheckResponse {
            round: round(key),
            survivors: self.survivors.0.clone(),
            signatures: self
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

    fn from_wire(resp: &Self::Proto, _recipient: ClientId) -> Result<Self> {
        let signatures = resp
            .signatures
            .iter()
            .map(|s| {
                Ok(SignedSurvivors {
                    client: client_id("signatures.client_id", &s.client_id)?,
                    credential: credential("signatures.certificate_chain", &s.certificate_chain)?,
                    signature: Sig(fixed("signatures.signature", &s.signature)?),
                })
            })
            .collect::<Result<_>>()?;
        Ok(UnmaskingRequest {
            version: PROTOCOL_VERSION,
            ctx: RoundKey::from_ref(resp.round.as_ref())?.ctx,
            survivors: Survivors(resp.survivors.clone()),
            signatures,
        })
    }
}

fn revealed_to_wire(shares: &[RevealedShare]) -> Vec<v1::RevealedShare> {
    shares
        .iter()
        .map(|s| v1::RevealedShare { owner: s.owner.0.to_vec(), share: s.share.to_vec() })
        .collect()
}

/// The shares of a list whose `owner` and `share` fields are named `fields`.
fn revealed(
    fields: (&'static str, &'static str),
    shares: &[v1::RevealedShare],
) -> Result<Vec<RevealedShare>> {
    let (owner, share) = fields;
    shares
        .iter()
        .map(|s| {
            Ok(RevealedShare { owner: client_id(owner, &s.owner)?, share: fixed(share, &s.share)? })
        })
        .collect()
}

/// Phase 4 request: the shares the client reveals.
impl PhaseMessage for UnmaskingResponse {
    type Proto = v1::UnmaskRequest;

    fn to_wire(&self, key: &RoundKey) -> Self::Proto {
        v1::UnmaskRequest {
            round: round(key),
            self_mask_shares: revealed_to_wire(&self.self_mask_shares),
            mask_key_shares: revealed_to_wire(&self.mask_key_shares),
        }
    }

    fn from_wire(req: &Self::Proto, sender: ClientId) -> Result<Self> {
        Ok(UnmaskingResponse {
            version: PROTOCOL_VERSION,
            ctx: RoundKey::from_ref(req.round.as_ref())?.ctx,
            client: sender,
            self_mask_shares: revealed(
                ("self_mask_shares.owner", "self_mask_shares.share"),
                &req.self_mask_shares,
            )?,
            mask_key_shares: revealed(
                ("mask_key_shares.owner", "mask_key_shares.share"),
                &req.mask_key_shares,
            )?,
        })
    }
}
