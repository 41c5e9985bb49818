//! One attempt of one round, as a sans-IO state machine: the client's core.
//!
//! It does not do network IO, read a clock or touch a file. Whoever drives it — [`crate::Client`]
//! over gRPC and mutual TLS, or the simulation's in-memory transport — feeds each reply from the
//! coordinator in with `now` and gets back a [`Step`]: the next request and its deadline, a
//! verified model to train, or the attempt's report. Everything a client decides is decided
//! here, once, for every transport:
//!
//! - **the plan**: the site's own floor, the (k, t) it computes itself from (|U|, δ, γ, class),
//!   and its contribution ledger (it contributes at most once per checkpoint) — checked before
//!   the model is downloaded;
//! - **the checkpoint**: the coordinator's signature, the size and SHA-256 of the bytes, the
//!   version (never older than one seen before: no rollback), and that it is the plan's;
//! - **quantization, masking and the ledger**: the update is clipped, quantized and masked
//!   once per attempt; the ledger records the checkpoint before the masked input may leave
//!   ([`Step::Send::persist`]);
//! - **byte counts**: every request and reply is counted at its encoded size.
//!
//! The driver's part is the transport: it calls, reconnects, and resends a request
//! byte-identical after a dropped connection (a [`Request`] is immutable once made), persists
//! the [`ClientState`] when a step says so, and runs the [`crate::Trainer`].
//!
//! ```text
//! Round::new(plan)                       → Send DownloadModel
//! handle(Model { manifest, data })       → Train(model)          state: newest version seen
//! trained(fit)                           → Send AdvertiseKeys
//! handle(AdvertiseKeys reply)            → Send ShareKeys
//! handle(ShareKeys reply)                → Send UploadMaskedInput  state: ledger (persist first)
//! handle(UploadMaskedInput reply)        → Send ConsistencyCheck
//! handle(ConsistencyCheck reply)         → Send Unmask
//! handle(Unmask reply: the round result) → Done(report)
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use fedsec_crypto::checkpoint::SignedManifest;
use fedsec_crypto::model::Model;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::client::{ClientPolicy, SecAggClient};
use fedsec_crypto::secagg::messages::{
    ConsistencyRequest, KeysForward, SharesForward, UnmaskingRequest,
};
use fedsec_crypto::sign::{CredentialVerifier, IdentityKey};
use fedsec_crypto::x509::encode_chain;
use fedsec_crypto::{ClientId, RoundPlan, TaskId};
use fedsec_proto::v1;
use fedsec_wire::{Assignment, PhaseMessage, RoundKey, Wire};
use prost::Message;
use rand::Rng;
use zeroize::Zeroize;

use crate::error::{ClientError, Result};
use crate::state::ClientState;
use crate::trainer::FitResult;

/// How long after the last phase's deadline a client waits for the round's result: the
/// coordinator aggregates and stores the checkpoint before it answers.
pub const RESULT_GRACE: Duration = Duration::from_secs(60);

/// Who a client is in its federation, and what it trusts: the same for every round.
pub struct Membership {
    identity: Arc<IdentityKey>,
    credential: Vec<u8>,
    policy: ClientPolicy,
    coordinator_key: VerifyingKey,
    task: TaskId,
}

impl core::fmt::Debug for Membership {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Membership")
            .field("id", &self.identity.id())
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// A client of `task` with identity key `identity`, certified by `chain` (leaf first), with
    /// its floor `policy`, trusting checkpoints signed by `coordinator_key`.
    pub fn new(
        identity: Arc<IdentityKey>,
        chain: &[Vec<u8>],
        policy: ClientPolicy,
        coordinator_key: VerifyingKey,
        task: TaskId,
    ) -> Self {
        Membership { identity, credential: encode_chain(chain), policy, coordinator_key, task }
    }

    /// This client's id: SHA-256 of its certificate's public key.
    pub fn id(&self) -> ClientId {
        self.identity.id()
    }

    /// The task it takes part in.
    pub fn task(&self) -> TaskId {
        self.task
    }

    /// The key under the task's name in [`ClientState::last_seen_version`].
    pub fn state_key(&self) -> String {
        hex::encode(self.task.0)
    }
}

