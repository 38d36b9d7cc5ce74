//! Request ids already answered, with a fingerprint of their arguments and the answer.
//!
//! An entry is inserted under the owning account's lock, in the same critical section as
//! the change it answers, so two concurrent calls with one id can never both be charged.
//! Entries live `retention` (≥ 24 h) in memory and in the store; beyond `max_entries` the
//! oldest are archived in the store's index, then leave memory, and are looked up there on
//! a miss.

use super::outcome::Outcome;
use crate::store::IdemRow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct IdemEntry {
    pub fingerprint: u64,
    pub answer: Arc<Answered>,
    pub created_ms: u64,
}

/// An answer, shared by the map and the journal writer, which marks it durable in place.
///
/// Kept in its stored form (the outcome postcard-encoded): millions are kept for a day and
/// nearly all are never asked for again. Encoded once, it is one small block in memory
/// (the outcome's ids and allocations took a block each) and the very bytes the journal
/// writes.
#[derive(Debug)]
pub struct Answered {
    encoded: Box<[u8]>,
    /// False until the change is durable: a duplicate arriving before that cannot be told
    /// the outcome yet.
    durable: AtomicBool,
}

impl Answered {
    pub fn new(outcome: &Outcome, durable: bool) -> Arc<Self> {
        let encoded = postcard::to_stdvec(outcome).expect("outcome encodes").into_boxed_slice();
        Arc::new(Answered { encoded, durable: AtomicBool::new(durable) })
    }

    /// An answer read back from the store; refused if it does not decode.
    pub fn decoded_from(encoded: &[u8]) -> Result<Arc<Self>, postcard::Error> {
        postcard::from_bytes::<Outcome>(encoded)?;
        Ok(Arc::new(Answered { encoded: encoded.into(), durable: AtomicBool::new(true) }))
    }

    /// The outcome, for a replay.
    pub fn outcome(&self) -> Outcome {
        postcard::from_bytes(&self.encoded).expect("answers are checked when made or read back")
    }

    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    pub fn is_durable(&self) -> bool {
        self.durable.load(Ordering::Acquire)
    }

    pub fn mark_durable(&self) {
        self.durable.store(true, Ordering::Release);
    }
}

/// The account part of an idempotency key (`engine::idem_key`).
pub fn account_of(key: &str) -> &str {
    key.split('\u{1f}').next().unwrap_or(key)
}

/// The stored form of an answer, for the journal and the archive.
pub fn answer_row(key: &str, account_id: &str, fingerprint: u64, answer: &Answered, created_ms: u64) -> IdemRow {
    IdemRow {
        request_id: key.to_string(),
        account_id: account_id.to_string(),
        fingerprint,
        outcome: answer.encoded().to_vec(),
        created_ms,
    }
}

/// Reads an answer back from its stored form.
pub fn entry_from_row(row: &IdemRow) -> Result<IdemEntry, postcard::Error> {
    Ok(IdemEntry {
        fingerprint: row.fingerprint,
        answer: Answered::decoded_from(&row.outcome)?,
        created_ms: row.created_ms,
    })
}

/// What a lookup found.
pub enum Seen {
    New,
    Replay(Arc<Answered>),
    Mismatch,
    InFlight,
}

pub struct Idempotency {
    entries: super::Map<String, IdemEntry>,
    retention_ms: u64,
    max_entries: usize,
    /// Set once entries were evicted for space: a miss must then ask the store.
    evicted: AtomicBool,
}

impl Idempotency {
    pub fn new(retention_ms: u64, max_entries: usize) -> Self {
        // Growing the table rehashes a whole shard under its lock, and every request for that
        // shard waits behind it: many shards keep each rehash short (at 5M answers a shard
        // holds 20k, not 600k). Sizing up front would cost its memory while idle.
        let entries = super::Map::with_hasher_and_shard_amount(Default::default(), 256);
        Idempotency { entries, retention_ms, max_entries, evicted: AtomicBool::new(false) }
    }

    pub fn check(&self, request_id: &str, fingerprint: u64) -> Seen {
        match self.entries.get(request_id) {
            None => Seen::New,
            Some(e) if e.fingerprint != fingerprint => Seen::Mismatch,
            Some(e) if !e.answer.is_durable() => Seen::InFlight,
            Some(e) => Seen::Replay(e.answer.clone()),
        }
    }

    pub fn contains(&self, request_id: &str) -> bool {
        self.entries.contains_key(request_id)
    }

    pub fn insert(&self, request_id: String, entry: IdemEntry) {
        self.entries.insert(request_id, entry);
    }

    /// Forgets an answer whose change never became durable: a retry must run it again.
    pub fn forget(&self, request_id: &str) {
        self.entries.remove(request_id);
    }

