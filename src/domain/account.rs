//! An organization's whole state: plan, grants, holds, this cycle's usage, limits.
//! The engine keeps one per account in memory and persists it whole; every rule that
//! changes it lives here or in `spend`.
//!
//! Conservation, always: `totals.granted = Σ grant.remaining + totals.consumed +
//! totals.expired + totals.revoked`, and `totals.charged = totals.consumed + overdraft_used`.

use super::amount::Credits;
use super::cycle::Cycle;
use super::grant::{self, Grant, GrantKind, Money};
use super::hold::{hold_entry, HoldEnd};
use super::ids::IdGenerator;
use super::ledger::{EntryKind, LedgerEntry};
use super::limits::{Limits, MeterKind};
use super::live_holds::LiveHolds;
use super::Now;
use super::SmallMap;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    Active,
    Suspended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Active,
    Pending,
    Cancelled,
    Expired,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OveragePolicy {
    #[default]
    RecordShortfall,
    AllowOverdraft,
    CapAtHold,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    #[serde(with = "crate::domain::amount::compact")]
    pub credits_per_cycle: Credits,
    pub cycle_anchor_day: u32,
    #[serde(with = "crate::domain::amount::compact")]
    pub rollover_cap: Credits,
    pub price: Option<Money>,
}

/// Spend and usage of the current cycle (holds are counted separately, from `holds`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CycleUsage {
    #[serde(with = "crate::domain::amount::compact")]
    pub spend: Credits,
    #[serde(with = "crate::domain::amount::compact_map")]
    pub by_user: SmallMap<String, Credits>,
    #[serde(with = "crate::domain::amount::compact_map")]
    pub by_workspace: SmallMap<String, Credits>,
    /// Cycle counters only; gauges are read from holds.
    pub meters: SmallMap<String, u64>,
}

/// Lifetime sums that make conservation checkable at any moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    #[serde(with = "crate::domain::amount::compact")]
    pub granted: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub consumed: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub expired: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub revoked: Credits,
    #[serde(with = "crate::domain::amount::compact")]
    pub charged: Credits,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub display_name: String,
    pub status: AccountStatus,
    pub plan: Option<Plan>,
    /// A downgrade (or deferred upgrade) waiting for the next cycle start (boxed: rare).
    pub pending_plan: Option<Box<Plan>>,
    pub subscription: SubscriptionStatus,
    pub limits: Limits,
    pub overage_policy: OveragePolicy,
    /// Fractional digits costs are rounded up to.
    pub precision: u32,
    pub credit_currency: Option<String>,
    #[serde(with = "crate::domain::time::compact")]
    pub created_at: DateTime<Utc>,
    pub cycle: Cycle,
    /// Always in burn-down order.
    pub grants: Vec<Grant>,
    /// Live holds by id, and what they keep back as running sums. Ids increase, so a new
    /// hold is appended; ending one shifts those after it.
    pub holds: LiveHolds,
    pub usage: CycleUsage,
    /// Credits owed below zero (only with an overdraft limit).
    #[serde(with = "crate::domain::amount::compact")]
    pub overdraft_used: Credits,
    /// Part of live holds backed by the overdraft limit.
    #[serde(with = "crate::domain::amount::compact")]
    pub overdraft_held: Credits,
    pub totals: Totals,
    /// Recently resolved holds, so a late Commit says what happened. Memory only and
    /// bounded: after a restart, or for a hold long gone, a late Commit is told the
    /// reservation does not exist (still FAILED_PRECONDITION).
    #[serde(skip)]
    pub resolved_holds: VecDeque<ResolvedHold>,
    /// Start of the cycle whose plan grant was issued, so it is issued once per cycle.
    #[serde(with = "crate::domain::time::compact_opt")]
    pub plan_issued_for: Option<DateTime<Utc>>,
}

/// The monotonic deadline of a hold expiring at `expires_at`, as seen at `now`.
pub fn deadline_at(expires_at: DateTime<Utc>, now: Now) -> u64 {
    now.mono_ms + (expires_at - now.wall).num_milliseconds().max(0) as u64
}

