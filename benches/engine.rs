//! The engine alone, no gRPC: the pure decision, and the whole in-process hot path
//! (idempotency, decision, ledger entry, journal hand-off) as the calling thread pays for
//! it; the journal writer runs beside it on a thread of its own, as in the server.
//!
//! Run: `cargo bench --bench engine`. Throughput is reported as decisions per second.
//!
//! Also: a decision among many live holds under caps, the idempotency lookup on a large
//! table, one sweep holding that table to its memory bound, burn-down across many grants, the cost per record of one group commit to the
//! embedded store at several batch sizes, and what keeping an idle account compact costs:
//! compacting it, and decoding it at its next use.
//! Run by `cargo test --benches` (no `--bench` argument) the tables are kept small.

mod common;

use chrono::Utc;
use creditd::domain::account::Account;
use creditd::domain::grant::{Allocation, Grant, GrantKind};
use creditd::domain::hold::Hold;
use creditd::domain::ids::IdGenerator;
use creditd::domain::ledger::{EntryKind, LedgerEntry};
use creditd::domain::price::{PriceChange, PriceEntry};
use creditd::domain::spend::SpendAsk;
use creditd::domain::Now;
use creditd::engine::admin::{AccountSpec, Caller, GrantSpec};
use creditd::engine::answered::{answer_row, Answered};
use creditd::engine::cell::AccountCell;
use creditd::engine::clock::{Clock, SystemClock};
use creditd::engine::idempotency::{IdemEntry, Idempotency};
use creditd::engine::request::{DeductRequest, SpendTarget};
use creditd::engine::{idem_key, Engine, EngineOptions, Restored};
use creditd::journal::{Durability, Journal, JournalOptions};
use creditd::store::embedded::{EmbeddedStore, Synchronous};
use creditd::store::{AnswerRow, Batch, Store};
use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion, Throughput};
use rust_decimal::Decimal;
use std::sync::Arc;

fn account_with_grants(n: usize, wall: chrono::DateTime<Utc>) -> Account {
    let now = Now { wall, mono_ms: 0 };
    let ids = IdGenerator::default();
    let (mut account, _) = Account::blank("acme", now.wall).open(now, &ids);
    for i in 0..n {
        let kind = [GrantKind::Plan, GrantKind::Promo, GrantKind::Purchase][i % 3];
        let g = Grant::new(ids.next_string("gr_", i as u64), kind, Decimal::from(1_000_000_000), now.wall, now.wall);
        account.add_grant(g, now, &ids);
    }
    account
}

/// Three grants, spending and per-user caps far from reached, and `n` live holds of users
/// other than the one deciding, as an organization running `n` agent sessions has.
fn account_with_holds(n: usize, wall: chrono::DateTime<Utc>) -> Account {
    let now = Now { wall, mono_ms: 0 };
    let ids = IdGenerator::default();
    let mut account = account_with_grants(3, wall);
    account.limits.spending_cap = Some(Decimal::from(1_000_000_000));
    account.limits.default_user_cap = Some(Decimal::from(1_000_000_000));
    let (chat, _) = common::book_prices();
    for i in 0..n {
        let user = format!("user-{i}");
        let ask = SpendAsk { user_id: Some(&user), workspace_id: None, credits: Decimal::from(1), meter: None };
        let hold = Hold {
            id: format!("acme/{}", ids.next_string("rs_", i as u64)),
            request_id: format!("req-{i}"),
            user_id: Some(user.clone()),
            workspace_id: None,
            price: chat.clone(),
            price_version: 1,
            quantity: 1000,
            credits: Decimal::ZERO,
            allocations: Vec::new(),
            overdraft: Decimal::ZERO,
            meter: None,
            created_at: wall,
            expires_at: wall + chrono::Duration::seconds(600),
            deadline_ms: 600_000,
            metadata: Default::default(),
        };
        account.check(&ask, now.wall).expect("the caps have room");
        account.reserve(hold, &ask, now.wall);
    }
    account
}

/// One iteration of the decision benches: 100 checked deductions on the same account.
fn decide_100(account: &mut Account, ask: &SpendAsk, now: chrono::DateTime<Utc>) {
    for _ in 0..100 {
        account.check(ask, now).unwrap();
        account.deduct(ask, now);
    }
}

