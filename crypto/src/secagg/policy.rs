//! A client's own floor, which no round plan can talk it below, and its record of the
//! checkpoints it has contributed to.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::context::{AdversaryClass, RoundPlan};
use crate::error::{Error, Floor, Result};
use crate::ids::{CheckpointHash, TaskId, WeightsHash};

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

/// What a client trains on in an attempt, as it verified it: the task, the model's version and
/// checkpoint hash from the signed manifest, and the hash of the weights it decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainedOn {
    /// The task the checkpoint belongs to.
    pub task: TaskId,
    /// The checkpoint's version.
    pub version: u64,
    /// SHA-256 of the checkpoint's bytes.
    pub checkpoint: CheckpointHash,
    /// SHA-256 of its weights, canonically encoded.
    pub weights: WeightsHash,
}

/// What this client has uploaded masked inputs on. The caller persists it before sending the
/// masked input, so a restart cannot make the client contribute twice.
///
/// A client contributes at most once per checkpoint (by hash), at most once per task and model
/// version and only to ever newer versions, and never twice on the same weights (by
/// [`WeightsHash`], in any task): a server that mints a second checkpoint of the same model —
/// one bit flipped, another version number, the same weights under a new version — to collect
/// a second sum from the same clients, and subtract, is refused. Weights that differ in any bit
/// are other weights: what differential privacy must cover.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContributionLedger {
    checkpoints: BTreeSet<CheckpointHash>,
    /// The newest model version contributed on, per task (lowercase hex id).
    #[serde(default)]
    versions: BTreeMap<String, u64>,
    /// The weights contributed on, in every task.
    #[serde(default)]
    weights: BTreeSet<WeightsHash>,
    /// The checkpoint of the newest version contributed on, per task (lowercase hex id): what
    /// a check-in tells the coordinator, as a hint.
    #[serde(default)]
    newest_checkpoints: BTreeMap<String, CheckpointHash>,
}

impl ContributionLedger {
    /// Whether an input was uploaded on `checkpoint`.
    pub fn contributed(&self, checkpoint: &CheckpointHash) -> bool {
        self.checkpoints.contains(checkpoint)
    }

    /// The newest version of `task`'s model an input was uploaded on.
    pub fn newest_version(&self, task: &TaskId) -> Option<u64> {
        self.versions.get(&task.to_hex()).copied()
    }

    /// The checkpoint of the newest version of `task`'s model an input was uploaded on.
    pub fn newest_checkpoint(&self, task: &TaskId) -> Option<CheckpointHash> {
        self.newest_checkpoints.get(&task.to_hex()).copied()
    }

    /// Whether this client may contribute on `t`: the rule it breaks if not.
    pub fn check(&self, t: &TrainedOn) -> Result<()> {
        if self.contributed(&t.checkpoint) {
            return Err(Error::AlreadyContributedOnCheckpoint);
        }
        if let Some(newest) = self.newest_version(&t.task)
            && newest >= t.version
        {
            return Err(Error::AlreadyContributedOnVersion { version: t.version, newest });
        }
        if self.weights.contains(&t.weights) {
            return Err(Error::AlreadyContributedOnWeights);
        }
        Ok(())
    }

    pub(crate) fn record(&mut self, t: &TrainedOn) {
        self.checkpoints.insert(t.checkpoint);
        let newest = self.versions.entry(t.task.to_hex()).or_insert(t.version);
        *newest = (*newest).max(t.version);
        if *newest == t.version {
            self.newest_checkpoints.insert(t.task.to_hex(), t.checkpoint);
        }
        self.weights.insert(t.weights);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn on(task: u8, version: u64, checkpoint: u8, weights: u8) -> TrainedOn {
        TrainedOn {
            task: TaskId([task; 16]),
            version,
            checkpoint: CheckpointHash([checkpoint; 32]),
            weights: WeightsHash([weights; 32]),
        }
    }

    #[test]
    fn once_per_checkpoint_per_version_upwards_and_per_weights() {
        let mut ledger = ContributionLedger::default();
        let first = on(1, 3, 0xc3, 0xa3);
        assert_eq!(ledger.check(&first), Ok(()));
        ledger.record(&first);
        assert_eq!(ledger.newest_version(&first.task), Some(3));
        assert_eq!(ledger.check(&first), Err(Error::AlreadyContributedOnCheckpoint));
        // The same version, or an older one, under another checkpoint.
        for version in [3, 2, 0] {
            assert_eq!(
                ledger.check(&on(1, version, 0xc4, 0xa4)),
                Err(Error::AlreadyContributedOnVersion { version, newest: 3 })
            );
        }
        // The same weights under a new version and checkpoint, in this task or another.
        assert_eq!(ledger.check(&on(1, 4, 0xc4, 0xa3)), Err(Error::AlreadyContributedOnWeights));
        assert_eq!(ledger.check(&on(2, 1, 0xc4, 0xa3)), Err(Error::AlreadyContributedOnWeights));
        // A newer version with new weights; another task's versions are its own.
        assert_eq!(ledger.check(&on(1, 4, 0xc4, 0xa4)), Ok(()));
        assert_eq!(ledger.check(&on(2, 0, 0xc5, 0xa5)), Ok(()));
        ledger.record(&on(2, 0, 0xc5, 0xa5));
        assert_eq!(ledger.newest_version(&first.task), Some(3));
        assert_eq!(ledger.newest_version(&TaskId([2; 16])), Some(0));
        // The check-in hint: the checkpoint of each task's newest version.
        assert_eq!(ledger.newest_checkpoint(&first.task), Some(CheckpointHash([0xc3; 32])));
        assert_eq!(ledger.newest_checkpoint(&TaskId([2; 16])), Some(CheckpointHash([0xc5; 32])));
        assert_eq!(ledger.newest_checkpoint(&TaskId([9; 16])), None);
    }

    #[test]
    fn a_ledger_saved_before_versions_and_weights_still_loads() {
        let old = format!(r#"{{"checkpoints":[{:?}]}}"#, [0xc3u8; 32]);
        let ledger: ContributionLedger = serde_json::from_str(&old).unwrap();
        assert!(ledger.contributed(&CheckpointHash([0xc3; 32])));
        assert_eq!(ledger.check(&on(1, 3, 0xc3, 0xa3)), Err(Error::AlreadyContributedOnCheckpoint));
        let mut ledger = ledger;
        ledger.record(&on(1, 4, 0xc4, 0xa4));
        let text = serde_json::to_string(&ledger).unwrap();
        let back: ContributionLedger = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ledger);
    }
}
