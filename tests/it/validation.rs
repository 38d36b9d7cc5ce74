//! Every bad input gets a clear error and changes nothing (SPEC §2, §8).
//!
//! Each case checks the gRPC code, that the message names the offending field, and that the
//! account's GetBalance answer (balance, cycle spend, grants, holds…) is byte-identical
//! before and after the call.

use crate::helpers::*;
use creditd::proto::v1 as pb;
use prost::Message;
use std::collections::HashMap;
use std::fmt::Debug;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Malformed wire decimals, and what is wrong with each.
const BAD_DECIMALS: &[(&str, &str)] = &[
    ("1e5", "exponent"),
    ("-1", "sign"),
    ("+1", "plus sign"),
    ("1.", "no fractional digits after the point"),
    (".5", "no whole digits before the point"),
    ("0.0000000001", "10 fractional digits"),
    ("12345678901234567890123456789", "29 significant digits"),
    ("12345678901234567890.123456789", "29 significant digits with a fraction"),
    ("", "empty"),
    ("abc", "not a number"),
    (" 1", "leading blank"),
    ("1,5", "comma"),
];

/// The account's balance view, encoded: equal bytes mean nothing observable changed.
async fn snapshot(s: &TestServer, account: &str) -> Vec<u8> {
    s.balance(account).await.encode_to_vec()
}

/// Asserts that `result` failed with `code`, with a message naming `field` (when given),
/// and that `account` looks exactly as it did in `before`.
async fn rejected<T: Debug>(
    s: &TestServer,
    account: &str,
    before: &[u8],
    result: Result<T, Status>,
    code: Code,
    field: Option<&str>,
    case: &str,
) -> Status {
    let status = match result {
        Ok(v) => {
            let mut shown = format!("{v:?}");
            if shown.len() > 2000 {
                shown.truncate(shown.char_indices().nth(2000).map_or(shown.len(), |(i, _)| i));
                shown.push('…');
            }
            panic!("{case}: expected {code:?}, got a success: {shown}")
        }
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{case}: wrong code; message: {}", status.message());
    if let Some(field) = field {
        assert!(
            status.message().contains(field),
            "{case}: the message should name the field {field:?}, got {:?}",
            status.message()
        );
    }
    let after = snapshot(s, account).await;
    if after != before {
        panic!(
            "{case}: a rejected call changed account {account}:\nbefore: {:?}\nafter:  {:?}",
            pb::GetBalanceResponse::decode(before).unwrap(),
            pb::GetBalanceResponse::decode(after.as_slice()).unwrap()
        );
    }
    status
}

async fn invalid<T: Debug>(
    s: &TestServer,
    before: &[u8],
    result: Result<T, Status>,
    field: &str,
    case: &str,
) -> Status {
    rejected(s, "acme", before, result, Code::InvalidArgument, Some(field), case).await
}

/// A server with account `acme` that has history: two grants, a deduction (cycle spend),
/// limits and a live hold, so that any accidental change shows in its balance view.
/// Returns the server and the live reservation id.
async fn fixture() -> (TestServer, String) {
    fixture_with(|_| {}).await
}

async fn fixture_with(tweak: impl FnOnce(&mut creditd::config::Config)) -> (TestServer, String) {
    let s = TestServer::start_with(tweak).await;
    s.account_with("acme", "100").await;
    s.grant("acme", pb::GrantKind::Promo, "5").await;
    s.price("chat", "0.5", 1).await;
    s.set_limits(
        "acme",
        pb::Limits { spending_cap: "1000".into(), alert_threshold: "500".into(), ..Default::default() },
    )
    .await;
    let r = s.deduct("acme", "chat", 3).await;
    assert!(allowed(&r), "{r:?}");
    let hold = s.reserve("acme", "chat", 4, 3600).await;
    assert!(!hold.reservation_id.is_empty(), "{hold:?}");
    let b = s.balance("acme").await;
    assert_eq!((b.balance.as_str(), b.cycle_spend.as_str(), b.holds.len()), ("101.5", "1.5", 1));
    (s, hold.reservation_id)
}

fn grant_request(amount: &str) -> pb::GrantCreditsRequest {
    pb::GrantCreditsRequest {
        request_id: rid(),
        account_id: "acme".into(),
        kind: pb::GrantKind::Purchase as i32,
        amount: amount.into(),
        ..Default::default()
    }
}

fn reserve_request(account: &str, action: &str, quantity: u64) -> pb::ReserveRequest {
    pb::ReserveRequest {
        request_id: rid(),
        account_id: account.into(),
        action: action.into(),
        quantity,
        ttl_seconds: 60,
        ..Default::default()
    }
}

fn commit_request(reservation_id: &str) -> pb::CommitRequest {
    pb::CommitRequest {
        request_id: rid(),
        reservation_id: reservation_id.into(),
        quantity: 1,
        r#final: true,
        ..Default::default()
    }
}

fn price_entry(action: &str, credits_per_unit: &str) -> pb::PriceEntry {
    pb::PriceEntry {
        action: action.into(),
        category: "test".into(),
        unit_name: "unit".into(),
        unit_size: 1,
        credits_per_unit: credits_per_unit.into(),
        meter: String::new(),
    }
}

async fn prices(s: &TestServer) -> pb::ListPricesResponse {
    s.admin().list_prices(pb::ListPricesRequest::default()).await.unwrap().into_inner()
}

async fn account(s: &TestServer, id: &str) -> Result<pb::Account, Status> {
    s.admin().get_account(pb::GetAccountRequest { account_id: id.into() }).await.map(|r| r.into_inner())
}

// ---- decimals -------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_grant_amounts_are_rejected_naming_amount() {
    let (s, _) = fixture().await;
    let before = snapshot(&s, "acme").await;
    for (text, what) in
        BAD_DECIMALS.iter().copied().chain([("0", "zero: a grant must be more than 0"), ("0.000", "zero with digits")])
    {
        let r = s.admin().grant_credits(grant_request(text)).await;
        invalid(&s, &before, r, "amount", &format!("GrantCredits.amount = {text:?} ({what})")).await;
    }
    // The same request with a well-formed amount goes through: the cases above failed on the amount alone.
    let ok = s.admin().grant_credits(grant_request("0.000000001")).await.unwrap().into_inner();
    assert_eq!(ok.grant.unwrap().amount, "0.000000001");
}

