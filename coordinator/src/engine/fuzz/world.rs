//! The world a fuzzed schedule runs in: the sites, the engine on a virtual clock, and the
//! runtime's side of it — saving phase closes, computing sums, storing checkpoints, restarting
//! — with the checks made whenever the engine hands something out, and the invariants checked
//! after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use fedsec_crypto::quant::QuantParams;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::client::{ClientPolicy, ContributionLedger, SecAggClient};
use fedsec_crypto::secagg::driver::stand_in_trained_on;
use fedsec_crypto::secagg::messages::MaskedInput;
use fedsec_crypto::secagg::server::SecAggServer;
use fedsec_crypto::sign::{IdentityKey, RawKeyCredentials};
use fedsec_crypto::{AdversaryClass, CheckpointHash, ClientId, GraphKind, RoundContext, RoundPlan};
use fedsec_wire::model::Model;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use sha2::{Digest, Sha256};

use super::wire::Wire;
use crate::engine::tests::{DIM, Site, initial_model};
use crate::engine::{
    Aggregation, AuditEvent, Engine, NewCheckpoint, Output, Reply, RoundOutcome, SavedAttempt,
    TaskConfig,
};
use crate::error::AbortReason;

/// How a fuzzed task is set up: its configuration and how the runtime around it behaves.
#[derive(Debug, Clone)]
pub(super) struct Setup {
    pub(super) config: TaskConfig,
    /// Each phase close is saved before its replies go out.
    pub(super) saving: bool,
    /// Saves are acknowledged only when the schedule says so.
    pub(super) late_saves: bool,
    /// Sums are computed, and checkpoints stored, only when the schedule says so.
    pub(super) late_sums: bool,
    /// Seeds the sites' keys, updates and example counts, and the quantization.
    pub(super) seed: u64,
}

/// One client of the running (or an ended) attempt, with what it sent.
pub(super) struct Party {
    pub(super) site: usize,
    pub(super) id: ClientId,
    pub(super) client: SecAggClient,
    /// The phase whose message it sends next.
    pub(super) next: Phase,
    /// Its unmasking was taken: nothing left to send.
    pub(super) done: bool,
    /// Its next message, made and not yet taken.
    pub(super) pending: Option<Wire>,
    /// Why it sends nothing more in this attempt.
    pub(super) out: Option<Out>,
    /// It stopped answering (silently, or its connection closed).
    pub(super) dropped: bool,
    /// The message of each phase the engine took (phase 2's are in `chunks`).
    pub(super) accepted: [Option<Wire>; 6],
    /// Its quantized input x, and y as the protocol client masked it.
    pub(super) input: Vec<u32>,
    pub(super) masked: Vec<u32>,
    /// Its masked input in chunks as it sends them (a corrupt one replaces its honest one),
    /// and which of them the engine took.
    pub(super) chunks: Vec<MaskedInput>,
    pub(super) taken: Vec<bool>,
    pub(super) complete: bool,
    /// When its partial upload is evicted unless a new chunk comes first.
    pub(super) lease: Option<Instant>,
    pub(super) evicted: bool,
    /// It stops answering once it reaches this phase (its connection closing, if `.1`).
    pub(super) stop_at: Option<(Phase, bool)>,
    /// Its ShareKeys failed the checks of its commitments: it is out of the attempt, and a
    /// later ShareKeys of its own is refused unread (protocol v2).
    pub(super) excluded: bool,
}

/// Why a party of an attempt sends nothing more in it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Out {
    /// The phase closed without it: no reply for it.
    NoReply(Phase),
    /// Its message for the phase came after the phase closed.
    Late(Phase),
    /// Its own protocol client refused what the engine sent.
    Refused(fedsec_crypto::Error),
    /// Its partial upload was evicted.
    Evicted,
}

impl Party {
    /// What its input is in the sum: x plus whatever its corrupt chunks changed of y.
    pub(super) fn effective_input(&self) -> Vec<u32> {
        let sent = self.chunks.iter().flat_map(|c| {
            c.data.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        });
        self.input
            .iter()
            .zip(sent)
            .zip(&self.masked)
            .map(|((x, y), honest)| x.wrapping_add(y.wrapping_sub(*honest)))
            .collect()
    }
}

