//! The round engine: selection, the five SecAgg phases with their deadlines, aggregation,
//! weighted FedAvg and the new checkpoint — for one training task, sans-IO.
//!
//! Like the protocol core it drives ([`SecAggServer`]), the engine never reads a clock, opens a
//! socket or touches storage. Every call takes the current time `now`; the caller asks
//! [`Engine::poll_timeout`] when to call [`Engine::handle_timeout`], and drains
//! [`Engine::poll_output`] for what to do outside (store a checkpoint, write the audit log).
//! Tests drive it with a virtual clock.
//!
//! # The life of a round
//!
//! 1. **Selection.** Clients [`check_in`](Engine::check_in). Once ⌈target × over-selection⌉
//!    eligible clients wait, or the selection deadline passes with at least `min_clients`, the
//!    engine samples the selected set U and fixes the round plan (k and t from the parameter
//!    finder, a fresh attempt nonce and graph seed). |U| is the largest size up to the clients
//!    waiting (and the cap) that the finder has parameters for
//!    ([`TaskConfig::plannable_size`]): the finder has none for a few sizes, which selection
//!    steps past, and validation makes sure `min_clients` has some, so selection never
//!    stalls. A client that already uploaded a masked input on the current checkpoint is never
//!    selected again before the next checkpoint (the "once per checkpoint" rule of the
//!    protocol).
//! 2. **The five phases.** Each phase accepts one message per client; an identical repeat is
//!    accepted again (a retry after a lost connection), a different one is refused. A phase
//!    closes when every client it runs over has answered, or at its deadline; then each client's
//!    reply for the next phase is ready through [`Engine::reply`] (the long-poll answer).
//! 3. **Aggregation.** The unmasked sum is decoded, divided by the summed weights (weighted
//!    FedAvg), scaled by the server learning rate and added to the model. The engine emits
//!    [`Output::Checkpoint`]; once the caller has stored it durably it calls
//!    [`Engine::checkpoint_committed`], the round's result becomes visible and the next round
//!    opens.
//! 4. **Abort.** If a phase ends below the thresholds, the attempt aborts: nothing is revealed,
//!    the model is unchanged, and the round is retried as a new attempt with clients that have
//!    not contributed on this checkpoint.

mod aggregation;
mod attempt;
mod config;
mod phases;
mod republish;
mod saved;
mod types;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedsec_crypto::params::GraphParams;
use fedsec_crypto::quant::QuantParams;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::server::SecAggServer;
use fedsec_crypto::sign::CredentialVerifier;
use fedsec_crypto::{
    AttemptNonce, CheckpointHash, ClientId, PROTOCOL_VERSION, RoundContext, RoundId, RoundPlan,
};
use fedsec_wire::model::Model;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use sha2::{Digest, Sha256};

pub use aggregation::{Aggregated, Aggregation};
pub use config::{DEFAULT_UPLOAD_IDLE, PhaseDeadlines, TaskConfig};
pub use republish::{MAX_VERSION, REPUBLISHED_SUMMARY, Republication};
pub use saved::SavedAttempt;
pub use types::{
    Assignment, AuditEvent, CheckIn, EngineState, NewCheckpoint, Output, Progress, Reply,
    RoundOutcome, ShareKeysRoute, Status,
};

use aggregation::Finishing;
use attempt::Attempt;

use crate::error::{AbortReason, ConfigRule, Error, Result};

/// How long a waiting check-in stays valid without the client calling again.
pub const CHECK_IN_TTL: Duration = Duration::from_secs(60);

/// How many finished attempts the engine remembers, for late callers and status.
const RESULTS_KEPT: usize = 256;

enum State {
    Selecting {
        deadline: Option<Instant>,
    },
    Running(Box<Attempt>),
    /// The unmasking closed; the sum is computed outside ([`Output::Aggregate`]).
    Aggregating(Box<Finishing>),
    Committing {
        attempt: Box<Attempt>,
        checkpoint: NewCheckpoint,
        model: Model,
    },
    Finished,
}

