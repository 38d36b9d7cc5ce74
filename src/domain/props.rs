//! Property tests of the domain rules (DESIGN.md "Invariants"): conservation, no overspend,
//! burn-down order, round-up pricing and the wire form of amounts.
//!
//! The account tests drive an [`Account`] the way the engine does: every spend is checked
//! first and applied only when the check passes, and time only moves forward, through
//! [`Account::advance`].

use super::account::{Account, OveragePolicy, Plan, SubscriptionStatus};
use super::amount::{format_credits, parse_credits, parse_optional_credits, parse_signed_credits, Credits};
use super::grant::{self, Grant, GrantKind};
use super::hold::Hold;
use super::ids::IdGenerator;
use super::price::PriceEntry;
use super::spend::SpendAsk;
use super::Now;
use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rust_decimal::Decimal;
use std::cmp::Ordering;
use std::collections::BTreeMap;

type Check = Result<(), TestCaseError>;

/// `cases` cases, and no regression files written next to the sources.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---- generators -----------------------------------------------------------------------------

/// Credit amounts: zero, small, everyday and large, with up to 9 fractional digits.
fn credits() -> impl Strategy<Value = Credits> {
    prop_oneof![
        1 => Just(Decimal::ZERO),
        4 => (1i64..=100, 0u32..=2).prop_map(|(n, s)| Decimal::new(n, s)),
        4 => (1i64..=100_000_000, 0u32..=6).prop_map(|(n, s)| Decimal::new(n, s)),
        1 => (1i64..=1_000_000_000_000_000, 0u32..=9).prop_map(|(n, s)| Decimal::new(n, s)),
    ]
}

fn grant_kind() -> impl Strategy<Value = GrantKind> {
    prop_oneof![Just(GrantKind::Plan), Just(GrantKind::Purchase), Just(GrantKind::Promo), Just(GrantKind::Adjustment)]
}

fn policy() -> impl Strategy<Value = OveragePolicy> {
    prop_oneof![
        Just(OveragePolicy::RecordShortfall),
        Just(OveragePolicy::AllowOverdraft),
        Just(OveragePolicy::CapAtHold)
    ]
}

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// A grant to add, relative to the moment it is added.
#[derive(Clone, Debug)]
struct GrantSpec {
    kind: GrantKind,
    amount: Credits,
    /// Overrides the kind's default priority.
    priority: Option<u32>,
    /// Milliseconds from now until it takes effect (negative: already effective).
    effective_in_ms: i64,
    /// Milliseconds from now until it expires (negative: already expired), or never.
    expires_in_ms: Option<i64>,
}

fn grant_spec() -> impl Strategy<Value = GrantSpec> {
    let effective = prop_oneof![4 => Just(0i64), 2 => -DAY_MS..=0, 1 => 1..=2 * DAY_MS];
    let expires = prop_oneof![
        3 => Just(None),
        3 => (MINUTE_MS..=40 * DAY_MS).prop_map(Some),
        1 => (-DAY_MS..=MINUTE_MS).prop_map(Some),
    ];
    (grant_kind(), credits(), proptest::option::weighted(0.3, 0u32..=50), effective, expires).prop_map(
        |(kind, amount, priority, effective_in_ms, expires_in_ms)| GrantSpec {
            kind,
            amount,
            priority,
            effective_in_ms,
            expires_in_ms,
        },
    )
}

/// Which cost a Commit reports, relative to what its hold still holds.
#[derive(Clone, Debug)]
enum CostSpec {
    /// `pct`% of the credits still held (rounded down to 9 digits).
    WithinHold(u8),
    /// The credits still held plus this much.
    BeyondHold(Credits),
    /// Any amount.
    Absolute(Credits),
}

fn cost_spec() -> impl Strategy<Value = CostSpec> {
    prop_oneof![
        3 => (0u8..=100).prop_map(CostSpec::WithinHold),
        2 => credits().prop_map(CostSpec::BeyondHold),
        1 => credits().prop_map(CostSpec::Absolute),
    ]
}

