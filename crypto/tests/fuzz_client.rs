//! The client's state machine under random server message sequences. One client of a round is
//! under test; the server and the other clients are honest and move on each time it answers.
//! It is fed, in random order, the server's honest messages, replays of what it was sent,
//! messages for other phases, and messages corrupted in one field: another context or
//! version, forged or garbled signatures, fewer than q signers, share ciphertexts that do not
//! decrypt, U3 views that omit it, fall below q or name a neighbour whose shares it never got.
//! Every answer is checked against a model of the client: each refusal is the error of the
//! rule broken (the exact variant for each corruption), a phase once answered is answered with
//! the same bytes or refused, it never reveals both a self-mask share and a mask-key share of
//! one peer, never sends two different masked inputs, and the round (with it, or without it
//! once it stopped) ends with the exact sum of U3's inputs. A plan below the client's floor or
//! its own parameters is refused by the rule it breaks.
//!
//! `FEDSEC_FUZZ_CASES` sets the cases per property (`cargo test` runs a smoke count).

mod common;

use fedsec_crypto::PROTOCOL_VERSION;
use std::collections::BTreeSet;
use std::sync::Arc;

use common::client_world::*;
use common::fuzz::*;
use common::{rng, verifier};
use fedsec_crypto::RoundPlan;
use fedsec_crypto::context::{AdversaryClass, GraphKind, PPM};
use fedsec_crypto::error::{Error, Floor, ForwardFault, Malformation, PlanRule, ViewContradiction};
use fedsec_crypto::ids::{ClientId, TaskId};
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::client::{ClientPolicy, ContributionLedger, SecAggClient, TrainedOn};
use fedsec_crypto::secagg::driver::stand_in_trained_on;
use fedsec_crypto::secagg::messages::*;
use fedsec_crypto::sign::IdentityKey;
use proptest::collection::vec;
use proptest::prelude::*;
use rand::RngExt;
use rand_chacha::ChaCha20Rng;

/// One step of the sequence.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The honest message of the phase the client is in.
    Current,
    /// The last message of this kind delivered again (or the honest one).
    Replay(usize),
    /// The honest message of this kind (or an empty one) corrupted as the number chooses.
    Corrupt(usize, u32),
    /// An empty message of this kind.
    Empty(usize),
}

/// What the client must hold, and so answer.
#[derive(Default)]
struct Model {
    /// The kind the client answers next (5: all answered).
    next: usize,
    aborted: Option<Error>,
    /// Each kind's first accepted message and the reply.
    answered: [Option<(ToClient, Msg)>; 5],
    /// Owners of the shares held: itself and the senders of the shares it accepted.
    held: BTreeSet<usize>,
    /// The U3 it signed.
    signed: Option<Survivors>,
    /// The excluded set E it masked under.
    excluded: Option<Survivors>,
}

/// The client under test, the model of what it must answer, and its world.
struct Fuzz {
    world: World,
    client: SecAggClient,
    ledger: ContributionLedger,
    model: Model,
    rng: ChaCha20Rng,
    stranger: Arc<IdentityKey>,
    /// The last message of each kind delivered, with the refusal its corruption earns.
    last: [Option<(ToClient, Option<Error>)>; 5],
    /// Every masked input the client sent.
    uploads: Vec<MaskedInput>,
}

impl Fuzz {
    fn new(shape: &Shape, drops: &[u8], seed: u64) -> Fuzz {
        let mut rng = rng(seed);
        let (world, client) = World::new(shape, drops, &mut rng);
        let model = Model { held: BTreeSet::from([world.me]), ..Model::default() };
        let (ledger, last, stranger) =
            (ContributionLedger::default(), Default::default(), stranger());
        Fuzz { world, client, ledger, model, rng, stranger, last, uploads: Vec::new() }
    }

    fn id(&self, i: usize) -> ClientId {
        self.world.round.plan.selected[i]
    }

    /// Plays one step of the sequence.
    fn play(&mut self, step: Step) {
        let kind = match step {
            Step::Current => self.model.next.min(4),
            Step::Replay(k) | Step::Corrupt(k, _) | Step::Empty(k) => k,
        };
        let (msg, flaw) = match step {
            Step::Current => (self.world.base(kind, self.client.advertise()), None),
            Step::Replay(k) => self.last[k]
                .clone()
                .unwrap_or_else(|| (self.world.base(k, self.client.advertise()), None)),
            Step::Corrupt(k, choice) => {
                let (held, own) = (&self.model.held, self.client.advertise());
                self.world.corrupt(k, choice, held, &self.stranger, own)
            }
            Step::Empty(k) => {
                let (plan, own) = (&self.world.round.plan, self.client.advertise());
                (ToClient::empty(k, plan.context(), own, plan.n()), None)
            }
        };
        self.deliver(kind, msg, flaw);
    }

