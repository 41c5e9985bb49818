//! Rounds for the property tests that drive both SecAgg state machines with random message
//! sequences (`fuzz_server.rs`, `fuzz_client.rs`): small plans of either graph and every
//! adversary class, honest clients stepped one phase at a time, the clients' messages as one
//! type, and the corruptions both sides use.

use fedsec_crypto::PROTOCOL_VERSION;
use std::sync::Arc;

use fedsec_crypto::context::{AdversaryClass, GraphKind, RoundPlan};
use fedsec_crypto::error::Error;
use fedsec_crypto::graph::Graph;
use fedsec_crypto::ids::{ClientId, RoundContext};
use fedsec_crypto::kdf::Label;
use fedsec_crypto::proofs::KeyProof;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::client::{ClientPolicy, ContributionLedger, SecAggClient};
use fedsec_crypto::secagg::commitments::{Dealt, Entry};
use fedsec_crypto::secagg::driver::{make_plan, stand_in_trained_on};
use fedsec_crypto::secagg::messages::*;
use fedsec_crypto::secagg::server::{SecAggServer, UploadProgress};
use fedsec_crypto::sign::IdentityKey;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rand::RngExt;
use rand_chacha::ChaCha20Rng;

use super::{CHECKPOINT, rng, verifier};

/// Cases per property: `FEDSEC_FUZZ_CASES` if set, else `smoke` (what `cargo test` runs). A
/// failing case is saved beside the test file (`<file>.proptest-regressions`) and run first
/// from then on.
pub fn config(smoke: u32) -> ProptestConfig {
    let cases =
        std::env::var("FEDSEC_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(smoke);
    let saved = FileFailurePersistence::WithSource("proptest-regressions");
    ProptestConfig {
        cases,
        max_shrink_iters: 512,
        failure_persistence: Some(Box::new(saved)),
        ..ProptestConfig::default()
    }
}

/// (δ, γ) in parts per million: each leaves room for dropouts (q < n for most n).
const FRACTIONS: [(u32, u32); 5] =
    [(100_000, 0), (200_000, 50_000), (250_000, 50_000), (300_000, 100_000), (300_000, 0)];

/// What a generated round looks like.
#[derive(Debug, Clone)]
pub struct Shape {
    pub n: usize,
    pub graph: GraphKind,
    pub class: AdversaryClass,
    pub fractions: (u32, u32),
    /// Vector length in words.
    pub dim: u32,
    /// Inputs quantized from updates (small words), or any words of the ring.
    pub quantized: bool,
    /// Seeds the identities, the plan's nonce and graph seed, and the inputs.
    pub seed: u64,
}

/// 3 to 12 clients, both graphs, every class (a malicious class runs on the complete graph).
pub fn shape() -> impl Strategy<Value = Shape> {
    let graph = prop_oneof![Just(GraphKind::Complete), Just(GraphKind::Harary)];
    let class = prop_oneof![
        Just(AdversaryClass::Curious),
        Just(AdversaryClass::SemiMalicious),
        Just(AdversaryClass::Malicious)
    ];
    (3usize..=12, graph, class, proptest::sample::select(&FRACTIONS[..]), 1u32..=9)
        .prop_flat_map(|s| (Just(s), any::<bool>(), any::<u64>()))
        .prop_map(|((n, graph, class, fractions, dim), quantized, seed)| Shape {
            n,
            graph,
            class,
            fractions,
            dim,
            quantized,
            seed,
        })
}

/// A policy that accepts every plan of these shapes: the floor is tested on its own.
pub fn open_policy() -> ClientPolicy {
    ClientPolicy {
        min_adversary: AdversaryClass::Curious,
        min_corrupt_ppm: 0,
        max_dropout_ppm: 999_999,
        min_clients: 2,
        min_surviving: 1,
        one_input_per_checkpoint: true,
    }
}

/// The plan of `shape` and its identities in canonical order. Where the Harary graph has no
/// parameters (small n) or the class needs it, the plan uses the complete graph.
pub fn plan_of(shape: &Shape) -> (RoundPlan, Vec<Arc<IdentityKey>>) {
    let mut r = rng(shape.seed);
    let mut keys: Vec<Arc<IdentityKey>> =
        (0..shape.n).map(|_| Arc::new(IdentityKey::generate(&mut r))).collect();
    keys.sort_by_key(|k| k.id());
    let mut ids: Vec<ClientId> = keys.iter().map(|k| k.id()).collect();
    let (dropout, corrupt) = shape.fractions;
    let mut plan_on = |graph| {
        make_plan(&mut ids, graph, dropout, corrupt, shape.class, shape.dim, CHECKPOINT, &mut r)
    };
    let plan = plan_on(shape.graph)
        .or_else(|_| plan_on(GraphKind::Complete))
        .expect("the complete graph has parameters for every shape");
    (plan, keys)
}

/// A client outside every plan (its seed is not one a shape uses).
pub fn stranger() -> Arc<IdentityKey> {
    Arc::new(IdentityKey::generate(&mut rng(u64::MAX)))
}

/// One message a client sends the server.
#[derive(Debug, Clone, PartialEq)]
// Test messages, built and dropped one at a time: their size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Msg {
    Advert(AdvertiseKeys),
    Shares(ShareKeys),
    Complaints(Complaints),
    Masked(MaskedInput),
    Signature(ConsistencySignature),
    Reveal(UnmaskingResponse),
}

