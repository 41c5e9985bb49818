//! The gRPC adapter: the Federation and Admin services over the round engines of the tasks.
//!
//! Handlers are thin: authenticate the peer, convert the wire message ([`crate::wire`]), call
//! one engine method, map the error ([`status`]). The small phases long-poll: a call submits
//! the client's message and waits until its phase closes, then returns the reply the engine
//! prepared. Engine calls run on the blocking pool (closing a phase can run the aggregation);
//! a driver task per training task fires phase deadlines, stores checkpoints and writes the
//! audit log.

mod admin;
mod federation;
mod progress;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use fedsec_crypto::sign::CredentialVerifier;
use fedsec_crypto::{ClientId, TaskId};
use fedsec_wire::checkpoint::{Manifest, SignedManifest};
use fedsec_wire::model::Model;
use fedsec_wire::x509::X509Credentials;
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};
use tonic::{Request, Status};

use crate::audit::{AuditLog, EntryKind};
use crate::engine::{AuditEvent, Engine, NewCheckpoint, Output, TaskConfig};
use crate::revocation::DenyList;
use crate::store::CheckpointStore;

pub use admin::AdminService;
pub use federation::FederationService;

/// The metadata header that names the client on a plain-TCP (`--insecure`) connection, where
/// no certificate does. Loopback demos only: anyone on the host can claim any id.
pub const INSECURE_CLIENT_ID_HEADER: &str = "x-fedsec-client-id";

/// How long a check-in call waits for the selection before it answers "check in again".
pub const CHECK_IN_LONG_POLL: Duration = Duration::from_secs(20);

/// Extra time a phase call waits beyond the phase's deadline for the engine to close it.
const LONG_POLL_SLACK: Duration = Duration::from_secs(5);

/// Builds the verifier of peers' certificate chains for an attempt that starts now.
pub type VerifierFactory = Arc<dyn Fn() -> Arc<dyn CredentialVerifier> + Send + Sync>;

/// A verifier factory that checks chains against `ca_roots` (DER) at the current time.
pub fn x509_verifier(ca_roots: Vec<Vec<u8>>) -> VerifierFactory {
    Arc::new(move || {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        match X509Credentials::new(&ca_roots, now) {
            Ok(v) => Arc::new(v) as Arc<dyn CredentialVerifier>,
            // The roots were parsed when the coordinator started; they do not change.
            Err(e) => unreachable!("CA roots checked at start-up no longer parse: {e}"),
        }
    })
}

/// The checkpoint's bytes as `Bytes` for the store, without copying them (a model can be
/// hundreds of megabytes).
fn shared(bytes: &Arc<Vec<u8>>) -> bytes::Bytes {
    struct Shared(Arc<Vec<u8>>);
    impl AsRef<[u8]> for Shared {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    bytes::Bytes::from_owner(Shared(bytes.clone()))
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// How clients are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// By their TLS client certificate (the default).
    MutualTls,
    /// By a claimed id in metadata, on plain TCP bound to loopback (`--insecure`).
    InsecureLoopback,
}

/// The checkpoint clients download now.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub manifest: SignedManifest,
    pub bytes: Arc<Vec<u8>>,
}

/// One training task: its engine, the checkpoint it serves, and the signals around it.
pub struct TaskRuntime {
    pub(crate) id: TaskId,
    pub(crate) engine: Mutex<Engine>,
    changed: watch::Sender<u64>,
    wake: Notify,
    outputs: mpsc::UnboundedSender<Output>,
    pub(crate) published: RwLock<Published>,
    pub(crate) started: AtomicBool,
}

impl core::fmt::Debug for TaskRuntime {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TaskRuntime").field("id", &self.id).finish_non_exhaustive()
    }
}

impl TaskRuntime {
    fn lock(&self) -> std::sync::MutexGuard<'_, Engine> {
        // A panic while holding the lock is a bug; the engine is still consistent between
        // calls, so serve on rather than poison every later call.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the engine (status, results, the current model) without changing it — for
    /// embedding the coordinator, as the simulation harness does.
    pub fn inspect<R>(&self, f: impl FnOnce(&Engine) -> R) -> R {
        f(&self.lock())
    }

