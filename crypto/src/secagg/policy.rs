//! A client's own floor, which no round plan can talk it below, and its record of the
//! checkpoints it has contributed to.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::context::{AdversaryClass, RoundPlan};
use crate::error::{Error, Floor, Result};
use crate::ids::CheckpointHash;

/// The floor a client's own configuration fixes: the server cannot talk it below these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientPolicy {
    /// The weakest adversary class accepted.
    pub min_adversary: AdversaryClass,
    /// The least assumed corrupt fraction γ accepted, in ppm.
    pub min_corrupt_ppm: u32,
    /// The largest assumed dropout δ accepted, in ppm.
    pub max_dropout_ppm: u32,
    /// The smallest selected set |U| accepted.
    pub min_clients: usize,
    /// The smallest ⌈(1−δ)|U|⌉ accepted: the least number of inputs the sum may hide in.
    pub min_surviving: usize,
    /// Upload at most one masked input per checkpoint (DESIGN.md "Once per checkpoint").
    /// Turning this off lets a server that retries a round without client w subtract two
    /// sums and learn x_w; only for tiny federations that accept that cost.
    pub one_input_per_checkpoint: bool,
}

/// The default floor: a semi-malicious server, at least 5 % of clients assumed corrupt, at
/// most half assumed to drop, and a sum over at least 5 inputs. Federations tighten it.
impl Default for ClientPolicy {
    fn default() -> Self {
        ClientPolicy {
            min_adversary: AdversaryClass::SemiMalicious,
            min_corrupt_ppm: 50_000,
            max_dropout_ppm: 500_000,
            min_clients: 8,
            min_surviving: 5,
            one_input_per_checkpoint: true,
        }
    }
}

/// The checkpoints this client has uploaded a masked input for. The caller persists it before
/// sending the masked input, so a restart cannot make the client contribute twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContributionLedger {
    checkpoints: BTreeSet<CheckpointHash>,
}

impl ContributionLedger {
    /// Whether an input was uploaded on `checkpoint`.
    pub fn contributed(&self, checkpoint: &CheckpointHash) -> bool {
        self.checkpoints.contains(checkpoint)
    }

    pub(crate) fn record(&mut self, checkpoint: CheckpointHash) {
        self.checkpoints.insert(checkpoint);
    }
}

/// Refuses a plan below the client's floor.
pub(crate) fn check_floor(policy: &ClientPolicy, plan: &RoundPlan) -> Result<()> {
    let below = |floor: Floor| Err(Error::PlanBelowFloor(floor));
    if plan.adversary < policy.min_adversary {
        return below(Floor::Adversary { plan: plan.adversary, min: policy.min_adversary });
    }
    if plan.corrupt_ppm < policy.min_corrupt_ppm {
        return below(Floor::CorruptFraction {
            plan_ppm: plan.corrupt_ppm,
            min_ppm: policy.min_corrupt_ppm,
        });
    }
    if plan.dropout_ppm > policy.max_dropout_ppm {
        return below(Floor::Dropout {
            plan_ppm: plan.dropout_ppm,
            max_ppm: policy.max_dropout_ppm,
        });
    }
    if plan.n() < policy.min_clients {
        return below(Floor::Clients { selected: plan.n(), min: policy.min_clients });
    }
    if plan.min_surviving() < policy.min_surviving {
        return below(Floor::Surviving {
            surviving: plan.min_surviving(),
            min: policy.min_surviving,
        });
    }
    Ok(())
}