/// A hold that ended: its id, how, and when.
pub type ResolvedHold = (String, HoldEnd, DateTime<Utc>);

pub const DEFAULT_PRECISION: u32 = 6;

/// How long, and how many, resolved holds are remembered for error messages.
const RESOLVED_MEMORY_HOURS: i64 = 24;
const RESOLVED_MEMORY_HOLDS: usize = 1024;

impl Account {
    /// A new account. Its first cycle is the one containing `now`; with an active plan the
    /// cycle's plan grant is issued at once (returned as ledger entries).
    pub fn open(mut self, now: Now, ids: &IdGenerator) -> (Account, Vec<LedgerEntry>) {
        self.cycle = Cycle::containing(self.anchor_day(), now.wall);
        let mut entries = Vec::new();
        self.issue_plan_grant(now, ids, &mut entries);
        (self, entries)
    }

    /// A blank account with the given id; fill the fields, then [`Account::open`] it.
    pub fn blank(id: &str, created_at: DateTime<Utc>) -> Account {
        Account {
            id: id.to_string(),
            display_name: String::new(),
            status: AccountStatus::Active,
            plan: None,
            pending_plan: None,
            subscription: SubscriptionStatus::Expired,
            limits: Limits::default(),
            overage_policy: OveragePolicy::default(),
            precision: DEFAULT_PRECISION,
            credit_currency: None,
            created_at,
            cycle: Cycle::containing(1, created_at),
            grants: Vec::new(),
            holds: LiveHolds::default(),
            usage: CycleUsage::default(),
            overdraft_used: Decimal::ZERO,
            overdraft_held: Decimal::ZERO,
            totals: Totals::default(),
            resolved_holds: VecDeque::new(),
            plan_issued_for: None,
        }
    }

    pub fn anchor_day(&self) -> u32 {
        self.plan.as_ref().map_or(1, |p| p.cycle_anchor_day)
    }

    /// Brings the account up to `now`: expires due holds, rolls over finished cycles, writes
    /// off dead grants. Called before every decision and by the periodic sweep.
    pub fn advance(&mut self, now: Now, ids: &IdGenerator) -> Vec<LedgerEntry> {
        let mut entries = Vec::new();
        for id in self.holds.due(now.mono_ms) {
            entries.push(self.end_hold(&id, HoldEnd::Expired, now, ids));
        }
        while now.wall >= self.cycle.end {
            self.roll_over(now, ids, &mut entries);
        }
        self.write_off(now, ids, &mut entries);
        // Oldest first (a wall clock stepping back may leave one a little longer; the count
        // stays bounded): only the front is looked at, not up to 1,024 entries every call.
        let forget_before = now.wall - chrono::Duration::hours(RESOLVED_MEMORY_HOURS);
        while self.resolved_holds.front().is_some_and(|(_, _, at)| *at < forget_before) {
            self.resolved_holds.pop_front();
        }
        entries
    }

    /// Adds a grant; credits owed on overdraft are repaid from it first.
    pub fn add_grant(&mut self, mut grant: Grant, now: Now, ids: &IdGenerator) -> Vec<LedgerEntry> {
        self.totals.granted += grant.amount;
        let mut entry =
            LedgerEntry::new(ids.next_string("le_", now.wall_ms()), &self.id, grant_entry_kind(grant.kind), now.wall);
        entry.credits = grant.amount;
        entry.allocations.push(grant::Allocation {
            grant_id: grant.id.clone(),
            kind: grant.kind,
            credits: grant.amount,
        });
        let mut entries = vec![entry];
        let repay = self.overdraft_used.min(grant.remaining);
        if repay > Decimal::ZERO && grant.is_usable(now.wall) {
            grant.remaining -= repay;
            grant.consumed += repay;
            self.overdraft_used -= repay;
            self.totals.consumed += repay;
            let mut e =
                LedgerEntry::new(ids.next_string("le_", now.wall_ms()), &self.id, EntryKind::Adjustment, now.wall);
            e.credits = repay;
            e.allocations.push(grant::Allocation { grant_id: grant.id.clone(), kind: grant.kind, credits: repay });
            e.metadata.insert("reason".into(), "overdraft_repaid".into());
            entries.push(e);
        }
        self.grants.push(grant);
        // Grants are added rarely and kept long: no room for more held by every account.
        self.grants.shrink_to_fit();
        grant::sort_burn_down(&mut self.grants);
        entries
    }

