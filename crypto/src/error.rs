//! The one error type of the crate. Each variant names the rule that was broken.

use crate::context::AdversaryClass;
use crate::ids::ClientId;
use crate::secagg::Phase;
use crate::sign::CredentialRefusal;

/// Everything that can go wrong in the secure aggregation core.
///
/// Variants name the protocol rule they enforce (see `DESIGN.md`, "The secure aggregation
/// protocol"), so a refusal can be mapped to a precise status at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- round plan and context ----
    /// The plan's certificate instant T is too far from this client's clock.
    #[error(
        "the plan validates certificates at {cert_time} (Unix seconds), {} s from this client's clock ({now}); at most {max_skew} s is allowed",
        cert_time.abs_diff(*now)
    )]
    CertTimeSkew { cert_time: u64, now: u64, max_skew: u64 },
    /// The message or plan was made for another protocol version.
    #[error("protocol version {got} is not supported (this build speaks {supported})")]
    UnsupportedVersion { got: u32, supported: u32 },
    /// The plan is internally inconsistent: the rule it breaks.
    #[error("invalid round plan: {0}")]
    InvalidPlan(PlanRule),
    /// The plan is below the floor this client's own configuration fixes: which floor.
    #[error("round plan below this client's floor: {0}")]
    PlanBelowFloor(Floor),
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
    /// The client already uploaded a masked input for this version of the task's model, or a
    /// newer one: it contributes once per version, to ever newer versions.
    #[error(
        "this client already contributed on version {newest} of this task's model; version {version} is not newer"
    )]
    AlreadyContributedOnVersion {
        /// The version the round trains on.
        version: u64,
        /// The newest version the client contributed on.
        newest: u64,
    },
    /// The client already uploaded a masked input trained on these very weights (under
    /// another checkpoint hash or version).
    #[error("this client already contributed a masked input trained on these same weights")]
    AlreadyContributedOnWeights,
    /// A message belongs to another round or attempt.
    #[error("message is bound to another round context")]
    WrongContext,
    /// A client id is not in the selected set U.
    #[error("client {0} is not in the round's selected set")]
    NotSelected(ClientId),

    // ---- phases ----
    /// A message arrived in a phase that does not accept it.
    /// (`expected` is where the state machine stands: a phase's name, or a terminal state's.)
    #[error("out of phase: expected {expected}, got a message for {got}")]
    OutOfPhase { expected: &'static str, got: Phase },
    /// A phase already answered got a different message than the first one.
    #[error("phase {0} was already answered with a different message")]
    PhaseAlreadyAnswered(Phase),
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
    NotEligible { client: ClientId, phase: Phase },
    /// A ShareKeys message does not carry exactly one ciphertext per neighbour in U1.
    #[error("ShareKeys from {client} does not cover its neighbours: {problem}")]
    IncompleteShares { client: ClientId, problem: SharesProblem },
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
    /// A saved attempt does not fit its plan or is inconsistent in itself (it cannot resume).
    #[error("the saved attempt cannot resume: {0}")]
    SavedStateInconsistent(&'static str),
    /// The in-memory driver ended the round before the server computed the sum.
    #[error("the round ended before the server computed the sum")]
    Unfinished,
    /// Fewer clients than q = max(t, ⌈(1−δ)n⌉) remain.
    #[error("only {have} clients remain in {phase}, the round needs {need}")]
    TooFewClients { phase: Phase, have: usize, need: usize },
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
    /// An advertised key's proof of knowledge does not verify (protocol v2).
    #[error("client {client}'s proof of knowledge of its {role} key does not verify")]
    BadKeyProof { client: ClientId, role: crate::proofs::KeyRole },
    /// A share the dealer signed is bad: it does not decrypt, or its shares are not canonical
    /// or do not match their commitments (the dealer's fault; protocol v2).
    #[error("the share dealt by client {dealer} is bad: {why}")]
    BadShare { dealer: ClientId, why: crate::secagg::commitments::Bad },
    /// A forwarded share is not what its dealer signed: the server tampered with it.
    #[error("the share forwarded from client {dealer} is not what it signed: {why}")]
    TamperedShare { dealer: ClientId, why: crate::secagg::commitments::Malformed },
    /// The server's judgement of the complaints excluded this client (protocol v2).
    #[error("the server's judgement of the complaints excluded this client from the attempt")]
    Excluded,
    /// This client complained about a dealer that the excluded set does not hold, while this
    /// client is not in it either: the server did not judge its complaint (protocol v2).
    #[error("this client's complaint about {0} is missing from the server's judgement")]
    ComplaintIgnored(ClientId),
    /// After the exclusions, fewer than t of a client's share holders remain in U2 \ E: its
    /// secrets could not be rebuilt (protocol v2).
    #[error("client {client} has {have} share holders left after the exclusions, {need} needed")]
    HolderShortfall { client: ClientId, have: usize, need: usize },
    /// A message came from or refers to a client that is not a neighbour.
    #[error("client {0} is not a neighbour in the round's graph")]
    NotNeighbour(ClientId),
    /// The server forwarded keys that do not match the graph (extra, missing, altered).
    #[error("forwarded keys are inconsistent: {0}")]
    InconsistentForward(ForwardFault),
    /// A reconstructed secret does not match its published point.
    #[error("reconstructed {what} of client {client} does not match its public key")]
    ReconstructionMismatch { client: ClientId, what: &'static str },
    /// The server asked for something that contradicts the U3 this client signed.
    #[error("unmasking request contradicts the signed U3: {0}")]
    ContradictsSignedView(ViewContradiction),
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
    /// Shamir input is malformed (duplicate x, zero x, too few shares), or a reconstruction
    /// does not match.
    #[error("shamir: {0}")]
    Shamir(ShamirRule),
    /// A quantization configuration could wrap around Z_2^32.
    #[error("quantization could overflow: {0}")]
    BitBudget(String),
    /// A quantization parameter or input is out of range: the rule it breaks.
    #[error("invalid quantization: {0}")]
    InvalidQuantization(QuantRule),
    /// No (k, t) meets the privacy and correctness targets for these parameters.
    #[error("no graph parameters meet the security targets: {0}")]
    NoParameters(String),
    /// A message could not be decoded, or holds what its sender may not send.
    #[error("malformed message: {0}")]
    Malformed(Malformation),
}

/// The rule an inconsistent round plan (or graph) breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanRule {
    /// Fewer than two clients are selected.
    #[error("selected set has {0} clients, need at least 2")]
    TooFewSelected(usize),
    /// The selected ids are not strictly increasing.
    #[error("selected set is not sorted by id without duplicates")]
    UnsortedSelection,
    /// A fraction is not below one (in parts per million).
    #[error(
        "dropout and corrupt fractions must be below 1 (got {dropout_ppm} and {corrupt_ppm} ppm)"
    )]
    Fractions { dropout_ppm: u32, corrupt_ppm: u32 },
    /// The vector to aggregate is empty.
    #[error("vector length is zero")]
    EmptyVector,
    /// A complete graph's degree is not n − 1.
    #[error("the complete graph over {n} clients has degree {}, not {degree}", .n.saturating_sub(1))]
    CompleteDegree { n: usize, degree: usize },
    /// A fully malicious server needs the complete graph.
    #[error("a fully malicious server requires the complete graph")]
    MaliciousNeedsComplete,
    /// A Harary degree is odd, zero, or not below n.
    #[error("Harary degree {degree} over {n} nodes must be even and in 2..={}", .n.saturating_sub(1))]
    HararyDegree { n: usize, degree: usize },
    /// The threshold is outside 1..=holders (a client's neighbours and itself).
    #[error("threshold {threshold} must be in 1..={holders}, the share holders")]
    Threshold { threshold: usize, holders: usize },
    /// A graph needs two nodes.
    #[error("a graph needs at least 2 nodes, got {0}")]
    TooFewNodes(usize),
    /// A graph's nodes are indexed by u32.
    #[error("{0} nodes do not fit the u32 index space")]
    TooManyNodes(usize),
}

