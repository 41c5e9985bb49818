//! The task runtime: the coordinator's tasks, each an engine on a thread of its own
//! ([`TaskRuntime`]) with a driver on the async runtime that stores its checkpoints and writes
//! its audit entries; the checkpoint store, the audit log and the deny-list they share.
//!
//! This is the middle of three rooms: the gRPC adapter ([`crate::service`]) authenticates,
//! converts messages and calls in here; the round engine ([`crate::engine`]) is sans-IO and
//! knows nothing of either. Nothing here holds a lock while it works: engines are reached
//! through their command queues, the audit log through its writer thread, and the tables
//! readers share are published copies ([`tokio::sync::watch`]). No std lock is taken on an
//! async worker anywhere in the coordinator: `coordinator/clippy.toml` disallows
//! `std::sync::Mutex` and `RwLock`, and clippy's `await_holding_lock` is denied.

mod audit;

pub use audit::AuditState;
mod progress;
pub mod saved;
mod task;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::sign::CredentialVerifier;
use fedsec_crypto::{ClientId, TaskId};
use fedsec_wire::checkpoint::{Manifest, SignedManifest};
use fedsec_wire::model::Model;
use fedsec_wire::x509::X509Credentials;
use serde_json::json;
use sha2::Digest;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::audit::{AuditLog, EntryKind};
use crate::engine::{AuditEvent, Engine, NewCheckpoint, Output, REPUBLISHED_SUMMARY, TaskConfig};
use crate::revocation::DenyList;
use crate::store::CheckpointStore;

pub(crate) use task::Published;
pub use task::{TaskRuntime, View};

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

/// How clients are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// By their TLS client certificate (the default).
    MutualTls,
    /// By a claimed id in metadata, on plain TCP bound to loopback (`--insecure`).
    InsecureLoopback,
}

/// Everything the services share.
pub struct Coordinator {
    /// The tasks, a copy published on each change (tasks are created rarely, looked up on
    /// every call).
    tasks: watch::Sender<BTreeMap<TaskId, Arc<TaskRuntime>>>,
    pub(crate) deny: Arc<DenyList>,
    pub(crate) store: CheckpointStore,
    audit: audit::AuditWriter,
    /// The audit log's file (read at start-up to cross-check a saved attempt).
    audit_path: std::path::PathBuf,
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
    /// The metrics the ops listener serves.
    metrics: Arc<crate::metrics::Metrics>,
    /// `Some(error)` while the last write to the store failed (a checkpoint, a round's state).
    store_health: watch::Sender<Option<String>>,
}

impl core::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Coordinator").field("auth", &self.auth).finish_non_exhaustive()
    }
}

impl Coordinator {
    /// The pool the rounds' heavy work runs on (the unmasking, phase 1's checks), if one was
    /// configured.
    pub(crate) fn pool(&self) -> Option<Arc<rayon::ThreadPool>> {
        self.pool.clone()
    }

