//! Tabular datasets: numeric features and integer class labels, read from CSV files.
//!
//! A [`Dataset`] is what the ready trainers in [`crate::trainers`] train on. Features are
//! usually brought to a common scale first with a [`Standardizer`]; in a federation every site
//! should apply the *same* standardizer (agreed on beforehand), or the sites' models would live
//! in different coordinates.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

/// Why a dataset could not be read or used. Errors about a file name its path and, where
/// there is one, the line and column (both from 1).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read the file: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not well-formed CSV (for instance, not UTF-8), or reading it failed midway.
    #[error("{path}:{line}: not valid CSV: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The line the problem was found on.
        line: u64,
        /// What the CSV parser said.
        source: csv::Error,
    },
    /// The file has no header row.
    #[error("{path}: the file is empty; a header row naming the columns is required")]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// The file has a header row but no examples.
    #[error("{path}: the file has a header row but no examples")]
    NoRows {
        /// The file.
        path: PathBuf,
    },
    /// The header has no column of the label column's name.
    #[error("{path}:1: there is no label column {label:?}; the columns are {columns:?}")]
    NoLabelColumn {
        /// The file.
        path: PathBuf,
        /// The label column asked for.
        label: String,
        /// The columns the header names.
        columns: Vec<String>,
    },
    /// The header names the label column more than once.
    #[error("{path}:1: the label column {label:?} appears in columns {first} and {second}")]
    DuplicateLabelColumn {
        /// The file.
        path: PathBuf,
        /// The label column.
        label: String,
        /// Its first column number.
        first: usize,
        /// Its second column number.
        second: usize,
    },
    /// A row does not have as many cells as the header.
    #[error("{path}:{line}: the row has {got} cells, the header {expected}")]
    RaggedRow {
        /// The file.
        path: PathBuf,
        /// The row's line.
        line: u64,
        /// Cells in the header.
        expected: usize,
        /// Cells in the row.
        got: usize,
    },
    /// A feature cell does not hold a number.
    #[error("{path}:{line}:{column}: {value:?} in column {name:?} is not a number")]
    NotNumeric {
        /// The file.
        path: PathBuf,
        /// The cell's line.
        line: u64,
        /// The cell's column.
        column: usize,
        /// The column's name.
        name: String,
        /// The cell.
        value: String,
    },
    /// A feature cell holds NaN or an infinity.
    #[error("{path}:{line}:{column}: {value:?} in column {name:?} is not a finite number")]
    NotFinite {
        /// The file.
        path: PathBuf,
        /// The cell's line.
        line: u64,
        /// The cell's column.
        column: usize,
        /// The column's name.
        name: String,
        /// The cell.
        value: String,
    },
    /// A label cell is not an integer class id ≥ 0.
    #[error(
        "{path}:{line}:{column}: label {value:?} in column {name:?} is not a class id (an integer ≥ 0)"
    )]
    LabelNotClassId {
        /// The file.
        path: PathBuf,
        /// The cell's line.
        line: u64,
        /// The cell's column.
        column: usize,
        /// The label column's name.
        name: String,
        /// The cell.
        value: String,
    },
    /// The feature matrix, the labels and the feature names disagree in size.
    #[error(
        "{rows} feature rows, {labels} labels, {columns} feature columns and {names} feature names do not match"
    )]
    SizeMismatch {
        /// Rows of the feature matrix.
        rows: usize,
        /// Number of labels.
        labels: usize,
        /// Columns of the feature matrix.
        columns: usize,
        /// Number of feature names.
        names: usize,
    },
    /// A standardizer was fitted on a different number of features than the dataset has.
    #[error("the standardizer has {standardizer} features, the dataset {dataset}")]
    FeatureCountMismatch {
        /// Features the standardizer knows.
        standardizer: usize,
        /// Features the dataset has.
        dataset: usize,
    },
}

/// Examples for classification: one row of features and one class id per example.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// One row per example, one column per feature.
    pub features: Array2<f32>,
    /// The class id of each example, `0..classes`.
    pub labels: Vec<u32>,
    /// The name of each feature column.
    pub feature_names: Vec<String>,
}

