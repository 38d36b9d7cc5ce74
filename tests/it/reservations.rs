//! Reserve → Commit / Release / Extend / expiry, and the three overage policies.

use crate::helpers::*;
use creditd::domain::ledger::EntryKind;
use creditd::proto::v1 as pb;
use std::time::Duration;

async fn server(credits: &str, policy: pb::OveragePolicy) -> TestServer {
    let s = TestServer::start().await;
    s.admin()
        .create_account(pb::CreateAccountRequest {
            account_id: "acme".into(),
            overage_policy: policy as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    if credits != "0" {
        s.grant("acme", pb::GrantKind::Purchase, credits).await;
    }
    s.price("video", "2", 1).await;
    s
}

#[tokio::test]
async fn a_hold_counts_against_the_balance_until_committed() {
    let s = server("10", pb::OveragePolicy::RecordShortfall).await;
    let h = s.reserve("acme", "video", 4, 60).await;
    assert_eq!(h.decision, pb::Decision::Allowed as i32);
    assert_eq!(h.credits_held, "8");
    assert_eq!(h.balance, "2");
    assert!(h.reservation_id.starts_with("acme/rs_"));
    // The held credits cannot be promised twice.
    let second = s.reserve("acme", "video", 2, 60).await;
    assert_eq!(second.decision, pb::Decision::Denied as i32);
    assert_eq!(second.denial_reason, pb::DenialReason::InsufficientCredits as i32);

    let c = s.commit(&h.reservation_id, 3, true).await.unwrap();
    assert_eq!((c.credits_charged.as_str(), c.credits_released.as_str(), c.shortfall.as_str()), ("6", "2", "0"));
    assert_eq!(c.balance, "4");
    let b = s.balance("acme").await;
    assert_eq!((b.balance.as_str(), b.held.as_str(), b.cycle_spend.as_str()), ("4", "0", "6"));
    assert!(b.holds.is_empty());
    // A hold resolves once.
    let again = s.commit(&h.reservation_id, 1, true).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert!(again.message().contains("committed"), "{}", again.message());
}

#[tokio::test]
async fn partial_commits_settle_long_jobs_in_steps() {
    let s = server("100", pb::OveragePolicy::RecordShortfall).await;
    let h = s.reserve("acme", "video", 10, 600).await;
    let step = s.commit(&h.reservation_id, 3, false).await.unwrap();
    assert_eq!((step.credits_charged.as_str(), step.credits_still_held.as_str()), ("6", "14"));
    let step = s.commit(&h.reservation_id, 4, false).await.unwrap();
    assert_eq!((step.credits_charged.as_str(), step.credits_still_held.as_str()), ("8", "6"));
    assert_eq!(s.balance("acme").await.held, "6");
    let last = s.commit(&h.reservation_id, 1, true).await.unwrap();
    assert_eq!((last.credits_charged.as_str(), last.credits_released.as_str()), ("2", "4"));
    let b = s.balance("acme").await;
    assert_eq!((b.balance.as_str(), b.cycle_spend.as_str(), b.held.as_str()), ("84", "16", "0"));
}

#[tokio::test]
async fn commit_beyond_the_hold_records_the_shortfall_by_default() {
    let s = server("10", pb::OveragePolicy::RecordShortfall).await;
    let h = s.reserve("acme", "video", 2, 60).await; // holds 4
    let c = s.commit(&h.reservation_id, 8, true).await.unwrap(); // costs 16, 10 available
    assert_eq!((c.credits_charged.as_str(), c.shortfall.as_str()), ("10", "6"));
    assert_eq!(c.balance, "0", "the balance never goes negative");
}

#[tokio::test]
async fn commit_beyond_the_hold_with_cap_at_hold_charges_only_the_hold() {
    let s = server("10", pb::OveragePolicy::CapAtHold).await;
    let h = s.reserve("acme", "video", 2, 60).await;
    let c = s.commit(&h.reservation_id, 8, true).await.unwrap();
    assert_eq!((c.credits_charged.as_str(), c.shortfall.as_str()), ("4", "12"));
    assert_eq!(c.balance, "6");
}

#[tokio::test]
async fn commit_beyond_the_hold_with_overdraft_goes_below_zero_to_the_limit() {
    let s = server("10", pb::OveragePolicy::AllowOverdraft).await;
    s.set_limits("acme", pb::Limits { overdraft_limit: "4".into(), ..Default::default() }).await;
    let h = s.reserve("acme", "video", 2, 60).await;
    let c = s.commit(&h.reservation_id, 8, true).await.unwrap(); // 16: 10 from grants, 4 overdraft, 2 short
    assert_eq!((c.credits_charged.as_str(), c.shortfall.as_str()), ("14", "2"));
    let b = s.balance("acme").await;
    assert_eq!((b.balance.as_str(), b.overdraft_used.as_str()), ("-4", "4"));
}

#[tokio::test]
async fn commit_of_nothing_releases_everything() {
    let s = server("10", pb::OveragePolicy::RecordShortfall).await;
    let h = s.reserve("acme", "video", 2, 60).await;
    let c = s.commit(&h.reservation_id, 0, true).await.unwrap();
    assert_eq!((c.credits_charged.as_str(), c.credits_released.as_str()), ("0", "4"));
    assert_eq!(s.balance("acme").await.balance, "10");
}

#[tokio::test]
async fn release_frees_the_hold_and_a_later_commit_fails() {
    let s = server("10", pb::OveragePolicy::RecordShortfall).await;
    let h = s.reserve("acme", "video", 3, 60).await;
    let r = s
        .metering()
        .release(pb::ReleaseRequest { request_id: rid(), reservation_id: h.reservation_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.credits_released.as_str(), r.balance.as_str()), ("6", "10"));
    let late = s.commit(&h.reservation_id, 1, true).await.unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition);
    assert!(late.message().contains("released"), "{}", late.message());
    assert_eq!(s.balance("acme").await.cycle_spend, "0");
}

#[tokio::test]
async fn holds_expire_on_the_monotonic_clock() {
    let s = server("10", pb::OveragePolicy::RecordShortfall).await;
    let h = s.reserve("acme", "video", 3, 60).await;
    // A wall-clock step (NTP) does not expire anything.
    s.clock.set_wall(t0() + chrono::Duration::hours(5));
    assert_eq!(s.balance("acme").await.held, "6");
    s.advance(Duration::from_secs(59));
    assert_eq!(s.balance("acme").await.held, "6");
    s.advance(Duration::from_secs(1));
    let b = s.balance("acme").await;
    assert_eq!((b.held.as_str(), b.balance.as_str()), ("0", "10"));
    let late = s.commit(&h.reservation_id, 1, true).await.unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition);
    assert!(late.message().contains("expired"), "{}", late.message());
}

