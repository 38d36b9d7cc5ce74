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

mod world;
use world::*;

mod amounts;
mod burn_down;
mod pricing;

/// Wire decimals: up to 28 significant digits, up to 9 fractional digits.
fn wire_decimal() -> impl Strategy<Value = Credits> {
    let mantissa = prop_oneof![0u128..=1_000, 0u128..=u128::from(u64::MAX), 0u128..10u128.pow(28),];
    (mantissa, 0u32..=9).prop_map(|(m, s)| Decimal::from_i128_with_scale(m as i128, s))
}
