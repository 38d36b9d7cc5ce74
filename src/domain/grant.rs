//! Grants (buckets of credits) and the burn-down order in which they pay.
//!
//! Per grant, always: `amount = remaining + consumed + expired + revoked`, and
//! `0 ≤ held ≤ remaining` (`held` is the part of `remaining` promised to live holds).

use super::amount::Credits;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    Plan,
    Purchase,
    Promo,
    Adjustment,
}

impl GrantKind {
    /// Lower pays first: monthly allocations before promos before bought credits.
    pub fn default_priority(self) -> u32 {
        match self {
            GrantKind::Plan => 10,
            GrantKind::Promo => 20,
            GrantKind::Purchase => 30,
            GrantKind::Adjustment => 40,
        }
    }

    /// "Free" credits in reports: the plan allocation and promotions.
    pub fn is_free(self) -> bool {
        matches!(self, GrantKind::Plan | GrantKind::Promo)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::Plan => "plan",
            GrantKind::Purchase => "purchase",
            GrantKind::Promo => "promo",
            GrantKind::Adjustment => "adjustment",
        }
    }
}

/// Money paid for credits: an exact amount and an ISO 4217 code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    #[serde(with = "crate::domain::amount::compact")]
    pub amount: Decimal,
    pub currency: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub kind: GrantKind,
    #[serde(with = "crate::domain::amount::compact")]
    pub amount: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub remaining: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub held: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub consumed: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub expired: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub revoked: Credits,
    pub priority: u32,
    #[serde(with = "crate::domain::time::compact")]
    pub effective_at: DateTime<Utc>,
    #[serde(with = "crate::domain::time::compact_opt")]
    pub expires_at: Option<DateTime<Utc>>,
    pub external_reference: String,
    pub money_paid: Option<Money>,
    pub created_by: String,
    #[serde(with = "crate::domain::time::compact")]
    pub created_at: DateTime<Utc>,
    /// Set by RevokeGrant: the grant pays nothing more; its held part settles with its holds.
    pub is_revoked: bool,
}

impl Grant {
    /// A fresh grant of `amount`, nothing spent yet.
    pub fn new(
        id: String,
        kind: GrantKind,
        amount: Credits,
        effective_at: DateTime<Utc>,
        created_at: DateTime<Utc>,
    ) -> Self {
        Grant {
            id,
            kind,
            amount,
            remaining: amount,
            held: Decimal::ZERO,
            consumed: Decimal::ZERO,
            expired: Decimal::ZERO,
            revoked: Decimal::ZERO,
            priority: kind.default_priority(),
            effective_at,
            expires_at: None,
            external_reference: String::new(),
            money_paid: None,
            created_by: String::new(),
            created_at,
            is_revoked: false,
        }
    }

    /// Can pay at `now`: effective, not expired, not revoked.
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        !self.is_revoked && self.effective_at <= now && self.expires_at.is_none_or(|end| now < end)
    }

    /// Past its expiry or revoked: its unheld remainder must be written off.
    pub fn is_dead(&self, now: DateTime<Utc>) -> bool {
        self.is_revoked || self.expires_at.is_some_and(|end| end <= now)
    }

    /// Remaining credits not promised to a hold.
    pub fn available(&self) -> Credits {
        self.remaining - self.held
    }
}

/// How much one movement took from (or held in) one grant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub grant_id: String,
    pub kind: GrantKind,
    #[serde(with = "crate::domain::amount::compact")]
    pub credits: Credits,
}

/// Puts grants in burn-down order: lowest priority number, then soonest expiry (never-expiring
/// last), then oldest, then id (so the order is total and stable across restarts).
pub fn sort_burn_down(grants: &mut [Grant]) {
    grants.sort_by(|a, b| {
        (a.priority, a.expires_at.is_none(), a.expires_at, a.created_at, &a.id).cmp(&(
            b.priority,
            b.expires_at.is_none(),
            b.expires_at,
            b.created_at,
            &b.id,
        ))
    });
}

/// Credits the grants can pay at `now`, holds excluded.
pub fn spendable(grants: &[Grant], now: DateTime<Utc>) -> Credits {
    grants.iter().filter(|g| g.is_usable(now)).map(Grant::available).sum()
}

/// Consumes up to `want` from available credits in burn-down order. Returns what was taken
/// from each grant and the part that could not be taken.
pub fn take(grants: &mut [Grant], want: Credits, now: DateTime<Utc>) -> (Vec<Allocation>, Credits) {
    move_available(grants, want, now, |g, x| {
        g.remaining -= x;
        g.consumed += x;
    })
}

/// Promises up to `want` of available credits to a hold, in burn-down order.
pub fn hold(grants: &mut [Grant], want: Credits, now: DateTime<Utc>) -> (Vec<Allocation>, Credits) {
    move_available(grants, want, now, |g, x| g.held += x)
}

fn move_available(
    grants: &mut [Grant],
    want: Credits,
    now: DateTime<Utc>,
    mut apply: impl FnMut(&mut Grant, Credits),
) -> (Vec<Allocation>, Credits) {
    let mut left = want;
    let mut allocations = Vec::new();
    for grant in grants.iter_mut().filter(|g| g.is_usable(now)) {
        if left.is_zero() {
            break;
        }
        let x = left.min(grant.available());
        if x > Decimal::ZERO {
            apply(grant, x);
            left -= x;
            allocations.push(Allocation { grant_id: grant.id.clone(), kind: grant.kind, credits: x });
        }
    }
    (allocations, left)
}

/// Consumes up to `want` from what a hold has promised (`held`, updated in place).
/// Returns the allocations consumed and the part not covered by the hold.
pub fn consume_held(grants: &mut [Grant], held: &mut Vec<Allocation>, want: Credits) -> (Vec<Allocation>, Credits) {
    let mut left = want;
    let mut taken = Vec::new();
    for promise in held.iter_mut() {
        if left.is_zero() {
            break;
        }
        let x = left.min(promise.credits);
        if x.is_zero() {
            continue;
        }
        if let Some(g) = grants.iter_mut().find(|g| g.id == promise.grant_id) {
            g.held -= x;
            g.remaining -= x;
            g.consumed += x;
        }
        promise.credits -= x;
        left -= x;
        taken.push(Allocation { grant_id: promise.grant_id.clone(), kind: promise.kind, credits: x });
    }
    held.retain(|a| !a.credits.is_zero());
    (taken, left)
}

/// Returns a hold's promises to their grants.
pub fn unhold(grants: &mut [Grant], held: &[Allocation]) {
    for promise in held {
        if let Some(g) = grants.iter_mut().find(|g| g.id == promise.grant_id) {
            g.held -= promise.credits;
        }
    }
}

/// What writing off dead grants moved: (grant, credits, revoked rather than expired).
pub type WriteOff = (Allocation, bool);

/// Writes off the unheld remainder of expired and revoked grants, then drops grants with
/// nothing left (their history is in the ledger).
pub fn write_off_dead(grants: &mut Vec<Grant>, now: DateTime<Utc>) -> Vec<WriteOff> {
    let mut moved = Vec::new();
    for g in grants.iter_mut().filter(|g| g.is_dead(now)) {
        let x = g.available();
        if x > Decimal::ZERO {
            g.remaining -= x;
            if g.is_revoked {
                g.revoked += x;
            } else {
                g.expired += x;
            }
            moved.push((Allocation { grant_id: g.id.clone(), kind: g.kind, credits: x }, g.is_revoked));
        }
    }
    grants.retain(|g| !(g.remaining.is_zero() && g.held.is_zero()));
    moved
}
