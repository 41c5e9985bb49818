//! `fedsec-coordinator quickstart`: a whole federation on one machine, written to one folder.
//!
//! From a CSV dataset (one of the datasets shipped in the repository, or any CSV file with a
//! header row, a `label` column of class ids 0, 1, … and numeric features) it writes:
//!
//! | file | what |
//! |---|---|
//! | `pki/` | a development PKI (`pki init`): CA, server certificate, one certificate per site, the coordinator's signing key |
//! | `coordinator.toml` | the coordinator's configuration, sized for that many sites |
//! | `model.safetensors` | the initial model: softmax regression matching the data's features and classes |
//! | `client-NNN.toml` | one client configuration per site |
//! | `site-NNN.csv` | one shard of the data per site (the rows dealt out in turn) |
//! | `standardizer.json` | the features' mean and standard deviation, which every site applies |
//! | `operator.toml` | the operator's certificate and the task, for `fedsec-coordinator status` |
//! | `run.sh` | starts the coordinator and every site, and waits for them to finish the task; each site writes the final model to `state/client-NNN/final.safetensors` |
//!
//! and returns the exact commands, which the binary prints. Everything is checked before the
//! first file is written: a dataset that does not load, or a number of sites for which the
//! protocol has no secure parameters, leaves nothing behind.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fedsec_client::data::{DataError, Dataset, Standardizer};
use fedsec_client::trainers::SoftmaxRegression;
use fedsec_crypto::{AdversaryClass, GraphKind, TaskId};
use fedsec_wire::model::ModelError;
use rand::Rng;

use crate::engine::TaskConfig;
use crate::pki::PkiError;

/// The datasets shipped in the repository, by the name `--dataset` takes, and their training
/// file relative to the repository's root.
pub const SHIPPED_DATASETS: [(&str, &str); 2] = [
    ("digits", "sim/data/digits/train.csv"),
    ("breast-cancer", "sim/data/breast_cancer/train.csv"),
];

/// The fewest sites a quickstart federation has.
pub const MIN_SITES: usize = 3;

/// The column of class ids in the CSV files.
pub const LABEL_COLUMN: &str = "label";

/// What to write.
#[derive(Debug, Clone)]
pub struct QuickstartOptions {
    /// Number of sites.
    pub clients: usize,
    /// A shipped dataset's name (see [`SHIPPED_DATASETS`]) or a CSV file.
    pub dataset: String,
    /// The folder to write; it must be missing or empty unless `force`.
    pub out: PathBuf,
    /// Rounds the task runs.
    pub rounds: u64,
    /// The loopback port the coordinator listens on.
    pub port: u16,
    /// Write into a non-empty folder: files of the same names are replaced, and what an
    /// earlier federation there left (checkpoints, audit log, the sites' state, logs) is
    /// removed, since it would not verify under the new keys.
    pub force: bool,
}

/// What was written, and how to run it.
#[derive(Debug, Clone)]
pub struct Quickstart {
    /// The folder holding everything.
    pub dir: PathBuf,
    /// The dataset file the shards came from.
    pub dataset: PathBuf,
    /// Rows, features and classes of the dataset.
    pub rows: usize,
    /// Number of features.
    pub features: usize,
    /// Number of classes.
    pub classes: usize,
    /// `coordinator.toml`.
    pub coordinator_config: PathBuf,
    /// Per site: its configuration and its data.
    pub sites: Vec<(PathBuf, PathBuf)>,
    /// `run.sh`.
    pub script: PathBuf,
    /// `operator.toml`, for `fedsec-coordinator status`.
    pub operator_config: PathBuf,
    /// The commands to run, in order: the coordinator, then one per site.
    pub commands: Vec<String>,
}

