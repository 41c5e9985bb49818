//! Models: named f32 tensors, stored as safetensors, flattened for aggregation.
//!
//! A model is a set of named tensors kept in name order, so that every party flattens it into
//! the same vector: the masked input is the concatenation of the tensors' values in that order,
//! followed by the weight coordinate (see [`fedsec_crypto::quant`]). The bytes are the
//! [safetensors](https://huggingface.co/docs/safetensors) format, so Python users load a
//! checkpoint with one line (`safetensors.numpy.load_file`).

use std::collections::BTreeMap;

use fedsec_crypto::WeightsHash;
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorView};

/// The domain label that starts the encoding [`Model::weights_hash`] hashes.
pub const WEIGHTS_LABEL: &[u8] = b"fedsec/v1/weights";

/// What is wrong with a model, a tensor, or a model file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A tensor's values are not as many as its shape holds.
    #[error("shape {shape:?} holds {holds} values, got {got}")]
    ShapeMismatch {
        /// The shape.
        shape: Vec<usize>,
        /// How many values it holds.
        holds: usize,
        /// How many were given.
        got: usize,
    },
    /// A shape's element count overflows `usize`.
    #[error("shape {shape:?} has more elements than fit in memory")]
    TooLarge {
        /// The shape.
        shape: Vec<usize>,
    },
    /// A flat vector does not have the layout's parameter count.
    #[error("the layout has {layout} parameters, the vector {got}")]
    LayoutMismatch {
        /// The layout's parameters.
        layout: usize,
        /// The vector's length.
        got: usize,
    },
    /// The bytes are not a safetensors file (the parser's reason).
    #[error("not a safetensors file: {0}")]
    NotSafetensors(String),
    /// A tensor could not be laid out as safetensors (the writer's reason).
    #[error("cannot serialize tensor {tensor}: {reason}")]
    SerializeTensor {
        /// The tensor.
        tensor: String,
        /// The writer's reason.
        reason: String,
    },
    /// The safetensors file could not be written (the writer's reason).
    #[error("cannot serialize the model: {0}")]
    Serialize(String),
    /// A tensor of the file is not f32.
    #[error("tensor {tensor} has dtype {dtype}; models are f32")]
    NotF32 {
        /// The tensor.
        tensor: String,
        /// Its dtype, as safetensors names it.
        dtype: String,
    },
    /// A value of the file is NaN or infinite.
    #[error("tensor {tensor}[{index}] is {value}: models hold finite values")]
    NotFinite {
        /// The tensor.
        tensor: String,
        /// The value's index, row-major.
        index: usize,
        /// The value.
        value: f32,
    },
}

/// Result alias.
pub type Result<T, E = ModelError> = core::result::Result<T, E>;

/// One named tensor: its shape and its values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub values: Vec<f32>,
}

impl Tensor {
    /// A tensor of `shape` holding `values`; errors if the counts differ.
    pub fn new(shape: Vec<usize>, values: Vec<f32>) -> Result<Self> {
        let holds = element_count(&shape)?;
        if holds != values.len() {
            return Err(ModelError::ShapeMismatch { shape, holds, got: values.len() });
        }
        Ok(Tensor { shape, values })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Result<Self> {
        let n = element_count(&shape)?;
        Ok(Tensor { shape, values: vec![0.0; n] })
    }
}

fn element_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| ModelError::TooLarge { shape: shape.to_vec() })
}

/// A model: named f32 tensors, in name order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Model {
    tensors: BTreeMap<String, Tensor>,
}

impl Model {
    /// SHA-256 of the weights' values in a canonical encoding: the label `fedsec/v1/weights`,
    /// then every value in [`flatten`](Self::flatten) order (tensors by name, row-major) as its
    /// little-endian f32 bit pattern, `-0.0` written as `0.0`, the whole length-prefixed.
    /// Independent of the file (header order, metadata, version) and of the layout (names,
    /// shapes, empty tensors): what a trainer sees of the values. The contribution ledger keys
    /// on it, so a checkpoint minted again with the same weights is recognised. Weights that
    /// differ in any other bit differ.
    pub fn weights_hash(&self) -> WeightsHash {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update((WEIGHTS_LABEL.len() as u64).to_be_bytes());
        h.update(WEIGHTS_LABEL);
        let count: usize = self.tensors.values().map(|t| t.values.len()).sum();
        h.update(((count * 4) as u64).to_be_bytes());
        // Streamed: a large model is never copied whole.
        let mut buf = Vec::with_capacity(4 * 4096);
        for t in self.tensors.values() {
            for chunk in t.values.chunks(4096) {
                buf.clear();
                // `v + 0.0` turns -0.0 into 0.0 and leaves every other finite value as it is.
                buf.extend(chunk.iter().flat_map(|v| (v + 0.0).to_bits().to_le_bytes()));
                h.update(&buf);
            }
        }
        WeightsHash(h.finalize().into())
    }

