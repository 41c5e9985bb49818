//! The server's state machine under random message sequences. Each phase gets every honest
//! message of a round with dropouts, in random order, some twice; copies corrupted in one
//! field; messages from a stranger, from clients the phase does not run over, in another
//! client's name, or for another phase; closes of other phases; and its own close at a random
//! moment. Every answer is checked against a model of the server: each refusal is the error of
//! the rule broken (the exact variant for each corruption), a refused message changes nothing
//! (the sets and the sum stay the honest ones), and a round that finishes gives, bit for bit,
//! the sum in Z_2^32 of the inputs of exactly U3. (`fuzz_resume.rs` resumes edited saved
//! states.)
//!
//! `FEDSEC_FUZZ_CASES` sets the cases (`cargo test` runs a smoke count).

mod common;

use fedsec_crypto::PROTOCOL_VERSION;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::fuzz::*;
use common::{rng, verifier};
use fedsec_crypto::RoundPlan;
use fedsec_crypto::error::{Error, Malformation, SharesProblem};
use fedsec_crypto::graph::Graph;
use fedsec_crypto::ids::{ClientId, RoundContext};
use fedsec_crypto::kdf::Label;
use fedsec_crypto::proofs::ComplaintProof;
use fedsec_crypto::proofs::KeyRole;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::messages::*;
use fedsec_crypto::secagg::server::{SecAggServer, UploadProgress};
use fedsec_crypto::sign::{CredentialRefusal, IdentityKey};
use proptest::collection::vec;
use proptest::prelude::*;
use rand::RngExt;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

type Answer = Result<Option<UploadProgress>, Error>;

/// Where the server stands, as the model sees it.
#[derive(Debug, Clone)]
enum Stage {
    Open(Phase),
    Finished,
    Aborted(Error),
}

/// What the server must hold, and so answer.
struct Model {
    plan: RoundPlan,
    graph: Graph,
    ctx: RoundContext,
    /// Words per upload chunk.
    chunk: usize,
    stage: Stage,
    /// The set the open phase runs over: U1 in phase 1, U2 in phase 2, and so on.
    eligible: BTreeSet<usize>,
    /// What the open phase accepted, by client (uploads: the complete ones).
    accepted: BTreeMap<usize, Msg>,
    /// The chunks of incomplete uploads, by client and word offset.
    partial: BTreeMap<usize, BTreeMap<usize, Vec<u8>>>,
    /// U1, U2, the senders of complaints, U3 and U4 as their phases closed.
    closed: Vec<BTreeSet<usize>>,
}

impl Model {
    fn open(&self) -> Option<Phase> {
        match self.stage {
            Stage::Open(p) => Some(p),
            _ => None,
        }
    }

    /// What every message meets first: a sender other than the authenticated one, an aborted
    /// round, another phase.
    fn gate(&self, claimed: ClientId, from: ClientId, phase: Phase) -> Option<Error> {
        if claimed != from {
            return Some(Error::SenderMismatch { claimed, authenticated: from });
        }
        match &self.stage {
            Stage::Aborted(e) => Some(Error::Aborted(Box::new(e.clone()))),
            Stage::Finished => Some(Error::OutOfPhase { expected: "Finished", got: phase }),
            Stage::Open(p) if *p != phase => {
                Some(Error::OutOfPhase { expected: p.name(), got: phase })
            }
            Stage::Open(_) => None,
        }
    }

