//! The table of answered request ids (`engine::idempotency`): a lookup on a table of millions
//! (an answer replayed, an id never seen, an id never seen once most answers were evicted),
//! and one sweep holding the table to its memory bound.
//!
//! Run: `cargo bench --bench idempotency`. Run by `cargo test --benches` (no `--bench`
//! argument) the tables are kept small.

mod common;

use chrono::Utc;
use common::{full_run, uuid};
use creditd::domain::ids::IdGenerator;
use creditd::engine::answered::Answered;
use creditd::engine::idem_key;
use creditd::engine::idempotency::{IdemEntry, Idempotency};
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use std::sync::Arc;

/// A table of `n` answered deducts, and its keys.
fn answered_requests(n: usize) -> (Idempotency, Vec<Arc<str>>) {
    let now_ms = Utc::now().timestamp_millis() as u64;
    let ids = IdGenerator::default();
    let table = Idempotency::new(86_400_000, 10_000_000);
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let account = format!("org-{:07}", i % 10_000);
        let key = idem_key(&account, &uuid(i as u64));
        let entry = IdemEntry {
            fingerprint: IDEM_FINGERPRINT,
            answer: Answered::new(common::deduct_outcome(&ids, now_ms).borrowed(), true),
            created_ms: now_ms,
        };
        table.insert(&key, entry);
        keys.push(key);
    }
    (table, keys)
}

const IDEM_FINGERPRINT: u64 = 0x51_7cc1_b727_220a;

/// `Idempotency::check` on a table of 1M answered requests (10k when run as a test), keys
/// visited in a scattered order so the lookups are not all cache hits. The table is built
/// only when one of these benchmarks is selected.
fn idempotency(c: &mut Criterion) {
    let n: usize = if full_run() { 1_000_000 } else { 10_000 };
    let built = std::cell::OnceCell::new();
    let table = || built.get_or_init(|| answered_requests(n));
    let misses: Vec<Arc<str>> =
        (0..n.min(100_000)).map(|i| idem_key(&format!("org-{:07}", i % 10_000), &uuid((n + i) as u64))).collect();
    // A stride coprime with both sizes visits every key in a scattered order.
    const STRIDE: usize = 7_919;

    let mut group = c.benchmark_group("idempotency");
    group.throughput(Throughput::Elements(1));
    let label = if n >= 1_000_000 { format!("{}M", n / 1_000_000) } else { format!("{}k", n / 1_000) };
    group.bench_function(format!("check_hit/{label}_entries"), |b| {
        let (table, keys) = table();
        let mut i = 0;
        b.iter(|| {
            i = (i + STRIDE) % keys.len();
            let seen = table.check(&keys[i], IDEM_FINGERPRINT);
            assert!(matches!(seen, creditd::engine::idempotency::Seen::Replay(_)));
            seen
        })
    });
    // Request ids never answered, checked in a scattered order.
    let check_misses = |b: &mut criterion::Bencher, table: &Idempotency| {
        let mut i = 0;
        b.iter(|| {
            i = (i + STRIDE) % misses.len();
            let seen = table.check(&misses[i], IDEM_FINGERPRINT);
            assert!(matches!(seen, creditd::engine::idempotency::Seen::New));
            seen
        })
    };
    group.bench_function(format!("check_miss/{label}_entries"), |b| check_misses(b, &table().0));
    // Once answers were evicted, a miss also looks through where the store keeps them.
    let evicted_built = std::cell::OnceCell::new();
    group.bench_function(format!("check_miss_evicted/{label}_answered"), |b| {
        check_misses(b, evicted_built.get_or_init(|| evicted_requests(n)))
    });
    group.finish();
}

/// One eviction sweep (`Idempotency::evict_over_bound`, which the server runs every second)
/// of a table of 1M answers (10k when run as a test) a tenth over its bound: a fifth of them
/// leave memory, filed by page. Per answer let go; each sweep gets a table of its own.
fn eviction(c: &mut Criterion) {
    let bound: usize = if full_run() { 1_000_000 } else { 10_000 };
    let mut group = c.benchmark_group("eviction");
    group.sample_size(10).sampling_mode(criterion::SamplingMode::Flat);
    group.throughput(Throughput::Elements((bound / 5) as u64));
    let label = if bound >= 1_000_000 { format!("{}M", bound / 1_000_000) } else { format!("{}k", bound / 1_000) };
    group.bench_function(format!("evict_over_bound/{label}_bound"), |b| {
        b.iter_batched_ref(
            || over_bound(bound),
            |table| {
                let evicted = table.evict_over_bound();
                assert!(evicted.abs_diff(bound / 5) < bound / 100, "{evicted}");
                evicted
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// A table of written answers a tenth over `bound`, each a millisecond younger than the last.
fn over_bound(bound: usize) -> Idempotency {
    let now_ms = Utc::now().timestamp_millis() as u64;
    let ids = IdGenerator::default();
    let table = Idempotency::new(u64::MAX, bound);
    for i in 0..bound + bound / 10 {
        let entry = IdemEntry {
            fingerprint: IDEM_FINGERPRINT,
            answer: Answered::new(common::deduct_outcome(&ids, now_ms).borrowed(), true),
            created_ms: now_ms + i as u64,
        };
        entry.answer.written(1 + i as u64 / 1_000);
        table.insert(&idem_key(&format!("org-{:07}", i % 10_000), &uuid(i as u64)), entry);
    }
    table.written_through(u64::MAX);
    table
}

/// A table that answered `n` deducts and kept a tenth of them: the rest were evicted, as
/// the server's sweeps do past the bound, and are filed by page.
fn evicted_requests(n: usize) -> Idempotency {
    let now_ms = Utc::now().timestamp_millis() as u64;
    let ids = IdGenerator::default();
    let bound = (n / 10).max(1);
    let table = Idempotency::new(86_400_000, bound);
    for i in 0..n {
        let entry = IdemEntry {
            fingerprint: IDEM_FINGERPRINT,
            answer: Answered::new(common::deduct_outcome(&ids, now_ms).borrowed(), true),
            created_ms: now_ms,
        };
        let page = 1 + i as u64 / 1_000;
        entry.answer.written(page);
        table.written_through(page);
        table.insert(&idem_key(&format!("org-{:07}", i % 10_000), &uuid(i as u64)), entry);
        if i % bound == 0 {
            table.evict_over_bound();
        }
    }
    table.evict_over_bound();
    assert!(table.evicted_len() >= n / 2, "most answers were evicted");
    table
}

/// The server's allocator, as in the engine bench.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

criterion_group!(benches, idempotency, eviction);

fn main() {
    creditd::allocator::set_up_process();
    benches();
    criterion::Criterion::default().configure_from_args().final_summary();
}