    /// Delivers `msg` and checks the answer against the model; an accepted answer goes on to
    /// the server.
    fn deliver(&mut self, kind: usize, msg: ToClient, flaw: Option<Error>) {
        let phase = Phase::ALL[kind];
        let m = &self.model;
        let expected = match (&m.answered[kind], &m.aborted) {
            // A phase answered: the same request gets the same reply, another is refused.
            (Some((first, reply)), _) if *first == msg => Ok(Some(reply.clone())),
            (Some(_), _) => Err(Error::PhaseAlreadyAnswered(phase)),
            (None, Some(e)) => Err(Error::Aborted(Box::new(e.clone()))),
            (None, None) if m.next != kind => {
                Err(Error::OutOfPhase { expected: Phase::ALL[m.next].name(), got: phase })
            }
            (None, None) => self.content(&msg, flaw.clone()).map(|()| None),
        };
        let reaches_content = m.answered[kind].is_none() && m.aborted.is_none() && m.next == kind;
        let input = self.world.round.inputs[self.world.me].clone();
        let got = feed(&mut self.client, &msg, &input, &mut self.ledger);
        if let Ok(Msg::Masked(y)) = &got {
            self.uploads.push(y.clone());
        }
        self.last[kind] = Some((msg.clone(), flaw));
        match (got, expected) {
            (Ok(reply), Ok(Some(cached))) => assert_eq!(reply, cached, "answered again alike"),
            (Ok(reply), Ok(None)) => {
                let honest = self.world.honest[kind].as_ref() == Some(&msg);
                // Only shares withheld, E and U3 can be wrong in ways the client cannot see (a
                // lying server).
                assert!(honest || (1..=3).contains(&kind), "accepted a bad message: {msg:?}");
                self.accept(kind, &msg, &reply);
                self.model.answered[kind] = Some((msg, reply.clone()));
                self.model.next = kind + 1;
                self.world.step(Some((reply, honest)));
            }
            (Err(got), Err(want)) => {
                assert_eq!(got, want, "{msg:?}");
                if reaches_content {
                    self.model.aborted = Some(got);
                }
            }
            (got, want) => panic!("{msg:?}: got {got:?}, expected {want:?}"),
        }
    }

    /// What the client learns from a request it accepted; its unmasking response reveals,
    /// for each owner it holds shares of, b's share if the owner is in the U3 it signed and
    /// s^SK's share otherwise — never both.
    fn accept(&mut self, kind: usize, msg: &ToClient, reply: &Msg) {
        let plan = &self.world.round.plan;
        match (msg, reply) {
            (ToClient::Shares(f), Msg::Complaints(c)) => {
                let senders = f.shares.iter().filter_map(|s| plan.index_of(&s.from));
                self.model.held.extend(senders);
                // Every dealer here is honest: nothing to complain about.
                assert!(c.complaints.is_empty(), "complaints about honest dealers");
            }
            (ToClient::Excluded(e), Msg::Masked(y)) => {
                self.model.held.retain(|&v| !e.excluded.contains(v));
                self.model.excluded = Some(e.excluded.clone());
                assert_eq!((y.offset, y.data.len()), (0, 4 * plan.dim as usize));
            }
            (ToClient::Check(r), Msg::Signature(_)) => {
                self.model.signed = Some(r.survivors.clone())
            }
            (ToClient::Unmask(_), Msg::Reveal(r)) => {
                let signed = self.model.signed.as_ref().expect("signed before unmasking");
                let owners = |list: &[RevealedShare]| -> BTreeSet<ClientId> {
                    let set: BTreeSet<ClientId> = list.iter().map(|s| s.owner).collect();
                    assert_eq!(set.len(), list.len(), "one share per owner");
                    set
                };
                let (b, s) = (owners(&r.self_mask_shares), owners(&r.mask_key_shares));
                assert!(
                    b.is_disjoint(&s),
                    "both shares of one peer revealed: {:?}",
                    b.intersection(&s)
                );
                let (alive, dropped): (Vec<usize>, Vec<usize>) =
                    self.model.held.iter().partition(|&&v| signed.contains(v));
                let ids = |v: Vec<usize>| v.into_iter().map(|i| plan.selected[i]).collect();
                assert_eq!((b, s), (ids(alive), ids(dropped)), "the shares the signed U3 asks for");
            }
            (_, reply) => assert_eq!(kind, 0, "kind {kind} answered with {reply:?}"),
        }
    }

