//! The coordinator's side of `fedsec-wire`: decoding with the coordinator's [`Error`] (so a
//! malformed message maps to its status in the one place all errors do), and the one wire
//! message no core type describes — how an attempt ended, as the engine's [`RoundOutcome`]
//! reports it. Every conversion itself lives in `fedsec-wire`, shared with the client.

use fedsec_crypto::{ClientId, TaskId};
use fedsec_proto::v1;
use fedsec_wire::{PhaseMessage, RoundKey};

use crate::engine::RoundOutcome;
use crate::error::Result;

/// A request of one phase, sent by `sender` (as TLS authenticated it).
pub fn decode<M: PhaseMessage>(proto: &M::Proto, sender: ClientId) -> Result<M> {
    Ok(M::from_wire(proto, sender)?)
}

/// The attempt a request names.
pub fn round_key(r: Option<&v1::RoundRef>) -> Result<RoundKey> {
    Ok(RoundKey::from_ref(r)?)
}

/// A task id field.
pub fn task_id(bytes: &[u8]) -> Result<TaskId> {
    Ok(fedsec_wire::task_id(bytes)?)
}

/// How an attempt ended.
pub fn result_to_wire(r: &RoundOutcome, task: TaskId) -> v1::RoundResult {
    v1::RoundResult {
        round: Some(RoundKey { task, round: r.round_id, attempt: r.attempt, ctx: r.ctx }.to_wire()),
        completed: r.completed,
        new_checkpoint_version: r.new_checkpoint_version.unwrap_or(0),
        participants: r.participants() as u32,
        abort_reason: r.abort_reason.clone().unwrap_or_default(),
        set_sizes: r.set_sizes.iter().map(|&s| s as u32).collect(),
        phase_seconds: r.phase_seconds.clone(),
    }
}
