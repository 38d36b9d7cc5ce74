//! Property 5: the wire form of amounts.

use super::*;

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

    /// 5. The wire form is the decimal's own text, for any value, scale and sign.
    #[test]
    fn format_is_the_decimals_own_text(mantissa in -(1i128 << 96) + 1..(1i128 << 96), scale in 0u32..=28) {
        let x = Decimal::from_i128_with_scale(mantissa, scale);
        prop_assert_eq!(format_credits(x), x.normalize().to_string());
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