/// A request to the coordinator, ready to send — and to resend unchanged.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Before phase 0: the checkpoint to train on.
    DownloadModel(v1::DownloadModelRequest),
    /// Phase 0.
    AdvertiseKeys(v1::AdvertiseKeysRequest),
    /// Phase 1.
    ShareKeys(v1::ShareKeysRequest),
    /// Phase 2, in chunks.
    UploadMaskedInput(Vec<v1::MaskedInputChunk>),
    /// Phase 3.
    ConsistencyCheck(v1::ConsistencyCheckRequest),
    /// Phase 4.
    Unmask(v1::UnmaskRequest),
}

impl Request {
    /// The protocol phase whose message this is (none for the download).
    pub fn phase(&self) -> Option<Phase> {
        match self {
            Request::DownloadModel(_) => None,
            Request::AdvertiseKeys(_) => Some(Phase::AdvertiseKeys),
            Request::ShareKeys(_) => Some(Phase::ShareKeys),
            Request::UploadMaskedInput(_) => Some(Phase::MaskedInputCollection),
            Request::ConsistencyCheck(_) => Some(Phase::ConsistencyCheck),
            Request::Unmask(_) => Some(Phase::Unmasking),
        }
    }

    /// The gRPC method that carries it.
    pub fn method(&self) -> &'static str {
        match self {
            Request::DownloadModel(_) => "DownloadModel",
            Request::AdvertiseKeys(_) => "AdvertiseKeys",
            Request::ShareKeys(_) => "ShareKeys",
            Request::UploadMaskedInput(_) => "UploadMaskedInput",
            Request::ConsistencyCheck(_) => "ConsistencyCheck",
            Request::Unmask(_) => "Unmask",
        }
    }

    /// Its size on the wire (protobuf encoding; the chunks of an upload summed).
    pub fn encoded_len(&self) -> u64 {
        (match self {
            Request::DownloadModel(r) => r.encoded_len(),
            Request::AdvertiseKeys(r) => r.encoded_len(),
            Request::ShareKeys(r) => r.encoded_len(),
            Request::UploadMaskedInput(c) => c.iter().map(Message::encoded_len).sum(),
            Request::ConsistencyCheck(r) => r.encoded_len(),
            Request::Unmask(r) => r.encoded_len(),
        }) as u64
    }
}

/// A reply from the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The checkpoint: its signed manifest and its bytes.
    Model {
        /// The manifest, sent first.
        manifest: v1::CheckpointManifest,
        /// The safetensors bytes.
        data: Vec<u8>,
    },
    /// Phase 0 → 1: the share holders' advertisements.
    AdvertiseKeys(v1::AdvertiseKeysResponse),
    /// Phase 1 → 2: the ciphertexts addressed to this client.
    ShareKeys(v1::ShareKeysResponse),
    /// Phase 2 → 3: U3.
    UploadMaskedInput(v1::UploadMaskedInputResponse),
    /// Phase 3 → 4: U3 and the signatures on it.
    ConsistencyCheck(v1::ConsistencyCheckResponse),
    /// After phase 4: how the round ended.
    Unmask(v1::RoundResult),
}

impl Response {
    /// What kind of reply it is, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Response::Model { .. } => "the model",
            Response::AdvertiseKeys(_) => "the AdvertiseKeys reply",
            Response::ShareKeys(_) => "the ShareKeys reply",
            Response::UploadMaskedInput(_) => "the UploadMaskedInput reply",
            Response::ConsistencyCheck(_) => "the ConsistencyCheck reply",
            Response::Unmask(_) => "the round result",
        }
    }

    /// Its size on the wire, as [`Request::encoded_len`] counts (the model: its bytes).
    pub fn encoded_len(&self) -> u64 {
        (match self {
            Response::Model { data, .. } => data.len(),
            Response::AdvertiseKeys(r) => r.encoded_len(),
            Response::ShareKeys(r) => r.encoded_len(),
            Response::UploadMaskedInput(r) => r.encoded_len(),
            Response::ConsistencyCheck(r) => r.encoded_len(),
            Response::Unmask(r) => r.encoded_len(),
        }) as u64
    }
}

