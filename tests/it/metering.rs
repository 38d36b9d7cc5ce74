//! The hot path works end to end: deductions, dry runs, batches, balances, burn-down.

use crate::helpers::*;
use creditd::proto::v1 as pb;

#[tokio::test]
async fn deduct_charges_the_rounded_up_cost_from_grants_in_burn_down_order() {
    let s = TestServer::start().await;
    s.account_with("acme", "0").await;
    s.grant("acme", pb::GrantKind::Purchase, "100").await;
    let promo = s.grant("acme", pb::GrantKind::Promo, "0.002").await.grant.unwrap();
    // 0.003 per 1k tokens: 1 token costs 0.000003, rounded up at 6 digits.
    s.price("chat", "0.003", 1000).await;

    let r = s.deduct("acme", "chat", 1).await;
    assert!(allowed(&r), "{r:?}");
    assert_eq!(r.credits_charged, "0.000003");
    assert_eq!(r.allocations.len(), 1);
    assert_eq!(r.allocations[0].grant_id, promo.grant_id, "promo (priority 20) pays before purchase (30)");
    assert_eq!(r.balance, "100.001997");
    assert_eq!(r.cycle_spend, "0.000003");
    assert!(r.ledger_entry_id.starts_with("le_"));
    assert!(!r.replayed);

    // The next one drains the promo and spills into the purchase grant.
    let r = s.deduct("acme", "chat", 1000).await;
    assert_eq!(r.credits_charged, "0.003");
    let taken: Vec<(&str, &str)> = r.allocations.iter().map(|a| (a.grant_id.as_str(), a.credits.as_str())).collect();
    assert_eq!(taken.len(), 2);
    assert_eq!(taken[0], (promo.grant_id.as_str(), "0.001997"));
    assert_eq!(taken[1].1, "0.001003");
    assert_eq!(r.allocations[1].grant_kind, pb::GrantKind::Purchase as i32);

    let b = s.balance("acme").await;
    assert_eq!(b.balance, "99.998997");
    assert_eq!(b.cycle_spend, "0.003003");
    assert_eq!(b.grants.len(), 1, "the exhausted promo grant is gone from the live view");
}

#[tokio::test]
async fn dry_run_answers_without_changing_anything() {
    let s = TestServer::start().await;
    s.account_with("acme", "10").await;
    s.price("image", "2.5", 1).await;
    let before = s.balance("acme").await;
    let mut req = deduct_request("acme", "image", 2);
    req.dry_run = true;
    req.request_id.clear();
    let r = s.deduct_req(req).await.unwrap();
    assert!(allowed(&r));
    assert_eq!(r.credits_charged, "5");
    assert_eq!(r.ledger_entry_id, "", "a dry run writes no ledger entry");
    assert_eq!(r.allocations.len(), 1, "a dry run shows which grants would pay");
    assert_eq!(s.balance("acme").await, before);

    let mut req = deduct_request("acme", "image", 5);
    req.dry_run = true;
    let r = s.deduct_req(req).await.unwrap();
    assert_eq!(denial(&r), pb::DenialReason::InsufficientCredits);
    assert_eq!(s.balance("acme").await, before);
}

#[tokio::test]
async fn zero_priced_actions_are_allowed_and_free() {
    let s = TestServer::start().await;
    s.account_with("acme", "0").await;
    s.price("upscale", "0", 1).await;
    let r = s.deduct("acme", "upscale", 3).await;
    assert!(allowed(&r), "{r:?}");
    assert_eq!(r.credits_charged, "0");
}

