//! What each wire message's decoder must do, and the judges that hold it to that.
//!
//! Each wire message has a `Spec`: the defects its decoder must refuse, written from
//! `fedsec.proto` (lengths, presence, enum values, counts) and not from the decoders. A decoder
//! then accepts exactly the messages without a defect, as a value that encodes back to the
//! same message, and refuses the others naming one of their defects — the one defect, when the
//! generator broke a single field.

use std::fmt::Debug;

use fedsec_crypto::ClientId;
use fedsec_wire::{PhaseMessage, Reason, RoundKey, Wire, WireError, v1};
use proptest::prelude::*;
use prost::Message;

/// A wire message and the defects its decoder must refuse in it.
pub trait Spec: Message + Default + PartialEq + Debug + Clone {
    fn defects(&self) -> Vec<WireError>;
}

/// A phase message: its attempt travels in its `round` field.
pub trait Framed: Spec {
    fn round(&self) -> Option<&v1::RoundRef>;
}

macro_rules! framed {
    ($($proto:ty),*) => {$(
        impl Framed for $proto {
            fn round(&self) -> Option<&v1::RoundRef> {
                self.round.as_ref()
            }
        }
    )*};
}

framed!(
    v1::AdvertiseKeysRequest,
    v1::AdvertiseKeysResponse,
    v1::ShareKeysRequest,
    v1::ComplaintsRequest,
    v1::ComplaintsResponse,
    v1::ShareKeysResponse,
    v1::MaskedInputChunk,
    v1::UploadMaskedInputResponse,
    v1::ConsistencyCheckRequest,
    v1::ConsistencyCheckResponse,
    v1::UnmaskRequest
);

pub fn length(d: &mut Vec<WireError>, field: &'static str, bytes: &[u8], expected: usize) {
    if bytes.len() != expected {
        d.push(WireError { field, reason: Reason::Length { got: bytes.len(), expected } });
    }
}

fn chain(d: &mut Vec<WireError>, field: &'static str, chain: &[Vec<u8>]) {
    if chain.is_empty() {
        d.push(WireError { field, reason: Reason::Empty });
    }
}

fn round(d: &mut Vec<WireError>, round: Option<&v1::RoundRef>) {
    match round {
        None => d.push(WireError { field: "round", reason: Reason::Missing }),
        Some(r) => d.extend(r.defects()),
    }
}

impl Spec for v1::RoundRef {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        length(&mut d, "round.task_id", &self.task_id, 16);
        length(&mut d, "round.attempt", &self.attempt, 16);
        length(&mut d, "round.context", &self.context, 32);
        d
    }
}

impl Spec for v1::AdvertiseKeysRequest {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        round(&mut d, self.round.as_ref());
        chain(&mut d, "certificate_chain", &self.certificate_chain);
        length(&mut d, "enc_pk", &self.enc_pk, 32);
        length(&mut d, "mask_pk", &self.mask_pk, 32);
        length(&mut d, "self_mask_commitment", &self.self_mask_commitment, 32);
        length(&mut d, "enc_pk_proof", &self.enc_pk_proof, 64);
        length(&mut d, "mask_pk_proof", &self.mask_pk_proof, 64);
        length(&mut d, "signature", &self.signature, 64);
        d
    }
}

impl Spec for v1::AdvertiseKeysResponse {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        round(&mut d, self.round.as_ref());
        for a in &self.adverts {
            length(&mut d, "adverts.client_id", &a.client_id, 32);
            chain(&mut d, "adverts.certificate_chain", &a.certificate_chain);
            length(&mut d, "adverts.enc_pk", &a.enc_pk, 32);
            length(&mut d, "adverts.mask_pk", &a.mask_pk, 32);
            length(&mut d, "adverts.self_mask_commitment", &a.self_mask_commitment, 32);
            length(&mut d, "adverts.enc_pk_proof", &a.enc_pk_proof, 64);
            length(&mut d, "adverts.mask_pk_proof", &a.mask_pk_proof, 64);
            length(&mut d, "adverts.signature", &a.signature, 64);
        }
        d
    }
}

