//! Checkpoint manifests (their wire bytes, their JSON form, their signature) and model files.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use fedsec_crypto::{CheckpointHash, TaskId};
use fedsec_wire::Wire;
use fedsec_wire::checkpoint::{CheckpointError, Manifest, SignedManifest};
use fedsec_wire::model::{Model, ModelError, Tensor};
use fedsec_wire::v1;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use prost::Message;

use crate::common::bytes32;
use crate::{apply, cases, edits};

fn coordinator() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// Any manifest whose parent is older than it (version 0 is its own parent).
fn manifest() -> impl Strategy<Value = Manifest> {
    (any::<[u64; 3]>(), bytes32(), any::<[u8; 16]>(), ".{0,30}").prop_map(
        |([version, parent, size_bytes], sha, task, round_summary)| Manifest {
            version,
            parent_version: parent.checked_rem(version).unwrap_or(0),
            sha256: CheckpointHash(sha),
            size_bytes,
            task_id: TaskId(task),
            round_summary,
        },
    )
}

/// `decoded` verifies exactly when it is what was signed; anything else fails the signature.
fn verifies_only_unchanged(
    decoded: &SignedManifest,
    signed: &SignedManifest,
) -> Result<(), TestCaseError> {
    let verdict = decoded.verify(&coordinator().verifying_key());
    if decoded == signed {
        prop_assert_eq!(verdict, Ok(()));
    } else {
        let version = decoded.manifest.version;
        prop_assert_eq!(verdict, Err(CheckpointError::Signature { version }));
    }
    Ok(())
}

/// The hex text of a JSON byte field of `n` bytes: mostly `n` bytes in either case, now and
/// then any text of hex digits and other letters.
fn hex_text(n: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => vec(any::<u8>(), n).prop_map(hex::encode),
        2 => vec(any::<u8>(), n).prop_map(hex::encode_upper),
        1 => prop::string::string_regex(&format!("[0-9a-fA-Fg-zG-Z ]{{0,{}}}", 2 * n + 2))
            .expect("a valid regex"),
    ]
}

/// Hex text of exactly `n` bytes.
fn is_hex_of(text: &str, n: usize) -> bool {
    text.len() == 2 * n && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Finite f32 values of any exponent, negative zero and subnormals included.
fn finite() -> impl Strategy<Value = f32> {
    let finite = any::<u32>().prop_map(|b| {
        let v = f32::from_bits(b);
        // Not finite: the largest exponent; one bit less is a finite value.
        if v.is_finite() { v } else { f32::from_bits(b & !(1 << 23)) }
    });
    prop_oneof![10 => finite, 1 => Just(-0.0f32)]
}

fn tensor() -> impl Strategy<Value = Tensor> {
    vec(0..4usize, 0..3).prop_flat_map(|shape| {
        let n: usize = shape.iter().product();
        vec(finite(), n).prop_map(move |values| {
            Tensor::new(shape.clone(), values).expect("as many values as the shape holds")
        })
    })
}

/// Tensor names: short ASCII, or any printable text (quotes and backslashes included).
fn name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_.]{1,4}", "\\PC{0,4}"]
}

fn model() -> impl Strategy<Value = Model> {
    btree_map(name(), tensor(), 0..4)
        .prop_map(|tensors| tensors.into_iter().fold(Model::new(), |m, (n, t)| m.with(n, t)))
}

/// A model as names, shapes and value bits: what must survive a file bit for bit.
fn bits(m: &Model) -> Vec<(String, Vec<usize>, Vec<u32>)> {
    m.tensors()
        .map(|(n, t)| {
            (n.to_string(), t.shape.clone(), t.values.iter().map(|v| v.to_bits()).collect())
        })
        .collect()
}

/// A model decoded from a file encodes to a file that decodes to it again, bit for bit.
fn encodes_back(m: &Model) -> Result<(), TestCaseError> {
    let bytes = m.to_safetensors();
    prop_assert!(bytes.is_ok(), "a decoded model does not encode: {bytes:?}");
    let again = Model::from_safetensors(&bytes.unwrap());
    prop_assert!(again.is_ok(), "a decoded model's file is refused: {again:?}");
    prop_assert_eq!(bits(&again.unwrap()), bits(m));
    Ok(())
}

/// The dtypes a generated file uses, with their bits per element; "X32" is no dtype at all.
/// Entries name them by their index.
const DTYPES: [(&str, usize); 11] = [
    ("F32", 32),
    ("F16", 16),
    ("BF16", 16),
    ("F64", 64),
    ("I32", 32),
    ("U8", 8),
    ("BOOL", 8),
    ("F4", 4),
    ("F6_E2M3", 6),
    ("I64", 64),
    ("X32", 32),
];
const F32: usize = 0;
const U8: usize = 5;
const NO_DTYPE: usize = 10;