    /// Runs `f` on the engine on the blocking pool, then publishes what changed.
    pub(crate) async fn with_engine<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Engine, Instant) -> R + Send + 'static,
    ) -> Result<R, Status> {
        let task = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut engine = task.lock();
            let r = f(&mut engine, Instant::now());
            task.publish(&mut engine);
            r
        })
        .await
        .map_err(|e| Status::internal(format!("engine call failed: {e}")))
    }

    fn publish(&self, engine: &mut Engine) {
        while let Some(o) = engine.poll_output() {
            // The driver lives as long as the task; a closed channel means shutdown.
            let _ = self.outputs.send(o);
        }
        self.changed.send_modify(|v| *v += 1);
        self.wake.notify_one();
    }

    /// Waits until `poll` returns something, or `max` passes.
    pub(crate) async fn wait<R>(
        &self,
        max: Duration,
        poll: impl Fn(&Engine) -> Option<R>,
    ) -> Option<R> {
        let mut rx = self.changed.subscribe();
        let until = tokio::time::Instant::now() + max;
        loop {
            if let Some(r) = poll(&self.lock()) {
                return Some(r);
            }
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return poll(&self.lock()),
            }
        }
    }

    /// How long a long-poll for a phase may wait: the phase's deadline and some slack.
    pub(crate) fn phase_wait(&self, phase_index: usize) -> Duration {
        let engine = self.lock();
        engine.config().deadlines.phases()[phase_index] + LONG_POLL_SLACK
    }
}

/// Everything the services share.
pub struct Coordinator {
    pub(crate) tasks: RwLock<BTreeMap<TaskId, Arc<TaskRuntime>>>,
    pub(crate) deny: Arc<DenyList>,
    pub(crate) store: CheckpointStore,
    pub(crate) audit: Arc<Mutex<AuditLog>>,
    signing: Arc<SigningKey>,
    pub(crate) verifier: VerifierFactory,
    pub(crate) auth: AuthMode,
    pub(crate) admins: BTreeSet<ClientId>,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// The size limit of each method, raised as tasks are created (read by the edge layer).
    pub(crate) limits: crate::edge::SharedLimits,
    /// The tracker of authenticated connections, once the server serves mutual TLS.
    connections: OnceLock<Arc<crate::connections::Connections>>,
    /// The per-client rate limits, once the server serves mutual TLS.
    rate: OnceLock<Arc<crate::edge::RateLimits>>,
}

impl core::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Coordinator").field("auth", &self.auth).finish_non_exhaustive()
    }
}

impl Coordinator {
    /// A coordinator with no tasks yet.
    #[allow(clippy::too_many_arguments)] // each is one part of the server, named at the call
    pub fn new(
        store: CheckpointStore,
        audit: AuditLog,
        signing: SigningKey,
        deny: Arc<DenyList>,
        verifier: VerifierFactory,
        auth: AuthMode,
        admins: BTreeSet<ClientId>,
        pool: Option<Arc<rayon::ThreadPool>>,
    ) -> Arc<Self> {
        Arc::new(Coordinator {
            tasks: RwLock::new(BTreeMap::new()),
            deny,
            store,
            audit: Arc::new(Mutex::new(audit)),
            signing: Arc::new(signing),
            verifier,
            auth,
            admins,
            pool,
            limits: crate::edge::SharedLimits::default(),
            connections: OnceLock::new(),
            rate: OnceLock::new(),
        })
    }

    /// The size limits of the methods, for the edge layer.
    pub fn size_limits(&self) -> crate::edge::SharedLimits {
        self.limits.clone()
    }

    /// The deny-list (shared: a reload is seen everywhere).
    pub fn deny_list(&self) -> &Arc<DenyList> {
        &self.deny
    }

    /// Lets the coordinator close denied clients' connections (set once, when serving starts).
    pub fn set_connections(&self, tracker: Arc<crate::connections::Connections>) {
        if self.connections.set(tracker).is_err() {
            tracing::warn!("the connection tracker was already set; keeping the first");
        }
    }

    /// Limits each client's rates (set once, when serving starts with mutual TLS); the
    /// download handler charges checkpoint bytes to them.
    pub fn set_rate_limits(&self, rate: Arc<crate::edge::RateLimits>) {
        if self.rate.set(rate).is_err() {
            tracing::warn!("the rate limits were already set; keeping the first");
        }
        let tasks: Vec<Arc<TaskRuntime>> =
            self.tasks.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for task in tasks {
            self.check_rate_limits(&task);
        }
    }

