//! The coordinator's Prometheus metrics (the `prometheus-client` crate) and the ops listener
//! that serves them.
//!
//! The ops listener (`ops_listen`) is plain HTTP and binds only a loopback address: it carries
//! no identity, so a scraper on the same host (or an agent that forwards) reads it. It answers
//! `GET /metrics` (OpenMetrics text) and `GET /healthz` (200 while the audit log and the store
//! can be written, 503 otherwise); nothing else.
//!
//! What is counted, and where:
//!
//! * attempts by outcome, each phase's duration, the selected, summed and dropped clients and
//!   the masked-input bytes of every attempt that ended, per task (from the engine's outcome);
//! * the newest checkpoint version of each task, set when it is stored and recorded;
//! * gRPC bytes in and out through the edge (request and response bodies);
//! * refusals by reason: `tls` (a connection that failed its handshake), `connections` (one
//!   closed before its handshake, over the handshakes in progress), `identity` (a call
//!   without a usable client identity), `deny_list`, `rate_limit`, `size` (a message over its
//!   method's limit), `protocol` (a message a rule of the protocol or of the service refused:
//!   out of phase, malformed, replayed, duplicate, not selected, …) and `resource` (a service
//!   at one of its bounds, e.g. uploads in flight);
//! * whether the audit log and the store can be written (1 or 0), read at each scrape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tonic::Code;

use crate::engine::RoundOutcome;
use fedsec_crypto::secagg::Phase;

/// A task's label: its id, 32 hex digits.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    task: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    task: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    task: String,
    set: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// Why a connection, call or message was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A connection that failed its TLS handshake (or did not finish it in time).
    Tls,
    /// A connection closed before its handshake: over the handshakes in progress.
    Connections,
    /// A call without a usable client identity.
    Identity,
    /// A call of a client on the deny-list.
    DenyList,
    /// A call or message over its client's rate.
    RateLimit,
    /// A message over its method's size limit.
    Size,
    /// A message a rule of the protocol or of the service refused.
    Protocol,
    /// A service at one of its bounds.
    Resource,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Tls => "tls",
            Refusal::Connections => "connections",
            Refusal::Identity => "identity",
            Refusal::DenyList => "deny_list",
            Refusal::RateLimit => "rate_limit",
            Refusal::Size => "size",
            Refusal::Protocol => "protocol",
            Refusal::Resource => "resource",
        }
    }

    /// The refusal a service's status stands for (`None` for a success, and for a fault of
    /// the server or a cancelled call, which are no refusal).
    pub fn of_service_status(code: Code) -> Option<Refusal> {
        match code {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::NotFound
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Aborted => Some(Refusal::Protocol),
            Code::Unauthenticated => Some(Refusal::Identity),
            Code::ResourceExhausted => Some(Refusal::Resource),
            _ => None,
        }
    }

    /// The refusal the edge's own status stands for (before the call reaches its service).
    pub fn of_edge_status(code: Code) -> Refusal {
        match code {
            Code::PermissionDenied => Refusal::DenyList,
            Code::ResourceExhausted => Refusal::RateLimit,
            _ => Refusal::Identity,
        }
    }
}

/// The edge's share of the metrics: cheap to clone, counted from the tower layer, the request
/// bodies and the accept loop.
#[derive(Clone, Debug, Default)]
pub struct EdgeMetrics {
    refusals: Family<RefusalLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
}

impl EdgeMetrics {
    /// Counts one refusal.
    pub fn refused(&self, why: Refusal) {
        self.refusals.get_or_create(&RefusalLabels { reason: why.label() }).inc();
    }

    /// Refusals so far for `why`.
    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refusals.get_or_create(&RefusalLabels { reason: why.label() }).get()
    }

    /// Counts request body bytes.
    pub fn bytes_in(&self, n: usize) {
        self.bytes.get_or_create(&DirectionLabels { direction: "in" }).inc_by(n as u64);
    }

    /// Counts response body bytes.
    pub fn bytes_out(&self, n: usize) {
        self.bytes.get_or_create(&DirectionLabels { direction: "out" }).inc_by(n as u64);
    }
}

