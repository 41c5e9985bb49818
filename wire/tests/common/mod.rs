//! Strategies for core messages, shared by the round-trip and the fuzz tests.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use fedsec_crypto::proofs::KeyProof;
use fedsec_crypto::secagg::messages::{AdvertiseKeys, RevealedShare, Sig};
use fedsec_crypto::{AttemptNonce, ClientId, PROTOCOL_VERSION, RoundContext, RoundId, TaskId};
use fedsec_wire::RoundKey;
use fedsec_wire::x509::encode_chain;
use proptest::prelude::*;

pub fn bytes32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

pub fn id() -> impl Strategy<Value = ClientId> {
    bytes32().prop_map(ClientId)
}

pub fn sig() -> impl Strategy<Value = Sig> {
    prop::collection::vec(any::<u8>(), 64).prop_map(|v| Sig(v.try_into().unwrap()))
}

pub fn key() -> impl Strategy<Value = RoundKey> {
    (any::<[u8; 16]>(), any::<u64>(), any::<[u8; 16]>(), bytes32()).prop_map(|(t, r, a, c)| {
        RoundKey {
            task: TaskId(t),
            round: RoundId(r),
            attempt: AttemptNonce(a),
            ctx: RoundContext(c),
        }
    })
}

/// A certificate chain of one to three certificates, encoded as the core keeps it.
pub fn credential() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 1..64), 1..4)
        .prop_map(|chain| encode_chain(&chain))
}

pub fn advert(ctx: RoundContext) -> impl Strategy<Value = AdvertiseKeys> {
    (id(), credential(), (bytes32(), bytes32(), bytes32()), (sig(), sig()), sig()).prop_map(
        move |(client, credential, (enc_pk, mask_pk, self_mask_commitment), proofs, signature)| {
            AdvertiseKeys {
                version: PROTOCOL_VERSION,
                ctx,
                client,
                credential,
                enc_pk,
                mask_pk,
                self_mask_commitment,
                enc_pk_proof: KeyProof(proofs.0.0),
                mask_pk_proof: KeyProof(proofs.1.0),
                signature,
            }
        },
    )
}

pub fn revealed() -> impl Strategy<Value = Vec<RevealedShare>> {
    prop::collection::vec(
        (id(), bytes32()).prop_map(|(owner, share)| RevealedShare { owner, share }),
        0..5,
    )
}
