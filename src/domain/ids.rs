//! Identifiers checked once at the boundary, so the rest of the code can trust them.

use super::InvalidInput;
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest identifier accepted anywhere.
pub const MAX_ID_LEN: usize = 128;

/// Checks an id of 1–128 chars of `[A-Za-z0-9._:-]` (accounts, actions, users, meters…).
pub fn check_name(field: &str, value: &str) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::new(field, "is required"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(InvalidInput::new(
            field,
            format!("is {} chars long; at most {MAX_ID_LEN} are allowed", value.len()),
        ));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))) {
        return Err(InvalidInput::new(field, format!("contains {c:?}; only A-Z a-z 0-9 . _ : - are allowed")));
    }
    Ok(())
}

/// Like [`check_name`], but empty means "not given".
pub fn check_optional_name(field: &str, value: String) -> Result<Option<String>, InvalidInput> {
    if value.is_empty() {
        Ok(None)
    } else {
        check_name(field, &value).map(|()| Some(value))
    }
}

/// Checks a client request id: 1–128 bytes of anything printable.
pub fn check_request_id(value: &str) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::new(
            "request_id",
            "is required: pick a unique id per operation and reuse it on retries",
        ));
    }
    if value.len() > MAX_ID_LEN {
        return Err(InvalidInput::new(
            "request_id",
            format!("is {} bytes long; at most {MAX_ID_LEN} are allowed", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidInput::new("request_id", "contains control characters"));
    }
    Ok(())
}

/// Issues time-ordered ids: the millisecond clock in the high bits, a counter in the low
/// ones, strictly increasing within a process even if the wall clock steps back.
#[derive(Debug, Default)]
pub struct IdGenerator {
    last: AtomicU64,
}

const COUNTER_BITS: u32 = 20;

impl IdGenerator {
    /// Never issues an id at or below `floor` (the highest id seen in the store at start).
    pub fn starting_after(floor: u64) -> Self {
        Self { last: AtomicU64::new(floor) }
    }

    pub fn next(&self, now_ms: u64) -> u64 {
        let candidate = now_ms << COUNTER_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = candidate.max(last + 1);
            match self.last.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// A printable id: `prefix` then 16 hex digits, so string order is time order.
    pub fn next_string(&self, prefix: &str, now_ms: u64) -> String {
        let n = self.next(now_ms);
        // Written digit by digit into a string of its exact size: `format!` went through the
        // formatting machinery and grew its string twice, for one id per ledger entry.
        let mut id = String::with_capacity(prefix.len() + 16);
        id.push_str(prefix);
        id.extend((0..16).rev().map(|i| char::from(HEX[(n >> (i * 4)) as usize & 0xf])));
        id
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The numeric part of an id made by [`IdGenerator::next_string`].
pub fn id_number(id: &str) -> Option<u64> {
    id.get(id.len().checked_sub(16)?..).and_then(|hex| u64::from_str_radix(hex, 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("account_id", "org-42.prod:eu_1").is_ok());
        assert!(check_name("account_id", "").is_err());
        assert!(check_name("account_id", "a b").is_err());
        assert!(check_name("account_id", "é").is_err());
        assert!(check_name("account_id", &"a".repeat(129)).is_err());
        assert!(check_name("account_id", &"a".repeat(128)).is_ok());
    }

    #[test]
    fn ids_are_ordered_even_when_the_clock_steps_back() {
        let ids = IdGenerator::default();
        let a = ids.next_string("le_", 1000);
        let b = ids.next_string("le_", 1000);
        let c = ids.next_string("le_", 10);
        assert!(a < b && b < c);
        assert_eq!(id_number(&c), Some(id_number(&b).unwrap() + 1));
    }

    #[test]
    fn an_id_is_its_prefix_and_sixteen_hex_digits() {
        let ids = IdGenerator::starting_after(0x0123_4567_89ab_cdee);
        let id = ids.next_string("le_", 0);
        assert_eq!(id, "le_0123456789abcdef");
        assert_eq!(id.capacity(), id.len());
        assert_eq!(id_number(&id), Some(0x0123_4567_89ab_cdef));
    }
}
