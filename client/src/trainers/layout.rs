//! The layout a trainer trains (tensor names and shapes), checked against the global model.

use fedsec_wire::model::{Model, Tensor};

use crate::trainer::TrainError;

/// Tensor names and shapes, kept in name order: the order [`Model::flatten`] uses, so a
/// flat parameter vector of this layout is the global model's flattening.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    tensors: Vec<(&'static str, Vec<usize>)>,
}

impl Layout {
    /// A layout of the given tensors, in any order.
    pub(crate) fn new(mut tensors: Vec<(&'static str, Vec<usize>)>) -> Layout {
        tensors.sort_by_key(|&(name, _)| name);
        Layout { tensors }
    }

    /// Number of parameters.
    pub(crate) fn len(&self) -> usize {
        self.tensors.iter().map(|(_, shape)| shape.iter().product::<usize>()).sum()
    }

    /// Errors unless `model` has exactly these tensors, of these shapes.
    pub(crate) fn check(&self, model: &Model) -> Result<(), TrainError> {
        for (name, expected) in &self.tensors {
            match model.get(name) {
                None => {
                    return Err(TrainError::MissingTensor {
                        name: (*name).to_owned(),
                        expected: expected.clone(),
                    });
                }
                Some(t) if t.shape != *expected => {
                    return Err(TrainError::TensorShapeMismatch {
                        name: (*name).to_owned(),
                        expected: expected.clone(),
                        got: t.shape.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        if let Some((name, _)) =
            model.tensors().find(|(name, _)| !self.tensors.iter().any(|(n, _)| n == name))
        {
            return Err(TrainError::UnexpectedTensor { name: name.to_owned() });
        }
        Ok(())
    }

    /// The model of this layout holding `flat` (in name order).
    ///
    /// # Panics
    /// If `flat` does not hold [`len`](Self::len) values.
    pub(crate) fn model(&self, flat: &[f32]) -> Model {
        assert_eq!(flat.len(), self.len(), "a flat vector of this layout holds len() values");
        let mut model = Model::new();
        let mut rest = flat;
        for (name, shape) in &self.tensors {
            let (head, tail) = rest.split_at(shape.iter().product());
            model.insert(*name, Tensor { shape: shape.clone(), values: head.to_vec() });
            rest = tail;
        }
        model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_round_trips_and_check_names_the_broken_tensor() {
        let layout = Layout::new(vec![("b.weight", vec![2, 3]), ("a.bias", vec![2])]);
        let flat: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let model = layout.model(&flat);
        assert_eq!(model.flatten(), flat);
        assert_eq!(model.get("a.bias").map(|t| t.values.clone()), Some(vec![0.0, 1.0]));
        layout.check(&model).unwrap();

        let wrong_shape = Layout::new(vec![("b.weight", vec![3, 2]), ("a.bias", vec![2])]);
        match wrong_shape.check(&model) {
            Err(TrainError::TensorShapeMismatch { name, expected, got }) => {
                assert_eq!((name.as_str(), expected, got), ("b.weight", vec![3, 2], vec![2, 3]));
            }
            other => panic!("expected a shape mismatch, got {other:?}"),
        }
        let missing = Layout::new(vec![("b.weight", vec![2, 3]), ("c", vec![1])]);
        assert!(
            matches!(missing.check(&model), Err(TrainError::MissingTensor { name, .. }) if name == "c")
        );
        let fewer = Layout::new(vec![("b.weight", vec![2, 3])]);
        assert!(
            matches!(fewer.check(&model), Err(TrainError::UnexpectedTensor { name }) if name == "a.bias")
        );
    }
}
