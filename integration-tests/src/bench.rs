//! The coordinator's overhead over the secure-aggregation core, measured in one process.
//!
//! [`run`] measures three things for the same n, d, graph and δ, one after the other:
//!
//! 1. **The round**: a real coordinator (`prepare` + `serve`, mutual TLS on 127.0.0.1) and n
//!    real [`fedsec_client::Client`]s on one tokio runtime run one round. The clients do all
//!    their protocol work (checkpoint verification, keys, shares, quantization, masking,
//!    signatures); only the training is trivial (a fixed pseudo-random update). The round's
//!    wall time (`round_wall_s`) runs from the first check-in to the moment the last client
//!    has the result. `round_wall_from_selection_s` estimates it from the selection, from
//!    below: the larger of the engine's summed phase times and what an operator polling the
//!    Admin service saw. Per-phase times come from the round's result in the Admin status.
//! 2. **The core in memory**: [`fedsec_crypto::secagg::driver::run_round`], all clients and the
//!    server in one thread, no transport. Like the round, it includes the clients' work.
//! 3. **The bytes over loopback TLS**: n connections (TLS 1.3, ring, mutual authentication with
//!    the same certificates) that each download the checkpoint's bytes and upload 4d bytes to a
//!    sink, all at once, handshakes excluded.
//!
//! The limit is `1.5 × (core + transfer)`; `ratio = round_wall_s / limit_s`.
//!
//! With [`BenchOptions::probe_health`], a probe on a thread of its own calls the gRPC health
//! check every 10 ms during the round and the report gains `health_probe`: the calls' latency
//! percentiles, over the round and over its last phase (see [`health_probe`]). The clients do
//! their protocol work on their runtime's threads, so a coordinator on the same runtime
//! answers late whenever they compute; [`BenchOptions::coordinator_own_runtime`] gives the
//! coordinator a runtime of its own, as a process of its own would have.

mod health_probe;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedsec_client::config::PolicyConfig;
use fedsec_client::{Client, ClientConfig, Evaluation, FitResult, RunSummary, TrainError, Trainer};
use fedsec_coordinator::config::CoordinatorConfig;
use fedsec_crypto::secagg::client::ClientPolicy;
use fedsec_crypto::secagg::driver::{make_plan, run_round};
use fedsec_crypto::sign::{IdentityKey, RawKeyCredentials};
use fedsec_crypto::{AdversaryClass, CheckpointHash, ClientId, GraphKind};
use fedsec_wire::model::{Model, Tensor};
use rand::{Rng, RngExt, SeedableRng};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The task every benchmark round runs.
const TASK_ID: &str = "be0c4a11be0c4a11be0c4a11be0c4a11";
/// Assumed corrupt fraction γ of the plans (the client policy's default floor).
const CORRUPT: f64 = 0.05;
/// The limit's allowance over the core and the transfer.
const OVERHEAD_ALLOWED: f64 = 1.5;
/// How often the operator's client asks whether the selection has happened.
const SELECTION_POLL: Duration = Duration::from_millis(2);

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// n: clients selected for the round.
    pub clients: usize,
    /// d: the vector length (the model has d − 1 parameters; the last word is the weight).
    pub dim: usize,
    /// The neighbour graph.
    pub graph: GraphKind,
    /// Assumed dropout δ (nobody drops out: it only sets k and t).
    pub dropout: f64,
    /// Seed of the clients' updates and the core's inputs.
    pub seed: u64,
    /// Probe the gRPC health check during the round and report its latency.
    pub probe_health: bool,
    /// Run the coordinator on a tokio runtime of its own rather than on the clients'.
    pub coordinator_own_runtime: bool,
}

impl BenchOptions {
    /// The target's configuration: n = 100, d = 100,000, Harary graph, δ = 0.1.
    pub fn full() -> Self {
        BenchOptions {
            clients: 100,
            dim: 100_000,
            graph: GraphKind::Harary,
            dropout: 0.1,
            seed: 1,
            probe_health: false,
            coordinator_own_runtime: false,
        }
    }

    /// A smoke-test size for CI: n = 12, d = 1000.
    pub fn quick() -> Self {
        BenchOptions { clients: 12, dim: 1000, ..Self::full() }
    }
}

fn graph_name(g: GraphKind) -> &'static str {
    match g {
        GraphKind::Complete => "complete",
        GraphKind::Harary => "harary",
    }
}

fn err(what: impl std::fmt::Display) -> String {
    what.to_string()
}

