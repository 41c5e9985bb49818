//! Criterion benches of the vector kernel: fused expand-and-add of masks into the accumulator.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fedsec_crypto::kernel::{Kernel, Sign};
use fedsec_crypto::prg::MaskSeed;

fn fused(c: &mut Criterion) {
    let mut group = c.benchmark_group("kernel");
    group.sample_size(20);
    let dim = 1 << 20;
    for masks in [1usize, 8, 32] {
        let seeds: Vec<MaskSeed> =
            (0..masks).map(|i| MaskSeed::from_bytes([i as u8; 16])).collect();
        let list: Vec<(&MaskSeed, Sign)> = seeds.iter().map(|s| (s, Sign::Add)).collect();
        let mut acc = vec![0u32; dim];
        group.throughput(Throughput::Bytes((masks * dim * 4) as u64));
        group.bench_with_input(BenchmarkId::new("expand_add_1t", masks), &list, |b, list| {
            b.iter(|| Kernel::single().apply(&mut acc, 0, list))
        });
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        group.bench_with_input(BenchmarkId::new("expand_add_2t", masks), &list, |b, list| {
            b.iter(|| Kernel::with_pool(&pool).apply(&mut acc, 0, list))
        });
    }
    let words: Vec<u32> = (0..dim as u32).collect();
    let mut acc = vec![0u32; dim];
    group.throughput(Throughput::Bytes((dim * 4) as u64));
    group.bench_function("add_vector_1t", |b| {
        b.iter(|| Kernel::single().add_vector(&mut acc, &words))
    });
    group.finish();
}

criterion_group!(benches, fused);
criterion_main!(benches);
