//! The boundary: protobuf messages in, validated domain values out, and back. Nothing past
//! this module sees a protobuf type, and nothing before it is trusted.

use crate::domain::account::{AccountStatus, OveragePolicy, Plan, SubscriptionStatus};
use crate::domain::amount::{format_credits, parse_credits, parse_optional_credits};
use crate::domain::grant::{Allocation, Grant, GrantKind, Money};
use crate::domain::ids::{check_name, check_optional_name, check_request_id};
use crate::domain::ledger::{Denial, DenialReason};
use crate::domain::limits::{Limits, LowBalance, MeterKind, MeterLimit};
use crate::domain::price::PriceEntry;
use crate::domain::{Credits, InvalidInput, SmallMap};
use crate::engine::request::SpendTarget;
use crate::proto::v1 as pb;
use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Most metadata entries on one request, and their sizes.
pub const MAX_METADATA_ENTRIES: usize = 16;
pub const MAX_METADATA_KEY_BYTES: usize = 64;
pub const MAX_METADATA_VALUE_BYTES: usize = 512;

pub type Result<T> = std::result::Result<T, InvalidInput>;

/// Takes the request's own strings: the hot path copies none of them.
pub fn spend_target(
    account_id: String,
    user_id: String,
    workspace_id: String,
    action: String,
    quantity: u64,
    metadata: HashMap<String, String>,
) -> Result<SpendTarget> {
    check_name("account_id", &account_id)?;
    check_name("action", &action)?;
    if quantity == 0 {
        return Err(InvalidInput::new("quantity", "must be at least 1"));
    }
    Ok(SpendTarget {
        account_id,
        user_id: check_optional_name("user_id", user_id)?,
        workspace_id: check_optional_name("workspace_id", workspace_id)?,
        action,
        quantity,
        metadata: metadata_map(metadata)?,
    })
}

pub fn metadata_map(metadata: HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(InvalidInput::new(
            "metadata",
            format!("has {} entries; at most {MAX_METADATA_ENTRIES} are allowed", metadata.len()),
        ));
    }
    for (k, v) in &metadata {
        if k.is_empty() || k.len() > MAX_METADATA_KEY_BYTES {
            return Err(InvalidInput::new("metadata", format!("key {k:?} must be 1–{MAX_METADATA_KEY_BYTES} bytes")));
        }
        if v.len() > MAX_METADATA_VALUE_BYTES {
            return Err(InvalidInput::new(
                format!("metadata.{k}"),
                format!("is longer than {MAX_METADATA_VALUE_BYTES} bytes"),
            ));
        }
    }
    Ok(metadata.into_iter().collect())
}

pub fn request_id(value: String) -> Result<String> {
    check_request_id(&value).map(|()| value)
}

/// An optional admin request id: empty means none.
pub fn optional_request_id(value: &str) -> Result<Option<String>> {
    if value.is_empty() {
        Ok(None)
    } else {
        request_id(value.to_string()).map(Some)
    }
}

