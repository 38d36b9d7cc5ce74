//! Pure types and rules: no I/O, no clocks, no gRPC. Every function takes `now` when time
//! matters, so the rules are testable (and property-tested) without a runtime.

pub mod account;
pub mod amount;
pub mod audit;
pub mod cycle;
pub mod grant;
pub mod hold;
pub mod ids;
pub mod ledger;
pub mod limits;
pub mod live_holds;
pub mod price;
#[cfg(test)]
mod props;
pub mod spend;
pub mod time;

pub use amount::{parse_credits, Credits};

/// The map type of an account's small maps (caps, usage, meters, holds, hold metadata):
/// a sorted vector, so all entries share one allocation and a lookup is a binary search.
/// Accounts are cached by the million and such maps hold a handful of entries, where a
/// B-tree node (11 slots) or a hash table costs several times the entries themselves.
/// It encodes as a map, like the standard maps.
pub type SmallMap<K, V> = litemap::LiteMap<K, V>;

/// A rejected input: which field, and what was wrong with it. Changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    pub field: String,
    pub reason: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// The two clocks every rule needs: wall time for calendars and records, and a monotonic
/// millisecond count for expiries (immune to wall-clock steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub wall: chrono::DateTime<chrono::Utc>,
    pub mono_ms: u64,
}

impl Now {
    pub fn wall_ms(&self) -> u64 {
        u64::try_from(self.wall.timestamp_millis()).unwrap_or(0)
    }
}
