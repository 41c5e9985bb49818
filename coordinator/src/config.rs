//! The coordinator's configuration: one TOML file, every key overridable.
//!
//! Precedence, lowest first: the file, then environment variables, then `--set` flags.
//! An environment variable `FEDSEC_<KEY>` sets `<key>` (lower-cased, `__` separating table
//! levels; only variables naming a key of the file count): `FEDSEC_LISTEN=0.0.0.0:7443`, `FEDSEC_TASK__ROUNDS=20`. A flag `--set
//! task.rounds=20` does the same; values are TOML (`--set 'task.graph="complete"'`, bare words
//! are taken as strings).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fedsec_crypto::{AdversaryClass, GraphKind, TaskId};
use serde::Deserialize;

use crate::engine::{PhaseDeadlines, TaskConfig};

/// A configuration that cannot be used, with where the problem is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file, a variable or a flag does not parse, or a value is out of range.
    #[error("{origin}: {reason}")]
    Invalid {
        /// The file, `FEDSEC_…` variable or `--set` flag.
        origin: String,
        /// What is wrong.
        reason: String,
    },
}

/// The keys at the top of the file; environment variables for other names are not overrides.
const TOP_LEVEL_KEYS: [&str; 12] = [
    "listen",
    "insecure",
    "store",
    "audit_log",
    "signing_key",
    "deny_list",
    "admins",
    "threads",
    "disconnect_grace_ms",
    "tls",
    "edge",
    "task",
];

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address to serve gRPC on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Plain TCP without client certificates; only on a loopback address (demos).
    #[serde(default)]
    pub insecure: bool,
    /// Checkpoint store: a folder, `file://…`, or `memory://`.
    pub store: String,
    /// The audit log (JSON lines); its signed head is kept beside it (`….head`).
    pub audit_log: PathBuf,
    /// The coordinator's Ed25519 key that signs checkpoints and the audit head (PKCS#8 PEM).
    pub signing_key: PathBuf,
    /// A file of denied client ids (64 hex digits per line); reloadable.
    #[serde(default)]
    pub deny_list: Option<PathBuf>,
    /// Client ids allowed to call the Admin service.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Threads of the aggregation kernel (0: one per core).
    #[serde(default)]
    pub threads: usize,
    /// How long a selected client may be without a connection before the running round stops
    /// waiting for it (a client whose connection was cut reconnects within this).
    #[serde(default = "default_disconnect_grace_ms")]
    pub disconnect_grace_ms: u64,
    /// TLS material. With `insecure`, only `client_ca` is used (peers' certificate chains are
    /// still checked in every round).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The network edge: admission, connection limits, keep-alive (see [`crate::edge`]).
    #[serde(default)]
    pub edge: crate::edge::EdgeConfig,
    /// A task to create (or resume from its stored checkpoints) and start at start-up.
    #[serde(default)]
    pub task: Option<TaskSection>,
}

fn default_disconnect_grace_ms() -> u64 {
    2000
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}

/// Certificates and keys of the TLS server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The federation CA that issues client certificates (PEM).
    pub client_ca: PathBuf,
}

/// A training task as the configuration file describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    /// 32 hex digits; fixed, so a restarted coordinator resumes the same task.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// The initial model (safetensors), used when the store holds no checkpoint of the task.
    pub initial_model: PathBuf,
    /// Target clients per round.
    pub clients_per_round: usize,
    /// Fewest clients a round starts with.
    pub min_clients: Option<usize>,
    /// Selection over-provisioning (≥ 1).
    pub over_selection: Option<f64>,
    /// `harary` (SecAgg+) or `complete` (SecAgg).
    pub graph: Option<String>,
    /// `curious`, `semi-malicious` or `malicious`.
    pub adversary: Option<String>,
    /// Assumed dropout fraction δ.
    pub dropout: Option<f64>,
    /// Assumed corrupt fraction γ.
    pub corrupt: Option<f64>,
    /// Clip bound of update values.
    pub clip: Option<f64>,
    /// Examples at which a client's weight reaches 1.
    pub max_examples: Option<u64>,
    /// Server learning rate η.
    pub server_learning_rate: Option<f32>,
    /// Rounds to run.
    pub rounds: Option<u64>,
    /// Masked-input chunk size in words.
    pub upload_chunk_words: Option<u32>,
    /// Masked inputs received at once.
    pub max_uploads_in_flight: Option<usize>,
    /// Upload lease, milliseconds: a partial masked input idle this long is evicted and its
    /// client counted as dropped.
    pub upload_idle_ms: Option<u64>,
    /// Deadlines in milliseconds.
    #[serde(default)]
    pub deadlines_ms: DeadlinesMs,
}