/// A TTL in seconds: 0 means `default`; more than `max` is rejected.
pub fn ttl(field: &str, seconds: u32, default: Duration, max: Duration) -> Result<Duration> {
    if seconds == 0 {
        return Ok(default);
    }
    let ttl = Duration::from_secs(u64::from(seconds));
    if ttl > max {
        return Err(InvalidInput::new(field, format!("{seconds} s is longer than the maximum of {} s", max.as_secs())));
    }
    Ok(ttl)
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

pub fn from_timestamp(field: &str, t: &prost_types::Timestamp) -> Result<DateTime<Utc>> {
    Utc.timestamp_opt(t.seconds, u32::try_from(t.nanos).unwrap_or(u32::MAX))
        .single()
        .ok_or_else(|| InvalidInput::new(field, "is not a valid timestamp"))
}

pub fn credits(value: Credits) -> String {
    format_credits(value)
}

fn optional_credits_text(value: Option<Credits>) -> String {
    value.map(format_credits).unwrap_or_default()
}

// ---- enums ------------------------------------------------------------------------------

fn unknown_enum(field: &str, value: i32) -> InvalidInput {
    InvalidInput::new(field, format!("{value} is not a known value"))
}

pub fn grant_kind(field: &str, value: i32) -> Result<GrantKind> {
    match pb::GrantKind::try_from(value).map_err(|_| unknown_enum(field, value))? {
        pb::GrantKind::Plan => Ok(GrantKind::Plan),
        pb::GrantKind::Purchase => Ok(GrantKind::Purchase),
        pb::GrantKind::Promo => Ok(GrantKind::Promo),
        pb::GrantKind::Adjustment => Ok(GrantKind::Adjustment),
        pb::GrantKind::Unspecified => {
            Err(InvalidInput::new(field, "is required (plan, purchase, promo or adjustment)"))
        }
    }
}

pub fn grant_kind_to_pb(kind: GrantKind) -> pb::GrantKind {
    match kind {
        GrantKind::Plan => pb::GrantKind::Plan,
        GrantKind::Purchase => pb::GrantKind::Purchase,
        GrantKind::Promo => pb::GrantKind::Promo,
        GrantKind::Adjustment => pb::GrantKind::Adjustment,
    }
}

/// `None` for UNSPECIFIED (keep the current value).
pub fn account_status(value: i32) -> Result<Option<AccountStatus>> {
    Ok(match pb::AccountStatus::try_from(value).map_err(|_| unknown_enum("status", value))? {
        pb::AccountStatus::Unspecified => None,
        pb::AccountStatus::Active => Some(AccountStatus::Active),
        pb::AccountStatus::Suspended => Some(AccountStatus::Suspended),
    })
}

pub fn account_status_to_pb(s: AccountStatus) -> pb::AccountStatus {
    match s {
        AccountStatus::Active => pb::AccountStatus::Active,
        AccountStatus::Suspended => pb::AccountStatus::Suspended,
    }
}

pub fn subscription_status(value: i32) -> Result<Option<SubscriptionStatus>> {
    Ok(match pb::SubscriptionStatus::try_from(value).map_err(|_| unknown_enum("subscription_status", value))? {
        pb::SubscriptionStatus::Unspecified => None,
        pb::SubscriptionStatus::Active => Some(SubscriptionStatus::Active),
        pb::SubscriptionStatus::Pending => Some(SubscriptionStatus::Pending),
        pb::SubscriptionStatus::Cancelled => Some(SubscriptionStatus::Cancelled),
        pb::SubscriptionStatus::Expired => Some(SubscriptionStatus::Expired),
    })
}

pub fn subscription_status_to_pb(s: SubscriptionStatus) -> pb::SubscriptionStatus {
    match s {
        SubscriptionStatus::Active => pb::SubscriptionStatus::Active,
        SubscriptionStatus::Pending => pb::SubscriptionStatus::Pending,
        SubscriptionStatus::Cancelled => pb::SubscriptionStatus::Cancelled,
        SubscriptionStatus::Expired => pb::SubscriptionStatus::Expired,
    }
}

pub fn overage_policy(value: i32) -> Result<Option<OveragePolicy>> {
    Ok(match pb::OveragePolicy::try_from(value).map_err(|_| unknown_enum("overage_policy", value))? {
        pb::OveragePolicy::Unspecified => None,
        pb::OveragePolicy::RecordShortfall => Some(OveragePolicy::RecordShortfall),
        pb::OveragePolicy::AllowOverdraft => Some(OveragePolicy::AllowOverdraft),
        pb::OveragePolicy::CapAtHold => Some(OveragePolicy::CapAtHold),
    })
}

pub fn overage_policy_to_pb(p: OveragePolicy) -> pb::OveragePolicy {
    match p {
        OveragePolicy::RecordShortfall => pb::OveragePolicy::RecordShortfall,
        OveragePolicy::AllowOverdraft => pb::OveragePolicy::AllowOverdraft,
        OveragePolicy::CapAtHold => pb::OveragePolicy::CapAtHold,
    }
}

fn meter_kind(field: &str, value: i32) -> Result<MeterKind> {
    match pb::MeterKind::try_from(value).map_err(|_| unknown_enum(field, value))? {
        pb::MeterKind::CycleCounter => Ok(MeterKind::CycleCounter),
        pb::MeterKind::Gauge => Ok(MeterKind::Gauge),
        pb::MeterKind::Unspecified => Err(InvalidInput::new(field, "is required (cycle_counter or gauge)")),
    }
}

fn meter_kind_to_pb(kind: MeterKind) -> pb::MeterKind {
    match kind {
        MeterKind::CycleCounter => pb::MeterKind::CycleCounter,
        MeterKind::Gauge => pb::MeterKind::Gauge,
    }
}

pub fn denial_reason_to_pb(reason: DenialReason) -> pb::DenialReason {
    match reason {
        DenialReason::InsufficientCredits => pb::DenialReason::InsufficientCredits,
        DenialReason::SpendingCapReached => pb::DenialReason::SpendingCapReached,
        DenialReason::UserCapReached => pb::DenialReason::UserCapReached,
        DenialReason::WorkspaceCapReached => pb::DenialReason::WorkspaceCapReached,
        DenialReason::MeterLimitReached => pb::DenialReason::MeterLimitReached,
        DenialReason::AccountSuspended => pb::DenialReason::AccountSuspended,
        DenialReason::UnknownAction => pb::DenialReason::UnknownAction,
        DenialReason::AccountNotFound => pb::DenialReason::AccountNotFound,
    }
}

/// (decision, denial_reason, denied_meter) of an answer.
pub fn decision(denial: &Option<Denial>) -> (i32, i32, String) {
    match denial {
        None => (pb::Decision::Allowed as i32, pb::DenialReason::Unspecified as i32, String::new()),
        Some(d) => {
            (pb::Decision::Denied as i32, denial_reason_to_pb(d.reason) as i32, d.meter.clone().unwrap_or_default())
        }
    }
}

// ---- composite values ---------------------------------------------------------------------

pub fn allocations(list: &[Allocation]) -> Vec<pb::Allocation> {
    list.iter()
        .map(|a| pb::Allocation {
            grant_id: a.grant_id.clone(),
            grant_kind: grant_kind_to_pb(a.kind) as i32,
            credits: credits(a.credits),
        })
        .collect()
}

pub fn money(field: &str, m: &Option<pb::Money>) -> Result<Option<Money>> {
    let Some(m) = m else { return Ok(None) };
    if m.amount.is_empty() && m.currency.is_empty() {
        return Ok(None);
    }
    let amount = parse_credits(&format!("{field}.amount"), &m.amount)?;
    if m.currency.len() != 3 || !m.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(InvalidInput::new(
            format!("{field}.currency"),
            format!("{:?} is not an ISO 4217 code like \"EUR\"", m.currency),
        ));
    }
    Ok(Some(Money { amount, currency: m.currency.clone() }))
}

