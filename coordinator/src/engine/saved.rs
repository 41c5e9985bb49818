//! An attempt saved at a phase close, to resume after the coordinator restarts.
//!
//! At each phase close the engine hands out a [`SavedAttempt`] ([`Output::SaveAttempt`]) and
//! releases that phase's replies only once the caller says it is durable
//! ([`Engine::attempt_saved`]). A restarted engine takes it back with [`Engine::resume`]: the
//! phase after the last one saved is open again, nothing of it received, and every reply of
//! the closed phases is the one saved — resent byte for byte, never computed again.
//!
//! What it holds is what the engine and its protocol server already held in memory: the plan,
//! the adverts with the identity keys their credentials certified, U1–U3, the dealers' signed
//! commitments, the forwarded ciphertexts, the running masked sum, U4's signatures, and the digests of the messages each
//! client sent (to recognise an identical resend and refuse a different one). No secret of any
//! party: the server never holds one.
//!
//! [`Output::SaveAttempt`]: super::Output::SaveAttempt
//! [`Engine::attempt_saved`]: super::Engine::attempt_saved
//! [`Engine::resume`]: super::Engine::resume

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::messages::{KeysForward, SharesForward};
use fedsec_crypto::secagg::server::{ClosedState, SavedInbox, SecAggServer};
use fedsec_crypto::{ClientId, RoundContext, RoundPlan};
use serde::{Deserialize, Serialize};

use super::attempt::Attempt;
use super::types::{Assignment, AuditEvent, Output};
use super::{Engine, State};
use crate::error::AbortReason;

/// Everything needed to resume one attempt after its last closed phase. See the
/// [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedAttempt {
    /// The attempt's plan.
    pub plan: Arc<RoundPlan>,
    /// The checkpoint version the attempt trains on.
    pub checkpoint_version: u64,
    /// Words per masked-input chunk.
    pub upload_chunk_words: u32,
    /// What the protocol server held once the phase closed.
    pub server: ClosedState,
    /// Phase 0's replies: each recipient with the positions, in `server.adverts`, of the
    /// adverts forwarded to it, in the order they were forwarded.
    pub keys: Vec<(ClientId, Vec<u32>)>,
    /// Phase 1's replies: each recipient with the dealers and ciphertexts forwarded to it, in
    /// the order they were. The rest of each forwarded share — the dealer's entry, index, path
    /// and signature — is rebuilt from the dealings in `server` on resume.
    pub shares: Vec<SavedInbox>,
    /// The digest of each client's message in each closed phase but phase 2.
    pub answered: Vec<Vec<(ClientId, [u8; 32])>>,
    /// The digests of the chunks of each complete masked input.
    pub upload_digests: Vec<(ClientId, Vec<Option<[u8; 32]>>)>,
    /// Masked-input bytes received.
    pub upload_bytes: u64,
    /// How long each closed phase was open, in seconds.
    pub phase_seconds: Vec<f64>,
    /// |U|, then the size each close fixed.
    pub set_sizes: Vec<u64>,
    /// The clients that contributed on the checkpoint so far (in this attempt and in earlier
    /// ones on it): never selected again before the next checkpoint.
    pub contributed: Vec<ClientId>,
}

impl SavedAttempt {
    /// The attempt's context.
    pub fn ctx(&self) -> RoundContext {
        self.plan.context()
    }

    /// The last phase that closed.
    pub fn closed(&self) -> Phase {
        self.server.closed
    }

    /// Its encoding (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding into memory cannot fail")
    }

    /// Decodes [`to_bytes`](Self::to_bytes)' output; trailing bytes are refused.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        match postcard::take_from_bytes(bytes) {
            Ok((saved, [])) => Some(saved),
            _ => None,
        }
    }
}

/// What `attempt` holds once its last phase closed (the engine's half; the protocol server's
/// half is [`ClosedState`]), with the clients that contributed on the checkpoint.
pub(super) fn record(attempt: &Attempt, contributed: &BTreeSet<ClientId>) -> SavedAttempt {
    let server = match attempt.phase {
        Phase::Unmasking => attempt.server.unmasking_closed_state(),
        _ => attempt.server.closed_state(),
    };
    let server = server.expect("called once a phase closed");
    let closed = server.closed;
    let position: BTreeMap<ClientId, u32> =
        server.adverts.iter().enumerate().map(|(i, a)| (a.advert.client, i as u32)).collect();
    let keys = attempt
        .keys
        .iter()
        .map(|(recipient, fwd)| {
            (*recipient, fwd.adverts.iter().map(|a| position[&a.client]).collect())
        })
        .collect();
    let answered = Phase::ALL
        .iter()
        .take_while(|p| **p <= closed)
        .map(|p| attempt.answered[p.index()].iter().map(|(c, d)| (*c, *d)).collect())
        .collect();
    let upload_digests = if closed >= Phase::MaskedInputCollection {
        let plan = &attempt.info.plan;
        let u3 = attempt.server.u3();
        attempt
            .upload_digests
            .iter()
            .filter(|(c, _)| plan.index_of(c).is_some_and(|i| u3.contains(&i)))
            .map(|(c, d)| (*c, d.clone()))
            .collect()
    } else {
        Vec::new()
    };
    SavedAttempt {
        plan: attempt.info.plan.clone(),
        checkpoint_version: attempt.info.checkpoint_version,
        upload_chunk_words: attempt.info.upload_chunk_words,
        server,
        keys,
        shares: attempt
            .shares
            .values()
            .map(|f| {
                let sent = f.shares.iter().map(|s| (s.from, s.dealt.ciphertext.clone()));
                (f.recipient, sent.collect())
            })
            .collect(),
        answered,
        upload_digests,
        upload_bytes: if closed >= Phase::MaskedInputCollection { attempt.upload_bytes } else { 0 },
        phase_seconds: attempt.phase_seconds.clone(),
        set_sizes: attempt.set_sizes.iter().map(|&s| s as u64).collect(),
        contributed: contributed.iter().copied().collect(),
    }
}

