//! What a failed or stalled store write does: callers hear UNAVAILABLE and nothing is
//! charged, a retry charges once, and `async` callers wait once the writer is far behind.
//! The engine runs over the embedded store behind switches that fail or stall it.

use crate::helpers::*;
use std::sync::Arc;
use std::time::Duration;

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
/// action `op` priced at 1 credit per unit, keeping up to `max_answers` answers in memory.
/// No housekeeping runs.
pub(crate) async fn engine_over_flaky_store(
    dir: &std::path::Path,
    options: creditd::journal::JournalOptions,
    max_answers: usize,
) -> (creditd::engine::Engine, Switches) {
    use creditd::engine::clock::Clock;
    use creditd::engine::{idempotency::Idempotency, Engine, EngineOptions};
    use creditd::journal::Journal;

    let mut inner =
        creditd::store::embedded::EmbeddedStore::open(dir, creditd::store::embedded::Synchronous::Full).unwrap();
    let switches = Switches::default();
    let clock = Arc::new(creditd::engine::clock::ManualClock::new(t0()));
    let idem = Arc::new(Idempotency::new(86_400_000, max_answers));
    let restored = creditd::engine::Restored::from_store(&mut inner, &idem, 0, clock.now()).unwrap();
    let store = FlakyStore { inner, failing: switches.failing.clone(), stalled: switches.stalled.clone() };
    let (journal, _writer) = Journal::start(Box::new(store), idem.clone(), clock.clone(), options);
    let lookup: Arc<dyn creditd::store::RequestLookup> =
        Arc::new(creditd::store::embedded::EmbeddedStore::reader(dir).unwrap());
    let engine = Engine::new(restored, journal, idem, Some(lookup), clock, EngineOptions::default());
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
    let (engine, switches) = engine_over_flaky_store(dir.path(), options, 1000).await;
    (dir, engine, switches)
}

#[derive(Default)]
pub(crate) struct Switches {
    failing: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) stalled: Arc<std::sync::atomic::AtomicBool>,
}

pub(crate) fn ask(id: &str, quantity: u64) -> creditd::engine::request::DeductRequest {
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
