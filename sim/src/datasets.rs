//! The datasets shipped in `sim/data/` (see its README for sources and licences), each with a
//! fixed training and test split.

use std::path::{Path, PathBuf};

use fedsec_client::data::{DataError, Dataset};

/// A dataset shipped with the simulation harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shipped {
    /// UCI Optical Recognition of Handwritten Digits, 8×8: 1,797 images, 64 features, 10
    /// classes.
    Digits,
    /// UCI Breast Cancer Wisconsin (Diagnostic): 569 patients, 30 features, 2 classes
    /// (0 = malignant, 1 = benign) — a cross-silo (hospital) example.
    BreastCancer,
}

impl Shipped {
    /// Every shipped dataset.
    pub const ALL: [Shipped; 2] = [Shipped::Digits, Shipped::BreastCancer];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Shipped::Digits => "digits",
            Shipped::BreastCancer => "breast_cancer",
        }
    }

    /// The dataset called `name`, if one is shipped.
    pub fn from_name(name: &str) -> Option<Shipped> {
        Shipped::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Its folder in the repository.
    pub fn dir(self) -> PathBuf {
        data_dir().join(self.name())
    }

    /// The number of classes.
    pub fn classes(self) -> usize {
        match self {
            Shipped::Digits => 10,
            Shipped::BreastCancer => 2,
        }
    }

    /// The fixed (training, test) split.
    pub fn load(self) -> Result<(Dataset, Dataset), DataError> {
        let dir = self.dir();
        Ok((
            Dataset::from_csv(&dir.join("train.csv"), "label")?,
            Dataset::from_csv(&dir.join("test.csv"), "label")?,
        ))
    }
}

/// A synthetic classification set, generated from `seed`: `classes` Gaussian clusters in
/// `features` dimensions (centres drawn from N(0, 1), unit noise), `rows` training and
/// `rows / 4` test examples — for runs with more clients than a shipped dataset has examples.
pub fn synthetic(rows: usize, features: usize, classes: usize, seed: u64) -> (Dataset, Dataset) {
    use rand::{RngExt, SeedableRng};
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed ^ 0x5717_7e71c);
    let centres: Vec<Vec<f32>> = (0..classes)
        .map(|_| (0..features).map(|_| StandardNormal.sample(&mut rng)).collect())
        .collect();
    let mut make = |n: usize| {
        let mut values = Vec::with_capacity(n * features);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let class = rng.random_range(0..classes);
            labels.push(class as u32);
            for centre in &centres[class] {
                let noise: f32 = StandardNormal.sample(&mut rng);
                values.push(centre + noise);
            }
        }
        let names = (0..features).map(|f| format!("x{f}")).collect();
        let array =
            ndarray::Array2::from_shape_vec((n, features), values).expect("rows × features values");
        Dataset::new(array, labels, names).expect("one label per row, one name per column")
    };
    let train = make(rows);
    let test = make((rows / 4).max(classes));
    (train, test)
}

/// `sim/data/` of this source tree.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_splits_have_the_documented_sizes() {
        let expect = [(Shipped::Digits, 1438, 359, 64), (Shipped::BreastCancer, 456, 113, 30)];
        for (d, train_rows, test_rows, features) in expect {
            let (train, test) = d.load().unwrap();
            assert_eq!((train.len(), test.len()), (train_rows, test_rows), "{}", d.name());
            assert_eq!(train.feature_count(), features);
            assert_eq!(test.feature_count(), features);
            assert_eq!(train.classes(), d.classes());
            assert_eq!(test.classes(), d.classes(), "the test split holds every class");
            assert_eq!(Shipped::from_name(d.name()), Some(d));
        }
        assert!(data_dir().join("LICENSE-scikit-learn").exists());
    }

    #[test]
    fn synthetic_data_is_seeded_and_separable() {
        let (a, t) = synthetic(400, 8, 4, 3);
        let (b, _) = synthetic(400, 8, 4, 3);
        assert_eq!((a.len(), t.len(), a.feature_count(), a.classes()), (400, 100, 8, 4));
        assert_eq!(a.features, b.features);
        assert_ne!(a.features, synthetic(400, 8, 4, 4).0.features);
    }

    #[test]
    fn the_splits_are_stratified() {
        for d in Shipped::ALL {
            let (train, test) = d.load().unwrap();
            for class in 0..d.classes() as u32 {
                let a = train.labels.iter().filter(|&&l| l == class).count() as f64;
                let b = test.labels.iter().filter(|&&l| l == class).count() as f64;
                let share = b / (a + b);
                assert!((share - 0.2).abs() < 0.02, "{} class {class}: {share}", d.name());
            }
        }
    }
}

#[cfg(test)]
mod centralized {
    use fedsec_client::Trainer;
    use fedsec_client::data::Standardizer;
    use fedsec_client::trainers::{SoftmaxRegression, TrainOptions};

    use super::*;

    /// Softmax regression with all the training data in one place: the reference the
    /// federated runs are compared with.
    fn centralized_accuracy(d: Shipped, epochs: usize) -> f64 {
        let (mut train, mut test) = d.load().unwrap();
        let scale = Standardizer::fit(&train);
        scale.apply(&mut train).unwrap();
        scale.apply(&mut test).unwrap();
        let features = train.feature_count();
        let options =
            TrainOptions { epochs, learning_rate: 0.1, seed: 1, ..TrainOptions::default() };
        let mut trainer = SoftmaxRegression::new(train, Some(test), d.classes(), options).unwrap();
        let mut model = SoftmaxRegression::initial_model(features, d.classes());
        let fit = trainer.fit(&model).unwrap();
        let next: Vec<f32> = model.flatten().iter().zip(&fit.update).map(|(t, u)| t + u).collect();
        model = model.with_flat(&next).unwrap();
        trainer.evaluate(&model).unwrap().unwrap().accuracy
    }

    #[test]
    fn centralized_softmax_reaches_the_accuracy_federated_runs_aim_for() {
        let digits = centralized_accuracy(Shipped::Digits, 20);
        let cancer = centralized_accuracy(Shipped::BreastCancer, 20);
        eprintln!(
            "centralized softmax test accuracy: digits {digits:.4}, breast cancer {cancer:.4}"
        );
        assert!(digits >= 0.92, "digits: {digits}");
        assert!(cancer >= 0.92, "breast cancer: {cancer}");
    }
}
