//! What the coordinator refuses, and how: clients without a federation certificate or on the
//! deny-list are stopped at the TLS or gRPC layer; health checking and reflection answer; and
//! malformed, out-of-phase and repeated calls get a precise status without disturbing the round
//! in progress, whose sum stays exact.
//!
//! The test process is a gRPC client over mutual TLS itself; in the round it is one of the ten
//! participants and drives the five phases by hand with the sans-IO `SecAggClient`.

mod common;

use std::future::Future;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Federation, Options, TASK_ID, bin, run_ok};
use fedsec_client::tls::client_tls;
use fedsec_crypto::secagg::client::{ClientPolicy, ContributionLedger, SecAggClient};
use fedsec_crypto::secagg::driver::stand_in_trained_on;
use fedsec_crypto::secagg::messages::{
    ConsistencyRequest, Exclusions, KeysForward, SharesForward, UnmaskingRequest,
};
use fedsec_proto::v1;
use fedsec_proto::v1::admin_client::AdminClient;
use fedsec_proto::v1::federation_client::FederationClient;
use fedsec_wire::checkpoint::SignedManifest;
use fedsec_wire::model::Model;
use fedsec_wire::x509::{X509Credentials, encode_chain};
use fedsec_wire::{Assignment, PhaseMessage, Wire};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

/// The longest any single wait of these tests may take on a loaded machine.
const LONG: Duration = Duration::from_secs(180);

