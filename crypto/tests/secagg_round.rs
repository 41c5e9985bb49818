//! Whole rounds through the in-memory driver: the unmasked sum equals the clear sum of the
//! inputs of U3 bit for bit, for both graphs, with dropouts in each phase up to the most the
//! thresholds allow; one past them, the round aborts, no sum is produced, and the server never
//! holds t shares of both secrets of any client.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use fedsec_crypto::context::{AdversaryClass, GraphKind, RoundPlan};
use fedsec_crypto::error::Error;
use fedsec_crypto::graph::Graph;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::driver::{
    Outcome, ShareKind, run_round, run_round_on, run_round_restarted,
};
use fedsec_crypto::secagg::server::{ClosedState, SecAggServer};

const DIM: u32 = 64;

fn run(
    plan: &RoundPlan,
    keys: &[std::sync::Arc<fedsec_crypto::sign::IdentityKey>],
    drops: &BTreeMap<usize, Phase>,
    seed: u64,
) -> (Outcome, Vec<Vec<u32>>) {
    let xs = inputs(plan.n(), plan.dim, seed);
    let out = run_round(plan, keys, &xs, drops, &policy(), verifier())
        .expect("honest messages are accepted");
    (out, xs)
}

/// The server never holds t or more shares of both b_w and s_w^SK for any w.
fn assert_never_both(plan: &RoundPlan, out: &Outcome) {
    let t = plan.threshold as usize;
    let mut count: BTreeMap<
        (fedsec_crypto::ClientId, ShareKind),
        BTreeSet<fedsec_crypto::ClientId>,
    > = BTreeMap::new();
    for r in &out.released {
        count.entry((r.owner, r.kind)).or_default().insert(r.holder);
    }
    for w in &plan.selected {
        let b = count.get(&(*w, ShareKind::SelfMask)).map_or(0, BTreeSet::len);
        let s = count.get(&(*w, ShareKind::MaskKey)).map_or(0, BTreeSet::len);
        assert!(b < t || s < t, "server holds {b} shares of b and {s} of s^SK of {w} (t = {t})");
        // No single holder ever releases both for one owner.
        for r in out.released.iter().filter(|r| r.owner == *w && r.kind == ShareKind::SelfMask) {
            assert!(
                !out.released
                    .iter()
                    .any(|o| o.owner == *w && o.holder == r.holder && o.kind == ShareKind::MaskKey),
                "holder {} released both shares of {w}",
                r.holder
            );
        }
    }
}

/// Chooses `m` clients to drop, greedily taking the client whose departure leaves the most
/// holders for the secrets it holds a share of, so that every secret keeps t holders when the
/// thresholds allow it.
fn pick_drops(plan: &RoundPlan, m: usize) -> Vec<usize> {
    let g = Graph::from_plan(plan).expect("valid plan");
    let n = plan.n();
    let holders: Vec<Vec<usize>> = (0..n).map(|i| g.holders(i)).collect();
    let mut alive = vec![true; n];
    let mut dropped = Vec::new();
    for _ in 0..m {
        let best = (0..n)
            .filter(|&i| alive[i])
            .max_by_key(|&i| {
                // The tightest remaining holder count among secrets i holds a share of.
                let slack = holders
                    .iter()
                    .enumerate()
                    .filter(|(o, h)| *o != i && alive[*o] && h.contains(&i))
                    .map(|(_, h)| h.iter().filter(|&&x| alive[x]).count())
                    .min()
                    .unwrap_or(usize::MAX);
                (slack, usize::MAX - i)
            })
            .expect("enough clients");
        alive[best] = false;
        dropped.push(best);
    }
    dropped
}

