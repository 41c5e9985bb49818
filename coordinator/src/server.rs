//! Assembles and runs the coordinator: storage, audit log, deny-list, the Federation and Admin
//! services, gRPC health and reflection, over mutual TLS (or plain TCP on loopback).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fedsec_crypto::{CheckpointHash, ClientId, TaskId};
use fedsec_proto::v1::admin_server::AdminServer;
use fedsec_proto::v1::federation_server::FederationServer;
use fedsec_wire::model::{Model, ModelError};
use tokio::net::TcpListener;

use crate::audit::{AuditError, AuditLog};
use crate::config::{CoordinatorConfig, TaskConfigError, TaskSection};
use crate::connections::Connections;
use crate::edge::{EdgeConfig, EdgeLayer, RateLimits};
use crate::lock::{DataLock, LockError, lock_path};
use crate::pki::PkiError;
use crate::revocation::{DenyList, DenyListError};
use crate::runtime::{AuthMode, Coordinator, x509_verifier};
use crate::service::{AdminService, FederationService};
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
    /// A key-encryption key of `[encryption]` does not load.
    #[error("encryption: {0}")]
    Encryption(String),
    /// The audit log does not open.
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    /// The deny-list does not load.
    #[error("deny_list: {0}")]
    DenyList(#[from] DenyListError),
    /// The file `deny_list` names does not exist.
    #[error(
        "deny_list = {}: no such file. The deny-list must exist (it is read at start and on every ReloadDenyList); to deny nobody, create an empty file (touch {}) or remove the key",
        path.display(),
        path.display()
    )]
    DenyListMissing { path: PathBuf },
    /// Another coordinator holds the data directory, or its lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The store holds checkpoints of the task, and the initial model is not the one the task
    /// started from.
    #[error(
        "initial model {}: the store holds checkpoint {version} of task {task}, which did not start from this model. Training would resume from checkpoint {version} and ignore it: to train the new model, give the task a new id (task.id) or remove the task's checkpoints from the store; to resume, restore the original model file",
        path.display()
    )]
    InitialModelChanged { path: PathBuf, task: String, version: u64 },
    /// A thread of the coordinator (the audit log's writer) does not start.
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
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
    /// The ops listener (metrics, health), if configured.
    ops: Option<TcpListener>,
    tls: Option<Arc<rustls::ServerConfig>>,
    disconnect_grace: Duration,
    edge: EdgeConfig,
    // Held while the coordinator runs: one coordinator per data directory.
    _lock: DataLock,
}

impl Ready {
    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, StartError> {
        self.listener.local_addr().map_err(StartError::LocalAddr)
    }

    /// The address the ops listener is bound to, if there is one.
    pub fn ops_addr(&self) -> Result<Option<SocketAddr>, StartError> {
        self.ops.as_ref().map(|l| l.local_addr().map_err(StartError::LocalAddr)).transpose()
    }
}

