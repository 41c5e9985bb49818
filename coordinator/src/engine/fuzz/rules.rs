//! The rules the fuzzing holds the engine to: what it must answer to each message, in the
//! order it applies its rules; that a refused or repeated message changes nothing; and the
//! invariants that hold after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use fedsec_crypto::ClientId;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::server::UploadProgress;
use sha2::{Digest, Sha256};

use super::wire::{Core, Wire, same_rule};
use super::world::{Party, Run, World};
use crate::engine::attempt::Attempt;
use crate::engine::{CheckIn, EngineState, RoundOutcome, State, Status};
use crate::error::Error;

/// What the engine must answer to a message it takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Taken {
    /// Something new: the engine moves on.
    New,
    /// What it took before from the same client: recognised, nothing changes.
    Same,
}

/// What of the engine a refused message must leave as it was.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    status: Status,
    timeout: Option<Instant>,
    outputs: usize,
    results: u64,
    contributors: Vec<ClientId>,
    released: Option<Phase>,
    attempt: Option<AttemptPrint>,
}

type AttemptPrint = (
    (Phase, Instant, u64, usize),
    [BTreeMap<ClientId, [u8; 32]>; 6],
    BTreeMap<ClientId, Vec<Option<[u8; 32]>>>,
    [BTreeSet<usize>; 4],
    [BTreeSet<ClientId>; 2],
    BTreeMap<ClientId, Instant>,
);

/// Whether a refused ShareKeys failed the checks of the dealer's commitments (protocol v2),
/// which exclude it from the attempt, rather than a check that leaves it free to send again.
fn excludes_the_dealer(e: &fedsec_crypto::Error) -> bool {
    use fedsec_crypto::error::SharesProblem as P;
    match e {
        fedsec_crypto::Error::IncompleteShares { problem, .. } => matches!(
            problem,
            P::TooFewHolders { .. }
                | P::EntryCount { .. }
                | P::EntryHolder { .. }
                | P::CiphertextHash(_)
                | P::Commitment(_)
                | P::DegreeTest
        ),
        fedsec_crypto::Error::BadSignature(_) => true,
        _ => false,
    }
}

impl World {
    /// Sends `wire` as `from`: the engine answers what its rules say, and a refused or
    /// repeated message changes nothing. (The caller records what was sent, then drains.)
    pub(super) fn deliver(
        &mut self,
        from: ClientId,
        wire: &Wire,
        core: Option<Core>,
    ) -> Result<Option<UploadProgress>, Error> {
        let expected = self.predict(from, wire, core);
        let before = self.fingerprint();
        let now = self.now;
        let got = match wire.clone() {
            Wire::Advert(m) => self.engine.advertise(from, m, now).map(|()| None),
            Wire::Shares(m) => self.engine.share_keys(from, m, now).map(|()| None),
            Wire::Complaints(m) => self.engine.complaints(from, m, now).map(|()| None),
            Wire::Chunk(m) => self.engine.masked_input(from, &m, now).map(Some),
            Wire::Sig(m) => self.engine.consistency(from, m, now).map(|()| None),
            Wire::Unmask(m) => self.engine.unmasking(from, m, now).map(|()| None),
        };
        let agrees = match (&got, &expected) {
            (Ok(None | Some(UploadProgress::Duplicate)), Ok(Taken::Same)) => true,
            (Ok(progress), Ok(Taken::New)) => *progress != Some(UploadProgress::Duplicate),
            (Err(actual), Err(rule)) => same_rule(actual, rule),
            _ => false,
        };
        let phase = wire.phase();
        assert!(agrees, "{phase} from {from}: the engine answered {got:?}, its rules {expected:?}");
        // A dealer whose commitments fail the phase-1 checks is out of the attempt.
        if let Err(Error::Protocol(e)) = &got
            && phase == Phase::ShareKeys
            && excludes_the_dealer(e)
            && let Some(p) =
                self.run.as_mut().and_then(|r| r.parties.iter_mut().find(|p| p.id == from))
        {
            p.excluded = true;
        }
        if expected != Ok(Taken::New) {
            assert!(
                self.fingerprint() == before,
                "a refused or repeated {phase} changed the engine"
            );
        }
        got
    }