    /// A coordinator with no tasks yet. Fails if the audit log's writer thread cannot start.
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
    ) -> std::io::Result<Arc<Self>> {
        let audit_path = audit.path().to_owned();
        Ok(Arc::new(Coordinator {
            tasks: watch::channel(BTreeMap::new()).0,
            deny,
            store,
            audit: audit::AuditWriter::start(audit)?,
            audit_path,
            signing: Arc::new(signing),
            verifier,
            auth,
            admins,
            pool,
            limits: crate::edge::SharedLimits::default(),
            connections: OnceLock::new(),
            rate: OnceLock::new(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            store_health: watch::channel(None).0,
        }))
    }

    /// The coordinator's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// `Some(error)` while the last write to the store failed; follows each write.
    pub fn store_health(&self) -> watch::Receiver<Option<String>> {
        self.store_health.subscribe()
    }

    /// Records the outcome of a write to the store.
    fn store_wrote<T, E: std::fmt::Display>(&self, result: &Result<T, E>) {
        let now = result.as_ref().err().map(|e| e.to_string());
        self.store_health.send_if_modified(|was| {
            let changed = *was != now;
            *was = now.clone();
            changed
        });
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
        for task in self.all_tasks() {
            self.check_rate_limits(&task);
        }
    }

    /// Warns if the task's honest clients would meet a rate limit (a model larger than the
    /// defaults were sized for).
    fn check_rate_limits(&self, task: &TaskRuntime) {
        let Some(rate) = self.rate.get() else { return };
        let bytes = task.published().bytes.len() as u64;
        for over in rate.check_task(task.dim as u64, u64::from(task.chunk_words), bytes) {
            tracing::warn!(task = %hex::encode(task.id.0), "rate limits: {over}");
        }
    }

    fn all_tasks(&self) -> Vec<Arc<TaskRuntime>> {
        self.tasks.borrow().values().cloned().collect()
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
        for task in self.all_tasks() {
            let clients = clients.clone();
            let withdrawn = task.call(move |e, _| clients.iter().for_each(|c| e.withdraw(c)));
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
        self.tasks.borrow().get(id).cloned().ok_or_else(|| crate::Error::UnknownTask(*id).into())
    }

    /// A client has had no connection for the grace period (the running rounds stop waiting
    /// for it), or connected again after that (they take it again).
    pub async fn connection_event(&self, event: crate::connections::ConnectionEvent) {
        use crate::connections::ConnectionEvent;
        for task in self.all_tasks() {
            let done = match event {
                ConnectionEvent::Gone(c) => task.call(move |e, now| e.client_gone(&c, now)).await,
                ConnectionEvent::Back(c) => task.call(move |e, _| e.client_back(&c)).await,
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
        let tasks = self.all_tasks();
        for task in &tasks {
            while !task.wait_for_view(Duration::from_secs(3600), View::finished).await {}
        }
        // One linger for all tasks, from the moment the last one finished.
        let until = tokio::time::Instant::now() + linger;
        for task in &tasks {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if !task.wait_for_view(left, |v| v.everyone_has_the_final_model).await {
                tracing::info!(
                    task = %hex::encode(task.id.0),
                    "some clients did not fetch the final checkpoint within {linger:?} of the end; stopping anyway"
                );
            }
        }
    }

    /// The ids of all tasks.
    pub fn task_ids(&self) -> Vec<TaskId> {
        self.tasks.borrow().keys().copied().collect()
    }

    /// Appends to the audit log and waits until the entry — and every entry queued before it —
    /// is written and synced (on the log's own thread). While the log cannot be written, that
    /// is once it can again ([`audit_state`](Self::audit_state)).
    pub(crate) async fn audit(
        &self,
        kind: EntryKind,
        detail: serde_json::Value,
    ) -> Result<(), Status> {
        self.audit.append(kind, detail).await.map_err(|e| Status::unavailable(e.to_string()))
    }

    /// `Ok` while the audit log takes entries; else `UNAVAILABLE`, for the calls that would
    /// change what the log must record (fail closed).
    pub(crate) fn audit_writable(&self) -> Result<(), Status> {
        if self.audit.is_writing() {
            return Ok(());
        }
        let why = match &*self.audit.state().borrow() {
            AuditState::Failing { error, .. } => error.clone(),
            AuditState::Writing => "its writer has stopped".into(),
        };
        Err(Status::unavailable(format!(
            "the coordinator cannot write its audit log ({why}); nothing that it would record is done until it can"
        )))
    }

    /// Waits up to `within` for the audit entries queued so far to be on disk (at shutdown).
    pub async fn flush_audit(&self, within: Duration) {
        if !self.audit.flush(within).await {
            tracing::error!(
                "audit entries could not be written within {within:?}; they are lost with the process"
            );
        }
    }

    /// Whether the audit log takes entries, as it changes. While it fails, check-ins are told
    /// to come back later, no attempt starts and the health service says `NOT_SERVING`.
    pub fn audit_state(&self) -> watch::Receiver<AuditState> {
        self.audit.state()
    }

    /// Creates a task from its configuration and initial model: stores checkpoint 0, or
    /// resumes from the newest stored checkpoint of the same task id. Starts its driver.
    pub async fn create_task(
        self: &Arc<Self>,
        config: TaskConfig,
        initial: Model,
        started: bool,
    ) -> Result<TaskId, Status> {
        self.create_task_with(config, initial, started, None).await
    }

    /// Creates a task through Admin: like [`create_task`](Self::create_task), and its
    /// `definition` (the request, without the initial model: that is checkpoint 0) is saved in
    /// the store before the task is visible, so that a restart creates it again
    /// ([`resume_admin_tasks`](Self::resume_admin_tasks)).
    pub async fn create_admin_task(
        self: &Arc<Self>,
        config: TaskConfig,
        initial: Model,
        definition: bytes::Bytes,
    ) -> Result<TaskId, Status> {
        self.create_task_with(config, initial, false, Some(definition)).await
    }

    /// Creates again, after a restart, every task Admin created before it (their definitions
    /// are in the store, signed by this coordinator's key), from their newest checkpoints,
    /// started if they were (the mark signed too). A definition that fails its signature or
    /// does not decode is not created: the log and the audit log say so, naming the file, and
    /// the other tasks go on.
    pub async fn resume_admin_tasks(self: &Arc<Self>) -> Result<Vec<TaskId>, Status> {
        let internal = |e: crate::store::StoreError| Status::internal(e.to_string());
        let mut resumed = Vec::new();
        for (id, bytes, started) in self.store.task_definitions().await.map_err(internal)? {
            if self.tasks.borrow().contains_key(&id) {
                continue;
            }
            let path = format!("tasks/{}/definition.pb", id.to_hex());
            let key = self.verifying_key();
            let decoded = open_task_file(&key, DEFINITION_LABEL, id, &bytes)
                .ok_or_else(|| "its signature does not verify under the coordinator's key".into())
                .and_then(|pb| {
                    <fedsec_proto::v1::CreateTaskRequest as prost::Message>::decode(pb)
                        .map_err(|e| format!("not a task definition: {e}"))
                })
                .and_then(|request| {
                    crate::service::task_config(&request, id).map_err(|e| e.message().to_owned())
                });
            let config = match decoded {
                Ok(config) => config,
                Err(why) => {
                    tracing::error!(%path, "a task created through Admin is not created again: {why}");
                    self.audit(
                        EntryKind::Refusal,
                        json!({ "task": id.to_hex(), "reason": format!("{path}: {why}") }),
                    )
                    .await?;
                    continue;
                }
            };
            let started = started
                .is_some_and(|mark| open_task_file(&key, STARTED_LABEL, id, &mark).is_some());
            let (_, checkpoint) =
                self.store.get_verified(id, 0, &self.verifying_key()).await.map_err(internal)?;
            let initial = Model::from_safetensors(&checkpoint)
                .map_err(|e| Status::data_loss(format!("checkpoint 0 of {path}: {e}")))?;
            self.create_task_with(config, initial, started, None).await?;
            tracing::info!(task = %id.to_hex(), started, "task created through Admin resumed");
            resumed.push(id);
        }
        Ok(resumed)
    }

    async fn create_task_with(
        self: &Arc<Self>,
        config: TaskConfig,
        initial: Model,
        started: bool,
        definition: Option<bytes::Bytes>,
    ) -> Result<TaskId, Status> {
        config.validate().map_err(Status::from)?;
        let id = config.task_id;
        let exists = || Status::already_exists(format!("task {} exists", hex::encode(id.0)));
        if self.tasks.borrow().contains_key(&id) {
            return Err(exists());
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
        let checkpoint_sha256 = published.manifest.manifest.sha256;
        let completed = self.completed_rounds(id, version).await?;
        let (audit_path, task_hex) = (self.audit_path.clone(), hex::encode(id.0));
        let signed = tokio::task::spawn_blocking(move || {
            crate::audit::highest_checkpoint(&audit_path, &task_hex)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))?;
        let mut seed = [0u8; 32];
        rand_core::Rng::fill_bytes(&mut fedsec_crypto::rng::os_rng(), &mut seed);
        let mut engine = Engine::new(config.clone(), model, version, (self.verifier)(), seed)
            .map_err(Status::from)?
            // Round ids continue after the newest stored checkpoint: each round that completed
            // made one version, and a re-publication skips ids. A store that went back to an
            // older version numbers its rounds again from there until a re-publication moves
            // past them; every attempt's context stays unique all the same (fresh nonces).
            .with_first_round(version + 1, completed)
            .with_signed_versions_up_to(signed)
            .saving_attempts();
        if let Some(pool) = &self.pool {
            engine = engine.with_thread_pool(pool.clone());
        }
        self.audit_writable()?;
        // Who contributed on this checkpoint before the restart: not selected again on it.
        match self.store.contributors(id).await {
            Ok(Some((checkpoint, clients))) => engine.add_contributors(&checkpoint, &clients),
            Ok(None) => {}
            // A hint only: the clients' ledgers refuse a second upload anyway.
            Err(e) => tracing::error!(error = %e, "the record of contributors is ignored"),
        }
        self.resume_saved_attempt(&mut engine, version).await?;
        let (task, outputs) = TaskRuntime::start(id, engine, published, started)
            .map_err(|e| Status::internal(format!("cannot start the task's engine thread: {e}")))?;
        // Recorded (with the checkpoint it resumes from) before the task is visible: a
        // checkpoint stored by a coordinator that died before its entry is named here.
        self.audit_writable()?;
        self.audit(
            EntryKind::TaskCreated,
            json!({ "task": hex::encode(id.0), "name": config.name, "checkpoint_version": version,
                    "checkpoint_sha256": hex::encode(checkpoint_sha256.0),
                    "clients_per_round": config.clients_per_round, "rounds": config.rounds }),
        )
        .await?;
        if let Some(definition) = definition {
            // Signed, so that a restart creates only what this coordinator was asked to.
            let signed = sign_task_file(&self.signing, DEFINITION_LABEL, id, &definition);
            self.store
                .put_task_definition(id, signed.into())
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let inserted = self.tasks.send_if_modified(|tasks| match tasks.entry(id) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(task.clone());
                true
            }
        });
        if !inserted {
            return Err(exists());
        }
        self.limits.add_task(&config);
        self.check_rate_limits(&task);
        tokio::spawn(drive(self.clone(), task.clone(), outputs));
        tokio::spawn(hold_while_audit_fails(self.audit.state(), Arc::downgrade(&task)));
        Ok(id)
    }

    /// Resumes the attempt the task's saved state holds, if any (the coordinator stopped in
    /// the middle of it). The state must open under this coordinator's key, be of the current
    /// round on the current checkpoint, and be the one the audit log names for the last phase
    /// saved — or the one after it, saved but not yet recorded, which is recorded now (its
    /// output never went out). Otherwise the attempt is aborted and audited, the state deleted,
    /// and the task selects a new attempt. A state of a round that completed, or of an attempt
    /// the log says ended, is deleted.
    async fn resume_saved_attempt(&self, engine: &mut Engine, version: u64) -> Result<(), Status> {
        let id = engine.config().task_id;
        let internal = |e: crate::store::StoreError| Status::internal(e.to_string());
        let path = crate::store::CheckpointStore::attempt_state_path(id);
        let t = hex::encode(id.0);
        let stored = match self.store.attempt_state(id).await {
            Ok(stored) => stored.map(Ok),
            // Encrypted, and it does not open (changed, cut, another object, not encrypted):
            // refused like a changed state, the attempt aborts. A key the ring does not hold
            // is the configuration's fault: the start stops.
            Err(crate::store::StoreError::Sealed(e))
                if !matches!(e, fedsec_wire::at_rest::AtRestError::UnknownKey { .. }) =>
            {
                Some(Err(e.to_string()))
            }
            Err(e) => return Err(internal(e)),
        };
        let Some(stored) = stored else {
            // An attempt the log says was running, with no saved state (lost, or deleted):
            // it cannot resume; say so.
            let (audit_path, task_hex) = (self.audit_path.clone(), t.clone());
            let unfinished = tokio::task::spawn_blocking(move || {
                let open = crate::audit::unfinished_attempt(&audit_path, &task_hex)?;
                let Some((round, attempt)) = open else { return Ok(None) };
                let history = crate::audit::attempt_history(&audit_path, &task_hex, &attempt)?;
                let saved = !history.saved.is_empty();
                Ok::<_, crate::audit::AuditError>(Some((round, attempt, saved)))
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
            if let Some((round, attempt, saved)) = unfinished.filter(|(round, ..)| *round > version)
            {
                let reason = if saved {
                    format!("its saved state {path} is missing")
                } else {
                    "the coordinator stopped before its first phase close".to_owned()
                };
                tracing::error!(
                    round,
                    attempt,
                    "the attempt running when the coordinator stopped cannot resume: {reason}"
                );
                let reason = crate::error::AbortReason::CannotResume(reason).to_string();
                self.audit(
                    EntryKind::RoundAborted,
                    json!({ "task": t, "round": round, "attempt": attempt, "reason": reason }),
                )
                .await?;
            }
            return Ok(());
        };
        let opened = stored.and_then(|sealed| match saved::open(&self.signing, id, &sealed) {
            Ok(saved) => Ok((saved, sealed)),
            Err(e) => Err(e.to_string()),
        });
        let (saved, sealed) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                tracing::error!(%path, error = %e, "the saved attempt cannot resume; a new attempt starts");
                // The attempt the log says was running: the one the state was of, if authentic.
                let (audit_path, task_hex) = (self.audit_path.clone(), t.clone());
                let unfinished = tokio::task::spawn_blocking(move || {
                    crate::audit::unfinished_attempt(&audit_path, &task_hex)
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::internal(e.to_string()))?;
                let reason = crate::error::AbortReason::CannotResume(format!(
                    "the saved attempt state {path} is refused: {e}"
                ))
                .to_string();
                let detail = match unfinished.filter(|(round, _)| *round > version) {
                    Some((round, attempt)) => {
                        json!({ "task": t, "round": round, "attempt": attempt, "reason": reason })
                    }
                    None => json!({ "task": t, "reason": reason }),
                };
                self.audit(EntryKind::RoundAborted, detail).await?;
                self.store.delete_attempt_state(id).await.map_err(internal)?;
                return Ok(());
            }
        };
        let plan = saved.plan.clone();
        let attempt = hex::encode(plan.attempt.0);
        let audit_path = self.audit_path.clone();
        let (task_hex, attempt_hex) = (t.clone(), attempt.clone());
        let history = tokio::task::spawn_blocking(move || {
            crate::audit::attempt_history(&audit_path, &task_hex, &attempt_hex)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))?;
        if plan.round_id.0 <= version || history.ended {
            tracing::info!(%path, round = plan.round_id.0, "the saved attempt had ended; deleting its state");
            return self.store.delete_attempt_state(id).await.map_err(internal);
        }
        let closed = saved.closed().index() as u64;
        let digest: [u8; 32] = sha2::Sha256::digest(&sealed).into();
        let sha = hex::encode(digest);
        let ctx = saved.ctx();
        // Only entries this coordinator's key tagged count.
        let tagged = |phase: u64, sha: &str, tag: &str| {
            let mut digest = [0u8; 32];
            let phase = Phase::ALL.get(phase as usize).copied();
            let tag = hex::decode(tag).unwrap_or_default();
            hex::decode_to_slice(sha, &mut digest).is_ok()
                && phase.is_some_and(|p| {
                    saved::entry_tag_verifies(&self.signing, id, &ctx, p, &digest, &tag)
                })
        };
        let verified: Vec<(u64, &str)> = history
            .saved
            .iter()
            .filter(|(phase, h, tag)| tagged(*phase, h, tag))
            .map(|(phase, h, _)| (*phase, h.as_str()))
            .collect();
        let (recorded, one_behind) = saved::judge(closed, &sha, &verified);
        let highest = verified.iter().map(|(phase, _)| *phase).max();
        let now = std::time::Instant::now();
        let resumed = if recorded || one_behind {
            if !recorded {
                // Saved, then the coordinator stopped before recording it: its output never
                // went out. Recorded now, before it does.
                let tag = saved::entry_tag(&self.signing, id, &ctx, saved.closed(), &digest);
                self.audit(
                    EntryKind::PhaseSaved,
                    json!({ "task": t, "round": plan.round_id.0, "attempt": attempt,
                            "phase": closed, "state_sha256": sha, "tag": hex::encode(tag) }),
                )
                .await?;
            }
            engine.resume(saved, now)
        } else {
            let why = format!(
                "the saved state {path} (phase {closed}, SHA-256 {sha}) is not the one the audit log names last (phase {highest:?})"
            );
            engine.resume_refused(saved, crate::error::AbortReason::CannotResume(why))
        };
        match resumed {
            Ok(()) => {
                self.audit(
                    EntryKind::AttemptResumed,
                    json!({ "task": t, "round": plan.round_id.0, "attempt": attempt,
                            "after_phase": closed }),
                )
                .await
            }
            // Audited by the engine's outputs once the task runs; its state goes with them.
            Err(_) => Ok(()),
        }
    }

    /// Saves a phase close of the task's running attempt, records it, then lets the engine
    /// release the phase's replies. If it cannot be saved, the attempt aborts.
    async fn save_attempt(&self, task: &Arc<TaskRuntime>, saved: Box<crate::engine::SavedAttempt>) {
        let ctx = saved.ctx();
        let phase = saved.closed();
        let plan = saved.plan.clone();
        let contributors = saved.contributed.clone();
        let (signing, id) = (self.signing.clone(), task.id);
        let sealed = tokio::task::spawn_blocking(move || saved::seal(&signing, id, &saved)).await;
        let sealed = match sealed {
            Ok(s) => bytes::Bytes::from(s),
            Err(e) => {
                let why = format!("sealing it failed: {e}");
                task.call_detached(move |e, _| e.attempt_not_saved(&ctx, why));
                return;
            }
        };
        let digest: [u8; 32] = sha2::Sha256::digest(&sealed).into();
        let tag = saved::entry_tag(&self.signing, task.id, &ctx, phase, &digest);
        // Those sent shares are contributors on the checkpoint (they may upload): on disk
        // before the shares go out, so a restart does not select them again on it.
        if phase == Phase::ShareKeys {
            let stored = self.store.put_contributors(task.id, plan.checkpoint, &contributors).await;
            if let Err(e) = stored {
                let why = e.to_string();
                task.call_detached(move |e, _| e.attempt_not_saved(&ctx, why));
                return;
            }
        }
        let mut backoff = Duration::from_millis(50);
        let mut tries = 0;
        loop {
            let put = self.store.put_attempt_state(task.id, sealed.clone()).await;
            self.store_wrote(&put);
            let Err(e) = put else { break };
            tries += 1;
            tracing::error!(error = %e, phase = %phase.name(), "saving the attempt's state failed");
            if tries >= 3 {
                let why = e.to_string();
                task.call_detached(move |e, _| e.attempt_not_saved(&ctx, why));
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 4;
        }
        // Recorded (with every entry before it) before any client receives the phase's output.
        let recorded = self
            .audit(
                EntryKind::PhaseSaved,
                json!({ "task": hex::encode(task.id.0), "round": plan.round_id.0,
                        "attempt": hex::encode(plan.attempt.0), "phase": phase.index(),
                        "state_sha256": hex::encode(digest), "tag": hex::encode(tag) }),
            )
            .await;
        if let Err(e) = recorded {
            let why = format!("the audit log did not take it: {}", e.message());
            task.call_detached(move |e, _| e.attempt_not_saved(&ctx, why));
            return;
        }
        task.call_detached(move |e, now| e.attempt_saved(&ctx, phase, now));
    }

    /// The task's attempt ended: once its end is in the audit log (queued before this), its
    /// saved state is deleted, so a restart never resumes an attempt its clients were told
    /// had ended. (Should the deletion fail for good, the log's `round_aborted` or
    /// `round_completed` entry still keeps a restart from resuming it.)
    async fn attempt_ended(&self, task: &Arc<TaskRuntime>) {
        while !self.audit.flush(Duration::from_secs(10)).await {
            if !self.audit.is_running() {
                tracing::error!(
                    "the audit log's writer has stopped; the ended attempt's state stays"
                );
                return;
            }
            tracing::warn!("waiting for the audit log before deleting the ended attempt's state");
        }
        let mut backoff = Duration::from_millis(100);
        for _ in 0..5 {
            match self.store.delete_attempt_state(task.id).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(error = %e, "deleting the ended attempt's saved state failed");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }

    /// How many rounds of task `id` completed, its newest checkpoint being `version`: the
    /// round checkpoints along the chain of signed manifests from it down to version 0
    /// ([`rounds_in_chain`]).
    async fn completed_rounds(&self, id: TaskId, version: u64) -> Result<u64, Status> {
        let manifests = self.store.list(id).await.map_err(|e| Status::internal(e.to_string()))?;
        let by_version = manifests.into_iter().map(|m| (m.manifest.version, m)).collect();
        rounds_in_chain(version, &by_version, &self.verifying_key()).map_err(Status::internal)
    }

    /// Lets clients into the task's rounds.
    pub async fn start_task(&self, id: &TaskId) -> Result<(), Status> {
        let task = self.task(id)?;
        if task.started.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.audit_writable()?;
        self.audit(EntryKind::TaskStarted, json!({ "task": hex::encode(id.0) })).await?;
        // So that a restart lets clients in again at once (a task created through Admin).
        let signed = sign_task_file(&self.signing, STARTED_LABEL, *id, &[]);
        self.store
            .put_task_started(*id, signed.into())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        task.started.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Re-publishes task `id`'s model ([`Engine::republish`]) for the operator `by`: records
    /// it in the audit log (synced) before anything is stored, then stores and publishes it
    /// like a round's checkpoint. Returns the version it replaces and the new one once stored
    /// (`DEADLINE_EXCEEDED` if the store has not taken it within `within`: it goes on trying,
    /// and the version is published once stored).
    pub async fn republish(
        self: &Arc<Self>,
        id: TaskId,
        weights: Option<Model>,
        to_version: Option<u64>,
        by: String,
        reason: String,
        within: Duration,
    ) -> Result<(u64, u64), Status> {
        self.audit_writable()?;
        let task = self.task(&id)?;
        // On a task of its own from here: a caller that goes away (a timeout, Ctrl-C) stops
        // nothing half-way — the re-publication is stored, or given up, either way.
        let coordinator = self.clone();
        let job = tokio::spawn(async move {
            let operator = by.clone();
            let (checkpoint, what) = task
                .call(move |e, _| e.republish(weights, to_version, &operator))
                .await?
                .map_err(Status::from)?;
            let recorded = coordinator
                .audit(
                    EntryKind::ModelRepublished,
                    json!({ "task": hex::encode(id.0), "from_version": what.from_version,
                            "to_version": what.to_version,
                            "highest_reported": what.highest_reported,
                            "reports_left_out": what.reports_left_out,
                            "highest_signed": what.highest_signed,
                            "reports_never_published": what.reports_never_published,
                            "new_weights": what.new_weights,
                            "sha256": hex::encode(checkpoint.sha256.0), "by": by,
                            "reason": reason }),
                )
                .await;
            if let Err(e) = recorded {
                task.call_detached(|e, _| e.republish_abandoned());
                return Err(e);
            }
            coordinator.commit(&task, checkpoint).await;
            tracing::info!(
                from = what.from_version,
                to = what.to_version,
                new_weights = what.new_weights,
                "checkpoint version {} re-published as version {} by an operator",
                what.from_version,
                what.to_version
            );
            Ok((what.from_version, what.to_version))
        });
        match tokio::time::timeout(within, job).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => Err(Status::internal(format!("re-publishing the model: {e}"))),
            Err(_) => Err(Status::deadline_exceeded(
                "the re-published checkpoint is not stored yet; the coordinator goes on (its log \
                 says why), and the version is published once stored: its `checkpoint` audit \
                 entry confirms it",
            )),
        }
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
            let put = self.store.put(&manifest, shared(&c.bytes)).await;
            if !matches!(put, Err(crate::store::StoreError::VersionExists { .. })) {
                self.store_wrote(&put);
            }
            match put {
                Ok(()) => break,
                Err(crate::store::StoreError::VersionExists { .. }) => {
                    // Stored by an earlier try whose sync may have failed: sync it now.
                    let synced = self.store.sync_committed(task.id, c.version).await;
                    self.store_wrote(&synced);
                    match synced {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::error!(error = %e, version = c.version, "syncing the stored checkpoint failed; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, version = c.version, "storing the checkpoint failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        // On disk in the audit log (with every entry before it) before any client can see it.
        let recorded = self
            .audit(
                EntryKind::Checkpoint,
                json!({ "task": hex::encode(task.id.0), "version": c.version,
                        "parent": c.parent_version, "sha256": hex::encode(c.sha256.0),
                        "round": c.round_id.0 }),
            )
            .await;
        if let Err(e) = recorded {
            // Fail closed: a checkpoint the log does not record is never published.
            tracing::error!(error = %e.message(), version = c.version, "checkpoint stored but not published");
            return;
        }
        task.publish(Published { manifest: manifest.clone(), bytes: c.bytes.clone() });
        let version = c.version;
        match task.call(move |e, now| e.checkpoint_committed(version, now)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the engine refused the stored checkpoint"),
            Err(e) => tracing::error!(error = %e, "the engine call failed"),
        }
    }

    async fn audit_event(&self, task: &TaskRuntime, e: AuditEvent) {
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
            AuditEvent::TaskStalled {
                checkpoint_version,
                eligible,
                contributed,
                ahead,
                highest_reported,
                min_clients,
            } => (
                EntryKind::TaskStalled,
                json!({ "task": t, "checkpoint_version": checkpoint_version, "eligible": eligible,
                        "contributed": contributed, "ahead": ahead,
                        "highest_reported": highest_reported, "min_clients": min_clients }),
            ),
            AuditEvent::Complaints { round_id, attempt, record } => {
                let complaints: Vec<serde_json::Value> = record
                    .judged()
                    .iter()
                    .map(|j| {
                        json!({ "accused": j.accused.to_hex(), "judgement": j.judgement.to_string(),
                                "excluded": j.excluded().to_hex() })
                    })
                    .collect();
                (
                    EntryKind::Complaints,
                    json!({ "task": t, "round": round_id.0, "attempt": hex::encode(attempt.0),
                            "complainer": record.message.client.to_hex(),
                            "complaints": complaints,
                            "record": hex::encode(fedsec_crypto::secagg::messages::encode(&*record)) }),
                )
            }
            AuditEvent::Excluded { round_id, attempt, excluded } => (
                EntryKind::Excluded,
                json!({ "task": t, "round": round_id.0, "attempt": hex::encode(attempt.0),
                        "excluded": excluded.iter().map(ClientId::to_hex).collect::<Vec<_>>() }),
            ),
            AuditEvent::MisbehavingHolder { round_id, client } => (
                EntryKind::Refusal,
                json!({ "task": t, "round": round_id.0, "client": client.to_hex(),
                        "reason": "revealed a share that does not reconstruct" }),
            ),
        };
        // Queued, not waited for: the entries of a phase go to disk as one batch, and the
        // checkpoint that ends the round waits for all of them ([`Coordinator::commit`]).
        self.audit.submit(kind, detail);
    }
}

/// The rounds that made the checkpoints along the chain of manifests from `newest` down to
/// version 0, each manifest's signature checked: each manifest's parent is the version it was
/// made from, and a re-published one ([`REPUBLISHED_SUMMARY`]) is not a round. A manifest
/// missing from the chain is refused, naming it: without it the count is unknown (a
/// re-publication below it would be counted as rounds and the task could end early).
fn rounds_in_chain(
    newest: u64,
    manifests: &BTreeMap<u64, SignedManifest>,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<u64, String> {
    let mut rounds = 0;
    let mut version = newest;
    while version > 0 {
        let Some(m) = manifests.get(&version) else {
            return Err(format!(
                "the manifest of checkpoint version {version} is missing from the store (the chain \
                 from version {newest} down to 0 goes through it): the task's completed rounds \
                 cannot be counted; put it back from a backup"
            ));
        };
        m.verify(key)
            .map_err(|e| format!("the stored manifest of checkpoint version {version}: {e}"))?;
        if m.manifest.parent_version >= version {
            return Err(format!(
                "the manifest of checkpoint version {version} names a parent not below it"
            ));
        }
        if !m.manifest.round_summary.starts_with(REPUBLISHED_SUMMARY) {
            rounds += 1;
        }
        version = m.manifest.parent_version;
    }
    Ok(rounds)
}

const DEFINITION_LABEL: &[u8] = b"fedsec/v1/task-definition";
const STARTED_LABEL: &[u8] = b"fedsec/v1/task-started";

/// `signature ‖ content`, the signature by the coordinator's key over
/// `label ‖ task id ‖ content`, each length-prefixed.
fn sign_task_file(signing: &SigningKey, label: &[u8], task: TaskId, content: &[u8]) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let signature = signing.sign(&task_file_message(label, task, content));
    let mut out = signature.to_bytes().to_vec();
    out.extend_from_slice(content);
    out
}

/// The content of a [`sign_task_file`] file, if its signature verifies (strictly).
fn open_task_file<'a>(
    key: &ed25519_dalek::VerifyingKey,
    label: &[u8],
    task: TaskId,
    file: &'a [u8],
) -> Option<&'a [u8]> {
    let (signature, content) = file.split_at_checked(64)?;
    let signature = ed25519_dalek::Signature::from_slice(signature).ok()?;
    key.verify_strict(&task_file_message(label, task, content), &signature).ok()?;
    Some(content)
}

fn task_file_message(label: &[u8], task: TaskId, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + content.len() + 64);
    fedsec_crypto::kdf::push_lp(&mut out, label);
    fedsec_crypto::kdf::push_lp(&mut out, &task.0);
    fedsec_crypto::kdf::push_lp(&mut out, content);
    out
}

/// Holds the task's selection while the audit log fails, until the task is gone.
async fn hold_while_audit_fails(
    mut state: watch::Receiver<AuditState>,
    task: std::sync::Weak<TaskRuntime>,
) {
    let mut held = false;
    loop {
        let failing = matches!(*state.borrow_and_update(), AuditState::Failing { .. });
        if failing != held {
            let Some(task) = task.upgrade() else { return };
            held = failing;
            task.call_detached(move |e, now| e.hold_selection(failing, now));
        }
        if state.changed().await.is_err() {
            // The writer stopped: nothing can be recorded any more, so nothing new starts.
            if let Some(task) = task.upgrade() {
                task.call_detached(|e, now| e.hold_selection(true, now));
            }
            return;
        }
    }
}

/// The driver of one task: stores its checkpoints, writes its audit entries and progress
/// lines, in the order the engine emitted them. (Deadlines are the engine thread's.)
async fn drive(
    coordinator: Arc<Coordinator>,
    task: Arc<TaskRuntime>,
    mut outputs: mpsc::UnboundedReceiver<Output>,
) {
    let mut progress = progress::ProgressLog::new(task.name.clone());
    while let Some(output) = outputs.recv().await {
        match output {
            Output::Checkpoint(c) => coordinator.commit(&task, c).await,
            Output::Audit(e) => coordinator.audit_event(&task, e).await,
            Output::Progress(p) => {
                if let crate::engine::Progress::Ended(outcome) = &p {
                    coordinator.metrics.attempt_ended(&task.id, outcome);
                }
                progress.record(&p, std::time::Instant::now());
            }
            Output::SaveAttempt(saved) => coordinator.save_attempt(&task, saved).await,
            Output::AttemptEnded(_) => coordinator.attempt_ended(&task).await,
            // The engine thread runs the sums; none comes here.
            Output::Aggregate(_) => {}
        }
    }
}

impl crate::metrics::OpsSource for Coordinator {
    fn metrics_text(&self) -> String {
        for task in self.tasks.borrow().values() {
            self.metrics.checkpoint(&task.id, task.published().manifest.manifest.version);
        }
        self.metrics.render(self.audit.is_writing(), self.store_health.borrow().is_none())
    }

    fn unhealthy(&self) -> Option<String> {
        if let Err(status) = self.audit_writable() {
            return Some(status.message().to_owned());
        }
        self.store_health.borrow().as_ref().map(|e| format!("the store cannot be written: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedsec_crypto::CheckpointHash;

    fn signed(key: &SigningKey, version: u64, parent: u64, summary: &str) -> SignedManifest {
        Manifest {
            version,
            parent_version: parent,
            sha256: CheckpointHash([version as u8; 32]),
            size_bytes: 1,
            task_id: TaskId([1; 16]),
            round_summary: summary.into(),
        }
        .sign(key)
    }

    #[test]
    fn the_completed_rounds_are_the_round_checkpoints_along_the_signed_chain() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let vk = key.verifying_key();
        // Rounds made 1 and 2; the store went back to 1; 9 re-published 1; rounds made 10, 11;
        // 20 re-published 11 with new weights; a round made 21. Version 2 is off the chain.
        let chain = [
            (0, 0, "initial model"),
            (1, 0, "round 1"),
            (2, 1, "round 2"),
            (9, 1, "re-published version 1 as version 9 by op"),
            (10, 9, "round 2"),
            (11, 10, "round 3"),
            (20, 11, "re-published version 11 as version 20 by op with new weights"),
            (21, 20, "round 4"),
        ];
        let all: BTreeMap<u64, SignedManifest> =
            chain.iter().map(|&(v, p, s)| (v, signed(&key, v, p, s))).collect();
        assert_eq!(rounds_in_chain(21, &all, &vk), Ok(4));
        assert_eq!(rounds_in_chain(9, &all, &vk), Ok(1));
        assert_eq!(rounds_in_chain(2, &all, &vk), Ok(2));
        assert_eq!(rounds_in_chain(0, &all, &vk), Ok(0));
        // A summary changed to hide a re-publication breaks its signature: refused, named.
        let mut forged = all.clone();
        forged.get_mut(&20).unwrap().manifest.round_summary = "round 4".into();
        let err = rounds_in_chain(21, &forged, &vk).unwrap_err();
        assert!(err.contains("checkpoint version 20"), "{err}");
        // So does a manifest signed by another key.
        let mut foreign = all.clone();
        foreign.insert(10, signed(&SigningKey::from_bytes(&[6; 32]), 10, 9, "round 2"));
        assert!(rounds_in_chain(21, &foreign, &vk).is_err());
        // A manifest lost from the chain (below a re-publication, here) is refused, named.
        let mut lost = all;
        lost.remove(&10);
        let err = rounds_in_chain(21, &lost, &vk).unwrap_err();
        assert!(err.contains("checkpoint version 10 is missing"), "{err}");
    }
}
