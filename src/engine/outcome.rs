//! What the engine answers. Stored per request id, so a retry gets the same answer again.

use crate::domain::grant::{Allocation, Grant};
use crate::domain::ledger::Denial;
use crate::domain::Credits;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeductOutcome {
    /// `None` when allowed.
    pub denial: Option<Denial>,
    #[serde(with = "crate::domain::amount::compact")]
    pub credits_charged: Credits,
    pub allocations: Vec<Allocation>,
    #[serde(with = "crate::domain::amount::compact")]
    pub balance: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub cycle_spend: Credits,
    pub ledger_entry_id: String,
    pub price_version: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReserveOutcome {
    pub denial: Option<Denial>,
    pub reservation_id: String,
    #[serde(with = "crate::domain::amount::compact")]
    pub credits_held: Credits,
    pub allocations: Vec<Allocation>,
    #[serde(with = "crate::domain::time::compact_opt")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(with = "crate::domain::amount::compact")]
    pub balance: Credits,
    pub ledger_entry_id: String,
    pub price_version: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitOutcome {
    #[serde(with = "crate::domain::amount::compact")]
    pub credits_charged: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub credits_released: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub credits_still_held: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub shortfall: Credits,
    pub allocations: Vec<Allocation>,
    #[serde(with = "crate::domain::amount::compact")]
    pub balance: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub cycle_spend: Credits,
    pub ledger_entry_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseOutcome {
    #[serde(with = "crate::domain::amount::compact")]
    pub credits_released: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub balance: Credits,
    pub ledger_entry_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtendOutcome {
    #[serde(with = "crate::domain::time::compact")]
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrantOutcome {
    pub grant: Grant,
    #[serde(with = "crate::domain::amount::compact")]
    pub balance: Credits,
    pub ledger_entry_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RevokeOutcome {
    pub grant: Grant,
    #[serde(with = "crate::domain::amount::compact")]
    pub credits_revoked: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub balance: Credits,
    pub ledger_entry_id: String,
}

/// Any answer worth replaying.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Deduct(DeductOutcome),
    Reserve(ReserveOutcome),
    Commit(CommitOutcome),
    Release(ReleaseOutcome),
    Extend(ExtendOutcome),
    Grant(GrantOutcome),
    Revoke(RevokeOutcome),
    /// Admin changes that answer with the account itself (replayed by reading it again).
    AccountChanged,
}
