//! The fault matrix with real processes over mutual TLS: clients killed with SIGKILL at each
//! phase of an attempt, as many as the thresholds allow. The same attempt (same nonce)
//! completes with the model of the exact clear sum of U3's inputs, every checkpoint verifies,
//! and `audit verify` passes. (The coordinator killed at each phase is in `durability.rs`.)

mod common;

use std::time::Duration;

use common::{Federation, Options};

const LONG: Duration = Duration::from_secs(300);

/// Ten clients, Harary, δ = 0.2: q = 8, so at most two may drop out.
const MOST_ALLOWED: usize = 2;

/// Kills `m` clients (certificates 1..=m) with SIGKILL right before they would send their
/// message of `phase` (0–4), and checks the attempt.
fn clients_killed_at(phase: u64, m: usize) {
    let mut fed = Federation::start(Options { rounds: 1, ..Options::default() });
    for i in 1..=10 {
        // Each call waits 1.5 s first: the kill lands before the phase's message leaves.
        fed.spawn_client(i, &["--test-latency-ms", "1500"]);
    }
    let started = fed.wait_audit("round_started", "round", 1.into(), LONG);
    let attempt = started["detail"]["attempt"].as_str().unwrap().to_owned();
    if phase > 0 {
        fed.wait_audit("phase_saved", "phase", (phase - 1).into(), LONG);
    }
    let killed: Vec<String> = (1..=m).map(|i| fed.client_id(i)).collect();
    for i in 1..=m {
        fed.client(i).kill();
    }
    fed.wait_clients(LONG);
    let completed = fed.audit_entries("round_completed");
    assert_eq!(completed.len(), 1, "phase {phase}, {m} killed");
    assert_eq!(completed[0]["detail"]["attempt"], attempt.as_str(), "the same attempt");
    assert!(fed.audit_entries("round_aborted").is_empty());
    // U3: everyone who uploaded — the killed clients too, once they were past phase 2.
    let in_u3 = |id: &String| phase > 2 || !killed.contains(id);
    let dumps = fed.dumps(1, &attempt);
    let inputs: Vec<&Vec<u32>> = dumps.iter().filter(|(id, _)| in_u3(id)).map(|(_, x)| x).collect();
    let expected = if phase > 2 { 10 } else { 10 - m };
    assert_eq!(inputs.len(), expected, "phase {phase}, {m} killed: |U3|");
    assert_eq!(completed[0]["detail"]["participants"], expected);
    fed.assert_exact_round(1, &inputs);
    fed.verify_audit_log().expect("the audit log verifies");
}

#[test]
fn one_client_killed_at_each_phase_the_same_attempt_completes_exactly() {
    for phase in 0..=4 {
        clients_killed_at(phase, 1);
    }
}

#[test]
fn the_most_clients_allowed_killed_at_each_phase_the_same_attempt_completes_exactly() {
    for phase in 0..=4 {
        clients_killed_at(phase, MOST_ALLOWED);
    }
}

/// One kill more than the thresholds allow, at each phase: the attempt aborts, the model is
/// unchanged (no checkpoint past 0 until a round completes), and the next attempt — with
/// clients that have not contributed on the checkpoint, held in reserve — completes exactly.
///
/// Ignored in CI (about four minutes: the clients in reserve wait out the running attempt's
/// retry-after before they check in again); run by hand, result in `docs/performance.md`.
#[test]
#[ignore = "about four minutes; run by hand"]
fn one_kill_past_the_thresholds_aborts_the_attempt_and_the_next_one_completes() {
    for phase in 0..=4u64 {
        // Ten selected of eighteen: eight wait in reserve for the retry.
        let mut fed =
            Federation::start(Options { rounds: 1, extra_certs: 10, ..Options::default() });
        for i in 1..=18 {
            fed.spawn_client(i, &["--test-latency-ms", "1500"]);
        }
        let started = fed.wait_audit("round_started", "round", 1.into(), LONG);
        let attempt = started["detail"]["attempt"].as_str().unwrap().to_owned();
        if phase > 0 {
            fed.wait_audit("phase_saved", "phase", (phase - 1).into(), LONG);
        }
        let selected: Vec<usize> = (1..=18)
            .filter(|&i| fed.client(i).output().contains(&format!("attempt={attempt}")))
            .collect();
        assert_eq!(selected.len(), 10, "phase {phase}");
        for &i in &selected[..MOST_ALLOWED + 1] {
            fed.client(i).kill();
        }
        let aborted = fed.wait_audit("round_aborted", "attempt", attempt.as_str().into(), LONG);
        assert_eq!(aborted["detail"]["round"], 1);
        assert!(
            fed.audit_entries("checkpoint").is_empty(),
            "phase {phase}: the model is unchanged"
        );
        fed.wait_clients(LONG);
        let completed = fed.audit_entries("round_completed");
        assert_eq!(completed.len(), 1, "phase {phase}: the next attempt completed");
        let next = completed[0]["detail"]["attempt"].as_str().unwrap().to_owned();
        assert_ne!(next, attempt);
        let dumps = fed.dumps(1, &next);
        let inputs: Vec<&Vec<u32>> = dumps.iter().map(|(_, x)| x).collect();
        assert_eq!(completed[0]["detail"]["participants"], inputs.len());
        fed.assert_exact_round(1, &inputs);
        fed.verify_audit_log().expect("the audit log verifies");
    }
}
