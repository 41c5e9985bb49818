//! One attempt of a round in progress: the protocol server, the open phase, the replies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::messages::{
    ConsistencyRequest, Exclusions, KeysForward, SharesForward, UnmaskingRequest,
};
use fedsec_crypto::secagg::server::SecAggServer;
use fedsec_crypto::{ClientId, RoundContext};

use super::types::{Assignment, RoundOutcome};
use crate::error::AbortReason;

/// One attempt in progress.
pub(super) struct Attempt {
    pub(super) info: Assignment,
    pub(super) ctx: RoundContext,
    pub(super) server: SecAggServer,
    pub(super) phase: Phase,
    pub(super) phase_opened: Instant,
    pub(super) deadline: Instant,
    pub(super) phase_seconds: Vec<f64>,
    pub(super) set_sizes: Vec<usize>,
    /// Digest of each client's message, per phase (phase 2 uses `upload_digests`).
    pub(super) answered: [BTreeMap<ClientId, [u8; 32]>; 6],
    /// The ShareKeys being checked off the engine: each sender's message digest, from the
    /// checker handed out until the verdict comes back (one check per client at a time).
    pub(super) checking: BTreeMap<ClientId, ([u8; 32], tokio::sync::watch::Sender<()>)>,
    /// Digest of each chunk of each client's masked input.
    pub(super) upload_digests: BTreeMap<ClientId, Vec<Option<[u8; 32]>>>,
    pub(super) upload_bytes: u64,
    /// Each client's reply to phase 0 (made once; every resend of the reply shares it).
    pub(super) keys: BTreeMap<ClientId, Arc<KeysForward>>,
    /// Each client's reply to phase 1 (likewise).
    pub(super) shares: BTreeMap<ClientId, Arc<SharesForward>>,
    /// E, the same for every sender of a complaints message (shared, never copied).
    pub(super) exclusions: Option<Arc<Exclusions>>,
    /// U3, the same for every client of it (shared with each reply, never copied).
    pub(super) survivors: Option<Arc<ConsistencyRequest>>,
    /// U3 and its signatures, the same for every signer (shared, never copied).
    pub(super) unmask: Option<Arc<UnmaskingRequest>>,
    /// Selected clients whose connection closed: no phase waits for them any more. A message
    /// from one of them (it reconnected in time) takes it off the list.
    pub(super) gone: BTreeSet<ClientId>,
    /// Upload leases: when each partial masked input is evicted unless a new chunk of it comes
    /// first (phase 2 only; a complete upload holds none).
    pub(super) upload_leases: BTreeMap<ClientId, Instant>,
    /// Clients whose partial upload was evicted: dropped for the rest of the attempt, like
    /// `gone`, but their chunks are refused (a new message does not bring them back).
    pub(super) evicted: BTreeSet<ClientId>,
    /// The last phase whose close is durable (saved, or not to be saved): its replies, and
    /// those of the phases before it, may go out. `None` until phase 0's close is.
    pub(super) released: Option<Phase>,
}

impl Attempt {
    pub(super) fn outcome(
        &self,
        completed: bool,
        new_version: Option<u64>,
        abort: Option<AbortReason>,
    ) -> RoundOutcome {
        RoundOutcome {
            round_id: self.info.plan.round_id,
            attempt: self.info.plan.attempt,
            ctx: self.ctx,
            completed,
            new_checkpoint_version: new_version,
            abort_reason: abort,
            set_sizes: self.set_sizes.clone(),
            phase_seconds: self.phase_seconds.clone(),
            upload_bytes: self.upload_bytes,
        }
    }

    /// The clients the open phase runs over: U, U1, U2, the senders of complaints outside E,
    /// U3, U4.
    pub(super) fn expected(&self) -> BTreeSet<ClientId> {
        let plan = &self.info.plan;
        let ids = |s: BTreeSet<usize>| s.into_iter().map(|i| plan.selected[i]).collect();
        match self.phase {
            Phase::AdvertiseKeys => plan.selected.iter().copied().collect(),
            Phase::ShareKeys => ids(self.server.u1()),
            Phase::Complaints => ids(self.server.u2()),
            Phase::MaskedInputCollection => ids(self.server.uploaders()),
            Phase::ConsistencyCheck => ids(self.server.u3()),
            Phase::Unmasking => self
                .unmask
                .as_ref()
                .map(|r| r.signatures.iter().map(|s| s.client).collect())
                .unwrap_or_default(),
        }
    }

    /// The first upload lease to run out, while phase 2 is open.
    pub(super) fn next_lease_expiry(&self) -> Option<Instant> {
        if self.phase != Phase::MaskedInputCollection {
            return None;
        }
        self.upload_leases.values().min().copied()
    }

    /// True when every client the open phase runs over has answered it, or is gone (its
    /// connection closed, or its upload was evicted).
    ///
    /// Called after every message, so it first compares counts: the open phase runs over
    /// `set_sizes[phase]` clients (|U|, then the size each close recorded), and it cannot be
    /// done while fewer of them answered than are not gone. Only then are the sets compared —
    /// near a phase's end, not after each of its n messages.
    pub(super) fn all_answered(&self) -> bool {
        // A ShareKeys being checked off the engine has arrived: its verdict is awaited.
        if self.phase == Phase::ShareKeys && !self.checking.is_empty() {
            return false;
        }
        let answered = match self.phase {
            Phase::MaskedInputCollection => self.server.u3_len(),
            p => self.answered[p.index()].len(),
        };
        let runs_over = self.set_sizes.get(self.phase.index()).copied().unwrap_or(0);
        // Phase 1's refused dealers are out of the attempt: nothing more is awaited of them.
        let refused = match self.phase {
            Phase::ShareKeys => self.server.refused_dealers(),
            _ => BTreeSet::new(),
        };
        let away = self
            .gone
            .union(&self.evicted)
            .chain(refused.iter().filter(|c| !self.gone.contains(c) && !self.evicted.contains(c)));
        let away = away.count();
        if answered + away < runs_over {
            return false;
        }
        let expected: BTreeSet<ClientId> = self
            .expected()
            .into_iter()
            .filter(|c| !self.gone.contains(c) && !self.evicted.contains(c) && !refused.contains(c))
            .collect();
        match self.phase {
            Phase::MaskedInputCollection => {
                let plan = &self.info.plan;
                let done: BTreeSet<ClientId> =
                    self.server.u3().into_iter().map(|i| plan.selected[i]).collect();
                expected.is_subset(&done)
            }
            p => expected.iter().all(|c| self.answered[p.index()].contains_key(c)),
        }
    }
}
