//! The fault matrix with real processes over mutual TLS: clients killed with SIGKILL at each
//! phase of an attempt, as many as the thresholds allow. The same attempt (same nonce)
//! completes with the model of the exact clear sum of U3's inputs, every checkpoint verifies,
//! and `audit verify` passes. (The coordinator killed at each phase is in `durability.rs`.)
//! The long run, ignored in CI, kills the coordinator twenty times over fifty rounds.

mod common;

use std::time::Duration;

use common::{Federation, Options};

const LONG: Duration = Duration::from_secs(300);

/// Ten clients, Harary, δ = 0.2: q = 8, so at most two may drop out.
const MOST_ALLOWED: usize = 2;

/// Kills `m` clients (certificates 1..=m) with SIGKILL right before they would send their
/// message of `phase` (0–5: Complaints is 2), and checks the attempt.
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
    // U3: everyone who uploaded — the killed clients too, once they were past the upload.
    let in_u3 = |id: &String| phase > 3 || !killed.contains(id);
    let dumps = fed.dumps(1, &attempt);
    let inputs: Vec<&Vec<u32>> = dumps.iter().filter(|(id, _)| in_u3(id)).map(|(_, x)| x).collect();
    let expected = if phase > 3 { 10 } else { 10 - m };
    assert_eq!(inputs.len(), expected, "phase {phase}, {m} killed: |U3|");
    assert_eq!(completed[0]["detail"]["participants"], expected);
    fed.assert_exact_round(1, &inputs);
    fed.verify_audit_log().expect("the audit log verifies");
}

#[test]
fn one_client_killed_at_each_phase_the_same_attempt_completes_exactly() {
    for phase in 0..=5 {
        clients_killed_at(phase, 1);
    }
}

#[test]
fn the_most_clients_allowed_killed_at_each_phase_the_same_attempt_completes_exactly() {
    for phase in 0..=5 {
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
    for phase in 0..=5u64 {
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

/// The highest round any attempt started, from the audit log (0 before the first).
fn highest_round_started(fed: &Federation) -> u64 {
    let text = std::fs::read_to_string(fed.path("audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["kind"] == "round_started")
        .filter_map(|e| e["detail"]["round"].as_u64())
        .max()
        .unwrap_or(0)
}

/// The long run: 20 coordinator SIGKILLs at random moments over 50 rounds, twelve clients (ten a
/// round), each restart on the same address. At least 45 rounds complete; every completed round's
/// checkpoint is the model of the exact clear sum of its inputs (0 wrong sums); every stored
/// checkpoint's manifest verifies under the coordinator's key and its bytes match it (0 corrupt
/// checkpoints); `audit verify` passes.
///
/// The moments are drawn from a seed (`FEDSEC_KILL_SEED`, else the clock), printed so that a
/// failing run can be replayed: the k-th kill waits for round 1 + 5k/2 to start, then a random
/// time up to 1.2 times the mean round so far, which lands it anywhere from selection to the
/// checkpoint's store.
///
/// Ignored in CI (half a minute on an idle machine); run by hand, result in `docs/performance.md`:
/// `cargo test -p fedsec-integration-tests --test faults -- --ignored twenty --nocapture`
#[test]
#[ignore = "half a minute alone; run by hand"]
fn twenty_coordinator_kills_at_random_moments_over_fifty_rounds_lose_no_sum_and_no_checkpoint() {
    use rand::{RngExt, SeedableRng};

    const ROUNDS: u64 = 50;
    const KILLS: u64 = 20;
    let seed = std::env::var("FEDSEC_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::UNIX_EPOCH.elapsed().unwrap().as_millis() as u64);
    println!("FEDSEC_KILL_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut fed = Federation::start(Options { rounds: ROUNDS, ..Options::default() });
    let start = std::time::Instant::now();
    for i in 1..=12 {
        fed.spawn_client(i, &["--test-latency-ms", "50"]);
    }
    let mut kills = 0;
    while kills < KILLS {
        let round = 1 + kills * ROUNDS / KILLS;
        while highest_round_started(&fed) < round {
            assert!(start.elapsed() < 4 * LONG, "round {round} never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Anywhere in the round: up to 1.2 times the mean round so far.
        let done = fed.audit_entries("round_completed").len().max(1) as u32;
        let mean_ms = (start.elapsed() / done).as_millis().max(1) as u64;
        std::thread::sleep(Duration::from_millis(rng.random_range(0..=mean_ms * 6 / 5)));
        if fed.audit_entries("round_completed").len() as u64 == ROUNDS {
            break;
        }
        fed.restart_coordinator_in_place();
        kills += 1;
        println!("kill {kills} at {:?}, in round {}", start.elapsed(), highest_round_started(&fed));
    }
    fed.wait_clients(4 * LONG);
    let elapsed = start.elapsed();

    let completed = fed.audit_entries("round_completed");
    let aborted = fed.audit_entries("round_aborted");
    let resumed = fed.audit_entries("attempt_resumed");
    println!(
        "{kills} kills, {} rounds completed, {} attempts aborted, {} resumed, in {elapsed:?}",
        completed.len(),
        aborted.len(),
        resumed.len()
    );
    for a in &aborted {
        println!("aborted: {}", a["detail"]);
    }
    assert_eq!(kills, KILLS, "every kill landed before the last round completed");
    assert!(completed.len() >= 45, "{} rounds completed", completed.len());

    // 0 wrong sums: each completed round's model is that of the exact clear sum of its U3.
    for c in &completed {
        let round = c["detail"]["round"].as_u64().unwrap();
        let attempt = c["detail"]["attempt"].as_str().unwrap();
        let dumps = fed.dumps(round, attempt);
        let inputs: Vec<&Vec<u32>> = dumps.iter().map(|(_, x)| x).collect();
        assert_eq!(c["detail"]["participants"], inputs.len(), "round {round}: |U3|");
        fed.assert_exact_round(round, &inputs);
    }

    // 0 corrupt checkpoints: every stored version verifies as a client checks it.
    let key =
        fedsec_client::client::load_coordinator_key(&fed.pki().join("coordinator-signing.pub"))
            .unwrap();
    let dir = fed.path(&format!("store/tasks/{}/checkpoints", common::TASK_ID));
    let mut versions = 0;
    for version in 0..=ROUNDS {
        let manifest = dir.join(format!("{version:020}.manifest.json"));
        if !manifest.exists() {
            continue;
        }
        let signed: fedsec_wire::checkpoint::SignedManifest =
            serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        assert_eq!(signed.manifest.version, version);
        signed.verify_checkpoint(&key, &fed.checkpoint(version), None).unwrap_or_else(|e| {
            panic!("checkpoint {version} does not verify: {e}");
        });
        versions += 1;
    }
    assert_eq!(versions, completed.len() + 1, "one checkpoint per completed round, and the first");
    fed.verify_audit_log().expect("the audit log verifies");
}