/// Why the quickstart wrote nothing (or, for a file that could not be written, stopped).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuickstartError {
    /// `--dataset` names no shipped dataset and no file.
    #[error(
        "dataset {name:?}: no such file, and not a shipped dataset ({}); the shipped ones are read from the repository's root (run from there, or give the CSV file's path)",
        SHIPPED_DATASETS.map(|(n, _)| n).join(", ")
    )]
    UnknownDataset { name: String },
    /// The dataset does not load.
    #[error(transparent)]
    Dataset(#[from] DataError),
    /// Fewer than [`MIN_SITES`] sites: the sum of two inputs tells each site the other's.
    #[error(
        "a federation needs {MIN_SITES} sites or more (asked for {clients}): with two, each site learns the other's update from the sum"
    )]
    TooFewSites { clients: usize },
    /// Fewer rows than sites, or a dataset with a single class.
    #[error(
        "{path}: {rows} rows and {classes} classes cannot be shared by {clients} sites (each needs rows, and training needs 2 classes or more)"
    )]
    TooSmall { path: PathBuf, rows: usize, classes: usize, clients: usize },
    /// The task this many sites would run is refused (no secure parameters, say).
    #[error("a task of {clients} sites is refused: {source}")]
    Task { clients: usize, source: crate::Error },
    /// The output folder is not empty.
    #[error("{} exists and is not empty; refusing to overwrite it (use --force)", path.display())]
    NotEmpty { path: PathBuf },
    /// The development PKI could not be written.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The initial model could not be encoded.
    #[error("initial model: {0}")]
    Model(#[from] ModelError),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Where `name` is: a shipped dataset under `root` (the repository), or a file.
pub fn resolve_dataset(name: &str, root: &Path) -> Result<PathBuf, QuickstartError> {
    if let Some((_, rel)) = SHIPPED_DATASETS.iter().find(|(n, _)| *n == name) {
        let path = root.join(rel);
        if path.is_file() {
            return Ok(path);
        }
    } else if Path::new(name).is_file() {
        return Ok(PathBuf::from(name));
    }
    Err(QuickstartError::UnknownDataset { name: name.into() })
}

/// The assumptions of the quickstart's task: semi-malicious clients, 5 % of them corrupt, up
/// to 20 % dropping out of a round.
const DROPOUT: f64 = 0.2;
const CORRUPT: f64 = 0.05;

/// The task a federation of `clients` sites runs: every site in every round (no
/// over-selection), the complete graph up to 100 sites and SecAgg+ above.
fn task_config(clients: usize, rounds: u64) -> TaskConfig {
    let mut c = TaskConfig::new(TaskId([0; 16]), "quickstart", clients);
    c.min_clients = clients;
    c.over_selection = 1.0;
    c.graph = graph(clients);
    c.adversary = AdversaryClass::SemiMalicious;
    c.dropout_ppm = (DROPOUT * 1e6) as u32;
    c.corrupt_ppm = (CORRUPT * 1e6) as u32;
    c.rounds = rounds;
    c
}

fn graph(clients: usize) -> GraphKind {
    if clients <= 100 { GraphKind::Complete } else { GraphKind::Harary }
}

/// Writes the federation `opts` describes.
pub fn quickstart(opts: &QuickstartOptions, root: &Path) -> Result<Quickstart, QuickstartError> {
    // Everything that can be refused is checked before the first file is written.
    if opts.clients < MIN_SITES {
        return Err(QuickstartError::TooFewSites { clients: opts.clients });
    }
    let dataset_path = resolve_dataset(&opts.dataset, root)?;
    let dataset = Dataset::from_csv(&dataset_path, LABEL_COLUMN)?;
    let (rows, features, classes) = (dataset.len(), dataset.feature_count(), dataset.classes());
    if rows < opts.clients || classes < 2 {
        return Err(QuickstartError::TooSmall {
            path: dataset_path,
            rows,
            classes,
            clients: opts.clients,
        });
    }
    let task = task_config(opts.clients, opts.rounds);
    task.validate().map_err(|source| QuickstartError::Task { clients: opts.clients, source })?;
    let out = &opts.out;
    if !opts.force && std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(QuickstartError::NotEmpty { path: out.clone() });
    }
    let text = std::fs::read_to_string(&dataset_path)
        .map_err(|source| DataError::Io { path: dataset_path.clone(), source })?;

    let write = |name: &str, contents: &[u8]| {
        let path = out.join(name);
        std::fs::write(&path, contents)
            .map_err(|source| QuickstartError::Write { path: path.clone(), source })?;
        Ok::<_, QuickstartError>(path)
    };
    if opts.force {
        // A federation written here before ran with another PKI and signing key: its
        // checkpoints, audit log and the sites' state would no longer verify. They go.
        for stale in ["checkpoints", "state", "logs", "audit.log", "audit.log.head"] {
            let path = out.join(stale);
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match gone {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(QuickstartError::Write { path, source }),
            }
        }
    }
    std::fs::create_dir_all(out)
        .map_err(|source| QuickstartError::Write { path: out.clone(), source })?;
    // Absolute from here on: the commands and run.sh work from any folder.
    let out = &std::fs::canonicalize(out)
        .map_err(|source| QuickstartError::Write { path: out.clone(), source })?;
    let pki = crate::pki::init(&out.join("pki"), opts.clients, &[], opts.force)?;

    let model = SoftmaxRegression::initial_model(features, classes);
    write("model.safetensors", &model.to_safetensors()?)?;
    let standardizer = serde_json::to_vec_pretty(&Standardizer::fit(&dataset))
        .expect("a standardizer of finite numbers encodes as JSON");
    write("standardizer.json", &standardizer)?;

    let mut task_id = [0u8; 16];
    fedsec_crypto::rng::os_rng().fill_bytes(&mut task_id);
    let task_id = hex::encode(task_id);
    let operator_id = pki.operator.id.to_hex();
    let coordinator_config = write(
        "coordinator.toml",
        coordinator_toml(opts, &task_id, &operator_id, &dataset_path).as_bytes(),
    )?;
    let operator_config = write("operator.toml", operator_toml(opts, &task_id).as_bytes())?;

    // The shards: the header, then the rows dealt out in turn, so every site sees every class.
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let mut shards = vec![format!("{header}\n"); opts.clients];
    for (i, line) in lines.filter(|l| !l.trim().is_empty()).enumerate() {
        let shard = &mut shards[i % opts.clients];
        shard.push_str(line);
        shard.push('\n');
    }
    let mut sites = Vec::with_capacity(opts.clients);
    for (i, (shard, credentials)) in shards.iter().zip(&pki.clients).enumerate() {
        let n = i + 1;
        let data = write(&format!("site-{n:03}.csv"), shard.as_bytes())?;
        let config = write(
            &format!("client-{n:03}.toml"),
            client_toml(opts, &task_id, &credentials.name, n).as_bytes(),
        )?;
        sites.push((config, data));
    }

    let (coordinator_bin, client_bin) = binaries();
    let mut commands = vec![format!(
        "{} serve --exit-when-finished --config {}",
        quote(&coordinator_bin),
        quote(&coordinator_config.display().to_string())
    )];
    for (i, (config, data)) in sites.iter().enumerate() {
        let final_model = out.join(format!("state/client-{:03}/final.safetensors", i + 1));
        commands.push(format!(
            "{} join --config {} --data {} --classes {classes} --standardizer {} --save-model {}",
            quote(&client_bin),
            quote(&config.display().to_string()),
            quote(&data.display().to_string()),
            quote(&out.join("standardizer.json").display().to_string()),
            quote(&final_model.display().to_string()),
        ));
    }
    let script = write("run.sh", run_script(out, &commands).as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .map_err(|source| QuickstartError::Write { path: script.clone(), source })?;
    }
    Ok(Quickstart {
        dir: out.clone(),
        dataset: dataset_path,
        rows,
        features,
        classes,
        coordinator_config,
        sites,
        script,
        operator_config,
        commands,
    })
}

