//! The client side of SecAgg / SecAgg+ as a sans-IO state machine.
//!
//! The caller creates a [`SecAggClient`] from a round plan it received, sends the
//! [`AdvertiseKeys`] it returns, and feeds each server message to the matching `handle_*`
//! method, sending what comes back. Each phase's answer is computed **once per attempt**: calling
//! a handler again with the identical server message returns the identical bytes, and a different
//! message for a phase already answered is refused. Any refusal that indicates a deviating server
//! aborts the client for this attempt.

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use crate::aead::ShareKey;
use crate::context::{PROTOCOL_VERSION, RoundContext, RoundPlan};
use crate::error::{Error, ForwardFault, Result, ViewContradiction};
use crate::graph::Graph;
use crate::ids::ClientId;
use crate::kdf::Label;
use crate::kernel::{Kernel, Sign};
use crate::keys::{PublicKey, SecretScalar, SharedPoint};
use crate::merkle;
use crate::params;
use crate::prg::MaskSeed;
use crate::proofs::{KeyProof, KeyRole};
use crate::rng::os_rng;
use crate::secagg::Phase;
use crate::secagg::commitments::{self, Entry, Parties, Verdict};
use crate::secagg::complaints;
use crate::secagg::messages::*;
use crate::secagg::policy::check_floor;
pub use crate::secagg::policy::{ClientPolicy, ContributionLedger, TrainedOn};
use crate::shamir::{self, ShareValue};
use crate::sign::{CredentialVerifier, IdentityKey};

/// Where the client stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPhase {
    /// Sent AdvertiseKeys, waiting for the neighbours' keys.
    AdvertiseKeys,
    /// Sent ShareKeys, waiting for the shares addressed to it.
    ShareKeys,
    /// Sent its complaints (protocol v2), waiting for the excluded set E.
    Complaints,
    /// Sent the masked input, waiting for U3.
    MaskedInputCollection,
    /// Signed U3, waiting for the unmasking request.
    ConsistencyCheck,
    /// Revealed its shares: done.
    Unmasking,
    /// Abandoned this attempt.
    Aborted,
}

impl ClientPhase {
    /// The protocol phase the client is in; none once it abandoned the attempt.
    pub fn phase(self) -> Option<Phase> {
        match self {
            ClientPhase::AdvertiseKeys => Some(Phase::AdvertiseKeys),
            ClientPhase::ShareKeys => Some(Phase::ShareKeys),
            ClientPhase::Complaints => Some(Phase::Complaints),
            ClientPhase::MaskedInputCollection => Some(Phase::MaskedInputCollection),
            ClientPhase::ConsistencyCheck => Some(Phase::ConsistencyCheck),
            ClientPhase::Unmasking => Some(Phase::Unmasking),
            ClientPhase::Aborted => None,
        }
    }

    /// Its phase's name, or `Aborted`.
    pub fn name(self) -> &'static str {
        self.phase().map_or("Aborted", Phase::name)
    }

    /// The phase a message handled in this state belongs to.
    fn answered(self) -> Phase {
        self.phase().expect("messages are answered in one of the six phases, never when aborted")
    }
}

