//! The operator's way out of a stalled task: re-publish the model as a newer version.
//!
//! A client refuses a checkpoint older than one it has seen (the rollback guard), contributes
//! only to ever newer versions, and never twice on the same weights. A coordinator whose store
//! went back (restored from an older backup, a version lost) therefore finds clients that refuse
//! its current checkpoint: their check-ins say so ([`Engine::seen_version`]), they are not
//! selected on it, and when too few others remain the task says it is stalled. An operator then
//! re-publishes the model ([`Engine::republish`]) as a version above the ones clients reported:
//! the current weights, or new weights of the same layout (clients that trained on the current
//! weights refuse them again, whatever the version — that rule is what stops a server from
//! collecting two sums over the same weights). The caller records it in the audit log, stores it
//! like a round's checkpoint and reports it stored ([`Engine::checkpoint_committed`]); it is not
//! a round: the task's count of completed rounds does not change.
//!
//! What a check-in reports is the client's word, not a proof. The new version is taken from the
//! reports past the highest ones that as many clients as the task assumes corrupt could have
//! made up ([`Engine::trusted_report`]), and never above the highest version this coordinator
//! ever signed for the task (its audit log records each one): an honest client cannot have seen
//! more, so no lie, however many tell it, moves the version past what was really published. An
//! operator can name the version instead.

use std::sync::Arc;

use fedsec_crypto::{ClientId, RoundId};
use fedsec_wire::model::Model;

use super::{Engine, NewCheckpoint, State};
use crate::error::{Error, Result};

/// How a re-published checkpoint's summary starts: a restart counts the task's completed rounds
/// along its chain of signed manifests, leaving out the ones whose summary starts so.
pub const REPUBLISHED_SUMMARY: &str = "re-published";

/// The highest version a re-publication may make: 2^53 − 1, far beyond any real task, exact in
/// every JSON reader (the audit log and the manifests carry versions as JSON numbers), and far
/// from the end of `u64`.
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// What a re-publication is, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Republication {
    /// The version it replaces.
    pub from_version: u64,
    /// The new version.
    pub to_version: u64,
    /// The newest version clients reported ([`Engine::trusted_report`]).
    pub highest_reported: u64,
    /// Reports above it, left out (as many as the task assumes corrupt clients, at most).
    pub reports_left_out: usize,
    /// The highest version this coordinator signed for the task (its audit log).
    pub highest_signed: u64,
    /// Reports above `highest_signed`: versions never published, so made up.
    pub reports_never_published: usize,
    /// Whether the weights differ from the current ones (by their weights hash).
    pub new_weights: bool,
}

impl Engine {
    /// The highest checkpoint version this coordinator has signed for the task before this
    /// engine, as its audit log records it (a store that went back holds less).
    pub fn with_signed_versions_up_to(mut self, version: u64) -> Self {
        self.signed_high_water = self.signed_high_water.max(version);
        self
    }

    /// A client's check-in says it has seen checkpoint `version` (its rollback guard): if that
    /// is newer than the current one, the client would refuse the current one, so it is not
    /// selected on it (and counts as not eligible for the stall check).
    pub fn seen_version(&mut self, client: ClientId, version: u64) {
        self.reported.insert(client, version);
        if self.is_ahead(&client) && self.waiting.remove(&client).is_some() {
            self.waiting_dropped += 1;
        }
    }

    /// Whether `client` last reported a newer checkpoint than the current one.
    pub(super) fn is_ahead(&self, client: &ClientId) -> bool {
        self.reported.get(client).is_some_and(|&v| v > self.checkpoint_version)
    }

    pub(super) fn any_ahead(&self) -> bool {
        self.reported.values().any(|&v| v > self.checkpoint_version)
    }

    /// The newest version clients reported, leaving out the highest `c` reports, `c` being as
    /// many of the reporting clients as the task assumes corrupt (rounded up): a version some
    /// honest client has seen, or below. With the number of reports left out.
    pub fn trusted_report(&self) -> (u64, usize) {
        let mut reports: Vec<u64> = self.reported.values().copied().collect();
        reports.sort_unstable_by(|a, b| b.cmp(a));
        let corrupt = (reports.len() as u64 * u64::from(self.config.corrupt_ppm))
            .div_ceil(u64::from(fedsec_crypto::context::PPM)) as usize;
        match reports.get(corrupt) {
            Some(&v) => (v, reports.iter().filter(|&&r| r > v).count()),
            None => (0, reports.len()),
        }
    }

