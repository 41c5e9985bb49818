//! A federation of real processes on 127.0.0.1: a development PKI, one `fedsec-coordinator`,
//! and `fedsec-client` processes, each with its own synthetic CSV file.

#![allow(dead_code)] // each test file uses a part of this harness

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fedsec_crypto::quant::QuantParams;
use fedsec_wire::model::Model;

pub const FEATURES: usize = 4;
pub const CLASSES: usize = 3;
pub const TASK_ID: &str = "0f0e0d0c0b0a09080706050403020100";
pub const CLIP: f64 = 1.0;
pub const MAX_EXAMPLES: u64 = 100;
pub const SERVER_LR: f32 = 1.0;

/// A built binary of the workspace (`cargo test --workspace` builds both, the client with the
/// feature `test-hooks` that this crate turns on). A client built without the hooks (by
/// `cargo build -p fedsec-client`, as it ships) has none of the `--test-…` flags the tests
/// use: its version line says so, and it is rebuilt with them.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let path = dir.join(name);
    let usable =
        |path: &Path| path.exists() && (name != "fedsec-client" || client_has_test_hooks(path));
    if !usable(&path) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "fedsec-coordinator", "-p", "fedsec-client", "--bins"]);
        build.args(["--features", "fedsec-client/test-hooks"]);
        if dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
    }
    assert!(usable(&path), "{} is missing or has no test hooks", path.display());
    path
}

/// Whether a client binary was built with the feature `test-hooks` (its version line says so).
fn client_has_test_hooks(path: &Path) -> bool {
    Command::new(path)
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("test-hooks"))
}

/// Runs a command to completion and returns its stdout; panics with its stderr on failure.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process whose output lines are collected and can be waited for.
pub struct Proc {
    pub name: String,
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    notify: mpsc::Receiver<()>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let lines = lines.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                    let _ = tx.send(());
                }
            });
        }
        Proc { name: name.into(), child, lines, notify: rx }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until `count` lines contain `needle`; returns the last such line.
    pub fn wait_for(&self, needle: &str, count: usize, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                let hits: Vec<&String> = lines.iter().filter(|l| l.contains(needle)).collect();
                if hits.len() >= count {
                    return hits[count - 1].clone();
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} never printed {needle:?} ×{count}:\n{}",
                self.name,
                self.output()
            );
            let _ = self.notify.recv_timeout(left.min(Duration::from_millis(200)));
        }
    }

    /// Waits for the process to exit; returns whether it succeeded.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status.success();
            }
            assert!(Instant::now() < end, "{} did not exit:\n{}", self.name, self.output());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `fedsec-coordinator serve` on `root/coordinator.toml`; the process and its address.