/// The floor of a client's policy that a round plan is below.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Floor {
    /// The plan assumes a weaker adversary than the client's minimum.
    #[error("adversary class {plan:?} is weaker than this client's minimum {min:?}")]
    Adversary { plan: AdversaryClass, min: AdversaryClass },
    /// The plan assumes fewer corrupt clients than the client's minimum.
    #[error("assumed corrupt fraction {plan_ppm} ppm is below this client's minimum {min_ppm} ppm")]
    CorruptFraction { plan_ppm: u32, min_ppm: u32 },
    /// The plan assumes more dropouts than the client's maximum.
    #[error("assumed dropout {plan_ppm} ppm is above this client's maximum {max_ppm} ppm")]
    Dropout { plan_ppm: u32, max_ppm: u32 },
    /// The plan selects fewer clients than the client requires.
    #[error("{selected} selected clients, this client requires at least {min}")]
    Clients { selected: usize, min: usize },
    /// The plan may sum fewer inputs than the client requires.
    #[error("⌈(1−δ)n⌉ = {surviving} surviving inputs, this client requires at least {min}")]
    Surviving { surviving: usize, min: usize },
}

/// The rule a quantization parameter or input breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantRule {
    /// The clip or a scale is not finite and positive.
    #[error("clip and scales must be finite and positive")]
    NotFinitePositive,
    /// `max_examples` is 0.
    #[error("max_examples must be at least 1")]
    NoExamples,
    /// A round of no clients.
    #[error("a round has at least one client")]
    NoClients,
    /// An update value is NaN or infinite.
    #[error("update[{index}] is not finite: only finite values can be quantized")]
    NotFinite { index: usize },
    /// A sum without its weight coordinate.
    #[error("empty sum: a quantized vector always ends with the weight coordinate")]
    EmptySum,
    /// The sum of weights is not positive.
    #[error(
        "the sum of weights is not positive: no client contributed, there is nothing to average"
    )]
    NoWeight,
}