    /// An operator re-publishes the model: the current weights, or `weights` (same tensor
    /// names and shapes), as version `to_version`, or else one above the current version and
    /// above [`trusted_report`](Self::trusted_report) capped at the highest version this
    /// coordinator signed ([`with_signed_versions_up_to`](Self::with_signed_versions_up_to)),
    /// at most [`MAX_VERSION`]. Only between attempts, while the audit
    /// log takes entries. Returns the checkpoint to store — the caller records the
    /// re-publication, stores it and reports it with
    /// [`checkpoint_committed`](Self::checkpoint_committed), or gives it up with
    /// [`republish_abandoned`](Self::republish_abandoned); no attempt starts meanwhile.
    pub fn republish(
        &mut self,
        weights: Option<Model>,
        to_version: Option<u64>,
        by: &str,
    ) -> Result<(NewCheckpoint, Republication)> {
        match &self.state {
            State::Finished => return Err(Error::TaskFinished),
            State::Selecting { .. } if self.held => {
                return Err(Error::RepublishNotNow { why: "the audit log cannot be written" });
            }
            State::Selecting { .. } if self.publishing.is_some() => {
                return Err(Error::RepublishNotNow { why: "a re-publication is being stored" });
            }
            State::Selecting { .. } => {}
            _ => return Err(Error::RepublishNotNow { why: "an attempt is running" }),
        }
        let from = self.checkpoint_version;
        let (highest, left_out) = self.trusted_report();
        let signed = self.signed_high_water;
        let never_published = self.reported.values().filter(|&&v| v > signed).count();
        let version = match to_version {
            Some(v) => v,
            None => from.max(highest.min(signed)).saturating_add(1),
        };
        if version <= from || version > MAX_VERSION {
            return Err(Error::RepublishVersion { version, current: from, max: MAX_VERSION });
        }
        let model = match weights {
            Some(w) if !w.same_layout(&self.model) => return Err(Error::RepublishLayout),
            Some(w) => w,
            None => (*self.model).clone(),
        };
        let new_weights = model.weights_hash() != self.model.weights_hash();
        let bytes = model.to_safetensors()?;
        let sha256 = fedsec_crypto::CheckpointHash::of(&bytes);
        self.publishing = Some(version);
        self.republished_model = Some((model, sha256));
        let checkpoint = NewCheckpoint {
            version,
            parent_version: from,
            bytes: Arc::new(bytes),
            sha256,
            // Not a round's.
            round_id: RoundId(0),
            summary: format!(
                "{REPUBLISHED_SUMMARY} version {from} as version {version} by {by}{}",
                if new_weights { " with new weights" } else { "" }
            ),
        };
        let what = Republication {
            from_version: from,
            to_version: version,
            highest_reported: highest,
            reports_left_out: left_out,
            highest_signed: signed,
            reports_never_published: never_published,
            new_weights,
        };
        Ok((checkpoint, what))
    }

    /// The re-publication could not be recorded: nothing changes, selection goes on.
    pub fn republish_abandoned(&mut self) {
        self.publishing = None;
        self.republished_model = None;
    }

