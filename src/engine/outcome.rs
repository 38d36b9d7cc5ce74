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

/// An [`Outcome`] borrowed, to keep an answer without copying the outcome it also returns.
/// The same variants in the same order, so it encodes to the very bytes of the `Outcome`
/// it mirrors (a test holds it to that); answers are only ever read back as `Outcome`.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeRef<'a> {
    Deduct(&'a DeductOutcome),
    Reserve(&'a ReserveOutcome),
    Commit(&'a CommitOutcome),
    Release(&'a ReleaseOutcome),
    Extend(&'a ExtendOutcome),
    Grant(&'a GrantOutcome),
    Revoke(&'a RevokeOutcome),
    AccountChanged,
}

impl Outcome {
    pub fn borrowed(&self) -> OutcomeRef<'_> {
        match self {
            Outcome::Deduct(o) => OutcomeRef::Deduct(o),
            Outcome::Reserve(o) => OutcomeRef::Reserve(o),
            Outcome::Commit(o) => OutcomeRef::Commit(o),
            Outcome::Release(o) => OutcomeRef::Release(o),
            Outcome::Extend(o) => OutcomeRef::Extend(o),
            Outcome::Grant(o) => OutcomeRef::Grant(o),
            Outcome::Revoke(o) => OutcomeRef::Revoke(o),
            Outcome::AccountChanged => OutcomeRef::AccountChanged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::grant::GrantKind;
    use crate::domain::ledger::DenialReason;
    use rust_decimal::Decimal;

    fn every_outcome() -> Vec<Outcome> {
        let at = DateTime::from_timestamp_millis(1_790_000_000_123).unwrap();
        let allocations =
            vec![Allocation { grant_id: "gr_1".into(), kind: GrantKind::Purchase, credits: Decimal::new(15, 1) }];
        let grant = Grant::new("gr_2".into(), GrantKind::Plan, Decimal::new(100, 0), at, at);
        vec![
            Outcome::Deduct(DeductOutcome {
                denial: Some(Denial { reason: DenialReason::MeterLimitReached, meter: Some("tokens".into()) }),
                credits_charged: Decimal::new(45, 4),
                allocations: allocations.clone(),
                balance: Decimal::new(-3, 0),
                cycle_spend: Decimal::new(7, 2),
                ledger_entry_id: "le_1".into(),
                price_version: 3,
            }),
            Outcome::Reserve(ReserveOutcome {
                denial: None,
                reservation_id: "acme/rs_1".into(),
                credits_held: Decimal::new(2, 0),
                allocations: allocations.clone(),
                expires_at: Some(at),
                balance: Decimal::new(98, 0),
                ledger_entry_id: "le_2".into(),
                price_version: 4,
            }),
            Outcome::Commit(CommitOutcome {
                credits_charged: Decimal::new(1, 0),
                credits_released: Decimal::new(1, 0),
                credits_still_held: Decimal::ZERO,
                shortfall: Decimal::new(1, 3),
                allocations,
                balance: Decimal::new(97, 0),
                cycle_spend: Decimal::new(3, 0),
                ledger_entry_id: "le_3".into(),
            }),
            Outcome::Release(ReleaseOutcome {
                credits_released: Decimal::new(5, 1),
                balance: Decimal::new(1, 0),
                ledger_entry_id: "le_4".into(),
            }),
            Outcome::Extend(ExtendOutcome { expires_at: at }),
            Outcome::Grant(GrantOutcome {
                grant: grant.clone(),
                balance: Decimal::new(100, 0),
                ledger_entry_id: "le_5".into(),
            }),
            Outcome::Revoke(RevokeOutcome {
                grant,
                credits_revoked: Decimal::new(100, 0),
                balance: Decimal::ZERO,
                ledger_entry_id: "le_6".into(),
            }),
            Outcome::AccountChanged,
        ]
    }

    /// Answers are kept from the borrowed form and read back as `Outcome`: the two must
    /// agree on every variant's bytes, or a replay would answer with another operation.
    #[test]
    fn a_borrowed_outcome_encodes_to_the_bytes_of_the_outcome() {
        for outcome in every_outcome() {
            let owned = postcard::to_stdvec(&outcome).unwrap();
            let borrowed = postcard::to_stdvec(&outcome.borrowed()).unwrap();
            assert_eq!(borrowed, owned, "{outcome:?}");
            assert_eq!(postcard::from_bytes::<Outcome>(&borrowed).unwrap(), outcome);
        }
    }
}