fn dropout_matrix(graph: GraphKind, n: usize) {
    let (plan, keys) = federation(n, graph, 0.3, 0.05, AdversaryClass::SemiMalicious, DIM, 42);
    let q = plan.q();
    let most = n - q;
    assert!(most > 0, "the plan must allow some dropouts (n = {n}, q = {q})");
    for (p_i, phase) in Phase::ALL.into_iter().enumerate() {
        // Up to the most the thresholds allow: the round completes, exactly.
        let drops: BTreeMap<usize, Phase> =
            pick_drops(&plan, most).into_iter().map(|i| (i, phase)).collect();
        let (out, xs) = run(&plan, &keys, &drops, 100 + p_i as u64);
        let sum = out
            .sum
            .as_ref()
            .unwrap_or_else(|e| panic!("{graph:?}, {most} dropped in {phase:?}: {e}"));
        let survivors = out.survivors.as_ref().expect("phase 2 closed");
        let expected_u3: Vec<usize> = (0..n)
            .filter(|i| drops.get(i).is_none_or(|&d| d > Phase::MaskedInputCollection))
            .collect();
        assert_eq!(survivors, &expected_u3);
        assert_eq!(sum, &clear_sum(&xs, survivors), "{graph:?}, drops in {phase:?}: sum differs");
        assert_never_both(&plan, &out);

        // One past: the round aborts and no sum is produced.
        let drops: BTreeMap<usize, Phase> =
            pick_drops(&plan, most + 1).into_iter().map(|i| (i, phase)).collect();
        let (out, _) = run(&plan, &keys, &drops, 200 + p_i as u64);
        assert!(
            matches!(out.sum, Err(Error::TooFewClients { .. })),
            "{graph:?}, {} dropped in {phase:?}: expected an abort, got {:?}",
            most + 1,
            out.sum.as_ref().map(|_| "a sum")
        );
        assert_never_both(&plan, &out);
    }
}

#[test]
fn complete_graph_dropout_matrix() {
    dropout_matrix(GraphKind::Complete, 20);
}

#[test]
fn harary_graph_dropout_matrix() {
    dropout_matrix(GraphKind::Harary, 24);
}

#[test]
fn no_dropouts_complete_and_harary_100() {
    for graph in [GraphKind::Complete, GraphKind::Harary] {
        let (plan, keys) = federation(100, graph, 0.1, 0.05, AdversaryClass::SemiMalicious, 256, 7);
        let drops: BTreeMap<usize, Phase> =
            pick_drops(&plan, 10).into_iter().map(|i| (i, Phase::MaskedInputCollection)).collect();
        let (out, xs) = run(&plan, &keys, &drops, 9);
        let survivors = out.survivors.clone().expect("phase 2 closed");
        assert_eq!(survivors.len(), 90);
        assert_eq!(
            out.sum.as_ref().expect("round completes"),
            &clear_sum(&xs, &survivors),
            "{graph:?}"
        );
        assert_never_both(&plan, &out);
    }
}

/// The server's kernel split over 4 threads (the vector spans several chunks) gives the same
/// exact sum.
#[test]
fn threaded_server_is_exact() {
    let pool = std::sync::Arc::new(rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap());
    for graph in [GraphKind::Complete, GraphKind::Harary] {
        let (plan, keys) =
            federation(40, graph, 0.3, 0.05, AdversaryClass::SemiMalicious, 20_000, 5);
        let drops: BTreeMap<usize, Phase> =
            pick_drops(&plan, 8).into_iter().map(|i| (i, Phase::MaskedInputCollection)).collect();
        let xs = inputs(plan.n(), plan.dim, 6);
        let out =
            run_round_on(Some(pool.clone()), &plan, &keys, &xs, &drops, &policy(), verifier())
                .expect("honest messages are accepted");
        let survivors = out.survivors.clone().expect("phase 2 closed");
        assert_eq!(out.sum.expect("round completes"), clear_sum(&xs, &survivors), "{graph:?}");
    }
}

