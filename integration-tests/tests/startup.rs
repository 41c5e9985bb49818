//! Starting the coordinator, with real processes: a second coordinator on the same files is
//! refused before it writes, a refused start leaves nothing behind but the lock file, and a
//! mistyped override names itself.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Federation, Options, Proc, bin, run_ok};

/// The names of the files directly in `dir`.
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.map_while(Result::ok).map(|e| e.file_name().to_string_lossy().into()).collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_second_coordinator_on_the_same_config_is_refused_before_it_writes() {
    let mut fed = Federation::start(Options::default());
    let log = fed.path("audit.log");
    let head = fed.path("audit.log.head");
    let (log_before, head_before) = (std::fs::read(&log).unwrap(), std::fs::read(&head).unwrap());
    let files_before = names(fed.dir.path());
    let first_pid = fed.coordinator.child.id();
    assert_eq!(
        std::fs::read_to_string(fed.path("coordinator.lock")).unwrap().trim(),
        first_pid.to_string(),
        "the lock file names its holder"
    );

    let mut second = Proc::spawn(
        "second coordinator",
        Command::new(bin("fedsec-coordinator"))
            .args(["serve", "--config"])
            .arg(fed.path("coordinator.toml")),
    );
    assert!(!second.wait_exit(Duration::from_secs(60)), "the second coordinator started");
    let output = second.output();
    assert!(output.contains("coordinator.lock"), "{output}");
    assert!(output.contains(&format!("pid {first_pid}")), "{output}");
    assert!(!output.contains("listening on"), "{output}");

    assert_eq!(std::fs::read(&log).unwrap(), log_before, "the audit log is untouched");
    assert_eq!(std::fs::read(&head).unwrap(), head_before, "its head is untouched");
    assert_eq!(names(fed.dir.path()), files_before);
    assert!(fed.coordinator.child.try_wait().unwrap().is_none(), "the first one still serves");
}

#[test]
fn a_refused_start_leaves_only_the_lock_file_and_names_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    run_ok(
        Command::new(bin("fedsec-coordinator"))
            .args(["pki", "init", "--clients", "0", "--out"])
            .arg(root.join("pki")),
    );
    let config = root.join("coordinator.toml");
    std::fs::write(
        &config,
        r#"listen = "127.0.0.1:0"
store = "data/checkpoints"
audit_log = "data/audit.log"
signing_key = "pki/coordinator-signing.key"
deny_list = "deny.txt"

[tls]
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "pki/ca.pem"
"#,
    )
    .unwrap();
    let serve = |env: &[(&str, &str)]| {
        let out = Command::new(bin("fedsec-coordinator"))
            .args(["serve", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .output()
            .expect("the coordinator runs");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // A typo in a variable is the variable's, not the file's; nothing is created.
    let err = serve(&[("FEDSEC_TASK__ROUDNS", "5")]);
    assert!(err.contains("environment variable FEDSEC_TASK__ROUDNS: task.roudns"), "{err}");
    assert!(!root.join("data").exists(), "a configuration error creates nothing");

    // The missing deny-list names the key; only the lock file is left.
    let err = serve(&[]);
    assert!(err.contains("deny_list = ") && err.contains("deny.txt"), "{err}");
    assert!(err.contains("empty file"), "{err}");
    assert_eq!(names(&root.join("data")), BTreeSet::from(["coordinator.lock".to_string()]));

    // With the file in place the same folder starts cleanly.
    std::fs::write(root.join("deny.txt"), "").unwrap();
    let ok = Proc::spawn(
        "coordinator",
        Command::new(bin("fedsec-coordinator")).args(["serve", "--config"]).arg(&config),
    );
    ok.wait_for("listening on", 1, Duration::from_secs(60));
    assert!(root.join("data/audit.log").exists());
}