    /// The answer to `msg` from `from`; `flaw` is the refusal its corrupted content earns once
    /// every earlier rule passed. An accepted message updates the model.
    fn answer(&mut self, msg: &Msg, from: ClientId, flaw: Option<Error>) -> Answer {
        let (claimed, phase) = (msg.client(), msg.phase());
        if let Some(e) = self.gate(claimed, from, phase) {
            return Err(e);
        }
        let (version, ctx) = msg.header();
        if version != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion { got: version, supported: PROTOCOL_VERSION });
        }
        if ctx != self.ctx {
            return Err(Error::WrongContext);
        }
        let Some(i) = self.plan.index_of(&claimed) else {
            return Err(Error::NotSelected(claimed));
        };
        if phase != Phase::AdvertiseKeys && !self.eligible.contains(&i) {
            return Err(Error::NotEligible { client: claimed, phase });
        }
        if let Msg::Masked(m) = msg {
            return self.upload(i, m);
        }
        if let Some(prev) = self.accepted.get(&i) {
            // A resend is accepted again; anything else is a second message.
            return if prev == msg { Ok(None) } else { Err(Error::DuplicateClient(claimed)) };
        }
        if let Some(e) = flaw {
            return Err(e);
        }
        self.accepted.insert(i, msg.clone());
        Ok(None)
    }

    /// A masked input, whole or one aligned chunk, kept aside until complete.
    fn upload(&mut self, i: usize, m: &MaskedInput) -> Answer {
        if self.accepted.contains_key(&i) {
            return Err(Error::UploadComplete(m.client));
        }
        let (dim, c) = (self.plan.dim as usize, self.chunk);
        let (offset, len) = (m.offset as usize, m.data.len() / 4);
        let bad = Err(Error::BadChunk { offset, len, dim });
        if !m.data.len().is_multiple_of(4) || len == 0 || offset + len > dim {
            return bad;
        }
        if offset == 0 && len == dim && !self.partial.contains_key(&i) {
            self.accepted.insert(i, Msg::Masked(m.clone()));
            return Ok(Some(UploadProgress::Complete));
        }
        if !offset.is_multiple_of(c) || len != c.min(dim - offset) {
            return bad;
        }
        let chunks = self.partial.entry(i).or_default();
        if let Some(prev) = chunks.get(&offset) {
            return if *prev == m.data { Ok(Some(UploadProgress::Duplicate)) } else { bad };
        }
        chunks.insert(offset, m.data.clone());
        let received = chunks.values().map(|d| d.len() / 4).sum();
        if received < dim {
            return Ok(Some(UploadProgress::Partial { received, dim }));
        }
        self.partial.remove(&i);
        self.accepted.insert(i, Msg::Masked(m.clone()));
        Ok(Some(UploadProgress::Complete))
    }

    /// The close of the open phase: q clients must remain, and the unmasking needs t shares of
    /// each secret it rebuilds.
    fn close(&mut self, phase: Phase) -> Result<(), Error> {
        let have: BTreeSet<usize> = self.accepted.keys().copied().collect();
        let need = self.plan.q();
        let result = if have.len() < need {
            Err(Error::TooFewClients { phase, have: have.len(), need })
        } else if phase == Phase::Unmasking {
            self.share_counts(&have)
        } else {
            Ok(())
        };
        match (&result, phase.next()) {
            (Err(e), _) => self.stage = Stage::Aborted(e.clone()),
            (Ok(()), None) => self.stage = Stage::Finished,
            (Ok(()), Some(next)) => {
                self.stage = Stage::Open(next);
                self.closed.push(have.clone());
                self.eligible = have;
                self.accepted.clear();
                self.partial.clear();
            }
        }
        result
    }

    /// Each b_u of u ∈ U3 has a share at each holder of H(u) that answered; each s_v^SK of a
    /// dropped v ∈ U2 \ U3 with a neighbour in U3 has one at each neighbour that answered.
    fn share_counts(&self, answered: &BTreeSet<usize>) -> Result<(), Error> {
        let (u2, u3, t) = (&self.closed[1], &self.closed[3], self.plan.threshold as usize);
        let count = |owner: usize, holders: Vec<usize>| {
            let have = holders.iter().filter(|h| answered.contains(h)).count();
            if have >= t {
                return Ok(());
            }
            Err(Error::ShareCountBelowThreshold {
                client: self.plan.selected[owner],
                have,
                need: t,
            })
        };
        for &u in u3 {
            count(u, self.graph.holders(u))?;
        }
        for &v in u2.difference(u3) {
            let neighbours = self.graph.neighbours(v);
            if neighbours.iter().any(|u| u3.contains(u)) {
                count(v, neighbours)?;
            }
        }
        Ok(())
    }
}

