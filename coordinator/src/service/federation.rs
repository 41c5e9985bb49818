//! The Federation service: what data-site clients call.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fedsec_crypto::secagg::Phase;
use fedsec_crypto::{ClientId, RoundContext};
use fedsec_proto::v1;
use fedsec_proto::v1::federation_server::Federation;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{CHECK_IN_LONG_POLL, LONG_POLL_SLACK, identify};
use crate::runtime::{Coordinator, TaskRuntime};
use fedsec_crypto::secagg::messages::{
    AdvertiseKeys, Complaints, ConsistencySignature, MaskedInput, ShareKeys, UnmaskingResponse,
};
use fedsec_wire::checkpoint::SignedManifest;
use fedsec_wire::{Assignment, PhaseMessage, RoundKey, Wire};

use crate::engine::{CheckIn, Reply, ShareKeysRoute};
use crate::wire;

/// Bytes of checkpoint per `ModelChunk`.
pub const DOWNLOAD_CHUNK_BYTES: usize = 1 << 20;

/// The Federation service over a [`Coordinator`].
#[derive(Debug, Clone)]
pub struct FederationService {
    coordinator: Arc<Coordinator>,
}

impl FederationService {
    /// The service.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        FederationService { coordinator }
    }

    /// The task a round key names, and the attempt's plan if it is the running one.
    fn round(&self, key: &RoundKey) -> Result<(Arc<TaskRuntime>, Option<Assignment>), Status> {
        let task = self.coordinator.task(&key.task)?;
        let info = task.view().current.clone().filter(|r| r.plan.context() == key.ctx);
        if let Some(info) = &info
            && (info.plan.round_id != key.round || info.plan.attempt != key.attempt)
        {
            return Err(Status::invalid_argument(
                "round: round_id and attempt do not match the round context",
            ));
        }
        Ok((task, info))
    }

    /// Waits for a client's reply to `phase` (the long-poll).
    async fn reply(
        task: &TaskRuntime,
        client: ClientId,
        ctx: RoundContext,
        phase: Phase,
    ) -> Result<Reply, Status> {
        let wait = task.phase_deadlines[phase.index()] + LONG_POLL_SLACK;
        let max = match phase {
            // The result waits for the aggregation and the checkpoint, after the deadline.
            Phase::Unmasking => wait + Duration::from_secs(60),
            _ => wait,
        };
        match task.await_reply(client, ctx, phase, max).await? {
            Some(r) => r.map_err(Status::from),
            None => Err(Status::deadline_exceeded(format!(
                "phase {} is still open; call again with the identical message",
                Phase::name(phase)
            ))),
        }
    }
}

fn unexpected(reply: &Reply) -> Status {
    Status::internal(format!("the engine replied out of order: {reply:?}"))
}

type ModelStream = Pin<Box<dyn Stream<Item = Result<v1::ModelChunk, Status>> + Send>>;

/// The signed manifest, then the checkpoint's bytes in chunks of [`DOWNLOAD_CHUNK_BYTES`].
fn model_stream(manifest: SignedManifest, bytes: Arc<Vec<u8>>) -> ModelStream {
    let head = v1::ModelChunk { part: Some(v1::model_chunk::Part::Manifest(manifest.to_wire())) };
    let chunks = bytes.len().div_ceil(DOWNLOAD_CHUNK_BYTES);
    // Chunks are cut as the stream is polled, so a large model is never copied whole.
    let body = futures::stream::iter(0..chunks).map(move |i| {
        let end = ((i + 1) * DOWNLOAD_CHUNK_BYTES).min(bytes.len());
        Ok(v1::ModelChunk {
            part: Some(v1::model_chunk::Part::Data(bytes[i * DOWNLOAD_CHUNK_BYTES..end].to_vec())),
        })
    });
    Box::pin(futures::stream::once(async { Ok(head) }).chain(body))
}

