//! The operator's side of the Admin service: `fedsec-coordinator status` connects with the
//! operator's certificate and prints the tasks' states and their recent rounds;
//! `fedsec-coordinator republish` re-publishes a stalled task's model.
//!
//! `operator.toml` (relative paths are taken from the file's folder):
//!
//! ```toml
//! coordinator = "https://127.0.0.1:7443"
//! server_name = "localhost"          # the name the coordinator's certificate carries
//! task_id = "00112233445566778899aabbccddeeff"   # optional: without it, every task
//! ca = "pki/ca.pem"
//! cert = "pki/operator.pem"           # a certificate whose id the coordinator's `admins` lists
//! key = "pki/operator.key"
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fedsec_proto::v1;
use fedsec_proto::v1::admin_client::AdminClient;
use serde::Deserialize;
use tonic::transport::Endpoint;

/// Where the coordinator is and who the operator is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// The coordinator's address, `https://host:port`.
    pub coordinator: String,
    /// The name the coordinator's certificate is checked against.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// The task to ask about, 32 hex digits; without it, every task of the coordinator.
    #[serde(default)]
    pub task_id: Option<String>,
    /// The federation CA certificate (PEM).
    pub ca: PathBuf,
    /// The operator's certificate (PEM).
    pub cert: PathBuf,
    /// The operator's private key (PKCS#8 PEM).
    pub key: PathBuf,
}

fn default_server_name() -> String {
    "localhost".into()
}

/// Why the status could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The configuration is not valid TOML of the expected keys.
    #[error("{}: {source}", path.display())]
    Config { path: PathBuf, source: Box<toml::de::Error> },
    /// The command needs one task and the configuration names none.
    #[error("{}: set task_id to the task to act on", path.display())]
    NoTask { path: PathBuf },
    /// `task_id` is not 32 hex digits.
    #[error("{}: task_id {value:?} is not 32 hex digits", path.display())]
    TaskId { path: PathBuf, value: String },
    /// The certificate, key or CA do not make a TLS configuration.
    #[error("{}: {source}", path.display())]
    Tls { path: PathBuf, source: fedsec_client::tls::ClientTlsError },
    /// The coordinator's address is not a URI.
    #[error("{}: coordinator {value:?} is not an address: {source}", path.display())]
    Address { path: PathBuf, value: String, source: tonic::transport::Error },
    /// The coordinator could not be reached.
    #[error("cannot connect to {address}: {source}")]
    Connect { address: String, source: tonic::transport::Error },
    /// The coordinator refused or failed the call.
    #[error("the Admin service: {}: {}", .0.code(), .0.message())]
    Call(Box<tonic::Status>),
}

impl OperatorConfig {
    /// Reads `operator.toml`; relative paths are taken from its folder.
    pub fn load(path: &Path) -> Result<Self, OperatorError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| OperatorError::Read { path: path.to_path_buf(), source })?;
        let mut c: OperatorConfig = toml::from_str(&text).map_err(|source| {
            OperatorError::Config { path: path.to_path_buf(), source: Box::new(source) }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.ca, &mut c.cert, &mut c.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(c)
    }
}

/// The configured `task_id`, if any.
fn task_id(config: &OperatorConfig, path: &Path) -> Result<Option<Vec<u8>>, OperatorError> {
    match &config.task_id {
        None => Ok(None),
        Some(hex_id) => {
            Ok(Some(hex::decode(hex_id).ok().filter(|b| b.len() == 16).ok_or_else(|| {
                OperatorError::TaskId { path: path.into(), value: hex_id.clone() }
            })?))
        }
    }
}

