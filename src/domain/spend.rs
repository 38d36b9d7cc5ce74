//! The decision: may this account spend these credits (and meter units) now, and what
//! changes when it does. Every limit is checked before anything moves, so a spend is
//! all-or-nothing. Callers hold the account's lock for the check and the change together.

use super::account::{Account, AccountStatus, OveragePolicy};
use super::amount::Credits;
use super::grant::{self, Allocation};
use super::hold::{HeldUnits, Hold, HoldEnd};
use super::ids::IdGenerator;
use super::ledger::{Denial, DenialReason, EntryKind, LedgerEntry};
use super::limits::MeterKind;
use super::Now;
use chrono::DateTime;
use chrono::Utc;
use rust_decimal::Decimal;

/// What one spend asks of the account's limits.
#[derive(Clone, Debug)]
pub struct SpendAsk<'a> {
    pub user_id: Option<&'a str>,
    pub workspace_id: Option<&'a str>,
    pub credits: Credits,
    /// The meter the action counts against, and how many units.
    pub meter: Option<(&'a str, u64)>,
}

/// The money side of a settled Commit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settlement {
    pub charged: Credits,
    pub allocations: Vec<Allocation>,
    pub shortfall: Credits,
    /// Returned to the account because the hold ended (final commits).
    pub released: Credits,
    pub still_held: Credits,
}

/// Why a Commit, Release or Extend cannot proceed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    #[error("reservation {0} was already {1}")]
    Resolved(String, &'static str),
    #[error("reservation {0} does not exist")]
    Unknown(String),
}

impl Account {
    pub fn meter_kind(&self, meter: &str) -> MeterKind {
        self.limits.meters.get(meter).map_or(MeterKind::CycleCounter, |m| m.kind)
    }

    /// Checks every limit at once; the first one without room is the reason.
    pub fn check(&self, ask: &SpendAsk, now: DateTime<Utc>) -> Result<(), Denial> {
        if self.status == AccountStatus::Suspended {
            return Err(Denial::new(DenialReason::AccountSuspended));
        }
        if ask.credits > self.spendable(now) + self.overdraft_headroom() {
            return Err(Denial::new(DenialReason::InsufficientCredits));
        }
        if let Some(cap) = self.limits.spending_cap {
            if self.usage.spend + self.held_total() + ask.credits > cap {
                return Err(Denial::new(DenialReason::SpendingCapReached));
            }
        }
        if let Some(user) = ask.user_id {
            if let Some(cap) = self.limits.user_cap(user) {
                let spent = self.usage.by_user.get(user).copied().unwrap_or_default();
                if spent + self.held_by_user(user) + ask.credits > cap {
                    return Err(Denial::new(DenialReason::UserCapReached));
                }
            }
        }
        if let Some(ws) = ask.workspace_id {
            if let Some(cap) = self.limits.workspace_cap(ws) {
                let spent = self.usage.by_workspace.get(ws).copied().unwrap_or_default();
                if spent + self.held_by_workspace(ws) + ask.credits > cap {
                    return Err(Denial::new(DenialReason::WorkspaceCapReached));
                }
            }
        }
        if let Some((meter, units)) = ask.meter {
            if let Some(limit) = self.limits.meters.get(meter) {
                if self.meter_in_use(meter, limit.kind).saturating_add(units) > limit.limit {
                    return Err(Denial { reason: DenialReason::MeterLimitReached, meter: Some(meter.to_string()) });
                }
            }
        }
        Ok(())
    }

    /// Charges a checked spend: grants in burn-down order, then overdraft. Returns what
    /// each grant paid.
    pub fn deduct(&mut self, ask: &SpendAsk, now: DateTime<Utc>) -> Vec<Allocation> {
        let (allocations, rest) = grant::take(&mut self.grants, ask.credits, now);
        self.totals.consumed += ask.credits - rest;
        self.overdraft_used += rest;
        self.count_spend(ask.user_id, ask.workspace_id, ask.credits);
        if let Some((meter, units)) = ask.meter {
            self.count_meter(meter, units);
        }
        allocations
    }

    /// Holds a checked spend. `hold` comes with its context filled and nothing held yet.
    pub fn reserve(&mut self, mut hold: Hold, ask: &SpendAsk, now: DateTime<Utc>) -> &Hold {
        let (allocations, rest) = grant::hold(&mut self.grants, ask.credits, now);
        hold.credits = ask.credits;
        hold.allocations = allocations;
        hold.overdraft = rest;
        self.overdraft_held += rest;
        hold.meter =
            ask.meter.map(|(meter, units)| HeldUnits { meter: meter.to_string(), kind: self.meter_kind(meter), units });
        let id = hold.id.clone();
        self.holds.insert(hold);
        &self.holds[&id]
    }

    /// A live hold, or why there is none.
    pub fn live_hold(&self, hold_id: &str) -> Result<&Hold, HoldError> {
        if let Some(h) = self.holds.get(hold_id) {
            return Ok(h);
        }
        match self.resolved_holds.iter().rev().find(|(id, _, _)| id == hold_id) {
            Some((_, end, _)) => Err(HoldError::Resolved(hold_id.to_string(), end.as_str())),
            None => Err(HoldError::Unknown(hold_id.to_string())),
        }
    }