impl Dataset {
    /// A dataset of the given parts; errors unless there is one label per row and one name per
    /// column.
    pub fn new(
        features: Array2<f32>,
        labels: Vec<u32>,
        feature_names: Vec<String>,
    ) -> Result<Dataset, DataError> {
        let dataset = Dataset { features, labels, feature_names };
        dataset.check_sizes()?;
        Ok(dataset)
    }

    /// Errors unless there is one label per row and one name per column (the fields are
    /// public, so a dataset can be put together inconsistently).
    pub fn check_sizes(&self) -> Result<(), DataError> {
        let (rows, columns) = self.features.dim();
        if rows != self.labels.len() || columns != self.feature_names.len() {
            return Err(DataError::SizeMismatch {
                rows,
                labels: self.labels.len(),
                columns,
                names: self.feature_names.len(),
            });
        }
        Ok(())
    }

    /// Reads a CSV file with a header row. The column named `label_column` holds integer class
    /// ids ≥ 0; every other column is a numeric feature. Cells are trimmed of surrounding
    /// white space.
    pub fn from_csv(path: &Path, label_column: &str) -> Result<Dataset, DataError> {
        let file = std::fs::File::open(path)
            .map_err(|source| DataError::Io { path: path.to_owned(), source })?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true) // ragged rows are reported below, with their line and cell counts
            .trim(csv::Trim::All)
            .from_reader(file);
        let csv_error = |source: csv::Error| DataError::Csv {
            path: path.to_owned(),
            line: source.position().map_or(0, |p| p.line()),
            source,
        };
        let header: Vec<String> =
            reader.headers().map_err(csv_error)?.iter().map(String::from).collect();
        if header.is_empty() {
            return Err(DataError::EmptyFile { path: path.to_owned() });
        }
        let label_index = find_label_column(path, &header, label_column)?;
        let feature_names: Vec<String> = header
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != label_index)
            .map(|(_, name)| name.clone())
            .collect();

        let mut values = Vec::new();
        let mut labels = Vec::new();
        for record in reader.records() {
            let record = record.map_err(csv_error)?;
            let line = record.position().map_or(0, |p| p.line());
            if record.len() != header.len() {
                return Err(DataError::RaggedRow {
                    path: path.to_owned(),
                    line,
                    expected: header.len(),
                    got: record.len(),
                });
            }
            for (i, cell) in record.iter().enumerate() {
                if i == label_index {
                    let label = cell.parse::<u32>().map_err(|_| DataError::LabelNotClassId {
                        path: path.to_owned(),
                        line,
                        column: i + 1,
                        name: header[i].clone(),
                        value: cell.to_owned(),
                    })?;
                    labels.push(label);
                    continue;
                }
                let value = cell.parse::<f32>().map_err(|_| DataError::NotNumeric {
                    path: path.to_owned(),
                    line,
                    column: i + 1,
                    name: header[i].clone(),
                    value: cell.to_owned(),
                })?;
                if !value.is_finite() {
                    return Err(DataError::NotFinite {
                        path: path.to_owned(),
                        line,
                        column: i + 1,
                        name: header[i].clone(),
                        value: cell.to_owned(),
                    });
                }
                values.push(value);
            }
        }
        if labels.is_empty() {
            return Err(DataError::NoRows { path: path.to_owned() });
        }
        let features = Array2::from_shape_vec((labels.len(), feature_names.len()), values)
            .map_err(|_| DataError::SizeMismatch {
                rows: labels.len(),
                labels: labels.len(),
                columns: feature_names.len(),
                names: feature_names.len(),
            })?;
        Dataset::new(features, labels, feature_names)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True if there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of feature columns.
    pub fn feature_count(&self) -> usize {
        self.features.ncols()
    }

    /// The number of classes the labels imply: the largest label + 1 (0 if there are no
    /// examples). A federation fixes its class count beforehand, since one site may not see
    /// every class.
    pub fn classes(&self) -> usize {
        self.labels.iter().max().map_or(0, |&m| m as usize + 1)
    }

    /// The examples at `indices`, in that order (repeats allowed).
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        Dataset {
            features: self.features.select(Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            feature_names: self.feature_names.clone(),
        }
    }

    /// Splits into (training, test) sets: a random `test_fraction` of the examples (rounded to
    /// the nearest whole example, clamped to `[0, 1]`) goes to the test set. The same seed
    /// always gives the same split.
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let fraction = if test_fraction.is_nan() { 0.0 } else { test_fraction.clamp(0.0, 1.0) };
        let test_len = (self.len() as f64 * fraction).round() as usize;
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut ChaCha20Rng::seed_from_u64(seed));
        let (test, train) = order.split_at(test_len.min(self.len()));
        (self.select(train), self.select(test))
    }
}

