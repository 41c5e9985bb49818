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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use fedsec_client::Trainer;
use fedsec_client::config::PolicyConfig;
use fedsec_client::wire as client_wire;
use fedsec_coordinator::engine::{Engine, Output, PhaseDeadlines, Reply, RoundInfo, TaskConfig};
use fedsec_coordinator::wire as server_wire;
use fedsec_crypto::model::Model;
use fedsec_crypto::secagg::client::{ClientPolicy, ContributionLedger, SecAggClient};
use fedsec_crypto::secagg::driver::Phase;
use fedsec_crypto::sign::{CredentialVerifier, IdentityKey};
use fedsec_crypto::x509::{X509Credentials, encode_chain};
use fedsec_crypto::{AdversaryClass, ClientId, TaskId};
use indicatif::ProgressBar;
use prost::Message;
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

fn err(what: impl std::fmt::Display) -> SimError {
    SimError(what.to_string())
}

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
    key: Arc<IdentityKey>,
    /// Its certificate chain, encoded for the advertisement.
    credential: Vec<u8>,
    ledger: ContributionLedger,
    trainer: Option<Box<dyn Trainer>>,
    drops: BTreeMap<u64, usize>,
    straggler: bool,
    coins: ChaCha20Rng,
}

/// A selected site's state in one attempt.
struct Taking {
    site: usize,
    id: ClientId,
    core: SecAggClient,
    /// The site's trainer, ledger and rounding coins, lent for the attempt.
    trainer: Option<Box<dyn Trainer>>,
    ledger: ContributionLedger,
    coins: ChaCha20Rng,
    update: Vec<f32>,
    examples: u64,
    loss: f64,
    sent: u64,
    received: u64,
    /// The phase it drops out at, this round.
    drop_at: Option<usize>,
    /// It did drop out (the attempt reached that phase).
    dropped: bool,
    /// Still taking part (not dropped, not refused).
    active: bool,
}

/// The task configuration the gRPC transport's coordinator file gives, as a value.
fn task_config(exp: &Experiment, p: &Prepared) -> Result<TaskConfig, SimError> {
    let ppm = |x: f64| (x * 1e6).round() as u32;
    let mut c = TaskConfig::new(TaskId([0x5e; 16]), "fedsec-sim", p.clients_per_round);
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
    c.validate().map_err(err)?;
    Ok(c)
}

