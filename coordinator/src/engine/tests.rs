//! The engine driven by real protocol clients on a virtual clock.

use std::collections::BTreeMap;

use fedsec_crypto::secagg::client::{ClientPolicy, ContributionLedger, SecAggClient};
use fedsec_crypto::secagg::driver::stand_in_trained_on;
use fedsec_crypto::sign::{IdentityKey, RawKeyCredentials};
use fedsec_crypto::{AdversaryClass, GraphKind, TaskId};
use fedsec_wire::model::Tensor;

use fedsec_crypto::secagg::messages::{ShareKeys, UnmaskingResponse};
use fedsec_crypto::secagg::server::UploadProgress;

use super::*;

pub(super) const DIM: usize = 6;

pub(super) struct Site {
    pub(super) key: Arc<IdentityKey>,
    pub(super) ledger: ContributionLedger,
    pub(super) update: Vec<f32>,
    pub(super) examples: u64,
}

struct Fed {
    engine: Engine,
    sites: Vec<Site>,
    now: Instant,
    rng: ChaCha20Rng,
    /// What the engine told the operator, as `commit` drained it.
    progress: Vec<Progress>,
}

fn config(n: usize) -> TaskConfig {
    let mut c = TaskConfig::new(TaskId([7; 16]), "test", n);
    c.graph = GraphKind::Complete;
    c.adversary = AdversaryClass::SemiMalicious;
    c.over_selection = 1.0;
    c.min_clients = 8;
    c.dropout_ppm = 300_000;
    c.max_examples = 100;
    c.server_learning_rate = 0.5;
    c.rounds = 3;
    c.deadlines = PhaseDeadlines::uniform(Duration::from_secs(10));
    c.upload_chunk_words = 4;
    c
}

pub(super) fn initial_model() -> Model {
    Model::new()
        .with("w", Tensor::new(vec![2, 2], vec![0.5, -0.25, 1.0, 0.0]).unwrap())
        .with("b", Tensor::new(vec![2], vec![0.1, -0.1]).unwrap())
}

fn fed(n: usize, config: TaskConfig) -> Fed {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let sites = (0..n)
        .map(|i| Site {
            key: Arc::new(IdentityKey::generate(&mut rng)),
            ledger: ContributionLedger::default(),
            update: (0..DIM).map(|j| ((i * 7 + j * 3) % 11) as f32 / 11.0 - 0.45).collect(),
            examples: 10 + 9 * i as u64,
        })
        .collect();
    let engine =
        Engine::new(config, initial_model(), 0, Arc::new(RawKeyCredentials), [3; 32]).unwrap();
    Fed { engine, sites, now: Instant::now(), rng, progress: Vec::new() }
}

fn policy() -> ClientPolicy {
    ClientPolicy { min_clients: 3, min_surviving: 3, ..ClientPolicy::default() }
}

/// What happened to each client in one attempt, by site index: the phase it stopped answering
/// at (`.0`), and the phase at whose start its connection closed (`.1`).
#[derive(Default)]
struct Drops(BTreeMap<usize, Phase>, BTreeMap<usize, Phase>);

impl Drops {
    fn active(&self, i: usize, p: Phase) -> bool {
        self.0.get(&i).is_none_or(|&d| d > p)
    }
}

impl Fed {
    /// Tells the engine about the clients whose connection closes as phase `p` starts.
    fn close_connections(&mut self, drops: &Drops, plan: &RoundPlan, p: Phase) {
        for id in &plan.selected {
            if drops.1.get(&self.site_of(id)) == Some(&p) {
                self.engine.client_gone(id, self.now);
            }
        }
    }
}

struct Ran {
    info: Assignment,
    quantized: BTreeMap<usize, Vec<u32>>,
    outcome: Result<RoundOutcome>,
}

impl Fed {
    fn site_of(&self, id: &ClientId) -> usize {
        self.sites.iter().position(|s| s.key.id() == *id).unwrap()
    }

    fn check_in_all(&mut self) -> Assignment {
        let mut info = None;
        for s in &self.sites {
            if let CheckIn::Selected(i) = self.engine.check_in(s.key.id(), self.now) {
                info = Some(*i);
            }
        }
        if info.is_none() {
            self.advance();
        }
        let first = self.sites[0].key.id();
        info.or_else(|| match self.engine.poll_check_in(&first) {
            CheckIn::Selected(i) => Some(*i),
            _ => self.engine.current_round().cloned(),
        })
        .expect("a round started")
    }

    /// Moves the clock to the next deadline and handles it.
    fn advance(&mut self) {
        if let Some(t) = self.engine.poll_timeout() {
            self.now = self.now.max(t);
            self.engine.handle_timeout(self.now);
        }
    }

    fn wait_closed(&mut self, ctx: &RoundContext, phase: Phase, any: &ClientId) {
        if self.engine.reply(any, ctx, phase).is_none() {
            self.advance();
        }
    }

    /// Runs one attempt with honest clients, dropping them as `drops` says.
    fn run(&mut self, drops: &Drops) -> Ran {
        let info = self.check_in_all();
        let plan = info.plan.clone();
        let ctx = plan.context();
        let idx: Vec<usize> = plan.selected.iter().map(|id| self.site_of(id)).collect();
        let mut clients: BTreeMap<usize, SecAggClient> = BTreeMap::new();
        let version = self.engine.status().checkpoint_version;
        for &i in &idx {
            let s = &self.sites[i];
            let c = SecAggClient::new(
                s.key.clone(),
                Arc::new(RawKeyCredentials),
                &policy(),
                plan.clone(),
                &stand_in_trained_on(&plan, version),
                &s.ledger,
            )
            .unwrap();
            clients.insert(i, c);
        }
        let any = plan.selected[0];
        // Phase 0.
        self.close_connections(drops, &plan, Phase::AdvertiseKeys);
        for (&i, c) in &clients {
            if drops.active(i, Phase::AdvertiseKeys) {
                self.engine
                    .advertise(c.advertise().client, c.advertise().clone(), self.now)
                    .unwrap();
            }
        }
        self.wait_closed(&ctx, Phase::AdvertiseKeys, &any);
        // Phase 1.
        self.close_connections(drops, &plan, Phase::ShareKeys);
        for (&i, c) in clients.iter_mut() {
            if !drops.active(i, Phase::ShareKeys) {
                continue;
            }
            let id = self.sites[i].key.id();
            if let Some(Ok(Reply::Keys(fwd))) = self.engine.reply(&id, &ctx, Phase::AdvertiseKeys)
                && let Ok(msg) = c.handle_keys(&fwd)
            {
                self.engine.share_keys(id, msg, self.now).unwrap();
            }
        }
        self.wait_closed(&ctx, Phase::ShareKeys, &any);
        // Phase 1½.
        self.close_connections(drops, &plan, Phase::Complaints);
        for (&i, c) in clients.iter_mut() {
            if !drops.active(i, Phase::Complaints) {
                continue;
            }
            let id = self.sites[i].key.id();
            if let Some(Ok(Reply::Shares(fwd))) = self.engine.reply(&id, &ctx, Phase::ShareKeys)
                && let Ok(msg) = c.handle_shares(&fwd)
            {
                self.engine.complaints(id, msg, self.now).unwrap();
            }
        }
        self.wait_closed(&ctx, Phase::Complaints, &any);
        // Phase 2.
        self.close_connections(drops, &plan, Phase::MaskedInputCollection);
        let mut quantized = BTreeMap::new();
        for (&i, c) in clients.iter_mut() {
            if !drops.active(i, Phase::MaskedInputCollection) {
                continue;
            }
            let id = self.sites[i].key.id();
            let Some(Ok(Reply::Excluded(e))) = self.engine.reply(&id, &ctx, Phase::Complaints)
            else {
                continue;
            };
            let site = &mut self.sites[i];
            let x = plan.quant.quantize(&site.update, site.examples, &mut self.rng).unwrap();
            let Ok(y) = c.handle_exclusions(&e, &x, &mut site.ledger) else { continue };
            for chunk in y.chunks(info.upload_chunk_words as usize) {
                self.engine.masked_input(id, &chunk, self.now).unwrap();
            }
            quantized.insert(i, x);
        }
        self.wait_closed(&ctx, Phase::MaskedInputCollection, &any);
        // Phase 3.
        self.close_connections(drops, &plan, Phase::ConsistencyCheck);
        for (&i, c) in clients.iter_mut() {
            if !drops.active(i, Phase::ConsistencyCheck) {
                continue;
            }
            let id = self.sites[i].key.id();
            if let Some(Ok(Reply::Survivors(req))) =
                self.engine.reply(&id, &ctx, Phase::MaskedInputCollection)
                && let Ok(msg) = c.handle_consistency(&req)
            {
                self.engine.consistency(id, msg, self.now).unwrap();
            }
        }
        self.wait_closed(&ctx, Phase::ConsistencyCheck, &any);
        // Phase 4.
        self.close_connections(drops, &plan, Phase::Unmasking);
        for (&i, c) in clients.iter_mut() {
            if !drops.active(i, Phase::Unmasking) {
                continue;
            }
            let id = self.sites[i].key.id();
            if let Some(Ok(Reply::Unmask(req))) =
                self.engine.reply(&id, &ctx, Phase::ConsistencyCheck)
                && let Ok(msg) = c.handle_unmasking(&req)
            {
                self.engine.unmasking(id, msg, self.now).unwrap();
            }
        }
        if self.engine.reply(&any, &ctx, Phase::Unmasking).is_none()
            && self.engine.current_round().is_some_and(|r| r.plan.context() == ctx)
            && !matches!(
                self.engine.status().state,
                EngineState::Aggregating | EngineState::Committing
            )
        {
            self.advance();
        }
        self.commit();
        let outcome = match self.engine.reply(&any, &ctx, Phase::Unmasking) {
            Some(Ok(Reply::Result(r))) => Ok(*r),
            Some(Err(e)) => Err(e),
            other => panic!("no result after the round: {other:?}"),
        };
        Ran { info, quantized, outcome }
    }