impl CostSpec {
    fn resolve(&self, held: Credits) -> Credits {
        match self {
            CostSpec::WithinHold(pct) => (held * Decimal::new(i64::from(*pct), 2))
                .round_dp_with_strategy(9, rust_decimal::RoundingStrategy::ToZero),
            CostSpec::BeyondHold(x) => held + x,
            CostSpec::Absolute(x) => *x,
        }
    }

    fn stays_within_hold(&self) -> bool {
        matches!(self, CostSpec::WithinHold(_))
    }
}

#[derive(Clone, Debug)]
enum Op {
    Deduct {
        credits: Credits,
        user: Option<u8>,
        workspace: Option<u8>,
    },
    Reserve {
        credits: Credits,
        user: Option<u8>,
        workspace: Option<u8>,
        ttl_ms: u64,
    },
    /// `pick` chooses among live holds, then recently resolved ones, then an unknown id.
    Commit {
        pick: usize,
        quantity: u64,
        cost: CostSpec,
        is_final: bool,
        policy: OveragePolicy,
    },
    Release {
        pick: usize,
    },
    Extend {
        pick: usize,
        ttl_ms: u64,
    },
    /// `pick` chooses among the account's grants, then an unknown id.
    Revoke {
        pick: usize,
    },
    Advance {
        ms: u64,
    },
    AddGrant(GrantSpec),
}

fn who() -> impl Strategy<Value = Option<u8>> {
    proptest::option::of(0u8..3)
}

fn ttl_ms() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 3 => 1..=60_000u64, 4 => 60_000..=86_400_000u64]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (credits(), who(), who()).prop_map(|(credits, user, workspace)| Op::Deduct { credits, user, workspace }),
        4 => (credits(), who(), who(), ttl_ms())
            .prop_map(|(credits, user, workspace, ttl_ms)| Op::Reserve { credits, user, workspace, ttl_ms }),
        4 => (any::<usize>(), 0u64..=5_000, cost_spec(), any::<bool>(), policy())
            .prop_map(|(pick, quantity, cost, is_final, policy)| Op::Commit { pick, quantity, cost, is_final, policy }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => (any::<usize>(), ttl_ms()).prop_map(|(pick, ttl_ms)| Op::Extend { pick, ttl_ms }),
        1 => any::<usize>().prop_map(|pick| Op::Revoke { pick }),
        3 => prop_oneof![
            3 => 0..=2_000u64,
            3 => 0..=120_000u64,
            2 => 0..=3 * DAY_MS as u64,
            2 => 20 * DAY_MS as u64..=70 * DAY_MS as u64,
        ]
        .prop_map(|ms| Op::Advance { ms }),
        2 => grant_spec().prop_map(Op::AddGrant),
    ]
}

/// An account before it is opened.
#[derive(Clone, Debug)]
struct Setup {
    /// Wall clock at opening, milliseconds since the epoch.
    start_ms: i64,
    plan: Option<(Plan, SubscriptionStatus)>,
    overdraft_limit: Credits,
    policy: OveragePolicy,
    spending_cap: Option<Credits>,
    user_cap: Option<Credits>,
    workspace_cap: Option<Credits>,
    grants: Vec<GrantSpec>,
}

fn plan() -> impl Strategy<Value = (Plan, SubscriptionStatus)> {
    let status = prop_oneof![
        4 => Just(SubscriptionStatus::Active),
        1 => Just(SubscriptionStatus::Pending),
        1 => Just(SubscriptionStatus::Cancelled),
        1 => Just(SubscriptionStatus::Expired),
    ];
    (credits(), 1u32..=31, credits(), status).prop_map(|(credits_per_cycle, cycle_anchor_day, rollover_cap, status)| {
        (Plan { name: "pro".into(), credits_per_cycle, cycle_anchor_day, rollover_cap, price: None }, status)
    })
}

/// Wall clocks from 2025 to 2028, any millisecond.
fn start_ms() -> impl Strategy<Value = i64> {
    1_735_689_600_000i64..=1_830_297_600_000i64
}