#[tokio::test]
async fn malformed_prices_are_rejected_and_the_price_book_keeps_its_version() {
    let (s, _) = fixture().await;
    let before = snapshot(&s, "acme").await;
    let book = prices(&s).await;
    for (text, what) in BAD_DECIMALS {
        // The bad entry travels with a good one: the whole call is rejected, not half applied.
        let r = s
            .admin()
            .upsert_prices(pb::UpsertPricesRequest {
                request_id: rid(),
                entries: vec![price_entry("chat", "7"), price_entry("image", text)],
                ..Default::default()
            })
            .await;
        invalid(&s, &before, r, "credits_per_unit", &format!("credits_per_unit = {text:?} ({what})")).await;
        assert_eq!(prices(&s).await, book, "credits_per_unit = {text:?}: the price book changed");
    }
    // Per-account overrides are checked the same way.
    let r = s
        .admin()
        .upsert_prices(pb::UpsertPricesRequest {
            account_id: "acme".into(),
            entries: vec![price_entry("chat", "1e2")],
            ..Default::default()
        })
        .await;
    invalid(&s, &before, r, "credits_per_unit", "override credits_per_unit = 1e2").await;
    let listed = s.admin().list_prices(pb::ListPricesRequest { account_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!(listed.entries.iter().find(|e| e.action == "chat").unwrap().credits_per_unit, "0.5");
    // The price still charges what it did.
    let r = s.deduct_req(deduct_request("acme", "chat", 2)).await.unwrap();
    assert_eq!(r.credits_charged, "1");
}

#[tokio::test]
async fn malformed_limits_are_rejected_and_the_limits_stay() {
    let (s, _) = fixture().await;
    let before = snapshot(&s, "acme").await;
    let limits_before = account(&s, "acme").await.unwrap().limits;
    let cases: Vec<(pb::Limits, &str, &str)> = vec![
        (pb::Limits { spending_cap: "x".into(), ..Default::default() }, "spending_cap", "spending_cap = x"),
        (pb::Limits { spending_cap: "-5".into(), ..Default::default() }, "spending_cap", "spending_cap = -5"),
        (pb::Limits { spending_cap: "1e3".into(), ..Default::default() }, "spending_cap", "spending_cap = 1e3"),
        (
            pb::Limits { alert_threshold: "abc".into(), ..Default::default() },
            "alert_threshold",
            "alert_threshold = abc",
        ),
        (pb::Limits { overdraft_limit: ".5".into(), ..Default::default() }, "overdraft_limit", "overdraft_limit = .5"),
        (
            pb::Limits { spending_cap: "100".into(), alert_threshold: "100.000001".into(), ..Default::default() },
            "alert_threshold",
            "alert_threshold above spending_cap",
        ),
        (
            pb::Limits { spending_cap: "10".into(), alert_threshold: "80".into(), ..Default::default() },
            "alert_threshold",
            "alert_threshold far above spending_cap",
        ),
    ];
    for (limits, field, case) in cases {
        let r = s
            .admin()
            .set_limits(pb::SetLimitsRequest { request_id: rid(), account_id: "acme".into(), limits: Some(limits) })
            .await;
        invalid(&s, &before, r, field, &format!("SetLimits {case}")).await;
        assert_eq!(account(&s, "acme").await.unwrap().limits, limits_before, "SetLimits {case}: the limits changed");
    }
    // An alert exactly at the cap is allowed ("must not exceed").
    let a = s
        .admin()
        .set_limits(pb::SetLimitsRequest {
            request_id: rid(),
            account_id: "acme".into(),
            limits: Some(pb::Limits {
                spending_cap: "100".into(),
                alert_threshold: "100".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.limits.unwrap().alert_threshold, "100");
}

// ---- quantities ---------------------------------------------------------------------------

#[tokio::test]
async fn quantity_zero_is_rejected_on_check_and_deduct_and_reserve() {
    let (s, _) = fixture().await;
    let before = snapshot(&s, "acme").await;
    let r = s.deduct_req(deduct_request("acme", "chat", 0)).await;
    invalid(&s, &before, r, "quantity", "CheckAndDeduct quantity 0").await;
    let mut dry = deduct_request("acme", "chat", 0);
    dry.dry_run = true;
    let r = s.deduct_req(dry).await;
    invalid(&s, &before, r, "quantity", "dry-run CheckAndDeduct quantity 0").await;
    let r = s.metering().reserve(reserve_request("acme", "chat", 0)).await;
    invalid(&s, &before, r, "quantity", "Reserve quantity 0").await;
}

#[tokio::test]
async fn a_cost_beyond_the_decimal_range_is_invalid_and_charges_nothing() {
    let (s, _) = fixture().await;
    s.price("huge", "99999999999999999999", 1).await;
    let before = snapshot(&s, "acme").await;

    let r = s.deduct_req(deduct_request("acme", "huge", u64::MAX)).await;
    invalid(&s, &before, r, "quantity", "CheckAndDeduct of u64::MAX × 99999999999999999999").await;
    let mut dry = deduct_request("acme", "huge", u64::MAX);
    dry.dry_run = true;
    let r = s.deduct_req(dry).await;
    invalid(&s, &before, r, "quantity", "dry-run CheckAndDeduct of an overflowing cost").await;
    let r = s.metering().reserve(reserve_request("acme", "huge", u64::MAX)).await;
    invalid(&s, &before, r, "quantity", "Reserve of an overflowing cost").await;

    // In a batch, the overflowing item alone is an INVALID_ARGUMENT; nothing is charged for it.
    let r = s
        .metering()
        .batch_check_and_deduct(pb::BatchCheckAndDeductRequest {
            items: vec![deduct_request("acme", "huge", u64::MAX)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].error_code, Code::InvalidArgument as i32, "{:?}", r.results[0]);
    assert!(r.results[0].response.is_none());
    assert!(r.results[0].error_message.contains("quantity"), "{:?}", r.results[0].error_message);
    assert_eq!(snapshot(&s, "acme").await, before, "an overflowing batch item changed the account");

    // A large but representable quantity of the same action is an ordinary denial, not an error.
    let r = s.deduct("acme", "huge", 2).await;
    assert_eq!(denial(&r), pb::DenialReason::InsufficientCredits);
}

#[tokio::test]
async fn a_commit_whose_cost_overflows_is_invalid_and_keeps_the_hold() {
    let (s, _) = fixture().await;
    s.set_limits("acme", pb::Limits::default()).await; // no spending cap
    s.grant("acme", pb::GrantKind::Purchase, "20000000000").await;
    s.price("pricey", "10000000000", 1).await;
    let hold = s.reserve("acme", "pricey", 1, 3600).await;
    assert_eq!(hold.credits_held, "10000000000", "{hold:?}");
    let before = snapshot(&s, "acme").await;
    let mut c = commit_request(&hold.reservation_id);
    c.quantity = u64::MAX;
    let r = s.metering().commit(c).await;
    invalid(&s, &before, r, "quantity", "Commit of u64::MAX × 10000000000").await;
    // The hold is still live and settles normally.
    let c = s.commit(&hold.reservation_id, 1, true).await.unwrap();
    assert_eq!(c.credits_charged, "10000000000");
}

#[tokio::test]
async fn malformed_decimals_elsewhere_are_rejected_naming_the_field() {
    let (s, _) = fixture().await;
    let before = snapshot(&s, "acme").await;
    let mut g = grant_request("10");
    g.money_paid = Some(pb::Money { amount: "1e1".into(), currency: "EUR".into() });
    let r = s.admin().grant_credits(g).await;
    invalid(&s, &before, r, "money_paid.amount", "GrantCredits money_paid.amount = 1e1").await;
    let mut g = grant_request("10");
    g.money_paid = Some(pb::Money { amount: "10".into(), currency: "euro".into() });
    let r = s.admin().grant_credits(g).await;
    invalid(&s, &before, r, "money_paid.currency", "GrantCredits money_paid.currency = euro").await;

    let r = s
        .admin()
        .create_account(pb::CreateAccountRequest {
            account_id: "globex".into(),
            plan: Some(pb::Plan { name: "pro".into(), credits_per_cycle: "1.".into(), ..Default::default() }),
            ..Default::default()
        })
        .await;
    invalid(&s, &before, r, "credits_per_cycle", "CreateAccount plan.credits_per_cycle = 1.").await;
    assert_eq!(account(&s, "globex").await.unwrap_err().code(), Code::NotFound);
    let r = s
        .admin()
        .create_account(pb::CreateAccountRequest {
            account_id: "globex".into(),
            limits: Some(pb::Limits { spending_cap: "x".into(), ..Default::default() }),
            ..Default::default()
        })
        .await;
    invalid(&s, &before, r, "spending_cap", "CreateAccount limits.spending_cap = x").await;
    assert_eq!(account(&s, "globex").await.unwrap_err().code(), Code::NotFound);
}

// ---- identifiers ----------------------------------------------------------------------------

fn bad_names() -> Vec<(String, &'static str)> {
    vec![
        ("a".repeat(129), "129 chars"),
        ("a b".to_string(), "a blank"),
        ("a/b".to_string(), "a slash"),
        ("é".to_string(), "a non-ASCII letter"),
        ("acme\n".to_string(), "a newline"),
    ]
}

#[tokio::test]
async fn bad_account_ids_are_rejected_everywhere() {
    let (s, _) = fixture().await;
    let before = snapshot(&s, "acme").await;
    for (id, what) in bad_names() {
        let r = s.deduct_req(deduct_request(&id, "chat", 1)).await;
        invalid(&s, &before, r, "account_id", &format!("CheckAndDeduct account_id with {what}")).await;
        let r = s.metering().reserve(reserve_request(&id, "chat", 1)).await;
        invalid(&s, &before, r, "account_id", &format!("Reserve account_id with {what}")).await;
        let mut g = grant_request("10");
        g.account_id = id.clone();
        let r = s.admin().grant_credits(g).await;
        invalid(&s, &before, r, "account_id", &format!("GrantCredits account_id with {what}")).await;
        let r =
            s.admin().create_account(pb::CreateAccountRequest { account_id: id.clone(), ..Default::default() }).await;
        invalid(&s, &before, r, "account_id", &format!("CreateAccount account_id with {what}")).await;
        let r = s.metering().get_balance(pb::GetBalanceRequest { account_id: id.clone() }).await;
        invalid(&s, &before, r, "account_id", &format!("GetBalance account_id with {what}")).await;
    }
    // 128 chars is the longest valid id.
    let longest = "a".repeat(128);
    s.admin()
        .create_account(pb::CreateAccountRequest { account_id: longest.clone(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(account(&s, &longest).await.unwrap().account_id, longest);
}

#[tokio::test]
async fn bad_user_and_workspace_ids_are_rejected() {
    let (s, _) = fixture().await;
    let before = snapshot(&s, "acme").await;
    for (id, what) in bad_names() {
        let mut d = deduct_request("acme", "chat", 1);
        d.user_id = id.clone();
        let r = s.deduct_req(d).await;
        invalid(&s, &before, r, "user_id", &format!("CheckAndDeduct user_id with {what}")).await;
        let mut d = reserve_request("acme", "chat", 1);
        d.user_id = id.clone();
        let r = s.metering().reserve(d).await;
        invalid(&s, &before, r, "user_id", &format!("Reserve user_id with {what}")).await;
        let mut d = deduct_request("acme", "chat", 1);
        d.workspace_id = id.clone();
        let r = s.deduct_req(d).await;
        invalid(&s, &before, r, "workspace_id", &format!("CheckAndDeduct workspace_id with {what}")).await;
    }
    // A well-formed user id goes through.
    let mut d = deduct_request("acme", "chat", 1);
    d.user_id = "user-1.x".into();
    assert!(allowed(&s.deduct_req(d).await.unwrap()));
}

#[tokio::test]
async fn a_missing_request_id_is_rejected_on_every_mutating_call() {
    let (s, hold) = fixture().await;
    let before = snapshot(&s, "acme").await;

    let mut d = deduct_request("acme", "chat", 1);
    d.request_id.clear();
    let r = s.deduct_req(d).await;
    invalid(&s, &before, r, "request_id", "CheckAndDeduct without request_id").await;

    let mut r = reserve_request("acme", "chat", 1);
    r.request_id.clear();
    let r = s.metering().reserve(r).await;
    invalid(&s, &before, r, "request_id", "Reserve without request_id").await;

    let mut c = commit_request(&hold);
    c.request_id.clear();
    let r = s.metering().commit(c).await;
    invalid(&s, &before, r, "request_id", "Commit without request_id").await;

    let r = s.metering().release(pb::ReleaseRequest { request_id: String::new(), reservation_id: hold.clone() }).await;
    invalid(&s, &before, r, "request_id", "Release without request_id").await;

    let r = s
        .metering()
        .extend(pb::ExtendRequest { request_id: String::new(), reservation_id: hold.clone(), ttl_seconds: 7200 })
        .await;
    invalid(&s, &before, r, "request_id", "Extend without request_id").await;

    let mut g = grant_request("10");
    g.request_id.clear();
    let r = s.admin().grant_credits(g).await;
    invalid(&s, &before, r, "request_id", "GrantCredits without request_id").await;

    // The hold is still live and commits normally.
    let c = s.commit(&hold, 4, true).await.unwrap();
    assert_eq!(c.credits_charged, "2");
}

#[tokio::test]
async fn a_request_id_over_128_bytes_is_rejected() {
    let (s, hold) = fixture().await;
    let before = snapshot(&s, "acme").await;
    // 129 ASCII bytes, and 129 bytes in 65 chars (the limit is in bytes).
    for (id, what) in [("r".repeat(129), "129 ASCII bytes"), (format!("{}x", "é".repeat(64)), "65 chars, 129 bytes")] {
        let mut d = deduct_request("acme", "chat", 1);
        d.request_id = id.clone();
        let r = s.deduct_req(d).await;
        invalid(&s, &before, r, "request_id", &format!("CheckAndDeduct request_id of {what}")).await;

        let mut r = reserve_request("acme", "chat", 1);
        r.request_id = id.clone();
        let r = s.metering().reserve(r).await;
        invalid(&s, &before, r, "request_id", &format!("Reserve request_id of {what}")).await;

        let mut c = commit_request(&hold);
        c.request_id = id.clone();
        let r = s.metering().commit(c).await;
        invalid(&s, &before, r, "request_id", &format!("Commit request_id of {what}")).await;

        let r = s.metering().release(pb::ReleaseRequest { request_id: id.clone(), reservation_id: hold.clone() }).await;
        invalid(&s, &before, r, "request_id", &format!("Release request_id of {what}")).await;

        let mut g = grant_request("10");
        g.request_id = id.clone();
        let r = s.admin().grant_credits(g).await;
        invalid(&s, &before, r, "request_id", &format!("GrantCredits request_id of {what}")).await;
    }
    // Control characters are not allowed either.
    let mut d = deduct_request("acme", "chat", 1);
    d.request_id = "req\n1".into();
    let r = s.deduct_req(d).await;
    invalid(&s, &before, r, "request_id", "CheckAndDeduct request_id with a newline").await;
    // 128 bytes is fine.
    let mut d = deduct_request("acme", "chat", 1);
    d.request_id = "r".repeat(128);
    let r = s.deduct_req(d).await.unwrap();
    assert!(allowed(&r) && !r.replayed, "{r:?}");
}

// ---- enums ----------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_enum_values_are_rejected() {
    let (s, _) = fixture().await;
    let before = snapshot(&s, "acme").await;
    let limits_before = account(&s, "acme").await.unwrap().limits;

    let mut g = grant_request("10");
    g.kind = 99;
    let r = s.admin().grant_credits(g).await;
    invalid(&s, &before, r, "kind", "GrantCredits.kind = 99").await;

    let r = s
        .admin()
        .set_limits(pb::SetLimitsRequest {
            request_id: rid(),
            account_id: "acme".into(),
            limits: Some(pb::Limits {
                meters: vec![pb::MeterLimit { name: "ai_tokens".into(), kind: 99, limit: 10 }],
                ..Default::default()
            }),
        })
        .await;
    invalid(&s, &before, r, "kind", "SetLimits meter kind 99").await;
    assert_eq!(account(&s, "acme").await.unwrap().limits, limits_before);

    let r = s
        .admin()
        .create_account(pb::CreateAccountRequest {
            request_id: rid(),
            account_id: "globex".into(),
            overage_policy: 42,
            ..Default::default()
        })
        .await;
    invalid(&s, &before, r, "overage_policy", "CreateAccount overage_policy 42").await;
    let missing = account(&s, "globex").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "a rejected CreateAccount must not create the account: {missing:?}");
    // And the id is still free.
    s.admin()
        .create_account(pb::CreateAccountRequest { account_id: "globex".into(), ..Default::default() })
        .await
        .unwrap();
}

// ---- reservations ---------------------------------------------------------------------------

#[tokio::test]
async fn a_ttl_above_a_day_is_rejected() {
    let (s, hold) = fixture().await;
    let before = snapshot(&s, "acme").await;
    let mut r = reserve_request("acme", "chat", 1);
    r.ttl_seconds = 86_401;
    let r = s.metering().reserve(r).await;
    invalid(&s, &before, r, "ttl_seconds", "Reserve ttl_seconds 86401").await;
    let r = s
        .metering()
        .extend(pb::ExtendRequest { request_id: rid(), reservation_id: hold.clone(), ttl_seconds: 86_401 })
        .await;
    invalid(&s, &before, r, "ttl_seconds", "Extend ttl_seconds 86401").await;
    // Exactly a day is allowed.
    let mut r = reserve_request("acme", "chat", 1);
    r.ttl_seconds = 86_400;
    let r = s.metering().reserve(r).await.unwrap().into_inner();
    assert!(!r.reservation_id.is_empty(), "{r:?}");
}

#[tokio::test]
async fn garbage_reservation_ids_are_rejected() {
    let (s, _) = fixture().await;
    let before = snapshot(&s, "acme").await;

    let r = s.metering().commit(commit_request("nope")).await;
    invalid(&s, &before, r, "reservation_id", "Commit reservation_id \"nope\"").await;
    let r = s.metering().commit(commit_request("")).await;
    invalid(&s, &before, r, "reservation_id", "Commit without reservation_id").await;
    let r = s.metering().release(pb::ReleaseRequest { request_id: rid(), reservation_id: "nope".into() }).await;
    invalid(&s, &before, r, "reservation_id", "Release reservation_id \"nope\"").await;
    let r = s
        .metering()
        .extend(pb::ExtendRequest { request_id: rid(), reservation_id: "nope".into(), ttl_seconds: 60 })
        .await;
    invalid(&s, &before, r, "reservation_id", "Extend reservation_id \"nope\"").await;

    // Well formed, for an existing account, but no such hold.
    let r = s.metering().commit(commit_request("acme/rs_ffffffffffffffff")).await;
    rejected(&s, "acme", &before, r, Code::FailedPrecondition, None, "Commit of an unknown hold of acme").await;
    let r = s
        .metering()
        .release(pb::ReleaseRequest { request_id: rid(), reservation_id: "acme/rs_ffffffffffffffff".into() })
        .await;
    rejected(&s, "acme", &before, r, Code::FailedPrecondition, None, "Release of an unknown hold of acme").await;
}

// ---- metadata and message size ----------------------------------------------------------------

fn metadata(n: usize) -> HashMap<String, String> {
    (0..n).map(|i| (format!("k{i}"), format!("v{i}"))).collect()
}

#[tokio::test]
async fn more_than_16_metadata_entries_are_rejected() {
    let (s, hold) = fixture().await;
    let before = snapshot(&s, "acme").await;
    let mut d = deduct_request("acme", "chat", 1);
    d.metadata = metadata(17);
    let r = s.deduct_req(d).await;
    invalid(&s, &before, r, "metadata", "CheckAndDeduct with 17 metadata entries").await;
    let mut r = reserve_request("acme", "chat", 1);
    r.metadata = metadata(17);
    let r = s.metering().reserve(r).await;
    invalid(&s, &before, r, "metadata", "Reserve with 17 metadata entries").await;
    let mut c = commit_request(&hold);
    c.metadata = metadata(17);
    let r = s.metering().commit(c).await;
    invalid(&s, &before, r, "metadata", "Commit with 17 metadata entries").await;
    // Oversized keys and values inside an otherwise small message.
    let mut d = deduct_request("acme", "chat", 1);
    d.metadata.insert("note".into(), "x".repeat(513));
    let r = s.deduct_req(d).await;
    invalid(&s, &before, r, "metadata", "CheckAndDeduct with a 513-byte metadata value").await;
    let mut d = deduct_request("acme", "chat", 1);
    d.metadata.insert("k".repeat(65), "v".into());
    let r = s.deduct_req(d).await;
    invalid(&s, &before, r, "metadata", "CheckAndDeduct with a 65-byte metadata key").await;
    // 16 is fine.
    let mut d = deduct_request("acme", "chat", 1);
    d.metadata = metadata(16);
    assert!(allowed(&s.deduct_req(d).await.unwrap()));
}

#[tokio::test]
async fn an_oversized_message_is_refused_without_a_quota_failure() {
    let (s, _) = fixture().await;
    let before = snapshot(&s, "acme").await;
    let mut d = deduct_request("acme", "chat", 1);
    d.metadata.insert("blob".into(), "x".repeat(100 * 1024));
    assert!(d.encoded_len() > s.config.server.max_message_bytes);
    let status = match s.deduct_req(d).await {
        Ok(r) => panic!("an oversized message was answered: {r:?}"),
        Err(status) => status,
    };
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "expected OUT_OF_RANGE or RESOURCE_EXHAUSTED, got {:?}: {}",
        status.code(),
        status.message()
    );
    assert!(
        status.get_error_details().quota_failure().is_none(),
        "an oversized message must not look like 'out of credits': {status:?}"
    );
    assert_eq!(snapshot(&s, "acme").await, before, "an oversized message changed the account");
    // The connection is still usable.
    assert!(allowed(&s.deduct("acme", "chat", 1).await));
}

// ---- batches --------------------------------------------------------------------------------

#[tokio::test]
async fn a_batch_over_1000_items_is_rejected_whole() {
    // The answer to 1000 items is larger than the harness's 64 KiB message limit.
    let (s, _) = fixture_with(|c| c.server.max_message_bytes = 1024 * 1024).await;
    let before = snapshot(&s, "acme").await;
    let items: Vec<_> = (0..1001).map(|_| deduct_request("acme", "chat", 1)).collect();
    let r = s.metering().batch_check_and_deduct(pb::BatchCheckAndDeductRequest { items }).await;
    invalid(&s, &before, r, "items", "BatchCheckAndDeduct with 1001 items").await;
    // Exactly 1000 is answered.
    s.price("tiny", "0.001", 1).await;
    let items: Vec<_> = (0..1000).map(|_| deduct_request("acme", "tiny", 1)).collect();
    let r = s.metering().batch_check_and_deduct(pb::BatchCheckAndDeductRequest { items }).await.unwrap().into_inner();
    assert_eq!(r.results.len(), 1000);
    assert!(r.results.iter().all(|x| x.error_code == 0 && x.response.as_ref().is_some_and(allowed)));
    let b = s.balance("acme").await;
    assert_eq!((b.balance.as_str(), b.cycle_spend.as_str()), ("100.5", "2.5"));
}

/// A batch within `max_batch_items` whose *answer* is larger than `max_message_bytes` (1000
/// answers are ~82 KiB, the harness allows 64 KiB): the client gets OUT_OF_RANGE, so the call
/// must either be answered or change nothing. Today every item is charged and the answer is
/// then dropped, so the client is told "too large" for a call that was fully applied.
#[tokio::test]
async fn a_batch_whose_answer_is_too_large_is_either_answered_or_changes_nothing() {
    let (s, _) = fixture().await;
    s.price("tiny", "0.001", 1).await;
    let before = snapshot(&s, "acme").await;
    let items: Vec<_> = (0..1000).map(|_| deduct_request("acme", "tiny", 1)).collect();
    let request = pb::BatchCheckAndDeductRequest { items };
    assert!(request.encoded_len() < s.config.server.max_message_bytes, "the request itself fits");
    match s.metering().batch_check_and_deduct(request).await {
        Ok(r) => assert_eq!(r.into_inner().results.len(), 1000),
        Err(status) => {
            assert_eq!(
                snapshot(&s, "acme").await,
                before,
                "the batch failed with {:?} ({}) but its items were charged",
                status.code(),
                status.message()
            );
        }
    }
}

#[tokio::test]
async fn a_bad_batch_item_fails_alone_and_is_not_charged() {
    let (s, _) = fixture().await;
    let b0 = s.balance("acme").await;
    assert_eq!(b0.balance, "101.5");
    let mut bad_user = deduct_request("acme", "chat", 1);
    bad_user.user_id = "a b".into();
    let mut no_id = deduct_request("acme", "chat", 1);
    no_id.request_id.clear();
    let items = vec![
        deduct_request("acme", "chat", 2),
        deduct_request("acme", "chat", 0),
        bad_user,
        no_id,
        deduct_request("acme", "chat", 4),
    ];
    let r = s.metering().batch_check_and_deduct(pb::BatchCheckAndDeductRequest { items }).await.unwrap().into_inner();
    assert_eq!(r.results.len(), 5, "{r:?}");
    for (i, field) in [(1, "quantity"), (2, "user_id"), (3, "request_id")] {
        let item = &r.results[i];
        assert_eq!(item.error_code, Code::InvalidArgument as i32, "item {i}: {item:?}");
        assert!(item.response.is_none(), "item {i}: {item:?}");
        assert!(item.error_message.contains(field), "item {i} should name {field}: {:?}", item.error_message);
    }
    for (i, cost) in [(0, "1"), (4, "2")] {
        let item = &r.results[i];
        assert_eq!(item.error_code, 0, "item {i}: {item:?}");
        let resp = item.response.as_ref().unwrap();
        assert!(allowed(resp), "item {i}: {resp:?}");
        assert_eq!(resp.credits_charged, cost, "item {i}");
    }
    let b = s.balance("acme").await;
    assert_eq!((b.balance.as_str(), b.cycle_spend.as_str()), ("98.5", "4.5"), "only the two valid items are charged");
}

// ---- unknown actions are answers, not errors ---------------------------------------------------

#[tokio::test]
async fn an_unknown_action_is_a_denial_not_an_error() {
    let (s, _) = fixture().await;
    let before = snapshot(&s, "acme").await;
    let r = s.deduct_req(deduct_request("acme", "teleport", 1)).await.unwrap();
    assert_eq!(denial(&r), pb::DenialReason::UnknownAction);
    assert_eq!(r.credits_charged, "0");
    let r = s.metering().reserve(reserve_request("acme", "teleport", 1)).await.unwrap().into_inner();
    assert_eq!(r.decision, pb::Decision::Denied as i32, "{r:?}");
    assert_eq!(r.denial_reason, pb::DenialReason::UnknownAction as i32, "{r:?}");
    assert!(r.reservation_id.is_empty());
    assert_eq!(snapshot(&s, "acme").await, before, "an unknown action is never free and charges nothing");
}
