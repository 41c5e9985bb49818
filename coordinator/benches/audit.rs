//! Criterion benches of the audit log: the durable cost of an entry appended alone (one write,
//! one sync, one new signed head) against the same entries appended as one batch (group
//! commit, as the coordinator's writer thread does). Run on the disk the log will live on:
//! the figure is the disk's sync latency more than the CPU's.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use fedsec_coordinator::audit::{AuditLog, EntryKind};
use rand::SeedableRng;
use serde_json::json;

fn entry(i: u64) -> (EntryKind, serde_json::Value, u64) {
    let client = format!("{i:064x}");
    (
        EntryKind::Enrollment,
        json!({ "task": "00".repeat(16), "client": client }),
        1_700_000_000_000 + i,
    )
}

fn appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit");
    group.sample_size(10);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
    let mut log = AuditLog::open(&dir.path().join("audit.log"), key).expect("the log opens");
    for entries in [1u64, 100] {
        group.throughput(Throughput::Elements(entries));
        group.bench_with_input(BenchmarkId::new("one_by_one", entries), &entries, |b, &n| {
            b.iter(|| {
                for i in 0..n {
                    let (kind, detail, time) = entry(i);
                    log.append(kind, detail, time).expect("append");
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("batched", entries), &entries, |b, &n| {
            b.iter(|| log.append_batch((0..n).map(entry)).expect("append"))
        });
    }
}

criterion_group!(benches, appends);
criterion_main!(benches);
