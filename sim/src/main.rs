//! `fedsec-sim`: federated training with secure aggregation on one machine, with a report.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, ValueEnum};
use fedsec_crypto::GraphKind;
use fedsec_sim::experiment::{DataSource, DropPhase, Experiment, ModelKind, Transport};
use fedsec_sim::split::Split;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModelArg {
    /// Softmax (multinomial logistic) regression.
    Softmax,
    /// A multilayer perceptron with one hidden ReLU layer (--hidden units).
    Mlp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GraphArg {
    /// SecAgg+: each client masks with and shares its keys among k neighbours of a Harary
    /// graph (Bell et al. 2020); cost grows with log n.
    Harary,
    /// SecAgg: every pair of clients (Bonawitz et al. 2017); cost grows with n.
    Complete,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    /// Real gRPC over loopback with mutual TLS (a throw-away CA), one task per client.
    Grpc,
    /// No sockets: the same round engine and client protocol code in one process, on a
    /// virtual clock — for thousands of clients, and bit-for-bit reproducible.
    Memory,
}

/// Federated training with secure aggregation, simulated on one machine.
///
/// Runs the real fedsec coordinator and N real clients in one process: each client trains on
/// its share of a dataset, and the coordinator learns only the sum of their updates (SecAgg+
/// by default). Clients drop out at a random phase of some rounds, as the seed says; the same
/// training runs again without secure aggregation (the plaintext baseline) on the same
/// participants, and a centralized model gives the reference. Progress shows per round; the
/// summary table prints at the end, and the report folder receives report.json, rounds.csv and
/// plots.
///
/// With no options: 50 clients, softmax regression on the shipped handwritten digits split
/// non-IID (Dirichlet α = 0.5), 10 % dropouts, 30 rounds.
#[derive(Debug, Parser)]
#[command(name = "fedsec-sim", version)]
struct Args {
    /// Clients in the federation.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Rounds to complete (an aborted attempt is retried and does not count).
    #[arg(long, default_value_t = 30)]
    rounds: u64,
    /// Clients selected per round [default: every client with examples].
    #[arg(long)]
    clients_per_round: Option<usize>,
    /// Local epochs per round.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// The clients' SGD learning rate (features are standardized).
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    /// The server's learning rate η: θ ← θ + η · weighted average of the updates.
    #[arg(long, default_value_t = 1.0)]
    server_lr: f32,
    /// SGD batch size.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// The model.
    #[arg(long, value_enum, default_value_t = ModelArg::Softmax)]
    model: ModelArg,
    /// Hidden units of --model mlp.
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    /// A shipped dataset (digits: UCI handwritten digits, 1,797 8×8 images, 10 classes;
    /// breast_cancer: UCI Wisconsin diagnostic, 569 patients, 2 classes), synthetic (Gaussian
    /// clusters, 40 examples per client, 20 features, 4 classes: for thousands of clients), or
    /// the path of a CSV file with numeric features and an integer label column
    /// (--label-column).
    #[arg(long, default_value = "digits")]
    dataset: String,
    /// The label column of a CSV --dataset.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Fraction of a CSV --dataset held out for testing (shipped datasets have a fixed split).
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// How the training set is split across clients: iid, or dirichlet:α (per class,
    /// proportions from a Dirichlet(α); smaller α is more skewed). Clients left with no
    /// examples do not take part.
    #[arg(long, default_value = "dirichlet:0.5")]
    split: Split,
    /// Fraction of the selected clients that drop out of each round (each client, each round,
    /// independently from the seed). Below 1.
    #[arg(long, default_value_t = 0.1)]
    dropout: f64,
    /// The phase a dropout hits: random, advertise_keys, share_keys, complaints, masked_input,
    /// consistency or unmasking. A client that drops out before masked_input is left out of
    /// the sum; after it, its input is in the sum and its shares are recovered from the others.
    #[arg(long, default_value = "random")]
    dropout_phase: DropPhase,
    /// The dropout δ rounds are planned for: the threshold t and degree k follow from it,
    /// from |U| and from the corrupt fraction γ = 0.05 — every client recomputes (k, t) from
    /// these and refuses a plan that does not match, so they are given through δ, never
    /// directly [default: the dropout rate plus three standard deviations].
    #[arg(long)]
    assumed_dropout: Option<f64>,
    /// Fraction of the clients that are slow in every round.
    #[arg(long, default_value_t = 0.0)]
    stragglers: f64,
    /// How much longer a straggler's training takes, in milliseconds. A straggler slower than
    /// the phase deadline (phase 0's, which also holds the latency of two calls) misses every
    /// round, as a dropout, and the derived δ counts it as one.
    #[arg(long, default_value_t = 1000)]
    straggler_delay_ms: u64,
    /// Network latency added before every call of every client, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// SecAgg+ (harary) or SecAgg (complete).
    #[arg(long, value_enum, default_value_t = GraphArg::Harary)]
    graph: GraphArg,
    /// Quantization range: every update value is clipped to [−clip, clip] before it is
    /// quantized to 32-bit integers.
    #[arg(long, default_value_t = 2.0)]
    clip: f64,
    /// A client's weight in the average is min(examples / max_examples, 1) [default: the
    /// largest client's examples, so weights are proportional to examples].
    #[arg(long)]
    max_examples: Option<u64>,
    /// The deadline of each phase, in milliseconds (short: a dropped client's closed
    /// connection counts at once, so no round waits for it anyway).
    #[arg(long, default_value_t = 5000)]
    phase_deadline_ms: u64,
    /// How clients reach the coordinator.
    #[arg(long, value_enum, default_value_t = TransportArg::Grpc)]
    transport: TransportArg,
    /// Seed of the data split, the sampling, the drop schedule and local shuffling. Key
    /// generation never uses it: keys come from the operating system.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also run the same training without secure aggregation, on the same participants.
    #[arg(long, action = ArgAction::Set, default_value_t = true)]
    plaintext_baseline: bool,
    /// The report folder.
    #[arg(long, default_value = "fedsec-report")]
    report: PathBuf,
}

impl Args {
    fn experiment(&self) -> Experiment {
        let data = if self.dataset == "synthetic" {
            DataSource::Synthetic { rows_per_client: 40, features: 20, classes: 4 }
        } else if self.dataset.ends_with(".csv") || self.dataset.contains('/') {
            DataSource::Csv {
                path: PathBuf::from(&self.dataset),
                label_column: self.label_column.clone(),
                test_fraction: self.test_fraction,
            }
        } else {
            DataSource::Shipped(self.dataset.clone())
        };
        Experiment {
            clients: self.clients,
            rounds: self.rounds,
            clients_per_round: self.clients_per_round,
            epochs: self.epochs,
            learning_rate: self.lr,
            server_learning_rate: self.server_lr,
            batch_size: self.batch_size,
            model: match self.model {
                ModelArg::Softmax => ModelKind::Softmax,
                ModelArg::Mlp => ModelKind::Mlp,
            },
            hidden: self.hidden,
            data,
            split: self.split,
            dropout: self.dropout,
            dropout_phase: self.dropout_phase,
            assumed_dropout: self.assumed_dropout,
            stragglers: self.stragglers,
            straggler_delay_ms: self.straggler_delay_ms,
            latency_ms: self.latency_ms,
            graph: match self.graph {
                GraphArg::Harary => GraphKind::Harary,
                GraphArg::Complete => GraphKind::Complete,
            },
            clip: self.clip,
            max_examples: self.max_examples,
            phase_deadline_ms: self.phase_deadline_ms,
            transport: match self.transport {
                TransportArg::Grpc => Transport::Grpc,
                TransportArg::Memory => Transport::Memory,
            },
            seed: self.seed,
            plaintext_baseline: self.plaintext_baseline,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let exp = args.experiment();
    if let Err(e) = exp.validate() {
        eprintln!("fedsec-sim: {e}");
        return ExitCode::from(2);
    }
    let progress = ProgressBar::new(exp.rounds);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} rounds  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let report = match fedsec_sim::simulate(&exp, &progress) {
        Ok(r) => r,
        Err(e) => {
            progress.abandon();
            eprintln!("fedsec-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    match report.write(&args.report) {
        Ok(files) => {
            println!("report: {}", args.report.display());
            for f in files {
                println!("  {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fedsec-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