/// The virtual world: the engine, the clock, the sites.
struct World<'a> {
    exp: &'a Experiment,
    engine: Engine,
    now: Instant,
    sites: Vec<Site>,
    by_id: BTreeMap<ClientId, usize>,
    policy: ClientPolicy,
    verifier: Arc<dyn CredentialVerifier>,
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
    fn close(&mut self, ctx: &fedsec_crypto::RoundContext, phase: Phase, any: &ClientId) {
        let still_open = |e: &Engine| {
            e.current_round().is_some_and(|r| r.plan.context() == *ctx)
                && e.status().state == "running"
                && e.status().phase == Some(phase)
        };
        if still_open(&self.engine) && self.engine.reply(any, ctx, phase).is_none() {
            self.advance();
        }
    }

    /// Runs the selection: the sites check in, in an order drawn from the seed for each
    /// attempt (the engine takes the first ones that fill a round); returns the plan.
    fn select(&mut self, attempt: usize) -> Result<RoundInfo, SimError> {
        let mut order: Vec<usize> = (0..self.sites.len()).collect();
        order.shuffle(&mut ChaCha20Rng::from_seed(seed32(
            self.exp.seed,
            "arrivals",
            attempt as u64,
        )));
        for s in order {
            self.engine.check_in(self.sites[s].key.id(), self.now);
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
        Err(SimError(format!(
            "round {}: fewer eligible clients than the {} a round needs (after aborted attempts, \
             clients that already contributed to the checkpoint wait for the next one)",
            self.engine.status().round_id.0,
            self.engine.config().min_clients
        )))
    }

    /// One attempt, from the plan to its outcome. The clients' work of each phase runs in
    /// parallel; their messages reach the engine one by one, in the plan's order.
    fn attempt(&mut self, info: RoundInfo) -> Result<AttemptRecord, SimError> {
        let plan = info.plan.clone();
        let round = plan.round_id.0;
        let ctx = plan.context();
        let assignment = client_wire::plan(&server_wire::plan_to_wire(&info)).map_err(err)?;
        let rref = assignment.round_ref();
        let key = server_wire::round_key(Some(&rref)).map_err(err)?;
        // The checkpoint every selected client downloads and checks against the plan.
        let model = self.engine.model().clone();
        let bytes = model.to_safetensors().map_err(err)?;
        if <[u8; 32]>::from(Sha256::digest(&bytes)) != plan.checkpoint.0 {
            return Err(SimError::new("the checkpoint does not match the plan's hash"));
        }
        let mut taking: Vec<Taking> = Vec::with_capacity(plan.selected.len());
        for id in &plan.selected {
            let s = self.by_id[id];
            let site = &mut self.sites[s];
            let core = SecAggClient::new(
                site.key.clone(),
                self.verifier.clone(),
                &self.policy,
                plan.clone(),
                &plan.checkpoint,
                &site.ledger,
            )
            .map_err(err)?
            .with_credential(site.credential.clone());
            taking.push(Taking {
                site: s,
                id: *id,
                core,
                trainer: site.trainer.take(),
                ledger: std::mem::take(&mut site.ledger),
                coins: std::mem::replace(&mut site.coins, ChaCha20Rng::from_seed([0; 32])),
                update: Vec::new(),
                examples: 0,
                loss: 0.0,
                sent: 0,
                received: bytes.len() as u64,
                drop_at: site.drops.get(&round).copied(),
                dropped: false,
                active: true,
            });
        }
        let result = self.phases(&info, &mut taking, &model, &rref, &key);
        // The sites get their state back, whatever happened.
        for c in &mut taking {
            let site = &mut self.sites[c.site];
            site.trainer = c.trainer.take();
            site.ledger = std::mem::take(&mut c.ledger);
            site.coins = std::mem::replace(&mut c.coins, ChaCha20Rng::from_seed([0; 32]));
        }
        let uploaded = result?;

        // The checkpoint: "stored" at once.
        while let Some(o) = self.engine.poll_output() {
            if let Output::Checkpoint(c) = o {
                self.models.push(Model::from_safetensors(&c.bytes).map_err(err)?);
                self.engine.checkpoint_committed(c.version, self.now).map_err(err)?;
            }
        }
        let outcome = self
            .engine
            .result(&ctx)
            .cloned()
            .ok_or_else(|| SimError(format!("round {round}: the attempt left no outcome")))?;
        let finished: Vec<&Taking> =
            taking.iter().filter(|c| c.active && outcome.completed).collect();
        let result_bytes = server_wire::result_to_wire(&outcome, key.task).encoded_len() as u64;
        let losses: Vec<f64> = finished.iter().map(|c| c.loss).collect();
        Ok(AttemptRecord {
            round_id: round,
            completed: outcome.completed,
            abort_reason: outcome.abort_reason.clone(),
            set_sizes: outcome.set_sizes.clone(),
            phase_seconds: outcome.phase_seconds.clone(),
            upload_bytes: outcome.upload_bytes,
            participants: if outcome.completed {
                uploaded.iter().map(|&s| self.sites[s].index).collect()
            } else {
                Vec::new()
            },
            scheduled_drops: taking.iter().filter(|c| c.dropped).count(),
            bytes_sent: finished.iter().map(|c| c.sent).collect(),
            bytes_received: finished.iter().map(|c| c.received + result_bytes).collect(),
            train_loss: (!losses.is_empty())
                .then(|| losses.iter().sum::<f64>() / losses.len() as f64),
            compute_s: None,
        })
    }

    /// Drops out, at the start of `phase`, the clients the schedule says.
    fn drop_out(&mut self, taking: &mut [Taking], phase: usize) {
        let round = self.engine.status().round_id.0;
        for c in taking.iter_mut().filter(|c| c.active && c.drop_at == Some(phase)) {
            c.active = false;
            c.dropped = true;
            // Once per round, as the gRPC client's hook: a retried attempt runs without it.
            self.sites[c.site].drops.remove(&round);
            self.engine.client_gone(&c.id, self.now);
        }
    }

    /// Hands each active client's message to the engine, in order; a refused one leaves.
    fn submit<M>(
        &mut self,
        taking: &mut [Taking],
        messages: Vec<Option<M>>,
        on_time: bool,
        mut give: impl FnMut(&mut Engine, ClientId, M, Instant) -> bool,
    ) {
        for (c, m) in taking.iter_mut().zip(messages) {
            match m {
                Some(m) if on_time && c.active => {
                    if !give(&mut self.engine, c.id, m, self.now) {
                        c.active = false;
                    }
                }
                _ => c.active = false,
            }
        }
    }

    /// The replies the engine prepared for the active clients after `phase`.
    fn replies(
        &self,
        taking: &[Taking],
        ctx: &fedsec_crypto::RoundContext,
        phase: Phase,
    ) -> Vec<Option<Reply>> {
        taking
            .iter()
            .map(|c| match c.active {
                true => self.engine.reply(&c.id, ctx, phase).and_then(Result::ok),
                false => None,
            })
            .collect()
    }

    /// The clients' work after `phase`, on all cores: `f` turns each active client's reply into
    /// its next message. Clients go in slices, so that only a slice's replies (an unmasking
    /// request holds every survivor's signature and certificate chain) exist at once.
    fn work<M: Send>(
        &self,
        taking: &mut [Taking],
        ctx: &fedsec_crypto::RoundContext,
        phase: Phase,
        f: impl Fn(&mut Taking, Reply) -> Option<M> + Sync,
    ) -> Vec<Option<M>> {
        let mut out = Vec::with_capacity(taking.len());
        for slice in taking.chunks_mut(WORK_SLICE) {
            let replies = self.replies(slice, ctx, phase);
            let done: Vec<Option<M>> =
                slice.par_iter_mut().zip(replies).map(|(c, r)| r.and_then(|r| f(c, r))).collect();
            out.extend(done);
        }
        out
    }

    /// The five phases of an attempt. Returns the sites whose masked input was taken.
    fn phases(
        &mut self,
        info: &RoundInfo,
        taking: &mut [Taking],
        model: &Model,
        rref: &fedsec_proto::v1::RoundRef,
        key: &server_wire::RoundKey,
    ) -> Result<BTreeSet<usize>, SimError> {
        let plan = &info.plan;
        let ctx = plan.context();
        let any = plan.selected[0];
        let latency = Duration::from_millis(self.exp.latency_ms);

        // Local training, in parallel.
        let fits: Vec<Result<(), String>> = taking
            .par_iter_mut()
            .map(|c| {
                let trainer = c.trainer.as_mut().ok_or("a site's trainer is missing")?;
                let fit = trainer.fit(model).map_err(|e| e.to_string())?;
                (c.update, c.examples, c.loss) = (fit.update, fit.examples, fit.loss);
                Ok(())
            })
            .collect();
        fits.into_iter().collect::<Result<(), String>>().map_err(SimError)?;

        // Phase 0: advertise keys; stragglers arrive late.
        self.drop_out(taking, 0);
        let straggle = Duration::from_millis(self.exp.straggler_delay_ms);
        let opened = self.now;
        for late in [false, true] {
            let arrive = opened + latency + if late { straggle } else { Duration::ZERO };
            let arrivals: Vec<usize> = (0..taking.len())
                .filter(|&i| taking[i].active && self.sites[taking[i].site].straggler == late)
                .collect();
            if arrivals.is_empty() || !self.wait(arrive.saturating_duration_since(self.now)) {
                continue;
            }
            for i in arrivals {
                let c = &mut taking[i];
                let req = client_wire::advertise(rref.clone(), c.core.advertise()).map_err(err)?;
                c.sent += req.encoded_len() as u64;
                let msg = server_wire::advertise(&req, c.id).map_err(err)?;
                if self.engine.advertise(c.id, msg, self.now).is_err() {
                    c.active = false;
                }
            }
        }
        self.close(&ctx, Phase::AdvertiseKeys, &any);

        // Phase 1: share keys.
        self.drop_out(taking, 1);
        let on_time = self.wait(latency);
        let out = self.work(taking, &ctx, Phase::AdvertiseKeys, |c, r| {
            let Reply::Keys(fwd) = r else { return None };
            let resp = server_wire::keys_to_wire(key, &fwd);
            c.received += resp.encoded_len() as u64;
            let fwd = client_wire::keys(ctx, c.id, &resp).ok()?;
            let msg = c.core.handle_keys(&fwd).ok()?;
            let req = client_wire::share_keys(rref.clone(), &msg);
            c.sent += req.encoded_len() as u64;
            server_wire::share_keys(&req, c.id).ok()
        });
        self.submit(taking, out, on_time, |e, id, m, now| e.share_keys(id, m, now).is_ok());
        self.close(&ctx, Phase::ShareKeys, &any);

        // Phase 2: quantize, mask, upload.
        self.drop_out(taking, 2);
        let on_time = self.wait(latency);
        let chunk_words = info.upload_chunk_words as usize;
        let out = self.work(taking, &ctx, Phase::ShareKeys, |c, r| {
            let Reply::Shares(fwd) = r else { return None };
            let resp = server_wire::shares_to_wire(key, &fwd);
            c.received += resp.encoded_len() as u64;
            let fwd = client_wire::shares(ctx, c.id, &resp).ok()?;
            let x = plan.quant.quantize(&c.update, c.examples, &mut c.coins).ok()?;
            let y = c.core.handle_shares(&fwd, &x, &mut c.ledger).ok()?;
            let chunks = client_wire::chunks(rref, &y, chunk_words);
            c.sent += chunks.iter().map(|k| k.encoded_len() as u64).sum::<u64>();
            chunks
                .into_iter()
                .map(|k| server_wire::chunk(k, c.id).ok().map(|m| m.1))
                .collect::<Option<Vec<_>>>()
        });
        let mut uploaded = BTreeSet::new();
        let sites: Vec<usize> = taking.iter().map(|c| c.site).collect();
        self.submit(taking, out, on_time, |e, id, chunks, now| {
            chunks.iter().all(|m| e.masked_input(id, m, now).is_ok())
        });
        for (c, s) in taking.iter().zip(sites) {
            if c.active {
                uploaded.insert(s);
            }
        }
        self.close(&ctx, Phase::MaskedInputCollection, &any);

        // Phase 3: sign U3.
        self.drop_out(taking, 3);
        let on_time = self.wait(latency);
        let out = self.work(taking, &ctx, Phase::MaskedInputCollection, |c, r| {
            let Reply::Survivors(req) = r else { return None };
            let resp = server_wire::survivors_to_wire(key, &req);
            c.received += resp.encoded_len() as u64;
            let msg = c.core.handle_consistency(&client_wire::survivors(ctx, &resp)).ok()?;
            let req = client_wire::consistency(rref.clone(), &msg);
            c.sent += req.encoded_len() as u64;
            server_wire::consistency(&req, c.id).ok()
        });
        self.submit(taking, out, on_time, |e, id, m, now| e.consistency(id, m, now).is_ok());
        self.close(&ctx, Phase::ConsistencyCheck, &any);

        // Phase 4: reveal shares.
        self.drop_out(taking, 4);
        let on_time = self.wait(latency);
        let out = self.work(taking, &ctx, Phase::ConsistencyCheck, |c, r| {
            let Reply::Unmask(req) = r else { return None };
            let resp = server_wire::unmask_request_to_wire(key, &req);
            c.received += resp.encoded_len() as u64;
            let req = client_wire::unmask_request(ctx, &resp).ok()?;
            let msg = c.core.handle_unmasking(&req).ok()?;
            let req = client_wire::unmask(rref.clone(), &msg);
            c.sent += req.encoded_len() as u64;
            server_wire::unmasking(&req, c.id).ok()
        });
        self.submit(taking, out, on_time, |e, id, m, now| e.unmasking(id, m, now).is_ok());
        self.close(&ctx, Phase::Unmasking, &any);
        Ok(uploaded)
    }
}

