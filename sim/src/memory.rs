//! The in-memory transport: the coordinator's round engine and the clients' protocol code in
//! one thread, without sockets, on a virtual clock — for thousands of clients, and
//! reproducible bit for bit.
//!
//! Every message takes the path it takes over gRPC, minus the framing: the client's protocol
//! core ([`SecAggClient`]) makes it, the client library's wire conversion encodes it, the
//! coordinator's wire conversion decodes and checks it, and the [`Engine`] takes it; replies
//! go back the same way. Byte counts are the encoded messages' sizes. Each client verifies the
//! checkpoint it trains on against the plan's hash.
//!
//! The clock is virtual: messages arrive after the configured latency (a straggler's first
//! message after its extra delay), and a phase closes when everyone it waits for has answered
//! or is gone, or else at its deadline — no time passes while the machine computes. A client
//! the schedule drops closes its "connection" at the start of the phase it drops at
//! ([`Engine::client_gone`]), as the gRPC transport's client does.
//!
//! Reproducibility: the engine's public choices (sampling, attempt nonces, graph seeds), the
//! quantization's rounding coins, local shuffling, and which key each site holds come from the
//! seed; the keys themselves come from the operating system. Since the sites' order by client
//! id follows the seed, so do their positions in the plans, and since the sum is exact the keys
//! change no result: two runs with the same seed give the same report, bit for bit — models,
//! accuracies, losses, set sizes, virtual phase times — but for the wall-clock time and, with
//! SecAgg+, the bytes per client: the Harary graph is drawn from the round context, which
//! binds the clients' keys, so who neighbours whom (and so how many advertisements and shares
//! a client relays) changes with the keys. With the complete graph the bytes repeat too. For
//! the same reason, with SecAgg+ a round whose dropouts happen to leave some client with too
//! few live neighbours (which the parameters make improbable) could end differently.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use fedsec_client::ClientError;
use fedsec_client::Trainer;
use fedsec_client::config::PolicyConfig;
use fedsec_client::round::{Membership, Request, Response, Round, Step};
use fedsec_client::state::ClientState;
use fedsec_coordinator::engine::{
    Assignment, Engine, EngineState, Output, PhaseDeadlines, Reply, TaskConfig,
};
use fedsec_coordinator::wire as server_wire;
use fedsec_crypto::keys::PublicKey;
use fedsec_crypto::proofs::{KeyProof, KeyRole};
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::messages::{
    AdvertiseKeys, Complaints, ConsistencySignature, MaskedInput, ShareKeys, UnmaskingResponse,
};
use fedsec_crypto::secagg::server::CheckedShareKeys;
use fedsec_crypto::sign::{CredentialVerifier, IdentityKey, SignedItem};
use fedsec_crypto::{AdversaryClass, ClientId, RoundContext, TaskId};
use fedsec_proto::v1;
use fedsec_wire::checkpoint::Manifest;
use fedsec_wire::model::Model;
use fedsec_wire::x509::X509Credentials;
use fedsec_wire::{PhaseMessage, RoundKey, Wire};
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::experiment::{ASSUMED_CORRUPT, Experiment, Prepared, SimError};
use crate::run::{AttemptRecord, SecureRun};
use crate::schedule;

/// Clients whose phase work runs at once (see [`World::work`]).
const WORK_SLICE: usize = 64;

fn seed32(seed: u64, what: &str, index: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"fedsec/sim/memory");
    h.update(seed.to_le_bytes());
    h.update(what.as_bytes());
    h.update(index.to_le_bytes());
    h.finalize().into()
}

/// One simulated site.
struct Site {
    index: usize,
    member: Membership,
    /// What a real site keeps on disk: the newest version seen, the contribution ledger.
    state: ClientState,
    trainer: Option<Box<dyn Trainer>>,
    drops: BTreeMap<u64, Phase>,
    straggler: bool,
    coins: ChaCha20Rng,
}

/// A selected site's part in one attempt: its client round, driven as the gRPC client drives
/// it, with the site's state, trainer and rounding coins lent for the attempt.
struct Taking {
    site: usize,
    id: ClientId,
    round: Option<Round>,
    /// The request the round asked to send next.
    next: Option<Request>,
    state: ClientState,
    trainer: Option<Box<dyn Trainer>>,
    coins: ChaCha20Rng,
    loss: f64,
    /// The phase it drops out at, this round.
    drop_at: Option<Phase>,
    /// It did drop out (the attempt reached that phase).
    dropped: bool,
    /// Still taking part (not dropped, not refused).
    active: bool,
    /// The engine took its whole masked input.
    uploaded: bool,
    /// Its round completed: (bytes sent, bytes received).
    finished: Option<(u64, u64)>,
}

