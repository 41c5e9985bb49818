//! Rounds of SecAgg+ between a coordinator and ten client processes over mutual TLS: the
//! aggregate is exactly the clear sum of the quantized updates, dropouts are survived, and
//! the audit log verifies.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Federation, Options, bin};

const LONG: Duration = Duration::from_secs(240);

/// The completed attempts, by round, from the audit log.
fn completed_attempts(fed: &Federation) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = fed
        .audit_entries("round_completed")
        .iter()
        .map(|e| {
            (
                e["detail"]["round"].as_u64().unwrap(),
                e["detail"]["attempt"].as_str().unwrap().into(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn ten_clients_three_rounds_sum_exactly_and_the_audit_log_verifies() {
    let mut fed = Federation::start(Options::default());
    for i in 1..=10 {
        fed.spawn_client(i, &[]);
    }
    fed.wait_clients(LONG);
    let rounds = completed_attempts(&fed);
    assert_eq!(rounds.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    for (round, attempt) in &rounds {
        let dumps = fed.dumps(*round, attempt);
        assert_eq!(dumps.len(), 10, "round {round}: all ten took part");
        let inputs: Vec<&Vec<u32>> = dumps.iter().map(|d| &d.1).collect();
        fed.assert_exact_round(*round, &inputs);
    }
    // Every client says it finished with the last checkpoint.
    for p in fed.clients.iter().flatten() {
        assert!(p.output().contains("3 rounds completed"), "{}", p.output());
    }
    // No process printed key material.
    let mut secrets = Vec::new();
    for entry in std::fs::read_dir(fed.pki()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "key") {
            let pem = std::fs::read_to_string(&path).unwrap();
            secrets.extend(pem.lines().filter(|l| !l.starts_with("-----")).map(String::from));
        }
    }
    assert!(secrets.len() >= 12, "the keys of the PKI were found");
    let outputs: Vec<String> = fed
        .clients
        .iter()
        .flatten()
        .map(|p| p.output())
        .chain([fed.coordinator.output()])
        .collect();
    for out in &outputs {
        for s in &secrets {
            assert!(!out.contains(s.as_str()), "a private key appears in a log");
        }
    }

    // `audit verify` passes on the log of the run, and fails after one byte is changed.
    let verify = || {
        Command::new(bin("fedsec-coordinator"))
            .args(["audit", "verify", "--log"])
            .arg(fed.path("audit.log"))
            .arg("--key")
            .arg(fed.pki().join("coordinator-signing.pub"))
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("audit log verified"));
    let mut log = std::fs::read(fed.path("audit.log")).unwrap();
    let at = log.len() / 2;
    log[at] ^= 0x01;
    std::fs::write(fed.path("audit.log"), &log).unwrap();
    let bad = verify();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("audit.log"), "the error names the file: {err}");
}

/// The ops listener's metrics follow a real run: three completed attempts of ten clients
/// each, the checkpoint version, bytes in and out, the refusals by reason (a connection that
/// fails its TLS handshake, a call refused by a protocol rule); `/healthz` says serving.
#[test]
fn the_metrics_follow_the_rounds_and_the_refusals() {
    let mut fed = Federation::start(Options { clients: 8, rounds: 2, ..Options::default() });
    assert_eq!(fed.ops_get("/healthz"), (200, "serving\n".to_owned()));
    // Not TLS at all: refused at the handshake.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&fed.addr).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
        let _ = std::io::Read::read(&mut s, &mut [0u8; 64]);
    }
    for i in 1..=8 {
        fed.spawn_client(i, &[]);
    }
    fed.wait_clients(LONG);
    let task = common::TASK_ID;
    let m = |fed: &Federation, series: String| fed.metric(&series).unwrap_or(0.0);
    assert_eq!(
        m(&fed, format!("fedsec_attempts_total{{task=\"{task}\",outcome=\"completed\"}}")),
        2.0
    );
    assert_eq!(m(&fed, format!("fedsec_clients_total{{task=\"{task}\",set=\"summed\"}}")), 16.0);
    assert_eq!(m(&fed, format!("fedsec_clients_total{{task=\"{task}\",set=\"selected\"}}")), 16.0);
    assert_eq!(m(&fed, format!("fedsec_checkpoint_version{{task=\"{task}\"}}")), 2.0);
    let phase =
        format!("fedsec_phase_duration_seconds_count{{task=\"{task}\",phase=\"Complaints\"}}");
    assert_eq!(m(&fed, phase), 2.0);
    assert!(m(&fed, format!("fedsec_masked_input_bytes_total{{task=\"{task}\"}}")) > 0.0);
    assert!(m(&fed, "fedsec_grpc_body_bytes_total{direction=\"in\"}".into()) > 0.0);
    assert!(m(&fed, "fedsec_grpc_body_bytes_total{direction=\"out\"}".into()) > 0.0);
    assert!(m(&fed, "fedsec_refusals_total{reason=\"tls\"}".into()) >= 1.0);
    assert_eq!(m(&fed, "fedsec_audit_log_up".into()), 1.0);
    assert_eq!(m(&fed, "fedsec_store_up".into()), 1.0);
    // A client that checks in to the finished task is refused by a rule of the service.
    let before = m(&fed, "fedsec_refusals_total{reason=\"protocol\"}".into());
    fed.spawn_client(9, &[]);
    let _ = fed.client(9).wait_exit(LONG);
    let after = m(&fed, "fedsec_refusals_total{reason=\"protocol\"}".into());
    assert!(after > before, "protocol refusals {before} → {after}");
    // Anything but GET /metrics and /healthz is not served.
    assert_eq!(fed.ops_get("/").0, 404);
}

#[test]
fn a_client_killed_after_its_upload_is_summed_and_one_killed_before_is_not() {
    // The masked-input deadline is far longer than the test may take: the round can only go
    // on because the killed clients' closed connections count as their dropouts at once.
    let mut fed =
        Federation::start(Options { rounds: 4, masked_input_ms: 600_000, ..Options::default() });
    for i in 1..=10 {
        // Client 5 stops before uploading in round 3.
        let extra: &[&str] = if i == 5 { &["--test-stall-before-upload", "3"] } else { &[] };
        fed.spawn_client(i, extra);
    }
    // Round 2: client 3 is SIGKILLed once its masked input is uploaded.
    fed.client(3).wait_for("masked input uploaded", 2, LONG);
    fed.client(3).kill();
    // Round 3: client 5 is SIGKILLed before its upload.
    fed.client(5).wait_for("stalling before the upload", 1, LONG);
    fed.client(5).kill();
    fed.wait_clients(LONG);

    let rounds = completed_attempts(&fed);
    assert_eq!(rounds.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    let id3 = fed.client_id(3);
    let id5 = fed.client_id(5);
    for (round, attempt) in &rounds {
        let mut dumps = fed.dumps(*round, attempt);
        if *round == 3 {
            // Client 5 quantized its input but never uploaded it.
            dumps.retain(|d| d.0 != id5);
        }
        let ids: Vec<&String> = dumps.iter().map(|d| &d.0).collect();
        match round {
            1 => assert_eq!(dumps.len(), 10),
            2 => assert!(dumps.len() == 10 && ids.contains(&&id3), "client 3's input is in U3"),
            3 => assert!(dumps.len() == 8 && !ids.contains(&&id3)),
            _ => assert_eq!(dumps.len(), 8, "the next round runs with the eight left"),
        }
        let inputs: Vec<&Vec<u32>> = dumps.iter().map(|d| &d.1).collect();
        fed.assert_exact_round(*round, &inputs);
    }
}

#[test]
fn connections_cut_mid_round_are_resumed_with_identical_messages() {
    let mut fed = Federation::start(Options { rounds: 2, ..Options::default() });
    let proxy = common::CuttingProxy::start(&fed.addr, Duration::from_millis(300));
    fed.client_addr = proxy.addr.clone();
    for i in 1..=10 {
        fed.spawn_client(i, &[]);
    }
    fed.wait_clients(LONG);
    let cuts = proxy.cuts.load(std::sync::atomic::Ordering::SeqCst);
    assert!(cuts > 0, "the proxy cut connections");
    let resent = fed
        .clients
        .iter()
        .flatten()
        .filter(|p| p.output().contains("retrying with the identical message"))
        .count();
    assert!(resent > 0, "some client resent a message after a cut");
    let rounds = completed_attempts(&fed);
    assert_eq!(rounds.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
    for (round, attempt) in &rounds {
        let dumps = fed.dumps(*round, attempt);
        // Cut connections come back within the grace period: nobody is left out.
        assert_eq!(dumps.len(), 10, "round {round}: all ten inputs are in the sum");
        let inputs: Vec<&Vec<u32>> = dumps.iter().map(|d| &d.1).collect();
        fed.assert_exact_round(*round, &inputs);
    }
}
