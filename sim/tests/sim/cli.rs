//! The `fedsec-sim` binary: the default experiment at a small size, and bad arguments.

use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedsec-sim")).args(args).output().expect("fedsec-sim runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_default_experiment_at_a_small_size_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let out = sim(&["--clients", "12", "--rounds", "3", "--report", report.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("final test accuracy: secure"), "{stdout}");
    for f in ["report.json", "rounds.csv", "accuracy.png", "loss.png", "phases.png", "bytes.png"] {
        let path = report.join(f);
        assert!(path.metadata().is_ok_and(|m| m.len() > 0), "{} is written", path.display());
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    let secure = json["secure"]["final_accuracy"].as_f64().unwrap();
    let plaintext = json["plaintext"]["final_accuracy"].as_f64().unwrap();
    assert!(secure > 0.5 && plaintext > 0.5, "the model learns: {secure} {plaintext}");
    assert!((secure - plaintext).abs() <= 0.05, "{secure} vs {plaintext}");
    let rounds = json["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    for r in rounds {
        assert_eq!(r["phase_seconds"].as_array().unwrap().len(), 6);
        assert!(r["participants"].as_u64().unwrap() >= 6);
        assert!(r["bytes_sent_per_client"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(json["params"]["experiment"]["transport"], "grpc");
    assert_eq!(json["params"]["experiment"]["split"], "dirichlet:0.5");
    let csv = std::fs::read_to_string(report.join("rounds.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "a header and three rounds");
}

#[test]
fn bad_arguments_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.csv");
    let out = sim(&["--dataset", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-such.csv"), "the error names the file: {}", stderr(&out));

    let csv = dir.path().join("data.csv");
    std::fs::write(&csv, "a,b,class\n1,2,0\n3,4,1\n").unwrap();
    let out = sim(&["--dataset", csv.to_str().unwrap(), "--label-column", "label"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("label") && err.contains("data.csv"), "names the column and file: {err}");

    let out = sim(&["--dataset", "mnist"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("digits"), "lists the shipped datasets: {}", stderr(&out));

    let out = sim(&["--dropout", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--dropout 1"), "{}", stderr(&out));

    let out = sim(&["--clients", "4"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("fewer than a secure round"), "{}", stderr(&out));

    let out = sim(&["--split", "dirichlet:-1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("dirichlet:-1"), "{}", stderr(&out));

    let out = sim(&["--dropout-phase", "lunch"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("advertise_keys"), "{}", stderr(&out));
}

#[test]
fn stragglers_and_latency_over_grpc_slow_the_first_phase_down() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let out = sim(&[
        "--clients",
        "12",
        "--rounds",
        "2",
        "--dropout",
        "0",
        "--stragglers",
        "0.5",
        "--straggler-delay-ms",
        "400",
        "--latency-ms",
        "20",
        "--plaintext-baseline",
        "false",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    assert!(json["plaintext"].is_null(), "no baseline was asked for");
    for r in json["rounds"].as_array().unwrap() {
        let phase0 = r["phase_seconds"][0].as_f64().unwrap();
        assert!(phase0 >= 0.4, "phase 0 waits for the stragglers: {phase0}");
        assert_eq!(r["participants"], 12, "a straggler within the deadline is summed");
    }
}

#[test]
fn any_csv_with_a_label_column_trains() {
    let dir = tempfile::tempdir().unwrap();
    // Two well-separated classes in three features, labels in a column named "kind".
    let mut csv = String::from("a,kind,b,c\n");
    for i in 0..400u32 {
        let class = i % 2;
        let x = |k: u32| f64::from((i * 37 + k * 11) % 17) / 17.0 + 3.0 * f64::from(class);
        csv.push_str(&format!("{},{class},{},{}\n", x(1), x(2), x(3)));
    }
    let path = dir.path().join("sites.csv");
    std::fs::write(&path, csv).unwrap();
    let report = dir.path().join("report");
    let out = sim(&[
        "--dataset",
        path.to_str().unwrap(),
        "--label-column",
        "kind",
        "--clients",
        "12",
        "--rounds",
        "3",
        "--transport",
        "memory",
        "--split",
        "iid",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["params"]["features"], 3);
    assert_eq!(json["params"]["classes"], 2);
    assert_eq!(json["params"]["test_examples"], 80, "a 20 % test split");
    assert!(json["secure"]["final_accuracy"].as_f64().unwrap() > 0.95);
}