/// The clients' certificate-chain verifier, shared by all simulated clients: each distinct
/// (client, credential) pair is verified once and remembered. Verification is a pure function
/// of the pair (and the fixed time), so every client would reach the same answer on its own;
/// sharing it only saves the simulation from checking each chain once per client — n² chain
/// checks a round. Signatures are still checked by every client.
struct SharedVerifier {
    inner: X509Credentials,
    verified: Mutex<BTreeMap<(ClientId, [u8; 32]), VerifyingKey>>,
}

impl CredentialVerifier for SharedVerifier {
    fn verify(&self, claimed: &ClientId, credential: &[u8]) -> fedsec_crypto::Result<VerifyingKey> {
        let key = (*claimed, <[u8; 32]>::from(Sha256::digest(credential)));
        let seen = |m: &Mutex<BTreeMap<_, VerifyingKey>>| {
            m.lock().unwrap_or_else(|p| p.into_inner()).get(&key).copied()
        };
        if let Some(k) = seen(&self.verified) {
            return Ok(k);
        }
        let k = self.inner.verify(claimed, credential)?;
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).insert(key, k);
        Ok(k)
    }
}

fn pem_certs(path: &std::path::Path) -> Result<Vec<Vec<u8>>, SimError> {
    use rustls_pki_types::pem::PemObject;
    let text = std::fs::read(path).map_err(|e| SimError(format!("{}: {e}", path.display())))?;
    rustls_pki_types::CertificateDer::pem_slice_iter(&text)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| SimError(format!("{}: {e:?}", path.display())))
}