#[tonic::async_trait]
impl Federation for FederationService {
    async fn check_in(
        &self,
        req: Request<v1::CheckInRequest>,
    ) -> Result<Response<v1::CheckInResponse>, Status> {
        let client = identify(&self.coordinator, &req)?;
        let task = self.coordinator.task(&wire::task_id(&req.get_ref().task_id)?)?;
        if !task.started.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Response::new(retry(Duration::from_secs(5), "the task has not started")));
        }
        if self.coordinator.audit_writable().is_err() {
            // Fail closed: nothing new happens that the log could not record.
            let reason = "the coordinator cannot write its audit log; no round starts until it can";
            return Ok(Response::new(retry(Duration::from_secs(5), reason)));
        }
        let verifier = (self.coordinator.verifier)();
        // The client's hint: the checkpoint its ledger says it uploaded on (32 bytes, or none).
        let hint = match req.get_ref().contributed_on_checkpoint.as_slice() {
            [] => None,
            bytes => Some(fedsec_crypto::CheckpointHash(bytes.try_into().map_err(|_| {
                Status::invalid_argument(format!(
                    "contributed_on_checkpoint: {} bytes; a checkpoint's SHA-256 is 32, or none",
                    bytes.len()
                ))
            })?)),
        };
        // The newest checkpoint the client has seen: it refuses any older one (a rollback).
        let seen = req.get_ref().last_seen_checkpoint_version;
        let (first, at) = task
            .call(move |e, now| {
                e.set_verifier(verifier);
                e.seen_version(client, seen);
                if let Some(checkpoint) = hint {
                    e.contributed_hint(client, &checkpoint);
                }
                (e.check_in(client, now), now)
            })
            .await?;
        let answer = match first {
            CheckIn::Pending => {
                // Withdraw the check-in if the client goes away while waiting.
                let guard = Withdraw { task: task.clone(), client, at, armed: true };
                let answer = task.await_selection(client, CHECK_IN_LONG_POLL).await;
                guard.disarm();
                answer?.unwrap_or(CheckIn::RetryLater {
                    after: Duration::ZERO,
                    reason: "still waiting for selection".into(),
                })
            }
            other => other,
        };
        Ok(Response::new(match answer {
            CheckIn::Selected(info) => v1::CheckInResponse {
                outcome: Some(v1::check_in_response::Outcome::Plan(info.to_wire())),
            },
            CheckIn::RetryLater { after, reason } => retry(after, &reason),
            CheckIn::Finished => v1::CheckInResponse {
                outcome: Some(v1::check_in_response::Outcome::Finished(v1::TaskFinished {
                    final_checkpoint_version: task.view().status.checkpoint_version,
                })),
            },
            CheckIn::Pending => retry(Duration::ZERO, "still waiting for selection"),
        }))
    }

    type DownloadModelStream = ModelStream;

    async fn download_model(
        &self,
        req: Request<v1::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let client = identify(&self.coordinator, &req)?;
        let key = wire::round_key(req.get_ref().round.as_ref())?;
        let (task, info) = self.round(&key)?;
        let info = info.ok_or_else(|| {
            Status::failed_precondition("no running attempt has this round context")
        })?;
        if info.plan.index_of(&client).is_none() {
            return Err(crate::Error::NotSelected(client).into());
        }
        let published = task.published();
        let (manifest, bytes) = if published.manifest.manifest.version == info.checkpoint_version {
            (published.manifest, published.bytes)
        } else {
            let (m, b) = self
                .coordinator
                .store
                .get(key.task, info.checkpoint_version)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            (m, Arc::new(b.to_vec()))
        };
        // Charged in full before anything is sent: a download dropped half-way costs the whole
        // checkpoint, so asking for it again and again is bounded by the model-bytes rate.
        if let Some(rate) = self.coordinator.rate_limits() {
            rate.check_model_bytes(&client, bytes.len() as u64)?;
        }
        Ok(Response::new(model_stream(manifest, bytes)))
    }

    type DownloadFinalModelStream = ModelStream;

    async fn download_final_model(
        &self,
        req: Request<v1::DownloadFinalModelRequest>,
    ) -> Result<Response<Self::DownloadFinalModelStream>, Status> {
        let client = identify(&self.coordinator, &req)?;
        let id = wire::task_id(&req.get_ref().task_id)?;
        let task = self.coordinator.task(&id)?;
        if !task.view().finished() {
            return Err(Status::failed_precondition(
                "the task has not finished; its checkpoints come with the rounds",
            ));
        }
        if !task.call(move |e, _| e.is_enrolled(&client)).await? {
            return Err(Status::permission_denied(format!(
                "client {} did not check in to this task before it finished",
                client.to_hex()
            )));
        }
        let published = task.published();
        // The same model-bytes rate as a round's download.
        if let Some(rate) = self.coordinator.rate_limits() {
            rate.check_model_bytes(&client, published.bytes.len() as u64)?;
        }
        task.call(move |e, _| e.final_model_sent(client)).await?;
        Ok(Response::new(model_stream(published.manifest, published.bytes)))
    }

    async fn advertise_keys(
        &self,
        req: Request<v1::AdvertiseKeysRequest>,
    ) -> Result<Response<v1::AdvertiseKeysResponse>, Status> {
        let client = identify(&self.coordinator, &req)?;
        let msg: AdvertiseKeys = wire::decode(req.get_ref(), client)?;
        let key = wire::round_key(req.get_ref().round.as_ref())?;
        let (task, _) = self.round(&key)?;
        task.call(move |e, now| e.advertise(client, msg, now)).await??;
        match Self::reply(&task, client, key.ctx, Phase::AdvertiseKeys).await? {
            Reply::Keys(fwd) => Ok(Response::new(fwd.to_wire(&key))),
            other => Err(unexpected(&other)),
        }
    }

    async fn share_keys(
        &self,
        req: Request<v1::ShareKeysRequest>,
    ) -> Result<Response<v1::ShareKeysResponse>, Status> {
        let client = identify(&self.coordinator, &req)?;
        let msg: ShareKeys = wire::decode(req.get_ref(), client)?;
        let key = wire::round_key(req.get_ref().round.as_ref())?;
        let (task, _) = self.round(&key)?;
        // The checks of the message (signature, commitments, degree test) run off the engine,
        // on the server's cores, while the phase waits for the others. Each exchange with the
        // engine that may hand out a checker runs detached from the call, so that its verdict
        // reaches the engine even if the call goes away (a dealer whose check fails is refused
        // for the attempt however it leaves; no client is left marked as being checked). A
        // resend of a message being checked waits, in the call, for that verdict.
        let ctx = msg.ctx;
        let mut msg = msg;
        loop {
            let pool = self.coordinator.pool();
            let engine = task.clone();
            let exchange = tokio::spawn(async move {
                let route = engine.call(move |e, now| e.share_keys_route(client, msg, now));
                match route.await? {
                    ShareKeysRoute::Answered(answer) => answer.map(|()| None).map_err(Status::from),
                    ShareKeysRoute::Pending(same, done) => Ok(Some((same, done))),
                    ShareKeysRoute::Check(check, msg) => {
                        let verdict = off_engine(pool, move || check.check(client, msg)).await;
                        let taken = engine
                            .call(move |e, now| e.checked_share_keys(client, &ctx, verdict, now));
                        taken.await?.map(|()| None).map_err(Status::from)
                    }
                }
            });
            let pending = exchange.await.map_err(|_| Status::from(crate::Error::CheckNotRun))??;
            match pending {
                None => break,
                Some((same, mut done)) => {
                    // Ends when the verdict is in (the sender is dropped); then ask again.
                    while done.changed().await.is_ok() {}
                    msg = same;
                }
            }
        }
        match Self::reply(&task, client, key.ctx, Phase::ShareKeys).await? {
            Reply::Shares(fwd) => Ok(Response::new(fwd.to_wire(&key))),
            other => Err(unexpected(&other)),
        }
    }

    async fn complaints(
        &self,
        req: Request<v1::ComplaintsRequest>,
    ) -> Result<Response<v1::ComplaintsResponse>, Status> {
        let client = identify(&self.coordinator, &req)?;
        let msg: Complaints = wire::decode(req.get_ref(), client)?;
        let key = wire::round_key(req.get_ref().round.as_ref())?;
        let (task, _) = self.round(&key)?;
        task.call(move |e, now| e.complaints(client, msg, now)).await??;
        match Self::reply(&task, client, key.ctx, Phase::Complaints).await? {
            Reply::Excluded(e) => Ok(Response::new(e.to_wire(&key))),
            other => Err(unexpected(&other)),
        }
    }

    async fn upload_masked_input(
        &self,
        req: Request<Streaming<v1::MaskedInputChunk>>,
    ) -> Result<Response<v1::UploadMaskedInputResponse>, Status> {
        let client = identify(&self.coordinator, &req)?;
        let mut stream = req.into_inner();
        let mut round: Option<(RoundKey, Arc<TaskRuntime>)> = None;
        while let Some(chunk) = stream.message().await? {
            let key = wire::round_key(chunk.round.as_ref())?;
            let msg: MaskedInput = wire::decode(&chunk, client)?;
            let task = match &round {
                Some((k, _)) if *k != key => {
                    return Err(Status::invalid_argument(
                        "round: every chunk of an upload names the same attempt",
                    ));
                }
                Some((_, task)) => task.clone(),
                None => {
                    let (task, _) = self.round(&key)?;
                    round = Some((key, task.clone()));
                    task
                }
            };
            task.call(move |e, now| e.masked_input(client, &msg, now)).await??;
        }
        let Some((key, task)) = round else {
            return Err(Status::invalid_argument("the upload holds no chunk"));
        };
        let ctx = key.ctx;
        if !task.call(move |e, _| e.has_uploaded(&client, &ctx)).await? {
            return Err(Status::failed_precondition(
                "the upload ended before the whole masked input arrived; send the missing chunks",
            ));
        }
        match Self::reply(&task, client, ctx, Phase::MaskedInputCollection).await? {
            Reply::Survivors(req) => Ok(Response::new(req.to_wire(&key))),
            other => Err(unexpected(&other)),
        }
    }

    async fn consistency_check(
        &self,
        req: Request<v1::ConsistencyCheckRequest>,
    ) -> Result<Response<v1::ConsistencyCheckResponse>, Status> {
        let client = identify(&self.coordinator, &req)?;
        let msg: ConsistencySignature = wire::decode(req.get_ref(), client)?;
        let key = wire::round_key(req.get_ref().round.as_ref())?;
        let (task, _) = self.round(&key)?;
        task.call(move |e, now| e.consistency(client, msg, now)).await??;
        match Self::reply(&task, client, key.ctx, Phase::ConsistencyCheck).await? {
            Reply::Unmask(req) => Ok(Response::new(req.to_wire(&key))),
            other => Err(unexpected(&other)),
        }
    }

    async fn unmask(
        &self,
        req: Request<v1::UnmaskRequest>,
    ) -> Result<Response<v1::RoundResult>, Status> {
        let client = identify(&self.coordinator, &req)?;
        let msg: UnmaskingResponse = wire::decode(req.get_ref(), client)?;
        let key = wire::round_key(req.get_ref().round.as_ref())?;
        let (task, _) = self.round(&key)?;
        task.call(move |e, now| e.unmasking(client, msg, now)).await??;
        match Self::reply(&task, client, key.ctx, Phase::Unmasking).await? {
            Reply::Result(r) => Ok(Response::new(wire::result_to_wire(&r, key.task))),
            other => Err(unexpected(&other)),
        }
    }

    async fn get_round_result(
        &self,
        req: Request<v1::GetRoundResultRequest>,
    ) -> Result<Response<v1::RoundResult>, Status> {
        identify(&self.coordinator, &req)?;
        let key = wire::round_key(req.get_ref().round.as_ref())?;
        let task = self.coordinator.task(&key.task)?;
        let view = task.view();
        match view.result(&key.ctx) {
            Some(r) => Ok(Response::new(wire::result_to_wire(r, key.task))),
            None if view.current.as_ref().is_some_and(|r| r.plan.context() == key.ctx) => {
                Err(Status::unavailable("the round is still running"))
            }
            None => Err(Status::not_found("no round with this context is known")),
        }
    }
}