/// One step of a phase.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// The k-th honest message of the phase (a chunk, for a chunked upload); twice: a resend.
    Honest(usize),
    /// The k-th honest message with one field corrupted, chosen by the number.
    Corrupt(usize, u32),
    /// The k-th honest message, delivered as authenticated from client j.
    InAnotherName(usize, usize),
    /// A message of this phase from a client outside U.
    Stranger,
    /// A message of this phase from client j, which the phase may not run over.
    Ineligible(usize),
    /// A message of another phase from client j.
    OtherPhase(usize, Phase),
    /// The close of another phase.
    OtherClose(Phase),
    /// The close of this phase.
    Close,
}

/// A round, its server and the model of what the server must answer.
struct Fuzz {
    round: Round,
    server: SecAggServer,
    model: Model,
    rng: ChaCha20Rng,
    stranger: Arc<IdentityKey>,
    /// Per client: the upload goes whole, or in chunks.
    whole: Vec<bool>,
}

impl Fuzz {
    fn new(shape: &Shape, drops: &[u8], chunk: u32, whole: Vec<bool>, seed: u64) -> Fuzz {
        let mut round = Round::new(shape, drops);
        let mut r = rng(seed);
        // Mostly within what the thresholds allow; sometimes one more.
        round.cap_drops(round.plan.n() - round.plan.q() + usize::from(r.random_bool(0.2)));
        let chunk = chunk.min(round.plan.dim) as usize;
        let server = SecAggServer::new(round.plan.clone(), verifier())
            .expect("a valid plan")
            .with_upload_chunk_words(chunk);
        let model = Model {
            plan: round.plan.clone(),
            graph: round.graph.clone(),
            ctx: round.plan.context(),
            chunk,
            stage: Stage::Open(Phase::AdvertiseKeys),
            eligible: (0..round.plan.n()).collect(),
            accepted: BTreeMap::new(),
            partial: BTreeMap::new(),
            closed: Vec::new(),
        };
        Fuzz { round, server, model, rng: r, stranger: stranger(), whole }
    }

    /// The honest messages of `phase`, uploads cut into chunks where the client does so.
    fn parts(&mut self, phase: Phase, sent: &Sent) -> Vec<(usize, Msg)> {
        let chunk = self.model.chunk;
        let mut parts = Vec::new();
        for (i, msg) in self.round.respond(phase, sent) {
            match msg {
                Msg::Masked(y) if !self.whole[i] => {
                    parts.extend(y.chunks(chunk).into_iter().map(|c| (i, Msg::Masked(c))));
                }
                msg => parts.push((i, msg)),
            }
        }
        parts
    }

    /// The phase's honest messages with random others among them, and the close somewhere
    /// (mostly last).
    fn schedule(&mut self, parts: usize) -> Vec<Event> {
        let (r, n) = (&mut self.rng, self.round.plan.n());
        let mut events: Vec<Event> = (0..parts).map(Event::Honest).collect();
        for _ in 0..r.random_range(0..=6) {
            let (k, j) = (r.random_range(0..parts.max(1)), r.random_range(0..n));
            let phase = Phase::ALL[r.random_range(0..Phase::ALL.len())];
            events.push(match r.random_range(0..9) {
                0..=2 if parts > 0 => Event::Corrupt(k, r.random()),
                3 if parts > 0 => Event::Honest(k),
                4 if parts > 0 => Event::InAnotherName(k, j),
                5 => Event::Stranger,
                6 => Event::Ineligible(j),
                7 => Event::OtherPhase(j, phase),
                _ => Event::OtherClose(phase),
            });
        }
        events.shuffle(r);
        // Mostly after everything; sometimes early, cutting off late messages.
        let len = events.len();
        let at = if r.random_bool(0.85) { len } else { r.random_range(len * 2 / 3..=len) };
        events.insert(at, Event::Close);
        events
    }

