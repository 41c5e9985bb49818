//! Protocol v2's phase-1 check of one dealer, part by part: the dual weights of its holder set,
//! the decoding of its 2m commitments and the degree test's multi-scalar multiplication.
//!
//! (m, t) = (79, 52) is a dealer of the n = 1000 SecAgg+ round; (499, 350) one of the complete
//! graph on 500 clients. Run with `cargo bench -p fedsec-crypto --bench commitments`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use fedsec_crypto::keys::PublicKey;
use fedsec_crypto::secagg::commitments::{DegreeTest, DualWeights};
use fedsec_crypto::shamir;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

struct Dealer {
    xs: Vec<u32>,
    t: usize,
    keys: (PublicKey, PublicKey),
    encoded: Vec<([u8; 32], [u8; 32])>,
    points: Vec<(RistrettoPoint, RistrettoPoint)>,
}

fn dealer(m: usize, t: usize, seed: u64) -> Dealer {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    // Holders spread as in a Harary graph: a window of indices, not starting at 1.
    let xs: Vec<u32> = (0..m as u32).map(|i| 400 + 3 * i).collect();
    let b = Scalar::random(&mut rng);
    let s = Scalar::random(&mut rng);
    let bs = shamir::split(&b, t, &xs, &mut rng).expect("holders");
    let ss = shamir::split(&s, t, &xs, &mut rng).expect("holders");
    let points: Vec<_> =
        bs.iter().zip(&ss).map(|(b, s)| (b.commitment(), s.commitment())).collect();
    let encoded =
        points.iter().map(|(b, s)| (b.compress().to_bytes(), s.compress().to_bytes())).collect();
    let key = |x: &Scalar| {
        PublicKey::from_bytes(&RistrettoPoint::mul_base(x).compress().to_bytes()).expect("a key")
    };
    Dealer { xs, t, keys: (key(&b), key(&s)), encoded, points }
}

fn parts(c: &mut Criterion) {
    let mut group = c.benchmark_group("commitments");
    group.sample_size(20);
    for (m, t) in [(79usize, 52usize), (499, 350)] {
        let d = dealer(m, t, m as u64);
        let id = format!("m={m},t={t}");
        group.bench_with_input(BenchmarkId::new("dual_weights", &id), &d, |b, d| {
            b.iter(|| DualWeights::new(black_box(&d.xs)).expect("sorted"))
        });
        group.bench_with_input(BenchmarkId::new("decode", &id), &d, |b, d| {
            b.iter(|| {
                d.encoded
                    .iter()
                    .map(|(x, y)| {
                        (
                            CompressedRistretto(*x).decompress().expect("a point"),
                            CompressedRistretto(*y).decompress().expect("a point"),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        });
        let weights = DualWeights::new(&d.xs).expect("sorted");
        let test = DegreeTest {
            threshold: d.t,
            weights: &weights,
            self_mask_key: &d.keys.0,
            mask_key: &d.keys.1,
            commitments: &d.points,
        };
        assert!(test.passes(), "an honest dealer passes");
        group.bench_with_input(BenchmarkId::new("degree_test", &id), &test, |b, test| {
            b.iter(|| test.passes())
        });
    }
    group.finish();
}

criterion_group!(benches, parts);
criterion_main!(benches);
