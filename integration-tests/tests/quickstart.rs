//! The README's "A federation on one machine", as a user runs it: `fedsec-coordinator
//! quickstart` from the repository's root writes everything, and the `run.sh` it writes starts
//! the real coordinator and ten real clients over mutual TLS, which finish the task.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proc, bin, run_ok};

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs `fedsec-coordinator quickstart` from the repository's root, as the README does, for
/// ten sites on a free port; returns what it printed.
fn quickstart(out: &std::path::Path, dataset: &str, rounds: u32, extra: &[&str]) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    run_ok(
        Command::new(bin("fedsec-coordinator"))
            .current_dir(root)
            .args(["quickstart", "--clients", "10", "--dataset", dataset])
            .args(["--rounds", &rounds.to_string(), "--port", &free_port().to_string()])
            .args(extra)
            .arg("--out")
            .arg(out),
    )
}

#[test]
fn quickstart_writes_a_federation_that_runs_as_printed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fed");
    let printed = quickstart(&out, "digits", 3, &[]);
    let script = out.join("run.sh");
    assert!(printed.contains(&format!("sh {}", script.display())), "{printed}");
    assert_eq!(printed.lines().filter(|l| l.contains(" join --config ")).count(), 10);

    let start = Instant::now();
    let mut child = Command::new("sh").arg(&script).spawn().unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("run.sh did not finish in 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = |name: &str| std::fs::read_to_string(out.join("logs").join(name)).unwrap_or_default();
    assert!(
        status.success(),
        "run.sh failed:\n{}\n{}",
        log("coordinator.log"),
        log("site-001.log")
    );

    // The coordinator says what happened, round by round, and stopped by itself.
    let coordinator = log("coordinator.log");
    for round in 1..=3 {
        let line = format!("round {round} attempt 1 completed: selected 10, summed 10, dropped 0;");
        assert!(coordinator.contains(&line), "{line:?} missing:\n{coordinator}");
        assert!(coordinator.contains(&format!("checkpoint version {round}")), "{coordinator}");
    }
    assert!(coordinator.contains("task finished: 3 rounds completed, final checkpoint version 3"));
    assert!(coordinator.contains("every task finished; stopping"), "{coordinator}");
    // Three rounds completed, in the audit log and in every site's own words; every site has
    // the final model.
    let audit = std::fs::read_to_string(out.join("audit.log")).unwrap();
    let completed = audit.lines().filter(|l| l.contains("\"kind\":\"round_completed\"")).count();
    assert_eq!(completed, 3, "{audit}");
    for i in 1..=10 {
        let site = log(&format!("site-{i:03}.log"));
        assert!(site.contains("task finished: 3 rounds completed"), "site {i}:\n{site}");
        assert!(site.contains("final checkpoint version 3"), "site {i}:\n{site}");
        let model = out.join(format!("state/client-{i:03}/final.safetensors"));
        let model = fedsec_wire::model::Model::from_safetensors(&std::fs::read(&model).unwrap());
        assert_eq!(model.unwrap().len(), 64 * 10 + 10);
    }

    // Written again over the finished federation (--force: new keys, old state cleared), it
    // runs again from the start.
    quickstart(&out, "digits", 1, &["--force"]);
    let again = Command::new("sh").arg(&script).output().unwrap();
    assert!(again.status.success(), "{}\n{}", log("coordinator.log"), log("site-001.log"));
    assert!(log("site-001.log").contains("task finished: 1 rounds completed"));
}

#[test]
fn the_printed_commands_run_by_hand_and_status_shows_the_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fed");
    let printed = quickstart(&out, "breast-cancer", 2, &[]);
    // The commands as printed, each run by a shell as a user pastes it.
    let command = |needle: &str| -> Vec<String> {
        printed.lines().filter(|l| l.contains(needle)).map(|l| l.trim().to_string()).collect()
    };
    let serve = command(" serve ");
    let sites = command(" join --config ");
    let status_line = printed.lines().find(|l| l.contains(" status --config ")).unwrap();
    let operator = status_line.rsplit(' ').next().unwrap().to_string();
    assert_eq!((serve.len(), sites.len()), (1, 10), "{printed}");

    // Without --exit-when-finished the coordinator keeps serving after the task, so the
    // operator can still ask for its status.
    let serve = serve[0].replace(" --exit-when-finished", "");
    let coordinator = Proc::spawn("coordinator", Command::new("sh").args(["-c", &serve]));
    coordinator.wait_for("listening on", 1, Duration::from_secs(60));
    let status =
        || run_ok(Command::new(bin("fedsec-coordinator")).args(["status", "--config", &operator]));
    let before = status();
    assert!(before.contains("(quickstart): running, checkpoint version 0"), "{before}");
    assert!(before.contains("no round has ended yet"), "{before}");

    // The operator's certificate calls the Admin service only, never takes part in rounds.
    let site1 = std::fs::read_to_string(out.join("client-001.toml")).unwrap();
    let as_operator = site1
        .replace("pki/client-001.", "pki/operator.")
        .replace("state/client-001", "state/operator");
    std::fs::write(out.join("operator-as-client.toml"), as_operator).unwrap();
    let join = sites[0].replace("client-001.toml", "operator-as-client.toml");
    let refused = Command::new("sh").args(["-c", &join]).output().unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("operators do not take part in rounds"), "{said}");

    let mut clients: Vec<Proc> = sites
        .iter()
        .enumerate()
        .map(|(i, line)| {
            Proc::spawn(&format!("site-{}", i + 1), Command::new("sh").args(["-c", line]))
        })
        .collect();
    for c in &mut clients {
        assert!(c.wait_exit(Duration::from_secs(180)), "{} failed:\n{}", c.name, c.output());
    }
    let after = status();
    assert!(after.contains("(quickstart): finished, checkpoint version 2"), "{after}");
    let completed: Vec<&str> = after.lines().filter(|l| l.contains(" completed ")).collect();
    assert_eq!(completed.len(), 2, "{after}");
    assert!(completed.iter().all(|l| l.split_whitespace().nth(3) == Some("10")), "{after}");
    drop(coordinator);
}