impl Taking {
    /// Feeds `response` to the client round and keeps the request it asks for next; trains
    /// when it asks to. False if the round refused (the client leaves the attempt).
    fn step(&mut self, response: &Response, now: Instant) -> bool {
        let Some(round) = self.round.as_mut() else { return false };
        let mut step = round.handle(response, &mut self.state, &mut self.coins, now);
        loop {
            match step {
                Ok(Step::Send { request, .. }) => {
                    self.next = Some(*request);
                    return true;
                }
                Ok(Step::Train { model, .. }) => {
                    let Some(trainer) = self.trainer.as_mut() else { return false };
                    step = match trainer.fit(&model) {
                        Ok(fit) => {
                            self.loss = fit.loss;
                            round.trained(fit, now)
                        }
                        Err(_) => return false,
                    };
                }
                Ok(Step::Done(report)) => {
                    self.finished = Some((report.bytes_sent, report.bytes_received));
                    return true;
                }
                Err(_) => return false,
            }
        }
    }
}

/// A client's message, decoded by the coordinator's wire conversion.
enum Decoded {
    /// Not this client's turn.
    NotNow,
    /// The client leaves: it missed the phase, or its message did not decode.
    Leaves,
    /// Boxed: an advertisement is several times the size of the other messages.
    Advertise(Box<AdvertiseKeys>),
    Shares(ShareKeys),
    /// A ShareKeys checked on the decoding core, as the coordinator's service checks it.
    Checked(CheckedShareKeys),
    Complaints(Complaints),
    /// The chunks that decoded, in order, and whether all did.
    Masked(Vec<MaskedInput>, bool),
    Consistency(ConsistencySignature),
    Unmask(UnmaskingResponse),
}

/// An engine's reply on its way to a client's round.
enum Pending {
    /// In its wire form already.
    Ready(Arc<Response>),
    /// The recipient's own: converted on the recipient's core.
    Convert(Box<Reply>),
}

/// The engine's reply in its wire form, or to be converted. A reply the engine shares among
/// clients (the same `Arc`) is converted once: `shared` keeps the last one and its conversion.
fn wire_reply(
    key: &RoundKey,
    reply: Reply,
    shared: &mut Option<(Arc<dyn std::any::Any + Send + Sync>, Arc<Response>)>,
) -> Pending {
    let one: Arc<dyn std::any::Any + Send + Sync> = match &reply {
        Reply::Excluded(e) => e.clone(),
        Reply::Survivors(r) => r.clone(),
        Reply::Unmask(r) => r.clone(),
        _ => return Pending::Convert(Box::new(reply)),
    };
    if let Some((seen, response)) = shared.as_ref()
        && Arc::ptr_eq(seen, &one)
    {
        return Pending::Ready(response.clone());
    }
    let response = Arc::new(to_wire(key, reply));
    *shared = Some((one, response.clone()));
    Pending::Ready(response)
}

/// The engine's reply as the gRPC adapter sends it.
fn to_wire(key: &RoundKey, reply: Reply) -> Response {
    match reply {
        Reply::Keys(f) => Response::AdvertiseKeys(f.to_wire(key)),
        Reply::Shares(f) => Response::ShareKeys(f.to_wire(key)),
        Reply::Excluded(e) => Response::Complaints(e.to_wire(key)),
        Reply::Survivors(r) => Response::UploadMaskedInput(r.to_wire(key)),
        Reply::Unmask(r) => Response::ConsistencyCheck(r.to_wire(key)),
        Reply::Result(o) => Response::Unmask(server_wire::result_to_wire(&o, key.task)),
    }
}