    /// Whether a miss in memory may still be a hit in the store.
    pub fn may_be_in_store(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops durable entries past retention. Returns how many left memory.
    pub fn expire(&self, now_ms: u64) -> usize {
        let before = self.entries.len();
        let cutoff = now_ms.saturating_sub(self.retention_ms);
        self.entries.retain(|_, e| e.created_ms >= cutoff || !e.answer.is_durable());
        before - self.entries.len()
    }

    /// The oldest durable entries beyond `max_entries`: to archive in the store, then evict.
    /// Takes down to 90% of the bound, so the sweeps after it have nothing to do for a while.
    /// Only the victims are copied: the map may hold millions of entries.
    pub fn over_bound(&self) -> Vec<(String, IdemEntry)> {
        let len = self.entries.len();
        if len <= self.max_entries {
            return Vec::new();
        }
        let over = len - (self.max_entries - self.max_entries / 10);
        let mut times: Vec<u64> = self.entries.iter().filter(|e| e.answer.is_durable()).map(|e| e.created_ms).collect();
        let Some(last) = over.min(times.len()).checked_sub(1) else { return Vec::new() };
        let cutoff = *times.select_nth_unstable(last).1;
        drop(times);
        let mut victims: Vec<(String, IdemEntry)> = self
            .entries
            .iter()
            .filter(|e| e.created_ms <= cutoff && e.answer.is_durable())
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        victims.sort_unstable_by_key(|(_, e)| e.created_ms);
        victims.truncate(over); // entries tied at the cutoff
        victims
    }

    /// Lets go of entries the store has archived. From now on a miss may be a hit there.
    pub fn evict(&self, keys: impl IntoIterator<Item = String>) {
        self.mark_evicted();
        for key in keys {
            self.entries.remove(&key);
        }
    }

    pub fn mark_evicted(&self) {
        self.evicted.store(true, Ordering::Relaxed);
    }
}

/// FNV-1a over the canonical bytes of a request's arguments. Stable across builds and
/// versions, because it is persisted with the answer.
#[derive(Clone, Copy)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    pub fn bytes(mut self, field: &[u8]) -> Self {
        for &b in field.iter().chain(&[0xff]) {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    pub fn num(self, n: u64) -> Self {
        self.bytes(&n.to_le_bytes())
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ms: u64, durable: bool) -> IdemEntry {
        IdemEntry { fingerprint: 1, answer: Answered::new(&Outcome::AccountChanged, durable), created_ms: ms }
    }

    #[test]
    fn replay_mismatch_and_in_flight() {
        let t = Idempotency::new(1000, 10);
        assert!(matches!(t.check("r", 1), Seen::New));
        let e = entry(0, false);
        t.insert("r".into(), e.clone());
        assert!(matches!(t.check("r", 1), Seen::InFlight));
        e.answer.mark_durable();
        assert!(matches!(t.check("r", 1), Seen::Replay(_)));
        assert!(matches!(t.check("r", 2), Seen::Mismatch));
    }

    #[test]
    fn expiry_keeps_retention_and_the_bound_picks_the_oldest() {
        let t = Idempotency::new(1000, 3);
        for (i, ms) in [100u64, 200, 300, 5000].iter().enumerate() {
            t.insert(format!("r{i}"), entry(*ms, true));
        }
        t.insert("pending".into(), entry(0, false));
        assert_eq!(t.expire(1250), 2); // r0 and r1; a pending entry is never dropped
        assert!(matches!(t.check("r0", 1), Seen::New));
        assert!(t.over_bound().is_empty());
        t.insert("r9".into(), entry(6000, true));
        let victims: Vec<String> = t.over_bound().into_iter().map(|(k, _)| k).collect();
        assert_eq!(victims, ["r2"], "one over the bound: the oldest durable entry");
        assert!(!t.may_be_in_store());
        t.evict(victims);
        assert!(matches!(t.check("r2", 1), Seen::New));
        assert!(t.may_be_in_store());
        assert!(matches!(t.check("pending", 1), Seen::InFlight));
    }

    #[test]
    fn eviction_goes_down_to_ninety_percent_of_the_bound_oldest_first() {
        let t = Idempotency::new(1000, 10);
        for ms in [50u64, 10, 40, 30, 20, 60, 70, 80, 90, 100, 110, 120] {
            t.insert(format!("r{ms}"), entry(ms, true));
        }
        let victims: Vec<String> = t.over_bound().into_iter().map(|(k, _)| k).collect();
        assert_eq!(victims, ["r10", "r20", "r30"], "12 entries, bound 10: down to 9");
    }

    #[test]
    fn fingerprints_separate_fields() {
        let a = Fingerprint::default().str("ab").str("c").finish();
        let b = Fingerprint::default().str("a").str("bc").finish();
        assert_ne!(a, b);
    }
}