    /// Plays the storage: commits every checkpoint the engine hands out.
    fn commit(&mut self) -> Vec<NewCheckpoint> {
        let mut out = Vec::new();
        while let Some(o) = self.engine.poll_output() {
            match o {
                // Plays the coordinator's aggregation thread.
                Output::Aggregate(job) => self.engine.aggregated(job.run()).unwrap(),
                Output::Checkpoint(c) => {
                    self.engine.checkpoint_committed(c.version, self.now).unwrap();
                    out.push(c);
                }
                Output::Progress(p) => self.progress.push(p),
                Output::Audit(_) | Output::AttemptEnded(_) => {}
                Output::SaveAttempt(s) => self.engine.attempt_saved(&s.ctx(), s.closed(), self.now),
            }
        }
        // What committing said (the attempt's end, the task's).
        while let Some(o) = self.engine.poll_output() {
            if let Output::Progress(p) = o {
                self.progress.push(p);
            }
        }
        out
    }
}

/// The model FedAvg must produce, computed in the clear from the quantized inputs.
fn expected_model(before: &Model, quant: &QuantParams, eta: f32, inputs: &[&Vec<u32>]) -> Model {
    let mut sum = vec![0u32; inputs[0].len()];
    for x in inputs {
        for (s, v) in sum.iter_mut().zip(x.iter()) {
            *s = s.wrapping_add(*v);
        }
    }
    let avg = quant.weighted_average(&sum).unwrap();
    let next: Vec<f32> = before.flatten().iter().zip(&avg).map(|(t, u)| t + eta * u).collect();
    before.with_flat(&next).unwrap()
}

#[test]
fn a_round_applies_weighted_fedavg_of_the_exact_sum() {
    let mut f = fed(10, config(10));
    let before = f.engine.model().clone();
    let ran = f.run(&Drops::default());
    let outcome = ran.outcome.unwrap();
    assert!(outcome.completed);
    assert_eq!(outcome.new_checkpoint_version, Some(1));
    assert_eq!(outcome.set_sizes, vec![10, 10, 10, 10, 10, 10, 10]);
    let inputs: Vec<&Vec<u32>> = ran.quantized.values().collect();
    let want = expected_model(&before, &ran.info.plan.quant, 0.5, &inputs);
    assert_eq!(f.engine.model(), &want, "bit-for-bit the model of the clear sum");
    assert_ne!(f.engine.model(), &before);
    let (version, hash) = f.engine.checkpoint();
    assert_eq!(version, 1);
    assert_eq!(hash.0, <[u8; 32]>::from(Sha256::digest(want.to_safetensors().unwrap())));
}

#[test]
fn dropouts_within_the_threshold_are_survived_at_the_deadline() {
    let mut f = fed(10, config(10));
    let before = f.engine.model().clone();
    // One client never uploads, another vanishes after uploading: its input is in the sum.
    let info = f.check_in_all();
    let a = f.site_of(&info.plan.selected[2]);
    let b = f.site_of(&info.plan.selected[5]);
    // The selection already happened; `run` checks in again and gets the same plan.
    let drops = Drops(
        [(a, Phase::MaskedInputCollection), (b, Phase::ConsistencyCheck)].into(),
        BTreeMap::new(),
    );
    let ran = f.run(&drops);
    let outcome = ran.outcome.unwrap();
    assert_eq!(ran.info.plan, info.plan);
    assert!(outcome.completed);
    assert_eq!(outcome.set_sizes, vec![10, 10, 10, 10, 9, 8, 8]);
    assert!(ran.quantized.contains_key(&b) && !ran.quantized.contains_key(&a));
    let inputs: Vec<&Vec<u32>> = ran.quantized.values().collect();
    assert_eq!(f.engine.model(), &expected_model(&before, &ran.info.plan.quant, 0.5, &inputs));
    // Phases that waited for a dropped client lasted their full deadline.
    assert_eq!(outcome.phase_seconds[Phase::MaskedInputCollection.index()], 10.0);
}

#[test]
fn a_closed_connection_counts_as_a_dropout_at_once() {
    let mut f = fed(10, config(10));
    let before = f.engine.model().clone();
    let info = f.check_in_all();
    let id = |k: usize| info.plan.selected[k];
    let (a, b, c, d) = (f.site_of(&id(1)), f.site_of(&id(4)), f.site_of(&id(6)), f.site_of(&id(8)));
    // a's connection closes before phase 0 and b's while it waits for the survivors: no phase
    // waits for them. c's closes before phase 1 but it reconnects and answers: it stays in.
    // d simply stops answering in phase 3, so that phase still runs to its deadline.
    let drops = Drops(
        [(a, Phase::AdvertiseKeys), (b, Phase::ConsistencyCheck), (d, Phase::ConsistencyCheck)]
            .into(),
        [(a, Phase::AdvertiseKeys), (b, Phase::ConsistencyCheck), (c, Phase::ShareKeys)].into(),
    );
    let ran = f.run(&drops);
    let outcome = ran.outcome.unwrap();
    assert!(outcome.completed);
    assert_eq!(outcome.set_sizes, vec![10, 9, 9, 9, 9, 7, 7]);
    assert!(ran.quantized.contains_key(&c) && ran.quantized.contains_key(&b));
    assert_eq!(outcome.phase_seconds, vec![0.0, 0.0, 0.0, 0.0, 10.0, 0.0]);
    let inputs: Vec<&Vec<u32>> = ran.quantized.values().collect();
    assert_eq!(f.engine.model(), &expected_model(&before, &ran.info.plan.quant, 0.5, &inputs));
    // A client that is not in the attempt, or no attempt at all: nothing happens.
    let status = f.engine.status();
    let stranger = IdentityKey::generate(&mut f.rng).id();
    f.engine.client_gone(&stranger, f.now);
    f.engine.client_gone(&f.sites[0].key.id(), f.now);
    assert_eq!(f.engine.status(), status);
    assert_eq!(f.engine.poll_timeout(), None, "no deadline appeared");
}

#[test]
fn a_client_back_before_its_phase_closes_is_waited_for_again() {
    let mut f = fed(10, config(10));
    let info = f.check_in_all();
    let back = f.site_of(&info.plan.selected[3]);
    // Gone at phase 0, back before answering: with it answering, nothing changes.
    let gone_then_back = info.plan.selected[3];
    f.engine.client_gone(&gone_then_back, f.now);
    f.engine.client_back(&gone_then_back);
    let ran = f.run(&Drops::default());
    let outcome = ran.outcome.unwrap();
    assert_eq!(outcome.set_sizes, vec![10, 10, 10, 10, 10, 10, 10]);
    assert!(ran.quantized.contains_key(&back));
    // Gone and back, but silent: phase 0 waits for it until the deadline.
    let info = f.check_in_all();
    let silent = f.site_of(&info.plan.selected[0]);
    f.engine.client_gone(&info.plan.selected[0], f.now);
    f.engine.client_back(&info.plan.selected[0]);
    let ran = f.run(&Drops([(silent, Phase::AdvertiseKeys)].into(), BTreeMap::new()));
    assert_eq!(ran.outcome.unwrap().phase_seconds[0], 10.0);
}

#[test]
fn an_abort_changes_nothing_and_the_retry_excludes_contributors() {
    let mut f = fed(14, config(10));
    let before = f.engine.model().clone();
    let info = f.check_in_all();
    assert_eq!(info.plan.selected.len(), 10, "the cap is target × over-selection");
    // Four of ten vanish after uploading: q = 7 signatures cannot be reached.
    let gone: Vec<usize> = info.plan.selected[..4].iter().map(|id| f.site_of(id)).collect();
    let drops =
        Drops(gone.iter().map(|&i| (i, Phase::ConsistencyCheck)).collect(), BTreeMap::new());
    let ran = f.run(&drops);
    let outcome = ran.outcome.unwrap();
    assert!(!outcome.completed);
    assert_eq!(outcome.new_checkpoint_version, None);
    assert_eq!(outcome.set_sizes, vec![10, 10, 10, 10, 10], "it ended in ConsistencyCheck");
    assert_eq!(f.engine.model(), &before, "the model is unchanged");
    assert_eq!(f.engine.checkpoint().0, 0);
    let aborted = f.engine.recent_results().next().unwrap().clone();
    assert!(!aborted.completed);
    assert!(
        matches!(
            aborted.abort_reason,
            Some(AbortReason::Protocol(fedsec_crypto::Error::TooFewClients {
                phase: Phase::ConsistencyCheck,
                ..
            }))
        ),
        "{:?}",
        aborted.abort_reason
    );
    // The ten uploaded on checkpoint 0: none of them may be selected again on it.
    for id in &info.plan.selected {
        assert!(matches!(f.engine.check_in(*id, f.now), CheckIn::RetryLater { .. }));
    }
    // The four others are too few for a round until the selection deadline passes... and
    // even then below min_clients = 8: no round starts.
    for s in &f.sites {
        f.engine.check_in(s.key.id(), f.now);
    }
    f.advance();
    assert_eq!(f.engine.status().state, EngineState::Selecting);
    assert_eq!(f.engine.status().round_id, RoundId(1), "the round id is kept for the retry");
}