/// The task configuration the gRPC transport's coordinator file gives, as a value.
fn task_config(exp: &Experiment, p: &Prepared) -> Result<TaskConfig, SimError> {
    let ppm = |x: f64| (x * 1e6).round() as u32;
    let mut c = TaskConfig::new(TASK, "fedsec-sim", p.clients_per_round);
    c.min_clients = p.min_clients;
    c.over_selection = 1.0;
    c.graph = exp.graph;
    c.adversary = AdversaryClass::SemiMalicious;
    c.dropout_ppm = ppm(p.assumed_dropout);
    c.corrupt_ppm = ppm(ASSUMED_CORRUPT);
    c.clip = exp.clip;
    c.max_examples = p.max_examples;
    c.server_learning_rate = exp.server_learning_rate;
    c.rounds = exp.rounds;
    let d = Duration::from_millis(exp.phase_deadline_ms);
    let mut deadlines = PhaseDeadlines::uniform(d);
    deadlines.advertise_keys = Duration::from_millis(exp.advertise_deadline_ms());
    c.deadlines = deadlines;
    c.validate()?;
    Ok(c)
}

/// The simulated task.
const TASK: TaskId = TaskId([0x5e; 16]);

/// The virtual world: the engine, the clock, the sites.
struct World<'a> {
    exp: &'a Experiment,
    engine: Engine,
    now: Instant,
    sites: Vec<Site>,
    by_id: BTreeMap<ClientId, usize>,
    verifier: Arc<dyn CredentialVerifier>,
    /// The coordinator's checkpoint-signing key (the service signs what the engine produces).
    signing: SigningKey,
    /// The signed manifest of the engine's current checkpoint.
    manifest: v1::CheckpointManifest,
    models: Vec<Model>,
}

