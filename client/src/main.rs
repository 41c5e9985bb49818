//! `fedsec-client`: take part in a federation with a CSV file, without writing Rust.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use fedsec_client::data::{Dataset, Standardizer};
use fedsec_client::trainers::{Mlp, SoftmaxRegression, TrainOptions};
use fedsec_client::{Client, ClientConfig, Trainer};

/// The version line; a build with the test hooks says so (`fedsec-client --version`), so a
/// shipped binary can be checked for them.
#[cfg(not(feature = "test-hooks"))]
const VERSION: &str = env!("CARGO_PKG_VERSION");
#[cfg(feature = "test-hooks")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (test-hooks: not for production)");

/// A fedsec data site: trains on local data and sends only masked updates.
#[derive(Debug, Parser)]
#[command(name = "fedsec-client", version = VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModelKind {
    /// Softmax (multinomial logistic) regression.
    Softmax,
    /// One hidden ReLU layer.
    Mlp,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join the task of `client.toml` and train on a CSV file until the task finishes.
    Join(Box<JoinArgs>),
    /// Write the initial model of a task (safetensors), for the operator's configuration.
    InitModel {
        /// The model.
        #[arg(long, value_enum, default_value_t = ModelKind::Softmax)]
        model: ModelKind,
        /// Number of input features.
        #[arg(long)]
        features: usize,
        /// Number of classes.
        #[arg(long)]
        classes: usize,
        /// Hidden units of the MLP.
        #[arg(long, default_value_t = 32)]
        hidden: usize,
        /// Seed of the MLP's initial weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// The client configuration (TOML).
    #[arg(long, short, env = "FEDSEC_CLIENT_CONFIG")]
    config: PathBuf,
    /// The local data: a CSV file with a header row.
    #[arg(long)]
    #[cfg_attr(not(feature = "test-hooks"), arg(required = true))]
    #[cfg_attr(feature = "test-hooks", arg(required_unless_present = "test_constant_update"))]
    data: Option<PathBuf>,
    /// The column holding the class ids (0, 1, …).
    #[arg(long, default_value = "label")]
    label_column: String,
    /// The model the task trains (it must match the task's checkpoint).
    #[arg(long, value_enum, default_value_t = ModelKind::Softmax)]
    model: ModelKind,
    /// Number of classes (default: the largest label in the data + 1).
    #[arg(long)]
    classes: Option<usize>,
    /// Hidden units of the MLP.
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    /// Local epochs per round.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Local learning rate.
    #[arg(long, default_value_t = 0.1)]
    learning_rate: f32,
    /// Local minibatch size.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Standardize features with mean and standard deviation from this JSON file
    /// (`{"mean": [...], "std": [...]}`), agreed by the federation.
    #[arg(long)]
    standardizer: Option<PathBuf>,
    /// When the task finishes, write its final global model (verified) to this file
    /// (safetensors).
    #[arg(long)]
    save_model: Option<PathBuf>,
    /// Flags for tests of the whole system; only in a build with the feature `test-hooks`.
    #[cfg(feature = "test-hooks")]
    #[command(flatten)]
    test: test_only::TestFlags,
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Make this site's Ed25519 key and a certificate request for the federation's CA.
    Request {
        /// Output folder (site.key, site.csr.pem).
        #[arg(long)]
        out: PathBuf,
        /// The site's name, for the certificate's subject.
        #[arg(long)]
        name: String,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// The `--test-…` flags and what they drive: only in a build with the feature `test-hooks`
/// (the integration tests' and the simulation's), never in the shipped binary.
#[cfg(feature = "test-hooks")]
mod test_only {
    use std::path::PathBuf;

    use clap::Args;
    use fedsec_client::{Evaluation, FitResult, TestHooks, TrainError, Trainer};
    use fedsec_wire::model::Model;

    #[derive(Debug, Args)]
    pub struct TestFlags {
        /// Test only: write each quantized update to this folder (it leaks the update).
        #[arg(long, hide = true)]
        pub test_dump_quantized: Option<PathBuf>,
        /// Test only: stop before uploading the masked input of this round.
        #[arg(long, hide = true)]
        pub test_stall_before_upload: Option<u64>,
        /// Test only: instead of training on data, return this value for every parameter of
        /// the global model (a model of any size without a dataset).
        #[arg(long, hide = true, conflicts_with = "data")]
        pub test_constant_update: Option<f32>,
        /// Test only: pause this many milliseconds before every call (a slow network).
        #[arg(long, hide = true)]
        pub test_latency_ms: Option<u64>,
    }

    impl TestFlags {
        pub fn hooks(&self) -> TestHooks {
            TestHooks {
                dump_quantized: self.test_dump_quantized.clone(),
                stall_before_upload: self.test_stall_before_upload,
                latency: std::time::Duration::from_millis(self.test_latency_ms.unwrap_or(0)),
                ..TestHooks::default()
            }
        }

        pub fn trainer(&self) -> Option<Box<dyn Trainer>> {
            self.test_constant_update
                .map(|value| Box::new(ConstantUpdate { value }) as Box<dyn Trainer>)
        }
    }

    /// `--test-constant-update`: the same value for every parameter, with a full weight,
    /// whatever the model's size; it neither trains nor evaluates anything.
    #[derive(Debug)]
    struct ConstantUpdate {
        value: f32,
    }

    impl Trainer for ConstantUpdate {
        fn fit(&mut self, global: &Model) -> Result<FitResult, TrainError> {
            // More examples than any task's `max_examples`: the update gets the full weight.
            Ok(FitResult {
                update: vec![self.value; global.len()],
                examples: u64::MAX >> 1,
                loss: 0.0,
            })
        }

        fn evaluate(&mut self, _global: &Model) -> Result<Option<Evaluation>, TrainError> {
            Ok(None)
        }
    }
}

fn trainer(
    model: ModelKind,
    data: Dataset,
    classes: usize,
    hidden: usize,
    options: TrainOptions,
) -> Result<Box<dyn Trainer>, String> {
    let (train, test) = data.split(0.2, options.seed);
    Ok(match model {
        ModelKind::Softmax => Box::new(
            SoftmaxRegression::new(train, Some(test), classes, options)
                .map_err(|e| e.to_string())?,
        ),
        ModelKind::Mlp => Box::new(
            Mlp::new(train, Some(test), hidden, classes, options).map_err(|e| e.to_string())?,
        ),
    })
}

/// A data-set trainer from the `join` flags.
fn data_trainer(args: &JoinArgs, data: &Path) -> Result<Box<dyn Trainer>, String> {
    let mut dataset = Dataset::from_csv(data, &args.label_column).map_err(|e| e.to_string())?;
    if let Some(path) = &args.standardizer {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let s: Standardizer =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        s.apply(&mut dataset).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let classes = args.classes.unwrap_or_else(|| dataset.classes());
    let options = TrainOptions {
        epochs: args.epochs,
        learning_rate: args.learning_rate,
        batch_size: args.batch_size,
        ..TrainOptions::default()
    };
    trainer(args.model, dataset, classes, args.hidden, options)
}

fn join(args: JoinArgs) -> Result<(), String> {
    let config = ClientConfig::load(&args.config).map_err(|e| e.to_string())?;
    #[cfg(feature = "test-hooks")]
    let test_trainer = args.test.trainer();
    #[cfg(not(feature = "test-hooks"))]
    let test_trainer: Option<Box<dyn Trainer>> = None;
    let mut trainer = match (test_trainer, &args.data) {
        (Some(t), _) => t,
        (None, Some(data)) => data_trainer(&args, data)?,
        (None, None) => return Err("--data is required".into()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = Client::connect(config).await.map_err(|e| e.to_string())?;
        #[cfg(feature = "test-hooks")]
        let client = client.with_test_hooks(args.test.hooks());
        let mut client = client;
        println!("client {} joining", client.id().to_hex());
        let summary = client.run(&mut trainer).await.map_err(|e| e.to_string())?;
        let done = summary.rounds.iter().filter(|r| r.completed).count();
        let last = summary
            .last_checkpoint_version
            .map_or_else(|| "none".to_string(), |v| format!("version {v}"));
        println!(
            "task finished: {done} rounds completed, {} attempts left, final checkpoint {last}",
            summary.abandoned.len(),
        );
        if let (Some(path), Some(model)) = (&args.save_model, &summary.final_model) {
            let bytes = model.to_safetensors().map_err(|e| e.to_string())?;
            std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("final model written to {}", path.display());
        }
        Ok(())
    })
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Join(args) => join(*args),
        Command::InitModel { model, features, classes, hidden, seed, out } => {
            let m = match model {
                ModelKind::Softmax => SoftmaxRegression::initial_model(features, classes),
                ModelKind::Mlp => Mlp::initial_model(features, hidden, classes, seed),
            };
            let bytes = m.to_safetensors().map_err(|e| e.to_string())?;
            std::fs::write(&out, bytes).map_err(|e| format!("{}: {e}", out.display()))?;
            println!("{} parameters written to {}", m.len(), out.display());
            Ok(())
        }
        Command::Pki { command: PkiCommand::Request { out, name } } => {
            let written = fedsec_client::pki::request(&out, &name).map_err(|e| e.to_string())?;
            println!(
                "key {}, request {}, id {}",
                written.key.display(),
                written.csr.display(),
                written.id.to_hex()
            );
            println!("Send site.csr.pem to the federation's CA; keep site.key private.");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    init_tracing();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn test_flags() -> Vec<String> {
        let cli = Cli::command();
        let join = cli.find_subcommand("join").expect("join is a command");
        join.get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| l.starts_with("test"))
            .map(String::from)
            .collect()
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The binary `cargo build -p fedsec-client` ships (this test runs in such a build:
    /// `cargo test -p fedsec-client`): no `--test-…` flag, and a version line without the hooks.
    #[cfg(not(feature = "test-hooks"))]
    #[test]
    fn the_shipped_binary_has_no_test_flags() {
        use clap::error::ErrorKind;

        assert_eq!(test_flags(), Vec::<String>::new());
        assert!(!VERSION.contains("test-hooks"));
        for flag in [
            "--test-dump-quantized",
            "--test-stall-before-upload",
            "--test-constant-update",
            "--test-latency-ms",
        ] {
            let args =
                ["fedsec-client", "join", "--config", "c.toml", "--data", "d.csv", flag, "1"];
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::UnknownArgument, "{flag}");
        }
        let err = Cli::try_parse_from(["fedsec-client", "join", "--config", "c.toml"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument, "--data is required");
    }

    /// The build the integration tests and the simulation use.
    #[cfg(feature = "test-hooks")]
    #[test]
    fn a_test_build_has_its_flags_and_says_so() {
        let mut flags = test_flags();
        flags.sort();
        assert_eq!(
            flags,
            [
                "test-constant-update",
                "test-dump-quantized",
                "test-latency-ms",
                "test-stall-before-upload"
            ]
        );
        assert!(VERSION.contains("test-hooks"));
        let args = ["fedsec-client", "join", "--config", "c.toml", "--test-constant-update", "1"];
        assert!(Cli::try_parse_from(args).is_ok(), "no --data needed with a constant update");
    }
}