#[test]
fn retries_are_idempotent_and_conflicts_are_refused() {
    let mut f = fed(10, config(10));
    let info = f.check_in_all();
    let plan = info.plan.clone();
    let ctx = plan.context();
    let i = f.site_of(&plan.selected[0]);
    let key = f.sites[i].key.clone();
    let make = |policy: &ClientPolicy| {
        SecAggClient::new(
            key.clone(),
            Arc::new(RawKeyCredentials),
            policy,
            plan.clone(),
            &stand_in_trained_on(&plan, 0),
            &ContributionLedger::default(),
        )
        .unwrap()
    };
    let c = make(&policy());
    let advert = c.advertise().clone();
    f.engine.advertise(key.id(), advert.clone(), f.now).unwrap();
    f.engine.advertise(key.id(), advert.clone(), f.now).unwrap();
    // A second, different advertisement for the same phase (fresh keys).
    let other = make(&policy()).advertise().clone();
    let err = f.engine.advertise(key.id(), other, f.now).unwrap_err();
    assert!(matches!(err, Error::Protocol(fedsec_crypto::Error::PhaseAlreadyAnswered(_))));
    // Out of phase: a ShareKeys before phase 0 closed.
    let early = ShareKeys {
        version: fedsec_crypto::PROTOCOL_VERSION,
        ctx,
        client: key.id(),
        shares: vec![],
        entries: vec![],
        root_signature: fedsec_crypto::secagg::messages::Sig([0; 64]),
    };
    let err = f.engine.share_keys(key.id(), early, f.now).unwrap_err();
    assert!(matches!(err, Error::PhaseNotOpen { phase: Phase::ShareKeys, .. }), "{err:?}");
    // Another sender than the authenticated one.
    let j = f.site_of(&plan.selected[1]);
    let err = f.engine.advertise(f.sites[j].key.id(), advert.clone(), f.now).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Protocol(
                fedsec_crypto::Error::SenderMismatch { .. }
                    | fedsec_crypto::Error::DuplicateClient(_)
            )
        ),
        "{err:?}"
    );
    // A message for another round context.
    let mut stale = advert.clone();
    stale.ctx = RoundContext([9; 32]);
    assert!(matches!(
        f.engine.advertise(key.id(), stale, f.now).unwrap_err(),
        Error::NotCurrentAttempt { .. }
    ));
    // Everyone else but one advertises; the phase closes at its deadline. The identical
    // advertisement still gets the answer, a late one from the client that never advertised
    // is refused.
    let k = f.site_of(&plan.selected[2]);
    for id in &plan.selected[1..] {
        let s = f.site_of(id);
        if s == k {
            continue;
        }
        let c = SecAggClient::new(
            f.sites[s].key.clone(),
            Arc::new(RawKeyCredentials),
            &policy(),
            plan.clone(),
            &stand_in_trained_on(&plan, 0),
            &ContributionLedger::default(),
        )
        .unwrap();
        f.engine.advertise(*id, c.advertise().clone(), f.now).unwrap();
    }
    assert!(f.engine.reply(&key.id(), &ctx, Phase::AdvertiseKeys).is_none(), "still open");
    f.advance();
    f.engine.advertise(key.id(), advert, f.now).unwrap();
    assert!(matches!(
        f.engine.reply(&key.id(), &ctx, Phase::AdvertiseKeys),
        Some(Ok(Reply::Keys(_)))
    ));
    let late_client = SecAggClient::new(
        f.sites[k].key.clone(),
        Arc::new(RawKeyCredentials),
        &policy(),
        plan.clone(),
        &stand_in_trained_on(&plan, 0),
        &ContributionLedger::default(),
    )
    .unwrap();
    let err = f
        .engine
        .advertise(f.sites[k].key.id(), late_client.advertise().clone(), f.now)
        .unwrap_err();
    assert!(matches!(err, Error::PhaseClosed { phase: Phase::AdvertiseKeys }), "{err:?}");
    assert!(matches!(
        f.engine.reply(&f.sites[k].key.id(), &ctx, Phase::AdvertiseKeys),
        Some(Err(Error::PhaseClosed { .. }))
    ));
    assert_eq!(f.engine.status().phase, Some(Phase::ShareKeys));
}

#[test]
fn uploads_are_checked_chunk_by_chunk_and_retries_after_completion_are_recognised() {
    let mut f = fed(10, config(10));
    let info = f.check_in_all();
    let plan = info.plan.clone();
    let ctx = plan.context();
    let mut clients: Vec<(ClientId, SecAggClient)> = plan
        .selected
        .iter()
        .map(|id| {
            let s = &f.sites[f.site_of(id)];
            let c = SecAggClient::new(
                s.key.clone(),
                Arc::new(RawKeyCredentials),
                &policy(),
                plan.clone(),
                &stand_in_trained_on(&plan, 0),
                &ContributionLedger::default(),
            )
            .unwrap();
            (*id, c)
        })
        .collect();
    for (id, c) in &clients {
        f.engine.advertise(*id, c.advertise().clone(), f.now).unwrap();
    }
    for (id, c) in clients.iter_mut() {
        let Some(Ok(Reply::Keys(fwd))) = f.engine.reply(id, &ctx, Phase::AdvertiseKeys) else {
            panic!("phase 0 closed early once everyone advertised")
        };
        let msg = c.handle_keys(&fwd).unwrap();
        f.engine.share_keys(*id, msg, f.now).unwrap();
    }
    for (id, c) in clients.iter_mut() {
        let Some(Ok(Reply::Shares(fwd))) = f.engine.reply(id, &ctx, Phase::ShareKeys) else {
            panic!("phase 1 closed early once everyone shared")
        };
        let msg = c.handle_shares(&fwd).unwrap();
        f.engine.complaints(*id, msg, f.now).unwrap();
    }
    let (id, c) = &mut clients[0];
    let Some(Ok(Reply::Excluded(e))) = f.engine.reply(id, &ctx, Phase::Complaints) else {
        panic!("phase 1½ closed early once everyone answered")
    };
    let x = plan.quant.quantize(&[0.5; DIM], 10, &mut f.rng).unwrap();
    let y = c.handle_exclusions(&e, &x, &mut ContributionLedger::default()).unwrap();
    let chunks = y.chunks(4);
    assert_eq!(chunks.len(), 2, "dim 7 in chunks of 4");
    // Misaligned, wrong-length and ragged chunks.
    let mut bad = chunks[0].clone();
    bad.offset = 1;
    assert!(matches!(f.engine.masked_input(*id, &bad, f.now), Err(Error::BadUpload { .. })));
    let mut bad = chunks[0].clone();
    bad.data.truncate(12);
    assert!(matches!(f.engine.masked_input(*id, &bad, f.now), Err(Error::BadUpload { .. })));
    let mut bad = chunks[1].clone();
    bad.data.push(0);
    assert!(matches!(f.engine.masked_input(*id, &bad, f.now), Err(Error::BadUpload { .. })));
    // The upload itself, then the same chunks again (a retry after a lost connection).
    assert!(matches!(
        f.engine.masked_input(*id, &chunks[0], f.now),
        Ok(UploadProgress::Partial { received: 4, dim: 7 })
    ));
    assert!(matches!(f.engine.masked_input(*id, &chunks[1], f.now), Ok(UploadProgress::Complete)));
    assert!(matches!(f.engine.masked_input(*id, &chunks[0], f.now), Ok(UploadProgress::Duplicate)));
    assert!(matches!(f.engine.masked_input(*id, &chunks[1], f.now), Ok(UploadProgress::Duplicate)));
    // A different second submission is refused.
    let mut other = chunks[1].clone();
    other.data[0] ^= 1;
    assert!(matches!(
        f.engine.masked_input(*id, &other, f.now),
        Err(Error::Protocol(fedsec_crypto::Error::PhaseAlreadyAnswered(_)))
    ));
    // A client not in U.
    let outsider = IdentityKey::generate(&mut f.rng).id();
    assert!(matches!(
        f.engine.masked_input(outsider, &chunks[0], f.now),
        Err(Error::NotSelected(_))
    ));
    assert_eq!(f.engine.status().phase, Some(Phase::MaskedInputCollection));
}

