//! The README's "A federation on one machine", as a user runs it: `fedsec-coordinator
//! quickstart` from the repository's root writes everything, and the `run.sh` it writes starts
//! the real coordinator and ten real clients over mutual TLS, which finish the task.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, run_ok};

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn quickstart_writes_a_federation_that_runs_as_printed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fed");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let printed = run_ok(
        Command::new(bin("fedsec-coordinator"))
            .current_dir(root)
            .args(["quickstart", "--clients", "10", "--dataset", "digits", "--rounds", "3"])
            .args(["--port", &free_port().to_string(), "--out"])
            .arg(&out),
    );
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

    // Three rounds completed, in the audit log and in every site's own words.
    let audit = std::fs::read_to_string(out.join("audit.log")).unwrap();
    let completed = audit.lines().filter(|l| l.contains("\"kind\":\"round_completed\"")).count();
    assert_eq!(completed, 3, "{audit}");
    for i in 1..=10 {
        let site = log(&format!("site-{i:03}.log"));
        assert!(site.contains("task finished: 3 rounds completed"), "site {i}:\n{site}");
    }
}