    /// Plays one event; returns what the close sent.
    fn play(&mut self, phase: Phase, parts: &[(usize, Msg)], event: Event) -> Option<Sent> {
        let (ctx, dim) = (self.model.ctx, self.round.plan.dim);
        let id = |j: usize| self.round.plan.selected[j];
        let (msg, from, flaw) = match event {
            Event::Honest(k) => (parts[k].1.clone(), parts[k].1.client(), None),
            Event::Corrupt(k, choice) => {
                let (msg, flaw) = self.corrupt(&parts[k], choice);
                (msg.clone(), msg.client(), flaw)
            }
            Event::InAnotherName(k, j) if id(j) != parts[k].1.client() => {
                (parts[k].1.clone(), id(j), None)
            }
            Event::Stranger => {
                let s = self.stranger.id();
                (Msg::empty(phase, ctx, s, dim), s, None)
            }
            Event::Ineligible(j)
                if self.model.open() != Some(phase)
                    || (phase != Phase::AdvertiseKeys && !self.model.eligible.contains(&j)) =>
            {
                (Msg::empty(phase, ctx, id(j), dim), id(j), None)
            }
            Event::OtherPhase(j, other) if self.model.open() != Some(other) => {
                (Msg::empty(other, ctx, id(j), dim), id(j), None)
            }
            Event::OtherClose(other) if self.model.open() != Some(other) => {
                let s = self.stranger.id();
                let expected = self.model.gate(s, s, other);
                let got = close(&mut self.server, other).err();
                assert_eq!(got, expected, "close of {other} while in {:?}", self.model.stage);
                return None;
            }
            Event::Close => return Some(self.close(phase)),
            _ => return None,
        };
        let expected = self.model.answer(&msg, from, flaw);
        if matches!(event, Event::Corrupt(..)) {
            assert!(expected.is_err(), "the corruption {event:?} of {msg:?} leaves it valid");
        }
        let got = msg.deliver(&mut self.server, from);
        assert_eq!(got, expected, "{event:?} in {:?}: {msg:?}", self.model.stage);
        None
    }

    /// The close of `phase`, checked against the model: the sets it fixed, the abort it
    /// predicts, and the sum.
    fn close(&mut self, phase: Phase) -> Sent {
        let expected = self.model.close(phase);
        let got = close(&mut self.server, phase);
        let closed = &self.model.closed;
        match (got, expected) {
            (Err(got), Err(want)) => assert_eq!(got, want, "close of {phase}"),
            (Ok(Sent::Sum(sum)), Ok(())) => {
                let u3 = closed[3].iter().copied();
                assert_eq!(sum, self.round.clear_sum(u3), "the sum is the clear sum of U3");
            }
            (Ok(sent), Ok(())) => {
                let server = match &sent {
                    Sent::Keys(_) => self.server.u1(),
                    Sent::Shares(_) => self.server.u2(),
                    Sent::Exclusions(_) => self.server.uploaders(),
                    Sent::Check(_) => self.server.u3(),
                    Sent::Unmask(req) => req
                        .signatures
                        .iter()
                        .filter_map(|s| self.model.plan.index_of(&s.client))
                        .collect(),
                    _ => unreachable!("a phase before the unmasking closes with a request"),
                };
                assert_eq!(&server, closed.last().expect("closed"), "the set {phase} fixed");
                return sent;
            }
            (got, want) => panic!("close of {phase}: got {got:?}, expected {want:?}"),
        }
        Sent::Nothing
    }

