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
