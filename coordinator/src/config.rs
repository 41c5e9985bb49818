//! The coordinator's configuration: one TOML file, every key overridable.
//!
//! Precedence, lowest first: the file, then environment variables, then `--set` flags.
//! An environment variable `FEDSEC_<KEY>` sets `<key>` (lower-cased, `__` separating table
//! levels; only variables naming a key of the file count): `FEDSEC_LISTEN=0.0.0.0:7443`, `FEDSEC_TASK__ROUNDS=20`. A flag `--set
//! task.rounds=20` does the same; values are TOML (`--set 'task.graph="complete"'`, bare words
//! are taken as strings).
//!
//! Every error about a key names the key and where its value came from ([`Origin`]): the file
//! and line, the variable, or the flag. Overrides are merged into the file's parsed table with
//! spans of their own, above the file's, so the span a deserialization error carries tells both
//! (see `config/sources.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fedsec_crypto::{AdversaryClass, GraphKind, TaskId};
use serde::Deserialize;

use crate::engine::{PhaseDeadlines, TaskConfig};

mod sources;
use sources::Sources;

/// Where a key's value came from: the file and its line, an environment variable, or a
/// `--set` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// The configuration file; the line of the key (or of its table), when it has one.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line, if the key (or its table) is written in the file.
        line: Option<usize>,
    },
    /// An environment variable `FEDSEC_…`.
    Env {
        /// The variable's name.
        var: String,
    },
    /// A `--set KEY=VALUE` flag (or `--listen`, `--insecure`, which are written as one).
    Set {
        /// The flag's argument, `KEY=VALUE`.
        arg: String,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File { path, line: Some(line) } => write!(f, "{}:{line}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env { var } => write!(f, "environment variable {var}"),
            Origin::Set { arg } => write!(f, "--set {arg}"),
        }
    }
}

/// What is wrong with one key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyProblem {
    /// The configuration has no such key (a typo?).
    #[error("no such key ({0})")]
    Unknown(String),
    /// The value has the wrong type or does not parse as the key's type.
    #[error("{0}")]
    Value(String),
    /// A required key is not set anywhere.
    #[error("required, but not set")]
    Missing,
    /// A key on the way to it is not a table (`--set listen.port=1`).
    #[error("{0} is not a table")]
    NotATable(String),
    /// The value is out of range, or breaks a rule with other keys.
    #[error("{0}")]
    Rule(String),
}

/// A configuration that cannot be used: every error about a key names the key and where its
/// value came from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{}:{line}: not TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// What the parser expected.
        message: String,
    },
    /// A `--set` flag is not `KEY=VALUE`.
    #[error("--set {arg}: expected KEY=VALUE")]
    SetSyntax {
        /// The flag's argument.
        arg: String,
    },
    /// The configuration as a whole does not deserialize, at no key in particular.
    #[error("{origin}: {reason}")]
    Invalid {
        /// The file (or the override) at fault.
        origin: Origin,
        /// What is wrong.
        reason: String,
    },
    /// A key is unknown, missing, of the wrong type or out of range.
    #[error("{origin}: {key}: {problem}")]
    Key {
        /// The key, dotted (`task.rounds`).
        key: String,
        /// Where its value came from (for a missing key, the file or table that lacks it).
        origin: Origin,
        /// What is wrong.
        problem: KeyProblem,
    },
}

/// The keys at the top of the file; environment variables for other names are not overrides.
const TOP_LEVEL_KEYS: [&str; 14] = [
    "listen",
    "ops_listen",
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
    "encryption",
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
    /// The ops listener: `GET /metrics` (Prometheus) and `GET /healthz` over plain HTTP, on a
    /// loopback address only (see [`crate::metrics`]). Off when unset.
    #[serde(default)]
    pub ops_listen: Option<SocketAddr>,
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
    /// Encryption at rest of the checkpoint store (see [`fedsec_wire::at_rest`]); off when
    /// absent.
    #[serde(default)]
    pub encryption: Option<fedsec_wire::at_rest::EncryptionConfig>,
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
    /// Phase 1½.
    pub complaints: Option<u64>,
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
            complaints: ms(d.complaints, def.complaints),
            masked_input: ms(d.masked_input, def.masked_input),
            consistency: ms(d.consistency, def.consistency),
            unmasking: ms(d.unmasking, def.unmasking),
        };
        c.validate()?;
        Ok(c)
    }
}

