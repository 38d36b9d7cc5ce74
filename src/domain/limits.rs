//! Every limit of an account other than its balance, validated as a whole.

use super::amount::Credits;
use super::InvalidInput;
use super::SmallMap;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterKind {
    /// Units used this cycle; reset at each cycle start (`ai_tokens` ≤ 200M a month).
    CycleCounter,
    /// Units held by live reservations (`seats` ≤ 10); freed when the hold resolves.
    Gauge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterLimit {
    pub kind: MeterKind,
    pub limit: u64,
}

/// "Low balance" is either a number of credits or a share of the plan allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LowBalance {
    Credits(#[serde(with = "crate::domain::amount::compact")] Credits),
    PercentOfPlan(#[serde(with = "crate::domain::amount::compact")] Decimal),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Hard cap on credits spent (and held) per cycle.
    #[serde(with = "crate::domain::amount::compact_opt")]
    pub spending_cap: Option<Credits>,
    /// Soft per-cycle threshold: crossing it raises an event.
    #[serde(with = "crate::domain::amount::compact_opt")]
    pub alert_threshold: Option<Credits>,
    pub low_balance: Option<LowBalance>,
    /// How far the balance may go below zero.
    #[serde(with = "crate::domain::amount::compact")]
    pub overdraft_limit: Credits,
    #[serde(with = "crate::domain::amount::compact_opt")]
    pub default_user_cap: Option<Credits>,
    #[serde(with = "crate::domain::amount::compact_map")]
    pub user_caps: SmallMap<String, Credits>,
    #[serde(with = "crate::domain::amount::compact_opt")]
    pub default_workspace_cap: Option<Credits>,
    #[serde(with = "crate::domain::amount::compact_map")]
    pub workspace_caps: SmallMap<String, Credits>,
    pub meters: SmallMap<String, MeterLimit>,
}

impl Limits {
    /// Checks the limits as a whole: the alert threshold must not exceed the cap.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if let (Some(alert), Some(cap)) = (self.alert_threshold, self.spending_cap) {
            if alert > cap {
                return Err(InvalidInput::new(
                    "limits.alert_threshold",
                    format!("{alert} exceeds the spending cap {cap}; an alert must come before the cap"),
                ));
            }
        }
        if let Some(LowBalance::PercentOfPlan(p)) = self.low_balance {
            if p > Decimal::from(100) {
                return Err(InvalidInput::new("limits.low_balance_threshold", format!("{p}% is more than 100%")));
            }
        }
        Ok(())
    }

    pub fn user_cap(&self, user: &str) -> Option<Credits> {
        self.user_caps.get(user).copied().or(self.default_user_cap)
    }

    pub fn workspace_cap(&self, workspace: &str) -> Option<Credits> {
        self.workspace_caps.get(workspace).copied().or(self.default_workspace_cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_must_not_exceed_cap() {
        let mut l = Limits { spending_cap: Some(100.into()), alert_threshold: Some(80.into()), ..Default::default() };
        assert!(l.validate().is_ok());
        l.alert_threshold = Some(101.into());
        assert_eq!(l.validate().unwrap_err().field, "limits.alert_threshold");
    }

    #[test]
    fn overrides_beat_defaults() {
        let l = Limits {
            default_user_cap: Some(10.into()),
            user_caps: [("ceo".to_string(), Decimal::from(50))].into_iter().collect(),
            ..Default::default()
        };
        assert_eq!(l.user_cap("ceo"), Some(50.into()));
        assert_eq!(l.user_cap("intern"), Some(10.into()));
    }
}