pub fn money_to_pb(m: &Option<Money>) -> Option<pb::Money> {
    m.as_ref().map(|m| pb::Money { amount: credits(m.amount), currency: m.currency.clone() })
}

pub fn plan(field: &str, p: &pb::Plan) -> Result<Plan> {
    check_name(&format!("{field}.name"), &p.name)?;
    let anchor = if p.cycle_anchor_day == 0 { 1 } else { p.cycle_anchor_day };
    if anchor > 31 {
        return Err(InvalidInput::new(format!("{field}.cycle_anchor_day"), "must be a day of the month, 1–31"));
    }
    Ok(Plan {
        name: p.name.clone(),
        credits_per_cycle: parse_credits(&format!("{field}.credits_per_cycle"), &p.credits_per_cycle)?,
        cycle_anchor_day: anchor,
        rollover_cap: parse_optional_credits(&format!("{field}.rollover_cap"), &p.rollover_cap)?
            .unwrap_or(Decimal::ZERO),
        price: money(&format!("{field}.price"), &p.price)?,
    })
}

pub fn plan_to_pb(p: &Plan) -> pb::Plan {
    pb::Plan {
        name: p.name.clone(),
        credits_per_cycle: credits(p.credits_per_cycle),
        cycle_anchor_day: p.cycle_anchor_day,
        rollover_cap: credits(p.rollover_cap),
        price: money_to_pb(&p.price),
    }
}