/// A trainer that returns the same pseudo-random update every time, at once.
#[derive(Debug)]
struct FixedUpdate {
    update: Vec<f32>,
}

impl Trainer for FixedUpdate {
    fn fit(&mut self, global: &Model) -> Result<FitResult, TrainError> {
        if global.len() != self.update.len() {
            return Err(TrainError::InvalidOption {
                option: "update",
                rule: "the fixed update has the global model's length",
            });
        }
        Ok(FitResult { update: self.update.clone(), examples: 1000, loss: 0.0 })
    }

    fn evaluate(&mut self, _global: &Model) -> Result<Option<Evaluation>, TrainError> {
        Ok(None)
    }
}

/// The files of one benchmark: PKI, model, coordinator configuration.
struct Setup {
    dir: tempfile::TempDir,
    pki: fedsec_coordinator::pki::PkiSummary,
    model_bytes: usize,
    config: CoordinatorConfig,
}

fn setup(opts: &BenchOptions) -> Result<Setup, String> {
    let dir = tempfile::tempdir().map_err(err)?;
    let root = dir.path();
    // n clients and two operators: one reads the round's phases from the Admin service, the
    // other is the health probe's (which watches the phase too, within its own rate limit).
    let pki = fedsec_coordinator::pki::init(&root.join("pki"), opts.clients + 2, &[], false)
        .map_err(err)?;
    let params = opts.dim - 1;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let values: Vec<f32> = (0..params).map(|_| rng.random_range(-0.1f32..0.1)).collect();
    let model = Model::new().with("weights", Tensor::new(vec![params], values).map_err(err)?);
    let bytes = model.to_safetensors().map_err(err)?;
    std::fs::write(root.join("model.safetensors"), &bytes).map_err(err)?;
    let admin = pki.clients[opts.clients].id.to_hex();
    let prober = pki.clients[opts.clients + 1].id.to_hex();
    let n = opts.clients;
    let text = format!(
        r#"
listen = "127.0.0.1:0"
store = "store"
audit_log = "audit.log"
signing_key = "pki/coordinator-signing.key"
admins = ["{admin}", "{prober}"]
threads = 1

[tls]
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "pki/ca.pem"

# Every client connects from 127.0.0.1: one address is the whole federation here, so its
# allowance of handshakes is the total's, and the total is sized for all clients at once.
[edge]
max_handshakes_per_ip = 4096
max_handshakes = 4096
max_connections = 100000

[task]
id = "{TASK_ID}"
name = "coordinator-bench"
initial_model = "model.safetensors"
clients_per_round = {n}
min_clients = {n}
over_selection = 1.0
graph = "{graph}"
adversary = "semi-malicious"
dropout = {dropout}
corrupt = {CORRUPT}
rounds = 1
max_examples = 1000
max_uploads_in_flight = {n}
deadlines_ms = {{ selection = 120000, advertise_keys = 300000, share_keys = 300000, masked_input = 300000, consistency = 300000, unmasking = 300000 }}
"#,
        graph = graph_name(opts.graph),
        dropout = opts.dropout,
    );
    let path = root.join("coordinator.toml");
    std::fs::write(&path, text).map_err(err)?;
    let config = CoordinatorConfig::load(&path, std::iter::empty(), &[]).map_err(err)?;
    Ok(Setup { dir, pki, model_bytes: bytes.len(), config })
}

fn client_config(s: &Setup, i: usize, addr: SocketAddr) -> ClientConfig {
    let c = &s.pki.clients[i];
    ClientConfig {
        coordinator: format!("https://{addr}"),
        server_name: "localhost".into(),
        task_id: TASK_ID.into(),
        ca: s.pki.ca_cert.clone(),
        cert: c.cert.clone(),
        key: c.key.clone(),
        coordinator_key: s.pki.signing_public_key.clone(),
        state_dir: s.dir.path().join(format!("state-{i:03}")),
        policy: PolicyConfig::default(),
        insecure: false,
        max_model_bytes: fedsec_client::config::DEFAULT_MAX_MODEL_BYTES,
        max_rounds: Some(1),
        encryption: None,
    }
}

/// What the gRPC round measured.
struct RoundFigures {
    from_selection_s: f64,
    from_first_check_in_s: f64,
    /// From the unmasking's close to the last client's result: aggregation, checkpoint, replies.
    aggregate_commit_and_results_s: f64,
    phase_seconds: Vec<f64>,
    set_sizes: Vec<u32>,
    completed: usize,
    bytes_sent: u64,
    bytes_received: u64,
    /// The health probe's report, if it ran.
    health_probe: Option<Value>,
}

