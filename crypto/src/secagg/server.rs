//! The server side of SecAgg / SecAgg+ as a sans-IO state machine.
//!
//! The caller (the coordinator's round engine, or an in-memory driver) feeds each client message
//! to the matching `receive_*` method and, when a phase's deadline passes or everyone answered,
//! calls the matching `close_*` method, which returns the messages to send next. A phase closes
//! only if at least q = max(t, ⌈(1−δ)n⌉) clients remain; otherwise the round aborts and no sum
//! is ever produced. A malformed or unauthenticated message from one client is refused with a
//! typed error and changes nothing. Every `receive_*` method takes the sender's id as the
//! transport authenticated it, and refuses a message that claims another sender.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::context::{GraphKind, PROTOCOL_VERSION, RoundContext, RoundPlan};
use crate::error::{Error, Malformation, Result, SharesProblem};
use crate::graph::Graph;
use crate::ids::ClientId;
use crate::kdf::Label;
use crate::kernel::{DEFAULT_CHUNK_WORDS, Kernel, Sign};
use crate::keys::PublicKey;
use crate::merkle;
use crate::prg::MaskSeed;
use crate::secagg::Phase;
use crate::secagg::client::{Peer, verify_advert, verify_key_proofs};
use crate::secagg::commitments::{self, Dealt, DegreeTest, DualWeights, Entry};
use crate::secagg::complaints::{self, AcceptedRoot, Accused, Complainer, Judged};
use crate::secagg::messages::*;
use crate::shamir::{LagrangeCache, ShareValue};
use crate::sign::{CredentialVerifier, verify};

/// Two 32-byte shares plus the 16-byte Poly1305 tag.
const SHARE_CIPHERTEXT_LEN: usize = 64 + 16;

/// Default number of partial masked inputs held at once.
pub const DEFAULT_MAX_UPLOADS_IN_FLIGHT: usize = 64;

/// Default words per masked-input chunk (1 MiB).
pub const DEFAULT_UPLOAD_CHUNK_WORDS: usize = 1 << 18;

/// Phase 1's checks of one dealer's ShareKeys that read only the message and what phase 0
/// fixed: cheap to clone, `Send` and `Sync`, so that a server checks the messages as they
/// arrive, on as many threads as it has, while the phase waits for the others. Got from
/// [`SecAggServer::share_keys_check`]; its verdicts go back through
/// [`SecAggServer::receive_checked_share_keys`].
#[derive(Clone)]
pub struct ShareKeysCheck(Arc<CheckInner>);

struct CheckInner {
    plan: RoundPlan,
    ctx: RoundContext,
    graph: Graph,
    verifier: Arc<dyn CredentialVerifier>,
    /// U1, with each member's verified keys.
    advertised: BTreeMap<usize, Peer>,
    /// The degree test's weights of the complete graph's one holder set (U1), computed once.
    complete_weights: Option<Arc<DualWeights>>,
}

impl core::fmt::Debug for ShareKeysCheck {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ShareKeysCheck")
            .field("ctx", &self.0.ctx)
            .field("u1", &self.0.advertised.len())
            .finish_non_exhaustive()
    }
}

/// A ShareKeys as [`ShareKeysCheck::check`] judged it: its commitments' dealing if they
/// passed, the reason its dealer is refused if they did not. Made only by the check.
pub struct CheckedShareKeys {
    u: usize,
    msg: ShareKeys,
    outcome: Result<Dealing>,
    /// The checker that judged it: its server takes the verdict only from its own checker.
    by: Arc<CheckInner>,
}

impl core::fmt::Debug for CheckedShareKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CheckedShareKeys")
            .field("client", &self.msg.client)
            .field("passed", &self.outcome.is_ok())
            .finish_non_exhaustive()
    }
}

impl CheckedShareKeys {
    /// The message checked.
    pub fn message(&self) -> &ShareKeys {
        &self.msg
    }
}

impl ShareKeysCheck {
    /// The attempt this checker belongs to.
    pub fn context(&self) -> &RoundContext {
        &self.0.ctx
    }

    /// Checks a ShareKeys from `from` (the authenticated sender). A message that is not one
    /// share for each neighbour in U1, each of the ciphertext length, is refused here
    /// (`Err`, its sender may send a correct one); one whose commitments fail comes back
    /// checked with the reason, for the server to refuse its dealer for the attempt.
    pub fn check(&self, from: ClientId, msg: ShareKeys) -> Result<CheckedShareKeys> {
        let me = &*self.0;
        check_sender(&from, &msg.client)?;
        check_header(msg.version, &msg.ctx, &me.ctx)?;
        let u = me.plan.index_of(&msg.client).ok_or(Error::NotSelected(msg.client))?;
        if !me.advertised.contains_key(&u) {
            return Err(Error::NotEligible { client: msg.client, phase: Phase::ShareKeys });
        }
        let mut seen = BTreeSet::new();
        for s in &msg.shares {
            let v = me.plan.index_of(&s.to).ok_or(Error::NotSelected(s.to))?;
            if v == u || !me.graph.are_neighbours(u, v) {
                return Err(Error::NotNeighbour(s.to));
            }
            if !me.advertised.contains_key(&v) {
                return Err(Error::IncompleteShares {
                    client: msg.client,
                    problem: SharesProblem::NotAdvertised(s.to),
                });
            }
            if s.ciphertext.len() != SHARE_CIPHERTEXT_LEN {
                return Err(Error::IncompleteShares {
                    client: msg.client,
                    problem: SharesProblem::CiphertextLength {
                        to: s.to,
                        got: s.ciphertext.len(),
                        expected: SHARE_CIPHERTEXT_LEN,
                    },
                });
            }
            if !seen.insert(v) {
                return Err(Error::IncompleteShares {
                    client: msg.client,
                    problem: SharesProblem::Duplicate(s.to),
                });
            }
        }
        let expected =
            me.graph.neighbours(u).into_iter().filter(|v| me.advertised.contains_key(v)).count();
        if seen.len() != expected {
            return Err(Error::IncompleteShares {
                client: msg.client,
                problem: SharesProblem::Count { got: seen.len(), expected },
            });
        }
        let outcome = self.check_commitments(u, &msg);
        Ok(CheckedShareKeys { u, msg, outcome, by: Arc::clone(&self.0) })
    }

    /// Protocol v2's phase-1 checks of a dealer's commitments, all before anything of it is
    /// forwarded: the entries are exactly H(u)∩U1 in canonical order (at least t of them), each
    /// but u's own names the SHA-256 of the ciphertext sent with it, every commitment is a
    /// canonical non-identity point, the signature verifies on the recomputed root, and the
    /// degree test passes (g and ρ from the OS RNG, drawn now that the message is complete).
    fn check_commitments(&self, u: usize, msg: &ShareKeys) -> Result<Dealing> {
        let me = &*self.0;
        let problem = |problem| Error::IncompleteShares { client: msg.client, problem };
        let t = me.plan.threshold as usize;
        let mut holders: Vec<usize> =
            me.graph.neighbours(u).into_iter().filter(|v| me.advertised.contains_key(v)).collect();
        // The dealer's rule: at least t holders, u included — the m ≥ t entries the degree
        // test needs. (Not DESIGN's |N(u)∩U1| ≥ t, which the parameters cannot always meet:
        // see `docs/security.md`.)
        holders.push(u);
        if holders.len() < t {
            return Err(problem(SharesProblem::TooFewHolders { have: holders.len(), need: t }));
        }
        holders.sort_unstable();
        if msg.entries.len() != holders.len() {
            return Err(problem(SharesProblem::EntryCount {
                got: msg.entries.len(),
                expected: holders.len(),
            }));
        }
        let sent: BTreeMap<ClientId, &[u8]> =
            msg.shares.iter().map(|s| (s.to, s.ciphertext.as_slice())).collect();
        let mut points = Vec::with_capacity(holders.len());
        for (position, (&h, entry)) in holders.iter().zip(&msg.entries).enumerate() {
            let id = me.plan.selected[h];
            if entry.holder() != id {
                return Err(problem(SharesProblem::EntryHolder { position, expected: id }));
            }
            let hash = match sent.get(&id) {
                Some(ct) => Sha256::digest(ct).into(),
                None => [0u8; 32],
            };
            if entry.ciphertext_hash() != hash {
                return Err(problem(SharesProblem::CiphertextHash(id)));
            }
            points.push(entry.commitments().ok_or(problem(SharesProblem::Commitment(id)))?);
        }
        let tree = merkle::Tree::new(msg.entries.iter().map(Entry::leaf).collect())
            .expect("at least the dealer's own entry");
        let signed = commitments::signed_root(&me.ctx, &msg.client, tree.size(), &tree.root());
        let peer = &me.advertised[&u];
        me.verifier.verify_signature(
            msg.client,
            &peer.verifying_key,
            &signed,
            &msg.root_signature.0,
        )?;
        let xs: Vec<u32> = holders.iter().map(|&h| RoundPlan::x_coordinate(h)).collect();
        let weights = match &me.complete_weights {
            // Every dealer of the complete graph has U1 as its holders.
            Some(w) if w.xs() == xs => Arc::clone(w),
            _ => Arc::new(DualWeights::new(&xs)?),
        };
        let test = DegreeTest {
            threshold: t,
            weights: &weights,
            self_mask_key: &peer.self_mask_commitment,
            mask_key: &peer.mask_pk,
            commitments: &points,
        };
        if !test.passes() {
            return Err(problem(SharesProblem::DegreeTest));
        }
        Ok(Dealing { entries: msg.entries.clone(), signature: msg.root_signature })
    }
}

