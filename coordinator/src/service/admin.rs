//! The Admin service: what the operator calls. Only operator identities (the `admins` list of
//! the configuration) may call it over mutual TLS.

use std::sync::Arc;
use std::time::Duration;

use fedsec_crypto::TaskId;
use fedsec_crypto::secagg::Phase;
use fedsec_proto::v1;
use fedsec_proto::v1::admin_server::Admin;
use fedsec_wire::model::Model;
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::audit::EntryKind;
use crate::engine::{EngineState, PhaseDeadlines, TaskConfig};
use crate::runtime::{AuthMode, Coordinator};
use crate::wire;
use fedsec_wire::Wire;

/// The longest reason an operator may give for a re-publication (it goes in the audit log).
const MAX_REASON_BYTES: usize = 1024;

/// How long `RepublishModel` waits for the new checkpoint to be stored.
const REPUBLISH_WAIT: Duration = Duration::from_secs(60);

/// The Admin service over a [`Coordinator`].
#[derive(Debug, Clone)]
pub struct AdminService {
    coordinator: Arc<Coordinator>,
}

impl AdminService {
    /// The service.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        AdminService { coordinator }
    }

    /// A task's state and its recent attempts.
    fn task_status(&self, id: TaskId) -> Result<v1::TaskStatus, Status> {
        let task = self.coordinator.task(&id)?;
        let started = task.started.load(std::sync::atomic::Ordering::SeqCst);
        let view = task.view();
        let s = &view.status;
        let state = match (started, s.state) {
            (false, _) => "created",
            (true, EngineState::Finished) => "finished",
            (true, _) => "running",
        };
        Ok(v1::TaskStatus {
            task_id: id.0.to_vec(),
            name: task.name.clone(),
            state: state.into(),
            round_id: s.round_id.0,
            phase: s.phase.map_or(s.state.name(), Phase::name).into(),
            checked_in: s.waiting as u32,
            checkpoint_version: s.checkpoint_version,
            recent_rounds: view.recent.iter().map(|r| wire::result_to_wire(r, id)).collect(),
            stalled: s.stalled.clone().unwrap_or_default(),
        })
    }

    fn operator<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let c = &self.coordinator;
        match c.auth {
            AuthMode::InsecureLoopback => Ok("insecure-loopback".into()),
            AuthMode::MutualTls => {
                let id = crate::auth::authenticate(req, &c.deny)?.id;
                if c.admins.contains(&id) {
                    Ok(id.to_hex())
                } else {
                    Err(Status::permission_denied(format!(
                        "{} is not an operator of this coordinator",
                        id.to_hex()
                    )))
                }
            }
        }
    }
}

