//! A training task's configuration: who takes part, how rounds run, how long each phase waits.

use std::time::Duration;

use fedsec_crypto::params::GraphParams;
use fedsec_crypto::quant::QuantParams;
use fedsec_crypto::{AdversaryClass, GraphKind, TaskId};
use serde::{Deserialize, Serialize};

use crate::error::{ConfigRule, Error, Result};

/// How long each step of a round may take before it closes without the clients that have not
/// answered. Each deadline runs from the moment its step opens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhaseDeadlines {
    /// From the first check-in of a round until selection with at least `min_clients`.
    #[serde(with = "millis")]
    pub selection: Duration,
    /// Phase 0: download the model, train, advertise keys.
    #[serde(with = "millis")]
    pub advertise_keys: Duration,
    /// Phase 1: share keys.
    #[serde(with = "millis")]
    pub share_keys: Duration,
    /// Phase 1½: open the shares and complain about bad ones.
    #[serde(with = "millis", default = "default_complaints")]
    pub complaints: Duration,
    /// Phase 2: upload the masked input.
    #[serde(with = "millis")]
    pub masked_input: Duration,
    /// Phase 3: sign U3.
    #[serde(with = "millis")]
    pub consistency: Duration,
    /// Phase 4: reveal shares.
    #[serde(with = "millis")]
    pub unmasking: Duration,
}

impl Default for PhaseDeadlines {
    fn default() -> Self {
        PhaseDeadlines {
            selection: Duration::from_secs(30),
            advertise_keys: Duration::from_secs(600),
            share_keys: Duration::from_secs(60),
            complaints: default_complaints(),
            masked_input: Duration::from_secs(300),
            consistency: Duration::from_secs(60),
            unmasking: Duration::from_secs(60),
        }
    }
}

impl PhaseDeadlines {
    /// The six SecAgg phase deadlines, in phase order.
    pub fn phases(&self) -> [Duration; 6] {
        [
            self.advertise_keys,
            self.share_keys,
            self.complaints,
            self.masked_input,
            self.consistency,
            self.unmasking,
        ]
    }

    /// The same deadline for every step (simulations, tests).
    pub fn uniform(d: Duration) -> Self {
        PhaseDeadlines {
            selection: d,
            advertise_keys: d,
            share_keys: d,
            complaints: d,
            masked_input: d,
            consistency: d,
            unmasking: d,
        }
    }
}

/// The default deadline of phase 1½: a minute (opening the shares and proving a complaint
/// take milliseconds).
fn default_complaints() -> Duration {
    Duration::from_secs(60)
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Everything that fixes how a task's rounds run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskConfig {
    /// The task's id.
    pub task_id: TaskId,
    /// A name for people.
    pub name: String,
    /// Target number of clients whose inputs a round sums.
    pub clients_per_round: usize,
    /// A round starts with no fewer selected clients than this.
    pub min_clients: usize,
    /// Select up to `clients_per_round × over_selection` clients, so that dropouts still leave
    /// the target (≥ 1).
    pub over_selection: f64,
    /// Complete graph (SecAgg) or Harary graph (SecAgg+).
    pub graph: GraphKind,
    /// The adversary class (k, t) are chosen against.
    pub adversary: AdversaryClass,
    /// Assumed dropout δ, parts per million.
    pub dropout_ppm: u32,
    /// Assumed corrupt fraction γ, parts per million.
    pub corrupt_ppm: u32,
    /// Clip bound c of every update value.
    pub clip: f64,
    /// A client's weight is min(examples / max_examples, 1).
    pub max_examples: u64,
    /// θ ← θ + η · (weighted average update).
    pub server_learning_rate: f32,
    /// Rounds to run; the task finishes after that many completed rounds.
    pub rounds: u64,
    /// Per-step deadlines.
    pub deadlines: PhaseDeadlines,
    /// Masked-input chunk size in words.
    pub upload_chunk_words: u32,
    /// Masked inputs received at once; bounds the coordinator's memory.
    pub max_uploads_in_flight: usize,
    /// The upload lease: a partial masked input that gets no new chunk for this long is
    /// evicted and its client counted as dropped, so one client cannot hold a place among the
    /// `max_uploads_in_flight` (or keep phase 2 open) with a trickle of chunks.
    #[serde(with = "millis", default = "default_upload_idle")]
    pub upload_idle: Duration,
}

/// The default upload lease: 30 s without a new chunk (a 256 KiB chunk takes 2 s at 1 Mbit/s).
pub const DEFAULT_UPLOAD_IDLE: Duration = Duration::from_secs(30);

fn default_upload_idle() -> Duration {
    DEFAULT_UPLOAD_IDLE
}