    /// `part` with one field corrupted (chosen by `choice`), and the refusal its content earns
    /// (`None` where the model finds it: version, context and uploads).
    fn corrupt(&self, part: &(usize, Msg), choice: u32) -> (Msg, Option<Error>) {
        let (i, mut msg) = (part.0, part.1.clone());
        let (plan, graph, ctx) = (&self.model.plan, &self.model.graph, self.model.ctx);
        let (id, key, stranger) = (plan.selected[i], &self.round.keys[i], self.stranger.id());
        let (which, x) = (choice % 16, (choice / 16) as usize);
        // A client of U that is not a neighbour of i, if the graph has one.
        let far = (0..plan.n()).find(|&j| j != i && !graph.are_neighbours(i, j));
        match (which, &mut msg) {
            (0, _) => *msg.header_mut().0 = PROTOCOL_VERSION + 1,
            (1, _) => *msg.header_mut().1 = other_ctx(ctx),
            (w, Msg::Advert(a)) => {
                let keys = |enc, mask, b| Msg::Advert(signed_advert(key, ctx, [enc, mask, b]));
                let (enc, mask, b) = (a.enc_pk, a.mask_pk, a.self_mask_commitment);
                let bad_key = Some(Error::BadPublicKey(id));
                let bad_credential = |reason| Some(Error::BadCredential { client: id, reason });
                let proofs = |enc_proof, mask_proof| {
                    Msg::Advert(signed_advert_with_proofs(
                        key,
                        ctx,
                        [enc, mask, b],
                        [enc_proof, mask_proof],
                    ))
                };
                let bad_proof = |role| Some(Error::BadKeyProof { client: id, role });
                let (enc_proof, mask_proof) = (a.enc_pk_proof, a.mask_pk_proof);
                return match w % 9 {
                    0 => {
                        a.signature = flip_sig(a.signature, x);
                        (msg, Some(Error::BadSignature(id)))
                    }
                    1 => {
                        a.credential.pop();
                        (msg, bad_credential(CredentialRefusal::NotEd25519))
                    }
                    2 => {
                        *a.credential.last_mut().expect("a credential") ^= 1;
                        (msg, bad_credential(CredentialRefusal::IdMismatch))
                    }
                    3 => {
                        (a.enc_pk, a.mask_pk) = (mask, enc);
                        (msg, Some(Error::BadSignature(id)))
                    }
                    4 => (keys([0; 32], mask, b), bad_key),
                    5 => (keys(enc, enc, b), bad_key),
                    6 => (keys(enc, mask, [0xff; 32]), bad_key),
                    7 => {
                        let mut flipped = mask_proof;
                        flipped.0[x % 64] ^= 1 << (x % 8);
                        (proofs(enc_proof, flipped), bad_proof(KeyRole::Masking))
                    }
                    _ => (proofs(mask_proof, enc_proof), bad_proof(KeyRole::Encryption)),
                };
            }
            (w, Msg::Shares(s)) if !s.shares.is_empty() => {
                let (len, e) = (s.shares.len(), x % s.shares.len());
                let to = s.shares[e].to;
                let problem = |problem| Some(Error::IncompleteShares { client: id, problem });
                let flaw = match w % 8 {
                    0 | 1 => {
                        let other =
                            if w % 8 == 1 { far.map_or(id, |j| plan.selected[j]) } else { id };
                        s.shares[e].to = other;
                        Some(Error::NotNeighbour(other))
                    }
                    2 => {
                        s.shares[e].to = stranger;
                        Some(Error::NotSelected(stranger))
                    }
                    3 | 4 => {
                        let ct = &mut s.shares[e].ciphertext;
                        if w % 8 == 3 {
                            ct.pop();
                        } else {
                            ct.push(0);
                        }
                        let got = ct.len();
                        problem(SharesProblem::CiphertextLength { to, got, expected: 80 })
                    }
                    5 => {
                        s.shares.push(s.shares[e].clone());
                        problem(SharesProblem::Duplicate(to))
                    }
                    w => {
                        let u1 = &self.model.closed[0];
                        let absent = graph.neighbours(i).into_iter().find(|v| !u1.contains(v));
                        match absent.filter(|_| w == 7) {
                            Some(v) => {
                                let to = plan.selected[v];
                                s.shares.push(EncryptedShares { to, ciphertext: vec![0; 80] });
                                problem(SharesProblem::NotAdvertised(to))
                            }
                            None => {
                                s.shares.remove(e);
                                problem(SharesProblem::Count { got: len - 1, expected: len })
                            }
                        }
                    }
                };
                return (msg, flaw);
            }
            (w, Msg::Complaints(c)) => {
                let flaw = if w % 2 == 0 {
                    c.signature = flip_sig(c.signature, x);
                    Error::BadSignature(id)
                } else {
                    // A complaint about itself: refused for its shape, before anything else.
                    c.complaints.push(Complaint {
                        accused: id,
                        dealt: blank_dealt(),
                        shared: [0; 32],
                        proof: ComplaintProof([0; 96]),
                    });
                    Error::Malformed(Malformation::ComplaintAboutSelf)
                };
                return (msg, Some(flaw));
            }
            (w, Msg::Masked(m)) => {
                let c = self.model.chunk;
                let offset = m.offset as usize;
                let received =
                    |o: usize| self.model.partial.get(&i).is_some_and(|p| p.contains_key(&o));
                match w % 6 {
                    0 => m.data = vec![0; 4 * (plan.dim as usize - offset + 1)],
                    2 => m.data.clear(),
                    3 => m.offset = plan.dim,
                    4 => (m.offset, m.data) = (1, vec![0; 4 * (c + 1)]),
                    5 if received(offset) => m.data[0] ^= 1,
                    _ => m.data.push(0),
                }
            }
            (w, Msg::Signature(s)) => {
                if w % 2 == 0 {
                    s.signature = flip_sig(s.signature, x);
                } else {
                    let mut view = self.model.eligible.clone();
                    let toggled = x % plan.n();
                    if !view.remove(&toggled) {
                        view.insert(toggled);
                    }
                    let view = Survivors::from_indices(plan.n(), view);
                    s.signature = Sig(key.sign(Label::Consistency, &ctx, &[&view.digest()]));
                }
                return (msg, Some(Error::BadSignature(id)));
            }
            (w, Msg::Reveal(r)) => {
                let e = x % r.self_mask_shares.len();
                let share = r.self_mask_shares[e].clone();
                let reveal = |owner: ClientId| RevealedShare { owner, share: share.share };
                let unexpected = |m| Some(Error::Malformed(m));
                let flaw = match w % 6 {
                    0 => match r.self_mask_shares.iter().find(|s| s.owner != id).cloned() {
                        Some(v) => {
                            r.mask_key_shares.push(v.clone());
                            unexpected(Malformation::UnexpectedMaskKeyShare(v.owner))
                        }
                        None => match r.mask_key_shares.first().cloned() {
                            Some(dropped) => {
                                r.self_mask_shares.push(dropped.clone());
                                unexpected(Malformation::UnexpectedSelfMaskShare(dropped.owner))
                            }
                            None => {
                                r.mask_key_shares.push(reveal(id));
                                Some(Error::NotNeighbour(id))
                            }
                        },
                    },
                    1 => {
                        r.self_mask_shares[e].share = [0xff; 32];
                        unexpected(Malformation::NonCanonicalShare(share.owner))
                    }
                    2 if far.is_some() => {
                        let other = plan.selected[far.expect("checked")];
                        r.self_mask_shares.push(reveal(other));
                        Some(Error::NotNeighbour(other))
                    }
                    2 | 3 => {
                        r.self_mask_shares.push(reveal(stranger));
                        Some(Error::NotSelected(stranger))
                    }
                    4 => {
                        r.self_mask_shares.push(share.clone());
                        unexpected(Malformation::UnexpectedSelfMaskShare(share.owner))
                    }
                    _ => {
                        r.mask_key_shares.push(reveal(id));
                        Some(Error::NotNeighbour(id))
                    }
                };
                return (msg, flaw);
            }
            _ => *msg.header_mut().0 = PROTOCOL_VERSION + 1,
        }
        (msg, None)
    }
}

