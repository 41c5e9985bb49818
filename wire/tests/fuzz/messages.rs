//! The phase messages, plans, manifests' wire form, round references, enums and chunks: messages
//! generated field by field, each field now and then of the wrong shape, and protobuf field
//! soup, all judged against their `Spec` (see `spec`).

use fedsec_crypto::PROTOCOL_VERSION;
use fedsec_crypto::secagg::messages::{
    AdvertiseKeys, Complaints, ConsistencyRequest, ConsistencySignature, Exclusions, KeysForward,
    MaskedInput, ShareKeys, SharesForward, UnmaskingRequest, UnmaskingResponse,
};
use fedsec_wire::checkpoint::SignedManifest;
use fedsec_wire::x509::{MAX_CERT_LEN, MAX_CHAIN_CERTS};
use fedsec_wire::{
    Assignment, PhaseMessage, Reason, RoundKey, WireError, adversary_from_wire, adversary_to_wire,
    graph_from_wire, graph_to_wire, task_id, v1,
};
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;

use crate::cases;
use crate::common::{id, key};
use crate::spec::{decoded, judge_phase, judge_round_ref, judge_wire, length, refused};

/// `n` bytes mostly; now and then any other number of them (or `n` again, by chance).
fn sized(n: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![10 => vec(any::<u8>(), n), 1 => vec(any::<u8>(), 0..=2 * n + 1)]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn round_ref() -> impl Strategy<Value = v1::RoundRef> {
    (sized(16), any::<u64>(), sized(16), sized(32)).prop_map(
        |(task_id, round_id, attempt, context)| v1::RoundRef {
            task_id,
            round_id,
            attempt,
            context,
        },
    )
}

fn some_round() -> impl Strategy<Value = Option<v1::RoundRef>> {
    prop_oneof![12 => round_ref().prop_map(Some), 1 => Just(None)]
}

/// Certificate chains as a peer may send them: mostly one to three short certificates; now and
/// then none, many tiny or empty ones (past [`MAX_CHAIN_CERTS`]), or one about
/// [`MAX_CERT_LEN`] long. The wire carries them all; the bounds are the verifier's to enforce.
fn certificate_chain() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop_oneof![
        12 => vec(vec(any::<u8>(), 1..40), 1..4),
        1 => Just(Vec::new()),
        1 => vec(vec(any::<u8>(), 0..3), 1..2 * MAX_CHAIN_CERTS),
        1 => (any::<u8>(), MAX_CERT_LEN - 1..=MAX_CERT_LEN + 1).prop_map(|(b, n)| vec![vec![b; n]]),
    ]
}

fn advertise_keys_request() -> impl Strategy<Value = v1::AdvertiseKeysRequest> {
    (
        some_round(),
        certificate_chain(),
        (sized(32), sized(32), sized(32)),
        (sized(64), sized(64)),
        sized(64),
    )
        .prop_map(
            |(
                round,
                certificate_chain,
                (enc_pk, mask_pk, self_mask_commitment),
                proofs,
                signature,
            )| {
                v1::AdvertiseKeysRequest {
                    round,
                    certificate_chain,
                    enc_pk,
                    mask_pk,
                    self_mask_commitment,
                    signature,
                    enc_pk_proof: proofs.0,
                    mask_pk_proof: proofs.1,
                }
            },
        )
}

fn advertise_keys_response() -> impl Strategy<Value = v1::AdvertiseKeysResponse> {
    let advert =
        (sized(32), advertise_keys_request()).prop_map(|(client_id, r)| v1::Advertisement {
            client_id,
            certificate_chain: r.certificate_chain,
            enc_pk: r.enc_pk,
            mask_pk: r.mask_pk,
            self_mask_commitment: r.self_mask_commitment,
            signature: r.signature,
            enc_pk_proof: r.enc_pk_proof,
            mask_pk_proof: r.mask_pk_proof,
        });
    (some_round(), vec(advert, 0..4))
        .prop_map(|(round, adverts)| v1::AdvertiseKeysResponse { round, adverts })
}

