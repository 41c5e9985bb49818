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

/// `--log-format json`: every log line is one JSON object with its time, level, target and
/// message (the address line on stdout stays as it is, for scripts); a failed start is such a
/// line too, naming the file.
#[test]
fn json_logs_are_one_object_a_line_and_a_failed_start_is_one_of_them() {
    let mut fed = Federation::start(Options { rounds: 1, ..Options::default() });
    fed.coordinator.kill();
    let mut json = Proc::spawn(
        "coordinator with json logs",
        Command::new(bin("fedsec-coordinator"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(fed.path("coordinator.toml"))
            .env("RUST_LOG", "info"),
    );
    json.wait_for("listening on", 1, Duration::from_secs(60));
    json.wait_for("\"level\":\"INFO\"", 2, Duration::from_secs(60));
    json.kill();
    let output = json.output();
    let mut logged = 0;
    for line in output
        .lines()
        .filter(|l| !l.starts_with("listening on ") && !l.starts_with("ops listening on "))
    {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v[key].is_string(), "no {key}: {line}");
        }
        logged += 1;
    }
    assert!(logged >= 2, "{output}");
    println!("{logged} lines logged as JSON");

    let missing = fed.path("no-such.toml");
    let out = Command::new(bin("fedsec-coordinator"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert!(last["error"].as_str().unwrap().contains("no-such.toml"), "{stderr}");
}