fn setup(cap: impl Strategy<Value = Option<Credits>>) -> impl Strategy<Value = Setup> {
    let overdraft = prop_oneof![1 => Just(Decimal::ZERO), 1 => credits()];
    (
        start_ms(),
        proptest::option::weighted(0.7, plan()),
        overdraft,
        policy(),
        cap,
        proptest::option::weighted(0.3, credits()),
        proptest::option::weighted(0.3, credits()),
        proptest::collection::vec(grant_spec(), 0..5),
    )
        .prop_map(|(start_ms, plan, overdraft_limit, policy, spending_cap, user_cap, workspace_cap, grants)| {
            Setup { start_ms, plan, overdraft_limit, policy, spending_cap, user_cap, workspace_cap, grants }
        })
}

// ---- driving an account -----------------------------------------------------------------------

fn wall(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().expect("valid timestamp")
}

/// An account, its clocks and its id generator, driven like the engine drives it.
struct World {
    acc: Account,
    ids: IdGenerator,
    now: Now,
}

impl World {
    fn open(s: &Setup) -> World {
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
            price: PriceEntry {
                action: "chat".into(),
                category: "chat".into(),
                unit_name: "request".into(),
                unit_size: 1,
                credits_per_unit: credits,
                meter: None,
            },
            price_version: 1,
            quantity: 1,
            credits: Decimal::ZERO,
            allocations: Vec::new(),
            overdraft: Decimal::ZERO,
            meter: None,
            created_at: self.now.wall,
            expires_at: self.now.wall + Duration::milliseconds(ttl_ms as i64),
            deadline_ms: self.now.mono_ms + ttl_ms,
            metadata: BTreeMap::new(),
        }
    }

    /// Applies one operation the way the engine would. Refused operations must change nothing.
    fn apply(&mut self, op: &Op) -> Check {
        let now = self.now;
        let name = |n: Option<u8>, prefix: &str| n.map(|n| format!("{prefix}{n}"));
        match op {
            Op::Deduct { credits, user, workspace } => {
                let (user, workspace) = (name(*user, "u"), name(*workspace, "w"));
                let ask = SpendAsk {
                    user_id: user.as_deref(),
                    workspace_id: workspace.as_deref(),
                    credits: *credits,
                    meter: None,
                };
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
                let ask = SpendAsk {
                    user_id: user.as_deref(),
                    workspace_id: workspace.as_deref(),
                    credits: *credits,
                    meter: None,
                };
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
fn check_conservation(acc: &Account, now: Now) -> Check {
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
fn check_caps(acc: &Account) -> Check {
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

fn run(setup: &Setup, ops: &[Op], invariants: impl Fn(&Account, Now) -> Check) -> Check {
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
fn burn_down_key(g: &Grant) -> (u32, u8, Option<DateTime<Utc>>, DateTime<Utc>, String) {
    match g.expires_at {
        Some(t) => (g.priority, 0, Some(t), g.created_at, g.id.clone()),
        None => (g.priority, 1, None, g.created_at, g.id.clone()),
    }
}

// ---- 1 and 2: the account ---------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// 1. Conservation, overdraft bound and hold bookkeeping after every step of any sequence.
    #[test]
    fn conservation_holds_after_every_step(
        s in setup(proptest::option::weighted(0.3, credits())),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run(&s, &ops, check_conservation)?;
    }

    /// 2. No overspend: cycle spend + held never exceeds the spending cap (nor user and
    /// workspace caps), whatever Commit reports.
    #[test]
    fn commits_never_overspend_a_cap(
        s in setup(credits().prop_map(Some)),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run(&s, &ops, |acc, now| { check_conservation(acc, now)?; check_caps(acc) })?;
    }

    /// 2 (checked path). Caps hold when every Commit stays within its hold, or the policy is
    /// `cap_at_hold`: checked deducts, reserves, commits, releases, expiries and rollovers.
    #[test]
    fn checked_spends_never_overspend_a_cap(
        s in setup(credits().prop_map(Some)),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let ops: Vec<Op> = ops
            .into_iter()
            .map(|op| match op {
                Op::Commit { pick, quantity, cost, is_final, .. } if !cost.stays_within_hold() => {
                    Op::Commit { pick, quantity, cost, is_final, policy: OveragePolicy::CapAtHold }
                }
                op => op,
            })
            .collect();
        run(&s, &ops, |acc, now| { check_conservation(acc, now)?; check_caps(acc) })?;
    }
}

/// The smallest reproductions of the cap overspend found by `commits_never_overspend_a_cap`:
/// a cap of 10 (account, user or workspace), 100 credits, a hold of 10, a final Commit
/// costing 20. Expected: 10 charged, 10 shortfall.
#[test]
fn commit_beyond_a_full_hold_respects_every_cap() {
    let ten = Some(Decimal::from(10));
    let mut overspent = Vec::new();
    for (which, spending_cap, user_cap, workspace_cap) in
        [("spending", ten, None, None), ("user", None, ten, None), ("workspace", None, None, ten)]
    {
        let s = Setup {
            start_ms: 1_767_225_600_000,
            plan: None,
            overdraft_limit: Decimal::ZERO,
            policy: OveragePolicy::RecordShortfall,
            spending_cap,
            user_cap,
            workspace_cap,
            grants: vec![GrantSpec {
                kind: GrantKind::Purchase,
                amount: Decimal::from(100),
                priority: None,
                effective_in_ms: 0,
                expires_in_ms: None,
            }],
        };
        let mut w = World::open(&s);
        w.apply(&Op::Reserve { credits: Decimal::from(10), user: Some(0), workspace: Some(0), ttl_ms: 60_000 })
            .unwrap();
        let id = w.acc.holds.keys().next().expect("reserved").clone();
        let settled = w.acc.commit(&id, 1, Decimal::from(20), true, w.now).unwrap();
        if (settled.charged, settled.shortfall) != (Decimal::from(10), Decimal::from(10)) {
            overspent.push(format!("{which} cap 10: charged {}, shortfall {}", settled.charged, settled.shortfall));
        }
    }
    assert!(overspent.is_empty(), "{overspent:#?}");
}

// ---- 3: burn-down order -----------------------------------------------------------------------

/// A grant for the burn-down tests, with few distinct priorities, expiries and ages so that
/// ties are common.
fn loose_grant() -> impl Strategy<Value = Grant> {
    let t0 = wall(1_767_225_600_000);
    (
        grant_kind(),
        credits(),
        0u8..=100,
        0u32..=3,
        proptest::option::of(0i64..=3),
        0i64..=3,
        prop_oneof![6 => Just(0i64), 1 => Just(1i64)],
        proptest::bool::weighted(0.1),
        0u32..1_000,
    )
        .prop_map(move |(kind, amount, held_pct, priority, expires, age, future, is_revoked, id)| {
            let mut g = Grant::new(
                format!("gr_{id:04}"),
                kind,
                amount,
                t0 + Duration::days(future * 10),
                t0 - Duration::days(age),
            );
            g.priority = priority;
            // Expiry 0 is "now": already dead, so not usable.
            g.expires_at = expires.map(|d| t0 + Duration::days(d));
            g.held = (amount * Decimal::new(i64::from(held_pct), 2))
                .round_dp_with_strategy(9, rust_decimal::RoundingStrategy::ToZero);
            g.is_revoked = is_revoked;
            g
        })
}

proptest! {
    #![proptest_config(config(256))]

    /// 3. `take` pays in burn-down order: lower priority first, then soonest expiry (never
    /// last), then oldest; a later grant pays only once every earlier usable one is empty.
    #[test]
    fn take_burns_down_in_order(
        mut grants in proptest::collection::vec(loose_grant(), 0..8),
        want in credits(),
        hold_instead in any::<bool>(),
    ) {
        let now = wall(1_767_225_600_000);
        for (i, g) in grants.iter_mut().enumerate() {
            g.id = format!("{}_{i}", g.id); // ids are unique in an account
        }
        grant::sort_burn_down(&mut grants);
        for pair in grants.windows(2) {
            prop_assert!(burn_down_key(&pair[0]) <= burn_down_key(&pair[1]), "{:?} before {:?}", burn_down_key(&pair[0]), burn_down_key(&pair[1]));
        }
        let before = grants.clone();
        let (allocations, rest) =
            if hold_instead { grant::hold(&mut grants, want, now) } else { grant::take(&mut grants, want, now) };

        let spendable = grant::spendable(&before, now);
        prop_assert_eq!(rest, (want - spendable).max(Decimal::ZERO));
        let moved: Credits = allocations.iter().map(|a| a.credits).sum();
        prop_assert_eq!(moved + rest, want);

        // Allocations name grants in list order, each at most once, never for nothing.
        let positions: Vec<usize> = allocations
            .iter()
            .map(|a| before.iter().position(|g| g.id == a.grant_id).expect("allocation names a grant"))
            .collect();
        prop_assert!(positions.windows(2).all(|p| p[0] < p[1]), "allocations out of order: {:?}", positions);
        prop_assert!(allocations.iter().all(|a| a.credits > Decimal::ZERO));

        let mut left = want;
        for (i, (b, a)) in before.iter().zip(&grants).enumerate() {
            let paid = allocations.iter().find(|x| x.grant_id == b.id).map_or(Decimal::ZERO, |x| x.credits);
            let expected = if b.is_usable(now) { left.min(b.available()) } else { Decimal::ZERO };
            prop_assert_eq!(paid, expected, "grant #{} {:?}", i, burn_down_key(b));
            left -= paid;
            if paid > Decimal::ZERO {
                // Every earlier usable grant is exhausted.
                for (e, earlier) in grants[..i].iter().enumerate() {
                    prop_assert!(!earlier.is_usable(now) || earlier.available().is_zero(), "grant #{} paid while #{} still had {}", i, e, earlier.available());
                }
            }
            if hold_instead {
                prop_assert_eq!((a.held, a.remaining, a.consumed), (b.held + paid, b.remaining, b.consumed));
            } else {
                prop_assert_eq!((a.held, a.remaining, a.consumed), (b.held, b.remaining - paid, b.consumed + paid));
            }
        }
        prop_assert_eq!(left, rest);
    }
}

// ---- 4: round-up cost -------------------------------------------------------------------------

/// Just enough unsigned big-integer arithmetic to compare exact rationals.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Big(Vec<u32>); // little-endian base 2^32

impl Big {
    fn from_u128(mut x: u128) -> Big {
        let mut limbs = Vec::new();
        while x > 0 {
            limbs.push(x as u32);
            x >>= 32;
        }
        Big(limbs)
    }

    fn mul_u64(&self, m: u64) -> Big {
        let mut out = Vec::with_capacity(self.0.len() + 2);
        let mut carry: u128 = 0;
        for &limb in &self.0 {
            let x = u128::from(limb) * u128::from(m) + carry;
            out.push(x as u32);
            carry = x >> 32;
        }
        while carry > 0 {
            out.push(carry as u32);
            carry >>= 32;
        }
        Big(out).trim()
    }

    fn mul_big(&self, other: &Big) -> Big {
        let mut out = vec![0u32; self.0.len() + other.0.len() + 1];
        for (i, &a) in self.0.iter().enumerate() {
            let mut carry: u64 = 0;
            for (j, &b) in other.0.iter().enumerate() {
                let x = u64::from(a) * u64::from(b) + u64::from(out[i + j]) + carry;
                out[i + j] = x as u32;
                carry = x >> 32;
            }
            let mut k = i + other.0.len();
            while carry > 0 {
                let x = u64::from(out[k]) + carry;
                out[k] = x as u32;
                carry = x >> 32;
                k += 1;
            }
        }
        Big(out).trim()
    }

    fn mul_pow10(&self, e: u32) -> Big {
        (0..e).fold(self.clone(), |x, _| x.mul_u64(10))
    }

    fn add(&self, other: &Big) -> Big {
        let mut out = Vec::new();
        let mut carry = 0u64;
        for i in 0..self.0.len().max(other.0.len()) {
            let x = u64::from(*self.0.get(i).unwrap_or(&0)) + u64::from(*other.0.get(i).unwrap_or(&0)) + carry;
            out.push(x as u32);
            carry = x >> 32;
        }
        out.push(carry as u32);
        Big(out).trim()
    }

    fn trim(mut self) -> Big {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
        self
    }

    fn cmp(&self, other: &Big) -> Ordering {
        self.0.len().cmp(&other.0.len()).then_with(|| self.0.iter().rev().cmp(other.0.iter().rev()))
    }
}

/// A non-negative decimal as (mantissa, scale).
fn parts(d: Credits) -> (Big, u32) {
    assert!(!d.is_sign_negative() || d.is_zero(), "negative {d}");
    (Big::from_u128(d.mantissa().unsigned_abs()), d.scale())
}

/// Checks `exact ≤ cost < exact + 10^-p` and at most `p` fractional digits, exactly.
fn check_cost(quantity: u64, per_unit: Credits, unit_size: u64, precision: u32, cost: Credits) -> Check {
    prop_assert!(cost >= Decimal::ZERO, "negative cost {}", cost);
    let cost = cost.normalize();
    prop_assert!(cost.scale() <= precision, "cost {} has more than {} fractional digits", cost, precision);
    // exact = q·m / (10^s·u); cost·10^p = C, an integer.
    let (m, s) = parts(per_unit);
    let (c, t) = parts(cost);
    let big_c = c.mul_pow10(precision - t);
    let x = Big::from_u128(1).mul_pow10(s).mul_u64(unit_size); // 10^s·u
    let y = m.mul_u64(quantity).mul_pow10(precision); // q·m·10^p
    let lhs = big_c.mul_big(&x);
    // cost ≥ exact  ⇔  C·10^s·u ≥ q·m·10^p
    prop_assert!(
        lhs.cmp(&y) != Ordering::Less,
        "cost {} is below the exact {}×{}/{}",
        cost,
        quantity,
        per_unit,
        unit_size
    );
    // cost − 10^-p < exact  ⇔  C·10^s·u < q·m·10^p + 10^s·u
    prop_assert!(
        lhs.cmp(&y.add(&x)) == Ordering::Less,
        "cost {} is a whole step above the exact {}×{}/{}",
        cost,
        quantity,
        per_unit,
        unit_size
    );
    Ok(())
}

fn price(per_unit: Credits, unit_size: u64) -> PriceEntry {
    PriceEntry {
        action: "chat".into(),
        category: "chat".into(),
        unit_name: "1k_tokens".into(),
        unit_size,
        credits_per_unit: per_unit,
        meter: None,
    }
}

/// Wire decimals: up to 28 significant digits, up to 9 fractional digits.
fn wire_decimal() -> impl Strategy<Value = Credits> {
    let mantissa = prop_oneof![0u128..=1_000, 0u128..=u128::from(u64::MAX), 0u128..10u128.pow(28),];
    (mantissa, 0u32..=9).prop_map(|(m, s)| Decimal::from_i128_with_scale(m as i128, s))
}

proptest! {
    #![proptest_config(config(512))]

    /// 4. Everyday magnitudes (up to 10^10 units at up to 10^6 credits per unit, unit sizes up
    /// to 10^6): cost is the exact price rounded up to the account's precision.
    #[test]
    fn cost_rounds_up_exactly(
        quantity in prop_oneof![0u64..=10, 1u64..=1_000_000, 1u64..=10_000_000_000],
        per_unit in prop_oneof![(0i64..=1_000, 0u32..=3), (0i64..=1_000_000_000_000_000, 9u32..=9)]
            .prop_map(|(n, s)| Decimal::new(n, s)),
        unit_size in prop_oneof![Just(1u64), Just(1000u64), 1u64..=1_000_000],
        precision in 0u32..=9,
    ) {
        let cost = price(per_unit, unit_size).cost(quantity, precision);
        prop_assert!(cost.is_ok(), "{}×{}/{} refused: {:?}", quantity, per_unit, unit_size, cost);
        check_cost(quantity, per_unit, unit_size, precision, cost.unwrap())?;
    }

    /// 4 (whole domain). Any u64 quantity, any wire price, any unit size: either refused, or
    /// rounded up exactly.
    #[test]
    fn cost_rounds_up_exactly_over_the_whole_domain(
        quantity in prop_oneof![0u64..=10, any::<u64>()],
        per_unit in wire_decimal(),
        unit_size in prop_oneof![Just(1u64), Just(1000u64), 1u64..=1_000_000, any::<u64>().prop_map(|u| u.max(1))],
        precision in 0u32..=9,
    ) {
        if let Ok(cost) = price(per_unit, unit_size).cost(quantity, precision) {
            check_cost(quantity, per_unit, unit_size, precision, cost)?;
        }
    }
}

/// Reproductions found by `cost_rounds_up_exactly_over_the_whole_domain`: each cost must be
/// the exact price rounded up, or refused.
#[test]
fn huge_costs_are_rounded_up_or_refused() {
    let cases = [
        // q·cpu = 11966515147647660461424871263.021: checked_mul rounds the product to
        // ...263, although the right answer ...264 is representable.
        (10_532_117_192_417u64, "1136192745392484.813", 1u64, 0u32),
        // exact 333…333.3333333…: the division keeps 5 fractional digits, so the cost is
        // 333333333333333333333333.33333, below the price.
        (10_000_000_000_000_000_000, "100000", 3, 6),
        // exact 2885385995416080306722486990.0909…: the division rounds to …990.1, more than
        // one step (0.001) above the price.
        (7, "4534177992796697624849622413", 11, 3),
    ];
    for (quantity, per_unit, unit_size, precision) in cases {
        let per_unit: Decimal = per_unit.parse().unwrap();
        if let Ok(cost) = price(per_unit, unit_size).cost(quantity, precision) {
            if let Err(e) = check_cost(quantity, per_unit, unit_size, precision, cost) {
                panic!("{e}");
            }
        }
    }
}

// ---- 5: the wire form of amounts --------------------------------------------------------------

fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[-+0-9.eE _,]{0,40}",
        "-?0{0,60}[0-9]{0,32}(\\.[0-9]{0,14})?",
        "[0-9٣١۴０-９]{1,30}(\\.[0-9]{1,10})?",
        "\\PC{0,80}",
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// 5. Every wire decimal survives format → parse, and the format is plain digits.
    #[test]
    fn format_then_parse_round_trips(x in wire_decimal()) {
        let text = format_credits(x);
        prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || b == b'.'), "{:?}", text);
        prop_assert!(!text.contains('.') || !text.ends_with('0'), "trailing zero in {:?}", text);
        prop_assert_eq!(parse_credits("amount", &text), Ok(x));
        prop_assert_eq!(parse_optional_credits("amount", &text), Ok(Some(x)));
        prop_assert_eq!(parse_signed_credits("amount", &format_credits(-x)), Ok(-x));
        if !x.is_zero() {
            prop_assert!(parse_credits("amount", &format_credits(-x)).is_err());
        }
    }

    /// 5. Leading zeros are not significant: they never change the value or the verdict.
    #[test]
    fn leading_zeros_change_nothing(x in wire_decimal(), zeros in 1usize..=60) {
        let text = format!("{}{}", "0".repeat(zeros), format_credits(x));
        prop_assert_eq!(parse_credits("amount", &text), Ok(x));
    }

    /// 5. Junk never panics; whatever is accepted is a non-negative wire decimal that
    /// formats and parses back to itself, and a rejection names the field.
    #[test]
    fn junk_never_panics(text in junk()) {
        for signed in [false, true] {
            let parsed = if signed { parse_signed_credits("amount", &text) } else { parse_credits("amount", &text) };
            match parsed {
                Ok(x) => {
                    prop_assert!(signed || x >= Decimal::ZERO);
                    prop_assert!(x.normalize().scale() <= 9);
                    let again = if signed { parse_signed_credits("amount", &format_credits(x)) } else { parse_credits("amount", &format_credits(x)) };
                    prop_assert_eq!(again, Ok(x));
                }
                Err(e) => prop_assert_eq!(e.field, "amount"),
            }
        }
    }
}