fn spawn_coordinator(root: &Path) -> (Proc, String, String) {
    let coordinator = Proc::spawn(
        "coordinator",
        Command::new(bin("fedsec-coordinator"))
            .args(["serve", "--config"])
            .arg(root.join("coordinator.toml"))
            .env("RUST_LOG", "info"),
    );
    let line = coordinator.wait_for("listening on", 1, Duration::from_secs(60));
    let addr = line.trim_start_matches("listening on ").trim().to_string();
    let line = coordinator.wait_for("ops listening on", 1, Duration::from_secs(60));
    let ops = line.trim_start_matches("ops listening on ").trim().to_string();
    (coordinator, addr, ops)
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Options of a test federation.
#[derive(Debug, Clone)]
pub struct Options {
    pub clients: usize,
    pub rounds: u64,
    pub masked_input_ms: u64,
    /// How long selection waits for `clients` check-ins before it settles for fewer.
    pub selection_ms: u64,
    pub extra_certs: usize,
    pub deny: Vec<usize>,
    pub admins: Vec<usize>,
    /// The initial model: `None` for the softmax model of `init-model`; `Some(n)` for one
    /// tensor of `n` zeros, written by the harness (for clients with a constant update).
    pub model_parameters: Option<usize>,
    /// The task's `min_clients`.
    pub min_clients: usize,
    /// `harary` or `complete`.
    pub graph: &'static str,
    /// Assumed dropout δ.
    pub dropout: f64,
    /// Masked-input chunk size in words.
    pub upload_chunk_words: u32,
    /// The task's `max_uploads_in_flight` (its default when `None`).
    pub max_uploads_in_flight: Option<usize>,
    /// Every phase deadline but the masked input's, in milliseconds (defaults when `None`).
    pub phase_ms: Option<u64>,
    /// Lowers the clients' policy floor (`min_clients` and `min_surviving`) to this, for
    /// rounds smaller than the default floor.
    pub client_min_clients: Option<usize>,
    /// Extra top-level lines of one client's `client.toml`: (certificate number, lines).
    pub client_toml: Vec<(usize, String)>,
    /// Lines of the coordinator's `[edge]` section (`key = value`), if any.
    pub edge: Vec<String>,
    /// Encrypt the store at rest under a key made by `store keygen` (`store.kek`).
    pub encryption: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clients: 10,
            rounds: 3,
            masked_input_ms: 10_000,
            selection_ms: 3_000,
            extra_certs: 2,
            deny: Vec::new(),
            admins: Vec::new(),
            model_parameters: None,
            min_clients: 8,
            graph: "harary",
            dropout: 0.2,
            upload_chunk_words: 4,
            max_uploads_in_flight: None,
            phase_ms: None,
            client_min_clients: None,
            client_toml: Vec::new(),
            edge: Vec::new(),
            encryption: false,
        }
    }
}

/// The files of a federation and its coordinator process.
pub struct Federation {
    pub dir: tempfile::TempDir,
    pub opts: Options,
    pub coordinator: Proc,
    pub addr: String,
    /// The ops listener (metrics, health).
    pub ops: String,
    pub clients: Vec<Option<Proc>>,
    /// Where clients connect (the coordinator, or a proxy in front of it).
    pub client_addr: String,
}

impl Federation {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn pki(&self) -> PathBuf {
        self.path("pki")
    }

    pub fn cert(&self, i: usize) -> (PathBuf, PathBuf) {
        let name = format!("client-{i:03}");
        (self.pki().join(format!("{name}.pem")), self.pki().join(format!("{name}.key")))
    }

    /// The client id of certificate `i` (from `pki init`'s listing).
    pub fn client_id(&self, i: usize) -> String {
        let pem = std::fs::read(self.cert(i).0).unwrap();
        let der: Vec<u8> = pem_der(&pem);
        fedsec_wire::x509::client_id_of(&der).unwrap().to_hex()
    }