#[test]
fn selection_waits_for_the_minimum_then_caps_at_over_selection() {
    let mut c = config(10);
    c.over_selection = 1.2;
    let mut f = fed(15, c);
    // Seven check-ins: below min_clients = 8, the deadline passes and nobody is selected.
    for s in &f.sites[..7] {
        assert_eq!(f.engine.check_in(s.key.id(), f.now), CheckIn::Pending);
    }
    f.advance();
    assert_eq!(f.engine.status().state, EngineState::Selecting);
    // Three more: ten wait, still below the cap of 12; at the deadline the ten are selected.
    for s in &f.sites[7..10] {
        f.engine.check_in(s.key.id(), f.now);
    }
    assert_eq!(f.engine.status().state, EngineState::Selecting);
    f.advance();
    let info = f.engine.current_round().unwrap().clone();
    assert_eq!(info.plan.selected.len(), 10);
    // A client that arrives now is told to come back later.
    assert!(matches!(f.engine.check_in(f.sites[12].key.id(), f.now), CheckIn::RetryLater { .. }));
    // Selected clients checking in again get the same plan.
    let id = info.plan.selected[3];
    assert_eq!(f.engine.check_in(id, f.now), CheckIn::Selected(Box::new(info.clone())));
    // Enrollment is audited once per client.
    let mut enrolled = 0;
    while let Some(o) = f.engine.poll_output() {
        if matches!(o, Output::Audit(AuditEvent::Enrollment { .. })) {
            enrolled += 1;
        }
    }
    assert_eq!(enrolled, 11);
}

#[test]
fn stale_check_ins_expire() {
    let mut f = fed(10, config(10));
    for s in &f.sites[..9] {
        f.engine.check_in(s.key.id(), f.now);
    }
    // Past the check-in lifetime, nobody called again: nobody is selected.
    f.now += CHECK_IN_TTL + Duration::from_secs(1);
    f.engine.handle_timeout(f.now);
    assert_eq!(f.engine.status().state, EngineState::Selecting);
    assert_eq!(f.engine.status().waiting, 0);
}

#[test]
fn rounds_chain_checkpoints_and_the_task_finishes() {
    let mut f = fed(10, config(10));
    for round in 1..=3u64 {
        let ran = f.run(&Drops::default());
        assert_eq!(ran.info.plan.round_id, RoundId(round));
        assert_eq!(ran.info.checkpoint_version, round - 1);
        let outcome = ran.outcome.unwrap();
        assert_eq!(outcome.new_checkpoint_version, Some(round));
        // Every round trains on the checkpoint the previous one produced.
        assert_eq!(f.engine.checkpoint().0, round);
    }
    assert_eq!(f.engine.status().state, EngineState::Finished);
    assert_eq!(f.engine.check_in(f.sites[0].key.id(), f.now), CheckIn::Finished);
    // `serve --exit-when-finished` waits until every client asked for the final model.
    assert!(!f.engine.everyone_has_the_final_model());
    // A stranger checking in after the end does not enrol, and counts for nothing.
    assert_eq!(f.engine.check_in(ClientId([9; 32]), f.now), CheckIn::Finished);
    assert!(!f.engine.is_enrolled(&ClientId([9; 32])));
    f.engine.final_model_sent(ClientId([9; 32]));
    for s in &f.sites[..9] {
        f.engine.final_model_sent(s.key.id());
    }
    assert!(!f.engine.everyone_has_the_final_model());
    f.engine.final_model_sent(f.sites[9].key.id());
    assert!(f.engine.everyone_has_the_final_model());
}

#[test]
fn the_operator_hears_of_waiting_clients_ended_attempts_and_the_end() {
    let mut config = config(10);
    config.rounds = 1;
    let mut f = fed(10, config);
    let mut waiting = Vec::new();
    for s in &f.sites[..3] {
        f.engine.check_in(s.key.id(), f.now);
        f.engine.check_in(s.key.id(), f.now); // a repeated check-in is no news
    }
    while let Some(o) = f.engine.poll_output() {
        if let Output::Progress(Progress::Waiting { waiting: w, start_at, .. }) = o {
            waiting.push((w, start_at));
        }
    }
    assert_eq!(waiting, [(1, 10), (2, 10), (3, 10)]);

    // One attempt, completed: its end and then the task's.
    let ran = f.run(&Drops::default());
    let ended: Vec<&RoundOutcome> = f
        .progress
        .iter()
        .filter_map(|p| if let Progress::Ended(o) = p { Some(&**o) } else { None })
        .collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0], ran.outcome.as_ref().unwrap());
    assert!(ended[0].completed && ended[0].new_checkpoint_version == Some(1));
    assert_eq!(f.progress.last(), Some(&Progress::Finished { rounds: 1, checkpoint_version: 1 }));
}

/// Phase 1½ by hand: every client complains (about nothing: every dealer is honest) once
/// phase 1 closed; the phase closes once all did.
fn complain_all(f: &mut Fed, ctx: &RoundContext, clients: &mut [(ClientId, SecAggClient)]) {
    for (id, c) in clients.iter_mut() {
        let Some(Ok(Reply::Shares(s))) = f.engine.reply(id, ctx, Phase::ShareKeys) else {
            panic!("phase 1 closed once everyone shared")
        };
        f.engine.complaints(*id, c.handle_shares(&s).unwrap(), f.now).unwrap();
    }
}

/// Runs an attempt of ten by hand up to the end of its unmasking: the engine hands out the
/// sum. Returns the attempt, one of its clients, and each client's unmasking message.
fn run_to_the_sum(f: &mut Fed) -> (RoundContext, ClientId, Vec<(ClientId, UnmaskingResponse)>) {
    let info = f.check_in_all();
    let ctx = info.plan.context();
    let any = info.plan.selected[0];
    // Run everything but the commit, by hand.
    let mut clients: Vec<(ClientId, SecAggClient)> = info
        .plan
        .selected
        .iter()
        .map(|id| {
            let s = &f.sites[f.site_of(id)];
            let c = SecAggClient::new(
                s.key.clone(),
                Arc::new(RawKeyCredentials),
                &policy(),
                info.plan.clone(),
                &stand_in_trained_on(&info.plan, 0),
                &ContributionLedger::default(),
            )
            .unwrap();
            (*id, c)
        })
        .collect();
    for (id, c) in &clients {
        f.engine.advertise(*id, c.advertise().clone(), f.now).unwrap();
    }
    for (id, c) in clients.iter_mut() {
        let Some(Ok(Reply::Keys(k))) = f.engine.reply(id, &ctx, Phase::AdvertiseKeys) else {
            panic!()
        };
        f.engine.share_keys(*id, c.handle_keys(&k).unwrap(), f.now).unwrap();
    }
    complain_all(f, &ctx, &mut clients);
    for (id, c) in clients.iter_mut() {
        let Some(Ok(Reply::Excluded(e))) = f.engine.reply(id, &ctx, Phase::Complaints) else {
            panic!()
        };
        let x = info.plan.quant.quantize(&[0.1; DIM], 5, &mut f.rng).unwrap();
        let y = c.handle_exclusions(&e, &x, &mut ContributionLedger::default()).unwrap();
        for chunk in y.chunks(4) {
            f.engine.masked_input(*id, &chunk, f.now).unwrap();
        }
    }
    for (id, c) in clients.iter_mut() {
        let Some(Ok(Reply::Survivors(r))) = f.engine.reply(id, &ctx, Phase::MaskedInputCollection)
        else {
            panic!()
        };
        f.engine.consistency(*id, c.handle_consistency(&r).unwrap(), f.now).unwrap();
    }
    let mut revealed = Vec::new();
    for (id, c) in clients.iter_mut() {
        let Some(Ok(Reply::Unmask(r))) = f.engine.reply(id, &ctx, Phase::ConsistencyCheck) else {
            panic!()
        };
        let msg = c.handle_unmasking(&r).unwrap();
        f.engine.unmasking(*id, msg.clone(), f.now).unwrap();
        revealed.push((*id, msg));
    }
    (ctx, any, revealed)
}