impl World<'_> {
    /// Moves the clock to the engine's next deadline and handles it. False if it has none.
    fn advance(&mut self) -> bool {
        match self.engine.poll_timeout() {
            Some(t) => {
                self.now = self.now.max(t);
                self.engine.handle_timeout(self.now);
                true
            }
            None => false,
        }
    }

    /// Lets the latency pass, unless the phase closes first.
    fn wait(&mut self, d: Duration) -> bool {
        let at = self.now + d;
        match self.engine.poll_timeout() {
            Some(deadline) if deadline <= at => false,
            _ => {
                self.now = at;
                true
            }
        }
    }

    /// Closes `phase` of the attempt `ctx` if it is still open (at its deadline).
    fn close(&mut self, ctx: &RoundContext, phase: Phase, any: &ClientId) {
        let still_open = |e: &Engine| {
            e.current_round().is_some_and(|r| r.plan.context() == *ctx)
                && e.status().state == EngineState::Running
                && e.status().phase == Some(phase)
        };
        if still_open(&self.engine) && self.engine.reply(any, ctx, phase).is_none() {
            self.advance();
        }
    }

    /// Runs the selection: the sites check in, in an order drawn from the seed for each
    /// attempt (the engine takes the first ones that fill a round); returns the plan.
    fn select(&mut self, attempt: usize) -> Result<Assignment, SimError> {
        let mut order: Vec<usize> = (0..self.sites.len()).collect();
        order.shuffle(&mut ChaCha20Rng::from_seed(seed32(
            self.exp.seed,
            "arrivals",
            attempt as u64,
        )));
        for s in order {
            self.engine.check_in(self.sites[s].member.id(), self.now);
            if self.engine.current_round().is_some() {
                break;
            }
        }
        for _ in 0..2 {
            if let Some(info) = self.engine.current_round() {
                return Ok(info.clone());
            }
            if !self.advance() {
                break;
            }
        }
        Err(SimError::NoEligibleClients {
            round: self.engine.status().round_id.0,
            need: self.engine.config().min_clients,
        })
    }

    /// Signs the manifest of the engine's current checkpoint, as the coordinator's service
    /// does before it hands the checkpoint out.
    fn sign_checkpoint(&mut self, parent_version: u64, summary: String) -> Result<(), SimError> {
        let (version, sha256) = self.engine.checkpoint();
        let size_bytes = self.engine.model().to_safetensors()?.len() as u64;
        let manifest = Manifest {
            version,
            parent_version,
            sha256,
            size_bytes,
            task_id: TASK,
            round_summary: summary,
        };
        self.manifest = manifest.sign(&self.signing).to_wire();
        Ok(())
    }

    /// One attempt, from the plan to its outcome. The clients' work of each phase runs in
    /// parallel; their messages reach the engine one by one, in the plan's order.
    fn attempt(&mut self, info: Assignment) -> Result<AttemptRecord, SimError> {
        let plan = info.plan.clone();
        let round = plan.round_id.0;
        let ctx = plan.context();
        // The plan as every client receives it, decoded once for all of them (each client's
        // round makes its own checks on it).
        let received = Assignment::from_wire(&info.to_wire());
        let mut taking: Vec<Taking> = Vec::with_capacity(plan.selected.len());
        for id in &plan.selected {
            let s = self.by_id[id];
            let site = &mut self.sites[s];
            let started = received.clone().map_err(ClientError::from).and_then(|assignment| {
                Round::with_assignment(
                    &site.member,
                    self.verifier.clone(),
                    assignment,
                    &site.state,
                    self.now,
                )
            });
            let (round_state, next) = match started {
                Ok((r, Step::Send { request, .. })) => (Some(r), Some(*request)),
                _ => (None, None),
            };
            taking.push(Taking {
                site: s,
                id: *id,
                active: round_state.is_some(),
                round: round_state,
                next,
                state: std::mem::take(&mut site.state),
                trainer: site.trainer.take(),
                coins: std::mem::replace(&mut site.coins, ChaCha20Rng::from_seed([0; 32])),
                loss: 0.0,
                drop_at: site.drops.get(&round).copied(),
                dropped: false,
                uploaded: false,
                finished: None,
            });
        }
        let result = self.phases(&info, &mut taking);
        // The sites get their state back, whatever happened.
        for c in &mut taking {
            let site = &mut self.sites[c.site];
            site.trainer = c.trainer.take();
            site.state = std::mem::take(&mut c.state);
            site.coins = std::mem::replace(&mut c.coins, ChaCha20Rng::from_seed([0; 32]));
        }
        let uploaded = result?;
        let outcome = self.engine.result(&ctx).cloned().ok_or(SimError::NoOutcome(round))?;
        let finished: Vec<(&Taking, (u64, u64))> =
            taking.iter().filter_map(|c| c.finished.map(|b| (c, b))).collect();
        let losses: Vec<f64> = finished.iter().map(|(c, _)| c.loss).collect();
        Ok(AttemptRecord {
            round_id: round,
            completed: outcome.completed,
            abort_reason: outcome.abort_reason.as_ref().map(ToString::to_string),
            set_sizes: outcome.set_sizes.clone(),
            phase_seconds: outcome.phase_seconds.clone(),
            upload_bytes: outcome.upload_bytes,
            participants: if outcome.completed {
                uploaded.iter().map(|&s| self.sites[s].index).collect()
            } else {
                Vec::new()
            },
            scheduled_drops: taking.iter().filter(|c| c.dropped).count(),
            bytes_sent: finished.iter().map(|(_, b)| b.0).collect(),
            bytes_received: finished.iter().map(|(_, b)| b.1).collect(),
            train_loss: (!losses.is_empty())
                .then(|| losses.iter().sum::<f64>() / losses.len() as f64),
            compute_s: None,
        })
    }

    /// Drops out, at the start of `phase`, the clients the schedule says.
    fn drop_out(&mut self, taking: &mut [Taking], phase: Phase) {
        let round = self.engine.status().round_id.0;
        for c in taking.iter_mut().filter(|c| c.active && c.drop_at == Some(phase)) {
            c.active = false;
            c.dropped = true;
            // Once per round, as the gRPC client's hook: a retried attempt runs without it.
            self.sites[c.site].drops.remove(&round);
            self.engine.client_gone(&c.id, self.now);
        }
    }

    /// Hands the pending request of each active client that `these` picks (by position) to
    /// the engine, in order, through the coordinator's wire conversion; a client that misses
    /// the phase or whose message is refused leaves. The messages are decoded on all cores,
    /// as the coordinator's service decodes each on its own connection (and checks a
    /// ShareKeys there, off the engine); the engine takes them one by one.
    fn submit(
        &mut self,
        taking: &mut [Taking],
        ctx: &RoundContext,
        on_time: bool,
        these: impl Fn(usize) -> bool + Sync,
    ) {
        let check = self.engine.share_keys_check(ctx);
        let decoded: Vec<Decoded> = taking
            .par_iter_mut()
            .enumerate()
            .map(|(i, c)| {
                if !these(i) {
                    return Decoded::NotNow;
                }
                let request = c.next.take();
                if !(on_time && c.active) {
                    return Decoded::Leaves;
                }
                let id = c.id;
                match request {
                    Some(Request::AdvertiseKeys(r)) => AdvertiseKeys::from_wire(&r, id)
                        .map_or(Decoded::Leaves, |a| Decoded::Advertise(Box::new(a))),
                    Some(Request::ShareKeys(r)) => match (ShareKeys::from_wire(&r, id), &check) {
                        (Err(_), _) => Decoded::Leaves,
                        (Ok(m), Some(check)) => {
                            check.check(id, m).map_or(Decoded::Leaves, Decoded::Checked)
                        }
                        (Ok(m), None) => Decoded::Shares(m),
                    },
                    Some(Request::Complaints(r)) => {
                        Complaints::from_wire(&r, id).map_or(Decoded::Leaves, Decoded::Complaints)
                    }
                    Some(Request::UploadMaskedInput(chunks)) => {
                        let mut whole = true;
                        let taken = chunks
                            .iter()
                            .map_while(|k| {
                                let m = MaskedInput::from_wire(k, id).ok();
                                whole &= m.is_some();
                                m
                            })
                            .collect();
                        Decoded::Masked(taken, whole)
                    }
                    Some(Request::ConsistencyCheck(r)) => ConsistencySignature::from_wire(&r, id)
                        .map_or(Decoded::Leaves, Decoded::Consistency),
                    Some(Request::Unmask(r)) => UnmaskingResponse::from_wire(&r, id)
                        .map_or(Decoded::Leaves, Decoded::Unmask),
                    Some(Request::DownloadModel(_)) | None => Decoded::Leaves,
                }
            })
            .collect();
        for (c, message) in taking.iter_mut().zip(decoded) {
            let (id, now, e) = (c.id, self.now, &mut self.engine);
            let taken = match message {
                Decoded::NotNow => continue,
                Decoded::Leaves => false,
                Decoded::Advertise(m) => e.advertise(id, *m, now).is_ok(),
                Decoded::Shares(m) => e.share_keys(id, m, now).is_ok(),
                Decoded::Checked(m) => {
                    let ctx = m.message().ctx;
                    e.checked_share_keys(id, &ctx, Some(Ok(m)), now).is_ok()
                }
                Decoded::Complaints(m) => e.complaints(id, m, now).is_ok(),
                Decoded::Masked(chunks, whole) => {
                    let fed = chunks.iter().all(|m| e.masked_input(id, m, now).is_ok());
                    c.uploaded = fed && whole;
                    c.uploaded
                }
                Decoded::Consistency(m) => e.consistency(id, m, now).is_ok(),
                Decoded::Unmask(m) => e.unmasking(id, m, now).is_ok(),
            };
            c.active &= taken;
        }
    }

    /// The clients' work after `phase`, on all cores: each active client's round takes its
    /// reply and makes its next request. Clients go in slices, so that only a slice's replies
    /// exist at once. The replies after U3 is fixed — U3, then U3 and its signatures, the
    /// largest messages of a round — are one message the engine shares among the clients it
    /// answers; it is converted to its wire form once.
    fn work(&self, taking: &mut [Taking], key: &RoundKey, phase: Phase) {
        let now = self.now;
        let mut shared: Option<(Arc<dyn std::any::Any + Send + Sync>, Arc<Response>)> = None;
        for slice in taking.chunks_mut(WORK_SLICE) {
            let mut replies: Vec<Option<Pending>> = Vec::with_capacity(slice.len());
            for c in slice.iter() {
                let reply = match c.active {
                    true => self.engine.reply(&c.id, &key.ctx, phase).and_then(Result::ok),
                    false => None,
                };
                replies.push(reply.map(|r| wire_reply(key, r, &mut shared)));
            }
            slice.par_iter_mut().zip(replies).for_each(|(c, r)| {
                let response = r.map(|r| match r {
                    Pending::Ready(response) => response,
                    Pending::Convert(reply) => Arc::new(to_wire(key, *reply)),
                });
                c.active = c.active && response.is_some_and(|r| c.step(&r, now));
            });
        }
    }

    /// The five phases of an attempt. Returns the sites whose masked input was taken.
    fn phases(
        &mut self,
        info: &Assignment,
        taking: &mut [Taking],
    ) -> Result<BTreeSet<usize>, SimError> {
        let plan = &info.plan;
        let key = info.key();
        let ctx = key.ctx;
        let any = plan.selected[0];
        let latency = Duration::from_millis(self.exp.latency_ms);

        // The checkpoint, then local training, in parallel: each client verifies the
        // coordinator's signature and the hash before it trains.
        let model = Response::Model {
            manifest: self.manifest.clone(),
            data: self.engine.model().to_safetensors()?,
        };
        let now = self.now;
        taking.par_iter_mut().filter(|c| c.active).for_each(|c| {
            c.active =
                matches!(c.next.take(), Some(Request::DownloadModel(_))) && c.step(&model, now);
        });

        // Phase 0: advertise keys; stragglers arrive late.
        self.drop_out(taking, Phase::AdvertiseKeys);
        let straggle = Duration::from_millis(self.exp.straggler_delay_ms);
        let opened = self.now;
        for late in [false, true] {
            let arrive = opened + latency + if late { straggle } else { Duration::ZERO };
            let sites = &self.sites;
            let group = |c: &Taking| c.active && sites[c.site].straggler == late;
            if !taking.iter().any(group) {
                continue;
            }
            let mine: Vec<bool> = taking.iter().map(group).collect();
            let on_time = self.wait(arrive.saturating_duration_since(self.now));
            self.submit(taking, &ctx, on_time, |i| mine[i]);
        }
        self.close(&ctx, Phase::AdvertiseKeys, &any);

        // Phases 1–4: each client's round takes the reply to its last message and makes the
        // next one, which reaches the engine after the latency.
        for (before, phase) in Phase::ALL.into_iter().zip(Phase::ALL.into_iter().skip(1)) {
            self.drop_out(taking, phase);
            let on_time = self.wait(latency);
            self.work(taking, &key, before);
            self.submit(taking, &ctx, on_time, |_| true);
            self.close(&ctx, phase, &any);
        }
        let uploaded: BTreeSet<usize> =
            taking.iter().filter(|c| c.uploaded).map(|c| c.site).collect();

        // The result: the checkpoint is "stored" at once, then every client still in the
        // attempt gets the outcome.
        let parent = self.engine.checkpoint().0;
        while let Some(o) = self.engine.poll_output() {
            if let Output::Aggregate(job) = o {
                // The coordinator runs the sum on a thread of its own; here, in line.
                self.engine.aggregated(job.run())?;
            } else if let Output::Checkpoint(c) = o {
                self.models.push(Model::from_safetensors(&c.bytes)?);
                self.engine.checkpoint_committed(c.version, self.now)?;
                self.sign_checkpoint(parent, c.summary.clone())?;
            }
        }
        self.wait(latency);
        self.work(taking, &key, Phase::Unmasking);
        Ok(uploaded)
    }
}