/// How a ShareKeys message fails to hold one ciphertext per neighbour in U1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SharesProblem {
    /// A ciphertext for a neighbour that did not advertise keys.
    #[error("ciphertext for {0} who did not advertise keys")]
    NotAdvertised(ClientId),
    /// A ciphertext of the wrong length.
    #[error("ciphertext for {to} has {got} bytes, expected {expected}")]
    CiphertextLength { to: ClientId, got: usize, expected: usize },
    /// Two ciphertexts for one neighbour.
    #[error("two ciphertexts for {0}")]
    Duplicate(ClientId),
    /// Not one ciphertext per neighbour in U1.
    #[error("{got} ciphertexts for {expected} neighbours in U1")]
    Count { got: usize, expected: usize },
    /// Fewer than t holders in H(u)∩U1 (the dealer included): the dealer's own rule.
    #[error("{have} holders in U1 hold shares, threshold is {need}")]
    TooFewHolders { have: usize, need: usize },
    /// Not one entry per holder of H(u)∩U1.
    #[error("{got} commitment entries for {expected} holders")]
    EntryCount { got: usize, expected: usize },
    /// An entry names another holder than the one at its place in canonical order.
    #[error("commitment entry {position} names another holder than {expected}")]
    EntryHolder { position: usize, expected: ClientId },
    /// An entry names another ciphertext than the one sent for its holder.
    #[error("the entry for {0} names another ciphertext than the one sent")]
    CiphertextHash(ClientId),
    /// A commitment is not a canonical, non-identity point.
    #[error("a commitment for {0} is not a canonical non-identity point")]
    Commitment(ClientId),
    /// The commitments are not on polynomials of degree below t through B_u and s_u^PK.
    #[error("the commitments fail the degree test")]
    DegreeTest,
}

/// How the keys or shares the server forwarded to a client are inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardFault {
    /// The forwarded keys are addressed to another client.
    #[error("keys addressed to another client")]
    KeysForAnother,
    /// The client's own advertisement came back altered or twice.
    #[error("this client's own advertisement was altered or repeated")]
    OwnAdvertAltered,
    /// The client's own advertisement is not among the forwarded keys.
    #[error("this client's own advertisement is missing")]
    OwnAdvertMissing,
    /// The forwarded shares are addressed to another client.
    #[error("shares addressed to another client")]
    SharesForAnother,
}

