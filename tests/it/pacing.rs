//! Requests give the core to background work that fell behind: an `async` journal writer,
//! the eviction sweep that holds the answers kept in memory to their bound. Nothing is lost
//! or charged twice meanwhile.

use crate::store_failures::{ask, engine_over_flaky_store};
use std::time::Duration;

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
    let (engine, switches) = engine_over_flaky_store(dir.path(), options, 1000).await;
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

/// The answers kept in memory past their bound, with an eviction sweep that does not run (on
/// a core kept busy by requests, at the lowest priority, it got no CPU): once the bound has
/// been passed for two eviction periods, requests pause now and then, until the sweep has
/// brought the answers back under it.
#[tokio::test]
async fn requests_pause_for_an_eviction_sweep_that_fell_behind_until_it_has_run() {
    use creditd::engine::idempotency::EVICTION_PERIOD;
    let dir = tempfile::tempdir().unwrap();
    let bound = 6;
    let (engine, _switches) = engine_over_flaky_store(dir.path(), Default::default(), bound).await;
    let mut asked = Vec::new();
    let mut deduct = async |id: String| {
        let answer = engine.check_and_deduct(ask(&id, 1)).await.unwrap();
        assert!(!answer.replayed);
        asked.push((id, answer.outcome.denial.is_none()));
    };
    for n in 0.. {
        if engine.answers_in_memory() > bound {
            break;
        }
        deduct(format!("s{n}")).await;
    }
    assert_eq!(engine.sweep_pauses(), 0, "just over the bound: the sweep is not behind yet");

    tokio::time::sleep(2 * EVICTION_PERIOD + Duration::from_millis(50)).await;
    deduct("late".into()).await;
    assert_eq!(engine.sweep_pauses(), 1, "over the bound for two eviction periods");

    engine.flush().await.unwrap();
    assert!(engine.evict_answers() > 0);
    assert!(engine.answers_in_memory() <= bound, "{}", engine.answers_in_memory());
    deduct("after".into()).await;
    assert_eq!(engine.sweep_pauses(), 1, "the sweep has run: no more pauses (its clock starts again)");

    engine.flush().await.unwrap();
    let allowed = asked.iter().filter(|(_, allowed)| *allowed).count();
    assert!(allowed > 0);
    let balance = engine.get_balance("acme").unwrap().balance;
    assert_eq!(balance, (10 - allowed as u64).into(), "every allowed request charged once");
    for (id, _) in &asked {
        let replay = engine.check_and_deduct(ask(id, 1)).await.unwrap();
        assert!(replay.replayed, "{id}: answered once, from memory or from the store");
    }
}