/// Batches [`SharedVerifier`] remembers: a round's clients verify one batch (U3's consistency
/// signatures), an attempt whose clients disagree a few.
const REMEMBERED_BATCHES: usize = 4;

/// A signature verified on its own: (key, SHA-256 of the message, signature).
type KnownSignature = ([u8; 32], [u8; 32], [u8; 64]);

/// A proof of knowledge that held: (proof, key, owner, role, ctx).
type KnownProof = ([u8; 64], [u8; 32], ClientId, u8, [u8; 32]);

/// The clients' verifier, shared by all simulated clients. Each distinct certificate chain,
/// signature check and advertised public key is checked once and remembered: each check is a
/// pure function of its bytes (and of the fixed time), so every client would reach the same
/// answer on its own. Sharing them saves the simulation from checking each chain and each
/// consistency signature once per client (n² checks a round) and each advertised key once per
/// neighbour, and each proof of knowledge of an advertised key once per neighbour. Every client
/// still makes every check; a repeated one is a lookup. A result is remembered only for exactly
/// the inputs that produced it: single signatures, a list of signatures as its whole ordered
/// list, a proof with its key, owner, role and round.
struct SharedVerifier {
    inner: X509Credentials,
    /// Verified chains: client → (credential, key), with a slot for each site, filled by the
    /// first check of its chain (reads take no lock: every client looks up most of U3's chains
    /// each round). Chains of clients that are not sites are checked every time.
    chains: HashMap<ClientId, OnceLock<(Vec<u8>, VerifyingKey)>>,
    /// Signatures that passed the single check.
    signatures: RwLock<HashSet<KnownSignature>>,
    /// Proofs of knowledge that held.
    proofs: RwLock<HashSet<KnownProof>>,
    /// The last batches that passed, whole (each is about 230 bytes a signature: comparing a
    /// batch with one of them costs less than hashing it).
    batches: RwLock<Vec<Vec<SignedItem>>>,
    keys: RwLock<HashMap<[u8; 32], PublicKey>>,
}

