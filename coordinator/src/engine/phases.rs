//! The six phases: messages in, retries recognised, phases closed early when everyone answered.

use std::time::Instant;

use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::messages::{
    AdvertiseKeys, Complaints, ConsistencySignature, MaskedInput, ShareKeys, UnmaskingResponse,
    message_digest,
};
use fedsec_crypto::secagg::server::{
    CheckedShareKeys, SecAggServer, ShareKeysCheck, UploadProgress,
};
use fedsec_crypto::{ClientId, RoundContext};
use sha2::{Digest, Sha256};

use super::attempt::Attempt;
use super::types::{Reply, RoundOutcome, ShareKeysRoute};
use super::{Engine, State};
use crate::error::{Error, Result};

impl Engine {
    /// Phase 0: a client's advertised keys.
    pub fn advertise(&mut self, from: ClientId, msg: AdvertiseKeys, now: Instant) -> Result<()> {
        let digest = message_digest(&msg);
        let ctx = msg.ctx;
        self.submit(from, &ctx, Phase::AdvertiseKeys, digest, now, |s| {
            s.receive_advertise(from, msg)
        })
    }

    /// Phase 1: a client's encrypted shares.
    pub fn share_keys(&mut self, from: ClientId, msg: ShareKeys, now: Instant) -> Result<()> {
        let digest = message_digest(&msg);
        let ctx = msg.ctx;
        self.submit(from, &ctx, Phase::ShareKeys, digest, now, |s| s.receive_share_keys(from, msg))
    }

    /// Phase 1 for a caller that checks off the engine: a ShareKeys that needs no check is
    /// answered here and now by [`share_keys`](Self::share_keys) — a message out of phase,
    /// from a client not selected, a resend, one from a dealer accepted or refused — and one
    /// that does is handed back with phase 1's checker ([`ShareKeysRoute::Check`]), for the
    /// caller to check on the server's cores as it arrives and to hand the verdict to
    /// [`checked_share_keys`](Self::checked_share_keys) whatever happens to the call (a dealer
    /// whose check fails is refused for the attempt however it leaves). One check per client
    /// at a time: the same message while it is being checked comes back
    /// [`ShareKeysRoute::Pending`] (ask again once the verdict is in); another is refused
    /// ([`Error::CheckInFlight`]). Until the verdicts of the checks in flight are in, the
    /// phase does not close early.
    pub fn share_keys_route(
        &mut self,
        from: ClientId,
        msg: ShareKeys,
        now: Instant,
    ) -> ShareKeysRoute {
        let needs_check = match &self.state {
            State::Running(a) => {
                a.ctx == msg.ctx
                    && a.phase == Phase::ShareKeys
                    && a.info.plan.index_of(&from).is_some()
                    && !a.answered[Phase::ShareKeys.index()].contains_key(&from)
                    && !a.server.share_keys_answered(&from)
            }
            _ => false,
        };
        if !needs_check {
            return ShareKeysRoute::Answered(self.share_keys(from, msg, now));
        }
        let State::Running(a) = &mut self.state else { unreachable!("checked above") };
        let digest = message_digest(&msg);
        match a.checking.get(&from) {
            Some((d, done)) if *d == digest => {
                return ShareKeysRoute::Pending(msg, done.subscribe());
            }
            Some(_) => return ShareKeysRoute::Answered(Err(Error::CheckInFlight)),
            None => {}
        }
        match a.server.share_keys_check() {
            Ok(check) => {
                a.checking.insert(from, (digest, tokio::sync::watch::channel(()).0));
                ShareKeysRoute::Check(check, msg)
            }
            Err(e) => ShareKeysRoute::Answered(Err(e.into())),
        }
    }

    /// Phase 1's checker of the attempt `ctx` while its phase 1 is open, without the screening
    /// of [`share_keys_route`](Self::share_keys_route): for a caller that hands every verdict
    /// to [`checked_share_keys`](Self::checked_share_keys) and sends each client's message
    /// once (the simulation).
    pub fn share_keys_check(&mut self, ctx: &RoundContext) -> Option<ShareKeysCheck> {
        match &mut self.state {
            State::Running(a) if a.ctx == *ctx && a.phase == Phase::ShareKeys => {
                a.server.share_keys_check().ok()
            }
            _ => None,
        }
    }