/// The two binaries: the running one and `fedsec-client` beside it (`target/release/`, or
/// wherever both were installed); by name from `PATH` when the client is not beside it.
fn binaries() -> (String, String) {
    match std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        Some(dir) if dir.join("fedsec-client").is_file() => (
            dir.join("fedsec-coordinator").display().to_string(),
            dir.join("fedsec-client").display().to_string(),
        ),
        _ => ("fedsec-coordinator".into(), "fedsec-client".into()),
    }
}

/// Whether `fedsec-client` is beside the running binary (else the commands name it as it is
/// found on `PATH`).
pub fn client_binary_beside() -> bool {
    binaries().1 != "fedsec-client"
}

fn coordinator_toml(
    opts: &QuickstartOptions,
    task_id: &str,
    operator_id: &str,
    dataset: &Path,
) -> String {
    let n = opts.clients;
    let graph = match graph(n) {
        GraphKind::Complete => "complete",
        GraphKind::Harary => "harary",
    };
    format!(
        r#"# Written by `fedsec-coordinator quickstart` for {n} sites on this machine, training softmax
# regression on {dataset}. Paths are relative to this file's folder.
# Every key is explained in docs/operations.md.

listen = "127.0.0.1:{port}"
store = "checkpoints"
audit_log = "audit.log"
signing_key = "pki/coordinator-signing.key"
# The operator's certificate (pki/operator.pem) may call the Admin service:
# `fedsec-coordinator status --config operator.toml`.
admins = ["{operator_id}"]

[tls]
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "pki/ca.pem"

[task]
id = "{task_id}"
name = "quickstart"
initial_model = "model.safetensors"
# Every site takes part in every round: the coordinator waits for all {n} to check in and
# selects them all (over_selection = 1.0; above 1.0 it would wait for more sites than
# clients_per_round, to absorb dropouts).
clients_per_round = {n}
min_clients = {n}
over_selection = 1.0
graph = "{graph}"
adversary = "semi-malicious"
dropout = {DROPOUT}
corrupt = {CORRUPT}
rounds = {rounds}
"#,
        dataset = dataset.display(),
        port = opts.port,
        rounds = opts.rounds,
    )
}