/// Builds everything the configuration names, binds the listener, and creates its task.
///
/// The order is what makes a refused start harmless: first the exclusive lock on the data
/// directory ([`crate::lock`]), so a second coordinator on the same files is refused before it
/// touches them; then everything that can be refused without writing (signing key, CA and TLS
/// files, deny-list, initial model, what the store already holds of the task, the listen
/// address); only then are the audit log, its head and the store created. A start refused
/// before that point leaves nothing behind but the lock file.
pub async fn prepare(config: &CoordinatorConfig) -> Result<Ready, StartError> {
    crate::tls::install_crypto_provider();
    let lock = DataLock::acquire(&lock_path(&config.audit_log))?;
    let signing = crate::pki::load_signing_key(&config.signing_key)?;
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
    let deny = Arc::new(match &config.deny_list {
        Some(p) => load_deny_list(p)?,
        None => DenyList::empty(),
    });
    let admins: BTreeSet<ClientId> = config
        .admins
        .iter()
        .filter_map(|a| hex::decode(a).ok()?.try_into().ok().map(ClientId))
        .collect();
    let task = match &config.task {
        Some(task) => {
            let task_config = task.to_config()?;
            let path = &task.initial_model;
            let bytes = std::fs::read(path)
                .map_err(|source| StartError::Read { path: path.clone(), source })?;
            let model = Model::from_safetensors(&bytes)
                .map_err(|source| StartError::InitialModel { path: path.clone(), source })?;
            Some((task, task_config, model))
        }
        None => None,
    };
    // Encryption at rest: the keys load before anything is read or written.
    let keys = match &config.encryption {
        Some(e) => Some(Arc::new(e.key_ring().map_err(|e| StartError::Encryption(e.to_string()))?)),
        None => None,
    };
    let with_keys = |store: CheckpointStore| match &keys {
        Some(k) => store.with_keys(k.clone()),
        None => store,
    };
    let store = CheckpointStore::open_existing(&config.store)?.map(with_keys);
    if let (Some(store), Some((section, task_config, model))) = (&store, &task) {
        check_stored_task(store, task_config.task_id, model, section, &signing).await?;
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let ops = match config.ops_listen {
        Some(addr) => Some(
            TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?,
        ),
        None => None,
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
    // Nothing was written before this point (but the lock file).
    let audit = AuditLog::open(&config.audit_log, signing.clone())?;
    let store = match store {
        Some(store) => store,
        None => with_keys(CheckpointStore::from_url(&config.store)?),
    };
    if let Some(k) = &keys {
        tracing::info!(kek = %k.current_id(), "the store encrypts at rest");
    }
    if config.insecure {
        tracing::warn!(listen = %config.listen, "insecure mode: plain TCP, clients name themselves; loopback demos only");
    }
    let coordinator =
        Coordinator::new(store, audit, signing, deny, x509_verifier(roots), auth, admins, pool)
            .map_err(StartError::Thread)?;
    if let Some((section, task_config, model)) = task {
        let task_error = |s| StartError::Task(Box::new(s));
        let id = coordinator.create_task(task_config, model, true).await.map_err(task_error)?;
        coordinator.start_task(&id).await.map_err(task_error)?;
        tracing::info!(task = %hex::encode(id.0), name = %section.name, "task ready");
    }
    // The tasks created through Admin before a restart.
    coordinator.resume_admin_tasks().await.map_err(|s| StartError::Task(Box::new(s)))?;
    let disconnect_grace = Duration::from_millis(config.disconnect_grace_ms);
    Ok(Ready {
        coordinator,
        listener,
        ops,
        tls,
        disconnect_grace,
        edge: config.edge.clone(),
        _lock: lock,
    })
}

/// Loads the deny-list `deny_list` names; a missing file is refused with the key, not taken
/// for an empty list (a typo in the path would otherwise deny nobody).
fn load_deny_list(path: &Path) -> Result<DenyList, StartError> {
    DenyList::load(path).map_err(|e| match e {
        DenyListError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            StartError::DenyListMissing { path }
        }
        e => StartError::DenyList(e),
    })
}

/// When the store already holds checkpoints of the task, training resumes from the newest:
/// checks that it verifies under the coordinator's key, and that the configured initial model
/// is the one the task started from (its checkpoint 0), so a new model is not silently ignored.
async fn check_stored_task(
    store: &CheckpointStore,
    id: TaskId,
    model: &Model,
    section: &TaskSection,
    signing: &ed25519_dalek::SigningKey,
) -> Result<(), StartError> {
    let Some(latest) = store.latest(id).await? else {
        return Ok(());
    };
    let latest = latest.manifest.version;
    store.get_verified(id, latest, &signing.verifying_key()).await?;
    let first = match store.manifest(id, 0).await {
        Ok(first) => first,
        // Checkpoint 0 was removed: there is nothing to compare with.
        Err(StoreError::NotFound { .. }) => {
            tracing::warn!(task = %id.to_hex(), version = latest, "the store holds no checkpoint 0 of the task: the initial model cannot be compared with the one it started from; resuming from the newest checkpoint");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let bytes = model.to_safetensors().map_err(|source| StartError::InitialModel {
        path: section.initial_model.clone(),
        source,
    })?;
    if first.manifest.sha256 != CheckpointHash::of(&bytes) {
        return Err(StartError::InitialModelChanged {
            path: section.initial_model.clone(),
            task: id.to_hex(),
            version: latest,
        });
    }
    tracing::info!(task = %id.to_hex(), version = latest, "the store holds checkpoints of this task: training resumes from the newest");
    Ok(())
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    mut ready: Ready,
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
    let health_follows_audit = tokio::spawn(health_follows_audit(
        ready.coordinator.audit_state(),
        ready.coordinator.store_health(),
        health_reporter,
    ));
    // Reflection in both versions: grpcurl speaks v1, grpcio's reflection client v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(fedsec_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let edge = &ready.edge;
    let c = &ready.coordinator;
    let mut layer = EdgeLayer::new(DenyList::clone(c.deny_list()), c.size_limits(), c.auth)
        .with_metrics(c.metrics().edge().clone());
    // Rates are per certificate: plain TCP has no identity to key them on.
    let mut rate = None;
    if ready.tls.is_some() {
        let limits = Arc::new(RateLimits::new(&edge.rate_limits)?);
        c.set_rate_limits(limits.clone());
        layer = layer.with_rate_limits(limits.clone());
        rate = Some((report_refusals(limits.clone()), limits));
    }
    let routes = tonic::service::Routes::new(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(federation)
        .add_service(admin)
        .prepare();
    let service = tower::ServiceBuilder::new().layer(layer).service(routes);
    tracing::info!(addr = %ready.local_addr()?, tls = ready.tls.is_some(), "serving");
    let ops = ready.ops.take().map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving /metrics and /healthz");
        }
        let source: Arc<dyn crate::metrics::OpsSource> = ready.coordinator.clone();
        tokio::spawn(crate::metrics::serve_ops(listener, source, std::future::pending()))
    });
    let coordinator = ready.coordinator.clone();
    let served = serve_with(ready, service, shutdown).await;
    health_follows_audit.abort();
    if let Some(ops) = ops {
        ops.abort();
    }
    coordinator.flush_audit(AUDIT_FLUSH_AT_SHUTDOWN).await;
    if let Some((reporter, limits)) = rate {
        reporter.abort();
        limits.report(RATE_REPORT_PERIOD);
        let refused = limits.refused_total();
        tracing::info!(refused, "rate limits: {refused} calls refused in all");
    }
    served
}

/// Turns the health of the services (and of the server as a whole, the empty service name) to
/// `NOT_SERVING` while the audit log or the store cannot be written, and back to `SERVING` once
/// both can.
async fn health_follows_audit(
    mut audit: tokio::sync::watch::Receiver<crate::runtime::AuditState>,
    mut store: tokio::sync::watch::Receiver<Option<String>>,
    reporter: tonic_health::server::HealthReporter,
) {
    let set = |status| {
        let reporter = &reporter;
        async move {
            reporter.set_service_status("", status).await;
            for name in [
                <FederationServer<FederationService> as tonic::server::NamedService>::NAME,
                <AdminServer<AdminService> as tonic::server::NamedService>::NAME,
            ] {
                reporter.set_service_status(name, status).await;
            }
        }
    };
    loop {
        let failing =
            matches!(*audit.borrow_and_update(), crate::runtime::AuditState::Failing { .. })
                || store.borrow_and_update().is_some();
        set(if failing {
            tonic_health::ServingStatus::NotServing
        } else {
            tonic_health::ServingStatus::Serving
        })
        .await;
        let stopped = tokio::select! {
            changed = audit.changed() => changed.is_err(),
            changed = store.changed() => changed.is_err(),
        };
        if stopped {
            // The audit writer stopped: the coordinator can record nothing more.
            set(tonic_health::ServingStatus::NotServing).await;
            return;
        }
    }
}

/// How long a stopping coordinator waits for its queued audit entries to be written.
const AUDIT_FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(10);

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
async fn serve_with<S>(
    ready: Ready,
    service: S,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let limits = crate::edge::ConnectionLimits::new(&ready.edge);
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
            let admission = crate::tls::Admission::new(&ready.edge, Some(tracker))
                .with_metrics(ready.coordinator.metrics().edge().clone());
            let incoming = crate::tls::tls_incoming_admitted(ready.listener, tls, admission);
            crate::edge::serve_incoming(incoming, service, limits, shutdown).await;
        }
        None => {
            let incoming = crate::tls::tcp_incoming(ready.listener);
            crate::edge::serve_incoming(incoming, service, limits, shutdown).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use fedsec_wire::model::Tensor;

    use super::*;

    /// A configuration in `dir`: the development PKI in `dir/pki`, the audit log and the store
    /// in `dir/data`, a loopback port, `extra` top-level lines, and a task whose initial model
    /// is `dir/model.safetensors`.
    fn config_with(dir: &Path, extra: &str) -> CoordinatorConfig {
        let text = format!(
            r#"
listen = "127.0.0.1:0"
store = "data/checkpoints"
audit_log = "data/audit.log"
signing_key = "pki/coordinator-signing.key"
{extra}

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
"#
        );
        let path = dir.join("coordinator.toml");
        std::fs::write(&path, text).unwrap();
        CoordinatorConfig::load(&path, [], &[]).unwrap()
    }

    fn config(dir: &Path) -> CoordinatorConfig {
        config_with(dir, "")
    }

    fn model(first: f32) -> Vec<u8> {
        Model::new()
            .with("w", Tensor::new(vec![2, 2], vec![first, 0.5, -0.5, 1.0]).unwrap())
            .to_safetensors()
            .unwrap()
    }

    /// The files under `dir`, relative, with `/` between folders.
    fn files(dir: &Path) -> BTreeSet<String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else {
                    let rel = path.strip_prefix(root).unwrap();
                    out.insert(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(dir, dir, &mut out);
        out
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

    /// Every kind of refused start leaves the data folder as it found it, but for the lock
    /// file; a start that succeeds afterwards finds nothing to trip over.
    #[tokio::test]
    async fn a_refused_start_leaves_nothing_but_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let lock_only = BTreeSet::from(["coordinator.lock".to_string()]);
        let mut config = config_with(dir.path(), r#"deny_list = "deny.txt""#);
        let model_path = config.task.as_ref().unwrap().initial_model.clone();
        let refused = |e: StartError, what: &str| {
            assert_eq!(files(&data), lock_only, "after {what} ({e})");
        };

        refused(prepare(&config).await.unwrap_err(), "a missing signing key");
        crate::pki::init(&dir.path().join("pki"), 0, &[], false).unwrap();
        let ca = std::fs::read(&config.tls.as_ref().unwrap().client_ca).unwrap();
        std::fs::write(&config.tls.as_ref().unwrap().client_ca, "").unwrap();
        refused(prepare(&config).await.unwrap_err(), "an empty CA file");
        std::fs::write(&config.tls.as_ref().unwrap().client_ca, &ca).unwrap();

        match prepare(&config).await {
            Err(e @ StartError::DenyListMissing { .. }) => {
                let text = e.to_string();
                assert!(text.contains("deny_list = "), "{text}");
                assert!(text.contains("deny.txt"), "{text}");
                assert!(text.contains("empty file"), "{text}");
                refused(e, "a missing deny-list");
            }
            other => panic!("expected the missing deny-list, got {other:?}"),
        }
        std::fs::write(dir.path().join("deny.txt"), "").unwrap();

        refused(prepare(&config).await.unwrap_err(), "a missing initial model");
        std::fs::write(&model_path, b"not a model").unwrap();
        refused(prepare(&config).await.unwrap_err(), "a corrupt initial model");
        std::fs::write(&model_path, model(1.0)).unwrap();

        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = config.listen;
        config.listen = taken.local_addr().unwrap();
        match prepare(&config).await {
            Err(e @ StartError::Bind { .. }) => refused(e, "an address in use"),
            other => panic!("expected the address in use, got {other:?}"),
        }
        config.listen = listen;

        let ready = prepare(&config).await.unwrap();
        let written = files(&data);
        assert!(written.contains("audit.log") && written.contains("audit.log.head"), "{written:?}");
        assert!(written.iter().any(|f| f.starts_with("checkpoints/")), "{written:?}");
        drop(ready);
    }

    #[tokio::test]
    async fn a_second_coordinator_is_refused_before_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        crate::pki::init(&dir.path().join("pki"), 0, &[], false).unwrap();
        std::fs::write(&config.task.as_ref().unwrap().initial_model, model(1.0)).unwrap();
        let first = prepare(&config).await.unwrap();
        let log = std::fs::read(&config.audit_log).unwrap();
        let head = std::fs::read(crate::audit::head_path(&config.audit_log)).unwrap();
        let before = files(dir.path());
        match prepare(&config).await {
            Err(e @ StartError::Lock(LockError::Held { .. })) => {
                let text = e.to_string();
                assert!(text.contains("coordinator.lock"), "{text}");
                assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
            }
            other => panic!("expected the held lock, got {other:?}"),
        }
        assert_eq!(std::fs::read(&config.audit_log).unwrap(), log);
        assert_eq!(std::fs::read(crate::audit::head_path(&config.audit_log)).unwrap(), head);
        assert_eq!(files(dir.path()), before);
        drop(first);
    }

    /// A new initial model beside a stored checkpoint of the task is refused with what to do;
    /// the original model resumes.
    #[tokio::test]
    async fn a_new_initial_model_beside_stored_checkpoints_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        crate::pki::init(&dir.path().join("pki"), 0, &[], false).unwrap();
        let model_path = config.task.as_ref().unwrap().initial_model.clone();
        std::fs::write(&model_path, model(1.0)).unwrap();
        drop(prepare(&config).await.unwrap());

        let log = std::fs::read(&config.audit_log).unwrap();
        std::fs::write(&model_path, model(2.0)).unwrap();
        match prepare(&config).await {
            Err(e @ StartError::InitialModelChanged { .. }) => {
                let text = e.to_string();
                assert!(text.contains("checkpoint 0 of task 000102030405060708090a0b0c0d0e0f"));
                assert!(text.contains("task.id") && text.contains("restore"), "{text}");
                assert!(text.contains(&model_path.display().to_string()), "{text}");
            }
            other => panic!("expected the changed initial model, got {other:?}"),
        }
        assert_eq!(std::fs::read(&config.audit_log).unwrap(), log, "nothing appended");

        std::fs::write(&model_path, model(1.0)).unwrap();
        drop(prepare(&config).await.unwrap());
    }
}