    /// The refusal the content of `msg` earns, in the order the client checks: version and
    /// context, then the corrupted field (`flaw`), then the thresholds and its view of U3.
    fn content(&self, msg: &ToClient, flaw: Option<Error>) -> Result<(), Error> {
        let (plan, me) = (&self.world.round.plan, self.world.me);
        let (version, ctx) = {
            let mut copy = msg.clone();
            let (v, c) = copy.header_mut();
            (*v, *c)
        };
        if version != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion { got: version, supported: PROTOCOL_VERSION });
        }
        if ctx != plan.context() {
            return Err(Error::WrongContext);
        }
        let (t, q) = (plan.threshold as usize, plan.q());
        match msg {
            ToClient::Keys(f) => {
                flaw.map_or(Ok(()), Err)?;
                if !f.adverts.iter().any(|a| a.client == self.id(me)) {
                    return Err(Error::InconsistentForward(ForwardFault::OwnAdvertMissing));
                }
                let have = f.adverts.len();
                if have < t {
                    return Err(Error::TooFewNeighbours { have, need: t });
                }
                if plan.degree as usize + 1 == plan.n() && have < q {
                    return Err(Error::TooFewClients {
                        phase: Phase::AdvertiseKeys,
                        have,
                        need: q,
                    });
                }
                Ok(())
            }
            ToClient::Shares(_) => flaw.map_or(Ok(()), Err),
            ToClient::Excluded(e) => {
                bitmap(&e.excluded, plan.n())?;
                flaw.map_or(Ok(()), Err)?;
                let have = self.model.held.iter().filter(|&&v| !e.excluded.contains(v)).count();
                if have < t { Err(Error::TooFewNeighbours { have, need: t }) } else { Ok(()) }
            }
            ToClient::Check(r) => {
                bitmap(&r.survivors, plan.n())?;
                if Some(&r.excluded) != self.model.excluded.as_ref() {
                    return Err(Error::ContradictsSignedView(ViewContradiction::OtherExcludedSet));
                }
                if let Some(x) =
                    (0..plan.n()).find(|&i| r.survivors.contains(i) && r.excluded.contains(i))
                {
                    let contains = ViewContradiction::ContainsExcluded(self.id(x));
                    return Err(Error::ContradictsSignedView(contains));
                }
                self.view(&r.survivors)
            }
            ToClient::Unmask(r) => {
                if Some(&r.survivors) != self.model.signed.as_ref() {
                    return Err(Error::ContradictsSignedView(ViewContradiction::OtherU3));
                }
                flaw.map_or(Ok(()), Err)?;
                let have = r.signatures.len();
                if have < q {
                    return Err(Error::TooFewConsistencySignatures { have, need: q });
                }
                Ok(())
            }
        }
    }

    /// Whether the client signs `u3`: a well-formed bitmap, itself in it, at least q members,
    /// no neighbour whose shares it never got, and t of its holders.
    fn view(&self, u3: &Survivors) -> Result<(), Error> {
        let (plan, me, held) = (&self.world.round.plan, self.world.me, &self.model.held);
        let (n, t, q) = (plan.n(), plan.threshold as usize, plan.q());
        if !u3.contains(me) {
            return Err(Error::ContradictsSignedView(ViewContradiction::OmitsSelf));
        }
        let have = (0..n).filter(|&i| u3.contains(i)).count();
        if have < q {
            return Err(Error::TooFewClients { phase: Phase::ConsistencyCheck, have, need: q });
        }
        let graph = &self.world.round.graph;
        if let Some(v) =
            graph.neighbours(me).into_iter().find(|&v| u3.contains(v) && !held.contains(&v))
        {
            let unshared = ViewContradiction::UnsharedNeighbour(self.id(v));
            return Err(Error::ContradictsSignedView(unshared));
        }
        let have = held.iter().filter(|&&v| u3.contains(v)).count();
        if have < t { Err(Error::TooFewNeighbours { have, need: t }) } else { Ok(()) }
    }
}

