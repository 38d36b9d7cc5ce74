//! Exact credit amounts. The wire form is a decimal string; floats never touch money.

use super::InvalidInput;
use rust_decimal::Decimal;
use std::str::FromStr;

/// An exact amount of credits (or money). Negative only where a rule says so.
pub type Credits = Decimal;

/// Most significant digits a wire decimal may carry (the precision of `rust_decimal`).
pub const MAX_SIGNIFICANT_DIGITS: usize = 28;
/// Most fractional digits a wire decimal may carry.
pub const MAX_FRACTION_DIGITS: usize = 9;

/// Parses a non-negative wire decimal such as `"12.5"` or `"0.000125"`.
///
/// Rejects signs, exponents, blanks, more than 9 fractional digits and more than 28
/// significant digits, naming `field` in the error.
pub fn parse_credits(field: &str, text: &str) -> Result<Credits, InvalidInput> {
    parse(field, text, false)
}

/// Like [`parse_credits`], but a leading `-` is allowed.
pub fn parse_signed_credits(field: &str, text: &str) -> Result<Credits, InvalidInput> {
    parse(field, text, true)
}

/// An optional decimal: the empty string means "not set".
pub fn parse_optional_credits(field: &str, text: &str) -> Result<Option<Credits>, InvalidInput> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse_credits(field, text).map(Some)
    }
}

fn parse(field: &str, text: &str, allow_negative: bool) -> Result<Credits, InvalidInput> {
    let bad = |reason: &str| {
        InvalidInput::new(field, format!("{reason} (got {:?}; expected a decimal string like \"12.5\")", shorten(text)))
    };
    let digits = match text.strip_prefix('-') {
        Some(rest) if allow_negative => rest,
        Some(_) => return Err(bad("must not be negative")),
        None => text,
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (digits, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) {
        return Err(bad("is not a plain decimal number"));
    }
    if let Some(f) = fraction {
        if f.is_empty() || !all_digits(f) {
            return Err(bad("is not a plain decimal number"));
        }
        if f.len() > MAX_FRACTION_DIGITS {
            return Err(bad("has more than 9 fractional digits"));
        }
    }
    let fraction = fraction.unwrap_or("");
    let significant = format!("{whole}{fraction}");
    let significant = significant.trim_start_matches('0');
    if significant.len() > MAX_SIGNIFICANT_DIGITS {
        return Err(bad("has more than 28 significant digits"));
    }
    Decimal::from_str(text).map(|d| d.normalize()).map_err(|_| bad("is out of range"))
}

fn shorten(text: &str) -> String {
    if text.len() <= 40 {
        text.to_string()
    } else {
        format!("{}…", &text[..text.char_indices().nth(40).map_or(text.len(), |(i, _)| i)])
    }
}

/// The wire form of an amount: plain digits, no exponent, no trailing zeros.
pub fn format_credits(amount: Credits) -> String {
    amount.normalize().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_decimals() {
        for (text, want) in [("12.5", "12.5"), ("0.000125", "0.000125"), ("0", "0"), ("007.10", "7.1")] {
            assert_eq!(format_credits(parse_credits("x", text).unwrap()), want);
        }
        assert_eq!(
            parse_credits("x", "9999999999999999999999999999").unwrap().to_string(),
            "9999999999999999999999999999"
        );
    }

    #[test]
    fn rejects_everything_else_naming_the_field() {
        for text in [
            "",
            "-1",
            "+1",
            "1e5",
            "1.",
            ".5",
            " 1",
            "1,5",
            "NaN",
            "0.0000000001",
            "10000000000000000000000000000",
            "1.2.3",
            "٣",
        ] {
            let err = parse_credits("amount", text).unwrap_err();
            assert_eq!(err.field, "amount", "{text}");
        }
    }

    #[test]
    fn negatives_only_where_allowed() {
        assert_eq!(parse_signed_credits("x", "-2.5").unwrap().to_string(), "-2.5");
        assert!(parse_signed_credits("x", "--2").is_err());
    }
}