    /// Phase 1: the verdict on a client's encrypted shares, checked off the engine (`None` if
    /// the check failed to run). The client may send again once this returns.
    pub fn checked_share_keys(
        &mut self,
        from: ClientId,
        ctx: &RoundContext,
        verdict: Option<fedsec_crypto::Result<CheckedShareKeys>>,
        now: Instant,
    ) -> Result<()> {
        if let State::Running(a) = &mut self.state
            && a.ctx == *ctx
        {
            // Dropping the entry's sender wakes the resends waiting for this verdict.
            a.checking.remove(&from);
        }
        let taken = match verdict {
            Some(Ok(checked)) if checked.message().ctx == *ctx => {
                let digest = message_digest(checked.message());
                self.submit(from, ctx, Phase::ShareKeys, digest, now, |s| {
                    s.receive_checked_share_keys(from, checked)
                })
            }
            Some(Ok(_)) => Err(fedsec_crypto::Error::WrongContext.into()),
            Some(Err(e)) => Err(e.into()),
            None => Err(Error::CheckNotRun),
        };
        // Whatever the verdict, the phase may close now that it is in (everyone else answered
        // or is gone); `submit` closed it already if this one was taken and was the last.
        if let State::Running(a) = &self.state
            && a.ctx == *ctx
            && a.phase == Phase::ShareKeys
            && a.all_answered()
        {
            self.close_phase(now);
        }
        taken
    }

    /// Phase 1½: a client's complaints, possibly none (each judged on receipt).
    pub fn complaints(&mut self, from: ClientId, msg: Complaints, now: Instant) -> Result<()> {
        let digest = message_digest(&msg);
        let ctx = msg.ctx;
        self.submit(from, &ctx, Phase::Complaints, digest, now, |s| s.receive_complaints(from, msg))
    }

    /// Phase 3: a client's signature on U3.
    pub fn consistency(
        &mut self,
        from: ClientId,
        msg: ConsistencySignature,
        now: Instant,
    ) -> Result<()> {
        let digest = message_digest(&msg);
        let ctx = msg.ctx;
        self.submit(from, &ctx, Phase::ConsistencyCheck, digest, now, |s| {
            s.receive_consistency(from, msg)
        })
    }

    /// Phase 4: a client's revealed shares.
    pub fn unmasking(
        &mut self,
        from: ClientId,
        msg: UnmaskingResponse,
        now: Instant,
    ) -> Result<()> {
        let digest = message_digest(&msg);
        let ctx = msg.ctx;
        self.submit(from, &ctx, Phase::Unmasking, digest, now, |s| s.receive_unmasking(from, msg))
    }