fn operator_toml(opts: &QuickstartOptions, task_id: &str) -> String {
    format!(
        r#"# The operator's view of the quickstart federation: `fedsec-coordinator status --config
# operator.toml`. Paths are relative to this file's folder.
coordinator = "https://127.0.0.1:{port}"
task_id = "{task_id}"
ca = "pki/ca.pem"
cert = "pki/operator.pem"
key = "pki/operator.key"
"#,
        port = opts.port
    )
}

fn client_toml(opts: &QuickstartOptions, task_id: &str, name: &str, n: usize) -> String {
    let mut text = format!(
        r#"# Site {n} of the quickstart federation. Paths are relative to this file's folder.
coordinator = "https://127.0.0.1:{port}"
task_id = "{task_id}"
ca = "pki/ca.pem"
cert = "pki/{name}.pem"
key = "pki/{name}.key"
coordinator_key = "pki/coordinator-signing.pub"
state_dir = "state/{name}"
"#,
        port = opts.port
    );
    let floor = fedsec_crypto::secagg::client::ClientPolicy::default();
    if opts.clients < floor.min_clients {
        // The site's own floor: by default it refuses rounds of fewer than
        // {floor.min_clients} clients, which this small federation never reaches.
        let surviving = ((1.0 - DROPOUT) * opts.clients as f64).ceil() as usize;
        let _ = write!(
            text,
            "\n# This federation has {clients} sites: the floor is lowered to match.\n[policy]\nmin_clients = {clients}\nmin_surviving = {surviving}\n",
            clients = opts.clients,
        );
    }
    text
}