fn find_label_column(path: &Path, header: &[String], label: &str) -> Result<usize, DataError> {
    let mut matches = header.iter().enumerate().filter(|(_, name)| *name == label).map(|(i, _)| i);
    let first = matches.next().ok_or_else(|| DataError::NoLabelColumn {
        path: path.to_owned(),
        label: label.to_owned(),
        columns: header.to_vec(),
    })?;
    if let Some(second) = matches.next() {
        return Err(DataError::DuplicateLabelColumn {
            path: path.to_owned(),
            label: label.to_owned(),
            first: first + 1,
            second: second + 1,
        });
    }
    Ok(first)
}

/// Per-feature scaling to mean 0 and standard deviation 1: `x ↦ (x − mean) / std`.
///
/// Fit it once (on one site's data, or from statistics the federation pooled) and apply the
/// same standardizer everywhere, so that all sites train in the same coordinates.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Standardizer {
    /// The mean of each feature.
    pub mean: Vec<f32>,
    /// The (population) standard deviation of each feature; 1 for a column without variance,
    /// which is then only centred, not scaled.
    pub std: Vec<f32>,
}

impl Standardizer {
    /// The means and standard deviations of `dataset`'s features (computed in f64).
    pub fn fit(dataset: &Dataset) -> Standardizer {
        let n = dataset.len().max(1) as f64;
        let (mut mean, mut std) = (Vec::new(), Vec::new());
        for column in dataset.features.columns() {
            let m = column.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
            let var = column.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / n;
            let s = var.sqrt();
            mean.push(m as f32);
            // A column whose spread is at f32 rounding level holds one value: do not blow its
            // rounding noise up to unit scale.
            std.push(if s > 1e-6 * m.abs().max(1.0) { s as f32 } else { 1.0 });
        }
        Standardizer { mean, std }
    }

