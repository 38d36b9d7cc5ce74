//! Every denial reason, and denials as errors on request. A denial changes no balance.

use crate::helpers::*;
use creditd::proto::v1 as pb;
use tonic_types::StatusExt;

async fn server_with_account(credits: &str) -> TestServer {
    let s = TestServer::start().await;
    s.account_with("acme", credits).await;
    s.price("op", "1", 1).await;
    s
}

#[tokio::test]
async fn insufficient_credits() {
    let s = server_with_account("5").await;
    let r = s.deduct("acme", "op", 6).await;
    assert_eq!(denial(&r), pb::DenialReason::InsufficientCredits);
    assert_eq!(r.credits_charged, "0");
    assert!(r.ledger_entry_id.starts_with("le_"), "denied attempts are logged too");
    assert_eq!(s.balance("acme").await.balance, "5");
}

#[tokio::test]
async fn spending_cap_counts_spend_and_holds() {
    let s = server_with_account("100").await;
    s.set_limits("acme", pb::Limits { spending_cap: "10".into(), ..Default::default() }).await;
    assert!(allowed(&s.deduct("acme", "op", 6).await));
    let hold = s.reserve("acme", "op", 3, 60).await;
    assert_eq!(hold.decision, pb::Decision::Allowed as i32);
    let r = s.deduct("acme", "op", 2).await;
    assert_eq!(denial(&r), pb::DenialReason::SpendingCapReached);
    assert!(allowed(&s.deduct("acme", "op", 1).await), "6 spent + 3 held + 1 = the cap exactly");
    assert_eq!(s.balance("acme").await.cycle_spend, "7");
}

#[tokio::test]
async fn user_and_workspace_caps() {
    let s = server_with_account("100").await;
    s.set_limits(
        "acme",
        pb::Limits {
            default_user_cap: "5".into(),
            user_caps: [("boss".to_string(), "50".to_string())].into(),
            default_workspace_cap: "8".into(),
            ..Default::default()
        },
    )
    .await;
    let ask = |user: &str, ws: &str, q: u64| {
        let mut r = deduct_request("acme", "op", q);
        r.user_id = user.into();
        r.workspace_id = ws.into();
        r
    };
    assert!(allowed(&s.deduct_req(ask("alice", "", 5)).await.unwrap()));
    assert_eq!(denial(&s.deduct_req(ask("alice", "", 1)).await.unwrap()), pb::DenialReason::UserCapReached);
    assert!(allowed(&s.deduct_req(ask("boss", "", 20)).await.unwrap()), "an override beats the default");
    assert!(allowed(&s.deduct_req(ask("bob", "dev", 4)).await.unwrap()));
    assert!(allowed(&s.deduct_req(ask("carol", "dev", 4)).await.unwrap()));
    assert_eq!(denial(&s.deduct_req(ask("dave", "dev", 1)).await.unwrap()), pb::DenialReason::WorkspaceCapReached);
    assert!(allowed(&s.deduct_req(ask("dave", "prod", 1)).await.unwrap()));
    assert_eq!(s.balance("acme").await.cycle_spend, "34");
}

#[tokio::test]
async fn meters_name_the_meter_that_is_full() {
    let s = server_with_account("1000").await;
    s.set_limits(
        "acme",
        pb::Limits {
            meters: vec![pb::MeterLimit {
                name: "ai_tokens".into(),
                kind: pb::MeterKind::CycleCounter as i32,
                limit: 2500,
            }],
            ..Default::default()
        },
    )
    .await;
    s.price_entry(pb::PriceEntry {
        action: "chat".into(),
        unit_size: 1000,
        credits_per_unit: "0.01".into(),
        meter: "ai_tokens".into(),
        ..Default::default()
    })
    .await;
    assert!(allowed(&s.deduct("acme", "chat", 2000).await));
    let r = s.deduct("acme", "chat", 501).await;
    assert_eq!(denial(&r), pb::DenialReason::MeterLimitReached);
    assert_eq!(r.denied_meter, "ai_tokens");
    assert!(allowed(&s.deduct("acme", "chat", 500).await));
    let b = s.balance("acme").await;
    assert_eq!((b.meters[0].used, b.meters[0].limit), (2500, 2500));
}

#[tokio::test]
async fn suspended_unknown_action_and_missing_account() {
    let s = server_with_account("100").await;
    assert_eq!(denial(&s.deduct("acme", "teleport", 1).await), pb::DenialReason::UnknownAction);
    assert_eq!(denial(&s.deduct("nobody", "op", 1).await), pb::DenialReason::AccountNotFound);
    s.admin()
        .update_account(pb::UpdateAccountRequest {
            account_id: "acme".into(),
            status: pb::AccountStatus::Suspended as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(denial(&s.deduct("acme", "op", 1).await), pb::DenialReason::AccountSuspended);
    assert_eq!(s.balance("acme").await.balance, "100");
}

#[tokio::test]
async fn deny_as_error_gives_resource_exhausted_with_quota_failure() {
    let s = server_with_account("1").await;
    let mut req = deduct_request("acme", "op", 2);
    req.deny_as_error = true;
    let status = s.deduct_req(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let details = status.get_error_details();
    let quota = details.quota_failure().expect("a QuotaFailure detail");
    assert_eq!(quota.violations[0].subject, "account:acme");
    assert!(quota.violations[0].description.contains("INSUFFICIENT_CREDITS"));
    // An allowed request with the flag set is an ordinary answer.
    let mut req = deduct_request("acme", "op", 1);
    req.deny_as_error = true;
    assert!(allowed(&s.deduct_req(req).await.unwrap()));
}

#[tokio::test]
async fn overdraft_lets_the_balance_go_negative_only_to_its_limit() {
    let s = server_with_account("5").await;
    s.set_limits("acme", pb::Limits { overdraft_limit: "3".into(), ..Default::default() }).await;
    assert!(allowed(&s.deduct("acme", "op", 7).await));
    assert_eq!(s.balance("acme").await.balance, "-2");
    assert_eq!(denial(&s.deduct("acme", "op", 2).await), pb::DenialReason::InsufficientCredits);
    assert!(allowed(&s.deduct("acme", "op", 1).await));
    let b = s.balance("acme").await;
    assert_eq!((b.balance.as_str(), b.overdraft_used.as_str()), ("-3", "3"));
    // A top-up repays the overdraft first.
    s.grant("acme", pb::GrantKind::Purchase, "10").await;
    let b = s.balance("acme").await;
    assert_eq!((b.balance.as_str(), b.overdraft_used.as_str()), ("7", "0"));
}
