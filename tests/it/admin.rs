//! Admin: accounts, grants with their payment records, revocation, limits, prices, audit.

use crate::helpers::*;
use creditd::proto::v1 as pb;

fn audit_rows(s: &TestServer) -> Vec<(String, String, String, String, String)> {
    let conn = rusqlite::Connection::open(creditd::store::embedded::EmbeddedStore::path(&s.data_dir)).unwrap();
    let mut stmt = conn
        .prepare("SELECT actor, operation, account_id, before_json, after_json FROM audit_log ORDER BY id")
        .unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))).unwrap();
    rows.map(Result::unwrap).collect()
}

#[tokio::test]
async fn accounts_are_created_once_and_read_back() {
    let s = TestServer::start().await;
    let create = pb::CreateAccountRequest {
        request_id: "create-1".into(),
        account_id: "acme".into(),
        display_name: "Acme Corp".into(),
        credit_currency: "EUR".into(),
        precision: 2,
        ..Default::default()
    };
    let a = s.admin().create_account(create.clone()).await.unwrap().into_inner();
    assert_eq!((a.display_name.as_str(), a.precision, a.credit_currency.as_str()), ("Acme Corp", 2, "EUR"));
    // The same request again is a replay; another create of the same id is refused.
    assert_eq!(s.admin().create_account(create.clone()).await.unwrap().into_inner().account_id, "acme");
    let dup = s
        .admin()
        .create_account(pb::CreateAccountRequest { request_id: "create-2".into(), ..create })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    let got = s.admin().get_account(pb::GetAccountRequest { account_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!(got, a);
    let missing = s.admin().get_account(pb::GetAccountRequest { account_id: "nobody".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn precision_rounds_costs_up_per_account() {
    let s = TestServer::start().await;
    s.admin()
        .create_account(pb::CreateAccountRequest { account_id: "cents".into(), precision: 2, ..Default::default() })
        .await
        .unwrap();
    s.grant("cents", pb::GrantKind::Purchase, "10").await;
    s.price("chat", "0.003", 1000).await;
    assert_eq!(s.deduct("cents", "chat", 1).await.credits_charged, "0.01");
}

#[tokio::test]
async fn grants_record_money_paid_and_expire_when_told() {
    let s = TestServer::start().await;
    s.account_with("acme", "0").await;
    let expires = creditd::api::convert::timestamp(t0() + chrono::Duration::days(3));
    let r = s
        .admin()
        .grant_credits(pb::GrantCreditsRequest {
            request_id: rid(),
            account_id: "acme".into(),
            kind: pb::GrantKind::Promo as i32,
            amount: "30".into(),
            expires_at: Some(expires),
            external_reference: "campaign-7".into(),
            money_paid: Some(pb::Money { amount: "0".into(), currency: "EUR".into() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let g = r.grant.unwrap();
    assert_eq!((g.priority, g.external_reference.as_str(), g.remaining.as_str()), (20, "campaign-7", "30"));
    assert_eq!(g.money_paid.unwrap().currency, "EUR");
    let bought = s
        .admin()
        .grant_credits(pb::GrantCreditsRequest {
            request_id: rid(),
            account_id: "acme".into(),
            kind: pb::GrantKind::Purchase as i32,
            amount: "100".into(),
            external_reference: "inv-42".into(),
            money_paid: Some(pb::Money { amount: "20.00".into(), currency: "USD".into() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bought.balance, "130");
    s.advance(std::time::Duration::from_secs(3 * 24 * 3600));
    let b = s.balance("acme").await;
    assert_eq!(b.balance, "100", "the promo expired, the purchase did not");
    let past = s
        .admin()
        .grant_credits(pb::GrantCreditsRequest {
            request_id: rid(),
            account_id: "acme".into(),
            kind: pb::GrantKind::Promo as i32,
            amount: "1".into(),
            expires_at: Some(creditd::api::convert::timestamp(t0())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(past.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn revoking_takes_back_what_is_left_but_not_what_is_held() {
    let s = TestServer::start().await;
    s.account_with("acme", "0").await;
    let g = s.grant("acme", pb::GrantKind::Purchase, "10").await.grant.unwrap();
    s.price("op", "1", 1).await;
    assert!(allowed(&s.deduct("acme", "op", 2).await));
    let hold = s.reserve("acme", "op", 3, 60).await;
    let revoke = pb::RevokeGrantRequest {
        request_id: rid(),
        account_id: "acme".into(),
        grant_id: g.grant_id.clone(),
        reason: "chargeback".into(),
    };
    let r = s.admin().revoke_grant(revoke.clone()).await.unwrap().into_inner();
    assert_eq!((r.credits_revoked.as_str(), r.balance.as_str()), ("5", "0"));
    assert!(r.grant.unwrap().revoked);
    // The held part still settles: the work was promised.
    let c = s.commit(&hold.reservation_id, 3, true).await.unwrap();
    assert_eq!(c.credits_charged, "3");
    assert!(s.admin().revoke_grant(revoke).await.unwrap().into_inner().replayed);
    let again = s
        .admin()
        .revoke_grant(pb::RevokeGrantRequest {
            request_id: rid(),
            account_id: "acme".into(),
            grant_id: g.grant_id,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::NotFound, "nothing is left of it");
}

#[tokio::test]
async fn limits_are_validated_as_a_whole_and_replaced() {
    let s = TestServer::start().await;
    s.account_with("acme", "10").await;
    let bad = s
        .admin()
        .set_limits(pb::SetLimitsRequest {
            account_id: "acme".into(),
            limits: Some(pb::Limits {
                spending_cap: "100".into(),
                alert_threshold: "150".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("alert_threshold"), "{}", bad.message());
    let a = s
        .admin()
        .set_limits(pb::SetLimitsRequest {
            account_id: "acme".into(),
            limits: Some(pb::Limits { spending_cap: "100".into(), alert_threshold: "80".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let l = a.limits.unwrap();
    assert_eq!((l.spending_cap.as_str(), l.alert_threshold.as_str()), ("100", "80"));
}

#[tokio::test]
async fn prices_are_versioned_with_per_account_overrides() {
    let s = TestServer::start().await;
    s.account_with("acme", "100").await;
    s.account_with("other", "100").await;
    s.price("image", "2", 1).await;
    let v = s
        .admin()
        .upsert_prices(pb::UpsertPricesRequest {
            account_id: "acme".into(),
            entries: vec![pb::PriceEntry {
                action: "image".into(),
                unit_size: 1,
                credits_per_unit: "1.5".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(v, 2);
    let r = s.deduct("acme", "image", 2).await;
    assert_eq!((r.credits_charged.as_str(), r.price_version), ("3", 2));
    assert_eq!(s.deduct("other", "image", 2).await.credits_charged, "4");
    let acme_view =
        s.admin().list_prices(pb::ListPricesRequest { account_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!(acme_view.entries[0].credits_per_unit, "1.5");
    let global = s.admin().list_prices(pb::ListPricesRequest::default()).await.unwrap().into_inner();
    assert_eq!((global.version, global.entries[0].credits_per_unit.as_str()), (2, "2"));
    s.admin()
        .upsert_prices(pb::UpsertPricesRequest { remove_actions: vec!["image".into()], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(
        denial(&s.deduct("other", "image", 1).await),
        pb::DenialReason::UnknownAction,
        "a removed action is never free"
    );
    assert!(allowed(&s.deduct("acme", "image", 1).await), "the override stays");
}

#[tokio::test]
async fn every_admin_change_is_audited_with_who_before_and_after() {
    let s = TestServer::start().await;
    let mut req = tonic::Request::new(pb::CreateAccountRequest { account_id: "acme".into(), ..Default::default() });
    req.metadata_mut().insert(creditd::api::ACTOR_HEADER, "alice@billing".parse().unwrap());
    s.admin().create_account(req).await.unwrap();
    let mut req = tonic::Request::new(pb::SetLimitsRequest {
        account_id: "acme".into(),
        limits: Some(pb::Limits { spending_cap: "50".into(), ..Default::default() }),
        ..Default::default()
    });
    req.metadata_mut().insert(creditd::api::ACTOR_HEADER, "bob@support".parse().unwrap());
    s.admin().set_limits(req).await.unwrap();
    s.running.as_ref().unwrap().engine.flush().await.unwrap();
    let rows = audit_rows(&s);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.as_str(), rows[0].3.as_str()),
        ("alice@billing", "CreateAccount", "acme", "null")
    );
    assert_eq!((rows[1].0.as_str(), rows[1].1.as_str()), ("bob@support", "SetLimits"));
    let before: serde_json::Value = serde_json::from_str(&rows[1].3).unwrap();
    let after: serde_json::Value = serde_json::from_str(&rows[1].4).unwrap();
    assert_eq!(before["limits"]["spending_cap"], serde_json::Value::Null);
    assert_eq!(after["limits"]["spending_cap"], "50");
}
