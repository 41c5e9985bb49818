//! # fedsec-wire
//!
//! The one place where fedsec's wire types (`fedsec.proto`, crate `fedsec-proto`) meet the
//! protocol core's types (crate `fedsec-crypto`). Each conversion is written once, in both
//! directions, as an implementation of [`Wire`]: the client library encodes its requests and
//! decodes the coordinator's replies with the same code the coordinator uses to decode those
//! requests and encode those replies, so the two ends cannot drift apart. A malformed field
//! fails with a [`WireError`] that names the field and what is wrong with it.
//!
//! It is also the home of the formats both ends share that the IO-free core has no use for:
//! [`checkpoint`] (signed checkpoint manifests, checked before a client trains), [`model`]
//! (models as named f32 tensors in safetensors files) and [`x509`] (clients' certificate
//! chains, checked against the federation CA; the core's
//! [`CredentialVerifier`](fedsec_crypto::sign::CredentialVerifier) implementation). Each has
//! its own error type naming the check that failed.
//!
//! What it does not do: no IO, and for protocol messages no checks beyond the shape of each
//! field (lengths, presence, known enum values). Whether a message is *valid* — a signature, a
//! key, a plan below a client's floor — is the protocol core's to decide.
//!
//! A wire message carries its attempt (a [`v1::RoundRef`]) but not its sender: the coordinator
//! knows the sender from the TLS handshake, a client knows it is the recipient. Decoding
//! therefore takes that party as `peer`:
//!
//! ```
//! use fedsec_crypto::secagg::messages::ConsistencySignature;
//! use fedsec_crypto::{AttemptNonce, ClientId, RoundContext, RoundId, TaskId, PROTOCOL_VERSION};
//! use fedsec_crypto::secagg::messages::Sig;
//! use fedsec_wire::{PhaseMessage, RoundKey};
//!
//! let key = RoundKey {
//!     task: TaskId([1; 16]),
//!     round: RoundId(7),
//!     attempt: AttemptNonce([2; 16]),
//!     ctx: RoundContext([3; 32]),
//! };
//! let me = ClientId([4; 32]);
//! let signed = ConsistencySignature {
//!     version: PROTOCOL_VERSION,
//!     ctx: key.ctx,
//!     client: me,
//!     signature: Sig([5; 64]),
//! };
//! let request = signed.to_wire(&key); // a v1::ConsistencyCheckRequest
//! assert_eq!(ConsistencySignature::from_wire(&request, me).unwrap(), signed);
//! ```

#![forbid(unsafe_code)]

pub mod at_rest;
pub mod checkpoint;
mod error;
pub mod model;
mod phases;
mod plan;
pub mod x509;

use fedsec_crypto::{AttemptNonce, ClientId, RoundContext, RoundId, TaskId};
pub use fedsec_proto::v1;

pub use error::{Reason, WireError};
pub use phases::chunks;
pub use plan::{
    Assignment, adversary_from_wire, adversary_to_wire, graph_from_wire, graph_to_wire,
};

/// Result alias.
pub type Result<T, E = WireError> = core::result::Result<T, E>;

/// A core type with a wire form of its own, converted both ways by one implementation.
pub trait Wire: Sized {
    /// The wire message.
    type Proto: prost::Message + Default;

    /// The wire form.
    fn to_wire(&self) -> Self::Proto;

    /// The core form; a malformed field is named in the error.
    fn from_wire(proto: &Self::Proto) -> Result<Self>;
}

/// A protocol message of one attempt, converted both ways by one implementation.
///
/// Its wire form names the attempt (a [`v1::RoundRef`]) but not the party that the receiver
/// already knows: the sender of a request (the coordinator's TLS layer authenticated it), or
/// the recipient of a reply (the client decoding it). Decoding takes that party as `peer`.
pub trait PhaseMessage: Sized {
    /// The wire message.
    type Proto: prost::Message + Default;

    /// The wire form, in the attempt `key`.
    fn to_wire(&self, key: &RoundKey) -> Self::Proto;

    /// The core form, sent by (a request) or to (a reply) `peer`; a malformed field is named
    /// in the error.
    fn from_wire(proto: &Self::Proto, peer: ClientId) -> Result<Self>;
}

/// The attempt a message belongs to: task, round, attempt nonce and round context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoundKey {
    /// The task.
    pub task: TaskId,
    /// The round.
    pub round: RoundId,
    /// The attempt.
    pub attempt: AttemptNonce,
    /// Its round context.
    pub ctx: RoundContext,
}

impl RoundKey {
    /// The key of the attempt a plan describes.
    pub fn of(plan: &fedsec_crypto::RoundPlan) -> Self {
        RoundKey {
            task: plan.task_id,
            round: plan.round_id,
            attempt: plan.attempt,
            ctx: plan.context(),
        }
    }

    /// The wire form.
    pub fn to_wire(&self) -> v1::RoundRef {
        v1::RoundRef {
            task_id: self.task.0.to_vec(),
            round_id: self.round.0,
            attempt: self.attempt.0.to_vec(),
            context: self.ctx.0.to_vec(),
        }
    }

    /// The `round` field every phase message carries.
    pub fn from_ref(r: Option<&v1::RoundRef>) -> Result<Self> {
        let r = r.ok_or(WireError { field: "round", reason: Reason::Missing })?;
        Ok(RoundKey {
            task: TaskId(fixed("round.task_id", &r.task_id)?),
            round: RoundId(r.round_id),
            attempt: AttemptNonce(fixed("round.attempt", &r.attempt)?),
            ctx: RoundContext(fixed("round.context", &r.context)?),
        })
    }
}

/// A task id field.
pub fn task_id(bytes: &[u8]) -> Result<TaskId> {
    Ok(TaskId(fixed("task_id", bytes)?))
}

/// A fixed-length byte field.
pub(crate) fn fixed<const N: usize>(field: &'static str, bytes: &[u8]) -> Result<[u8; N]> {
    bytes
        .try_into()
        .map_err(|_| WireError { field, reason: Reason::Length { got: bytes.len(), expected: N } })
}

/// A client id field.
pub(crate) fn client_id(field: &'static str, bytes: &[u8]) -> Result<ClientId> {
    Ok(ClientId(fixed(field, bytes)?))
}
