//! How timestamps are stored: RFC 3339 text where people read it (JSON), and seconds plus
//! nanoseconds in the compact binary forms (postcard), which is a third of the size, exact,
//! and needs no formatting or parsing on the hot path or at start-up.
//!
//! Use with `#[serde(with = "crate::domain::time::compact")]` (or `compact_opt`, `compact_vec`).

use chrono::{DateTime, Utc};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod compact {
    use super::*;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            t.serialize(s)
        } else {
            (t.timestamp(), t.timestamp_subsec_nanos()).serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        if d.is_human_readable() {
            DateTime::deserialize(d)
        } else {
            let (secs, nanos) = <(i64, u32)>::deserialize(d)?;
            DateTime::from_timestamp(secs, nanos).ok_or_else(|| D::Error::custom("timestamp out of range"))
        }
    }
}

/// The stored form of one timestamp, for containers of timestamps.
#[derive(Serialize, Deserialize)]
struct Compact(#[serde(with = "compact")] DateTime<Utc>);

pub mod compact_opt {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        t.map(Compact).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Ok(Option::<Compact>::deserialize(d)?.map(|c| c.0))
    }
}

pub mod compact_vec {
    use super::*;

    pub fn serialize<S: Serializer>(t: &[DateTime<Utc>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(t.iter().copied().map(Compact))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DateTime<Utc>>, D::Error> {
        Ok(Vec::<Compact>::deserialize(d)?.into_iter().map(|c| c.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Stamped {
        #[serde(with = "compact")]
        at: DateTime<Utc>,
        #[serde(with = "compact_opt")]
        until: Option<DateTime<Utc>>,
    }

    #[test]
    fn binary_is_exact_and_small_and_json_stays_readable() {
        let at = "2026-11-24T01:43:03.123456789Z".parse().unwrap();
        for until in [None, Some("9999-12-31T23:59:59Z".parse().unwrap())] {
            let v = Stamped { at, until };
            let bytes = postcard::to_stdvec(&v).unwrap();
            assert_eq!(postcard::from_bytes::<Stamped>(&bytes).unwrap(), v);
            let json = serde_json::to_string(&v).unwrap();
            assert!(json.contains("2026-11-24T01:43:03.123456789Z"), "{json}");
            assert_eq!(serde_json::from_str::<Stamped>(&json).unwrap(), v);
        }
        let one = postcard::to_stdvec(&Stamped { at, until: None }).unwrap();
        assert!(one.len() <= 12, "{} bytes", one.len());
    }
}