/// The round; the coordinator runs on `coordinator_rt` if given, else beside the clients.
async fn round(
    s: &Setup,
    opts: &BenchOptions,
    coordinator_rt: Option<tokio::runtime::Handle>,
) -> Result<RoundFigures, String> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (listening, addr_rx) = tokio::sync::oneshot::channel();
    let config = s.config.clone();
    let coordinator = async move {
        let ready = fedsec_coordinator::server::prepare(&config).await.map_err(err)?;
        let _ = listening.send(ready.local_addr().map_err(err));
        let shutdown = async {
            let _ = stopped.await;
        };
        fedsec_coordinator::server::serve(ready, shutdown).await.map_err(err)
    };
    let server = match coordinator_rt {
        Some(rt) => rt.spawn(coordinator),
        None => tokio::spawn(coordinator),
    };
    let addr = match addr_rx.await {
        Ok(addr) => addr?,
        // The coordinator stopped before it listened: its error says why.
        Err(_) => {
            server.await.map_err(err)??;
            return Err("the coordinator stopped before it listened".into());
        }
    };

    let mut update_rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x5eed);
    let update: Vec<f32> =
        (0..opts.dim - 1).map(|_| update_rng.random_range(-0.01f32..0.01)).collect();
    // The operator watches the task from a thread of its own (so that the clients' work on
    // this runtime does not delay it): the selection is the moment the task leaves
    // "selecting".
    let watch = {
        let (setup_admin, wait) = (admin_client(s, opts, addr), tokio::sync::oneshot::channel());
        let (ready_tx, ready_rx) = wait;
        let mut admin = setup_admin.await?;
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let seen = rt.map_err(err).and_then(|rt| {
                rt.block_on(async {
                    loop {
                        let status = task_status(&mut admin).await?;
                        if status.phase != "selecting" {
                            return Ok::<Instant, String>(Instant::now());
                        }
                        tokio::time::sleep(SELECTION_POLL).await;
                    }
                })
            });
            let _ = ready_tx.send(seen);
        });
        ready_rx
    };
    let probe = if opts.probe_health {
        Some(health_probe::Probe::start(operator_endpoint(s, opts.clients + 1, addr)?).await?)
    } else {
        None
    };
    let start = Instant::now();
    let mut clients = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        let config = client_config(s, i, addr);
        let mut trainer = FixedUpdate { update: update.clone() };
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(config).await.map_err(err)?;
            let summary = client.run(&mut trainer).await.map_err(err)?;
            Ok::<(RunSummary, Instant), String>((summary, Instant::now()))
        }));
    }
    let mut summaries = Vec::with_capacity(opts.clients);
    for c in clients {
        summaries.push(c.await.map_err(err)??);
    }
    let last = summaries.iter().map(|s| s.1).max().unwrap_or(start);
    let health_probe = match probe {
        Some(probe) => Some(probe.stop().await?.report(start, last)),
        None => None,
    };
    let selected = watch.await.map_err(err)??;

    let mut admin = admin_client(s, opts, addr).await?;
    let status = task_status(&mut admin).await?;
    let _ = stop.send(());
    server.await.map_err(err)??;

    let result = status.recent_rounds.first().ok_or("the task reports no round")?;
    let phases: f64 = result.phase_seconds.iter().sum();
    // The operator's view of the selection comes late when the runtime is busy; the engine's
    // phase times run from the selection itself. Neither can exceed the true figure.
    let from_selection_s = last.saturating_duration_since(selected).as_secs_f64().max(phases);
    let reports: Vec<_> = summaries.iter().flat_map(|s| s.0.rounds.iter()).collect();
    Ok(RoundFigures {
        from_selection_s,
        from_first_check_in_s: last.duration_since(start).as_secs_f64(),
        aggregate_commit_and_results_s: (from_selection_s - phases).max(0.0),
        phase_seconds: result.phase_seconds.clone(),
        set_sizes: result.set_sizes.clone(),
        completed: reports.iter().filter(|r| r.completed).count(),
        bytes_sent: reports.iter().map(|r| r.bytes_sent).max().unwrap_or(0),
        bytes_received: reports.iter().map(|r| r.bytes_received).max().unwrap_or(0),
        health_probe,
    })
}

type AdminClient = fedsec_proto::v1::admin_client::AdminClient<tonic::transport::Channel>;