    /// What the engine must answer to `wire` from `from`, by its rules in the order it applies
    /// them: the attempt, the sender, a resend, the phase, then the open phase's own (`core`).
    fn predict(&self, from: ClientId, wire: &Wire, core: Option<Core>) -> Result<Taken, Error> {
        let (phase, ctx, digest) = (wire.phase(), wire.ctx(), wire.digest());
        let chunk_words = self.config.upload_chunk_words as usize;
        let chunk = match wire {
            Wire::Chunk(c) => Some(c),
            _ => None,
        };
        let status = self.engine.status();
        let closed = Error::PhaseClosed { phase };
        let answered = |run: &Run| -> Option<Result<Taken, Error>> {
            let p = run.party(&from)?;
            let seen = match chunk {
                Some(c) => {
                    let k = c.offset as usize / chunk_words;
                    p.taken.get(k).filter(|t| **t)?;
                    Sha256::digest(&p.chunks[k].data).into()
                }
                None => p.accepted[phase.index()].as_ref()?.digest(),
            };
            Some(if seen == digest {
                Ok(Taken::Same)
            } else {
                Err(fedsec_crypto::Error::PhaseAlreadyAnswered(phase).into())
            })
        };
        if chunk.is_none()
            && phase == Phase::Unmasking
            && let Some(run) = self.ended.get(&ctx)
        {
            return answered(run).unwrap_or(Err(closed));
        }
        let run = self.run.as_ref().filter(|r| r.ctx == ctx);
        if let Some(run) = run.filter(|_| status.state == EngineState::Aggregating) {
            return match (chunk, run.party(&from)) {
                (Some(_), _) => Err(closed),
                (None, None) => Err(Error::NotSelected(from)),
                (None, Some(_)) if phase == Phase::Unmasking => {
                    answered(run).unwrap_or(Err(closed))
                }
                (None, Some(_)) => Err(closed),
            };
        }
        let Some(run) = run else {
            return Err(match self.ended.get(&ctx).and_then(|r| r.outcome.as_ref()) {
                Some(RoundOutcome { abort_reason: Some(reason), .. }) => {
                    Error::RoundAborted(reason.clone())
                }
                Some(_) => closed,
                None => Error::NotCurrentAttempt { current_round: status.round_id.0 },
            });
        };
        let Some(party) = run.party(&from) else { return Err(Error::NotSelected(from)) };
        if chunk.is_some() {
            if party.evicted {
                let idle_ms = self.config.upload_idle.as_millis() as u64;
                return Err(Error::UploadEvicted { idle_ms });
            }
            if let Some(Core::Shape(e)) = &core {
                return Err(e.clone());
            }
        }
        if let Some(answer) = answered(run) {
            return answer;
        }
        let committing = status.state == EngineState::Committing;
        let open = status.phase.unwrap_or(Phase::Unmasking);
        if committing || phase != open {
            return Err(if !committing && open < phase {
                Error::PhaseNotOpen { phase, current: open }
            } else {
                closed
            });
        }
        let core = core.expect("a message that reaches the open phase comes with what it must get");
        if phase == Phase::ShareKeys && party.excluded {
            // Refused unread: only what the server checks before the exclusion comes first.
            return Err(match core {
                Core::Refused(Error::Protocol(
                    e @ (fedsec_crypto::Error::SenderMismatch { .. }
                    | fedsec_crypto::Error::UnsupportedVersion { .. }
                    | fedsec_crypto::Error::WrongContext
                    | fedsec_crypto::Error::NotSelected(_)),
                )) => e.into(),
                _ => fedsec_crypto::Error::NotEligible { client: from, phase }.into(),
            });
        }
        match core {
            Core::Refused(e) | Core::Shape(e) => return Err(e),
            Core::Taken => {}
        }
        let limit = self.config.max_uploads_in_flight;
        let partial = |p: &Party| !p.complete && !p.evicted && p.taken.contains(&true);
        if chunk.is_some()
            && !party.taken.contains(&true)
            && chunk_words < run.plan.dim as usize
            && run.parties.iter().filter(|p| partial(p)).count() >= limit
        {
            return Err(fedsec_crypto::Error::TooManyUploadsInFlight { limit }.into());
        }
        Ok(Taken::New)
    }