    /// Warns if the task's honest clients would meet a rate limit (a model larger than the
    /// defaults were sized for).
    fn check_rate_limits(&self, task: &TaskRuntime) {
        let Some(rate) = self.rate.get() else { return };
        let (dim, chunk_words) = {
            let engine = task.lock();
            (engine.model().len() as u64 + 1, u64::from(engine.config().upload_chunk_words))
        };
        let bytes = task.published.read().unwrap_or_else(|p| p.into_inner()).bytes.len() as u64;
        for over in rate.check_task(dim, chunk_words, bytes) {
            tracing::warn!(task = %hex::encode(task.id.0), "rate limits: {over}");
        }
    }

    /// The per-client rate limits, if the server applies them.
    pub fn rate_limits(&self) -> Option<&Arc<crate::edge::RateLimits>> {
        self.rate.get()
    }

    /// Calls refused by the rate limits since the start (0 without rate limits).
    pub fn rate_limit_refusals(&self) -> u64 {
        self.rate.get().map_or(0, |r| r.refused_total())
    }

    /// Shuts denied clients out: closes their open connections and withdraws their waiting
    /// check-ins from every task (one engine call per task). Returns the number of connections
    /// closed.
    pub async fn shut_out(&self, clients: Vec<ClientId>) -> usize {
        let closed = match self.connections.get() {
            Some(tracker) => clients.iter().map(|c| tracker.close_client(c)).sum(),
            None => 0,
        };
        let clients = Arc::new(clients);
        let tasks: Vec<Arc<TaskRuntime>> =
            self.tasks.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for task in tasks {
            let clients = clients.clone();
            let withdrawn =
                task.with_engine(move |e, _| clients.iter().for_each(|c| e.withdraw(c)));
            if let Err(e) = withdrawn.await {
                tracing::warn!(error = %e, "could not withdraw denied clients' check-ins");
            }
        }
        closed
    }

