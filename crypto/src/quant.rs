//! Quantization: clip, scale, stochastic rounding to two's-complement Z_2^32 and back, and the
//! bit-budget check that refuses a configuration that could wrap around.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Quantization parameters, fixed by the round plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantParams {
    /// Clip bound c: every value is clipped to [−c, c].
    pub clip: f64,
    /// Scale of the model coordinates: a value v becomes round(v · scale).
    pub value_scale: f64,
    /// Scale of the weight coordinate (w ∈ [0, 1]).
    pub weight_scale: f64,
    /// A client's weight is min(examples / max_examples, 1).
    pub max_examples: u64,
}

impl QuantParams {
    /// Stable byte encoding for the round context.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&self.clip.to_bits().to_be_bytes());
        out.extend_from_slice(&self.value_scale.to_bits().to_be_bytes());
        out.extend_from_slice(&self.weight_scale.to_bits().to_be_bytes());
        out.extend_from_slice(&self.max_examples.to_be_bytes());
        out
    }

    /// Range checks on the parameters themselves.
    pub fn validate(&self) -> Result<()> {
        let finite_pos = |x: f64| x.is_finite() && x > 0.0;
        if !finite_pos(self.clip) || !finite_pos(self.value_scale) || !finite_pos(self.weight_scale)
        {
            return Err(Error::InvalidQuantization(
                "clip and scales must be finite and positive".into(),
            ));
        }
        if self.max_examples == 0 {
            return Err(Error::InvalidQuantization("max_examples must be at least 1".into()));
        }
        Ok(())
    }
}
