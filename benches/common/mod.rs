//! Fixtures shared by the benches.

#![allow(dead_code)] // each bench uses its own part

use creditd::domain::account::{Account, Plan, SubscriptionStatus};
use creditd::domain::grant::{Allocation, Grant, GrantKind, Money};
use creditd::domain::hold::Hold;
use creditd::domain::ids::IdGenerator;
use creditd::domain::limits::{Limits, LowBalance, MeterKind, MeterLimit};
use creditd::domain::price::PriceEntry;
use creditd::domain::spend::SpendAsk;
use creditd::domain::Now;
use creditd::domain::SmallMap;
use creditd::engine::outcome::{DeductOutcome, Outcome};
use rust_decimal::Decimal;
use std::sync::{Arc, OnceLock};

/// The answer of an allowed CheckAndDeduct, as the engine stores it.
pub fn deduct_outcome(ids: &IdGenerator, now_ms: u64) -> Outcome {
    Outcome::Deduct(DeductOutcome {
        denial: None,
        credits_charged: Decimal::new(45, 4),
        allocations: vec![Allocation {
            grant_id: ids.next_string("gr_", now_ms),
            kind: GrantKind::Plan,
            credits: Decimal::new(45, 4),
        }],
        balance: Decimal::new(149_621_235, 4),
        cycle_spend: Decimal::new(378_765, 4),
        ledger_entry_id: ids.next_string("le_", now_ms),
        price_version: 3,
    })
}

/// A small deterministic generator for request ids (no dependency on `rand` here).
pub struct Seq(pub u64);

impl Seq {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A UUID-shaped request id (36 chars), as clients typically send.
    pub fn uuid(&mut self) -> String {
        uuid_of(self.next(), self.next())
    }
}

/// A UUID-shaped id (36 chars) from two 64-bit numbers; its last group is `b`'s low 48 bits.
pub fn uuid_of(a: u64, b: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

pub fn chat_price() -> PriceEntry {
    PriceEntry {
        action: "chat".into(),
        category: "chat".into(),
        unit_name: "1k_tokens".into(),
        unit_size: 1000,
        credits_per_unit: Decimal::new(3, 3),
        meter: Some("ai_tokens".into()),
    }
}

pub fn agent_price() -> PriceEntry {
    PriceEntry {
        action: "agent_session".into(),
        category: "agents".into(),
        unit_name: "session".into(),
        unit_size: 1,
        credits_per_unit: Decimal::from(2),
        meter: Some("seats".into()),
    }
}

/// The two prices as the price book holds them: holds share the book's entries.
pub fn book_prices() -> (Arc<PriceEntry>, Arc<PriceEntry>) {
    static BOOK: OnceLock<(Arc<PriceEntry>, Arc<PriceEntry>)> = OnceLock::new();
    BOOK.get_or_init(|| (Arc::new(chat_price()), Arc::new(agent_price()))).clone()
}

pub fn account_id(i: usize) -> String {
    format!("org-{i:07}")
}

/// A typical account: on a plan (its grant issued at open), a promo and a purchased grant,
/// a user cap with two users having spent, a counter and a gauge meter with usage, and two
/// live holds (one on each meter).
pub fn typical_account(i: usize, now: Now, ids: &IdGenerator, seq: &mut Seq) -> Account {
    let ms = now.wall_ms();
    let mut a = Account::blank(&account_id(i), now.wall);
    a.display_name = format!("Example Organization {i}");
    a.subscription = SubscriptionStatus::Active;
    a.plan = Some(Plan {
        name: "pro".into(),
        credits_per_cycle: Decimal::from(10_000),
        cycle_anchor_day: 1,
        rollover_cap: Decimal::from(2_000),
        price: Some(Money { amount: Decimal::new(4900, 2), currency: "USD".into() }),
    });
    a.limits = Limits {
        spending_cap: Some(Decimal::from(20_000)),
        alert_threshold: Some(Decimal::from(16_000)),
        low_balance: Some(LowBalance::PercentOfPlan(Decimal::from(10))),
        overdraft_limit: Decimal::ZERO,
        default_user_cap: Some(Decimal::from(2_000)),
        user_caps: [("user-alice".to_string(), Decimal::from(5_000))].into_iter().collect(),
        default_workspace_cap: None,
        workspace_caps: SmallMap::new(),
        meters: [
            ("ai_tokens".to_string(), MeterLimit { kind: MeterKind::CycleCounter, limit: 200_000_000 }),
            ("seats".to_string(), MeterLimit { kind: MeterKind::Gauge, limit: 10 }),
        ]
        .into_iter()
        .collect(),
    };
    let (mut a, _) = a.open(now, ids);

    let mut promo = Grant::new(ids.next_string("gr_", ms), GrantKind::Promo, Decimal::from(500), now.wall, now.wall);
    promo.expires_at = Some(now.wall + chrono::Duration::days(90));
    promo.external_reference = "spring-campaign".into();
    promo.created_by = "admin:support".into();
    a.add_grant(promo, now, ids);
    let mut purchase =
        Grant::new(ids.next_string("gr_", ms), GrantKind::Purchase, Decimal::from(5_000), now.wall, now.wall);
    purchase.external_reference = format!("ch_{:024x}", seq.next());
    purchase.money_paid = Some(Money { amount: Decimal::new(2500, 2), currency: "USD".into() });
    purchase.created_by = "billing".into();
    a.add_grant(purchase, now, ids);

    let (chat, agent) = book_prices();
    for (user, tokens) in [("user-alice", 12_000u64), ("user-bob", 3_500), ("user-alice", 800)] {
        let ask = SpendAsk {
            user_id: Some(user),
            workspace_id: None,
            credits: chat.cost(tokens, 6).unwrap(),
            meter: Some(("ai_tokens", tokens)),
        };
        a.check(&ask, now.wall).expect("typical spend fits");
        a.deduct(&ask, now.wall);
    }

    for (price, user, quantity) in [(&chat, "user-alice", 4_000u64), (&agent, "user-bob", 1)] {
        let hold = Hold {
            id: format!("{}/{}", a.id, ids.next_string("rs_", ms)),
            request_id: seq.uuid(),
            user_id: Some(user.into()),
            workspace_id: None,
            price: price.clone(),
            price_version: 3,
            quantity,
            credits: Decimal::ZERO,
            allocations: Vec::new(),
            overdraft: Decimal::ZERO,
            meter: None,
            created_at: now.wall,
            expires_at: now.wall + chrono::Duration::seconds(60),
            deadline_ms: now.mono_ms + 60_000,
            metadata: [("model".to_string(), "gpt-4o".to_string())].into_iter().collect(),
        };
        let ask = SpendAsk {
            user_id: Some(user),
            workspace_id: None,
            credits: price.cost(quantity, 6).unwrap(),
            meter: price.meter.as_deref().map(|m| (m, quantity)),
        };
        a.check(&ask, now.wall).expect("typical hold fits");
        a.reserve(hold, &ask, now.wall);
    }
    a
}

/// `cargo bench` passes `--bench`; `cargo test --benches` runs each bench once without it.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A UUID-shaped request id derived from `n` (distinct for distinct `n`).
pub fn uuid(n: u64) -> String {
    let a = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let b = (n ^ 0x2545_f491_4f6c_dd1d).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    // The last group is `n` itself, which keeps distinct `n` distinct.
    uuid_of(a, (b & !0xffff_ffff_ffff) | (n & 0xffff_ffff_ffff))
}
