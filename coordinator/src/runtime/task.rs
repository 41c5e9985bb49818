//! One training task at run time: its engine, owned by one thread (an actor), and the handle
//! the gRPC adapter holds.
//!
//! * **Calls.** A handler sends its engine call over a bounded channel ([`TaskRuntime::call`])
//!   and awaits the reply; when the channel is full, callers wait their turn (backpressure),
//!   nothing is dropped. The engine thread takes commands in batches, runs them, then settles:
//!   hands out what the engine emitted, publishes the [`View`], and answers the long-polls
//!   whose answer is ready.
//! * **Reads** (status, the running plan, round results, the published checkpoint) take the
//!   latest [`View`], never the engine: they do not wait for it, whatever it is doing.
//! * **Long-polls** ([`TaskRuntime::await_reply`], [`TaskRuntime::await_selection`]) are
//!   parked with the engine thread and answered once, when their own answer is ready: after
//!   the phase closed, the attempt ended, or the selection happened. The engine thread looks
//!   at the parked calls only when the engine's state, phase, round or results changed — not
//!   after every message.
//! * **The sum** ([`Output::Aggregate`]) runs on a blocking thread; its result comes back as a
//!   command. Storing checkpoints and writing the audit log run on the async runtime, in the
//!   task's driver ([`super::drive`]). So the engine thread only does the engine's bookkeeping
//!   and the protocol's per-message checks, and no async worker ever runs an engine call.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedsec_crypto::secagg::Phase;
use fedsec_crypto::{ClientId, RoundContext, TaskId};
use fedsec_wire::checkpoint::SignedManifest;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

use crate::engine::{
    Aggregated, Aggregation, Assignment, CheckIn, Engine, EngineState, Output, Reply, RoundOutcome,
    Status as EngineStatus,
};

/// Commands that may wait for the engine thread before callers wait for room in its queue.
const COMMAND_QUEUE: usize = 1024;

/// Commands the engine thread runs before it settles (publishes and answers long-polls).
const BATCH: usize = 64;

/// The checkpoint clients download now.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub manifest: SignedManifest,
    pub bytes: Arc<Vec<u8>>,
}

/// What readers see of a task without asking its engine: published after every change.
#[derive(Debug, Clone)]
pub struct View {
    /// The engine's status.
    pub status: EngineStatus,
    /// The running attempt's plan, if any.
    pub current: Option<Assignment>,
    /// The finished attempts the engine remembers, oldest first (shared between views).
    pub recent: Arc<Vec<RoundOutcome>>,
    /// Whether the task has finished and every client that took part asked for the final
    /// checkpoint.
    pub everyone_has_the_final_model: bool,
}

impl View {
    fn of(engine: &Engine, recent: Arc<Vec<RoundOutcome>>) -> View {
        View {
            status: engine.status(),
            current: engine.current_round().cloned(),
            recent,
            everyone_has_the_final_model: engine.everyone_has_the_final_model(),
        }
    }

    /// The outcome of a finished attempt, if the engine still remembers it.
    pub fn result(&self, ctx: &RoundContext) -> Option<&RoundOutcome> {
        self.recent.iter().rev().find(|r| r.ctx == *ctx)
    }

    /// True once the task has run all its rounds.
    pub fn finished(&self) -> bool {
        self.status.state == EngineState::Finished
    }
}

/// An engine call; what it returns sends the caller its answer, once the engine thread has
/// published what the call changed (a caller then always sees its own change in the view).
type Job = Box<dyn FnOnce(&mut Engine, Instant) -> Deliver + Send>;
type Deliver = Box<dyn FnOnce() + Send>;

enum Command {
    /// Run this on the engine (it sends its own reply).
    Call(Job),
    /// Answer once `client`'s reply to `phase` of `ctx` is ready.
    AwaitReply {
        client: ClientId,
        ctx: RoundContext,
        phase: Phase,
        tx: oneshot::Sender<crate::Result<Reply>>,
    },
    /// Answer once `client`'s check-in is no longer pending.
    AwaitSelection { client: ClientId, tx: oneshot::Sender<CheckIn> },
    /// The sum of the finishing attempt.
    Aggregated(Box<Aggregated>),
    /// The sum of this attempt failed (the computation panicked).
    AggregationFailed(RoundContext),
}

