//! The steps of a fuzzed schedule and the clients' side of them — honest, stray and corrupt
//! messages — and the end of every schedule, where the honest clients carry the task on.

use std::time::Duration;

use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::server::UploadProgress;
use fedsec_crypto::{AttemptNonce, ClientId, RoundContext, RoundId, RoundPlan, TaskId};

use super::wire::{Core, Wire, corrupt};
use super::world::{Out, Run, World};
use crate::engine::tests::DIM;
use crate::engine::{EngineState, Reply};
use crate::error::Error;

/// One step of a schedule. Numbers pick a client of the running attempt, a site, a phase or a
/// field, modulo what there is.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// A site checks in.
    CheckIn(u8),
    /// A site asks where its check-in stands.
    PollCheckIn(u8),
    /// A client takes its next step: reads its reply, or sends its next message.
    Step(u8),
    /// Every client of the attempt takes one step.
    StepEach,
    /// Every site checks in.
    CheckInAll,
    /// A client sends again a message the engine took (of this attempt, or the last ended).
    Resend(u8, u8),
    /// A client sends another message for a phase it answered.
    Conflict(u8, u8),
    /// A client sends its next message with one field corrupted.
    Corrupt(u8, u8, u8),
    /// A client sends a message for a phase that has not opened.
    Early(u8, u8),
    /// A client sends a message bound to another round, attempt or task, or an ended attempt.
    OtherContext(u8, u8),
    /// A site the attempt did not select, or a stranger, sends a message for it.
    Unselected(u8, u8),
    /// A client sends its message in another client's name.
    Impersonate(u8, u8),
    /// A client stops answering.
    Drop(u8),
    /// A client's connection closes (and it stops answering).
    Gone(u8),
    /// A client answers again.
    Back(u8),
    /// The clock moves on (by 40 ms steps: up to about a phase's deadline); deadlines fire.
    Advance(u8),
    /// The clock moves to the engine's next deadline.
    Deadline,
    /// The runtime acknowledges the saves, sums and checkpoints it held back.
    Persist,
    /// A sum held back fails to compute.
    FailSum,
    /// The coordinator restarts and resumes its last durable phase close.
    Restart,
}

/// An id no site has.
const STRANGER: ClientId = ClientId([0xee; 32]);

impl World {
    pub(super) fn apply(&mut self, op: &Op) {
        let site = |s: u8, w: &World| w.sites[s as usize % w.sites.len()].key.id();
        match *op {
            Op::CheckIn(s) => {
                let id = site(s, self);
                let answer = self.engine.check_in(id, self.now);
                self.check_in_answer(&id, &answer);
                self.drain();
            }
            Op::PollCheckIn(s) => {
                let id = site(s, self);
                self.check_in_answer(&id, &self.engine.poll_check_in(&id));
            }
            Op::Step(i) => {
                self.step(i as usize);
            }
            Op::StepEach => {
                for i in 0..self.run.as_ref().map_or(0, |r| r.parties.len()) {
                    self.step(i);
                }
            }
            Op::CheckInAll => {
                for s in 0..self.sites.len() {
                    self.apply(&Op::CheckIn(s as u8));
                }
            }
            Op::Resend(i, k) => self.resend(i as usize, k),
            Op::Conflict(i, k) => self.conflict(i as usize, k),
            Op::Corrupt(i, field, byte) => self.corrupt(i as usize, field, byte),
            Op::Early(i, k) => self.early(i as usize, k),
            Op::OtherContext(i, k) => self.other_context(i as usize, k),
            Op::Unselected(s, k) => self.unselected(site(s, self), k),
            Op::Impersonate(i, j) => self.impersonate(i as usize, j as usize),
            Op::Drop(i) | Op::Gone(i) | Op::Back(i) => {
                let Some(run) = self.run.as_mut() else { return };
                let n = run.parties.len();
                let p = &mut run.parties[i as usize % n];
                p.dropped = !matches!(op, Op::Back(_));
                let id = p.id;
                match op {
                    Op::Gone(_) => self.engine.client_gone(&id, self.now),
                    Op::Back(_) => self.engine.client_back(&id),
                    _ => {}
                }
                self.drain();
            }
            Op::Advance(steps) => {
                self.now += Duration::from_millis(40 * u64::from(steps));
                self.fire();
            }
            Op::Deadline => {
                if let Some(due) = self.engine.poll_timeout() {
                    self.now = self.now.max(due);
                    self.fire();
                }
            }
            Op::Persist => self.persist(),
            Op::FailSum => self.fail_sum(),
            Op::Restart => self.restart(),
        }
    }

