//! The benchmarks, CI-sized: the coordinator benchmark's round completes with every client and
//! its report has every figure; `secagg-bench` refuses parameters below the finder's targets
//! unless told, and runs a small round exactly. Timings are printed, never asserted.

use std::process::{Command, Output};

use fedsec_integration_tests::bench::{self, BenchOptions};
use serde_json::Value;

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

#[test]
fn quick_benchmark_probes_the_health_check_through_the_round() {
    let opts =
        BenchOptions { probe_health: true, coordinator_own_runtime: true, ..BenchOptions::quick() };
    let report = bench::run(&opts).expect("the benchmark runs");
    println!("{report}");
    assert_eq!(report["completed"], true, "every client has the round's result: {report}");
    assert_eq!(report["coordinator_runtime"], "own");
    let probe = &report["health_probe"];
    assert_eq!(probe["errors"], 0, "every health call was answered SERVING: {report}");
    assert!(probe["calls"].as_u64().is_some_and(|c| c >= 1), "the probe called: {report}");
    for field in ["p50_ms", "p99_ms", "max_ms"] {
        assert!(probe[field].as_f64().is_some_and(|ms| ms > 0.0), "{field}: {report}");
    }
}

/// Runs the `secagg-bench` binary of this package.
fn secagg_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_secagg-bench")).args(args).output().expect("secagg-bench runs")
}

fn json_of(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// n = 40, δ = 0.1, γ = 0.05, semi-malicious, Harary: the finder's (k, t) and what a
/// `--params-only` call prints for the given overrides.
const SMALL: [&str; 8] =
    ["--clients", "40", "--dropout", "0.1", "--params-only", "--json", "--graph", "harary"];

#[test]
fn secagg_bench_refuses_parameters_below_the_finders_targets_with_exit_code_2() {
    let finder = secagg_bench(&SMALL);
    assert!(finder.status.success(), "{finder:?}");
    let finder = json_of(&finder);
    let (k, t) = (finder["degree"].as_u64().unwrap(), finder["threshold"].as_u64().unwrap());
    assert!(t > 2 && k > 2, "the finder's choice for n = 40: {finder}");

    // Below the finder's t; below its k; the finder's t at a much larger degree, too small
    // for semi-malicious privacy there.
    for (degree, threshold) in [(None, Some(t - 1)), (Some(k - 2), Some(t)), (Some(38), Some(t))] {
        let mut args: Vec<String> = SMALL.iter().map(|a| a.to_string()).collect();
        if let Some(k) = degree {
            args.extend(["--degree".into(), k.to_string()]);
        }
        if let Some(t) = threshold {
            args.extend(["--threshold".into(), t.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = secagg_bench(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} is refused: {stderr}");
        assert!(stderr.contains("meet the targets"), "{args:?}: {stderr}");
        assert!(stderr.contains("--unsafe-params"), "the error says how to go on: {stderr}");
        assert!(out.stdout.is_empty(), "nothing is printed for refused parameters");

        let out = secagg_bench(&[args.as_slice(), &["--unsafe-params"]].concat());
        assert!(out.status.success(), "{args:?} with --unsafe-params: {out:?}");
        let chosen = json_of(&out);
        assert_eq!(chosen["degree"].as_u64(), Some(degree.unwrap_or(k)), "{chosen}");
        if let Some(t) = threshold {
            assert_eq!(chosen["threshold"].as_u64(), Some(t), "{chosen}");
        }
    }

    // A degree below the finder's has no threshold that meets the targets.
    let below = (k - 2).to_string();
    let out = secagg_bench(&[SMALL.as_slice(), &["--degree", below.as_str()]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("at any threshold") && stderr.contains("--unsafe-params"), "{stderr}");

    // A larger degree with the least threshold that meets the targets there: no flag needed.
    // (One more than the finder's threshold at its own degree would miss correctness: the
    // finder's degree is the least whose threshold is still reached with δn dropouts.)
    let larger = (k + 4).to_string();
    let out = secagg_bench(&[SMALL.as_slice(), &["--degree", larger.as_str()]].concat());
    assert!(out.status.success(), "{out:?}");
    let chosen = json_of(&out);
    assert_eq!(chosen["degree"].as_u64(), Some(k + 4));
    assert!(chosen["threshold"].as_u64().unwrap() > t, "a larger degree needs more: {chosen}");

    // Structurally impossible parameters are refused even with --unsafe-params.
    let mut args: Vec<&str> = SMALL.to_vec();
    args.extend(["--degree", "7", "--threshold", "3", "--unsafe-params"]);
    let out = secagg_bench(&args);
    assert_eq!(out.status.code(), Some(2), "an odd Harary degree: {out:?}");
}

#[test]
fn secagg_bench_runs_a_small_round_exactly_at_unsafe_parameters() {
    let args = [
        "--clients",
        "20",
        "--dim",
        "1000",
        "--dropout",
        "0.2",
        "--graph",
        "harary",
        "--degree",
        "6",
        "--threshold",
        "3",
        "--unsafe-params",
        "--json",
    ];
    let out = secagg_bench(&args);
    assert!(out.status.success(), "{out:?}");
    let report = json_of(&out);
    println!("{report}");
    assert_eq!(report["exact"], true, "the unmasked sum is the clear sum: {report}");
    assert_eq!(report["degree"], 6);
    assert_eq!(report["threshold"], 3);
    assert_eq!(report["params_meet_targets"], false);
    assert_eq!(report["u3"], 16, "four of twenty clients dropped after ShareKeys");
    for field in ["server_unmask_s", "limit_s", "efficiency", "fused_gbps", "ka_us"] {
        assert!(report[field].as_f64().is_some_and(|x| x > 0.0), "{field}: {report}");
    }
    // Linux says how long the unmasking ran on a CPU (at the scheduler's granularity: this
    // round's few milliseconds may read as none); elsewhere the figures are null.
    let cpu = &report["server_unmask_cpu_s"];
    let on_cpu = &report["efficiency_on_cpu"];
    if cfg!(target_os = "linux") {
        let cpu = cpu.as_f64().unwrap_or_else(|| panic!("server_unmask_cpu_s: {report}"));
        assert!(cpu >= 0.0, "server_unmask_cpu_s: {report}");
        match cpu > 0.0 {
            true => assert!(on_cpu.as_f64().is_some_and(|x| x > 0.0), "{report}"),
            false => assert!(on_cpu.is_null(), "{report}"),
        }
    } else {
        assert!(cpu.is_null() && on_cpu.is_null(), "{report}");
    }
}
