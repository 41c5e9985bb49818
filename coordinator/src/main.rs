//! `fedsec-coordinator`: serve a federation, make a development PKI, verify the audit log.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fedsec_coordinator::config::CoordinatorConfig;
use fedsec_coordinator::quickstart::{self, QuickstartOptions};
use fedsec_coordinator::{audit, offline, operator, pki, server};

/// The fedsec coordinator: runs secure federated training rounds and learns only the sum of
/// the clients' updates.
#[derive(Debug, Parser)]
#[command(name = "fedsec-coordinator", version, about, long_about = None)]
struct Cli {
    /// How log lines are written (on stderr): `text` for people, `json` for log collectors
    /// (one object a line: timestamp, level, target, message and the event's fields).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "FEDSEC_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Federation and Admin gRPC services.
    ///
    /// Every key of the configuration file can be overridden by an environment variable
    /// FEDSEC_<KEY> (`__` between table levels, e.g. FEDSEC_TASK__ROUNDS=20) or by
    /// `--set key=value` (e.g. --set task.rounds=20), in that order of precedence.
    Serve {
        /// The configuration file (TOML).
        #[arg(long, short, env = "FEDSEC_CONFIG")]
        config: PathBuf,
        /// Override one key (repeatable): --set task.rounds=20.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Plain TCP without client certificates; refuses anything but a loopback address.
        #[arg(long)]
        insecure: bool,
        /// Address to listen on (overrides `listen`).
        #[arg(long)]
        listen: Option<String>,
        /// Stop serving once every task has finished and each of its clients has fetched the
        /// final checkpoint (or a minute after the end, for clients that do not come back). Without it the
        /// coordinator keeps serving (the final checkpoint, status, new tasks).
        #[arg(long)]
        exit_when_finished: bool,
    },
    /// Write a whole federation on this machine into one folder: a development PKI, the
    /// coordinator's configuration, one configuration and one CSV shard of a dataset per site,
    /// a matching initial model, and run.sh; print the commands that run it.
    Quickstart {
        /// Number of sites.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// A dataset shipped in the repository (`digits`, `breast-cancer`; read from the
        /// repository's root) or a CSV file with a header row, a `label` column of class ids
        /// 0, 1, … and numeric features.
        #[arg(long, default_value = "digits")]
        dataset: String,
        /// The folder to write.
        #[arg(long)]
        out: PathBuf,
        /// Rounds the task runs.
        #[arg(long, default_value_t = 20)]
        rounds: u64,
        /// The loopback port the coordinator listens on.
        #[arg(long, default_value_t = 7443)]
        port: u16,
        /// Write into a folder that is not empty, removing what an earlier federation there
        /// left (checkpoints, audit log, the sites' state, logs).
        #[arg(long)]
        force: bool,
    },
    /// Print the tasks' states and their recent rounds, from the Admin service, with the
    /// operator's certificate (`operator.toml`: coordinator, ca, cert, key, and optionally
    /// one task_id).
    Status {
        /// The operator's configuration (TOML).
        #[arg(long, short, env = "FEDSEC_OPERATOR_CONFIG")]
        config: PathBuf,
    },
    /// Re-publish the task's model (`task_id` of `operator.toml`) as a version above every one
    /// a client reported having seen, when the task is stalled because clients refuse the
    /// current checkpoint as a rollback (the store went back to an older backup, a version was
    /// lost). With `--model`, new weights of the same tensors: needed for clients that trained
    /// on the current weights, which never contribute twice on the same weights.
    Republish {
        /// The operator's configuration (TOML), naming the task.
        #[arg(long, short, env = "FEDSEC_OPERATOR_CONFIG")]
        config: PathBuf,
        /// New weights (safetensors, the current model's tensor names and shapes).
        #[arg(long)]
        model: Option<PathBuf>,
        /// The version to publish as (above the current one); by default one above the current
        /// version and above what the clients reported having seen.
        #[arg(long)]
        to_version: Option<u64>,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Certificates and keys.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// The audit log.
    /// The checkpoint store: keys of its encryption at rest.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Stored checkpoints.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Make a DEVELOPMENT CA, a server certificate, N client certificates and the
    /// coordinator's signing key. Not for production: whoever holds ca.key can impersonate
    /// any client. In production, use your organisation's CA and sign each site's CSR
    /// (`fedsec-client pki request`, then `pki sign`).
    Init {
        /// Number of client certificates.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS names or IP addresses for the server certificate (repeatable).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Overwrite a non-empty output folder.
        #[arg(long)]
        force: bool,
    },
    /// Sign a site's certificate request (Ed25519) with a CA, for client authentication.
    Sign {
        /// The CA certificate (PEM).
        #[arg(long)]
        ca_cert: PathBuf,
        /// The CA key (PEM).
        #[arg(long)]
        ca_key: PathBuf,
        /// The site's CSR (PEM).
        #[arg(long)]
        csr: PathBuf,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Write a fresh key-encryption key (64 hex digits) to a new file readable by its owner
    /// only; name it in the configuration: [encryption] key = "file:PATH".
    Keygen {
        /// The key file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-wrap every object of the store under the current key-encryption key, after a
    /// rotation ([encryption] key = the new one, previous = [the old ones]); the coordinator
    /// must be stopped. Then the previous keys can go.
    Rewrap {
        /// The coordinator's configuration file.
        #[arg(long, short, env = "FEDSEC_CONFIG")]
        config: PathBuf,
        /// Also seal the objects stored in the clear (to turn encryption on for a store that
        /// ran without it); without it they are refused.
        #[arg(long)]
        seal_plaintext: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CheckpointCommand {
    /// Decrypt and verify one stored checkpoint (size, SHA-256, the coordinator's signature)
    /// and write it as a safetensors file.
    Export {
        /// The coordinator's configuration file.
        #[arg(long, short, env = "FEDSEC_CONFIG")]
        config: PathBuf,
        /// The version to export.
        #[arg(long)]
        version: u64,
        /// The task (32 hex digits; default: the configuration's [task]).
        #[arg(long)]
        task: Option<String>,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of an audit log and the signature of its head.
    Verify {
        /// The audit log (JSON lines).
        #[arg(long)]
        log: PathBuf,
        /// The signed head (default: the log's path with `.head` appended).
        #[arg(long)]
        head: Option<PathBuf>,
        /// The coordinator's public key, from a trusted copy (coordinator-signing.pub).
        #[arg(long)]
        key: PathBuf,
    },
}

/// How long `serve --exit-when-finished` waits, after the last task finished, for clients
/// to check in and be told so.
const FINISHED_LINGER: std::time::Duration = std::time::Duration::from_secs(60);

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match format {
        LogFormat::Text => {
            // Colours only on a terminal: a log file gets plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .init();
        }
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve { config, mut sets, insecure, listen, exit_when_finished } => {
            if insecure {
                sets.push("insecure=true".into());
            }
            if let Some(l) = listen {
                sets.push(format!("listen=\"{l}\""));
            }
            let config = CoordinatorConfig::load(&config, std::env::vars(), &sets)
                .map_err(|e| e.to_string())?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let ready = server::prepare(&config).await.map_err(|e| e.to_string())?;
                // Tests and scripts read the bound address from this line.
                println!("listening on {}", ready.local_addr().map_err(|e| e.to_string())?);
                if let Some(ops) = ready.ops_addr().map_err(|e| e.to_string())? {
                    println!("ops listening on {ops}");
                }
                let coordinator = ready.coordinator.clone();
                let shutdown = async move {
                    let finished = async {
                        if exit_when_finished {
                            coordinator.finished(FINISHED_LINGER).await;
                            tracing::info!("every task finished; stopping (--exit-when-finished)");
                        } else {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        () = shutdown_signal() => {}
                        () = finished => {}
                    }
                };
                server::serve(ready, shutdown).await.map_err(|e| e.to_string())
            })
        }
        Command::Status { config } => {
            let c = operator::OperatorConfig::load(&config).map_err(|e| e.to_string())?;
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            let tasks =
                runtime.block_on(operator::status(&c, &config)).map_err(|e| e.to_string())?;
            if tasks.is_empty() {
                println!("the coordinator has no task");
            }
            for s in &tasks {
                print!("{}", operator::render(s));
            }
            Ok(())
        }
        Command::Republish { config, model, to_version, reason } => {
            let c = operator::OperatorConfig::load(&config).map_err(|e| e.to_string())?;
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            let r = runtime
                .block_on(operator::republish(&c, &config, model.as_deref(), to_version, reason))
                .map_err(|e| e.to_string())?;
            println!(
                "checkpoint version {} re-published as version {}",
                r.from_version, r.checkpoint_version
            );
            Ok(())
        }
        Command::Quickstart { clients, dataset, out, rounds, port, force } => {
            let opts = QuickstartOptions { clients, dataset, out, rounds, port, force };
            let root = std::env::current_dir().map_err(|e| format!("the current folder: {e}"))?;
            let q = quickstart::quickstart(&opts, &root).map_err(|e| e.to_string())?;
            println!(
                "{} sites, each with a shard of {} ({} rows, {} features, {} classes), written to {}.",
                q.sites.len(),
                q.dataset.display(),
                q.rows,
                q.features,
                q.classes,
                q.dir.display()
            );
            println!("DEVELOPMENT PKI: not for production (see pki/README.txt).");
            if !quickstart::client_binary_beside() {
                println!(
                    "note: fedsec-client is not beside this program; the commands expect it on PATH (from the repository: cargo build --release -p fedsec-client)."
                );
            }
            println!(
                "\nRun everything, wait for the task to finish, and stop:\n\n  sh {}\n",
                q.script.display()
            );
            println!("or, by hand, the coordinator first, then each site in its own terminal:\n");
            for command in &q.commands {
                println!("  {command}");
            }
            println!(
                "\nWhile it runs, the task's rounds: fedsec-coordinator status --config {}",
                q.operator_config.display()
            );
            Ok(())
        }
        Command::Pki { command: PkiCommand::Init { clients, out, server_names, force } } => {
            let summary =
                pki::init(&out, clients, &server_names, force).map_err(|e| e.to_string())?;
            println!("CA certificate      {}", summary.ca_cert.display());
            println!("server certificate  {}", summary.server_cert.display());
            println!("signing public key  {}", summary.signing_public_key.display());
            for c in &summary.clients {
                println!("{:<19} {}  id {}", c.name, c.cert.display(), c.id.to_hex());
            }
            let op = &summary.operator;
            println!("{:<19} {}  id {}", op.name, op.cert.display(), op.id.to_hex());
            println!(
                "To let the operator call the Admin service (status, checkpoints, deny-list), list its id in the coordinator's configuration: admins = [\"{}\"]",
                op.id.to_hex()
            );
            println!(
                "DEVELOPMENT PKI written to {}. Not for production: whoever holds ca.key can impersonate any client.",
                out.display()
            );
            Ok(())
        }
        Command::Pki { command: PkiCommand::Sign { ca_cert, ca_key, csr, out, days } } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
            };
            let cert = pki::sign_csr(&read(&ca_cert)?, &read(&ca_key)?, &read(&csr)?, days)
                .map_err(|e| e.to_string())?;
            std::fs::write(&out, cert).map_err(|e| format!("{}: {e}", out.display()))?;
            println!("certificate written to {}", out.display());
            Ok(())
        }
        Command::Store { command: StoreCommand::Keygen { out } } => {
            let id = offline::keygen(&out)?;
            println!("key-encryption key {id} written to {}", out.display());
            Ok(())
        }
        Command::Store { command: StoreCommand::Rewrap { config, seal_plaintext } } => {
            let config = CoordinatorConfig::load(&config, std::env::vars(), &[])
                .map_err(|e| e.to_string())?;
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            let (moved, kept) = runtime.block_on(offline::rewrap(&config, seal_plaintext))?;
            println!("{moved} objects re-wrapped under the current key, {kept} already under it");
            Ok(())
        }
        Command::Checkpoint {
            command: CheckpointCommand::Export { config, version, task, out },
        } => {
            let config = CoordinatorConfig::load(&config, std::env::vars(), &[])
                .map_err(|e| e.to_string())?;
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            runtime.block_on(offline::export(&config, task.as_deref(), version, &out))?;
            println!("checkpoint version {version} verified and written to {}", out.display());
            Ok(())
        }
        Command::Audit { command: AuditCommand::Verify { log, head, key } } => {
            let key = pki::load_verifying_key(&key).map_err(|e| e.to_string())?;
            let head = head.unwrap_or_else(|| audit::head_path(&log));
            let report = audit::verify(&log, &head, &key).map_err(|e| e.to_string())?;
            println!(
                "audit log verified: {} entries, {} complaints judged again, head {}",
                report.entries,
                report.complaints,
                hex::encode(report.head_hash)
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    init_tracing(format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match format {
                LogFormat::Text => eprintln!("error: {e}"),
                // The collector gets the reason as a line like the others.
                LogFormat::Json => tracing::error!(error = %e, "the command failed"),
            }
            ExitCode::FAILURE
        }
    }
}
