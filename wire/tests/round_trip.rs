//! Every conversion, both ways: core → wire → core is the identity, for any message; and a
//! malformed field is refused with an error that names it.

use std::time::Duration;

use fedsec_crypto::quant::QuantParams;
use fedsec_crypto::secagg::commitments::{Dealt, Entry};
use fedsec_crypto::secagg::messages::*;
use fedsec_crypto::{
    AdversaryClass, AttemptNonce, CheckpointHash, ClientId, GraphKind, PROTOCOL_VERSION,
    RoundContext, RoundId, RoundPlan, TaskId,
};
use fedsec_wire::checkpoint::{Manifest, SignedManifest};
use fedsec_wire::{Assignment, PhaseMessage, Reason, RoundKey, Wire, WireError, v1};
use proptest::prelude::*;

mod common;
use common::*;

/// `m` survives the trip through its wire form and back, decoded by `peer`.
fn trip<M: PhaseMessage + PartialEq + std::fmt::Debug>(m: &M, key: &RoundKey, peer: ClientId) {
    let wire = m.to_wire(key);
    // The encoded bytes decode to the same wire message.
    let bytes = prost::Message::encode_to_vec(&wire);
    let again = <M::Proto as prost::Message>::decode(bytes.as_slice()).unwrap();
    assert_eq!(&M::from_wire(&again, peer).unwrap(), m);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn phase_0_messages(key in key(), me in id(), adverts in prop::collection::vec(advert(RoundContext([0; 32])), 0..4), mine in advert(RoundContext([0; 32]))) {
        let mine = AdvertiseKeys { ctx: key.ctx, client: me, ..mine };
        trip(&mine, &key, me);
        let adverts = adverts.into_iter().map(|a| AdvertiseKeys { ctx: key.ctx, ..a }).collect();
        trip(&KeysForward { version: PROTOCOL_VERSION, ctx: key.ctx, recipient: me, adverts }, &key, me);
    }

    #[test]
    fn phase_1_messages(
        key in key(),
        me in id(),
        to in prop::collection::vec((id(), prop::collection::vec(any::<u8>(), 0..100)), 0..5),
        entries in prop::collection::vec(prop::collection::vec(any::<u8>(), 128), 0..5),
        sig in sig(),
        places in prop::collection::vec((any::<u32>(), any::<u32>(), prop::collection::vec(any::<[u8; 32]>(), 0..8)), 5),
    ) {
        let entries: Vec<Entry> = entries.into_iter().map(|e| Entry(e.try_into().unwrap())).collect();
        let shares = to.iter().map(|(to, ciphertext)| EncryptedShares { to: *to, ciphertext: ciphertext.clone() }).collect();
        trip(&ShareKeys { version: PROTOCOL_VERSION, ctx: key.ctx, client: me, shares, entries, root_signature: sig }, &key, me);
        let shares = to
            .into_iter()
            .zip(places)
            .map(|((from, ciphertext), (index, size, path))| ForwardedShares {
                from,
                dealt: Dealt {
                    entry: Entry([index as u8; 128]),
                    index,
                    size,
                    path,
                    signature: sig.0,
                    ciphertext,
                },
            })
            .collect();
        trip(&SharesForward { version: PROTOCOL_VERSION, ctx: key.ctx, recipient: me, shares }, &key, me);
    }

    #[test]
    fn phase_2_messages(key in key(), me in id(), words in prop::collection::vec(any::<u32>(), 1..200), chunk in 1usize..50, bitmap in prop::collection::vec(any::<u8>(), 0..20)) {
        let data: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let y = MaskedInput { version: PROTOCOL_VERSION, ctx: key.ctx, client: me, offset: 0, data };
        trip(&y, &key, me);
        // The chunks cover the input in order, and reassemble to it.
        let chunks = fedsec_wire::chunks(&key, &y, chunk);
        prop_assert_eq!(chunks.len(), words.len().div_ceil(chunk));
        let mut joined = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let back = MaskedInput::from_wire(c, me).unwrap();
            prop_assert_eq!(back.offset as usize, i * chunk);
            joined.extend(back.data);
        }
        prop_assert_eq!(joined, y.data);
        trip(&ConsistencyRequest { version: PROTOCOL_VERSION, ctx: key.ctx, survivors: Survivors(bitmap.clone()), excluded: Survivors(bitmap.iter().map(|b| !b).collect()) }, &key, me);
    }

    #[test]
    fn phase_1_and_a_half_messages(key in key(), me in id(), s in sig(), complaints in prop::collection::vec((id(), prop::collection::vec(any::<u8>(), 0..100), any::<u32>(), any::<u32>(), prop::collection::vec(any::<[u8; 32]>(), 0..4), any::<[u8; 32]>(), prop::collection::vec(any::<u8>(), 96)), 0..4), bitmap in prop::collection::vec(any::<u8>(), 0..20)) {
        let complaints = complaints
            .into_iter()
            .map(|(accused, ciphertext, index, size, path, shared, proof)| Complaint {
                accused,
                dealt: Dealt { entry: Entry([index as u8; 128]), index, size, path, signature: s.0, ciphertext },
                shared,
                proof: fedsec_crypto::proofs::ComplaintProof(proof.try_into().unwrap()),
            })
            .collect();
        trip(&Complaints { version: PROTOCOL_VERSION, ctx: key.ctx, client: me, complaints, signature: s }, &key, me);
        trip(&Exclusions { version: PROTOCOL_VERSION, ctx: key.ctx, excluded: Survivors(bitmap) }, &key, me);
    }

    #[test]
    fn phase_3_and_4_messages(key in key(), me in id(), s in sig(), signers in prop::collection::vec((id(), credential(), sig()), 0..5), bitmap in prop::collection::vec(any::<u8>(), 0..20), b in revealed(), m in revealed()) {
        trip(&ConsistencySignature { version: PROTOCOL_VERSION, ctx: key.ctx, client: me, signature: s }, &key, me);
        let signatures = signers.into_iter().map(|(client, credential, signature)| SignedSurvivors { client, credential, signature }).collect();
        trip(&UnmaskingRequest { version: PROTOCOL_VERSION, ctx: key.ctx, survivors: Survivors(bitmap), signatures }, &key, me);
        trip(&UnmaskingResponse { version: PROTOCOL_VERSION, ctx: key.ctx, client: me, self_mask_shares: b, mask_key_shares: m }, &key, me);
    }

    #[test]
    fn plans(key in key(), selected in prop::collection::vec(id(), 0..8), seed in bytes32(), checkpoint in bytes32(), numbers in any::<[u32; 5]>(), complete in any::<bool>(), class in 0usize..3, scales in (-1e9f64..1e9, -1e9f64..1e9, -1e9f64..1e9, any::<u64>()), version in any::<u64>(), chunk in 1u32.., ms in any::<[u32; 6]>()) {
        let a = Assignment {
            plan: std::sync::Arc::new(RoundPlan {
                version: numbers[0],
                task_id: key.task,
                round_id: key.round,
                attempt: key.attempt,
                selected,
                graph: if complete { GraphKind::Complete } else { GraphKind::Harary },
                degree: numbers[1],
                threshold: numbers[2],
                dropout_ppm: numbers[3],
                corrupt_ppm: numbers[4],
                adversary: [AdversaryClass::Curious, AdversaryClass::SemiMalicious, AdversaryClass::Malicious][class],
                graph_seed: seed,
                dim: numbers[0] ^ numbers[1],
                quant: QuantParams { clip: scales.0, value_scale: scales.1, weight_scale: scales.2, max_examples: scales.3 },
                checkpoint: CheckpointHash(checkpoint),
                cert_time: 1_790_000_000,
            }),
            checkpoint_version: version,
            upload_chunk_words: chunk,
            phase_deadlines: ms.map(|m| Duration::from_millis(u64::from(m))),
        };
        let back = Assignment::from_wire(&a.to_wire()).unwrap();
        prop_assert_eq!(back.key(), RoundKey::of(&a.plan));
        prop_assert_eq!(back, a);
    }

    #[test]
    fn manifests(v in any::<(u64, u64, u64)>(), sha in bytes32(), task in any::<[u8; 16]>(), summary in ".{0,40}", s in sig()) {
        let m = SignedManifest {
            manifest: Manifest { version: v.0, parent_version: v.1, sha256: CheckpointHash(sha), size_bytes: v.2, task_id: TaskId(task), round_summary: summary },
            signature: s.0,
        };
        prop_assert_eq!(SignedManifest::from_wire(&m.to_wire()).unwrap(), m);
    }

    #[test]
    fn round_keys(key in key()) {
        prop_assert_eq!(RoundKey::from_ref(Some(&key.to_wire())).unwrap(), key);
    }
}