fn decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    // Each iteration makes 100 decisions on the same account.
    group.throughput(Throughput::Elements(100));
    let now = Utc::now();
    let ask = SpendAsk { user_id: Some("alice"), workspace_id: None, credits: Decimal::new(15, 4), meter: None };
    for grants in [3, 50] {
        group.bench_function(format!("check_and_deduct/{grants}_grants"), |b| {
            b.iter_batched_ref(|| account_with_grants(grants, now), |a| decide_100(a, &ask, now), BatchSize::SmallInput)
        });
    }
    // Among live holds: what every operation runs first, `advance` (expiring due holds; none
    // are due here), and decisions under a spending cap and a per-user cap, which weigh what
    // the holds keep back (kept as running sums, `LiveHolds`).
    let (ids, later) = (IdGenerator::default(), Now { wall: now, mono_ms: 1 });
    for holds in [2, 100, 1000] {
        group.bench_function(format!("advance/{holds}_live_holds"), |b| {
            b.iter_batched_ref(
                || account_with_holds(holds, now),
                |a| {
                    for _ in 0..100 {
                        std::hint::black_box(a.advance(later, &ids));
                    }
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("check_and_deduct/{holds}_live_holds_capped"), |b| {
            b.iter_batched_ref(|| account_with_holds(holds, now), |a| decide_100(a, &ask, now), BatchSize::SmallInput)
        });
    }
    let price = PriceEntry {
        action: "chat".into(),
        category: "chat".into(),
        unit_name: "1k_tokens".into(),
        unit_size: 1000,
        credits_per_unit: Decimal::new(3, 3),
        meter: None,
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("cost", |b| b.iter(|| price.cost(std::hint::black_box(1234), 6).unwrap()));
    group.finish();
}

fn engine(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _in_runtime = runtime.enter(); // the journal delivers wake-ups there
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    let clock = Arc::new(SystemClock::new());
    let idem = Arc::new(Idempotency::new(86_400_000, 10_000_000));
    let restored = Restored::from_store(&mut store, &idem, 0, clock.now()).unwrap();
    let (journal, _writer) = Journal::start(
        Box::new(store),
        idem.clone(),
        clock.clone(),
        JournalOptions { durability: Durability::Async, ..JournalOptions::default() },
    );
    let engine = Engine::new(restored, journal, idem, None, clock, EngineOptions::default());
    let accounts = 10_000;
    runtime.block_on(async {
        let caller = |rid: String| Caller { actor: "bench".into(), request_id: Some(rid) };
        for i in 0..accounts {
            let id = format!("org-{i}");
            let spec = AccountSpec {
                account_id: id.clone(),
                display_name: String::new(),
                plan: None,
                subscription: creditd::domain::account::SubscriptionStatus::Expired,
                limits: Default::default(),
                overage_policy: Default::default(),
                precision: 6,
                credit_currency: None,
            };
            engine.create_account(spec, &caller(format!("c{i}"))).await.unwrap();
            let grant = GrantSpec {
                account_id: id,
                kind: GrantKind::Purchase,
                amount: Decimal::from(1_000_000_000),
                priority: None,
                effective_at: None,
                expires_at: None,
                external_reference: String::new(),
                money_paid: None,
                comment: String::new(),
            };
            engine.grant_credits(grant, &caller(format!("g{i}"))).await.unwrap();
        }
        let change = PriceChange {
            account_id: None,
            upserts: vec![PriceEntry {
                action: "chat".into(),
                category: "chat".into(),
                unit_name: "1k_tokens".into(),
                unit_size: 1000,
                credits_per_unit: Decimal::new(3, 3),
                meter: None,
            }],
            removals: vec![],
        };
        engine.upsert_prices(change, &caller("p".into())).await.unwrap();
    });

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    let mut request = |account: String| {
        n += 1;
        DeductRequest {
            request_id: Some(format!("bench-{n}")),
            target: SpendTarget {
                account_id: account,
                user_id: None,
                workspace_id: None,
                action: "chat".into(),
                quantity: 1500,
                metadata: Default::default(),
            },
            dry_run: false,
        }
    };
    group.bench_function("check_and_deduct/hot_account", |b| {
        b.iter_batched(
            || request("org-0".into()),
            |r| runtime.block_on(engine.check_and_deduct(r)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let mut i = 0usize;
    group.bench_function("check_and_deduct/10k_accounts", |b| {
        b.iter_batched(
            || {
                i = (i + 7919) % accounts;
                request(format!("org-{i}"))
            },
            |r| runtime.block_on(engine.check_and_deduct(r)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// `cargo bench` passes `--bench`; `cargo test --benches` runs each bench once without it.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A UUID-shaped request id derived from `n` (distinct for distinct `n`).
fn uuid(n: u64) -> String {
    let a = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let b = (n ^ 0x2545_f491_4f6c_dd1d).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    // The last group is `n` itself, which keeps distinct `n` distinct.
    common::uuid_of(a, (b & !0xffff_ffff_ffff) | (n & 0xffff_ffff_ffff))
}

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

/// One deduct's domain work under the account lock (advance, check, deduct, balance, as
/// `decide_deduct` does it) on an account with many grants.
/// - `spanning`: every grant holds 0.001 credits and the deduct costs all of them, so it
///   takes from each (one allocation per grant);
/// - `walking_past`: all grants but the last are not effective yet (scheduled promos sort
///   first), so the deduct walks past them to the one grant that pays.
fn burn_down(c: &mut Criterion) {
    let wall = Utc::now();
    let now = Now { wall, mono_ms: 1_000 };
    let ids = IdGenerator::default();
    let mut group = c.benchmark_group("burn_down");
    group.sample_size(50);
    group.throughput(Throughput::Elements(1));
    for n in [50usize, 500] {
        let (mut spanning, _) = Account::blank("acme", wall).open(now, &ids);
        for i in 0..n {
            let g = Grant::new(ids.next_string("gr_", i as u64), GrantKind::Promo, Decimal::new(1, 3), wall, wall);
            spanning.add_grant(g, now, &ids);
        }
        let span_ask =
            SpendAsk { user_id: Some("alice"), workspace_id: None, credits: Decimal::new(n as i64, 3), meter: None };

        let (mut walking, _) = Account::blank("acme", wall).open(now, &ids);
        let later = wall + chrono::Duration::days(1);
        for i in 0..n - 1 {
            let g = Grant::new(ids.next_string("gr_", i as u64), GrantKind::Promo, Decimal::from(100), later, wall);
            walking.add_grant(g, now, &ids);
        }
        let g = Grant::new(ids.next_string("gr_", 0), GrantKind::Purchase, Decimal::from(1_000_000), wall, wall);
        walking.add_grant(g, now, &ids);
        let walk_ask =
            SpendAsk { user_id: Some("alice"), workspace_id: None, credits: Decimal::new(45, 4), meter: None };

        for (name, account, ask, expect) in
            [("deduct_spanning", &spanning, &span_ask, n), ("deduct_walking_past", &walking, &walk_ask, 1)]
        {
            group.bench_function(BenchmarkId::new(name, format!("{n}_grants")), |b| {
                b.iter_batched_ref(
                    || account.clone(),
                    |a| {
                        let entries = a.advance(now, &ids);
                        a.check(ask, wall).unwrap();
                        let allocations = a.deduct(ask, wall);
                        assert_eq!(allocations.len(), expect);
                        (entries, allocations, a.balance(wall))
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

/// What one allowed CheckAndDeduct hands the journal: a ledger entry and an idempotency row.
fn deduct_records(account: &Arc<str>, n: u64, ids: &IdGenerator, answer: &Arc<Answered>) -> (LedgerEntry, AnswerRow) {
    let wall = Utc::now();
    let now_ms = wall.timestamp_millis() as u64;
    let request_id = uuid(n);
    let mut e = LedgerEntry::new(ids.next_string("le_", now_ms), &**account, EntryKind::Deduct, wall);
    e.user_id = Some("alice".into());
    e.action = "chat".into();
    e.category = "chat".into();
    e.quantity = 1500;
    e.unit_name = "1k_tokens".into();
    e.unit_price = Decimal::new(3, 3);
    e.credits = Decimal::new(45, 4);
    e.allocations.push(Allocation {
        grant_id: ids.next_string("gr_", now_ms),
        kind: GrantKind::Plan,
        credits: Decimal::new(45, 4),
    });
    e.request_id = Some(request_id.clone());
    e.price_version = 3;
    let row =
        answer_row(&idem_key(account, &request_id), account, n.wrapping_mul(0x9e37_79b9_7f4a_7c15), answer, now_ms);
    (e, row)
}

/// Group commit to the embedded store (`synchronous = NORMAL`): the cost per record of one
/// `Store::write` carrying `k` deduct ledger entries (encoded already, as the hot path
/// encodes them when it makes them), their `k` idempotency rows and
/// - `one_snapshot`: one account snapshot (a hot account: every record is for it);
/// - `k_snapshots`: one snapshot per record (each record from a different account).
fn group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    let ids = IdGenerator::default();
    let accounts: Vec<Arc<str>> = (0..1_000).map(|i| format!("org-{i:07}").into()).collect();
    let now = Now { wall: Utc::now(), mono_ms: 1_000 };
    let snapshot = common::typical_account(0, now, &ids, &mut common::Seq(0x9e37_79b9_7f4a_7c15));
    let answer = Answered::new(common::deduct_outcome(&ids, Utc::now().timestamp_millis() as u64).borrowed(), true);
    let mut n = 0u64;
    let mut make = |k: usize, snapshots: usize| {
        let mut batch = Batch::default();
        for i in 0..k {
            n += 1;
            let account = if snapshots == 1 { &accounts[0] } else { &accounts[i] };
            let (entry, row) = deduct_records(account, n, &ids, &answer);
            batch.entries.extend([&entry]);
            batch.idempotency.push(row);
        }
        for account in &accounts[..snapshots] {
            let mut state = snapshot.clone();
            state.id = account.to_string();
            batch.accounts.push((account.to_string(), creditd::store::encode_account(&state)));
        }
        batch
    };

    let mut group = c.benchmark_group("group_commit");
    group.sample_size(20);
    for (name, per_record_snapshot) in [("one_snapshot", false), ("k_snapshots", true)] {
        for k in [1usize, 10, 100, 1000] {
            if per_record_snapshot && k == 1 {
                continue; // the same batch as one_snapshot/1
            }
            group.throughput(Throughput::Elements(k as u64));
            group.bench_function(BenchmarkId::new(name, k), |b| {
                b.iter_batched_ref(
                    || make(k, if per_record_snapshot { k } else { 1 }),
                    |batch| store.write(batch).unwrap(),
                    BatchSize::LargeInput,
                )
            });
        }
    }
    group.finish();
}

/// A typical account (3 grants, 2 holds, 2 meters) compacted, and decoded at its next use.
fn compaction(c: &mut Criterion) {
    let clock = SystemClock::new();
    let now = clock.now();
    let ids = IdGenerator::default();
    let account = common::typical_account(0, now, &ids, &mut common::Seq(0x2545_f491_4f6c_dd1d));
    let mut group = c.benchmark_group("compaction");
    group.throughput(Throughput::Elements(1));
    group.bench_function("compact/typical_account", |b| {
        b.iter_batched_ref(|| AccountCell::new(account.clone()), |cell| cell.lock().compact(), BatchSize::SmallInput)
    });
    group.bench_function("first_use/typical_account", |b| {
        b.iter_batched_ref(
            || {
                let cell = AccountCell::new(account.clone());
                cell.lock().compact();
                cell
            },
            |cell| cell.lock().account().holds.len(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The server's allocator, set up as the server sets it: with the C library's malloc
/// instead, the engine figures measured its arena locks (the journal writer frees what
/// requests allocate) rather than creditd.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

criterion_group!(benches, decision, engine, idempotency, eviction, burn_down, group_commit, compaction);

fn main() {
    creditd::allocator::set_up_process();
    benches();
    criterion::Criterion::default().configure_from_args().final_summary();
}
