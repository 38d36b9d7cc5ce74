//! The engine alone, no gRPC: the pure decision, and the whole in-process hot path
//! (idempotency, decision, ledger entry, journal hand-off) as the calling thread pays for
//! it; the journal writer runs beside it on a thread of its own, as in the server.
//!
//! Run: `cargo bench --bench engine`. Throughput is reported as decisions per second.
//!
//! Also: a decision among many live holds under caps, burn-down across many grants, the cost per record of one group commit to the
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
use creditd::engine::idempotency::Idempotency;
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
    let request_id = common::uuid(n);
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

criterion_group!(benches, decision, engine, burn_down, group_commit, compaction);

fn main() {
    creditd::allocator::set_up_process();
    benches();
    criterion::Criterion::default().configure_from_args().final_summary();
}