    /// Revokes what is left of a grant; the part promised to live holds settles with them.
    pub fn revoke_grant(&mut self, grant_id: &str, now: Now, ids: &IdGenerator) -> Option<(Credits, Vec<LedgerEntry>)> {
        let grant = self.grants.iter_mut().find(|g| g.id == grant_id && !g.is_revoked)?;
        grant.is_revoked = true;
        let before = self.totals.revoked;
        let mut entries = Vec::new();
        self.write_off(now, ids, &mut entries);
        Some((self.totals.revoked - before, entries))
    }

    // ---- views ---------------------------------------------------------------------------

    /// Credits in usable grants not promised to holds.
    pub fn spendable(&self, now: DateTime<Utc>) -> Credits {
        grant::spendable(&self.grants, now)
    }

    /// The balance shown to users: spendable credits minus what is owed and held on overdraft.
    pub fn balance(&self, now: DateTime<Utc>) -> Credits {
        self.spendable(now) - self.overdraft_used - self.overdraft_held
    }

    /// How much more may be spent below zero.
    pub fn overdraft_headroom(&self) -> Credits {
        (self.limits.overdraft_limit - self.overdraft_used - self.overdraft_held).max(Decimal::ZERO)
    }

    pub fn held_total(&self) -> Credits {
        self.holds.credits()
    }

    pub fn held_by_user(&self, user: &str) -> Credits {
        self.holds.credits_of_user(user)
    }

    pub fn held_by_workspace(&self, workspace: &str) -> Credits {
        self.holds.credits_of_workspace(workspace)
    }

    pub fn meter_held(&self, meter: &str) -> u64 {
        self.holds.units_of_meter(meter)
    }

    /// Units of `meter` in use: this cycle's count (counters) plus units held.
    pub fn meter_in_use(&self, meter: &str, kind: MeterKind) -> u64 {
        let counted = match kind {
            MeterKind::CycleCounter => self.usage.meters.get(meter).copied().unwrap_or(0),
            MeterKind::Gauge => 0,
        };
        counted.saturating_add(self.meter_held(meter))
    }

    /// After loading from the store: rebuild monotonic deadlines from wall-clock expiries.
    pub fn restore_deadlines(&mut self, now: Now) {
        self.holds.set_deadlines(|hold| Some(deadline_at(hold.expires_at, now)));
    }

    // ---- internals -----------------------------------------------------------------------

    pub(super) fn remember_resolved(&mut self, hold_id: &str, end: HoldEnd, at: DateTime<Utc>) {
        if self.resolved_holds.len() >= RESOLVED_MEMORY_HOLDS {
            self.resolved_holds.pop_front();
        }
        self.resolved_holds.push_back((hold_id.to_string(), end, at));
    }

    /// Ends a live hold without charging it (release or expiry). The caller checked it exists.
    pub(super) fn end_hold(&mut self, hold_id: &str, end: HoldEnd, now: Now, ids: &IdGenerator) -> LedgerEntry {
        let hold = self.holds.remove(hold_id).expect("hold exists");
        grant::unhold(&mut self.grants, &hold.allocations);
        self.overdraft_held -= hold.overdraft;
        self.remember_resolved(&hold.id, end, now.wall);
        let kind = if end == HoldEnd::Expired { EntryKind::ExpireHold } else { EntryKind::Release };
        let mut entry = hold_entry(&self.id, &hold, kind, now, ids);
        entry.credits = hold.credits;
        entry.allocations = hold.allocations;
        entry
    }

