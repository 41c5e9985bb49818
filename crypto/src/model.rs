//! Models: named f32 tensors, stored as safetensors, flattened for aggregation.
//!
//! A model is a set of named tensors kept in name order, so that every party flattens it into
//! the same vector: the masked input is the concatenation of the tensors' values in that order,
//! followed by the weight coordinate (see [`crate::quant`]). The bytes are the
//! [safetensors](https://huggingface.co/docs/safetensors) format, so Python users load a
//! checkpoint with one line (`safetensors.numpy.load_file`).

use std::collections::BTreeMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};

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
        let want = element_count(&shape)?;
        if want != values.len() {
            return Err(Error::InvalidModel(format!(
                "shape {shape:?} holds {want} values, got {}",
                values.len()
            )));
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
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
        Error::InvalidModel(format!("shape {shape:?} has more elements than fit in memory"))
    })
}

/// A model: named f32 tensors, in name order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Model {
    tensors: BTreeMap<String, Tensor>,
}

impl Model {
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
            return Err(Error::InvalidModel(format!(
                "the layout has {} parameters, the vector {}",
                self.len(),
                flat.len()
            )));
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
                    .map_err(|e| Error::InvalidModel(format!("tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, None)
            .map_err(|e| Error::InvalidModel(format!("cannot serialize: {e}")))
    }

    /// Parses safetensors bytes. Only f32 tensors are accepted; values must be finite.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Model> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::InvalidModel(format!("not a safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(Error::InvalidModel(format!(
                    "tensor {name} has dtype {:?}; models are f32",
                    view.dtype()
                )));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(Error::InvalidModel(format!(
                    "tensor {name}[{i}] is {}: models hold finite values",
                    values[i]
                )));
            }
            tensors.insert(name, Tensor::new(view.shape().to_vec(), values)?);
        }
        Ok(Model { tensors })
    }
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
    fn flattens_in_name_order_and_back() {
        let m = sample();
        assert_eq!(m.len(), 9);
        assert_eq!(m.flatten(), vec![0.5, 0.25, -0.125, 1.0, -2.0, 3.5, 0.0, 1e-3, -7.25]);
        let back = m.with_flat(&m.flatten()).unwrap();
        assert_eq!(back, m);
        assert!(m.with_flat(&[0.0; 8]).is_err());
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
        assert!(matches!(Model::from_safetensors(b"not a model"), Err(Error::InvalidModel(_))));
        let mut bytes = sample().to_safetensors().unwrap();
        bytes.truncate(bytes.len() - 1);
        assert!(Model::from_safetensors(&bytes).is_err());
        let nan = Model::new().with("x", Tensor::new(vec![1], vec![f32::NAN]).unwrap());
        let err = Model::from_safetensors(&nan.to_safetensors().unwrap()).unwrap_err();
        assert!(err.to_string().contains("x[0]"), "{err}");
        assert!(Tensor::new(vec![2, 2], vec![0.0; 3]).is_err());
    }
}