    /// Charges `cost` for `quantity` units of work done under a hold. The hold pays first;
    /// beyond it the overage policy decides. `final` ends the hold and returns the rest.
    pub fn commit(
        &mut self,
        hold_id: &str,
        quantity: u64,
        cost: Credits,
        is_final: bool,
        now: Now,
    ) -> Result<Settlement, HoldError> {
        self.live_hold(hold_id)?;
        let mut hold = self.holds.remove(hold_id).expect("checked live");
        let mut s = Settlement::default();

        // 1. The held credits pay first: grants as promised, then the overdraft part.
        let from_hold = cost.min(hold.credits);
        let (taken, rest) = grant::consume_held(&mut self.grants, &mut hold.allocations, from_hold);
        self.totals.consumed += from_hold - rest;
        hold.overdraft -= rest;
        self.overdraft_held -= rest;
        self.overdraft_used += rest;
        hold.credits -= from_hold;
        s.allocations = taken;
        s.charged = from_hold;
        // Counted now, so the caps see it before any extra is weighed against them.
        self.count_spend(hold.user_id.as_deref(), hold.workspace_id.as_deref(), from_hold);

        // 2. Meter units: counters count what was used; the hold keeps covering the rest.
        if let Some(units) = hold.meter.as_mut() {
            if units.kind == MeterKind::CycleCounter {
                let meter = units.meter.clone();
                units.units = units.units.saturating_sub(quantity);
                self.count_meter(&meter, quantity);
            }
        } else if let Some(meter) = hold.price.meter.clone() {
            self.count_meter(&meter, quantity);
        }
        hold.quantity = hold.quantity.saturating_sub(quantity);

        // 3. A final commit returns what is left before any extra is taken, so the extra
        //    sees the account's true headroom.
        if is_final {
            grant::unhold(&mut self.grants, &hold.allocations);
            self.overdraft_held -= hold.overdraft;
            s.released = hold.credits;
            self.remember_resolved(&hold.id, HoldEnd::Committed, now.wall);
        }

        // 4. Cost beyond the hold: the work is done; the policy says how much may be taken.
        let extra = cost - from_hold;
        if extra > Decimal::ZERO {
            let allowance = match self.overage_policy {
                OveragePolicy::CapAtHold => Decimal::ZERO,
                OveragePolicy::RecordShortfall => self.spendable(now.wall),
                OveragePolicy::AllowOverdraft => self.spendable(now.wall) + self.overdraft_headroom(),
            };
            let take =
                extra.min(allowance).min(self.cap_headroom(hold.user_id.as_deref(), hold.workspace_id.as_deref()));
            let (mut taken, rest) = grant::take(&mut self.grants, take, now.wall);
            self.totals.consumed += take - rest;
            self.overdraft_used += rest;
            s.allocations.append(&mut taken);
            s.charged += take;
            s.shortfall = extra - take;
            self.count_spend(hold.user_id.as_deref(), hold.workspace_id.as_deref(), take);
        }

        if !is_final {
            s.still_held = hold.credits;
            self.holds.insert(hold);
        }
        Ok(s)
    }

    /// Frees a live hold without charging it.
    pub fn release(&mut self, hold_id: &str, now: Now, ids: &IdGenerator) -> Result<LedgerEntry, HoldError> {
        self.live_hold(hold_id)?;
        Ok(self.end_hold(hold_id, HoldEnd::Released, now, ids))
    }

    /// Moves a live hold's expiry to `ttl_ms` from now.
    pub fn extend(&mut self, hold_id: &str, ttl_ms: u64, now: Now) -> Result<&Hold, HoldError> {
        self.live_hold(hold_id)?;
        let expires_at = now.wall + chrono::Duration::milliseconds(ttl_ms as i64);
        Ok(self.holds.extend(hold_id, now.mono_ms + ttl_ms, expires_at).expect("checked live"))
    }

    /// Room left under every per-cycle spending cap that applies to this user and workspace.
    fn cap_headroom(&self, user: Option<&str>, workspace: Option<&str>) -> Credits {
        let mut room = Decimal::MAX;
        let held = self.held_total();
        if let Some(cap) = self.limits.spending_cap {
            room = room.min(cap - self.usage.spend - held);
        }
        if let Some(u) = user {
            if let Some(cap) = self.limits.user_cap(u) {
                room = room.min(cap - self.usage.by_user.get(u).copied().unwrap_or_default() - self.held_by_user(u));
            }
        }
        if let Some(w) = workspace {
            if let Some(cap) = self.limits.workspace_cap(w) {
                room = room
                    .min(cap - self.usage.by_workspace.get(w).copied().unwrap_or_default() - self.held_by_workspace(w));
            }
        }
        room.max(Decimal::ZERO)
    }

    fn count_spend(&mut self, user: Option<&str>, workspace: Option<&str>, credits: Credits) {
        self.totals.charged += credits;
        self.usage.spend += credits;
        if let Some(u) = user {
            *self.usage.by_user.entry(u.to_string()).or_default() += credits;
        }
        if let Some(w) = workspace {
            *self.usage.by_workspace.entry(w.to_string()).or_default() += credits;
        }
    }

    fn count_meter(&mut self, meter: &str, units: u64) {
        if self.meter_kind(meter) == MeterKind::CycleCounter {
            let used = self.usage.meters.entry(meter.to_string()).or_default();
            *used = used.saturating_add(units);
        }
    }
}

/// The ledger entry of a decided spend (allowed or denied), context filled from the hold
/// or the request by the caller.
pub fn entry_kind_for(denied: bool, reserve: bool) -> EntryKind {
    match (denied, reserve) {
        (true, _) => EntryKind::Denied,
        (false, true) => EntryKind::Reserve,
        (false, false) => EntryKind::Deduct,
    }
}