impl Spec for v1::ShareKeysRequest {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        round(&mut d, self.round.as_ref());
        for s in &self.shares {
            length(&mut d, "shares.to", &s.to, 32);
        }
        for e in &self.entries {
            length(&mut d, "entries", e, 128);
        }
        length(&mut d, "root_signature", &self.root_signature, 64);
        d
    }
}

impl Spec for v1::ShareKeysResponse {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        round(&mut d, self.round.as_ref());
        for s in &self.shares {
            length(&mut d, "shares.from", &s.from, 32);
            length(&mut d, "shares.entry", &s.entry, 128);
            if s.path.len() > 32 {
                d.push(WireError {
                    field: "shares.path",
                    reason: Reason::TooMany { got: s.path.len(), max: 32 },
                });
            }
            for h in &s.path {
                length(&mut d, "shares.path", h, 32);
            }
            length(&mut d, "shares.signature", &s.signature, 64);
        }
        d
    }
}

impl Spec for v1::ComplaintsRequest {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        round(&mut d, self.round.as_ref());
        for c in &self.complaints {
            length(&mut d, "complaints.accused", &c.accused, 32);
            match &c.share {
                None => d.push(WireError { field: "complaints.share", reason: Reason::Missing }),
                Some(s) => {
                    length(&mut d, "complaints.share.from", &s.from, 32);
                    length(&mut d, "complaints.share.entry", &s.entry, 128);
                    if s.path.len() > 32 {
                        d.push(WireError {
                            field: "complaints.share.path",
                            reason: Reason::TooMany { got: s.path.len(), max: 32 },
                        });
                    }
                    for h in &s.path {
                        length(&mut d, "complaints.share.path", h, 32);
                    }
                    length(&mut d, "complaints.share.signature", &s.signature, 64);
                    if s.from.len() == 32 && c.accused.len() == 32 && s.from != c.accused {
                        d.push(WireError {
                            field: "complaints.share.from",
                            reason: Reason::Mismatch("complaints.accused"),
                        });
                    }
                }
            }
            length(&mut d, "complaints.shared_key", &c.shared_key, 32);
            length(&mut d, "complaints.proof", &c.proof, 96);
        }
        length(&mut d, "signature", &self.signature, 64);
        d
    }
}

impl Spec for v1::ComplaintsResponse {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        round(&mut d, self.round.as_ref());
        d
    }
}

impl Spec for v1::MaskedInputChunk {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        round(&mut d, self.round.as_ref());
        d
    }
}

impl Spec for v1::UploadMaskedInputResponse {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        round(&mut d, self.round.as_ref());
        d
    }
}

impl Spec for v1::ConsistencyCheckRequest {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        round(&mut d, self.round.as_ref());
        length(&mut d, "signature", &self.signature, 64);
        d
    }
}

impl Spec for v1::ConsistencyCheckResponse {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        round(&mut d, self.round.as_ref());
        for s in &self.signatures {
            length(&mut d, "signatures.client_id", &s.client_id, 32);
            chain(&mut d, "signatures.certificate_chain", &s.certificate_chain);
            length(&mut d, "signatures.signature", &s.signature, 64);
        }
        d
    }
}

impl Spec for v1::UnmaskRequest {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        round(&mut d, self.round.as_ref());
        for s in &self.self_mask_shares {
            length(&mut d, "self_mask_shares.owner", &s.owner, 32);
            length(&mut d, "self_mask_shares.share", &s.share, 32);
        }
        for s in &self.mask_key_shares {
            length(&mut d, "mask_key_shares.owner", &s.owner, 32);
            length(&mut d, "mask_key_shares.share", &s.share, 32);
        }
        d
    }
}

