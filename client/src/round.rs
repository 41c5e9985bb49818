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
//! handle(ShareKeys reply)                → Send Complaints
//! handle(Complaints reply: E)            → Send UploadMaskedInput  state: ledger (persist first)
//! handle(UploadMaskedInput reply)        → Send ConsistencyCheck
//! handle(ConsistencyCheck reply)         → Send Unmask
//! handle(Unmask reply: the round result) → Done(report)
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::client::{ClientPolicy, SecAggClient, TrainedOn};
use fedsec_crypto::secagg::messages::{
    ConsistencyRequest, Exclusions, KeysForward, SharesForward, UnmaskingRequest,
};
use fedsec_crypto::sign::{CredentialVerifier, IdentityKey};
use fedsec_crypto::{CheckpointHash, ClientId, RoundPlan, TaskId};
use fedsec_proto::v1;
use fedsec_wire::checkpoint::SignedManifest;
use fedsec_wire::model::Model;
use fedsec_wire::x509::encode_chain;
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

    /// Verifies the task's final checkpoint (after `TaskFinished` named `version`): the
    /// coordinator's signature, no rollback, the size and hash, this task, that version; then
    /// records it as the newest version seen.
    pub fn final_checkpoint(
        &self,
        manifest: &v1::CheckpointManifest,
        data: &[u8],
        version: u64,
        state: &mut ClientState,
    ) -> Result<Model> {
        let manifest = SignedManifest::from_wire(manifest)?;
        let last_seen = state.last_seen_version.get(&self.state_key()).copied();
        let model = manifest.verify_checkpoint(&self.coordinator_key, data, last_seen)?;
        if manifest.manifest.task_id != self.task || manifest.manifest.version != version {
            return Err(fedsec_crypto::Error::CheckpointMismatch.into());
        }
        state.last_seen_version.insert(self.state_key(), version);
        Ok(model)
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
    /// Phase 1½: the complaints, possibly none.
    Complaints(v1::ComplaintsRequest),
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
            Request::Complaints(_) => Some(Phase::Complaints),
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
            Request::Complaints(_) => "Complaints",
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
            Request::Complaints(r) => r.encoded_len(),
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
    /// Phase 1 → 1½: the ciphertexts addressed to this client.
    ShareKeys(v1::ShareKeysResponse),
    /// Phase 1½ → 2: E.
    Complaints(v1::ComplaintsResponse),
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
            Response::Complaints(_) => "the Complaints reply",
            Response::UploadMaskedInput(_) => "the UploadMaskedInput reply",
            Response::ConsistencyCheck(_) => "the ConsistencyCheck reply",
            Response::Unmask(_) => "the round result",
        }
    }

    /// What a round waits for when this reply is the right one.
    fn answers(&self) -> Awaiting {
        match self {
            Response::Model { .. } => Awaiting::Model,
            Response::AdvertiseKeys(_) => Awaiting::Reply(Phase::AdvertiseKeys),
            Response::ShareKeys(_) => Awaiting::Reply(Phase::ShareKeys),
            Response::Complaints(_) => Awaiting::Reply(Phase::Complaints),
            Response::UploadMaskedInput(_) => Awaiting::Reply(Phase::MaskedInputCollection),
            Response::ConsistencyCheck(_) => Awaiting::Reply(Phase::ConsistencyCheck),
            Response::Unmask(_) => Awaiting::Reply(Phase::Unmasking),
        }
    }

    /// Its size on the wire, as [`Request::encoded_len`] counts (the model: its bytes).
    pub fn encoded_len(&self) -> u64 {
        (match self {
            Response::Model { data, .. } => data.len(),
            Response::AdvertiseKeys(r) => r.encoded_len(),
            Response::ShareKeys(r) => r.encoded_len(),
            Response::Complaints(r) => r.encoded_len(),
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
        /// The request (boxed: an advertisement is several times the size of the other steps).
        request: Box<Request>,
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

/// A hook that sees each quantized input before it is masked (tests of exact sums; only with
/// the feature `test-hooks`).
#[cfg(feature = "test-hooks")]
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
    /// Who the client is, for the protocol core made once the checkpoint is verified.
    identity: Arc<IdentityKey>,
    credential: Vec<u8>,
    policy: ClientPolicy,
    verifier: Arc<dyn CredentialVerifier>,
    /// The protocol core of this attempt: made when the checkpoint is verified, from the hash
    /// verified.
    secagg: Option<SecAggClient>,
    awaiting: Awaiting,
    /// The local update (a secret until masked: wiped once used).
    update: Vec<f32>,
    examples: u64,
    train_loss: f64,
    sent: u64,
    received: u64,
    uploaded: bool,
    #[cfg(feature = "test-hooks")]
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
    /// floor, the parameters the client computes itself and the ledger in `state`, and asks for
    /// the checkpoint. `verifier` checks peers' certificate chains (at the current time).
    pub fn new(
        member: &Membership,
        verifier: Arc<dyn CredentialVerifier>,
        plan: &v1::RoundPlan,
        state: &ClientState,
        now: Instant,
    ) -> Result<(Round, Step)> {
        Self::with_assignment(member, verifier, Assignment::from_wire(plan)?, state, now)
    }

    /// [`Self::new`] with the plan already decoded by [`Assignment::from_wire`], for a process
    /// that runs many clients on one plan: the simulation decodes it once and each simulated
    /// client shares it (a plan names every selected client, 32 bytes each). The decoding is a
    /// pure function of the plan's bytes; every check on the plan is still made here.
    pub fn with_assignment(
        member: &Membership,
        verifier: Arc<dyn CredentialVerifier>,
        assignment: Assignment,
        state: &ClientState,
        now: Instant,
    ) -> Result<(Round, Step)> {
        // What `Assignment::from_wire` checks beyond the plan, for an assignment made otherwise.
        if assignment.upload_chunk_words == 0 {
            return Err(fedsec_wire::WireError {
                field: "plan.upload_chunk_words",
                reason: fedsec_wire::Reason::OutOfRange(0),
            }
            .into());
        }
        if assignment.plan.task_id != member.task {
            return Err(ClientError::WrongTask {
                expected: member.task,
                got: assignment.plan.task_id,
            });
        }
        // Nothing is downloaded for a plan the client would refuse, nor for a version no newer
        // than one it contributed on (the version is checked again in the signed manifest).
        SecAggClient::check_plan(&assignment.plan, &member.policy, &state.ledger)?;
        if member.policy.one_input_per_checkpoint
            && let Some(newest) = state.ledger.newest_version(&assignment.plan.task_id)
            && newest >= assignment.checkpoint_version
        {
            return Err(fedsec_crypto::Error::AlreadyContributedOnVersion {
                version: assignment.checkpoint_version,
                newest,
            }
            .into());
        }
        let me = member.id();
        if assignment.plan.index_of(&me).is_none() {
            return Err(fedsec_crypto::Error::NotSelected(me).into());
        }
        let key = assignment.key();
        let mut round = Round {
            assignment,
            key,
            me: member.id(),
            state_key: member.state_key(),
            coordinator_key: member.coordinator_key,
            started: now,
            identity: member.identity.clone(),
            credential: member.credential.clone(),
            policy: member.policy.clone(),
            verifier,
            secagg: None,
            awaiting: Awaiting::Model,
            update: Vec::new(),
            examples: 0,
            train_loss: 0.0,
            sent: 0,
            received: 0,
            uploaded: false,
            #[cfg(feature = "test-hooks")]
            observer: None,
        };
        let request =
            Request::DownloadModel(v1::DownloadModelRequest { round: Some(key.to_wire()) });
        let step = round.send(request, Phase::AdvertiseKeys, false);
        Ok((round, step))
    }

    /// Shows each quantized input to `observer` before it is masked. For tests that compare
    /// the coordinator's sum with the clear sum: it sees what nobody else may, so it exists
    /// only with the feature `test-hooks`.
    #[cfg(feature = "test-hooks")]
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
        Step::Send { request: Box::new(request), deadline, persist }
    }

    /// The local training result: checks that it fits the plan, then advertises the keys.
    pub fn trained(&mut self, mut fit: FitResult, _now: Instant) -> Result<Step> {
        let dim = self.assignment.plan.dim as usize;
        let checked = self.expect(Awaiting::Training, "a training result").and_then(|()| {
            match fit.update.len() + 1 == dim {
                true => Ok(()),
                false => {
                    Err(ClientError::UpdateLength { got: fit.update.len(), expected: dim - 1 })
                }
            }
        });
        if let Err(e) = checked {
            self.awaiting = Awaiting::Nothing;
            fit.update.zeroize();
            return Err(e);
        }
        (self.update, self.examples, self.train_loss) =
            (std::mem::take(&mut fit.update), fit.examples, fit.loss);
        let key = self.key;
        let request = Request::AdvertiseKeys(self.core().advertise().to_wire(&key));
        Ok(self.send(request, Phase::AdvertiseKeys, false))
    }

    /// The protocol core; there is one from the moment the checkpoint is verified, and the
    /// round asks for nothing that needs it before.
    fn core(&mut self) -> &mut SecAggClient {
        self.secagg.as_mut().expect("the protocol core is made when the checkpoint is verified")
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
            Awaiting::Reply(Phase::Complaints) => "the Complaints reply",
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
        self.expect(response.answers(), response.name())?;
        self.received += response.encoded_len();
        match response {
            Response::Model { manifest, data } => {
                let (model, verified) = self.checkpoint(manifest, data, state)?;
                // What this client trains on, as verified and decoded: the ledger allows one
                // input per checkpoint, per version (ever newer) and per weights.
                let trained_on = TrainedOn {
                    task: self.assignment.plan.task_id,
                    version: self.assignment.checkpoint_version,
                    checkpoint: verified,
                    weights: model.weights_hash(),
                };
                // The protocol core and its fresh keys, for the checkpoint verified.
                let core = SecAggClient::new(
                    self.identity.clone(),
                    self.verifier.clone(),
                    &self.policy,
                    self.assignment.plan.clone(),
                    &trained_on,
                    &state.ledger,
                )?;
                self.secagg = Some(core.with_credential(self.credential.clone()));
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
                let shares = self.core().handle_keys(&KeysForward::from_wire(r, me)?)?;
                let request = Request::ShareKeys(shares.to_wire(&self.key));
                Ok(self.send(request, Phase::ShareKeys, false))
            }
            Response::ShareKeys(r) => {
                // Opens each share once for the attempt: complains about the bad ones.
                let complaints = self.core().handle_shares(&SharesForward::from_wire(r, me)?)?;
                let request = Request::Complaints(complaints.to_wire(&self.key));
                Ok(self.send(request, Phase::Complaints, false))
            }
            Response::Complaints(r) => {
                let excluded = Exclusions::from_wire(r, me)?;
                let plan = &self.assignment.plan;
                let mut x = plan.quant.quantize(&self.update, self.examples, coins)?;
                self.update.zeroize();
                #[cfg(feature = "test-hooks")]
                if let Some(observe) = &mut self.observer {
                    observe(plan, &x);
                }
                // Masks once for the attempt and records the checkpoint in the ledger; the
                // driver persists it before the masked input leaves.
                let y = self.core().handle_exclusions(&excluded, &x, &mut state.ledger);
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
                self.uploaded = true;
                let u3 = ConsistencyRequest::from_wire(r, me)?;
                let signature = self.core().handle_consistency(&u3)?;
                let request = Request::ConsistencyCheck(signature.to_wire(&self.key));
                Ok(self.send(request, Phase::ConsistencyCheck, false))
            }
            Response::ConsistencyCheck(r) => {
                let reveal = self.core().handle_unmasking(&UnmaskingRequest::from_wire(r, me)?)?;
                let request = Request::Unmask(reveal.to_wire(&self.key));
                Ok(self.send(request, Phase::Unmasking, false))
            }
            Response::Unmask(result) => {
                self.awaiting = Awaiting::Nothing;
                if RoundKey::from_ref(result.round.as_ref())? != self.key {
                    return Err(fedsec_crypto::Error::WrongContext.into());
                }
                if !result.completed {
                    return Err(ClientError::Aborted { reason: result.abort_reason.clone() });
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
    ) -> Result<(Model, CheckpointHash)> {
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
        Ok((model, m.sha256))
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        self.update.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use fedsec_crypto::secagg::driver::make_plan;
    use fedsec_crypto::sign::RawKeyCredentials;
    use fedsec_crypto::{AdversaryClass, CheckpointHash, GraphKind};
    use fedsec_wire::checkpoint::{CheckpointError, Manifest};
    use fedsec_wire::model::Tensor;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    /// One client of a ten-client task, a plan that selects it, and the plan's checkpoint.
    struct Setup {
        member: Membership,
        coordinator: SigningKey,
        model: Model,
        bytes: Vec<u8>,
        plan: v1::RoundPlan,
        assignment: Assignment,
    }

    const TASK: TaskId = TaskId([7; 16]);

    fn setup() -> Setup {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let identities: Vec<IdentityKey> =
            (0..10).map(|_| IdentityKey::generate(&mut rng)).collect();
        let mut ids: Vec<ClientId> = identities.iter().map(IdentityKey::id).collect();
        let model = Model::new().with("w", Tensor::new(vec![3], vec![0.5, -1.0, 2.0]).unwrap());
        let bytes = model.to_safetensors().unwrap();
        let mut plan = make_plan(
            &mut ids,
            GraphKind::Complete,
            100_000,
            50_000,
            AdversaryClass::SemiMalicious,
            4,
            CheckpointHash::of(&bytes),
            &mut rng,
        )
        .unwrap();
        plan.task_id = TASK;
        let assignment = Assignment {
            plan: plan.into(),
            checkpoint_version: 3,
            upload_chunk_words: 2,
            phase_deadlines: [Duration::from_secs(1); 6],
        };
        let coordinator = SigningKey::from_bytes(&[9; 32]);
        let me = identities.into_iter().next().unwrap();
        let member = Membership::new(
            Arc::new(me),
            &[b"not a certificate".to_vec()],
            ClientPolicy::default(),
            coordinator.verifying_key(),
            TASK,
        );
        Setup { member, coordinator, model, bytes, plan: assignment.to_wire(), assignment }
    }

    impl Setup {
        fn manifest(&self, edit: impl FnOnce(&mut Manifest)) -> v1::CheckpointManifest {
            let mut m = Manifest {
                version: 3,
                parent_version: 2,
                sha256: CheckpointHash::of(&self.bytes),
                size_bytes: self.bytes.len() as u64,
                task_id: TASK,
                round_summary: String::new(),
            };
            edit(&mut m);
            m.sign(&self.coordinator).to_wire()
        }

        fn round(&self, state: &ClientState, now: Instant) -> Result<(Round, Step)> {
            Round::new(&self.member, Arc::new(RawKeyCredentials), &self.plan, state, now)
        }

        fn model(&self, manifest: v1::CheckpointManifest) -> Response {
            Response::Model { manifest, data: self.bytes.clone() }
        }
    }

    fn coins() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(2)
    }

    #[test]
    fn the_round_verifies_the_checkpoint_before_it_trains_then_advertises() {
        let s = setup();
        let mut state = ClientState::default();
        let t0 = Instant::now();
        let (mut round, step) = s.round(&state, t0).unwrap();
        let Step::Send { request, deadline, persist } = step else {
            panic!("the round starts with the download: {step:?}")
        };
        let Request::DownloadModel(req) = *request else { panic!("the download comes first") };
        assert_eq!(req.round, Some(s.assignment.key().to_wire()));
        assert_eq!((deadline, persist), (t0 + Duration::from_secs(1), false));
        let sent = round.bytes_sent();
        assert!(sent > 0);

        let step = round.handle(&s.model(s.manifest(|_| {})), &mut state, &mut coins(), t0);
        let Ok(Step::Train { model, persist, .. }) = step else { panic!("{step:?}") };
        assert_eq!(model, s.model);
        assert!(persist, "the newest version seen changed");
        assert_eq!(state.last_seen_version[&s.member.state_key()], 3);
        assert_eq!(round.bytes_received(), s.bytes.len() as u64);

        let fit = FitResult { update: vec![0.25; 3], examples: 5, loss: 0.5 };
        let Ok(Step::Send { request, deadline, persist }) = round.trained(fit, t0) else {
            panic!("the advertisement follows the training")
        };
        let Request::AdvertiseKeys(advert) = *request else { panic!("an advertisement") };
        assert_eq!((deadline, persist), (t0 + Duration::from_secs(1), false));
        assert_eq!(advert.round, Some(s.assignment.key().to_wire()));
        assert_eq!(round.bytes_sent(), sent + advert.encoded_len() as u64);
        // A second model now is out of order, and ends the attempt.
        let again = round.handle(&s.model(s.manifest(|_| {})), &mut state, &mut coins(), t0);
        assert!(matches!(again, Err(ClientError::OutOfOrder { got: "the model", .. })));
    }

    #[test]
    fn a_checkpoint_that_is_not_the_plans_is_refused_and_nothing_is_recorded() {
        let s = setup();
        let other = SigningKey::from_bytes(&[8; 32]);
        let cases: Vec<(&str, Response, ClientState)> = vec![
            (
                "another signer",
                s.model(s.manifest(|_| {}).tap(|m| {
                    let forged = SignedManifest::from_wire(m).unwrap().manifest.sign(&other);
                    *m = forged.to_wire();
                })),
                ClientState::default(),
            ),
            (
                "other bytes",
                Response::Model { manifest: s.manifest(|_| {}), data: b"other".to_vec() },
                ClientState::default(),
            ),
            ("another version", s.model(s.manifest(|m| m.version = 4)), ClientState::default()),
            ("another task", s.model(s.manifest(|m| m.task_id = TaskId([1; 16]))), {
                ClientState::default()
            }),
            ("a rollback", s.model(s.manifest(|_| {})), {
                let mut state = ClientState::default();
                state.last_seen_version.insert(s.member.state_key(), 5);
                state
            }),
        ];
        for (what, response, mut state) in cases {
            let before = state.clone();
            let (mut round, _) = s.round(&state, Instant::now()).unwrap();
            let got = round.handle(&response, &mut state, &mut coins(), Instant::now());
            let refused_for_its_rule = matches!(
                (what, &got),
                ("another signer", Err(ClientError::Checkpoint(CheckpointError::Signature { .. })))
                    | ("other bytes", Err(ClientError::Checkpoint(CheckpointError::Size { .. })))
                    | (
                        "a rollback",
                        Err(ClientError::Checkpoint(CheckpointError::Rollback {
                            version: 3,
                            seen: 5
                        }))
                    )
                    | (
                        "another version" | "another task",
                        Err(ClientError::Protocol(fedsec_crypto::Error::CheckpointMismatch))
                    )
            );
            assert!(refused_for_its_rule, "{what}: {got:?}");
            assert_eq!(state, before, "{what}: the state is unchanged");
            let fit = FitResult { update: vec![0.0; 3], examples: 1, loss: 0.0 };
            assert!(
                matches!(round.trained(fit, Instant::now()), Err(ClientError::OutOfOrder { .. })),
                "{what}: the attempt is over"
            );
        }
    }

    #[test]
    fn a_checkpoint_minted_again_is_refused_once_verified_and_decoded() {
        let s = setup();
        let task = TASK.to_hex();
        let refused = |ledger: String| {
            let ledger = serde_json::from_str(&ledger).unwrap();
            let mut state = ClientState { ledger, ..Default::default() };
            let (mut round, _) = s.round(&state, Instant::now()).unwrap();
            let got = round.handle(
                &s.model(s.manifest(|_| {})),
                &mut state,
                &mut coins(),
                Instant::now(),
            );
            match got {
                Err(ClientError::Protocol(e)) => e,
                other => panic!("{other:?}"),
            }
        };
        // Contributed on version 3 of this task under another checkpoint (a bit flipped): the
        // assignment's version is refused before the download.
        let ledger = format!(r#"{{"checkpoints":[],"versions":{{"{task}":3}}}}"#);
        let state =
            ClientState { ledger: serde_json::from_str(&ledger).unwrap(), ..Default::default() };
        let got = s.round(&state, Instant::now()).map(|_| ());
        let want = fedsec_crypto::Error::AlreadyContributedOnVersion { version: 3, newest: 3 };
        assert!(matches!(got, Err(ClientError::Protocol(ref e)) if *e == want), "{got:?}");
        // Contributed on these very weights (the hash of the model the client decodes).
        let weights = s.model.weights_hash().0;
        let e = refused(format!(r#"{{"checkpoints":[],"weights":[{weights:?}]}}"#));
        assert_eq!(e, fedsec_crypto::Error::AlreadyContributedOnWeights);
        // An older version of this task only: this one is newer and is trained on.
        let ledger = format!(r#"{{"checkpoints":[],"versions":{{"{task}":2}}}}"#);
        let mut state =
            ClientState { ledger: serde_json::from_str(&ledger).unwrap(), ..Default::default() };
        let (mut round, _) = s.round(&state, Instant::now()).unwrap();
        let step =
            round.handle(&s.model(s.manifest(|_| {})), &mut state, &mut coins(), Instant::now());
        assert!(matches!(step, Ok(Step::Train { .. })), "{step:?}");
    }

    #[test]
    fn a_plan_is_refused_before_anything_is_downloaded() {
        let s = setup();
        // Already contributed on this checkpoint.
        // (as a restarted client reads it from its state file)
        let ledger = format!(r#"{{"checkpoints":[{:?}]}}"#, s.assignment.plan.checkpoint.0);
        let state =
            ClientState { ledger: serde_json::from_str(&ledger).unwrap(), ..Default::default() };
        let got = s.round(&state, Instant::now());
        assert!(matches!(
            got,
            Err(ClientError::Protocol(fedsec_crypto::Error::AlreadyContributedOnCheckpoint))
        ));
        // Another task's plan.
        let mut plan = s.plan.clone();
        plan.task_id = vec![1; 16];
        let got = Round::new(
            &s.member,
            Arc::new(RawKeyCredentials),
            &plan,
            &ClientState::default(),
            Instant::now(),
        );
        assert!(matches!(got, Err(ClientError::WrongTask { .. })), "{got:?}");
        // A malformed plan names its field.
        let mut plan = s.plan.clone();
        plan.graph_seed.pop();
        let got = Round::new(
            &s.member,
            Arc::new(RawKeyCredentials),
            &plan,
            &ClientState::default(),
            Instant::now(),
        );
        let Err(ClientError::Malformed(e)) = got else { panic!("{got:?}") };
        assert_eq!(e.field, "plan.graph_seed");
        // An assignment decoded elsewhere gets the same checks; one made by hand with chunks of
        // no words is refused as its wire form would be.
        let shared = Round::with_assignment(
            &s.member,
            Arc::new(RawKeyCredentials),
            s.assignment.clone(),
            &state,
            Instant::now(),
        );
        assert!(matches!(
            shared,
            Err(ClientError::Protocol(fedsec_crypto::Error::AlreadyContributedOnCheckpoint))
        ));
        let mut empty_chunks = s.assignment.clone();
        empty_chunks.upload_chunk_words = 0;
        let got = Round::with_assignment(
            &s.member,
            Arc::new(RawKeyCredentials),
            empty_chunks,
            &ClientState::default(),
            Instant::now(),
        );
        let Err(ClientError::Malformed(e)) = got else { panic!("{got:?}") };
        assert_eq!(e.field, "plan.upload_chunk_words");
        // A plan below the site's floor (a weaker adversary class than it accepts).
        let mut plan = s.plan.clone();
        plan.adversary = v1::AdversaryClass::Curious as i32;
        let got = Round::new(
            &s.member,
            Arc::new(RawKeyCredentials),
            &plan,
            &ClientState::default(),
            Instant::now(),
        );
        assert!(matches!(got, Err(ClientError::Protocol(_))), "{got:?}");
    }

    #[test]
    fn an_update_that_does_not_fit_the_plan_is_refused() {
        let s = setup();
        let mut state = ClientState::default();
        let (mut round, _) = s.round(&state, Instant::now()).unwrap();
        round
            .handle(&s.model(s.manifest(|_| {})), &mut state, &mut coins(), Instant::now())
            .unwrap();
        let fit = FitResult { update: vec![0.0; 4], examples: 1, loss: 0.0 };
        assert!(matches!(
            round.trained(fit, Instant::now()),
            Err(ClientError::UpdateLength { got: 4, expected: 3 })
        ));
    }

    #[test]
    fn a_reply_the_round_does_not_wait_for_ends_it() {
        let s = setup();
        let mut state = ClientState::default();
        let (mut round, _) = s.round(&state, Instant::now()).unwrap();
        let early = Response::Unmask(v1::RoundResult { completed: true, ..Default::default() });
        let got = round.handle(&early, &mut state, &mut coins(), Instant::now());
        assert!(
            matches!(
                got,
                Err(ClientError::OutOfOrder { expected: "the model", got: "the round result" })
            ),
            "{got:?}"
        );
        // The attempt is over: even the model is refused now.
        let got =
            round.handle(&s.model(s.manifest(|_| {})), &mut state, &mut coins(), Instant::now());
        assert!(matches!(got, Err(ClientError::OutOfOrder { .. })));
    }

    /// `tap` for building a value in place.
    trait Tap: Sized {
        fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
            f(&mut self);
            self
        }
    }
    impl<T> Tap for T {}
}
