//! Known answers for fedsec's own wire-visible derivations: the round context, the KDF under
//! every domain label, share encryption, mask seeds and the masks they expand to, and identity
//! signatures. Any change to one of these changes what goes on the wire, so two builds that
//! disagree here cannot run a round together.
//!
//! Every input is fixed (no OS randomness); the expected outputs live in
//! `tests/vectors/fedsec_*.json`, next to the inputs that produced them, so that another
//! implementation can be checked against the same files. By default the tests only compare.
//! After an intended change to the protocol, regenerate the files with
//!
//! ```text
//! FEDSEC_WRITE_KAT=1 cargo test -p fedsec-crypto --test known_answers
//! ```
//!
//! and review the diff: a changed value is a wire-format change.
//!
//! Besides pinning values, each test recomputes the outputs from the constructions as the
//! module docs state them (with `hkdf`, `chacha20poly1305` and `ed25519-dalek` directly), so the
//! files also say that the code does what its documentation says.

use fedsec_crypto::PROTOCOL_VERSION;
use std::path::PathBuf;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signer, SigningKey};
use fedsec_crypto::aead::ShareKey;
use fedsec_crypto::kdf::{self, Label};
use fedsec_crypto::kernel::{Kernel, Sign};
use fedsec_crypto::keys::SecretScalar;
use fedsec_crypto::prg::MaskSeed;
use fedsec_crypto::quant::QuantParams;
use fedsec_crypto::sign::{self, IdentityKey};
use fedsec_crypto::{
    AdversaryClass, AttemptNonce, CheckpointHash, ClientId, GraphKind, RoundContext, RoundId,
    RoundPlan, TaskId,
};
use hkdf::Hkdf;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Set to `1` to (re)write the known-answer files instead of comparing against them.
const WRITE_ENV: &str = "FEDSEC_WRITE_KAT";

/// Differences listed in a failure message before the rest are only counted.
const MAX_LISTED_DIFFS: usize = 40;

// ---------------------------------------------------------------------------------------------
// Comparing against (or writing) the committed files.
// ---------------------------------------------------------------------------------------------

fn vector_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("vectors").join(name)
}

/// Compares `computed` with the committed file `name`, or writes it when `FEDSEC_WRITE_KAT=1`.
fn check_known_answers(name: &str, computed: &Value) {
    let path = vector_path(name);
    if std::env::var(WRITE_ENV).is_ok_and(|v| v == "1") {
        let mut text = serde_json::to_string_pretty(computed).expect("a JSON value serializes");
        text.push('\n');
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("{WRITE_ENV}=1: wrote {}", path.display());
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\n(create it with {WRITE_ENV}=1 cargo test -p fedsec-crypto \
             --test known_answers)",
            path.display()
        )
    });
    let committed: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
    let diffs = json_diff(&committed, computed);
    if !diffs.is_empty() {
        let mut listed: Vec<String> = diffs.iter().take(MAX_LISTED_DIFFS).cloned().collect();
        if diffs.len() > MAX_LISTED_DIFFS {
            listed.push(format!("… and {} more", diffs.len() - MAX_LISTED_DIFFS));
        }
        panic!(
            "tests/vectors/{name} does not match what the code computes ({} differences):\n  \
             {}\n\nThese values are wire-visible: peers built before and after this change \
             would not interoperate. If the change is intended, version it (PROTOCOL_VERSION, \
             the labels) and regenerate the file with\n  {WRITE_ENV}=1 cargo test -p \
             fedsec-crypto --test known_answers\nthen review its diff.",
            diffs.len(),
            listed.join("\n  ")
        );
    }
}

