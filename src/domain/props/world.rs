//! Driving an account the way the engine does, and the invariants checked after each step.

use super::*;

// ---- driving an account -----------------------------------------------------------------------

pub(super) fn wall(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().expect("valid timestamp")
}

/// An account, its clocks and its id generator, driven like the engine drives it.
pub(super) struct World {
    pub(super) acc: Account,
    pub(super) ids: IdGenerator,
    pub(super) now: Now,
}

impl World {
    pub(super) fn open(s: &Setup) -> World {
        let ids = IdGenerator::default();
        let now = Now { wall: wall(s.start_ms), mono_ms: 1_000_000 };
        let mut acc = Account::blank("acme", now.wall);
        if let Some((plan, status)) = &s.plan {
            acc.plan = Some(plan.clone());
            acc.subscription = *status;
        }
        acc.limits.overdraft_limit = s.overdraft_limit;
        acc.limits.spending_cap = s.spending_cap;
        acc.limits.default_user_cap = s.user_cap;
        acc.limits.default_workspace_cap = s.workspace_cap;
        acc.overage_policy = s.policy;
        let (acc, _) = acc.open(now, &ids);
        let mut w = World { acc, ids, now };
        for g in &s.grants {
            w.add_grant(g);
        }
        w
    }

    fn add_grant(&mut self, spec: &GrantSpec) {
        let id = self.ids.next_string("gr_", self.now.wall_ms());
        let effective_at = self.now.wall + Duration::milliseconds(spec.effective_in_ms);
        let mut g = Grant::new(id, spec.kind, spec.amount, effective_at, self.now.wall);
        if let Some(p) = spec.priority {
            g.priority = p;
        }
        g.expires_at = spec.expires_in_ms.map(|ms| self.now.wall + Duration::milliseconds(ms));
        self.acc.add_grant(g, self.now, &self.ids);
    }

    /// Mostly a live hold; otherwise any of live, recently resolved, or never issued.
    fn hold_id(&self, pick: usize) -> String {
        let live: Vec<&String> = self.acc.holds.keys().collect();
        if !live.is_empty() && pick % 4 != 0 {
            return live[(pick / 4) % live.len()].clone();
        }
        let mut ids: Vec<String> = self.acc.holds.keys().cloned().collect();
        ids.extend(self.acc.resolved_holds.iter().map(|(id, _, _)| id.clone()));
        ids.push("rs_never_issued".into());
        ids.swap_remove(pick % ids.len())
    }

    fn hold(&self, credits: Credits, user: Option<String>, workspace: Option<String>, ttl_ms: u64) -> Hold {
        Hold {
            id: self.ids.next_string("rs_", self.now.wall_ms()),
            request_id: format!("req-{}", self.ids.next(self.now.wall_ms())),
            user_id: user,
            workspace_id: workspace,
            price: std::sync::Arc::new(PriceEntry {
                action: "chat".into(),
                category: "chat".into(),
                unit_name: "request".into(),
                unit_size: 1,
                credits_per_unit: credits,
                meter: None,
            }),
            price_version: 1,
            quantity: 1,
            credits: Decimal::ZERO,
            allocations: Vec::new(),
            overdraft: Decimal::ZERO,
            meter: None,
            created_at: self.now.wall,
            expires_at: self.now.wall + Duration::milliseconds(ttl_ms as i64),
            deadline_ms: self.now.mono_ms + ttl_ms,
            metadata: crate::domain::SmallMap::new(),
        }
    }

