//! A malicious coordinator cannot make a client train on a checkpoint whose signature, hash,
//! version or identity does not verify: the real `fedsec-client` process, talking over mutual
//! TLS to a fake coordinator served by the test itself, leaves the attempt before it
//! advertises a single key, and keeps its rollback guard as it was.
//!
//! Each scenario changes one thing of an otherwise valid round; the control scenario, where
//! nothing is changed, shows the fake is good enough for the client to go on to `AdvertiseKeys`,
//! so the refusals come from the tampering alone.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{CLASSES, CLIP, FEATURES, MAX_EXAMPLES, Proc, TASK_ID, bin, pem_der, run_ok};
use ed25519_dalek::SigningKey;
use fedsec_client::state::{ClientState, StateFile};
use fedsec_client::trainers::SoftmaxRegression;
use fedsec_crypto::quant::QuantParams;
use fedsec_crypto::{
    AdversaryClass, AttemptNonce, CheckpointHash, ClientId, GraphKind, PROTOCOL_VERSION, RoundId,
    RoundPlan, TaskId,
};
use fedsec_proto::v1;
use fedsec_proto::v1::federation_server::{Federation, FederationServer};
use fedsec_wire::checkpoint::Manifest;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Random peers selected with the client: ten clients in all, above the client's floor of 8.
const PEERS: usize = 9;

/// The version of the checkpoint the fake coordinator serves (unless a scenario says otherwise).
const VERSION: u64 = 7;

/// How long a client may take to check in, refuse (or advertise) and exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

fn task_id() -> TaskId {
    TaskId(hex::decode(TASK_ID).expect("TASK_ID is hex").try_into().expect("TASK_ID is 16 bytes"))
}

/// What the fake coordinator saw the client do.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// `last_seen_checkpoint_version` of each check-in, in order.
    check_ins: Vec<u64>,
    /// How many times the checkpoint was downloaded.
    downloads: usize,
    /// How many times the final checkpoint was asked for, after the task ended.
    final_downloads: usize,
    /// The round context of each `AdvertiseKeys` call.
    advertised: Vec<Vec<u8>>,
}

/// A coordinator that offers one round with a checkpoint of the test's choosing, records what
/// the client does, and ends the task at the client's next check-in.
#[derive(Debug, Clone)]
struct FakeCoordinator {
    /// The version `TaskFinished` names (0: none).
    final_version: u64,
    plan: v1::RoundPlan,
    manifest: v1::CheckpointManifest,
    bytes: Vec<u8>,
    seen: Arc<Mutex<Seen>>,
}

