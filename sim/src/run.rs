//! What a secure run produced, whatever the transport: every attempt of every round, and the
//! model after each completed round.

use fedsec_wire::model::Model;

/// One attempt of a round, as the coordinator recorded it, with what the clients saw.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// The round.
    pub round_id: u64,
    /// True if its sum was computed and a checkpoint stored.
    pub completed: bool,
    /// Why it aborted, when it did.
    pub abort_reason: Option<String>,
    /// |U|, |U1|, |U2|, the senders of complaints outside E, |U3|, |U4|, revealed — as far as
    /// the attempt got.
    pub set_sizes: Vec<usize>,
    /// Seconds each phase stayed open.
    pub phase_seconds: Vec<f64>,
    /// Masked-input bytes the coordinator received.
    pub upload_bytes: u64,
    /// The clients (by index) whose inputs are in the sum: U3, when the attempt completed.
    pub participants: Vec<usize>,
    /// Selected clients that dropped out as the schedule said (over gRPC, where the attempt a
    /// dropout hit is not known, all of a round's are counted on its completed attempt).
    pub scheduled_drops: usize,
    /// Bytes each client that saw the result sent.
    pub bytes_sent: Vec<u64>,
    /// Bytes each client that saw the result received.
    pub bytes_received: Vec<u64>,
    /// Mean local training loss of those clients.
    pub train_loss: Option<f64>,
    /// Wall-clock seconds the attempt took to compute, where the clock is virtual (the
    /// in-memory transport); over gRPC the phase times are real and this is `None`.
    pub compute_s: Option<f64>,
}

impl AttemptRecord {
    /// |U|.
    pub fn selected(&self) -> usize {
        self.set_sizes.first().copied().unwrap_or(0)
    }

    /// Selected clients that did not see the round through (|U| minus those that revealed).
    pub fn dropped(&self) -> usize {
        let last = if self.completed { self.set_sizes.last().copied() } else { None };
        self.selected().saturating_sub(last.unwrap_or(0))
    }
}

/// A whole secure run.
#[derive(Debug, Clone, PartialEq)]
pub struct SecureRun {
    /// Every attempt, in order.
    pub attempts: Vec<AttemptRecord>,
    /// The global model after each completed round, in order.
    pub models: Vec<Model>,
    /// Wall-clock seconds of the run.
    pub wall_s: f64,
}

impl SecureRun {
    /// The completed attempts, one per round, in order.
    pub fn completed(&self) -> impl Iterator<Item = &AttemptRecord> {
        self.attempts.iter().filter(|a| a.completed)
    }
}