    /// Starts the PKI, the coordinator and (not yet) the clients.
    pub fn start(opts: Options) -> Federation {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let total = opts.clients + opts.extra_certs;
        run_ok(
            Command::new(bin("fedsec-coordinator"))
                .args(["pki", "init", "--clients", &total.to_string(), "--out"])
                .arg(root.join("pki")),
        );
        match opts.model_parameters {
            None => {
                run_ok(
                    Command::new(bin("fedsec-client"))
                        .args(["init-model", "--features", &FEATURES.to_string()])
                        .args(["--classes", &CLASSES.to_string(), "--out"])
                        .arg(root.join("model.safetensors")),
                );
            }
            Some(n) => {
                let tensor = fedsec_wire::model::Tensor::zeros(vec![n]).unwrap();
                let bytes = Model::new().with("weights", tensor).to_safetensors().unwrap();
                std::fs::write(root.join("model.safetensors"), bytes).unwrap();
            }
        }
        let id_of = |i: usize| {
            let pem = std::fs::read(root.join(format!("pki/client-{i:03}.pem"))).unwrap();
            fedsec_wire::x509::client_id_of(&pem_der(&pem)).unwrap().to_hex()
        };
        let deny: Vec<String> = opts.deny.iter().map(|&i| id_of(i)).collect();
        std::fs::write(root.join("deny.txt"), deny.join("\n") + "\n").unwrap();
        let admins: Vec<String> =
            opts.admins.iter().map(|&i| format!("\"{}\"", id_of(i))).collect();
        let in_flight = opts
            .max_uploads_in_flight
            .map(|v| format!("max_uploads_in_flight = {v}\n"))
            .unwrap_or_default();
        let (advertise, phase) = match opts.phase_ms {
            Some(ms) => (ms, ms),
            None => (30_000, 10_000),
        };
        let config = format!(
            r#"
listen = "127.0.0.1:0"
ops_listen = "127.0.0.1:0"
store = "store"
audit_log = "audit.log"
signing_key = "pki/coordinator-signing.key"
deny_list = "deny.txt"
admins = [{admins}]
threads = 1

[tls]
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "pki/ca.pem"

[edge]
{edge}

[task]
id = "{TASK_ID}"
name = "integration"
initial_model = "model.safetensors"
clients_per_round = {clients}
min_clients = {min_clients}
over_selection = 1.0
graph = "{graph}"
adversary = "semi-malicious"
dropout = {dropout}
corrupt = 0.05
clip = {CLIP}
max_examples = {MAX_EXAMPLES}
server_learning_rate = {SERVER_LR}
rounds = {rounds}
upload_chunk_words = {chunk}
{in_flight}deadlines_ms = {{ selection = {sel}, advertise_keys = {advertise}, share_keys = {phase}, masked_input = {mi}, consistency = {phase}, unmasking = {phase} }}
"#,
            admins = admins.join(", "),
            edge = opts.edge.join("\n"),
            clients = opts.clients,
            rounds = opts.rounds,
            mi = opts.masked_input_ms,
            sel = opts.selection_ms,
            min_clients = opts.min_clients,
            graph = opts.graph,
            dropout = opts.dropout,
            chunk = opts.upload_chunk_words,
        );
        let mut config = config;
        if opts.encryption {
            run_ok(
                Command::new(bin("fedsec-coordinator"))
                    .args(["store", "keygen", "--out"])
                    .arg(root.join("store.kek")),
            );
            config.push_str("\n[encryption]\nkey = \"file:store.kek\"\n");
        }
        std::fs::write(root.join("coordinator.toml"), config).unwrap();
        let (coordinator, addr, ops) = spawn_coordinator(root);
        std::fs::create_dir_all(root.join("dumps")).unwrap();
        Federation {
            dir,
            opts,
            coordinator,
            client_addr: addr.clone(),
            addr,
            ops,
            clients: Vec::new(),
        }
    }

    /// Kills the coordinator (SIGKILL) and starts it again on the same files. It listens on a
    /// new port: clients started before do not follow it.
    pub fn restart_coordinator(&mut self) {
        self.coordinator.kill();
        let (coordinator, addr, ops) = spawn_coordinator(self.dir.path());
        self.coordinator = coordinator;
        self.client_addr = addr.clone();
        self.addr = addr;
        self.ops = ops;
    }