type ModelStream = Pin<Box<dyn Stream<Item = Result<v1::ModelChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Federation for FakeCoordinator {
    async fn check_in(
        &self,
        req: Request<v1::CheckInRequest>,
    ) -> Result<Response<v1::CheckInResponse>, Status> {
        let mut seen = self.seen.lock().unwrap();
        seen.check_ins.push(req.get_ref().last_seen_checkpoint_version);
        // The first check-in gets the round; the next one (after the client refused or left
        // the attempt) ends the task, so the client process exits.
        let outcome = if seen.check_ins.len() == 1 {
            v1::check_in_response::Outcome::Plan(self.plan.clone())
        } else {
            v1::check_in_response::Outcome::Finished(v1::TaskFinished {
                final_checkpoint_version: self.final_version,
            })
        };
        Ok(Response::new(v1::CheckInResponse { outcome: Some(outcome) }))
    }

    type DownloadModelStream = ModelStream;

    async fn download_model(
        &self,
        _req: Request<v1::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        self.seen.lock().unwrap().downloads += 1;
        // The manifest, then the bytes in two chunks (the client reassembles them).
        let (head, tail) = self.bytes.split_at(self.bytes.len() / 2);
        let chunks = vec![
            Ok(v1::ModelChunk {
                part: Some(v1::model_chunk::Part::Manifest(self.manifest.clone())),
            }),
            Ok(v1::ModelChunk { part: Some(v1::model_chunk::Part::Data(head.to_vec())) }),
            Ok(v1::ModelChunk { part: Some(v1::model_chunk::Part::Data(tail.to_vec())) }),
        ];
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    type DownloadFinalModelStream = ModelStream;

    /// The task's end offers the same checkpoint as the round: the client checks it the same
    /// way (a forged or rolled-back one is refused here too).
    async fn download_final_model(
        &self,
        _req: Request<v1::DownloadFinalModelRequest>,
    ) -> Result<Response<Self::DownloadFinalModelStream>, Status> {
        self.seen.lock().unwrap().final_downloads += 1;
        let chunks = vec![
            Ok(v1::ModelChunk {
                part: Some(v1::model_chunk::Part::Manifest(self.manifest.clone())),
            }),
            Ok(v1::ModelChunk { part: Some(v1::model_chunk::Part::Data(self.bytes.clone())) }),
        ];
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn advertise_keys(
        &self,
        req: Request<v1::AdvertiseKeysRequest>,
    ) -> Result<Response<v1::AdvertiseKeysResponse>, Status> {
        let context = req.get_ref().round.as_ref().map(|r| r.context.clone()).unwrap_or_default();
        self.seen.lock().unwrap().advertised.push(context);
        Err(Status::aborted("the test coordinator runs no further than the keys"))
    }

    async fn share_keys(
        &self,
        _req: Request<v1::ShareKeysRequest>,
    ) -> Result<Response<v1::ShareKeysResponse>, Status> {
        Err(Status::unimplemented("ShareKeys"))
    }

    async fn complaints(
        &self,
        _req: Request<v1::ComplaintsRequest>,
    ) -> Result<Response<v1::ComplaintsResponse>, Status> {
        Err(Status::unimplemented("Complaints"))
    }

    async fn upload_masked_input(
        &self,
        _req: Request<Streaming<v1::MaskedInputChunk>>,
    ) -> Result<Response<v1::UploadMaskedInputResponse>, Status> {
        Err(Status::unimplemented("UploadMaskedInput"))
    }

    async fn consistency_check(
        &self,
        _req: Request<v1::ConsistencyCheckRequest>,
    ) -> Result<Response<v1::ConsistencyCheckResponse>, Status> {
        Err(Status::unimplemented("ConsistencyCheck"))
    }

    async fn unmask(
        &self,
        _req: Request<v1::UnmaskRequest>,
    ) -> Result<Response<v1::RoundResult>, Status> {
        Err(Status::unimplemented("Unmask"))
    }

    async fn get_round_result(
        &self,
        _req: Request<v1::GetRoundResultRequest>,
    ) -> Result<Response<v1::RoundResult>, Status> {
        Err(Status::unimplemented("GetRoundResult"))
    }
}

/// A plan a real coordinator could have made: the client and random peers, complete graph,
/// the parameters the client recomputes, training on `checkpoint`.
fn round_plan(me: ClientId, dim: u32, checkpoint: CheckpointHash) -> RoundPlan {
    let mut selected: Vec<ClientId> = (0..PEERS).map(|_| ClientId(rand::random())).collect();
    selected.push(me);
    selected.sort();
    let n = selected.len();
    let (graph, dropout_ppm, corrupt_ppm, adversary) =
        (GraphKind::Complete, 200_000, 50_000, AdversaryClass::SemiMalicious);
    let params = fedsec_crypto::params::choose(graph, n, dropout_ppm, corrupt_ppm, adversary)
        .expect("ten clients at δ = 0.2, γ = 0.05 have graph parameters");
    RoundPlan {
        version: PROTOCOL_VERSION,
        task_id: task_id(),
        round_id: RoundId(VERSION + 1),
        attempt: AttemptNonce(rand::random()),
        selected,
        graph,
        degree: params.degree,
        threshold: params.threshold,
        dropout_ppm,
        corrupt_ppm,
        adversary,
        graph_seed: rand::random(),
        dim,
        quant: QuantParams::for_clients(n, CLIP, MAX_EXAMPLES)
            .expect("ten clients fit the bit budget"),
        checkpoint,
        cert_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_secs(),
    }
}

/// The wire form of a plan, as the coordinator sends it.
fn plan_to_wire(p: &RoundPlan, checkpoint_version: u64) -> v1::RoundPlan {
    fedsec_wire::Wire::to_wire(&fedsec_wire::Assignment {
        plan: p.clone().into(),
        checkpoint_version,
        upload_chunk_words: 4,
        phase_deadlines: [Duration::from_secs(10); 6],
    })
}

/// Who signs the manifest.
#[derive(Debug, Clone, Copy)]
enum Signer {
    /// The coordinator's key, which the client pins.
    Coordinator,
    /// A fresh key the client has never heard of.
    Stranger,
}

/// One way (or none) in which the fake coordinator cheats.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    signer: Signer,
    /// The manifest's version.
    version: u64,
    /// Flip one bit of the checkpoint's bytes after signing.
    tamper_bytes: bool,
    /// The plan names another checkpoint than the one served.
    plan_names_another: bool,
    /// The newest version already in the client's state file.
    seen_before: Option<u64>,
    /// The task's end names the served checkpoint as its final one (else no final model).
    final_model: bool,
    /// Seconds added to the plan's certificate instant T (now, by default).
    cert_time_offset: i64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            signer: Signer::Coordinator,
            version: VERSION,
            tamper_bytes: false,
            plan_names_another: false,
            seen_before: None,
            final_model: true,
            cert_time_offset: 0,
        }
    }
}

