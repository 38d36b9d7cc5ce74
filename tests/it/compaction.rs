//! Idle accounts kept compact: they answer as if they had never been compacted, keep their
//! holds' deadlines and what only memory knew, and a cycle turn on them is durable.

use crate::helpers::*;
use std::time::Duration;

/// A server whose own compaction sweep is off, so only the test's sweeps count.
async fn server() -> TestServer {
    TestServer::start_with(|c| c.sweep.compact_interval_ms = 0).await
}

/// Two sweeps, so every account unused since the first is compacted; how many were.
fn compact_idle(s: &TestServer) -> usize {
    let engine = &s.running.as_ref().unwrap().engine;
    engine.compact_idle() + engine.compact_idle()
}

#[tokio::test]
async fn a_compacted_account_answers_exactly_as_before() {
    let s = server().await;
    s.account_with("acme", "100").await;
    s.account_with("busy", "100").await;
    s.price("video", "2", 1).await;
    let done = s.reserve("acme", "video", 3, 60).await;
    s.commit(&done.reservation_id, 3, true).await.unwrap();
    let live = s.reserve("acme", "video", 5, 60).await;
    assert!(allowed(&s.deduct("acme", "video", 1).await));
    let before = s.balance("acme").await;
    assert_eq!((before.balance.as_str(), before.held.as_str()), ("82", "10"));

    let engine = s.running.as_ref().unwrap().engine.clone();
    engine.compact_idle();
    s.deduct("busy", "video", 1).await;
    assert_eq!(engine.compact_idle(), 1, "only the account unused for a whole sweep");

    assert_eq!(s.balance("acme").await, before, "the same balance, holds and usage");
    // Memory still knows how the first hold ended.
    let late = s.commit(&done.reservation_id, 1, true).await.unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition);
    assert!(late.message().contains("already committed"), "{}", late.message());

    // The live hold kept its deadline: not expired at 59 s, expired at 61 s.
    assert_eq!(compact_idle(&s), 2);
    s.advance(Duration::from_secs(59));
    assert_eq!(engine.sweep_holds(), 0);
    assert_eq!(compact_idle(&s), 0, "a sweep that finds nothing due leaves a compact account as it is");
    s.advance(Duration::from_secs(2));
    assert_eq!(engine.sweep_holds(), 1);
    let after = s.balance("acme").await;
    assert_eq!((after.balance.as_str(), after.held.as_str()), ("92", "0"));
    assert!(s.commit(&live.reservation_id, 1, true).await.unwrap_err().message().contains("already expired"));

    // What was durable before compaction is what comes back.
    assert_eq!(compact_idle(&s), 1);
    let s = s.restart().await;
    assert_eq!(s.balance("acme").await.balance, "92");
}

#[tokio::test]
async fn a_cycle_turn_on_a_compact_account_is_written_and_leaves_it_compact() {
    let s = server().await;
    s.account_on_plan("idle", "10").await;
    s.price("video", "1", 1).await;
    assert!(allowed(&s.deduct("idle", "video", 4).await));
    assert_eq!(compact_idle(&s), 1);

    s.advance(Duration::from_secs(9 * 24 * 3600));
    let engine = s.running.as_ref().unwrap().engine.clone();
    assert_eq!(engine.sweep_cycles(), 1);
    engine.flush().await.unwrap();
    assert_eq!(compact_idle(&s), 0, "compact again right after the turn, not left decoded");
    let renewed = s.ledger().iter().filter(|e| e.metadata.get("reason").is_some_and(|r| r == "plan_renewed")).count();
    assert_eq!(renewed, 2, "the opening grant and the renewal, written from the compact state");

    let s = s.restart().await;
    let b = s.balance("idle").await;
    assert_eq!((b.balance.as_str(), b.cycle_spend.as_str()), ("10", "0"), "the new cycle survived a restart");
}

#[tokio::test]
async fn requests_and_a_fast_compaction_sweep_race_without_losing_a_charge() {
    let s = TestServer::start_with(|c| c.sweep.compact_interval_ms = 1).await;
    s.account_with("acme", "1000").await;
    s.price("video", "1", 1).await;
    for _ in 0..40 {
        assert!(allowed(&s.deduct("acme", "video", 1).await));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_eq!(s.balance("acme").await.balance, "960");
    let charged = s.ledger().iter().filter(|e| e.kind == creditd::domain::ledger::EntryKind::Deduct).count();
    assert_eq!(charged, 40);
    let s = s.restart().await;
    assert_eq!(s.balance("acme").await.balance, "960");
}
