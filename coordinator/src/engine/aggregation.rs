//! The end of an attempt that reached its sum: reconstruct the masks, decode, average, apply,
//! serialize and hash the new checkpoint — the seconds of work of a round (d = 1M: about a
//! second), handed out of the engine so that it runs on a worker thread rather than where the
//! engine's other callers wait.
//!
//! When the unmasking closes, the engine moves the attempt into an [`Aggregation`] and emits
//! [`Output::Aggregate`](super::Output::Aggregate); the caller runs it
//! ([`Aggregation::run`], which needs nothing but itself) and hands the result back with
//! [`Engine::aggregated`](super::Engine::aggregated). Meanwhile the engine answers as a round
//! that is finishing: the plan stays visible, late identical unmasking messages are recognised,
//! and the result is not published before the checkpoint is stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use fedsec_crypto::quant::QuantParams;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::{CheckpointHash, ClientId, RoundContext};
use fedsec_wire::model::Model;
use sha2::{Digest, Sha256};

use super::attempt::Attempt;
use super::types::{Assignment, NewCheckpoint, RoundOutcome};
use crate::error::{AbortReason, Result};

/// What the engine keeps of an attempt while its sum is computed elsewhere.
#[derive(Debug)]
pub(super) struct Finishing {
    pub(super) ctx: RoundContext,
    pub(super) info: Assignment,
    /// The digests of the unmasking messages received (an identical resend is recognised).
    pub(super) unmasked: BTreeMap<ClientId, [u8; 32]>,
    /// The attempt's outcome as far as it got, should the sum never come back.
    pub(super) outcome: RoundOutcome,
}

impl Finishing {
    pub(super) fn of(attempt: &Attempt) -> Self {
        Finishing {
            ctx: attempt.ctx,
            info: attempt.info.clone(),
            unmasked: attempt.answered[Phase::Unmasking.index()].clone(),
            outcome: attempt.outcome(false, None, None),
        }
    }
}

/// The work of an attempt's sum. Run it with [`Aggregation::run`] (anywhere: it owns all it
/// needs) and hand the result to [`Engine::aggregated`](super::Engine::aggregated).
pub struct Aggregation {
    pub(super) attempt: Box<Attempt>,
    pub(super) model: Arc<Model>,
    pub(super) quant: QuantParams,
    pub(super) server_learning_rate: f32,
    pub(super) task_name: String,
    pub(super) parent_version: u64,
}

impl core::fmt::Debug for Aggregation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Aggregation")
            .field("round", &self.attempt.info.plan.round_id.0)
            .field("dim", &self.attempt.info.plan.dim)
            .finish_non_exhaustive()
    }
}

/// The result of an [`Aggregation`]: the new model and its checkpoint, or why the attempt
/// aborts.
pub struct Aggregated {
    pub(super) attempt: Box<Attempt>,
    pub(super) result: core::result::Result<(Model, NewCheckpoint), AbortReason>,
    pub(super) misbehaving: Vec<ClientId>,
}

impl core::fmt::Debug for Aggregated {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Aggregated")
            .field("round", &self.attempt.info.plan.round_id.0)
            .field("completed", &self.result.is_ok())
            .finish_non_exhaustive()
    }
}

impl Aggregation {
    /// The attempt whose sum this is.
    pub fn ctx(&self) -> RoundContext {
        self.attempt.ctx
    }

    /// Reconstructs, decodes, averages and applies the sum; serializes and hashes the new
    /// checkpoint. CPU-bound (the kernel uses the engine's thread pool, if it has one).
    pub fn run(mut self) -> Aggregated {
        let sum = match self.attempt.server.finish() {
            Ok(sum) => sum,
            Err(e) => {
                // Holders whose shares failed their commitments are named on an abort too:
                // their lying may be why too few shares remained.
                let misbehaving =
                    self.attempt.server.misbehaving_holders().iter().copied().collect();
                return Aggregated {
                    attempt: self.attempt,
                    result: Err(AbortReason::Protocol(e)),
                    misbehaving,
                };
            }
        };
        let misbehaving = self.attempt.server.misbehaving_holders().iter().copied().collect();
        let result = self.checkpoint(&sum);
        Aggregated { attempt: self.attempt, result, misbehaving }
    }

    fn checkpoint(&self, sum: &[u32]) -> core::result::Result<(Model, NewCheckpoint), AbortReason> {
        let model = self.apply(sum).map_err(|e| AbortReason::SumDoesNotDecode(Box::new(e)))?;
        if model.weights_hash() == self.model.weights_hash() {
            return Err(AbortReason::WeightsUnchanged);
        }
        let bytes = model.to_safetensors().map_err(AbortReason::ModelDoesNotSerialize)?;
        let plan = &self.attempt.info.plan;
        let checkpoint = NewCheckpoint {
            version: self.parent_version + 1,
            parent_version: self.parent_version,
            sha256: CheckpointHash(Sha256::digest(&bytes).into()),
            bytes: Arc::new(bytes),
            round_id: plan.round_id,
            summary: format!(
                "round {} of task {}: {} of {} selected clients summed",
                plan.round_id.0,
                self.task_name,
                self.attempt.server.u3().len(),
                plan.selected.len()
            ),
        };
        Ok((model, checkpoint))
    }

    /// θ + η · (Σ w·x / Σ w).
    fn apply(&self, sum: &[u32]) -> Result<Model> {
        let average = self.quant.weighted_average(sum)?;
        let eta = self.server_learning_rate;
        let theta = self.model.flatten();
        let next: Vec<f32> = theta.iter().zip(&average).map(|(t, u)| t + eta * u).collect();
        Ok(self.model.with_flat(&next)?)
    }
}
