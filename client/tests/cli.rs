//! The `fedsec-client` command line: help, and clear errors for bad input.

use std::process::Command;

fn client() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedsec-client"))
}

#[test]
fn help_explains_the_commands() {
    let out = client().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["join", "init-model", "pki"] {
        assert!(text.contains(word), "{text}");
    }
}

#[test]
fn a_missing_config_or_data_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = client()
        .args(["join", "--config"])
        .arg(dir.path().join("nope.toml"))
        .args(["--data", "x.csv"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}

#[test]
fn init_model_writes_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let out = client()
        .args(["init-model", "--features", "5", "--classes", "3", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let model =
        fedsec_wire::model::Model::from_safetensors(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(model.len(), 5 * 3 + 3);
}

/// `cargo test -p fedsec-client` builds the binary as `cargo build -p fedsec-client` ships it,
/// without the feature `test-hooks`: it knows no `--test-…` flag and its version says nothing of
/// hooks. (In a workspace-wide build, fedsec-integration-tests and fedsec-sim turn the feature
/// on and cargo unifies it: the binary then has the flags and says so, as checked below.)
#[cfg(not(feature = "test-hooks"))]
#[test]
fn the_shipped_binary_has_no_test_flags() {
    let out = client().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("test-hooks"));
    let dir = tempfile::tempdir().unwrap();
    let out = client()
        .args(["join", "--config", "c.toml", "--data", "d.csv", "--test-dump-quantized"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unexpected argument '--test-dump-quantized'"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A build with the test hooks says so in its version line.
#[cfg(feature = "test-hooks")]
#[test]
fn a_test_build_says_so() {
    let out = client().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("test-hooks"));
}

#[test]
fn insecure_toward_a_coordinator_off_the_loopback_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client.toml");
    std::fs::write(
        &config,
        r#"
coordinator = "http://192.0.2.7:7443"
insecure = true
task_id = "00112233445566778899aabbccddeeff"
ca = "ca.pem"
cert = "site.pem"
key = "site.key"
coordinator_key = "coordinator.pub"
state_dir = "state"
"#,
    )
    .unwrap();
    let out = client()
        .args(["join", "--config"])
        .arg(&config)
        .args(["--data", "d.csv"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("insecure = true only toward a loopback coordinator"), "{err}");
    assert!(err.contains("192.0.2.7"), "{err}");
}