/// A read or write lock, whoever panicked while holding it (the maps stay consistent: each
/// insert is one call).
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl SharedVerifier {
    fn new(inner: X509Credentials, sites: impl IntoIterator<Item = ClientId>) -> Self {
        SharedVerifier {
            inner,
            chains: sites.into_iter().map(|id| (id, OnceLock::new())).collect(),
            signatures: RwLock::default(),
            proofs: RwLock::default(),
            batches: RwLock::default(),
            keys: RwLock::default(),
        }
    }
}

impl CredentialVerifier for SharedVerifier {
    fn verify(&self, claimed: &ClientId, credential: &[u8]) -> fedsec_crypto::Result<VerifyingKey> {
        let slot = self.chains.get(claimed);
        if let Some((seen, key)) = slot.and_then(OnceLock::get)
            && seen.as_slice() == credential
        {
            return Ok(*key);
        }
        let key = self.inner.verify(claimed, credential)?;
        if let Some(slot) = slot {
            // A slot keeps the first chain that passed (a site has one chain).
            let _ = slot.set((credential.to_vec(), key));
        }
        Ok(key)
    }

    fn verify_signature(
        &self,
        signer: ClientId,
        key: &VerifyingKey,
        message: &[u8],
        signature: &[u8; 64],
    ) -> fedsec_crypto::Result<()> {
        let entry = (key.to_bytes(), Sha256::digest(message).into(), *signature);
        if read(&self.signatures).contains(&entry) {
            return Ok(());
        }
        self.inner.verify_signature(signer, key, message, signature)?;
        write(&self.signatures).insert(entry);
        Ok(())
    }