pub fn limits(l: &Option<pb::Limits>) -> Result<Limits> {
    let Some(l) = l else {
        return Ok(Limits::default());
    };
    let low_balance = match l.low_balance_threshold.strip_suffix('%') {
        Some(p) => Some(LowBalance::PercentOfPlan(parse_credits("limits.low_balance_threshold", p)?)),
        None => {
            parse_optional_credits("limits.low_balance_threshold", &l.low_balance_threshold)?.map(LowBalance::Credits)
        }
    };
    let caps = |field: &str, m: &HashMap<String, String>| -> Result<SmallMap<String, Credits>> {
        m.iter()
            .map(|(k, v)| {
                check_name(&format!("{field} key"), k)?;
                Ok((k.clone(), parse_credits(&format!("{field}.{k}"), v)?))
            })
            .collect()
    };
    let mut meters = SmallMap::new();
    for (i, m) in l.meters.iter().enumerate() {
        check_name(&format!("limits.meters[{i}].name"), &m.name)?;
        let kind = meter_kind(&format!("limits.meters[{i}].kind"), m.kind)?;
        if meters.insert(m.name.clone(), MeterLimit { kind, limit: m.limit }).is_some() {
            return Err(InvalidInput::new(
                format!("limits.meters[{i}].name"),
                format!("meter {:?} is listed twice", m.name),
            ));
        }
    }
    Ok(Limits {
        spending_cap: parse_optional_credits("limits.spending_cap", &l.spending_cap)?,
        alert_threshold: parse_optional_credits("limits.alert_threshold", &l.alert_threshold)?,
        low_balance,
        overdraft_limit: parse_optional_credits("limits.overdraft_limit", &l.overdraft_limit)?.unwrap_or(Decimal::ZERO),
        default_user_cap: parse_optional_credits("limits.default_user_cap", &l.default_user_cap)?,
        user_caps: caps("limits.user_caps", &l.user_caps)?,
        default_workspace_cap: parse_optional_credits("limits.default_workspace_cap", &l.default_workspace_cap)?,
        workspace_caps: caps("limits.workspace_caps", &l.workspace_caps)?,
        meters,
    })
}

pub fn low_balance_text(l: &Option<LowBalance>) -> String {
    match l {
        None => String::new(),
        Some(LowBalance::Credits(c)) => credits(*c),
        Some(LowBalance::PercentOfPlan(p)) => format!("{}%", credits(*p)),
    }
}

pub fn limits_to_pb(l: &Limits) -> pb::Limits {
    let caps = |m: &SmallMap<String, Credits>| m.iter().map(|(k, v)| (k.clone(), credits(*v))).collect();
    pb::Limits {
        spending_cap: optional_credits_text(l.spending_cap),
        alert_threshold: optional_credits_text(l.alert_threshold),
        low_balance_threshold: low_balance_text(&l.low_balance),
        overdraft_limit: if l.overdraft_limit.is_zero() { String::new() } else { credits(l.overdraft_limit) },
        default_user_cap: optional_credits_text(l.default_user_cap),
        user_caps: caps(&l.user_caps),
        default_workspace_cap: optional_credits_text(l.default_workspace_cap),
        workspace_caps: caps(&l.workspace_caps),
        meters: l
            .meters
            .iter()
            .map(|(name, m)| pb::MeterLimit {
                name: name.clone(),
                kind: meter_kind_to_pb(m.kind) as i32,
                limit: m.limit,
            })
            .collect(),
    }
}

pub fn meter_usage(m: &crate::engine::views::MeterView) -> pb::MeterUsage {
    pb::MeterUsage { name: m.name.clone(), kind: meter_kind_to_pb(m.kind) as i32, used: m.used, limit: m.limit }
}