impl Engine {
    /// The caller saved the attempt `ctx` durably up to the close of `phase`
    /// ([`Output::SaveAttempt`]): that phase's replies may go out, and the next phase's
    /// deadline runs from `now` (its clients could not answer before). A save of an attempt
    /// that has ended since is ignored.
    pub fn attempt_saved(&mut self, ctx: &RoundContext, phase: Phase, now: Instant) {
        let attempt = match &mut self.state {
            State::Running(a) if a.ctx == *ctx => a,
            State::Committing { attempt, .. } if attempt.ctx == *ctx => attempt,
            _ => return,
        };
        if attempt.released.is_none_or(|r| r < phase) {
            attempt.released = Some(phase);
            let next = Phase::ALL.get(phase.index() + 1).copied();
            if next == Some(attempt.phase) && matches!(self.state, State::Running(_)) {
                let State::Running(a) = &mut self.state else { unreachable!("matched above") };
                a.phase_opened = now;
                a.deadline = now + a.info.phase_deadlines[a.phase.index()];
            }
        }
    }

    /// The phase close of `ctx` could not be saved: its replies never go out, and the attempt
    /// aborts (the round is retried as a new attempt).
    pub fn attempt_not_saved(&mut self, ctx: &RoundContext, why: String) {
        if matches!(&self.state, State::Running(a) if a.ctx == *ctx) {
            self.abort(AbortReason::NotSaved(why));
        }
    }

    /// Resumes the attempt a coordinator saved before it stopped: the phase after the last
    /// one saved opens with a fresh deadline, nothing of it received; the closed phases' replies
    /// are the saved ones, released at once; the attempt's clients carry on by resending their
    /// messages. Only before any attempt of this engine started, on the checkpoint and round
    /// the attempt was planned for.
    ///
    /// If it cannot resume, the attempt is recorded as aborted (its contributors stay
    /// contributors on the checkpoint) and the engine selects a new attempt as usual.
    pub fn resume(&mut self, saved: SavedAttempt, now: Instant) -> Result<(), AbortReason> {
        let plan = saved.plan.clone();
        let resumed = self.resumed(saved, now);
        if let Err(reason) = &resumed {
            self.resume_failed(&plan, reason.clone());
        }
        resumed
    }

    /// The caller will not resume `saved` (it does not match the audit log): the attempt is
    /// recorded as aborted, as [`resume`](Self::resume) does when it cannot resume; its
    /// contributors stay contributors on the checkpoint. Returns `reason` as the error.
    pub fn resume_refused(
        &mut self,
        saved: SavedAttempt,
        reason: AbortReason,
    ) -> Result<(), AbortReason> {
        if saved.plan.checkpoint == self.checkpoint_hash
            && saved.plan.task_id == self.config.task_id
        {
            self.contributed.extend(saved.contributed.iter().copied());
        }
        self.resume_failed(&saved.plan, reason.clone());
        Err(reason)
    }

    fn resume_failed(&mut self, plan: &RoundPlan, reason: AbortReason) {
        tracing::warn!(round = plan.round_id.0, %reason, "the saved attempt does not resume");
        self.outputs.push_back(Output::Audit(AuditEvent::RoundAborted {
            round_id: plan.round_id,
            attempt: plan.attempt,
            reason,
        }));
        self.outputs.push_back(Output::AttemptEnded(plan.context()));
    }