    /// Kills the coordinator (SIGKILL) and starts it again on the same files and the same
    /// address, so that running clients reconnect to it.
    pub fn restart_coordinator_in_place(&mut self) {
        self.coordinator.kill();
        let config = self.path("coordinator.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        // The `listen` line only (not `ops_listen`, which takes a new port).
        let text: String = text
            .lines()
            .map(|l| match l.starts_with("listen = ") {
                true => format!("listen = \"{}\"\n", self.addr),
                false => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&config, text).unwrap();
        let (coordinator, addr, ops) = spawn_coordinator(self.dir.path());
        assert_eq!(addr, self.addr, "restarted on the same address");
        self.coordinator = coordinator;
        self.ops = ops;
    }

    /// `GET path` on the coordinator's ops listener: the status code and the body.
    pub fn ops_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.ops).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.ops)
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP response");
        let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap();
        (code, body.to_owned())
    }

    /// The value of the metric line that starts with `series` (name and labels), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (code, body) = self.ops_get("/metrics");
        assert_eq!(code, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
    }

    /// Waits until the audit log holds an entry of `kind` whose detail has `field` = `value`;
    /// returns it.
    pub fn wait_audit(
        &self,
        kind: &str,
        field: &str,
        value: serde_json::Value,
        timeout: Duration,
    ) -> serde_json::Value {
        let start = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(self.path("audit.log")).unwrap_or_default();
            let found = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| e["kind"] == kind && e["detail"][field] == value);
            if let Some(e) = found {
                return e;
            }
            assert!(
                start.elapsed() < timeout,
                "no {kind} entry with {field} = {value} in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `fedsec-coordinator audit verify` on the federation's log: its output, or its error.
    pub fn verify_audit_log(&self) -> Result<String, String> {
        let out = Command::new(bin("fedsec-coordinator"))
            .args(["audit", "verify", "--log"])
            .arg(self.path("audit.log"))
            .arg("--key")
            .arg(self.pki().join("coordinator-signing.pub"))
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if out.status.success() { Ok(text(&out.stdout)) } else { Err(text(&out.stderr)) }
    }

    /// Writes client `i`'s configuration and data; returns the configuration's path.
    pub fn client_files(&self, i: usize) -> (PathBuf, PathBuf) {
        let root = self.dir.path();
        let config = root.join(format!("client-{i:03}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
coordinator = "https://{addr}"
task_id = "{TASK_ID}"
ca = "pki/ca.pem"
cert = "pki/client-{i:03}.pem"
key = "pki/client-{i:03}.key"
coordinator_key = "pki/coordinator-signing.pub"
state_dir = "state-{i:03}"
{extra}
{policy}"#,
                addr = self.client_addr,
                extra = self
                    .opts
                    .client_toml
                    .iter()
                    .filter(|(c, _)| *c == i)
                    .map(|(_, lines)| lines.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
                policy = self
                    .opts
                    .client_min_clients
                    .map(|m| format!("[policy]\nmin_clients = {m}\nmin_surviving = {m}\n"))
                    .unwrap_or_default(),
            ),
        )
        .unwrap();
        let data = root.join(format!("site-{i:03}.csv"));
        std::fs::write(&data, synthetic_csv(i as u64, 40)).unwrap();
        (config, data)
    }

    /// Starts client `i` (1-based certificate number) with extra arguments.
    pub fn spawn_client(&mut self, i: usize, extra: &[&str]) {
        let (config, data) = self.client_files(i);
        let p = Proc::spawn(
            &format!("client-{i:03}"),
            Command::new(bin("fedsec-client"))
                .args(["join", "--config"])
                .arg(&config)
                .arg("--data")
                .arg(&data)
                .args(["--classes", &CLASSES.to_string(), "--test-dump-quantized"])
                .arg(self.path("dumps"))
                .args(extra)
                .env("RUST_LOG", "info,fedsec_client=debug"),
        );
        while self.clients.len() < i {
            self.clients.push(None);
        }
        self.clients[i - 1] = Some(p);
    }

    /// Starts client `i` with a trainer that returns `value` for every parameter (no data).
    pub fn spawn_constant_client(&mut self, i: usize, value: f32) {
        let (config, _) = self.client_files(i);
        let p = Proc::spawn(
            &format!("client-{i:03}"),
            Command::new(bin("fedsec-client"))
                .args(["join", "--config"])
                .arg(&config)
                .args(["--test-constant-update", &value.to_string()])
                .env("RUST_LOG", "info"),
        );
        while self.clients.len() < i {
            self.clients.push(None);
        }
        self.clients[i - 1] = Some(p);
    }

    /// The peak resident set of the coordinator so far (`VmHWM`), in bytes.
    pub fn coordinator_peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.coordinator.child.id()))
                .expect("the coordinator runs on Linux and is alive");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("/proc/<pid>/status has VmHWM");
        kb * 1024
    }

    pub fn client(&mut self, i: usize) -> &mut Proc {
        self.clients[i - 1].as_mut().expect("client started")
    }

    /// Waits for every running client to exit successfully.
    pub fn wait_clients(&mut self, timeout: Duration) {
        for p in self.clients.iter_mut().flatten() {
            if p.child.try_wait().ok().flatten().is_some() {
                continue;
            }
            let ok = p.wait_exit(timeout);
            assert!(ok, "{} failed:\n{}", p.name, p.output());
        }
        self.assert_honest_clients_not_rate_limited();
    }

    /// The coordinator's lines about rate-limit refusals (each names its client).
    pub fn rate_limit_lines(&self) -> Vec<String> {
        let output = self.coordinator.output();
        output.lines().filter(|l| l.contains("rate limit:")).map(str::to_string).collect()
    }

    /// Asserts that the rate limits refused no call of a client the harness started: their
    /// defaults are above what an honest client does. (The coordinator says a client's
    /// first refusal at once, naming it.)
    pub fn assert_honest_clients_not_rate_limited(&self) {
        let lines = self.rate_limit_lines();
        for (i, _) in self.clients.iter().enumerate().filter(|(_, p)| p.is_some()) {
            let id = self.client_id(i + 1);
            let hits: Vec<&String> = lines.iter().filter(|l| l.contains(&id)).collect();
            assert!(hits.is_empty(), "honest client {} was rate limited: {hits:?}", i + 1);
        }
    }

    /// The audit log's entries of one kind.
    pub fn audit_entries(&self, kind: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("audit.log"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    /// The stored checkpoint `version`.
    pub fn checkpoint(&self, version: u64) -> Vec<u8> {
        if self.opts.encryption {
            // Sealed in the store: `checkpoint export` decrypts and verifies it.
            let out = self.path(&format!("checkpoint-{version}.safetensors"));
            let _ = std::fs::remove_file(&out);
            run_ok(
                Command::new(bin("fedsec-coordinator"))
                    .args(["checkpoint", "export", "--version", &version.to_string(), "--config"])
                    .arg(self.path("coordinator.toml"))
                    .arg("--out")
                    .arg(&out),
            );
            return std::fs::read(out).unwrap();
        }
        std::fs::read(
            self.path(&format!("store/tasks/{TASK_ID}/checkpoints/{version:020}.safetensors")),
        )
        .unwrap()
    }

    /// The quantized inputs clients dumped for one attempt, by client id.
    pub fn dumps(&self, round: u64, attempt: &str) -> Vec<(String, Vec<u32>)> {
        let prefix = format!("round-{round}-{attempt}-");
        let mut out: Vec<(String, Vec<u32>)> = std::fs::read_dir(self.path("dumps"))
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let id = name.strip_prefix(&prefix)?.strip_suffix(".bin")?.to_string();
                let bytes = std::fs::read(self.path("dumps").join(&name)).ok()?;
                Some((
                    id,
                    bytes
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ))
            })
            .collect();
        out.sort();
        out
    }

    /// Checks that checkpoint `round` is checkpoint `round − 1` plus the server learning rate
    /// times the weighted average of exactly `inputs`, bit for bit.
    pub fn assert_exact_round(&self, round: u64, inputs: &[&Vec<u32>]) {
        self.assert_exact_update(round - 1, round, inputs);
    }

    /// Checks that checkpoint `to` is checkpoint `from` plus the server learning rate times the
    /// weighted average of exactly `inputs`, bit for bit.
    pub fn assert_exact_update(&self, from: u64, to: u64, inputs: &[&Vec<u32>]) {
        let quant = QuantParams::for_clients(self.opts.clients, CLIP, MAX_EXAMPLES).unwrap();
        let mut sum = vec![0u32; inputs[0].len()];
        for x in inputs {
            for (s, v) in sum.iter_mut().zip(x.iter()) {
                *s = s.wrapping_add(*v);
            }
        }
        let avg = quant.weighted_average(&sum).unwrap();
        assert_ne!(self.checkpoint(from), self.checkpoint(to), "version {to} moved the model");
        let before = Model::from_safetensors(&self.checkpoint(from)).unwrap();
        let next: Vec<f32> =
            before.flatten().iter().zip(&avg).map(|(t, u)| t + SERVER_LR * u).collect();
        let want = before.with_flat(&next).unwrap().to_safetensors().unwrap();
        assert!(
            want == self.checkpoint(to),
            "checkpoint {to} is not checkpoint {from} moved by the clear sum of {} inputs",
            inputs.len()
        );
    }
}

