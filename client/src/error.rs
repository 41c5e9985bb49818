//! The client library's error type.

use std::path::PathBuf;

use tonic::Status;

/// What can go wrong while taking part in a federation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration breaks a rule.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// A key or certificate file is not what it should be.
    #[error("{}: {reason}", path.display())]
    Credential {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: CredentialProblem,
    },
    /// The client's state file does not hold (or its state does not make) client state JSON.
    #[error("{}: client state: {source}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The encrypted state file does not open, or a key does not load.
    #[error(transparent)]
    Sealed(#[from] fedsec_wire::at_rest::AtRestError),
    /// Another process holds the state folder's lock: two clients on one state folder would
    /// overwrite each other's contribution ledger.
    #[error(
        "{}: another client process uses this state folder; stop it, or give this client its own state_dir",
        path.display()
    )]
    StateInUse {
        /// The lock file.
        path: PathBuf,
    },
    /// The connection to the coordinator failed.
    #[error("cannot connect to the coordinator: {0}")]
    Connect(#[from] ConnectError),
    /// The coordinator answered with an error status.
    #[error("the coordinator refused {call}: {status}")]
    Status {
        /// The call.
        call: &'static str,
        /// Its status.
        status: Box<tonic::Status>,
    },
    /// A message from the coordinator has a malformed field.
    #[error("from the coordinator: {0}")]
    Malformed(#[from] fedsec_wire::WireError),
    /// The secure aggregation core refused (a plan below the floor, a bad peer, a bad
    /// checkpoint…): the client takes no part in that attempt.
    #[error(transparent)]
    Protocol(#[from] fedsec_crypto::Error),
    /// The checkpoint or its signed manifest is refused (signature, size, hash, rollback, or
    /// not a model): the client does not train on it.
    #[error("refusing the checkpoint: {0}")]
    Checkpoint(#[from] fedsec_wire::checkpoint::CheckpointError),
    /// The checkpoint's manifest announces more bytes than this site's `max_model_bytes`:
    /// nothing was allocated for it, and the client does not take part in that attempt.
    #[error(
        "the checkpoint announces {announced} bytes, above this site's max_model_bytes = {limit}"
    )]
    ModelTooLarge {
        /// The size the manifest announces.
        announced: u64,
        /// The configured limit.
        limit: u64,
    },
    /// Local training failed.
    #[error("training failed: {0}")]
    Training(#[from] crate::trainer::TrainError),
    /// The task's model does not fit this site's trainer: the client stops, since every round
    /// of the task would fail the same way.
    #[error(
        "the task's model does not fit this trainer ({0}); check the trainer's options (--model, --classes, --hidden) and the data's columns against the task's initial model"
    )]
    ModelDoesNotFit(crate::trainer::TrainError),
    /// The coordinator aborted the attempt (a round result that did not complete, or an
    /// `ABORTED` status); the global model is unchanged.
    #[error("the round was aborted: {reason}")]
    Aborted {
        /// The coordinator's reason: free text on the wire (`RoundResult.abort_reason`, or the
        /// status message), shown as it came.
        reason: String,
    },
    /// The coordinator sent a plan for another task than the one this client joined.
    #[error("the plan is for task {got}, this client takes part in task {expected}")]
    WrongTask {
        /// The client's task.
        expected: fedsec_crypto::TaskId,
        /// The plan's.
        got: fedsec_crypto::TaskId,
    },
    /// The trainer's update does not have the plan's length (the plan's vector is the update
    /// and one weight word).
    #[error("the trainer's update has {got} values, the plan's model {expected}")]
    UpdateLength {
        /// The update's length.
        got: usize,
        /// The model's length in the plan.
        expected: usize,
    },
    /// A reply came that the round was not waiting for (a driver bug, or a confused
    /// coordinator): the attempt ends.
    #[error("the round expected {expected}, got {got}")]
    OutOfOrder {
        /// What the round waited for.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// A simulated dropout (the `drop_out` test hook, only with the feature `test-hooks`): the
    /// client stops as if its process had died.
    #[error("dropped out of round {round} before phase {phase} (simulated)")]
    DroppedOut {
        /// The round.
        round: u64,
        /// The phase whose message was never sent.
        phase: fedsec_crypto::secagg::Phase,
    },
}

impl ClientError {
    pub(crate) fn status(call: &'static str, status: tonic::Status) -> Self {
        ClientError::Status { call, status: Box::new(status) }
    }
}

/// The rule a client configuration breaks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is not a client configuration: not TOML, an unknown or missing key, or a
    /// value of the wrong type.
    #[error("{}:{line}: {}", path.display(), source.message().trim())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key or value at fault (1 when the error has no place, such as
        /// a key missing from the whole file).
        line: usize,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// `task_id` is not 32 hex digits.
    #[error("task_id = {0:?}: expected 32 hex digits")]
    TaskId(String),
    /// `policy.min_adversary` names no adversary class.
    #[error("policy.min_adversary = {0:?}: expected curious, semi-malicious or malicious")]
    MinAdversary(String),
    /// A fraction of the policy is outside [0, 1).
    #[error("policy.{name} = {value} must be in [0, 1)")]
    Fraction {
        /// The field.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// `insecure` (plain TCP, no certificates) toward a coordinator that is not on this host's
    /// loopback: the connection and the client's identity would cross a network unprotected.
    #[error("insecure = true only toward a loopback coordinator (127.0.0.0/8 or ::1), not {url:?}")]
    InsecureNotLoopback {
        /// The coordinator's address.
        url: String,
    },
    /// `max_model_bytes` is 0.
    #[error("max_model_bytes must be at least 1")]
    MaxModelBytes,
    /// `coordinator` is not a URL the client can connect to.
    #[error("coordinator = {url:?}: {source}")]
    Coordinator {
        /// The URL.
        url: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// What is wrong with a key or certificate file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialProblem {
    /// The file is not UTF-8 text (PEM or hex).
    #[error("not text")]
    NotText,
    /// The file is not PEM certificates.
    #[error("not PEM certificates: {0}")]
    Pem(rustls_pki_types::pem::Error),
    /// The file holds no certificate.
    #[error("no certificate")]
    NoCertificate,
    /// The file is not an Ed25519 PKCS#8 private key.
    #[error("not an Ed25519 PKCS#8 key: {0}")]
    PrivateKey(ed25519_dalek::pkcs8::Error),
    /// The file is not an Ed25519 SPKI public key.
    #[error("not an Ed25519 public key: {0}")]
    PublicKey(ed25519_dalek::pkcs8::spki::Error),
    /// The file is neither a PEM public key nor 64 hex digits.
    #[error("expected a PEM public key or 64 hex digits")]
    NotAPublicKey,
    /// The 32 bytes are not an Ed25519 key.
    #[error("not an Ed25519 key: {0}")]
    InvalidKey(ed25519_dalek::SignatureError),
    /// The certificate does not parse.
    #[error(transparent)]
    Certificate(fedsec_wire::x509::X509Error),
    /// The certificate is for another key than the client's.
    #[error("the certificate is not for the key in {}", key.display())]
    NotForKey {
        /// The key file.
        key: PathBuf,
    },
    /// The certificate, key and CA do not make a TLS configuration.
    #[error(transparent)]
    Tls(crate::tls::ClientTlsError),
}

/// Why the client cannot reach the coordinator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TLS configuration does not apply to the connection.
    #[error("TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    /// The TLS handshake refused this client or the coordinator: a certificate that is not
    /// trusted, missing, revoked or expired. Retrying cannot help.
    #[error("the TLS handshake was refused: {}", describe(.0))]
    HandshakeRefused(Box<Status>),
}

/// A status and its chain of sources, on one line.
pub(crate) fn describe(s: &Status) -> String {
    let mut text = format!("{}: {}", s.code(), s.message());
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

/// Result alias.
pub type Result<T, E = ClientError> = core::result::Result<T, E>;
