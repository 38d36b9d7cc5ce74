//! Property 4: costs round up, exactly, or are refused.

use super::*;

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