/// A bitmap over n clients: its length and padding.
fn bitmap(bits: &Survivors, n: usize) -> Result<(), Error> {
    let expected = n.div_ceil(8);
    if bits.0.len() != expected {
        let got = bits.0.len();
        return Err(Error::Malformed(Malformation::BitmapLength { got, clients: n, expected }));
    }
    if !n.is_multiple_of(8) && bits.0[n / 8] >> (n % 8) != 0 {
        return Err(Error::Malformed(Malformation::BitmapPadding));
    }
    Ok(())
}

impl Fuzz {
    /// A random step: mostly the phase's honest message, else a replay, a corruption (half of
    /// them of the phase the client is in) or an empty message.
    fn random_step(&mut self) -> Step {
        let (r, next) = (&mut self.rng, self.model.next.min(4));
        let kind = r.random_range(0..5);
        match r.random_range(0..20) {
            0..=8 => Step::Current,
            9..=11 => Step::Replay(kind),
            12..=17 => Step::Corrupt(if r.random_bool(0.5) { next } else { kind }, r.random()),
            _ => Step::Empty(kind),
        }
    }

    /// The client answers what the server sends it until it stops or is done; the round ends
    /// without it if it stopped, with the exact sum of U3, its input in it iff it uploaded.
    fn finish(&mut self) {
        while self.model.aborted.is_none() && self.model.next < 5 {
            let kind = self.model.next;
            let Some(msg) = self.world.honest[kind].clone() else { break };
            self.deliver(kind, msg, None);
        }
        while self.world.at.is_some() {
            self.world.step(None);
        }
        let w = &self.world;
        match w.outcome.as_ref().expect("the round ended") {
            Ok(sum) => {
                let u3 = w.server.u3();
                assert_eq!(
                    u3.contains(&w.me),
                    w.uploaded,
                    "its input is in the sum iff it uploaded"
                );
                assert_eq!(sum, &w.round.clear_sum(u3), "the sum is the clear sum of U3");
            }
            Err(e) => assert!(
                matches!(e, Error::TooFewClients { .. } | Error::ShareCountBelowThreshold { .. }),
                "aborted by {e:?}"
            ),
        }
        assert!(self.uploads.windows(2).all(|w| w[0] == w[1]), "two different masked inputs");
    }
}