    /// Phase 2: one chunk of a client's masked input, at an offset that is a multiple of the
    /// plan's chunk size (the last chunk may be shorter). A chunk received again with the same
    /// bytes — even after the upload completed — is accepted as a retry; different bytes are
    /// refused.
    pub fn masked_input(
        &mut self,
        from: ClientId,
        chunk: &MaskedInput,
        now: Instant,
    ) -> Result<UploadProgress> {
        // Leases that ran out go first: their places among the uploads in flight are free.
        self.expire_upload_leases(now);
        let attempt = self.attempt_for(&chunk.ctx, Phase::MaskedInputCollection)?;
        let plan = &attempt.info.plan;
        plan.index_of(&from).ok_or(Error::NotSelected(from))?;
        if attempt.evicted.contains(&from) {
            let idle_ms = self.config.upload_idle.as_millis() as u64;
            return Err(Error::UploadEvicted { idle_ms });
        }
        let chunk_words = attempt.info.upload_chunk_words as usize;
        let dim = plan.dim as usize;
        let offset = chunk.offset as usize;
        let words = chunk.data.len() / 4;
        let bad = |reason: String| Error::BadUpload { offset: chunk.offset as u64, reason };
        if !chunk.data.len().is_multiple_of(4) {
            return Err(bad(format!("{} bytes is not a whole number of words", chunk.data.len())));
        }
        if !offset.is_multiple_of(chunk_words) || offset >= dim {
            return Err(bad(format!(
                "offsets are multiples of {chunk_words} words below the vector length {dim}"
            )));
        }
        if words != chunk_words.min(dim - offset) {
            return Err(bad(format!(
                "the chunk holds {words} words; at this offset it must hold {}",
                chunk_words.min(dim - offset)
            )));
        }
        let index = offset / chunk_words;
        let digest: [u8; 32] = Sha256::digest(&chunk.data).into();
        if let Some(seen) = attempt.upload_digests.get(&from).and_then(|d| d[index]) {
            return if seen == digest {
                Ok(UploadProgress::Duplicate)
            } else {
                Err(Error::Protocol(fedsec_crypto::Error::PhaseAlreadyAnswered(
                    Phase::MaskedInputCollection,
                )))
            };
        }
        if attempt.phase != Phase::MaskedInputCollection {
            return Err(self.phase_error(Phase::MaskedInputCollection));
        }
        let State::Running(attempt) = &mut self.state else {
            return Err(Error::PhaseClosed { phase: Phase::MaskedInputCollection });
        };
        let progress = attempt.server.receive_masked_input(from, chunk)?;
        attempt.gone.remove(&from);
        // Only progress renews the lease: a resent chunk does not keep an upload alive.
        match progress {
            UploadProgress::Partial { .. } => {
                attempt.upload_leases.insert(from, now + self.config.upload_idle);
            }
            UploadProgress::Complete => {
                attempt.upload_leases.remove(&from);
            }
            UploadProgress::Duplicate => {}
        }
        let chunks = dim.div_ceil(chunk_words);
        attempt.upload_digests.entry(from).or_insert_with(|| vec![None; chunks])[index] =
            Some(digest);
        attempt.upload_bytes += chunk.data.len() as u64;
        if attempt.all_answered() {
            self.close_phase(now);
        }
        Ok(progress)
    }

    /// The running (or committing) attempt whose context is `ctx`, or why there is none.
    fn attempt_for(&self, ctx: &RoundContext, phase: Phase) -> Result<&Attempt> {
        let attempt = match &self.state {
            State::Running(a) => Some(a.as_ref()),
            State::Committing { attempt, .. } => Some(attempt.as_ref()),
            _ => None,
        };
        match attempt {
            Some(a) if a.ctx == *ctx => Ok(a),
            // The sum is being computed: every phase has closed.
            _ if matches!(&self.state, State::Aggregating(f) if f.ctx == *ctx) => {
                Err(Error::PhaseClosed { phase })
            }
            _ => Err(match self.results.get(ctx) {
                Some(RoundOutcome { abort_reason: Some(reason), .. }) => {
                    Error::RoundAborted(reason.clone())
                }
                Some(_) => Error::PhaseClosed { phase },
                None => Error::NotCurrentAttempt { current_round: self.round_id },
            }),
        }
    }

    fn phase_error(&self, phase: Phase) -> Error {
        match &self.state {
            State::Running(a) if a.phase < phase => Error::PhaseNotOpen { phase, current: a.phase },
            _ => Error::PhaseClosed { phase },
        }
    }

    /// The common path of the small phases: recognise retries, check the phase, hand the
    /// message to the protocol core, close the phase early when everyone answered.
    fn submit(
        &mut self,
        from: ClientId,
        ctx: &RoundContext,
        phase: Phase,
        digest: [u8; 32],
        now: Instant,
        receive: impl FnOnce(&mut SecAggServer) -> fedsec_crypto::Result<()>,
    ) -> Result<()> {
        if let Some(seen) = self.unmasked.get(ctx).filter(|_| phase == Phase::Unmasking) {
            // The attempt is over; an identical resend still gets the result.
            return match seen.get(&from) {
                Some(d) if *d == digest => Ok(()),
                Some(_) => Err(fedsec_crypto::Error::PhaseAlreadyAnswered(phase).into()),
                None => Err(Error::PhaseClosed { phase }),
            };
        }
        if let State::Aggregating(f) = &self.state
            && f.ctx == *ctx
        {
            // The unmasking closed and the sum is being computed; an identical resend of an
            // unmasking message is recognised.
            f.info.plan.index_of(&from).ok_or(Error::NotSelected(from))?;
            return match f.unmasked.get(&from).filter(|_| phase == Phase::Unmasking) {
                Some(d) if *d == digest => Ok(()),
                Some(_) => Err(fedsec_crypto::Error::PhaseAlreadyAnswered(phase).into()),
                None => Err(Error::PhaseClosed { phase }),
            };
        }
        let attempt = self.attempt_for(ctx, phase)?;
        attempt.info.plan.index_of(&from).ok_or(Error::NotSelected(from))?;
        if let Some(seen) = attempt.answered[phase.index()].get(&from) {
            return if *seen == digest {
                Ok(())
            } else {
                Err(fedsec_crypto::Error::PhaseAlreadyAnswered(phase).into())
            };
        }
        if attempt.phase != phase {
            return Err(self.phase_error(phase));
        }
        let State::Running(attempt) = &mut self.state else {
            // The attempt is storing its checkpoint: the unmasking has closed.
            return Err(Error::PhaseClosed { phase });
        };
        receive(&mut attempt.server)?;
        attempt.gone.remove(&from);
        attempt.answered[phase.index()].insert(from, digest);
        if attempt.all_answered() {
            self.close_phase(now);
        }
        Ok(())
    }