fn share_keys() -> impl Strategy<Value = (v1::ShareKeysRequest, v1::ShareKeysResponse)> {
    let forwarded =
        (sized(32), bytes(100), sized(128), any::<(u32, u32)>(), vec(sized(32), 0..6), sized(64))
            .prop_map(|(from, ciphertext, entry, (index, size), path, signature)| {
                v1::ForwardedShares { from, ciphertext, entry, index, size, path, signature }
            });
    (
        some_round(),
        vec((sized(32), bytes(100)), 0..5),
        vec(sized(128), 0..5),
        sized(64),
        vec(forwarded, 0..5),
    )
        .prop_map(|(round, shares, entries, root_signature, forwarded)| {
            let request = v1::ShareKeysRequest {
                round: round.clone(),
                shares: (shares.iter())
                    .map(|(to, c)| v1::EncryptedShares { to: to.clone(), ciphertext: c.clone() })
                    .collect(),
                entries,
                root_signature,
            };
            (request, v1::ShareKeysResponse { round, shares: forwarded })
        })
}

fn complaints_request() -> impl Strategy<Value = v1::ComplaintsRequest> {
    let id = vec(any::<u8>(), 32);
    let forwarded = (
        prop::option::weighted(0.9, id.clone()),
        bytes(100),
        sized(128),
        any::<(u32, u32)>(),
        vec(sized(32), 0..6),
        sized(64),
    );
    let complaint = (
        prop::option::weighted(0.95, id),
        prop::option::weighted(0.95, forwarded),
        sized(32),
        sized(96),
    )
        .prop_map(|(accused, share, shared_key, proof)| {
            let accused = accused.unwrap_or_else(|| vec![0; 31]);
            let share = share.map(|(from, ciphertext, entry, (index, size), path, signature)| {
                // Mostly the accused's own share; sometimes another dealer's.
                let from = if from.is_some() { accused.clone() } else { vec![9; 32] };
                v1::ForwardedShares { from, ciphertext, entry, index, size, path, signature }
            });
            v1::Complaint { accused, share, shared_key, proof }
        });
    (some_round(), vec(complaint, 0..4), sized(64)).prop_map(|(round, complaints, signature)| {
        v1::ComplaintsRequest { round, complaints, signature }
    })
}

fn consistency_check_response() -> impl Strategy<Value = v1::ConsistencyCheckResponse> {
    let signed = (sized(32), certificate_chain(), sized(64)).prop_map(
        |(client_id, certificate_chain, signature)| v1::SignedSurvivors {
            client_id,
            certificate_chain,
            signature,
        },
    );
    (some_round(), bytes(20), vec(signed, 0..4)).prop_map(|(round, survivors, signatures)| {
        v1::ConsistencyCheckResponse { round, survivors, signatures }
    })
}

fn revealed_share() -> impl Strategy<Value = v1::RevealedShare> {
    (sized(32), sized(32)).prop_map(|(owner, share)| v1::RevealedShare { owner, share })
}

fn unmask_request() -> impl Strategy<Value = v1::UnmaskRequest> {
    (some_round(), vec(revealed_share(), 0..4), vec(revealed_share(), 0..4)).prop_map(
        |(round, self_mask_shares, mask_key_shares)| v1::UnmaskRequest {
            round,
            self_mask_shares,
            mask_key_shares,
        },
    )
}

/// An enum field of a plan: mostly a value the schema names, now and then unspecified or any.
fn named(max: i32) -> impl Strategy<Value = i32> {
    prop_oneof![12 => 1..=max, 1 => Just(0), 1 => any::<i32>()]
}

/// Any f64 bit pattern, NaNs included.
fn float() -> impl Strategy<Value = f64> {
    any::<u64>().prop_map(f64::from_bits)
}

fn round_plan() -> impl Strategy<Value = v1::RoundPlan> {
    let ids = (sized(16), sized(16), vec(sized(32), 0..6), sized(32), sized(32));
    let numbers = (any::<[u32; 6]>(), any::<[u64; 2]>(), any::<u64>());
    let quant = (float(), float(), float(), any::<u64>()).prop_map(|(c, v, w, m)| {
        v1::QuantParams { clip: c, value_scale: v, weight_scale: w, max_examples: m }
    });
    let chunk = prop_oneof![10 => 1..=u32::MAX, 1 => Just(0)];
    let deadlines = prop_oneof![10 => vec(any::<u32>(), 6), 1 => vec(any::<u32>(), 0..8)];
    let shape = (named(2), named(3), prop::option::weighted(0.95, quant), chunk, deadlines);
    (ids, numbers, shape).prop_map(|(ids, numbers, shape)| {
        let (task_id, attempt, selected, graph_seed, checkpoint_sha256) = ids;
        let (
            [version, degree, threshold, dropout_ppm, corrupt_ppm, dim],
            [round_id, cert_time],
            checkpoint,
        ) = numbers;
        let (graph, adversary, quant, upload_chunk_words, phase_deadline_ms) = shape;
        v1::RoundPlan {
            version,
            task_id,
            round_id,
            attempt,
            selected,
            graph,
            degree,
            threshold,
            dropout_ppm,
            corrupt_ppm,
            adversary,
            graph_seed,
            dim,
            quant,
            checkpoint_sha256,
            checkpoint_version: checkpoint,
            upload_chunk_words,
            phase_deadline_ms,
            cert_time,
        }
    })
}