    fn verify_signatures(&self, items: &[SignedItem]) -> fedsec_crypto::Result<()> {
        let same = |known: &[SignedItem]| {
            known.len() == items.len()
                && known.iter().zip(items).all(|(a, b)| {
                    a.0 == b.0
                        && a.1.as_bytes() == b.1.as_bytes()
                        && a.3 == b.3
                        && (Arc::ptr_eq(&a.2, &b.2) || a.2 == b.2)
                })
        };
        if read(&self.batches).iter().any(|known| same(known)) {
            return Ok(());
        }
        self.inner.verify_signatures(items)?;
        let mut batches = write(&self.batches);
        if !batches.iter().any(|known| same(known)) {
            if batches.len() == REMEMBERED_BATCHES {
                batches.remove(0);
            }
            batches.push(items.to_vec());
        }
        Ok(())
    }

    fn key_proof_holds(
        &self,
        proof: &KeyProof,
        key: &PublicKey,
        ctx: &RoundContext,
        owner: &ClientId,
        role: KeyRole,
    ) -> bool {
        let entry = (proof.0, key.to_bytes(), *owner, role.code(), ctx.0);
        if read(&self.proofs).contains(&entry) {
            return true;
        }
        if !self.inner.key_proof_holds(proof, key, ctx, owner, role) {
            return false;
        }
        write(&self.proofs).insert(entry);
        true
    }

    fn public_key(&self, owner: ClientId, bytes: &[u8; 32]) -> fedsec_crypto::Result<PublicKey> {
        if let Some(k) = read(&self.keys).get(bytes) {
            return Ok(*k);
        }
        let key = self.inner.public_key(owner, bytes)?;
        write(&self.keys).insert(*bytes, key);
        Ok(key)
    }
}

fn pem_certs(path: &std::path::Path) -> Result<Vec<Vec<u8>>, SimError> {
    use rustls_pki_types::pem::PemObject;
    let text = std::fs::read(path).map_err(|source| SimError::Io { path: path.into(), source })?;
    rustls_pki_types::CertificateDer::pem_slice_iter(&text)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| SimError::Credential { path: path.into(), reason: e.to_string() })
}