/// One training task: the handle to its engine thread, what it publishes, and its settings
/// that never change.
pub struct TaskRuntime {
    pub(crate) id: TaskId,
    pub(crate) name: String,
    /// Each phase's deadline, from its opening.
    pub(crate) phase_deadlines: [Duration; 6],
    /// The vector length d (the model's parameters and the weight).
    pub(crate) dim: usize,
    /// Words per masked-input chunk.
    pub(crate) chunk_words: u32,
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<View>>,
    published: watch::Sender<Published>,
    pub(crate) started: std::sync::atomic::AtomicBool,
}

impl core::fmt::Debug for TaskRuntime {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TaskRuntime").field("id", &self.id).finish_non_exhaustive()
    }
}

fn stopped() -> Status {
    Status::unavailable("the task's engine has stopped")
}

impl TaskRuntime {
    /// Starts the engine's thread. Returns the handle, and the receiver of what the engine
    /// asks of the outside (checkpoints to store, audit entries, progress) for the driver.
    pub(crate) fn start(
        id: TaskId,
        engine: Engine,
        published: Published,
        started: bool,
    ) -> std::io::Result<(Arc<TaskRuntime>, mpsc::UnboundedReceiver<Output>)> {
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let (outputs, outputs_rx) = mpsc::unbounded_channel();
        let recent = Arc::new(engine.recent_results().cloned().collect::<Vec<_>>());
        let (view_tx, view) = watch::channel(Arc::new(View::of(&engine, recent.clone())));
        let task = Arc::new(TaskRuntime {
            id,
            name: engine.config().name.clone(),
            phase_deadlines: engine.config().deadlines.phases(),
            dim: engine.model().len() + 1,
            chunk_words: engine.config().upload_chunk_words,
            commands: commands.clone(),
            view,
            published: watch::channel(published).0,
            started: std::sync::atomic::AtomicBool::new(started),
        });
        let actor = Actor {
            results_seen: engine.results_changes(),
            epoch: Epoch::of(&engine),
            engine,
            commands: rx,
            to_self: commands.downgrade(),
            outputs,
            view: view_tx,
            recent,
            replies: Vec::new(),
            selections: BTreeMap::new(),
            parked_after_prune: 0,
            answers: Vec::new(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        std::thread::Builder::new()
            .name(format!("engine-{}", &hex::encode(id.0)[..8]))
            .spawn(move || runtime.block_on(actor.run()))?;
        Ok((task, outputs_rx))
    }

    /// Runs `f` on the engine (on its thread) and returns what it returned.
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine, Instant) -> R + Send + 'static,
    ) -> Result<R, Status> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |engine, now| {
            let answer = f(engine, now);
            // The caller may have gone; its answer is not needed then.
            Box::new(move || {
                let _ = tx.send(answer);
            })
        });
        self.commands.send(Command::Call(job)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| Status::internal("the task's engine failed during the call"))
    }

    /// Runs `f` on the engine without waiting for it (for a call being dropped).
    pub(crate) fn call_detached(&self, f: impl FnOnce(&mut Engine, Instant) + Send + 'static) {
        let command = Command::Call(Box::new(move |engine, now| {
            f(engine, now);
            Box::new(|| {})
        }));
        if let Err(mpsc::error::TrySendError::Full(command)) = self.commands.try_send(command) {
            let commands = self.commands.clone();
            tokio::spawn(async move { commands.send(command).await });
        }
    }

    /// Waits up to `max` for `client`'s reply to `phase` of the attempt `ctx`: `None` if it
    /// was not ready by then.
    pub(crate) async fn await_reply(
        &self,
        client: ClientId,
        ctx: RoundContext,
        phase: Phase,
        max: Duration,
    ) -> Result<Option<crate::Result<Reply>>, Status> {
        let (tx, rx) = oneshot::channel();
        let command = Command::AwaitReply { client, ctx, phase, tx };
        self.commands.send(command).await.map_err(|_| stopped())?;
        match tokio::time::timeout(max, rx).await {
            Ok(Ok(reply)) => Ok(Some(reply)),
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Ok(None),
        }
    }

    /// Waits up to `max` for `client`'s pending check-in to be decided: `None` if it was not
    /// by then.
    pub(crate) async fn await_selection(
        &self,
        client: ClientId,
        max: Duration,
    ) -> Result<Option<CheckIn>, Status> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::AwaitSelection { client, tx }).await.map_err(|_| stopped())?;
        match tokio::time::timeout(max, rx).await {
            Ok(Ok(answer)) => Ok(Some(answer)),
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Ok(None),
        }
    }

    /// The latest view of the task (never waits for the engine).
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// Waits until `done` holds of the view, or `max` passes; returns whether it held — or
    /// `true` if the task's engine has stopped (there is nothing more to wait for).
    pub async fn wait_for_view(&self, max: Duration, done: impl Fn(&View) -> bool) -> bool {
        let mut rx = self.view.clone();
        match tokio::time::timeout(max, rx.wait_for(|v| done(v))).await {
            Ok(Ok(_)) => true,
            Ok(Err(_)) => {
                tracing::error!(task = %hex::encode(self.id.0), "the task's engine has stopped");
                true
            }
            Err(_) => false,
        }
    }

    /// The checkpoint clients download now.
    pub(crate) fn published(&self) -> Published {
        self.published.borrow().clone()
    }

    /// Serves `p` from now on.
    pub(crate) fn publish(&self, p: Published) {
        self.published.send_replace(p);
    }
}