fn checkpoint_manifest() -> impl Strategy<Value = v1::CheckpointManifest> {
    (any::<[u64; 3]>(), sized(32), sized(16), ".{0,40}", sized(64)).prop_map(
        |([version, parent_version, size_bytes], sha256, task_id, round_summary, signature)| {
            v1::CheckpointManifest {
                version,
                parent_version,
                sha256,
                size_bytes,
                task_id,
                round_summary,
                signature,
            }
        },
    )
}

/// A protobuf value of each wire type.
#[derive(Debug, Clone)]
enum Value {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(Vec<u8>),
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Protobuf field soup: fields 1 to 20 (mostly 1 to 6) of every wire type, in any order and
/// number; length-delimited payloads are random bytes, the sizes of fixed-size fields, or
/// `inner`.
fn field_soup(inner: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let payload = prop_oneof![
        bytes(40),
        prop::sample::select(vec![16usize, 32, 64]).prop_flat_map(|n| vec(any::<u8>(), n)),
        inner,
    ];
    let value = prop_oneof![
        2 => prop_oneof![0..8u64, any::<u64>()].prop_map(Value::Varint),
        1 => any::<u64>().prop_map(Value::Fixed64),
        1 => any::<u32>().prop_map(Value::Fixed32),
        4 => payload.prop_map(Value::Bytes),
    ];
    let field = prop_oneof![3 => 1..=6u64, 1 => 1..=20u64];
    vec((field, value), 0..8).prop_map(|fields| {
        let mut out = Vec::new();
        for (field, value) in fields {
            match value {
                Value::Varint(v) => {
                    varint(field << 3, &mut out);
                    varint(v, &mut out);
                }
                Value::Fixed64(v) => {
                    varint(field << 3 | 1, &mut out);
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Value::Bytes(b) => {
                    varint(field << 3 | 2, &mut out);
                    varint(b.len() as u64, &mut out);
                    out.extend_from_slice(&b);
                }
                Value::Fixed32(v) => {
                    varint(field << 3 | 5, &mut out);
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        out
    })
}

/// Field soup two levels deep (a message of messages), or plain random bytes.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let inner = field_soup(bytes(40).boxed()).boxed();
    prop_oneof![4 => field_soup(inner), 1 => bytes(200)]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_bytes_decode_to_messages_that_encode_back_or_are_refused_naming_a_defect(bytes in wire_bytes()) {
        decoded(&bytes, judge_phase::<AdvertiseKeys>)?;
        decoded(&bytes, judge_phase::<KeysForward>)?;
        decoded(&bytes, judge_phase::<ShareKeys>)?;
        decoded(&bytes, judge_phase::<SharesForward>)?;
        decoded(&bytes, judge_phase::<Complaints>)?;
        decoded(&bytes, judge_phase::<Exclusions>)?;
        decoded(&bytes, judge_phase::<MaskedInput>)?;
        decoded(&bytes, judge_phase::<ConsistencyRequest>)?;
        decoded(&bytes, judge_phase::<ConsistencySignature>)?;
        decoded(&bytes, judge_phase::<UnmaskingRequest>)?;
        decoded(&bytes, judge_phase::<UnmaskingResponse>)?;
        decoded(&bytes, judge_wire::<Assignment>)?;
        decoded(&bytes, judge_wire::<SignedManifest>)?;
        decoded(&bytes, judge_round_ref)?;
    }

    #[test]
    fn phase_0_messages_are_accepted_exactly_when_every_field_has_its_shape(req in advertise_keys_request(), resp in advertise_keys_response()) {
        judge_phase::<AdvertiseKeys>(&req)?;
        judge_phase::<KeysForward>(&resp)?;
    }

    #[test]
    fn phase_1_messages_are_accepted_exactly_when_every_field_has_its_shape((req, resp) in share_keys()) {
        judge_phase::<ShareKeys>(&req)?;
        judge_phase::<SharesForward>(&resp)?;
    }

    #[test]
    fn phase_1_and_a_half_messages_are_accepted_exactly_when_every_field_has_its_shape(req in complaints_request(), round in some_round(), excluded in bytes(16)) {
        judge_phase::<Complaints>(&req)?;
        judge_phase::<Exclusions>(&v1::ComplaintsResponse { round, excluded })?;
    }

    #[test]
    fn phase_2_and_3_messages_are_accepted_exactly_when_every_field_has_its_shape(round in some_round(), offset in any::<u32>(), data in bytes(64), signature in sized(64), resp in consistency_check_response()) {
        judge_phase::<MaskedInput>(&v1::MaskedInputChunk { round: round.clone(), offset, data: data.clone() })?;
        judge_phase::<ConsistencyRequest>(&v1::UploadMaskedInputResponse { round: round.clone(), survivors: data.clone(), excluded: data })?;
        judge_phase::<ConsistencySignature>(&v1::ConsistencyCheckRequest { round, signature })?;
        judge_phase::<UnmaskingRequest>(&resp)?;
    }

    #[test]
    fn phase_4_messages_are_accepted_exactly_when_every_field_has_its_shape(req in unmask_request()) {
        judge_phase::<UnmaskingResponse>(&req)?;
    }

    #[test]
    fn plans_are_accepted_exactly_when_every_field_has_its_shape(plan in round_plan()) {
        judge_wire::<Assignment>(&plan)?;
    }

    #[test]
    fn manifests_and_round_references_are_accepted_exactly_when_their_ids_have_their_lengths(manifest in checkpoint_manifest(), r in round_ref()) {
        judge_wire::<SignedManifest>(&manifest)?;
        judge_round_ref(&r)?;
    }

    #[test]
    fn every_enum_value_is_a_known_one_unspecified_or_refused_naming_its_field(value in prop_oneof![-2..6i32, any::<i32>()], id in sized(16)) {
        let unknown = WireError { field: "graph", reason: Reason::UnknownValue(value) };
        match graph_from_wire("graph", value) {
            Ok(Some(g)) => prop_assert_eq!(graph_to_wire(g) as i32, value),
            Ok(None) => prop_assert_eq!(value, 0),
            Err(e) => {
                prop_assert!(!(0..=2).contains(&value));
                prop_assert_eq!(e, unknown);
            }
        }
        let unknown = WireError { field: "adversary", reason: Reason::UnknownValue(value) };
        match adversary_from_wire("adversary", value) {
            Ok(Some(a)) => prop_assert_eq!(adversary_to_wire(a) as i32, value),
            Ok(None) => prop_assert_eq!(value, 0),
            Err(e) => {
                prop_assert!(!(0..=3).contains(&value));
                prop_assert_eq!(e, unknown);
            }
        }
        let mut defects = Vec::new();
        length(&mut defects, "task_id", &id, 16);
        match task_id(&id) {
            Ok(task) => prop_assert_eq!(&task.0[..], &id[..]),
            Err(e) => refused(&e, &defects)?,
        }
    }

    #[test]
    fn chunks_of_any_masked_input_decode_and_reassemble_to_it_in_order(key in key(), me in id(), data in bytes(300), chunk_words in prop_oneof![1..8usize, 1..=u32::MAX as usize]) {
        let y = MaskedInput { version: PROTOCOL_VERSION, ctx: key.ctx, client: me, offset: 0, data };
        let chunks = fedsec_wire::chunks(&key, &y, chunk_words);
        let step = 4 * chunk_words;
        prop_assert_eq!(chunks.len(), y.data.len().div_ceil(step));
        let mut joined = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let wire = v1::MaskedInputChunk::decode(chunk.encode_to_vec().as_slice());
            prop_assert_eq!(wire.as_ref(), Ok(chunk));
            prop_assert_eq!(RoundKey::from_ref(chunk.round.as_ref()), Ok(key));
            let back = MaskedInput::from_wire(chunk, me);
            prop_assert!(back.is_ok(), "a chunk is refused: {back:?}");
            let back = back.unwrap();
            prop_assert_eq!((back.ctx, back.client), (key.ctx, me));
            prop_assert_eq!(back.offset as usize, i * chunk_words);
            // Every chunk is full but the last, which is not empty.
            let full = if i + 1 < chunks.len() { step } else { y.data.len() - i * step };
            prop_assert_eq!(back.data.len(), full);
            prop_assert!(full > 0);
            joined.extend(back.data);
        }
        prop_assert_eq!(joined, y.data);
    }
}
