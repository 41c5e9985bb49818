//! Assembles and runs the coordinator: storage, audit log, deny-list, the Federation and Admin
//! services, gRPC health and reflection, over mutual TLS (or plain TCP on loopback).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fedsec_crypto::ClientId;
use fedsec_proto::v1::admin_server::AdminServer;
use fedsec_proto::v1::federation_server::FederationServer;
use fedsec_wire::model::{Model, ModelError};
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::audit::{AuditError, AuditLog};
use crate::config::{CoordinatorConfig, TaskConfigError};
use crate::connections::Connections;
use crate::edge::{EdgeConfig, EdgeLayer, RateLimits};
use crate::pki::PkiError;
use crate::revocation::{DenyList, DenyListError};
use crate::service::{AdminService, AuthMode, Coordinator, FederationService, x509_verifier};
use crate::store::{CheckpointStore, StoreError};
use crate::tls::TlsError;

/// Why the coordinator could not start (or stopped serving). A file that is missing or
/// corrupt is named.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The coordinator's signing key does not load.
    #[error("coordinator signing key: {0}")]
    SigningKey(#[from] PkiError),
    /// The checkpoint store does not open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log does not open.
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    /// The deny-list does not load.
    #[error("deny-list: {0}")]
    DenyList(#[from] DenyListError),
    /// The configuration has no `[tls]` section: its federation CA is needed in every mode.
    #[error("a [tls] section is required: peers' certificate chains are checked in every round")]
    NoTls,
    /// The federation CA file is not PEM certificates.
    #[error("{}: not PEM certificates: {source}", path.display())]
    BadCaFile { path: PathBuf, source: rustls_pki_types::pem::Error },
    /// The federation CA file holds no certificate.
    #[error("{}: no certificate", path.display())]
    NoCaCertificate { path: PathBuf },
    /// Insecure mode was asked for on an address that is not loopback.
    #[error(transparent)]
    InsecureBind(TlsError),
    /// The server's certificate, key or client CA do not make a TLS configuration.
    #[error("TLS certificate {}, key {}, client CA {}: {source}", cert.display(), key.display(), ca.display())]
    Tls { cert: PathBuf, key: PathBuf, ca: PathBuf, source: Box<TlsError> },
    /// The aggregation thread pool does not start.
    #[error("cannot start the aggregation thread pool: {0}")]
    ThreadPool(#[from] rayon::ThreadPoolBuildError),
    /// The `[task]` section does not make a task configuration.
    #[error(transparent)]
    TaskConfig(#[from] TaskConfigError),
    /// The initial model file is not a model.
    #[error("initial model {}: {source}", path.display())]
    InitialModel { path: PathBuf, source: ModelError },
    /// The task could not be created or started (the coordinator's own status for it).
    #[error("cannot create the task: {0}")]
    Task(Box<tonic::Status>),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The bound listener has no local address.
    #[error("the listener has no local address: {0}")]
    LocalAddr(std::io::Error),
    /// The reflection service does not build.
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Serving failed.
    #[error("serving failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The `[edge.rate_limits]` values do not make rate limits.
    #[error(transparent)]
    RateLimits(#[from] crate::edge::RateLimitConfigError),
}

fn read_text(path: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(path)
        .map_err(|source| StartError::Read { path: path.to_path_buf(), source })
}

/// A coordinator ready to serve: its shared state and a bound listener.
#[derive(Debug)]
pub struct Ready {
    /// The shared state (for embedding and tests).
    pub coordinator: Arc<Coordinator>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    disconnect_grace: Duration,
    edge: EdgeConfig,
}

impl Ready {
    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, StartError> {
        self.listener.local_addr().map_err(StartError::LocalAddr)
    }
}

/// Builds everything the configuration names, creates its task, and binds the listener.
pub async fn prepare(config: &CoordinatorConfig) -> Result<Ready, StartError> {
    crate::tls::install_crypto_provider();
    let signing = crate::pki::load_signing_key(&config.signing_key)?;
    let store = CheckpointStore::from_url(&config.store)?;
    let audit = AuditLog::open(&config.audit_log, signing.clone())?;
    let deny = Arc::new(match &config.deny_list {
        Some(p) => DenyList::load(p)?,
        None => DenyList::empty(),
    });
    let admins: BTreeSet<ClientId> = config
        .admins
        .iter()
        .filter_map(|a| hex::decode(a).ok()?.try_into().ok().map(ClientId))
        .collect();
    // The CA is needed in every mode: peers' certificate chains are checked in every round.
    let t = config.tls.as_ref().ok_or(StartError::NoTls)?;
    let ca = read_text(&t.client_ca)?;
    let roots: Vec<Vec<u8>> = rustls_pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes())
        .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|source| StartError::BadCaFile { path: t.client_ca.clone(), source })?;
    if roots.is_empty() {
        return Err(StartError::NoCaCertificate { path: t.client_ca.clone() });
    }
    let (auth, tls) = if config.insecure {
        crate::tls::check_insecure_bind(config.listen).map_err(StartError::InsecureBind)?;
        tracing::warn!(listen = %config.listen, "insecure mode: plain TCP, clients name themselves; loopback demos only");
        (AuthMode::InsecureLoopback, None)
    } else {
        let server = crate::tls::server_config(&read_text(&t.cert)?, &read_text(&t.key)?, &ca)
            .map_err(|source| StartError::Tls {
                cert: t.cert.clone(),
                key: t.key.clone(),
                ca: t.client_ca.clone(),
                source: Box::new(source),
            })?;
        (AuthMode::MutualTls, Some(server))
    };
    let pool = if config.threads == 1 {
        None
    } else {
        let mut b =
            rayon::ThreadPoolBuilder::new().thread_name(|i| format!("fedsec-aggregate-{i}"));
        if config.threads > 1 {
            b = b.num_threads(config.threads);
        }
        Some(Arc::new(b.build()?))
    };
    let coordinator =
        Coordinator::new(store, audit, signing, deny, x509_verifier(roots), auth, admins, pool);
    if let Some(task) = &config.task {
        let task_config = task.to_config()?;
        let path = &task.initial_model;
        let bytes = std::fs::read(path)
            .map_err(|source| StartError::Read { path: path.clone(), source })?;
        let model = Model::from_safetensors(&bytes)
            .map_err(|source| StartError::InitialModel { path: path.clone(), source })?;
        let task_error = |s| StartError::Task(Box::new(s));
        let id = coordinator.create_task(task_config, model, true).await.map_err(task_error)?;
        coordinator.start_task(&id).map_err(task_error)?;
        tracing::info!(task = %hex::encode(id.0), name = %task.name, "task ready");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let disconnect_grace = Duration::from_millis(config.disconnect_grace_ms);
    Ok(Ready { coordinator, listener, tls, disconnect_grace, edge: config.edge.clone() })
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    ready: Ready,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let limit = fedsec_proto::MAX_MESSAGE_BYTES;
    let federation = FederationServer::new(FederationService::new(ready.coordinator.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let admin = AdminServer::new(AdminService::new(ready.coordinator.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<FederationServer<FederationService>>().await;
    health_reporter.set_serving::<AdminServer<AdminService>>().await;
    // Reflection in both versions: grpcurl speaks v1, grpcio's reflection client v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(fedsec_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let edge = &ready.edge;
    let c = &ready.coordinator;
    let mut layer = EdgeLayer::new(DenyList::clone(c.deny_list()), c.size_limits(), c.auth);
    // Rates are per certificate: plain TCP has no identity to key them on.
    let mut rate = None;
    if ready.tls.is_some() {
        let limits = Arc::new(RateLimits::new(&edge.rate_limits)?);
        c.set_rate_limits(limits.clone());
        layer = layer.with_rate_limits(limits.clone());
        rate = Some((report_refusals(limits.clone()), limits));
    }
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(edge.keepalive_interval()))
        .http2_keepalive_timeout(Some(edge.keepalive_timeout()))
        .max_concurrent_streams(edge.max_concurrent_streams);
    if edge.max_connection_age_ms > 0 {
        builder = builder
            .max_connection_age(Duration::from_millis(edge.max_connection_age_ms))
            .max_connection_age_grace(Duration::from_millis(edge.max_connection_age_grace_ms));
    }
    let router = builder
        .layer(layer)
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(federation)
        .add_service(admin);
    tracing::info!(addr = %ready.local_addr()?, tls = ready.tls.is_some(), "serving");
    let served = serve_with(ready, router, shutdown).await;
    if let Some((reporter, limits)) = rate {
        reporter.abort();
        limits.report(RATE_REPORT_PERIOD);
        let refused = limits.refused_total();
        tracing::info!(refused, "rate limits: {refused} calls refused in all");
    }
    served
}

/// How often the refusals of the rate limits are reported (a line per client and class).
const RATE_REPORT_PERIOD: Duration = Duration::from_secs(10);

/// Reports the rate limits' refusals every [`RATE_REPORT_PERIOD`], until aborted.
fn report_refusals(limits: Arc<RateLimits>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(RATE_REPORT_PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            limits.report(RATE_REPORT_PERIOD);
        }
    })
}

/// Serves `router` on the listener of `ready` until `shutdown` resolves.
async fn serve_with(
    ready: Ready,
    router: tonic::transport::server::Router<
        tower::layer::util::Stack<EdgeLayer, tower::layer::util::Identity>,
    >,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    match ready.tls {
        Some(tls) => {
            let (tracker, mut events) = Connections::limited(
                ready.disconnect_grace,
                ready.edge.max_connections,
                ready.edge.max_connections_per_client,
            );
            ready.coordinator.set_connections(tracker.clone());
            let coordinator = ready.coordinator.clone();
            // One at a time, in order: a client's return is never overtaken by its departure.
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    coordinator.connection_event(event).await;
                }
            });
            let admission = crate::tls::Admission::new(&ready.edge, Some(tracker));
            let incoming = crate::tls::tls_incoming_admitted(ready.listener, tls, admission);
            Ok(router.serve_with_incoming_shutdown(incoming, shutdown).await?)
        }
        None => {
            let incoming = crate::tls::tcp_incoming(ready.listener);
            Ok(router.serve_with_incoming_shutdown(incoming, shutdown).await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration in `dir`: the development PKI in `dir/pki`, a loopback port, and a task
    /// whose initial model is `dir/model.safetensors`.
    fn config(dir: &Path) -> CoordinatorConfig {
        let text = r#"
listen = "127.0.0.1:0"
store = "checkpoints"
audit_log = "audit.log"
signing_key = "pki/coordinator-signing.key"

[tls]
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "pki/ca.pem"

[task]
id = "000102030405060708090a0b0c0d0e0f"
name = "files"
initial_model = "model.safetensors"
clients_per_round = 10
graph = "complete"
"#;
        let path = dir.join("coordinator.toml");
        std::fs::write(&path, text).unwrap();
        CoordinatorConfig::load(&path, [], &[]).unwrap()
    }

    #[tokio::test]
    async fn missing_and_corrupt_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let tls = config.tls.clone().unwrap();
        let model = config.task.as_ref().unwrap().initial_model.clone();

        match prepare(&config).await {
            Err(StartError::SigningKey(PkiError::Io { path, .. })) => {
                assert_eq!(path, config.signing_key)
            }
            other => panic!("expected the missing signing key, got {other:?}"),
        }
        crate::pki::init(&dir.path().join("pki"), 0, &[], false).unwrap();

        match prepare(&config).await {
            Err(StartError::Read { path, .. }) => assert_eq!(path, model),
            other => panic!("expected the missing initial model, got {other:?}"),
        }
        std::fs::write(&model, b"not a model").unwrap();
        match prepare(&config).await {
            Err(e @ StartError::InitialModel { .. }) => {
                assert!(e.to_string().contains(&model.display().to_string()), "{e}");
                assert!(matches!(
                    e,
                    StartError::InitialModel { ref path, source: ModelError::NotSafetensors(_) }
                        if *path == model
                ));
            }
            other => panic!("expected the corrupt initial model, got {other:?}"),
        }

        std::fs::write(&tls.client_ca, "").unwrap();
        match prepare(&config).await {
            Err(StartError::NoCaCertificate { path }) => assert_eq!(path, tls.client_ca),
            other => panic!("expected the empty CA file, got {other:?}"),
        }
    }
}