/// What, when it changes, may have readied a parked long-poll's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Epoch {
    state: EngineState,
    phase: Option<Phase>,
    /// The last phase whose replies may go out (its close is saved).
    released: Option<Phase>,
    round: u64,
    results: u64,
    waiting_dropped: u64,
}

impl Epoch {
    fn of(engine: &Engine) -> Epoch {
        let s = engine.status();
        Epoch {
            state: s.state,
            phase: s.phase,
            released: engine.released_phase(),
            round: s.round_id.0,
            results: engine.results_changes(),
            waiting_dropped: engine.waiting_dropped(),
        }
    }
}

struct ParkedReply {
    client: ClientId,
    ctx: RoundContext,
    phase: Phase,
    tx: oneshot::Sender<crate::Result<Reply>>,
}

/// The engine thread's state: the engine, its queue, and the parked long-polls.
struct Actor {
    engine: Engine,
    commands: mpsc::Receiver<Command>,
    /// For the aggregation's result (weak: the task ends when its handles are gone).
    to_self: mpsc::WeakSender<Command>,
    outputs: mpsc::UnboundedSender<Output>,
    view: watch::Sender<Arc<View>>,
    recent: Arc<Vec<RoundOutcome>>,
    results_seen: u64,
    epoch: Epoch,
    replies: Vec<ParkedReply>,
    selections: BTreeMap<ClientId, Vec<oneshot::Sender<CheckIn>>>,
    /// Parked calls after the last pruning of the abandoned ones.
    parked_after_prune: usize,
    /// Answers of the batch's calls, sent once the batch is settled.
    answers: Vec<Deliver>,
}