    fn roll_over(&mut self, now: Now, ids: &IdGenerator, entries: &mut Vec<LedgerEntry>) {
        let ended = self.cycle;
        let at = Now { wall: ended.end, mono_ms: now.mono_ms };
        // Unused plan credits of the ending cycle, and how much of it the plan carries.
        let unused: Credits = self
            .grants
            .iter()
            .filter(|g| g.kind == GrantKind::Plan && g.expires_at == Some(ended.end) && !g.is_revoked)
            .map(Grant::available)
            .sum();
        let carry = self.plan.as_ref().map_or(Decimal::ZERO, |p| unused.min(p.rollover_cap));
        self.write_off(at, ids, entries);
        if let Some(next_plan) = self.pending_plan.take() {
            self.plan = Some(*next_plan);
        }
        if self.subscription == SubscriptionStatus::Cancelled {
            self.subscription = SubscriptionStatus::Expired;
        }
        self.cycle = Cycle::containing(self.anchor_day(), ended.end);
        self.usage = CycleUsage::default();
        if carry > Decimal::ZERO {
            let mut g = Grant::new(ids.next_string("gr_", at.wall_ms()), GrantKind::Plan, carry, at.wall, at.wall);
            g.expires_at = Some(self.cycle.end);
            g.created_by = "rollover".into();
            let mut new = self.add_grant(g, at, ids);
            new[0].metadata.insert("reason".into(), "rollover".into());
            entries.append(&mut new);
        }
        self.issue_plan_grant(at, ids, entries);
    }

    /// The plan grant of the current cycle, when the subscription is active.
    pub fn issue_plan_grant(&mut self, now: Now, ids: &IdGenerator, entries: &mut Vec<LedgerEntry>) {
        let Some(plan) = self.plan.clone() else {
            return;
        };
        if self.subscription != SubscriptionStatus::Active
            || plan.credits_per_cycle.is_zero()
            || self.plan_issued_for == Some(self.cycle.start)
        {
            return;
        }
        self.plan_issued_for = Some(self.cycle.start);
        let mut g = Grant::new(
            ids.next_string("gr_", now.wall_ms()),
            GrantKind::Plan,
            plan.credits_per_cycle,
            now.wall,
            now.wall,
        );
        g.expires_at = Some(self.cycle.end);
        g.created_by = "plan".into();
        g.money_paid = plan.price.clone();
        let mut new = self.add_grant(g, now, ids);
        new[0].metadata.insert("reason".into(), "plan_renewed".into());
        new[0].metadata.insert("plan".into(), plan.name);
        entries.append(&mut new);
    }

    fn write_off(&mut self, now: Now, ids: &IdGenerator, entries: &mut Vec<LedgerEntry>) {
        for (allocation, revoked) in grant::write_off_dead(&mut self.grants, now.wall) {
            let kind = if revoked { EntryKind::RevokeGrant } else { EntryKind::ExpireGrant };
            if revoked {
                self.totals.revoked += allocation.credits;
            } else {
                self.totals.expired += allocation.credits;
            }
            let mut e = LedgerEntry::new(ids.next_string("le_", now.wall_ms()), &self.id, kind, now.wall);
            e.credits = allocation.credits;
            e.allocations.push(allocation);
            entries.push(e);
        }
    }
}

fn grant_entry_kind(kind: GrantKind) -> EntryKind {
    if kind == GrantKind::Adjustment {
        EntryKind::Adjustment
    } else {
        EntryKind::Grant
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolved_hold_is_remembered_for_a_day() {
        let start = DateTime::from_timestamp(1_750_000_000, 0).unwrap();
        let ids = IdGenerator::default();
        let (mut account, _) = Account::blank("org-1", start).open(Now { wall: start, mono_ms: 0 }, &ids);
        for hour in 0..3 {
            account.remember_resolved(
                &format!("org-1/rs_{hour}"),
                HoldEnd::Released,
                start + chrono::Duration::hours(hour),
            );
        }
        let later = start + chrono::Duration::minutes(25 * 60 + 30);
        account.advance(Now { wall: later, mono_ms: 91_800_000 }, &ids);
        let kept: Vec<&str> = account.resolved_holds.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(kept, ["org-1/rs_2"], "resolved 24.5 h and 25.5 h before: forgotten; 23.5 h: kept");
        assert!(matches!(account.live_hold("org-1/rs_0"), Err(crate::domain::spend::HoldError::Unknown(_))));
        assert!(matches!(account.live_hold("org-1/rs_2"), Err(crate::domain::spend::HoldError::Resolved(..))));
    }
}
