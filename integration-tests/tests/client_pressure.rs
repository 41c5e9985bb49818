//! The client under pressure, as real processes: a site whose `max_model_bytes` is below the
//! task's checkpoint refuses it before allocating, leaves the attempt and backs off (with
//! jitter, growing) instead of checking in and downloading the model again at once, while the
//! round completes without it; and a coordinator's `retry-after-ms` is honoured.

mod common;

use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Federation, Options, Proc, TASK_ID, bin, run_ok};
use fedsec_proto::v1;
use fedsec_proto::v1::federation_server::{Federation as FederationService, FederationServer};
use tonic::{Request, Response, Status, Streaming};

const LONG: Duration = Duration::from_secs(240);

#[test]
fn a_model_over_max_model_bytes_is_refused_and_the_client_backs_off() {
    // The softmax model of 4 features and 3 classes is a few hundred bytes as safetensors.
    let mut fed = Federation::start(Options {
        rounds: 1,
        phase_ms: Some(5_000),
        client_toml: vec![(10, "max_model_bytes = 100".into())],
        ..Options::default()
    });
    for i in 1..=10 {
        fed.spawn_client(i, &[]);
    }
    fed.wait_clients(LONG);
    let small = fed.client(10).output();
    assert!(small.contains("above this site's max_model_bytes = 100"), "{small}");
    // Each refusal is followed by a pause (1 s, 2 s, 4 s… up to 30 s, jittered): over a round
    // that lasts at least the 5 s advertise deadline the site is waited for, only a handful.
    let left = small.matches("left the attempt; checking in again after a pause").count();
    println!("client 10 left {left} attempts");
    assert!((1..=8).contains(&left), "{left} attempts left:\n{small}");
    assert!(small.contains("0 rounds completed"), "{small}");
    // The round completed without it.
    for i in 1..=9 {
        let out = fed.client(i).output();
        assert!(out.contains("1 rounds completed"), "client {i}:\n{out}");
    }
}

/// A coordinator that refuses the first check-in with `RESOURCE_EXHAUSTED` and a retry-after,
/// the second with a bare `UNAVAILABLE`, and ends the task at the third; it records when each
/// check-in came.
#[derive(Debug, Clone, Default)]
struct Busy {
    check_ins: Arc<Mutex<Vec<Instant>>>,
}

const RETRY_AFTER_MS: u64 = 1500;

type ModelStream =
    Pin<Box<dyn futures::Stream<Item = Result<v1::ModelChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FederationService for Busy {
    async fn check_in(
        &self,
        _req: Request<v1::CheckInRequest>,
    ) -> Result<Response<v1::CheckInResponse>, Status> {
        let mut seen = self.check_ins.lock().unwrap();
        seen.push(Instant::now());
        match seen.len() {
            1 => {
                let mut s = Status::resource_exhausted("check-ins are rate limited");
                let value = RETRY_AFTER_MS.to_string().parse().unwrap();
                s.metadata_mut().insert(fedsec_proto::RETRY_AFTER_MS_METADATA, value);
                Err(s)
            }
            2 => Err(Status::unavailable("busy")),
            _ => {
                let finished = v1::TaskFinished { final_checkpoint_version: 0 };
                let outcome = Some(v1::check_in_response::Outcome::Finished(finished));
                Ok(Response::new(v1::CheckInResponse { outcome }))
            }
        }
    }

    type DownloadModelStream = ModelStream;

    async fn download_model(
        &self,
        _req: Request<v1::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        Err(Status::unimplemented("DownloadModel"))
    }

    type DownloadFinalModelStream = ModelStream;

    async fn download_final_model(
        &self,
        _req: Request<v1::DownloadFinalModelRequest>,
    ) -> Result<Response<Self::DownloadFinalModelStream>, Status> {
        Err(Status::unimplemented("DownloadFinalModel"))
    }

    async fn advertise_keys(
        &self,
        _req: Request<v1::AdvertiseKeysRequest>,
    ) -> Result<Response<v1::AdvertiseKeysResponse>, Status> {
        Err(Status::unimplemented("AdvertiseKeys"))
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

#[test]
fn a_busy_coordinators_retry_after_is_honoured_and_other_refusals_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    run_ok(
        Command::new(bin("fedsec-coordinator"))
            .args(["pki", "init", "--clients", "1", "--out"])
            .arg(root.join("pki")),
    );
    // Plain TCP on loopback (`insecure`): the refusals are the coordinator's, not TLS's.
    let busy = Busy::default();
    let check_ins = busy.check_ins.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(FederationServer::new(busy))
            .serve_with_incoming(tokio_stream_of(listener))
            .await
    });
    let config = root.join("client.toml");
    std::fs::write(
        &config,
        format!(
            r#"
coordinator = "http://{addr}"
insecure = true
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
    let mut client = Proc::spawn(
        "client",
        Command::new(bin("fedsec-client"))
            .args(["join", "--config"])
            .arg(&config)
            .args(["--test-constant-update", "0"])
            .env("RUST_LOG", "info"),
    );
    assert!(client.wait_exit(Duration::from_secs(60)), "{}", client.output());
    let seen = check_ins.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{}", client.output());
    let (first, second) = (seen[1] - seen[0], seen[2] - seen[1]);
    println!("waits: {first:?} after the retry-after, {second:?} after UNAVAILABLE");
    // At least the retry-after, plus at most half the first backoff step (100 ms) of jitter.
    assert!(first >= Duration::from_millis(RETRY_AFTER_MS), "{first:?}");
    assert!(first < Duration::from_millis(RETRY_AFTER_MS + 5_000), "{first:?}");
    // The next step (400 ms) drawn in [200, 400] ms: a pause, not an immediate retry.
    assert!(second >= Duration::from_millis(200), "{second:?}");
    assert!(second < Duration::from_secs(5), "{second:?}");
}

/// The accepted connections of `listener`, as tonic's server takes them.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    })
}
