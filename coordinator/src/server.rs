//! Assembles and runs the coordinator: storage, audit log, deny-list, the Federation and Admin
//! services, gRPC health and reflection, over mutual TLS (or plain TCP on loopback).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fedsec_crypto::ClientId;
use fedsec_proto::v1::admin_server::AdminServer;
use fedsec_proto::v1::federation_server::FederationServer;
use fedsec_wire::model::Model;
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::audit::AuditLog;
use crate::config::CoordinatorConfig;
use crate::connections::Connections;
use crate::revocation::DenyList;
use crate::service::{AdminService, AuthMode, Coordinator, FederationService, x509_verifier};
use crate::store::CheckpointStore;

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

fn err(what: impl std::fmt::Display) -> StartError {
    StartError(what.to_string())
}

fn read_text(path: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(path).map_err(|e| err(format!("{}: {e}", path.display())))
}

/// A coordinator ready to serve: its shared state and a bound listener.
#[derive(Debug)]
pub struct Ready {
    /// The shared state (for embedding and tests).
    pub coordinator: Arc<Coordinator>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    disconnect_grace: Duration,
}

impl Ready {
    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, StartError> {
        self.listener.local_addr().map_err(err)
    }
}

/// Builds everything the configuration names, creates its task, and binds the listener.
pub async fn prepare(config: &CoordinatorConfig) -> Result<Ready, StartError> {
    crate::tls::install_crypto_provider();
    let signing = crate::pki::load_signing_key(&config.signing_key).map_err(err)?;
    let store = CheckpointStore::from_url(&config.store).map_err(err)?;
    let audit = AuditLog::open(&config.audit_log, signing.clone()).map_err(err)?;
    let deny = Arc::new(match &config.deny_list {
        Some(p) => DenyList::load(p).map_err(err)?,
        None => DenyList::empty(),
    });
    let admins: BTreeSet<ClientId> = config
        .admins
        .iter()
        .filter_map(|a| hex::decode(a).ok()?.try_into().ok().map(ClientId))
        .collect();
    // The CA is needed in every mode: peers' certificate chains are checked in every round.
    let t = config.tls.as_ref().ok_or_else(|| err("a [tls] section is required"))?;
    let ca = read_text(&t.client_ca)?;
    let roots: Vec<Vec<u8>> = rustls_pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes())
        .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("{}: {e:?}", t.client_ca.display())))?;
    if roots.is_empty() {
        return Err(err(format!("{}: no certificate", t.client_ca.display())));
    }
    let (auth, tls) = if config.insecure {
        crate::tls::check_insecure_bind(config.listen).map_err(err)?;
        tracing::warn!(listen = %config.listen, "insecure mode: plain TCP, clients name themselves; loopback demos only");
        (AuthMode::InsecureLoopback, None)
    } else {
        let server = crate::tls::server_config(&read_text(&t.cert)?, &read_text(&t.key)?, &ca)
            .map_err(err)?;
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
        Some(Arc::new(b.build().map_err(err)?))
    };
    let coordinator =
        Coordinator::new(store, audit, signing, deny, x509_verifier(roots), auth, admins, pool);
    if let Some(task) = &config.task {
        let task_config = task.to_config().map_err(err)?;
        let bytes = std::fs::read(&task.initial_model)
            .map_err(|e| err(format!("{}: {e}", task.initial_model.display())))?;
        let model = Model::from_safetensors(&bytes)
            .map_err(|e| err(format!("{}: {e}", task.initial_model.display())))?;
        let id = coordinator
            .create_task(task_config, model, true)
            .await
            .map_err(|s| err(s.message()))?;
        coordinator.start_task(&id).map_err(|s| err(s.message()))?;
        tracing::info!(task = %hex::encode(id.0), name = %task.name, "task ready");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| err(format!("cannot listen on {}: {e}", config.listen)))?;
    let disconnect_grace = Duration::from_millis(config.disconnect_grace_ms);
    Ok(Ready { coordinator, listener, tls, disconnect_grace })
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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fedsec_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(err)?;
    let router = Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(federation)
        .add_service(admin);
    tracing::info!(addr = %ready.local_addr()?, tls = ready.tls.is_some(), "serving");
    match ready.tls {
        Some(tls) => {
            let (tracker, mut events) = Connections::new(ready.disconnect_grace);
            let coordinator = ready.coordinator.clone();
            // One at a time, in order: a client's return is never overtaken by its departure.
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    coordinator.connection_event(event).await;
                }
            });
            let incoming = crate::tls::tls_incoming_tracked(
                ready.listener,
                tls,
                crate::tls::HANDSHAKE_TIMEOUT,
                Some(tracker),
            );
            router.serve_with_incoming_shutdown(incoming, shutdown).await.map_err(err)
        }
        None => {
            let incoming = crate::tls::tcp_incoming(ready.listener);
            router.serve_with_incoming_shutdown(incoming, shutdown).await.map_err(err)
        }
    }
}