    /// After the schedule: every client answers, every site checks in, deadlines pass and the
    /// runtime acknowledges everything, until the task has run all its rounds — or fewer
    /// eligible clients than a round needs are left, and no round starts.
    pub(super) fn finish(&mut self) {
        self.finishing = true;
        for _ in 0..5_000 {
            if self.engine.status().state == EngineState::Finished {
                return;
            }
            self.persist();
            for site in 0..self.sites.len() {
                let id = self.sites[site].key.id();
                if self.run.as_ref().is_none_or(|r| r.party(&id).is_none()) {
                    let answer = self.engine.check_in(id, self.now);
                    self.check_in_answer(&id, &answer);
                    self.drain();
                }
            }
            if self.step_all() || self.holds_anything() {
                continue;
            }
            let state = self.engine.status().state;
            if state == EngineState::Finished {
                return;
            }
            let eligible = self.sites.iter().filter(|s| !self.contributors.contains(&s.key.id()));
            if state == EngineState::Selecting && eligible.count() < self.config.min_clients {
                return;
            }
            let due = self.engine.poll_timeout().expect("the engine waits for a deadline");
            self.now = self.now.max(due);
            self.fire();
        }
        panic!("the task never settled");
    }

    /// Every client of the running attempt steps until none can; whether any did.
    pub(super) fn step_all(&mut self) -> bool {
        let mut any = false;
        loop {
            let n = self.run.as_ref().map_or(0, |r| r.parties.len());
            let stepped = (0..n).fold(false, |stepped, i| self.step(i) | stepped);
            any |= stepped;
            if !stepped {
                return any;
            }
        }
    }

    /// A client of the running attempt takes its next step; whether anything changed.
    fn step(&mut self, i: usize) -> bool {
        let Some(run) = self.run.as_mut() else { return false };
        let i = i % run.parties.len();
        let p = &mut run.parties[i];
        if p.out.is_some() || p.dropped || p.done {
            return false;
        }
        if let Some((_, gone)) = p.stop_at.filter(|(at, _)| p.next >= *at) {
            p.dropped = true;
            if gone {
                let id = p.id;
                self.engine.client_gone(&id, self.now);
                self.drain();
            }
            return true;
        }
        let Some(wire) = p.pending.clone() else { return self.prepare(i) };
        let (id, ctx) = (p.id, run.ctx);
        let got = self.deliver(id, &wire, Some(Core::Taken));
        let changed = self.after_send(ctx, id, wire, &got, true);
        self.drain();
        changed
    }

    /// A client reads its reply and makes its next message (its protocol client may refuse
    /// the reply: only for a rule the attempt's dropouts or corrupt clients explain).
    fn prepare(&mut self, i: usize) -> bool {
        let chunk_words = self.config.upload_chunk_words as usize;
        let Some(run) = self.run.as_mut() else { return false };
        let (ctx, plan) = (run.ctx, run.plan.clone());
        let bad_ciphertexts = run.bad_ciphertexts.clone();
        let p = &mut run.parties[i];
        let made = match p.next {
            Phase::AdvertiseKeys => Ok(Wire::Advert(p.client.advertise().clone())),
            next => {
                let prev = Phase::ALL[next.index() - 1];
                let reply = match self.engine.reply(&p.id, &ctx, prev) {
                    None => return false,
                    Some(Ok(reply)) => reply,
                    Some(Err(e)) => {
                        assert_eq!(e, Error::PhaseClosed { phase: prev }, "a reply refused");
                        p.out = Some(Out::NoReply(prev));
                        return true;
                    }
                };
                match (next, reply) {
                    (Phase::ShareKeys, Reply::Keys(k)) => {
                        p.client.handle_keys(&k).map(Wire::Shares)
                    }
                    (Phase::Complaints, Reply::Shares(s)) => {
                        p.client.handle_shares(&s).map(Wire::Complaints)
                    }
                    (Phase::MaskedInputCollection, Reply::Excluded(e)) => {
                        let site = &mut self.sites[p.site];
                        let x = plan.quant.quantize(&site.update, site.examples, &mut self.rng);
                        let x = x.expect("a finite update quantizes");
                        let y = p.client.handle_exclusions(&e, &x, &mut site.ledger);
                        y.map(|y| {
                            p.masked = y.data.chunks_exact(4).map(word).collect();
                            p.input = x;
                            p.chunks = y.chunks(chunk_words);
                            p.taken = vec![false; p.chunks.len()];
                            Wire::Chunk(p.chunks[0].clone())
                        })
                    }
                    (Phase::ConsistencyCheck, Reply::Survivors(r)) => {
                        p.client.handle_consistency(&r).map(Wire::Sig)
                    }
                    (Phase::Unmasking, Reply::Unmask(r)) => {
                        p.client.handle_unmasking(&r).map(Wire::Unmask)
                    }
                    (next, reply) => panic!("{next} needs another reply than {reply:?}"),
                }
            }
        };
        match made {
            Ok(wire) => p.pending = Some(wire),
            Err(e) => {
                use fedsec_crypto::Error as E;
                let explained = matches!(e, E::TooFewClients { .. } | E::TooFewNeighbours { .. })
                    || matches!(&e, E::BadShare { dealer, .. } if bad_ciphertexts.contains(dealer));
                assert!(explained, "an honest client refused what the engine sent it: {e}");
                p.out = Some(Out::Refused(e));
            }
        }
        true
    }