    /// The coordinator's public key: clients pin it to verify checkpoints.
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.signing.verifying_key()
    }

    /// The task with this id.
    pub fn task(&self, id: &TaskId) -> Result<Arc<TaskRuntime>, Status> {
        self.tasks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| crate::Error::UnknownTask(*id).into())
    }

    /// A client has had no connection for the grace period (the running rounds stop waiting
    /// for it), or connected again after that (they take it again).
    pub async fn connection_event(&self, event: crate::connections::ConnectionEvent) {
        use crate::connections::ConnectionEvent;
        let tasks: Vec<Arc<TaskRuntime>> =
            self.tasks.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for task in tasks {
            let done = match event {
                ConnectionEvent::Gone(c) => {
                    task.with_engine(move |e, now| e.client_gone(&c, now)).await
                }
                ConnectionEvent::Back(c) => task.with_engine(move |e, _| e.client_back(&c)).await,
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "could not report a connection change to a task");
            }
        }
    }

    /// Resolves once every task has finished and every client that took part has asked for
    /// its final checkpoint, or `linger` after the last task finished, whichever comes first:
    /// for `serve --exit-when-finished` (a graceful shutdown lets the downloads in flight end).
    pub async fn finished(&self, linger: Duration) {
        let tasks: Vec<Arc<TaskRuntime>> =
            self.tasks.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let done =
            |e: &Engine| (e.status().state == crate::engine::EngineState::Finished).then_some(());
        for task in &tasks {
            while task.wait(Duration::from_secs(3600), done).await.is_none() {}
        }
        // One linger for all tasks, from the moment the last one finished.
        let until = tokio::time::Instant::now() + linger;
        for task in &tasks {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if task.wait(left, |e| e.everyone_has_the_final_model().then_some(())).await.is_none() {
                tracing::info!(
                    task = %hex::encode(task.id.0),
                    "some clients did not fetch the final checkpoint within {linger:?} of the end; stopping anyway"
                );
            }
        }
    }

    /// The ids of all tasks.
    pub fn task_ids(&self) -> Vec<TaskId> {
        self.tasks.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    /// Appends to the audit log; a failure is logged (the log refuses appends once broken).
    pub(crate) fn audit(&self, kind: EntryKind, detail: serde_json::Value) {
        let mut log = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = log.append(kind, detail, unix_ms()) {
            tracing::error!(error = %e, "audit log append failed");
        }
    }

    /// Creates a task from its configuration and initial model: stores checkpoint 0, or
    /// resumes from the newest stored checkpoint of the same task id. Starts its driver.
    pub async fn create_task(
        self: &Arc<Self>,
        config: TaskConfig,
        initial: Model,
        started: bool,
    ) -> Result<TaskId, Status> {
        config.validate().map_err(Status::from)?;
        let id = config.task_id;
        if self.tasks.read().unwrap_or_else(|p| p.into_inner()).contains_key(&id) {
            return Err(Status::already_exists(format!("task {} exists", hex::encode(id.0))));
        }
        let latest = self.store.latest(id).await.map_err(|e| Status::internal(e.to_string()))?;
        let (published, model) = match latest {
            Some(m) => {
                let (manifest, bytes) = self
                    .store
                    .get_verified(id, m.manifest.version, &self.verifying_key())
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                let model = Model::from_safetensors(&bytes)
                    .map_err(|e| Status::internal(format!("stored checkpoint: {e}")))?;
                (Published { manifest, bytes: Arc::new(bytes.to_vec()) }, model)
            }
            None => {
                let bytes = initial
                    .to_safetensors()
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let manifest = Manifest {
                    version: 0,
                    parent_version: 0,
                    sha256: fedsec_crypto::CheckpointHash::of(&bytes),
                    size_bytes: bytes.len() as u64,
                    task_id: id,
                    round_summary: format!("initial model of task {}", config.name),
                }
                .sign(&self.signing);
                let bytes = Arc::new(bytes);
                self.store
                    .put(&manifest, shared(&bytes))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                (Published { manifest, bytes }, initial)
            }
        };
        let version = published.manifest.manifest.version;
        let mut seed = [0u8; 32];
        rand_core::Rng::fill_bytes(&mut fedsec_crypto::rng::os_rng(), &mut seed);
        let mut engine = Engine::new(config.clone(), model, version, (self.verifier)(), seed)
            .map_err(Status::from)?
            // Round ids continue after the stored checkpoints; they are never reused because
            // each round that completed made one version, and attempts get fresh nonces.
            .with_first_round(version + 1, version);
        if let Some(pool) = &self.pool {
            engine = engine.with_thread_pool(pool.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Arc::new(TaskRuntime {
            id,
            engine: Mutex::new(engine),
            changed: watch::channel(0).0,
            wake: Notify::new(),
            outputs: tx,
            published: RwLock::new(published),
            started: AtomicBool::new(started),
        });
        self.tasks.write().unwrap_or_else(|p| p.into_inner()).insert(id, task.clone());
        self.limits.add_task(&config);
        self.check_rate_limits(&task);
        self.audit(
            EntryKind::TaskCreated,
            json!({ "task": hex::encode(id.0), "name": config.name, "checkpoint_version": version,
                    "clients_per_round": config.clients_per_round, "rounds": config.rounds }),
        );
        tokio::spawn(drive(self.clone(), task, rx));
        Ok(id)
    }

    /// Lets clients into the task's rounds.
    pub fn start_task(&self, id: &TaskId) -> Result<(), Status> {
        let task = self.task(id)?;
        if !task.started.swap(true, Ordering::SeqCst) {
            self.audit(EntryKind::TaskStarted, json!({ "task": hex::encode(id.0) }));
        }
        Ok(())
    }

    /// The client a request comes from, refusing denied and unauthenticated ones.
    pub(crate) fn identify<T>(&self, req: &Request<T>) -> Result<ClientId, Status> {
        let id = match self.auth {
            AuthMode::MutualTls => crate::auth::authenticate(req, &self.deny)?.id,
            AuthMode::InsecureLoopback => {
                let value = req
                    .metadata()
                    .get(INSECURE_CLIENT_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        Status::unauthenticated(format!(
                            "without TLS, the {INSECURE_CLIENT_ID_HEADER} header names the client"
                        ))
                    })?;
                let bytes: [u8; 32] = hex::decode(value)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| Status::unauthenticated("client id is not 64 hex digits"))?;
                let id = ClientId(bytes);
                if self.deny.contains(&id) {
                    return Err(Status::permission_denied(format!(
                        "client {} is on the deny-list",
                        id.to_hex()
                    )));
                }
                id
            }
        };
        // An operator's certificate calls the Admin service only: were it a client too, the
        // coordinator's side would hold one more identity in its rounds (a colluding client).
        if self.admins.contains(&id) {
            return Err(Status::permission_denied(format!(
                "{} is an operator's certificate; operators do not take part in rounds",
                id.to_hex()
            )));
        }
        Ok(id)
    }

    /// Stores a round's checkpoint (retrying until the store takes it), publishes it, and
    /// lets the engine open the next round.
    async fn commit(&self, task: &Arc<TaskRuntime>, c: NewCheckpoint) {
        let manifest = Manifest {
            version: c.version,
            parent_version: c.parent_version,
            sha256: c.sha256,
            size_bytes: c.bytes.len() as u64,
            task_id: task.id,
            round_summary: c.summary.clone(),
        }
        .sign(&self.signing);
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.store.put(&manifest, shared(&c.bytes)).await {
                Ok(()) => break,
                Err(crate::store::StoreError::VersionExists { .. }) => break,
                Err(e) => {
                    tracing::error!(error = %e, version = c.version, "storing the checkpoint failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        *task.published.write().unwrap_or_else(|p| p.into_inner()) =
            Published { manifest: manifest.clone(), bytes: c.bytes.clone() };
        self.audit(
            EntryKind::Checkpoint,
            json!({ "task": hex::encode(task.id.0), "version": c.version,
                    "parent": c.parent_version, "sha256": hex::encode(c.sha256.0),
                    "round": c.round_id.0 }),
        );
        let version = c.version;
        match task.with_engine(move |e, now| e.checkpoint_committed(version, now)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the engine refused the stored checkpoint"),
            Err(e) => tracing::error!(error = %e, "the engine call failed"),
        }
    }

    fn audit_event(&self, task: &TaskRuntime, e: AuditEvent) {
        let t = hex::encode(task.id.0);
        let (kind, detail) = match e {
            AuditEvent::Enrollment { client } => {
                (EntryKind::Enrollment, json!({ "task": t, "client": client.to_hex() }))
            }
            AuditEvent::RoundStarted { round_id, attempt, selected, degree, threshold } => (
                EntryKind::RoundStarted,
                json!({ "task": t, "round": round_id.0, "attempt": hex::encode(attempt.0),
                        "selected": selected, "degree": degree, "threshold": threshold }),
            ),
            AuditEvent::RoundCompleted { round_id, attempt, participants, checkpoint_version } => (
                EntryKind::RoundCompleted,
                json!({ "task": t, "round": round_id.0, "attempt": hex::encode(attempt.0),
                        "participants": participants, "checkpoint_version": checkpoint_version }),
            ),
            AuditEvent::RoundAborted { round_id, attempt, reason } => (
                EntryKind::RoundAborted,
                json!({ "task": t, "round": round_id.0, "attempt": hex::encode(attempt.0),
                        "reason": reason.to_string() }),
            ),
            AuditEvent::MisbehavingHolder { round_id, client } => (
                EntryKind::Refusal,
                json!({ "task": t, "round": round_id.0, "client": client.to_hex(),
                        "reason": "revealed a share that does not reconstruct" }),
            ),
        };
        self.audit(kind, detail);
    }
}

/// The driver of one task: fires deadlines, stores checkpoints, writes the audit log.
async fn drive(
    coordinator: Arc<Coordinator>,
    task: Arc<TaskRuntime>,
    mut outputs: mpsc::UnboundedReceiver<Output>,
) {
    let mut progress = progress::ProgressLog::new(task.inspect(|e| e.config().name.clone()));
    loop {
        let deadline = task.lock().poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            out = outputs.recv() => match out {
                Some(Output::Checkpoint(c)) => coordinator.commit(&task, c).await,
                Some(Output::Audit(e)) => coordinator.audit_event(&task, e),
                Some(Output::Progress(p)) => progress.record(&p, Instant::now()),
                None => return,
            },
            _ = task.wake.notified() => {}
            _ = sleep => {
                if task.with_engine(|e, now| e.handle_timeout(now)).await.is_err() {
                    return;
                }
            }
        }
    }
}