    /// An empty model.
    pub fn new() -> Self {
        Model::default()
    }

    /// Adds (or replaces) a tensor; builder style.
    pub fn with(mut self, name: impl Into<String>, tensor: Tensor) -> Self {
        self.tensors.insert(name.into(), tensor);
        self
    }

    /// Adds (or replaces) a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// The tensors, in name order (the flattening order).
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Total number of parameters.
    pub fn len(&self) -> usize {
        self.tensors.values().map(|t| t.values.len()).sum()
    }

    /// True if the model has no parameters.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All values, tensor after tensor in name order.
    pub fn flatten(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len());
        for t in self.tensors.values() {
            out.extend_from_slice(&t.values);
        }
        out
    }

    /// A model of the same layout holding `flat` (as produced by [`flatten`](Self::flatten)).
    pub fn with_flat(&self, flat: &[f32]) -> Result<Model> {
        if flat.len() != self.len() {
            return Err(ModelError::LayoutMismatch { layout: self.len(), got: flat.len() });
        }
        let mut rest = flat;
        let mut tensors = BTreeMap::new();
        for (name, t) in &self.tensors {
            let (head, tail) = rest.split_at(t.values.len());
            tensors.insert(name.clone(), Tensor { shape: t.shape.clone(), values: head.to_vec() });
            rest = tail;
        }
        Ok(Model { tensors })
    }

    /// True if `other` has the same tensor names and shapes.
    pub fn same_layout(&self, other: &Model) -> bool {
        self.tensors.len() == other.tensors.len()
            && self
                .tensors
                .iter()
                .zip(&other.tensors)
                .all(|((a, ta), (b, tb))| a == b && ta.shape == tb.shape)
    }

    /// The safetensors bytes (little-endian f32, tensors in name order). Deterministic: the
    /// same model always gives the same bytes, so its SHA-256 identifies it.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let bytes: Vec<(&String, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, t)| (name, t.values.iter().flat_map(|v| v.to_le_bytes()).collect()))
            .collect();
        let views = bytes
            .iter()
            .zip(self.tensors.values())
            .map(|((name, data), t)| {
                TensorView::new(Dtype::F32, t.shape.clone(), data)
                    .map(|v| (name.as_str(), v))
                    .map_err(|e| ModelError::SerializeTensor {
                        tensor: name.to_string(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, None).map_err(|e| ModelError::Serialize(e.to_string()))
    }

    /// Parses safetensors bytes. Only f32 tensors are accepted; values must be finite.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Model> {
        check_declared_data(bytes)?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::NotSafetensors(e.to_string()))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(ModelError::NotF32 {
                    tensor: name,
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(ModelError::NotFinite { tensor: name, index: i, value: values[i] });
            }
            tensors.insert(name, Tensor::new(view.shape().to_vec(), values)?);
        }
        Ok(Model { tensors })
    }
}

/// The largest header safetensors reads, in bytes (its own limit).
const MAX_HEADER_BYTES: usize = 100_000_000;