/// A client's identity key and certificate chain, as the throw-away PKI wrote them.
fn credentials(
    c: &fedsec_coordinator::pki::ClientCredentials,
) -> Result<(Arc<IdentityKey>, Vec<Vec<u8>>), SimError> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    // The private key's text is wiped once the key is parsed.
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(&c.key)
            .map_err(|source| SimError::Io { path: c.key.clone(), source })?,
    );
    let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| SimError::Credential { path: c.key.clone(), reason: e.to_string() })?;
    let chain = pem_certs(&c.cert)?;
    Ok((Arc::new(IdentityKey::from_signing_key(signing)), chain))
}

/// Runs the experiment's secure training in memory.
pub fn run(exp: &Experiment, p: &Prepared, progress: &ProgressBar) -> Result<SecureRun, SimError> {
    let started = Instant::now();
    let config = task_config(exp, p)?;
    // A throw-away PKI, as over gRPC: peers check each other's certificate chains in every
    // round. Keys come from the operating system, never from the seed.
    let dir = tempfile::tempdir()
        .map_err(|source| SimError::Setup { what: "a temporary folder", source })?;
    let pki =
        fedsec_coordinator::pki::init_scratch(&dir.path().join("pki"), p.active.len(), &[], false)?;
    let roots = pem_certs(&pki.ca_cert)?;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let x509 = X509Credentials::new(&roots, unix)?;
    let verifier: Arc<dyn CredentialVerifier> = Arc::new(x509.clone());
    let signing = SigningKey::generate(&mut fedsec_crypto::rng::os_rng());
    let policy = PolicyConfig {
        max_dropout: p.assumed_dropout.max(PolicyConfig::default().max_dropout),
        ..PolicyConfig::default()
    }
    .to_policy()
    .map_err(SimError::Policy)?;
    // Which key each site holds follows the seed (the keys themselves do not): the sites'
    // order by client id — and so their positions in every plan and neighbour graph — is the
    // same in every run with this seed.
    let mut by_rank: Vec<&fedsec_coordinator::pki::ClientCredentials> =
        pki.clients.iter().collect();
    by_rank.sort_by_key(|c| c.id);
    let mut ranks: Vec<usize> = (0..by_rank.len()).collect();
    ranks.shuffle(&mut ChaCha20Rng::from_seed(seed32(exp.seed, "ranks", 0)));
    let mut sites = Vec::with_capacity(p.active.len());
    for (slot, &i) in p.active.iter().enumerate() {
        let (key, chain) = credentials(by_rank[ranks[slot]])?;
        sites.push(Site {
            index: i,
            member: Membership::new(key, &chain, policy.clone(), signing.verifying_key(), TASK),
            state: ClientState::default(),
            trainer: Some(exp.trainer(p, i)?),
            drops: schedule::drops_of(exp, i, exp.rounds),
            straggler: schedule::is_straggler(exp, i),
            coins: ChaCha20Rng::from_seed(seed32(exp.seed, "coins", i as u64)),
        });
    }
    let by_id = sites.iter().enumerate().map(|(s, site)| (site.member.id(), s)).collect();
    let shared: Arc<dyn CredentialVerifier> =
        Arc::new(SharedVerifier::new(x509, sites.iter().map(|s| s.member.id())));
    let engine = Engine::new(
        config,
        p.initial_model.clone(),
        0,
        verifier.clone(),
        seed32(exp.seed, "engine", 0),
    )?;
    let mut world = World {
        exp,
        engine,
        now: Instant::now(),
        sites,
        by_id,
        verifier: shared,
        signing,
        manifest: v1::CheckpointManifest::default(),
        models: Vec::new(),
    };
    world.sign_checkpoint(0, "initial model".into())?;
    let mut attempts = Vec::new();
    let most = exp.rounds.saturating_mul(20).max(20);
    while world.engine.status().state != EngineState::Finished {
        if attempts.len() as u64 >= most {
            return Err(SimError::TooManyAborts { attempts: attempts.len(), rounds: exp.rounds });
        }
        let clock = Instant::now();
        let info = world.select(attempts.len())?;
        let mut record = world.attempt(info)?;
        record.compute_s = Some(clock.elapsed().as_secs_f64());
        let aborted = attempts.iter().filter(|a: &&AttemptRecord| !a.completed).count()
            + usize::from(!record.completed);
        attempts.push(record);
        let status = world.engine.status();
        progress.set_position(status.completed_rounds);
        progress.set_message(format!("round {} · {aborted} aborted", status.round_id.0));
    }
    Ok(SecureRun { attempts, models: world.models, wall_s: started.elapsed().as_secs_f64() })
}
