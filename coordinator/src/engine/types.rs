//! The values the engine hands out: plans, check-in answers, replies, outcomes, outputs.

use std::sync::Arc;
use std::time::Duration;

use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::messages::{
    ConsistencyRequest, Exclusions, KeysForward, SharesForward, UnmaskingRequest,
};
use fedsec_crypto::{AttemptNonce, CheckpointHash, ClientId, RoundContext, RoundId};

use super::aggregation::Aggregation;
use crate::error::AbortReason;
pub use fedsec_wire::Assignment;

/// The answer to a check-in.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckIn {
    /// Waiting for selection; ask again (the gRPC adapter long-polls).
    Pending,
    /// Selected: run this attempt.
    Selected(Box<Assignment>),
    /// Not now.
    RetryLater {
        /// When to check in again.
        after: Duration,
        /// Why, for people.
        reason: String,
    },
    /// The task has run all its rounds.
    Finished,
}

/// A client's reply for the next phase, ready once a phase closes.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Phase 0 → 1: the advertisements of the client's share holders (made once, when the
    /// phase closed; a reply shares it).
    Keys(Arc<KeysForward>),
    /// Phase 1 → 1½: the ciphertexts addressed to the client (shared likewise).
    Shares(Arc<SharesForward>),
    /// Phase 1½ → 2: E — one message for every sender of complaints, shared.
    Excluded(Arc<Exclusions>),
    /// Phase 2 → 3: U3 — one message for every client in it, shared.
    Survivors(Arc<ConsistencyRequest>),
    /// Phase 3 → 4: U3 and the signatures on it — one message for every signer, shared.
    Unmask(Arc<UnmaskingRequest>),
    /// After phase 4: how the round ended.
    Result(Box<RoundOutcome>),
}

/// How one attempt of a round ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundOutcome {
    /// The round.
    pub round_id: RoundId,
    /// The attempt.
    pub attempt: AttemptNonce,
    /// Its context.
    pub ctx: RoundContext,
    /// True if the sum was computed and the new checkpoint stored.
    pub completed: bool,
    /// The new checkpoint's version, when completed.
    pub new_checkpoint_version: Option<u64>,
    /// Why the attempt aborted, when it did.
    pub abort_reason: Option<AbortReason>,
    /// |U|, |U1|, |U2|, |U3|, |U4|, and the number of clients that revealed shares — as far as
    /// the attempt got.
    pub set_sizes: Vec<usize>,
    /// Seconds each phase stayed open, as far as the attempt got.
    pub phase_seconds: Vec<f64>,
    /// Bytes of masked input received (all chunks, retries included).
    pub upload_bytes: u64,
}

impl RoundOutcome {
    /// |U3|: the clients whose inputs are in the sum (the size phase 2's close fixed).
    pub fn participants(&self) -> usize {
        self.set_sizes.get(Phase::MaskedInputCollection.index() + 1).copied().unwrap_or(0)
    }
}

/// What the caller must do outside the engine.
#[derive(Debug)]
pub enum Output {
    /// Compute the finishing attempt's sum ([`Aggregation::run`], off the thread that serves
    /// the engine's other callers), then call [`Engine::aggregated`] with it.
    Aggregate(Aggregation),
    /// Store this checkpoint durably, then call [`Engine::checkpoint_committed`].
    Checkpoint(NewCheckpoint),
    /// Record this in the audit log.
    Audit(AuditEvent),
    /// Tell the operator (the coordinator's log).
    Progress(Progress),
    /// A phase closed: save this durably, then call [`Engine::attempt_saved`]; until then the
    /// phase's replies are held back (only with [`Engine::saving_attempts`]).
    ///
    /// [`Engine::attempt_saved`]: super::Engine::attempt_saved
    /// [`Engine::saving_attempts`]: super::Engine::saving_attempts
    SaveAttempt(Box<super::SavedAttempt>),
    /// The attempt `ctx` ended (completed, or aborted): its saved state, if any, can go.
    AttemptEnded(RoundContext),
}

/// How the task goes, for the operator's log.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Selection waits for clients: a round starts at once when `start_at` have checked in,
    /// or at the selection deadline with `min_clients` or more.
    Waiting {
        /// The round selection is for.
        round_id: RoundId,
        /// Clients checked in and waiting.
        waiting: usize,
        /// ⌈clients_per_round × over_selection⌉.
        start_at: usize,
        /// The task's `min_clients`.
        min_clients: usize,
        /// The task's `clients_per_round`.
        clients_per_round: usize,
        /// The task's `over_selection`.
        over_selection: f64,
    },
    /// An attempt ended, completed or aborted.
    Ended(Box<RoundOutcome>),
    /// The task ran all its rounds.
    Finished {
        /// Rounds completed.
        rounds: u64,
        /// The final checkpoint's version.
        checkpoint_version: u64,
    },
}