/// A tensor entry of a generated safetensors header, and its data.
#[derive(Debug, Clone)]
struct Entry {
    dtype: usize,
    shape: Vec<usize>,
    offsets: (usize, usize),
    data: Vec<u8>,
}

impl Entry {
    /// Its data's size in bytes by its dtype and shape, `None` if that overflows or is not a
    /// whole number of bytes.
    fn size(&self) -> Option<usize> {
        let elements = self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        let bits = elements.checked_mul(DTYPES[self.dtype].1)?;
        (bits % 8 == 0).then_some(bits / 8)
    }
}

/// The f32 bit patterns of a file's values: mostly any, now and then one that is not finite.
fn value_bits() -> impl Strategy<Value = u32> {
    prop_oneof![
        30 => any::<u32>(),
        1 => prop::sample::select(vec![0x7f80_0000u32, 0xff80_0000, 0x7fc0_0000, 0xffff_ffff]),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    let dtype = prop_oneof![12 => Just(F32), 1 => 0..DTYPES.len()];
    (dtype, vec(0..4usize, 0..3)).prop_flat_map(|(dtype, shape)| {
        let n: usize = shape.iter().product();
        let data = if dtype == F32 {
            vec(value_bits(), n)
                .prop_map(|v| v.iter().flat_map(|b| b.to_le_bytes()).collect())
                .boxed()
        } else {
            vec(any::<u8>(), (n * DTYPES[dtype].1).div_ceil(8)).boxed()
        };
        data.prop_map(move |data| Entry { dtype, shape: shape.clone(), offsets: (0, 0), data })
    })
}

/// Entries whose data together would pass the end of the address space: each as large as a
/// dtype of 8 bits allows, back to back.
fn huge_entries() -> impl Strategy<Value = BTreeMap<String, Entry>> {
    let size = prop_oneof![4 => Just((1usize << 61) - 1), 1 => (1usize << 59)..(1 << 61)];
    vec(size, 1..10).prop_map(|sizes| {
        let mut end = 0usize;
        let mut entries = BTreeMap::new();
        for (i, size) in sizes.into_iter().enumerate() {
            let Some(e) = end.checked_add(size) else { break };
            let entry = Entry { dtype: U8, shape: vec![size], offsets: (end, e), data: Vec::new() };
            entries.insert(format!("h{i}"), entry);
            end = e;
        }
        entries
    })
}

/// How a generated header's offsets disagree with its tensors or its data, if at all.
#[derive(Debug, Clone)]
enum Skew {
    None,
    End(usize, isize),
    Start(usize, isize),
    Swap(usize, usize),
    DataLength(isize),
}

/// A safetensors file as a header's entries, optional metadata, header padding and data;
/// entries laid out back to back in name order, then perhaps skewed.
fn safetensors_file() -> impl Strategy<Value = (BTreeMap<String, Entry>, Vec<u8>, Vec<u8>)> {
    let skew = prop_oneof![
        8 => Just(Skew::None),
        1 => (any::<usize>(), -5..=5isize).prop_map(|(i, d)| Skew::End(i, d)),
        1 => (any::<usize>(), -5..=5isize).prop_map(|(i, d)| Skew::Start(i, d)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Skew::Swap(i, j)),
        1 => (-5..=5isize).prop_map(Skew::DataLength),
    ];
    let laid_out = (btree_map(name(), entry(), 0..4), skew).prop_map(|(mut entries, skew)| {
        let mut data = Vec::new();
        for e in entries.values_mut() {
            e.offsets = (data.len(), data.len() + e.data.len());
            data.extend_from_slice(&e.data);
        }
        let n = entries.len().max(1);
        let mut all: Vec<&mut Entry> = entries.values_mut().collect();
        let moved = |x: usize, d: isize| x.saturating_add_signed(d);
        match skew {
            Skew::None => {}
            Skew::End(i, d) if !all.is_empty() => {
                all[i % n].offsets.1 = moved(all[i % n].offsets.1, d)
            }
            Skew::Start(i, d) if !all.is_empty() => {
                all[i % n].offsets.0 = moved(all[i % n].offsets.0, d)
            }
            Skew::Swap(i, j) if !all.is_empty() => {
                let (a, b) = (all[i % n].offsets, all[j % n].offsets);
                all[i % n].offsets = b;
                all[j % n].offsets = a;
            }
            Skew::DataLength(d) => data.resize(moved(data.len(), d), 0),
            _ => {}
        }
        (entries, data)
    });
    let entries = prop_oneof![12 => laid_out, 1 => huge_entries().prop_map(|e| (e, Vec::new()))];
    let metadata = prop_oneof![
        4 => Just(serde_json::Value::Null),
        1 => btree_map("[a-z]{1,3}", "[a-z]{0,3}", 0..3).prop_map(|m| serde_json::json!(m)),
        1 => Just(serde_json::json!({ "k": 1 })),
    ];
    (entries, metadata, 0..8usize).prop_map(|((entries, data), metadata, pad)| {
        let mut header = serde_json::Map::new();
        if !metadata.is_null() {
            header.insert("__metadata__".into(), metadata);
        }
        for (name, e) in &entries {
            let info = serde_json::json!({
                "dtype": DTYPES[e.dtype].0,
                "shape": e.shape,
                "data_offsets": [e.offsets.0, e.offsets.1],
            });
            header.insert(name.clone(), info);
        }
        let mut header = serde_json::to_vec(&header).expect("JSON of strings and numbers");
        header.resize(header.len() + pad, b' ');
        (entries, header, data)
    })
}

/// What a safetensors file of `entries` and `data` must decode to, from the format's rules:
/// the entries, by their offsets, tile the data exactly, each as long as its dtype and shape
/// make it; then every tensor is f32 and every value finite. `Err(None)`: not a safetensors
/// file; `Err(Some(refusals))`: refused with one of these.
fn expected(
    entries: &BTreeMap<String, Entry>,
    metadata_ok: bool,
    data: &[u8],
) -> Result<Model, Option<Vec<ModelError>>> {
    let mut by_offset: Vec<&Entry> = entries.values().collect();
    by_offset.sort_by_key(|e| e.offsets);
    let mut end = 0;
    for e in &by_offset {
        let (s, t) = e.offsets;
        let fits =
            e.dtype != NO_DTYPE && s == end && e.size().is_some_and(|n| t >= s && t - s == n);
        if !fits {
            return Err(None);
        }
        end = t;
    }
    if end != data.len() || !metadata_ok {
        return Err(None);
    }
    let mut refusals = Vec::new();
    let mut model = Model::new();
    for (name, e) in entries {
        if e.dtype != F32 {
            let dtype = DTYPES[e.dtype].0.to_string();
            refusals.push(ModelError::NotF32 { tensor: name.clone(), dtype });
            continue;
        }
        let bytes = &data[e.offsets.0..e.offsets.1];
        let values: Vec<f32> =
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            let value = values[index];
            refusals.push(ModelError::NotFinite { tensor: name.clone(), index, value });
            continue;
        }
        model.insert(name.clone(), Tensor::new(e.shape.clone(), values).unwrap());
    }
    if refusals.is_empty() { Ok(model) } else { Err(Some(refusals)) }
}