impl Msg {
    /// The phase it belongs to.
    pub fn phase(&self) -> Phase {
        match self {
            Msg::Advert(_) => Phase::AdvertiseKeys,
            Msg::Shares(_) => Phase::ShareKeys,
            Msg::Complaints(_) => Phase::Complaints,
            Msg::Masked(_) => Phase::MaskedInputCollection,
            Msg::Signature(_) => Phase::ConsistencyCheck,
            Msg::Reveal(_) => Phase::Unmasking,
        }
    }

    /// The sender it claims.
    pub fn client(&self) -> ClientId {
        match self {
            Msg::Advert(m) => m.client,
            Msg::Shares(m) => m.client,
            Msg::Complaints(m) => m.client,
            Msg::Masked(m) => m.client,
            Msg::Signature(m) => m.client,
            Msg::Reveal(m) => m.client,
        }
    }

    /// Its protocol version and round context.
    pub fn header(&self) -> (u32, RoundContext) {
        let mut copy = self.clone();
        let (version, ctx) = copy.header_mut();
        (*version, *ctx)
    }

    /// Its protocol version and round context, to change.
    pub fn header_mut(&mut self) -> (&mut u32, &mut RoundContext) {
        match self {
            Msg::Advert(m) => (&mut m.version, &mut m.ctx),
            Msg::Shares(m) => (&mut m.version, &mut m.ctx),
            Msg::Complaints(m) => (&mut m.version, &mut m.ctx),
            Msg::Masked(m) => (&mut m.version, &mut m.ctx),
            Msg::Signature(m) => (&mut m.version, &mut m.ctx),
            Msg::Reveal(m) => (&mut m.version, &mut m.ctx),
        }
    }

    /// Hands it to the server as coming from `from` (the authenticated sender).
    pub fn deliver(
        &self,
        server: &mut SecAggServer,
        from: ClientId,
    ) -> Result<Option<UploadProgress>, Error> {
        match self.clone() {
            Msg::Advert(m) => server.receive_advertise(from, m).map(|()| None),
            Msg::Shares(m) => server.receive_share_keys(from, m).map(|()| None),
            Msg::Complaints(m) => server.receive_complaints(from, m).map(|()| None),
            Msg::Masked(m) => server.receive_masked_input(from, &m).map(Some),
            Msg::Signature(m) => server.receive_consistency(from, m).map(|()| None),
            Msg::Reveal(m) => server.receive_unmasking(from, m).map(|()| None),
        }
    }

    /// A message of `phase` from `client`, right in version and context and empty otherwise:
    /// what is refused before its content is looked at.
    pub fn empty(phase: Phase, ctx: RoundContext, client: ClientId, dim: u32) -> Msg {
        let version = PROTOCOL_VERSION;
        match phase {
            Phase::AdvertiseKeys => Msg::Advert(AdvertiseKeys {
                version,
                ctx,
                client,
                credential: Vec::new(),
                enc_pk: [0; 32],
                mask_pk: [0; 32],
                self_mask_commitment: [0; 32],
                enc_pk_proof: KeyProof([0; 64]),
                mask_pk_proof: KeyProof([0; 64]),
                signature: Sig([0; 64]),
            }),
            Phase::ShareKeys => Msg::Shares(ShareKeys {
                version,
                ctx,
                client,
                shares: Vec::new(),
                entries: Vec::new(),
                root_signature: Sig([0; 64]),
            }),
            Phase::Complaints => Msg::Complaints(Complaints {
                version,
                ctx,
                client,
                complaints: Vec::new(),
                signature: Sig([0; 64]),
            }),
            Phase::MaskedInputCollection => Msg::Masked(MaskedInput {
                version,
                ctx,
                client,
                offset: 0,
                data: vec![0; 4 * dim as usize],
            }),
            Phase::ConsistencyCheck => Msg::Signature(ConsistencySignature {
                version,
                ctx,
                client,
                signature: Sig([0; 64]),
            }),
            Phase::Unmasking => Msg::Reveal(UnmaskingResponse {
                version,
                ctx,
                client,
                self_mask_shares: Vec::new(),
                mask_key_shares: Vec::new(),
            }),
        }
    }
}

