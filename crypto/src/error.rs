//! The one error type of the crate. Each variant names the rule that was broken.

use crate::ids::ClientId;
use crate::sign::CredentialRefusal;

/// Everything that can go wrong in the secure aggregation core.
///
/// Variants name the protocol rule they enforce (see `DESIGN.md`, "The secure aggregation
/// protocol"), so a refusal can be mapped to a precise status at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- round plan and context ----
    /// The message or plan was made for another protocol version.
    #[error("protocol version {got} is not supported (this build speaks {supported})")]
    UnsupportedVersion { got: u32, supported: u32 },
    /// The plan is internally inconsistent (unsorted or duplicate ids, bad degree...).
    #[error("invalid round plan: {0}")]
    InvalidPlan(String),
    /// The plan is below the floor this client's own configuration fixes.
    #[error("round plan below this client's floor: {0}")]
    PlanBelowFloor(String),
    /// The plan's (k, t) are below what the client computes from (n, δ, γ, class).
    #[error(
        "round plan uses degree {degree} and threshold {threshold}, below the required degree {need_degree} and threshold {need_threshold}"
    )]
    PlanBelowRequired { degree: u32, threshold: u32, need_degree: u32, need_threshold: u32 },
    /// Given (k, t) miss the targets the parameter finder searches for (`params::check`).
    #[error("degree {degree} and threshold {threshold} do not meet the targets: {reason}")]
    ParametersMissTargets { degree: u32, threshold: u32, reason: String },
    /// A non-curious plan must have q > (n + n_C)/2, or the consistency check is void.
    #[error(
        "threshold q = {q} does not exceed (n + n_C)/2 = ({n} + {n_c})/2: two views of U3 could both be signed"
    )]
    ConsistencyRuleBroken { q: u32, n: u32, n_c: u32 },
    /// The plan trains on another checkpoint than the one this client verified.
    #[error("the plan's checkpoint hash is not the checkpoint this client verified")]
    CheckpointMismatch,
    /// The client already uploaded a masked input for this checkpoint (one per checkpoint).
    #[error("this client already contributed a masked input on this checkpoint")]
    AlreadyContributedOnCheckpoint,
    /// A message belongs to another round or attempt.
    #[error("message is bound to another round context")]
    WrongContext,
    /// A client id is not in the selected set U.
    #[error("client {0} is not in the round's selected set")]
    NotSelected(ClientId),

    // ---- phases ----
    /// A message arrived in a phase that does not accept it.
    #[error("out of phase: expected {expected}, got a message for {got}")]
    OutOfPhase { expected: &'static str, got: &'static str },
    /// A phase already answered got a different message than the first one.
    #[error("phase {0} was already answered with a different message")]
    PhaseAlreadyAnswered(&'static str),
    /// The same client sent twice in one phase with different content.
    #[error("duplicate message from client {0}")]
    DuplicateClient(ClientId),
    /// A message claims another sender than the authenticated peer that sent it.
    #[error(
        "message claims to come from {claimed}, but the authenticated sender is {authenticated}"
    )]
    SenderMismatch { claimed: ClientId, authenticated: ClientId },
    /// Too many masked inputs are being received at once.
    #[error("{limit} masked inputs are already being received; retry later")]
    TooManyUploadsInFlight { limit: usize },
    /// The client may not send in this phase (not in the set the phase runs over).
    #[error("client {client} may not send in {phase}: it is not in the set this phase runs over")]
    NotEligible { client: ClientId, phase: &'static str },
    /// A ShareKeys message does not carry exactly one ciphertext per neighbour in U1.
    #[error("ShareKeys from {client} does not cover its neighbours: {detail}")]
    IncompleteShares { client: ClientId, detail: String },
    /// The client's masked input was already complete and added to the sum.
    #[error("masked input of client {0} is already complete")]
    UploadComplete(ClientId),
    /// The round was aborted before, by the refusal it carries; nothing more is accepted.
    #[error("the round was aborted: {0}")]
    Aborted(Box<Error>),
    /// The coordinator abandoned the attempt for a reason outside the protocol (its sum did not
    /// become a model); nothing more is accepted.
    #[error("the coordinator abandoned the attempt")]
    Abandoned,
    /// The in-memory driver ended the round before the server computed the sum.
    #[error("the round ended before the server computed the sum")]
    Unfinished,
    /// Fewer clients than q = max(t, ⌈(1−δ)n⌉) remain.
    #[error("only {have} clients remain in {phase}, the round needs {need}")]
    TooFewClients { phase: &'static str, have: usize, need: usize },
    /// Fewer than t holders responded for a secret the server needs.
    #[error("secret of client {client} has {have} shares, threshold is {need}")]
    ShareCountBelowThreshold { client: ClientId, have: usize, need: usize },
    /// Fewer than t of a client's share holders remain.
    #[error("only {have} of this client's share holders remain, threshold is {need}")]
    TooFewNeighbours { have: usize, need: usize },

    // ---- authentication and integrity ----
    /// The certificate / credential does not verify or does not match the claimed id.
    #[error("credential of client {client} rejected: {reason}")]
    BadCredential { client: ClientId, reason: CredentialRefusal },
    /// An Ed25519 signature did not verify.
    #[error("signature of client {0} does not verify")]
    BadSignature(ClientId),
    /// A public key is malformed or the identity point.
    #[error("public key of client {0} is malformed or the identity")]
    BadPublicKey(ClientId),
    /// A share ciphertext did not authenticate.
    #[error("share ciphertext from client {0} does not authenticate")]
    BadCiphertext(ClientId),
    /// A message came from or refers to a client that is not a neighbour.
    #[error("client {0} is not a neighbour in the round's graph")]
    NotNeighbour(ClientId),
    /// The server forwarded keys that do not match the graph (extra, missing, altered).
    #[error("forwarded keys are inconsistent: {0}")]
    InconsistentForward(String),
    /// A reconstructed secret does not match its published point.
    #[error("reconstructed {what} of client {client} does not match its public key")]
    ReconstructionMismatch { client: ClientId, what: &'static str },
    /// The server asked for something that contradicts the U3 this client signed.
    #[error("unmasking request contradicts the signed U3: {0}")]
    ContradictsSignedView(String),
    /// Fewer than q valid consistency signatures on the same U3.
    #[error("only {have} valid consistency signatures on U3, need {need}")]
    TooFewConsistencySignatures { have: usize, need: usize },

    // ---- data ----
    /// A vector has the wrong length.
    #[error("vector length {got}, expected {expected}")]
    WrongLength { got: usize, expected: usize },
    /// A masked-input chunk lies outside the vector or overlaps what was received.
    #[error(
        "masked input chunk at word offset {offset} of {len} words is out of range or overlaps (vector length {dim})"
    )]
    BadChunk { offset: usize, len: usize, dim: usize },
    /// Shamir input is malformed (duplicate x, zero x, too few shares).
    #[error("shamir: {0}")]
    Shamir(String),
    /// A quantization configuration could wrap around Z_2^32.
    #[error("quantization could overflow: {0}")]
    BitBudget(String),
    /// A quantization parameter is out of range.
    #[error("invalid quantization parameters: {0}")]
    InvalidQuantization(String),
    /// No (k, t) meets the privacy and correctness targets for these parameters.
    #[error("no graph parameters meet the security targets: {0}")]
    NoParameters(String),
    /// A wire message could not be decoded.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Result alias.
pub type Result<T, E = Error> = core::result::Result<T, E>;