/// Where the server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerPhase {
    /// Collecting AdvertiseKeys (U1).
    AdvertiseKeys,
    /// Collecting ShareKeys (U2).
    ShareKeys,
    /// Collecting complaints and judging them (E; protocol v2).
    Complaints,
    /// Collecting masked inputs (U3).
    MaskedInputCollection,
    /// Collecting consistency signatures (U4).
    ConsistencyCheck,
    /// Collecting unmasking shares (U5).
    Unmasking,
    /// The sum was produced.
    Finished,
    /// The round was aborted: no sum.
    Aborted,
}

impl ServerPhase {
    /// The protocol phase the server is collecting; none once finished or aborted.
    pub fn phase(self) -> Option<Phase> {
        match self {
            ServerPhase::AdvertiseKeys => Some(Phase::AdvertiseKeys),
            ServerPhase::ShareKeys => Some(Phase::ShareKeys),
            ServerPhase::Complaints => Some(Phase::Complaints),
            ServerPhase::MaskedInputCollection => Some(Phase::MaskedInputCollection),
            ServerPhase::ConsistencyCheck => Some(Phase::ConsistencyCheck),
            ServerPhase::Unmasking => Some(Phase::Unmasking),
            ServerPhase::Finished | ServerPhase::Aborted => None,
        }
    }

    /// Its phase's name, or `Finished` / `Aborted`.
    pub fn name(self) -> &'static str {
        match self.phase() {
            Some(phase) => phase.name(),
            None if self == ServerPhase::Finished => "Finished",
            None => "Aborted",
        }
    }
}

impl From<Phase> for ServerPhase {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::AdvertiseKeys => ServerPhase::AdvertiseKeys,
            Phase::ShareKeys => ServerPhase::ShareKeys,
            Phase::Complaints => ServerPhase::Complaints,
            Phase::MaskedInputCollection => ServerPhase::MaskedInputCollection,
            Phase::ConsistencyCheck => ServerPhase::ConsistencyCheck,
            Phase::Unmasking => ServerPhase::Unmasking,
        }
    }
}

impl core::fmt::Display for ServerPhase {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened to a masked-input chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadProgress {
    /// Stored aside; `received` of `dim` words so far.
    Partial {
        /// Words received.
        received: usize,
        /// Vector length.
        dim: usize,
    },
    /// The upload is complete and was added to the running sum.
    Complete,
    /// An identical chunk was received before (a retry); nothing changed.
    Duplicate,
}

/// Work counters of the unmasking, for benchmarks and the minimality checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnmaskStats {
    /// Mask words expanded (self masks and dropped clients' pairwise masks).
    pub mask_words: u64,
    /// Key agreements run to regenerate pairwise masks.
    pub key_agreements: u64,
    /// Secrets reconstructed (self-mask seeds and dropped mask keys).
    pub reconstructions: u64,
}

/// What the server holds of an attempt once a phase has closed: everything the later phases
/// need and nothing of the open one. The coordinator persists it at each phase close so that
/// the same attempt resumes after a restart ([`SecAggServer::closed_state`],
/// [`SecAggServer::resume`]). It is nothing the server did not already hold in memory: public
/// keys and signed adverts, the sets U1–U3, the dealers' signed commitments, the running
/// masked sum and U4's signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedState {
    /// The last phase that closed.
    pub closed: Phase,
    /// U1's adverts, in canonical order, each with the identity key its credential certified
    /// when it was received (so a resumed attempt does not judge the credential again, at
    /// another time).
    pub adverts: Vec<VerifiedAdvert>,
    /// U2, canonical indices ascending (once phase 1 closed).
    pub u2: Vec<u32>,
    /// Each dealer of U2's commitments and root signature, in the order of U2 (once phase 1
    /// closed; protocol v2): what revealed shares are checked against.
    pub dealings: Vec<Dealing>,
    /// Phase 1½'s complaints messages, in canonical order of sender (once it closed; protocol
    /// v2): on resume each is judged again, which gives E again.
    pub complaints: Vec<Complaints>,
    /// U3, canonical indices ascending (once phase 2 closed).
    pub u3: Vec<u32>,
    /// The sum of U3's masked inputs, little-endian words (once phase 2 closed).
    #[serde(with = "serde_bytes")]
    pub sum: Vec<u8>,
    /// U4's consistency signatures, in canonical order (once phase 3 closed).
    pub signatures: Vec<ConsistencySignature>,
    /// U5's unmasking responses, in canonical order (once phase 4 closed, before the sum is
    /// computed: the shares the server reconstructs from, which it holds in memory then).
    pub unmasking: Vec<UnmaskingResponse>,
}

impl ClosedState {
    /// Its encoding (postcard), what the coordinator authenticates and stores.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding into memory cannot fail")
    }

    /// Decodes [`to_bytes`](Self::to_bytes)' output; trailing bytes are refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        match postcard::take_from_bytes(bytes) {
            Ok((state, [])) => Ok(state),
            _ => Err(Error::SavedStateInconsistent("its encoding does not decode")),
        }
    }
}

/// An advert the server verified, with the identity key its credential certified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedAdvert {
    /// The advert as received.
    pub advert: AdvertiseKeys,
    /// The Ed25519 key the advert's credential certified.
    #[serde(with = "serde_bytes")]
    pub identity_key: [u8; 32],
}

/// A dealer's commitments as the server accepted them: its entries (one per holder of
/// H(u)∩U1, canonical order) and its signature on their Merkle root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dealing {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Sign_id(`share-keys` ‖ ctx ‖ u ‖ m ‖ root).
    pub signature: Sig,
}

impl Dealing {
    /// The entry for `holder`, if it holds a share (entries are in canonical order, which is
    /// the order of client ids).
    pub fn entry(&self, holder: &ClientId) -> Option<(usize, &Entry)> {
        let i = self.entries.binary_search_by(|e| e.holder().cmp(holder)).ok()?;
        Some((i, &self.entries[i]))
    }
}

/// Phase 1's reply to one recipient as a coordinator saves it: the recipient, and the dealer
/// and ciphertext of each share forwarded to it, in order
/// ([`SecAggServer::rebuild_share_forwards`]).
pub type SavedInbox = (ClientId, Vec<(ClientId, Vec<u8>)>);

/// A masked input being received in aligned chunks.
struct PartialUpload {
    words: Vec<u32>,
    /// Which chunks arrived.
    chunks: Vec<bool>,
    received: usize,
}

/// The server's side of one attempt of one round.
pub struct SecAggServer {
    plan: RoundPlan,
    ctx: RoundContext,
    graph: Graph,
    verifier: Arc<dyn CredentialVerifier>,
    phase: ServerPhase,
    abort_reason: Option<Error>,
    advertised: BTreeMap<usize, (AdvertiseKeys, Peer)>,
    /// Phase 1's messages, while it is open (its close forwards them and lets them go).
    share_keys: BTreeMap<usize, ShareKeys>,
    /// U2: the senders of phase 1's messages.
    u2: BTreeSet<usize>,
    /// Each dealer of U2's commitments and signature on their root (protocol v2): the server
    /// forwards each holder its entry and checks every revealed share against it.
    dealings: BTreeMap<usize, Dealing>,
    /// Phase 1's checker, built when first asked for while phase 1 is open.
    share_keys_check: Option<ShareKeysCheck>,
    /// Dealers whose commitments failed the phase-1 checks: excluded as if they had dropped
    /// before ShareKeys, so a later ShareKeys of theirs is refused unread.
    excluded_dealers: BTreeSet<usize>,
    /// Each dealer of U2's signed root as accepted (protocol v2): what a complaint's evidence
    /// must lead to.
    accepted: BTreeMap<usize, AcceptedRoot>,
    /// Phase 1½'s messages, by sender (protocol v2).
    complaints: BTreeMap<usize, Complaints>,
    /// Every complaint received, judged on receipt, in the order received.
    judgements: Vec<Judged>,
    /// E, once phase 1½ closed: excluded from the rest of the attempt. (`u2` keeps U2 as it
    /// closed; from phase 2 on, the protocol's U2 is `u2` less E.)
    excluded: BTreeSet<usize>,
    /// The senders of a complaints message outside E: who may upload a masked input.
    uploaders: BTreeSet<usize>,
    uploads: BTreeMap<usize, PartialUpload>,
    complete: BTreeSet<usize>,
    sum: Vec<u32>,
    survivors: Option<Survivors>,
    consistency: BTreeMap<usize, ConsistencySignature>,
    unmasking: BTreeMap<usize, UnmaskingResponse>,
    pool: Option<Arc<rayon::ThreadPool>>,
    chunk_words: usize,
    upload_chunk_words: usize,
    max_uploads_in_flight: usize,
    stats: UnmaskStats,
    bad_holders: BTreeSet<ClientId>,
}