/// A checkpoint produced by a completed round.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCheckpoint {
    /// Its version (the parent's + 1).
    pub version: u64,
    /// The version it was trained from.
    pub parent_version: u64,
    /// The model as safetensors bytes.
    pub bytes: Arc<Vec<u8>>,
    /// SHA-256 of `bytes`.
    pub sha256: CheckpointHash,
    /// The round that produced it.
    pub round_id: RoundId,
    /// A line for people: the round, its participants.
    pub summary: String,
}

/// Something the audit log records. Holds ids, counts and reasons — never a secret key or any
/// client's vector; a complaint's evidence holds the key-agreement value K the complainer
/// revealed and the disputed ciphertext (which is why the log is access-restricted).
#[derive(Debug, Clone, PartialEq)]
pub enum AuditEvent {
    /// A client checked in for the first time.
    Enrollment {
        /// The client.
        client: ClientId,
    },
    /// An attempt started.
    RoundStarted {
        /// The round.
        round_id: RoundId,
        /// The attempt.
        attempt: AttemptNonce,
        /// |U|.
        selected: usize,
        /// Degree k.
        degree: u32,
        /// Threshold t.
        threshold: u32,
    },
    /// An attempt completed.
    RoundCompleted {
        /// The round.
        round_id: RoundId,
        /// The attempt.
        attempt: AttemptNonce,
        /// |U3|.
        participants: usize,
        /// The new checkpoint's version.
        checkpoint_version: u64,
    },
    /// An attempt aborted.
    RoundAborted {
        /// The round.
        round_id: RoundId,
        /// The attempt.
        attempt: AttemptNonce,
        /// Why.
        reason: AbortReason,
    },
    /// Too few eligible clients remain for a round on the current checkpoint: every other
    /// client that ever checked in has contributed on it.
    TaskStalled {
        /// The current checkpoint's version.
        checkpoint_version: u64,
        /// Clients that ever checked in and have not contributed on it.
        eligible: usize,
        /// Clients that contributed on it.
        contributed: usize,
        /// Clients that have seen a newer checkpoint (they refuse this one as a rollback).
        ahead: usize,
        /// The newest version clients reported having seen, past the highest reports that as
        /// many clients as the task assumes corrupt could have made up.
        highest_reported: u64,
        /// The task's `min_clients`.
        min_clients: usize,
    },
    /// A holder sent a share that did not reconstruct; it was left out.
    MisbehavingHolder {
        /// The round.
        round_id: RoundId,
        /// The holder.
        client: ClientId,
    },
    /// A complaints message (protocol v2) with what judging it took and the judgements made.
    Complaints {
        /// The round.
        round_id: RoundId,
        /// The attempt.
        attempt: AttemptNonce,
        /// The record `audit verify` re-judges.
        record: Box<fedsec_crypto::secagg::complaints::AuditedComplaints>,
    },
    /// Phase 1½ closed with these clients excluded (E; protocol v2).
    Excluded {
        /// The round.
        round_id: RoundId,
        /// The attempt.
        attempt: AttemptNonce,
        /// E.
        excluded: Vec<ClientId>,
    },
}

/// A snapshot of the task for status calls and progress displays.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// What the engine is doing.
    pub state: EngineState,
    /// The current (or next) round id.
    pub round_id: RoundId,
    /// The open phase, when a round runs.
    pub phase: Option<Phase>,
    /// Clients waiting for selection.
    pub waiting: usize,
    /// The current checkpoint's version.
    pub checkpoint_version: u64,
    /// Rounds completed so far.
    pub completed_rounds: u64,
    /// Why no round can run on the current checkpoint, if none can: too few eligible clients
    /// remain ([`Engine::stalled`](super::Engine::stalled)).
    pub stalled: Option<String>,
}

/// What a task's engine is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineState {
    /// Waiting for enough clients to check in.
    Selecting,
    /// An attempt is running (its phase is in [`Status::phase`]).
    Running,
    /// The unmasking closed; the sum and the new checkpoint are being computed.
    Aggregating,
    /// The sum is computed; the new checkpoint is being stored.
    Committing,
    /// The task has run all its rounds.
    Finished,
}

impl EngineState {
    /// Its name, as status calls and logs show it.
    pub const fn name(self) -> &'static str {
        match self {
            EngineState::Selecting => "selecting",
            EngineState::Running => "running",
            EngineState::Aggregating => "aggregating",
            EngineState::Committing => "committing",
            EngineState::Finished => "finished",
        }
    }
}

impl core::fmt::Display for EngineState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`Engine::share_keys_route`](super::Engine::share_keys_route) made of a ShareKeys.
#[derive(Debug)]
pub enum ShareKeysRoute {
    /// Answered without a check.
    Answered(crate::error::Result<()>),
    /// The same message is being checked: ask again once its verdict is in (the receiver
    /// sees its sender dropped then).
    Pending(fedsec_crypto::secagg::messages::ShareKeys, tokio::sync::watch::Receiver<()>),
    /// To check off the engine with this checker; the verdict goes back through
    /// [`Engine::checked_share_keys`](super::Engine::checked_share_keys).
    Check(
        fedsec_crypto::secagg::server::ShareKeysCheck,
        fedsec_crypto::secagg::messages::ShareKeys,
    ),
}