#[tokio::test]
async fn batch_answers_each_item_on_its_own() {
    let s = TestServer::start().await;
    s.account_with("a", "3").await;
    s.account_with("b", "100").await;
    s.price("op", "1", 1).await;
    let mut items: Vec<pb::CheckAndDeductRequest> = (0..5).map(|_| deduct_request("a", "op", 1)).collect();
    items.push(deduct_request("b", "op", 50));
    items.push(deduct_request("missing", "op", 1));
    let r = s.metering().batch_check_and_deduct(pb::BatchCheckAndDeductRequest { items }).await.unwrap().into_inner();
    let decisions: Vec<i32> = r.results.iter().map(|x| x.response.as_ref().unwrap().decision).collect();
    let (ok, no) = (pb::Decision::Allowed as i32, pb::Decision::Denied as i32);
    assert_eq!(decisions, vec![ok, ok, ok, no, no, ok, no]);
    assert_eq!(r.results[6].response.as_ref().unwrap().denial_reason, pb::DenialReason::AccountNotFound as i32);
    assert_eq!(s.balance("a").await.balance, "0");
    assert_eq!(s.balance("b").await.balance, "50");
}

#[tokio::test]
async fn get_balance_reports_grants_holds_limits_and_meters() {
    let s = TestServer::start().await;
    s.admin()
        .create_account(pb::CreateAccountRequest {
            account_id: "acme".into(),
            plan: Some(pb::Plan {
                name: "pro".into(),
                credits_per_cycle: "1000".into(),
                cycle_anchor_day: 1,
                ..Default::default()
            }),
            limits: Some(pb::Limits {
                spending_cap: "500".into(),
                alert_threshold: "400".into(),
                low_balance_threshold: "10%".into(),
                meters: vec![pb::MeterLimit { name: "seats".into(), kind: pb::MeterKind::Gauge as i32, limit: 10 }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    s.grant("acme", pb::GrantKind::Purchase, "50").await;
    s.price_entry(pb::PriceEntry {
        action: "seat".into(),
        unit_size: 1,
        credits_per_unit: "5".into(),
        meter: "seats".into(),
        ..Default::default()
    })
    .await;
    let hold = s.reserve("acme", "seat", 2, 600).await;
    let b = s.balance("acme").await;
    assert_eq!(b.balance, "1040");
    assert_eq!(b.held, "10");
    assert_eq!(b.free_remaining, "1000");
    assert_eq!(b.purchased_remaining, "50");
    assert_eq!(b.spending_cap, "500");
    assert_eq!(b.alert_threshold, "400");
    assert_eq!(b.low_balance_threshold, "10%");
    assert_eq!(b.holds.len(), 1);
    assert_eq!(b.holds[0].reservation_id, hold.reservation_id);
    assert_eq!(b.meters.len(), 1);
    assert_eq!((b.meters[0].used, b.meters[0].limit), (2, 10));
    assert_eq!(
        b.cycle_start.unwrap().seconds,
        "2026-11-01T00:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap().timestamp()
    );
    assert_eq!(
        b.cycle_end.unwrap().seconds,
        "2026-12-01T00:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap().timestamp()
    );
}

#[tokio::test]
async fn concurrent_clients_racing_for_the_last_credits_never_overspend() {
    let s = TestServer::start().await;
    s.account_with("acme", "10").await;
    s.price("op", "1", 1).await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let mut m = s.metering();
        tasks.push(tokio::spawn(async move {
            let mut allowed_here = 0;
            for _ in 0..3 {
                let r = m.check_and_deduct(deduct_request("acme", "op", 1)).await.unwrap().into_inner();
                if r.decision == pb::Decision::Allowed as i32 {
                    allowed_here += 1;
                } else {
                    assert_eq!(r.denial_reason, pb::DenialReason::InsufficientCredits as i32);
                }
            }
            allowed_here
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 10, "exactly the affordable number of requests succeed");
    let b = s.balance("acme").await;
    assert_eq!(b.balance, "0");
    assert_eq!(b.cycle_spend, "10");
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let s = TestServer::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel());
    for service in ["creditd.v1.Metering", "creditd.v1.Admin", "creditd.v1.Reporting"] {
        let r =
            health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service}");
    }
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(s.channel());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected {reply:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["creditd.v1.Metering", "creditd.v1.Admin", "creditd.v1.Reporting", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
}
