//! The faults of a run, fixed in advance from the seed: which client drops out of which round
//! and at which phase, and which clients are slow.
//!
//! Each (round, client) pair draws from its own seeded stream, so the schedule does not depend
//! on who the coordinator happens to select or in which order clients arrive: whoever is
//! selected for round r, a client drops out of it exactly when the schedule says so. Rounds
//! are numbered by round id; an aborted attempt's retry keeps the id, and a client drops out
//! of a round at most once.

use std::collections::BTreeMap;

use fedsec_crypto::secagg::Phase;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

use crate::experiment::{DropPhase, Experiment};

fn stream(seed: u64, what: &str, a: u64, b: u64) -> ChaCha20Rng {
    let mut h = Sha256::new();
    h.update(b"fedsec/sim/schedule");
    h.update(seed.to_le_bytes());
    h.update(what.as_bytes());
    h.update(a.to_le_bytes());
    h.update(b.to_le_bytes());
    ChaCha20Rng::from_seed(h.finalize().into())
}

/// The phase at which client `client` drops out of round `round`, if it does.
pub fn drop_phase(exp: &Experiment, round: u64, client: usize) -> Option<Phase> {
    let mut rng = stream(exp.seed, "drop", round, client as u64);
    let hit = rng.random::<f64>() < exp.dropout;
    let phase = match exp.dropout_phase {
        DropPhase::Random => Phase::ALL[rng.random_range(0..Phase::ALL.len())],
        DropPhase::Phase(p) => p,
    };
    hit.then_some(phase)
}

/// Client `client`'s dropouts in rounds `1..=rounds`: round → phase.
///
/// A round can take a few attempts when some abort; the schedule covers the first `rounds`
/// round ids, and later ones, if the task needs them, run without dropouts of this client.
pub fn drops_of(exp: &Experiment, client: usize, rounds: u64) -> BTreeMap<u64, Phase> {
    (1..=rounds).filter_map(|r| drop_phase(exp, r, client).map(|p| (r, p))).collect()
}

/// True if client `client` is a straggler (slow in every round).
pub fn is_straggler(exp: &Experiment, client: usize) -> bool {
    exp.stragglers > 0.0
        && stream(exp.seed, "straggler", client as u64, 0).random::<f64>() < exp.stragglers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_fixed_by_the_seed_and_hits_the_rate() {
        let exp = Experiment { dropout: 0.1, ..Experiment::default() };
        let a: Vec<_> = (0..200).map(|c| drops_of(&exp, c, 50)).collect();
        let b: Vec<_> = (0..200).map(|c| drops_of(&exp, c, 50)).collect();
        assert_eq!(a, b);
        let other = Experiment { seed: 2, ..exp.clone() };
        assert_ne!(a, (0..200).map(|c| drops_of(&other, c, 50)).collect::<Vec<_>>());
        let drops: usize = a.iter().map(BTreeMap::len).sum();
        let rate = drops as f64 / (200.0 * 50.0);
        assert!((rate - 0.1).abs() < 0.01, "{rate}");
        let mut phases = [0usize; Phase::ALL.len()];
        for p in a.iter().flat_map(|d| d.values()) {
            phases[p.index()] += 1;
        }
        assert!(phases.iter().all(|&n| n > drops / 8), "every phase is hit: {phases:?}");
        let fixed =
            Experiment { dropout_phase: DropPhase::Phase(Phase::MaskedInputCollection), ..exp };
        assert!(
            (0..50)
                .flat_map(|c| drops_of(&fixed, c, 20).into_values())
                .all(|p| p == Phase::MaskedInputCollection)
        );
    }

    #[test]
    fn stragglers_are_a_seeded_fraction() {
        let exp = Experiment { stragglers: 0.25, ..Experiment::default() };
        let n = (0..1000).filter(|&c| is_straggler(&exp, c)).count();
        assert!((200..300).contains(&n), "{n}");
        let none = Experiment { stragglers: 0.0, ..Experiment::default() };
        assert!(!(0..100).any(|c| is_straggler(&none, c)));
    }
}
