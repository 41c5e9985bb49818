//! The operator's way out of a stalled task: re-publish the model as a newer version.
//!
//! A client refuses a checkpoint older than one it has seen (the rollback guard), contributes
//! only to ever newer versions, and never twice on the same weights. A coordinator whose store
//! went back (restored from an older backup, a version lost) therefore finds clients that refuse
//! its current checkpoint: their check-ins say so ([`Engine::seen_version`]), they are not
//! selected on it, and when too few others remain the task says it is stalled. An operator then
//! re-publishes the model ([`Engine::republish`]) as a version above every one any client
//! reported: the current weights, or new weights of the same layout (clients that trained on the
//! current weights refuse them again, whatever the version — that rule is what stops a server
//! from collecting two sums over the same weights). The new checkpoint is stored like a round's
//! ([`Output::Checkpoint`]) and installed when the caller reports it stored
//! ([`Engine::checkpoint_committed`]); it is not a round: the
//! task's count of completed rounds does not change.

use std::sync::Arc;

use fedsec_crypto::{CheckpointHash, ClientId, RoundId};
use fedsec_wire::model::Model;

use super::{AuditEvent, Engine, NewCheckpoint, Output, State};
use crate::error::{Error, Result};

/// How a re-published checkpoint's summary starts: a restart counts the task's completed rounds
/// as its stored versions less the ones whose (signed) summary starts so.
pub const REPUBLISHED_SUMMARY: &str = "re-published";

impl Engine {
    /// A client's check-in says it has seen checkpoint `version` (its rollback guard): if that
    /// is newer than the current one, the client would refuse the current one, so it is not
    /// selected on it (and counts as not eligible for the stall check).
    pub fn seen_version(&mut self, client: ClientId, version: u64) {
        self.highest_reported = self.highest_reported.max(version);
        if version > self.checkpoint_version {
            if self.ahead.insert(client) && self.waiting.remove(&client).is_some() {
                self.waiting_dropped += 1;
            }
        } else {
            self.ahead.remove(&client);
        }
    }

    /// The newest checkpoint version any client reported having seen.
    pub fn highest_reported_version(&self) -> u64 {
        self.highest_reported
    }

    /// An operator re-publishes the model: the current weights, or `weights` (same tensor
    /// names and shapes), as version max(current, highest reported) + 1. Only between
    /// attempts; no attempt starts until the caller stored it and called
    /// [`republished`](Self::republished) (or [`republish_failed`](Self::republish_failed)).
    /// Emits the audit entry (with `by` and `reason`) and the checkpoint to store; returns
    /// the new version.
    pub fn republish(&mut self, weights: Option<Model>, by: String, reason: String) -> Result<u64> {
        match &self.state {
            State::Finished => return Err(Error::TaskFinished),
            State::Selecting { .. } if self.publishing.is_none() => {}
            State::Selecting { .. } => {
                return Err(Error::RepublishNotNow { why: "a re-publication is being stored" });
            }
            _ => return Err(Error::RepublishNotNow { why: "an attempt is running" }),
        }
        let new_weights = weights.is_some();
        let model = match weights {
            Some(w) if !w.same_layout(&self.model) => return Err(Error::RepublishLayout),
            Some(w) => w,
            None => (*self.model).clone(),
        };
        let bytes = model.to_safetensors()?;
        let sha256 = CheckpointHash::of(&bytes);
        let from = self.checkpoint_version;
        let version = from.max(self.highest_reported) + 1;
        self.publishing = Some(version);
        self.outputs.push_back(Output::Audit(AuditEvent::ModelRepublished {
            from_version: from,
            to_version: version,
            highest_reported: self.highest_reported,
            new_weights,
            sha256,
            by: by.clone(),
            reason,
        }));
        self.outputs.push_back(Output::Checkpoint(NewCheckpoint {
            version,
            parent_version: from,
            bytes: Arc::new(bytes),
            sha256,
            round_id: RoundId(self.round_id),
            summary: format!(
                "{REPUBLISHED_SUMMARY} version {from} as version {version} by {by}{}",
                if new_weights { " with new weights" } else { "" }
            ),
        }));
        self.republished_model = Some(model);
        Ok(version)
    }