#[test]
fn malformed_fields_are_named() {
    let key = RoundKey {
        task: TaskId([1; 16]),
        round: RoundId(2),
        attempt: AttemptNonce([3; 16]),
        ctx: RoundContext([4; 32]),
    };
    let me = ClientId([5; 32]);
    let err = |field, reason| WireError { field, reason };

    let mut req = ConsistencySignature {
        version: PROTOCOL_VERSION,
        ctx: key.ctx,
        client: me,
        signature: Sig([6; 64]),
    }
    .to_wire(&key);
    req.signature.pop();
    assert_eq!(
        ConsistencySignature::from_wire(&req, me),
        Err(err("signature", Reason::Length { got: 63, expected: 64 }))
    );
    req.round = None;
    assert_eq!(ConsistencySignature::from_wire(&req, me), Err(err("round", Reason::Missing)));

    let advert = v1::AdvertiseKeysRequest { round: Some(key.to_wire()), ..Default::default() };
    assert_eq!(AdvertiseKeys::from_wire(&advert, me), Err(err("certificate_chain", Reason::Empty)));

    let mut plan = v1::RoundPlan {
        task_id: vec![0; 16],
        attempt: vec![0; 16],
        graph: v1::GraphKind::Harary as i32,
        adversary: v1::AdversaryClass::SemiMalicious as i32,
        graph_seed: vec![0; 32],
        quant: Some(v1::QuantParams::default()),
        checkpoint_sha256: vec![0; 32],
        upload_chunk_words: 1,
        phase_deadline_ms: vec![1; 6],
        ..Default::default()
    };
    assert!(Assignment::from_wire(&plan).is_ok());
    // An unspecified graph or class is refused in a plan: the client never guesses.
    plan.graph = v1::GraphKind::Unspecified as i32;
    assert_eq!(Assignment::from_wire(&plan), Err(err("plan.graph", Reason::UnknownValue(0))));
    plan.graph = 77;
    assert_eq!(Assignment::from_wire(&plan), Err(err("plan.graph", Reason::UnknownValue(77))));
    plan.graph = v1::GraphKind::Complete as i32;
    plan.phase_deadline_ms.pop();
    assert_eq!(
        Assignment::from_wire(&plan),
        Err(err("plan.phase_deadline_ms", Reason::Count { got: 5, expected: 6 }))
    );
    plan.phase_deadline_ms.push(1);
    plan.upload_chunk_words = 0;
    assert_eq!(
        Assignment::from_wire(&plan),
        Err(err("plan.upload_chunk_words", Reason::OutOfRange(0)))
    );
    plan.upload_chunk_words = 1;
    plan.quant = None;
    assert_eq!(Assignment::from_wire(&plan), Err(err("plan.quant", Reason::Missing)));
}
