//! The coordinator benchmark's logic, CI-sized: the round completes with every client and the
//! report has every figure. Timings are printed, never asserted.

use fedsec_integration_tests::bench::{self, BenchOptions};

#[test]
fn quick_benchmark_completes_its_round_and_reports_every_figure() {
    let report = bench::run(&BenchOptions::quick()).expect("the benchmark runs");
    println!("{report}");
    for field in [
        "n",
        "d",
        "graph",
        "round_wall_s",
        "core_in_memory_s",
        "tls_transfer_s",
        "limit_s",
        "ratio",
        "pass",
        "phase_s",
        "client_bytes_sent",
        "client_bytes_received",
    ] {
        assert!(report.get(field).is_some(), "the report lacks {field}: {report}");
    }
    assert_eq!(report["n"], 12);
    assert_eq!(report["d"], 1000);
    assert_eq!(report["completed"], true, "every client has the round's result: {report}");
    assert_eq!(report["clients_completed"], 12);
    assert_eq!(report["core_exact"], true, "the in-memory round sums exactly");
    for phase in ["advertise_keys", "share_keys", "masked_input", "consistency", "unmasking"] {
        assert!(report["phase_s"][phase].as_f64().is_some(), "no time for {phase}: {report}");
    }
    // Each client uploads at least its masked input (4 bytes a word) and downloads the model.
    assert!(report["client_bytes_sent"].as_u64().unwrap() >= 4 * 1000);
    assert!(report["client_bytes_received"].as_u64().unwrap() >= 4 * 999);
    for field in ["round_wall_s", "core_in_memory_s", "tls_transfer_s"] {
        assert!(report[field].as_f64().unwrap() > 0.0, "{field} was measured: {report}");
    }
}