    /// The client `id` of attempt `ctx` after the engine answered `wire`: what it sent is
    /// recorded; a late message puts it out of the attempt. Whether anything changed.
    fn after_send(
        &mut self,
        ctx: RoundContext,
        id: ClientId,
        wire: Wire,
        got: &Result<Option<UploadProgress>, Error>,
        honest: bool,
    ) -> bool {
        let (chunk_words, idle, now) =
            (self.config.upload_chunk_words as usize, self.config.upload_idle, self.now);
        let Some(p) = self.run_mut(ctx).and_then(|r| r.parties.iter_mut().find(|p| p.id == id))
        else {
            return false;
        };
        match got {
            Ok(progress) => {
                match wire {
                    Wire::Chunk(c) => {
                        let k = c.offset as usize / chunk_words;
                        p.chunks[k] = c;
                        p.taken[k] = true;
                        let all = p.taken.iter().all(|t| *t);
                        match progress {
                            Some(UploadProgress::Partial { .. }) => {
                                assert!(!all, "the last chunk completes the upload");
                                p.lease = Some(now + idle);
                            }
                            Some(UploadProgress::Complete) => {
                                assert!(all, "an upload completes with its last chunk");
                                p.complete = true;
                                p.lease = None;
                                p.next = Phase::ConsistencyCheck;
                            }
                            _ => {}
                        }
                        let next = p.taken.iter().position(|t| !t).filter(|_| !p.complete);
                        p.pending = next.map(|k| Wire::Chunk(p.chunks[k].clone()));
                    }
                    other => {
                        let phase = other.phase();
                        p.accepted[phase.index()] = Some(other);
                        p.pending = None;
                        match phase.next() {
                            Some(next) => p.next = next,
                            None => p.done = true,
                        }
                    }
                }
                true
            }
            Err(Error::Protocol(fedsec_crypto::Error::TooManyUploadsInFlight { .. })) => false,
            Err(Error::UploadEvicted { .. }) => {
                assert!(p.evicted);
                false
            }
            Err(
                Error::PhaseClosed { .. }
                | Error::RoundAborted(_)
                | Error::NotCurrentAttempt { .. },
            ) => {
                p.out = Some(Out::Late(wire.phase()));
                true
            }
            Err(Error::Protocol(fedsec_crypto::Error::NotEligible { .. })) if p.excluded => {
                // Its corrupt ShareKeys excluded it: the attempt goes on without it.
                p.out = Some(Out::NoReply(Phase::ShareKeys));
                true
            }
            Err(e) => {
                assert!(!honest, "an honest message refused: {e}");
                false
            }
        }
    }

    fn run_mut(&mut self, ctx: RoundContext) -> Option<&mut Run> {
        match self.run.as_mut() {
            Some(run) if run.ctx == ctx => Some(run),
            _ => self.ended.get_mut(&ctx),
        }
    }

    /// The client of the running attempt `i` picks, its next message made if it can be: its
    /// index, if it has one to send.
    fn ready(&mut self, i: usize) -> Option<usize> {
        let i = i % self.run.as_ref()?.parties.len();
        let p = &self.run.as_ref()?.parties[i];
        if p.pending.is_none() && !p.done && p.out.is_none() {
            self.prepare(i);
        }
        let p = &self.run.as_ref()?.parties[i];
        (p.out.is_none() && p.pending.is_some()).then_some(i)
    }

    fn corrupt(&mut self, i: usize, field: u8, byte: u8) {
        let Some(i) = self.ready(i) else { return };
        let run = self.run.as_ref().expect("a running attempt");
        let p = &run.parties[i];
        let other = run.parties.iter().find(|o| o.id != p.id).map_or(STRANGER, |o| o.id);
        let honest = p.pending.clone().expect("ready");
        let (bad, core) = corrupt(&honest, field, byte, other, STRANGER, run.plan.dim);
        let (id, ctx) = (p.id, run.ctx);
        let got = self.deliver(id, &bad, Some(core));
        if got.is_ok() {
            // A corruption the engine cannot see: the sender is a corrupt client.
            let run = self.run.as_mut().expect("a message taken keeps its attempt running");
            match &bad {
                Wire::Shares(_) => run.bad_ciphertexts.extend([id]),
                Wire::Chunk(_) => run.flipped_words = true,
                Wire::Unmask(_) => run.wrong_shares.extend([id]),
                _ => unreachable!("adverts and signatures are checked"),
            }
        }
        self.after_send(ctx, id, bad, &got, false);
        self.drain();
    }