#[test]
fn committing_holds_the_result_back() {
    let mut f = fed(10, config(10));
    let (ctx, any, revealed) = run_to_the_sum(&mut f);
    // The sum is computed outside the engine: meanwhile the result waits, the plan stays
    // visible, and an identical unmasking message is recognised, a different one refused.
    assert_eq!(f.engine.status().state, EngineState::Aggregating);
    assert!(f.engine.reply(&any, &ctx, Phase::Unmasking).is_none());
    assert!(f.engine.current_round().is_some_and(|r| r.plan.context() == ctx));
    let (id, msg) = revealed[1].clone();
    f.engine.unmasking(id, msg.clone(), f.now).unwrap();
    let mut other = msg;
    other.self_mask_shares.pop();
    assert!(matches!(
        f.engine.unmasking(id, other, f.now),
        Err(Error::Protocol(fedsec_crypto::Error::PhaseAlreadyAnswered(_)))
    ));
    assert!(f.engine.poll_timeout().is_none(), "no deadline while the sum is computed");
    let job = loop {
        match f.engine.poll_output() {
            Some(Output::Aggregate(job)) => break job,
            Some(_) => {}
            None => panic!("the unmasking closed without handing out its sum"),
        }
    };
    f.engine.aggregated(job.run()).unwrap();
    assert_eq!(f.engine.status().state, EngineState::Committing);
    assert!(f.engine.reply(&any, &ctx, Phase::Unmasking).is_none());
    assert_eq!(f.engine.checkpoint().0, 0, "not before it is stored");
    let stored = f.commit();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].parent_version, 0);
    assert_eq!(stored[0].sha256.0, <[u8; 32]>::from(Sha256::digest(stored[0].bytes.as_slice())));
    let Some(Ok(Reply::Result(r))) = f.engine.reply(&any, &ctx, Phase::Unmasking) else {
        panic!("the result is published after the commit")
    };
    assert!(r.completed);
    assert_eq!(r.participants(), 10);
    assert!(f.engine.checkpoint_committed(1, f.now).is_err(), "nothing left to commit");
    // After the attempt is over, an identical Unmask (a client whose connection dropped
    // before the result came) is accepted and gets the result; a different one is refused.
    let (id, msg) = revealed[0].clone();
    f.engine.unmasking(id, msg.clone(), f.now).unwrap();
    assert!(matches!(f.engine.reply(&id, &ctx, Phase::Unmasking), Some(Ok(Reply::Result(_)))));
    let mut other = msg;
    other.self_mask_shares.pop();
    assert!(matches!(
        f.engine.unmasking(id, other, f.now),
        Err(Error::Protocol(fedsec_crypto::Error::PhaseAlreadyAnswered(_)))
    ));
}

#[test]
fn configurations_that_could_wrap_or_have_no_parameters_are_refused() {
    let mut c = config(10);
    c.min_clients = 0;
    assert!(matches!(c.validate(), Err(Error::InvalidConfig(ConfigRule::MinClients { .. }))));
    let mut c = config(10);
    c.over_selection = 0.5;
    c.min_clients = 1;
    assert_eq!(c.validate(), Err(Error::InvalidConfig(ConfigRule::OverSelection(0.5))));
    let mut c = config(10);
    c.clip = f64::NAN;
    assert!(matches!(c.validate(), Err(Error::Protocol(_))), "the quantizer refuses the clip");
    let mut c = config(10);
    c.graph = GraphKind::Harary;
    c.min_clients = 4;
    assert!(matches!(
        c.validate(),
        Err(Error::InvalidConfig(ConfigRule::NoSecureParameters { min_clients: 4, .. }))
    ));
    let c = config(10);
    assert!(matches!(
        Engine::new(c, Model::new(), 0, Arc::new(RawKeyCredentials), [0; 32]),
        Err(Error::InvalidConfig(ConfigRule::EmptyModel))
    ));
}

/// Semi-malicious SecAgg+ at γ = 0.05, δ = 0.4, from 3 to 20 clients: the finder has no
/// parameters for n = 4, 6, 8, 10 and 20.
fn gappy_config() -> TaskConfig {
    let mut c = TaskConfig::new(TaskId([9; 16]), "gaps", 20);
    c.graph = GraphKind::Harary;
    c.adversary = AdversaryClass::SemiMalicious;
    c.corrupt_ppm = 50_000;
    c.dropout_ppm = 400_000;
    c.over_selection = 1.0;
    c.min_clients = 3;
    c.deadlines = PhaseDeadlines::uniform(Duration::from_secs(10));
    c
}

/// Checks in `waiting` clients and lets the selection deadline pass: the size selected.
fn selected_with(config: TaskConfig, waiting: usize) -> usize {
    let mut f = fed(waiting, config);
    for s in &f.sites {
        f.engine.check_in(s.key.id(), f.now);
    }
    if f.engine.status().state == EngineState::Selecting {
        f.advance();
    }
    let info = f.engine.current_round().expect("selection never stalls").clone();
    let n = info.plan.selected.len();
    let params = f.engine.config().params_for(n).unwrap();
    assert_eq!((info.plan.degree, info.plan.threshold), (params.degree, params.threshold));
    n
}

#[test]
fn selection_steps_down_past_sizes_without_parameters() {
    let c = gappy_config();
    c.validate().unwrap();
    for n in [4, 6, 8, 10, 20] {
        assert!(c.params_for(n).is_err(), "n = {n} has no parameters");
        assert_eq!(selected_with(c.clone(), n), n - 1, "{n} waiting");
    }
    for n in [3, 5, 7, 9, 19] {
        assert_eq!(selected_with(c.clone(), n), n, "{n} waiting");
    }
    // More clients than the cap: the cap (20) has none, so 19 of the 25 are selected.
    assert_eq!(selected_with(c, 25), 19);
    // The defaults (δ = 0.3, γ = 0.05, semi-malicious SecAgg+) have none for n = 4 either.
    let mut defaults = TaskConfig::new(TaskId([8; 16]), "defaults", 4);
    defaults.deadlines = PhaseDeadlines::uniform(Duration::from_secs(10));
    defaults.validate().unwrap();
    assert!(defaults.params_for(4).is_err());
    assert_eq!(selected_with(defaults, 4), 3);
}

#[test]
fn a_minimum_without_parameters_is_refused_and_names_the_sizes_that_have_them() {
    for min in [4u32, 6, 8, 10, 20] {
        let mut c = gappy_config();
        c.min_clients = min as usize;
        let Err(Error::InvalidConfig(ConfigRule::NoSecureParameters {
            min_clients,
            nearest: (below, _),
            ..
        })) = c.validate()
        else {
            panic!("min_clients = {min} is refused")
        };
        assert_eq!(min_clients, min as usize);
        assert_eq!(below, Some(min - 1));
        assert!(c.params_for(min as usize - 1).is_ok());
    }
}

/// Runs phases 0 and 1 with every selected client, by hand.
fn through_share_keys(f: &mut Fed) -> (Assignment, Vec<(ClientId, SecAggClient)>) {
    let info = f.check_in_all();
    let plan = info.plan.clone();
    let ctx = plan.context();
    let mut clients: Vec<(ClientId, SecAggClient)> = plan
        .selected
        .iter()
        .map(|id| {
            let s = &f.sites[f.site_of(id)];
            let c = SecAggClient::new(
                s.key.clone(),
                Arc::new(RawKeyCredentials),
                &policy(),
                plan.clone(),
                &stand_in_trained_on(&plan, 0),
                &ContributionLedger::default(),
            )
            .unwrap();
            (*id, c)
        })
        .collect();
    for (id, c) in &clients {
        f.engine.advertise(*id, c.advertise().clone(), f.now).unwrap();
    }
    for (id, c) in clients.iter_mut() {
        let Some(Ok(Reply::Keys(k))) = f.engine.reply(id, &ctx, Phase::AdvertiseKeys) else {
            panic!("phase 0 closed once everyone advertised")
        };
        f.engine.share_keys(*id, c.handle_keys(&k).unwrap(), f.now).unwrap();
    }
    (info, clients)
}