/// How what the server says about U3 contradicts what this client knows or signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewContradiction {
    /// U3 leaves out this client, which uploaded its masked input.
    #[error("U3 omits this client, which uploaded")]
    OmitsSelf,
    /// U3 holds a neighbour whose shares never reached this client.
    #[error("U3 contains neighbour {0} whose shares never reached this client")]
    UnsharedNeighbour(ClientId),
    /// The unmasking request is about another U3 than the one this client signed.
    #[error("the unmasking request names another U3 than the one this client signed")]
    OtherU3,
    /// A consistency signature comes from a client outside U3.
    #[error("consistency signature from {0} who is not in U3")]
    SignerOutsideU3(ClientId),
    /// The consistency request names another excluded set E than the one this client masked
    /// under (protocol v2).
    #[error(
        "the consistency request names another excluded set than the one this client masked under"
    )]
    OtherExcludedSet,
    /// U3 holds a member of the excluded set E (protocol v2).
    #[error("U3 contains {0}, a member of the excluded set")]
    ContainsExcluded(ClientId),
}

/// What is wrong with a message's encoding or content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformation {
    /// The bytes are not the encoding of the message.
    #[error("{0}")]
    Encoding(postcard::Error),
    /// A U3 bitmap of the wrong length.
    #[error("U3 bitmap has {got} bytes, {clients} clients need {expected}")]
    BitmapLength { got: usize, clients: usize, expected: usize },
    /// A U3 bitmap with padding bits set.
    #[error("U3 bitmap has bits set past the last client")]
    BitmapPadding,
    /// A self-mask share the server did not ask for (not in U3, or twice).
    #[error("unexpected self-mask share of {0}")]
    UnexpectedSelfMaskShare(ClientId),
    /// A mask-key share the server did not ask for (in U3, never shared, or twice).
    #[error("unexpected mask-key share of {0}")]
    UnexpectedMaskKeyShare(ClientId),
    /// A share that is not a canonical scalar.
    #[error("the share of {0} is not a canonical scalar")]
    NonCanonicalShare(ClientId),
    /// More complaints than the complainer has neighbours that dealt it a share.
    #[error("{got} complaints, but at most {max} dealers dealt this client a share")]
    TooManyComplaints { got: usize, max: usize },
    /// A complaint about its own sender.
    #[error("a client complains about itself")]
    ComplaintAboutSelf,
    /// Complaints not in canonical order of the accused, or two about one dealer.
    #[error("the complaint about {0} is out of order or not the only one about it")]
    ComplaintsOutOfOrder(ClientId),
    /// A complaint's ciphertext or Merkle path is not of a size a share's can be.
    #[error("the evidence of the complaint about {0} is not of a share's size")]
    ComplaintEvidenceSize(ClientId),
}

/// What is wrong with a Shamir split or reconstruction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShamirRule {
    /// The threshold is zero.
    #[error("threshold must be at least 1")]
    ZeroThreshold,
    /// The threshold exceeds the share holders.
    #[error(
        "threshold {threshold} exceeds the {holders} share holders: the secret could never be reconstructed"
    )]
    ThresholdAboveHolders { threshold: usize, holders: usize },
    /// No shares were given.
    #[error("no shares")]
    NoShares,
    /// A share has x = 0, where the secret lives.
    #[error("x-coordinate 0 is where the secret lives")]
    ZeroX,
    /// Two shares have the same x.
    #[error("duplicate x-coordinate {0}")]
    DuplicateX(u32),
    /// The x-coordinates are not increasing.
    #[error("x-coordinates are not sorted: {before} comes before {after}")]
    UnsortedX { before: u32, after: u32 },
    /// The reconstructed secret is not the one its public key commits to.
    #[error("reconstructed secret does not match its public key")]
    Mismatch,
    /// Every draw gave some holder a zero share (protocol v2 commits to each share).
    #[error("every polynomial drawn gave a holder a zero share")]
    ZeroShare,
}

/// Result alias.
pub type Result<T, E = Error> = core::result::Result<T, E>;