/// DER of the first certificate in a PEM file.
pub fn pem_der(pem: &[u8]) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem).expect("a PEM certificate").to_vec()
}

/// A small 3-class dataset, different per site.
pub fn synthetic_csv(seed: u64, rows: usize) -> String {
    let mut s = String::from("f0,f1,f2,f3,label\n");
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 1000) as f32 / 1000.0 - 0.5
    };
    for r in 0..rows {
        let label = (r + seed as usize) % CLASSES;
        let f: Vec<f32> =
            (0..FEATURES).map(|j| next() + if j == label { 1.0 } else { 0.0 }).collect();
        s.push_str(&format!("{},{},{},{},{label}\n", f[0], f[1], f[2], f[3]));
    }
    s
}

/// A TCP proxy that cuts every connection through it every `period`: clients must reconnect
/// and resend. TLS runs end to end through it.
pub struct CuttingProxy {
    pub addr: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    pub cuts: Arc<std::sync::atomic::AtomicUsize>,
}

impl CuttingProxy {
    pub fn start(upstream: &str, period: Duration) -> CuttingProxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_string();
        {
            let live = live.clone();
            std::thread::spawn(move || {
                for down in listener.incoming().map_while(Result::ok) {
                    let Ok(up) = TcpStream::connect(&upstream) else { continue };
                    let mut l = live.lock().unwrap();
                    l.push(down.try_clone().unwrap());
                    l.push(up.try_clone().unwrap());
                    for (mut from, mut to) in
                        [(down.try_clone().unwrap(), up.try_clone().unwrap()), (up, down)]
                    {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Both);
                        });
                    }
                }
            });
        }
        {
            let (stop, cuts) = (stop.clone(), cuts.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(period);
                    let mut l = live.lock().unwrap();
                    if !l.is_empty() {
                        cuts.fetch_add(1, Ordering::SeqCst);
                    }
                    for s in l.drain(..) {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
            });
        }
        CuttingProxy { addr, stop, cuts }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A TCP proxy that forwards faithfully until it is frozen, then forwards nothing more and
/// closes nothing: the connections through it stay open and silent, as through a network
/// that silently drops every packet (a "black hole").
pub struct BlackHoleProxy {
    pub addr: String,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl BlackHoleProxy {
    pub fn start(upstream: &str) -> BlackHoleProxy {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let frozen = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_string();
        let held = frozen.clone();
        std::thread::spawn(move || {
            for down in listener.incoming().map_while(Result::ok) {
                let Ok(up) = TcpStream::connect(&upstream) else { continue };
                for (mut from, mut to) in
                    [(down.try_clone().unwrap(), up.try_clone().unwrap()), (up, down)]
                {
                    let frozen = held.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            // Frozen: hold the sockets open and silent, for as long as the test.
                            while frozen.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(100));
                            }
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            while frozen.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(100));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        BlackHoleProxy { addr, frozen }
    }

    /// From now on nothing passes, and nothing is closed.
    pub fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
