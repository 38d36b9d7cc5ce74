//! Request ids already answered, with a fingerprint of their arguments and the answer.
//!
//! An entry is inserted under the owning account's lock, in the same critical section as
//! the change it answers, so two concurrent calls with one id can never both be charged.
//! Entries live `retention` (≥ 24 h) in memory and in the store, where each group commit
//! writes its answers as one page. Beyond `max_entries` the oldest leave memory; only
//! where the store has them stays (`evicted`), so a miss asks the store only for an id it
//! did answer.

use super::answered::{entry_from_row, Answered};
use super::evicted::Evicted;
use crate::pacing::Pacing;
use crate::store::{Store, StoreError};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the answers in memory are held to their bound (`Idempotency::evict_over_bound`).
/// At a steady 50k answers a second, about 50k then go at once rather than a minute's worth.
pub const EVICTION_PERIOD: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct IdemEntry {
    pub fingerprint: u64,
    pub answer: Arc<Answered>,
    pub created_ms: u64,
}

/// What a lookup found.
pub enum Seen {
    New,
    /// Not in memory, and one of these pages of the store may hold the answer.
    Evicted(Vec<u64>),
    Replay(Arc<Answered>),
    Mismatch,
    InFlight,
}

/// An idempotency key (`engine::idem_key`: account and request id, about 45 bytes) as memory
/// holds it: a 128-bit hash, seeded per process. The key itself is kept in the store's pages
/// only; in memory it cost a block of its own per answer. At 128 bits no two keys share a
/// hash in practice (about 10^-26 among 5M answers), and clients cannot aim for one: the
/// seeds are random and never leave the process. Memory is rebuilt from the store at
/// start-up, so the hash need not be stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key(pub(super) [u64; 2]);

#[derive(Default)]
struct KeyHasher([foldhash::quality::RandomState; 2]);

impl KeyHasher {
    fn key(&self, key: &str) -> Key {
        let [a, b] = &self.0;
        Key([a.hash_one(key), b.hash_one(key)])
    }
}

/// A count on a cache line of its own: every answer written bumps it, and under the
/// multi-threaded runtime the fields beside it (the map's shard table among them) are read
/// by every lookup on the other cores.
#[derive(Default)]
#[repr(align(64))]
struct Count(AtomicUsize);

pub struct Idempotency {
    entries: super::Map<Key, IdemEntry>,
    /// How many `entries` holds, counted as they come and go: the map's own count visits
    /// every shard, and requests look at this one to see if the bound is kept.
    len: Count,
    hasher: KeyHasher,
    evicted: Evicted,
    /// The newest page whose answers are all marked written.
    written_through: AtomicU64,
    retention_ms: u64,
    max_entries: usize,
    /// Requests give way to the eviction sweep (a thread at the lowest priority) once the
    /// map has been over its bound for two eviction periods: on a core kept busy by requests
    /// it never ran, the map grew without bound, and each shard's growth rehashed it into
    /// fresh pages, under its lock, on a request's time.
    pacing: Pacing,
}

impl Idempotency {
    /// Below this many entries, `nth_oldest` reads every one.
    const AGES_SAMPLE_MIN: usize = 1 << 16;

    pub fn new(retention_ms: u64, max_entries: usize) -> Self {
        // Growing the table rehashes a whole shard under its lock, and every request for that
        // shard waits behind it: many shards keep each rehash short (at 5M answers a shard
        // holds 20k, not 600k). Sizing up front would cost its memory while idle.
        let entries = super::Map::with_hasher_and_shard_amount(Default::default(), 256);
        Idempotency {
            entries,
            len: Count::default(),
            hasher: KeyHasher::default(),
            evicted: Evicted::default(),
            written_through: AtomicU64::new(0),
            retention_ms,
            max_entries,
            pacing: Pacing::new(2 * EVICTION_PERIOD),
        }
    }

    fn key(&self, key: &str) -> Key {
        self.hasher.key(key)
    }