#[test]
fn an_idle_partial_upload_is_evicted_and_the_round_goes_on() {
    let mut c = config(10);
    c.max_uploads_in_flight = 2;
    c.upload_idle = Duration::from_secs(2);
    let mut f = fed(10, c);
    let (info, mut clients) = through_share_keys(&mut f);
    let ctx = info.plan.context();
    let start = f.now;
    let phase_deadline = start + info.phase_deadlines[Phase::MaskedInputCollection.index()];
    let mut chunks = Vec::new();
    complain_all(&mut f, &ctx, &mut clients);
    for (id, c) in clients.iter_mut() {
        let Some(Ok(Reply::Excluded(e))) = f.engine.reply(id, &ctx, Phase::Complaints) else {
            panic!("phase 1½ closed once everyone answered")
        };
        let x = info.plan.quant.quantize(&[0.1; DIM], 5, &mut f.rng).unwrap();
        let y = c.handle_exclusions(&e, &x, &mut ContributionLedger::default()).unwrap();
        chunks.push((*id, y.chunks(4)));
    }
    // Seven clients upload at once; a and c send one chunk of two and hold both places.
    for (id, ys) in &chunks[..7] {
        for y in ys {
            f.engine.masked_input(*id, y, f.now).unwrap();
        }
    }
    let [(a, a_ys), (b, b_ys), (c, c_ys)] = [&chunks[7], &chunks[8], &chunks[9]];
    assert!(matches!(
        f.engine.masked_input(*a, &a_ys[0], f.now),
        Ok(UploadProgress::Partial { .. })
    ));
    assert!(matches!(
        f.engine.masked_input(*c, &c_ys[0], f.now),
        Ok(UploadProgress::Partial { .. })
    ));
    assert!(matches!(
        f.engine.masked_input(*b, &b_ys[0], f.now),
        Err(Error::Protocol(fedsec_crypto::Error::TooManyUploadsInFlight { limit: 2 }))
    ));
    assert_eq!(f.engine.poll_timeout(), Some(start + Duration::from_secs(2)));
    // A resent chunk is no progress: it does not renew the lease.
    f.now = start + Duration::from_millis(1500);
    assert_eq!(f.engine.masked_input(*a, &a_ys[0], f.now).unwrap(), UploadProgress::Duplicate);
    assert_eq!(f.engine.poll_timeout(), Some(start + Duration::from_secs(2)));
    // The leases run out: both are evicted and may not upload again in this attempt.
    f.advance();
    assert_eq!(f.now, start + Duration::from_secs(2));
    assert_eq!(f.engine.status().phase, Some(Phase::MaskedInputCollection), "b is waited for");
    assert_eq!(
        f.engine.masked_input(*a, &a_ys[1], f.now),
        Err(Error::UploadEvicted { idle_ms: 2000 })
    );
    assert_eq!(
        f.engine.masked_input(*c, &c_ys[0], f.now),
        Err(Error::UploadEvicted { idle_ms: 2000 })
    );
    // Their places are free: b uploads, within its own lease (renewed by each new chunk).
    f.engine.masked_input(*b, &b_ys[0], f.now).unwrap();
    assert_eq!(f.engine.poll_timeout(), Some(f.now + Duration::from_secs(2)));
    f.now += Duration::from_millis(1900);
    assert_eq!(f.engine.masked_input(*b, &b_ys[1], f.now).unwrap(), UploadProgress::Complete);
    // Nobody is left to wait for: phase 2 closed now, long before its deadline.
    assert!(f.now < phase_deadline);
    assert_eq!(f.engine.status().phase, Some(Phase::ConsistencyCheck));
    for id in [a, c] {
        assert!(matches!(
            f.engine.reply(id, &ctx, Phase::MaskedInputCollection),
            Some(Err(Error::PhaseClosed { .. }))
        ));
    }
    // The round completes without the two.
    let mut signers = Vec::new();
    for (id, c) in clients.iter_mut() {
        if let Some(Ok(Reply::Survivors(r))) =
            f.engine.reply(id, &ctx, Phase::MaskedInputCollection)
        {
            assert_eq!(r.survivors.indices(10).unwrap().len(), 8);
            f.engine.consistency(*id, c.handle_consistency(&r).unwrap(), f.now).unwrap();
            signers.push(*id);
        }
    }
    for (id, c) in clients.iter_mut().filter(|(id, _)| signers.contains(id)) {
        let Some(Ok(Reply::Unmask(r))) = f.engine.reply(id, &ctx, Phase::ConsistencyCheck) else {
            panic!("phase 3 closed once U3 signed")
        };
        f.engine.unmasking(*id, c.handle_unmasking(&r).unwrap(), f.now).unwrap();
    }
    assert_eq!(f.commit().len(), 1);
    let Some(Ok(Reply::Result(r))) = f.engine.reply(&signers[0], &ctx, Phase::Unmasking) else {
        panic!("the round completed")
    };
    assert!(r.completed);
    assert_eq!(r.participants(), 8);
}

#[test]
fn a_sum_that_fails_aborts_the_attempt_and_the_round_is_retried() {
    let mut f = fed(10, config(10));
    let (ctx, any, _) = run_to_the_sum(&mut f);
    assert_eq!(f.engine.status().state, EngineState::Aggregating);
    assert!(f.engine.aggregation_failed(&RoundContext([0; 32])).is_err(), "not this attempt");
    f.engine.aggregation_failed(&ctx).unwrap();
    assert_eq!(f.engine.status().state, EngineState::Selecting);
    assert_eq!(f.engine.checkpoint().0, 0, "the model is unchanged");
    let Some(Ok(Reply::Result(r))) = f.engine.reply(&any, &ctx, Phase::Unmasking) else {
        panic!("the clients hear how the attempt ended")
    };
    assert!(!r.completed);
    assert_eq!(r.abort_reason, Some(AbortReason::AggregationFailed));
    assert!(f.engine.aggregation_failed(&ctx).is_err(), "only once");
}

#[test]
fn a_cancelled_check_in_is_withdrawn_unless_the_client_checked_in_again() {
    let mut f = fed(10, config(10));
    let id = f.sites[0].key.id();
    let first = f.now;
    f.engine.check_in(id, first);
    f.now += Duration::from_secs(1);
    f.engine.check_in(id, f.now);
    // The first call's cancellation arrives late: the second check-in keeps its place.
    f.engine.withdraw_check_in(&id, first);
    assert_eq!(f.engine.status().waiting, 1);
    let dropped = f.engine.waiting_dropped();
    f.engine.withdraw_check_in(&id, f.now);
    assert_eq!(f.engine.status().waiting, 0);
    assert_eq!(f.engine.waiting_dropped(), dropped + 1, "parked check-ins look again");
}

#[test]
fn a_held_selection_starts_no_attempt_until_released() {
    let mut f = fed(10, config(10));
    f.engine.hold_selection(true, f.now);
    assert!(f.engine.selection_held());
    // Ten check-ins (the cap) and a deadline passing: no attempt while held.
    for s in &f.sites {
        assert_eq!(f.engine.check_in(s.key.id(), f.now), CheckIn::Pending);
    }
    f.advance();
    f.advance();
    assert_eq!(f.engine.status().state, EngineState::Selecting);
    assert_eq!(f.engine.status().waiting, 10);
    // Released: the ten waiting are selected at once.
    f.engine.hold_selection(false, f.now);
    assert_eq!(f.engine.status().state, EngineState::Running);
    assert_eq!(f.engine.current_round().unwrap().plan.selected.len(), 10);
    // Holding again does not touch the attempt that runs.
    f.engine.hold_selection(true, f.now);
    assert_eq!(f.engine.status().state, EngineState::Running);
}

#[test]
fn a_sum_that_leaves_the_weights_unchanged_publishes_no_version() {
    let mut f = fed(10, config(10));
    for s in &mut f.sites {
        s.update = vec![0.0; DIM];
    }
    let before = f.engine.model().clone();
    let ran = f.run(&Drops::default());
    let outcome = ran.outcome.unwrap();
    assert!(!outcome.completed);
    assert_eq!(outcome.abort_reason, Some(AbortReason::WeightsUnchanged));
    assert_eq!(outcome.new_checkpoint_version, None);
    assert_eq!(f.engine.model(), &before);
    assert_eq!(f.engine.checkpoint().0, 0, "no new version for weights the clients trained on");
}

impl Fed {
    /// Plays the runtime's saving: takes each saved phase close the engine hands out, checks
    /// that the phase's replies are held back until then, and says it is durable. Returns the
    /// saves, each through its encoding (as a restarted coordinator reads it).
    fn save_closes(&mut self, any: &ClientId) -> Vec<SavedAttempt> {
        let mut saves = Vec::new();
        let mut rest = VecDeque::new();
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::SaveAttempt(s) => {
                    let ctx = s.ctx();
                    assert!(
                        self.engine.reply(any, &ctx, s.closed()).is_none(),
                        "a reply went out before its phase close was saved"
                    );
                    self.engine.attempt_saved(&ctx, s.closed(), self.now);
                    saves.push(SavedAttempt::from_bytes(&s.to_bytes()).expect("decodes"));
                }
                other => rest.push_back(other),
            }
        }
        self.engine.outputs = rest;
        saves
    }

    /// The coordinator restarts: a new engine on the same checkpoint resumes `saved`.
    fn restart(&mut self, saved: SavedAttempt) {
        let mut engine = Engine::new(
            self.engine.config.clone(),
            initial_model(),
            0,
            Arc::new(RawKeyCredentials),
            [9; 32],
        )
        .unwrap()
        .saving_attempts();
        engine.resume(saved, self.now).expect("the saved attempt resumes");
        self.engine = engine;
    }

    /// Every client's reply to `phase`, encoded (what goes on the wire, byte for byte).
    fn encoded_replies(&self, plan: &RoundPlan, phase: Phase) -> BTreeMap<ClientId, Vec<u8>> {
        let ctx = plan.context();
        plan.selected
            .iter()
            .filter_map(|id| match self.engine.reply(id, &ctx, phase)? {
                Ok(Reply::Keys(r)) => Some((*id, postcard::to_stdvec(&*r).unwrap())),
                Ok(Reply::Shares(r)) => Some((*id, postcard::to_stdvec(&*r).unwrap())),
                Ok(Reply::Survivors(r)) => Some((*id, postcard::to_stdvec(&*r).unwrap())),
                Ok(Reply::Unmask(r)) => Some((*id, postcard::to_stdvec(&*r).unwrap())),
                _ => None,
            })
            .collect()
    }
}