/// Two refusals are the same, a NaN value equal to itself by its bits.
fn same_refusal(a: &ModelError, b: &ModelError) -> bool {
    match (a, b) {
        (
            ModelError::NotFinite { tensor, index, value },
            ModelError::NotFinite { tensor: t, index: i, value: v },
        ) => tensor == t && index == i && value.to_bits() == v.to_bits(),
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn a_signed_manifest_with_any_field_changed_is_refused_by_its_signature(m in manifest(), field in 0..7usize, x in 1..=u64::MAX, at in any::<usize>(), bit in 0..8u32, text in ".{0,8}") {
        let key = coordinator();
        let signed = m.sign(&key);
        prop_assert_eq!(signed.verify(&key.verifying_key()), Ok(()));
        let mut t = signed.clone();
        let c = &mut t.manifest;
        match field {
            0 => c.version ^= x,
            1 => c.parent_version ^= x,
            2 => c.sha256.0[at % 32] ^= 1 << bit,
            3 => c.size_bytes ^= x,
            4 => c.task_id.0[at % 16] ^= 1 << bit,
            5 if text != c.round_summary => c.round_summary = text,
            5 => c.round_summary.push('!'),
            _ => t.signature[at % 64] ^= 1 << bit,
        }
        let refused = CheckpointError::Signature { version: t.manifest.version };
        prop_assert_eq!(t.verify(&key.verifying_key()), Err(refused.clone()));
        // The checkpoint check stops at the signature, whatever the bytes.
        prop_assert_eq!(t.verify_checkpoint(&key.verifying_key(), b"", None), Err(refused));
        // Unchanged, under another key: the signature too.
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        prop_assert_eq!(signed.verify(&other), Err(CheckpointError::Signature { version: m.version }));
    }

    #[test]
    fn an_encoded_manifest_changed_anywhere_is_refused_or_verifies_only_if_unchanged(m in manifest(), proto_edits in edits(), json_edits in edits()) {
        let signed = m.sign(&coordinator());
        let bytes = apply(&signed.to_wire().encode_to_vec(), &proto_edits);
        if let Ok(proto) = v1::CheckpointManifest::decode(bytes.as_slice()) {
            match SignedManifest::from_wire(&proto) {
                Ok(decoded) => verifies_only_unchanged(&decoded, &signed)?,
                Err(e) => {
                    let fields = ["manifest.sha256", "manifest.task_id", "manifest.signature"];
                    prop_assert!(fields.contains(&e.field), "{e}");
                    prop_assert!(e.to_string().contains(e.field));
                }
            }
        }
        let json = serde_json::to_vec(&signed).expect("a manifest serializes");
        let json = apply(&json, &json_edits);
        if let Ok(decoded) = serde_json::from_slice::<SignedManifest>(&json) {
            verifies_only_unchanged(&decoded, &signed)?;
        }
    }

    #[test]
    fn a_manifest_in_json_is_accepted_exactly_when_its_byte_fields_are_hex_of_their_lengths(m in manifest(), sha256 in hex_text(32), task_id in hex_text(16), signature in hex_text(64)) {
        let json = serde_json::json!({
            "version": m.version,
            "parent_version": m.parent_version,
            "sha256": sha256,
            "size_bytes": m.size_bytes,
            "task_id": task_id,
            "round_summary": m.round_summary,
            "signature": signature,
        });
        // The fields are checked in this order; the first that is not hex of its length is named.
        let fields = [("sha256", &sha256, 32), ("task_id", &task_id, 16), ("signature", &signature, 64)];
        let first_bad = fields.iter().find(|(_, text, n)| !is_hex_of(text, *n));
        match (serde_json::from_value::<SignedManifest>(json), first_bad) {
            (Ok(decoded), None) => {
                let back = serde_json::to_value(&decoded).expect("a manifest serializes");
                prop_assert_eq!(&back["sha256"], &sha256.to_lowercase());
                prop_assert_eq!(&back["task_id"], &task_id.to_lowercase());
                prop_assert_eq!(&back["signature"], &signature.to_lowercase());
                prop_assert_eq!(decoded.manifest.round_summary, m.round_summary);
            }
            (Err(e), Some((field, _, n))) => {
                let named = format!("checkpoint manifest field {field}: expected {n} hex bytes");
                prop_assert!(e.to_string().contains(&named), "{e} does not say: {named}");
            }
            (verdict, first_bad) => prop_assert!(false, "{verdict:?} for {first_bad:?}"),
        }
    }

    #[test]
    fn a_checkpoint_is_accepted_only_as_signed_and_never_older_than_the_last_seen(model in model(), version in 0..100u64, seen in prop::option::of(0..100u64), changes in prop::option::of(edits())) {
        let bytes = model.to_safetensors().expect("a model of finite values encodes");
        let manifest = Manifest {
            version,
            parent_version: version.saturating_sub(1),
            sha256: CheckpointHash::of(&bytes),
            size_bytes: bytes.len() as u64,
            task_id: TaskId([1; 16]),
            round_summary: String::new(),
        };
        let signed = manifest.sign(&coordinator());
        let got = changes.map_or_else(|| bytes.clone(), |e| apply(&bytes, &e));
        let verdict = signed.verify_checkpoint(&coordinator().verifying_key(), &got, seen);
        match seen {
            Some(seen) if seen > version => {
                prop_assert_eq!(verdict, Err(CheckpointError::Rollback { version, seen }))
            }
            _ if got.len() != bytes.len() => {
                let (manifest, actual) = (bytes.len() as u64, got.len() as u64);
                prop_assert_eq!(verdict, Err(CheckpointError::Size { manifest, actual }))
            }
            _ if got != bytes => prop_assert_eq!(verdict, Err(CheckpointError::HashMismatch { version })),
            _ => prop_assert_eq!(verdict.map(|m| bits(&m)), Ok(bits(&model))),
        }
    }

    #[test]
    fn a_model_survives_its_file_bit_for_bit(model in model()) {
        let bytes = model.to_safetensors().expect("a model of finite values encodes");
        let back = Model::from_safetensors(&bytes);
        prop_assert!(back.is_ok(), "its own file is refused: {back:?}");
        let back = back.unwrap();
        prop_assert_eq!(bits(&back), bits(&model));
        prop_assert_eq!(back.to_safetensors().ok(), Some(bytes));
    }

    #[test]
    fn a_model_file_is_accepted_exactly_when_its_header_tiles_its_data_with_finite_f32_tensors((entries, header, data) in safetensors_file()) {
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&header);
        file.extend_from_slice(&data);
        let parsed: serde_json::Value = serde_json::from_slice(&header).expect("JSON");
        let metadata_ok = match parsed.get("__metadata__") {
            None => true,
            Some(m) => m.as_object().is_some_and(|m| m.values().all(|v| v.is_string())),
        };
        match (Model::from_safetensors(&file), expected(&entries, metadata_ok, &data)) {
            (Ok(model), Ok(want)) => {
                prop_assert_eq!(bits(&model), bits(&want));
                encodes_back(&model)?;
            }
            (Err(ModelError::NotSafetensors(reason)), Err(None)) => prop_assert!(!reason.is_empty()),
            (Err(e), Err(Some(refusals))) => {
                prop_assert!(refusals.iter().any(|r| same_refusal(r, &e)), "{e:?} is none of {refusals:?}")
            }
            (verdict, want) => prop_assert!(false, "got {verdict:?}, expected {want:?}"),
        }
    }

    #[test]
    fn a_model_file_changed_anywhere_is_refused_by_a_named_check_or_decodes_to_a_model_that_encodes_back(model in model(), changes in edits()) {
        let bytes = model.to_safetensors().expect("a model of finite values encodes");
        let changed = apply(&bytes, &changes);
        let verdict = Model::from_safetensors(&changed);
        match &verdict {
            Ok(m) => encodes_back(m)?,
            Err(ModelError::NotSafetensors(reason)) => prop_assert!(!reason.is_empty()),
            Err(ModelError::NotF32 { .. } | ModelError::NotFinite { .. }) => {}
            Err(other) => prop_assert!(false, "refused by no check of a file: {other}"),
        }
        // Cut short, or with bytes added at the end: the data no longer ends where the header says.
        if changed.len() != bytes.len() && (changed.starts_with(&bytes) || bytes.starts_with(&changed)) {
            prop_assert!(matches!(verdict, Err(ModelError::NotSafetensors(_))), "{verdict:?}");
        }
    }

    #[test]
    fn one_flipped_bit_in_a_model_files_values_changes_that_value_or_is_refused_as_not_finite(model in model(), at in any::<usize>(), bit in 0..8u32) {
        let model = if model.is_empty() { model.with("x", Tensor::new(vec![1], vec![1.0]).unwrap()) } else { model };
        let mut bytes = model.to_safetensors().expect("a model of finite values encodes");
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let start = 8 + header;
        let offset = at % (bytes.len() - start);
        bytes[start + offset] ^= 1 << bit;
        // The values are stored tensor after tensor in name order: the flattening order.
        let mut want: Vec<u32> = model.flatten().iter().map(|v| v.to_bits()).collect();
        let k = offset / 4;
        want[k] ^= 1 << (8 * (offset % 4) as u32 + bit);
        let mut before = 0;
        let (tensor, index) = model
            .tensors()
            .find_map(|(name, t)| {
                let here = (before..before + t.values.len()).contains(&k).then(|| (name.to_string(), k - before));
                before += t.values.len();
                here
            })
            .expect("every value is in a tensor");
        match Model::from_safetensors(&bytes) {
            Ok(m) => {
                prop_assert!(m.same_layout(&model));
                prop_assert_eq!(m.flatten().iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
            }
            Err(ModelError::NotFinite { tensor: t, index: i, value }) => {
                prop_assert_eq!((t, i, value.to_bits()), (tensor, index, want[k]));
            }
            Err(e) => prop_assert!(false, "refused by another check: {e}"),
        }
    }
}

/// safetensors adds the end of the data its header declares to the header's length: a header
/// declaring data up to the end of the address space must be refused, not overflow.
#[test]
fn a_header_declaring_more_data_than_the_address_space_holds_is_refused() {
    let size = (1usize << 61) - 1;
    let header: serde_json::Map<String, serde_json::Value> = (0..8)
        .map(|i| {
            let offsets = [i * size, (i + 1) * size];
            let info =
                serde_json::json!({ "dtype": "U8", "shape": [size], "data_offsets": offsets });
            (format!("t{i}"), info)
        })
        .collect();
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    assert!(matches!(Model::from_safetensors(&file), Err(ModelError::NotSafetensors(_))));
}