/// What the server last sent its clients (the output of a phase's close).
#[derive(Debug, Clone)]
pub enum Sent {
    Nothing,
    Keys(Vec<KeysForward>),
    Shares(Vec<SharesForward>),
    Exclusions(Exclusions),
    Check(ConsistencyRequest),
    Unmask(UnmaskingRequest),
    Sum(Vec<u32>),
}

/// Closes `phase` on `server` (the unmasking closes with the sum).
pub fn close(server: &mut SecAggServer, phase: Phase) -> Result<Sent, Error> {
    match phase {
        Phase::AdvertiseKeys => server.close_advertise().map(Sent::Keys),
        Phase::ShareKeys => server.close_share_keys().map(Sent::Shares),
        Phase::Complaints => server.close_complaints().map(Sent::Exclusions),
        Phase::MaskedInputCollection => server.close_masked_input().map(Sent::Check),
        Phase::ConsistencyCheck => server.close_consistency().map(Sent::Unmask),
        Phase::Unmasking => server.finish().map(Sent::Sum),
    }
}

/// A round's clients, stepped one phase at a time.
pub struct Round {
    pub plan: RoundPlan,
    pub graph: Graph,
    pub keys: Vec<Arc<IdentityKey>>,
    pub inputs: Vec<Vec<u32>>,
    /// The honest clients by canonical index; `None` where the test holds the client itself.
    pub clients: Vec<Option<SecAggClient>>,
    pub ledgers: Vec<ContributionLedger>,
    /// The phase from which a client sends nothing more.
    pub drops: Vec<Option<Phase>>,
}

impl Round {
    /// The clients of `shape`; `drops[i] < 6` makes client i drop at that phase.
    pub fn new(shape: &Shape, drops: &[u8]) -> Round {
        let (plan, keys) = plan_of(shape);
        let n = plan.n();
        let mut r = rng(shape.seed ^ 0x5eed);
        let inputs = (0..n).map(|_| input(&plan, shape.quantized, &mut r)).collect();
        let clients = keys
            .iter()
            .map(|k| {
                let on = stand_in_trained_on(&plan, 0);
                let ledger = ContributionLedger::default();
                let c = SecAggClient::new(
                    k.clone(),
                    verifier(),
                    &open_policy(),
                    plan.clone(),
                    &on,
                    &ledger,
                );
                Some(c.expect("the open policy accepts every plan"))
            })
            .collect();
        let drops =
            (0..n).map(|i| drops.get(i).and_then(|&d| Phase::from_index(d as usize))).collect();
        let graph = Graph::from_plan(&plan).expect("a valid plan has a graph");
        Round { plan, graph, keys, inputs, clients, ledgers: vec![Default::default(); n], drops }
    }

    /// Keeps at most `most` of the dropouts (the first ones in canonical order).
    pub fn cap_drops(&mut self, most: usize) {
        let mut left = most;
        for d in self.drops.iter_mut().filter(|d| d.is_some()) {
            if left == 0 {
                *d = None;
            }
            left = left.saturating_sub(1);
        }
    }

    /// Whether client i still sends in `phase`.
    pub fn active(&self, i: usize, phase: Phase) -> bool {
        self.drops[i].is_none_or(|d| d > phase)
    }

