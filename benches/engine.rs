//! The engine alone, no gRPC: the pure decision, and the whole in-process hot path
//! (idempotency, decision, ledger entry, journal hand-off) on one core.
//!
//! Run: `cargo bench --bench engine`. Throughput is reported as decisions per second.

use chrono::Utc;
use creditd::domain::account::Account;
use creditd::domain::grant::{Grant, GrantKind};
use creditd::domain::ids::IdGenerator;
use creditd::domain::price::{PriceChange, PriceEntry};
use creditd::domain::spend::SpendAsk;
use creditd::domain::Now;
use creditd::engine::admin::{AccountSpec, Caller, GrantSpec};
use creditd::engine::clock::SystemClock;
use creditd::engine::idempotency::Idempotency;
use creditd::engine::request::{DeductRequest, SpendTarget};
use creditd::engine::{Engine, EngineOptions};
use creditd::journal::{Durability, Journal, JournalOptions};
use creditd::store::embedded::{EmbeddedStore, Synchronous};
use creditd::store::Store;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::Duration;

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

fn decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    // Each iteration makes 100 decisions on the same account.
    group.throughput(Throughput::Elements(100));
    let now = Utc::now();
    let ask = SpendAsk { user_id: Some("alice"), workspace_id: None, credits: Decimal::new(15, 4), meter: None };
    for grants in [3, 50] {
        group.bench_function(format!("check_and_deduct/{grants}_grants"), |b| {
            b.iter_batched_ref(
                || account_with_grants(grants, now),
                |account| {
                    for _ in 0..100 {
                        account.check(&ask, now).unwrap();
                        account.deduct(&ask, now);
                    }
                },
                BatchSize::SmallInput,
            )
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
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    let recovered = store.recover(0).unwrap();
    let clock = Arc::new(SystemClock::new());
    let idem = Arc::new(Idempotency::new(86_400_000, 10_000_000));
    let (journal, _writer) = Journal::start(
        Box::new(store),
        idem.clone(),
        clock.clone(),
        JournalOptions { durability: Durability::Async, flush_interval: Duration::from_millis(10) },
    );
    let engine = Engine::new(recovered, journal, idem, None, clock, EngineOptions::default());
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

criterion_group!(benches, decision, engine);
criterion_main!(benches);