/// A client's identity key and certificate chain, as the throw-away PKI wrote them.
fn credentials(
    c: &fedsec_coordinator::pki::ClientCredentials,
) -> Result<(Arc<IdentityKey>, Vec<u8>), SimError> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    // The private key's text is wiped once the key is parsed.
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(&c.key)
            .map_err(|e| SimError(format!("{}: {e}", c.key.display())))?,
    );
    let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| SimError(format!("{}: {e}", c.key.display())))?;
    let chain = pem_certs(&c.cert)?;
    Ok((Arc::new(IdentityKey::from_signing_key(signing)), encode_chain(&chain)))
}

/// Runs the experiment's secure training in memory.
pub fn run(exp: &Experiment, p: &Prepared, progress: &ProgressBar) -> Result<SecureRun, SimError> {
    let started = Instant::now();
    let config = task_config(exp, p)?;
    // A throw-away PKI, as over gRPC: peers check each other's certificate chains in every
    // round. Keys come from the operating system, never from the seed.
    let dir = tempfile::tempdir().map_err(err)?;
    let pki = fedsec_coordinator::pki::init(&dir.path().join("pki"), p.active.len(), &[], false)
        .map_err(err)?;
    let roots = pem_certs(&pki.ca_cert)?;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let x509 = X509Credentials::new(&roots, unix).map_err(err)?;
    let verifier: Arc<dyn CredentialVerifier> = Arc::new(x509.clone());
    let shared: Arc<dyn CredentialVerifier> =
        Arc::new(SharedVerifier { inner: x509, verified: Mutex::new(BTreeMap::new()) });
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
        let (key, credential) = credentials(by_rank[ranks[slot]])?;
        sites.push(Site {
            index: i,
            key,
            credential,
            ledger: ContributionLedger::default(),
            trainer: Some(exp.trainer(p, i).map_err(err)?),
            drops: schedule::drops_of(exp, i, exp.rounds),
            straggler: schedule::is_straggler(exp, i),
            coins: ChaCha20Rng::from_seed(seed32(exp.seed, "coins", i as u64)),
        });
    }
    let by_id = sites.iter().enumerate().map(|(s, site)| (site.key.id(), s)).collect();
    let policy = PolicyConfig {
        max_dropout: p.assumed_dropout.max(PolicyConfig::default().max_dropout),
        ..PolicyConfig::default()
    }
    .to_policy()
    .map_err(err)?;
    let engine = Engine::new(
        config,
        p.initial_model.clone(),
        0,
        verifier.clone(),
        seed32(exp.seed, "engine", 0),
    )
    .map_err(err)?;
    let mut world = World {
        exp,
        engine,
        now: Instant::now(),
        sites,
        by_id,
        policy,
        verifier: shared,
        models: Vec::new(),
    };
    let mut attempts = Vec::new();
    let most = exp.rounds.saturating_mul(20).max(20);
    while world.engine.status().state != "finished" {
        if attempts.len() as u64 >= most {
            return Err(SimError(format!(
                "{} attempts did not complete {} rounds: too many aborted (lower the dropout or \
                 raise --assumed-dropout)",
                attempts.len(),
                exp.rounds
            )));
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