/// The round engine of one training task. See the [module docs](self).
pub struct Engine {
    config: TaskConfig,
    quant: QuantParams,
    verifier: Arc<dyn CredentialVerifier>,
    pool: Option<Arc<rayon::ThreadPool>>,
    rng: ChaCha20Rng,
    /// Shared with the aggregation of a finishing attempt.
    model: Arc<Model>,
    checkpoint_version: u64,
    checkpoint_hash: CheckpointHash,
    round_id: u64,
    completed_rounds: u64,
    contributed: BTreeSet<ClientId>,
    enrolled: BTreeSet<ClientId>,
    /// Clients that asked for the final checkpoint after the task finished.
    final_sent: BTreeSet<ClientId>,
    waiting: BTreeMap<ClientId, Instant>,
    not_selected: BTreeSet<ClientId>,
    state: State,
    results: BTreeMap<RoundContext, RoundOutcome>,
    unmasked: BTreeMap<RoundContext, BTreeMap<ClientId, [u8; 32]>>,
    result_order: VecDeque<RoundContext>,
    /// How many outcomes were ever remembered (readers republish when it changes).
    results_changes: u64,
    /// How many times a waiting check-in was dropped other than by selection (withdrawn,
    /// expired, its client gone): long-polls on check-ins look again when it changes.
    waiting_dropped: u64,
    /// No attempt starts while set (the audit log cannot be written).
    held: bool,
    /// The version an operator's re-publication is storing: no attempt starts until it is
    /// installed ([`republished`](Self::republished)) or given up.
    publishing: Option<u64>,
    /// The model being re-published and its checkpoint's hash, while `publishing`.
    republished_model: Option<(Model, CheckpointHash)>,
    /// The highest checkpoint version this coordinator has signed for the task, as its audit
    /// log records it: what an honest client can have seen, at most.
    signed_high_water: u64,
    /// The newest checkpoint version each client's last check-in said it has seen. One above
    /// the current version would refuse the current checkpoint as a rollback: it is not
    /// selected on it ([`is_ahead`](Self::is_ahead)).
    reported: BTreeMap<ClientId, u64>,
    /// Whether each phase close is saved before its replies go out ([`Output::SaveAttempt`]).
    save_attempts: bool,
    /// Why no round can run on the current checkpoint, once that is so (cleared by a new
    /// checkpoint or a new eligible client).
    stalled: Option<String>,
    /// Since when clients check in on the current checkpoint: a stall is declared only a
    /// selection deadline after it, once the clients that are there had time to check in.
    checking_in_since: Option<Instant>,
    /// When the stall was last looked at: at most once a second (it counts every client).
    stall_checked: Option<Instant>,
    outputs: VecDeque<Output>,
}

