//! The gRPC transport: the real coordinator and the real clients in one process, over loopback
//! with mutual TLS.
//!
//! A throw-away PKI (CA, server certificate, one certificate per client, the coordinator's
//! checkpoint-signing key) is made for the run in a temporary folder that is deleted with it.
//! The coordinator is the one `fedsec-coordinator serve` runs (`prepare` + `serve`), with short
//! phase deadlines and no grace period for closed connections, so that a dropped client counts
//! as dropped out at once and no round waits idle. Each client with examples runs
//! [`fedsec_client::Client::run`] on its shard; a client the schedule drops stops before the
//! phase's message, closes its connection as a dead process would, stays away for a moment and
//! connects again for later rounds. The coordinator's rate limits keep their defaults: a run
//! in which they refused any call of these honest sites fails ([`SimError::RateLimited`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fedsec_client::config::PolicyConfig;
use fedsec_client::{Client, ClientConfig, ClientError, RunSummary, TestHooks, Trainer};
use fedsec_coordinator::config::CoordinatorConfig;
use fedsec_coordinator::engine::EngineState;
use fedsec_coordinator::store::CheckpointStore;
use fedsec_crypto::TaskId;
use fedsec_wire::model::Model;
use indicatif::ProgressBar;

use crate::experiment::{ASSUMED_CORRUPT, Experiment, PHASES, Prepared, SimError};
use crate::run::{AttemptRecord, SecureRun};
use crate::schedule;

/// The simulated task's id.
const TASK_ID: &str = "5eed5eed5eed5eed5eed5eed5eed5eed";
/// How long a dropped client stays away before it connects again.
const OFFLINE: Duration = Duration::from_millis(200);
/// How often the progress bar looks at the coordinator.
const PROGRESS_POLL: Duration = Duration::from_millis(50);

fn graph_name(g: fedsec_crypto::GraphKind) -> &'static str {
    match g {
        fedsec_crypto::GraphKind::Complete => "complete",
        fedsec_crypto::GraphKind::Harary => "harary",
    }
}

/// Every attempt's outcome, in order, each once.
#[derive(Default)]
struct Outcomes {
    seen: std::collections::BTreeSet<fedsec_crypto::RoundContext>,
    list: Vec<fedsec_coordinator::engine::RoundOutcome>,
}

impl Outcomes {
    fn merge(&mut self, recent: Vec<fedsec_coordinator::engine::RoundOutcome>) {
        for o in recent {
            if self.seen.insert(o.ctx) {
                self.list.push(o);
            }
        }
    }
}

/// The coordinator's configuration for the run.
fn coordinator_config(
    exp: &Experiment,
    p: &Prepared,
    root: &std::path::Path,
) -> Result<CoordinatorConfig, SimError> {
    let d = exp.phase_deadline_ms;
    let advertise = exp.advertise_deadline_ms();
    let text = format!(
        r#"
listen = "127.0.0.1:0"
store = "store"
audit_log = "audit.log"
signing_key = "pki/coordinator-signing.key"
threads = 1
disconnect_grace_ms = 0

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
name = "fedsec-sim"
initial_model = "model.safetensors"
clients_per_round = {target}
min_clients = {min}
over_selection = 1.0
graph = "{graph}"
adversary = "semi-malicious"
dropout = {delta}
corrupt = {ASSUMED_CORRUPT}
clip = {clip}
max_examples = {max_examples}
server_learning_rate = {eta}
rounds = {rounds}
deadlines_ms = {{ selection = {d}, advertise_keys = {advertise}, share_keys = {d}, complaints = {d}, masked_input = {d}, consistency = {d}, unmasking = {d} }}
"#,
        target = p.clients_per_round,
        min = p.min_clients,
        graph = graph_name(exp.graph),
        delta = p.assumed_dropout,
        clip = exp.clip,
        max_examples = p.max_examples,
        eta = exp.server_learning_rate,
        rounds = exp.rounds,
    );
    let path = root.join("coordinator.toml");
    std::fs::write(&path, text).map_err(|source| SimError::Io { path: path.clone(), source })?;
    Ok(CoordinatorConfig::load(&path, std::iter::empty(), &[])?)
}