impl core::fmt::Debug for SecAggServer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SecAggServer")
            .field("ctx", &self.ctx)
            .field("phase", &self.phase)
            .field("u1", &self.advertised.len())
            .field("u2", &self.u2.len())
            .field("u3", &self.complete.len())
            .finish_non_exhaustive()
    }
}

impl SecAggServer {
    /// Starts an attempt from a plan (validated here).
    pub fn new(plan: RoundPlan, verifier: Arc<dyn CredentialVerifier>) -> Result<Self> {
        plan.validate()?;
        let ctx = plan.context();
        let graph = Graph::from_plan(&plan)?;
        let dim = plan.dim as usize;
        Ok(SecAggServer {
            plan,
            ctx,
            graph,
            verifier,
            phase: ServerPhase::AdvertiseKeys,
            abort_reason: None,
            advertised: BTreeMap::new(),
            share_keys: BTreeMap::new(),
            u2: BTreeSet::new(),
            dealings: BTreeMap::new(),
            share_keys_check: None,
            excluded_dealers: BTreeSet::new(),
            accepted: BTreeMap::new(),
            complaints: BTreeMap::new(),
            judgements: Vec::new(),
            excluded: BTreeSet::new(),
            uploaders: BTreeSet::new(),
            uploads: BTreeMap::new(),
            complete: BTreeSet::new(),
            sum: vec![0; dim],
            survivors: None,
            consistency: BTreeMap::new(),
            unmasking: BTreeMap::new(),
            pool: None,
            chunk_words: DEFAULT_CHUNK_WORDS,
            upload_chunk_words: DEFAULT_UPLOAD_CHUNK_WORDS,
            max_uploads_in_flight: DEFAULT_MAX_UPLOADS_IN_FLIGHT,
            stats: UnmaskStats::default(),
            bad_holders: BTreeSet::new(),
        })
    }

    /// What the server holds once its last phase closed, to persist ([`ClosedState`]). `None`
    /// before phase 0 closes, and once the attempt finished or aborted.
    pub fn closed_state(&self) -> Option<ClosedState> {
        let closed = match self.phase {
            ServerPhase::ShareKeys => Phase::AdvertiseKeys,
            ServerPhase::Complaints => Phase::ShareKeys,
            ServerPhase::MaskedInputCollection => Phase::Complaints,
            ServerPhase::ConsistencyCheck => Phase::MaskedInputCollection,
            ServerPhase::Unmasking => Phase::ConsistencyCheck,
            _ => return None,
        };
        let indices = |set: &BTreeSet<usize>| set.iter().map(|&i| i as u32).collect();
        let after = |phase: Phase| closed >= phase;
        Some(ClosedState {
            closed,
            adverts: self
                .advertised
                .values()
                .map(|(advert, peer)| VerifiedAdvert {
                    advert: advert.clone(),
                    identity_key: peer.verifying_key.to_bytes(),
                })
                .collect(),
            u2: if after(Phase::ShareKeys) { indices(&self.u2) } else { Vec::new() },
            dealings: if after(Phase::ShareKeys) {
                self.u2.iter().map(|u| self.dealings[u].clone()).collect()
            } else {
                Vec::new()
            },
            complaints: if after(Phase::Complaints) {
                self.complaints.values().cloned().collect()
            } else {
                Vec::new()
            },
            u3: if after(Phase::MaskedInputCollection) {
                indices(&self.complete)
            } else {
                Vec::new()
            },
            sum: if after(Phase::MaskedInputCollection) {
                self.sum.iter().flat_map(|w| w.to_le_bytes()).collect()
            } else {
                Vec::new()
            },
            signatures: if after(Phase::ConsistencyCheck) {
                self.consistency.values().cloned().collect()
            } else {
                Vec::new()
            },
            unmasking: Vec::new(),
        })
    }

    /// [`closed_state`](Self::closed_state) once the unmasking closed — U5 fixed, before
    /// [`finish`](Self::finish) computes the sum — with the responses received. `None` unless
    /// the unmasking is the open phase.
    pub fn unmasking_closed_state(&self) -> Option<ClosedState> {
        if self.phase != ServerPhase::Unmasking {
            return None;
        }
        let mut state = self.closed_state()?;
        state.closed = Phase::Unmasking;
        state.unmasking = self.unmasking.values().cloned().collect();
        Some(state)
    }