/// Per-step deadlines, in milliseconds; unset ones keep their defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlinesMs {
    /// Selection.
    pub selection: Option<u64>,
    /// Phase 0 (download, train, advertise).
    pub advertise_keys: Option<u64>,
    /// Phase 1.
    pub share_keys: Option<u64>,
    /// Phase 2.
    pub masked_input: Option<u64>,
    /// Phase 3.
    pub consistency: Option<u64>,
    /// Phase 4.
    pub unmasking: Option<u64>,
}

/// What is wrong with the `[task]` section.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskConfigError {
    /// `task.id` is not 32 hex digits.
    #[error("task.id = {0:?}: expected 32 hex digits")]
    Id(String),
    /// `task.graph` names no graph.
    #[error("task.graph = {0:?}: expected harary or complete")]
    Graph(String),
    /// `task.adversary` names no adversary class.
    #[error("task.adversary = {0:?}: expected curious, semi-malicious or malicious")]
    Adversary(String),
    /// `task.dropout` or `task.corrupt` is outside [0, 1).
    #[error("task.{name} = {value} must be in [0, 1)")]
    Fraction { name: &'static str, value: f64 },
    /// The configuration breaks a rule of the round engine.
    #[error(transparent)]
    Rule(#[from] crate::Error),
}

fn fraction_ppm(name: &'static str, value: f64) -> Result<u32, TaskConfigError> {
    if (0.0..1.0).contains(&value) {
        Ok((value * 1e6).round() as u32)
    } else {
        Err(TaskConfigError::Fraction { name, value })
    }
}

/// Parses an adversary class name.
pub fn adversary(name: &str) -> Result<AdversaryClass, TaskConfigError> {
    match name {
        "curious" => Ok(AdversaryClass::Curious),
        "semi-malicious" => Ok(AdversaryClass::SemiMalicious),
        "malicious" => Ok(AdversaryClass::Malicious),
        other => Err(TaskConfigError::Adversary(other.into())),
    }
}

impl TaskSection {
    /// The engine's configuration (validated).
    pub fn to_config(&self) -> Result<TaskConfig, TaskConfigError> {
        let id: [u8; 16] = hex::decode(&self.id)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| TaskConfigError::Id(self.id.clone()))?;
        let mut c = TaskConfig::new(TaskId(id), self.name.clone(), self.clients_per_round);
        if let Some(v) = self.min_clients {
            c.min_clients = v;
        }
        if let Some(v) = self.over_selection {
            c.over_selection = v;
        }
        if let Some(g) = &self.graph {
            c.graph = match g.as_str() {
                "harary" => GraphKind::Harary,
                "complete" => GraphKind::Complete,
                other => return Err(TaskConfigError::Graph(other.into())),
            };
        }
        if let Some(a) = &self.adversary {
            c.adversary = adversary(a)?;
        }
        if let Some(x) = self.dropout {
            c.dropout_ppm = fraction_ppm("dropout", x)?;
        }
        if let Some(x) = self.corrupt {
            c.corrupt_ppm = fraction_ppm("corrupt", x)?;
        }
        if let Some(v) = self.clip {
            c.clip = v;
        }
        if let Some(v) = self.max_examples {
            c.max_examples = v;
        }
        if let Some(v) = self.server_learning_rate {
            c.server_learning_rate = v;
        }
        if let Some(v) = self.rounds {
            c.rounds = v;
        }
        if let Some(v) = self.upload_chunk_words {
            c.upload_chunk_words = v;
        }
        if let Some(v) = self.max_uploads_in_flight {
            c.max_uploads_in_flight = v;
        }
        if let Some(v) = self.upload_idle_ms {
            c.upload_idle = Duration::from_millis(v);
        }
        let d = &self.deadlines_ms;
        let ms =
            |v: Option<u64>, default: Duration| v.map(Duration::from_millis).unwrap_or(default);
        let def = c.deadlines;
        c.deadlines = PhaseDeadlines {
            selection: ms(d.selection, def.selection),
            advertise_keys: ms(d.advertise_keys, def.advertise_keys),
            share_keys: ms(d.share_keys, def.share_keys),
            masked_input: ms(d.masked_input, def.masked_input),
            consistency: ms(d.consistency, def.consistency),
            unmasking: ms(d.unmasking, def.unmasking),
        };
        c.validate()?;
        Ok(c)
    }
}