fn runtime() -> tokio::runtime::Runtime {
    fedsec_client::tls::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn text(path: impl AsRef<std::path::Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

/// The TLS configuration of a site holding certificate `i` of the federation's PKI.
fn site_tls(fed: &Federation, i: usize) -> ClientTlsConfig {
    let (cert, key) = fed.cert(i);
    client_tls(&text(fed.pki().join("ca.pem")), &text(cert), &text(key), "localhost").unwrap()
}

/// A channel to the coordinator that connects on its first call.
fn channel(fed: &Federation, tls: ClientTlsConfig) -> Channel {
    Endpoint::from_shared(format!("https://{}", fed.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(20))
        .tls_config(tls)
        .unwrap()
        .connect_lazy()
}

fn federation(ch: &Channel) -> FederationClient<Channel> {
    FederationClient::new(ch.clone())
        .max_decoding_message_size(fedsec_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(fedsec_proto::MAX_MESSAGE_BYTES)
}

/// A status with the chain of errors under it (a TLS alert hides under "transport error").
fn describe(s: &Status) -> String {
    let mut out = format!("{:?}: {}", s.code(), s.message());
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        out.push_str(&format!(": {e}"));
        source = e.source();
    }
    out
}

/// A call that failed in the transport (here: a refused TLS handshake), not with an answer
/// of the service.
fn transport_failure(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
        && describe(s).contains("transport error")
}

/// Asserts that a call failed with `code` and a message containing `needle`.
#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, needle: &str) -> Status {
    let s = r.expect_err("the call must be refused");
    println!("refused as expected: {}", describe(&s));
    assert_eq!(s.code(), code, "{}", describe(&s));
    assert!(s.message().contains(needle), "{:?} does not mention {needle:?}", s.message());
    s
}

/// A request for the result of a round nobody ran: it passes authentication and then fails
/// with NOT_FOUND, so it tells an accepted client from a refused one without touching rounds.
fn unknown_round() -> v1::GetRoundResultRequest {
    v1::GetRoundResultRequest {
        round: Some(v1::RoundRef {
            task_id: hex::decode(TASK_ID).unwrap(),
            round_id: 99,
            attempt: vec![7; 16],
            context: vec![7; 32],
        }),
    }
}

#[test]
fn clients_outside_the_federation_or_on_the_deny_list_are_refused() {
    // Certificate 11 is denied from the start; certificate 12 is the operator's.
    let fed = Federation::start(Options {
        rounds: 1,
        extra_certs: 2,
        deny: vec![11],
        admins: vec![12],
        ..Options::default()
    });
    // A complete PKI of another federation: its CA is not the coordinator's.
    let other = fed.path("other-pki");
    run_ok(
        Command::new(bin("fedsec-coordinator"))
            .args(["pki", "init", "--clients", "1", "--out"])
            .arg(&other),
    );
    let rt = runtime();
    rt.block_on(async {
        // A certificate from another CA: the coordinator ends the handshake, so the first call
        // fails in the transport (the status depends on whether the alert or the closed
        // connection reaches the client first); the coordinator logs why.
        let stranger = client_tls(
            &text(fed.pki().join("ca.pem")),
            &text(other.join("client-001.pem")),
            &text(other.join("client-001.key")),
            "localhost",
        )
        .unwrap();
        let s = federation(&channel(&fed, stranger))
            .get_round_result(unknown_round())
            .await
            .expect_err("a certificate of another CA is refused");
        println!("another CA: {}", describe(&s));
        assert!(transport_failure(&s), "{}", describe(&s));
        fed.coordinator.wait_for("invalid peer certificate", 1, LONG);

        // No certificate at all: TLS 1.3 reports the missing certificate on the first call, and
        // a later call fails too.
        let anonymous = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(text(fed.pki().join("ca.pem"))))
            .domain_name("localhost");
        let mut anonymous = federation(&channel(&fed, anonymous));
        for _ in 0..2 {
            let s = anonymous
                .get_round_result(unknown_round())
                .await
                .expect_err("a client without a certificate is refused");
            println!("no certificate: {}", describe(&s));
            assert!(transport_failure(&s), "{}", describe(&s));
        }
        fed.coordinator.wait_for("peer sent no certificates", 1, LONG);

        // A client on the deny-list: PERMISSION_DENIED, naming its id.
        let denied = channel(&fed, site_tls(&fed, 11));
        refused(
            federation(&denied).get_round_result(unknown_round()).await,
            Code::PermissionDenied,
            &fed.client_id(11),
        );
        refused(
            federation(&denied)
                .check_in(v1::CheckInRequest {
                    task_id: hex::decode(TASK_ID).unwrap(),
                    last_seen_checkpoint_version: 0,
                    ..Default::default()
                })
                .await,
            Code::PermissionDenied,
            "deny-list",
        );

        // Client 1 is accepted (its call gets as far as looking up the round)...
        let one = channel(&fed, site_tls(&fed, 1));
        refused(
            federation(&one).get_round_result(unknown_round()).await,
            Code::NotFound,
            "no round",
        );
        // ...a site that is not an operator may not reload the deny-list...
        refused(
            AdminClient::new(channel(&fed, site_tls(&fed, 2)))
                .reload_deny_list(v1::ReloadDenyListRequest {})
                .await,
            Code::PermissionDenied,
            "is not an operator",
        );
        // ...the operator adds client 1 to the list and reloads it...
        let deny = fed.path("deny.txt");
        std::fs::write(&deny, text(&deny) + &fed.client_id(1) + "  # revoked by the test\n")
            .unwrap();
        let reloaded = AdminClient::new(channel(&fed, site_tls(&fed, 12)))
            .reload_deny_list(v1::ReloadDenyListRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reloaded.denied, 2, "clients 11 and 1 are denied now");
        // ...and client 1 is refused from its next call on: the reload closed the connection it
        // had (a call racing the close fails in the transport), and on a new one it is denied.
        let mut next = federation(&one).get_round_result(unknown_round()).await;
        if let Err(s) = &next
            && transport_failure(s)
        {
            next = federation(&one).get_round_result(unknown_round()).await;
        }
        refused(next, Code::PermissionDenied, &fed.client_id(1));
        // Client 2, not on the list, is still served.
        refused(
            federation(&channel(&fed, site_tls(&fed, 2))).get_round_result(unknown_round()).await,
            Code::NotFound,
            "no round",
        );
    });
    // Only those two clients' handshakes failed (the denied clients' succeeded), and the
    // reload is audited.
    let log = fed.coordinator.output();
    for line in log.lines().filter(|l| l.contains("TLS handshake failed")) {
        assert!(
            line.contains("invalid peer certificate") || line.contains("peer sent no certificates"),
            "an unexpected handshake failure: {line}"
        );
    }
    let reloads = fed.audit_entries("deny_list_reloaded");
    assert_eq!(reloads.len(), 1, "one reload is audited");
    assert_eq!(reloads[0]["detail"]["operator"], fed.client_id(12));
}

#[test]
fn health_checking_and_reflection_answer() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let fed = Federation::start(Options { rounds: 1, ..Options::default() });
    let rt = runtime();
    rt.block_on(async {
        let ch = channel(&fed, site_tls(&fed, 1));
        let mut health = HealthClient::new(ch.clone());
        for service in ["fedsec.v1.Federation", "fedsec.v1.Admin"] {
            let r = health
                .check(HealthCheckRequest { service: service.into() })
                .await
                .unwrap_or_else(|s| panic!("health of {service}: {}", describe(&s)))
                .into_inner();
            assert_eq!(r.status(), ServingStatus::Serving, "{service}");
        }
        refused(
            health.check(HealthCheckRequest { service: "fedsec.v1.Nothing".into() }).await,
            Code::NotFound,
            "",
        );

        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(ch)
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer: ServerReflectionResponse = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("not a list of services: {answer:?}");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        println!("reflection lists {names:?}");
        for want in ["fedsec.v1.Federation", "fedsec.v1.Admin", "grpc.health.v1.Health"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
    });
}

/// The audit log's entries of one kind, once there is at least one (the coordinator writes
/// them just after it answers).
fn wait_audit(fed: &Federation, kind: &str) -> Vec<serde_json::Value> {
    let end = Instant::now() + LONG;
    loop {
        let entries = fed.audit_entries(kind);
        if !entries.is_empty() {
            return entries;
        }
        assert!(Instant::now() < end, "no {kind} entry in the audit log");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Awaits a spawned call, failing the test if it takes longer than [`LONG`].
async fn join<T>(call: tokio::task::JoinHandle<Result<T, Status>>, what: &str) -> T {
    match tokio::time::timeout(LONG, call).await {
        Ok(Ok(Ok(v))) => v,
        Ok(Ok(Err(s))) => panic!("{what}: {}", describe(&s)),
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what} did not return within {LONG:?}"),
    }
}

/// Runs a long-poll call on a clone of `fed` in its own task.
fn spawn<T, F, Fut>(
    fed: &FederationClient<Channel>,
    call: F,
) -> tokio::task::JoinHandle<Result<T, Status>>
where
    T: Send + 'static,
    F: FnOnce(FederationClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>> + Send + 'static,
{
    let call = call(fed.clone());
    tokio::spawn(async move { call.await.map(tonic::Response::into_inner) })
}

/// Uploads `chunks` as one stream.
async fn upload(
    mut fed: FederationClient<Channel>,
    chunks: Vec<v1::MaskedInputChunk>,
) -> Result<tonic::Response<v1::UploadMaskedInputResponse>, Status> {
    fed.upload_masked_input(futures::stream::iter(chunks)).await
}

/// Checks in until selected; returns the plan.
async fn check_in(mut fed: FederationClient<Channel>) -> Result<v1::RoundPlan, Status> {
    loop {
        let answer = fed
            .check_in(v1::CheckInRequest {
                task_id: hex::decode(TASK_ID).unwrap(),
                last_seen_checkpoint_version: 0,
                ..Default::default()
            })
            .await?
            .into_inner();
        match answer.outcome {
            Some(v1::check_in_response::Outcome::Plan(p)) => return Ok(p),
            Some(v1::check_in_response::Outcome::Retry(r)) => {
                tokio::time::sleep(Duration::from_millis(u64::from(r.after_ms).max(50))).await;
            }
            other => panic!("the task ended before the test's client was selected: {other:?}"),
        }
    }
}

/// Downloads the plan's checkpoint and verifies it as a client does: signature, hash,
/// version, and that it is the checkpoint the plan names.
async fn download(fed: &mut FederationClient<Channel>, a: &Assignment, coordinator: &Federation) {
    let mut stream = fed
        .download_model(v1::DownloadModelRequest { round: Some(a.key().to_wire()) })
        .await
        .unwrap()
        .into_inner();
    let mut manifest = None;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        match chunk.part {
            Some(v1::model_chunk::Part::Manifest(m)) => {
                manifest = Some(SignedManifest::from_wire(&m).unwrap())
            }
            Some(v1::model_chunk::Part::Data(d)) => bytes.extend_from_slice(&d),
            None => panic!("an empty model chunk"),
        }
    }
    let manifest = manifest.expect("the stream starts with the manifest");
    let key = fedsec_client::client::load_coordinator_key(
        &coordinator.pki().join("coordinator-signing.pub"),
    )
    .unwrap();
    let model: Model = manifest.verify_checkpoint(&key, &bytes, None).unwrap();
    assert_eq!(manifest.manifest.sha256, a.plan.checkpoint);
    assert_eq!(manifest.manifest.version, a.checkpoint_version);
    assert_eq!(model.flatten().len() + 1, a.plan.dim as usize);
}

#[test]
fn malformed_and_out_of_phase_calls_are_refused_and_the_round_still_sums_exactly() {
    // Ten are selected: nine client processes and this test (certificate 10). Selection waits
    // for all ten, and the masked-input phase closes as soon as all ten uploaded.
    let mut fed = Federation::start(Options {
        clients: 10,
        rounds: 1,
        masked_input_ms: 60_000,
        selection_ms: 60_000,
        ..Options::default()
    });
    let rt = runtime();
    let _enter = rt.enter();
    let mut me = federation(&channel(&fed, site_tls(&fed, 10)));
    let selected = rt.spawn(check_in(me.clone()));
    for i in 1..=9 {
        fed.spawn_client(i, &[]);
    }
    let identity =
        Arc::new(fedsec_client::pki::load_identity_key(&fed.cert(10).1).expect("client key"));
    let my_id = identity.id();
    assert_eq!(my_id.to_hex(), fed.client_id(10));

    let x: Vec<u32> = rt.block_on(async {
        let p = match tokio::time::timeout(LONG, selected).await {
            Ok(Ok(Ok(p))) => p,
            other => panic!("the test's client was not selected: {other:?}"),
        };
        let a = Assignment::from_wire(&p).unwrap();
        assert_eq!(a.plan.selected.len(), 10, "all ten are selected");
        assert_eq!((a.plan.dim, a.upload_chunk_words), (16, 4), "the harness's model and chunks");
        download(&mut me, &a, &fed).await;
        let ca = vec![common::pem_der(text(fed.pki().join("ca.pem")).as_bytes())];
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let verifier = Arc::new(X509Credentials::new(&ca, now).unwrap());
        let chain = vec![common::pem_der(text(fed.cert(10).0).as_bytes())];
        let mut ledger = ContributionLedger::default();
        let new_client = || {
            SecAggClient::new(
                identity.clone(),
                verifier.clone(),
                &ClientPolicy::default(),
                a.plan.clone(),
                &stand_in_trained_on(&a.plan, a.checkpoint_version),
                &ContributionLedger::default(),
            )
            .unwrap()
            .with_credential(encode_chain(&chain))
        };
        let mut secagg = new_client();
        let key = a.key();
        let rref = key.to_wire();
        let with_ref = |edit: &dyn Fn(&mut v1::RoundRef)| {
            let mut r = rref.clone();
            edit(&mut r);
            r
        };

        // Phase 0, before this client advertised: references that contradict themselves or
        // name no attempt, and a message for a later phase.
        let advert = secagg.advertise().to_wire(&key);
        let mut bad = advert.clone();
        bad.round = Some(with_ref(&|r| r.round_id += 1));
        refused(me.advertise_keys(bad).await, Code::InvalidArgument, "do not match");
        let mut bad = advert.clone();
        bad.round = Some(with_ref(&|r| r.attempt[0] ^= 1));
        refused(me.advertise_keys(bad).await, Code::InvalidArgument, "do not match");
        let mut bad = advert.clone();
        bad.round = Some(with_ref(&|r| r.context = rand::random::<[u8; 32]>().to_vec()));
        refused(me.advertise_keys(bad).await, Code::FailedPrecondition, "no running attempt");
        let mut bad = advert.clone();
        bad.round = Some(with_ref(&|r| r.context.truncate(31)));
        refused(me.advertise_keys(bad).await, Code::InvalidArgument, "round.context");
        let mut bad = advert.clone();
        bad.enc_pk.push(0);
        refused(me.advertise_keys(bad).await, Code::InvalidArgument, "enc_pk");
        let early =
            v1::ConsistencyCheckRequest { round: Some(rref.clone()), signature: vec![0; 64] };
        refused(me.consistency_check(early).await, Code::FailedPrecondition, "has not opened");

        // Phase 0: the real advertisement; the phase closes once all ten advertised.
        let keys = {
            let req = advert.clone();
            join(spawn(&me, |mut c| async move { c.advertise_keys(req).await }), "AdvertiseKeys")
        }
        .await;
        let share_keys =
            secagg.handle_keys(&KeysForward::from_wire(&keys, my_id).unwrap()).unwrap();

        // Phase 1.
        let shares_req = share_keys.to_wire(&key);
        let shares = {
            let req = shares_req.clone();
            join(spawn(&me, |mut c| async move { c.share_keys(req).await }), "ShareKeys")
        }
        .await;

        // Phase 1½ is open now and waits for this client's complaints: time for the refusals.
        // A different advertisement for the answered phase 0 (fresh keys) is refused; the
        // identical one is a retry and gets the identical answer.
        let other_advert = new_client().advertise().to_wire(&key);
        refused(me.advertise_keys(other_advert).await, Code::AlreadyExists, "AdvertiseKeys");
        assert_eq!(me.advertise_keys(advert.clone()).await.unwrap().into_inner(), keys);
        assert_eq!(me.share_keys(shares_req.clone()).await.unwrap().into_inner(), shares);
        refused(
            me.share_keys(v1::ShareKeysRequest {
                round: Some(rref.clone()),
                shares: vec![],
                entries: vec![],
                root_signature: vec![0; 64],
            })
            .await,
            Code::AlreadyExists,
            "ShareKeys",
        );

        // Phase 1½: this client's complaints (none: every dealer is honest). A complaints
        // message signed by no one is refused before the phase records anything.
        let forwarded = SharesForward::from_wire(&shares, my_id).unwrap();
        let complaints_req = secagg.handle_shares(&forwarded).unwrap().to_wire(&key);
        let mut unsigned = complaints_req.clone();
        unsigned.signature = vec![0; 64];
        refused(me.complaints(unsigned.clone()).await, Code::InvalidArgument, "signature");
        let exclusions = {
            let req = complaints_req.clone();
            join(spawn(&me, |mut c| async move { c.complaints(req).await }), "Complaints")
        }
        .await;
        assert_eq!(me.complaints(complaints_req.clone()).await.unwrap().into_inner(), exclusions);
        refused(me.complaints(unsigned).await, Code::AlreadyExists, "Complaints");

        // This client's quantized input: a zero update from ten examples.
        let update = vec![0.0f32; a.plan.dim as usize - 1];
        let x = a.plan.quant.quantize(&update, 10, &mut rand::rng()).unwrap();
        let excluded = Exclusions::from_wire(&exclusions, my_id).unwrap();
        assert_eq!(excluded.excluded.indices(a.plan.n()).unwrap(), Vec::<usize>::new());
        let y = secagg.handle_exclusions(&excluded, &x, &mut ledger).unwrap();
        let chunks = fedsec_wire::chunks(&key, &y, a.upload_chunk_words as usize);
        assert_eq!(chunks.len(), 4, "16 words in chunks of 4");

        // Chunks that do not fit the plan's chunking.
        let mut short = chunks[0].clone();
        short.data.truncate(12);
        refused(upload(me.clone(), vec![short]).await, Code::InvalidArgument, "must hold 4");
        let mut past = chunks[3].clone();
        past.offset = 16;
        refused(upload(me.clone(), vec![past]).await, Code::InvalidArgument, "offset 16");
        let mut crooked = chunks[1].clone();
        crooked.offset = 2;
        refused(upload(me.clone(), vec![crooked]).await, Code::InvalidArgument, "multiples of 4");
        let mut ragged = chunks[0].clone();
        ragged.data.pop();
        refused(upload(me.clone(), vec![ragged]).await, Code::InvalidArgument, "whole number");
        refused(upload(me.clone(), vec![]).await, Code::InvalidArgument, "no chunk");
        let mut stray = chunks[0].clone();
        stray.round = Some(with_ref(&|r| r.context = rand::random::<[u8; 32]>().to_vec()));
        refused(upload(me.clone(), vec![stray]).await, Code::FailedPrecondition, "no running");

        // A truncated upload: the first chunk is kept, but the call fails...
        refused(
            upload(me.clone(), chunks[..1].to_vec()).await,
            Code::FailedPrecondition,
            "ended before the whole masked input arrived",
        );
        // ...other bytes for that chunk are refused...
        let mut changed = chunks[0].clone();
        changed.data[0] ^= 1;
        refused(upload(me.clone(), vec![changed]).await, Code::AlreadyExists, "MaskedInput");
        // ...and the whole upload (the first chunk again, then the rest) is accepted.
        let survivors = {
            let req = chunks.clone();
            join(spawn(&me, |c| upload(c, req)), "UploadMaskedInput")
        }
        .await;

        // Phases 3 and 4.
        let signature = secagg
            .handle_consistency(&ConsistencyRequest::from_wire(&survivors, my_id).unwrap())
            .unwrap();
        let consistency = signature.to_wire(&key);
        let unmask_req = {
            let req = consistency.clone();
            join(
                spawn(&me, |mut c| async move { c.consistency_check(req).await }),
                "ConsistencyCheck",
            )
        }
        .await;
        let reveal = secagg
            .handle_unmasking(&UnmaskingRequest::from_wire(&unmask_req, my_id).unwrap())
            .unwrap();
        let unmask = reveal.to_wire(&key);
        let result = {
            let req = unmask.clone();
            join(spawn(&me, |mut c| async move { c.unmask(req).await }), "Unmask")
        }
        .await;
        assert!(result.completed, "the round completed: {result:?}");
        assert_eq!((result.participants, result.new_checkpoint_version), (10, 1));

        // The round is over: its phases are closed, even to identical messages.
        refused(me.consistency_check(consistency).await, Code::FailedPrecondition, "has closed");
        refused(me.share_keys(shares_req).await, Code::FailedPrecondition, "has closed");
        refused(me.advertise_keys(advert).await, Code::FailedPrecondition, "has closed");
        refused(upload(me.clone(), chunks).await, Code::FailedPrecondition, "has closed");
        // Its result stays available.
        let again = me
            .get_round_result(v1::GetRoundResultRequest { round: Some(rref) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, result);
        x
    });

    // The round summed exactly the ten inputs: the nine processes' and this test's.
    fed.wait_clients(LONG);
    let completed = wait_audit(&fed, "round_completed");
    assert_eq!(completed.len(), 1, "one round completed");
    assert_eq!(completed[0]["detail"]["round"], 1);
    assert_eq!(completed[0]["detail"]["participants"], 10);
    let attempt = completed[0]["detail"]["attempt"].as_str().unwrap();
    let dumps = fed.dumps(1, attempt);
    assert_eq!(dumps.len(), 9, "each client process dumped its input");
    assert!(dumps.iter().all(|d| d.0 != my_id.to_hex()));
    let mut inputs: Vec<&Vec<u32>> = dumps.iter().map(|d| &d.1).collect();
    inputs.push(&x);
    fed.assert_exact_round(1, &inputs);
}