/// One attempt as the world saw it.
pub(super) struct Run {
    pub(super) ctx: RoundContext,
    pub(super) plan: Arc<RoundPlan>,
    pub(super) parties: Vec<Party>,
    /// The checkpoint it trains on.
    pub(super) version: u64,
    pub(super) model: Model,
    /// A corruption the engine cannot see was taken: clients whose ciphertext, masked word or
    /// revealed share was wrong.
    pub(super) bad_ciphertexts: BTreeSet<ClientId>,
    pub(super) flipped_words: bool,
    pub(super) wrong_shares: BTreeSet<ClientId>,
    /// The model its checked sum gives, to be published; or why the sum was refused.
    pub(super) expect: Option<Model>,
    pub(super) refused: Option<AbortReason>,
    /// Started once the schedule was over: its clients all answer every phase.
    pub(super) in_finish: bool,
    pub(super) outcome: Option<RoundOutcome>,
}

impl Run {
    pub(super) fn tainted(&self) -> bool {
        !self.bad_ciphertexts.is_empty() || self.flipped_words || !self.wrong_shares.is_empty()
    }

    pub(super) fn party(&self, id: &ClientId) -> Option<&Party> {
        self.parties.iter().find(|p| p.id == *id)
    }
}

/// The engine, its sites and its runtime, and what the checks remember.
pub(super) struct World {
    pub(super) engine: Engine,
    pub(super) config: TaskConfig,
    pub(super) sites: Vec<Site>,
    pub(super) now: Instant,
    pub(super) rng: ChaCha20Rng,
    saving: bool,
    late_saves: bool,
    late_sums: bool,
    held_saves: Vec<SavedAttempt>,
    held_sums: Vec<Aggregation>,
    held_commits: Vec<NewCheckpoint>,
    /// The last phase close of the running attempt said to be durable.
    acked: Option<SavedAttempt>,
    pub(super) run: Option<Run>,
    /// The attempts this engine remembers, and the last of them.
    pub(super) ended: BTreeMap<RoundContext, Run>,
    pub(super) last_ended: Option<RoundContext>,
    pub(super) finishing: bool,
    pub(super) version: u64,
    pub(super) checkpoint: CheckpointHash,
    pub(super) contributors: BTreeSet<ClientId>,
    /// U2 of each attempt, with its checkpoint.
    pub(super) u2s: BTreeMap<RoundContext, (CheckpointHash, BTreeSet<ClientId>)>,
    /// How each attempt ended, in order.
    pub(super) history: Vec<RoundOutcome>,
}

/// Accepts any plan the engine makes: the fuzzing is of the engine, not of the clients' floor.
pub(super) fn policy() -> ClientPolicy {
    ClientPolicy {
        min_adversary: AdversaryClass::Curious,
        min_corrupt_ppm: 0,
        max_dropout_ppm: 999_999,
        min_clients: 2,
        min_surviving: 1,
        one_input_per_checkpoint: true,
    }
}

/// A model's values as bits: NaN-proof, bit-for-bit equality.
pub(super) fn bits(model: &Model) -> Vec<u32> {
    model.flatten().iter().map(|v| v.to_bits()).collect()
}

/// The documented update rule, in the clear: θ + η · (Σ w·x / Σ w). `None` if the sum does not
/// decode (no weight).
fn update(before: &Model, quant: &QuantParams, eta: f32, sum: &[u32]) -> Option<Model> {
    let avg = quant.weighted_average(sum).ok()?;
    let next: Vec<f32> = before.flatten().iter().zip(&avg).map(|(t, u)| t + eta * u).collect();
    before.with_flat(&next).ok()
}