    /// Resumes an attempt from what a server held once `state.closed` closed: the next phase
    /// is open, with nothing of it received. `state` is checked against the plan and against
    /// itself — each advert of the plan's context and a selected client, signed under the
    /// identity key its credential certified when it was received (the key whose hash is the
    /// client's id), each set within the one
    /// before and at least q large, each key a valid encoding, each consistency signature valid
    /// on U3 — so an inconsistent state is refused rather than resumed. Credentials are not
    /// judged again (they were, at their own time). What no signature binds — U2, U3 before
    /// the consistency check, the masked sum — is taken on trust: the caller authenticates the
    /// state (the coordinator seals it with a MAC).
    pub fn resume(
        plan: RoundPlan,
        verifier: Arc<dyn CredentialVerifier>,
        state: ClosedState,
    ) -> Result<Self> {
        let bad = Error::SavedStateInconsistent;
        let mut server = SecAggServer::new(plan, verifier)?;
        let n = server.plan.n();
        let set = |list: &[u32], within: &dyn Fn(usize) -> bool, what| -> Result<BTreeSet<usize>> {
            let out: BTreeSet<usize> = list.iter().map(|&i| i as usize).collect();
            if out.len() != list.len() || out.iter().any(|&i| i >= n || !within(i)) {
                return Err(bad(what));
            }
            Ok(out)
        };
        for VerifiedAdvert { advert, identity_key } in state.adverts {
            check_header(advert.version, &advert.ctx, &server.ctx)?;
            let u = server.index(&advert.client)?;
            let id = advert.client;
            let verifying_key = ed25519_dalek::VerifyingKey::from_bytes(&identity_key)
                .map_err(|_| Error::BadPublicKey(id))?;
            // A client's id is the hash of its identity key: a key that is not this client's
            // (another one, or one made up to sign changed keys) is refused.
            if ClientId::from_spki_der(&crate::sign::ed25519_spki_der(&verifying_key)) != id {
                return Err(Error::BadPublicKey(id));
            }
            let key = |b: &[u8; 32]| PublicKey::from_bytes(b).ok_or(Error::BadPublicKey(id));
            let peer = Peer {
                id,
                verifying_key,
                enc_pk: key(&advert.enc_pk)?,
                mask_pk: key(&advert.mask_pk)?,
                self_mask_commitment: key(&advert.self_mask_commitment)?,
            };
            // The advert's signature under the key its credential certified when it came: a
            // saved state whose keys were changed is refused, not resumed into a wrong sum.
            // (The credential itself is not judged again: it was, at its own time.)
            let signed =
                crate::kdf::labelled(Label::Advertise, &server.ctx, &advert.signed_parts());
            server.verifier.verify_signature(id, &verifying_key, &signed, &advert.signature.0)?;
            verify_key_proofs(
                server.verifier.as_ref(),
                &server.ctx,
                &advert,
                &peer.enc_pk,
                &peer.mask_pk,
            )?;
            if server.advertised.insert(u, (advert, peer)).is_some() {
                return Err(bad("an advert appears twice"));
            }
        }
        let u1 = server.u1();
        let after = |phase: Phase| state.closed >= phase;
        if after(Phase::ShareKeys) {
            server.u2 = set(&state.u2, &|i| u1.contains(&i), "U2 is not within U1")?;
            // Each dealer of U2's commitments: exactly H(u)∩U1, in order, under its signature.
            if state.dealings.len() != server.u2.len() {
                return Err(bad("not one dealing per member of U2"));
            }
            for (&u, dealing) in server.u2.clone().iter().zip(state.dealings) {
                let mut holders: Vec<ClientId> = server
                    .graph
                    .holders(u)
                    .into_iter()
                    .filter(|v| u1.contains(v))
                    .map(|v| server.plan.selected[v])
                    .collect();
                holders.sort_unstable();
                let named: Vec<ClientId> = dealing.entries.iter().map(Entry::holder).collect();
                if named != holders {
                    return Err(bad("a dealing's entries are not its holders"));
                }
                let t = server.plan.threshold as usize;
                if holders.len() < t {
                    return Err(bad("a dealing has fewer holders than the threshold needs"));
                }
                let id = server.plan.selected[u];
                let own = dealing.entry(&id).map(|(_, e)| e.ciphertext_hash());
                if own != Some([0; 32]) {
                    return Err(bad("a dealer's own entry names a ciphertext"));
                }
                if dealing.entries.iter().any(|e| e.commitments().is_none()) {
                    return Err(bad("a dealing's commitment is not a point"));
                }
                let tree = merkle::Tree::new(dealing.entries.iter().map(Entry::leaf).collect())
                    .ok_or(bad("a dealing without entries"))?;
                let signed = commitments::signed_root(&server.ctx, &id, tree.size(), &tree.root());
                let key = server.advertised[&u].1.verifying_key;
                server.verifier.verify_signature(id, &key, &signed, &dealing.signature.0)?;
                let root = AcceptedRoot {
                    root: tree.root(),
                    size: tree.size(),
                    signature: dealing.signature.0,
                };
                server.accepted.insert(u, root);
                server.dealings.insert(u, dealing);
            }
        } else if !state.u2.is_empty() || !state.dealings.is_empty() {
            return Err(bad("U2 before phase 1 closed"));
        }
        if after(Phase::Complaints) {
            // Each complaints message is checked and judged again, as on receipt; E follows.
            server.phase = ServerPhase::Complaints;
            for msg in state.complaints {
                let from = msg.client;
                if server.complaints.contains_key(&server.index(&from)?) {
                    return Err(bad("a complaints message appears twice"));
                }
                server.receive_complaints(from, msg)?;
            }
            server
                .close_complaints()
                .map_err(|_| bad("phase 1½ does not close on the saved complaints"))?;
        } else if !state.complaints.is_empty() {
            return Err(bad("complaints before phase 1½ closed"));
        }
        if after(Phase::MaskedInputCollection) {
            let uploaders = server.uploaders.clone();
            server.complete = set(
                &state.u3,
                &|i| uploaders.contains(&i),
                "U3 is not within the senders of complaints outside E",
            )?;
            if state.sum.len() != 4 * server.plan.dim as usize {
                return Err(bad("the masked sum's length is not the plan's"));
            }
            server.sum = state
                .sum
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            server.survivors = Some(Survivors::from_indices(n, server.complete.iter().copied()));
        } else if !state.u3.is_empty() || !state.sum.is_empty() {
            return Err(bad("U3 before phase 2 closed"));
        }
        if after(Phase::ConsistencyCheck) {
            let excluded = server.excluded_set();
            let [u3_digest, e_digest] = ConsistencyRequest::signed_parts(
                server.survivors.as_ref().expect("set above"),
                &excluded,
            );
            for msg in state.signatures {
                check_header(msg.version, &msg.ctx, &server.ctx)?;
                let u = server.index(&msg.client)?;
                if !server.complete.contains(&u) {
                    return Err(bad("a consistency signature from outside U3"));
                }
                let key = &server.advertised[&u].1.verifying_key;
                verify(
                    key,
                    msg.client,
                    Label::Consistency,
                    &server.ctx,
                    &[&u3_digest, &e_digest],
                    &msg.signature.0,
                )?;
                if server.consistency.insert(u, msg).is_some() {
                    return Err(bad("a consistency signature appears twice"));
                }
            }
        } else if !state.signatures.is_empty() {
            return Err(bad("signatures before phase 3 closed"));
        }
        // The unmasking's responses go through the checks they passed on receipt.
        server.phase = ServerPhase::Unmasking;
        if state.closed == Phase::Unmasking {
            for msg in state.unmasking {
                let from = msg.client;
                if server.unmasking.contains_key(&server.index(&from)?) {
                    return Err(bad("an unmasking response appears twice"));
                }
                server.receive_unmasking(from, msg)?;
            }
        } else if !state.unmasking.is_empty() {
            return Err(bad("unmasking responses before phase 4 closed"));
        }
        // Each closed phase left at least q clients, or it would have aborted.
        let q = server.plan.q();
        let sizes = [
            server.advertised.len(),
            server.u2.len(),
            server.uploaders.len(),
            server.complete.len(),
            server.consistency.len(),
            server.unmasking.len(),
        ];
        if sizes.iter().take(state.closed.index() + 1).any(|&s| s < q) {
            return Err(bad("a closed phase left fewer than q clients"));
        }
        // The phase after the last closed one is open; once the unmasking closed, the
        // unmasking stays the server's phase until `finish`.
        server.phase = match Phase::ALL.get(state.closed.index() + 1) {
            Some(&next) => ServerPhase::from(next),
            None => ServerPhase::Unmasking,
        };
        Ok(server)
    }