/// Sets `path` (dotted) in `root` to `value`.
fn set_path(root: &mut toml::Table, path: &str, value: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().filter(|s| !s.is_empty()).ok_or("empty key")?;
    let mut table = root;
    for p in parts {
        let entry =
            table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry.as_table_mut().ok_or_else(|| format!("{p} is not a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// A value as TOML, or as a plain string when it is not TOML.
fn parse_value(text: &str) -> toml::Value {
    let doc = format!("v = {text}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.into()),
    }
}

impl CoordinatorConfig {
    /// Reads `path`, applies `FEDSEC_…` variables from `env` and `--set` flags, resolves
    /// relative paths against the file's folder, and checks the result.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: path.into(), source })?;
        let origin = path.display().to_string();
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError::Invalid { origin: origin.clone(), reason: e.to_string() }
        })?;
        let mut env: Vec<(String, String)> =
            env.into_iter().filter(|(k, _)| k.starts_with("FEDSEC_")).collect();
        env.sort();
        for (k, v) in env {
            let key = k["FEDSEC_".len()..].to_lowercase().replace("__", ".");
            // The FEDSEC_ namespace is shared (FEDSEC_CONFIG names the file, other programs
            // have their own variables): only keys of this file are overrides.
            let top = key.split('.').next().unwrap_or_default();
            if !TOP_LEVEL_KEYS.contains(&top) {
                continue;
            }
            set_path(&mut table, &key, parse_value(&v))
                .map_err(|reason| ConfigError::Invalid { origin: k.clone(), reason })?;
        }
        for s in sets {
            let (k, v) = s.split_once('=').ok_or_else(|| ConfigError::Invalid {
                origin: format!("--set {s}"),
                reason: "expected KEY=VALUE".into(),
            })?;
            set_path(&mut table, k.trim(), parse_value(v.trim()))
                .map_err(|reason| ConfigError::Invalid { origin: format!("--set {s}"), reason })?;
        }
        let mut c: CoordinatorConfig =
            toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
                ConfigError::Invalid { origin: origin.clone(), reason: e.to_string() }
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut c.audit_log);
        resolve(&mut c.signing_key);
        if let Some(p) = &mut c.deny_list {
            resolve(p);
        }
        if let Some(t) = &mut c.tls {
            resolve(&mut t.cert);
            resolve(&mut t.key);
            resolve(&mut t.client_ca);
        }
        if let Some(t) = &mut c.task {
            resolve(&mut t.initial_model);
        }
        if !c.store.contains("://") && Path::new(&c.store).is_relative() {
            c.store = base.join(&c.store).display().to_string();
        }
        c.check().map_err(|reason| ConfigError::Invalid { origin, reason })?;
        Ok(c)
    }

    fn check(&self) -> Result<(), String> {
        if self.tls.is_none() {
            return Err("a [tls] section is required (with insecure = true, only its client_ca is used: peers' certificates are checked in every round)".into());
        }
        if self.insecure && !self.listen.ip().is_loopback() {
            return Err(format!(
                "insecure mode serves plain TCP only on a loopback address, not {}",
                self.listen
            ));
        }
        for a in &self.admins {
            if hex::decode(a).map(|b| b.len()) != Ok(32) {
                return Err(format!("admins: {a:?} is not a client id (64 hex digits)"));
            }
        }
        self.edge.check().map_err(|e| e.to_string())?;
        if let Some(t) = &self.task {
            t.to_config().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
listen = "127.0.0.1:7443"
store = "data/checkpoints"
audit_log = "data/audit.log"
signing_key = "pki/coordinator-signing.key"

[tls]
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "pki/ca.pem"

[task]
id = "000102030405060708090a0b0c0d0e0f"
name = "digits"
initial_model = "model.safetensors"
clients_per_round = 10
graph = "complete"
dropout = 0.2
rounds = 3
deadlines_ms = { share_keys = 5000 }
"#;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("coordinator.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), FILE);
        let c = CoordinatorConfig::load(&p, [], &[]).unwrap();
        assert_eq!(c.audit_log, dir.path().join("data/audit.log"));
        let task = c.task.as_ref().unwrap().to_config().unwrap();
        assert_eq!(task.rounds, 3);
        assert_eq!(task.graph, GraphKind::Complete);
        assert_eq!(task.dropout_ppm, 200_000);
        assert_eq!(task.deadlines.share_keys, Duration::from_secs(5));

        let env = [
            ("FEDSEC_TASK__ROUNDS".to_string(), "7".to_string()),
            ("FEDSEC_THREADS".to_string(), "2".to_string()),
            ("HOME".to_string(), "/x".to_string()),
            ("FEDSEC_CONFIG".to_string(), "coordinator.toml".to_string()),
        ];
        let c = CoordinatorConfig::load(&p, env.clone(), &["task.rounds=9".into()]).unwrap();
        assert_eq!(c.threads, 2);
        assert_eq!(c.task.unwrap().rounds, Some(9), "flags win over the environment");
        let c = CoordinatorConfig::load(&p, env, &[]).unwrap();
        assert_eq!(c.task.unwrap().rounds, Some(7));
        let c = CoordinatorConfig::load(&p, [], &["task.name=other".into()]).unwrap();
        assert_eq!(c.task.unwrap().name, "other", "bare words are strings");
    }

    #[test]
    fn the_edge_section_has_defaults_and_takes_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), FILE);
        let c = CoordinatorConfig::load(&p, [], &[]).unwrap();
        assert_eq!(c.edge, crate::edge::EdgeConfig::default());
        let env = [("FEDSEC_EDGE__HANDSHAKE_TIMEOUT_MS".to_string(), "2500".to_string())];
        let c =
            CoordinatorConfig::load(&p, env, &["edge.max_concurrent_streams=8".into()]).unwrap();
        assert_eq!(c.edge.handshake_timeout_ms, 2500);
        assert_eq!(c.edge.max_concurrent_streams, 8);
        let err = CoordinatorConfig::load(&p, [], &["edge.max_handshakes=0".into()]).unwrap_err();
        assert!(err.to_string().contains("edge.max_handshakes must be greater than 0"), "{err}");
        let err = CoordinatorConfig::load(&p, [], &["edge.bogus=1".into()]).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn errors_say_where() {
        let dir = tempfile::tempdir().unwrap();
        let err = CoordinatorConfig::load(&dir.path().join("none.toml"), [], &[]).unwrap_err();
        assert!(err.to_string().contains("none.toml"));
        let p = write(dir.path(), FILE);
        let err = CoordinatorConfig::load(&p, [], &["task.dropout=1.5".into()]).unwrap_err();
        assert!(err.to_string().contains("task.dropout = 1.5"), "{err}");
        let err = CoordinatorConfig::load(&p, [], &["bogus".into()]).unwrap_err();
        assert!(err.to_string().contains("--set bogus"), "{err}");
        let err = CoordinatorConfig::load(&p, [], &["unknown_key=1".into()]).unwrap_err();
        assert!(err.to_string().contains("unknown_key"), "{err}");
        let err = CoordinatorConfig::load(
            &p,
            [],
            &["insecure=true".into(), "listen=\"0.0.0.0:1\"".into()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        let err = CoordinatorConfig::load(&p, [], &["task.clients_per_round=1000000000".into()])
            .unwrap_err();
        assert!(err.to_string().contains("overflow") || err.to_string().contains("wrap"), "{err}");
        let err = CoordinatorConfig::load(&p, [], &["task.upload_idle_ms=0".into()]).unwrap_err();
        assert!(err.to_string().contains("upload_idle"), "{err}");
    }

    #[test]
    fn the_upload_lease_has_a_default_and_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), FILE);
        let c = CoordinatorConfig::load(&p, [], &[]).unwrap();
        let task = c.task.unwrap().to_config().unwrap();
        assert_eq!(task.upload_idle, crate::engine::DEFAULT_UPLOAD_IDLE);
        let c = CoordinatorConfig::load(&p, [], &["task.upload_idle_ms=1500".into()]).unwrap();
        assert_eq!(c.task.unwrap().to_config().unwrap().upload_idle, Duration::from_millis(1500));
    }

    /// Selection takes the largest size with parameters, so a task is refused only when its
    /// smallest round has none — and the error says which sizes would do.
    #[test]
    fn a_minimum_round_without_parameters_is_refused_with_the_sizes_that_have_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), FILE);
        let harary = [
            "task.graph=harary".to_string(),
            "task.adversary=semi-malicious".into(),
            "task.corrupt=0.05".into(),
            "task.dropout=0.4".into(),
            "task.clients_per_round=20".into(),
            "task.over_selection=1.0".into(),
        ];
        // n = 4, 6, 8, 10 and 20 have no parameters at γ = 0.05, δ = 0.4; the others do.
        for min in [4usize, 6, 8, 10, 20] {
            let mut sets = harary.to_vec();
            sets.push(format!("task.min_clients={min}"));
            let err = CoordinatorConfig::load(&p, [], &sets).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(&format!("min_clients = {min} clients has no secure")), "{text}");
            assert!(text.contains(&format!("min_clients = {}", min - 1)), "{text}");
        }
        // The range 3..=20 holds sizes without parameters, and that is fine: selection steps
        // past them.
        let mut sets = harary.to_vec();
        sets.push("task.min_clients=3".into());
        let c = CoordinatorConfig::load(&p, [], &sets).unwrap();
        let task = c.task.unwrap().to_config().unwrap();
        assert_eq!(task.max_selected(), 20);
        assert_eq!(task.plannable_size(20).map(|(n, _)| n), Some(19));
        assert_eq!(task.plannable_size(4).map(|(n, _)| n), Some(3));
        assert_eq!(task.plannable_size(2), None, "below min_clients");
    }
}