    /// Applies one operation the way the engine would. Refused operations must change nothing.
    pub(super) fn apply(&mut self, op: &Op) -> Check {
        let now = self.now;
        let name = |n: Option<u8>, prefix: &str| n.map(|n| format!("{prefix}{n}"));
        match op {
            Op::Deduct { credits, user, workspace } => {
                let (user, workspace) = (name(*user, "u"), name(*workspace, "w"));
                let ask = plain_ask(&user, &workspace, *credits);
                if self.acc.check(&ask, now.wall).is_ok() {
                    let charged_before = self.acc.totals.charged;
                    let allocations = self.acc.deduct(&ask, now.wall);
                    let paid: Credits = allocations.iter().map(|a| a.credits).sum();
                    prop_assert!(paid <= *credits);
                    prop_assert_eq!(self.acc.totals.charged - charged_before, *credits);
                }
            }
            Op::Reserve { credits, user, workspace, ttl_ms } => {
                let (user, workspace) = (name(*user, "u"), name(*workspace, "w"));
                let ask = plain_ask(&user, &workspace, *credits);
                if self.acc.check(&ask, now.wall).is_ok() {
                    let hold = self.hold(*credits, user.clone(), workspace.clone(), *ttl_ms);
                    let held = self.acc.reserve(hold, &ask, now.wall);
                    prop_assert_eq!(held.credits, *credits);
                }
            }
            Op::Commit { pick, quantity, cost, is_final, policy } => {
                let id = self.hold_id(*pick);
                self.acc.overage_policy = *policy;
                let before = self.acc.clone();
                let held = self.acc.holds.get(&id).map_or(Decimal::ZERO, |h| h.credits);
                let cost = cost.resolve(held);
                match self.acc.commit(&id, *quantity, cost, *is_final, now) {
                    Ok(s) => {
                        prop_assert_eq!(s.charged + s.shortfall, cost, "charged + shortfall = cost");
                        prop_assert_eq!(self.acc.totals.charged - before.totals.charged, s.charged);
                        prop_assert_eq!(self.acc.holds.contains_key(&id), !*is_final);
                        if *policy == OveragePolicy::CapAtHold {
                            prop_assert!(
                                s.charged <= held,
                                "cap_at_hold charged {} beyond the hold {}",
                                s.charged,
                                held
                            );
                        }
                    }
                    Err(_) => {
                        prop_assert!(self.acc == before, "a refused commit changed the account")
                    }
                }
            }
            Op::Release { pick } => {
                let id = self.hold_id(*pick);
                let before = self.acc.clone();
                if self.acc.release(&id, now, &self.ids).is_err() {
                    prop_assert!(self.acc == before, "a refused release changed the account");
                }
            }
            Op::Extend { pick, ttl_ms } => {
                let id = self.hold_id(*pick);
                let before = self.acc.clone();
                if self.acc.extend(&id, *ttl_ms, now).is_err() {
                    prop_assert!(self.acc == before, "a refused extend changed the account");
                }
            }
            Op::Revoke { pick } => {
                let mut ids: Vec<String> = self.acc.grants.iter().map(|g| g.id.clone()).collect();
                ids.push("gr_never_issued".into());
                let id = ids.swap_remove(pick % ids.len());
                let before = self.acc.clone();
                if self.acc.revoke_grant(&id, now, &self.ids).is_none() {
                    prop_assert!(self.acc == before, "a refused revoke changed the account");
                }
            }
            Op::Advance { ms } => {
                self.now = Now { wall: now.wall + Duration::milliseconds(*ms as i64), mono_ms: now.mono_ms + ms };
                self.acc.advance(self.now, &self.ids);
                prop_assert!(self.acc.cycle.start <= self.now.wall && self.now.wall < self.acc.cycle.end);
                prop_assert!(
                    self.acc.holds.values().all(|h| h.deadline_ms > self.now.mono_ms),
                    "a due hold survived advance"
                );
            }
            Op::AddGrant(spec) => self.add_grant(spec),
        }
        Ok(())
    }
}