/// How a scenario ended.
#[derive(Debug)]
struct Outcome {
    /// What the fake coordinator saw.
    seen: Seen,
    /// The round context of the plan the fake sent.
    context: Vec<u8>,
    /// Whether the client process exited successfully.
    exited_ok: bool,
    /// Its stdout and stderr.
    output: String,
    /// Its state file after it exited.
    state: ClientState,
}

impl Outcome {
    /// The line the client logs when it leaves an attempt.
    fn left_the_attempt(&self) -> &str {
        self.output
            .lines()
            .find(|l| l.contains("left the attempt"))
            .unwrap_or_else(|| panic!("the client never left the attempt:\n{}", self.output))
    }

    fn last_seen(&self) -> Option<u64> {
        self.state.last_seen_version.get(TASK_ID).copied()
    }

    /// The client downloaded the checkpoint, refused it for `reason`, advertised no key, and
    /// exited cleanly when the task finished.
    fn assert_refused(&self, reason: &str) {
        assert!(self.exited_ok, "the client failed:\n{}", self.output);
        assert_eq!(self.seen.check_ins.len(), 2, "a plan, then the end of the task");
        assert_eq!(
            self.seen.downloads, 1,
            "the client downloaded the checkpoint:\n{}",
            self.output
        );
        assert!(
            self.seen.advertised.is_empty(),
            "the client advertised keys for a checkpoint it should refuse:\n{}",
            self.output
        );
        let left = self.left_the_attempt();
        assert!(left.contains(reason), "expected {reason:?} in {left:?}");
        assert!(
            self.output.contains("task finished: 0 rounds completed, 1 attempts left"),
            "{}",
            self.output
        );
    }
}

fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs one scenario: a development PKI, the fake coordinator on 127.0.0.1 over mutual TLS,
/// and a `fedsec-client join` process until it exits.
fn run_scenario(s: Scenario) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pki = root.join("pki");
    run_ok(
        Command::new(bin("fedsec-coordinator"))
            .args(["pki", "init", "--clients", "1", "--out"])
            .arg(&pki),
    );
    let me = fedsec_wire::x509::client_id_of(&pem_der(
        read_text(&pki.join("client-001.pem")).as_bytes(),
    ))
    .expect("the development PKI's client certificate names an Ed25519 key");
    let key = match s.signer {
        Signer::Coordinator => {
            fedsec_coordinator::pki::load_signing_key(&pki.join("coordinator-signing.key"))
                .expect("pki init writes the signing key")
        }
        Signer::Stranger => SigningKey::from_bytes(&rand::random()),
    };

    let model = SoftmaxRegression::initial_model(FEATURES, CLASSES);
    let mut bytes = model.to_safetensors().expect("a model serializes");
    let signed = Manifest {
        version: s.version,
        parent_version: s.version - 1,
        sha256: CheckpointHash::of(&bytes),
        size_bytes: bytes.len() as u64,
        task_id: task_id(),
        round_summary: format!("round {}: 10 of 10 clients", s.version),
    }
    .sign(&key);
    if s.tamper_bytes {
        // The last byte belongs to the last weight: the bytes still parse as a model of the
        // same size, only the hash tells them apart.
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
    }
    let named = if s.plan_names_another {
        let other = model.with_flat(&vec![0.5; model.len()]).expect("same layout");
        CheckpointHash::of(&other.to_safetensors().expect("a model serializes"))
    } else {
        signed.manifest.sha256
    };
    let mut plan = round_plan(me, model.len() as u32 + 1, named);
    plan.cert_time = plan.cert_time.saturating_add_signed(s.cert_time_offset);
    let context = plan.context().0.to_vec();

    if let Some(version) = s.seen_before {
        let state = ClientState {
            last_seen_version: BTreeMap::from([(TASK_ID.to_string(), version)]),
            ..ClientState::default()
        };
        StateFile::in_dir(&root.join("state")).unwrap().save(&state).unwrap();
    }

    let seen = Arc::new(Mutex::new(Seen::default()));
    let fake = FakeCoordinator {
        final_version: if s.final_model { s.version } else { 0 },
        plan: plan_to_wire(&plan, s.version),
        manifest: fedsec_wire::Wire::to_wire(&signed),
        bytes,
        seen: seen.clone(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    fedsec_coordinator::tls::install_crypto_provider();
    let tls = fedsec_coordinator::tls::server_config(
        &read_text(&pki.join("server.pem")),
        &read_text(&pki.join("server.key")),
        &read_text(&pki.join("ca.pem")),
    )
    .expect("the development PKI makes a valid server configuration");
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let incoming = fedsec_coordinator::tls::tls_incoming(listener, tls);
        tonic::transport::Server::builder()
            .add_service(FederationServer::new(fake))
            .serve_with_incoming(incoming)
            .await
    });

    let config = root.join("client.toml");
    std::fs::write(
        &config,
        format!(
            r#"
coordinator = "https://{addr}"
task_id = "{TASK_ID}"
ca = "pki/ca.pem"
cert = "pki/client-001.pem"
key = "pki/client-001.key"
coordinator_key = "pki/coordinator-signing.pub"
state_dir = "state"
"#
        ),
    )
    .unwrap();
    let data = root.join("site.csv");
    std::fs::write(&data, common::synthetic_csv(1, 40)).unwrap();
    let mut client = Proc::spawn(
        "client",
        Command::new(bin("fedsec-client"))
            .args(["join", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(&data)
            .args(["--classes", &CLASSES.to_string()])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1"),
    );
    let exited_ok = client.wait_exit(EXIT_TIMEOUT);
    let output = client.output();
    let state = StateFile::in_dir(&root.join("state")).unwrap().load().unwrap();
    let seen = seen.lock().unwrap().clone();
    Outcome { seen, context, exited_ok, output, state }
}

#[test]
fn a_checkpoint_signed_by_another_key_is_refused() {
    let out = run_scenario(Scenario { signer: Signer::Stranger, ..Scenario::default() });
    out.assert_refused(&format!(
        "the signature on the manifest of checkpoint version {VERSION} does not verify"
    ));
    assert_eq!(out.last_seen(), None, "a forged manifest does not move the rollback guard");
    // Offered again as the task's final checkpoint, it is refused again.
    assert_eq!(out.seen.final_downloads, 1, "{}", out.output);
    assert!(out.output.contains("the final checkpoint could not be fetched"), "{}", out.output);
}

#[test]
fn a_checkpoint_whose_bytes_do_not_match_the_signed_hash_is_refused() {
    let out = run_scenario(Scenario { tamper_bytes: true, ..Scenario::default() });
    out.assert_refused(&format!(
        "SHA-256 of checkpoint version {VERSION} does not match its manifest"
    ));
    assert_eq!(out.last_seen(), None, "tampered bytes do not move the rollback guard");
    assert_eq!(out.seen.final_downloads, 1, "{}", out.output);
    assert!(out.output.contains("the final checkpoint could not be fetched"), "{}", out.output);
}

#[test]
fn a_properly_signed_checkpoint_older_than_one_seen_is_refused() {
    let out = run_scenario(Scenario { version: 3, seen_before: Some(5), ..Scenario::default() });
    assert_eq!(
        out.seen.check_ins.first(),
        Some(&5),
        "the client tells the coordinator the newest version its state file holds"
    );
    out.assert_refused("checkpoint version 3 is older than version 5, already seen: no rollback");
    assert_eq!(out.last_seen(), Some(5), "the client still remembers version 5");
}

#[test]
fn a_valid_checkpoint_the_plan_does_not_name_is_refused() {
    // The task ends without a final model, so only the round could have recorded it.
    let out = run_scenario(Scenario {
        plan_names_another: true,
        final_model: false,
        ..Scenario::default()
    });
    out.assert_refused("the plan's checkpoint hash is not the checkpoint this client verified");
    assert_eq!(out.last_seen(), None, "a checkpoint outside the plan is not recorded as seen");
}

/// A plan whose certificate instant T is further from the site's clock than its allowed skew
/// (300 s by default) is refused before anything is downloaded: the client would judge its
/// peers' certificates at an instant it did not agree to.
#[test]
fn a_plan_dated_beyond_the_sites_clock_skew_is_refused_before_anything_is_downloaded() {
    for offset in [-3_600, 3_600] {
        let out = run_scenario(Scenario { cert_time_offset: offset, ..Scenario::default() });
        assert!(
            out.exited_ok,
            "the client failed:
{}",
            out.output
        );
        assert_eq!(out.seen.downloads, 0, "{}", out.output);
        assert!(out.seen.advertised.is_empty(), "{}", out.output);
        let left = out.left_the_attempt();
        assert!(left.contains("at most 300 s is allowed"), "{left}");
    }
}

#[test]
fn a_valid_checkpoint_is_accepted_and_the_client_advertises_its_keys() {
    let out = run_scenario(Scenario::default());
    assert!(out.exited_ok, "the client failed:\n{}", out.output);
    assert_eq!(out.seen.downloads, 1, "{}", out.output);
    assert_eq!(
        out.seen.advertised,
        vec![out.context.clone()],
        "the client advertised its keys once, for the plan it was sent:\n{}",
        out.output
    );
    assert_eq!(out.last_seen(), Some(VERSION), "the verified version is recorded as seen");
    // It left only because the fake coordinator aborted the round after the keys.
    let left = out.left_the_attempt();
    assert!(left.contains("the round was aborted"), "{left}");
}