impl core::fmt::Display for ClientPhase {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A verified advertisement.
#[derive(Clone)]
pub(crate) struct Peer {
    pub(crate) id: ClientId,
    pub(crate) verifying_key: VerifyingKey,
    pub(crate) enc_pk: PublicKey,
    pub(crate) mask_pk: PublicKey,
    pub(crate) self_mask_commitment: PublicKey,
}

/// The shares a holder keeps of one owner's secrets.
struct HeldShares {
    mask_key: ShareValue,
    self_mask: ShareValue,
}

/// A cached answer to one phase: the digest of the server message and the reply.
struct Answered<T> {
    request: [u8; 32],
    reply: T,
}

/// One client's participation in one attempt of one round.
pub struct SecAggClient {
    identity: Arc<IdentityKey>,
    verifier: Arc<dyn CredentialVerifier>,
    plan: Arc<RoundPlan>,
    ctx: RoundContext,
    graph: Graph,
    me: usize,
    one_input_per_checkpoint: bool,
    /// Reveal only after q valid signatures on the signed U3: always, but for the attack tests
    /// that remove it ([`hazmat::remove_consistency_quorum`]).
    consistency_quorum: bool,
    /// Sign one U3 per attempt: always, but for the attack test that removes it
    /// ([`hazmat::allow_signing_another_view`]).
    one_view: bool,
    /// How this client misbehaves, in tests of the complaints ([`hazmat`]): never otherwise.
    faults: hazmat::Faults,
    /// What this client trains on, as it verified it: recorded in the ledger with the input.
    trained_on: TrainedOn,
    phase: ClientPhase,
    abort_reason: Option<Error>,
    enc_sk: Option<SecretScalar>,
    mask_sk: Option<SecretScalar>,
    self_seed: Option<SecretScalar>,
    advert: AdvertiseKeys,
    /// Verified neighbours in U1 (canonical index → keys).
    peers: BTreeMap<usize, Peer>,
    /// K = KA(c_u^SK, c_v^PK) for each verified neighbour v, made in phase 1: it seals u's
    /// shares for v and opens v's shares for u (protocol v2's one validity function takes K
    /// itself); each is gone once v's share is opened.
    /// Boxed, so that the map moving its entries never leaves copies of a key behind.
    agreed: BTreeMap<usize, Box<SharedPoint>>,
    /// Shares held, by owner index (own shares included): owners form my view of H(u) ∩ U2.
    /// Boxed, so that moving entries never leaves copies of a share behind.
    held: BTreeMap<usize, Box<HeldShares>>,
    share_keys: Option<Answered<ShareKeys>>,
    /// The dealers this client complained about (canonical indices; protocol v2).
    complained: std::collections::BTreeSet<usize>,
    complaints: Option<Answered<Complaints>>,
    /// The excluded set E this client masked under (protocol v2).
    excluded: Option<Survivors>,
    masked_input: Option<Answered<MaskedInput>>,
    consistency: Option<Answered<ConsistencySignature>>,
    signed_survivors: Option<Survivors>,
    unmasking: Option<Answered<UnmaskingResponse>>,
}

impl core::fmt::Debug for SecAggClient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SecAggClient")
            .field("id", &self.identity.id())
            .field("ctx", &self.ctx)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl SecAggClient {
    /// Checks the plan against this client's floor and the parameters it computes itself,
    /// then makes this attempt's fresh keys. The advertisement to send is [`Self::advertise`].
    ///
    /// `trained_on` is what this client verified (the signed manifest's task, version and
    /// checkpoint hash) and decoded (the weights' hash), and will train on; the plan must name
    /// the same task and checkpoint, and the ledger must allow it ([`ContributionLedger::check`]:
    /// once per checkpoint, per version and only to newer versions, and per weights).
    pub fn new(
        identity: Arc<IdentityKey>,
        verifier: Arc<dyn CredentialVerifier>,
        policy: &ClientPolicy,
        plan: impl Into<Arc<RoundPlan>>,
        trained_on: &TrainedOn,
        ledger: &ContributionLedger,
    ) -> Result<Self> {
        Self::start(identity, verifier, policy, plan.into(), trained_on, ledger, true)
    }

    /// The checks [`Self::new`] makes of a plan before anything else: its shape, this client's
    /// floor, the (k, t) the client computes itself, and the ledger (one input per checkpoint).
    /// A client makes them before it downloads the plan's checkpoint.
    pub fn check_plan(
        plan: &RoundPlan,
        policy: &ClientPolicy,
        ledger: &ContributionLedger,
    ) -> Result<()> {
        Self::check(plan, policy, ledger, true)
    }

    fn check(
        plan: &RoundPlan,
        policy: &ClientPolicy,
        ledger: &ContributionLedger,
        recompute_parameters: bool,
    ) -> Result<()> {
        plan.validate()?;
        check_floor(policy, plan)?;
        if recompute_parameters {
            let need = params::choose(
                plan.graph,
                plan.n(),
                plan.dropout_ppm,
                plan.corrupt_ppm,
                plan.adversary,
            )?;
            if plan.degree != need.degree || plan.threshold < need.threshold {
                return Err(Error::PlanBelowRequired {
                    degree: plan.degree,
                    threshold: plan.threshold,
                    need_degree: need.degree,
                    need_threshold: need.threshold,
                });
            }
        }
        if policy.one_input_per_checkpoint && ledger.contributed(&plan.checkpoint) {
            return Err(Error::AlreadyContributedOnCheckpoint);
        }
        Ok(())
    }

    fn start(
        identity: Arc<IdentityKey>,
        verifier: Arc<dyn CredentialVerifier>,
        policy: &ClientPolicy,
        plan: Arc<RoundPlan>,
        trained_on: &TrainedOn,
        ledger: &ContributionLedger,
        recompute_parameters: bool,
    ) -> Result<Self> {
        Self::check(&plan, policy, ledger, recompute_parameters)?;
        if plan.checkpoint != trained_on.checkpoint || plan.task_id != trained_on.task {
            return Err(Error::CheckpointMismatch);
        }
        if policy.one_input_per_checkpoint {
            ledger.check(trained_on)?;
        }
        Self::with_checked_plan(identity, verifier, policy, plan, *trained_on)
    }

    fn with_checked_plan(
        identity: Arc<IdentityKey>,
        verifier: Arc<dyn CredentialVerifier>,
        policy: &ClientPolicy,
        plan: Arc<RoundPlan>,
        trained_on: TrainedOn,
    ) -> Result<Self> {
        let id = identity.id();
        let me = plan.index_of(&id).ok_or(Error::NotSelected(id))?;
        let ctx = plan.context();
        let graph = Graph::from_plan(&plan)?;

        // Key generation always uses the OS RNG, even in a seeded simulation: keys reused across
        // attempts would let a server reconstruct b_u in one and s_u^SK in the other.
        let mut rng = os_rng();
        let enc_sk = SecretScalar::random(&mut rng);
        let mask_sk = SecretScalar::random(&mut rng);
        let self_seed = SecretScalar::random(&mut rng);
        let (enc_pk, mask_pk, commitment) = (
            enc_sk.public().to_bytes(),
            mask_sk.public().to_bytes(),
            self_seed.public().to_bytes(),
        );
        let mut advert = AdvertiseKeys {
            version: PROTOCOL_VERSION,
            ctx,
            client: id,
            credential: identity.raw_credential(),
            enc_pk,
            mask_pk,
            self_mask_commitment: commitment,
            enc_pk_proof: KeyProof::prove(&enc_sk, &ctx, &id, KeyRole::Encryption),
            mask_pk_proof: KeyProof::prove(&mask_sk, &ctx, &id, KeyRole::Masking),
            signature: Sig([0; 64]),
        };
        advert.signature = Sig(identity.sign(Label::Advertise, &ctx, &advert.signed_parts()));
        Ok(SecAggClient {
            identity,
            verifier,
            plan,
            ctx,
            graph,
            me,
            one_input_per_checkpoint: policy.one_input_per_checkpoint,
            consistency_quorum: true,
            one_view: true,
            faults: hazmat::Faults::default(),
            trained_on,
            phase: ClientPhase::AdvertiseKeys,
            abort_reason: None,
            enc_sk: Some(enc_sk),
            mask_sk: Some(mask_sk),
            self_seed: Some(self_seed),
            advert,
            peers: BTreeMap::new(),
            agreed: BTreeMap::new(),
            held: BTreeMap::new(),
            share_keys: None,
            complained: std::collections::BTreeSet::new(),
            complaints: None,
            excluded: None,
            masked_input: None,
            consistency: None,
            signed_survivors: None,
            unmasking: None,
        })
    }

    /// Sets the credential (certificate chain) carried in the advertisement. Call before
    /// sending [`Self::advertise`]; the credential is not signed (it certifies the key that signs).
    pub fn with_credential(mut self, credential: Vec<u8>) -> Self {
        self.advert.credential = credential;
        self
    }

    /// Phase 0: the advertisement to send (identical on every call).
    pub fn advertise(&self) -> &AdvertiseKeys {
        &self.advert
    }

    /// The round context.
    pub fn context(&self) -> &RoundContext {
        &self.ctx
    }

    /// The plan.
    pub fn plan(&self) -> &RoundPlan {
        &self.plan
    }

    /// Where the client stands.
    pub fn phase(&self) -> ClientPhase {
        self.phase
    }

    /// Why the client aborted, if it did.
    pub fn abort_reason(&self) -> Option<&Error> {
        self.abort_reason.as_ref()
    }

    fn id(&self) -> ClientId {
        self.identity.id()
    }

    /// Runs `f` unless the phase was already answered; caches its reply; aborts on a refusal.
    fn answer<T: Clone>(
        &mut self,
        expected: ClientPhase,
        request: [u8; 32],
        cached: fn(&Self) -> Option<&Answered<T>>,
        f: impl FnOnce(&mut Self) -> Result<T>,
        store: fn(&mut Self, Answered<T>),
    ) -> Result<T> {
        if let Some(done) = cached(self) {
            return if done.request == request {
                Ok(done.reply.clone())
            } else {
                Err(Error::PhaseAlreadyAnswered(expected.answered()))
            };
        }
        if let Some(reason) = &self.abort_reason {
            return Err(Error::Aborted(Box::new(reason.clone())));
        }
        if self.phase != expected {
            return Err(Error::OutOfPhase {
                expected: self.phase.name(),
                got: expected.answered(),
            });
        }
        match f(self) {
            Ok(reply) => {
                store(self, Answered { request, reply: reply.clone() });
                Ok(reply)
            }
            Err(e) => {
                // Any refusal means the server (or the network) misbehaved: abandon the attempt
                // and forget the secrets, so nothing more can be revealed.
                self.abort(e.clone());
                Err(e)
            }
        }
    }

    fn abort(&mut self, reason: Error) {
        self.phase = ClientPhase::Aborted;
        self.abort_reason = Some(reason);
        self.enc_sk = None;
        self.mask_sk = None;
        self.self_seed = None;
        self.agreed.clear();
        self.held.clear();
    }

    /// Phase 0 → 1: verifies the forwarded advertisements of H(u) ∩ U1, then Shamir-shares
    /// s_u^SK and b_u among them and encrypts each holder's pair of shares under K_{u→v}.
    pub fn handle_keys(&mut self, msg: &KeysForward) -> Result<ShareKeys> {
        let digest = message_digest(msg);
        self.answer(
            ClientPhase::AdvertiseKeys,
            digest,
            |s| s.share_keys.as_ref(),
            |s| s.share_keys_inner(msg),
            |s, a| {
                s.share_keys = Some(a);
                s.phase = ClientPhase::ShareKeys;
            },
        )
    }

    fn share_keys_inner(&mut self, msg: &KeysForward) -> Result<ShareKeys> {
        check_header(msg.version, &msg.ctx, &self.ctx)?;
        if msg.recipient != self.id() {
            return Err(Error::InconsistentForward(ForwardFault::KeysForAnother));
        }
        let mut own_seen = false;
        let mut peers = BTreeMap::new();
        for advert in &msg.adverts {
            check_header(advert.version, &advert.ctx, &self.ctx)?;
            let idx =
                self.plan.index_of(&advert.client).ok_or(Error::NotSelected(advert.client))?;
            if idx == self.me {
                if own_seen || *advert != self.advert {
                    return Err(Error::InconsistentForward(ForwardFault::OwnAdvertAltered));
                }
                own_seen = true;
                continue;
            }
            if !self.graph.are_neighbours(self.me, idx) {
                return Err(Error::NotNeighbour(advert.client));
            }
            if peers.contains_key(&idx) {
                return Err(Error::DuplicateClient(advert.client));
            }
            peers.insert(idx, verify_advert(self.verifier.as_ref(), &self.ctx, advert)?);
        }
        if !own_seen {
            return Err(Error::InconsistentForward(ForwardFault::OwnAdvertMissing));
        }
        // Each client checks that at least t of its share holders (itself included) remain
        // before sending anything: the m ≥ t entries the server's degree test needs.
        let holders = peers.len() + 1;
        let t = self.plan.threshold as usize;
        if holders < t {
            return Err(Error::TooFewNeighbours { have: holders, need: t });
        }
        // Complete graph: the client sees all of U1 and checks q itself.
        if self.graph.degree() + 1 == self.plan.n() && holders < self.plan.q() {
            return Err(Error::TooFewClients {
                phase: Phase::AdvertiseKeys,
                have: holders,
                need: self.plan.q(),
            });
        }

        let mut holder_idx: Vec<usize> = peers.keys().copied().collect();
        holder_idx.push(self.me);
        holder_idx.sort_unstable();
        let xs: Vec<u32> = holder_idx.iter().map(|&i| RoundPlan::x_coordinate(i)).collect();
        let mask_sk = self.mask_sk.as_ref().expect("secrets live until abort or unmasking");
        let self_seed = self.self_seed.as_ref().expect("secrets live until abort or unmasking");
        let mut rng = os_rng();
        // No holder's share is zero, so that every commitment is a non-identity point.
        let mask_key_shares = shamir::split_nonzero(mask_sk.expose(), t, &xs, &mut rng)?;
        let self_mask_shares = shamir::split_nonzero(self_seed.expose(), t, &xs, &mut rng)?;

        let enc_sk = self.enc_sk.as_ref().expect("secrets live until abort or unmasking");
        let me_id = self.id();
        let mut out = Vec::with_capacity(peers.len());
        let mut hashes = Vec::with_capacity(holders);
        let mut ids = Vec::with_capacity(holders);
        // Iterate by reference: the shares stay in their vectors, which zeroize them on drop.
        for ((&idx, sk_share), b_share) in
            holder_idx.iter().zip(&mask_key_shares).zip(&self_mask_shares)
        {
            if idx == self.me {
                let own = HeldShares {
                    mask_key: ShareValue::from_bytes(&sk_share.to_bytes()).expect("canonical"),
                    self_mask: ShareValue::from_bytes(&b_share.to_bytes()).expect("canonical"),
                };
                self.held.insert(idx, Box::new(own));
                ids.push(me_id);
                hashes.push([0u8; 32]);
                continue;
            }
            let peer = &peers[&idx];
            let k = Box::new(enc_sk.agree_point(&peer.enc_pk));
            let key = ShareKey::from_shared(&k, &self.ctx, &me_id, &peer.id);
            self.agreed.insert(idx, k);
            let mut plaintext = commitments::plaintext(b_share, sk_share);
            let fault = self.faults.bad_shares.get(&peer.id).copied();
            if fault == Some(hazmat::BadShare::OffCommitment) {
                // Another share than the one committed to (the b-share's top byte changed,
                // so that it stays a canonical scalar).
                plaintext[30] ^= 1;
            }
            let mut ciphertext = key.seal(&self.ctx, &me_id, &peer.id, plaintext.as_ref());
            if fault == Some(hazmat::BadShare::Undecryptable) {
                ciphertext.iter_mut().for_each(|b| *b ^= 0x5a);
            }
            ids.push(peer.id);
            hashes.push(Sha256::digest(&ciphertext).into());
            out.push(EncryptedShares { to: peer.id, ciphertext });
        }
        let entries = commitments::entries(&ids, &hashes, &self_mask_shares, &mask_key_shares)
            .expect("one hash and one share of each secret per holder");
        let tree = merkle::Tree::new(entries.iter().map(Entry::leaf).collect())
            .expect("the dealer's own entry at least");
        let root_signature = Sig(self.identity.sign(
            Label::ShareKeys,
            &self.ctx,
            &[&me_id.0, &tree.size().to_be_bytes(), &tree.root()],
        ));
        self.peers = peers;
        // c_u^SK stays until the complaints are made: a complaint's proof is made with it.
        Ok(ShareKeys {
            version: PROTOCOL_VERSION,
            ctx: self.ctx,
            client: me_id,
            shares: out,
            entries,
            root_signature,
        })
    }

    /// Phase 1 → 1½: opens each share forwarded to this client with the one validity function
    /// and answers with its complaints (protocol v2) — once per attempt. A share that is
    /// malformed (not what its dealer signed: the server tampered) stops the client; a share
    /// that is bad (the dealer's fault) gets a complaint, with K and the proof that it is the
    /// agreed key; the others are kept. c_u^SK is forgotten once the complaints are made.
    pub fn handle_shares(&mut self, msg: &SharesForward) -> Result<Complaints> {
        let digest = message_digest(msg);
        self.answer(
            ClientPhase::ShareKeys,
            digest,
            |s| s.complaints.as_ref(),
            |s| s.complaints_inner(msg),
            |s, a| {
                s.complaints = Some(a);
                s.phase = ClientPhase::Complaints;
            },
        )
    }

    fn complaints_inner(&mut self, msg: &SharesForward) -> Result<Complaints> {
        check_header(msg.version, &msg.ctx, &self.ctx)?;
        let me_id = self.id();
        if msg.recipient != me_id {
            return Err(Error::InconsistentForward(ForwardFault::SharesForAnother));
        }
        let enc_sk = self.enc_sk.take().expect("secrets live until abort or unmasking");
        let mut received = BTreeMap::new();
        let mut complaints = Vec::new();
        let mut complained = std::collections::BTreeSet::new();
        for fwd in &msg.shares {
            let idx = self.plan.index_of(&fwd.from).ok_or(Error::NotSelected(fwd.from))?;
            if !self.peers.contains_key(&idx) {
                return Err(Error::NotNeighbour(fwd.from));
            }
            if received.contains_key(&idx) || complained.contains(&idx) {
                return Err(Error::DuplicateClient(fwd.from));
            }
            let k = self.agreed.remove(&idx).ok_or(Error::NotNeighbour(fwd.from))?;
            let peer = &self.peers[&idx];
            let parties = Parties {
                ctx: &self.ctx,
                dealer: &fwd.from,
                dealer_key: &peer.verifying_key,
                holder: &me_id,
                shared: &k,
            };
            let verdict = commitments::open(&parties, &fwd.dealt);
            let complain_anyway = self.faults.false_complaints.contains(&fwd.from);
            match verdict {
                Verdict::Ok(self_mask, mask_key) if !complain_anyway => {
                    received.insert(idx, Box::new(HeldShares { mask_key, self_mask }));
                }
                // What the server was to check before forwarding: it tampered.
                Verdict::Malformed(why) => {
                    return Err(Error::TamperedShare { dealer: fwd.from, why });
                }
                // The dealer's fault: complain, showing the share and K.
                Verdict::Bad(_) | Verdict::Ok(..) => {
                    let complaint = complaints::complain(
                        &self.ctx,
                        &me_id,
                        &enc_sk,
                        &fwd.from,
                        &peer.enc_pk,
                        &k,
                        fwd.dealt.clone(),
                    )
                    .expect("K is this client's own agreement with the dealer");
                    complaints.push(complaint);
                    complained.insert(idx);
                }
            }
        }
        complaints.sort_by_key(|c| c.accused);
        self.held.extend(received);
        self.complained = complained;
        // K and c_u^SK are needed no more.
        self.agreed.clear();
        drop(enc_sk);
        Ok(complaints::sign(&self.identity, &self.ctx, complaints))
    }

    /// Phase 1½ → 2: given the excluded set E, computes the masked input
    /// y_u = x_u + PRG(self) + Σ_{v∈N(u)∩(U2∖E)} σ(u,v)·PRG(s_uv) — once per attempt — and records
    /// the checkpoint in `ledger` (persist it before sending). The client stops instead (a
    /// dropout after ShareKeys: no upload, so it keeps its one upload per checkpoint) if it is
    /// in E, if a dealer it complained about is not in E, or if fewer than t of its share
    /// holders (itself included) remain outside E. It never masks over a neighbour it
    /// complained about or one in E, and forgets the shares it holds of E's members.
    pub fn handle_exclusions(
        &mut self,
        msg: &Exclusions,
        input: &[u32],
        ledger: &mut ContributionLedger,
    ) -> Result<MaskedInput> {
        let digest = message_digest(msg);
        if let Some(done) = &self.masked_input {
            // The phase of the request, as `answer` and the other handlers name it.
            return if done.request == digest {
                Ok(done.reply.clone())
            } else {
                Err(Error::PhaseAlreadyAnswered(Phase::Complaints))
            };
        }
        // A wrong length is the caller's own mistake: refused without aborting.
        if input.len() != self.plan.dim as usize {
            return Err(Error::WrongLength { got: input.len(), expected: self.plan.dim as usize });
        }
        // Checked again here (another attempt may have contributed since this one started):
        // refused and aborted before anything is masked, so nothing more is revealed.
        if self.one_input_per_checkpoint
            && let Err(e) = ledger.check(&self.trained_on)
        {
            self.abort(e.clone());
            return Err(e);
        }
        let reply = self.answer(
            ClientPhase::Complaints,
            digest,
            |s| s.masked_input.as_ref(),
            |s| s.masked_input_inner(msg, input),
            |s, a| {
                s.masked_input = Some(a);
                s.phase = ClientPhase::MaskedInputCollection;
            },
        )?;
        ledger.record(&self.trained_on);
        Ok(reply)
    }

    fn masked_input_inner(&mut self, msg: &Exclusions, input: &[u32]) -> Result<MaskedInput> {
        check_header(msg.version, &msg.ctx, &self.ctx)?;
        let me_id = self.id();
        msg.excluded.indices(self.plan.n())?;
        if msg.excluded.contains(self.me) {
            return Err(Error::Excluded);
        }
        if let Some(&ignored) = self.complained.iter().find(|&&i| !msg.excluded.contains(i)) {
            return Err(Error::ComplaintIgnored(self.plan.selected[ignored]));
        }
        // E's members are out of the attempt: none of their shares is ever revealed.
        self.held.retain(|&owner, _| !msg.excluded.contains(owner));
        let t = self.plan.threshold as usize;
        if self.held.len() < t {
            return Err(Error::TooFewNeighbours { have: self.held.len(), need: t });
        }

        let mask_sk = self.mask_sk.as_ref().expect("secrets live until abort or unmasking");
        let self_seed = self.self_seed.as_ref().expect("secrets live until abort or unmasking");
        let mut seeds = Vec::with_capacity(self.held.len());
        seeds.push((MaskSeed::self_mask(self_seed, &self.ctx, &me_id), Sign::Add));
        for &idx in self.held.keys().filter(|&&i| i != self.me) {
            let peer = &self.peers[&idx];
            seeds.push((
                MaskSeed::pairwise(mask_sk, &peer.mask_pk, &self.ctx, &me_id, &peer.id),
                Sign::pairwise(&me_id, &peer.id),
            ));
        }
        let masks: Vec<(&MaskSeed, Sign)> = seeds.iter().map(|(s, g)| (s, *g)).collect();
        let mut y = input.to_vec();
        Kernel::single().apply(&mut y, 0, &masks);
        self.excluded = Some(msg.excluded.clone());
        // The own shares are in `held`; nothing else needs the secret keys any more.
        self.mask_sk = None;
        self.self_seed = None;
        let mut data = Vec::with_capacity(4 * y.len());
        for w in &y {
            data.extend_from_slice(&w.to_le_bytes());
        }
        Ok(MaskedInput { version: PROTOCOL_VERSION, ctx: self.ctx, client: me_id, offset: 0, data })
    }

    /// Phase 2 → 3: checks U3 against the thresholds and this client's view, then signs it.
    /// A client signs at most one U3 per attempt.
    pub fn handle_consistency(&mut self, msg: &ConsistencyRequest) -> Result<ConsistencySignature> {
        let digest = message_digest(msg);
        if !self.one_view
            && self.unmasking.is_none()
            && self.consistency.as_ref().is_some_and(|c| c.request != digest)
        {
            // The rule removed (attack tests only): forget the view signed, sign this one.
            self.consistency = None;
            self.phase = ClientPhase::MaskedInputCollection;
        }
        self.answer(
            ClientPhase::MaskedInputCollection,
            digest,
            |s| s.consistency.as_ref(),
            |s| s.consistency_inner(msg),
            |s, a| {
                s.consistency = Some(a);
                s.phase = ClientPhase::ConsistencyCheck;
            },
        )
    }

    fn consistency_inner(&mut self, msg: &ConsistencyRequest) -> Result<ConsistencySignature> {
        check_header(msg.version, &msg.ctx, &self.ctx)?;
        let u3 = msg.survivors.indices(self.plan.n())?;
        let excluded = self.excluded.as_ref().expect("set when the masked input was made");
        if msg.excluded != *excluded {
            return Err(Error::ContradictsSignedView(ViewContradiction::OtherExcludedSet));
        }
        if let Some(&member) = u3.iter().find(|&&i| excluded.contains(i)) {
            let id = self.plan.selected[member];
            return Err(Error::ContradictsSignedView(ViewContradiction::ContainsExcluded(id)));
        }
        self.check_survivors(&msg.survivors, u3.len())?;
        let [u3_digest, e_digest] = ConsistencyRequest::signed_parts(&msg.survivors, excluded);
        let signature = self.identity.sign(Label::Consistency, &self.ctx, &[&u3_digest, &e_digest]);
        self.signed_survivors = Some(msg.survivors.clone());
        Ok(ConsistencySignature {
            version: PROTOCOL_VERSION,
            ctx: self.ctx,
            client: self.id(),
            signature: Sig(signature),
        })
    }

    /// U3 must contain this client, reach q, leave t holders, and name no neighbour whose
    /// shares this client never received (it could not unmask such a client).
    fn check_survivors(&self, survivors: &Survivors, size: usize) -> Result<()> {
        if !survivors.contains(self.me) {
            return Err(Error::ContradictsSignedView(ViewContradiction::OmitsSelf));
        }
        let q = self.plan.q();
        if size < q {
            return Err(Error::TooFewClients {
                phase: Phase::ConsistencyCheck,
                have: size,
                need: q,
            });
        }
        for idx in self.graph.neighbours(self.me) {
            if survivors.contains(idx) && !self.held.contains_key(&idx) {
                let neighbour = self.plan.selected[idx];
                return Err(Error::ContradictsSignedView(ViewContradiction::UnsharedNeighbour(
                    neighbour,
                )));
            }
        }
        let holders = self.held.keys().filter(|&&i| survivors.contains(i)).count();
        let t = self.plan.threshold as usize;
        if holders < t {
            return Err(Error::TooFewNeighbours { have: holders, need: t });
        }
        Ok(())
    }

    /// Phase 3 → 4: verifies at least q valid signatures from distinct clients of U3 on the U3
    /// this client signed, then reveals shares of b_v for v ∈ H(u) ∩ U3 and of s_v^SK for
    /// v ∈ N(u) ∩ (U2 \ U3) — never both for the same v. A request that contradicts the signed
    /// U3 is refused and the client aborts.
    pub fn handle_unmasking(&mut self, msg: &UnmaskingRequest) -> Result<UnmaskingResponse> {
        let digest = message_digest(msg);
        self.answer(
            ClientPhase::ConsistencyCheck,
            digest,
            |s| s.unmasking.as_ref(),
            |s| s.unmasking_inner(msg),
            |s, a| {
                s.unmasking = Some(a);
                s.phase = ClientPhase::Unmasking;
                // Done: nothing secret is needed any more.
                s.enc_sk = None;
                s.mask_sk = None;
                s.self_seed = None;
                s.held.clear();
            },
        )
    }

    fn unmasking_inner(&mut self, msg: &UnmaskingRequest) -> Result<UnmaskingResponse> {
        check_header(msg.version, &msg.ctx, &self.ctx)?;
        let signed = self.signed_survivors.as_ref().expect("set when U3 was signed");
        if msg.survivors != *signed {
            return Err(Error::ContradictsSignedView(ViewContradiction::OtherU3));
        }
        let n = self.plan.n();
        // Every signature signs the same message.
        let excluded = self.excluded.as_ref().expect("set when the masked input was made");
        let [u3_digest, e_digest] = ConsistencyRequest::signed_parts(signed, excluded);
        let message: std::sync::Arc<[u8]> =
            crate::kdf::labelled(Label::Consistency, &self.ctx, &[&u3_digest, &e_digest]).into();
        let mut seen = vec![false; n];
        let mut batch = Vec::with_capacity(msg.signatures.len());
        // The server lists signers in canonical order: each one is usually the next member of
        // U after the last, which saves a search.
        let mut next = 0;
        for s in &msg.signatures {
            let idx = match self.plan.selected.get(next) {
                Some(id) if *id == s.client => next,
                _ => self.plan.index_of(&s.client).ok_or(Error::NotSelected(s.client))?,
            };
            next = idx + 1;
            if idx >= n || !signed.contains(idx) {
                return Err(Error::ContradictsSignedView(ViewContradiction::SignerOutsideU3(
                    s.client,
                )));
            }
            if std::mem::replace(&mut seen[idx], true) {
                return Err(Error::DuplicateClient(s.client));
            }
            let key = match self.peers.get(&idx) {
                Some(p) => p.verifying_key,
                None if idx == self.me => self.identity.verifying_key(),
                None => self.verifier.verify(&s.client, &s.credential)?,
            };
            batch.push((s.client, key, message.clone(), s.signature.0));
        }
        self.verifier.verify_signatures(&batch)?;
        let q = self.plan.q();
        if self.consistency_quorum && batch.len() < q {
            return Err(Error::TooFewConsistencySignatures { have: batch.len(), need: q });
        }

        let mut self_mask_shares = Vec::new();
        let mut mask_key_shares = Vec::new();
        for (&owner, shares) in &self.held {
            let id = self.plan.selected[owner];
            if signed.contains(owner) {
                self_mask_shares
                    .push(RevealedShare { owner: id, share: *shares.self_mask.to_bytes() });
            } else {
                debug_assert_ne!(owner, self.me, "this client is in its own signed U3");
                mask_key_shares
                    .push(RevealedShare { owner: id, share: *shares.mask_key.to_bytes() });
            }
        }
        Ok(UnmaskingResponse {
            version: PROTOCOL_VERSION,
            ctx: self.ctx,
            client: self.id(),
            self_mask_shares,
            mask_key_shares,
        })
    }
}

/// Verifies an advertisement's credential, signature and keys.
pub(crate) fn verify_advert(
    verifier: &dyn CredentialVerifier,
    ctx: &RoundContext,
    advert: &AdvertiseKeys,
) -> Result<Peer> {
    let id = advert.client;
    let verifying_key = verifier.verify(&id, &advert.credential)?;
    let message = crate::kdf::labelled(Label::Advertise, ctx, &advert.signed_parts());
    verifier.verify_signature(id, &verifying_key, &message, &advert.signature.0)?;
    let enc_pk = verifier.public_key(id, &advert.enc_pk)?;
    let mask_pk = verifier.public_key(id, &advert.mask_pk)?;
    let self_mask_commitment = verifier.public_key(id, &advert.self_mask_commitment)?;
    if advert.enc_pk == advert.mask_pk {
        return Err(Error::BadPublicKey(id));
    }
    verify_key_proofs(verifier, ctx, advert, &enc_pk, &mask_pk)?;
    Ok(Peer { id, verifying_key, enc_pk, mask_pk, self_mask_commitment })
}

/// Checks both proofs of knowledge of an advertisement (through the verifier, which may
/// remember a result for the same bytes).
pub(crate) fn verify_key_proofs(
    verifier: &dyn CredentialVerifier,
    ctx: &RoundContext,
    advert: &AdvertiseKeys,
    enc_pk: &PublicKey,
    mask_pk: &PublicKey,
) -> Result<()> {
    for (proof, key, role) in [
        (&advert.enc_pk_proof, enc_pk, KeyRole::Encryption),
        (&advert.mask_pk_proof, mask_pk, KeyRole::Masking),
    ] {
        if !verifier.key_proof_holds(proof, key, ctx, &advert.client, role) {
            return Err(Error::BadKeyProof { client: advert.client, role });
        }
    }
    Ok(())
}

/// Client constructors that skip one of the protocol's checks: never for a deployment.
pub mod hazmat {
    use super::*;

