//! Property-based fuzzing of the round engine under random schedules of honest and corrupt
//! clients, driven by real protocol clients on a virtual clock.
//!
//! A schedule interleaves check-ins, each client's steps of the five phases, identical
//! resends, second answers to a phase, messages for the wrong phase, round, attempt or task,
//! messages from clients the attempt did not select, messages with a field corrupted, clients
//! that stop answering or whose connection closes, the clock moving on, saves, sums and
//! checkpoints acknowledged late, and coordinator restarts that resume the last durable phase
//! close. Then every client answers until the task has run its rounds.
//!
//! Every answer of the engine is predicted from its rules (`rules.rs`): a refusal must be the
//! typed error of the rule the message breaks, and leave the engine as it was. Every sum the
//! engine hands out must equal, bit for bit, the clear sum of the inputs of exactly the clients
//! whose upload completed, and the published model the update rule's (`world.rs`); an abort
//! must keep the model and be explained by the attempt's sets or its corrupt clients. After
//! every step: versions only rise, contributors never shrink within a checkpoint, no client is
//! in the U2 of two attempts on one checkpoint, and each phase's replies go to exactly its set.
//! The clients' side (`ops.rs`) and the corrupt messages (`wire.rs`) are made to order.
//!
//! `FEDSEC_FUZZ_CASES` sets the number of cases of each property (the default is a smoke run);
//! `PROPTEST_RNG_SEED` replays a run:
//!
//! ```text
//! FEDSEC_FUZZ_CASES=5000 cargo test --release -p fedsec-coordinator --lib engine::fuzz
//! ```

mod ops;
mod rules;
mod wire;
mod world;

use std::time::Duration;

use fedsec_crypto::secagg::Phase;
use fedsec_crypto::{AdversaryClass, GraphKind, TaskId};
use proptest::collection::vec;
use proptest::prelude::*;

use ops::Op;
use world::{Setup, World};

use crate::engine::{PhaseDeadlines, TaskConfig};
use crate::error::AbortReason;