    /// The caller stored the re-published checkpoint `version` (through
    /// [`checkpoint_committed`](Self::checkpoint_committed)): it becomes the current one. Who
    /// contributed on the old one stays recorded if the weights are the same (they would refuse
    /// them again); the stall starts over. Not a round: the count of completed rounds stays,
    /// and round ids skip to the version's + 1, as after a restart.
    pub(super) fn republished(&mut self, version: u64) -> Result<()> {
        let Some(waiting) = self.publishing else {
            return Err(Error::NothingToCommit { version });
        };
        if waiting != version {
            return Err(Error::WrongCommit { committed: version, waiting });
        }
        let (model, sha256) = self.republished_model.take().expect("set with publishing");
        if model.weights_hash() != self.model.weights_hash() {
            self.contributed.clear();
        }
        self.checkpoint_hash = sha256;
        self.model = Arc::new(model);
        self.round_id = self.round_id.max(version + 1);
        self.checkpoint_version = version;
        self.signed_high_water = self.signed_high_water.max(version);
        self.publishing = None;
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
    use crate::engine::{AuditEvent, CheckIn, EngineState, Output, PhaseDeadlines, TaskConfig};

    const N: usize = 10;

    fn model(v: f32) -> Model {
        Model::new().with("w", Tensor::new(vec![2], vec![v, -v]).unwrap())
    }

    /// Ten clients a round, at least eight, 5 % assumed corrupt (one of ten left out of the
    /// reports); checkpoint version 3; rounds of one second.
    fn engine() -> (Engine, Vec<ClientId>, Instant) {
        let mut c = TaskConfig::new(TaskId([7; 16]), "test", N);
        c.graph = GraphKind::Complete;
        c.adversary = AdversaryClass::SemiMalicious;
        c.over_selection = 1.0;
        c.min_clients = 8;
        c.corrupt_ppm = 50_000;
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

    /// Every client reports `seen(i)` and checks in.
    fn check_in_all(
        e: &mut Engine,
        clients: &[ClientId],
        now: Instant,
        seen: impl Fn(usize) -> u64,
    ) {
        for (i, c) in clients.iter().enumerate() {
            e.seen_version(*c, seen(i));
            e.check_in(*c, now);
        }
    }

    #[test]
    fn clients_that_saw_a_newer_checkpoint_are_not_selected_and_the_stall_says_so() {
        let (mut e, clients, mut now) = engine();
        // Three clients have seen version 9 (the store went back): they would refuse version 3.
        check_in_all(&mut e, &clients, now, |i| if i < 3 { 9 } else { 3 });
        assert_eq!(e.status().state, EngineState::Selecting);
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
    }

    #[test]
    fn the_model_is_republished_above_the_versions_reported_and_rounds_go_on() {
        let (e, clients, now) = engine();
        // The audit log says this coordinator signed up to version 9 before its store went back.
        let mut e = e.with_signed_versions_up_to(9);
        check_in_all(&mut e, &clients, now, |i| if i < 3 { 9 } else { 3 });
        drain(&mut e);
        let (c, what) = e.republish(None, None, "operator-1").unwrap();
        assert_eq!(
            what,
            Republication {
                from_version: 3,
                to_version: 10,
                highest_reported: 9,
                reports_left_out: 0,
                highest_signed: 9,
                reports_never_published: 0,
                new_weights: false
            }
        );
        assert_eq!((c.version, c.parent_version, c.round_id), (10, 3, RoundId(0)));
        assert!(c.summary.starts_with(REPUBLISHED_SUMMARY), "{}", c.summary);
        assert_eq!(c.bytes.as_slice(), model(0.5).to_safetensors().unwrap().as_slice());
        assert!(drain(&mut e).is_empty(), "the caller records it");
        // Nothing starts and nothing else is re-published while it is stored: ten clients
        // wait, and no attempt starts.
        check_in_all(&mut e, &clients, now, |_| 3);
        assert_eq!(e.status().state, EngineState::Selecting);
        assert_eq!(e.status().waiting, N);
        assert!(matches!(
            e.republish(None, None, "operator-1"),
            Err(Error::RepublishNotNow { why: "a re-publication is being stored" })
        ));
        assert!(matches!(e.checkpoint_committed(11, now), Err(Error::WrongCommit { .. })));
        e.checkpoint_committed(10, now).unwrap();
        let s = e.status();
        assert_eq!((s.checkpoint_version, s.completed_rounds, s.round_id.0), (10, 3, 11));
        assert_eq!(s.stalled, None);
        // Every client takes version 10: the ten check in and an attempt starts with them.
        check_in_all(&mut e, &clients, now, |i| if i < 3 { 9 } else { 3 });
        assert_eq!(e.status().state, EngineState::Running);
        let plan = &e.current_round().expect("an attempt").plan;
        assert!(plan.selected.len() >= 8, "{}", plan.selected.len());
        assert!(plan.selected.iter().any(|c| clients[..3].contains(c)), "those ahead are in");
        // While an attempt runs, no re-publication.
        assert!(matches!(
            e.republish(None, None, "operator-1"),
            Err(Error::RepublishNotNow { why: "an attempt is running" })
        ));
    }

    #[test]
    fn lying_reports_move_the_new_version_no_further_than_what_was_published() {
        let (e, clients, now) = engine();
        let mut e = e.with_signed_versions_up_to(5);
        // One client of ten (the corrupt fraction assumed) claims the end of the number space:
        // its report is left out.
        check_in_all(&mut e, &clients, now, |i| if i == 0 { u64::MAX } else { 5 });
        assert_eq!(e.trusted_report(), (5, 1));
        let (c, what) = e.republish(None, None, "op").unwrap();
        assert_eq!((c.version, what.highest_reported, what.reports_left_out), (6, 5, 1));
        assert_eq!(what.reports_never_published, 1);
        e.republish_abandoned();
        // More liars than assumed: their reports are taken, but nothing above the highest
        // version this coordinator ever signed (its audit log) can have been seen.
        e.seen_version(clients[1], u64::MAX - 1);
        e.seen_version(clients[2], 1 << 40);
        let (c, what) = e.republish(None, None, "op").unwrap();
        assert_eq!((c.version, what.reports_never_published), (6, 3));
        e.republish_abandoned();
        // The operator may name the version, above the current one and at most MAX_VERSION.
        let (c, _) = e.republish(None, Some(7), "op").unwrap();
        assert_eq!(c.version, 7);
        e.republish_abandoned();
        for bad in [3, 2, MAX_VERSION + 1, u64::MAX] {
            assert!(matches!(
                e.republish(None, Some(bad), "op"),
                Err(Error::RepublishVersion { .. })
            ));
        }
        // A re-publication abandoned leaves nothing behind: version 3, selection goes on.
        assert_eq!(e.checkpoint().0, 3);
        // The liars stay out of selection on version 7; the others take part.
        e.republish(None, Some(7), "op").unwrap();
        e.checkpoint_committed(7, now).unwrap();
        let (liars, honest) = clients.split_at(3);
        check_in_all(&mut e, honest, now, |_| 5);
        assert_eq!(e.status().waiting, 7);
        for c in liars {
            assert!(matches!(e.check_in(*c, now), CheckIn::RetryLater { .. }));
        }
        // A denied client's report goes with it.
        e.withdraw(&liars[0]);
        assert!(!e.is_ahead(&liars[0]));
    }

    #[test]
    fn with_no_corrupt_clients_assumed_one_lie_still_moves_nothing_past_what_was_published() {
        let (e, clients, now) = engine();
        let mut config = e.config().clone();
        config.corrupt_ppm = 0;
        let mut e = Engine::new(config, model(0.5), 3, Arc::new(RawKeyCredentials), [3; 32])
            .unwrap()
            .with_first_round(4, 3);
        check_in_all(&mut e, &clients, now, |i| if i == 0 { MAX_VERSION - 1 } else { 3 });
        assert_eq!(e.trusted_report(), (MAX_VERSION - 1, 0));
        let (c, what) = e.republish(None, None, "op").unwrap();
        assert_eq!((c.version, what.reports_never_published), (4, 1));
        e.checkpoint_committed(4, now).unwrap();
        // And a later re-publication is still possible.
        let (c, _) = e.republish(None, None, "op").unwrap();
        assert_eq!(c.version, 5);
    }

    #[test]
    fn the_same_weights_keep_their_contributors_and_new_weights_start_afresh() {
        let (mut e, clients, now) = engine();
        let (hash, _) = e.contributors();
        e.add_contributors(&hash, &clients[..2]);
        // New weights that are the current ones are the same weights.
        let (_, what) = e.republish(Some(model(0.5)), None, "op").unwrap();
        assert!(!what.new_weights);
        e.checkpoint_committed(4, now).unwrap();
        // The same weights: a client that contributed on them would refuse them again.
        assert_eq!(e.contributors(), (hash, clients[..2].to_vec()));
        assert!(!matches!(e.check_in(clients[0], now), CheckIn::Pending));
        let (_, what) = e.republish(Some(model(0.25)), None, "op").unwrap();
        assert!(what.new_weights);
        e.checkpoint_committed(5, now).unwrap();
        let (new_hash, contributors) = e.contributors();
        assert_ne!(new_hash, hash);
        assert!(contributors.is_empty());
        assert_eq!(e.model(), &model(0.25));
        assert_eq!(e.check_in(clients[0], now), CheckIn::Pending);
    }

    #[test]
    fn weights_of_another_layout_a_held_audit_log_and_a_finished_task_are_refused() {
        let (mut e, _, now) = engine();
        let other = Model::new().with("w", Tensor::new(vec![3], vec![0.0; 3]).unwrap());
        assert!(matches!(e.republish(Some(other), None, "op"), Err(Error::RepublishLayout)));
        e.hold_selection(true, now);
        assert!(matches!(
            e.republish(None, None, "op"),
            Err(Error::RepublishNotNow { why: "the audit log cannot be written" })
        ));
        e.hold_selection(false, now);
        drain(&mut e);
        assert_eq!(e.checkpoint().0, 3, "a refusal changes nothing");
        e.republish(None, None, "op").unwrap();
        let mut finished = engine().0.with_first_round(9, 5);
        assert!(matches!(finished.republish(None, None, "op"), Err(Error::TaskFinished)));
    }
}