    /// The caller stored the re-published checkpoint `version` (through
    /// [`checkpoint_committed`](Self::checkpoint_committed)): it becomes the current one. Who
    /// contributed on the old one stays recorded if the weights are the same (the same checkpoint
    /// hash); the stall and the clients ahead start over. Not a round: the count of completed
    /// rounds stays (round ids skip to the version's + 1, as after a restart).
    pub(super) fn republished(&mut self, version: u64) -> Result<()> {
        if self.publishing != Some(version) {
            return Err(match self.publishing {
                Some(waiting) => Error::WrongCommit { committed: version, waiting },
                None => Error::NothingToCommit { version },
            });
        }
        let model = self.republished_model.take().expect("set with publishing");
        let bytes = model.to_safetensors()?;
        let sha256 = CheckpointHash::of(&bytes);
        if sha256 != self.checkpoint_hash {
            self.contributed.clear();
        }
        self.model = Arc::new(model);
        // Round ids skip to the version's, as a restart numbers them: never reused.
        self.round_id = self.round_id.max(version + 1);
        self.checkpoint_version = version;
        self.checkpoint_hash = sha256;
        self.publishing = None;
        self.ahead.clear();
        self.stalled = None;
        self.checking_in_since = None;
        self.stall_checked = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use fedsec_crypto::sign::RawKeyCredentials;
    use fedsec_crypto::{AdversaryClass, GraphKind, TaskId};
    use fedsec_wire::model::Tensor;

    use super::*;
    use crate::engine::{CheckIn, PhaseDeadlines, TaskConfig};

    const N: usize = 10;

    fn model(v: f32) -> Model {
        Model::new().with("w", Tensor::new(vec![2], vec![v, -v]).unwrap())
    }

    /// Ten clients a round, at least eight; checkpoint version 3; rounds of one second.
    fn engine() -> (Engine, Vec<ClientId>, Instant) {
        let mut c = TaskConfig::new(TaskId([7; 16]), "test", N);
        c.graph = GraphKind::Complete;
        c.adversary = AdversaryClass::SemiMalicious;
        c.over_selection = 1.0;
        c.min_clients = 8;
        c.rounds = 5;
        c.deadlines = PhaseDeadlines::uniform(Duration::from_secs(1));
        let e = Engine::new(c, model(0.5), 3, Arc::new(RawKeyCredentials), [3; 32])
            .unwrap()
            .with_first_round(4, 3);
        let clients = (0..N as u8).map(|i| ClientId([i + 1; 32])).collect();
        (e, clients, Instant::now())
    }

    fn drain(e: &mut Engine) -> Vec<Output> {
        std::iter::from_fn(|| e.poll_output()).collect()
    }

    #[test]
    fn clients_that_saw_a_newer_checkpoint_are_not_selected_and_the_stall_says_so() {
        let (mut e, clients, mut now) = engine();
        // Three clients have seen version 9 (the store went back): they would refuse version 3.
        for (i, c) in clients.iter().enumerate() {
            e.seen_version(*c, if i < 3 { 9 } else { 3 });
            assert!(!matches!(e.check_in(*c, now), CheckIn::Selected(_)));
        }
        assert!(matches!(e.status().state, crate::engine::EngineState::Selecting));
        let refused = e.poll_check_in(&clients[0]);
        let CheckIn::RetryLater { reason, .. } = &refused else { panic!("{refused:?}") };
        assert!(reason.contains("would refuse it as a rollback"), "{reason}");
        // Seven remain, fewer than eight: once the selection deadline passed, the task says so.
        now += Duration::from_secs(2);
        e.handle_timeout(now);
        e.check_in(clients[5], now);
        let why = e.stalled().expect("stalled").to_owned();
        assert!(why.contains("3 have seen a newer checkpoint (up to version 9"), "{why}");
        assert!(why.contains("fedsec-coordinator republish"), "{why}");
        let stalled = drain(&mut e).into_iter().find_map(|o| match o {
            Output::Audit(AuditEvent::TaskStalled {
                ahead, highest_reported, eligible, ..
            }) => Some((ahead, highest_reported, eligible)),
            _ => None,
        });
        assert_eq!(stalled, Some((3, 9, 7)));
        assert_eq!(e.highest_reported_version(), 9);
    }

    #[test]
    fn the_model_is_republished_above_the_highest_version_reported_and_rounds_go_on() {
        let (mut e, clients, now) = engine();
        for (i, c) in clients.iter().enumerate() {
            e.seen_version(*c, if i < 3 { 9 } else { 3 });
            e.check_in(*c, now);
        }
        drain(&mut e);
        let v = e.republish(None, "operator-1".into(), "store restored".into()).unwrap();
        assert_eq!(v, 10);
        let outputs = drain(&mut e);
        let [
            Output::Audit(AuditEvent::ModelRepublished {
                from_version,
                to_version,
                new_weights,
                ..
            }),
            Output::Checkpoint(c),
        ] = &outputs[..]
        else {
            panic!("{outputs:?}")
        };
        assert_eq!((*from_version, *to_version, *new_weights), (3, 10, false));
        assert_eq!((c.version, c.parent_version), (10, 3));
        assert!(c.summary.starts_with(REPUBLISHED_SUMMARY), "{}", c.summary);
        assert_eq!(c.bytes.as_slice(), model(0.5).to_safetensors().unwrap().as_slice());
        // Nothing starts and nothing else is re-published while it is stored.
        assert!(matches!(
            e.republish(None, "operator-1".into(), String::new()),
            Err(Error::RepublishNotNow { .. })
        ));
        assert!(matches!(e.checkpoint_committed(11, now), Err(Error::WrongCommit { .. })));
        e.checkpoint_committed(10, now).unwrap();
        let s = e.status();
        assert_eq!((s.checkpoint_version, s.completed_rounds, s.round_id.0), (10, 3, 11));
        assert_eq!(s.stalled, None);
        // Every client takes version 10: the ten check in and an attempt starts with them.
        for c in &clients {
            e.seen_version(*c, 9);
            e.check_in(*c, now);
        }
        assert_eq!(e.status().state, crate::engine::EngineState::Running);
        let plan = &e.current_round().expect("an attempt").plan;
        assert!(plan.selected.len() >= 8, "{}", plan.selected.len());
        assert!(plan.selected.iter().any(|c| clients[..3].contains(c)), "those ahead are in");
        // While an attempt runs, no re-publication.
        assert!(matches!(
            e.republish(None, "operator-1".into(), String::new()),
            Err(Error::RepublishNotNow { why: "an attempt is running" })
        ));
    }

    #[test]
    fn the_same_weights_keep_their_contributors_and_new_weights_start_afresh() {
        let (mut e, clients, now) = engine();
        let (hash, _) = e.contributors();
        e.add_contributors(&hash, &clients[..2]);
        e.republish(None, "op".into(), String::new()).unwrap();
        e.checkpoint_committed(4, now).unwrap();
        // The same weights: a client that contributed on them would refuse them again.
        assert_eq!(e.contributors(), (hash, clients[..2].to_vec()));
        assert!(!matches!(e.check_in(clients[0], now), CheckIn::Pending));
        e.republish(Some(model(0.25)), "op".into(), String::new()).unwrap();
        e.checkpoint_committed(5, now).unwrap();
        let (new_hash, contributors) = e.contributors();
        assert_ne!(new_hash, hash);
        assert!(contributors.is_empty());
        assert_eq!(e.model(), &model(0.25));
        assert_eq!(e.check_in(clients[0], now), CheckIn::Pending);
    }

    #[test]
    fn weights_of_another_layout_and_a_finished_task_are_refused() {
        let (mut e, _, _) = engine();
        let other = Model::new().with("w", Tensor::new(vec![3], vec![0.0; 3]).unwrap());
        assert!(matches!(
            e.republish(Some(other), "op".into(), String::new()),
            Err(Error::RepublishLayout)
        ));
        assert!(drain(&mut e).is_empty(), "a refusal changes nothing");
        assert_eq!(e.checkpoint().0, 3);
        let mut finished = engine().0.with_first_round(9, 5);
        assert!(matches!(
            finished.republish(None, "op".into(), String::new()),
            Err(Error::TaskFinished)
        ));
    }
}
