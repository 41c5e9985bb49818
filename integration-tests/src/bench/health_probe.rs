//! The health probe of the round: `grpc.health.v1.Health/Check`, one call every
//! [`PROBE_PERIOD`] (sequential: the next call leaves a period after the last answer), from the
//! first check-in until the last client has the round's result, with each call's latency.
//!
//! The probe has an OS thread and a current-thread runtime of its own, and its own mutual-TLS
//! connections with an operator certificate of its own (health is open to every peer that
//! completed the handshake; the phase needs an operator, and a second one keeps the probe's
//! status calls out of the first operator's rate limit), so that the clients' work on the benchmark's runtime does not delay its side
//! of the calls. The coordinator still shares that runtime with the clients: what the probe
//! measures is the coordinator's answer under the whole federation's load on these cores.
//!
//! A second task on the probe's runtime asks the Admin service for the task's phase every
//! [`PHASE_POLL`], on a connection of its own, and notes when the round reached its last phase
//! (Unmasking, aggregating, then committing): the window in which the coordinator unmasks and
//! aggregates.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{AdminClient, err, task_status};

/// The pause between one health call's answer and the next call.
pub const PROBE_PERIOD: Duration = Duration::from_millis(10);
/// How often the probe asks for the task's phase (under the Admin rate limit of 20 calls a
/// second per operator).
const PHASE_POLL: Duration = Duration::from_millis(60);
/// A call not answered within this counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The latency the coordinator should keep to at the 99th percentile (reported, not enforced).
pub const TARGET_P99_MS: f64 = 50.0;

/// How many of the slowest calls the report lists.
const SLOWEST_REPORTED: usize = 8;

/// The phase names (the status's `phase`) of the round's last phase and after.
const LAST_PHASES: [&str; 4] = ["Unmasking", "aggregating", "committing", "finished"];

/// What the probe recorded.
#[derive(Debug, Default)]
pub struct ProbeRecord {
    /// Each answered call: when it was sent, and how long it took.
    pub calls: Vec<(Instant, Duration)>,
    /// Calls that failed, timed out, or answered other than SERVING.
    pub errors: usize,
    /// The first failure, as said.
    pub first_error: Option<String>,
    /// When the probe first saw the round in its last phase (the poll's sending time).
    pub last_phase_from: Option<Instant>,
}

/// A running probe; [`Probe::stop`] ends it and returns what it recorded.
#[derive(Debug)]
pub struct Probe {
    stop: tokio::sync::watch::Sender<bool>,
    done: tokio::sync::oneshot::Receiver<Result<ProbeRecord, String>>,
}

impl Probe {
    /// Starts the probe on a thread of its own; returns once both its connections are up and a
    /// first health call was answered (that call is not recorded).
    pub async fn start(endpoint: Endpoint) -> Result<Probe, String> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("health-probe".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                let record = match rt {
                    Ok(rt) => rt.block_on(probe(endpoint, stopped, ready_tx)),
                    Err(e) => {
                        let _ = ready_tx.send(Err(err(&e)));
                        Err(err(e))
                    }
                };
                let _ = done_tx.send(record);
            })
            .map_err(err)?;
        ready_rx.await.map_err(err)??;
        Ok(Probe { stop, done })
    }

    /// Ends the probe (within one period) and returns what it recorded.
    pub async fn stop(self) -> Result<ProbeRecord, String> {
        let _ = self.stop.send(true);
        self.done.await.map_err(err)?
    }
}