    /// Scales `dataset`'s features in place; errors if it has a different number of features.
    pub fn apply(&self, dataset: &mut Dataset) -> Result<(), DataError> {
        if dataset.feature_count() != self.mean.len() || self.std.len() != self.mean.len() {
            return Err(DataError::FeatureCountMismatch {
                standardizer: self.mean.len(),
                dataset: dataset.feature_count(),
            });
        }
        for mut row in dataset.features.rows_mut() {
            for ((x, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x - m) / s;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A temporary CSV file holding `text`.
    fn csv_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    /// The error reading `text` with label column `label`, with its message.
    fn error_of(text: &str, label: &str) -> (DataError, String, tempfile::NamedTempFile) {
        let file = csv_file(text);
        let err = Dataset::from_csv(file.path(), label).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&file.path().display().to_string()), "names the file: {message}");
        (err, message, file)
    }

    #[test]
    fn reads_features_and_labels() {
        let file = csv_file("a, label ,b\n1.5,2,-3\n 0 ,0,4e2\n");
        let data = Dataset::from_csv(file.path(), "label").unwrap();
        assert_eq!(data.feature_names, ["a", "b"]);
        assert_eq!(data.labels, [2, 0]);
        assert_eq!(data.features, ndarray::array![[1.5, -3.0], [0.0, 400.0]]);
        assert_eq!((data.len(), data.classes(), data.feature_count()), (2, 3, 2));
    }

    #[test]
    fn csv_errors_name_file_line_and_column() {
        let (err, msg, _f) = error_of("a,b,y\n1,2,0\n3,x,1\n", "y");
        assert!(matches!(err, DataError::NotNumeric { line: 3, column: 2, .. }), "{err:?}");
        assert!(msg.contains(":3:2:") && msg.contains("\"x\"") && msg.contains("\"b\""), "{msg}");

        let (err, msg, _f) = error_of("a,b,y\n1,2,0\n3,4\n", "y");
        assert!(matches!(err, DataError::RaggedRow { line: 3, expected: 3, got: 2, .. }));
        assert!(msg.contains(":3:"), "{msg}");

        let (err, msg, _f) = error_of("a,b\n1,2\n", "y");
        assert!(matches!(err, DataError::NoLabelColumn { .. }));
        assert!(msg.contains("[\"a\", \"b\"]"), "lists the columns: {msg}");

        for bad in ["1.5", "-1", "cat"] {
            let (err, msg, _f) = error_of(&format!("a,y\n1,0\n2,1\n3,{bad}\n"), "y");
            assert!(matches!(err, DataError::LabelNotClassId { line: 4, column: 2, .. }), "{bad}");
            assert!(msg.contains(":4:2:"), "{msg}");
        }

        let (err, _, _f) = error_of("a,y\nNaN,0\n", "y");
        assert!(matches!(err, DataError::NotFinite { line: 2, column: 1, .. }));
        let (err, _, _f) = error_of("", "y");
        assert!(matches!(err, DataError::EmptyFile { .. }));
        let (err, _, _f) = error_of("a,y\n", "y");
        assert!(matches!(err, DataError::NoRows { .. }));
        let (err, _, _f) = error_of("y,a,y\n0,1,0\n", "y");
        assert!(matches!(err, DataError::DuplicateLabelColumn { first: 1, second: 3, .. }));

        let missing = Path::new("no/such/file.csv");
        let err = Dataset::from_csv(missing, "y").unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert!(err.to_string().contains("no/such/file.csv"));
    }

    fn counting(n: usize) -> Dataset {
        let features = Array2::from_shape_fn((n, 2), |(i, j)| (i * 2 + j) as f32);
        Dataset::new(features, (0..n as u32).collect(), vec!["a".into(), "b".into()]).unwrap()
    }

    #[test]
    fn split_is_a_seeded_partition() {
        let data = counting(50);
        let (train, test) = data.split(0.2, 9);
        assert_eq!((train.len(), test.len()), (40, 10));
        let mut all: Vec<u32> = train.labels.iter().chain(&test.labels).copied().collect();
        all.sort();
        assert_eq!(all, data.labels, "every example lands in exactly one set");
        // Rows travel with their labels.
        assert_eq!(test.features[[0, 0]], test.labels[0] as f32 * 2.0);
        assert_eq!(data.split(0.2, 9), (train.clone(), test.clone()));
        assert_ne!(data.split(0.2, 10).1, test);
        assert_eq!(data.split(2.0, 1).1.len(), 50);
    }

    #[test]
    fn select_and_new_check_sizes() {
        let data = counting(5);
        let picked = data.select(&[4, 0, 4]);
        assert_eq!(picked.labels, [4, 0, 4]);
        assert_eq!(picked.features.row(0).to_vec(), [8.0, 9.0]);
        let err = Dataset::new(Array2::zeros((2, 2)), vec![0], vec!["a".into(), "b".into()]);
        assert!(matches!(err, Err(DataError::SizeMismatch { rows: 2, labels: 1, .. })));
    }

    #[test]
    fn standardizer_gives_mean_zero_and_unit_std() {
        let features = Array2::from_shape_fn((40, 3), |(i, j)| match j {
            0 => i as f32 * 3.0 + 100.0,
            1 => ((i * 7) % 5) as f32 - 0.5,
            _ => 42.0, // no variance
        });
        let mut data =
            Dataset::new(features, vec![0; 40], vec!["a".into(), "b".into(), "c".into()]).unwrap();
        let scaling = Standardizer::fit(&data);
        assert_eq!(scaling.std[2], 1.0);
        scaling.apply(&mut data).unwrap();
        for (j, column) in data.features.columns().into_iter().enumerate() {
            let n = column.len() as f64;
            let mean = column.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
            let var = column.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
            assert!(mean.abs() < 1e-5, "column {j}: mean {mean}");
            let want = if j == 2 { 0.0 } else { 1.0 };
            assert!((var.sqrt() - want).abs() < 1e-5, "column {j}: std {}", var.sqrt());
        }
        let mut narrow = counting(3);
        assert!(matches!(
            scaling.apply(&mut narrow),
            Err(DataError::FeatureCountMismatch { standardizer: 3, dataset: 2 })
        ));
    }
}