/// Connects to the Admin service with the operator's certificate; `timeout` bounds each call.
async fn connect(
    config: &OperatorConfig,
    path: &Path,
    timeout: Duration,
) -> Result<AdminClient<tonic::transport::Channel>, OperatorError> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|source| OperatorError::Read { path: p.clone(), source })
    };
    fedsec_client::tls::install_crypto_provider();
    let tls = fedsec_client::tls::client_tls(
        &read(&config.ca)?,
        &read(&config.cert)?,
        &read(&config.key)?,
        &config.server_name,
    )
    .map_err(|source| OperatorError::Tls { path: path.into(), source })?;
    let address = |source| OperatorError::Address {
        path: path.into(),
        value: config.coordinator.clone(),
        source,
    };
    let channel = Endpoint::from_shared(config.coordinator.clone())
        .map_err(address)?
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .tls_config(tls)
        .map_err(address)?
        .connect()
        .await
        .map_err(|source| OperatorError::Connect { address: config.coordinator.clone(), source })?;
    Ok(AdminClient::new(channel).max_encoding_message_size(fedsec_proto::MAX_MESSAGE_BYTES))
}

fn call(s: tonic::Status) -> OperatorError {
    OperatorError::Call(Box::new(s))
}

/// Asks the coordinator for the configured task's status, or every task's without `task_id`.
pub async fn status(
    config: &OperatorConfig,
    path: &Path,
) -> Result<Vec<v1::TaskStatus>, OperatorError> {
    let task_id = task_id(config, path)?;
    let mut admin = connect(config, path, Duration::from_secs(30)).await?;
    Ok(match task_id {
        Some(task_id) => {
            vec![
                admin
                    .get_task_status(v1::TaskStatusRequest { task_id })
                    .await
                    .map_err(call)?
                    .into_inner(),
            ]
        }
        None => admin.list_tasks(v1::ListTasksRequest {}).await.map_err(call)?.into_inner().tasks,
    })
}

/// Re-publishes the configured task's model (`model`: new weights, safetensors; else the
/// current ones) as `to_version`, or above the versions clients reported; the reason goes in
/// the audit log.
pub async fn republish(
    config: &OperatorConfig,
    path: &Path,
    model: Option<&Path>,
    to_version: Option<u64>,
    reason: String,
) -> Result<v1::RepublishModelResponse, OperatorError> {
    let task_id =
        task_id(config, path)?.ok_or_else(|| OperatorError::NoTask { path: path.into() })?;
    let model = match model {
        Some(p) => std::fs::read(p)
            .map_err(|source| OperatorError::Read { path: p.to_path_buf(), source })?,
        None => Vec::new(),
    };
    // The call returns once the new checkpoint is stored (it waits up to a minute for that).
    let mut admin = connect(config, path, Duration::from_secs(90)).await?;
    Ok(admin
        .republish_model(v1::RepublishModelRequest {
            task_id,
            model,
            reason,
            to_version: to_version.unwrap_or(0),
        })
        .await
        .map_err(call)?
        .into_inner())
}

/// A task's status as the operator reads it: the task, then one line per recent round.
pub fn render(s: &v1::TaskStatus) -> String {
    let mut out = format!(
        "task {} ({}): {}, checkpoint version {}, round {}, phase {}, {} clients checked in\n",
        hex::encode(&s.task_id),
        s.name,
        s.state,
        s.checkpoint_version,
        s.round_id,
        s.phase,
        s.checked_in,
    );
    if !s.stalled.is_empty() {
        let _ = writeln!(out, "stalled: {}", s.stalled);
    }
    if s.recent_rounds.is_empty() {
        out.push_str("no round has ended yet\n");
        return out;
    }
    out.push_str("round  attempt   result     summed  selected  checkpoint  seconds\n");
    for r in &s.recent_rounds {
        let (round, attempt) = r.round.as_ref().map_or((0, String::new()), |k| {
            (k.round_id, hex::encode(k.attempt.get(..4).unwrap_or(&[])))
        });
        let selected = r.set_sizes.first().copied().unwrap_or(0);
        let seconds: f64 = r.phase_seconds.iter().sum();
        let result = if r.completed { "completed" } else { "aborted" };
        let checkpoint =
            if r.completed { r.new_checkpoint_version.to_string() } else { "-".to_string() };
        let _ = writeln!(
            out,
            "{round:>5}  {attempt:<8}  {result:<9}  {:>6}  {selected:>8}  {checkpoint:>10}  {seconds:>7.2}",
            r.participants
        );
        if !r.completed && !r.abort_reason.is_empty() {
            let _ = writeln!(out, "       {}", r.abort_reason);
        }
    }
    out
}