    /// Removes the client's rule that it reveals shares only after q valid signatures from
    /// distinct clients on the U3 it signed. For the attack test that shows what this rule alone
    /// protects (`crypto/tests/attacks.rs`); with it removed, a server that shows two views of
    /// U3 recovers a client's input.
    pub fn remove_consistency_quorum(client: &mut SecAggClient) {
        client.consistency_quorum = false;
    }

    /// Removes the client's rule that it signs one U3 per attempt: asked to sign another view
    /// before it unmasks, it signs that one instead. For the attack test that shows what this
    /// rule alone protects; with it removed, a server that has every client sign two views
    /// recovers a client's input.
    pub fn allow_signing_another_view(client: &mut SecAggClient) {
        client.one_view = false;
    }

    /// How a corrupt dealer spoils the share it deals one holder (protocol v2's tests).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum BadShare {
        /// A ciphertext that does not decrypt (its hash in the signed entry, as sent).
        Undecryptable,
        /// A share that decrypts but is not the one its commitment names.
        OffCommitment,
    }

    /// A client's faults, for the tests of the complaints.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Faults {
        pub(crate) bad_shares: BTreeMap<ClientId, BadShare>,
        pub(crate) false_complaints: std::collections::BTreeSet<ClientId>,
    }

    /// Makes the client a corrupt dealer: it deals `holder` a bad share of the kind given,
    /// under a correctly signed commitment (so the server's phase-1 checks pass, and only the
    /// holder's Open finds it bad). For the tests that show the holder's complaint excludes the
    /// dealer and the round goes on.
    pub fn deal_bad_share(client: &mut SecAggClient, holder: ClientId, how: BadShare) {
        client.faults.bad_shares.insert(holder, how);
    }

    /// Makes the client a corrupt complainer: it complains about `dealer`'s share whatever the
    /// share is (its K and proof true, the share good). For the test that shows a false
    /// complaint excludes the complainer.
    pub fn complain_falsely(client: &mut SecAggClient, dealer: ClientId) {
        client.faults.false_complaints.insert(dealer);
    }

    /// [`SecAggClient::new`] without the client's own check of (k, t): the plan's degree and
    /// threshold are taken as given, even where they are below what [`crate::params`] computes
    /// from the plan's (n, δ, γ, class), which an honest client refuses (`DESIGN.md`, "Round
    /// context"). For benchmarks that compare with other systems at those systems' parameters
    /// (`secagg-bench --degree/--threshold`): with such a plan the privacy targets do not hold.
    /// Every other check still applies: the plan's validity, the client's floor, the checkpoint
    /// and one input per checkpoint.
    pub fn client_with_plan_parameters(
        identity: Arc<IdentityKey>,
        verifier: Arc<dyn CredentialVerifier>,
        policy: &ClientPolicy,
        plan: impl Into<Arc<RoundPlan>>,
        trained_on: &TrainedOn,
        ledger: &ContributionLedger,
    ) -> Result<SecAggClient> {
        let plan = plan.into();
        SecAggClient::start(identity, verifier, policy, plan, trained_on, ledger, false)
    }
}
