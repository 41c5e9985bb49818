//! The client's configuration file (`client.toml`).

use std::path::{Path, PathBuf};

use fedsec_crypto::AdversaryClass;
use fedsec_crypto::secagg::client::ClientPolicy;
use serde::Deserialize;

use crate::error::{ClientError, ConfigError, Result};

/// Where the coordinator is, who this site is, and the floor it holds the coordinator to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The coordinator's address, `https://host:port` (or `http://` with `insecure`).
    pub coordinator: String,
    /// The name the coordinator's certificate is checked against.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// The training task to join, 32 hex digits.
    pub task_id: String,
    /// The federation CA certificate (PEM): the coordinator's and the peers' certificates must
    /// chain to it.
    pub ca: PathBuf,
    /// This site's certificate (PEM, Ed25519).
    pub cert: PathBuf,
    /// This site's private key (PKCS#8 PEM). It signs the protocol's messages too.
    pub key: PathBuf,
    /// The coordinator's checkpoint-signing public key (PEM or 64 hex digits).
    pub coordinator_key: PathBuf,
    /// Where the client keeps what must survive a restart: the newest checkpoint version seen
    /// (no rollback) and the checkpoints it contributed to (one input per checkpoint).
    pub state_dir: PathBuf,
    /// The floor this site holds every round plan to.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Plain TCP to a loopback coordinator started with `--insecure` (demos only): refused
    /// toward any other address.
    #[serde(default)]
    pub insecure: bool,
    /// The largest checkpoint, in bytes, this site downloads: a manifest announcing more is
    /// refused before anything is allocated for it.
    #[serde(default = "default_max_model_bytes")]
    pub max_model_bytes: u64,
    /// Stop after taking part in this many completed rounds (default: until the task ends).
    #[serde(default)]
    pub max_rounds: Option<u64>,
    /// Encrypts the state file at rest (see [`fedsec_wire::at_rest`]): `key` (the current
    /// key-encryption key: `file:PATH`, `env:NAME` or `command:PROGRAM ARGS`) and `previous`
    /// keys still accepted for reading.
    #[serde(default)]
    pub encryption: Option<fedsec_wire::at_rest::EncryptionConfig>,
}

fn default_server_name() -> String {
    "localhost".into()
}

/// The default `max_model_bytes`: 1 GiB, room for a model of 250M f32 parameters (the design's
/// 100M-parameter models are 400 MB).
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 1 << 30;

fn default_max_model_bytes() -> u64 {
    DEFAULT_MAX_MODEL_BYTES
}

/// True if `url` names a coordinator on this host's loopback: an IP literal in 127.0.0.0/8 or
/// `::1`. Names are not resolved (whatever `localhost` resolves to is not checked here).
fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<tonic::transport::Uri>() else { return false };
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The site's own floor: the coordinator cannot talk it below these.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// `curious`, `semi-malicious` or `malicious`.
    pub min_adversary: String,
    /// Smallest assumed corrupt fraction γ accepted.
    pub min_corrupt: f64,
    /// Largest assumed dropout δ accepted.
    pub max_dropout: f64,
    /// Smallest selected set |U| accepted.
    pub min_clients: usize,
    /// Smallest ⌈(1−δ)|U|⌉ accepted.
    pub min_surviving: usize,
    /// Largest distance, in seconds, between a plan's certificate instant T and this site's
    /// clock when the plan arrives: it covers the clocks' error and the plan's delivery. Every
    /// peer's certificate chain is judged at T, so a T beyond it is refused.
    pub max_clock_skew_secs: u64,
}

/// The default `max_clock_skew_secs`: five minutes.
pub const DEFAULT_MAX_CLOCK_SKEW_SECS: u64 = 300;

impl Default for PolicyConfig {
    fn default() -> Self {
        let p = ClientPolicy::default();
        PolicyConfig {
            min_adversary: "semi-malicious".into(),
            min_corrupt: f64::from(p.min_corrupt_ppm) / 1e6,
            max_dropout: f64::from(p.max_dropout_ppm) / 1e6,
            min_clients: p.min_clients,
            min_surviving: p.min_surviving,
            max_clock_skew_secs: DEFAULT_MAX_CLOCK_SKEW_SECS,
        }
    }
}

impl PolicyConfig {
    /// The core's policy.
    pub fn to_policy(&self) -> Result<ClientPolicy> {
        let min_adversary = match self.min_adversary.as_str() {
            "curious" => AdversaryClass::Curious,
            "semi-malicious" => AdversaryClass::SemiMalicious,
            "malicious" => AdversaryClass::Malicious,
            other => return Err(ConfigError::MinAdversary(other.into()).into()),
        };
        let ppm = |name: &'static str, value: f64| {
            if (0.0..1.0).contains(&value) {
                Ok((value * 1e6).round() as u32)
            } else {
                Err(ConfigError::Fraction { name, value })
            }
        };
        Ok(ClientPolicy {
            min_adversary,
            min_corrupt_ppm: ppm("min_corrupt", self.min_corrupt)?,
            max_dropout_ppm: ppm("max_dropout", self.max_dropout)?,
            min_clients: self.min_clients,
            min_surviving: self.min_surviving,
            ..ClientPolicy::default()
        })
    }
}

