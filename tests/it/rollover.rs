//! Billing cycles: the plan grant renews, unused plan credits expire beyond the rollover
//! cap, purchases carry forward, cycle spend resets; plan changes and subscription states.

use crate::helpers::*;
use creditd::domain::ledger::{EntryKind, LedgerEntry};
use creditd::proto::v1 as pb;
use std::time::Duration;

fn plan(credits: &str, rollover_cap: &str) -> pb::Plan {
    pb::Plan {
        name: "pro".into(),
        credits_per_cycle: credits.into(),
        cycle_anchor_day: 1,
        rollover_cap: rollover_cap.into(),
        price: None,
    }
}

async fn server_with_plan(status: pb::SubscriptionStatus) -> TestServer {
    let s = TestServer::start().await;
    s.admin()
        .create_account(pb::CreateAccountRequest {
            account_id: "acme".into(),
            plan: Some(plan("1000", "100")),
            subscription_status: status as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    s.price("op", "1", 1).await;
    s
}

fn until_next_month() -> Duration {
    // T0 is 2026-11-23 12:00 UTC; the cycle resets on 2026-12-01 00:00 UTC.
    Duration::from_secs((7 * 24 + 12) * 3600 + 3600)
}

#[tokio::test]
async fn the_plan_renews_and_unused_credits_expire_beyond_the_rollover_cap() {
    let s = server_with_plan(pb::SubscriptionStatus::Active).await;
    s.grant("acme", pb::GrantKind::Purchase, "50").await;
    assert!(allowed(&s.deduct("acme", "op", 300).await));
    let before = s.balance("acme").await;
    assert_eq!(
        (before.balance.as_str(), before.free_remaining.as_str(), before.cycle_spend.as_str()),
        ("750", "700", "300")
    );

    s.advance(until_next_month());
    let b = s.balance("acme").await;
    assert_eq!(
        b.cycle_start.unwrap().seconds,
        "2026-12-01T00:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap().timestamp()
    );
    assert_eq!(b.cycle_spend, "0", "cycle spend resets");
    // 1000 new + 100 carried (700 unused, cap 100) + 50 purchased.
    assert_eq!((b.balance.as_str(), b.free_remaining.as_str(), b.purchased_remaining.as_str()), ("1150", "1100", "50"));
    let plan_grants: Vec<&pb::GrantBalance> =
        b.grants.iter().filter(|g| g.kind == pb::GrantKind::Plan as i32).collect();
    assert_eq!(plan_grants.len(), 2);
    let jan = "2027-01-01T00:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap().timestamp();
    assert!(plan_grants.iter().all(|g| g.expires_at.unwrap().seconds == jan), "both expire at the next reset");

    // The ledger tells the story: 700 expired, 100 carried, 1000 renewed.
    s.running.as_ref().unwrap().engine.flush().await.unwrap();
    let ledger = s.ledger();
    let expired: Vec<String> =
        ledger.iter().filter(|e| e.kind == EntryKind::ExpireGrant).map(|e| e.credits.to_string()).collect();
    assert_eq!(expired, ["700"]);
    let renewed = ledger.iter().filter(|e| e.kind == EntryKind::Grant && reason(e) == Some("plan_renewed")).count();
    assert_eq!(renewed, 2, "one at creation, one at the reset");
}

#[tokio::test]
async fn a_cancelled_subscription_does_not_renew_but_purchases_stay() {
    let s = server_with_plan(pb::SubscriptionStatus::Active).await;
    s.grant("acme", pb::GrantKind::Purchase, "50").await;
    s.admin()
        .update_account(pb::UpdateAccountRequest {
            account_id: "acme".into(),
            subscription_status: pb::SubscriptionStatus::Cancelled as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    s.advance(until_next_month());
    let b = s.balance("acme").await;
    assert_eq!(
        (b.balance.as_str(), b.free_remaining.as_str()),
        ("150", "100"),
        "only the carried 100 and the purchase remain"
    );
    let a = s.admin().get_account(pb::GetAccountRequest { account_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!(a.subscription_status, pb::SubscriptionStatus::Expired as i32);
}

#[tokio::test]
async fn a_pending_subscription_gets_its_grant_when_it_becomes_active() {
    let s = server_with_plan(pb::SubscriptionStatus::Pending).await;
    assert_eq!(s.balance("acme").await.balance, "0");
    let update = pb::UpdateAccountRequest {
        account_id: "acme".into(),
        subscription_status: pb::SubscriptionStatus::Active as i32,
        ..Default::default()
    };
    s.admin().update_account(update.clone()).await.unwrap();
    assert_eq!(s.balance("acme").await.balance, "1000");
    s.admin().update_account(update).await.unwrap();
    assert_eq!(s.balance("acme").await.balance, "1000", "one plan grant per cycle");
}

#[tokio::test]
async fn upgrades_now_add_the_difference_and_downgrades_wait_for_the_next_cycle() {
    let s = server_with_plan(pb::SubscriptionStatus::Active).await;
    let change = |credits: &str, timing: pb::PlanChangeTiming| pb::UpdateAccountRequest {
        account_id: "acme".into(),
        plan: Some(plan(credits, "0")),
        plan_change: timing as i32,
        ..Default::default()
    };
    let a = s.admin().update_account(change("1500", pb::PlanChangeTiming::Now)).await.unwrap().into_inner();
    assert_eq!(a.plan.unwrap().credits_per_cycle, "1500");
    assert_eq!(s.balance("acme").await.balance, "1500");

    let a = s.admin().update_account(change("200", pb::PlanChangeTiming::Now)).await.unwrap().into_inner();
    assert_eq!(a.plan.unwrap().credits_per_cycle, "1500", "a downgrade never takes effect mid-cycle");
    assert_eq!(a.pending_plan.unwrap().credits_per_cycle, "200");
    s.advance(until_next_month());
    assert_eq!(s.balance("acme").await.balance, "200", "nothing carried (cap 0), the new plan granted");
}

#[tokio::test]
async fn anchored_cycles_reset_on_their_day() {
    let s = TestServer::start().await;
    let mut p = plan("10", "0");
    p.cycle_anchor_day = 25;
    s.admin()
        .create_account(pb::CreateAccountRequest { account_id: "acme".into(), plan: Some(p), ..Default::default() })
        .await
        .unwrap();
    let b = s.balance("acme").await;
    let day = |d: &str| d.parse::<chrono::DateTime<chrono::Utc>>().unwrap().timestamp();
    assert_eq!(b.cycle_start.unwrap().seconds, day("2026-10-25T00:00:00Z"));
    assert_eq!(b.cycle_end.unwrap().seconds, day("2026-11-25T00:00:00Z"));
    s.advance(Duration::from_secs(2 * 24 * 3600));
    assert_eq!(s.balance("acme").await.cycle_end.unwrap().seconds, day("2026-12-25T00:00:00Z"));
}

fn reason(e: &LedgerEntry) -> Option<&str> {
    e.metadata.get("reason").map(String::as_str)
}