/// A task configuration from a `CreateTaskRequest`, with the defaults of [`TaskConfig::new`]
/// for fields left at zero.
pub fn task_config(req: &v1::CreateTaskRequest, id: TaskId) -> Result<TaskConfig, Status> {
    let mut c = TaskConfig::new(id, req.name.clone(), req.clients_per_round as usize);
    if req.min_clients > 0 {
        c.min_clients = req.min_clients as usize;
    }
    if req.over_selection != 0.0 {
        c.over_selection = req.over_selection;
    }
    // Left unspecified, the graph and the class take the defaults of `TaskConfig::new`.
    let bad = |e: fedsec_wire::WireError| Status::invalid_argument(e.to_string());
    if let Some(graph) = fedsec_wire::graph_from_wire("graph", req.graph).map_err(bad)? {
        c.graph = graph;
    }
    if let Some(class) =
        fedsec_wire::adversary_from_wire("adversary", req.adversary).map_err(bad)?
    {
        c.adversary = class;
    }
    if req.dropout_ppm > 0 {
        c.dropout_ppm = req.dropout_ppm;
    }
    if req.corrupt_ppm > 0 {
        c.corrupt_ppm = req.corrupt_ppm;
    }
    if req.clip != 0.0 {
        c.clip = req.clip;
    }
    if req.max_examples > 0 {
        c.max_examples = req.max_examples;
    }
    if req.server_learning_rate != 0.0 {
        c.server_learning_rate = req.server_learning_rate as f32;
    }
    if req.rounds > 0 {
        c.rounds = req.rounds as u64;
    }
    if req.selection_ms > 0 {
        c.deadlines.selection = Duration::from_millis(req.selection_ms as u64);
    }
    if !req.phase_deadline_ms.is_empty() {
        let d: Vec<Duration> =
            req.phase_deadline_ms.iter().map(|&ms| Duration::from_millis(ms as u64)).collect();
        let [a, s, x, m, k, u] = d[..] else {
            return Err(Status::invalid_argument(format!(
                "phase_deadline_ms: {} values, expected 6",
                d.len()
            )));
        };
        c.deadlines = PhaseDeadlines {
            selection: c.deadlines.selection,
            advertise_keys: a,
            share_keys: s,
            complaints: x,
            masked_input: m,
            consistency: k,
            unmasking: u,
        };
    }
    if req.upload_chunk_words > 0 {
        c.upload_chunk_words = req.upload_chunk_words;
    }
    c.validate().map_err(Status::from)?;
    Ok(c)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_task(
        &self,
        req: Request<v1::CreateTaskRequest>,
    ) -> Result<Response<v1::CreateTaskResponse>, Status> {
        let operator = self.operator(&req)?;
        let mut id = [0u8; 16];
        rand_core::Rng::fill_bytes(&mut fedsec_crypto::rng::os_rng(), &mut id);
        let config = task_config(req.get_ref(), TaskId(id))?;
        let model = Model::from_safetensors(&req.get_ref().initial_checkpoint)
            .map_err(|e| Status::invalid_argument(format!("initial_checkpoint: {e}")))?;
        // Saved without the model (that is checkpoint 0): a restart creates the task again.
        let mut definition = req.get_ref().clone();
        definition.initial_checkpoint.clear();
        let definition = prost::Message::encode_to_vec(&definition).into();
        let id = self.coordinator.create_admin_task(config, model, definition).await?;
        self.coordinator
            .audit(
                EntryKind::Admin,
                json!({ "action": "create_task", "task": hex::encode(id.0), "operator": operator }),
            )
            .await?;
        Ok(Response::new(v1::CreateTaskResponse { task_id: id.0.to_vec() }))
    }

    async fn start_task(
        &self,
        req: Request<v1::StartTaskRequest>,
    ) -> Result<Response<v1::StartTaskResponse>, Status> {
        self.operator(&req)?;
        let id = wire::task_id(&req.get_ref().task_id)?;
        self.coordinator.start_task(&id).await?;
        Ok(Response::new(v1::StartTaskResponse {}))
    }

    async fn get_task_status(
        &self,
        req: Request<v1::TaskStatusRequest>,
    ) -> Result<Response<v1::TaskStatus>, Status> {
        self.operator(&req)?;
        let id = wire::task_id(&req.get_ref().task_id)?;
        Ok(Response::new(self.task_status(id)?))
    }

    async fn list_tasks(
        &self,
        req: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        self.operator(&req)?;
        let tasks = self
            .coordinator
            .task_ids()
            .into_iter()
            .map(|id| self.task_status(id))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v1::ListTasksResponse { tasks }))
    }

    async fn list_checkpoints(
        &self,
        req: Request<v1::ListCheckpointsRequest>,
    ) -> Result<Response<v1::ListCheckpointsResponse>, Status> {
        self.operator(&req)?;
        let id = wire::task_id(&req.get_ref().task_id)?;
        self.coordinator.task(&id)?;
        let list =
            self.coordinator.store.list(id).await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(v1::ListCheckpointsResponse {
            checkpoints: list.iter().map(Wire::to_wire).collect(),
        }))
    }

    async fn republish_model(
        &self,
        req: Request<v1::RepublishModelRequest>,
    ) -> Result<Response<v1::RepublishModelResponse>, Status> {
        let operator = self.operator(&req)?;
        let r = req.into_inner();
        let id = wire::task_id(&r.task_id)?;
        self.coordinator.task(&id)?;
        if r.reason.len() > MAX_REASON_BYTES {
            return Err(Status::invalid_argument(format!(
                "reason: {} bytes, at most {MAX_REASON_BYTES}",
                r.reason.len()
            )));
        }
        let weights = match r.model.as_slice() {
            [] => None,
            bytes => Some(
                Model::from_safetensors(bytes)
                    .map_err(|e| Status::invalid_argument(format!("model: {e}")))?,
            ),
        };
        let to_version = (r.to_version > 0).then_some(r.to_version);
        let (from_version, version) = self
            .coordinator
            .republish(id, weights, to_version, operator, r.reason, REPUBLISH_WAIT)
            .await?;
        Ok(Response::new(v1::RepublishModelResponse { from_version, checkpoint_version: version }))
    }

    async fn reload_deny_list(
        &self,
        req: Request<v1::ReloadDenyListRequest>,
    ) -> Result<Response<v1::ReloadDenyListResponse>, Status> {
        let operator = self.operator(&req)?;
        // Reading the file is blocking IO: off the async workers.
        let deny = self.coordinator.deny.clone();
        let denied = tokio::task::spawn_blocking(move || deny.reload())
            .await
            .map_err(|e| Status::internal(format!("deny-list reload failed: {e}")))?
            .map_err(|e| Status::failed_precondition(format!("deny-list not reloaded: {e}")))?;
        // Denied clients lose their connections and their place in any selection at once.
        let closed = self.coordinator.shut_out(self.coordinator.deny.ids()).await;
        self.coordinator
            .audit(
                EntryKind::DenyListReloaded,
                json!({ "denied": denied, "operator": operator, "connections_closed": closed }),
            )
            .await?;
        Ok(Response::new(v1::ReloadDenyListResponse { denied: denied as u32 }))
    }
}