impl core::fmt::Debug for Engine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Engine")
            .field("task", &self.config.name)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine for `config`, starting from checkpoint `version` holding `model`.
    ///
    /// `seed` drives the public random choices (sampling, attempt nonces, graph seeds): take
    /// it from the OS RNG in production; simulations fix it to replay a run. No secret ever
    /// comes from it (the protocol's secrets are made by the clients, from the OS RNG).
    pub fn new(
        config: TaskConfig,
        model: Model,
        version: u64,
        verifier: Arc<dyn CredentialVerifier>,
        seed: [u8; 32],
    ) -> Result<Self> {
        config.validate()?;
        if model.is_empty() {
            return Err(Error::InvalidConfig(ConfigRule::EmptyModel));
        }
        if model.len() >= u32::MAX as usize {
            return Err(Error::InvalidConfig(ConfigRule::ModelTooLarge(model.len())));
        }
        let quant = config.quant()?;
        let bytes = model.to_safetensors()?;
        let checkpoint_hash = CheckpointHash(Sha256::digest(&bytes).into());
        Ok(Engine {
            config,
            quant,
            verifier,
            pool: None,
            rng: ChaCha20Rng::from_seed(seed),
            model: Arc::new(model),
            checkpoint_version: version,
            checkpoint_hash,
            round_id: 1,
            completed_rounds: 0,
            contributed: BTreeSet::new(),
            enrolled: BTreeSet::new(),
            final_sent: BTreeSet::new(),
            waiting: BTreeMap::new(),
            not_selected: BTreeSet::new(),
            state: State::Selecting { deadline: None },
            results: BTreeMap::new(),
            unmasked: BTreeMap::new(),
            result_order: VecDeque::new(),
            results_changes: 0,
            waiting_dropped: 0,
            held: false,
            publishing: None,
            republished_model: None,
            signed_high_water: version,
            reported: BTreeMap::new(),
            save_attempts: false,
            stalled: None,
            checking_in_since: None,
            stall_checked: None,
            outputs: VecDeque::new(),
        })
    }

    /// Runs the aggregation kernel on `pool`.
    pub fn with_thread_pool(mut self, pool: Arc<rayon::ThreadPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Saves each phase close before its replies go out: the engine hands out
    /// [`Output::SaveAttempt`] and holds the phase's replies back until
    /// [`attempt_saved`](Self::attempt_saved), so that a restarted coordinator can
    /// [`resume`](Self::resume) the attempt and never tell a client something it has not
    /// saved. Without it (simulations, tests) replies go out as each phase closes.
    pub fn saving_attempts(mut self) -> Self {
        self.save_attempts = true;
        self
    }

    /// The last phase of the running attempt whose replies may go out.
    pub fn released_phase(&self) -> Option<Phase> {
        match &self.state {
            State::Running(a) => a.released,
            State::Committing { attempt, .. } => attempt.released,
            _ => None,
        }
    }

    /// Starts numbering rounds at `round_id` (a coordinator restarted on a stored checkpoint
    /// continues after the last round it ran; round ids are never reused).
    pub fn with_first_round(mut self, round_id: u64, completed_rounds: u64) -> Self {
        self.round_id = round_id;
        self.completed_rounds = completed_rounds;
        if completed_rounds >= self.config.rounds {
            self.state = State::Finished;
        }
        self
    }

    /// Replaces the credential verifier used by attempts that start from now on (for
    /// instance, one built with the current time to check certificate validity).
    pub fn set_verifier(&mut self, verifier: Arc<dyn CredentialVerifier>) {
        self.verifier = verifier;
    }

    /// The task's configuration.
    pub fn config(&self) -> &TaskConfig {
        &self.config
    }

    /// The quantization every round uses.
    pub fn quant(&self) -> &QuantParams {
        &self.quant
    }

    /// The current global model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The current checkpoint's version and hash.
    pub fn checkpoint(&self) -> (u64, CheckpointHash) {
        (self.checkpoint_version, self.checkpoint_hash)
    }

    /// A snapshot for status calls.
    pub fn status(&self) -> Status {
        let (state, phase) = match &self.state {
            State::Selecting { .. } => (EngineState::Selecting, None),
            State::Running(a) => (EngineState::Running, Some(a.phase)),
            State::Aggregating(_) => (EngineState::Aggregating, None),
            State::Committing { .. } => (EngineState::Committing, None),
            State::Finished => (EngineState::Finished, None),
        };
        Status {
            state,
            round_id: RoundId(self.round_id),
            phase,
            waiting: self.waiting.len(),
            checkpoint_version: self.checkpoint_version,
            completed_rounds: self.completed_rounds,
            stalled: self.stalled.clone(),
        }
    }

    /// Why no round can run on the current checkpoint, if none can: every client that ever
    /// checked in but fewer than `min_clients` has contributed on it (uploaded, or was sent
    /// shares and so may have), and the protocol lets a client contribute once per checkpoint.
    /// Checked as contributors check in; cleared by a new checkpoint or enough new clients.
    pub fn stalled(&self) -> Option<&str> {
        self.stalled.as_deref()
    }

    /// The clients that contributed on the current checkpoint (never selected again on it):
    /// with the checkpoint's hash, for the caller to persist.
    pub fn contributors(&self) -> (CheckpointHash, Vec<ClientId>) {
        (self.checkpoint_hash, self.contributed.iter().copied().collect())
    }

    /// Clients a stored record says contributed on `checkpoint`: if it is the current one,
    /// they are not selected again on it. (A record of another checkpoint is stale: ignored.)
    pub fn add_contributors(&mut self, checkpoint: &CheckpointHash, clients: &[ClientId]) {
        if *checkpoint == self.checkpoint_hash {
            self.contributed.extend(clients.iter().copied());
        }
    }

    /// A client says (its check-in's hint) that its ledger records an upload on `checkpoint`:
    /// if that is the current checkpoint, it is not selected again on it — it would refuse.
    /// The client's ledger stays the authority; this only spares a useless selection.
    pub fn contributed_hint(&mut self, client: ClientId, checkpoint: &CheckpointHash) {
        if *checkpoint == self.checkpoint_hash && self.contributed.insert(client) {
            self.waiting.remove(&client);
        }
    }

    /// Looks again at whether rounds can run on the current checkpoint (see
    /// [`stalled`](Self::stalled)); says so once when that changes.
    fn check_stall(&mut self, now: Instant) {
        let since = *self.checking_in_since.get_or_insert(now);
        if self.stall_checked.is_some_and(|t| now < t + Duration::from_secs(1)) {
            return;
        }
        self.stall_checked = Some(now);
        if !matches!(self.state, State::Selecting { .. })
            || (self.contributed.is_empty() && !self.any_ahead())
            || self.publishing.is_some()
            || now < since + self.config.deadlines.selection
        {
            return;
        }
        let eligible = self
            .enrolled
            .iter()
            .filter(|c| !self.contributed.contains(c) && !self.is_ahead(c))
            .count();
        let min = self.config.min_clients;
        if eligible >= min {
            if self.stalled.take().is_some() {
                tracing::info!(
                    eligible,
                    min_clients = min,
                    "enough eligible clients again: rounds go on"
                );
            }
            return;
        }
        if self.stalled.is_some() {
            return;
        }
        let contributed = self.contributed.len();
        let ahead = self.enrolled.iter().filter(|c| self.is_ahead(c)).count();
        let (highest, _) = self.trusted_report();
        let why = format!(
            "no round can run on checkpoint {version}: {contributed} clients contributed on it \
             (each may contribute once per checkpoint), {ahead} have seen a newer checkpoint \
             (up to version {highest}; they refuse this one as a rollback), and only {eligible} \
             other clients have checked in, fewer than min_clients = {min}; rounds go on when \
             more clients check in, or when an operator re-publishes the model above version \
             {highest} (`fedsec-coordinator republish`, with new weights if the clients trained \
             on these)",
            version = self.checkpoint_version,
            highest = highest.max(self.checkpoint_version),
        );
        tracing::warn!("{why}");
        self.outputs.push_back(Output::Audit(AuditEvent::TaskStalled {
            checkpoint_version: self.checkpoint_version,
            eligible,
            contributed,
            ahead,
            highest_reported: highest,
            min_clients: min,
        }));
        self.stalled = Some(why);
    }

    /// The outcome of a finished attempt, if the engine still remembers it.
    pub fn result(&self, ctx: &RoundContext) -> Option<&RoundOutcome> {
        self.results.get(ctx)
    }

    /// The finished attempts the engine remembers, oldest first.
    pub fn recent_results(&self) -> impl Iterator<Item = &RoundOutcome> {
        self.result_order.iter().filter_map(|c| self.results.get(c))
    }

    /// Grows each time a waiting check-in is dropped other than by selection.
    pub fn waiting_dropped(&self) -> u64 {
        self.waiting_dropped
    }

    /// Grows by one each time an attempt's outcome is remembered.
    pub fn results_changes(&self) -> u64 {
        self.results_changes
    }

    /// The running attempt's plan, if any.
    pub fn current_round(&self) -> Option<&Assignment> {
        match &self.state {
            State::Running(a) => Some(&a.info),
            State::Aggregating(f) => Some(&f.info),
            State::Committing { attempt, .. } => Some(&attempt.info),
            _ => None,
        }
    }

    // ------------------------------------------------------------------ selection

    /// A client asks to take part. Returns at once: [`CheckIn::Pending`] means "wait for
    /// selection" — poll [`poll_check_in`](Self::poll_check_in) after the engine changes.
    pub fn check_in(&mut self, client: ClientId, now: Instant) -> CheckIn {
        // Enrolment closes with the task: the final checkpoint goes to those that took part.
        if !matches!(self.state, State::Finished) && self.enrolled.insert(client) {
            self.outputs.push_back(Output::Audit(AuditEvent::Enrollment { client }));
        }
        let ahead = self.is_ahead(&client);
        if let State::Selecting { deadline } = &mut self.state
            && !self.contributed.contains(&client)
            && !ahead
        {
            self.not_selected.remove(&client);
            let new = self.waiting.insert(client, now + CHECK_IN_TTL).is_none();
            if deadline.is_none() {
                *deadline = Some(now + self.config.deadlines.selection);
            }
            if new {
                self.outputs.push_back(Output::Progress(Progress::Waiting {
                    round_id: RoundId(self.round_id),
                    waiting: self.waiting.len(),
                    start_at: self.config.max_selected(),
                    min_clients: self.config.min_clients,
                    clients_per_round: self.config.clients_per_round,
                    over_selection: self.config.over_selection,
                }));
            }
            if self.waiting.len() >= self.config.max_selected() {
                self.select(now);
            }
        }
        self.check_stall(now);
        self.poll_check_in(&client)
    }

    /// Whether `client` ever checked in to this task.
    pub fn is_enrolled(&self, client: &ClientId) -> bool {
        self.enrolled.contains(client)
    }

    /// A client that took part asked for the finished task's final checkpoint.
    pub fn final_model_sent(&mut self, client: ClientId) {
        if matches!(self.state, State::Finished) && self.enrolled.contains(&client) {
            self.final_sent.insert(client);
        }
    }

    /// Whether the task has finished and every client that ever checked in has asked for the
    /// final checkpoint.
    pub fn everyone_has_the_final_model(&self) -> bool {
        matches!(self.state, State::Finished) && self.enrolled.is_subset(&self.final_sent)
    }

    /// Where a client's check-in stands, without changing anything.
    pub fn poll_check_in(&self, client: &ClientId) -> CheckIn {
        let running = |reason: &str, a: &Attempt| CheckIn::RetryLater {
            after: a.deadline.saturating_duration_since(a.phase_opened).max(Duration::from_secs(1)),
            reason: reason.into(),
        };
        match &self.state {
            State::Finished => CheckIn::Finished,
            State::Running(a) if a.info.plan.selected.binary_search(client).is_ok() => {
                CheckIn::Selected(Box::new(a.info.clone()))
            }
            State::Aggregating(f) if f.info.plan.selected.binary_search(client).is_ok() => {
                CheckIn::Selected(Box::new(f.info.clone()))
            }
            State::Committing { attempt, .. }
                if attempt.info.plan.selected.binary_search(client).is_ok() =>
            {
                CheckIn::Selected(Box::new(attempt.info.clone()))
            }
            _ if self.contributed.contains(client) => CheckIn::RetryLater {
                after: Duration::from_secs(5),
                reason: match &self.stalled {
                    Some(why) => format!("already contributed on the current checkpoint; {why}"),
                    None => {
                        "already contributed on the current checkpoint; wait for the next".into()
                    }
                },
            },
            _ if self.is_ahead(client) => CheckIn::RetryLater {
                after: Duration::from_secs(5),
                reason: format!(
                    "this client has seen a newer checkpoint than the current one (version {}) \
                     and would refuse it as a rollback; {}",
                    self.checkpoint_version,
                    self.stalled.as_deref().unwrap_or("rounds go on without it until a newer one")
                ),
            },
            State::Running(a) => running("a round is running without this client", a),
            State::Aggregating(_) => CheckIn::RetryLater {
                after: Duration::from_secs(1),
                reason: "a round is finishing".into(),
            },
            State::Committing { attempt, .. } => running("a round is finishing", attempt),
            State::Selecting { .. } if self.waiting.contains_key(client) => CheckIn::Pending,
            State::Selecting { .. } if self.not_selected.contains(client) => CheckIn::RetryLater {
                after: Duration::from_secs(1),
                reason: "not selected for this round".into(),
            },
            State::Selecting { .. } => CheckIn::RetryLater {
                after: Duration::ZERO,
                reason: "check in again to wait for selection".into(),
            },
        }
    }

    /// Withdraws a waiting check-in (the client was deny-listed).
    pub fn withdraw(&mut self, client: &ClientId) {
        self.reported.remove(client);
        if self.waiting.remove(client).is_some() {
            self.waiting_dropped += 1;
        }
    }

    /// Withdraws the check-in `client` made at `at` (its call was cancelled) — unless it
    /// checked in again since, which keeps its place.
    pub fn withdraw_check_in(&mut self, client: &ClientId, at: Instant) {
        if self.waiting.get(client) == Some(&(at + CHECK_IN_TTL)) {
            self.withdraw(client);
        }
    }

    /// A client's connection closed and it did not come back (its process died, its network
    /// went away): the running attempt stops waiting for it, so a phase whose other clients
    /// have all answered closes now instead of at its deadline. A waiting check-in is
    /// withdrawn. If the client does call again while its phase is open, its message is taken
    /// as usual.
    pub fn client_gone(&mut self, client: &ClientId, now: Instant) {
        self.withdraw(client);
        let State::Running(a) = &mut self.state else { return };
        if a.info.plan.index_of(client).is_none() || !a.gone.insert(*client) {
            return;
        }
        tracing::debug!(round = a.info.plan.round_id.0, client = %client.to_hex(), "a selected client's connection closed");
        if a.all_answered() {
            self.close_phase(now);
        }
    }

    /// A client reported gone connected again: the running attempt waits for it again (if its
    /// phase is still open; a phase that closed without it stays closed).
    pub fn client_back(&mut self, client: &ClientId) {
        if let State::Running(a) = &mut self.state {
            a.gone.remove(client);
        }
    }

    /// Holds selection (no attempt starts; check-ins keep waiting) while `held`, or lets it
    /// go on: then an attempt starts at once if enough clients wait. The attempt running now,
    /// if any, goes on either way.
    pub fn hold_selection(&mut self, held: bool, now: Instant) {
        self.held = held;
        if !held
            && matches!(self.state, State::Selecting { .. })
            && self.waiting.len() >= self.config.max_selected()
        {
            self.select(now);
        }
    }

    /// Whether selection is held ([`hold_selection`](Self::hold_selection)).
    pub fn selection_held(&self) -> bool {
        self.held
    }

    /// Samples U and starts an attempt, if enough eligible clients wait.
    fn select(&mut self, now: Instant) {
        let State::Selecting { .. } = self.state else { return };
        if self.held || self.publishing.is_some() {
            self.state = State::Selecting { deadline: Some(now + self.config.deadlines.selection) };
            return;
        }
        let before = self.waiting.len();
        self.waiting.retain(|_, expiry| *expiry > now);
        if self.waiting.len() < before {
            self.waiting_dropped += 1;
        }
        let mut candidates: Vec<ClientId> = self.waiting.keys().copied().collect();
        if candidates.len() < self.config.min_clients {
            self.state = State::Selecting { deadline: Some(now + self.config.deadlines.selection) };
            return;
        }
        let most = candidates.len().min(self.config.max_selected());
        let Some((take, params)) = self.config.plannable_size(candidates.len()) else {
            // Cannot happen for a validated config (min_clients has parameters); keep waiting
            // rather than fail the task.
            tracing::error!(waiting = candidates.len(), "no round size has parameters; waiting");
            self.state = State::Selecting { deadline: Some(now + self.config.deadlines.selection) };
            return;
        };
        if take < most {
            tracing::info!(
                waiting = candidates.len(),
                selecting = take,
                "no secure parameters for {most} clients: selecting the largest size that has them"
            );
        }
        candidates.shuffle(&mut self.rng);
        let mut selected = candidates[..take].to_vec();
        selected.sort_unstable();
        match self.start_attempt(selected.clone(), params, now) {
            Ok(attempt) => {
                self.not_selected = candidates[take..].iter().copied().collect();
                self.waiting.clear();
                self.outputs.push_back(Output::Audit(AuditEvent::RoundStarted {
                    round_id: attempt.info.plan.round_id,
                    attempt: attempt.info.plan.attempt,
                    selected: selected.len(),
                    degree: attempt.info.plan.degree,
                    threshold: attempt.info.plan.threshold,
                }));
                self.state = State::Running(Box::new(attempt));
            }
            Err(e) => {
                // Cannot happen for a validated config (the size has parameters, the plan is
                // built from them); keep waiting rather than fail the task.
                tracing::error!(error = %e, "cannot plan a round; waiting for more clients");
                self.state =
                    State::Selecting { deadline: Some(now + self.config.deadlines.selection) };
            }
        }
    }

    fn start_attempt(
        &mut self,
        selected: Vec<ClientId>,
        params: GraphParams,
        now: Instant,
    ) -> Result<Attempt> {
        let c = &self.config;
        let mut attempt = [0u8; 16];
        let mut graph_seed = [0u8; 32];
        self.rng.fill_bytes(&mut attempt);
        self.rng.fill_bytes(&mut graph_seed);
        // T: every certificate chain of the attempt is judged at this one instant, and the
        // server admits only chains still valid at the attempt's last deadline.
        let cert_time = unix_now();
        let phases: Duration = c.deadlines.phases().iter().sum();
        let until = cert_time + phases.as_secs() + u64::from(phases.subsec_nanos() > 0);
        let verifier =
            self.verifier.for_attempt(cert_time, Some(until)).unwrap_or(self.verifier.clone());
        let plan = RoundPlan {
            version: PROTOCOL_VERSION,
            task_id: c.task_id,
            round_id: RoundId(self.round_id),
            attempt: AttemptNonce(attempt),
            selected,
            graph: c.graph,
            degree: params.degree,
            threshold: params.threshold,
            dropout_ppm: c.dropout_ppm,
            corrupt_ppm: c.corrupt_ppm,
            adversary: c.adversary,
            graph_seed,
            dim: (self.model.len() + 1) as u32,
            quant: self.quant,
            checkpoint: self.checkpoint_hash,
            cert_time,
        };
        let mut server = SecAggServer::new(plan.clone(), verifier)?
            .with_upload_chunk_words(c.upload_chunk_words as usize)
            .with_max_uploads_in_flight(c.max_uploads_in_flight);
        if let Some(pool) = &self.pool {
            server = server.with_thread_pool(pool.clone());
        }
        let n = plan.selected.len();
        Ok(Attempt {
            ctx: plan.context(),
            info: Assignment {
                plan: plan.into(),
                checkpoint_version: self.checkpoint_version,
                upload_chunk_words: c.upload_chunk_words,
                phase_deadlines: c.deadlines.phases(),
            },
            server,
            phase: Phase::AdvertiseKeys,
            phase_opened: now,
            deadline: now + c.deadlines.advertise_keys,
            phase_seconds: Vec::new(),
            set_sizes: vec![n],
            answered: Default::default(),
            checking: BTreeMap::new(),
            upload_digests: BTreeMap::new(),
            upload_bytes: 0,
            exclusions: None,
            keys: BTreeMap::new(),
            shares: BTreeMap::new(),
            survivors: None,
            unmask: None,
            gone: BTreeSet::new(),
            upload_leases: BTreeMap::new(),
            evicted: BTreeSet::new(),
            released: None,
        })
    }

    // ------------------------------------------------------------------ time

    /// When the engine next needs [`handle_timeout`](Self::handle_timeout): a deadline, or
    /// the first upload lease to run out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Selecting { deadline } => *deadline,
            State::Running(a) => {
                Some(a.next_lease_expiry().map_or(a.deadline, |lease| lease.min(a.deadline)))
            }
            State::Aggregating(_) | State::Committing { .. } | State::Finished => None,
        }
    }

    /// Closes whatever is due at `now`: the selection, upload leases that ran out, or the open
    /// phase.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_upload_leases(now);
        match &self.state {
            State::Selecting { deadline: Some(d) } if *d <= now => self.select(now),
            State::Running(a) if a.deadline <= now => self.close_phase(now),
            _ => {}
        }
    }

    /// Evicts the partial uploads whose lease ran out by `now`: each client is counted as
    /// dropped (no phase waits for it, and its chunks are refused for the rest of the attempt),
    /// and phase 2 closes at once if nobody else is left to wait for.
    fn expire_upload_leases(&mut self, now: Instant) {
        let State::Running(a) = &mut self.state else { return };
        if a.next_lease_expiry().is_none_or(|first| first > now) {
            return;
        }
        let expired: Vec<ClientId> =
            a.upload_leases.iter().filter(|(_, t)| **t <= now).map(|(c, _)| *c).collect();
        for client in expired {
            a.upload_leases.remove(&client);
            a.upload_digests.remove(&client);
            a.server.evict_upload(&client);
            a.evicted.insert(client);
            tracing::info!(
                round = a.info.plan.round_id.0,
                client = %client.to_hex(),
                idle_ms = self.config.upload_idle.as_millis() as u64,
                "a partial upload went idle: evicted, the client counts as dropped"
            );
        }
        if a.all_answered() {
            self.close_phase(now);
        }
    }

    /// The next thing to do outside the engine.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Closes the open phase: fixes its set, prepares every client's reply, opens the next.
    fn close_phase(&mut self, now: Instant) {
        let State::Running(attempt) = &mut self.state else { return };
        let a = attempt.as_mut();
        let contributed = &mut self.contributed;
        a.phase_seconds.push(now.saturating_duration_since(a.phase_opened).as_secs_f64());
        let closed = match a.phase {
            Phase::AdvertiseKeys => a.server.close_advertise().map(|fwd| {
                a.keys = fwd.into_iter().map(|f| (f.recipient, Arc::new(f))).collect();
                a.set_sizes.push(a.keys.len());
            }),
            Phase::ShareKeys => a.server.close_share_keys().map(|fwd| {
                a.shares = fwd.into_iter().map(|f| (f.recipient, Arc::new(f))).collect();
                a.set_sizes.push(a.shares.len());
                // Each client sent shares may upload (its ledger records the upload first), so
                // it counts as a contributor on the checkpoint from here, whatever follows; the
                // caller saves this before the shares go out.
                contributed.extend(a.shares.keys().copied());
            }),
            Phase::Complaints => {
                let closed = a.server.close_complaints();
                let (round_id, attempt) = (a.info.plan.round_id, a.info.plan.attempt);
                // Every complaint, its judgement and what judging it took, then E, to the
                // audit log (`audit verify` judges each again).
                for record in a.server.audited_complaints() {
                    for judged in record.judged() {
                        tracing::warn!(
                            round = round_id.0,
                            complainer = %judged.complainer.to_hex(),
                            accused = %judged.accused.to_hex(),
                            judgement = %judged.judgement,
                            excluded = %judged.excluded().to_hex(),
                            "a complaint was judged"
                        );
                    }
                    let record = Box::new(record);
                    self.outputs.push_back(Output::Audit(AuditEvent::Complaints {
                        round_id,
                        attempt,
                        record,
                    }));
                }
                if let Ok(e) = &closed
                    && let Ok(members) = e.excluded.indices(a.info.plan.n())
                    && !members.is_empty()
                {
                    let excluded = members.iter().map(|&i| a.info.plan.selected[i]).collect();
                    self.outputs.push_back(Output::Audit(AuditEvent::Excluded {
                        round_id,
                        attempt,
                        excluded,
                    }));
                }
                closed.map(|e| {
                    a.set_sizes.push(a.server.uploaders().len());
                    a.exclusions = Some(Arc::new(e));
                })
            }
            Phase::MaskedInputCollection => {
                let plan = &a.info.plan;
                // Whoever completed an upload has contributed on this checkpoint, whatever
                // happens to the attempt.
                contributed.extend(a.server.u3().into_iter().map(|i| plan.selected[i]));
                a.server.close_masked_input().map(|req| {
                    a.set_sizes.push(a.server.u3().len());
                    a.survivors = Some(Arc::new(req));
                })
            }
            Phase::ConsistencyCheck => a.server.close_consistency().map(|req| {
                a.set_sizes.push(req.signatures.len());
                a.unmask = Some(Arc::new(req));
            }),
            Phase::Unmasking => {
                a.set_sizes.push(a.answered[Phase::Unmasking.index()].len());
                if self.save_attempts {
                    // The shares received, so that a restart finishes the sum without the
                    // clients; nothing goes out before the checkpoint, stored after this.
                    let saved = saved::record(a, contributed);
                    self.outputs.push_back(Output::SaveAttempt(Box::new(saved)));
                }
                return self.aggregate();
            }
        };
        match closed {
            Ok(()) => {
                if self.save_attempts {
                    let saved = saved::record(a, contributed);
                    self.outputs.push_back(Output::SaveAttempt(Box::new(saved)));
                } else {
                    a.released = Some(a.phase);
                }
                let next = Phase::ALL[a.phase.index() + 1];
                a.phase = next;
                a.phase_opened = now;
                a.deadline = now + a.info.phase_deadlines[next.index()];
                if a.all_answered() {
                    // Nobody is left to wait for (for instance, U4 is empty).
                    self.close_phase(now);
                }
            }
            Err(e) => self.abort(AbortReason::Protocol(e)),
        }
    }

    /// The unmasking closed: hand the sum's work out ([`Output::Aggregate`]); the engine
    /// waits for [`aggregated`](Self::aggregated).
    fn aggregate(&mut self) {
        let State::Running(attempt) = std::mem::replace(&mut self.state, State::Finished) else {
            return;
        };
        self.state = State::Aggregating(Box::new(Finishing::of(&attempt)));
        self.outputs.push_back(Output::Aggregate(Aggregation {
            attempt,
            model: self.model.clone(),
            quant: self.quant,
            server_learning_rate: self.config.server_learning_rate,
            task_name: self.config.name.clone(),
            parent_version: self.checkpoint_version,
        }));
    }

    /// The sum of the finishing attempt was computed ([`Aggregation::run`]): hand out its
    /// checkpoint to store ([`Output::Checkpoint`]), or abort the attempt.
    pub fn aggregated(&mut self, done: Aggregated) -> Result<()> {
        match &self.state {
            State::Aggregating(f) if f.ctx == done.attempt.ctx => {}
            _ => return Err(Error::NothingToAggregate),
        }
        let Aggregated { attempt, result, misbehaving } = done;
        for client in misbehaving {
            self.outputs.push_back(Output::Audit(AuditEvent::MisbehavingHolder {
                round_id: attempt.info.plan.round_id,
                client,
            }));
        }
        match result {
            Ok((model, checkpoint)) => {
                self.outputs.push_back(Output::Checkpoint(checkpoint.clone()));
                self.state = State::Committing { attempt, checkpoint, model };
            }
            Err(reason) => {
                self.state = State::Running(attempt);
                self.abort(reason);
            }
        }
        Ok(())
    }

    /// The sum of the finishing attempt `ctx` will not come back (its computation failed):
    /// the attempt aborts with what the engine kept of it, and the round is retried.
    pub fn aggregation_failed(&mut self, ctx: &RoundContext) -> Result<()> {
        let State::Aggregating(f) = &self.state else { return Err(Error::NothingToAggregate) };
        if f.ctx != *ctx {
            return Err(Error::NothingToAggregate);
        }
        let State::Aggregating(f) =
            std::mem::replace(&mut self.state, State::Selecting { deadline: None })
        else {
            unreachable!("checked above")
        };
        let reason = AbortReason::AggregationFailed;
        let plan = &f.info.plan;
        tracing::error!(round = plan.round_id.0, %reason, "round attempt aborted");
        self.outputs.push_back(Output::Audit(AuditEvent::RoundAborted {
            round_id: plan.round_id,
            attempt: plan.attempt,
            reason: reason.clone(),
        }));
        let outcome = RoundOutcome { abort_reason: Some(reason), ..f.outcome };
        self.outputs.push_back(Output::Progress(Progress::Ended(Box::new(outcome.clone()))));
        self.outputs.push_back(Output::AttemptEnded(outcome.ctx));
        self.remember(outcome, f.unmasked);
        Ok(())
    }

    /// The caller stored the checkpoint `version` durably: publish the round's result and
    /// open the next round.
    pub fn checkpoint_committed(&mut self, version: u64, now: Instant) -> Result<()> {
        if self.publishing.is_some() {
            return self.republished(version);
        }
        let State::Committing { checkpoint, .. } = &self.state else {
            return Err(Error::NothingToCommit { version });
        };
        if checkpoint.version != version {
            return Err(Error::WrongCommit { committed: version, waiting: checkpoint.version });
        }
        let State::Committing { mut attempt, checkpoint, model } =
            std::mem::replace(&mut self.state, State::Finished)
        else {
            unreachable!("checked above")
        };
        let _ = now;
        self.model = Arc::new(model);
        self.checkpoint_version = checkpoint.version;
        self.signed_high_water = self.signed_high_water.max(checkpoint.version);
        self.checkpoint_hash = checkpoint.sha256;
        self.contributed.clear();
        self.stalled = None;
        self.checking_in_since = None;
        self.stall_checked = None;
        self.completed_rounds += 1;
        self.round_id += 1;
        let outcome = attempt.outcome(true, Some(checkpoint.version), None);
        self.outputs.push_back(Output::Audit(AuditEvent::RoundCompleted {
            round_id: outcome.round_id,
            attempt: outcome.attempt,
            participants: outcome.participants(),
            checkpoint_version: checkpoint.version,
        }));
        let unmasked = std::mem::take(&mut attempt.answered[Phase::Unmasking.index()]);
        self.outputs.push_back(Output::Progress(Progress::Ended(Box::new(outcome.clone()))));
        self.outputs.push_back(Output::AttemptEnded(outcome.ctx));
        self.remember(outcome, unmasked);
        self.state = if self.completed_rounds >= self.config.rounds {
            self.outputs.push_back(Output::Progress(Progress::Finished {
                rounds: self.completed_rounds,
                checkpoint_version: self.checkpoint_version,
            }));
            State::Finished
        } else {
            State::Selecting { deadline: None }
        };
        Ok(())
    }

    /// Aborts the running attempt: nothing more is revealed, the model stays, the round is
    /// retried as a new attempt.
    fn abort(&mut self, reason: AbortReason) {
        let State::Running(mut attempt) =
            std::mem::replace(&mut self.state, State::Selecting { deadline: None })
        else {
            return;
        };
        attempt.server.abort(match &reason {
            AbortReason::Protocol(e) => e.clone(),
            _ => fedsec_crypto::Error::Abandoned,
        });
        // A phase close of it not yet handed out is not saved: the attempt is over.
        let ctx = attempt.ctx;
        self.outputs.retain(|o| !matches!(o, Output::SaveAttempt(s) if s.ctx() == ctx));
        // Uploads completed before the abort count as contributions on this checkpoint.
        let plan = &attempt.info.plan;
        self.contributed.extend(attempt.server.u3().into_iter().map(|i| plan.selected[i]));
        tracing::warn!(round = plan.round_id.0, %reason, "round attempt aborted");
        self.outputs.push_back(Output::Audit(AuditEvent::RoundAborted {
            round_id: plan.round_id,
            attempt: plan.attempt,
            reason: reason.clone(),
        }));
        let unmasked = std::mem::take(&mut attempt.answered[Phase::Unmasking.index()]);
        let outcome = attempt.outcome(false, None, Some(reason));
        self.outputs.push_back(Output::Progress(Progress::Ended(Box::new(outcome.clone()))));
        self.outputs.push_back(Output::AttemptEnded(outcome.ctx));
        self.remember(outcome, unmasked);
    }

    /// Keeps a finished attempt's outcome, and the digests of the revealed shares it received
    /// so that a client resending its identical Unmask (its connection dropped before the
    /// result came) still gets the result.
    fn remember(&mut self, outcome: RoundOutcome, unmasked: BTreeMap<ClientId, [u8; 32]>) {
        self.result_order.push_back(outcome.ctx);
        self.results_changes += 1;
        self.unmasked.insert(outcome.ctx, unmasked);
        self.results.insert(outcome.ctx, outcome);
        while self.result_order.len() > RESULTS_KEPT {
            if let Some(old) = self.result_order.pop_front() {
                self.results.remove(&old);
                self.unmasked.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

/// The wall clock, Unix seconds: the certificate instant T of an attempt starting now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
