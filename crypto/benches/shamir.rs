//! Shamir sharing at SecAgg sizes: one client splitting a secret among its holders, and the
//! server reconstructing one secret over a holder set whose Lagrange coefficients are cached.
//!
//! (n, t) = (100, 51) is the complete graph on 100 clients; (399, 224) is a large SecAgg round.
//! Run with `cargo bench -p fedsec-crypto --bench shamir`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use curve25519_dalek::scalar::Scalar;
use fedsec_crypto::shamir::{self, LagrangeCache, ShareValue};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn holders(n: usize) -> Vec<u32> {
    (1..=n as u32).collect()
}

fn split(c: &mut Criterion) {
    let mut group = c.benchmark_group("shamir/split");
    group.sample_size(20);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let secret = Scalar::random(&mut rng);
    for (n, t) in [(100usize, 51usize), (399, 224)] {
        let xs = holders(n);
        group.bench_with_input(
            BenchmarkId::new(format!("n={n}"), format!("t={t}")),
            &t,
            |b, &t| {
                b.iter(|| {
                    shamir::split(black_box(&secret), t, &xs, &mut rng).expect("valid holders")
                })
            },
        );
    }
    group.finish();
}

fn reconstruct(c: &mut Criterion) {
    let mut group = c.benchmark_group("shamir/reconstruct_cached");
    group.sample_size(20);
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    for (n, t) in [(100usize, 51usize), (399, 224)] {
        let xs = holders(n);
        let secret = Scalar::random(&mut rng);
        let shares = shamir::split(&secret, t, &xs, &mut rng).expect("valid holders");
        let subset: Vec<(u32, &ShareValue)> = xs.iter().copied().zip(&shares).take(t).collect();
        let mut cache = LagrangeCache::new();
        let check = cache.reconstruct(&subset).expect("t distinct shares");
        assert_eq!(check.expose(), &secret, "the benchmark reconstructs the right secret");
        group.bench_with_input(BenchmarkId::from_parameter(format!("t={t}")), &subset, |b, s| {
            b.iter(|| cache.reconstruct(black_box(s)).expect("t distinct shares"))
        });
    }
    group.finish();
}

fn coefficients(c: &mut Criterion) {
    let mut group = c.benchmark_group("shamir/lagrange_coefficients");
    group.sample_size(20);
    let t = 224;
    // A holder set with gaps, as after dropouts: every other x of 1..=448.
    let xs: Vec<u32> = (1..=2 * t as u32).step_by(2).collect();
    group.bench_with_input(BenchmarkId::from_parameter(format!("t={t}")), &xs, |b, xs| {
        b.iter(|| LagrangeCache::new().coefficients(black_box(xs)).expect("sorted distinct xs"))
    });
    group.finish();
}

criterion_group!(benches, split, reconstruct, coefficients);
criterion_main!(benches);
