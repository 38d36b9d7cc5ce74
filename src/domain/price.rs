//! The price book: what an action costs, versioned, with per-account overrides.

use super::amount::Credits;
use super::InvalidInput;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceEntry {
    pub action: String,
    /// Shared, with `unit_name`, by every ledger entry this entry prices: a deduct copies no text.
    pub category: Arc<str>,
    pub unit_name: Arc<str>,
    /// Quantity units one priced unit covers (1000 for "per 1k tokens"); at least 1.
    pub unit_size: u64,
    #[serde(with = "crate::domain::amount::compact")]
    pub credits_per_unit: Credits,
    /// A meter the quantity also counts against.
    pub meter: Option<String>,
}

impl PriceEntry {
    /// `quantity × credits_per_unit ÷ unit_size`, rounded up to `precision` fractional digits.
    ///
    /// Computed in exact integer arithmetic: decimal multiplication would silently round
    /// products beyond 28 significant digits, and a cost must never round down. Costs too
    /// large to represent are rejected, naming `quantity`.
    pub fn cost(&self, quantity: u64, precision: u32) -> Result<Credits, InvalidInput> {
        let too_big = || {
            InvalidInput::new(
                "quantity",
                format!("{quantity} units of {:?} cost more than can be represented", self.action),
            )
        };
        let per_unit = self.credits_per_unit.normalize();
        let scale = per_unit.scale();
        // cost = quantity × mantissa ÷ (unit_size × 10^scale); scaled by 10^precision, rounded up.
        let mut numerator = i128::from(quantity).checked_mul(per_unit.mantissa()).ok_or_else(too_big)?;
        let mut denominator = i128::from(self.unit_size.max(1));
        if precision >= scale {
            numerator = numerator.checked_mul(10i128.pow(precision - scale)).ok_or_else(too_big)?;
        } else {
            denominator = denominator.checked_mul(10i128.pow(scale - precision)).ok_or_else(too_big)?;
        }
        let scaled = numerator / denominator + i128::from(numerator % denominator != 0);
        Decimal::try_from_i128_with_scale(scaled, precision).map(|d| d.normalize()).map_err(|_| too_big())
    }
}

/// One change to the book: entries to add or replace, actions to remove, for the global
/// book or one account's overrides.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PriceChange {
    pub account_id: Option<String>,
    pub upserts: Vec<PriceEntry>,
    pub removals: Vec<String>,
}

/// An immutable version of the price book. A change makes a new version; readers keep the
/// `Arc` they took, so a decision prices against exactly one version.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PriceBook {
    pub version: u64,
    pub global: BTreeMap<String, Arc<PriceEntry>>,
    pub overrides: BTreeMap<String, BTreeMap<String, Arc<PriceEntry>>>,
}

impl PriceBook {
    /// The price `account_id` pays for `action`: its override, else the global entry.
    pub fn lookup(&self, account_id: &str, action: &str) -> Option<&Arc<PriceEntry>> {
        self.overrides.get(account_id).and_then(|o| o.get(action)).or_else(|| self.global.get(action))
    }

    /// The next version with `change` applied.
    pub fn apply(&self, change: &PriceChange) -> PriceBook {
        let mut next = self.clone();
        next.version += 1;
        let table = match &change.account_id {
            Some(account) => next.overrides.entry(account.clone()).or_default(),
            None => &mut next.global,
        };
        for action in &change.removals {
            table.remove(action);
        }
        for entry in &change.upserts {
            table.insert(entry.action.clone(), Arc::new(entry.clone()));
        }
        next.overrides.retain(|_, o| !o.is_empty());
        next
    }

    /// The prices as `account_id` sees them (overrides applied), or the global book.
    pub fn list(&self, account_id: Option<&str>) -> Vec<PriceEntry> {
        let mut merged = self.global.clone();
        if let Some(overrides) = account_id.and_then(|a| self.overrides.get(a)) {
            merged.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        merged.into_values().map(|e| (*e).clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, per_unit: &str, unit_size: u64) -> PriceEntry {
        PriceEntry {
            action: action.into(),
            category: "chat".into(),
            unit_name: "1k_tokens".into(),
            unit_size,
            credits_per_unit: per_unit.parse().unwrap(),
            meter: None,
        }
    }

    #[test]
    fn cost_rounds_up_to_the_precision() {
        let e = entry("chat", "0.003", 1000);
        assert_eq!(e.cost(1, 6).unwrap().to_string(), "0.000003");
        assert_eq!(e.cost(1, 5).unwrap().to_string(), "0.00001");
        assert_eq!(e.cost(1500, 2).unwrap().to_string(), "0.01");
        assert_eq!(entry("upscale", "0", 1).cost(7, 6).unwrap(), Decimal::ZERO);
        assert_eq!(entry("img", "2.5", 1).cost(4, 6).unwrap().to_string(), "10");
    }

    #[test]
    fn huge_quantities_are_rejected_not_wrapped() {
        let e = entry("x", "99999999999999999999", 1);
        assert_eq!(e.cost(u64::MAX, 6).unwrap_err().field, "quantity");
    }

    #[test]
    fn overrides_win_and_versions_advance() {
        let book =
            PriceBook::default().apply(&PriceChange { upserts: vec![entry("chat", "1", 1)], ..Default::default() });
        let book = book.apply(&PriceChange {
            account_id: Some("acme".into()),
            upserts: vec![entry("chat", "0.5", 1)],
            ..Default::default()
        });
        assert_eq!(book.version, 2);
        assert_eq!(book.lookup("acme", "chat").unwrap().credits_per_unit.to_string(), "0.5");
        assert_eq!(book.lookup("other", "chat").unwrap().credits_per_unit.to_string(), "1");
        assert!(book.lookup("acme", "video").is_none());
    }

    /// Stores written before the text was shared (`String` fields) read back the same, and
    /// the shared text is stored as those stores wrote it.
    #[test]
    fn shared_text_is_stored_as_plain_text_was() {
        #[derive(Serialize)]
        struct Unshared<'a> {
            action: &'a str,
            category: &'a str,
            unit_name: &'a str,
            unit_size: u64,
            #[serde(with = "crate::domain::amount::compact")]
            credits_per_unit: Credits,
            meter: Option<&'a str>,
        }
        let e = entry("chat", "0.003", 1000);
        let unshared = Unshared {
            action: "chat",
            category: "chat",
            unit_name: "1k_tokens",
            unit_size: 1000,
            credits_per_unit: e.credits_per_unit,
            meter: None,
        };
        let old = postcard::to_stdvec(&unshared).unwrap();
        assert_eq!(postcard::to_stdvec(&e).unwrap(), old);
        assert_eq!(postcard::from_bytes::<PriceEntry>(&old).unwrap(), e);
    }
}
