//! Billing cycles: monthly, anchored on a day of the month, UTC.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cycle {
    #[serde(with = "crate::domain::time::compact")]
    pub start: DateTime<Utc>,
    #[serde(with = "crate::domain::time::compact")]
    pub end: DateTime<Utc>,
}

impl Cycle {
    /// The cycle that contains `t` for a plan anchored on `anchor_day` (1–31; months shorter
    /// than the anchor start on their last day).
    pub fn containing(anchor_day: u32, t: DateTime<Utc>) -> Cycle {
        let this_month = anchor_in(t.year(), t.month(), anchor_day);
        if this_month <= t {
            let (y, m) = next_month(t.year(), t.month());
            Cycle { start: this_month, end: anchor_in(y, m, anchor_day) }
        } else {
            let (y, m) = previous_month(t.year(), t.month());
            Cycle { start: anchor_in(y, m, anchor_day), end: this_month }
        }
    }

    /// The cycle right after this one.
    pub fn next(&self, anchor_day: u32) -> Cycle {
        Cycle::containing(anchor_day, self.end)
    }
}

fn anchor_in(year: i32, month: u32, anchor_day: u32) -> DateTime<Utc> {
    let day = anchor_day.clamp(1, days_in_month(year, month));
    Utc.from_utc_datetime(
        &NaiveDate::from_ymd_opt(year, month, day).expect("valid date").and_hms_opt(0, 0, 0).expect("midnight"),
    )
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (y, m) = next_month(year, month);
    let first_of_next = NaiveDate::from_ymd_opt(y, m, 1).expect("valid date");
    first_of_next.pred_opt().expect("has a previous day").day()
}

fn next_month(year: i32, month: u32) -> (i32, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

fn previous_month(year: i32, month: u32) -> (i32, u32) {
    if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn resets_on_the_first() {
        let c = Cycle::containing(1, at("2026-11-23T10:00:00Z"));
        assert_eq!((c.start, c.end), (at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z")));
        let c = Cycle::containing(1, at("2026-12-31T23:59:59Z"));
        assert_eq!(c.end, at("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn anchor_31_uses_the_last_day_of_short_months() {
        let c = Cycle::containing(31, at("2026-02-15T00:00:00Z"));
        assert_eq!((c.start, c.end), (at("2026-01-31T00:00:00Z"), at("2026-02-28T00:00:00Z")));
        assert_eq!(c.next(31).end, at("2026-03-31T00:00:00Z"));
    }

    #[test]
    fn the_boundary_belongs_to_the_new_cycle() {
        let c = Cycle::containing(15, at("2026-03-15T00:00:00Z"));
        assert_eq!(c.start, at("2026-03-15T00:00:00Z"));
    }
}