impl CoordinatorConfig {
    /// Reads `path`, applies `FEDSEC_…` variables from `env` and `--set` flags, resolves
    /// relative paths against the file's folder, and checks the result. An error about a key
    /// names it and where its value came from (see [`ConfigError::Key`]).
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: path.into(), source })?;
        let mut env: Vec<(String, String, String)> = env
            .into_iter()
            .filter_map(|(var, value)| {
                let key = var.strip_prefix("FEDSEC_")?.to_lowercase().replace("__", ".");
                // The FEDSEC_ namespace is shared (FEDSEC_CONFIG names the file, other programs
                // have their own variables): only keys of this file are overrides.
                let top = key.split('.').next().unwrap_or_default();
                TOP_LEVEL_KEYS.contains(&top).then_some((var, key, value))
            })
            .collect();
        env.sort();
        let mut flags = Vec::new();
        for arg in sets {
            let (k, v) =
                arg.split_once('=').ok_or_else(|| ConfigError::SetSyntax { arg: arg.clone() })?;
            flags.push((arg, k.trim(), v));
        }
        let mut sources = Sources::parse(path, &text)?;
        for (var, key, value) in &env {
            sources.set(key, value, Origin::Env { var: var.clone() })?;
        }
        for (arg, key, value) in &flags {
            sources.set(key, value, Origin::Set { arg: (*arg).clone() })?;
        }
        let mut c =
            CoordinatorConfig::deserialize(toml::de::Deserializer::from(sources.root.clone()))
                .map_err(|e| sources.locate(&e))?;
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
        if let Some(e) = &mut c.encryption {
            e.resolve(base);
        }
        if !c.store.contains("://") && Path::new(&c.store).is_relative() {
            c.store = base.join(&c.store).display().to_string();
        }
        c.check().map_err(|(key, reason)| ConfigError::Key {
            origin: sources.origin_of(&key),
            key,
            problem: KeyProblem::Rule(reason),
        })?;
        Ok(c)
    }

    /// Rules across keys; on error, the key to blame and why.
    fn check(&self) -> Result<(), (String, String)> {
        if self.tls.is_none() {
            return Err(("tls".into(), "a [tls] section is required (with insecure = true, only its client_ca is used: peers' certificates are checked in every round)".into()));
        }
        if self.insecure && !self.listen.ip().is_loopback() {
            return Err((
                "listen".into(),
                format!(
                    "insecure mode serves plain TCP only on a loopback address, not {}",
                    self.listen
                ),
            ));
        }
        if let Some(ops) = &self.ops_listen {
            crate::metrics::check_ops_address(ops).map_err(|e| ("ops_listen".to_string(), e))?;
        }
        for a in &self.admins {
            if hex::decode(a).map(|b| b.len()) != Ok(32) {
                return Err(("admins".into(), format!("{a:?} is not a client id (64 hex digits)")));
            }
        }
        self.edge.check().map_err(|e| (edge_key(&e), e.to_string()))?;
        if let Some(t) = &self.task {
            t.to_config().map_err(|e| (t.key_of(&e), e.to_string()))?;
        }
        Ok(())
    }
}

/// The key an edge rule names.
fn edge_key(e: &crate::edge::EdgeConfigError) -> String {
    use crate::edge::EdgeConfigError as E;
    match e {
        E::Zero { key } => format!("edge.{key}"),
        E::PerIpAboveTotal { .. } => "edge.max_handshakes_per_ip".into(),
        E::PerClientAboveTotal { .. } => "edge.max_connections_per_client".into(),
        E::RateLimits(
            crate::edge::RateLimitConfigError::Zero { key }
            | crate::edge::RateLimitConfigError::TooLarge { key, .. },
        ) => format!("edge.rate_limits.{key}"),
    }
}