    /// The messages of `phase` from the active clients held here, answering what the server
    /// sent; a client that refuses (too few holders left) sends nothing, like a dropout.
    pub fn respond(&mut self, phase: Phase, sent: &Sent) -> Vec<(usize, Msg)> {
        let n = self.plan.n();
        let mut out = Vec::new();
        let active: Vec<usize> = (0..n).filter(|&i| self.active(i, phase)).collect();
        for i in active {
            let id = self.plan.selected[i];
            let Some(c) = self.clients[i].as_mut() else { continue };
            let msg = match (phase, sent) {
                (Phase::AdvertiseKeys, _) => Ok(Msg::Advert(c.advertise().clone())),
                (Phase::ShareKeys, Sent::Keys(fwd)) => match fwd.iter().find(|f| f.recipient == id)
                {
                    Some(f) => c.handle_keys(f).map(Msg::Shares),
                    None => continue,
                },
                (Phase::Complaints, Sent::Shares(fwd)) => {
                    match fwd.iter().find(|f| f.recipient == id) {
                        Some(f) => c.handle_shares(f).map(Msg::Complaints),
                        None => continue,
                    }
                }
                // Only the senders of a complaints message learn E.
                (Phase::MaskedInputCollection, Sent::Exclusions(e))
                    if c.phase() == fedsec_crypto::secagg::client::ClientPhase::Complaints =>
                {
                    c.handle_exclusions(e, &self.inputs[i], &mut self.ledgers[i]).map(Msg::Masked)
                }
                (Phase::ConsistencyCheck, Sent::Check(req)) if req.survivors.contains(i) => {
                    c.handle_consistency(req).map(Msg::Signature)
                }
                (Phase::Unmasking, Sent::Unmask(req))
                    if req.signatures.iter().any(|s| s.client == id) =>
                {
                    c.handle_unmasking(req).map(Msg::Reveal)
                }
                _ => continue,
            };
            if let Ok(msg) = msg {
                out.push((i, msg));
            }
        }
        out
    }

    /// The sum in the clear, in Z_2^32, of the inputs of `members`.
    pub fn clear_sum(&self, members: impl IntoIterator<Item = usize>) -> Vec<u32> {
        let members: Vec<usize> = members.into_iter().collect();
        super::clear_sum(&self.inputs, &members)
    }
}

/// A client's input: a quantized update (weight coordinate last), or any words of the ring.
fn input(plan: &RoundPlan, quantized: bool, r: &mut ChaCha20Rng) -> Vec<u32> {
    let dim = plan.dim as usize;
    if !quantized {
        return (0..dim).map(|_| r.random()).collect();
    }
    let update: Vec<f32> = (1..dim).map(|_| r.random_range(-2.0f32..2.0)).collect();
    let examples = r.random_range(1..=3);
    plan.quant.quantize(&update, examples, r).expect("finite values within the bit budget")
}

/// `bytes` with bit `bit` (taken modulo its length) flipped.
pub fn flip(mut bytes: Vec<u8>, bit: usize) -> Vec<u8> {
    let at = bit / 8 % bytes.len();
    bytes[at] ^= 1 << (bit % 8);
    bytes
}

/// A 64-byte signature with one bit flipped.
pub fn flip_sig(sig: Sig, bit: usize) -> Sig {
    Sig(flip(sig.0.to_vec(), bit).try_into().expect("64 bytes"))
}

/// An advert `key` signs, with the keys given and no proofs of knowledge (the advert of a
/// faulty client).
pub fn signed_advert(key: &IdentityKey, ctx: RoundContext, keys: [[u8; 32]; 3]) -> AdvertiseKeys {
    signed_advert_with_proofs(key, ctx, keys, [KeyProof([0; 64]); 2])
}

/// An advert `key` signs, with the keys and proofs given.
pub fn signed_advert_with_proofs(
    key: &IdentityKey,
    ctx: RoundContext,
    keys: [[u8; 32]; 3],
    proofs: [KeyProof; 2],
) -> AdvertiseKeys {
    let [enc_pk, mask_pk, self_mask_commitment] = keys;
    let [enc_pk_proof, mask_pk_proof] = proofs;
    let mut advert = AdvertiseKeys {
        version: PROTOCOL_VERSION,
        ctx,
        client: key.id(),
        credential: key.raw_credential(),
        enc_pk,
        mask_pk,
        self_mask_commitment,
        enc_pk_proof,
        mask_pk_proof,
        signature: Sig([0; 64]),
    };
    advert.signature = Sig(key.sign(Label::Advertise, &ctx, &advert.signed_parts()));
    advert
}

/// Another round context than `ctx`.
pub fn other_ctx(ctx: RoundContext) -> RoundContext {
    let mut bytes = ctx.0;
    bytes[0] ^= 0x80;
    RoundContext(bytes)
}

/// A forwarded share no dealer made: refused for who it claims to be from before its content
/// is looked at.
pub fn blank_dealt() -> Dealt {
    Dealt {
        entry: Entry([0; 128]),
        index: 0,
        size: 1,
        path: Vec::new(),
        signature: [0; 64],
        ciphertext: vec![0; 80],
    }
}
