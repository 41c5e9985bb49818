//! The round plan a selected client receives, and the enums it carries.

use std::sync::Arc;
use std::time::Duration;

use fedsec_crypto::quant::QuantParams;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::{
    AdversaryClass, AttemptNonce, CheckpointHash, GraphKind, RoundId, RoundPlan, TaskId,
};
use fedsec_proto::v1;

use crate::{Reason, Result, RoundKey, Wire, WireError, client_id, fixed};

/// A plan and how its round runs: what a selected client needs to take part in an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The plan; its context binds every message of the attempt. Shared: a plan names every
    /// selected client (32 bytes each), and the client's protocol core keeps the same one.
    pub plan: Arc<RoundPlan>,
    /// The version of the checkpoint to train on (its hash is in the plan).
    pub checkpoint_version: u64,
    /// Masked-input chunk size in words.
    pub upload_chunk_words: u32,
    /// Per-phase deadlines, each relative to its phase's start, in [`Phase::ALL`]'s order.
    pub phase_deadlines: [Duration; 6],
}

impl Assignment {
    /// The attempt.
    pub fn key(&self) -> RoundKey {
        RoundKey::of(&self.plan)
    }

    /// The deadline of `phase`, relative to its start.
    pub fn deadline(&self, phase: Phase) -> Duration {
        self.phase_deadlines[phase.index()]
    }
}

/// The wire value of a graph kind.
pub fn graph_to_wire(g: GraphKind) -> v1::GraphKind {
    match g {
        GraphKind::Complete => v1::GraphKind::Complete,
        GraphKind::Harary => v1::GraphKind::Harary,
    }
}

/// The graph kind in field `field`; `None` if the sender left it unspecified (a plan must
/// not; a request may, and its handler then says which default applies).
pub fn graph_from_wire(field: &'static str, value: i32) -> Result<Option<GraphKind>> {
    match v1::GraphKind::try_from(value) {
        Ok(v1::GraphKind::Complete) => Ok(Some(GraphKind::Complete)),
        Ok(v1::GraphKind::Harary) => Ok(Some(GraphKind::Harary)),
        Ok(v1::GraphKind::Unspecified) => Ok(None),
        Err(_) => Err(WireError { field, reason: Reason::UnknownValue(value) }),
    }
}

/// The wire value of an adversary class.
pub fn adversary_to_wire(a: AdversaryClass) -> v1::AdversaryClass {
    match a {
        AdversaryClass::Curious => v1::AdversaryClass::Curious,
        AdversaryClass::SemiMalicious => v1::AdversaryClass::SemiMalicious,
        AdversaryClass::Malicious => v1::AdversaryClass::Malicious,
    }
}

/// The adversary class in field `field`; `None` if unspecified (see [`graph_from_wire`]).
pub fn adversary_from_wire(field: &'static str, value: i32) -> Result<Option<AdversaryClass>> {
    match v1::AdversaryClass::try_from(value) {
        Ok(v1::AdversaryClass::Curious) => Ok(Some(AdversaryClass::Curious)),
        Ok(v1::AdversaryClass::SemiMalicious) => Ok(Some(AdversaryClass::SemiMalicious)),
        Ok(v1::AdversaryClass::Malicious) => Ok(Some(AdversaryClass::Malicious)),
        Ok(v1::AdversaryClass::Unspecified) => Ok(None),
        Err(_) => Err(WireError { field, reason: Reason::UnknownValue(value) }),
    }
}

fn required<T>(field: &'static str, value: i32, v: Result<Option<T>>) -> Result<T> {
    v?.ok_or(WireError { field, reason: Reason::UnknownValue(value) })
}

impl Wire for Assignment {
    type Proto = v1::RoundPlan;

    fn to_wire(&self) -> v1::RoundPlan {
        let p = &self.plan;
        v1::RoundPlan {
            version: p.version,
            task_id: p.task_id.0.to_vec(),
            round_id: p.round_id.0,
            attempt: p.attempt.0.to_vec(),
            selected: p.selected.iter().map(|c| c.0.to_vec()).collect(),
            graph: graph_to_wire(p.graph) as i32,
            degree: p.degree,
            threshold: p.threshold,
            dropout_ppm: p.dropout_ppm,
            corrupt_ppm: p.corrupt_ppm,
            adversary: adversary_to_wire(p.adversary) as i32,
            graph_seed: p.graph_seed.to_vec(),
            dim: p.dim,
            quant: Some(v1::QuantParams {
                clip: p.quant.clip,
                value_scale: p.quant.value_scale,
                weight_scale: p.quant.weight_scale,
                max_examples: p.quant.max_examples,
            }),
            checkpoint_sha256: p.checkpoint.0.to_vec(),
            cert_time: p.cert_time,
            checkpoint_version: self.checkpoint_version,
            upload_chunk_words: self.upload_chunk_words,
            phase_deadline_ms: self
                .phase_deadlines
                .iter()
                .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
                .collect(),
        }
    }

    fn from_wire(p: &v1::RoundPlan) -> Result<Self> {
        let q =
            p.quant.as_ref().ok_or(WireError { field: "plan.quant", reason: Reason::Missing })?;
        let plan = RoundPlan {
            version: p.version,
            task_id: TaskId(fixed("plan.task_id", &p.task_id)?),
            round_id: RoundId(p.round_id),
            attempt: AttemptNonce(fixed("plan.attempt", &p.attempt)?),
            selected: p
                .selected
                .iter()
                .map(|s| client_id("plan.selected", s))
                .collect::<Result<_>>()?,
            graph: required("plan.graph", p.graph, graph_from_wire("plan.graph", p.graph))?,
            degree: p.degree,
            threshold: p.threshold,
            dropout_ppm: p.dropout_ppm,
            corrupt_ppm: p.corrupt_ppm,
            adversary: required(
                "plan.adversary",
                p.adversary,
                adversary_from_wire("plan.adversary", p.adversary),
            )?,
            graph_seed: fixed("plan.graph_seed", &p.graph_seed)?,
            dim: p.dim,
            quant: QuantParams {
                clip: q.clip,
                value_scale: q.value_scale,
                weight_scale: q.weight_scale,
                max_examples: q.max_examples,
            },
            checkpoint: CheckpointHash(fixed("plan.checkpoint_sha256", &p.checkpoint_sha256)?),
            cert_time: p.cert_time,
        };
        let deadlines: [u32; 6] =
            p.phase_deadline_ms.as_slice().try_into().map_err(|_| WireError {
                field: "plan.phase_deadline_ms",
                reason: Reason::Count { got: p.phase_deadline_ms.len(), expected: 6 },
            })?;
        if p.upload_chunk_words == 0 {
            return Err(WireError {
                field: "plan.upload_chunk_words",
                reason: Reason::OutOfRange(0),
            });
        }
        Ok(Assignment {
            plan: Arc::new(plan),
            checkpoint_version: p.checkpoint_version,
            upload_chunk_words: p.upload_chunk_words,
            phase_deadlines: deadlines.map(|ms| Duration::from_millis(u64::from(ms))),
        })
    }
}