/// Conservation and the overdraft bound (DESIGN.md invariants 1 and 2), plus the bookkeeping
/// they rest on: grants' `held` equals what live holds promised them.
pub(super) fn check_conservation(acc: &Account, now: Now) -> Check {
    let t = &acc.totals;
    let remaining: Credits = acc.grants.iter().map(|g| g.remaining).sum();
    prop_assert_eq!(
        t.granted,
        remaining + t.consumed + t.expired + t.revoked,
        "granted = remaining + consumed + expired + revoked"
    );
    prop_assert_eq!(t.charged, t.consumed + acc.overdraft_used, "charged = consumed + overdraft_used");
    for g in &acc.grants {
        prop_assert!(
            Decimal::ZERO <= g.held && g.held <= g.remaining,
            "grant {}: held {} remaining {}",
            g.id,
            g.held,
            g.remaining
        );
        prop_assert_eq!(g.amount, g.remaining + g.consumed + g.expired + g.revoked, "grant {} does not add up", g.id);
    }
    for pair in acc.grants.windows(2) {
        prop_assert!(burn_down_key(&pair[0]) <= burn_down_key(&pair[1]), "grants out of burn-down order");
    }
    let mut promised: BTreeMap<&str, Credits> = BTreeMap::new();
    for h in acc.holds.values() {
        let allocated: Credits = h.allocations.iter().map(|a| a.credits).sum();
        prop_assert_eq!(h.credits, allocated + h.overdraft, "hold {}: credits = allocations + overdraft", h.id);
        prop_assert!(h.overdraft >= Decimal::ZERO);
        for a in &h.allocations {
            *promised.entry(a.grant_id.as_str()).or_default() += a.credits;
        }
    }
    for g in &acc.grants {
        prop_assert_eq!(
            g.held,
            promised.get(g.id.as_str()).copied().unwrap_or_default(),
            "grant {}: held vs holds",
            g.id
        );
    }
    prop_assert!(promised.keys().all(|id| acc.grants.iter().any(|g| g.id == *id)), "a hold promises a dropped grant");
    let overdraft_in_holds: Credits = acc.holds.values().map(|h| h.overdraft).sum();
    prop_assert_eq!(acc.overdraft_held, overdraft_in_holds);
    prop_assert!(acc.overdraft_used >= Decimal::ZERO && acc.overdraft_held >= Decimal::ZERO);
    prop_assert!(
        acc.overdraft_used + acc.overdraft_held <= acc.limits.overdraft_limit,
        "overdraft used {} + held {} beyond the limit {}",
        acc.overdraft_used,
        acc.overdraft_held,
        acc.limits.overdraft_limit
    );
    prop_assert!(
        acc.balance(now.wall) >= -acc.limits.overdraft_limit,
        "balance {} below -overdraft",
        acc.balance(now.wall)
    );
    Ok(())
}

/// Cycle spend plus live holds stays within the spending cap and every per-user and
/// per-workspace cap (DESIGN.md invariant 2).
pub(super) fn check_caps(acc: &Account) -> Check {
    prop_assert!(acc.holds.sums_agree(), "the running sums of live holds drifted from the holds");
    if let Some(cap) = acc.limits.spending_cap {
        let used = acc.usage.spend + acc.held_total();
        prop_assert!(
            used <= cap,
            "cycle spend {} + held {} exceeds the cap {}",
            acc.usage.spend,
            acc.held_total(),
            cap
        );
    }
    for n in 0..3 {
        let user = format!("u{n}");
        if let Some(cap) = acc.limits.user_cap(&user) {
            let spent = acc.usage.by_user.get(&user).copied().unwrap_or_default();
            prop_assert!(spent + acc.held_by_user(&user) <= cap, "user {user}: spent {spent} + held exceeds cap {cap}");
        }
        let ws = format!("w{n}");
        if let Some(cap) = acc.limits.workspace_cap(&ws) {
            let spent = acc.usage.by_workspace.get(&ws).copied().unwrap_or_default();
            prop_assert!(
                spent + acc.held_by_workspace(&ws) <= cap,
                "workspace {ws}: spent {spent} + held exceeds cap {cap}"
            );
        }
    }
    Ok(())
}

pub(super) fn run(setup: &Setup, ops: &[Op], invariants: impl Fn(&Account, Now) -> Check) -> Check {
    let mut w = World::open(setup);
    invariants(&w.acc, w.now)?;
    for (step, op) in ops.iter().enumerate() {
        w.apply(op).map_err(|e| TestCaseError::fail(format!("step {step} {op:?}: {e}")))?;
        invariants(&w.acc, w.now).map_err(|e| TestCaseError::fail(format!("after step {step} {op:?}: {e}")))?;
    }
    Ok(())
}

/// Burn-down order written independently of `sort_burn_down`: priority, then expiry with
/// "never" last, then age, then id.
pub(super) fn burn_down_key(g: &Grant) -> (u32, u8, Option<DateTime<Utc>>, DateTime<Utc>, String) {
    match g.expires_at {
        Some(t) => (g.priority, 0, Some(t), g.created_at, g.id.clone()),
        None => (g.priority, 1, None, g.created_at, g.id.clone()),
    }
}

/// A spend of `credits` with no meter, by the given user and workspace.
fn plain_ask<'a>(user: &'a Option<String>, workspace: &'a Option<String>, credits: Credits) -> SpendAsk<'a> {
    SpendAsk { user_id: user.as_deref(), workspace_id: workspace.as_deref(), credits, meter: None }
}