/// What the driver does next.
#[derive(Debug)]
pub enum Step {
    /// Send `request` — resending it byte-identical after a dropped connection — until
    /// `deadline`, and feed the reply to [`Round::handle`].
    Send {
        /// The request.
        request: Request,
        /// When its phase closes.
        deadline: Instant,
        /// The client state changed: persist it durably **before** sending (the ledger must
        /// record a contribution before the masked input leaves).
        persist: bool,
    },
    /// Train on this verified model and feed the result to [`Round::trained`], before
    /// `deadline` (when phase 0 closes).
    Train {
        /// The checkpoint, verified.
        model: Model,
        /// When the advertisement is due.
        deadline: Instant,
        /// The client state changed (the newest version seen): persist it.
        persist: bool,
    },
    /// The round completed with this client's input in the sum.
    Done(RoundReport),
}

/// How one attempt this client took part in ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundReport {
    /// The round.
    pub round_id: u64,
    /// True if the round completed with this client's input in the sum.
    pub completed: bool,
    /// The checkpoint the round produced, when it completed.
    pub new_checkpoint_version: Option<u64>,
    /// |U3|.
    pub participants: u32,
    /// The local training loss.
    pub train_loss: f64,
    /// Bytes sent to the coordinator in the attempt (requests and upload).
    pub bytes_sent: u64,
    /// Bytes received from it (model and replies).
    pub bytes_received: u64,
}

/// What the round waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Model,
    Training,
    /// The reply to this phase's message.
    Reply(Phase),
    /// Nothing: the attempt is over (done or refused).
    Nothing,
}

/// A hook that sees each quantized input before it is masked (tests of exact sums).
type QuantizedObserver = Box<dyn FnMut(&RoundPlan, &[u32]) + Send>;

/// One attempt of one round. See the [module docs](self).
pub struct Round {
    assignment: Assignment,
    key: RoundKey,
    me: ClientId,
    state_key: String,
    coordinator_key: VerifyingKey,
    /// When the plan arrived: phase deadlines count from here.
    started: Instant,
    secagg: SecAggClient,
    awaiting: Awaiting,
    /// The local update (a secret until masked: wiped once used).
    update: Vec<f32>,
    examples: u64,
    train_loss: f64,
    sent: u64,
    received: u64,
    uploaded: bool,
    observer: Option<QuantizedObserver>,
}

impl core::fmt::Debug for Round {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Round")
            .field("round", &self.assignment.plan.round_id)
            .field("client", &self.me)
            .field("awaiting", &self.awaiting)
            .finish_non_exhaustive()
    }
}

impl Round {
    /// Takes the plan of a check-in answer, received at `now`: checks it against the site's
    /// floor, the parameters the client computes itself and the ledger in `state`, makes the
    /// attempt's fresh keys, and asks for the checkpoint. `verifier` checks peers' certificate
    /// chains (at the current time).
    pub fn new(
        member: &Membership,
        verifier: Arc<dyn CredentialVerifier>,
        plan: &v1::RoundPlan,
        state: &ClientState,
        now: Instant,
    ) -> Result<(Round, Step)> {
        let assignment = Assignment::from_wire(plan)?;
        if assignment.plan.task_id != member.task {
            return Err(ClientError::WrongTask {
                expected: member.task,
                got: assignment.plan.task_id,
            });
        }
        // The checkpoint is verified before anything is sent that depends on it: the
        // advertisement leaves only after `handle(Model)` checked the bytes against this hash.
        let secagg = SecAggClient::new(
            member.identity.clone(),
            verifier,
            &member.policy,
            assignment.plan.clone(),
            &assignment.plan.checkpoint,
            &state.ledger,
        )?
        .with_credential(member.credential.clone());
        let key = assignment.key();
        let mut round = Round {
            assignment,
            key,
            me: member.id(),
            state_key: member.state_key(),
            coordinator_key: member.coordinator_key,
            started: now,
            secagg,
            awaiting: Awaiting::Model,
            update: Vec::new(),
            examples: 0,
            train_loss: 0.0,
            sent: 0,
            received: 0,
            uploaded: false,
            observer: None,
        };
        let request =
            Request::DownloadModel(v1::DownloadModelRequest { round: Some(key.to_wire()) });
        let step = round.send(request, Phase::AdvertiseKeys, false);
        Ok((round, step))
    }

