//! The coordinator's durable state under crashes and failing disks, with real processes over
//! mutual TLS: an audit log left between its lines and its head is recovered at start, and an
//! audit log that cannot be written stops new rounds (fail closed) until it can.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Federation, Options};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const LONG: Duration = Duration::from_secs(300);

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn runtime() -> tokio::runtime::Runtime {
    fedsec_client::tls::install_crypto_provider();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A channel to the coordinator with client certificate `i`.
fn channel(fed: &Federation, i: usize) -> Channel {
    let (cert, key) = fed.cert(i);
    let text = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let tls = fedsec_client::tls::client_tls(
        &text(&fed.pki().join("ca.pem")),
        &text(&cert),
        &text(&key),
        "localhost",
    )
    .unwrap();
    Endpoint::from_shared(format!("https://{}", fed.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(20))
        .tls_config(tls)
        .unwrap()
        .connect_lazy()
}

/// The health of the Federation service.
async fn health(ch: &Channel) -> ServingStatus {
    let r = HealthClient::new(ch.clone())
        .check(HealthCheckRequest { service: "fedsec.v1.Federation".into() })
        .await
        .unwrap();
    r.into_inner().status()
}

/// Polls the health every 100 ms until it is `want`; how long that took.
fn wait_health(rt: &tokio::runtime::Runtime, ch: &Channel, want: ServingStatus) -> Duration {
    let start = Instant::now();
    while rt.block_on(health(ch)) != want {
        assert!(start.elapsed() < LONG, "health never became {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn a_coordinator_killed_between_audit_lines_and_their_head_recovers_at_start() {
    let mut fed = Federation::start(Options { rounds: 1, ..Options::default() });
    // The head as it was before the round: the round's lines will be past it.
    let head_path = fed.path("audit.log.head");
    let old_head = std::fs::read(&head_path).unwrap();
    let entries_before = std::fs::read_to_string(fed.path("audit.log")).unwrap().lines().count();
    for i in 1..=10 {
        fed.spawn_client(i, &[]);
    }
    fed.wait_clients(LONG);
    fed.coordinator.kill();
    // What a crash in the middle of a batch leaves: complete lines the head does not cover
    // yet, and the start of one more.
    let entries_after = std::fs::read_to_string(fed.path("audit.log")).unwrap().lines().count();
    std::fs::write(&head_path, &old_head).unwrap();
    let torn = br#"{"seq":99,"time":17"#;
    let mut log = std::fs::read(fed.path("audit.log")).unwrap();
    log.extend_from_slice(torn);
    std::fs::write(fed.path("audit.log"), &log).unwrap();
    let err = fed.verify_audit_log().expect_err("the log does not verify as it is");
    assert!(err.contains("audit.log"), "{err}");

    fed.restart_coordinator();
    fed.coordinator.wait_for("audit log recovered", 1, LONG);
    let report = fed.verify_audit_log().expect("the recovered log verifies");
    println!("{report}");
    let recovered = fed.audit_entries("audit_recovered");
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    let accepted = (entries_after - entries_before) as u64;
    assert!(accepted > 0);
    assert_eq!(recovered[0]["detail"]["head_entries"], entries_before as u64);
    assert_eq!(recovered[0]["detail"]["lines_accepted"], accepted);
    assert_eq!(recovered[0]["detail"]["torn_bytes_cut"], torn.len() as u64);
    // The round's entries are all there, once.
    assert_eq!(fed.audit_entries("round_completed").len(), 1);
    assert_eq!(fed.audit_entries("checkpoint").len(), 1);
}

#[test]
fn an_audit_log_that_cannot_be_written_stops_new_rounds_until_it_can() {
    let mut fed = Federation::start(Options { rounds: 2, ..Options::default() });
    let rt = runtime();
    // Channels connect lazily, on the runtime's reactor.
    let _entered = rt.enter();
    let ch = channel(&fed, 11);
    assert_eq!(rt.block_on(health(&ch)), ServingStatus::Serving);
    let log_before = std::fs::read(fed.path("audit.log")).unwrap();
    // The head cannot be replaced while its temporary file's path is a directory (the same
    // for every user, root included).
    let blocker = fed.path("audit.log.head.tmp");
    std::fs::create_dir(&blocker).unwrap();
    for i in 1..=10 {
        fed.spawn_client(i, &[]);
    }
    // The first check-in's enrollment cannot be written: health turns NOT_SERVING.
    wait_health(&rt, &ch, ServingStatus::NotServing);
    fed.coordinator.wait_for("audit log append failed", 1, LONG);
    let (code, why) = fed.ops_get("/healthz");
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("audit"), "{why}");
    assert_eq!(fed.metric("fedsec_audit_log_up"), Some(0.0));
    // While it fails, no round starts and nothing reaches the log.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(rt.block_on(health(&ch)), ServingStatus::NotServing);
    assert_eq!(std::fs::read(fed.path("audit.log")).unwrap(), log_before);
    // Fixed: the entries kept in memory are written, health comes back, the rounds run.
    let fixed_ms = unix_ms();
    std::fs::remove_dir(&blocker).unwrap();
    let back = wait_health(&rt, &ch, ServingStatus::Serving);
    println!("health back {back:?} after the log could be written again");
    fed.wait_clients(LONG);
    assert_eq!(fed.audit_entries("round_completed").len(), 2);
    assert_eq!(fed.audit_entries("enrollment").len(), 10, "no enrollment was lost");
    // Every attempt started after the fix (an entry is stamped when it happens).
    for started in fed.audit_entries("round_started") {
        assert!(started["time"].as_u64().unwrap() >= fixed_ms, "started while failing: {started}");
    }
    fed.verify_audit_log().expect("the log verifies");
    assert_eq!(fed.metric("fedsec_audit_log_up"), Some(1.0));
}

/// A checkpoint the store cannot take turns health (gRPC and `/healthz`) to NOT_SERVING and
/// `fedsec_store_up` to 0 while the coordinator retries, and back once the store takes it; the
/// round then completes.
#[test]
fn a_store_that_cannot_be_written_turns_health_not_serving_until_it_can() {
    let mut fed = Federation::start(Options { rounds: 1, ..Options::default() });
    let rt = runtime();
    let _entered = rt.enter();
    let ch = channel(&fed, 11);
    assert_eq!(rt.block_on(health(&ch)), ServingStatus::Serving);
    // Checkpoint 1's data cannot be written where a directory stands in its place.
    let blocker =
        fed.path(&format!("store/tasks/{}/checkpoints/{:020}.safetensors", common::TASK_ID, 1));
    std::fs::create_dir_all(&blocker).unwrap();
    for i in 1..=10 {
        fed.spawn_client(i, &[]);
    }
    wait_health(&rt, &ch, ServingStatus::NotServing);
    fed.coordinator.wait_for("storing the checkpoint failed", 1, LONG);
    let (code, why) = fed.ops_get("/healthz");
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("store"), "{why}");
    assert_eq!(fed.metric("fedsec_store_up"), Some(0.0));
    std::fs::remove_dir(&blocker).unwrap();
    wait_health(&rt, &ch, ServingStatus::Serving);
    fed.wait_clients(LONG);
    assert_eq!(fed.audit_entries("checkpoint").len(), 1);
    assert_eq!(fed.metric("fedsec_store_up"), Some(1.0));
    assert_eq!(fed.ops_get("/healthz").0, 200);
}

/// The coordinator is killed (SIGKILL) right after a phase close was saved, before its clients
/// answered the next phase, and restarted on the same address: it resumes the same attempt
/// (same nonce) from its saved state, the clients carry on by resending their messages, and the
/// round completes with the model of the exact clear sum of its inputs. `audit verify` passes,
/// and the saved state is gone once the attempt ended.
#[test]
fn a_coordinator_killed_in_the_middle_of_an_attempt_resumes_the_same_attempt() {
    // After each phase close (0–5, Complaints is 2): after phase 1½ the uploads are lost with
    // the process and sent again, after phase 3 the unmasking shares are, and after phase 4 the
    // sum is computed from the saved shares (unless the kill came after the checkpoint was
    // stored: then the round is simply done).
    for phase in [0u64, 1, 2, 3, 4, 5] {
        let mut fed = Federation::start(Options { rounds: 1, ..Options::default() });
        for i in 1..=10 {
            // Each call waits 1.5 s first: the kill lands before the next phase's messages.
            fed.spawn_client(i, &["--test-latency-ms", "1500"]);
        }
        let saved = fed.wait_audit("phase_saved", "phase", phase.into(), LONG);
        let attempt = saved["detail"]["attempt"].as_str().unwrap().to_owned();
        fed.restart_coordinator_in_place();
        fed.wait_clients(LONG);
        let resumed = fed.audit_entries("attempt_resumed");
        let stored_before_the_kill = phase == 5 && resumed.is_empty();
        if !stored_before_the_kill {
            assert_eq!(resumed.len(), 1, "phase {phase}: {resumed:?}");
            assert_eq!(resumed[0]["detail"]["attempt"], attempt.as_str());
            assert_eq!(resumed[0]["detail"]["after_phase"], phase);
        }
        let completed = fed.audit_entries("round_completed");
        if stored_before_the_kill && completed.is_empty() {
            // Killed once the checkpoint was stored, before the round's end was recorded: the
            // restart records the checkpoint it resumes from.
            let created = fed.audit_entries("task_created");
            assert_eq!(created.last().unwrap()["detail"]["checkpoint_version"], 1);
        } else {
            assert_eq!(completed.len(), 1, "phase {phase}");
            assert_eq!(
                completed[0]["detail"]["attempt"],
                attempt.as_str(),
                "the same attempt completed"
            );
        }
        assert!(fed.audit_entries("round_aborted").is_empty());
        let dumps = fed.dumps(1, &attempt);
        assert_eq!(dumps.len(), 10);
        let inputs: Vec<&Vec<u32>> = dumps.iter().map(|(_, x)| x).collect();
        fed.assert_exact_round(1, &inputs);
        fed.verify_audit_log().expect("the audit log verifies");
        let state = fed.path(&format!("store/tasks/{}/attempt.state", common::TASK_ID));
        assert!(!state.exists(), "the saved state is deleted once the attempt ended");
    }
}

/// A saved attempt that cannot resume — its file deleted, or changed by one bit — is aborted and
/// audited after the restart, and a new attempt of the round completes with the same clients
/// (killed after phase 0 was saved: no client has spent its upload yet).
#[test]
fn a_missing_or_changed_saved_state_aborts_the_attempt_and_a_new_one_completes() {
    // "changed, encrypted": the store encrypts at rest, and the sealed state does not open.
    for damage in ["missing", "changed", "changed, encrypted"] {
        let encryption = damage.ends_with("encrypted");
        let mut fed = Federation::start(Options { rounds: 1, encryption, ..Options::default() });
        for i in 1..=10 {
            fed.spawn_client(i, &["--test-latency-ms", "1500"]);
        }
        let saved = fed.wait_audit("phase_saved", "phase", 0.into(), LONG);
        let attempt = saved["detail"]["attempt"].as_str().unwrap().to_owned();
        fed.coordinator.kill();
        let state = fed.path(&format!("store/tasks/{}/attempt.state", common::TASK_ID));
        match damage {
            "missing" => std::fs::remove_file(&state).unwrap(),
            _ => {
                let mut bytes = std::fs::read(&state).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x01;
                std::fs::write(&state, bytes).unwrap();
            }
        }
        fed.restart_coordinator_in_place();
        fed.wait_clients(LONG);
        let aborted = fed.audit_entries("round_aborted");
        assert_eq!(aborted.len(), 1, "{damage}: {aborted:?}");
        let reason = aborted[0]["detail"]["reason"].as_str().unwrap();
        assert_eq!(aborted[0]["detail"]["attempt"], attempt.as_str());
        match damage {
            "missing" => assert!(reason.contains("is missing"), "{reason}"),
            "changed" => assert!(reason.contains("authentication tag does not verify"), "{reason}"),
            _ => assert!(reason.contains("does not open"), "{reason}"),
        }
        assert!(fed.audit_entries("attempt_resumed").is_empty());
        let completed = fed.audit_entries("round_completed");
        assert_eq!(completed.len(), 1, "{damage}: a new attempt completed the round");
        let new_attempt = completed[0]["detail"]["attempt"].as_str().unwrap();
        assert_ne!(new_attempt, attempt);
        let dumps = fed.dumps(1, new_attempt);
        let inputs: Vec<&Vec<u32>> = dumps.iter().map(|(_, x)| x).collect();
        fed.assert_exact_round(1, &inputs);
        fed.verify_audit_log().expect("the audit log verifies");
    }
}

/// The clients sent shares are recorded as contributors on the checkpoint before the shares go
/// out. When the attempt cannot resume after a restart (its state is gone), none of them is
/// selected again on that checkpoint — each would refuse, its ledger having recorded the upload
/// — and, all ten being contributors, the task says plainly that no round can run: in the audit
/// log (`task_stalled`) and in the answer to every contributor's check-in.
#[test]
fn a_restart_that_cannot_resume_does_not_select_contributors_and_says_the_task_is_stalled() {
    let mut fed = Federation::start(Options { rounds: 1, ..Options::default() });
    for i in 1..=10 {
        fed.spawn_client(i, &["--test-latency-ms", "1500"]);
    }
    fed.wait_audit("phase_saved", "phase", 1.into(), LONG);
    fed.coordinator.kill();
    let task_dir = fed.path(&format!("store/tasks/{}", common::TASK_ID));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(task_dir.join("contributors.json")).unwrap())
            .unwrap();
    assert_eq!(record["clients"].as_array().unwrap().len(), 10, "U2 recorded before release");
    std::fs::remove_file(task_dir.join("attempt.state")).unwrap();
    fed.restart_coordinator_in_place();
    let stalled = fed.wait_audit("task_stalled", "checkpoint_version", 0.into(), LONG);
    assert_eq!(stalled["detail"]["eligible"], 0);
    assert_eq!(stalled["detail"]["contributed"], 10);
    assert_eq!(fed.audit_entries("round_started").len(), 1, "no attempt selected them again");
    // The clients are told why.
    let log = fed.client(1).wait_for("no round can run on checkpoint 0", 1, LONG);
    assert!(log.contains("min_clients = 8"), "{log}");
    fed.verify_audit_log().expect("the audit log verifies");
}

/// A task created and started through Admin is in the store (its definition, its start and its
/// checkpoint 0), and a restarted coordinator creates it again, started, without anyone asking.
#[test]
fn a_task_created_through_admin_is_created_again_after_a_restart() {
    use fedsec_proto::v1::{self, admin_client::AdminClient};
    let mut fed = Federation::start(Options { rounds: 1, admins: vec![12], ..Options::default() });
    let rt = runtime();
    let _entered = rt.enter();
    let model = std::fs::read(fed.path("model.safetensors")).unwrap();
    let admin = |fed: &Federation| AdminClient::new(channel(fed, 12));
    let created = rt
        .block_on(admin(&fed).create_task(v1::CreateTaskRequest {
            name: "made by an operator".into(),
            initial_checkpoint: model,
            clients_per_round: 10,
            min_clients: 8,
            rounds: 2,
            ..Default::default()
        }))
        .unwrap()
        .into_inner();
    let id = created.task_id.clone();
    rt.block_on(admin(&fed).start_task(v1::StartTaskRequest { task_id: id.clone() })).unwrap();
    let status = |fed: &Federation| {
        rt.block_on(admin(fed).get_task_status(v1::TaskStatusRequest { task_id: id.clone() }))
    };
    let before = status(&fed).unwrap().into_inner();
    fed.restart_coordinator();
    let after = status(&fed).expect("the task exists after the restart").into_inner();
    assert_eq!(after.name, "made by an operator");
    assert_eq!(after.state, "running", "started, as it was");
    assert_eq!(after.checkpoint_version, before.checkpoint_version);
    let listed = rt.block_on(admin(&fed).list_tasks(v1::ListTasksRequest {})).unwrap();
    assert_eq!(listed.into_inner().tasks.len(), 2, "the configured task and the operator's");
    // A definition changed in the store (here, one bit of its rounds) is not created again:
    // it is signed by the coordinator's key. The refusal names the file; the rest starts.
    let file = fed.path(&format!("store/tasks/{}/definition.pb", hex::encode(&id)));
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    fed.restart_coordinator();
    let listed = rt.block_on(admin(&fed).list_tasks(v1::ListTasksRequest {})).unwrap();
    assert_eq!(listed.into_inner().tasks.len(), 1, "only the configured task");
    let refusals = fed.audit_entries("refusal");
    let reason = refusals.last().unwrap()["detail"]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("definition.pb") && reason.contains("signature"), "{reason}");
    fed.verify_audit_log().expect("the audit log verifies");
}

