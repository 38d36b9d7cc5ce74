//! Exact credit amounts. The wire form is a decimal string; floats never touch money.

use super::InvalidInput;
use rust_decimal::Decimal;
use std::str::FromStr;

/// An exact amount of credits (or money). Negative only where a rule says so.
pub type Credits = Decimal;

// How amounts are stored: decimal text where people read it (JSON), and the exact
// mantissa and scale in the compact binary forms (postcard), which is about half the size
// and needs no formatting or parsing when accounts are written at every commit and read
// back at start-up. Use with `#[serde(with = "crate::domain::amount::compact")]` (or
// `compact_opt`, `compact_map`).

pub mod compact {
    use super::*;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            Serialize::serialize(d, s)
        } else {
            (d.mantissa(), d.scale() as u8).serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        if d.is_human_readable() {
            <Decimal as Deserialize>::deserialize(d)
        } else {
            let (mantissa, scale) = <(i128, u8)>::deserialize(d)?;
            Decimal::try_from_i128_with_scale(mantissa, u32::from(scale)).map_err(D::Error::custom)
        }
    }
}

/// The stored form of one amount, for containers of amounts.
#[derive(serde::Serialize, serde::Deserialize)]
struct Compact(#[serde(with = "compact")] Decimal);

pub mod compact_opt {
    use super::*;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        d.map(Compact).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        Ok(Option::<Compact>::deserialize(d)?.map(|c| c.0))
    }
}

pub mod compact_map {
    use super::*;
    use crate::domain::SmallMap;
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &SmallMap<String, Decimal>, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m.iter() {
            map.serialize_entry(k, &Compact(*v))?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SmallMap<String, Decimal>, D::Error> {
        Ok(SmallMap::<String, Compact>::deserialize(d)?.into_iter().map(|(k, v)| (k, v.0)).collect())
    }
}

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
///
/// The same text as `amount.normalize().to_string()`, written straight from the mantissa:
/// every answer carries three or more amounts, and the formatter's general path was 7% of
/// the server's time under batch load.
pub fn format_credits(amount: Credits) -> String {
    let amount = amount.normalize();
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(amount.mantissa().unsigned_abs());
    let scale = amount.scale() as usize;
    let mut text = String::with_capacity(digits.len() + scale + 3);
    if amount.is_sign_negative() && !amount.is_zero() {
        text.push('-');
    }
    match digits.len().checked_sub(scale) {
        Some(0) | None => {
            text.push_str("0.");
            text.extend(std::iter::repeat_n('0', scale - digits.len()));
            text.push_str(digits);
        }
        Some(whole) if scale > 0 => {
            text.push_str(&digits[..whole]);
            text.push('.');
            text.push_str(&digits[whole..]);
        }
        Some(_) => text.push_str(digits),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Amounts {
        #[serde(with = "compact")]
        one: Decimal,
        #[serde(with = "compact_opt")]
        maybe: Option<Decimal>,
        #[serde(with = "compact_map")]
        by_user: crate::domain::SmallMap<String, Decimal>,
    }

    #[test]
    fn stored_amounts_keep_value_and_scale_and_json_stays_text() {
        let big = Decimal::from_str("-7922816251426433759354395033.5").unwrap();
        for (one, maybe) in [("1.50", None), ("0.000000001", Some("12.5")), ("0", Some("-3"))] {
            let v = Amounts {
                one: Decimal::from_str(one).unwrap(),
                maybe: maybe.map(|m| Decimal::from_str(m).unwrap()),
                by_user: [("alice".to_string(), big), ("bob".to_string(), Decimal::new(45, 4))].into_iter().collect(),
            };
            let back: Amounts = postcard::from_bytes(&postcard::to_stdvec(&v).unwrap()).unwrap();
            assert_eq!(back, v);
            assert_eq!(
                (back.one.to_string(), back.by_user.get("alice").unwrap().to_string()),
                (one.to_string(), big.to_string())
            );
            let json = serde_json::to_string(&v).unwrap();
            assert!(json.contains(&format!("\"one\":\"{one}\"")), "{json}");
            assert_eq!(serde_json::from_str::<Amounts>(&json).unwrap(), v);
        }
        let small = Amounts { one: Decimal::new(149_621_235, 4), maybe: None, by_user: Default::default() };
        assert!(
            postcard::to_stdvec(&small).unwrap().len() <= 8,
            "5-byte mantissa, scale, none, empty map: not 11 bytes of text"
        );
    }

    #[test]
    fn a_stored_amount_out_of_range_is_refused() {
        let bytes = postcard::to_stdvec(&(i128::MAX, 0u8)).unwrap();
        #[derive(serde::Deserialize)]
        struct One(#[serde(with = "compact")] Decimal);
        assert!(postcard::from_bytes::<One>(&bytes).map(|one| one.0).is_err());
    }

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