    /// Runs the vector kernel on `pool` (threads split the vector by range).
    pub fn with_thread_pool(mut self, pool: Arc<rayon::ThreadPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Sets the kernel's chunk size in words.
    pub fn with_chunk_words(mut self, chunk_words: usize) -> Self {
        self.chunk_words = chunk_words.max(1);
        self
    }

    /// Sets the masked-input chunk size: a chunk must start at a multiple of it and hold exactly
    /// that many words (the last one the rest); a whole vector is also accepted at once.
    pub fn with_upload_chunk_words(mut self, words: usize) -> Self {
        self.upload_chunk_words = words.max(1);
        self
    }

    /// Bounds the partial masked inputs held at once (each holds a whole vector).
    pub fn with_max_uploads_in_flight(mut self, limit: usize) -> Self {
        self.max_uploads_in_flight = limit.max(1);
        self
    }

    /// The plan.
    pub fn plan(&self) -> &RoundPlan {
        &self.plan
    }

    /// The round context.
    pub fn context(&self) -> &RoundContext {
        &self.ctx
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Where the server stands.
    pub fn phase(&self) -> ServerPhase {
        self.phase
    }

    /// Why the round aborted, if it did.
    pub fn abort_reason(&self) -> Option<&Error> {
        self.abort_reason.as_ref()
    }

    /// Counters of the unmasking work.
    pub fn stats(&self) -> UnmaskStats {
        self.stats
    }

    /// Holders whose revealed share did not fit the published point and was left out of a
    /// reconstruction (known after [`Self::finish`]). The coordinator should not select them again.
    pub fn misbehaving_holders(&self) -> &BTreeSet<ClientId> {
        &self.bad_holders
    }

    /// U1: canonical indices of the clients that advertised keys.
    pub fn u1(&self) -> BTreeSet<usize> {
        self.advertised.keys().copied().collect()
    }

    /// U2: canonical indices of the clients that shared keys.
    pub fn u2(&self) -> BTreeSet<usize> {
        self.u2.clone()
    }

    /// U3: canonical indices of the clients whose masked input is complete.
    pub fn u3(&self) -> BTreeSet<usize> {
        self.complete.clone()
    }

    /// |U3| so far.
    pub fn u3_len(&self) -> usize {
        self.complete.len()
    }

    /// Masked inputs being received (not yet complete): what bounds the memory in flight.
    pub fn uploads_in_flight(&self) -> usize {
        self.uploads.len()
    }

    /// Drops `client`'s partial masked input (its upload lease ran out: it sent no new chunk
    /// for too long), freeing its place among the uploads in flight. Returns whether there was
    /// one. A complete upload is in the sum and stays; the caller decides whether the client may
    /// start over (the coordinator's engine counts it as dropped and refuses its chunks).
    pub fn evict_upload(&mut self, client: &ClientId) -> bool {
        self.plan.index_of(client).is_some_and(|u| self.uploads.remove(&u).is_some())
    }

    /// Aborts the round: nothing more is accepted and no sum is produced.
    pub fn abort(&mut self, reason: Error) {
        self.phase = ServerPhase::Aborted;
        self.abort_reason = Some(reason);
        self.uploads.clear();
        self.sum.clear();
    }

    fn expect_phase(&self, expected: Phase) -> Result<()> {
        if let Some(reason) = &self.abort_reason {
            return Err(Error::Aborted(Box::new(reason.clone())));
        }
        if self.phase != ServerPhase::from(expected) {
            return Err(Error::OutOfPhase { expected: self.phase.name(), got: expected });
        }
        Ok(())
    }

    fn index(&self, id: &ClientId) -> Result<usize> {
        self.plan.index_of(id).ok_or(Error::NotSelected(*id))
    }

    fn require_quorum(&mut self, phase: Phase, have: usize) -> Result<()> {
        let need = self.plan.q();
        if have < need {
            let e = Error::TooFewClients { phase, have, need };
            self.abort(e.clone());
            return Err(e);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- phase 0

    /// Phase 0: an advertisement. Verifies the credential, signature and keys.
    pub fn receive_advertise(&mut self, from: ClientId, msg: AdvertiseKeys) -> Result<()> {
        check_sender(&from, &msg.client)?;
        self.expect_phase(Phase::AdvertiseKeys)?;
        check_header(msg.version, &msg.ctx, &self.ctx)?;
        let idx = self.index(&msg.client)?;
        if let Some((prev, _)) = self.advertised.get(&idx) {
            return if *prev == msg { Ok(()) } else { Err(Error::DuplicateClient(msg.client)) };
        }
        let peer = verify_advert(self.verifier.as_ref(), &self.ctx, &msg)?;
        self.advertised.insert(idx, (msg, peer));
        Ok(())
    }

    /// Closes phase 0 (U1 fixed) and returns, for each u ∈ U1, the advertisements of
    /// H(u) ∩ U1.
    pub fn close_advertise(&mut self) -> Result<Vec<KeysForward>> {
        self.expect_phase(Phase::AdvertiseKeys)?;
        self.require_quorum(Phase::AdvertiseKeys, self.advertised.len())?;
        let mut out = Vec::with_capacity(self.advertised.len());
        for (&u, (advert, _)) in &self.advertised {
            let adverts = self
                .graph
                .holders(u)
                .into_iter()
                .filter_map(|v| self.advertised.get(&v).map(|(a, _)| a.clone()))
                .collect();
            out.push(KeysForward {
                version: PROTOCOL_VERSION,
                ctx: self.ctx,
                recipient: advert.client,
                adverts,
            });
        }
        self.phase = ServerPhase::ShareKeys;
        Ok(out)
    }

    // ---------------------------------------------------------------- phase 1

    /// Phase 1: a client's encrypted shares, exactly one per neighbour in U1. The same as
    /// [`check`](ShareKeysCheck::check) with [`share_keys_check`](Self::share_keys_check)'s
    /// checker, then [`receive_checked_share_keys`](Self::receive_checked_share_keys).
    pub fn receive_share_keys(&mut self, from: ClientId, msg: ShareKeys) -> Result<()> {
        check_sender(&from, &msg.client)?;
        let check = self.share_keys_check()?;
        check_header(msg.version, &msg.ctx, &self.ctx)?;
        let u = self.index(&msg.client)?;
        // A resend, or a message from a dealer already refused: answered without the checks.
        if let Some(answer) = self.share_keys_seen(u, &msg) {
            return answer;
        }
        let checked = check.check(from, msg)?;
        self.receive_checked_share_keys(from, checked)
    }

    /// The checker of phase 1's messages, while phase 1 is open: every check of a ShareKeys
    /// that reads only the message and what phase 0 fixed (the signature, the ciphertext
    /// hashes, the commitments and the degree test), to run off the server's state — on
    /// another thread, as the messages arrive — before
    /// [`receive_checked_share_keys`](Self::receive_checked_share_keys) takes the result.
    pub fn share_keys_check(&mut self) -> Result<ShareKeysCheck> {
        self.expect_phase(Phase::ShareKeys)?;
        if let Some(check) = &self.share_keys_check {
            return Ok(check.clone());
        }
        let advertised: BTreeMap<usize, Peer> =
            self.advertised.iter().map(|(&u, (_, peer))| (u, peer.clone())).collect();
        // The complete graph's dealers all have U1 as their holders: one set of weights.
        let complete_weights = match self.graph.kind() {
            GraphKind::Complete => {
                let xs: Vec<u32> = advertised.keys().map(|&h| RoundPlan::x_coordinate(h)).collect();
                Some(Arc::new(DualWeights::new(&xs)?))
            }
            _ => None,
        };
        let check = ShareKeysCheck(Arc::new(CheckInner {
            plan: self.plan.clone(),
            ctx: self.ctx,
            graph: self.graph.clone(),
            verifier: Arc::clone(&self.verifier),
            advertised,
            complete_weights,
        }));
        self.share_keys_check = Some(check.clone());
        Ok(check)
    }

    /// Takes a ShareKeys [`ShareKeysCheck::check`] judged: accepted into U2 if it passed (and
    /// its dealer neither answered already nor was refused), its dealer refused for the rest of
    /// the attempt if its commitments failed. A resend of the message accepted is accepted
    /// again; another message from the same dealer is refused.
    pub fn receive_checked_share_keys(
        &mut self,
        from: ClientId,
        checked: CheckedShareKeys,
    ) -> Result<()> {
        let CheckedShareKeys { u, msg, outcome, by } = checked;
        check_sender(&from, &msg.client)?;
        self.expect_phase(Phase::ShareKeys)?;
        // Only this server's checker of this phase 1 (cleared when the phase closes).
        if !self.share_keys_check.as_ref().is_some_and(|c| Arc::ptr_eq(&c.0, &by)) {
            return Err(Error::WrongContext);
        }
        check_header(msg.version, &msg.ctx, &self.ctx)?;
        if self.index(&msg.client)? != u {
            return Err(Error::WrongContext);
        }
        if let Some(answer) = self.share_keys_seen(u, &msg) {
            return answer;
        }
        match outcome {
            Ok(dealing) => {
                self.dealings.insert(u, dealing);
                self.share_keys.insert(u, msg);
                self.u2.insert(u);
                Ok(())
            }
            Err(e) => {
                self.excluded_dealers.insert(u);
                Err(e)
            }
        }
    }

    /// The dealers refused at phase 1 (their commitments failed its checks): out of the
    /// attempt, as if they had dropped before ShareKeys.
    pub fn refused_dealers(&self) -> BTreeSet<ClientId> {
        self.excluded_dealers.iter().map(|&u| self.plan.selected[u]).collect()
    }

    /// Whether a ShareKeys from `client` is answered without checks: one of its was accepted
    /// (a resend is taken again, another message refused) or refused (any is refused).
    pub fn share_keys_answered(&self, client: &ClientId) -> bool {
        self.plan
            .index_of(client)
            .is_some_and(|u| self.share_keys.contains_key(&u) || self.excluded_dealers.contains(&u))
    }

    /// The answer to a ShareKeys from u that needs no checks: a resend of the message accepted,
    /// another message after one was accepted, or any message after u's was refused.
    fn share_keys_seen(&self, u: usize, msg: &ShareKeys) -> Option<Result<()>> {
        if let Some(prev) = self.share_keys.get(&u) {
            return Some(if prev == msg {
                Ok(())
            } else {
                Err(Error::DuplicateClient(msg.client))
            });
        }
        self.excluded_dealers
            .contains(&u)
            .then_some(Err(Error::NotEligible { client: msg.client, phase: Phase::ShareKeys }))
    }

    /// Closes phase 1 (U2 fixed) and returns, for each v ∈ U2, the ciphertexts addressed to v
    /// by its neighbours in U2.
    pub fn close_share_keys(&mut self) -> Result<Vec<SharesForward>> {
        self.expect_phase(Phase::ShareKeys)?;
        self.require_quorum(Phase::ShareKeys, self.share_keys.len())?;
        let mut inbox: BTreeMap<ClientId, Vec<ForwardedShares>> =
            self.share_keys.values().map(|m| (m.client, Vec::new())).collect();
        for (u, msg) in &self.share_keys {
            let dealing = &self.dealings[u];
            let tree = merkle::Tree::new(dealing.entries.iter().map(Entry::leaf).collect())
                .expect("at least the dealer's own entry");
            self.accepted.insert(
                *u,
                AcceptedRoot {
                    root: tree.root(),
                    size: tree.size(),
                    signature: dealing.signature.0,
                },
            );
            for s in &msg.shares {
                if let Some(list) = inbox.get_mut(&s.to) {
                    let (index, entry) = dealing.entry(&s.to).expect("checked on receipt");
                    list.push(ForwardedShares {
                        from: msg.client,
                        dealt: Dealt {
                            entry: *entry,
                            index: index as u32,
                            size: tree.size(),
                            path: tree.path(index as u32).expect("an index of the tree"),
                            signature: dealing.signature.0,
                            ciphertext: s.ciphertext.clone(),
                        },
                    });
                }
            }
        }
        self.phase = ServerPhase::Complaints;
        // Forwarded: the server needs only U2 and the dealings from here on.
        self.share_keys.clear();
        self.share_keys_check = None;
        Ok(inbox
            .into_iter()
            .map(|(recipient, shares)| SharesForward {
                version: PROTOCOL_VERSION,
                ctx: self.ctx,
                recipient,
                shares,
            })
            .collect())
    }

    /// Phase 1's replies rebuilt from the dealings this server holds and, for each recipient,
    /// the ciphertexts it was forwarded (dealer, ciphertext) in the order they were: byte for
    /// byte what [`close_share_keys`](Self::close_share_keys) sent. A coordinator saves only
    /// the ciphertexts and rebuilds the rest after a restart (each dealer's entry, index, path
    /// and signature come from its checked dealing, never from the saved replies). `None` if a
    /// dealer holds no dealing or did not deal the recipient a share.
    pub fn rebuild_share_forwards(&self, inboxes: Vec<SavedInbox>) -> Option<Vec<SharesForward>> {
        let mut trees: BTreeMap<usize, merkle::Tree> = BTreeMap::new();
        let mut out = Vec::with_capacity(inboxes.len());
        for (recipient, inbox) in inboxes {
            let mut shares = Vec::with_capacity(inbox.len());
            for (from, ciphertext) in inbox {
                let u = self.plan.index_of(&from)?;
                let dealing = self.dealings.get(&u)?;
                let tree = match trees.entry(u) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => v.insert(merkle::Tree::new(
                        dealing.entries.iter().map(Entry::leaf).collect(),
                    )?),
                };
                if from == recipient {
                    return None;
                }
                let (index, entry) = dealing.entry(&recipient)?;
                shares.push(ForwardedShares {
                    from,
                    dealt: Dealt {
                        entry: *entry,
                        index: index as u32,
                        size: tree.size(),
                        path: tree.path(index as u32)?,
                        signature: dealing.signature.0,
                        ciphertext,
                    },
                });
            }
            out.push(SharesForward { version: PROTOCOL_VERSION, ctx: self.ctx, recipient, shares });
        }
        Some(out)
    }

    // ---------------------------------------------------------------- phase 1½

    /// Phase 1½ (protocol v2): a client's complaints, possibly none. The message must come
    /// from a member of U2, be signed on this attempt by its sender, and have the shape every
    /// complaints message has ([`complaints::check_shape`]); each complaint in it is then
    /// judged on receipt, independently of the others ([`complaints::judge`]). A dealer is
    /// accusable only by its neighbours in U2 as phase 1 closed.
    pub fn receive_complaints(&mut self, from: ClientId, msg: Complaints) -> Result<()> {
        check_sender(&from, &msg.client)?;
        self.expect_phase(Phase::Complaints)?;
        check_header(msg.version, &msg.ctx, &self.ctx)?;
        let v = self.index(&msg.client)?;
        if !self.u2.contains(&v) {
            return Err(Error::NotEligible { client: msg.client, phase: Phase::Complaints });
        }
        if let Some(prev) = self.complaints.get(&v) {
            return if *prev == msg { Ok(()) } else { Err(Error::DuplicateClient(msg.client)) };
        }
        let dealers = self.graph.neighbours(v).into_iter().filter(|u| self.u2.contains(u)).count();
        complaints::check_shape(&msg, dealers)?;
        let complainer = &self.advertised[&v].1;
        complaints::verify_signature(&self.ctx, &msg, &complainer.verifying_key)?;
        for c in &msg.complaints {
            let accused = self.accusable(&c.accused, v).map(|u| {
                let peer = &self.advertised[&u].1;
                Accused {
                    id: &peer.id,
                    enc_pk: &peer.enc_pk,
                    identity_key: &peer.verifying_key,
                    accepted: &self.accepted[&u],
                }
            });
            let judgement = complaints::judge(
                &self.ctx,
                Complainer { id: &complainer.id, enc_pk: &complainer.enc_pk },
                accused,
                c,
            );
            self.judgements.push(Judged { complainer: msg.client, accused: c.accused, judgement });
        }
        self.complaints.insert(v, msg);
        Ok(())
    }

    /// The canonical index of `accused` if client `v` may accuse it: a neighbour of v in U2 as
    /// phase 1 closed (a dealer that dealt v a share).
    fn accusable(&self, accused: &ClientId, v: usize) -> Option<usize> {
        self.plan
            .index_of(accused)
            .filter(|&u| self.u2.contains(&u) && self.graph.are_neighbours(u, v))
    }

    /// Closes phase 1½: E is the party each complaint excludes. Aborts if fewer than q
    /// senders of a complaints message remain outside E, or if a member of U2 outside E has
    /// fewer than t share holders (itself included) left in U2 \ E — its secrets could not be
    /// rebuilt. Returns E for the senders of a complaints message; only those outside E may
    /// upload.
    pub fn close_complaints(&mut self) -> Result<Exclusions> {
        self.expect_phase(Phase::Complaints)?;
        let excluded: BTreeSet<usize> = self
            .judgements
            .iter()
            .map(|j| self.plan.index_of(&j.excluded()).expect("an upheld accused is selected"))
            .collect();
        let uploaders: BTreeSet<usize> =
            self.complaints.keys().filter(|v| !excluded.contains(v)).copied().collect();
        self.require_quorum(Phase::Complaints, uploaders.len())?;
        let t = self.plan.threshold as usize;
        for &u in self.u2.iter().filter(|u| !excluded.contains(u)) {
            let have = self
                .graph
                .holders(u)
                .into_iter()
                .filter(|h| self.u2.contains(h) && !excluded.contains(h))
                .count();
            if have < t {
                let e = Error::HolderShortfall { client: self.plan.selected[u], have, need: t };
                self.abort(e.clone());
                return Err(e);
            }
        }
        self.excluded = excluded;
        self.uploaders = uploaders;
        self.phase = ServerPhase::MaskedInputCollection;
        Ok(self.exclusions().expect("phase 1½ closed"))
    }

    /// What phase 1½'s close sent ([`close_complaints`](Self::close_complaints)'s output),
    /// once it closed.
    pub fn exclusions(&self) -> Option<Exclusions> {
        let closed = matches!(
            self.phase,
            ServerPhase::MaskedInputCollection
                | ServerPhase::ConsistencyCheck
                | ServerPhase::Unmasking
                | ServerPhase::Finished
        );
        if !closed {
            return None;
        }
        Some(Exclusions { version: PROTOCOL_VERSION, ctx: self.ctx, excluded: self.excluded_set() })
    }

    /// E as a bitmap (empty before phase 1½ closes).
    fn excluded_set(&self) -> Survivors {
        Survivors::from_indices(self.plan.n(), self.excluded.iter().copied())
    }

    /// Every complaint received so far, with its judgement, in the order received.
    pub fn judgements(&self) -> &[Judged] {
        &self.judgements
    }

    /// Each complaints message that holds a complaint, with what judging it took and the
    /// judgements made, in canonical order of complainer: what the audit log records.
    pub fn audited_complaints(&self) -> Vec<complaints::AuditedComplaints> {
        // One message per complainer, one complaint per accused in it.
        let made: BTreeMap<(ClientId, ClientId), complaints::Judgement> =
            self.judgements.iter().map(|j| ((j.complainer, j.accused), j.judgement)).collect();
        let mut out = Vec::new();
        for (&v, msg) in &self.complaints {
            let peer = &self.advertised[&v].1;
            let accused = msg
                .complaints
                .iter()
                .map(|c| {
                    let judgement = made[&(msg.client, c.accused)];
                    let keys = self.accusable(&c.accused, v).map(|u| {
                        let p = &self.advertised[&u].1;
                        (p.verifying_key.to_bytes(), p.enc_pk.to_bytes(), self.accepted[&u])
                    });
                    complaints::AuditedAccused { keys, judgement }
                })
                .collect();
            if !msg.complaints.is_empty() {
                out.push(complaints::AuditedComplaints {
                    ctx: self.ctx,
                    complainer_identity_key: peer.verifying_key.to_bytes(),
                    complainer_enc_pk: peer.enc_pk.to_bytes(),
                    message: msg.clone(),
                    accused,
                });
            }
        }
        out
    }

    /// The complaints messages received, by sender, in canonical order.
    pub fn complaints(&self) -> impl Iterator<Item = &Complaints> {
        self.complaints.values()
    }

    /// E, canonical indices (empty before phase 1½ closes).
    pub fn excluded(&self) -> &BTreeSet<usize> {
        &self.excluded
    }

    /// The senders of a complaints message outside E, who may upload (once phase 1½ closed).
    pub fn uploaders(&self) -> BTreeSet<usize> {
        self.uploaders.clone()
    }

    /// Each dealer of U2's accepted signed root (once phase 1 closed).
    pub fn accepted_roots(&self) -> &BTreeMap<usize, AcceptedRoot> {
        &self.accepted
    }

    // ---------------------------------------------------------------- phase 2

    /// Phase 2: a masked input, whole or in chunks at word offsets. A client's upload is kept
    /// aside until complete, then added to the running sum.
    pub fn receive_masked_input(
        &mut self,
        from: ClientId,
        msg: &MaskedInput,
    ) -> Result<UploadProgress> {
        check_sender(&from, &msg.client)?;
        self.expect_phase(Phase::MaskedInputCollection)?;
        check_header(msg.version, &msg.ctx, &self.ctx)?;
        let u = self.index(&msg.client)?;
        if !self.uploaders.contains(&u) {
            return Err(Error::NotEligible {
                client: msg.client,
                phase: Phase::MaskedInputCollection,
            });
        }
        if self.complete.contains(&u) {
            return Err(Error::UploadComplete(msg.client));
        }
        let dim = self.plan.dim as usize;
        let offset = msg.offset as usize;
        let len = msg.data.len() / 4;
        if !msg.data.len().is_multiple_of(4) || len == 0 || offset + len > dim {
            return Err(Error::BadChunk { offset, len, dim });
        }
        let pool = self.pool.clone();
        let kernel = Kernel { chunk_words: self.chunk_words, pool: pool.as_deref() };
        if offset == 0 && len == dim && !self.uploads.contains_key(&u) {
            // The whole vector at once: add it straight into the sum.
            add_le_words(&kernel, &mut self.sum, &msg.data);
            self.complete.insert(u);
            return Ok(UploadProgress::Complete);
        }
        let c = self.upload_chunk_words;
        if !offset.is_multiple_of(c) || len != c.min(dim - offset) {
            return Err(Error::BadChunk { offset, len, dim });
        }
        if !self.uploads.contains_key(&u) && self.uploads.len() >= self.max_uploads_in_flight {
            return Err(Error::TooManyUploadsInFlight { limit: self.max_uploads_in_flight });
        }
        let upload = self.uploads.entry(u).or_insert_with(|| PartialUpload {
            words: vec![0; dim],
            chunks: vec![false; dim.div_ceil(c)],
            received: 0,
        });
        let end = offset + len;
        let chunk = offset / c;
        if upload.chunks[chunk] {
            let same = upload.words[offset..end]
                .iter()
                .zip(msg.data.chunks_exact(4))
                .all(|(w, b)| *w == u32::from_le_bytes(b.try_into().expect("4 bytes")));
            return if same {
                Ok(UploadProgress::Duplicate)
            } else {
                Err(Error::BadChunk { offset, len, dim })
            };
        }
        for (w, b) in upload.words[offset..end].iter_mut().zip(msg.data.chunks_exact(4)) {
            *w = u32::from_le_bytes(b.try_into().expect("4 bytes"));
        }
        upload.chunks[chunk] = true;
        upload.received += len;
        if upload.received < dim {
            return Ok(UploadProgress::Partial { received: upload.received, dim });
        }
        let upload = self.uploads.remove(&u).expect("present above");
        kernel.add_vector(&mut self.sum, &upload.words)?;
        self.complete.insert(u);
        Ok(UploadProgress::Complete)
    }

    /// Closes phase 2 (U3 fixed; incomplete uploads are dropped) and returns U3 for every
    /// client in it.
    pub fn close_masked_input(&mut self) -> Result<ConsistencyRequest> {
        self.expect_phase(Phase::MaskedInputCollection)?;
        self.uploads.clear();
        self.require_quorum(Phase::MaskedInputCollection, self.complete.len())?;
        let survivors = Survivors::from_indices(self.plan.n(), self.complete.iter().copied());
        self.survivors = Some(survivors);
        self.phase = ServerPhase::ConsistencyCheck;
        Ok(self.consistency_request().expect("set above"))
    }

    // ---------------------------------------------------------------- phase 3

    /// Phase 3: a client's signature on U3.
    pub fn receive_consistency(&mut self, from: ClientId, msg: ConsistencySignature) -> Result<()> {
        check_sender(&from, &msg.client)?;
        self.expect_phase(Phase::ConsistencyCheck)?;
        check_header(msg.version, &msg.ctx, &self.ctx)?;
        let u = self.index(&msg.client)?;
        if !self.complete.contains(&u) {
            return Err(Error::NotEligible { client: msg.client, phase: Phase::ConsistencyCheck });
        }
        if let Some(prev) = self.consistency.get(&u) {
            return if *prev == msg { Ok(()) } else { Err(Error::DuplicateClient(msg.client)) };
        }
        let [u3_digest, e_digest] = ConsistencyRequest::signed_parts(
            self.survivors.as_ref().expect("set when phase 2 closed"),
            &self.excluded_set(),
        );
        let key = &self.advertised[&u].1.verifying_key;
        let parts: [&[u8]; 2] = [&u3_digest, &e_digest];
        verify(key, msg.client, Label::Consistency, &self.ctx, &parts, &msg.signature.0)?;
        self.consistency.insert(u, msg);
        Ok(())
    }

    /// Closes phase 3 (U4 fixed) and returns U3 with the signatures collected.
    pub fn close_consistency(&mut self) -> Result<UnmaskingRequest> {
        self.expect_phase(Phase::ConsistencyCheck)?;
        self.require_quorum(Phase::ConsistencyCheck, self.consistency.len())?;
        self.phase = ServerPhase::Unmasking;
        self.unmasking_request()
    }

    /// What phase 2's close sent U3 ([`close_masked_input`](Self::close_masked_input)'s
    /// output), once it closed.
    pub fn consistency_request(&self) -> Option<ConsistencyRequest> {
        let survivors = self.survivors.clone()?;
        Some(ConsistencyRequest {
            version: PROTOCOL_VERSION,
            ctx: self.ctx,
            survivors,
            excluded: self.excluded_set(),
        })
    }

    /// What phase 3's close sent U4 ([`close_consistency`](Self::close_consistency)'s output),
    /// once it closed: U3 and the signatures on it, each with its signer's credential.
    pub fn unmasking_request(&self) -> Result<UnmaskingRequest> {
        if !matches!(self.phase, ServerPhase::Unmasking | ServerPhase::Finished) {
            return Err(Error::OutOfPhase { expected: self.phase.name(), got: Phase::Unmasking });
        }
        let signatures = self
            .consistency
            .iter()
            .map(|(u, s)| SignedSurvivors {
                client: s.client,
                credential: self.advertised[u].0.credential.clone(),
                signature: s.signature,
            })
            .collect();
        Ok(UnmaskingRequest {
            version: PROTOCOL_VERSION,
            ctx: self.ctx,
            survivors: self.survivors.clone().expect("set when phase 2 closed"),
            signatures,
        })
    }

    // ---------------------------------------------------------------- phase 4

    /// Phase 4: a holder's revealed shares. Each share must be one the holder may reveal: of b_v
    /// for v ∈ H(u) ∩ U3, of s_v^SK for v ∈ N(u) ∩ (U2 \ U3).
    pub fn receive_unmasking(&mut self, from: ClientId, msg: UnmaskingResponse) -> Result<()> {
        check_sender(&from, &msg.client)?;
        self.expect_phase(Phase::Unmasking)?;
        check_header(msg.version, &msg.ctx, &self.ctx)?;
        let h = self.index(&msg.client)?;
        if !self.consistency.contains_key(&h) {
            return Err(Error::NotEligible { client: msg.client, phase: Phase::Unmasking });
        }
        if let Some(prev) = self.unmasking.get(&h) {
            return if *prev == msg { Ok(()) } else { Err(Error::DuplicateClient(msg.client)) };
        }
        let mut owners = BTreeSet::new();
        for s in &msg.self_mask_shares {
            let v = self.index(&s.owner)?;
            if !(v == h || self.graph.are_neighbours(h, v)) {
                return Err(Error::NotNeighbour(s.owner));
            }
            if !self.complete.contains(&v) || !owners.insert(v) {
                return Err(Error::Malformed(Malformation::UnexpectedSelfMaskShare(s.owner)));
            }
            ShareValue::from_bytes(&s.share)
                .ok_or(Error::Malformed(Malformation::NonCanonicalShare(s.owner)))?;
        }
        for s in &msg.mask_key_shares {
            let v = self.index(&s.owner)?;
            if !self.graph.are_neighbours(h, v) {
                return Err(Error::NotNeighbour(s.owner));
            }
            if self.complete.contains(&v)
                || !self.u2.contains(&v)
                || self.excluded.contains(&v)
                || !owners.insert(v)
            {
                return Err(Error::Malformed(Malformation::UnexpectedMaskKeyShare(s.owner)));
            }
            ShareValue::from_bytes(&s.share)
                .ok_or(Error::Malformed(Malformation::NonCanonicalShare(s.owner)))?;
        }
        self.unmasking.insert(h, msg);
        Ok(())
    }

    /// Closes phase 4: reconstructs each survivor's self-mask seed and each dropped client's
    /// mask key from t shares, checks b_v·G = B_v and s_v^SK·G = s_v^PK, and removes the masks:
    /// z = Σ_{u∈U3} y_u − Σ_{u∈U3} PRG(self_u) − Σ_{v∈U2\U3} Σ_{u∈N(v)∩U3} σ(u,v)·PRG(s_uv).
    pub fn finish(&mut self) -> Result<Vec<u32>> {
        self.expect_phase(Phase::Unmasking)?;
        self.require_quorum(Phase::Unmasking, self.unmasking.len())?;
        match self.unmask() {
            Ok(sum) => {
                self.phase = ServerPhase::Finished;
                Ok(sum)
            }
            Err(e) => {
                self.abort(e.clone());
                Err(e)
            }
        }
    }

    /// Reconstructs `owner`'s secret from any t of `shares` (x, share) that match the
    /// commitments its dealing published (protocol v2): a share that does not is its holder's
    /// fault alone (its x goes into `bad`), and costs nothing while t others match. The first t
    /// shares are tried first, checked against the secret's public key (B_u, s_u^PK); the
    /// shares are checked one by one against their commitments only when that fails.
    fn reconstruct_committed(
        &self,
        cache: &mut LagrangeCache,
        owner: usize,
        shares: &[(u32, ShareValue)],
        which: Secret,
        bad: &mut BTreeSet<u32>,
    ) -> Result<crate::keys::SecretScalar> {
        let t = self.plan.threshold as usize;
        let id = self.plan.selected[owner];
        let (expected, what) = match which {
            Secret::SelfMask => {
                (&self.advertised[&owner].1.self_mask_commitment, "self-mask seed b")
            }
            Secret::MaskKey => (&self.advertised[&owner].1.mask_pk, "mask key s^SK"),
        };
        // The usual case first: the first t shares give the secret behind its public key.
        // (The commitments fix one polynomial, so that secret is the right one even if shares
        // were wrong in ways that cancel; no holder is blamed without its own share failing.)
        if shares.len() >= t {
            let first: Vec<(u32, &ShareValue)> =
                shares[..t].iter().map(|(x, share)| (*x, share)).collect();
            if let Ok(secret) = cache.reconstruct_checked(&first, expected) {
                return Ok(secret);
            }
        }
        let dealing = &self.dealings[&owner];
        let mut good: Vec<(u32, &ShareValue)> = Vec::with_capacity(t);
        for (x, share) in shares {
            if good.len() == t {
                break;
            }
            let holder = self.plan.selected[*x as usize - 1];
            let committed = dealing.entry(&holder).map(|(_, e)| match which {
                Secret::SelfMask => e.self_mask_commitment(),
                Secret::MaskKey => e.mask_key_commitment(),
            });
            if committed == Some(share.commitment().compress().to_bytes()) {
                good.push((*x, share));
            } else {
                bad.insert(*x);
            }
        }
        if good.len() < t {
            return Err(Error::ShareCountBelowThreshold { client: id, have: good.len(), need: t });
        }
        cache
            .reconstruct_checked(&good, expected)
            .map_err(|_| Error::ReconstructionMismatch { client: id, what })
    }

    fn unmask(&mut self) -> Result<Vec<u32>> {
        let mut bad_holders = BTreeSet::new();
        let result = self.unmask_into(&mut bad_holders);
        // Named on an abort too: lying may be why there are too few shares.
        self.bad_holders =
            bad_holders.into_iter().map(|x: u32| self.plan.selected[x as usize - 1]).collect();
        result
    }

    fn unmask_into(&mut self, bad_holders: &mut BTreeSet<u32>) -> Result<Vec<u32>> {
        // Collect shares by owner: (x of holder, share).
        let mut self_shares: BTreeMap<usize, Vec<(u32, ShareValue)>> = BTreeMap::new();
        let mut key_shares: BTreeMap<usize, Vec<(u32, ShareValue)>> = BTreeMap::new();
        for (&h, msg) in &self.unmasking {
            let x = RoundPlan::x_coordinate(h);
            for s in &msg.self_mask_shares {
                let v = self.plan.index_of(&s.owner).expect("checked on receipt");
                let share = ShareValue::from_bytes(&s.share).expect("checked on receipt");
                self_shares.entry(v).or_default().push((x, share));
            }
            for s in &msg.mask_key_shares {
                let v = self.plan.index_of(&s.owner).expect("checked on receipt");
                let share = ShareValue::from_bytes(&s.share).expect("checked on receipt");
                key_shares.entry(v).or_default().push((x, share));
            }
        }
        let mut cache = LagrangeCache::new();
        let mut seeds: Vec<(MaskSeed, Sign)> = Vec::new();
        let mut stats = UnmaskStats::default();
        for &u in &self.complete {
            let id = self.plan.selected[u];
            let shares = self_shares.get(&u).map(Vec::as_slice).unwrap_or(&[]);
            let b =
                self.reconstruct_committed(&mut cache, u, shares, Secret::SelfMask, bad_holders)?;
            stats.reconstructions += 1;
            seeds.push((MaskSeed::self_mask(&b, &self.ctx, &id), Sign::Sub));
        }
        let mut dropped = Vec::new();
        // U2 \ E: nothing of an excluded client is in the sum, and nothing of it is rebuilt.
        for &v in
            self.u2.iter().filter(|v| !self.complete.contains(v) && !self.excluded.contains(v))
        {
            let v_id = self.plan.selected[v];
            let survivors: Vec<usize> = self
                .graph
                .neighbours(v)
                .into_iter()
                .filter(|u| self.complete.contains(u))
                .collect();
            if survivors.is_empty() {
                // No mask of v is left in the sum: nothing to reconstruct.
                continue;
            }
            let shares = key_shares.get(&v).map(Vec::as_slice).unwrap_or(&[]);
            let s_v =
                self.reconstruct_committed(&mut cache, v, shares, Secret::MaskKey, bad_holders)?;
            stats.reconstructions += 1;
            stats.key_agreements += survivors.len() as u64;
            dropped.push((s_v, v_id, survivors));
        }
        // Regenerate the dropped clients' pairwise seeds: one key agreement each, spread over
        // the pool. u added σ(u,v)·PRG(s_uv); take it away.
        let pairs: Vec<(&crate::keys::SecretScalar, ClientId, usize)> = dropped
            .iter()
            .flat_map(|(s_v, v_id, us)| us.iter().map(move |&u| (s_v, *v_id, u)))
            .collect();
        let regenerate = |&(s_v, v_id, u): &(&crate::keys::SecretScalar, ClientId, usize)| {
            let (u_id, u_pk) = (self.plan.selected[u], &self.advertised[&u].1.mask_pk);
            (
                MaskSeed::pairwise(s_v, u_pk, &self.ctx, &u_id, &v_id),
                Sign::pairwise(&u_id, &v_id).flip(),
            )
        };
        match self.pool.as_deref() {
            Some(pool) if pool.current_num_threads() > 1 => {
                use rayon::prelude::*;
                seeds.extend(pool.install(|| pairs.par_iter().map(regenerate).collect::<Vec<_>>()));
            }
            _ => seeds.extend(pairs.iter().map(regenerate)),
        }
        let masks: Vec<(&MaskSeed, Sign)> = seeds.iter().map(|(s, g)| (s, *g)).collect();
        stats.mask_words = masks.len() as u64 * u64::from(self.plan.dim);
        let mut sum = std::mem::take(&mut self.sum);
        let pool = self.pool.clone();
        Kernel { chunk_words: self.chunk_words, pool: pool.as_deref() }.apply(&mut sum, 0, &masks);
        self.stats = stats;
        Ok(sum)
    }
}

/// Which of a client's two shared secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secret {
    /// b_u, the self-mask seed.
    SelfMask,
    /// s_u^SK, the pairwise mask key.
    MaskKey,
}

/// Every `receive_*` takes the sender the transport authenticated (the id of its TLS client
/// certificate): a client cannot submit in another's name.
fn check_sender(authenticated: &ClientId, claimed: &ClientId) -> Result<()> {
    if authenticated != claimed {
        return Err(Error::SenderMismatch { claimed: *claimed, authenticated: *authenticated });
    }
    Ok(())
}

/// sum[i] += LE u32 at data[4i..4i+4], split across the kernel's threads.
fn add_le_words(kernel: &Kernel<'_>, sum: &mut [u32], data: &[u8]) {
    use rayon::prelude::*;
    let add = |s: &mut [u32], d: &[u8]| {
        for (w, b) in s.iter_mut().zip(d.chunks_exact(4)) {
            *w = w.wrapping_add(u32::from_le_bytes(b.try_into().expect("4 bytes")));
        }
    };
    match kernel.pool {
        Some(pool) if pool.current_num_threads() > 1 && sum.len() > kernel.chunk_words => {
            let per = sum.len().div_ceil(pool.current_num_threads());
            pool.install(|| {
                sum.par_chunks_mut(per).zip(data.par_chunks(per * 4)).for_each(|(s, d)| add(s, d))
            });
        }
        _ => add(sum, data),
    }
}
