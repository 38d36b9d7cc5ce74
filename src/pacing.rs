//! Pacing requests to a background thread that shares their core and owes work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Gives a background thread that has fallen behind the core, in short pauses of the
/// requests.
///
/// The journal writer and housekeeping yield to requests (`WriterPriority`, `background`),
/// so a core kept busy by requests starved them outright. An `async` writer wrote nothing
/// until `max_backlog` changes piled up, then every new request waited for one commit of
/// them all (over 100 ms), and a crash meanwhile would have lost them all. The eviction
/// sweep let the answers' table grow past its memory bound, and requests then paid for
/// its growth. So once the thread has owed its work for `behind_after`, the requests give
/// it the core: after each `RUN_US` of theirs, a pause that grows with its lag (a fifth of
/// the core when just behind, four fifths when 150 ms behind). The lag settles where the
/// thread's share matches its work, in pauses too short to be felt rather than one long
/// stall. With a core to itself the thread lags only when its own work is slow (a slow
/// disk, say), and then the pauses pace requests to it.
///
/// The owner says when work is owed (`owed_from_now`) and calls `give_way` only while it is.
pub struct Pacing {
    origin: Instant,
    /// Microseconds since `origin` from which the thread owes work: for the writer, when its
    /// last write ended, or when a change was queued while none was, whichever came later.
    /// (Not the last write alone: after an idle spell the first change would find it long
    /// past.)
    owed_since_us: AtomicU64,
    /// Microseconds since `origin` when the last pause ends.
    paused_until_us: AtomicU64,
    behind_after_us: u64,
    /// Pauses so far, for operators and tests.
    pauses: AtomicU64,
}

impl Pacing {
    const RUN_US: u64 = 1_000;
    const PAUSE_US: u64 = 250;
    const MAX_PAUSE_US: u64 = 4_000;
    /// One more microsecond of pause per this many microseconds of lag past `behind_after_us`.
    const LAG_PER_PAUSE_US: u64 = 40;

    /// Requests give way once work has been owed for `behind_after`.
    pub fn new(behind_after: Duration) -> Self {
        Pacing {
            origin: Instant::now(),
            owed_since_us: AtomicU64::new(0),
            paused_until_us: AtomicU64::new(0),
            behind_after_us: behind_after.as_micros() as u64,
            pauses: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    /// Work is owed from now on: for the writer, a write ended, or a change was queued while
    /// none was.
    pub fn owed_from_now(&self) {
        self.owed_since_us.store(self.now_us(), Ordering::Relaxed);
    }

    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    /// Pauses the calling thread if a pause is due.
    pub fn give_way(&self) {
        let now = self.now_us();
        let paused_until = self.paused_until_us.load(Ordering::Relaxed);
        let Some(pause) = self.due(now, paused_until) else { return };
        // One thread pauses per turn, however many serve requests.
        if self
            .paused_until_us
            .compare_exchange(paused_until, now + pause, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.pauses.fetch_add(1, Ordering::Relaxed);
            // The thread, not just this task: the point is to leave the core to the one behind.
            std::thread::sleep(Duration::from_micros(pause));
        }
    }

    /// The pause due at `now`, in microseconds: none unless the thread is behind and
    /// requests have run for `RUN_US` since the last pause ended.
    fn due(&self, now: u64, paused_until: u64) -> Option<u64> {
        let lag = now.checked_sub(self.owed_since_us.load(Ordering::Relaxed) + self.behind_after_us)?;
        (now >= paused_until + Self::RUN_US)
            .then(|| (Self::PAUSE_US + lag / Self::LAG_PER_PAUSE_US).min(Self::MAX_PAUSE_US))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Pacing` whose thread owes work since 0, is behind after `behind_after_ms`, and
    /// whose last pause ended at `paused_until`.
    fn pacing(behind_after_ms: u64, paused_until: u64) -> Pacing {
        let p = Pacing::new(Duration::from_millis(behind_after_ms));
        p.paused_until_us.store(paused_until, Ordering::Relaxed);
        p
    }

    #[test]
    fn no_pause_while_the_thread_keeps_up() {
        let p = pacing(20, 0);
        assert_eq!(p.due(19_999, 0), None, "owed for less than `behind_after`");
        assert_eq!(p.due(20_000, 0), Some(Pacing::PAUSE_US), "just behind: the shortest pause");
    }

    #[test]
    fn requests_run_between_pauses() {
        let p = pacing(20, 30_000);
        assert_eq!(p.due(30_999, 30_000), None);
        assert!(p.due(31_000, 30_000).is_some());
    }

    #[test]
    fn pauses_grow_with_the_lag_up_to_a_bound() {
        let p = pacing(20, 0);
        let at = |lag_ms: u64| p.due(20_000 + lag_ms * 1_000, 0).unwrap();
        assert_eq!(at(40), Pacing::PAUSE_US + 1_000);
        assert!(at(10) < at(40) && at(40) < at(100));
        assert_eq!(at(150), Pacing::MAX_PAUSE_US);
        assert_eq!(at(10_000), Pacing::MAX_PAUSE_US);
    }

    #[test]
    fn the_lag_counts_from_the_later_of_the_last_write_and_the_first_change_since() {
        let p = pacing(20, 0);
        std::thread::sleep(Duration::from_millis(30));
        assert!(p.due(p.now_us(), 0).is_some(), "owed since 0, 30 ms ago");
        p.owed_from_now();
        let since = p.owed_since_us.load(Ordering::Relaxed);
        assert!(since >= 30_000);
        assert_eq!(p.due(since + 19_999, 0), None, "owed from then on");
    }
}