/// One site: runs rounds until the task finishes, coming back after each scheduled dropout.
async fn site(
    config: ClientConfig,
    mut trainer: Box<dyn Trainer>,
    mut hooks: TestHooks,
) -> Result<Vec<RunSummary>, ClientError> {
    let mut segments = Vec::new();
    loop {
        let mut client = Client::connect(config.clone()).await?.with_test_hooks(hooks.clone());
        let summary = client.run(&mut trainer).await?;
        // The connection closes here, as a dead process's would.
        drop(client);
        let dropped = summary.dropped_out;
        segments.push(summary);
        match dropped {
            Some((round, _)) => {
                hooks.drop_out.retain(|r, _| *r > round);
                tokio::time::sleep(OFFLINE).await;
            }
            None => return Ok(segments),
        }
    }
}

/// Runs the experiment's secure training over gRPC.
pub fn run(exp: &Experiment, p: &Prepared, progress: &ProgressBar) -> Result<SecureRun, SimError> {
    fedsec_coordinator::tls::install_crypto_provider();
    let dir = tempfile::tempdir()
        .map_err(|source| SimError::Setup { what: "a temporary folder", source })?;
    let root = dir.path();
    let pki = fedsec_coordinator::pki::init_scratch(&root.join("pki"), p.active.len(), &[], false)?;
    let model_path = root.join("model.safetensors");
    std::fs::write(&model_path, p.initial_model.to_safetensors()?)
        .map_err(|source| SimError::Io { path: model_path, source })?;
    let config = coordinator_config(exp, p, root)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| SimError::Setup { what: "the async runtime", source })?;
    rt.block_on(async {
        let ready = fedsec_coordinator::server::prepare(&config).await?;
        let addr = ready.local_addr()?;
        let coordinator = ready.coordinator.clone();
        let task_id = TaskId::from_hex(TASK_ID).expect("TASK_ID is 32 hex digits");
        let task = coordinator.task(&task_id).map_err(|s| SimError::Status(Box::new(s)))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(fedsec_coordinator::server::serve(ready, async {
            let _ = stopped.await;
        }));
        let started = Instant::now();
        let mut sites = Vec::with_capacity(p.active.len());
        for (slot, &i) in p.active.iter().enumerate() {
            let c = &pki.clients[slot];
            let config = ClientConfig {
                coordinator: format!("https://{addr}"),
                server_name: "localhost".into(),
                task_id: TASK_ID.into(),
                ca: pki.ca_cert.clone(),
                cert: c.cert.clone(),
                key: c.key.clone(),
                coordinator_key: pki.signing_public_key.clone(),
                state_dir: root.join(format!("state-{i:05}")),
                policy: PolicyConfig {
                    max_dropout: p.assumed_dropout.max(PolicyConfig::default().max_dropout),
                    ..PolicyConfig::default()
                },
                insecure: false,
                max_model_bytes: fedsec_client::config::DEFAULT_MAX_MODEL_BYTES,
                max_rounds: None,
                encryption: None,
            };
            let hooks = TestHooks {
                drop_out: schedule::drops_of(exp, i, exp.rounds),
                latency: Duration::from_millis(exp.latency_ms),
                slow_training: if schedule::is_straggler(exp, i) {
                    Duration::from_millis(exp.straggler_delay_ms)
                } else {
                    Duration::ZERO
                },
                ..TestHooks::default()
            };
            let trainer = exp.trainer(p, i)?;
            sites.push((i, tokio::spawn(site(config, trainer, hooks))));
        }
        // The progress bar follows the task, and every attempt's outcome is collected as the
        // run goes (the engine remembers only the latest few hundred).
        let watch = {
            let task = task.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut outcomes = Outcomes::default();
                loop {
                    // The task's published view: never waits for its engine.
                    let view = task.view();
                    let (status, recent) = (view.status.clone(), view.recent.to_vec());
                    outcomes.merge(recent);
                    progress.set_position(status.completed_rounds);
                    let phase = status.phase.map_or(status.state.name(), |ph| PHASES[ph.index()]);
                    progress.set_message(format!(
                        "round {} · {phase} · {} aborted",
                        status.round_id.0,
                        outcomes.list.iter().filter(|o| !o.completed).count()
                    ));
                    if status.state == EngineState::Finished {
                        return Ok::<Outcomes, SimError>(outcomes);
                    }
                    tokio::time::sleep(PROGRESS_POLL).await;
                }
            })
        };
        // A bound on the whole run: every round's deadlines, many times over.
        // (The experiment's checks bound every term: no overflow.)
        let per_round = Duration::from_millis(
            exp.phase_deadline_ms * 7 + exp.straggler_delay_ms + exp.latency_ms * 10,
        );
        let limit = per_round * (exp.rounds as u32).saturating_mul(4) + Duration::from_secs(60);
        let mut summaries: BTreeMap<usize, Vec<RunSummary>> = BTreeMap::new();
        for (i, handle) in sites {
            let left = limit.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, handle).await {
                Ok(Ok(Ok(s))) => {
                    summaries.insert(i, s);
                }
                Ok(Ok(Err(source))) => return Err(SimError::Client { index: i, source }),
                Ok(Err(source)) => {
                    return Err(SimError::Task { what: format!("client {i}"), source });
                }
                Err(_) => return Err(SimError::Timeout(limit.as_secs_f64())),
            }
        }
        let wall_s = started.elapsed().as_secs_f64();
        let task_error = |what: &str| {
            let what = what.to_string();
            move |source| SimError::Task { what, source }
        };
        let outcomes = watch.await.map_err(task_error("the progress watch"))??.list;
        let _ = stop.send(());
        server.await.map_err(task_error("the coordinator"))??;
        // Every simulated site is honest: the rate limits' defaults must never refuse one.
        let refused = coordinator.rate_limit_refusals();
        if refused > 0 {
            return Err(SimError::RateLimited(refused));
        }

        // The checkpoints, from the store, checked against the coordinator's key.
        let store_dir = root.join("store");
        let store = CheckpointStore::from_url(&store_dir.to_string_lossy())?;
        let key = coordinator.verifying_key();
        let mut models = Vec::new();
        let mut attempts = Vec::new();
        for o in &outcomes {
            let round = o.round_id.0;
            let reports: Vec<_> = summaries
                .values()
                .flatten()
                .flat_map(|s| &s.rounds)
                .filter(|r| r.round_id == round && o.completed)
                .collect();
            let participants: Vec<usize> = summaries
                .iter()
                .filter(|(_, segs)| {
                    segs.iter().flat_map(|s| &s.uploaded).any(|u| *u == (round, o.attempt.0))
                })
                .map(|(&i, _)| i)
                .collect();
            let scheduled_drops = summaries
                .values()
                .flatten()
                .filter(|s| s.dropped_out.is_some_and(|d| d.0 == round))
                .count();
            if let Some(v) = o.new_checkpoint_version {
                let (_, bytes) = store.get_verified(task_id, v, &key).await?;
                models.push(Model::from_safetensors(&bytes)?);
            }
            let losses: Vec<f64> = reports.iter().map(|r| r.train_loss).collect();
            attempts.push(AttemptRecord {
                round_id: round,
                completed: o.completed,
                abort_reason: o.abort_reason.as_ref().map(ToString::to_string),
                set_sizes: o.set_sizes.clone(),
                phase_seconds: o.phase_seconds.clone(),
                upload_bytes: o.upload_bytes,
                participants: if o.completed { participants } else { Vec::new() },
                // Counted on the round's completed attempt, whichever attempt it hit.
                scheduled_drops: if o.completed { scheduled_drops } else { 0 },
                bytes_sent: reports.iter().map(|r| r.bytes_sent).collect(),
                bytes_received: reports.iter().map(|r| r.bytes_received).collect(),
                compute_s: None,
                train_loss: (!losses.is_empty())
                    .then(|| losses.iter().sum::<f64>() / losses.len() as f64),
            });
        }
        Ok(SecureRun { attempts, models, wall_s })
    })
}