impl World {
    pub(super) fn new(setup: &Setup) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(setup.seed);
        let config = setup.config.clone();
        let sites = (0..2 * config.max_selected() + 2)
            .map(|_| Site {
                key: Arc::new(IdentityKey::generate(&mut rng)),
                ledger: ContributionLedger::default(),
                update: (0..DIM)
                    .map(|_| {
                        let magnitude = 0.05 + (rng.next_u32() % 1000) as f32 / 2200.0;
                        if rng.next_u32() % 2 == 0 { magnitude } else { -magnitude }
                    })
                    .collect(),
                examples: 1 + u64::from(rng.next_u32() % 200),
            })
            .collect();
        let mut engine =
            Engine::new(config.clone(), initial_model(), 0, Arc::new(RawKeyCredentials), [5; 32])
                .expect("the fuzzed configuration is valid");
        if setup.saving {
            engine = engine.saving_attempts();
        }
        let checkpoint = engine.checkpoint().1;
        World {
            engine,
            config,
            sites,
            now: Instant::now(),
            rng,
            saving: setup.saving,
            late_saves: setup.late_saves,
            late_sums: setup.late_sums,
            held_saves: Vec::new(),
            held_sums: Vec::new(),
            held_commits: Vec::new(),
            acked: None,
            run: None,
            ended: BTreeMap::new(),
            last_ended: None,
            finishing: false,
            version: 0,
            checkpoint,
            contributors: BTreeSet::new(),
            u2s: BTreeMap::new(),
            history: Vec::new(),
        }
    }

    /// Does what the engine asks of its runtime (or holds it, when acknowledgements come
    /// late), notices a new attempt, and checks the invariants.
    pub(super) fn drain(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::SaveAttempt(s) => {
                    let s = SavedAttempt::from_bytes(&s.to_bytes()).expect("a save decodes");
                    if self.late_saves { self.held_saves.push(s) } else { self.saved(s) }
                }
                Output::Aggregate(job) if self.late_sums => self.held_sums.push(job),
                Output::Aggregate(job) => self.sum(job),
                Output::Checkpoint(c) if self.late_sums => self.held_commits.push(c),
                Output::Checkpoint(c) => self.commit(c),
                Output::AttemptEnded(ctx) => self.ended_attempt(ctx),
                Output::Audit(AuditEvent::MisbehavingHolder { client, .. }) => {
                    let run = self.run.as_ref().expect("a holder misbehaves in a running attempt");
                    assert!(run.wrong_shares.contains(&client), "{client} named misbehaving");
                }
                Output::Audit(_) | Output::Progress(_) => {}
            }
        }
        self.observe();
        self.check_invariants();
    }

    /// Acknowledges what the runtime held back: saves, then checkpoints computed before, then
    /// sums (whose checkpoints wait for the next time).
    pub(super) fn persist(&mut self) {
        for s in std::mem::take(&mut self.held_saves) {
            self.saved(s);
        }
        for c in std::mem::take(&mut self.held_commits) {
            self.commit(c);
        }
        for job in std::mem::take(&mut self.held_sums) {
            self.sum(job);
        }
        self.drain();
    }

    /// The sum held back fails to compute: the engine aborts its attempt.
    pub(super) fn fail_sum(&mut self) {
        let Some(job) = self.held_sums.pop() else { return };
        let ctx = job.ctx();
        drop(job);
        self.engine.aggregation_failed(&ctx).expect("the engine waits for this sum");
        let run = self.run.as_mut().expect("a sum is of the running attempt");
        run.refused = Some(AbortReason::AggregationFailed);
        self.drain();
    }

    pub(super) fn holds_anything(&self) -> bool {
        !(self.held_saves.is_empty() && self.held_sums.is_empty() && self.held_commits.is_empty())
    }

    fn saved(&mut self, s: SavedAttempt) {
        self.engine.attempt_saved(&s.ctx(), s.closed(), self.now);
        if self.run.as_ref().is_some_and(|r| r.ctx == s.ctx()) {
            self.acked = Some(s);
        }
    }

    /// The sum of the running attempt: over exactly the clients whose upload completed, equal
    /// bit for bit to the clear sum of their inputs, and the model the update rule gives.
    fn sum(&mut self, job: Aggregation) {
        let run = self.run.as_mut().expect("a sum is of the running attempt");
        assert_eq!(job.ctx(), run.ctx);
        let plan = job.attempt.info.plan.clone();
        let u3: BTreeSet<ClientId> =
            job.attempt.server.u3().into_iter().map(|i| plan.selected[i]).collect();
        let uploaded: BTreeSet<ClientId> =
            run.parties.iter().filter(|p| p.complete).map(|p| p.id).collect();
        assert_eq!(u3, uploaded, "the sum is over exactly the uploads that completed");
        let mut clear = vec![0u32; plan.dim as usize];
        for p in run.parties.iter().filter(|p| p.complete) {
            for (s, x) in clear.iter_mut().zip(p.effective_input()) {
                *s = s.wrapping_add(x);
            }
        }
        // The same unmasking again, on a server resumed from what the engine's holds.
        let state = job.attempt.server.unmasking_closed_state().expect("the unmasking closed");
        let (have, need) = (state.unmasking.len(), plan.q());
        let again = if have < need {
            Err(fedsec_crypto::Error::TooFewClients { phase: Phase::Unmasking, have, need })
        } else {
            SecAggServer::resume((*plan).clone(), Arc::new(RawKeyCredentials), state)
                .and_then(|mut server| server.finish())
        };
        let (before, quant, eta) = (job.model.clone(), job.quant, job.server_learning_rate);
        let done = job.run();
        match again {
            Ok(sum) => {
                assert_eq!(sum, clear, "the unmasked sum is the clear sum, bit for bit");
                match update(&before, &quant, eta, &sum) {
                    None => {
                        assert!(run.flipped_words, "an honest sum always decodes");
                        assert!(matches!(done.result, Err(AbortReason::SumDoesNotDecode(_))));
                    }
                    Some(next) if bits(&next) == bits(&before) => {
                        assert_eq!(
                            done.result.as_ref().err(),
                            Some(&AbortReason::WeightsUnchanged)
                        );
                    }
                    Some(next) => {
                        let Ok((model, checkpoint)) = &done.result else {
                            panic!("a sum that decodes was refused: {:?}", done.result.err())
                        };
                        assert_eq!(bits(model), bits(&next), "the model of the update rule");
                        assert_eq!((checkpoint.parent_version, checkpoint.version), {
                            (run.version, run.version + 1)
                        });
                        run.expect = Some(next);
                    }
                }
            }
            Err(e) => {
                use fedsec_crypto::Error as E;
                let t = plan.threshold as usize;
                let explained = match &e {
                    E::TooFewClients { phase: Phase::Unmasking, have, need } => have < need,
                    E::ShareCountBelowThreshold { have, need, .. } => {
                        *need == t && have < need && plan.graph == GraphKind::Harary
                            || run.tainted()
                    }
                    E::ReconstructionMismatch { .. } => !run.wrong_shares.is_empty(),
                    _ => false,
                };
                assert!(explained, "the unmasking failed: {e}");
                assert_eq!(done.result.as_ref().err(), Some(&AbortReason::Protocol(e)));
            }
        }
        run.refused = done.result.as_ref().err().cloned();
        self.engine.aggregated(done).expect("the engine waits for this sum");
    }

    fn commit(&mut self, c: NewCheckpoint) {
        assert_eq!(c.sha256.0, <[u8; 32]>::from(Sha256::digest(c.bytes.as_slice())));
        self.engine.checkpoint_committed(c.version, self.now).expect("this checkpoint waits");
        assert_eq!(self.engine.checkpoint(), (c.version, c.sha256));
    }

    /// An attempt ended: completed with the model of its checked sum, or aborted for a reason
    /// its sets or its corrupt clients explain, leaving the model as it was.
    fn ended_attempt(&mut self, ctx: RoundContext) {
        let mut run = self.run.take().filter(|r| r.ctx == ctx).expect("the attempt that ran ended");
        let outcome = self.engine.result(&ctx).expect("an ended attempt is remembered").clone();
        let q = run.plan.q();
        if outcome.completed {
            let want = run.expect.take().expect("a completed attempt's sum was checked");
            assert_eq!(bits(self.engine.model()), bits(&want), "the published model");
            assert_eq!(outcome.new_checkpoint_version, Some(run.version + 1));
            assert!(outcome.set_sizes[1..].iter().all(|&s| s >= q), "{:?}", outcome.set_sizes);
            let uploaded = run.parties.iter().filter(|p| p.complete).count();
            assert_eq!(outcome.participants(), uploaded);
        } else {
            assert_eq!(bits(self.engine.model()), bits(&run.model), "an abort keeps the model");
            assert_eq!(self.engine.checkpoint().0, run.version);
            let reason = outcome.abort_reason.as_ref().expect("an abort says why");
            // Too few clients at a phase close, or the sum's refusal checked with the sum.
            let explained = run.refused.as_ref() == Some(reason)
                || matches!(reason, AbortReason::Protocol(fedsec_crypto::Error::TooFewClients {
                    have, need, ..
                }) if *need == q && have < need);
            assert!(explained, "aborted: {reason} with sets {:?}", outcome.set_sizes);
            assert!(!run.in_finish, "an attempt of clients that all answer aborted: {reason}");
            let all_answered = run.parties.iter().all(|p| p.done);
            let runtime_failed = *reason == AbortReason::AggregationFailed;
            assert!(
                !all_answered || run.tainted() || runtime_failed,
                "an attempt whose clients all answered every phase aborted: {reason}"
            );
        }
        for p in &run.parties {
            let heard = self.engine.reply(&p.id, &ctx, Phase::Unmasking);
            assert_eq!(heard, Some(Ok(Reply::Result(Box::new(outcome.clone())))));
        }
        self.history.push(outcome.clone());
        run.outcome = Some(outcome);
        self.ended.insert(ctx, run);
        self.last_ended = Some(ctx);
    }

    /// A new attempt: none of its clients contributed on the checkpoint, and each one's
    /// protocol client (its ledger included) takes the plan.
    fn observe(&mut self) {
        let Some(info) = self.engine.current_round() else { return };
        let ctx = info.plan.context();
        if self.run.as_ref().is_some_and(|r| r.ctx == ctx) || self.ended.contains_key(&ctx) {
            return;
        }
        assert!(self.run.is_none(), "a second attempt started while one runs");
        let plan = info.plan.clone();
        let (version, checkpoint) = self.engine.checkpoint();
        assert_eq!((info.checkpoint_version, plan.checkpoint), (version, checkpoint));
        assert!(plan.selected.iter().all(|c| !self.contributors.contains(c)), "a contributor");
        let parties = plan
            .selected
            .iter()
            .map(|id| {
                let site = self.sites.iter().position(|s| s.key.id() == *id).expect("a site");
                let s = &self.sites[site];
                let client = SecAggClient::new(
                    s.key.clone(),
                    Arc::new(RawKeyCredentials),
                    &policy(),
                    plan.clone(),
                    &stand_in_trained_on(&plan, version),
                    &s.ledger,
                )
                .expect("a selected client takes the plan: its ledger has no input on it");
                Party {
                    site,
                    id: *id,
                    client,
                    next: Phase::AdvertiseKeys,
                    done: false,
                    pending: None,
                    out: None,
                    dropped: false,
                    accepted: Default::default(),
                    input: Vec::new(),
                    masked: Vec::new(),
                    chunks: Vec::new(),
                    taken: Vec::new(),
                    complete: false,
                    lease: None,
                    evicted: false,
                    stop_at: None,
                    excluded: false,
                }
            })
            .collect();
        self.run = Some(Run {
            ctx,
            plan,
            parties,
            version,
            model: self.engine.model().clone(),
            bad_ciphertexts: BTreeSet::new(),
            flipped_words: false,
            wrong_shares: BTreeSet::new(),
            expect: None,
            refused: None,
            in_finish: self.finishing,
            outcome: None,
        });
        self.acked = None;
    }

    /// Handles every deadline due by now (an upload lease first: the model evicts it too).
    pub(super) fn fire(&mut self) {
        for _ in 0..64 {
            if self.engine.poll_timeout().is_none_or(|t| t > self.now) {
                return;
            }
            let uploading = self.engine.status().phase == Some(Phase::MaskedInputCollection);
            if let Some(run) = self.run.as_mut().filter(|_| uploading) {
                for p in &mut run.parties {
                    if p.lease.is_some_and(|t| t <= self.now) {
                        p.lease = None;
                        p.evicted = true;
                        p.out = Some(Out::Evicted);
                    }
                }
            }
            self.engine.handle_timeout(self.now);
            self.drain();
        }
        panic!("handle_timeout leaves a deadline due");
    }

    /// The coordinator restarts on its last durable phase close: a new engine on the same
    /// checkpoint resumes it, and the clients resend what the reopened phase lost.
    pub(super) fn restart(&mut self) {
        let status = self.engine.status();
        let Some(ctx) = self.run.as_ref().map(|r| r.ctx) else { return };
        if !self.saving {
            return;
        }
        let Some(saved) = self.acked.clone().filter(|s| s.ctx() == ctx) else { return };
        let (version, checkpoint) = self.engine.checkpoint();
        // A fresh seed, as from the OS: the attempts it starts are new ones.
        let mut seed = [0; 32];
        self.rng.fill_bytes(&mut seed);
        let mut engine = Engine::new(
            self.config.clone(),
            self.engine.model().clone(),
            version,
            Arc::new(RawKeyCredentials),
            seed,
        )
        .expect("the task's configuration is valid")
        .with_first_round(status.round_id.0, status.completed_rounds)
        .saving_attempts();
        assert_eq!(engine.checkpoint(), (version, checkpoint), "the same model, the same hash");
        engine.add_contributors(&checkpoint, &self.engine.contributors().1);
        // After the unmasking's close, the sum is computed again at once — unless fewer than q
        // clients revealed their shares: then the attempt cannot resume, and it is over.
        let reopened = Phase::ALL.get(saved.closed().index() + 1).copied();
        let short = reopened.is_none() && saved.server.unmasking.len() < saved.plan.q();
        let resumed = engine.resume(saved, self.now);
        self.engine = engine;
        self.held_saves.clear();
        self.held_sums.clear();
        self.held_commits.clear();
        self.ended.clear();
        self.last_ended = None;
        if let Err(reason) = resumed {
            assert!(short, "the last durable phase close resumes: {reason}");
            assert!(matches!(reason, AbortReason::CannotResume(_)), "{reason}");
            let ended = |o: &Output| match o {
                Output::Audit(AuditEvent::RoundAborted { .. }) => true,
                Output::AttemptEnded(c) => *c == ctx,
                _ => false,
            };
            while let Some(output) = self.engine.poll_output() {
                assert!(ended(&output), "{output:?}");
            }
            self.run = None;
            return self.drain();
        }
        assert!(!short, "an unmasking closed below q resumed");
        let run = self.run.as_mut().expect("checked above");
        (run.expect, run.refused) = (None, None);
        let open_phase = reopened;
        // A resumed attempt keeps no evictions or leases (the saved state holds neither),
        // whichever phase it resumes after; nor the dealers excluded while phase 1 was open
        // (it reopens with nothing of it received).
        for p in &mut run.parties {
            p.evicted = false;
            p.lease = None;
            if open_phase == Some(Phase::ShareKeys) {
                p.excluded = false;
            }
        }
        let Some(open) = reopened else {
            // Resumed after the unmasking's close, the sum is computed at once from the saved
            // shares: the upload chunks' digests are not among them, so a chunk sent again is
            // refused as too late rather than recognised.
            for p in &mut run.parties {
                p.taken.iter_mut().for_each(|t| *t = false);
            }
            return self.drain();
        };
        for p in &mut run.parties {
            if open == Phase::MaskedInputCollection || !p.complete {
                p.taken.iter_mut().for_each(|t| *t = false);
                if open == Phase::MaskedInputCollection {
                    p.complete = false;
                    if p.out == Some(Out::Evicted) {
                        p.out = None;
                    }
                }
            }
            if p.out == Some(Out::Late(open)) {
                p.out = None;
            }
            let resend = match open {
                Phase::MaskedInputCollection => p.chunks.first().cloned().map(Wire::Chunk),
                _ => p.accepted[open.index()].take(),
            };
            if p.next > open || p.done {
                p.next = open;
                p.done = false;
                p.pending = resend;
            }
        }
        self.drain();
    }
}