impl ClientConfig {
    /// Reads a TOML file; relative paths in it are taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ClientError::Io { path: path.into(), source })?;
        let mut c: ClientConfig = toml::from_str(&text).map_err(|source| {
            let offset = source.span().map_or(0, |s| s.start).min(text.len());
            let line = text.as_bytes()[..offset].iter().filter(|b| **b == b'\n').count() + 1;
            ConfigError::Parse { path: path.into(), line, source: Box::new(source) }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.ca, &mut c.cert, &mut c.key, &mut c.coordinator_key, &mut c.state_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(e) = &mut c.encryption {
            e.resolve(base);
        }
        c.check()?;
        Ok(c)
    }

    /// The rules a configuration must keep, whether read from a file or built in code: the
    /// policy parses, `insecure` only toward a loopback coordinator, a positive
    /// `max_model_bytes`. [`crate::Client::connect`] checks them too.
    pub fn check(&self) -> Result<()> {
        self.policy.to_policy()?;
        if self.insecure && !is_loopback_url(&self.coordinator) {
            return Err(ConfigError::InsecureNotLoopback { url: self.coordinator.clone() }.into());
        }
        if self.max_model_bytes == 0 {
            return Err(ConfigError::MaxModelBytes.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_with_paths_relative_to_the_file_and_checks_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(
            &path,
            r#"
coordinator = "https://127.0.0.1:7443"
task_id = "00112233445566778899aabbccddeeff"
ca = "ca.pem"
cert = "/abs/site.pem"
key = "site.key"
coordinator_key = "coordinator-signing.pub"
state_dir = "state"
[policy]
max_dropout = 0.3
"#,
        )
        .unwrap();
        let c = ClientConfig::load(&path).unwrap();
        assert_eq!(c.ca, dir.path().join("ca.pem"));
        assert_eq!(c.cert, PathBuf::from("/abs/site.pem"));
        assert_eq!(c.server_name, "localhost");
        assert_eq!(c.policy.to_policy().unwrap().max_dropout_ppm, 300_000);

        std::fs::write(&path, "coordinator = 1").unwrap();
        let err = ClientConfig::load(&path).unwrap_err();
        assert!(
            matches!(&err, ClientError::Config(ConfigError::Parse { path: p, .. }) if *p == path),
            "{err}"
        );
        assert!(err.to_string().contains("client.toml:1: "), "{err}");
        // An unknown key and a mistyped value are named with their line.
        let good = "coordinator = \"https://127.0.0.1:7443\"\ntask_id = \"00112233445566778899aabbccddeeff\"\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\ncoordinator_key = \"s.pub\"\nstate_dir = \"state\"\n";
        std::fs::write(&path, format!("{good}[policy]\nmax_dropuot = 0.3\n")).unwrap();
        let err = ClientConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("client.toml:9: ") && err.contains("max_dropuot"), "{err}");
        std::fs::write(&path, format!("{good}max_rounds = \"ten\"\n")).unwrap();
        let err = ClientConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("client.toml:8: "), "{err}");
        let bad = PolicyConfig { min_adversary: "trusting".into(), ..PolicyConfig::default() };
        assert!(matches!(
            bad.to_policy(),
            Err(ClientError::Config(ConfigError::MinAdversary(name))) if name == "trusting"
        ));
        let bad = PolicyConfig { max_dropout: 1.0, ..PolicyConfig::default() };
        assert!(matches!(
            bad.to_policy(),
            Err(ClientError::Config(ConfigError::Fraction { name: "max_dropout", .. }))
        ));
        assert_eq!(c.max_model_bytes, DEFAULT_MAX_MODEL_BYTES);
        let nope = dir.path().join("nope.toml");
        let missing = ClientConfig::load(&nope).unwrap_err();
        assert!(matches!(&missing, ClientError::Io { path, .. } if *path == nope), "{missing}");
    }

    fn with(coordinator: &str, insecure: bool) -> ClientConfig {
        ClientConfig {
            coordinator: coordinator.into(),
            server_name: default_server_name(),
            task_id: "00112233445566778899aabbccddeeff".into(),
            ca: "ca.pem".into(),
            cert: "site.pem".into(),
            key: "site.key".into(),
            coordinator_key: "coordinator.pub".into(),
            state_dir: "state".into(),
            policy: PolicyConfig::default(),
            insecure,
            max_model_bytes: DEFAULT_MAX_MODEL_BYTES,
            max_rounds: None,
            encryption: None,
        }
    }

    #[test]
    fn insecure_is_refused_toward_a_coordinator_off_the_loopback() {
        for ok in ["http://127.0.0.1:7443", "http://127.3.2.1:1", "http://[::1]:7443"] {
            with(ok, true).check().unwrap();
        }
        for bad in [
            "http://10.0.0.5:7443",
            "http://coordinator.example.org:7443",
            "http://localhost:7443",
            "http://[::ffff:10.0.0.1]:7443",
            "http://0.0.0.0:7443",
            "not a url",
        ] {
            let err = with(bad, true).check().unwrap_err();
            assert!(
                matches!(&err, ClientError::Config(ConfigError::InsecureNotLoopback { url }) if url == bad),
                "{bad}: {err}"
            );
            with(bad, false).check().unwrap();
        }
        let mut zero = with("https://10.0.0.5:7443", false);
        zero.max_model_bytes = 0;
        assert!(matches!(zero.check(), Err(ClientError::Config(ConfigError::MaxModelBytes))));
    }
}