async fn probe(
    endpoint: Endpoint,
    stopped: tokio::sync::watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
) -> Result<ProbeRecord, String> {
    // Connected here, so that the connections are driven by this thread's runtime.
    let connected = async {
        let mut health = HealthClient::new(endpoint.connect().await.map_err(err)?);
        let admin = AdminClient::new(endpoint.connect().await.map_err(err)?);
        check(&mut health).await?;
        Ok::<_, String>((health, admin))
    };
    let (mut health, mut admin) = match connected.await {
        Ok(clients) => {
            let _ = ready.send(Ok(()));
            clients
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let calls = async {
        let mut record = ProbeRecord::default();
        while !*stopped.borrow() {
            let sent = Instant::now();
            match check(&mut health).await {
                Ok(()) => record.calls.push((sent, sent.elapsed())),
                Err(e) => {
                    record.errors += 1;
                    record.first_error.get_or_insert(e);
                }
            }
            tokio::time::sleep(PROBE_PERIOD).await;
        }
        record
    };
    let last_phase = async {
        while !*stopped.borrow() {
            let sent = Instant::now();
            // A failed poll is tried again: the phase is a marker, not a measurement.
            if let Ok(status) = task_status_with(&mut admin).await
                && LAST_PHASES.contains(&status.phase.as_str())
            {
                return Some(sent);
            }
            tokio::time::sleep(PHASE_POLL).await;
        }
        None
    };
    let (mut record, last_phase_from) = tokio::join!(calls, last_phase);
    record.last_phase_from = last_phase_from;
    Ok(record)
}

async fn task_status_with(admin: &mut AdminClient) -> Result<fedsec_proto::v1::TaskStatus, String> {
    tokio::time::timeout(CALL_TIMEOUT, task_status(admin))
        .await
        .map_err(|_| "status call timed out".to_string())?
}

/// One health check of the whole server (the empty service name); Ok if it says SERVING.
async fn check(health: &mut HealthClient<tonic::transport::Channel>) -> Result<(), String> {
    let call = health.check(HealthCheckRequest { service: String::new() });
    let answer = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
        .map_err(err)?;
    match answer.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("health status {other:?}")),
    }
}

/// The `q`-quantile of sorted latencies in milliseconds (nearest rank); `None` if empty.
fn quantile_ms(sorted: &[Duration], q: f64) -> Option<f64> {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).map(|d| d.as_secs_f64() * 1e3)
}

fn sorted_latencies<'a>(calls: impl Iterator<Item = &'a (Instant, Duration)>) -> Vec<Duration> {
    let mut v: Vec<Duration> = calls.map(|c| c.1).collect();
    v.sort_unstable();
    v
}

impl ProbeRecord {
    /// The `count` slowest calls: when each was sent (seconds from `start`) and its latency.
    fn slowest(&self, start: Instant, count: usize) -> Vec<Value> {
        let mut calls: Vec<&(Instant, Duration)> = self.calls.iter().collect();
        calls.sort_unstable_by_key(|c| std::cmp::Reverse(c.1));
        calls
            .iter()
            .take(count)
            .map(|(sent, took)| {
                json!({
                    "at_s": sent.saturating_duration_since(start).as_secs_f64(),
                    "ms": took.as_secs_f64() * 1e3,
                })
            })
            .collect()
    }

    /// The report's `health_probe` object. `start` and `end` bound the round (first check-in,
    /// last client's result).
    pub fn report(&self, start: Instant, end: Instant) -> Value {
        let all = sorted_latencies(self.calls.iter());
        let last_phase = self.last_phase_from.map(|from| {
            sorted_latencies(self.calls.iter().filter(|(sent, took)| *sent + *took >= from))
        });
        // The last quarter of the round's wall time, whatever its phase.
        let quarter_from = start + end.saturating_duration_since(start).mul_f64(0.75);
        let last_quarter = sorted_latencies(self.calls.iter().filter(|c| c.0 >= quarter_from));
        let p99 = quantile_ms(&all, 0.99);
        json!({
            "period_ms": PROBE_PERIOD.as_secs_f64() * 1e3,
            "calls": all.len(),
            "errors": self.errors,
            "first_error": self.first_error,
            "p50_ms": quantile_ms(&all, 0.5),
            "p99_ms": p99,
            "max_ms": all.last().map(|d| d.as_secs_f64() * 1e3),
            "over_50ms": all.iter().filter(|d| d.as_secs_f64() * 1e3 > TARGET_P99_MS).count(),
            // From the first status that showed Unmasking (or later) to the round's end; a call
            // in flight at that moment counts.
            "last_phase_from_round_start_s": self
                .last_phase_from
                .map(|f| f.saturating_duration_since(start).as_secs_f64()),
            "calls_during_last_phase": last_phase.as_ref().map(Vec::len),
            "p99_ms_during_last_phase": last_phase.as_deref().and_then(|v| quantile_ms(v, 0.99)),
            "max_ms_during_last_phase": last_phase.as_ref().and_then(|v| v.last()).map(|d| d.as_secs_f64() * 1e3),
            "calls_last_quarter": last_quarter.len(),
            "p99_ms_last_quarter": quantile_ms(&last_quarter, 0.99),
            "slowest": self.slowest(start, SLOWEST_REPORTED),
            "target_p99_ms": TARGET_P99_MS,
            "meets_target": self.errors == 0 && p99.is_some_and(|p| p <= TARGET_P99_MS),
        })
    }
}