    fn resumed(&mut self, saved: SavedAttempt, now: Instant) -> Result<(), AbortReason> {
        let cannot = |why: &str| AbortReason::CannotResume(why.to_owned());
        if !matches!(self.state, State::Selecting { .. }) {
            return Err(cannot("an attempt of this task already started"));
        }
        let plan = saved.plan.clone();
        if plan.task_id != self.config.task_id {
            return Err(cannot("it belongs to another task"));
        }
        if plan.checkpoint != self.checkpoint_hash
            || saved.checkpoint_version != self.checkpoint_version
        {
            return Err(cannot("it trains on another checkpoint than the current one"));
        }
        // Contributors on this checkpoint stay contributors whatever happens to the attempt.
        self.contributed.extend(saved.contributed.iter().copied());
        if plan.round_id.0 != self.round_id {
            return Err(cannot("it is not the current round"));
        }
        let c = &self.config;
        if plan.graph != c.graph
            || plan.dropout_ppm != c.dropout_ppm
            || plan.corrupt_ppm != c.corrupt_ppm
            || plan.adversary != c.adversary
            || plan.quant != self.quant
            || plan.dim as usize != self.model.len() + 1
            || saved.upload_chunk_words != c.upload_chunk_words
        {
            return Err(cannot("the task's configuration changed since it was planned"));
        }
        let closed = saved.closed();
        let adverts: Vec<_> = saved.server.adverts.iter().map(|a| a.advert.clone()).collect();
        let mut server = SecAggServer::resume((*plan).clone(), self.verifier.clone(), saved.server)
            .map_err(|e| AbortReason::CannotResume(e.to_string()))?
            .with_upload_chunk_words(c.upload_chunk_words as usize)
            .with_max_uploads_in_flight(c.max_uploads_in_flight);
        if let Some(pool) = &self.pool {
            server = server.with_thread_pool(pool.clone());
        }
        let bad = || cannot("its replies do not fit its state");
        let mut keys = BTreeMap::new();
        for (recipient, positions) in saved.keys {
            let forwarded = positions
                .iter()
                .map(|&i| adverts.get(i as usize).cloned())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(bad)?;
            let fwd = KeysForward {
                version: plan.version,
                ctx: plan.context(),
                recipient,
                adverts: forwarded,
            };
            keys.insert(recipient, Arc::new(fwd));
        }
        let shares: BTreeMap<ClientId, Arc<SharesForward>> = server
            .rebuild_share_forwards(saved.shares)
            .ok_or_else(bad)?
            .into_iter()
            .map(|f| (f.recipient, Arc::new(f)))
            .collect();
        // The replies go to exactly the set each close fixed.
        let ids = |set: BTreeSet<usize>| -> BTreeSet<ClientId> {
            set.into_iter().map(|i| plan.selected[i]).collect()
        };
        let u1 = ids(server.u1());
        if keys.keys().copied().collect::<BTreeSet<_>>() != u1
            || keys.values().any(|k| k.adverts.iter().any(|a| !u1.contains(&a.client)))
        {
            return Err(bad());
        }
        let u2 = if closed >= Phase::ShareKeys { ids(server.u2()) } else { BTreeSet::new() };
        if shares.keys().copied().collect::<BTreeSet<_>>() != u2
            || shares.values().any(|f| f.ctx != plan.context())
        {
            return Err(bad());
        }
        let mut answered: [BTreeMap<ClientId, [u8; 32]>; 6] = Default::default();
        if saved.answered.len() != closed.index() + 1 {
            return Err(bad());
        }
        for (i, list) in saved.answered.into_iter().enumerate() {
            answered[i] = list.into_iter().collect();
        }
        let ctx = plan.context();
        let exclusions = server.exclusions().map(Arc::new);
        let survivors = server.consistency_request().map(Arc::new);
        let unmask = if closed >= Phase::ConsistencyCheck {
            let request = server.unmasking_request().map_err(|e| cannot(&e.to_string()))?;
            Some(Arc::new(request))
        } else {
            None
        };
        // Once the unmasking closed, the sum is all that is left: it is computed at once.
        let next = Phase::ALL.get(closed.index() + 1).copied().unwrap_or(Phase::Unmasking);
        let deadlines = c.deadlines.phases();
        let attempt = Attempt {
            ctx,
            info: Assignment {
                plan: plan.clone(),
                checkpoint_version: saved.checkpoint_version,
                upload_chunk_words: saved.upload_chunk_words,
                phase_deadlines: deadlines,
            },
            server,
            phase: next,
            phase_opened: now,
            deadline: now + deadlines[next.index()],
            phase_seconds: saved.phase_seconds,
            set_sizes: saved.set_sizes.iter().map(|&s| s as usize).collect(),
            answered,
            checking: BTreeMap::new(),
            upload_digests: saved.upload_digests.into_iter().collect(),
            upload_bytes: saved.upload_bytes,
            keys,
            shares,
            exclusions,
            survivors,
            unmask,
            gone: BTreeSet::new(),
            upload_leases: BTreeMap::new(),
            evicted: BTreeSet::new(),
            released: Some(closed),
        };
        if attempt.set_sizes.len() != closed.index() + 2 {
            return Err(bad());
        }
        tracing::info!(
            round = plan.round_id.0,
            attempt = %hex::encode(plan.attempt.0),
            phase = %next.name(),
            "resuming the attempt saved before the restart"
        );
        self.waiting.clear();
        self.state = State::Running(Box::new(attempt));
        if closed == Phase::Unmasking {
            self.aggregate();
        }
        Ok(())
    }
}