impl TaskSection {
    /// The key of `[task]` a refusal of [`to_config`](Self::to_config) is about.
    fn key_of(&self, e: &TaskConfigError) -> String {
        use crate::error::{ConfigRule as R, Error};
        let key = match e {
            TaskConfigError::Id(_) => "id",
            TaskConfigError::Graph(_) => "graph",
            TaskConfigError::Adversary(_) => "adversary",
            TaskConfigError::Fraction { name, .. } => *name,
            TaskConfigError::Rule(Error::InvalidConfig(rule)) => match rule {
                R::NoClients => "clients_per_round",
                R::MinClients { .. } | R::NoSecureParameters { .. } => "min_clients",
                R::OverSelection(_) => "over_selection",
                R::Fractions { .. } => "dropout",
                R::ServerLearningRate(_) => "server_learning_rate",
                R::UploadLimits if self.upload_chunk_words == Some(0) => "upload_chunk_words",
                R::UploadLimits => "max_uploads_in_flight",
                R::Deadline if self.upload_idle_ms == Some(0) => "upload_idle_ms",
                R::Deadline => "deadlines_ms",
                _ => return "task".into(),
            },
            _ => return "task".into(),
        };
        format!("task.{key}")
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

    /// Every top-level key of the file can be set from the environment too: a setting the
    /// environment names is never silently ignored (an `[encryption]` key that did not take
    /// would leave the store in the clear).
    #[test]
    fn every_top_level_key_can_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), FILE);
        let env = [
            ("FEDSEC_ENCRYPTION__KEY".to_string(), "env:SOME_KEK".to_string()),
            ("FEDSEC_OPS_LISTEN".to_string(), "127.0.0.1:9464".to_string()),
        ];
        let c = CoordinatorConfig::load(&p, env, &[]).unwrap();
        assert_eq!(c.encryption.unwrap().key, "env:SOME_KEK");
        assert_eq!(c.ops_listen, Some("127.0.0.1:9464".parse().unwrap()));
        // The list holds every field of the file (a new field must be added to it).
        let fields = [
            "listen",
            "ops_listen",
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
            "encryption",
        ];
        assert_eq!(TOP_LEVEL_KEYS.len(), fields.len());
        for f in fields {
            assert!(TOP_LEVEL_KEYS.contains(&f), "{f}");
        }
    }

    #[test]
    fn an_ops_listener_off_loopback_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), FILE);
        assert_eq!(
            CoordinatorConfig::load(&p, [], &[]).unwrap().ops_listen,
            None,
            "off by default"
        );
        let on = ["ops_listen=\"127.0.0.1:9464\"".to_string()];
        let c = CoordinatorConfig::load(&p, [], &on).unwrap();
        assert_eq!(c.ops_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let off = ["ops_listen=\"0.0.0.0:9464\"".to_string()];
        let err = CoordinatorConfig::load(&p, [], &off).unwrap_err().to_string();
        assert!(err.contains("ops_listen") && err.contains("loopback"), "{err}");
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

    /// The key, origin and problem of an error that must be about a key.
    fn key_error(result: Result<CoordinatorConfig, ConfigError>) -> (String, Origin, KeyProblem) {
        match result {
            Err(ConfigError::Key { key, origin, problem }) => (key, origin, problem),
            other => panic!("expected an error about a key, got {other:?}"),
        }
    }

    /// The 1-based line of the first line of `text` that starts with `start`.
    fn line(text: &str, start: &str) -> Option<usize> {
        text.lines().position(|l| l.starts_with(start)).map(|i| i + 1)
    }

    #[test]
    fn every_key_error_names_the_key_and_where_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str, env: &[(&str, &str)], sets: &[&str]| {
            let p = write(dir.path(), text);
            let env: Vec<(String, String)> =
                env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            CoordinatorConfig::load(&p, env, &sets)
        };
        let path = dir.path().join("coordinator.toml");
        let file = |line| Origin::File { path: path.clone(), line };
        let env = |var: &str| Origin::Env { var: var.into() };
        let set = |arg: &str| Origin::Set { arg: arg.into() };

        // The file: the line of the key.
        let text = format!("{FILE}roudns = 5\n");
        let (key, origin, problem) = key_error(load(&text, &[], &[]));
        assert_eq!((key.as_str(), origin), ("task.roudns", file(line(&text, "roudns"))));
        assert!(matches!(problem, KeyProblem::Unknown(ref m) if m.contains("roudns")), "{problem}");
        let text = FILE.replace("rounds = 3", "rounds = \"three\"");
        let (key, origin, problem) = key_error(load(&text, &[], &[]));
        assert_eq!((key.as_str(), origin), ("task.rounds", file(line(&text, "rounds"))));
        assert!(matches!(problem, KeyProblem::Value(_)), "{problem}");
        let text = FILE.replace("dropout = 0.2", "dropout = 1.5");
        let (key, origin, problem) = key_error(load(&text, &[], &[]));
        assert_eq!((key.as_str(), origin), ("task.dropout", file(line(&text, "dropout"))));
        assert!(matches!(problem, KeyProblem::Rule(ref m) if m.contains("[0, 1)")), "{problem}");

        // An environment variable: its name, even for a key the file does not have.
        let var = "FEDSEC_TASK__ROUDNS";
        let err = load(FILE, &[(var, "5")], &[]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("environment variable FEDSEC_TASK__ROUDNS: task.roudns: no such key"),
            "{text}"
        );
        assert!(!text.contains("coordinator.toml"), "{text}");
        let (key, origin, problem) =
            key_error(load(FILE, &[("FEDSEC_TASK__ROUNDS", "three")], &[]));
        assert_eq!((key.as_str(), origin), ("task.rounds", env("FEDSEC_TASK__ROUNDS")));
        assert!(matches!(problem, KeyProblem::Value(_)), "{problem}");
        let (key, origin, problem) = key_error(load(FILE, &[("FEDSEC_TASK__DROPOUT", "1.5")], &[]));
        assert_eq!((key.as_str(), origin), ("task.dropout", env("FEDSEC_TASK__DROPOUT")));
        assert!(matches!(problem, KeyProblem::Rule(_)), "{problem}");

        // A --set flag: its argument; a flag wins over the variable it overrides.
        let (key, origin, problem) = key_error(load(FILE, &[], &["task.roudns=5"]));
        assert_eq!((key.as_str(), origin), ("task.roudns", set("task.roudns=5")));
        assert!(matches!(problem, KeyProblem::Unknown(_)), "{problem}");
        let (key, origin, problem) =
            key_error(load(FILE, &[("FEDSEC_TASK__ROUNDS", "4")], &["task.rounds=three"]));
        assert_eq!((key.as_str(), origin), ("task.rounds", set("task.rounds=three")));
        assert!(matches!(problem, KeyProblem::Value(_)), "{problem}");
        let (key, origin, problem) = key_error(load(FILE, &[], &["task.dropout=1.5"]));
        assert_eq!((key.as_str(), origin), ("task.dropout", set("task.dropout=1.5")));
        assert!(matches!(problem, KeyProblem::Rule(_)), "{problem}");
        let (key, origin, problem) = key_error(load(FILE, &[], &["listen.port=1"]));
        assert_eq!((key.as_str(), origin), ("listen.port", set("listen.port=1")));
        assert_eq!(problem, KeyProblem::NotATable("listen".into()));
        let (key, origin, _) = key_error(load(FILE, &[], &["edge.max_connections=0"]));
        assert_eq!((key.as_str(), origin), ("edge.max_connections", set("edge.max_connections=0")));

        // A key set nowhere: the file, and the line of its table when it has one.
        let text = FILE.replace("store = \"data/checkpoints\"\n", "");
        let (key, origin, problem) = key_error(load(&text, &[], &[]));
        assert_eq!((key.as_str(), origin, problem), ("store", file(None), KeyProblem::Missing));
        let text = FILE.replace("id = \"000102030405060708090a0b0c0d0e0f\"\n", "");
        let (key, origin, problem) = key_error(load(&text, &[], &[]));
        assert_eq!((key.as_str(), problem), ("task.id", KeyProblem::Missing));
        assert_eq!(origin, file(line(&text, "[task]")));

        // A file that is not TOML: its line.
        let text = FILE.replace("rounds = 3", "rounds = = 3");
        match load(&text, &[], &[]) {
            Err(ConfigError::Syntax { line: l, .. }) => assert_eq!(Some(l), line(&text, "rounds")),
            other => panic!("expected a syntax error, got {other:?}"),
        }
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