    /// A client's reply for the phase after `phase` (what its long-poll returns), once
    /// `phase` has closed. `None` while the phase is open.
    pub fn reply(
        &self,
        client: &ClientId,
        ctx: &RoundContext,
        phase: Phase,
    ) -> Option<Result<Reply>> {
        let attempt = match &self.state {
            State::Running(a) if a.ctx == *ctx => a,
            State::Committing { attempt, .. } if attempt.ctx == *ctx => {
                if phase == Phase::Unmasking {
                    return None; // the result is published once the checkpoint is stored
                }
                attempt
            }
            State::Aggregating(f) if f.ctx == *ctx => {
                // The result is published once the sum is computed and the checkpoint stored.
                return (phase != Phase::Unmasking).then_some(Err(Error::PhaseClosed { phase }));
            }
            _ => {
                return Some(match self.results.get(ctx) {
                    Some(r) if phase == Phase::Unmasking => Ok(Reply::Result(Box::new(r.clone()))),
                    Some(RoundOutcome { abort_reason: Some(reason), .. }) => {
                        Err(Error::RoundAborted(reason.clone()))
                    }
                    Some(_) => Err(Error::PhaseClosed { phase }),
                    None => Err(Error::NotCurrentAttempt { current_round: self.round_id }),
                });
            }
        };
        if attempt.phase <= phase || attempt.released.is_none_or(|r| r < phase) {
            // Open, or closed but not yet saved: nothing goes out before it is durable.
            return None;
        }
        let missing = || Err(Error::PhaseClosed { phase });
        Some(match phase {
            Phase::AdvertiseKeys => {
                attempt.keys.get(client).cloned().map(Reply::Keys).map_or_else(missing, Ok)
            }
            Phase::ShareKeys => {
                attempt.shares.get(client).cloned().map(Reply::Shares).map_or_else(missing, Ok)
            }
            Phase::Complaints => match &attempt.exclusions {
                Some(e) if attempt.answered[Phase::Complaints.index()].contains_key(client) => {
                    Ok(Reply::Excluded(e.clone()))
                }
                _ => missing(),
            },
            Phase::MaskedInputCollection => match &attempt.survivors {
                Some(s)
                    if attempt
                        .info
                        .plan
                        .index_of(client)
                        .is_some_and(|i| s.survivors.contains(i)) =>
                {
                    Ok(Reply::Survivors(s.clone()))
                }
                _ => missing(),
            },
            Phase::ConsistencyCheck => match &attempt.unmask {
                Some(u) if u.signatures.iter().any(|s| s.client == *client) => {
                    Ok(Reply::Unmask(u.clone()))
                }
                _ => missing(),
            },
            Phase::Unmasking => return None,
        })
    }
}

impl Engine {
    /// True if `client`'s masked input for the attempt `ctx` is complete (and in the sum).
    pub fn has_uploaded(&self, client: &ClientId, ctx: &RoundContext) -> bool {
        let Ok(attempt) = self.attempt_for(ctx, Phase::MaskedInputCollection) else {
            return false;
        };
        let plan = &attempt.info.plan;
        plan.index_of(client).is_some_and(|i| attempt.server.u3().contains(&i))
    }
}