/// Every metric of a coordinator, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    attempts: Family<AttemptLabels, Counter>,
    phase_seconds: Family<PhaseLabels, Histogram>,
    clients: Family<ClientLabels, Counter>,
    upload_bytes: Family<TaskLabels, Counter>,
    checkpoint_version: Family<TaskLabels, Gauge>,
    audit_up: Gauge,
    store_up: Gauge,
    edge: EdgeMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The metrics, all registered, none counted yet.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fedsec");
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "attempts",
            "Attempts of rounds that ended, by outcome (completed or aborted)",
            attempts.clone(),
        );
        // 10 ms to about 3 hours.
        let phase_seconds = Family::<PhaseLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 21))
        });
        registry.register(
            "phase_duration_seconds",
            "How long each phase of an attempt stayed open",
            phase_seconds.clone(),
        );
        let clients = Family::<ClientLabels, Counter>::default();
        registry.register(
            "clients",
            "Clients of the attempts that ended: selected, summed (their input is in a stored \
             checkpoint) and dropped (selected but not summed)",
            clients.clone(),
        );
        let upload_bytes = Family::<TaskLabels, Counter>::default();
        registry.register(
            "masked_input_bytes",
            "Bytes of masked input received by the attempts that ended",
            upload_bytes.clone(),
        );
        let checkpoint_version = Family::<TaskLabels, Gauge>::default();
        registry.register(
            "checkpoint_version",
            "The newest stored and recorded checkpoint version of each task",
            checkpoint_version.clone(),
        );
        let audit_up = Gauge::default();
        registry.register(
            "audit_log_up",
            "1 while the audit log can be written, 0 while appends fail",
            audit_up.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 while the checkpoint store can be written, 0 while writes fail",
            store_up.clone(),
        );
        let edge = EdgeMetrics::default();
        registry.register(
            "refusals",
            "Connections, calls and messages refused, by reason",
            edge.refusals.clone(),
        );
        registry.register(
            "grpc_body_bytes",
            "gRPC request (in) and response (out) body bytes through the edge",
            edge.bytes.clone(),
        );
        Metrics {
            registry,
            attempts,
            phase_seconds,
            clients,
            upload_bytes,
            checkpoint_version,
            audit_up,
            store_up,
            edge,
        }
    }

    /// The edge's share.
    pub fn edge(&self) -> &EdgeMetrics {
        &self.edge
    }

    /// Counts an attempt that ended.
    pub fn attempt_ended(&self, task: &fedsec_crypto::TaskId, outcome: &RoundOutcome) {
        let task = hex::encode(task.0);
        let result = if outcome.completed { "completed" } else { "aborted" };
        self.attempts.get_or_create(&AttemptLabels { task: task.clone(), outcome: result }).inc();
        for (phase, seconds) in Phase::ALL.iter().zip(&outcome.phase_seconds) {
            self.phase_seconds
                .get_or_create(&PhaseLabels { task: task.clone(), phase: phase.name() })
                .observe(*seconds);
        }
        let selected = outcome.set_sizes.first().copied().unwrap_or(0);
        let summed = if outcome.completed { outcome.participants() } else { 0 };
        let count = |set: &'static str, n: usize| {
            self.clients.get_or_create(&ClientLabels { task: task.clone(), set }).inc_by(n as u64);
        };
        count("selected", selected);
        count("summed", summed);
        count("dropped", selected.saturating_sub(summed));
        self.upload_bytes
            .get_or_create(&TaskLabels { task: task.clone() })
            .inc_by(outcome.upload_bytes);
    }

    /// Sets a task's newest checkpoint version.
    pub fn checkpoint(&self, task: &fedsec_crypto::TaskId, version: u64) {
        let task = hex::encode(task.0);
        self.checkpoint_version
            .get_or_create(&TaskLabels { task })
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// The metrics in the OpenMetrics text format, with the health of the audit log and the
    /// store as given.
    pub fn render(&self, audit_up: bool, store_up: bool) -> String {
        self.audit_up.set(i64::from(audit_up));
        self.store_up.set(i64::from(store_up));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the ops listener needs of the coordinator: its metrics and its health, read at each
/// request.
pub trait OpsSource: Send + Sync + 'static {
    /// The metrics text.
    fn metrics_text(&self) -> String;
    /// `None` while healthy; the reason otherwise.
    fn unhealthy(&self) -> Option<String>;
}

/// Serves the ops listener until `shutdown` resolves: `GET /metrics` and `GET /healthz`.
pub async fn serve_ops(
    listener: TcpListener,
    source: Arc<dyn OpsSource>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "the ops listener failed to accept");
                    continue;
                }
            },
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = answer(&*source, &req);
                async move { Ok::<_, Infallible>(answer) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(io, service).await
            {
                tracing::debug!(%peer, error = %e, "an ops connection ended with an error");
            }
        });
    }
}

