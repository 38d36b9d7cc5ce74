//! Read-only views of an account, for GetBalance and the admin API.

use crate::domain::account::Account;
use crate::domain::cycle::Cycle;
use crate::domain::grant::Grant;
use crate::domain::hold::Hold;
use crate::domain::limits::{Limits, MeterKind};
use crate::domain::{Credits, Now};
use rust_decimal::Decimal;

#[derive(Clone, Debug, PartialEq)]
pub struct MeterView {
    pub name: String,
    pub kind: MeterKind,
    pub used: u64,
    pub limit: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BalanceView {
    pub account_id: String,
    pub balance: Credits,
    pub held: Credits,
    pub free_remaining: Credits,
    pub purchased_remaining: Credits,
    pub grants: Vec<Grant>,
    pub holds: Vec<Hold>,
    pub cycle_spend: Credits,
    pub limits: Limits,
    pub overdraft_used: Credits,
    pub meters: Vec<MeterView>,
    pub cycle: Cycle,
}

impl BalanceView {
    pub fn of(account: &Account, now: Now) -> BalanceView {
        let usable = || account.grants.iter().filter(|g| g.is_usable(now.wall));
        let remaining =
            |free: bool| usable().filter(|g| g.kind.is_free() == free).map(|g| g.remaining).sum::<Decimal>();
        BalanceView {
            account_id: account.id.clone(),
            balance: account.balance(now.wall),
            held: account.held_total(),
            free_remaining: remaining(true),
            purchased_remaining: remaining(false),
            grants: account.grants.clone(),
            holds: account.holds.values().cloned().collect(),
            cycle_spend: account.usage.spend,
            limits: account.limits.clone(),
            overdraft_used: account.overdraft_used,
            meters: account
                .limits
                .meters
                .iter()
                .map(|(name, m)| MeterView {
                    name: name.clone(),
                    kind: m.kind,
                    used: account.meter_in_use(name, m.kind),
                    limit: m.limit,
                })
                .collect(),
            cycle: account.cycle,
        }
    }
}
