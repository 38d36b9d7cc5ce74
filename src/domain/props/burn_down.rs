//! Property 3: grants pay in burn-down order.

use super::*;

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