/// A server restarted after any phase closed, from its encoded [`ClosedState`], finishes the
/// same attempt with the sum the clients' inputs give, bit for bit — with dropouts on both
/// sides of the restart — and the state it resumed from holds nothing of the open phase.
#[test]
fn a_server_resumed_after_each_phase_finishes_the_same_attempt_exactly() {
    for graph in [GraphKind::Complete, GraphKind::Harary] {
        let (plan, keys) = federation(12, graph, 0.3, 0.05, AdversaryClass::SemiMalicious, DIM, 7);
        let most = plan.n() - plan.q();
        for restart in [
            Phase::AdvertiseKeys,
            Phase::ShareKeys,
            Phase::MaskedInputCollection,
            Phase::ConsistencyCheck,
            Phase::Unmasking,
        ] {
            // One client drops in the phase after the restart, one at phase 2 or later.
            let mut drops = BTreeMap::new();
            let next = Phase::ALL.get(restart.index() + 1).copied().unwrap_or(Phase::Unmasking);
            let picked = pick_drops(&plan, most.min(2));
            drops.insert(picked[0], next);
            if let Some(&second) = picked.get(1) {
                drops.insert(second, Phase::MaskedInputCollection.max(next));
            }
            let xs = inputs(plan.n(), plan.dim, 300 + restart.index() as u64);
            let out =
                run_round_restarted(&plan, &keys, &xs, &drops, &policy(), verifier(), restart)
                    .expect("honest messages are accepted");
            let sum = out.sum.as_ref().unwrap_or_else(|e| panic!("{graph:?}, {restart:?}: {e}"));
            let survivors = out.survivors.as_ref().expect("phase 2 closed");
            assert_eq!(sum, &clear_sum(&xs, survivors), "{graph:?}, restart after {restart:?}");
            let whole = run_round(&plan, &keys, &xs, &drops, &policy(), verifier())
                .expect("honest messages are accepted");
            assert_eq!(whole.survivors, out.survivors);
        }
    }
}

/// A saved state that does not fit its plan, or itself, is refused: never resumed.
#[test]
fn an_inconsistent_saved_state_is_refused() {
    let (plan, _) =
        federation(8, GraphKind::Complete, 0.3, 0.05, AdversaryClass::SemiMalicious, DIM, 9);
    // Nothing closed yet: nothing to save.
    let server = SecAggServer::new(plan.clone(), verifier()).expect("valid plan");
    assert!(server.closed_state().is_none());
    let empty = ClosedState {
        closed: Phase::MaskedInputCollection,
        adverts: Vec::new(),
        u2: vec![0],
        dealings: Vec::new(),
        complaints: Vec::new(),
        u3: Vec::new(),
        sum: Vec::new(),
        signatures: Vec::new(),
        unmasking: Vec::new(),
    };
    // U2 names a client that never advertised.
    assert!(matches!(
        SecAggServer::resume(plan.clone(), verifier(), empty.clone()),
        Err(Error::SavedStateInconsistent(_))
    ));
    // A sum of the wrong length.
    let short = ClosedState { u2: Vec::new(), ..empty.clone() };
    assert!(matches!(
        SecAggServer::resume(plan.clone(), verifier(), short),
        Err(Error::SavedStateInconsistent(_))
    ));
    // Trailing bytes do not decode.
    let mut bytes = empty.to_bytes();
    bytes.push(0);
    assert!(ClosedState::from_bytes(&bytes).is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// A saved state decoded from any bytes is refused or resumes: never a panic. And a state
    /// of hand-picked sets — any U2, U3 and sum length, with no adverts — is refused as
    /// inconsistent with its plan.
    #[test]
    fn any_saved_state_is_refused_or_resumes_without_panicking(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        u2 in proptest::collection::vec(0u32..12, 0..12),
        u3 in proptest::collection::vec(0u32..12, 0..12),
        words in 0usize..80,
        closed in 0usize..6,
    ) {
        let (plan, _) = federation(8, GraphKind::Complete, 0.3, 0.05, AdversaryClass::SemiMalicious, DIM, 9);
        if let Ok(state) = ClosedState::from_bytes(&bytes) {
            let _ = SecAggServer::resume(plan.clone(), verifier(), state);
        }
        let state = ClosedState {
            closed: Phase::ALL[closed],
            adverts: Vec::new(),
            u2,
            dealings: Vec::new(),
            complaints: Vec::new(),
            u3,
            sum: vec![0; 4 * words],
            signatures: Vec::new(),
            unmasking: Vec::new(),
        };
        proptest::prop_assert!(SecAggServer::resume(plan, verifier(), state).is_err());
    }
}