    pub fn check(&self, key: &str, fingerprint: u64) -> Seen {
        let key = self.key(key);
        match self.entries.get(&key) {
            None => match self.evicted.pages(key) {
                pages if pages.is_empty() => Seen::New,
                pages => Seen::Evicted(pages),
            },
            Some(e) if e.fingerprint != fingerprint => Seen::Mismatch,
            Some(e) if !e.answer.is_durable() => Seen::InFlight,
            Some(e) => Seen::Replay(e.answer.clone()),
        }
    }

    pub fn insert(&self, key: &str, entry: IdemEntry) {
        if self.entries.insert(self.key(key), entry).is_none()
            && self.len.0.fetch_add(1, Ordering::Relaxed) == self.max_entries
        {
            self.pacing.owed_from_now();
        }
    }

    /// Forgets an answer whose change never became durable: a retry must run it again.
    pub fn forget(&self, key: &str) {
        if self.entries.remove(&self.key(key)).is_some() {
            self.len.0.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Called by a request once its account's lock is let go. While the map is over its
    /// bound and the eviction sweep has not brought it back for a while, gives the sweep the
    /// core for a moment (`Pacing`).
    pub fn pace(&self) {
        if self.len() > self.max_entries {
            self.pacing.give_way();
        }
    }

    /// How many times requests paused to let the eviction sweep catch up.
    pub fn pauses(&self) -> u64 {
        self.pacing.pauses()
    }

    /// The store's pages that may hold the answer to `key`, if memory let go of it:
    /// they must be read before the id is checked. Empty for an id never answered.
    pub fn evicted_pages(&self, key: &str) -> Vec<u64> {
        if self.evicted.is_empty() {
            return Vec::new();
        }
        let key = self.key(key);
        if self.entries.contains_key(&key) {
            return Vec::new();
        }
        self.evicted.pages(key)
    }

    /// Answers in memory.
    pub fn len(&self) -> usize {
        self.len.0.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers let go of for space and still within retention.
    pub fn evicted_len(&self) -> usize {
        self.evicted.len()
    }

    /// Drops durable entries past retention. Returns how many left memory. (Evicted answers
    /// are forgotten with their pages: [`Idempotency::pages_pruned_before`].)
    pub fn expire(&self, now_ms: u64) -> usize {
        let cutoff = now_ms.saturating_sub(self.retention_ms);
        // Counted as they go: requests insert meanwhile.
        let mut expired = 0;
        self.entries.retain(|_, e| {
            let keep = e.created_ms >= cutoff || !e.answer.is_durable();
            expired += usize::from(!keep);
            keep
        });
        self.len.0.fetch_sub(expired, Ordering::Relaxed);
        expired
    }

    /// The store pruned its pages of answers before `first_kept`.
    pub fn pages_pruned_before(&self, first_kept: u64) {
        self.evicted.forget_pages_before(first_kept);
    }

    /// Lets go of the oldest written entries beyond `max_entries`, down to 90% of the
    /// bound, so the sweeps after it have nothing to do for a while. Memory only: the
    /// store has them already. Returns how many left. Run every `EVICTION_PERIOD`.
    pub fn evict_over_bound(&self) -> usize {
        let len = self.len();
        if len <= self.max_entries {
            return 0;
        }
        let evicted = self.evict_oldest(len);
        // Whatever is left over the bound (answers not written yet) is owed from now on.
        self.pacing.owed_from_now();
        evicted
    }

    /// `evict_over_bound`'s work, on a map of `len` entries. The map may hold millions and
    /// is read a shard at a time, each locked while it is read: one pass over a sample of
    /// it, then two over all of it, each doing as little as it can per entry.
    fn evict_oldest(&self, len: usize) -> usize {
        let over = len - (self.max_entries - self.max_entries / 10);
        let Some(cutoff) = self.nth_oldest(over, len) else { return 0 };
        // Answers written after this are left for the next sweep: then every entry the last
        // pass lets go of was filed by the one before.
        let written = self.written_through.load(Ordering::Acquire);
        let leaves = |e: &IdemEntry| e.created_ms <= cutoff && e.answer.page().is_some_and(|page| page <= written);

        // Filed before they leave memory, so a retry in between finds one or the other.
        // Read by `retain`, which keeps every entry here: it reads a shard under one lock,
        // where the map's iterator takes and drops a reference to the shard's lock per
        // entry, and the whole sweep took half as long again.
        let mut filed = Vec::with_capacity(over + over / 8);
        self.entries.retain(|key, e| {
            if leaves(e) {
                filed.push(Evicted::filing(*key, e.answer.page().expect("checked by `leaves`")));
            }
            true
        });
        self.evicted.file(filed, written);
        let mut evicted = 0;
        self.entries.retain(|_, e| {
            let leave = leaves(e);
            evicted += usize::from(leave);
            !leave
        });
        self.len.0.fetch_sub(evicted, Ordering::Relaxed);
        evicted
    }

    /// The creation time of about the `n`th oldest of `len` entries, from a sample of them:
    /// the first entries the map yields, which come shard by shard, and shards are picked by
    /// hash bits that have nothing to do with time. A sixteenth of 5M answers places the
    /// cutoff within a fraction of a percent; reading all of them was a third of the sweep.
    /// From the times kept inline: an answer's own block is not looked into. The buffer is
    /// sized and touched first (a fresh page costs a fault), since growing it would copy it
    /// while a shard is locked.
    fn nth_oldest(&self, n: usize, len: usize) -> Option<u64> {
        let sample = (len / 16).max(Self::AGES_SAMPLE_MIN).min(len);
        // Not `vec![0; sample]`: that may map fresh zero pages, to be faulted in under the locks.
        #[allow(clippy::slow_vector_initialization)]
        let mut times = {
            let mut times = Vec::with_capacity(sample);
            times.resize(sample, 0);
            times
        };
        let mut seen = 0;
        for (time, e) in times.iter_mut().zip(self.entries.iter()) {
            *time = e.created_ms;
            seen += 1;
        }
        if n == 0 || seen == 0 {
            return None;
        }
        // The `n`th of `len` is about the `n * seen / len`th of the sample.
        let nth = (n as u128 * seen as u128 / len as u128) as usize;
        Some(*times[..seen].select_nth_unstable(nth.clamp(1, seen) - 1).1)
    }

    /// Every answer on pages up to `page` is marked written.
    pub fn written_through(&self, page: u64) {
        self.written_through.fetch_max(page, Ordering::AcqRel);
    }

    /// Takes back the answers the store kept since `since_ms`: the newest in memory up to
    /// the bound, the rest filed as evicted. Returns how many.
    pub fn restore_from(&self, store: &mut dyn Store, since_ms: u64) -> Result<usize, StoreError> {
        let mut beyond = Vec::new();
        let mut restored = 0;
        let mut kept = self.len();
        store.each_answer_page(since_ms, &mut |page, rows| {
            restored += rows.len();
            self.written_through(page);
            for row in rows {
                if kept >= self.max_entries {
                    beyond.push(Evicted::filing(self.key(&row.request_id), page));
                    continue;
                }
                match entry_from_row(&row, page) {
                    Ok(entry) => {
                        self.insert(&row.request_id, entry);
                        kept += 1;
                    }
                    Err(e) => tracing::warn!(
                        request_id = %row.request_id, error = %e, "unreadable stored answer; the id is treated as new"
                    ),
                }
            }
            Ok(())
        })?;
        self.evicted.file(beyond, self.written_through.load(Ordering::Acquire));
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::answered::answer_row;
    use crate::engine::outcome::OutcomeRef;
    use crate::store::AnswerRow;

    fn entry(ms: u64) -> IdemEntry {
        IdemEntry { fingerprint: 1, answer: Answered::new(OutcomeRef::AccountChanged, false), created_ms: ms }
    }

    /// An entry written to the store on `page` (the page numbered after its time here).
    fn written(ms: u64) -> IdemEntry {
        let e = entry(ms);
        e.answer.written(ms);
        e
    }

    fn row(key: &str, ms: u64) -> AnswerRow {
        answer_row(&key.into(), &"a".into(), 1, &written(ms).answer, ms)
    }

    #[test]
    fn replay_mismatch_and_in_flight() {
        let t = Idempotency::new(1000, 10);
        assert!(matches!(t.check("r", 1), Seen::New));
        let e = entry(0);
        t.insert("r", e.clone());
        assert!(matches!(t.check("r", 1), Seen::InFlight));
        e.answer.written(7);
        assert!(matches!(t.check("r", 1), Seen::Replay(_)));
        assert!(matches!(t.check("r", 2), Seen::Mismatch));
    }

    #[test]
    fn the_count_follows_what_comes_and_goes() {
        let t = Idempotency::new(1000, 2);
        let counted = |n: usize| {
            assert_eq!(t.len(), n);
            assert_eq!(t.len(), t.entries.len(), "the map's own count");
        };
        t.insert("a", written(100));
        t.insert("a", written(100));
        t.insert("b", written(200));
        t.insert("c", entry(300));
        counted(3);
        t.forget("c");
        t.forget("c");
        t.forget("never-seen");
        counted(2);
        t.insert("d", written(400));
        t.insert("e", written(1500));
        t.written_through(10_000);
        assert_eq!(t.evict_over_bound(), 2, "4 entries, bound 2: down to 2");
        counted(2);
        t.insert("f", written(2000));
        assert_eq!(t.expire(2600), 2, "d and e");
        counted(1);
    }

    #[test]
    fn the_bound_lets_the_oldest_written_answers_go_and_remembers_their_pages() {
        let t = Idempotency::new(10_000, 3);
        for ms in [100u64, 200, 300, 5000] {
            t.insert(&format!("r{ms}"), written(ms));
        }
        t.insert("pending", entry(6000));
        t.written_through(10_000);
        assert_eq!(t.evict_over_bound(), 2, "5 entries, bound 3: down to 3, the oldest first");
        assert_eq!(t.len(), 3);
        for (key, page) in [("r100", 100), ("r200", 200)] {
            let left = matches!(t.check(key, 1), Seen::Evicted(pages) if pages == [page]);
            assert!(left, "{key} left memory, and a check says where it is rather than take the id as new");
            assert_eq!(t.evicted_pages(key), [page], "and memory knows where the store has it");
        }
        assert!(t.evicted_pages("r300").is_empty(), "still in memory");
        assert!(t.evicted_pages("never-seen").is_empty(), "an id never answered costs the store nothing");
    }

    #[test]
    fn only_answers_in_the_store_leave_memory() {
        let t = Idempotency::new(10_000, 1);
        let pending = entry(100);
        t.insert("pending", pending.clone());
        // Durable at once in `async` mode, but not in the store yet.
        let unwritten = Answered::new(OutcomeRef::AccountChanged, true);
        t.insert("unwritten", IdemEntry { fingerprint: 1, answer: unwritten, created_ms: 200 });
        t.insert("r300", written(300));
        t.insert("r400", written(400));
        t.written_through(10_000);
        // Its page is past what the journal has reported written in full.
        let racing = entry(50);
        racing.answer.written(20_000);
        t.insert("racing", racing);
        assert_eq!(t.evict_over_bound(), 1, "of the 4 oldest, the one in the store goes");
        assert!(matches!(t.check("racing", 1), Seen::Replay(_)), "a page not reported yet waits for the next sweep");
        assert!(matches!(t.check("pending", 1), Seen::InFlight));
        assert!(matches!(t.check("unwritten", 1), Seen::Replay(_)));
        pending.answer.written(100);
        assert_eq!(t.evict_over_bound(), 1, "once written, it goes too");
        assert_eq!(t.evicted_pages("pending"), [100]);
        assert!(matches!(t.check("unwritten", 1), Seen::Replay(_)));
    }

    #[test]
    fn expiry_keeps_retention_and_evicted_answers_go_with_their_pages() {
        let t = Idempotency::new(1000, 2);
        for ms in [100u64, 200, 1500, 1600] {
            t.insert(&format!("r{ms}"), written(ms));
        }
        t.insert("pending", entry(2000));
        t.written_through(10_000);
        assert_eq!(t.evict_over_bound(), 3);
        assert_eq!((t.len(), t.evicted_len()), (2, 3));
        assert_eq!(t.expire(1_000_000), 1, "r1600; a pending entry is never dropped");
        assert!(matches!(t.check("pending", 1), Seen::InFlight));
        t.pages_pruned_before(1000);
        assert!(t.evicted_pages("r200").is_empty(), "its page is gone from the store");
        assert_eq!(t.evicted_pages("r1500"), [1500]);
        assert_eq!(t.evicted_len(), 1);
    }

    #[test]
    fn eviction_goes_down_to_ninety_percent_of_the_bound_oldest_first() {
        let t = Idempotency::new(1000, 10);
        for ms in [50u64, 10, 40, 30, 20, 60, 70, 80, 90, 100, 110, 120] {
            t.insert(&format!("r{ms}"), written(ms));
        }
        t.written_through(120);
        assert_eq!(t.evict_over_bound(), 3, "12 entries, bound 10: down to 9");
        let gone: Vec<&str> =
            ["r10", "r20", "r30", "r40"].into_iter().filter(|k| !t.evicted_pages(k).is_empty()).collect();
        assert_eq!(gone, ["r10", "r20", "r30"]);
    }

    #[test]
    fn the_cutoff_of_a_large_table_is_placed_from_a_sample_of_it() {
        let (bound, len) = (100_000, 200_000);
        let t = Idempotency::new(u64::MAX, bound);
        for ms in 1..=len as u64 {
            t.insert(&format!("r{ms}"), written(ms));
        }
        t.written_through(u64::MAX);
        let evicted = t.evict_over_bound();
        let asked = len - (bound - bound / 10);
        assert!(evicted.abs_diff(asked) < asked / 100, "{evicted} evicted, {asked} asked for");
        let left = |ms: usize| !t.evicted_pages(&format!("r{ms}")).is_empty();
        assert!((1..=evicted).all(left), "the oldest left");
        assert!(!(evicted + 1..=len).any(left), "and only they did");
        assert_eq!(t.len(), len - evicted);
    }

    #[test]
    fn restored_answers_fill_memory_up_to_the_bound_newest_first_and_the_rest_is_filed_as_evicted() {
        use crate::store::embedded::{EmbeddedStore, Synchronous};
        use crate::store::Batch;
        let dir = tempfile::tempdir().unwrap();
        let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
        let mut broken = row("c", 800);
        broken.outcome = Arc::new(vec![0xff; 3]);
        let older = vec![broken, row("d", 801), row("e", 802)];
        let older = store.write(&mut Batch { idempotency: older, ..Batch::default() }).unwrap().answers_page;
        let newer = vec![row("a", 900), row("b", 901)];
        let newer = store.write(&mut Batch { idempotency: newer, ..Batch::default() }).unwrap().answers_page;

        let t = Idempotency::new(1000, 3);
        assert_eq!(t.restore_from(&mut store, 0).unwrap(), 5);
        assert!(matches!(t.check("a", 1), Seen::Replay(_)));
        assert_eq!(
            t.entries.get(&t.key("a")).unwrap().answer.page(),
            Some(newer),
            "kept with its page, to leave memory later"
        );
        assert!(matches!(t.check("c", 1), Seen::New), "an unreadable answer is reported and skipped");
        assert!(matches!(t.check("d", 1), Seen::Replay(_)));
        assert_eq!(t.evicted_pages("e"), [older], "beyond the bound: filed where the store has it");
        assert_eq!((t.len(), t.evicted_len()), (3, 1));
    }
}
