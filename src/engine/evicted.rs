//! Where the store keeps each answer memory let go of (see `idempotency`): 8 bytes an
//! answer, against about 160 for one kept whole, so a day of answers beyond the memory
//! bound still fits, and an id never answered is told apart without asking the store.
//!
//! An answer is filed under the hash of its key (`idempotency::Key`, seeded per process, so
//! clients cannot choose ids that pile into one bucket): 12 of its bits pick a bucket, 32
//! others are kept as its tag, beside the low 32 bits of its page number.
//! Two keys may share a tag, so a lookup returns every page that may hold the key and
//! the store has the last word; a true answer is never missed.

use super::idempotency::Key;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

const BUCKET_BITS: u32 = 12;

/// One evicted answer. Ordered by tag, so a bucket is searched by bisection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tomb {
    tag: u32,
    /// The low 32 bits of the page number: every page within retention is less than 2^32
    /// pages older than the newest, which restores the rest.
    page: u32,
}

/// An answer about to be filed (`Evicted::filing`): 12 bytes, since start-up may hold
/// one for every answer beyond the bound before filing them together.
pub struct Filing {
    bucket: u32,
    tomb: Tomb,
}

#[derive(Default)]
pub struct Evicted {
    /// Sorted by tag. Allocated at the first eviction: most servers never evict.
    buckets: OnceLock<Box<[RwLock<Vec<Tomb>>]>>,
    newest_page: AtomicU64,
    len: AtomicUsize,
    /// Buckets are rebuilt, then swapped in: one writer at a time, so none is lost.
    writing: Mutex<()>,
}

impl Evicted {
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pages that may hold the answer to `key`; empty, without a lock, until anything
    /// was evicted.
    pub fn pages(&self, key: Key) -> Vec<u64> {
        let Some(buckets) = self.buckets.get() else { return Vec::new() };
        let (bucket, tag) = locate(key);
        let bucket = buckets[bucket].read().unwrap_or_else(|p| p.into_inner());
        let from = seek(&bucket, tag);
        let newest = self.newest_page.load(Ordering::Acquire);
        bucket[from..].iter().take_while(|t| t.tag == tag).map(|t| full_page(newest, t.page)).collect()
    }

    /// Files answers (key, page) memory is letting go of.
    #[cfg(test)]
    pub fn insert(&self, answers: impl IntoIterator<Item = (Key, u64)>) {
        let mut newest = 0;
        let filed = answers
            .into_iter()
            .map(|(key, page)| {
                newest = newest.max(page);
                Evicted::filing(key, page)
            })
            .collect();
        self.file(filed, newest);
    }

    /// An answer ready to be filed.
    pub fn filing(key: Key, page: u64) -> Filing {
        let (bucket, tag) = locate(key);
        Filing { bucket: bucket as u32, tomb: Tomb { tag, page: page as u32 } }
    }

    /// Files answers on pages up to `newest_page`.
    pub fn file(&self, mut filed: Vec<Filing>, newest_page: u64) {
        if filed.is_empty() {
            return;
        }
        filed.sort_unstable_by_key(|f| (f.bucket, f.tomb));
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        self.newest_page.fetch_max(newest_page, Ordering::AcqRel);
        let buckets = self.buckets.get_or_init(|| (0..1 << BUCKET_BITS).map(|_| RwLock::default()).collect());
        for chunk in filed.chunk_by(|a, b| a.bucket == b.bucket) {
            let lock = &buckets[chunk[0].bucket as usize];
            let old = lock.read().unwrap_or_else(|p| p.into_inner());
            let mut merged = Vec::with_capacity(old.len() + chunk.len());
            merged.extend_from_slice(&old);
            drop(old);
            merged.extend(chunk.iter().map(|f| f.tomb));
            // Two sorted runs, which the stable sort finds and merges in one pass. The
            // unstable one sorted them afresh: as evictions piled up, every sweep re-sorted
            // all of them, and that cost grew by the minute under load.
            merged.sort();
            *lock.write().unwrap_or_else(|p| p.into_inner()) = merged;
        }
        self.len.fetch_add(filed.len(), Ordering::Relaxed);
    }

    /// Forgets answers on pages the store no longer has (`first_kept` is its oldest).
    pub fn forget_pages_before(&self, first_kept: u64) {
        let Some(buckets) = self.buckets.get() else { return };
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let newest = self.newest_page.load(Ordering::Acquire);
        let mut forgotten = 0;
        for lock in buckets.iter() {
            let bucket = lock.read().unwrap_or_else(|p| p.into_inner());
            let gone = bucket.iter().filter(|t| full_page(newest, t.page) < first_kept).count();
            if gone == 0 {
                continue;
            }
            let kept: Vec<Tomb> = bucket.iter().filter(|t| full_page(newest, t.page) >= first_kept).copied().collect();
            drop(bucket);
            *lock.write().unwrap_or_else(|p| p.into_inner()) = kept;
            forgotten += gone;
        }
        self.len.fetch_sub(forgotten, Ordering::Relaxed);
    }
}