impl TaskConfig {
    /// A configuration with the documented defaults for everything but the task's identity and
    /// size.
    pub fn new(task_id: TaskId, name: impl Into<String>, clients_per_round: usize) -> Self {
        TaskConfig {
            task_id,
            name: name.into(),
            clients_per_round,
            min_clients: clients_per_round.div_ceil(2).max(3),
            over_selection: 1.3,
            graph: GraphKind::Harary,
            adversary: AdversaryClass::SemiMalicious,
            dropout_ppm: 300_000,
            corrupt_ppm: 50_000,
            clip: 1.0,
            max_examples: 1_000,
            server_learning_rate: 1.0,
            rounds: 10,
            deadlines: PhaseDeadlines::default(),
            upload_chunk_words: 1 << 16,
            max_uploads_in_flight: 64,
            upload_idle: DEFAULT_UPLOAD_IDLE,
        }
    }

    /// The largest round the task can select: ⌈target × over-selection⌉.
    pub fn max_selected(&self) -> usize {
        ((self.clients_per_round as f64) * self.over_selection).ceil() as usize
    }

    /// The quantization every round of the task uses: scales derived from the largest round,
    /// so that no sum can wrap around.
    pub fn quant(&self) -> Result<QuantParams> {
        Ok(QuantParams::for_clients(self.max_selected(), self.clip, self.max_examples)?)
    }

    /// Checks the configuration when the task is created: sizes, rates, and the bit budget (a
    /// configuration that could wrap around is refused with an error that says by how much).
    pub fn validate(&self) -> Result<()> {
        let bad = |rule: ConfigRule| Err(Error::InvalidConfig(rule));
        if self.clients_per_round == 0 {
            return bad(ConfigRule::NoClients);
        }
        if self.min_clients == 0 || self.min_clients > self.max_selected() {
            return bad(ConfigRule::MinClients {
                min_clients: self.min_clients,
                max_selected: self.max_selected(),
            });
        }
        if !(self.over_selection.is_finite() && self.over_selection >= 1.0) {
            return bad(ConfigRule::OverSelection(self.over_selection));
        }
        if self.dropout_ppm >= 1_000_000 || self.corrupt_ppm >= 1_000_000 {
            return bad(ConfigRule::Fractions {
                dropout_ppm: self.dropout_ppm,
                corrupt_ppm: self.corrupt_ppm,
            });
        }
        if !(self.server_learning_rate.is_finite() && self.server_learning_rate > 0.0) {
            return bad(ConfigRule::ServerLearningRate(self.server_learning_rate));
        }
        if self.upload_chunk_words == 0 || self.max_uploads_in_flight == 0 {
            return bad(ConfigRule::UploadLimits);
        }
        let phases = self.deadlines.phases();
        if self.deadlines.selection.is_zero()
            || phases.iter().any(Duration::is_zero)
            || self.upload_idle.is_zero()
        {
            return bad(ConfigRule::Deadline);
        }
        self.quant()?;
        // The smallest round the task may run must admit graph parameters: then every
        // selection, which takes the largest size with parameters between min_clients and the
        // clients waiting (`plannable_size`), finds one, and no selection stalls.
        self.params_for(self.min_clients).map_err(|source| {
            Error::InvalidConfig(ConfigRule::NoSecureParameters {
                min_clients: self.min_clients,
                source,
                nearest: self.nearest_plannable(),
            })
        })?;
        Ok(())
    }

    /// The graph parameters of a round of `n` selected clients under this task's δ, γ, graph
    /// and adversary class.
    pub fn params_for(&self, n: usize) -> fedsec_crypto::Result<GraphParams> {
        fedsec_crypto::params::choose(
            self.graph,
            n,
            self.dropout_ppm,
            self.corrupt_ppm,
            self.adversary,
        )
    }

    /// The size selection takes when `waiting` eligible clients wait: the largest n with
    /// `min_clients ≤ n ≤ min(waiting, max_selected)` for which the parameter finder has
    /// parameters, with them. The finder has none for some sizes (a Harary graph over an even
    /// n with few neighbours, e.g. n = 4, 6, 8, 10 and 20 at γ = 0.05, δ = 0.4,
    /// semi-malicious), so selection steps down past them instead of waiting for ever. `None`
    /// below `min_clients` (a validated configuration has parameters at `min_clients`, so never
    /// otherwise). Tries at most `min(waiting, max_selected) − min_clients + 1` sizes.
    pub fn plannable_size(&self, waiting: usize) -> Option<(usize, GraphParams)> {
        let most = waiting.min(self.max_selected());
        (self.min_clients.max(1)..=most)
            .rev()
            .find_map(|n| self.params_for(n).ok().map(|params| (n, params)))
    }

    /// For a `min_clients` without parameters: the nearest sizes within the task's range that
    /// have them (below and above), to say what would work. Tries at most 64 sizes each way.
    fn nearest_plannable(&self) -> (Option<u32>, Option<u32>) {
        const LOOK: usize = 64;
        let lo = self.min_clients.saturating_sub(LOOK).max(2);
        let hi = self.max_selected().min(self.min_clients.saturating_add(LOOK));
        let below = (lo..self.min_clients).rev().find(|&n| self.params_for(n).is_ok());
        let above = (self.min_clients + 1..=hi).find(|&n| self.params_for(n).is_ok());
        let size = |n: Option<usize>| n.and_then(|n| u32::try_from(n).ok());
        (size(below), size(above))
    }
}