/// Refuses a file whose header declares data ending past `usize::MAX` once the header is
/// counted, before safetensors parses it: safetensors 0.8 adds the end of the declared data to
/// the header's length unchecked, which overflows for such a header (a panic where overflow is
/// checked, as in debug builds). Whatever else is wrong with a file is the parser's to say.
fn check_declared_data(bytes: &[u8]) -> Result<()> {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else { return Ok(()) };
    let Some(header) = usize::try_from(u64::from_le_bytes(*len))
        .ok()
        .filter(|&n| n <= MAX_HEADER_BYTES)
        .and_then(|n| rest.get(..n))
    else {
        return Ok(());
    };
    let Ok(metadata) = serde_json::from_slice::<Metadata>(header) else { return Ok(()) };
    let declared = metadata.data_len();
    if declared.checked_add(8 + header.len()).is_none() {
        return Err(ModelError::NotSafetensors(format!(
            "its header declares {declared} bytes of data, more than fit in memory"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Model {
        Model::new()
            .with("w", Tensor::new(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-3, -7.25]).unwrap())
            .with("b", Tensor::new(vec![3], vec![0.5, 0.25, -0.125]).unwrap())
    }

    #[test]
    fn the_weights_hash_is_the_weights_not_the_file() {
        let m = sample();
        let h = m.weights_hash();
        // The same weights in a file with metadata (another checkpoint hash): the same hash.
        let plain = m.to_safetensors().unwrap();
        let b = m.get("b").unwrap();
        let w = m.get("w").unwrap();
        let (b_bytes, w_bytes): (Vec<u8>, Vec<u8>) = (
            b.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            w.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
        let meta = std::collections::HashMap::from([("minted".to_string(), "again".to_string())]);
        let other = safetensors::serialize(
            vec![
                ("w", TensorView::new(Dtype::F32, w.shape.clone(), &w_bytes).unwrap()),
                ("b", TensorView::new(Dtype::F32, b.shape.clone(), &b_bytes).unwrap()),
            ],
            Some(meta),
        )
        .unwrap();
        assert_ne!(plain, other, "another file");
        assert_eq!(Model::from_safetensors(&other).unwrap().weights_hash(), h);
        // Any bit of any value: other weights.
        let mut flipped = m.clone();
        let mut t = flipped.get("w").unwrap().clone();
        t.values[4] = f32::from_bits(t.values[4].to_bits() ^ 1);
        flipped.insert("w", t);
        assert_ne!(flipped.weights_hash(), h);
        // The layout is not the weights: another shape, an empty tensor added, a name that
        // keeps the order, or -0.0 for 0.0 — the same values for a trainer, the same hash.
        let reshaped = Model::new()
            .with("w", Tensor::new(vec![3, 2], w.values.clone()).unwrap())
            .with("b", b.clone());
        assert_eq!(reshaped.weights_hash(), h);
        let padded = m.clone().with("c", Tensor::zeros(vec![0]).unwrap());
        assert_eq!(padded.weights_hash(), h);
        let renamed = Model::new().with("w2", w.clone()).with("b", b.clone());
        assert_eq!(renamed.weights_hash(), h);
        let mut negated = m.clone();
        let mut t = w.clone();
        t.values[3] = -0.0;
        negated.insert("w", t);
        assert_eq!(negated.weights_hash(), h);
        // A name that changes the order of the values changes them.
        let reordered = Model::new().with("a", w.clone()).with("b", b.clone());
        assert_ne!(reordered.weights_hash(), h);
        // Values move between tensors without the total changing: other weights too.
        let moved = Model::new()
            .with("w", Tensor::new(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-3, 0.5]).unwrap())
            .with("b", Tensor::new(vec![3], vec![-7.25, 0.25, -0.125]).unwrap());
        assert_ne!(moved.weights_hash(), h);
    }

    #[test]
    fn flattens_in_name_order_and_back() {
        let m = sample();
        assert_eq!(m.len(), 9);
        assert_eq!(m.flatten(), vec![0.5, 0.25, -0.125, 1.0, -2.0, 3.5, 0.0, 1e-3, -7.25]);
        let back = m.with_flat(&m.flatten()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.with_flat(&[0.0; 8]), Err(ModelError::LayoutMismatch { layout: 9, got: 8 }));
    }

    #[test]
    fn safetensors_round_trip_is_exact_and_deterministic() {
        let m = sample();
        let bytes = m.to_safetensors().unwrap();
        assert_eq!(bytes, m.to_safetensors().unwrap());
        let back = Model::from_safetensors(&bytes).unwrap();
        assert_eq!(back, m);
        assert!(back.same_layout(&m));
    }

    #[test]
    fn refuses_bad_files() {
        assert!(matches!(
            Model::from_safetensors(b"not a model"),
            Err(ModelError::NotSafetensors(_))
        ));
        let mut bytes = sample().to_safetensors().unwrap();
        bytes.truncate(bytes.len() - 1);
        assert!(matches!(Model::from_safetensors(&bytes), Err(ModelError::NotSafetensors(_))));
        let inf = Model::new().with("x", Tensor::new(vec![2], vec![0.0, f32::INFINITY]).unwrap());
        assert_eq!(
            Model::from_safetensors(&inf.to_safetensors().unwrap()),
            Err(ModelError::NotFinite { tensor: "x".into(), index: 1, value: f32::INFINITY })
        );
        assert_eq!(
            Tensor::new(vec![2, 2], vec![0.0; 3]),
            Err(ModelError::ShapeMismatch { shape: vec![2, 2], holds: 4, got: 3 })
        );
        assert!(matches!(Tensor::zeros(vec![usize::MAX, 2]), Err(ModelError::TooLarge { .. })));
    }
}