    /// Shows each quantized input to `observer` before it is masked. For tests that compare
    /// the coordinator's sum with the clear sum: it sees what nobody else may.
    pub fn observe_quantized(&mut self, observer: QuantizedObserver) {
        self.observer = Some(observer);
    }

    /// The plan.
    pub fn plan(&self) -> &RoundPlan {
        &self.assignment.plan
    }

    /// The plan and how the round runs.
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// True once the coordinator accepted this client's masked input.
    pub fn uploaded(&self) -> bool {
        self.uploaded
    }

    /// Bytes sent so far (requests at their encoded size).
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Bytes received so far (the model and the replies at their encoded size).
    pub fn bytes_received(&self) -> u64 {
        self.received
    }

    /// The deadline of `phase`: phase deadlines run one after another from the plan's arrival.
    pub fn deadline(&self, phase: Phase) -> Instant {
        self.started
            + self.assignment.phase_deadlines.iter().take(phase.index() + 1).sum::<Duration>()
    }

    fn send(&mut self, request: Request, phase: Phase, persist: bool) -> Step {
        self.sent += request.encoded_len();
        let deadline = match request {
            Request::Unmask(_) => self.deadline(phase) + RESULT_GRACE,
            _ => self.deadline(phase),
        };
        self.awaiting = match request {
            Request::DownloadModel(_) => Awaiting::Model,
            _ => Awaiting::Reply(phase),
        };
        Step::Send { request, deadline, persist }
    }

    /// The local training result: checks that it fits the plan, then advertises the keys.
    pub fn trained(&mut self, fit: FitResult, _now: Instant) -> Result<Step> {
        self.expect(Awaiting::Training, "a training result")?;
        let dim = self.assignment.plan.dim as usize;
        if fit.update.len() + 1 != dim {
            self.awaiting = Awaiting::Nothing;
            return Err(ClientError::UpdateLength { got: fit.update.len(), expected: dim - 1 });
        }
        (self.update, self.examples, self.train_loss) = (fit.update, fit.examples, fit.loss);
        let request = Request::AdvertiseKeys(self.secagg.advertise().to_wire(&self.key));
        Ok(self.send(request, Phase::AdvertiseKeys, false))
    }

    fn expect(&mut self, want: Awaiting, got: &'static str) -> Result<()> {
        if self.awaiting == want {
            return Ok(());
        }
        let expected = match self.awaiting {
            Awaiting::Model => "the model",
            Awaiting::Training => "a training result",
            Awaiting::Reply(Phase::AdvertiseKeys) => "the AdvertiseKeys reply",
            Awaiting::Reply(Phase::ShareKeys) => "the ShareKeys reply",
            Awaiting::Reply(Phase::MaskedInputCollection) => "the UploadMaskedInput reply",
            Awaiting::Reply(Phase::ConsistencyCheck) => "the ConsistencyCheck reply",
            Awaiting::Reply(Phase::Unmasking) => "the round result",
            Awaiting::Nothing => "nothing (the attempt is over)",
        };
        Err(ClientError::OutOfOrder { expected, got })
    }

    /// A reply from the coordinator, received at `now`. `state` is the client's persistent
    /// state (the newest version seen, the ledger); `coins` draws the quantization's stochastic
    /// rounding. Any error ends the attempt for this client.
    pub fn handle(
        &mut self,
        response: &Response,
        state: &mut ClientState,
        coins: &mut dyn Rng,
        _now: Instant,
    ) -> Result<Step> {
        let result = self.handle_inner(response, state, coins);
        if result.is_err() {
            self.awaiting = Awaiting::Nothing;
            self.update.zeroize();
        }
        result
    }