/// An Admin client with the operator's certificate.
async fn admin_client(
    s: &Setup,
    opts: &BenchOptions,
    addr: SocketAddr,
) -> Result<AdminClient, String> {
    let channel = operator_endpoint(s, opts.clients, addr)?.connect().await.map_err(err)?;
    Ok(AdminClient::new(channel))
}

/// The coordinator's endpoint, with the certificate of the PKI's client `cert` (an operator's:
/// n is the operator's, n + 1 the health probe's), not connected.
fn operator_endpoint(
    s: &Setup,
    cert: usize,
    addr: SocketAddr,
) -> Result<tonic::transport::Endpoint, String> {
    let c = &s.pki.clients[cert];
    let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(err);
    let tls = fedsec_client::tls::client_tls(
        &read(&s.pki.ca_cert)?,
        &read(&c.cert)?,
        &read(&c.key)?,
        "localhost",
    )
    .map_err(err)?;
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .map_err(err)?
        .tls_config(tls)
        .map_err(err)
}

/// The task's status, as the operator sees it.
async fn task_status(admin: &mut AdminClient) -> Result<fedsec_proto::v1::TaskStatus, String> {
    let task_id = hex::decode(TASK_ID).map_err(err)?;
    let status = admin
        .get_task_status(fedsec_proto::v1::TaskStatusRequest { task_id })
        .await
        .map_err(err)?;
    Ok(status.into_inner())
}

/// The core alone: one honest round in memory, same n, d, graph, δ, γ, no dropouts.
fn core_in_memory(opts: &BenchOptions) -> Result<(f64, bool), String> {
    let n = opts.clients;
    let mut os = fedsec_crypto::rng::os_rng();
    let identities: Vec<Arc<IdentityKey>> =
        (0..n).map(|_| Arc::new(IdentityKey::generate(&mut os))).collect();
    let mut ids: Vec<ClientId> = identities.iter().map(|k| k.id()).collect();
    let ppm = |x: f64| (x * 1e6).round() as u32;
    let plan = make_plan(
        &mut ids,
        opts.graph,
        ppm(opts.dropout),
        ppm(CORRUPT),
        AdversaryClass::SemiMalicious,
        opts.dim as u32,
        CheckpointHash([7; 32]),
        &mut os,
    )
    .map_err(err)?;
    let by_index: Vec<Arc<IdentityKey>> = plan
        .selected
        .iter()
        .map(|id| identities.iter().find(|k| k.id() == *id).expect("the plan's ids").clone())
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let inputs: Vec<Vec<u32>> =
        (0..n).map(|_| (0..opts.dim).map(|_| rng.next_u32()).collect()).collect();
    let mut clear = vec![0u32; opts.dim];
    for x in &inputs {
        for (c, v) in clear.iter_mut().zip(x) {
            *c = c.wrapping_add(*v);
        }
    }
    let policy = ClientPolicy { min_adversary: AdversaryClass::Curious, ..ClientPolicy::default() };
    let start = Instant::now();
    let outcome = run_round(
        &plan,
        &by_index,
        &inputs,
        &BTreeMap::new(),
        &policy,
        Arc::new(RawKeyCredentials),
    )
    .map_err(err)?;
    let took = start.elapsed().as_secs_f64();
    let sum = outcome.sum.map_err(err)?;
    Ok((took, sum == clear))
}

fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(err)?;
    CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{e:?}"))
}