/// The coordinator restarts after each phase close in turn (its engine dropped, a new one
/// resuming the saved state): the same attempt completes with the model of the exact sum,
/// the closed phases' replies are the saved ones byte for byte, each client's identical resend
/// of a closed phase's message is taken and a different one refused, and the phase after the
/// restart takes the clients' messages as before.
#[test]
fn an_attempt_resumes_after_a_restart_at_each_phase_close() {
    for restart_after in [
        Phase::AdvertiseKeys,
        Phase::ShareKeys,
        Phase::MaskedInputCollection,
        Phase::ConsistencyCheck,
        Phase::Unmasking,
    ] {
        let mut f = fed(10, config(10));
        f.engine = std::mem::replace(
            &mut f.engine,
            Engine::new(config(10), initial_model(), 0, Arc::new(RawKeyCredentials), [1; 32])
                .unwrap(),
        )
        .saving_attempts();
        let before = f.engine.model().clone();
        let info = f.check_in_all();
        let plan = info.plan.clone();
        let ctx = plan.context();
        let any = plan.selected[0];
        let mut clients: BTreeMap<ClientId, SecAggClient> = plan
            .selected
            .iter()
            .map(|id| {
                let s = &f.sites[f.site_of(id)];
                let c = SecAggClient::new(
                    s.key.clone(),
                    Arc::new(RawKeyCredentials),
                    &policy(),
                    plan.clone(),
                    &stand_in_trained_on(&plan, 0),
                    &s.ledger,
                )
                .unwrap();
                (*id, c)
            })
            .collect();
        let mut sent: BTreeMap<(ClientId, Phase), Vec<u8>> = BTreeMap::new();
        let mut quantized = Vec::new();
        for phase in Phase::ALL {
            for (id, c) in clients.iter_mut() {
                let id = *id;
                let reply = |p| f.engine.reply(&id, &ctx, p);
                match phase {
                    Phase::AdvertiseKeys => {
                        let m = c.advertise().clone();
                        sent.insert((id, phase), postcard::to_stdvec(&m).unwrap());
                        f.engine.advertise(id, m, f.now).unwrap();
                    }
                    Phase::ShareKeys => {
                        let Some(Ok(Reply::Keys(fwd))) = reply(Phase::AdvertiseKeys) else {
                            panic!("no keys after {restart_after:?}")
                        };
                        let m = c.handle_keys(&fwd).unwrap();
                        sent.insert((id, phase), postcard::to_stdvec(&m).unwrap());
                        f.engine.share_keys(id, m, f.now).unwrap();
                    }
                    Phase::Complaints => {
                        let Some(Ok(Reply::Shares(fwd))) = reply(Phase::ShareKeys) else {
                            panic!("no shares after {restart_after:?}")
                        };
                        let m = c.handle_shares(&fwd).unwrap();
                        sent.insert((id, phase), postcard::to_stdvec(&m).unwrap());
                        f.engine.complaints(id, m, f.now).unwrap();
                    }
                    Phase::MaskedInputCollection => {
                        let Some(Ok(Reply::Excluded(e))) = reply(Phase::Complaints) else {
                            panic!("no E after {restart_after:?}")
                        };
                        let i = f.site_of(&id);
                        let site = &mut f.sites[i];
                        let x =
                            plan.quant.quantize(&site.update, site.examples, &mut f.rng).unwrap();
                        let y = c.handle_exclusions(&e, &x, &mut site.ledger).unwrap();
                        for chunk in y.chunks(info.upload_chunk_words as usize) {
                            f.engine.masked_input(id, &chunk, f.now).unwrap();
                        }
                        quantized.push(x);
                    }
                    Phase::ConsistencyCheck => {
                        let Some(Ok(Reply::Survivors(req))) = reply(Phase::MaskedInputCollection)
                        else {
                            panic!("no U3 after {restart_after:?}")
                        };
                        let m = c.handle_consistency(&req).unwrap();
                        sent.insert((id, phase), postcard::to_stdvec(&m).unwrap());
                        f.engine.consistency(id, m, f.now).unwrap();
                    }
                    Phase::Unmasking => {
                        let Some(Ok(Reply::Unmask(req))) = reply(Phase::ConsistencyCheck) else {
                            panic!("no signatures after {restart_after:?}")
                        };
                        let m = c.handle_unmasking(&req).unwrap();
                        f.engine.unmasking(id, m, f.now).unwrap();
                    }
                }
            }
            if phase == Phase::Unmasking {
                // Saved before the sum is computed: a restart finishes it without the clients.
                let saves = f.save_closes(&any);
                assert_eq!(saves.len(), 1, "the unmasking close is saved");
                assert_eq!(saves[0].closed(), Phase::Unmasking);
                if restart_after == Phase::Unmasking {
                    f.restart(saves.into_iter().next().unwrap());
                }
                break;
            }
            // Everyone answered: the phase closed, and its replies wait for the save.
            let saves = f.save_closes(&any);
            assert_eq!(saves.len(), 1, "one save per phase close");
            assert_eq!(saves[0].closed(), phase);
            if phase == restart_after {
                let replies = f.encoded_replies(&plan, phase);
                assert_eq!(replies.len(), 10);
                f.restart(saves.into_iter().next().unwrap());
                assert_eq!(f.encoded_replies(&plan, phase), replies, "resent byte for byte");
                // An identical resend of a closed phase's message is taken; another is refused.
                if phase != Phase::MaskedInputCollection {
                    let id = plan.selected[3];
                    let msg = &sent[&(id, phase)];
                    let again = match phase {
                        Phase::AdvertiseKeys => {
                            f.engine.advertise(id, postcard::from_bytes(msg).unwrap(), f.now)
                        }
                        Phase::ShareKeys => {
                            f.engine.share_keys(id, postcard::from_bytes(msg).unwrap(), f.now)
                        }
                        _ => f.engine.consistency(id, postcard::from_bytes(msg).unwrap(), f.now),
                    };
                    again.expect("an identical resend is taken");
                    if phase == Phase::AdvertiseKeys {
                        let other = plan.selected[4];
                        let theirs = postcard::from_bytes(&sent[&(other, phase)]).unwrap();
                        assert!(f.engine.advertise(id, theirs, f.now).is_err());
                    }
                }
                assert_eq!(f.engine.status().phase, Some(Phase::ALL[phase.index() + 1]));
            }
        }
        f.commit();
        let outcome = f.engine.result(&ctx).expect("the attempt ended").clone();
        assert!(outcome.completed, "restart after {restart_after:?}: {:?}", outcome.abort_reason);
        assert_eq!(outcome.attempt, plan.attempt, "the same attempt");
        let inputs: Vec<&Vec<u32>> = quantized.iter().collect();
        assert_eq!(
            f.engine.model(),
            &expected_model(&before, &plan.quant, 0.5, &inputs),
            "restart after {restart_after:?}: the model of the exact sum"
        );
    }
}

/// A saved attempt resumes only on the checkpoint and round it was planned for, and one that
/// cannot is recorded as aborted (its contributors stay contributors) and a new attempt runs.
#[test]
fn a_saved_attempt_of_another_checkpoint_or_round_does_not_resume() {
    let mut f = fed(10, config(10));
    f.engine = std::mem::replace(
        &mut f.engine,
        Engine::new(config(10), initial_model(), 0, Arc::new(RawKeyCredentials), [1; 32]).unwrap(),
    )
    .saving_attempts();
    let info = f.check_in_all();
    let plan = info.plan.clone();
    let ctx = plan.context();
    let mut clients: Vec<SecAggClient> = plan
        .selected
        .iter()
        .map(|id| {
            let s = &f.sites[f.site_of(id)];
            SecAggClient::new(
                s.key.clone(),
                Arc::new(RawKeyCredentials),
                &policy(),
                plan.clone(),
                &stand_in_trained_on(&plan, 0),
                &s.ledger,
            )
            .unwrap()
        })
        .collect();
    for c in &clients {
        f.engine.advertise(c.advertise().client, c.advertise().clone(), f.now).unwrap();
    }
    let any = plan.selected[0];
    let saved = f.save_closes(&any).remove(0);
    let _ = &mut clients;
    // Another checkpoint: a model one step on.
    let other = initial_model().with_flat(&[0.0; DIM]).unwrap();
    let mut engine =
        Engine::new(config(10), other, 0, Arc::new(RawKeyCredentials), [9; 32]).unwrap();
    assert!(matches!(engine.resume(saved.clone(), f.now), Err(AbortReason::CannotResume(_))));
    let mut aborted = false;
    let mut ended = false;
    while let Some(o) = engine.poll_output() {
        aborted |= matches!(o, Output::Audit(AuditEvent::RoundAborted { attempt, .. }) if attempt == plan.attempt);
        ended |= matches!(o, Output::AttemptEnded(c) if c == ctx);
    }
    assert!(aborted && ended, "the attempt is recorded as aborted and its state let go");
    assert_eq!(engine.status().state, EngineState::Selecting);
    // Another round of the same checkpoint.
    let mut engine =
        Engine::new(config(10), initial_model(), 0, Arc::new(RawKeyCredentials), [9; 32])
            .unwrap()
            .with_first_round(5, 0);
    assert!(engine.resume(saved, f.now).is_err());
}

