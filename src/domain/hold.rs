//! Holds (reservations): credits and meter units promised to work in progress.
//! A hold resolves at most once: committed, released or expired.

use super::amount::Credits;
use super::grant::Allocation;
use super::ids::IdGenerator;
use super::ledger::{EntryKind, LedgerEntry};
use super::limits::MeterKind;
use super::price::PriceEntry;
use super::Now;
use super::SmallMap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub id: String,
    pub request_id: String,
    pub user_id: Option<String>,
    pub workspace_id: Option<String>,
    /// The price at reserve time: a Commit is charged at the price that was promised.
    /// Shared with the price book version it came from.
    pub price: Arc<PriceEntry>,
    pub price_version: u64,
    /// Estimated quantity still covered by the hold.
    pub quantity: u64,
    /// Credits still held: the sum of `allocations` plus `overdraft`.
    #[serde(with = "crate::domain::amount::compact")]
    pub credits: Credits,
    pub allocations: Vec<Allocation>,
    /// Part of the hold backed by the account's overdraft limit.
    #[serde(with = "crate::domain::amount::compact")]
    pub overdraft: Credits,
    /// Meter units held (counters: against this cycle's limit; gauges: until resolved).
    pub meter: Option<HeldUnits>,
    #[serde(with = "crate::domain::time::compact")]
    pub created_at: DateTime<Utc>,
    /// Wall-clock expiry, for display and for restoring the deadline after a restart.
    #[serde(with = "crate::domain::time::compact")]
    pub expires_at: DateTime<Utc>,
    /// Expiry on the server's monotonic clock (milliseconds): what actually decides.
    #[serde(skip)]
    pub deadline_ms: u64,
    pub metadata: SmallMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldUnits {
    pub meter: String,
    pub kind: MeterKind,
    pub units: u64,
}

/// How a hold ended, kept for a while so a late Commit gets a precise error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldEnd {
    Committed,
    Released,
    Expired,
}

impl HoldEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldEnd::Committed => "committed",
            HoldEnd::Released => "released",
            HoldEnd::Expired => "expired",
        }
    }
}

/// An entry describing a hold, with the hold's context filled in.
pub fn hold_entry(account_id: &str, hold: &Hold, kind: EntryKind, now: Now, ids: &IdGenerator) -> LedgerEntry {
    let mut e = LedgerEntry::new(ids.next_string("le_", now.wall_ms()), account_id, kind, now.wall);
    e.user_id = hold.user_id.clone();
    e.workspace_id = hold.workspace_id.clone();
    e.action = hold.price.action.clone();
    e.category = hold.price.category.clone();
    e.quantity = hold.quantity;
    e.unit_name = hold.price.unit_name.clone();
    e.unit_price = hold.price.credits_per_unit;
    e.reservation_id = Some(hold.id.clone());
    e.price_version = hold.price_version;
    e
}

#[cfg(test)]
impl Hold {
    /// A one-credit hold on a plain per-request price, made at `created_at`, for tests.
    pub(crate) fn sample(id: &str, created_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> Hold {
        Hold {
            id: id.to_string(),
            request_id: format!("req-{id}"),
            user_id: None,
            workspace_id: None,
            price: Arc::new(PriceEntry {
                action: "chat".into(),
                category: "".into(),
                unit_name: "request".into(),
                unit_size: 1,
                credits_per_unit: 1.into(),
                meter: None,
            }),
            price_version: 1,
            quantity: 1,
            credits: 1.into(),
            allocations: Vec::new(),
            overdraft: 0.into(),
            meter: None,
            created_at,
            expires_at,
            deadline_ms: 0,
            metadata: Default::default(),
        }
    }
}