/// `word` as one shell word: as it is when it has no special characters, else single-quoted.
fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn run_script(out: &Path, commands: &[String]) -> String {
    let (coordinator, sites) = commands.split_first().expect("the coordinator's command is first");
    let mut s = format!(
        r#"#!/usr/bin/env sh
# Runs the quickstart federation: the coordinator, then every site; waits for the sites to
# finish the task and the coordinator to stop (it does once every site was told the task
# finished). Each process logs to a file in $logs; each site writes the final model to
# state/client-NNN/final.safetensors.
set -eu
logs={logs}
mkdir -p "$logs"
{coordinator} > "$logs/coordinator.log" 2>&1 &
coordinator=$!
trap 'kill $coordinator 2>/dev/null || true' EXIT INT TERM
sites=""
"#,
        logs = quote(&out.join("logs").display().to_string()),
    );
    for (i, site) in sites.iter().enumerate() {
        let _ = writeln!(s, "{site} > \"$logs/site-{n:03}.log\" 2>&1 &", n = i + 1);
        s.push_str("sites=\"$sites $!\"\n");
    }
    s.push_str(
        r#"failed=0
for pid in $sites; do wait "$pid" || failed=1; done
if [ "$failed" -eq 0 ]; then
    # The coordinator stops by itself once every site has been told the task finished.
    wait "$coordinator" || failed=1
fi
if [ "$failed" -eq 0 ]; then
    echo "every site finished the task; the coordinator's log is $logs/coordinator.log"
else
    echo "a site failed; see $logs/site-*.log" >&2
    exit 1
fi
"#,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CoordinatorConfig;

    fn repository() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
    }

    fn options(out: &Path, clients: usize) -> QuickstartOptions {
        QuickstartOptions {
            clients,
            dataset: "digits".into(),
            out: out.to_path_buf(),
            rounds: 3,
            port: 7443,
            force: false,
        }
    }

    #[test]
    fn writes_a_federation_whose_files_load_and_agree() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fed");
        let q = quickstart(&options(&out, 10), &repository()).unwrap();
        assert_eq!((q.rows, q.features, q.classes), (1438, 64, 10));
        assert_eq!(q.sites.len(), 10);
        assert_eq!(q.commands.len(), 11);

        let config = CoordinatorConfig::load(&q.coordinator_config, [], &[]).unwrap();
        let task = config.task.as_ref().unwrap().to_config().unwrap();
        task.validate().unwrap();
        assert_eq!((task.clients_per_round, task.min_clients, task.max_selected()), (10, 10, 10));
        assert_eq!(task.rounds, 3);
        assert!(config.signing_key.is_file() && config.tls.as_ref().unwrap().cert.is_file());

        let model = fedsec_wire::model::Model::from_safetensors(
            &std::fs::read(out.join("model.safetensors")).unwrap(),
        )
        .unwrap();
        assert_eq!(model.len(), 64 * 10 + 10);

        // The shards hold every row once, each with the header; every site sees every class.
        let mut rows = 0;
        for (i, (client_config, data)) in q.sites.iter().enumerate() {
            let c = fedsec_client::ClientConfig::load(client_config).unwrap();
            assert_eq!(c.task_id, config.task.as_ref().unwrap().id);
            assert!(c.cert.ends_with(format!("client-{:03}.pem", i + 1)) && c.key.is_file());
            let shard = Dataset::from_csv(data, LABEL_COLUMN).unwrap();
            assert_eq!((shard.feature_count(), shard.classes()), (64, 10));
            rows += shard.len();
        }
        assert_eq!(rows, 1438);
        let script = std::fs::read_to_string(&q.script).unwrap();
        assert!(q.commands.iter().all(|c| script.contains(c.as_str())));
    }

    #[test]
    fn refusals_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fed");
        let root = repository();

        let mut unknown = options(&out, 10);
        unknown.dataset = "no-such-data".into();
        let e = quickstart(&unknown, &root).unwrap_err();
        assert!(matches!(e, QuickstartError::UnknownDataset { .. }), "{e}");
        assert!(e.to_string().contains("digits, breast-cancer"), "{e}");

        let e = quickstart(&options(&out, 2), &root).unwrap_err();
        assert!(matches!(e, QuickstartError::TooFewSites { clients: 2 }), "{e}");
        let e = quickstart(&options(&out, 5000), &root).unwrap_err();
        assert!(matches!(e, QuickstartError::TooSmall { rows: 1438, clients: 5000, .. }), "{e}");
        assert!(!out.exists(), "a refused quickstart wrote {}", out.display());

        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("precious"), "x").unwrap();
        let e = quickstart(&options(&out, 10), &root).unwrap_err();
        assert!(matches!(e, QuickstartError::NotEmpty { .. }), "{e}");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    }

    #[test]
    fn a_small_federation_lowers_the_sites_floor_to_match() {
        let dir = tempfile::tempdir().unwrap();
        let q = quickstart(&options(&dir.path().join("fed"), 5), &repository()).unwrap();
        let c = fedsec_client::ClientConfig::load(&q.sites[0].0).unwrap();
        assert_eq!((c.policy.min_clients, c.policy.min_surviving), (5, 4));
        c.policy.to_policy().unwrap();
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(quote("/tmp/fed/site-001.csv"), "/tmp/fed/site-001.csv");
        assert_eq!(quote("/tmp/my fed/x"), "'/tmp/my fed/x'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
    }
}