/// A plan with one field changed, or the client's floor raised one step above it: the client
/// refuses it by the rule it breaks.
fn plan_refusal(shape: &Shape, choice: u32) {
    let (plan, keys) = plan_of(shape);
    let (n, k, t, x) = (plan.n(), plan.degree, plan.threshold, choice / 16);
    let (gamma, delta) = (plan.corrupt_ppm, plan.dropout_ppm);
    let tight = ClientPolicy {
        min_adversary: plan.adversary,
        min_corrupt_ppm: gamma,
        max_dropout_ppm: delta,
        min_clients: n,
        min_surviving: plan.min_surviving(),
        one_input_per_checkpoint: true,
    };
    let start = |p: &RoundPlan,
                 policy: &ClientPolicy,
                 key: &Arc<IdentityKey>,
                 on: &TrainedOn,
                 ledger: &ContributionLedger| {
        SecAggClient::new(key.clone(), verifier(), policy, p.clone(), on, ledger).map(|_| ())
    };
    let on = stand_in_trained_on(&plan, 0);
    let ledger = ContributionLedger::default();
    assert_eq!(start(&plan, &tight, &keys[0], &on, &ledger), Ok(()), "its own floor");
    let (mut p, mut policy, mut key, mut ledger) = (plan.clone(), tight, keys[0].clone(), ledger);
    // The consistency rule, checked before the floor, for a plan whose q or n_C changed.
    let consistency = |p: &RoundPlan| {
        let (q, n_c) = (p.q(), p.assumed_corrupt());
        (p.adversary != AdversaryClass::Curious && 2 * q <= n + n_c)
            .then_some(Error::ConsistencyRuleBroken { q: q as u32, n: n as u32, n_c: n_c as u32 })
    };
    let (invalid, floor) = (Error::InvalidPlan, Error::PlanBelowFloor);
    let expected = match choice % 16 {
        0 => {
            p.version = PROTOCOL_VERSION + 1;
            Error::UnsupportedVersion { got: PROTOCOL_VERSION + 1, supported: PROTOCOL_VERSION }
        }
        1 => {
            p.selected.swap(0, 1 + x as usize % (n - 1));
            invalid(PlanRule::UnsortedSelection)
        }
        2 => {
            p.selected.truncate(1);
            invalid(PlanRule::TooFewSelected(1))
        }
        3 => {
            p.dim = 0;
            invalid(PlanRule::EmptyVector)
        }
        4 => {
            p.dropout_ppm = PPM;
            invalid(PlanRule::Fractions { dropout_ppm: PPM, corrupt_ppm: gamma })
        }
        5 if plan.adversary == AdversaryClass::Curious => {
            policy.min_adversary = AdversaryClass::SemiMalicious;
            floor(Floor::Adversary { plan: p.adversary, min: policy.min_adversary })
        }
        5 => {
            p.adversary = AdversaryClass::Curious;
            floor(Floor::Adversary { plan: p.adversary, min: plan.adversary })
        }
        6 if gamma == 0 => {
            policy.min_corrupt_ppm = 1;
            floor(Floor::CorruptFraction { plan_ppm: 0, min_ppm: 1 })
        }
        6 => {
            p.corrupt_ppm = gamma - 1;
            floor(Floor::CorruptFraction { plan_ppm: gamma - 1, min_ppm: gamma })
        }
        7 => {
            p.dropout_ppm = delta + 1;
            let above = floor(Floor::Dropout { plan_ppm: delta + 1, max_ppm: delta });
            consistency(&p).unwrap_or(above)
        }
        8 => {
            policy.min_clients = n + 1;
            floor(Floor::Clients { selected: n, min: n + 1 })
        }
        9 => {
            policy.min_surviving += 1;
            let (surviving, min) = (plan.min_surviving(), policy.min_surviving);
            floor(Floor::Surviving { surviving, min })
        }
        10 => {
            p.threshold = t - 1;
            let below = Error::PlanBelowRequired {
                degree: k,
                threshold: t - 1,
                need_degree: k,
                need_threshold: t,
            };
            consistency(&p).unwrap_or(below)
        }
        11 => {
            p.threshold = if x % 2 == 0 { 0 } else { k + 2 };
            invalid(PlanRule::Threshold {
                threshold: p.threshold as usize,
                holders: k as usize + 1,
            })
        }
        12 if plan.graph == GraphKind::Complete => {
            p.degree = k - 1;
            invalid(PlanRule::CompleteDegree { n, degree: k as usize - 1 })
        }
        12 => {
            p.degree = k + 1;
            invalid(PlanRule::HararyDegree { n, degree: k as usize + 1 })
        }
        13 => {
            p.task_id = TaskId([0xee; 16]);
            Error::CheckpointMismatch
        }
        14 => {
            let json = format!(r#"{{"checkpoints":[{:?}]}}"#, plan.checkpoint.0);
            ledger = serde_json::from_str(&json).expect("a ledger");
            Error::AlreadyContributedOnCheckpoint
        }
        _ => {
            key = stranger();
            Error::NotSelected(key.id())
        }
    };
    let on = stand_in_trained_on(&plan, 0);
    assert_eq!(start(&p, &policy, &key, &on, &ledger), Err(expected));
}

proptest! {
    #![proptest_config(config(256))]

    /// Random sequences of honest, replayed, early, late, empty and corrupted server messages:
    /// each answer is the one the model predicts, no peer's two shares are revealed, one
    /// masked input is sent, and the round ends with the exact sum of U3.
    #[test]
    fn the_client_refuses_each_bad_server_message_by_its_rule_and_never_reveals_both_shares(
        shape in shape(),
        drops in vec(0u8..24, 12),
        steps in 0usize..24,
        seed in any::<u64>(),
    ) {
        let mut f = Fuzz::new(&shape, &drops, seed);
        for _ in 0..steps {
            let step = f.random_step();
            f.play(step);
        }
        f.finish();
    }

    /// A plan changed in one field, or a floor raised one step above the plan, is refused
    /// with the exact rule it breaks.
    #[test]
    fn a_plan_below_the_floor_or_its_own_parameters_is_refused_by_the_rule_it_breaks(
        shape in shape(),
        choice in any::<u32>(),
    ) {
        plan_refusal(&shape, choice);
    }
}