#[tokio::test]
async fn the_sweeper_expires_holds_of_idle_accounts() {
    let s = TestServer::start_with(|c| c.sweep.holds_interval_ms = 20).await;
    s.account_with("acme", "10").await;
    s.price("video", "2", 1).await;
    s.reserve("acme", "video", 3, 1).await;
    s.advance(Duration::from_secs(2));
    // No request touches the account (a read would expire it lazily): watch the store for
    // the sweeper's expire_hold entry instead.
    for _ in 0..300 {
        let expired = s.ledger().iter().filter(|e| e.kind == EntryKind::ExpireHold).count();
        if expired == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the hold was not expired by the sweeper");
}

#[tokio::test]
async fn extend_moves_the_expiry() {
    let s = server("10", pb::OveragePolicy::RecordShortfall).await;
    let h = s.reserve("acme", "video", 3, 60).await;
    s.advance(Duration::from_secs(50));
    let e = s
        .metering()
        .extend(pb::ExtendRequest { request_id: rid(), reservation_id: h.reservation_id.clone(), ttl_seconds: 120 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.expires_at.unwrap().seconds, (t0() + chrono::Duration::seconds(170)).timestamp());
    s.advance(Duration::from_secs(100));
    assert!(s.commit(&h.reservation_id, 3, true).await.is_ok(), "still live 150 s after reserve");
}

#[tokio::test]
async fn gauge_meters_are_held_until_the_hold_resolves() {
    let s = server("1000", pb::OveragePolicy::RecordShortfall).await;
    s.set_limits(
        "acme",
        pb::Limits {
            meters: vec![pb::MeterLimit { name: "seats".into(), kind: pb::MeterKind::Gauge as i32, limit: 3 }],
            ..Default::default()
        },
    )
    .await;
    s.price_entry(pb::PriceEntry {
        action: "seat".into(),
        unit_size: 1,
        credits_per_unit: "1".into(),
        meter: "seats".into(),
        ..Default::default()
    })
    .await;
    let a = s.reserve("acme", "seat", 2, 600).await;
    assert_eq!(a.decision, pb::Decision::Allowed as i32);
    let b = s.reserve("acme", "seat", 2, 600).await;
    assert_eq!(b.denial_reason, pb::DenialReason::MeterLimitReached as i32);
    assert_eq!(b.denied_meter, "seats");
    s.metering().release(pb::ReleaseRequest { request_id: rid(), reservation_id: a.reservation_id }).await.unwrap();
    assert_eq!(s.reserve("acme", "seat", 3, 600).await.decision, pb::Decision::Allowed as i32);
}