/// Clients sent shares count as contributors on the checkpoint (each may have uploaded, its
/// ledger records the upload first), so an attempt that aborts in phase 2 excludes them all
/// from the retry. When too few eligible clients are left, the task says so — in its status,
/// once in the audit log, and to the contributors that check in — instead of waiting
/// silently; new clients end the stall.
#[test]
fn clients_sent_shares_are_not_selected_again_and_too_few_eligible_is_said_plainly() {
    let mut f = fed(14, config(10));
    let info = f.check_in_all();
    // Four of ten never upload: U3 = 6 < q = 7, the attempt aborts when phase 2 closes.
    let gone: Vec<usize> = info.plan.selected[..4].iter().map(|id| f.site_of(id)).collect();
    let drops =
        Drops(gone.iter().map(|&i| (i, Phase::MaskedInputCollection)).collect(), BTreeMap::new());
    let ran = f.run(&drops);
    assert!(!ran.outcome.unwrap().completed);
    let (checkpoint, contributors) = f.engine.contributors();
    assert_eq!(checkpoint, f.engine.checkpoint().1);
    let mut selected = info.plan.selected.clone();
    selected.sort();
    assert_eq!(contributors, selected, "all of U2, the four that never uploaded included");
    f.commit();
    // The ten and the four others check in; the four are below min_clients = 8.
    for s in &f.sites {
        f.engine.check_in(s.key.id(), f.now);
    }
    let stalled_entries = |f: &mut Fed| {
        let mut n = 0;
        while let Some(o) = f.engine.poll_output() {
            n += usize::from(matches!(o, Output::Audit(AuditEvent::TaskStalled { .. })));
        }
        n
    };
    let contributor = info.plan.selected[5];
    match f.engine.check_in(contributor, f.now) {
        CheckIn::RetryLater { reason, .. } => {
            assert!(reason.contains("no round can run on checkpoint 0"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let why = f.engine.status().stalled.expect("the status says why");
    assert!(why.contains("only 4 other clients") && why.contains("min_clients = 8"), "{why}");
    assert_eq!(stalled_entries(&mut f), 1, "audited once");
    f.engine.check_in(contributor, f.now);
    assert_eq!(stalled_entries(&mut f), 0, "and only once");
    // Four new clients: eight eligible, the stall ends (looked at once a second) and a round
    // starts.
    for i in 0..4u8 {
        f.engine.check_in(ClientId([200 + i; 32]), f.now);
    }
    f.now += Duration::from_secs(1);
    f.engine.check_in(ClientId([200; 32]), f.now);
    assert!(f.engine.status().stalled.is_none());
    f.advance();
    assert_eq!(f.engine.status().state, EngineState::Running);
    let plan = &f.engine.current_round().unwrap().plan;
    assert!(plan.selected.iter().all(|c| !contributors.contains(c)));
}

/// A client whose ledger says it uploaded on the current checkpoint (its check-in's hint) is
/// not selected on it; a hint about another checkpoint changes nothing.
#[test]
fn a_contributed_hint_on_the_current_checkpoint_keeps_a_client_out_of_selection() {
    let mut f = fed(10, config(10));
    let (_, current) = f.engine.checkpoint();
    let a = f.sites[0].key.id();
    let b = f.sites[1].key.id();
    f.engine.contributed_hint(a, &current);
    f.engine.contributed_hint(b, &CheckpointHash([9; 32]));
    assert!(matches!(f.engine.check_in(a, f.now), CheckIn::RetryLater { .. }));
    assert!(matches!(f.engine.check_in(b, f.now), CheckIn::Pending));
    assert_eq!(f.engine.contributors().1, vec![a]);
}

/// Phase 1 checked off the engine, as the service checks it: what needs no check is answered
/// by the engine in the same call (out of phase, a resend, a dealer accepted or refused); one
/// check per client at a time; a dealer whose check failed is refused for the attempt; the
/// phase does not close early while a verdict is awaited; a verdict after the phase closed
/// comes too late.
#[test]
fn share_keys_checked_off_the_engine_are_taken_as_the_engine_takes_them() {
    use super::ShareKeysRoute;
    let mut f = fed(10, config(10));
    let info = f.check_in_all();
    let plan = info.plan.clone();
    let ctx = plan.context();
    let mut clients: Vec<(ClientId, SecAggClient)> = plan
        .selected
        .iter()
        .map(|id| {
            let s = &f.sites[f.site_of(id)];
            let c = SecAggClient::new(
                s.key.clone(),
                Arc::new(RawKeyCredentials),
                &policy(),
                plan.clone(),
                &stand_in_trained_on(&plan, 0),
                &ContributionLedger::default(),
            )
            .unwrap();
            (*id, c)
        })
        .collect();
    let route = |f: &mut Fed, id: ClientId, m: &ShareKeys| {
        let now = f.now;
        f.engine.share_keys_route(id, m.clone(), now)
    };
    let check = |r: ShareKeysRoute| match r {
        ShareKeysRoute::Check(c, m) => (c, m),
        other => panic!("a checker, not {other:?}"),
    };
    let early = ShareKeys {
        version: fedsec_crypto::PROTOCOL_VERSION,
        ctx,
        client: clients[0].0,
        shares: vec![],
        entries: vec![],
        root_signature: fedsec_crypto::secagg::messages::Sig([0; 64]),
    };
    // Out of phase: answered at once.
    match route(&mut f, clients[0].0, &early) {
        ShareKeysRoute::Answered(Err(Error::PhaseNotOpen { .. })) => {}
        other => panic!("answered out of phase, not {other:?}"),
    }
    for (id, c) in &clients {
        f.engine.advertise(*id, c.advertise().clone(), f.now).unwrap();
    }
    let messages: Vec<(ClientId, ShareKeys)> = clients
        .iter_mut()
        .map(|(id, c)| {
            let Some(Ok(Reply::Keys(k))) = f.engine.reply(id, &ctx, Phase::AdvertiseKeys) else {
                panic!("phase 0 closed once everyone advertised")
            };
            (*id, c.handle_keys(&k).unwrap())
        })
        .collect();
    // The first dealer's root signature broken.
    let (bad, honest) = &messages[0];
    let mut forged = honest.clone();
    forged.root_signature.0[0] ^= 1;
    let (checker, m) = check(route(&mut f, *bad, &forged));
    // While it is being checked: the same message waits, another is refused for now.
    let ShareKeysRoute::Pending(_, waiting) = route(&mut f, *bad, &forged) else {
        panic!("the same message waits for its verdict")
    };
    assert!(matches!(waiting.has_changed(), Ok(false)));
    assert!(matches!(
        route(&mut f, *bad, honest),
        ShareKeysRoute::Answered(Err(Error::CheckInFlight))
    ));
    let verdict = Some(checker.check(*bad, m));
    let err = f.engine.checked_share_keys(*bad, &ctx, verdict, f.now).unwrap_err();
    assert_eq!(err, Error::Protocol(fedsec_crypto::Error::BadSignature(*bad)));
    assert!(waiting.has_changed().is_err(), "the waiting resend is woken by the verdict");
    // Refused for the attempt: its honest message is answered without a check.
    match route(&mut f, *bad, honest) {
        ShareKeysRoute::Answered(Err(Error::Protocol(fedsec_crypto::Error::NotEligible {
            ..
        }))) => {}
        other => panic!("refused at once, not {other:?}"),
    }
    // A check that failed to run frees the client to send again.
    let (second, m2) = &messages[1];
    check(route(&mut f, *second, m2));
    let err = f.engine.checked_share_keys(*second, &ctx, None, f.now).unwrap_err();
    assert_eq!(err, Error::CheckNotRun);
    // The others, each checked off the engine; the last one sends a forged message and its
    // client is gone while its check runs: the phase waits for that verdict all the same (the
    // refused first dealer, still connected, holds nothing up), and closes when it comes, a
    // refusal.
    let (last, m_last) = messages.last().unwrap();
    let mut forged_last = m_last.clone();
    forged_last.root_signature.0[5] ^= 1;
    let (last_checker, last_msg) = check(route(&mut f, *last, &forged_last));
    f.engine.client_gone(last, f.now);
    for (id, m) in &messages[1..messages.len() - 1] {
        let (checker, m) = check(route(&mut f, *id, m));
        let verdict = Some(checker.check(*id, m));
        f.engine.checked_share_keys(*id, &ctx, verdict, f.now).unwrap();
    }
    assert!(f.engine.share_keys_check(&ctx).is_some(), "phase 1 waits for the verdict");
    let verdict = Some(last_checker.check(*last, last_msg));
    let err = f.engine.checked_share_keys(*last, &ctx, verdict, f.now).unwrap_err();
    assert_eq!(err, Error::Protocol(fedsec_crypto::Error::BadSignature(*last)));
    assert!(f.engine.share_keys_check(&ctx).is_none(), "phase 1 closed with the last verdict");
    // A resend after the close is answered (identical), and a verdict that comes too late is
    // refused.
    assert!(matches!(route(&mut f, *second, m2), ShareKeysRoute::Answered(Ok(()))));
    let late = Some(checker.check(*bad, honest.clone()));
    let err = f.engine.checked_share_keys(*bad, &ctx, late, f.now).unwrap_err();
    assert!(matches!(err, Error::PhaseClosed { .. }), "{err:?}");
    let Some(Ok(Reply::Shares(fwd))) = f.engine.reply(second, &ctx, Phase::ShareKeys) else {
        panic!("phase 1 closed")
    };
    assert!(fwd.shares.iter().all(|s| s.from != *bad && s.from != *last), "nothing refused");
    assert_eq!(fwd.shares.len(), plan.n() - 3);
}