    /// The engine's running (or committing) attempt.
    pub(super) fn attempt(&self) -> Option<&Attempt> {
        match &self.engine.state {
            State::Running(a) => Some(a),
            State::Committing { attempt, .. } => Some(attempt),
            _ => None,
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            status: self.engine.status(),
            timeout: self.engine.poll_timeout(),
            outputs: self.engine.outputs.len(),
            results: self.engine.results_changes(),
            contributors: self.engine.contributors().1,
            released: self.engine.released_phase(),
            attempt: self.attempt().map(|a| {
                (
                    (a.phase, a.deadline, a.upload_bytes, a.server.uploads_in_flight()),
                    a.answered.clone(),
                    a.upload_digests.clone(),
                    [a.server.u1(), a.server.u2(), a.server.uploaders(), a.server.u3()],
                    [a.gone.clone(), a.evicted.clone()],
                    a.upload_leases.clone(),
                )
            }),
        }
    }

    /// Versions only rise, one at a time; the contributors of a checkpoint never shrink and
    /// hold every client whose ledger has an input on it; no client is in the U2 of two
    /// attempts on one checkpoint; the engine evicts exactly the uploads whose lease ran out.
    pub(super) fn check_invariants(&mut self) {
        let (version, checkpoint) = self.engine.checkpoint();
        let contributors: BTreeSet<ClientId> = self.engine.contributors().1.into_iter().collect();
        if checkpoint == self.checkpoint {
            assert_eq!(version, self.version);
            assert!(contributors.is_superset(&self.contributors), "the contributors shrank");
        } else {
            assert_eq!(version, self.version + 1, "versions rise one at a time");
        }
        for site in &self.sites {
            let id = site.key.id();
            assert!(!site.ledger.contributed(&checkpoint) || contributors.contains(&id));
        }
        if let Some(a) = self.attempt().filter(|a| a.phase > Phase::ShareKeys) {
            let plan = &a.info.plan;
            let u2: BTreeSet<ClientId> = a.server.u2().iter().map(|&i| plan.selected[i]).collect();
            for (ctx, (on, other)) in &self.u2s {
                if *ctx != a.ctx && *on == checkpoint {
                    assert!(u2.is_disjoint(other), "a client in two attempts' U2");
                }
            }
            self.u2s.insert(a.ctx, (checkpoint, u2));
        }
        self.check_replies();
        if let (State::Running(a), Some(run)) = (&self.engine.state, &self.run) {
            let evicted: BTreeSet<ClientId> =
                run.parties.iter().filter(|p| p.evicted).map(|p| p.id).collect();
            assert_eq!(a.evicted, evicted, "the uploads evicted");
        }
        self.version = version;
        self.checkpoint = checkpoint;
        self.contributors = contributors;
    }

    /// The replies of each closed and released phase go to exactly the clients of the set the
    /// close fixed: U1, U2, U3, U4 — as the clients saw their messages taken.
    fn check_replies(&self) {
        let (Some(run), Some(released)) = (&self.run, self.engine.released_phase()) else {
            return;
        };
        let open = self.engine.status().phase.unwrap_or(Phase::Unmasking);
        for phase in Phase::ALL.into_iter().filter(|p| *p <= released && *p < open) {
            for p in &run.parties {
                let in_set = match phase {
                    Phase::MaskedInputCollection => p.complete,
                    _ => p.accepted[phase.index()].is_some(),
                };
                match self.engine.reply(&p.id, &run.ctx, phase) {
                    Some(Ok(_)) if in_set => {}
                    Some(Err(Error::PhaseClosed { phase: closed })) if !in_set => {
                        assert_eq!(closed, phase)
                    }
                    other => panic!("{phase}'s reply (in its set: {in_set}): {other:?}"),
                }
            }
        }
    }

    /// A check-in's answer: selected exactly when the running attempt selected the client;
    /// told to come back later only with a reason.
    pub(super) fn check_in_answer(&self, id: &ClientId, answer: &CheckIn) {
        let current = self.engine.current_round();
        let selected = current.is_some_and(|a| a.plan.selected.contains(id));
        match answer {
            CheckIn::Selected(info) => assert!(selected && current == Some(&**info)),
            CheckIn::Finished => assert_eq!(self.engine.status().state, EngineState::Finished),
            CheckIn::Pending => assert!(!selected),
            CheckIn::RetryLater { reason, .. } => assert!(!selected && !reason.is_empty()),
        }
    }
}
