//! Ledger entries: the immutable record of every movement and every denied attempt.

use super::amount::Credits;
use super::grant::Allocation;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Deduct,
    Reserve,
    Commit,
    Release,
    ExpireHold,
    Grant,
    ExpireGrant,
    Adjustment,
    Denied,
    RevokeGrant,
    Extend,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Deduct => "deduct",
            EntryKind::Reserve => "reserve",
            EntryKind::Commit => "commit",
            EntryKind::Release => "release",
            EntryKind::ExpireHold => "expire_hold",
            EntryKind::Grant => "grant",
            EntryKind::ExpireGrant => "expire_grant",
            EntryKind::Adjustment => "adjustment",
            EntryKind::Denied => "denied",
            EntryKind::RevokeGrant => "revoke_grant",
            EntryKind::Extend => "extend",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenialReason {
    InsufficientCredits,
    SpendingCapReached,
    UserCapReached,
    WorkspaceCapReached,
    MeterLimitReached,
    AccountSuspended,
    UnknownAction,
    AccountNotFound,
}

impl DenialReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenialReason::InsufficientCredits => "INSUFFICIENT_CREDITS",
            DenialReason::SpendingCapReached => "SPENDING_CAP_REACHED",
            DenialReason::UserCapReached => "USER_CAP_REACHED",
            DenialReason::WorkspaceCapReached => "WORKSPACE_CAP_REACHED",
            DenialReason::MeterLimitReached => "METER_LIMIT_REACHED",
            DenialReason::AccountSuspended => "ACCOUNT_SUSPENDED",
            DenialReason::UnknownAction => "UNKNOWN_ACTION",
            DenialReason::AccountNotFound => "ACCOUNT_NOT_FOUND",
        }
    }
}

/// Why a spend was refused; the meter is named when a meter had no room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub reason: DenialReason,
    pub meter: Option<String>,
}

impl Denial {
    pub fn new(reason: DenialReason) -> Self {
        Denial { reason, meter: None }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub id: String,
    pub account_id: String,
    pub kind: EntryKind,
    #[serde(with = "crate::domain::time::compact")]
    pub occurred_at: DateTime<Utc>,
    pub user_id: Option<String>,
    pub workspace_id: Option<String>,
    pub action: String,
    /// Shared with the price entry that priced it, as `unit_name` is.
    pub category: Arc<str>,
    pub quantity: u64,
    pub unit_name: Arc<str>,
    #[serde(with = "crate::domain::amount::compact")]
    pub unit_price: Credits,
    /// Credits moved: charged, held, released, granted, expired…
    #[serde(with = "crate::domain::amount::compact")]
    pub credits: Credits,
    pub allocations: Vec<Allocation>,
    pub denial: Option<Denial>,
    pub request_id: Option<String>,
    pub reservation_id: Option<String>,
    pub price_version: u64,
    pub metadata: BTreeMap<String, String>,
    /// Cost a Commit could not charge.
    #[serde(with = "crate::domain::amount::compact")]
    pub shortfall: Credits,
}

impl LedgerEntry {
    /// An entry of `kind` with every optional part empty; callers fill what applies.
    pub fn new(id: String, account_id: impl Into<String>, kind: EntryKind, occurred_at: DateTime<Utc>) -> Self {
        LedgerEntry {
            id,
            account_id: account_id.into(),
            kind,
            occurred_at,
            user_id: None,
            workspace_id: None,
            action: String::new(),
            category: Arc::default(),
            quantity: 0,
            unit_name: Arc::default(),
            unit_price: Decimal::ZERO,
            credits: Decimal::ZERO,
            allocations: Vec::new(),
            denial: None,
            request_id: None,
            reservation_id: None,
            price_version: 0,
            metadata: BTreeMap::new(),
            shortfall: Decimal::ZERO,
        }
    }
}