/// Drives one round through random sequences, phase after phase.
fn fuzz_round(shape: &Shape, drops: &[u8], chunk: u32, whole: Vec<bool>, seed: u64) {
    let mut f = Fuzz::new(shape, drops, chunk, whole, seed);
    let mut sent = Sent::Nothing;
    for phase in Phase::ALL {
        if f.model.open() != Some(phase) {
            break;
        }
        let parts = f.parts(phase, &sent);
        for event in f.schedule(parts.len()) {
            if let Some(next) = f.play(phase, &parts, event) {
                sent = next;
            }
        }
    }
    assert!(f.model.open().is_none(), "every phase closed: {:?}", f.model.stage);
}

proptest! {
    #![proptest_config(config(256))]

    /// Random sequences of honest, resent, late, early, corrupted, foreign and misaddressed
    /// messages, and closes at random moments: each refusal is the one the model predicts,
    /// the sets each close fixes are the honest ones, and a finished round's sum is the clear
    /// sum of exactly U3's inputs.
    #[test]
    fn the_server_refuses_each_bad_message_by_its_rule_and_sums_exactly_u3(
        shape in shape(),
        drops in vec(0u8..24, 12),
        chunk in 1u32..=9,
        whole in vec(any::<bool>(), 12),
        seed in any::<u64>(),
    ) {
        fuzz_round(&shape, &drops, chunk, whole, seed);
    }
}