/// The bucket and the tag of `key`: independent bits of its hash.
fn locate(key: Key) -> (usize, u32) {
    let [a, b] = key.0;
    ((a >> (64 - BUCKET_BITS)) as usize, b as u32)
}

/// Where the first tomb tagged `tag` or above is in `bucket` (sorted by tag), as
/// `partition_point` says. Tags are hash bits, spread evenly, so a tag's place is guessed
/// from its value and lies within a few entries of the guess: found in a cache line or two,
/// where bisecting a bucket of a thousand touched ten. Every lookup of a new request id
/// makes one, once answers have been evicted.
fn seek(bucket: &[Tomb], tag: u32) -> usize {
    let guess = ((u64::from(tag) * bucket.len() as u64) >> 32) as usize;
    // Widen a window around the guess until it brackets the place, then bisect inside it.
    let (mut lo, mut hi, mut step) = (guess, guess, 1);
    while lo > 0 && bucket[lo - 1].tag >= tag {
        lo = lo.saturating_sub(step);
        step *= 2;
    }
    step = 1;
    while hi < bucket.len() && bucket[hi].tag < tag {
        hi = (hi + step).min(bucket.len());
        step *= 2;
    }
    lo + bucket[lo..hi].partition_point(|t| t.tag < tag)
}

/// The page number whose low 32 bits are `low`, at or below `newest`.
fn full_page(newest: u64, low: u32) -> u64 {
    newest - u64::from((newest as u32).wrapping_sub(low))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key for `name`, as the idempotency table would hash it (any fixed spread will do).
    fn key(name: &str) -> Key {
        use std::hash::BuildHasher;
        let h = foldhash::fast::FixedState::with_seed(7);
        Key([h.hash_one(name), h.hash_one((name, 1))])
    }

    impl Evicted {
        fn pages_of(&self, name: &str) -> Vec<u64> {
            self.pages(key(name))
        }
    }

    proptest::proptest! {
        #[test]
        fn seek_finds_what_bisection_finds(
            mut tags in proptest::collection::vec(proptest::prelude::any::<u32>(), 0..300),
            skew in 0u32..4,
            probe in proptest::prelude::any::<u32>(),
        ) {
            // Some buckets crowded at one end, as a sparse or unlucky one may be.
            tags.iter_mut().for_each(|t| *t >>= skew * 8);
            tags.sort_unstable();
            let bucket: Vec<Tomb> = tags.iter().map(|&tag| Tomb { tag, page: 0 }).collect();
            for tag in tags.iter().copied().chain([probe, probe >> (skew * 8), 0, u32::MAX]) {
                proptest::prop_assert_eq!(seek(&bucket, tag), bucket.partition_point(|t| t.tag < tag));
            }
        }
    }

    #[test]
    fn an_evicted_answer_is_found_on_its_page_and_others_are_not_found() {
        let e = Evicted::default();
        assert!(e.pages_of("a").is_empty() && e.buckets.get().is_none(), "nothing allocated before an eviction");
        e.insert([(key("a"), 7), (key("b"), 9)]);
        e.insert([(key("c"), 9)]);
        assert_eq!((e.pages_of("a"), e.pages_of("b"), e.pages_of("c")), (vec![7], vec![9], vec![9]));
        assert!(e.pages_of("never-answered").is_empty());
        assert_eq!(e.len(), 3);
    }

    #[test]
    fn keys_sharing_a_tag_return_every_page_that_may_hold_them() {
        let e = Evicted::default();
        let (bucket, tag) = locate(key("a"));
        e.insert([(key("a"), 3)]);
        // Another key filed under the same bucket and tag (as a hash collision would).
        let buckets = e.buckets.get().unwrap();
        let mut b = buckets[bucket].write().unwrap();
        b.push(Tomb { tag, page: 2 });
        b.sort_unstable();
        drop(b);
        let mut pages = e.pages_of("a");
        pages.sort_unstable();
        assert_eq!(pages, [2, 3]);
    }

    #[test]
    fn page_numbers_past_32_bits_come_back_whole() {
        let e = Evicted::default();
        let base = (1u64 << 32) - 2;
        e.insert([(key("old"), base), (key("wrapped"), base + 5)]);
        assert_eq!(e.pages_of("old"), [base]);
        assert_eq!(e.pages_of("wrapped"), [base + 5]);
        assert_eq!(full_page(base + 5, base as u32), base);
    }

    #[test]
    fn pages_the_store_pruned_are_forgotten() {
        let e = Evicted::default();
        let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
        e.insert(keys.iter().zip(0..).map(|(k, i)| (key(k), 1 + i / 100)));
        e.forget_pages_before(6);
        assert_eq!(e.len(), 500);
        assert!(e.pages_of("k499").is_empty());
        assert_eq!(e.pages_of("k500"), [6]);
        assert_eq!(e.pages_of("k999"), [10]);
    }
}