fn retry(after: Duration, reason: &str) -> v1::CheckInResponse {
    v1::CheckInResponse {
        outcome: Some(v1::check_in_response::Outcome::Retry(v1::RetryLater {
            after_ms: after.as_millis().min(u32::MAX as u128) as u32,
            reason: reason.into(),
        })),
    }
}

/// Withdraws a waiting check-in when the call is dropped (the client went away).
struct Withdraw {
    task: Arc<TaskRuntime>,
    client: ClientId,
    /// When the check-in was taken: a later check-in of the same client is not withdrawn.
    at: std::time::Instant,
    armed: bool,
}

impl Withdraw {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if self.armed {
            let (client, at) = (self.client, self.at);
            self.task.call_detached(move |e, _| e.withdraw_check_in(&client, at));
        }
    }
}

/// Runs `f` on the server's pool if it has one, else on tokio's blocking threads: CPU work that
/// must not hold up the engine or the async workers. `None` if it panicked (the panic stays
/// with the call: the pool and the process go on).
async fn off_engine<T: Send + 'static>(
    pool: Option<Arc<rayon::ThreadPool>>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let guarded = move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
    match pool {
        Some(pool) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            pool.spawn(move || {
                let _ = tx.send(guarded());
            });
            rx.await.ok().flatten()
        }
        None => tokio::task::spawn_blocking(guarded).await.ok().flatten(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A check that panics fails its own call: the pool (or the blocking threads) and the
    /// process go on, and the next check runs.
    #[tokio::test]
    async fn a_check_that_panics_fails_alone() {
        let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap());
        for pool in [Some(pool), None] {
            let panicked: Option<u32> =
                off_engine(pool.clone(), || panic!("a check that panics")).await;
            assert_eq!(panicked, None);
            assert_eq!(off_engine(pool, || 7).await, Some(7));
        }
    }
}