    fn handle_inner(
        &mut self,
        response: &Response,
        state: &mut ClientState,
        coins: &mut dyn Rng,
    ) -> Result<Step> {
        let me = self.me;
        match response {
            Response::Model { manifest, data } => {
                self.expect(Awaiting::Model, response.name())?;
                self.received += response.encoded_len();
                let model = self.checkpoint(manifest, data, state)?;
                self.awaiting = Awaiting::Training;
                let version = self.assignment.checkpoint_version;
                let newer =
                    state.last_seen_version.get(&self.state_key).is_none_or(|&v| v < version);
                if newer {
                    state.last_seen_version.insert(self.state_key.clone(), version);
                }
                let deadline = self.deadline(Phase::AdvertiseKeys);
                Ok(Step::Train { model, deadline, persist: newer })
            }
            Response::AdvertiseKeys(r) => {
                self.expect(Awaiting::Reply(Phase::AdvertiseKeys), response.name())?;
                self.received += response.encoded_len();
                let shares = self.secagg.handle_keys(&KeysForward::from_wire(r, me)?)?;
                let request = Request::ShareKeys(shares.to_wire(&self.key));
                Ok(self.send(request, Phase::ShareKeys, false))
            }
            Response::ShareKeys(r) => {
                self.expect(Awaiting::Reply(Phase::ShareKeys), response.name())?;
                self.received += response.encoded_len();
                let forwarded = SharesForward::from_wire(r, me)?;
                let plan = &self.assignment.plan;
                let mut x = plan.quant.quantize(&self.update, self.examples, coins)?;
                self.update.zeroize();
                if let Some(observe) = &mut self.observer {
                    observe(plan, &x);
                }
                // Masks once for the attempt and records the checkpoint in the ledger; the
                // driver persists it before the masked input leaves.
                let y = self.secagg.handle_shares(&forwarded, &x, &mut state.ledger);
                x.zeroize();
                let words = self.assignment.upload_chunk_words as usize;
                let chunks = fedsec_wire::chunks(&self.key, &y?, words);
                Ok(self.send(
                    Request::UploadMaskedInput(chunks),
                    Phase::MaskedInputCollection,
                    true,
                ))
            }
            Response::UploadMaskedInput(r) => {
                self.expect(Awaiting::Reply(Phase::MaskedInputCollection), response.name())?;
                self.received += response.encoded_len();
                self.uploaded = true;
                let u3 = ConsistencyRequest::from_wire(r, me)?;
                let signature = self.secagg.handle_consistency(&u3)?;
                let request = Request::ConsistencyCheck(signature.to_wire(&self.key));
                Ok(self.send(request, Phase::ConsistencyCheck, false))
            }
            Response::ConsistencyCheck(r) => {
                self.expect(Awaiting::Reply(Phase::ConsistencyCheck), response.name())?;
                self.received += response.encoded_len();
                let reveal = self.secagg.handle_unmasking(&UnmaskingRequest::from_wire(r, me)?)?;
                let request = Request::Unmask(reveal.to_wire(&self.key));
                Ok(self.send(request, Phase::Unmasking, false))
            }
            Response::Unmask(result) => {
                self.expect(Awaiting::Reply(Phase::Unmasking), response.name())?;
                self.received += response.encoded_len();
                self.awaiting = Awaiting::Nothing;
                if !result.completed {
                    return Err(ClientError::Aborted(result.abort_reason.clone()));
                }
                Ok(Step::Done(RoundReport {
                    round_id: self.assignment.plan.round_id.0,
                    completed: true,
                    new_checkpoint_version: Some(result.new_checkpoint_version),
                    participants: result.participants,
                    train_loss: self.train_loss,
                    bytes_sent: self.sent,
                    bytes_received: self.received,
                }))
            }
        }
    }

    /// Verifies the checkpoint: signature, version (no rollback), size, hash, and that it is
    /// the one the plan names, for this task.
    fn checkpoint(
        &self,
        manifest: &v1::CheckpointManifest,
        data: &[u8],
        state: &ClientState,
    ) -> Result<Model> {
        let manifest = SignedManifest::from_wire(manifest)?;
        let last_seen = state.last_seen_version.get(&self.state_key).copied();
        let model = manifest.verify_checkpoint(&self.coordinator_key, data, last_seen)?;
        let (m, a) = (&manifest.manifest, &self.assignment);
        if m.task_id != a.plan.task_id
            || m.sha256 != a.plan.checkpoint
            || m.version != a.checkpoint_version
        {
            return Err(fedsec_crypto::Error::CheckpointMismatch.into());
        }
        Ok(model)
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        self.update.zeroize();
    }
}