/// Every leaf where `committed` and `computed` differ, as `path: file has X, code gives Y`.
fn json_diff(committed: &Value, computed: &Value) -> Vec<String> {
    fn walk(path: &str, committed: &Value, computed: &Value, out: &mut Vec<String>) {
        match (committed, computed) {
            (Value::Object(c), Value::Object(a)) => {
                for (k, cv) in c {
                    let p = format!("{path}.{k}");
                    match a.get(k) {
                        Some(av) => walk(&p, cv, av, out),
                        None => out.push(format!("{p}: in the file, no longer computed")),
                    }
                }
                for k in a.keys().filter(|k| !c.contains_key(*k)) {
                    out.push(format!("{path}.{k}: computed, missing from the file"));
                }
            }
            (Value::Array(c), Value::Array(a)) => {
                if c.len() != a.len() {
                    out.push(format!(
                        "{path}: file has {} entries, code gives {}",
                        c.len(),
                        a.len()
                    ));
                }
                for (i, (cv, av)) in c.iter().zip(a).enumerate() {
                    walk(&format!("{path}[{i}]"), cv, av, out);
                }
            }
            _ if committed != computed => {
                out.push(format!("{path}: file has {committed}, code gives {computed}"));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("$", committed, computed, &mut out);
    out
}

#[test]
fn json_diff_names_every_changed_leaf() {
    let committed = json!({"a": "00", "b": [1, 2, 3], "c": {"d": true}, "gone": 1});
    let computed = json!({"a": "01", "b": [1, 2, 4], "c": {"d": true}, "new": 2});
    let diffs = json_diff(&committed, &computed);
    assert_eq!(
        diffs,
        [
            "$.a: file has \"00\", code gives \"01\"",
            "$.b[2]: file has 3, code gives 4",
            "$.gone: in the file, no longer computed",
            "$.new: computed, missing from the file",
        ]
    );
    assert!(json_diff(&committed, &committed).is_empty());
    let shorter = json!({"a": "00", "b": [1, 2], "c": {"d": true}, "gone": 1});
    assert_eq!(json_diff(&committed, &shorter), ["$.b: file has 3 entries, code gives 2"]);
}

// ---------------------------------------------------------------------------------------------
// Fixed inputs.
// ---------------------------------------------------------------------------------------------

/// `N` distinct-looking bytes `tag ^ 0, tag ^ 1, …`: a reversed, shifted or truncated field
/// changes the result, which a run of equal bytes would not.
fn pattern<const N: usize>(tag: u8) -> [u8; N] {
    core::array::from_fn(|i| tag ^ (i as u8))
}

fn hex_value(bytes: &[u8]) -> Value {
    Value::String(hex::encode(bytes))
}

/// Fixed client ids; the tags are increasing, so the ids are sorted.
fn client_ids(tags: &[u8]) -> Vec<ClientId> {
    tags.iter().map(|&t| ClientId(pattern(t))).collect()
}

fn scalar(tag: u8) -> Scalar {
    Scalar::from_bytes_mod_order(pattern(tag))
}

fn secret(tag: u8) -> SecretScalar {
    SecretScalar::from_scalar(scalar(tag))
}

fn quant() -> QuantParams {
    QuantParams { clip: 1.0, value_scale: 65536.0, weight_scale: 1024.0, max_examples: 1000 }
}

/// SecAgg over the complete graph against a malicious server.
fn plan_complete() -> RoundPlan {
    RoundPlan {
        version: PROTOCOL_VERSION,
        task_id: TaskId(pattern(0x7a)),
        // Eight distinct bytes pin the byte order of the round id.
        round_id: RoundId(0x0102_0304_0506_0708),
        attempt: AttemptNonce(pattern(0xa7)),
        selected: client_ids(&[0x10, 0x20, 0x30, 0x40, 0x50]),
        graph: GraphKind::Complete,
        degree: 4,
        threshold: 3,
        dropout_ppm: 200_000,
        corrupt_ppm: 0,
        adversary: AdversaryClass::Malicious,
        graph_seed: pattern(0x5e),
        dim: 1001,
        quant: quant(),
        checkpoint: CheckpointHash(pattern(0xc4)),
        cert_time: 1_790_000_000,
    }
}

/// SecAgg+ over a Harary graph against a semi-malicious server.
fn plan_harary() -> RoundPlan {
    RoundPlan {
        version: PROTOCOL_VERSION,
        task_id: TaskId(pattern(0x7b)),
        round_id: RoundId(42),
        attempt: AttemptNonce(pattern(0xa8)),
        selected: client_ids(&[0x08, 0x18, 0x28, 0x38, 0x48, 0x58, 0x68, 0x78]),
        graph: GraphKind::Harary,
        degree: 4,
        threshold: 3,
        dropout_ppm: 250_000,
        corrupt_ppm: 50_000,
        adversary: AdversaryClass::SemiMalicious,
        graph_seed: pattern(0x5f),
        dim: 100_000,
        quant: QuantParams {
            clip: 0.25,
            value_scale: 1.0e6,
            weight_scale: 4096.0,
            max_examples: 1,
        },
        checkpoint: CheckpointHash(pattern(0xc5)),
        cert_time: 1_790_000_000,
    }
}

/// The smallest round: two clients, honest-but-curious server.
fn plan_curious_pair() -> RoundPlan {
    RoundPlan {
        version: PROTOCOL_VERSION,
        task_id: TaskId(pattern(0x7c)),
        round_id: RoundId(0),
        attempt: AttemptNonce(pattern(0xa9)),
        selected: client_ids(&[0x01, 0xfe]),
        graph: GraphKind::Complete,
        degree: 1,
        threshold: 1,
        dropout_ppm: 0,
        corrupt_ppm: 0,
        adversary: AdversaryClass::Curious,
        graph_seed: [0; 32],
        dim: 1,
        quant: quant(),
        checkpoint: CheckpointHash(pattern(0xc6)),
        cert_time: 1_790_000_000,
    }
}

/// The round context every other known answer is bound to.
fn kat_context() -> RoundContext {
    plan_complete().context()
}

// ---------------------------------------------------------------------------------------------
// The round context.
// ---------------------------------------------------------------------------------------------

/// `ctx` preimage as context.rs documents it: the `context` label, then every plan field in
/// order, each with a u64 big-endian length prefix.
fn documented_context_preimage(plan: &RoundPlan) -> Vec<u8> {
    let graph: u8 = match plan.graph {
        GraphKind::Complete => 0,
        GraphKind::Harary => 1,
    };
    let adversary: u8 = match plan.adversary {
        AdversaryClass::Curious => 0,
        AdversaryClass::SemiMalicious => 1,
        AdversaryClass::Malicious => 2,
    };
    let q = &plan.quant;
    let quant: Vec<u8> = [
        q.clip.to_bits().to_be_bytes(),
        q.value_scale.to_bits().to_be_bytes(),
        q.weight_scale.to_bits().to_be_bytes(),
        q.max_examples.to_be_bytes(),
    ]
    .concat();
    let ids: Vec<u8> = plan.selected.iter().flat_map(|id| id.0).collect();
    let fields: [&[u8]; 17] = [
        b"fedsec/v1/context",
        &plan.version.to_be_bytes(),
        &plan.task_id.0,
        &plan.round_id.0.to_be_bytes(),
        &plan.attempt.0,
        &ids,
        &[graph],
        &plan.degree.to_be_bytes(),
        &plan.threshold.to_be_bytes(),
        &plan.dropout_ppm.to_be_bytes(),
        &plan.corrupt_ppm.to_be_bytes(),
        &[adversary],
        &plan.graph_seed,
        &plan.dim.to_be_bytes(),
        &quant,
        &plan.checkpoint.0,
        &plan.cert_time.to_be_bytes(),
    ];
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(&(f.len() as u64).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

fn plan_json(plan: &RoundPlan) -> Value {
    json!({
        "version": plan.version,
        "task_id": hex_value(&plan.task_id.0),
        "round_id": plan.round_id.0,
        "attempt": hex_value(&plan.attempt.0),
        "selected": plan.selected.iter().map(|id| hex_value(&id.0)).collect::<Vec<_>>(),
        "graph": format!("{:?}", plan.graph),
        "degree": plan.degree,
        "threshold": plan.threshold,
        "dropout_ppm": plan.dropout_ppm,
        "corrupt_ppm": plan.corrupt_ppm,
        "adversary": format!("{:?}", plan.adversary),
        "graph_seed": hex_value(&plan.graph_seed),
        "dim": plan.dim,
        "quant": {
            "clip": plan.quant.clip,
            "value_scale": plan.quant.value_scale,
            "weight_scale": plan.quant.weight_scale,
            "max_examples": plan.quant.max_examples,
        },
        "checkpoint": hex_value(&plan.checkpoint.0),
        "cert_time": plan.cert_time,
    })
}

#[test]
fn round_context_matches_committed_vectors() {
    let plans = [
        ("complete graph, malicious server", plan_complete()),
        ("Harary graph, semi-malicious server", plan_harary()),
        ("two clients, curious server", plan_curious_pair()),
    ];
    let mut cases = Vec::new();
    for (name, plan) in &plans {
        assert!(plan.validate().is_ok(), "{name}: the KAT plan must be a valid plan");
        let ctx = plan.context();
        let preimage = documented_context_preimage(plan);
        let documented: [u8; 32] = Sha256::digest(&preimage).into();
        assert_eq!(ctx.0, documented, "{name}: ctx is SHA-256 of the documented encoding");
        let mut quant_encoding = Vec::new();
        for x in [plan.quant.clip, plan.quant.value_scale, plan.quant.weight_scale] {
            quant_encoding.extend_from_slice(&x.to_bits().to_be_bytes());
        }
        quant_encoding.extend_from_slice(&plan.quant.max_examples.to_be_bytes());
        assert_eq!(plan.quant.encode(), quant_encoding, "{name}: QuantParams::encode");
        cases.push(json!({
            "name": name,
            "plan": plan_json(plan),
            "quant_encoding": hex_value(&plan.quant.encode()),
            "context_preimage": hex_value(&preimage),
            "context": hex_value(&ctx.0),
        }));
    }
    // Every field is bound: changing any one changes ctx.
    let base = plan_complete();
    let base_ctx = base.context();
    type Change = fn(&mut RoundPlan);
    let variants: [(&str, Change); 15] = [
        ("version", |p| p.version += 1),
        ("task_id", |p| p.task_id.0[15] ^= 1),
        ("round_id", |p| p.round_id.0 += 1),
        ("attempt", |p| p.attempt.0[0] ^= 1),
        ("selected", |p| {
            p.selected.pop();
        }),
        ("graph", |p| p.graph = GraphKind::Harary),
        ("degree", |p| p.degree -= 2),
        ("threshold", |p| p.threshold += 1),
        ("dropout_ppm", |p| p.dropout_ppm += 1),
        ("corrupt_ppm", |p| p.corrupt_ppm += 1),
        ("adversary", |p| p.adversary = AdversaryClass::SemiMalicious),
        ("graph_seed", |p| p.graph_seed[31] ^= 1),
        ("dim", |p| p.dim += 1),
        ("quant", |p| p.quant.max_examples += 1),
        ("checkpoint", |p| p.checkpoint.0[7] ^= 1),
    ];
    for (field, change) in variants {
        let mut p = base.clone();
        change(&mut p);
        assert_ne!(p.context(), base_ctx, "ctx does not bind the plan's {field}");
    }
    check_known_answers(
        "fedsec_round_context.json",
        &json!({
            "description": "RoundPlan::context(): SHA-256 of the length-prefixed (u64 big-endian) \
                            encoding of the `fedsec/v1/context` label and every plan field in \
                            declaration order. Client ids are 32-byte hex; graph Complete = 0, \
                            Harary = 1; adversary Curious = 0, SemiMalicious = 1, Malicious = 2; \
                            quant = clip, value_scale, weight_scale as IEEE-754 bits and \
                            max_examples, all u64 big-endian.",
            "cases": cases,
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// The KDF and share encryption.
// ---------------------------------------------------------------------------------------------

const ALL_LABELS: [Label; 7] = [
    Label::Context,
    Label::Advertise,
    Label::ShareEnc,
    Label::PairMask,
    Label::SelfMask,
    Label::Consistency,
    Label::Graph,
];

/// `label ‖ ctx ‖ parts…`, each with a u64 big-endian length prefix, as kdf.rs documents it.
fn documented_info(label: &[u8], ctx: &RoundContext, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in [label, ctx.as_bytes().as_slice()].into_iter().chain(parts.iter().copied()) {
        out.extend_from_slice(&(p.len() as u64).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// HKDF-SHA256 with no salt, straight from the `hkdf` crate.
fn documented_hkdf<const N: usize>(ikm: &[u8], info: &[u8]) -> [u8; N] {
    let mut okm = [0u8; N];
    Hkdf::<Sha256>::new(None, ikm).expand(info, &mut okm).expect("N <= 255 * 32");
    okm
}

fn kdf_case(ikm: &[u8], label: Label, ctx: &RoundContext, parts: &[&[u8]]) -> Value {
    let okm: [u8; 32] = *kdf::derive::<32>(ikm, label, ctx, parts);
    let okm16: [u8; 16] = *kdf::derive::<16>(ikm, label, ctx, parts);
    let info = kdf::labelled(label, ctx, parts);
    assert_eq!(info, documented_info(label.as_bytes(), ctx, parts), "{label:?}: labelled()");
    assert_eq!(okm, documented_hkdf::<32>(ikm, &info), "{label:?}: derive is HKDF-SHA256");
    assert_eq!(okm16, okm[..16], "{label:?}: a shorter output is a prefix");
    let digest: [u8; 32] = Sha256::digest(&info).into();
    assert_eq!(kdf::signed_digest(label, ctx, parts), digest, "{label:?}: signed_digest");
    json!({
        "label": format!("{label:?}"),
        "label_bytes": String::from_utf8_lossy(label.as_bytes()),
        "ikm": hex_value(ikm),
        "parts": parts.iter().map(|p| hex_value(p)).collect::<Vec<_>>(),
        "info": hex_value(&info),
        "okm_32": hex_value(&okm),
        "signed_digest": hex_value(&digest),
    })
}

#[test]
fn derived_keys_match_committed_vectors() {
    let ctx = kat_context();
    let ikm: [u8; 32] = pattern(0x1c);
    let tail: [u8; 32] = pattern(0x42);
    let parts: [&[u8]; 2] = [b"fedsec-kat", &tail];
    let mut kdf_cases: Vec<Value> =
        ALL_LABELS.iter().map(|&label| kdf_case(&ikm, label, &ctx, &parts)).collect();
    kdf_cases.push(kdf_case(&ikm, Label::Graph, &ctx, &[]));

    // Share encryption u → v (and back), from fixed secret scalars.
    let plan = plan_complete();
    let (u, v) = (plan.selected[0], plan.selected[1]);
    let c_u = secret(0xc1);
    let c_v = secret(0xc2);
    let (c_u_pk, c_v_pk) = (c_u.public(), c_v.public());
    let shared = *c_u.agree(&c_v_pk);
    assert_eq!(shared, *c_v.agree(&c_u_pk), "key agreement is symmetric");
    let plaintext: Vec<u8> = [pattern::<32>(0xb0), pattern::<32>(0xb1)].concat();

    let ct_uv = ShareKey::derive(&c_u, &c_v_pk, &ctx, &u, &v).seal(&ctx, &u, &v, &plaintext);
    let ct_vu = ShareKey::derive(&c_v, &c_u_pk, &ctx, &v, &u).seal(&ctx, &v, &u, &plaintext);
    assert_ne!(ct_uv, ct_vu, "K_u→v differs from K_v→u");
    // The recipient derives the same directional key from its side and opens it.
    let opened = ShareKey::derive(&c_v, &c_u_pk, &ctx, &u, &v)
        .open(&ctx, &u, &v, &ct_uv)
        .expect("v opens u's shares");
    assert_eq!(opened.as_slice(), plaintext.as_slice());

    // As aead.rs documents it: K = HKDF(KA, share-enc ‖ ctx ‖ from ‖ to), zero nonce,
    // AAD = ctx ‖ from ‖ to.
    let documented_seal = |from: &ClientId, to: &ClientId| {
        let info = documented_info(b"fedsec/v1/share-enc", &ctx, &[&from.0, &to.0]);
        let key: [u8; 32] = documented_hkdf(&shared, &info);
        let aad = [ctx.0, from.0, to.0].concat();
        let sealed = ChaCha20Poly1305::new(&Key::from(key))
            .encrypt(&Nonce::from([0u8; 12]), Payload { msg: &plaintext, aad: &aad })
            .expect("short message");
        (key, aad, sealed)
    };
    let (key_uv, aad_uv, documented_uv) = documented_seal(&u, &v);
    let (key_vu, aad_vu, documented_vu) = documented_seal(&v, &u);
    assert_eq!(ct_uv, documented_uv, "u→v ciphertext follows the documented construction");
    assert_eq!(ct_vu, documented_vu, "v→u ciphertext follows the documented construction");

    check_known_answers(
        "fedsec_derived_keys.json",
        &json!({
            "description": "kdf::derive (HKDF-SHA256, no salt, info = length-prefixed label ‖ \
                            ctx ‖ parts) under every label, and share encryption \
                            (aead::ShareKey). `context` is the ctx of the first plan of \
                            fedsec_round_context.json; secret scalars are canonical \
                            little-endian.",
            "context": hex_value(&ctx.0),
            "kdf": kdf_cases,
            "share_encryption": {
                "c_u_secret": hex_value(c_u.expose().as_bytes()),
                "c_u_public": hex_value(&c_u_pk.to_bytes()),
                "c_v_secret": hex_value(c_v.expose().as_bytes()),
                "c_v_public": hex_value(&c_v_pk.to_bytes()),
                "shared_secret": hex_value(&shared),
                "u": hex_value(&u.0),
                "v": hex_value(&v.0),
                "plaintext": hex_value(&plaintext),
                "u_to_v": {
                    "key": hex_value(&key_uv),
                    "nonce": hex_value(&[0u8; 12]),
                    "aad": hex_value(&aad_uv),
                    "ciphertext": hex_value(&ct_uv),
                },
                "v_to_u": {
                    "key": hex_value(&key_vu),
                    "nonce": hex_value(&[0u8; 12]),
                    "aad": hex_value(&aad_vu),
                    "ciphertext": hex_value(&ct_vu),
                },
            },
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// Mask seeds, masks and a masked input.
// ---------------------------------------------------------------------------------------------

const HEAD_WORDS: usize = 16;
const FAR_OFFSET: usize = 1000;
const FAR_WORDS: usize = 8;

/// Words `0..16` and `1000..1008` of the mask `seed` expands to (each range expanded on its
/// own, so seeking is exercised too).
fn mask_words(seed: &MaskSeed) -> ([u32; HEAD_WORDS], [u32; FAR_WORDS]) {
    let mut head = [0u32; HEAD_WORDS];
    seed.expand_into(0, &mut head);
    let mut far = [0u32; FAR_WORDS];
    seed.expand_into(FAR_OFFSET, &mut far);
    // Streaming from zero reaches the same far words.
    let mut all = vec![0u32; FAR_OFFSET + FAR_WORDS];
    seed.expand_into(0, &mut all);
    assert_eq!(all[..HEAD_WORDS], head);
    assert_eq!(all[FAR_OFFSET..], far);
    (head, far)
}

fn mask_json(seed: &MaskSeed) -> Value {
    let (head, far) = mask_words(seed);
    json!({ "words_0_16": head, "words_1000_1008": far })
}

#[test]
fn masks_match_committed_vectors() {
    let ctx = kat_context();
    let plan = plan_complete();

    // The PRG alone, from raw seed bytes.
    let raw: [u8; 16] = pattern(0x3c);
    let raw_mask = mask_json(&MaskSeed::from_bytes(raw));

    // Self mask of u from b_u: HKDF(b_u, self-mask ‖ ctx ‖ u).
    let u = plan.selected[3];
    let b_u = secret(0xb7);
    let self_seed = MaskSeed::self_mask(&b_u, &ctx, &u);
    let documented_self: [u8; 16] = documented_hkdf(
        b_u.expose().as_bytes(),
        &documented_info(b"fedsec/v1/self-mask", &ctx, &[&u.0]),
    );
    assert_eq!(
        mask_words(&self_seed),
        mask_words(&MaskSeed::from_bytes(documented_self)),
        "self-mask seed follows the documented construction"
    );

    // Pairwise mask of u (the larger id) and v: HKDF(KA, pair-mask ‖ ctx ‖ min ‖ max).
    let v = plan.selected[1];
    assert!(v < u, "the pair is listed larger id first, so the ordering is exercised");
    let s_u = secret(0x57);
    let s_v = secret(0x58);
    let (s_u_pk, s_v_pk) = (s_u.public(), s_v.public());
    let shared = *s_u.agree(&s_v_pk);
    let pair_at_u = MaskSeed::pairwise(&s_u, &s_v_pk, &ctx, &u, &v);
    let pair_at_v = MaskSeed::pairwise(&s_v, &s_u_pk, &ctx, &v, &u);
    assert_eq!(mask_words(&pair_at_u), mask_words(&pair_at_v), "s_uv is symmetric");
    let documented_pair: [u8; 16] =
        documented_hkdf(&shared, &documented_info(b"fedsec/v1/pair-mask", &ctx, &[&v.0, &u.0]));
    assert_eq!(
        mask_words(&pair_at_u),
        mask_words(&MaskSeed::from_bytes(documented_pair)),
        "pairwise seed follows the documented construction (smaller id first)"
    );

    // u's masked input at words 1000..1008: x + self mask + σ(u, v)·pair mask, over Z_2^32.
    let sign = Sign::pairwise(&u, &v);
    assert_eq!(sign, Sign::Sub, "σ(u, v) = −1 when u > v");
    let input: [u32; FAR_WORDS] =
        core::array::from_fn(|i| 0x8000_0000u32.wrapping_add(i as u32 * 0x0101_0101));
    let mut masked = input;
    Kernel::single().apply(&mut masked, FAR_OFFSET, &[(&self_seed, Sign::Add), (&pair_at_u, sign)]);
    let (_, self_far) = mask_words(&self_seed);
    let (_, pair_far) = mask_words(&pair_at_u);
    for i in 0..FAR_WORDS {
        let want = input[i].wrapping_add(self_far[i]).wrapping_sub(pair_far[i]);
        assert_eq!(masked[i], want, "masked word {}", FAR_OFFSET + i);
    }
    // v's pairwise term has the opposite sign, so the pair cancels in the sum.
    assert_eq!(Sign::pairwise(&v, &u), sign.flip());

    check_known_answers(
        "fedsec_masks.json",
        &json!({
            "description": "prg::MaskSeed: word i of a mask is the little-endian u32 at bytes \
                            4i..4i+4 of AES-128-CTR(seed, zero counter block). Seeds: self mask \
                            = HKDF(b_u, self-mask ‖ ctx ‖ u), pairwise = HKDF(s_u·S_v, pair-mask \
                            ‖ ctx ‖ min(u,v) ‖ max(u,v)), 16 bytes. `context` is the ctx of the \
                            first plan of fedsec_round_context.json.",
            "context": hex_value(&ctx.0),
            "raw_seed": { "seed": hex_value(&raw), "mask": raw_mask },
            "self_mask": {
                "b_u_secret": hex_value(b_u.expose().as_bytes()),
                "u": hex_value(&u.0),
                "seed": hex_value(&documented_self),
                "mask": mask_json(&self_seed),
            },
            "pairwise": {
                "s_u_secret": hex_value(s_u.expose().as_bytes()),
                "s_u_public": hex_value(&s_u_pk.to_bytes()),
                "s_v_secret": hex_value(s_v.expose().as_bytes()),
                "s_v_public": hex_value(&s_v_pk.to_bytes()),
                "u": hex_value(&u.0),
                "v": hex_value(&v.0),
                "shared_secret": hex_value(&shared),
                "seed": hex_value(&documented_pair),
                "mask": mask_json(&pair_at_u),
            },
            "masked_input_of_u": {
                "offset": FAR_OFFSET,
                "input": input,
                "self_mask_sign": "Add",
                "pairwise_sign": format!("{sign:?}"),
                "masked": masked,
            },
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// Identity signatures and the client id.
// ---------------------------------------------------------------------------------------------

#[test]
fn signatures_match_committed_vectors() {
    let ctx = kat_context();
    let seed: [u8; 32] = pattern(0xed);
    let identity = IdentityKey::from_signing_key(SigningKey::from_bytes(&seed));
    let reference = SigningKey::from_bytes(&seed);
    let vk = identity.verifying_key();
    assert_eq!(vk, reference.verifying_key());

    // ClientId = SHA-256 of the DER SubjectPublicKeyInfo (RFC 8410 prefix ‖ key).
    let spki = identity.raw_credential();
    let documented_spki = [
        &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00][..],
        vk.as_bytes(),
    ]
    .concat();
    assert_eq!(spki, documented_spki, "SPKI of an Ed25519 key");
    assert_eq!(sign::ed25519_spki_der(&vk).as_slice(), spki.as_slice());
    let id = identity.id();
    let documented_id: [u8; 32] = Sha256::digest(&spki).into();
    assert_eq!(id.0, documented_id, "ClientId is SHA-256 of the SPKI");
    assert_eq!(id, ClientId::from_spki_der(&spki));
    assert_eq!(id.to_hex(), hex::encode(documented_id));

    // Advertise: the two public keys; Consistency: a list of ids.
    let c_pk = secret(0xc1).public().to_bytes();
    let s_pk = secret(0x57).public().to_bytes();
    let ids: Vec<u8> = plan_complete().selected[..3].iter().flat_map(|id| id.0).collect();
    let messages: [(Label, Vec<&[u8]>); 2] =
        [(Label::Advertise, vec![&c_pk, &s_pk]), (Label::Consistency, vec![&ids])];
    let mut cases = Vec::new();
    for (label, parts) in &messages {
        let sig = identity.sign(*label, &ctx, parts);
        let message = kdf::labelled(*label, &ctx, parts);
        assert_eq!(
            sig,
            reference.sign(&message).to_bytes(),
            "{label:?}: Ed25519 over label ‖ ctx ‖ parts"
        );
        assert!(sign::verify(&vk, id, *label, &ctx, parts, &sig).is_ok(), "{label:?}: verifies");
        let other = if *label == Label::Advertise { Label::Consistency } else { Label::Advertise };
        assert!(sign::verify(&vk, id, other, &ctx, parts, &sig).is_err(), "{label:?}: label-bound");
        cases.push(json!({
            "label": format!("{label:?}"),
            "parts": parts.iter().map(|p| hex_value(p)).collect::<Vec<_>>(),
            "message": hex_value(&message),
            "signature": hex_value(&sig),
        }));
    }

    check_known_answers(
        "fedsec_signatures.json",
        &json!({
            "description": "sign::IdentityKey: Ed25519 (RFC 8032) over the length-prefixed \
                            label ‖ ctx ‖ parts; the client id is SHA-256 of the key's DER \
                            SubjectPublicKeyInfo. `context` is the ctx of the first plan of \
                            fedsec_round_context.json.",
            "context": hex_value(&ctx.0),
            "signing_key_seed": hex_value(&seed),
            "verifying_key": hex_value(vk.as_bytes()),
            "spki_der": hex_value(&spki),
            "client_id": id.to_hex(),
            "signatures": cases,
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// Protocol v2: proofs of knowledge, share commitments under a signed Merkle root, complaints.
// ---------------------------------------------------------------------------------------------

/// SHA-512 of `info` reduced wide mod ℓ, as proofs.rs documents its challenges.
fn documented_challenge(info: &[u8]) -> Scalar {
    let digest: [u8; 64] = sha2::Sha512::digest(info).into();
    Scalar::from_bytes_mod_order_wide(&digest)
}

fn point(bytes: &[u8]) -> curve25519_dalek::RistrettoPoint {
    curve25519_dalek::ristretto::CompressedRistretto::from_slice(bytes)
        .unwrap()
        .decompress()
        .expect("a canonical point")
}

fn canonical(bytes: &[u8]) -> Scalar {
    Option::from(Scalar::from_canonical_bytes(bytes.try_into().unwrap())).expect("canonical")
}

#[test]
fn v2_transcripts_match_committed_vectors() {
    use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT as G;
    use fedsec_crypto::merkle;
    use fedsec_crypto::proofs::{ComplaintProof, ComplaintStatement, KeyProof, KeyRole};
    use fedsec_crypto::secagg::commitments::{self, Dealt, Entry, Parties, Verdict};
    use fedsec_crypto::secagg::messages::Complaint;
    use fedsec_crypto::shamir;
    use rand::SeedableRng;

    let ctx = kat_context();

    // Proofs of knowledge of both advertised keys.
    let owner = ClientId(pattern(0x0a));
    let mut pok_cases = Vec::new();
    for (role, tag) in [(KeyRole::Encryption, 0xc1), (KeyRole::Masking, 0x57)] {
        let x = secret(tag);
        let pk = x.public();
        let entropy: [u8; 32] = pattern(0xe0 ^ role.code());
        let proof = KeyProof::prove_with_entropy(&x, &ctx, &owner, role, &entropy);
        assert!(proof.verify(&pk, &ctx, &owner, role));
        let secret_bytes = x.expose().to_bytes();
        let r = documented_challenge(&documented_info(
            b"fedsec/v1/proof-nonce",
            &ctx,
            &[
                b"fedsec/v1/pok",
                &secret_bytes,
                &pk.to_bytes(),
                &owner.0,
                &[role.code()],
                &pk.to_bytes(),
                &entropy,
            ],
        ));
        assert_eq!((G * r).compress().to_bytes(), proof.0[..32], "{role:?}: R = r·G, r hedged");
        let info = documented_info(
            b"fedsec/v1/pok",
            &ctx,
            &[&owner.0, &[role.code()], &pk.to_bytes(), &proof.0[..32]],
        );
        let e = documented_challenge(&info);
        assert_eq!(
            G * canonical(&proof.0[32..]),
            point(&proof.0[..32]) + pk.point() * e,
            "{role:?}: z·G = R + e·PK"
        );
        pok_cases.push(json!({
            "role": format!("{role:?}"),
            "role_code": role.code(),
            "secret": hex_value(x.expose().as_bytes()),
            "public": hex_value(&pk.to_bytes()),
            "nonce_entropy": hex_value(&entropy),
            "challenge_input": hex_value(&info),
            "proof": hex_value(&proof.0),
        }));
    }

    // A dealer (first holder) dealing to three others, t = 2; shares from a seeded generator.
    let seed: [u8; 32] = pattern(0xd0);
    let dealer_identity = IdentityKey::from_signing_key(SigningKey::from_bytes(&seed));
    let dealer = dealer_identity.id();
    let dealer_enc = secret(0xd1);
    let holders: Vec<ClientId> =
        std::iter::once(dealer).chain(client_ids(&[0x31, 0x32, 0x33])).collect();
    let holder_enc: Vec<SecretScalar> = (0..4).map(|i| secret(0xe1 + i as u8)).collect();
    let xs: Vec<u32> = vec![1, 2, 3, 4];
    let (b, s) = (scalar(0xb0), scalar(0x50));
    let mut shares_rng = rand_chacha::ChaCha20Rng::from_seed(pattern(0x5a));
    let b_shares = shamir::split_nonzero(&b, 2, &xs, &mut shares_rng).unwrap();
    let s_shares = shamir::split_nonzero(&s, 2, &xs, &mut shares_rng).unwrap();
    let mut ciphertexts = vec![Vec::new()];
    let mut hashes = vec![[0u8; 32]];
    for i in 1..4 {
        let k = dealer_enc.agree_point(&holder_enc[i].public());
        let plain = commitments::plaintext(&b_shares[i], &s_shares[i]);
        let ct = ShareKey::from_shared(&k, &ctx, &dealer, &holders[i]).seal(
            &ctx,
            &dealer,
            &holders[i],
            plain.as_ref(),
        );
        assert_eq!(ct.len(), commitments::CIPHERTEXT_LEN);
        // As documented: ChaCha20-Poly1305, zero nonce, under HKDF(K, share-enc ‖ ctx ‖ u ‖ v),
        // AAD ctx ‖ u ‖ v, plaintext b-share ‖ s-share.
        let key: [u8; 32] = documented_hkdf(
            k.to_bytes().as_ref(),
            &documented_info(b"fedsec/v1/share-enc", &ctx, &[&dealer.0, &holders[i].0]),
        );
        let aad = [ctx.0, dealer.0, holders[i].0].concat();
        let documented_plain =
            [b_shares[i].to_bytes().as_ref(), s_shares[i].to_bytes().as_ref()].concat();
        let documented_ct = ChaCha20Poly1305::new(&Key::from(key))
            .encrypt(&Nonce::from([0u8; 12]), Payload { msg: &documented_plain, aad: &aad })
            .unwrap();
        assert_eq!(ct, documented_ct, "share ciphertext {i}");
        hashes.push(Sha256::digest(&ct).into());
        ciphertexts.push(ct);
    }
    let entries = commitments::entries(&holders, &hashes, &b_shares, &s_shares).unwrap();
    for (i, e) in entries.iter().enumerate() {
        let documented = [
            &holders[i].0[..],
            &hashes[i],
            (G * canonical(b_shares[i].to_bytes().as_ref())).compress().as_bytes(),
            (G * canonical(s_shares[i].to_bytes().as_ref())).compress().as_bytes(),
        ]
        .concat();
        assert_eq!(e.0.as_slice(), documented.as_slice(), "entry {i}: v ‖ SHA-256(ct) ‖ S^b ‖ S^s");
    }
    let tree = merkle::Tree::new(entries.iter().map(Entry::leaf).collect()).unwrap();
    let leaf = |e: &Entry| -> [u8; 32] {
        Sha256::new().chain_update([0]).chain_update(e.0).finalize().into()
    };
    let node = |l: &[u8; 32], r: &[u8; 32]| -> [u8; 32] {
        Sha256::new().chain_update([1]).chain_update(l).chain_update(r).finalize().into()
    };
    let documented_root = node(
        &node(&leaf(&entries[0]), &leaf(&entries[1])),
        &node(&leaf(&entries[2]), &leaf(&entries[3])),
    );
    assert_eq!(tree.root(), documented_root, "RFC 6962 root of four leaves");
    let root = tree.root();
    let m = 4u32;
    let signature =
        dealer_identity.sign(Label::ShareKeys, &ctx, &[&dealer.0, &m.to_be_bytes(), &root]);
    let signed =
        documented_info(b"fedsec/v1/share-keys", &ctx, &[&dealer.0, &m.to_be_bytes(), &root]);
    assert_eq!(commitments::signed_root(&ctx, &dealer, m, &root), signed);
    assert_eq!(signature, SigningKey::from_bytes(&seed).sign(&signed).to_bytes());

    // Every holder opens its share; holder 2 complains (as if its share were bad) and proves K.
    let dealt: Vec<Dealt> = (1..4)
        .map(|i| Dealt {
            entry: entries[i],
            index: i as u32,
            size: m,
            path: tree.path(i as u32).unwrap(),
            signature,
            ciphertext: ciphertexts[i].clone(),
        })
        .collect();
    for (j, d) in dealt.iter().enumerate() {
        let i = j + 1;
        let k = holder_enc[i].agree_point(&dealer_enc.public());
        let parties = Parties {
            ctx: &ctx,
            dealer: &dealer,
            dealer_key: &dealer_identity.verifying_key(),
            holder: &holders[i],
            shared: &k,
        };
        assert!(matches!(commitments::open(&parties, d), Verdict::Ok(..)), "holder {i}");
    }
    let accused_key = dealer_enc.public();
    let complainer_key = holder_enc[2].public();
    let k = holder_enc[2].agree_point(&accused_key);
    let evidence = dealt[1].evidence_digest();
    let mut documented_evidence = entries[2].0.to_vec();
    for part in [&2u32.to_be_bytes()[..], &m.to_be_bytes(), &dealt[1].path.concat()] {
        documented_evidence.extend_from_slice(&(part.len() as u64).to_be_bytes());
        documented_evidence.extend_from_slice(part);
    }
    documented_evidence.extend_from_slice(&signature);
    assert_eq!(evidence, <[u8; 32]>::from(Sha256::digest(&documented_evidence)));
    let ct_hash: [u8; 32] = Sha256::digest(&ciphertexts[2]).into();
    let statement =
        ComplaintStatement::new(&dealer, &holders[2], &dealt[1], &accused_key, &complainer_key, &k);
    assert_eq!((statement.evidence, statement.ciphertext), (evidence, ct_hash));
    let entropy: [u8; 32] = pattern(0xcc);
    let proof =
        ComplaintProof::prove_with_entropy(&holder_enc[2], &statement, &ctx, &entropy).unwrap();
    assert!(proof.verify(&statement, &ctx));
    // The hedged nonce, as documented: SHA-512 wide of (`proof-nonce` ‖ ctx ‖ label ‖ secret ‖
    // secret·G ‖ the statement's parts ‖ fresh bytes), length-prefixed; R1 = r·G.
    let k_bytes = *k.to_bytes();
    let statement_parts: [&[u8]; 7] = [
        &dealer.0,
        &holders[2].0,
        &evidence,
        &ct_hash,
        &accused_key.to_bytes(),
        &complainer_key.to_bytes(),
        &k_bytes,
    ];
    let secret_bytes = holder_enc[2].expose().to_bytes();
    let own_key = complainer_key.to_bytes();
    let mut nonce_parts: Vec<&[u8]> = vec![b"fedsec/v1/complaint", &secret_bytes, &own_key];
    nonce_parts.extend_from_slice(&statement_parts);
    nonce_parts.push(&entropy);
    let r = documented_challenge(&documented_info(b"fedsec/v1/proof-nonce", &ctx, &nonce_parts));
    assert_eq!((G * r).compress().to_bytes(), proof.0[..32], "R1 = r·G with the hedged r");
    let info = documented_info(
        b"fedsec/v1/complaint",
        &ctx,
        &[
            &dealer.0,
            &holders[2].0,
            &evidence,
            &ct_hash,
            &accused_key.to_bytes(),
            &complainer_key.to_bytes(),
            &k_bytes,
            &proof.0[..32],
            &proof.0[32..64],
        ],
    );
    let e = documented_challenge(&info);
    let z = canonical(&proof.0[64..]);
    assert_eq!(G * z, point(&proof.0[..32]) + complainer_key.point() * e, "z·G = R1 + e·c_v^PK");
    assert_eq!(
        accused_key.point() * z,
        point(&proof.0[32..64]) + k.point() * e,
        "z·c_u^PK = R2 + e·K"
    );

    // The complaints message's digest, as documented: u32 count ‖ (u ‖ evidence ‖ SHA-256(ct) ‖
    // K ‖ proof) per complaint.
    let complaint = Complaint { accused: dealer, dealt: dealt[1].clone(), shared: k_bytes, proof };
    let complaints_digest = fedsec_crypto::secagg::complaints::digest(&[complaint]);
    let documented_digest: [u8; 32] = Sha256::digest(
        [&1u32.to_be_bytes()[..], &dealer.0, &evidence, &ct_hash, &k_bytes, &proof.0].concat(),
    )
    .into();
    assert_eq!(complaints_digest, documented_digest, "the complaints message's digest");
    let empty_digest = fedsec_crypto::secagg::complaints::digest(&[]);
    assert_eq!(empty_digest, <[u8; 32]>::from(Sha256::digest(0u32.to_be_bytes())));

    check_known_answers(
        "fedsec_v2_transcripts.json",
        &json!({
            "description": "Protocol v2 transcripts. Proofs of knowledge: R ‖ z, \
                            e = SHA-512(len-prefixed `fedsec/v1/pok` ‖ ctx ‖ owner ‖ role ‖ PK ‖ R) \
                            reduced wide mod ℓ, z = r + e·x. A dealing: entries v ‖ SHA-256(ct) ‖ \
                            S^b ‖ S^s (the dealer's own first, zero ciphertext hash), RFC 6962 \
                            root, Ed25519 over `fedsec/v1/share-keys` ‖ ctx ‖ u ‖ m (u32 BE) ‖ \
                            root; ciphertexts ChaCha20-Poly1305 of b-share ‖ s-share under \
                            HKDF(K, `fedsec/v1/share-enc` ‖ ctx ‖ u ‖ v). A complaint's \
                            Chaum–Pedersen proof R1 ‖ R2 ‖ z over the evidence digest; a \
                            complaints message signs SHA-256(u32 BE count ‖ per complaint u ‖ \
                            evidence digest ‖ SHA-256(ct) ‖ K ‖ proof). Nonces are \
                            hedged: r = SHA-512(len-prefixed `fedsec/v1/proof-nonce` ‖ ctx ‖ \
                            the proof's label ‖ secret ‖ secret·G ‖ the statement ‖ 32 fresh \
                            bytes) reduced wide mod ℓ; given the fresh bytes, the proofs are \
                            reproducible. `context` is the ctx of \
                            the first plan of fedsec_round_context.json.",
            "context": hex_value(&ctx.0),
            "proofs_of_knowledge": { "owner": owner.to_hex(), "cases": pok_cases },
            "dealing": {
                "dealer_signing_key_seed": hex_value(&seed),
                "dealer_id": dealer.to_hex(),
                "dealer_encryption_secret": hex_value(dealer_enc.expose().as_bytes()),
                "holders": holders.iter().map(|h| h.to_hex()).collect::<Vec<_>>(),
                "holder_encryption_secrets": holder_enc.iter().map(|h| hex_value(h.expose().as_bytes())).collect::<Vec<_>>(),
                "threshold": 2,
                "self_mask_secret": hex_value(b.as_bytes()),
                "mask_key_secret": hex_value(s.as_bytes()),
                "self_mask_shares": b_shares.iter().map(|x| hex_value(x.to_bytes().as_ref())).collect::<Vec<_>>(),
                "mask_key_shares": s_shares.iter().map(|x| hex_value(x.to_bytes().as_ref())).collect::<Vec<_>>(),
                "ciphertexts": ciphertexts.iter().map(|c| hex_value(c)).collect::<Vec<_>>(),
                "entries": entries.iter().map(|e| hex_value(&e.0)).collect::<Vec<_>>(),
                "root": hex_value(&root),
                "paths": (0..4u32).map(|i| tree.path(i).unwrap().iter().map(|h| hex_value(h)).collect::<Vec<_>>()).collect::<Vec<_>>(),
                "signature": hex_value(&signature),
            },
            "complaint": {
                "accused": dealer.to_hex(),
                "complainer": holders[2].to_hex(),
                "shared_k": hex_value(&k_bytes),
                "evidence_digest": hex_value(&evidence),
                "ciphertext_hash": hex_value(&ct_hash),
                "nonce_entropy": hex_value(&entropy),
                "challenge_input": hex_value(&info),
                "complaints_message_digest": hex_value(&complaints_digest),
                "proof": hex_value(&proof.0),
            },
        }),
    );
}
