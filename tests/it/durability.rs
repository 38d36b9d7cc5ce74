//! What survives: a graceful restart, a `kill -9` under load, and a failed store write.

use crate::helpers::*;
use creditd::proto::v1 as pb;
use creditd::proto::v1::admin_client::AdminClient;
use creditd::proto::v1::metering_client::MeteringClient;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

#[tokio::test]
async fn a_restart_keeps_balances_holds_answers_and_audit_records() {
    let s = TestServer::start().await;
    s.admin()
        .create_account(pb::CreateAccountRequest {
            account_id: "acme".into(),
            plan: Some(pb::Plan {
                name: "pro".into(),
                credits_per_cycle: "100".into(),
                cycle_anchor_day: 1,
                ..Default::default()
            }),
            limits: Some(pb::Limits { spending_cap: "80".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap();
    s.grant("acme", pb::GrantKind::Purchase, "25.5").await;
    s.price("op", "1.25", 1).await;
    let req = deduct_request("acme", "op", 4);
    let first = s.deduct_req(req.clone()).await.unwrap();
    let hold = s.reserve("acme", "op", 8, 300).await;
    let before = s.balance("acme").await;

    let s = s.restart().await;

    assert_eq!(s.balance("acme").await, before, "balances, grants, holds and limits are as they were");
    let replay = s.deduct_req(req).await.unwrap();
    assert!(replay.replayed);
    assert_eq!((replay.ledger_entry_id, replay.credits_charged), (first.ledger_entry_id, first.credits_charged));
    let c = s.commit(&hold.reservation_id, 2, true).await.unwrap();
    assert_eq!((c.credits_charged.as_str(), c.credits_released.as_str()), ("2.5", "7.5"));
    let prices = s.admin().list_prices(pb::ListPricesRequest::default()).await.unwrap().into_inner();
    assert_eq!((prices.version, prices.entries[0].credits_per_unit.as_str()), (1, "1.25"));

    let conn = rusqlite::Connection::open(creditd::store::embedded::EmbeddedStore::path(&s.data_dir)).unwrap();
    let ops: Vec<String> = conn
        .prepare("SELECT operation FROM audit_log ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ops, vec!["CreateAccount", "GrantCredits", "UpsertPrices"]);
}

/// Start-up puts live holds back on the monotonic clock and in the expiry sweep's set.
#[tokio::test]
async fn holds_expire_on_time_after_a_restart() {
    let s = TestServer::start().await;
    s.account_with("acme", "10").await;
    s.price("op", "1", 1).await;
    s.reserve("acme", "op", 4, 300).await;
    s.advance(Duration::from_secs(200));

    let s = s.restart().await;
    let engine = s.running.as_ref().unwrap().engine.clone();
    s.advance(Duration::from_secs(99));
    assert_eq!(engine.sweep_holds(), 0, "100 s of the hold's 300 s are left");
    assert_eq!((s.balance("acme").await.balance.as_str(), s.balance("acme").await.held.as_str()), ("6", "4"));
    s.advance(Duration::from_secs(2));
    assert_eq!(engine.sweep_holds(), 1, "the sweep found the restored hold");
    assert_eq!((s.balance("acme").await.balance.as_str(), s.balance("acme").await.held.as_str()), ("10", "0"));
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_data_directory() {
    let s = TestServer::start().await;
    let mut config = test_config(&s.data_dir);
    config.server.listen = "127.0.0.1:0".into();
    let clock = Arc::new(creditd::engine::clock::ManualClock::new(t0()));
    let err = creditd::app::start(&config, clock).await.err().expect("the data directory is locked");
    assert!(err.to_string().contains("in use by another creditd process"), "{err}");
}

/// A real `creditd serve` process, killable.
struct Process {
    child: Child,
    addr: String,
}

fn spawn_creditd(data_dir: &std::path::Path) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_creditd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
        .arg(data_dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn creditd");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(addr) = json["fields"]["addr"].as_str() {
            // Keep draining the log so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Process { child, addr: format!("http://{addr}") };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("creditd exited before serving");
}

async fn connect(addr: &str) -> Channel {
    for _ in 0..100 {
        if let Ok(c) = Channel::from_shared(addr.to_string()).unwrap().connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_deduction_and_charges_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_creditd(dir.path());
    let channel = connect(&p.addr).await;
    let mut admin = AdminClient::new(channel.clone());
    admin.create_account(pb::CreateAccountRequest { account_id: "acme".into(), ..Default::default() }).await.unwrap();
    admin
        .grant_credits(pb::GrantCreditsRequest {
            request_id: rid(),
            account_id: "acme".into(),
            kind: pb::GrantKind::Purchase as i32,
            amount: "1000000".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .upsert_prices(pb::UpsertPricesRequest {
            entries: vec![pb::PriceEntry {
                action: "op".into(),
                unit_size: 1,
                credits_per_unit: "0.5".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();

    // 16 clients deduct as fast as they can; every request and every acknowledgement is kept.
    let attempted: Arc<Mutex<Vec<pb::CheckAndDeductRequest>>> = Arc::default();
    let acked: Arc<Mutex<Vec<(pb::CheckAndDeductRequest, pb::CheckAndDeductResponse)>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..16u64 {
        let (attempted, acked) = (attempted.clone(), acked.clone());
        let mut m = MeteringClient::new(channel.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..100_000u64 {
                let req = deduct_request("acme", "op", 1 + (c + i) % 5);
                attempted.lock().unwrap().push(req.clone());
                match m.check_and_deduct(req.clone()).await {
                    Ok(r) => acked.lock().unwrap().push((req, r.into_inner())),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    p.child.kill().unwrap(); // SIGKILL
    p.child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    assert!(acked.len() > 50, "the load ran before the kill ({} acknowledged)", acked.len());

    let p2 = spawn_creditd(dir.path());
    let mut m = MeteringClient::new(connect(&p2.addr).await);
    // Every acknowledged answer is still the answer.
    for (req, first) in &acked {
        assert!(allowed(first));
        let again = m.check_and_deduct(req.clone()).await.unwrap().into_inner();
        assert!(again.replayed, "acknowledged {} was lost", req.request_id);
        assert_eq!((&again.ledger_entry_id, &again.credits_charged), (&first.ledger_entry_id, &first.credits_charged));
    }
    // Retrying everything that was attempted settles the unknown outcomes: each request is
    // then charged exactly once, so the balance is exactly the start minus all of them.
    for req in &attempted {
        assert!(allowed(&m.check_and_deduct(req.clone()).await.unwrap().into_inner()));
    }
    let units: u64 = attempted.iter().map(|r| r.quantity).sum();
    let expected =
        rust_decimal::Decimal::from(1_000_000) - rust_decimal::Decimal::from(units) / rust_decimal::Decimal::from(2);
    let b = m.get_balance(pb::GetBalanceRequest { account_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!(b.balance, expected.normalize().to_string());
    assert_eq!(
        b.balance.parse::<rust_decimal::Decimal>().unwrap() + b.cycle_spend.parse::<rust_decimal::Decimal>().unwrap(),
        rust_decimal::Decimal::from(1_000_000),
        "conservation: granted = remaining + consumed"
    );
    let mut p2 = p2;
    p2.child.kill().unwrap();
    p2.child.wait().unwrap();
}

/// The embedded store with a switch that makes the next writes fail, as a full disk would.
struct FlakyStore {
    inner: creditd::store::embedded::EmbeddedStore,
    failing: Arc<std::sync::atomic::AtomicBool>,
    /// While set, writes wait, as on a stalled disk.
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl creditd::store::Store for FlakyStore {
    fn write(
        &mut self,
        batch: &mut creditd::store::Batch,
    ) -> Result<creditd::store::Written, creditd::store::StoreError> {
        while self.stalled.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(creditd::store::StoreError::Failed("injected: disk full".into()));
        }
        self.inner.write(batch)
    }
    fn load_account(
        &mut self,
        id: &str,
    ) -> Result<Option<creditd::domain::account::Account>, creditd::store::StoreError> {
        self.inner.load_account(id)
    }
    fn account_count(&mut self) -> Result<usize, creditd::store::StoreError> {
        self.inner.account_count()
    }
    fn each_account(
        &mut self,
        each: &mut dyn FnMut(&[u8]) -> Result<(), creditd::store::StoreError>,
    ) -> Result<(), creditd::store::StoreError> {
        self.inner.each_account(each)
    }
    fn each_answer_page(
        &mut self,
        since_ms: u64,
        each: &mut dyn FnMut(u64, Vec<creditd::store::IdemRow>) -> Result<(), creditd::store::StoreError>,
    ) -> Result<(), creditd::store::StoreError> {
        self.inner.each_answer_page(since_ms, each)
    }
    fn recover(&mut self) -> Result<creditd::store::Recovered, creditd::store::StoreError> {
        self.inner.recover()
    }
    fn prune_requests(&mut self, before_ms: u64) -> Result<creditd::store::Pruned, creditd::store::StoreError> {
        self.inner.prune_requests(before_ms)
    }
    fn read_journal(
        &mut self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<creditd::store::JournalChunk>, creditd::store::StoreError> {
        self.inner.read_journal(after_seq, limit)
    }
}

/// An engine over a switchable store, with account `acme` holding 10 credits and the
/// action `op` priced at 1 credit per unit.
async fn engine_over_flaky_store(
    dir: &std::path::Path,
    options: creditd::journal::JournalOptions,
) -> (creditd::engine::Engine, Switches) {
    use creditd::engine::clock::Clock;
    use creditd::engine::{idempotency::Idempotency, Engine, EngineOptions};
    use creditd::journal::Journal;

    let mut inner =
        creditd::store::embedded::EmbeddedStore::open(dir, creditd::store::embedded::Synchronous::Full).unwrap();
    let switches = Switches::default();
    let clock = Arc::new(creditd::engine::clock::ManualClock::new(t0()));
    let idem = Arc::new(Idempotency::new(86_400_000, 1000));
    let restored = creditd::engine::Restored::from_store(&mut inner, &idem, 0, clock.now()).unwrap();
    let store = FlakyStore { inner, failing: switches.failing.clone(), stalled: switches.stalled.clone() };
    let (journal, _writer) = Journal::start(Box::new(store), idem.clone(), clock.clone(), options);
    let engine = Engine::new(restored, journal, idem, None, clock, EngineOptions::default());
    let caller = |rid: &str| creditd::engine::admin::Caller { actor: "test".into(), request_id: Some(rid.into()) };
    engine
        .create_account(
            creditd::engine::admin::AccountSpec {
                account_id: "acme".into(),
                display_name: String::new(),
                plan: None,
                subscription: creditd::domain::account::SubscriptionStatus::Expired,
                limits: Default::default(),
                overage_policy: Default::default(),
                precision: 6,
                credit_currency: None,
            },
            &caller("create"),
        )
        .await
        .unwrap();
    engine
        .grant_credits(
            creditd::engine::admin::GrantSpec {
                account_id: "acme".into(),
                kind: creditd::domain::grant::GrantKind::Purchase,
                amount: 10.into(),
                priority: None,
                effective_at: None,
                expires_at: None,
                external_reference: String::new(),
                money_paid: None,
                comment: String::new(),
            },
            &caller("grant"),
        )
        .await
        .unwrap();
    engine
        .upsert_prices(
            creditd::domain::price::PriceChange {
                account_id: None,
                upserts: vec![creditd::domain::price::PriceEntry {
                    action: "op".into(),
                    category: "".into(),
                    unit_name: "request".into(),
                    unit_size: 1,
                    credits_per_unit: 1.into(),
                    meter: None,
                }],
                removals: vec![],
            },
            &caller("prices"),
        )
        .await
        .unwrap();
    (engine, switches)
}

/// `engine_over_flaky_store` in a directory of its own, with a writer that writes as soon
/// as it can (`sync`) or every millisecond (`async`), and `max_backlog`.
async fn flaky_engine(
    durability: creditd::journal::Durability,
    max_backlog: usize,
) -> (tempfile::TempDir, creditd::engine::Engine, Switches) {
    let dir = tempfile::tempdir().unwrap();
    let options = creditd::journal::JournalOptions {
        durability,
        flush_interval: Duration::from_millis(1),
        max_backlog,
        ..creditd::journal::JournalOptions::default()
    };
    let (engine, switches) = engine_over_flaky_store(dir.path(), options).await;
    (dir, engine, switches)
}

#[derive(Default)]
struct Switches {
    failing: Arc<std::sync::atomic::AtomicBool>,
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

fn ask(id: &str, quantity: u64) -> creditd::engine::request::DeductRequest {
    creditd::engine::request::DeductRequest {
        request_id: Some(id.into()),
        target: creditd::engine::request::SpendTarget {
            account_id: "acme".into(),
            user_id: None,
            workspace_id: None,
            action: "op".into(),
            quantity,
            metadata: Default::default(),
        },
        dry_run: false,
    }
}

#[tokio::test]
async fn a_failed_write_answers_unavailable_charges_nothing_and_a_retry_charges_once() {
    use std::sync::atomic::Ordering;
    let (dir, engine, switches) = flaky_engine(creditd::journal::Durability::Sync, 100_000).await;
    let failing = switches.failing;
    failing.store(true, Ordering::SeqCst);
    let err = engine.check_and_deduct(ask("d1", 3)).await.unwrap_err();
    assert!(matches!(err, creditd::error::Error::Unavailable(_)), "{err:?}");
    assert_eq!(engine.get_balance("acme").unwrap().balance, 10.into(), "the cache agrees with the store again");

    failing.store(false, Ordering::SeqCst);
    let first = engine.check_and_deduct(ask("d1", 3)).await.unwrap();
    assert!(!first.replayed, "the failed attempt left no answer behind");
    assert_eq!(first.outcome.credits_charged, 3.into());
    let again = engine.check_and_deduct(ask("d1", 3)).await.unwrap();
    assert!(again.replayed);
    assert_eq!(engine.get_balance("acme").unwrap().balance, 7.into(), "charged exactly once");

    // The ledger holds the retry's entry alone: the failed attempt's went with its write.
    engine.flush().await.unwrap();
    let reader = creditd::store::embedded::EmbeddedStore::reader(dir.path()).unwrap();
    let ledger: Vec<_> = reader.read_journal(0, 1_000).unwrap().into_iter().flat_map(|c| c.entries).collect();
    let d1: Vec<_> = ledger.iter().filter(|e| e.request_id.as_deref() == Some("d1")).collect();
    assert_eq!(d1.len(), 1, "{ledger:#?}");
    assert_eq!(
        (d1[0].kind, d1[0].credits, &d1[0].id),
        (creditd::domain::ledger::EntryKind::Deduct, 3.into(), &first.outcome.ledger_entry_id)
    );
}

#[tokio::test]
async fn async_durability_makes_callers_wait_once_the_writer_is_behind() {
    use std::sync::atomic::Ordering;
    let (_dir, engine, switches) = flaky_engine(creditd::journal::Durability::Async, 3).await;
    engine.flush().await.unwrap();

    // The disk stalls: nothing queued from now on is written until it recovers.
    switches.stalled.store(true, Ordering::SeqCst);
    for i in 0..3 {
        let answer = engine.check_and_deduct(ask(&format!("a{i}"), 1)).await;
        assert!(answer.is_ok(), "within the backlog bound, async answers from memory: {answer:?}");
    }
    // Three changes behind: the next caller waits for the store.
    let engine = Arc::new(engine);
    let waiting = tokio::spawn({
        let engine = engine.clone();
        async move { engine.check_and_deduct(ask("a3", 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "answered from memory although the writer is behind");

    switches.stalled.store(false, Ordering::SeqCst);
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.outcome.credits_charged, 1.into());
    engine.flush().await.unwrap();
    assert_eq!(engine.get_balance("acme").unwrap().balance, 6.into(), "every change charged once");
    let after = engine.check_and_deduct(ask("a4", 1)).await.unwrap();
    assert!(!after.replayed, "the backlog drained: async answers from memory again");
}

/// A writer that falls behind in `async` durability (here, on a stalled disk; in production,
/// on a core its requests keep busy) is given the core: requests answered from memory pause
/// now and then until it has written again. Nothing is lost or charged twice meanwhile.
#[tokio::test]
async fn async_requests_pause_for_a_writer_that_fell_behind_until_it_writes_again() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    // Behind once no write has ended for two flush intervals: 400 ms.
    let options = creditd::journal::JournalOptions {
        durability: creditd::journal::Durability::Async,
        flush_interval: Duration::from_millis(200),
        ..creditd::journal::JournalOptions::default()
    };
    let (engine, switches) = engine_over_flaky_store(dir.path(), options).await;
    engine.flush().await.unwrap();
    let pauses = engine.writer_pauses();
    // Idle for longer than that: the writer owed nothing meanwhile.
    tokio::time::sleep(Duration::from_millis(600)).await;
    engine.check_and_deduct(ask("p0", 1)).await.unwrap();
    assert_eq!(engine.writer_pauses(), pauses, "the first change after an idle spell finds the writer keeping up");

    switches.stalled.store(true, Ordering::SeqCst);
    engine.check_and_deduct(ask("p1", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let late = engine.check_and_deduct(ask("p2", 1)).await.unwrap();
    assert!(!late.replayed, "answered from memory");
    assert_eq!(engine.writer_pauses(), pauses + 1, "no write ended for three flush intervals");

    switches.stalled.store(false, Ordering::SeqCst);
    engine.flush().await.unwrap();
    engine.check_and_deduct(ask("p3", 1)).await.unwrap();
    assert_eq!(engine.writer_pauses(), pauses + 1, "written again: no more pauses");
    engine.flush().await.unwrap();
    assert_eq!(engine.get_balance("acme").unwrap().balance, 6.into(), "every change charged once");
    let reader = creditd::store::embedded::EmbeddedStore::reader(dir.path()).unwrap();
    let ledger: Vec<_> = reader.read_journal(0, 1_000).unwrap().into_iter().flat_map(|c| c.entries).collect();
    for id in ["p0", "p1", "p2", "p3"] {
        let entries = ledger.iter().filter(|e| e.request_id.as_deref() == Some(id)).count();
        assert_eq!(entries, 1, "{id} reached the ledger once");
    }
}

/// A failed write fails every item of a batch that changed something (UNAVAILABLE, nothing
/// charged), while items that changed nothing keep their answers; the same batch again is
/// charged once per item. A batch's items for one account wait on one shared signal, so
/// this is where an item could be told OK for a change that was lost.
#[tokio::test]
async fn a_failed_write_fails_each_changing_item_of_a_batch_and_the_batch_again_charges_each_once() {
    use creditd::domain::ledger::DenialReason;
    use std::sync::atomic::Ordering;
    let (_dir, engine, switches) = flaky_engine(creditd::journal::Durability::Sync, 100_000).await;
    // Two runs for `acme` with an unknown account between them.
    let batch = || {
        let mut elsewhere = ask("b3", 1);
        elsewhere.target.account_id = "nobody".into();
        vec![Ok(ask("b1", 1)), Ok(ask("b2", 2)), Ok(elsewhere), Ok(ask("b4", 4))]
    };
    let not_found = |answer: &creditd::engine::Answer<creditd::engine::outcome::DeductOutcome>| {
        answer.outcome.denial.as_ref().map(|d| d.reason) == Some(DenialReason::AccountNotFound)
    };

    switches.failing.store(true, Ordering::SeqCst);
    let failed = engine.batch_check_and_deduct(batch()).await;
    for i in [0, 1, 3] {
        assert!(matches!(&failed[i], Err(creditd::error::Error::Unavailable(_))), "item {i}: {:?}", failed[i]);
    }
    assert!(failed[2].as_ref().is_ok_and(not_found), "{:?}", failed[2]);
    assert_eq!(engine.get_balance("acme").unwrap().balance, 10.into(), "nothing charged");

    switches.failing.store(false, Ordering::SeqCst);
    let charged = engine.batch_check_and_deduct(batch()).await;
    for (i, credits) in [(0, 1), (1, 2), (3, 4)] {
        let answer = charged[i].as_ref().unwrap();
        assert!(!answer.replayed, "item {i}: the failed attempt left no answer behind");
        assert_eq!(answer.outcome.credits_charged, credits.into(), "item {i}");
    }
    assert!(charged[2].as_ref().is_ok_and(not_found), "{:?}", charged[2]);
    let again = engine.batch_check_and_deduct(batch()).await;
    for i in [0, 1, 3] {
        let answer = again[i].as_ref().unwrap();
        assert!(answer.replayed, "item {i}");
        assert_eq!(answer.outcome, charged[i].as_ref().unwrap().outcome, "item {i}");
    }
    assert_eq!(engine.get_balance("acme").unwrap().balance, 3.into(), "each item charged exactly once");
}

/// In async durability a batch answers from memory until the writer falls behind; a batch
/// that takes the backlog past its bound waits for the store, as a single call does.
#[tokio::test]
async fn async_durability_makes_a_batch_wait_once_the_writer_is_behind() {
    use std::sync::atomic::Ordering;
    let (_dir, engine, switches) = flaky_engine(creditd::journal::Durability::Async, 3).await;
    engine.flush().await.unwrap();

    switches.stalled.store(true, Ordering::SeqCst);
    let within = engine.batch_check_and_deduct(vec![Ok(ask("a0", 1)), Ok(ask("a1", 1))]).await;
    assert!(within.iter().all(Result::is_ok), "within the bound, answered from memory: {within:?}");
    // Its second item is the fourth change waiting for the stalled writer.
    let engine = Arc::new(engine);
    let waiting = tokio::spawn({
        let engine = engine.clone();
        async move { engine.batch_check_and_deduct(vec![Ok(ask("a2", 1)), Ok(ask("a3", 1)), Ok(ask("a4", 1))]).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "answered from memory although the writer is behind");

    switches.stalled.store(false, Ordering::SeqCst);
    let answers = waiting.await.unwrap();
    for answer in &answers {
        assert_eq!(answer.as_ref().unwrap().outcome.credits_charged, 1.into());
    }
    engine.flush().await.unwrap();
    assert_eq!(engine.get_balance("acme").unwrap().balance, 5.into(), "every change charged once");
}
