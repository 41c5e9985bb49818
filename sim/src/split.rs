//! Splitting a dataset across simulated clients: IID, or non-IID by label with a Dirichlet
//! prior (the usual benchmark of federated learning: each class's examples are shared among the
//! clients in proportions drawn from Dir(α, …, α); a small α gives each client few classes).
//!
//! The split depends only on the labels, the number of clients and the seed, so a seeded run
//! is reproducible. A client may end up with no examples; such a client does not check in.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Gamma};

/// How examples are shared among clients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    /// Shuffled and dealt out evenly.
    Iid,
    /// Per class, proportions drawn from a symmetric Dirichlet distribution with this α.
    Dirichlet(f64),
}

/// A split description that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("split {given:?}: {reason} (expected iid or dirichlet:α with α > 0, e.g. dirichlet:0.5)")]
pub struct SplitError {
    /// What was given.
    pub given: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::str::FromStr for Split {
    type Err = SplitError;

    fn from_str(s: &str) -> Result<Split, SplitError> {
        let err = |reason: &str| SplitError { given: s.into(), reason: reason.into() };
        if s == "iid" {
            return Ok(Split::Iid);
        }
        let alpha = s.strip_prefix("dirichlet:").ok_or_else(|| err("unknown split"))?;
        let alpha: f64 = alpha.parse().map_err(|_| err("α is not a number"))?;
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(err("α must be finite and positive"));
        }
        Ok(Split::Dirichlet(alpha))
    }
}

impl serde::Serialize for Split {
    /// As it is written on the command line: `iid` or `dirichlet:α`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Split::Iid => write!(f, "iid"),
            Split::Dirichlet(a) => write!(f, "dirichlet:{a}"),
        }
    }
}

/// The example indices of each of `clients` clients. Every index of `labels` goes to exactly
/// one client.
pub fn partition(labels: &[u32], clients: usize, split: Split, seed: u64) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); clients];
    if clients == 0 {
        return out;
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    match split {
        Split::Iid => {
            let mut all: Vec<usize> = (0..labels.len()).collect();
            all.shuffle(&mut rng);
            for (i, idx) in all.into_iter().enumerate() {
                out[i % clients].push(idx);
            }
        }
        Split::Dirichlet(alpha) => {
            let gamma = Gamma::new(alpha, 1.0).expect("α was checked to be finite and positive");
            let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
            for class in 0..classes as u32 {
                let mut members: Vec<usize> =
                    (0..labels.len()).filter(|&i| labels[i] == class).collect();
                members.shuffle(&mut rng);
                let weights: Vec<f64> = (0..clients).map(|_| gamma.sample(&mut rng)).collect();
                let total: f64 = weights.iter().sum();
                // Cut points at the cumulative proportions; with a tiny α every weight may
                // underflow to 0, and then the class goes to one client chosen by the draws.
                let mut start = 0;
                let mut acc = 0.0;
                for (c, w) in weights.iter().enumerate() {
                    acc += if total > 0.0 {
                        w / total
                    } else if c == 0 {
                        1.0
                    } else {
                        0.0
                    };
                    let end = if c + 1 == clients {
                        members.len()
                    } else {
                        ((acc * members.len() as f64).round() as usize).clamp(start, members.len())
                    };
                    out[c].extend_from_slice(&members[start..end]);
                    start = end;
                }
            }
            for client in &mut out {
                client.sort_unstable();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize, classes: u32) -> Vec<u32> {
        (0..n as u32).map(|i| (i * 7 + i / 3) % classes).collect()
    }

    fn assert_partition(parts: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "every example exactly once");
    }

    /// The mean, over clients with examples, of the share of their largest class.
    fn skew(parts: &[Vec<usize>], labels: &[u32]) -> f64 {
        let shares: Vec<f64> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| {
                let mut counts = [0usize; 16];
                for &i in p {
                    counts[labels[i] as usize] += 1;
                }
                *counts.iter().max().unwrap() as f64 / p.len() as f64
            })
            .collect();
        shares.iter().sum::<f64>() / shares.len() as f64
    }

    #[test]
    fn iid_deals_evenly_and_dirichlet_skews_labels() {
        let l = labels(1797, 10);
        let iid = partition(&l, 50, Split::Iid, 3);
        assert_partition(&iid, l.len());
        let sizes: Vec<usize> = iid.iter().map(Vec::len).collect();
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        let non_iid = partition(&l, 50, Split::Dirichlet(0.5), 3);
        assert_partition(&non_iid, l.len());
        let (a, b) = (skew(&iid, &l), skew(&non_iid, &l));
        assert!(b > a + 0.2, "Dirichlet(0.5) skews labels: iid {a:.2}, dirichlet {b:.2}");
        let very = partition(&l, 50, Split::Dirichlet(0.01), 3);
        assert_partition(&very, l.len());
        let c = skew(&very, &l);
        assert!(c > b && c > 0.75, "a tiny α gives each client few classes: {c:.2}");
    }

    #[test]
    fn the_seed_fixes_the_split() {
        let l = labels(500, 3);
        for s in [Split::Iid, Split::Dirichlet(0.5)] {
            assert_eq!(partition(&l, 10, s, 9), partition(&l, 10, s, 9));
            assert_ne!(partition(&l, 10, s, 9), partition(&l, 10, s, 10));
        }
        assert_eq!(partition(&l, 0, Split::Iid, 1), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn bad_split_descriptions_are_explained() {
        assert_eq!("iid".parse::<Split>().unwrap(), Split::Iid);
        assert_eq!("dirichlet:0.5".parse::<Split>().unwrap(), Split::Dirichlet(0.5));
        assert_eq!(Split::Dirichlet(0.5).to_string(), "dirichlet:0.5");
        for bad in
            ["random", "dirichlet:", "dirichlet:x", "dirichlet:0", "dirichlet:-1", "dirichlet:inf"]
        {
            let e = bad.parse::<Split>().unwrap_err();
            assert!(e.to_string().contains("expected iid or dirichlet"), "{e}");
        }
    }
}
