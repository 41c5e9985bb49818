//! What one simulation runs: the federation, the data, the model, the faults — and the checks
//! that refuse a setting that cannot run, with the reason.

use std::path::PathBuf;

use fedsec_client::data::{Dataset, Standardizer};
use fedsec_client::trainers::{Mlp, SoftmaxRegression, TrainOptions};
use fedsec_client::{TrainError, Trainer};
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::{AdversaryClass, GraphKind};
use fedsec_wire::model::Model;
use serde::Serialize;

use crate::datasets::Shipped;
use crate::split::Split;

/// The corrupt fraction γ every simulated task assumes (the clients' default floor).
pub const ASSUMED_CORRUPT: f64 = 0.05;

/// The names of the six phases, in [`Phase::ALL`]'s order, as options and reports write them.
pub const PHASES: [&str; 6] =
    ["advertise_keys", "share_keys", "complaints", "masked_input", "consistency", "unmasking"];

/// Why an experiment cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// An option is outside its range.
    #[error("--{option} {value}: {expected}")]
    Option {
        /// The option, without its dashes.
        option: &'static str,
        /// Its value, as given.
        value: String,
        /// The range it must be in.
        expected: String,
    },
    /// `--dataset` names no shipped dataset.
    #[error(
        "--dataset {0}: no such shipped dataset (shipped: {shipped}; or synthetic); give a path \
         to a .csv file for your own data",
        shipped = Shipped::ALL.map(|d| d.name()).join(", ")
    )]
    UnknownDataset(String),
    /// The data does not load, parse or scale.
    #[error(transparent)]
    Data(#[from] fedsec_client::data::DataError),
    /// The dataset is too small to split.
    #[error("the dataset has too few rows for a training and a test set")]
    TooFewRows,
    /// Even every client cannot make a secure round.
    #[error(
        "{available} clients with examples ({per_round} selected per round) are fewer than a \
         secure round with δ = {delta} and γ = {ASSUMED_CORRUPT} needs (its threshold): use more \
         --clients, or a smaller --dropout / --assumed-dropout"
    )]
    TooFewClients {
        /// Clients that hold examples.
        available: usize,
        /// Clients a round selects.
        per_round: usize,
        /// The dropout the rounds are secured for.
        delta: f64,
    },
    /// Not enough eligible clients are left for a round (in-memory transport).
    #[error(
        "round {round}: fewer eligible clients than the {need} a round needs (after aborted \
         attempts, clients that already contributed to the checkpoint wait for the next one)"
    )]
    NoEligibleClients {
        /// The round.
        round: u64,
        /// The clients a round needs.
        need: usize,
    },
    /// The attempt ended without an outcome in the engine.
    #[error("round {0}: the attempt left no outcome")]
    NoOutcome(u64),
    /// Too many attempts aborted.
    #[error(
        "{attempts} attempts did not complete {rounds} rounds: too many aborted (lower the \
         dropout or raise --assumed-dropout)"
    )]
    TooManyAborts {
        /// Attempts made.
        attempts: usize,
        /// Rounds asked for.
        rounds: u64,
    },
    /// The gRPC run outlived its bound.
    #[error("the run did not finish within {0:.0} s")]
    Timeout(f64),
    /// The coordinator's rate limits refused calls of the simulated sites, which are all
    /// honest: a default of `[edge.rate_limits]` is below what an honest client does.
    #[error(
        "the coordinator's rate limits refused {0} calls of honest clients (its log names them): a default of [edge.rate_limits] is too low"
    )]
    RateLimited(u64),
    /// Training or evaluating failed.
    #[error("training failed: {0}")]
    Train(#[from] TrainError),
    /// The evaluator has no test set.
    #[error("the evaluator has no test set")]
    NoTestSet,
    /// The round engine refused.
    #[error("coordinator: {0}")]
    Coordinator(#[from] fedsec_coordinator::Error),
    /// The coordinator's configuration does not load.
    #[error("coordinator configuration: {0}")]
    CoordinatorConfig(#[from] fedsec_coordinator::config::ConfigError),
    /// The coordinator does not start or stopped serving.
    #[error("coordinator: {0}")]
    Start(#[from] fedsec_coordinator::server::StartError),
    /// The coordinator answered with an error status.
    #[error("coordinator: {0}")]
    Status(Box<tonic::Status>),
    /// The checkpoint store refused.
    #[error(transparent)]
    Store(#[from] fedsec_coordinator::store::StoreError),
    /// The throw-away PKI could not be made.
    #[error("development PKI: {0}")]
    Pki(#[from] fedsec_coordinator::pki::PkiError),
    /// A client of the gRPC run failed.
    #[error("client {index}: {source}")]
    Client {
        /// The client.
        index: usize,
        /// Why.
        source: fedsec_client::ClientError,
    },
    /// A task of the run panicked or was cancelled.
    #[error("{what}: {source}")]
    Task {
        /// The task.
        what: String,
        /// Why.
        source: tokio::task::JoinError,
    },
    /// A model does not fit its layout or file.
    #[error("model: {0}")]
    Model(#[from] fedsec_wire::model::ModelError),
    /// The clients' policy does not hold.
    #[error("client policy: {0}")]
    Policy(fedsec_client::ClientError),
    /// A certificate chain does not verify.
    #[error(transparent)]
    X509(#[from] fedsec_wire::x509::X509Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key or certificate file of the throw-away PKI does not parse.
    #[error("{}: {reason}", path.display())]
    Credential {
        /// The file.
        path: std::path::PathBuf,
        /// The parser's reason.
        reason: String,
    },
    /// A temporary folder or the async runtime could not be made.
    #[error("{what}: {source}")]
    Setup {
        /// What was being made.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The report's JSON does not serialize.
    #[error("report.json: {0}")]
    Json(#[from] serde_json::Error),
    /// A plot could not be drawn.
    #[error("{}: {reason}", path.display())]
    Plot {
        /// The image.
        path: std::path::PathBuf,
        /// The plotting library's reason.
        reason: String,
    },
}

impl SimError {
    fn option(
        option: &'static str,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        SimError::Option { option, value: value.to_string(), expected: expected.into() }
    }
}

/// The model every client trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Softmax (multinomial logistic) regression.
    Softmax,
    /// One hidden ReLU layer.
    Mlp,
}

/// How clients reach the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Real gRPC over loopback with mutual TLS.
    Grpc,
    /// The same engine and client protocol code in one thread, on a virtual clock.
    Memory,
}

/// The phase a dropout hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropPhase {
    /// A phase drawn at random for each dropout.
    Random,
    /// Always this phase: the client never sends its message. Reports write its number.
    Phase(#[serde(serialize_with = "phase_number")] Phase),
}

fn phase_number<S: serde::Serializer>(p: &Phase, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(p.index() as u64)
}

impl std::str::FromStr for DropPhase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "random" {
            return Ok(DropPhase::Random);
        }
        PHASES
            .iter()
            .position(|p| *p == s)
            .map(|i| DropPhase::Phase(Phase::ALL[i]))
            .ok_or_else(|| format!("{s:?}: expected random or one of {}", PHASES.join(", ")))
    }
}

/// Where the data comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// A dataset shipped in the repository, with its fixed split.
    Shipped(String),
    /// Generated Gaussian clusters ([`crate::datasets::synthetic`]), `rows_per_client` training
    /// examples per client.
    Synthetic {
        /// Training examples per client (on average).
        rows_per_client: usize,
        /// Features.
        features: usize,
        /// Classes.
        classes: usize,
    },
    /// Any CSV file: numeric features and an integer label column; a seeded test split.
    Csv {
        /// The file.
        path: PathBuf,
        /// The label column's name.
        label_column: String,
        /// Fraction held out for testing.
        test_fraction: f64,
    },
}

/// One simulation's settings (also written into the report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Experiment {
    /// Clients in the federation.
    pub clients: usize,
    /// Rounds to complete.
    pub rounds: u64,
    /// Clients selected per round (`None`: every client with examples).
    pub clients_per_round: Option<usize>,
    /// Local epochs per round.
    pub epochs: usize,
    /// The clients' SGD step size.
    pub learning_rate: f32,
    /// The server's step size η: θ ← θ + η · average update.
    pub server_learning_rate: f32,
    /// SGD batch size.
    pub batch_size: usize,
    /// The model.
    pub model: ModelKind,
    /// Hidden units of the MLP.
    pub hidden: usize,
    /// The data.
    pub data: DataSource,
    /// How the training set is split across clients.
    pub split: Split,
    /// Fraction of the selected clients that drop out of each round.
    pub dropout: f64,
    /// The phase they drop out at.
    pub dropout_phase: DropPhase,
    /// The dropout δ rounds are planned for (`None`: derived from `dropout`).
    pub assumed_dropout: Option<f64>,
    /// Fraction of the clients that are slow every round.
    pub stragglers: f64,
    /// How much slower a straggler's training is, milliseconds.
    pub straggler_delay_ms: u64,
    /// Network latency added before every call, milliseconds.
    pub latency_ms: u64,
    /// SecAgg (complete graph) or SecAgg+ (Harary graph).
    pub graph: GraphKind,
    /// Quantization: every update value is clipped to [−clip, clip].
    pub clip: f64,
    /// Quantization: a client's weight is min(examples / max_examples, 1) (`None`: the
    /// largest client's example count, so weights are proportional to examples).
    pub max_examples: Option<u64>,
    /// Deadline of each phase, milliseconds.
    pub phase_deadline_ms: u64,
    /// The transport.
    pub transport: Transport,
    /// Seed of the data split, the sampling, the drop schedule and local shuffling. Key
    /// generation never uses it.
    pub seed: u64,
    /// Also run the same training without secure aggregation.
    pub plaintext_baseline: bool,
}

impl Default for Experiment {
    /// The default experiment: 50 clients, SecAgg+, softmax regression on the shipped digits,
    /// Dirichlet(0.5) split, 10 % dropouts at random phases.
    fn default() -> Self {
        Experiment {
            clients: 50,
            rounds: 30,
            clients_per_round: None,
            epochs: 2,
            learning_rate: 0.1,
            server_learning_rate: 1.0,
            batch_size: 16,
            model: ModelKind::Softmax,
            hidden: 32,
            data: DataSource::Shipped("digits".into()),
            split: Split::Dirichlet(0.5),
            dropout: 0.1,
            dropout_phase: DropPhase::Random,
            assumed_dropout: None,
            stragglers: 0.0,
            straggler_delay_ms: 1000,
            latency_ms: 0,
            graph: GraphKind::Harary,
            clip: 2.0,
            max_examples: None,
            phase_deadline_ms: 5000,
            transport: Transport::Grpc,
            seed: 1,
            plaintext_baseline: true,
        }
    }
}

/// The data of an experiment, ready to hand out: standardized, split across clients.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The whole training set (for the centralized reference).
    pub train: Dataset,
    /// Each client's training examples (empty for a client the split left without any).
    pub shards: Vec<Dataset>,
    /// The held-out test set.
    pub test: Dataset,
    /// Classes.
    pub classes: usize,
    /// Features.
    pub features: usize,
    /// The initial global model.
    pub initial_model: Model,
    /// The indices of the clients with examples: the ones that take part.
    pub active: Vec<usize>,
    /// The weight cap of the quantization.
    pub max_examples: u64,
    /// The δ rounds are planned for.
    pub assumed_dropout: f64,
    /// Clients selected per round.
    pub clients_per_round: usize,
    /// The smallest round the coordinator starts.
    pub min_clients: usize,
}

impl Experiment {
    /// Checks the settings that do not need the data.
    pub fn validate(&self) -> Result<(), SimError> {
        let fraction = |name: &'static str, x: f64, top_inclusive: bool| {
            let ok = x >= 0.0 && if top_inclusive { x <= 1.0 } else { x < 1.0 };
            if ok {
                Ok(())
            } else {
                let top = if top_inclusive { "at most" } else { "below" };
                Err(SimError::option(name, x, format!("must be at least 0 and {top} 1")))
            }
        };
        fraction("dropout", self.dropout, false)?;
        fraction("stragglers", self.stragglers, true)?;
        if let Some(d) = self.assumed_dropout {
            fraction("assumed-dropout", d, false)?;
        }
        if self.epochs == 0 || self.batch_size == 0 {
            let zero = if self.epochs == 0 { "epochs" } else { "batch-size" };
            return Err(SimError::option(zero, 0, "at least 1"));
        }
        if let Some(k) = self.clients_per_round
            && (k < 2 || k > self.clients)
        {
            let expected = format!("between 2 and --clients ({})", self.clients);
            return Err(SimError::option("clients-per-round", k, expected));
        }
        let positive = |x: f32| x.is_finite() && x > 0.0;
        if !positive(self.learning_rate) {
            return Err(SimError::option("lr", self.learning_rate, "finite and above 0"));
        }
        if !positive(self.server_learning_rate) {
            return Err(SimError::option(
                "server-lr",
                self.server_learning_rate,
                "finite and above 0",
            ));
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return Err(SimError::option("clip", self.clip, "finite and above 0"));
        }
        if self.max_examples == Some(0) {
            return Err(SimError::option("max-examples", 0, "at least 1"));
        }
        let bounded = |name: &'static str, v: u64, low: u64, high: u64| {
            if (low..=high).contains(&v) {
                Ok(())
            } else {
                Err(SimError::option(name, v, format!("between {low} and {high}")))
            }
        };
        bounded("phase-deadline-ms", self.phase_deadline_ms, 1, 3_600_000)?;
        bounded("straggler-delay-ms", self.straggler_delay_ms, 0, 3_600_000)?;
        bounded("latency-ms", self.latency_ms, 0, 60_000)?;
        bounded("rounds", self.rounds, 1, 100_000)?;
        bounded("clients", self.clients as u64, 2, 1_000_000)?;
        if let DataSource::Csv { test_fraction, .. } = &self.data
            && !(*test_fraction > 0.0 && *test_fraction < 1.0)
        {
            return Err(SimError::option("test-fraction", test_fraction, "between 0 and 1"));
        }
        Ok(())
    }

    /// Loads and splits the data and fixes the round parameters; refuses an experiment whose
    /// rounds could not be secure (too few clients for the threshold).
    pub fn prepare(&self) -> Result<Prepared, SimError> {
        self.validate()?;
        let (mut train, mut test) = match &self.data {
            DataSource::Shipped(name) => {
                let d = Shipped::from_name(name)
                    .ok_or_else(|| SimError::UnknownDataset(name.clone()))?;
                d.load()?
            }
            DataSource::Synthetic { rows_per_client, features, classes } => {
                crate::datasets::synthetic(
                    rows_per_client * self.clients,
                    *features,
                    *classes,
                    self.seed,
                )
            }
            DataSource::Csv { path, label_column, test_fraction } => {
                let all = Dataset::from_csv(path, label_column)?;
                all.split(*test_fraction, self.seed)
            }
        };
        if train.is_empty() || test.is_empty() {
            return Err(SimError::TooFewRows);
        }
        // Feature scaling fixed in advance and shared by every site (here: fitted on the
        // pooled training set), as a federation agrees on its preprocessing.
        let scale = Standardizer::fit(&train);
        scale.apply(&mut train)?;
        scale.apply(&mut test)?;
        let classes = train.classes().max(test.classes());
        let features = train.feature_count();
        let parts = crate::split::partition(&train.labels, self.clients, self.split, self.seed);
        let shards: Vec<Dataset> = parts.iter().map(|idx| train.select(idx)).collect();
        let active: Vec<usize> = (0..self.clients).filter(|&i| !shards[i].is_empty()).collect();
        let largest = shards.iter().map(Dataset::len).max().unwrap_or(1) as u64;
        let max_examples = self.max_examples.unwrap_or(largest.max(1));
        let clients_per_round = self.clients_per_round.unwrap_or(active.len()).min(active.len());
        let assumed_dropout =
            self.assumed_dropout.unwrap_or_else(|| self.derived_dropout(clients_per_round));
        let min_clients = self.min_clients(clients_per_round, assumed_dropout, active.len())?;
        let initial_model = match self.model {
            ModelKind::Softmax => SoftmaxRegression::initial_model(features, classes),
            ModelKind::Mlp => Mlp::initial_model(features, self.hidden, classes, self.seed),
        };
        Ok(Prepared {
            train,
            shards,
            test,
            classes,
            features,
            initial_model,
            active,
            max_examples,
            assumed_dropout,
            clients_per_round,
            min_clients,
        })
    }

    /// Phase 0's deadline: the phase deadline, plus the latency of the call that answers the
    /// plan and of the advertisement. Downloading and training happen in it; a straggler whose
    /// extra training time passes it misses the round.
    pub fn advertise_deadline_ms(&self) -> u64 {
        self.phase_deadline_ms + 2 * self.latency_ms
    }

    /// True if a straggler misses phase 0's deadline (and so every round).
    pub fn stragglers_miss_rounds(&self) -> bool {
        self.straggler_delay_ms + self.latency_ms >= self.advertise_deadline_ms()
    }

    /// δ well above the dropout rate: the rate plus three standard deviations of the number
    /// of dropouts in a round of `n`, rounded up to a percent — so that a round aborts rarely.
    /// Stragglers slower than the deadline count as dropouts.
    pub fn derived_dropout(&self, n: usize) -> f64 {
        let mut rate = self.dropout;
        if self.stragglers_miss_rounds() {
            rate += self.stragglers;
        }
        let rate = rate.min(0.99);
        let sd = (rate * (1.0 - rate) / n.max(1) as f64).sqrt();
        ((rate + 3.0 * sd + 0.01) * 100.0).ceil().min(50.0) / 100.0
    }

    /// The smallest round the coordinator starts: half the target, and never below the
    /// smallest n for which a secure (k, t) exists. Errors if even every client cannot make
    /// a secure round.
    fn min_clients(&self, target: usize, delta: f64, available: usize) -> Result<usize, SimError> {
        let ppm = |x: f64| (x * 1e6).round() as u32;
        let secure = |n: usize| {
            n >= fedsec_crypto::secagg::client::ClientPolicy::default().min_clients
                && fedsec_crypto::params::choose(
                    self.graph,
                    n,
                    ppm(delta),
                    ppm(ASSUMED_CORRUPT),
                    AdversaryClass::SemiMalicious,
                )
                .is_ok()
        };
        let Some(smallest) = (2..=target).find(|&n| secure(n)) else {
            return Err(SimError::TooFewClients { available, per_round: target, delta });
        };
        Ok(smallest.max(target.div_ceil(2)))
    }

    /// The trainer of client `i` on its shard.
    pub fn trainer(&self, p: &Prepared, i: usize) -> Result<Box<dyn Trainer>, TrainError> {
        let options = TrainOptions {
            epochs: self.epochs,
            learning_rate: self.learning_rate,
            batch_size: self.batch_size,
            l2: 0.0,
            seed: self.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        };
        let shard = p.shards[i].clone();
        Ok(match self.model {
            ModelKind::Softmax => {
                Box::new(SoftmaxRegression::new(shard, None, p.classes, options)?)
            }
            ModelKind::Mlp => Box::new(Mlp::new(shard, None, self.hidden, p.classes, options)?),
        })
    }

    /// A trainer that evaluates models on the test set.
    pub fn evaluator(&self, p: &Prepared) -> Result<Box<dyn Trainer>, TrainError> {
        let options = TrainOptions::default();
        let test = p.test.clone();
        Ok(match self.model {
            ModelKind::Softmax => {
                Box::new(SoftmaxRegression::new(test.clone(), Some(test), p.classes, options)?)
            }
            ModelKind::Mlp => {
                Box::new(Mlp::new(test.clone(), Some(test), self.hidden, p.classes, options)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_names_its_option_or_rule() {
        let bad = Experiment { dropout: 1.0, ..Experiment::default() };
        assert!(matches!(bad.validate(), Err(SimError::Option { option: "dropout", .. })));
        let bad = Experiment { clip: 0.0, ..Experiment::default() };
        assert!(matches!(bad.validate(), Err(SimError::Option { option: "clip", .. })));
        let bad = Experiment { clients: 1, ..Experiment::default() };
        assert!(matches!(bad.validate(), Err(SimError::Option { option: "clients", .. })));
        let bad = Experiment { data: DataSource::Shipped("nope".into()), ..Experiment::default() };
        assert!(matches!(bad.prepare(), Err(SimError::UnknownDataset(name)) if name == "nope"));
        assert!(Experiment::default().validate().is_ok());
    }
}