fn answer<B>(source: &dyn OpsSource, req: &http::Request<B>) -> http::Response<String> {
    let reply = |status: http::StatusCode, content_type: &str, body: String| {
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(body)
            .expect("a valid response")
    };
    let text = "text/plain; charset=utf-8";
    if req.method() != http::Method::GET {
        return reply(http::StatusCode::METHOD_NOT_ALLOWED, text, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => reply(http::StatusCode::OK, OPENMETRICS, source.metrics_text()),
        "/healthz" => match source.unhealthy() {
            None => reply(http::StatusCode::OK, text, "serving\n".into()),
            Some(why) => {
                reply(http::StatusCode::SERVICE_UNAVAILABLE, text, format!("not serving: {why}\n"))
            }
        },
        _ => reply(http::StatusCode::NOT_FOUND, text, "/metrics or /healthz\n".into()),
    }
}

/// Refuses an ops address other than loopback: the listener is plain HTTP without identity.
pub fn check_ops_address(addr: &SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "the ops listener is plain HTTP without client identity and binds only a loopback \
             address, not {addr}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedsec_crypto::ids::{AttemptNonce, RoundId};
    use fedsec_crypto::{RoundContext, TaskId};

    fn outcome(completed: bool) -> RoundOutcome {
        RoundOutcome {
            round_id: RoundId(3),
            attempt: AttemptNonce([0; 16]),
            ctx: RoundContext([1; 32]),
            completed,
            new_checkpoint_version: completed.then_some(3),
            abort_reason: None,
            set_sizes: vec![10, 10, 9, 9, 8, 8, 8],
            phase_seconds: vec![0.5, 0.25, 0.1, 2.0, 0.1, 0.3],
            upload_bytes: 4_000,
        }
    }

    #[test]
    fn an_ended_attempt_is_counted_and_rendered() {
        let m = Metrics::new();
        let task = TaskId([0xab; 16]);
        m.attempt_ended(&task, &outcome(true));
        m.attempt_ended(&task, &outcome(false));
        m.checkpoint(&task, 3);
        m.edge().refused(Refusal::Size);
        m.edge().refused(Refusal::Size);
        m.edge().bytes_in(100);
        let text = m.render(true, false);
        let t = hex::encode(task.0);
        for line in [
            format!("fedsec_attempts_total{{task=\"{t}\",outcome=\"completed\"}} 1"),
            format!("fedsec_attempts_total{{task=\"{t}\",outcome=\"aborted\"}} 1"),
            format!("fedsec_clients_total{{task=\"{t}\",set=\"selected\"}} 20"),
            // |U3| of the completed attempt (set_sizes[4]); none of the aborted one.
            format!("fedsec_clients_total{{task=\"{t}\",set=\"summed\"}} 8"),
            format!("fedsec_clients_total{{task=\"{t}\",set=\"dropped\"}} 12"),
            format!("fedsec_masked_input_bytes_total{{task=\"{t}\"}} 8000"),
            format!("fedsec_checkpoint_version{{task=\"{t}\"}} 3"),
            format!("fedsec_phase_duration_seconds_count{{task=\"{t}\",phase=\"Complaints\"}} 2"),
            "fedsec_refusals_total{reason=\"size\"} 2".into(),
            "fedsec_grpc_body_bytes_total{direction=\"in\"} 100".into(),
            "fedsec_audit_log_up 1".into(),
            "fedsec_store_up 0".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn statuses_map_to_their_reasons() {
        assert_eq!(Refusal::of_service_status(Code::Ok), None);
        assert_eq!(Refusal::of_service_status(Code::Internal), None);
        assert_eq!(Refusal::of_service_status(Code::Cancelled), None);
        assert_eq!(Refusal::of_service_status(Code::FailedPrecondition), Some(Refusal::Protocol));
        assert_eq!(Refusal::of_service_status(Code::ResourceExhausted), Some(Refusal::Resource));
        assert_eq!(Refusal::of_edge_status(Code::PermissionDenied), Refusal::DenyList);
        assert_eq!(Refusal::of_edge_status(Code::ResourceExhausted), Refusal::RateLimit);
        assert_eq!(Refusal::of_edge_status(Code::Unauthenticated), Refusal::Identity);
    }

    #[test]
    fn the_ops_listener_binds_loopback_only() {
        assert!(check_ops_address(&"127.0.0.1:9464".parse().unwrap()).is_ok());
        assert!(check_ops_address(&"[::1]:9464".parse().unwrap()).is_ok());
        assert!(check_ops_address(&"0.0.0.0:9464".parse().unwrap()).is_err());
        assert!(check_ops_address(&"10.1.2.3:9464".parse().unwrap()).is_err());
    }
}