pub fn price_entry(i: usize, e: &pb::PriceEntry) -> Result<PriceEntry> {
    let field = |name: &str| format!("entries[{i}].{name}");
    check_name(&field("action"), &e.action)?;
    if !e.category.is_empty() {
        check_name(&field("category"), &e.category)?;
    }
    if !e.unit_name.is_empty() {
        check_name(&field("unit_name"), &e.unit_name)?;
    }
    Ok(PriceEntry {
        action: e.action.clone(),
        category: e.category.as_str().into(),
        unit_name: if e.unit_name.is_empty() { "request".into() } else { e.unit_name.as_str().into() },
        unit_size: e.unit_size.max(1),
        credits_per_unit: parse_credits(&field("credits_per_unit"), &e.credits_per_unit)?,
        meter: check_optional_name(&field("meter"), e.meter.clone())?,
    })
}

pub fn price_entry_to_pb(e: &PriceEntry) -> pb::PriceEntry {
    pb::PriceEntry {
        action: e.action.clone(),
        category: e.category.to_string(),
        unit_name: e.unit_name.to_string(),
        unit_size: e.unit_size,
        credits_per_unit: credits(e.credits_per_unit),
        meter: e.meter.clone().unwrap_or_default(),
    }
}

pub fn grant_to_pb(account_id: &str, g: &Grant) -> pb::Grant {
    pb::Grant {
        grant_id: g.id.clone(),
        account_id: account_id.to_string(),
        kind: grant_kind_to_pb(g.kind) as i32,
        amount: credits(g.amount),
        remaining: credits(g.remaining),
        priority: g.priority,
        effective_at: Some(timestamp(g.effective_at)),
        expires_at: g.expires_at.map(timestamp),
        external_reference: g.external_reference.clone(),
        money_paid: money_to_pb(&g.money_paid),
        created_by: g.created_by.clone(),
        created_at: Some(timestamp(g.created_at)),
        revoked: g.is_revoked,
    }
}

pub fn account_to_pb(a: &crate::domain::account::Account) -> pb::Account {
    pb::Account {
        account_id: a.id.clone(),
        display_name: a.display_name.clone(),
        status: account_status_to_pb(a.status) as i32,
        plan: a.plan.as_ref().map(plan_to_pb),
        subscription_status: subscription_status_to_pb(a.subscription) as i32,
        pending_plan: a.pending_plan.as_deref().map(plan_to_pb),
        limits: Some(limits_to_pb(&a.limits)),
        overage_policy: overage_policy_to_pb(a.overage_policy) as i32,
        precision: a.precision,
        credit_currency: a.credit_currency.clone().unwrap_or_default(),
        created_at: Some(timestamp(a.created_at)),
        cycle_start: Some(timestamp(a.cycle.start)),
        cycle_end: Some(timestamp(a.cycle.end)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_zero_and_bad_ids_are_rejected_with_the_field() {
        let target = |account: &str, user: &str, quantity| {
            spend_target(account.into(), user.into(), String::new(), "chat".into(), quantity, HashMap::new())
        };
        assert_eq!(target("acme", "", 0).unwrap_err().field, "quantity");
        assert_eq!(target("ac me", "", 1).unwrap_err().field, "account_id");
        assert_eq!(target("acme", "u/1", 1).unwrap_err().field, "user_id");
        assert!(target("acme", "", u64::MAX).is_ok());
    }

    #[test]
    fn low_balance_accepts_percent() {
        let l = limits(&Some(pb::Limits { low_balance_threshold: "10%".into(), ..Default::default() })).unwrap();
        assert_eq!(low_balance_text(&l.low_balance), "10%");
        assert!(limits(&Some(pb::Limits { low_balance_threshold: "-1".into(), ..Default::default() })).is_err());
    }

    #[test]
    fn unknown_enum_values_are_rejected() {
        assert!(grant_kind("kind", 99).is_err());
        assert!(overage_policy(42).is_err());
    }
}