impl Spec for v1::RoundPlan {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        if self.quant.is_none() {
            d.push(WireError { field: "plan.quant", reason: Reason::Missing });
        }
        length(&mut d, "plan.task_id", &self.task_id, 16);
        length(&mut d, "plan.attempt", &self.attempt, 16);
        for s in &self.selected {
            length(&mut d, "plan.selected", s, 32);
        }
        // A plan names its graph and adversary: unspecified (0) is a defect too.
        if !(1..=2).contains(&self.graph) {
            d.push(WireError { field: "plan.graph", reason: Reason::UnknownValue(self.graph) });
        }
        if !(1..=3).contains(&self.adversary) {
            let reason = Reason::UnknownValue(self.adversary);
            d.push(WireError { field: "plan.adversary", reason });
        }
        length(&mut d, "plan.graph_seed", &self.graph_seed, 32);
        length(&mut d, "plan.checkpoint_sha256", &self.checkpoint_sha256, 32);
        if self.phase_deadline_ms.len() != 6 {
            let reason = Reason::Count { got: self.phase_deadline_ms.len(), expected: 6 };
            d.push(WireError { field: "plan.phase_deadline_ms", reason });
        }
        if self.upload_chunk_words == 0 {
            let reason = Reason::OutOfRange(0);
            d.push(WireError { field: "plan.upload_chunk_words", reason });
        }
        d
    }
}

impl Spec for v1::CheckpointManifest {
    fn defects(&self) -> Vec<WireError> {
        let mut d = Vec::new();
        length(&mut d, "manifest.sha256", &self.sha256, 32);
        length(&mut d, "manifest.task_id", &self.task_id, 16);
        length(&mut d, "manifest.signature", &self.signature, 64);
        d
    }
}

/// A refusal names its field, and the field is one of the message's defects.
pub fn refused(e: &WireError, defects: &[WireError]) -> Result<(), TestCaseError> {
    prop_assert!(!e.field.is_empty());
    prop_assert!(e.to_string().contains(e.field), "{e} does not name its field");
    prop_assert!(defects.contains(e), "{e:?} is none of the defects {defects:?}");
    Ok(())
}

/// A phase message's decoder accepts `proto` exactly when it has no defect, as a value that
/// encodes back to `proto`; it refuses it naming one of its defects otherwise.
pub fn judge_phase<M>(proto: &M::Proto) -> Result<(), TestCaseError>
where
    M: PhaseMessage + PartialEq + Debug,
    M::Proto: Framed,
{
    let peer = ClientId([0xee; 32]);
    let defects = proto.defects();
    match M::from_wire(proto, peer) {
        Ok(m) => {
            prop_assert!(defects.is_empty(), "accepted despite {defects:?}");
            let key = RoundKey::from_ref(proto.round());
            prop_assert!(key.is_ok(), "accepted with a malformed round: {key:?}");
            let again = m.to_wire(&key.unwrap());
            prop_assert_eq!(&again, proto);
            let twice = M::from_wire(&again, peer);
            prop_assert_eq!(twice.as_ref(), Ok(&m));
        }
        Err(e) => refused(&e, &defects)?,
    }
    Ok(())
}

/// The same for a message with a wire form of its own ([`Wire`]). Compared as encoded bytes:
/// a plan's floats may be NaN, which equals nothing, itself included.
pub fn judge_wire<W: Wire>(proto: &W::Proto) -> Result<(), TestCaseError>
where
    W::Proto: Spec,
{
    let defects = proto.defects();
    match W::from_wire(proto) {
        Ok(w) => {
            prop_assert!(defects.is_empty(), "accepted despite {defects:?}");
            let again = w.to_wire();
            prop_assert_eq!(again.encode_to_vec(), proto.encode_to_vec());
            match W::from_wire(&again) {
                Ok(twice) => {
                    prop_assert_eq!(twice.to_wire().encode_to_vec(), proto.encode_to_vec())
                }
                Err(e) => prop_assert!(false, "its own encoding is refused: {e}"),
            }
        }
        Err(e) => refused(&e, &defects)?,
    }
    Ok(())
}

/// A round reference, as every phase message carries it.
pub fn judge_round_ref(r: &v1::RoundRef) -> Result<(), TestCaseError> {
    let defects = r.defects();
    match RoundKey::from_ref(Some(r)) {
        Ok(key) => {
            prop_assert!(defects.is_empty(), "accepted despite {defects:?}");
            prop_assert_eq!(&key.to_wire(), r);
        }
        Err(e) => refused(&e, &defects)?,
    }
    Ok(())
}

/// `bytes`, if they decode as a `P`, judged by `judge`. What prost refuses is prost's refusal.
pub fn decoded<P: Message + Default>(
    bytes: &[u8],
    judge: fn(&P) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    match P::decode(bytes) {
        Ok(p) => judge(&p),
        Err(_) => Ok(()),
    }
}
