//! Fixtures shared by the benches.

use creditd::domain::grant::{Allocation, GrantKind};
use creditd::domain::ids::IdGenerator;
use creditd::engine::outcome::{DeductOutcome, Outcome};
use rust_decimal::Decimal;

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
