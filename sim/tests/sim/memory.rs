//! The in-memory transport: reproducible from the seed, and whole runs that match the
//! plaintext baseline.

use fedsec_crypto::GraphKind;
use fedsec_crypto::secagg::Phase;
use fedsec_sim::experiment::{DropPhase, Experiment, Transport};
use indicatif::ProgressBar;
use serde_json::Value;

fn run(exp: &Experiment) -> Value {
    fedsec_sim::simulate(exp, &ProgressBar::hidden()).unwrap().json
}

/// The report without what the clock measures (and, for SecAgg+, the bytes, which follow the
/// neighbour graph and so the keys: see the `memory` module docs).
fn strip(mut v: Value, bytes: bool) -> Value {
    v["secure"].as_object_mut().unwrap().remove("wall_seconds");
    v["secure"].as_object_mut().unwrap().remove("peak_memory_mib");
    for r in v["rounds"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("compute_seconds");
    }
    if bytes {
        for r in v["rounds"].as_array_mut().unwrap() {
            let r = r.as_object_mut().unwrap();
            r.remove("bytes_sent_per_client");
            r.remove("bytes_received_per_client");
        }
    }
    v
}

fn small() -> Experiment {
    Experiment {
        clients: 30,
        rounds: 4,
        dropout: 0.15,
        stragglers: 0.2,
        straggler_delay_ms: 700,
        latency_ms: 25,
        transport: Transport::Memory,
        seed: 7,
        ..Experiment::default()
    }
}

#[test]
fn the_same_seed_gives_the_same_report_bit_for_bit() {
    let exp = small();
    let a = run(&exp);
    let b = run(&exp);
    assert_eq!(strip(a.clone(), true), strip(b, true));
    // The virtual clock: phase 0 waits for the stragglers, the others only for the latency.
    let phases = a["rounds"][0]["phase_seconds"].as_array().unwrap();
    assert!((phases[0].as_f64().unwrap() - 0.725).abs() < 1e-9, "{phases:?}");
    assert!((phases[1].as_f64().unwrap() - 0.025).abs() < 1e-9, "{phases:?}");
    let other = run(&Experiment { seed: 8, ..exp.clone() });
    assert_ne!(strip(a, true)["rounds"], strip(other, true)["rounds"], "the seed matters");
    // With the complete graph every client relays for all the others: the bytes repeat too.
    let complete = Experiment { graph: GraphKind::Complete, rounds: 2, ..exp };
    assert_eq!(strip(run(&complete), false), strip(run(&complete), false));
}

#[test]
fn dropouts_at_every_phase_leave_the_secure_run_as_accurate_as_the_plaintext_one() {
    for phase in Phase::ALL {
        let exp = Experiment {
            rounds: 6,
            dropout: 0.1,
            dropout_phase: DropPhase::Phase(phase),
            stragglers: 0.0,
            latency_ms: 0,
            ..small()
        };
        let r = run(&exp);
        let secure = r["secure"]["final_accuracy"].as_f64().unwrap();
        let plaintext = r["plaintext"]["final_accuracy"].as_f64().unwrap();
        assert!((secure - plaintext).abs() <= 0.02, "phase {phase}: {secure} vs {plaintext}");
        assert!(secure > 0.8, "phase {phase}: {secure}");
        let rounds = r["rounds"].as_array().unwrap();
        let drops: u64 = rounds.iter().map(|x| x["scheduled_drops"].as_u64().unwrap()).sum();
        assert!(drops > 0, "phase {phase}: the schedule dropped clients");
        for x in rounds {
            let (summed, selected) =
                (x["participants"].as_u64().unwrap(), x["selected"].as_u64().unwrap());
            if phase < Phase::ConsistencyCheck {
                // Dropped before the upload: not in the sum.
                assert_eq!(summed + x["scheduled_drops"].as_u64().unwrap(), selected);
            } else {
                // After it: in the sum all the same.
                assert_eq!(summed, selected);
            }
        }
    }
}