    fn resend(&mut self, i: usize, k: u8) {
        let run = match self.last_ended.filter(|_| k >= 128) {
            Some(ctx) => self.ended.get(&ctx),
            None => self.run.as_ref(),
        };
        let Some(run) = run else { return };
        let p = &run.parties[i % run.parties.len()];
        let mut sent: Vec<Wire> = p.accepted.iter().flatten().cloned().collect();
        let chunks = p.chunks.iter().zip(&p.taken).filter(|(_, t)| **t);
        sent.extend(chunks.map(|(c, _)| Wire::Chunk(c.clone())));
        if let Some(wire) = sent.get(k as usize % sent.len().max(1)).cloned() {
            let id = p.id;
            let _ = self.deliver(id, &wire, None);
            self.drain();
        }
    }

    fn conflict(&mut self, i: usize, k: u8) {
        let Some(run) = &self.run else { return };
        let p = &run.parties[i % run.parties.len()];
        let mut sent: Vec<Wire> = p.accepted.iter().flatten().cloned().collect();
        let chunks = p.chunks.iter().zip(&p.taken).filter(|(_, t)| **t);
        sent.extend(chunks.map(|(c, _)| Wire::Chunk(c.clone())));
        if let Some(wire) = sent.get(k as usize % sent.len().max(1)) {
            let (id, other) = (p.id, wire.altered(k));
            let _ = self.deliver(id, &other, None);
            self.drain();
        }
    }

    fn early(&mut self, i: usize, k: u8) {
        let (Some(run), Some(open)) = (&self.run, self.engine.status().phase) else { return };
        if open == Phase::Unmasking {
            return;
        }
        let last = Phase::ALL.len() - 1;
        let later = Phase::ALL[open.index() + 1 + k as usize % (last - open.index())];
        let p = &run.parties[i % run.parties.len()];
        let wire = Wire::crafted(later, run.ctx, p.id, self.chunk_len());
        let _ = self.deliver(p.id, &wire, None);
        self.drain();
    }

    fn other_context(&mut self, i: usize, k: u8) {
        let Some(run) = &self.run else { return };
        let p = &run.parties[i % run.parties.len()];
        let phases = Phase::ALL.len();
        let phase = Phase::ALL[k as usize % phases];
        let mut plan: RoundPlan = (*run.plan).clone();
        let ctx = match (k as usize / phases) % 4 {
            0 => {
                plan.round_id = RoundId(plan.round_id.0 + 1);
                plan.context()
            }
            1 => {
                plan.attempt = AttemptNonce([k; 16]);
                plan.context()
            }
            2 => {
                plan.task_id = TaskId([k; 16]);
                plan.context()
            }
            _ => self.last_ended.unwrap_or(RoundContext([k; 32])),
        };
        let mut wire = match p.pending.clone().filter(|w| w.phase() == phase) {
            Some(wire) => wire,
            None => Wire::crafted(phase, run.ctx, p.id, self.chunk_len()),
        };
        wire.set_ctx(ctx);
        let id = p.id;
        let _ = self.deliver(id, &wire, None);
        self.drain();
    }

    fn unselected(&mut self, site: ClientId, k: u8) {
        let Some(run) = &self.run else { return };
        let from = if run.party(&site).is_some() { STRANGER } else { site };
        let phase = Phase::ALL[k as usize % Phase::ALL.len()];
        let wire = Wire::crafted(phase, run.ctx, from, self.chunk_len());
        let _ = self.deliver(from, &wire, None);
        self.drain();
    }

    fn impersonate(&mut self, i: usize, j: usize) {
        let Some(i) = self.ready(i) else { return };
        let run = self.run.as_ref().expect("a running attempt");
        let (claimed, wire) = (run.parties[i].id, run.parties[i].pending.clone().expect("ready"));
        let from = run.parties[j % run.parties.len()].id;
        if from == claimed {
            return;
        }
        let core =
            Error::Protocol(fedsec_crypto::Error::SenderMismatch { claimed, authenticated: from });
        let _ = self.deliver(from, &wire, Some(Core::Refused(core)));
        self.drain();
    }

    fn chunk_len(&self) -> usize {
        (self.config.upload_chunk_words as usize).min(DIM + 1)
    }
}

fn word(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
}