impl Actor {
    async fn run(mut self) {
        // What the engine emitted before its thread started (a resumed attempt's outputs).
        if std::panic::catch_unwind(AssertUnwindSafe(|| self.settle())).is_err() {
            tracing::error!("settling the engine's first outputs panicked; the task goes on");
        }
        loop {
            let deadline = self.engine.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                first = self.commands.recv() => {
                    let Some(first) = first else { return };
                    self.handle(first);
                    for _ in 1..BATCH {
                        match self.commands.try_recv() {
                            Ok(c) => self.handle(c),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep => self.handle(Command::Call(Box::new(|e, now| {
                    e.handle_timeout(now);
                    Box::new(|| {})
                }))),
            }
            if std::panic::catch_unwind(AssertUnwindSafe(|| self.settle())).is_err() {
                tracing::error!("settling the engine's changes panicked; the task goes on");
            }
            for answer in self.answers.drain(..) {
                answer();
            }
        }
    }

    /// Runs one command. A panic (a bug) is logged and the engine thread serves on: the call
    /// fails (its caller gets an error), the task goes on.
    fn handle(&mut self, command: Command) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| self.run_command(command))).is_err() {
            tracing::error!("an engine call panicked; the call failed, the task goes on");
        }
    }

    fn run_command(&mut self, command: Command) {
        match command {
            Command::Call(job) => {
                let answer = job(&mut self.engine, Instant::now());
                self.answers.push(answer);
            }
            Command::AwaitReply { client, ctx, phase, tx } => {
                match self.engine.reply(&client, &ctx, phase) {
                    Some(reply) => {
                        let _ = tx.send(reply);
                    }
                    None => {
                        self.replies.push(ParkedReply { client, ctx, phase, tx });
                        self.prune();
                    }
                }
            }
            Command::AwaitSelection { client, tx } => match self.engine.poll_check_in(&client) {
                CheckIn::Pending => {
                    self.selections.entry(client).or_default().push(tx);
                    self.prune();
                }
                answer => {
                    let _ = tx.send(answer);
                }
            },
            Command::Aggregated(done) => {
                if let Err(e) = self.engine.aggregated(*done) {
                    tracing::error!(error = %e, "an aggregation's result came back too late");
                }
            }
            Command::AggregationFailed(ctx) => {
                if let Err(e) = self.engine.aggregation_failed(&ctx) {
                    tracing::error!(error = %e, "a failed aggregation came back too late");
                }
            }
        }
    }

    /// Forgets the parked calls whose caller went away, when they have doubled since the
    /// last time (so the cost is constant per call).
    fn prune(&mut self) {
        let parked = self.replies.len() + self.selections.values().map(Vec::len).sum::<usize>();
        if parked < 2 * self.parked_after_prune.max(64) {
            return;
        }
        self.replies.retain(|p| !p.tx.is_closed());
        self.selections.retain(|_, txs| {
            txs.retain(|tx| !tx.is_closed());
            !txs.is_empty()
        });
        self.parked_after_prune =
            self.replies.len() + self.selections.values().map(Vec::len).sum::<usize>();
    }

    /// After a batch: hand out the outputs, publish the view, answer the parked long-polls.
    fn settle(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Aggregate(job) => self.aggregate(job),
                // The driver lives as long as the task; a closed channel means shutdown.
                other => {
                    let _ = self.outputs.send(other);
                }
            }
        }
        let results = self.engine.results_changes();
        if results != self.results_seen {
            self.results_seen = results;
            self.recent = Arc::new(self.engine.recent_results().cloned().collect());
        }
        let view = View::of(&self.engine, self.recent.clone());
        self.view.send_if_modified(|old| {
            let same = old.status == view.status
                && Arc::ptr_eq(&old.recent, &view.recent)
                && old.everyone_has_the_final_model == view.everyone_has_the_final_model
                && old.current.as_ref().map(|a| a.plan.context())
                    == view.current.as_ref().map(|a| a.plan.context());
            if !same {
                *old = Arc::new(view);
            }
            !same
        });
        let epoch = Epoch::of(&self.engine);
        if epoch != self.epoch {
            self.epoch = epoch;
            self.answer_parked();
        }
    }

    fn answer_parked(&mut self) {
        let engine = &self.engine;
        for p in std::mem::take(&mut self.replies) {
            if p.tx.is_closed() {
                continue;
            }
            match engine.reply(&p.client, &p.ctx, p.phase) {
                Some(reply) => {
                    let _ = p.tx.send(reply);
                }
                None => self.replies.push(p),
            }
        }
        self.selections.retain(|client, txs| match engine.poll_check_in(client) {
            CheckIn::Pending => {
                txs.retain(|tx| !tx.is_closed());
                !txs.is_empty()
            }
            answer => {
                for tx in txs.drain(..) {
                    let _ = tx.send(answer.clone());
                }
                false
            }
        });
        self.parked_after_prune =
            self.replies.len() + self.selections.values().map(Vec::len).sum::<usize>();
    }

    /// Runs the sum on the engine thread's blocking pool; the result comes back as a command.
    fn aggregate(&mut self, job: Aggregation) {
        let Some(to_self) = self.to_self.upgrade() else { return };
        let ctx = job.ctx();
        tokio::task::spawn_blocking(move || {
            let command = match std::panic::catch_unwind(AssertUnwindSafe(|| job.run())) {
                Ok(done) => Command::Aggregated(Box::new(done)),
                Err(_) => {
                    tracing::error!("the aggregation panicked; the attempt aborts");
                    Command::AggregationFailed(ctx)
                }
            };
            // The task is shutting down if nobody takes it.
            let _ = to_self.blocking_send(command);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use ed25519_dalek::SigningKey;
    use fedsec_crypto::sign::RawKeyCredentials;
    use fedsec_crypto::{CheckpointHash, GraphKind};
    use fedsec_wire::checkpoint::Manifest;
    use fedsec_wire::model::{Model, Tensor};

    use super::*;
    use crate::engine::{PhaseDeadlines, TaskConfig};

    const BOUND: Duration = Duration::from_secs(10);

    fn task(n: usize) -> Arc<TaskRuntime> {
        let mut c = TaskConfig::new(TaskId([5; 16]), "actor", n);
        c.graph = GraphKind::Complete;
        c.over_selection = 1.0;
        c.min_clients = n;
        c.deadlines = PhaseDeadlines::uniform(Duration::from_secs(60));
        let model = Model::new().with("w", Tensor::new(vec![2], vec![0.5, -0.5]).unwrap());
        let bytes = model.to_safetensors().unwrap();
        let manifest = Manifest {
            version: 0,
            parent_version: 0,
            sha256: CheckpointHash::of(&bytes),
            size_bytes: bytes.len() as u64,
            task_id: c.task_id,
            round_summary: "initial".into(),
        }
        .sign(&SigningKey::from_bytes(&[1; 32]));
        let engine = Engine::new(c, model, 0, Arc::new(RawKeyCredentials), [2; 32]).unwrap();
        let published = Published { manifest, bytes: Arc::new(bytes) };
        TaskRuntime::start(TaskId([5; 16]), engine, published, true).unwrap().0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parked_check_ins_are_answered_when_the_selection_happens_and_not_before() {
        let task = task(10);
        let clients: Vec<ClientId> = (0..10u8).map(|i| ClientId([i + 1; 32])).collect();
        let mut parked = Vec::new();
        for &c in &clients[..9] {
            let first = task.call(move |e, now| e.check_in(c, now)).await.unwrap();
            assert_eq!(first, CheckIn::Pending);
            let t = task.clone();
            parked.push(tokio::spawn(async move { t.await_selection(c, BOUND).await }));
        }
        // Every call of the nine has been taken by the engine thread once this one returns.
        assert_eq!(task.call(|e, _| e.status().waiting).await.unwrap(), 9);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(parked.iter().all(|p| !p.is_finished()), "nobody is answered before selection");
        assert_eq!(task.view().status.waiting, 9);

        let last = clients[9];
        let answer = task.call(move |e, now| e.check_in(last, now)).await.unwrap();
        let CheckIn::Selected(plan) = answer else { panic!("the tenth check-in selects") };
        for p in parked {
            let answer = tokio::time::timeout(BOUND, p).await.unwrap().unwrap().unwrap();
            assert_eq!(answer, Some(CheckIn::Selected(plan.clone())));
        }
        let view = task.view();
        assert_eq!(view.status.state, EngineState::Running);
        assert_eq!(view.current.as_ref().map(|a| a.plan.context()), Some(plan.plan.context()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_phase_reply_ends_empty_at_its_bound_while_the_phase_is_open() {
        let task = task(10);
        for i in 0..10u8 {
            let c = ClientId([i + 1; 32]);
            task.call(move |e, now| e.check_in(c, now)).await.unwrap();
        }
        let ctx = task.view().current.as_ref().unwrap().plan.context();
        // Nobody advertised: the phase stays open, the long-poll ends empty at its bound.
        let reply = task
            .await_reply(ClientId([1; 32]), ctx, Phase::AdvertiseKeys, Duration::from_millis(100))
            .await
            .unwrap();
        assert!(reply.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_do_not_wait_for_a_busy_engine() {
        let task = task(10);
        let (release, hold) = std_mpsc::channel::<()>();
        let (entered, busy) = tokio::sync::oneshot::channel::<()>();
        let t = task.clone();
        let blocked = tokio::spawn(async move {
            t.call(move |_, _| {
                let _ = entered.send(());
                // Stands for a long engine call: the engine thread is held until released.
                let _ = hold.recv_timeout(BOUND);
            })
            .await
        });
        tokio::time::timeout(BOUND, busy).await.unwrap().unwrap();
        // The engine thread is busy; the view, the published checkpoint and the task's
        // settings answer at once.
        let view = tokio::time::timeout(Duration::from_secs(1), async { task.view() }).await;
        assert_eq!(view.unwrap().status.state, EngineState::Selecting);
        assert_eq!(task.published().manifest.manifest.version, 0);
        assert!(!blocked.is_finished());
        release.send(()).unwrap();
        tokio::time::timeout(BOUND, blocked).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_engine_call_fails_alone_and_the_task_serves_on() {
        let task = task(10);
        let failed = task.call(|_, _| -> u32 { panic!("a bug") }).await;
        assert_eq!(failed.unwrap_err().code(), tonic::Code::Internal);
        assert_eq!(task.call(|e, _| e.status().waiting).await.unwrap(), 0);
    }
}
