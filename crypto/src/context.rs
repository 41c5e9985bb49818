//! The round plan and its hash, the round context `ctx`.
//!
//! The plan fixes everything a client must agree on before it sends anything. Every signature
//! and every KDF input of the round includes `ctx = SHA-256(label ‖ plan fields)` (all fields
//! length-prefixed), so nothing can be replayed across rounds, attempts or tasks.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, PlanRule, Result};
pub use crate::ids::RoundContext;
use crate::ids::{AttemptNonce, CheckpointHash, ClientId, RoundId, TaskId};
use crate::kdf::{Label, push_lp};
use crate::quant::QuantParams;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;

/// One million: probabilities in the plan are integer parts per million.
pub const PPM: u32 = 1_000_000;

/// Which graph the pairwise masks and share holders follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GraphKind {
    /// SecAgg (Bonawitz et al. 2017): every client is every other's neighbour.
    Complete,
    /// SecAgg+ (Bell et al. 2020): the Harary graph H(k, n) over a permutation of U.
    Harary,
}

/// The adversary the round's parameters are chosen against, weakest first.
///
/// `Curious` is honest-but-curious only: it does not enforce q > (n + n_C)/2, so a server that
/// deviates from the protocol could equivocate on U3. A client's floor fixes the least class it
/// accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AdversaryClass {
    /// Honest-but-curious server.
    Curious,
    /// Semi-malicious server (Bell et al.): may deviate, but does not grind the graph seed.
    SemiMalicious,
    /// Fully malicious server: complete graph only.
    Malicious,
}

impl AdversaryClass {
    /// Stable code for hashing.
    pub fn code(self) -> u8 {
        match self {
            AdversaryClass::Curious => 0,
            AdversaryClass::SemiMalicious => 1,
            AdversaryClass::Malicious => 2,
        }
    }
}

/// [`RoundPlan::check_cert_time`] on a plan's T before the rest of the plan is read.
pub fn check_cert_time(cert_time: u64, now: u64, max_skew: u64) -> Result<()> {
    if cert_time.abs_diff(now) > max_skew {
        return Err(Error::CertTimeSkew { cert_time, now, max_skew });
    }
    Ok(())
}

/// Everything the server fixes for one attempt of one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundPlan {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub version: u32,
    /// The training task.
    pub task_id: TaskId,
    /// The round; never reused within the task.
    pub round_id: RoundId,
    /// Fresh per attempt.
    pub attempt: AttemptNonce,
    /// The selected set U, sorted by id, without duplicates.
    pub selected: Vec<ClientId>,
    /// Complete or Harary.
    pub graph: GraphKind,
    /// Number of neighbours k of each client (n − 1 for the complete graph).
    pub degree: u32,
    /// Shamir threshold t.
    pub threshold: u32,
    /// Assumed dropout δ, parts per million.
    pub dropout_ppm: u32,
    /// Assumed corrupt fraction γ, parts per million.
    pub corrupt_ppm: u32,
    /// The adversary class the parameters are chosen against.
    pub adversary: AdversaryClass,
    /// Seed of the Harary graph permutation, committed before any key is advertised.
    pub graph_seed: [u8; 32],
    /// Length of the masked vector in `u32` words (model coordinates + the weight coordinate).
    pub dim: u32,
    /// Quantization parameters.
    pub quant: QuantParams,
    /// SHA-256 of the checkpoint to train on.
    pub checkpoint: CheckpointHash,
    /// The instant T, Unix seconds, at which every party validates every certificate chain of
    /// the attempt (protocol v2): one instant for all, so that no two parties can judge one
    /// chain differently. A client refuses a plan whose T is further from its own clock than
    /// it allows ([`RoundPlan::check_cert_time`]); the server admits only chains valid from T
    /// until the attempt's last deadline.
    pub cert_time: u64,
}

impl RoundPlan {
    /// n = |U|.
    pub fn n(&self) -> usize {
        self.selected.len()
    }

    /// ⌈(1−δ)·n⌉ in integer arithmetic, so that every party computes it alike.
    pub fn min_surviving(&self) -> usize {
        let n = self.n() as u64;
        let keep = u64::from(PPM - self.dropout_ppm.min(PPM));
        (n * keep).div_ceil(u64::from(PPM)) as usize
    }

    /// n_C = ⌊γ·n⌋, the number of corrupt clients assumed.
    pub fn assumed_corrupt(&self) -> usize {
        (self.n() as u64 * u64::from(self.corrupt_ppm) / u64::from(PPM)) as usize
    }

    /// q = max(t, ⌈(1−δ)n⌉): every phase aborts below it.
    pub fn q(&self) -> usize {
        (self.threshold as usize).max(self.min_surviving())
    }

    /// The index of `id` in the canonical order of U.
    pub fn index_of(&self, id: &ClientId) -> Option<usize> {
        self.selected.binary_search(id).ok()
    }

    /// The Shamir x-coordinate of the client at `index`: 1 + its canonical index.
    pub fn x_coordinate(index: usize) -> u32 {
        index as u32 + 1
    }