/// The cases each property runs: `FEDSEC_FUZZ_CASES`, or `smoke`.
fn cases(smoke: u32) -> ProptestConfig {
    let cases = std::env::var("FEDSEC_FUZZ_CASES").ok().and_then(|n| n.parse().ok());
    ProptestConfig {
        cases: cases.unwrap_or(smoke),
        // A failing schedule shrinks to a short one quickly; no regression file is written
        // (the failure prints the schedule).
        max_shrink_iters: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The graph and adversary classes a task may choose (a malicious server needs the complete
/// graph).
const KINDS: [(GraphKind, AdversaryClass); 5] = [
    (GraphKind::Complete, AdversaryClass::Curious),
    (GraphKind::Complete, AdversaryClass::SemiMalicious),
    (GraphKind::Complete, AdversaryClass::Malicious),
    (GraphKind::Harary, AdversaryClass::Curious),
    (GraphKind::Harary, AdversaryClass::SemiMalicious),
];
const DROPOUT_PPM: [u32; 4] = [100_000, 200_000, 300_000, 400_000];
const CORRUPT_PPM: [u32; 3] = [0, 50_000, 100_000];

/// A task of 4 to 12 clients per round: a graph, adversary class, dropout and corrupt
/// fraction, and a `min_clients` the parameter finder has parameters for (the choice moves on
/// to the next combination when a combination has none); chunking, upload limits and leases;
/// and how the runtime around the engine acknowledges.
fn setup(rounds: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = Setup> {
    let task = (4usize..=12, any::<bool>(), 0usize..60, any::<u8>());
    let acknowledgements = (any::<bool>(), any::<bool>());
    let runtime = (1u32..=8, 1usize..=4, 1u64..=5, any::<bool>(), acknowledgements, any::<u64>());
    (task, runtime, rounds).prop_map(
        |(
            (target, over, combination, pick),
            (chunk, uploads, idle, saving, (late_saves, late_sums), seed),
            rounds,
        )| {
            let mut c = TaskConfig::new(TaskId([3; 16]), "fuzz", target);
            c.over_selection = if over { 1.25 } else { 1.0 };
            c.max_examples = 100;
            c.server_learning_rate = 0.5;
            c.rounds = rounds;
            c.deadlines = PhaseDeadlines::uniform(Duration::from_secs(10));
            c.upload_chunk_words = chunk;
            c.max_uploads_in_flight = uploads;
            c.upload_idle = Duration::from_secs(idle);
            let plannable = (0..60).find_map(|step| {
                let k = (combination + step) % 60;
                (c.graph, c.adversary) = KINDS[k % 5];
                c.dropout_ppm = DROPOUT_PPM[k / 5 % 4];
                c.corrupt_ppm = CORRUPT_PPM[k / 20];
                let sizes: Vec<usize> =
                    (2..=c.max_selected()).filter(|&n| c.params_for(n).is_ok()).collect();
                (!sizes.is_empty()).then(|| sizes[pick as usize % sizes.len()])
            });
            c.min_clients = plannable.expect("some combination has parameters for some size");
            c.validate().expect("a plannable configuration is valid");
            Setup { config: c, saving, late_saves, late_sums, seed }
        },
    )
}

/// One step of a schedule: `adversarial` weighs corrupt, stray and conflicting messages
/// heavily; otherwise the schedule mostly moves rounds along, with dropouts, deadlines,
/// restarts and late acknowledgements.
fn op(adversarial: bool) -> impl Strategy<Value = Op> {
    let w = |adversarial_weight: u32, rounds_weight: u32| {
        if adversarial { adversarial_weight } else { rounds_weight }
    };
    let n = any::<u8>;
    prop_oneof![
        w(4, 4) => n().prop_map(Op::CheckIn),
        w(3, 6) => Just(Op::CheckInAll),
        w(1, 1) => n().prop_map(Op::PollCheckIn),
        w(16, 10) => n().prop_map(Op::Step),
        w(16, 20) => Just(Op::StepEach),
        w(5, 2) => (n(), n()).prop_map(|(i, k)| Op::Resend(i, k)),
        w(4, 1) => (n(), n()).prop_map(|(i, k)| Op::Conflict(i, k)),
        w(10, 1) => (n(), n(), n()).prop_map(|(i, f, b)| Op::Corrupt(i, f, b)),
        w(2, 1) => (n(), n()).prop_map(|(i, k)| Op::Early(i, k)),
        w(2, 1) => (n(), n()).prop_map(|(i, k)| Op::OtherContext(i, k)),
        w(2, 1) => (n(), n()).prop_map(|(s, k)| Op::Unselected(s, k)),
        w(2, 1) => (n(), n()).prop_map(|(i, j)| Op::Impersonate(i, j)),
        w(1, 4) => n().prop_map(Op::Drop),
        w(1, 3) => n().prop_map(Op::Gone),
        w(1, 1) => n().prop_map(Op::Back),
        w(2, 4) => n().prop_map(Op::Advance),
        w(1, 3) => Just(Op::Deadline),
        w(4, 5) => Just(Op::Persist),
        w(1, 1) => Just(Op::FailSum),
        w(2, 3) => Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(cases(64))]

    /// Any schedule of honest and corrupt messages: no panic; every refusal is the typed error
    /// of the rule broken and changes nothing; every sum is exact and every published model
    /// the update rule's; the task then runs its rounds with the honest clients.
    #[test]
    fn under_any_schedule_refusals_name_their_rule_and_change_nothing_and_sums_are_exact(
        setup in setup(1..=2),
        ops in vec(op(true), 40..240),
    ) {
        let mut world = World::new(&setup);
        for op in &ops {
            world.apply(op);
        }
        world.finish();
    }
}

proptest! {
    #![proptest_config(cases(32))]

    /// Many rounds with dropouts, deadlines, restarts and late acknowledgements: versions only
    /// rise, a checkpoint's contributors never shrink, no client is in two attempts' U2 on one
    /// checkpoint — and every attempt ends with its exact sum or a reason its sets explain.
    #[test]
    fn across_many_rounds_versions_rise_contributors_grow_and_no_client_is_in_two_u2s(
        setup in setup(3..=5),
        ops in vec(op(false), 60..240),
    ) {
        let mut world = World::new(&setup);
        for op in &ops {
            world.apply(op);
        }
        world.finish();
        let completed = world.history.iter().filter(|o| o.completed).count() as u64;
        prop_assert_eq!(world.engine.status().completed_rounds, completed);
        prop_assert_eq!(world.engine.checkpoint().0, completed);
    }
}

proptest! {
    #![proptest_config(cases(48))]

    /// More clients than the thresholds allow stop answering at one phase (silently, or their
    /// connection closes): the attempt aborts at that phase with too few clients, the model
    /// stays, and a later attempt of the other clients completes with the exact sum.
    #[test]
    fn too_many_dropouts_abort_keep_the_model_and_a_later_attempt_completes(
        setup in setup(1..=1),
        phase in 0usize..5,
        extra in any::<usize>(),
        chosen in any::<u64>(),
    ) {
        let mut world = World::new(&setup);
        for site in 0..world.sites.len() {
            world.apply(&Op::CheckIn(site as u8));
        }
        let run = world.run.as_mut().expect("enough clients checked in to start an attempt");
        let (n, q) = (run.plan.n(), run.plan.q());
        let dropped = n - q + 1 + extra % q;
        let phase = Phase::ALL[phase];
        for (k, p) in run.parties.iter_mut().enumerate().take(dropped) {
            p.stop_at = Some((phase, chosen >> (k % 64) & 1 == 1));
        }
        world.finish();
        let first = &world.history[0];
        let too_few = fedsec_crypto::Error::TooFewClients { phase, have: n - dropped, need: q };
        prop_assert_eq!(first.abort_reason.as_ref(), Some(&AbortReason::Protocol(too_few)));
        prop_assert_eq!(world.history.len(), 2);
        prop_assert!(world.history[1].completed);
    }
}

/// Schedules that once failed, kept as tests.
mod regressions {
    use super::*;

    #[test]
    fn an_upload_evicted_before_a_restart_after_the_unmasking_is_no_longer_evicted() {
        let mut c = TaskConfig::new(TaskId([3; 16]), "fuzz", 11);
        c.over_selection = 1.25;
        c.min_clients = 2;
        (c.graph, c.adversary) = (GraphKind::Complete, AdversaryClass::Curious);
        (c.dropout_ppm, c.corrupt_ppm) = (200_000, 50_000);
        c.max_examples = 100;
        c.server_learning_rate = 0.5;
        c.rounds = 3;
        c.deadlines = PhaseDeadlines::uniform(Duration::from_secs(10));
        c.upload_chunk_words = 4;
        c.max_uploads_in_flight = 2;
        c.upload_idle = Duration::from_secs(1);
        let setup = Setup { config: c, saving: true, late_saves: false, late_sums: true, seed: 0 };
        use Op::*;
        let mut ops = vec![CheckInAll];
        ops.extend(std::iter::repeat_n(StepEach, 7));
        ops.push(Advance(25));
        ops.extend(std::iter::repeat_n(StepEach, 10));
        ops.extend(std::iter::repeat_n(CheckIn(0), 6));
        ops.push(Restart);
        ops.extend(std::iter::repeat_n(CheckIn(0), 11));
        ops.push(Persist);
        ops.extend(std::iter::repeat_n(CheckIn(0), 6));
        ops.extend([
            CheckIn(1),
            Drop(115),
            PollCheckIn(85),
            CheckInAll,
            StepEach,
            Resend(30, 144),
            CheckInAll,
            Resend(241, 35),
            StepEach,
            StepEach,
            Step(2),
            Advance(91),
            StepEach,
            Step(207),
            Gone(105),
            StepEach,
        ]);
        let mut world = World::new(&setup);
        for op in &ops {
            world.apply(op);
        }
        world.finish();
    }
}