/// n mutual-TLS connections on loopback; once all are up, each downloads `down` bytes and
/// uploads `up` bytes at the same time. Returns the seconds from the go to the last byte.
async fn tls_transfer(s: &Setup, n: usize, down: usize, up: usize) -> Result<f64, String> {
    let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(err);
    let server_config = fedsec_coordinator::tls::server_config(
        &read(&s.pki.server_cert)?,
        &read(&s.pki.server_key)?,
        &read(&s.pki.ca_cert)?,
    )
    .map_err(err)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    // The sink: reads a go byte, sends the model, reads the whole upload, acknowledges.
    let sink = tokio::spawn(async move {
        let model = Arc::new(vec![0x5au8; down]);
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let acceptor = acceptor.clone();
            let model = model.clone();
            conns.push(tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await?;
                let mut go = [0u8; 1];
                tls.read_exact(&mut go).await?;
                tls.write_all(&model).await?;
                tls.flush().await?;
                let mut buf = vec![0u8; 1 << 16];
                let mut left = up;
                while left > 0 {
                    let got = tls.read(&mut buf[..left.min(1 << 16)]).await?;
                    if got == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                    }
                    left -= got;
                }
                tls.write_all(&[1]).await?;
                tls.flush().await?;
                Ok::<(), std::io::Error>(())
            }));
        }
        for c in conns {
            c.await.map_err(std::io::Error::other)??;
        }
        Ok::<(), std::io::Error>(())
    });

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in pem_certs(&s.pki.ca_cert)? {
        roots.add(ca).map_err(err)?;
    }
    let go = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut clients = Vec::with_capacity(n);
    for c in s.pki.clients.iter().take(n) {
        let key = PrivateKeyDer::from_pem_file(&c.key).map_err(|e| format!("{e:?}"))?;
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(err)?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(pem_certs(&c.cert)?, key)
            .map_err(err)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let go = go.clone();
        let upload = vec![0xa5u8; up];
        clients.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("localhost").expect("a valid name");
            let mut tls = connector.connect(name, tcp).await?;
            go.wait().await;
            tls.write_all(&[1]).await?;
            tls.flush().await?;
            let mut model = vec![0u8; down];
            tls.read_exact(&mut model).await?;
            tls.write_all(&upload).await?;
            tls.flush().await?;
            let mut ack = [0u8; 1];
            tls.read_exact(&mut ack).await?;
            Ok::<Instant, std::io::Error>(Instant::now())
        }));
    }
    // Taken before the barrier opens: once it does, fast clients may finish before this task
    // runs again.
    let start = Instant::now();
    go.wait().await;
    let mut last = start;
    for c in clients {
        last = last.max(c.await.map_err(err)?.map_err(err)?);
    }
    sink.await.map_err(err)?.map_err(err)?;
    Ok(last.duration_since(start).as_secs_f64())
}

/// Runs the three measurements and returns the report.
pub fn run(opts: &BenchOptions) -> Result<Value, String> {
    if opts.clients < 2 || opts.dim < 2 {
        return Err("the benchmark needs at least 2 clients and a dimension of at least 2".into());
    }
    fedsec_coordinator::tls::install_crypto_provider();
    let s = setup(opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(err)?;
    // A runtime of the coordinator's own, as if it ran in a process of its own: the clients do
    // their protocol work on their runtime's threads, which delays every task that shares them.
    let coordinator_rt = if opts.coordinator_own_runtime {
        Some(tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(err)?)
    } else {
        None
    };
    let r = rt.block_on(round(&s, opts, coordinator_rt.as_ref().map(|c| c.handle().clone())))?;
    drop(coordinator_rt);
    let (core_s, exact) = core_in_memory(opts)?;
    let upload_bytes = 4 * opts.dim;
    let tls_s = rt.block_on(tls_transfer(&s, opts.clients, s.model_bytes, upload_bytes))?;
    let limit_s = OVERHEAD_ALLOWED * (core_s + tls_s);
    let ratio = r.from_first_check_in_s / limit_s;
    let completed = r.completed == opts.clients;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let phase = |i: usize| r.phase_seconds.get(i).copied().unwrap_or(0.0);
    let mut report = json!({
        "n": opts.clients,
        "d": opts.dim,
        "graph": graph_name(opts.graph),
        "dropout": opts.dropout,
        "corrupt": CORRUPT,
        "cores": threads,
        "coordinator_runtime": if opts.coordinator_own_runtime { "own" } else { "shared" },
        "completed": completed,
        "clients_completed": r.completed,
        "set_sizes": r.set_sizes,
        // The round from the first check-in (handshakes and check-ins included): an upper
        // bound of the round from the selection, which is estimated from below beside it.
        "round_wall_s": r.from_first_check_in_s,
        "round_wall_from_selection_s": r.from_selection_s,
        "core_in_memory_s": core_s,
        "core_exact": exact,
        "tls_transfer_s": tls_s,
        "limit_s": limit_s,
        "ratio": ratio,
        "pass": completed && exact && ratio <= 1.0,
        "phase_s": {
            "advertise_keys": phase(0),
            "share_keys": phase(1),
            "masked_input": phase(2),
            "consistency": phase(3),
            "unmasking": phase(4),
            "aggregate_commit_and_results": r.aggregate_commit_and_results_s,
        },
        "client_bytes_sent": r.bytes_sent,
        "client_bytes_received": r.bytes_received,
        "model_bytes": s.model_bytes,
        "upload_bytes_4d": upload_bytes,
    });
    if let Some(probe) = r.health_probe {
        report["health_probe"] = probe;
    }
    Ok(report)
}