    /// A client's check of T against its own clock when it receives the plan: `now` (Unix
    /// seconds) at most `max_skew` seconds from T either way. The skew covers the clocks' error
    /// and the plan's delivery delay; a T beyond it would have the client validate its peers'
    /// chains at an instant it did not agree to (one where a revoked or expired certificate
    /// was still valid).
    pub fn check_cert_time(&self, now: u64, max_skew: u64) -> Result<()> {
        check_cert_time(self.cert_time, now, max_skew)
    }

    /// Structural checks every party makes: version, sorted unique U, degree and threshold in
    /// range, probabilities in range, the consistency rule for non-curious classes.
    pub fn validate(&self) -> Result<()> {
        if self.version != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion {
                got: self.version,
                supported: PROTOCOL_VERSION,
            });
        }
        let n = self.n();
        if n < 2 {
            return Err(Error::InvalidPlan(PlanRule::TooFewSelected(n)));
        }
        if self.selected.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidPlan(PlanRule::UnsortedSelection));
        }
        if self.dropout_ppm >= PPM || self.corrupt_ppm >= PPM {
            let (dropout_ppm, corrupt_ppm) = (self.dropout_ppm, self.corrupt_ppm);
            return Err(Error::InvalidPlan(PlanRule::Fractions { dropout_ppm, corrupt_ppm }));
        }
        if self.dim == 0 {
            return Err(Error::InvalidPlan(PlanRule::EmptyVector));
        }
        match self.graph {
            GraphKind::Complete => {
                if self.degree as usize != n - 1 {
                    let degree = self.degree as usize;
                    return Err(Error::InvalidPlan(PlanRule::CompleteDegree { n, degree }));
                }
            }
            GraphKind::Harary => {
                if self.adversary == AdversaryClass::Malicious {
                    return Err(Error::InvalidPlan(PlanRule::MaliciousNeedsComplete));
                }
                if self.degree == 0
                    || !self.degree.is_multiple_of(2)
                    || self.degree as usize > n - 1
                {
                    let degree = self.degree as usize;
                    return Err(Error::InvalidPlan(PlanRule::HararyDegree { n, degree }));
                }
            }
        }
        // Share holders are the k neighbours plus the client itself.
        let holders = self.degree as usize + 1;
        if self.threshold < 1 || self.threshold as usize > holders {
            let threshold = self.threshold as usize;
            return Err(Error::InvalidPlan(PlanRule::Threshold { threshold, holders }));
        }
        if self.adversary != AdversaryClass::Curious {
            let q = self.q();
            let n_c = self.assumed_corrupt();
            if 2 * q <= n + n_c {
                return Err(Error::ConsistencyRuleBroken {
                    q: q as u32,
                    n: n as u32,
                    n_c: n_c as u32,
                });
            }
        }
        self.quant.validate()?;
        // The sum of n quantized inputs must not wrap around Z_2^32.
        self.quant.check_bit_budget(n)?;
        Ok(())
    }

    /// ctx = SHA-256 of the length-prefixed encoding of every field of the plan.
    pub fn context(&self) -> RoundContext {
        let mut enc = Vec::with_capacity(256 + 32 * self.selected.len());
        push_lp(&mut enc, Label::Context.as_bytes());
        push_lp(&mut enc, &self.version.to_be_bytes());
        push_lp(&mut enc, &self.task_id.0);
        push_lp(&mut enc, &self.round_id.0.to_be_bytes());
        push_lp(&mut enc, &self.attempt.0);
        let mut ids = Vec::with_capacity(32 * self.selected.len());
        for id in &self.selected {
            ids.extend_from_slice(&id.0);
        }
        push_lp(&mut enc, &ids);
        push_lp(
            &mut enc,
            &[match self.graph {
                GraphKind::Complete => 0,
                GraphKind::Harary => 1,
            }],
        );
        push_lp(&mut enc, &self.degree.to_be_bytes());
        push_lp(&mut enc, &self.threshold.to_be_bytes());
        push_lp(&mut enc, &self.dropout_ppm.to_be_bytes());
        push_lp(&mut enc, &self.corrupt_ppm.to_be_bytes());
        push_lp(&mut enc, &[self.adversary.code()]);
        push_lp(&mut enc, &self.graph_seed);
        push_lp(&mut enc, &self.dim.to_be_bytes());
        push_lp(&mut enc, &self.quant.encode());
        push_lp(&mut enc, &self.checkpoint.0);
        push_lp(&mut enc, &self.cert_time.to_be_bytes());
        RoundContext(Sha256::digest(&enc).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_binds_its_certificate_instant_and_a_client_checks_it_against_its_clock() {
        const T: u64 = 1_790_000_000;
        assert_eq!(check_cert_time(T, T + 300, 300), Ok(()));
        assert_eq!(check_cert_time(T, T - 300, 300), Ok(()));
        for now in [T + 301, T - 301, 0, u64::MAX] {
            assert_eq!(
                check_cert_time(T, now, 300),
                Err(Error::CertTimeSkew { cert_time: T, now, max_skew: 300 })
            );
        }
        let err = check_cert_time(T, T + 400, 300).unwrap_err().to_string();
        assert!(err.contains("400 s from this client's clock"), "{err}");
    }
}