/// The store went back (restored from the backup of version 1 after version 3 was made):
/// clients that saw version 3 refuse version 1 as a rollback, so they are not selected and the
/// task says it is stalled (audit, status). `fedsec-coordinator republish` with new weights
/// publishes them as version 4, above every version reported, with the operator's identity in
/// the audit log; a restart right after counts the task's rounds right (one completed, not
/// four), and the remaining two rounds complete exactly on top of version 4.
#[test]
fn a_store_restored_from_an_older_backup_stalls_until_the_operator_republishes_the_model() {
    use common::bin;
    use std::process::Command;

    let mut fed = Federation::start(Options { rounds: 3, admins: vec![12], ..Options::default() });
    for i in 1..=10 {
        fed.spawn_client(i, &[]);
    }
    fed.wait_clients(LONG);
    assert_eq!(fed.audit_entries("round_completed").len(), 3);
    fed.coordinator.kill();
    let dir = fed.path(&format!("store/tasks/{}/checkpoints", common::TASK_ID));
    for v in [2u64, 3] {
        for suffix in [".safetensors", ".manifest.json"] {
            std::fs::remove_file(dir.join(format!("{v:020}{suffix}"))).unwrap();
        }
    }
    fed.restart_coordinator();
    for i in 1..=10 {
        fed.spawn_client(i, &[]);
    }
    let stalled = fed.wait_audit("task_stalled", "ahead", 10.into(), LONG);
    assert_eq!(stalled["detail"]["checkpoint_version"], 1);
    assert_eq!(stalled["detail"]["highest_reported"], 3);
    assert!(fed.audit_entries("round_started").len() == 3, "no attempt on version 1");

    let operator = fed.path("operator.toml");
    std::fs::write(
        &operator,
        format!(
            "coordinator = \"https://{}\"\ntask_id = \"{}\"\nca = \"pki/ca.pem\"\n\
             cert = \"pki/client-012.pem\"\nkey = \"pki/client-012.key\"\n",
            fed.addr,
            common::TASK_ID
        ),
    )
    .unwrap();
    let cli = |config: &std::path::Path, args: &[&str]| {
        Command::new(bin("fedsec-coordinator"))
            .arg(args[0])
            .arg("--config")
            .arg(config)
            .args(&args[1..])
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    let status = text(&cli(&operator, &["status"]));
    assert!(status.contains("have seen a newer checkpoint (up to version 3"), "{status}");
    // Only an operator may re-publish.
    let site = fed.path("site-002-as-operator.toml");
    let as_site = std::fs::read_to_string(&operator).unwrap().replace("client-012", "client-002");
    std::fs::write(&site, as_site).unwrap();
    let refused = cli(&site, &["republish", "--reason", "not mine to do"]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("does not have permission"), "{}", text(&refused));
    assert!(text(&refused).contains("is not an operator"), "{}", text(&refused));

    // Every client trained on version 1's weights in round 2: they need new weights.
    let w1 = fedsec_wire::model::Model::from_safetensors(&fed.checkpoint(1)).unwrap();
    let shifted: Vec<f32> = w1.flatten().iter().map(|v| v + 0.125).collect();
    let new = w1.with_flat(&shifted).unwrap().to_safetensors().unwrap();
    std::fs::write(fed.path("new.safetensors"), &new).unwrap();
    let model = fed.path("new.safetensors");
    let out =
        cli(&operator, &["republish", "--model", model.to_str().unwrap(), "--reason", "restored"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("checkpoint version 1 re-published as version 4"),
        "{}",
        text(&out)
    );
    assert_eq!(fed.checkpoint(4), new);
    let entry = &fed.audit_entries("model_republished")[0]["detail"];
    assert_eq!(entry["by"], fed.client_id(12).as_str());
    assert_eq!((&entry["from_version"], &entry["to_version"]), (&1.into(), &4.into()));
    assert_eq!(entry["new_weights"], true);
    assert_eq!(entry["reason"], "restored");
    assert_eq!(entry["highest_reported"], 3);
    assert_eq!(entry["highest_signed"], 3, "the audit log remembers what the store lost");
    assert_eq!(entry["reports_never_published"], 0);
    let recorded = fed.audit_entries("checkpoint");
    let last = &recorded.last().unwrap()["detail"];
    assert_eq!(
        (&last["version"], &last["parent"], &last["round"]),
        (&4.into(), &1.into(), &0.into())
    );

    fed.coordinator.wait_for("checkpoint version 1 re-published as version 4", 1, LONG);
    fed.restart_coordinator_in_place();
    fed.wait_clients(LONG);
    let completed = fed.audit_entries("round_completed");
    assert_eq!(completed.len(), 5, "rounds 2 and 3 of the task ran again after the restore");
    for (c, from) in completed[3..].iter().zip([4u64, 5]) {
        assert_eq!(c["detail"]["checkpoint_version"], from + 1);
        let round = c["detail"]["round"].as_u64().unwrap();
        assert_eq!(round, from + 1, "round ids follow the versions");
        let dumps = fed.dumps(round, c["detail"]["attempt"].as_str().unwrap());
        let inputs: Vec<&Vec<u32>> = dumps.iter().map(|(_, x)| x).collect();
        fed.assert_exact_update(from, from + 1, &inputs);
    }
    fed.verify_audit_log().expect("the audit log verifies");
}

/// Encryption at rest end to end: a store under `[encryption]` holds no plaintext tensor name,
/// manifest field or client id; `checkpoint export` decrypts and verifies a checkpoint; a
/// coordinator with the wrong key refuses to start, naming the object; after a rotation old
/// objects still read, `store rewrap` (refused while the coordinator runs) moves every object
/// under the new key, and the new key alone then opens them.
#[test]
fn an_encrypted_store_holds_no_plaintext_and_rotates_its_key() {
    let mut fed = Federation::start(Options { rounds: 2, encryption: true, ..Options::default() });
    for i in 1..=10 {
        fed.spawn_client(i, &[]);
    }
    fed.wait_clients(LONG);
    assert_eq!(fed.audit_entries("checkpoint").len(), 2);
    let coordinator = common::bin("fedsec-coordinator");
    let config = fed.path("coordinator.toml");
    // No plaintext: the model's tensor names, the manifests' fields, the clients' ids.
    let model = std::fs::read(fed.path("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(model[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&model[8..8 + header_len]).unwrap();
    let mut needles: Vec<Vec<u8>> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .map(|k| k.as_bytes().to_vec())
        .collect();
    assert!(!needles.is_empty());
    needles.push(b"round_summary".to_vec());
    needles.push(fed.client_id(1).into_bytes());
    let mut files = 0;
    for path in walk(&fed.path("store")) {
        let bytes = std::fs::read(&path).unwrap();
        for n in &needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_slice()),
                "{} holds {:?}",
                path.display(),
                String::from_utf8_lossy(n)
            );
        }
        files += 1;
    }
    assert!(files >= 6, "{files} objects");
    // Export: decrypted and verified.
    let out = fed.path("exported.safetensors");
    let export = |out: &std::path::Path| {
        Command::new(&coordinator)
            .args(["checkpoint", "export", "--version", "2", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let done = export(&out);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let exported = std::fs::read(&out).unwrap();
    fedsec_wire::model::Model::from_safetensors(&exported).expect("a model");
    // Rewrap refuses while the coordinator runs.
    let rewrap = || {
        Command::new(&coordinator)
            .args(["store", "rewrap", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let busy = rewrap();
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("coordinator.lock"));
    fed.coordinator.kill();
    // Another key: the coordinator refuses to start, naming the object.
    std::fs::rename(fed.path("store.kek"), fed.path("old.kek")).unwrap();
    common::run_ok(
        Command::new(&coordinator).args(["store", "keygen", "--out"]).arg(fed.path("store.kek")),
    );
    let wrong =
        Command::new(&coordinator).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("manifest.json") && err.contains("key"), "{err}");
    // Rotation: the new key current, the old one previous; old objects read, rewrap moves them.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "key = \"file:store.kek\"",
            "key = \"file:store.kek\"\nprevious = [\"file:old.kek\"]",
        ),
    )
    .unwrap();
    assert!(
        export(&fed.path("old-key.safetensors")).status.success(),
        "the old objects still read"
    );
    // Export never writes over a file.
    assert!(!export(&out).status.success());
    let moved = rewrap();
    assert!(moved.status.success(), "{}", String::from_utf8_lossy(&moved.stderr));
    assert!(
        String::from_utf8_lossy(&moved.stdout).contains(" re-wrapped"),
        "{}",
        String::from_utf8_lossy(&moved.stdout)
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("previous = [\"file:old.kek\"]", "")).unwrap();
    let again = fed.path("again.safetensors");
    let done = export(&again);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(std::fs::read(&again).unwrap(), exported);
    // The coordinator starts again under the new key alone and serves the same checkpoints.
    fed.restart_coordinator();
    assert_eq!(
        fed.metric(&format!("fedsec_checkpoint_version{{task=\"{}\"}}", common::TASK_ID)),
        Some(2.0)
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
