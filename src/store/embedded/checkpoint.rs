//! Copying the write-ahead log into the database file, off the commit path.
//!
//! Left to itself, SQLite checkpoints inside the commit that takes the log past 1,000
//! pages: that commit copies 2 MB into the database file and fsyncs it. In `sync`
//! durability every answer of that round waited for it, and so did every request queued
//! behind it (at 30k calls/s on one core, about 70 commits in 10 s took 2-6 ms, against
//! under 1 ms for the rest).
//!
//! Here a thread of its own copies the pages as a passive checkpoint, which never blocks
//! the writer. One step it cannot take: SQLite writes the log from its start again only
//! when a commit begins with all of it copied, and a busy writer commits again before a
//! checkpoint beside it ends. A log never rewound grows, and the fsync of a growing file
//! writes its metadata too (3-4 ms a commit, measured). So once the log is long, the
//! writer copies what is left between two commits, after answering the first
//! (`Checkpoints::rewind_due`). The log is rewound at 4,000 pages rather than SQLite's
//! 1,000: with requests spread over 100k accounts (sync, closed loop, median of 3 runs) the
//! p99 was 6.1 ms before, 6.4 ms rewinding at 1,000 pages and 3.6 ms at 4,000; the log
//! stays under 10 MB.

use super::{connect, Synchronous};
use crate::store::StoreError;
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the thread copies what the log holds. A pass that copies anything fsyncs the
/// database file once.
pub(super) const PASS_INTERVAL: Duration = Duration::from_millis(50);

/// Log length (pages) past which the writer rewinds it: 8 MiB at the store's page size.
pub(super) const REWIND_PAGES: u64 = 4_000;

/// Commits after which the writer rewinds the log whatever the thread last saw: the thread
/// yields to requests, and on a busy core may not have run at all.
pub(super) const REWIND_COMMITS: u32 = 2_000;

/// The checkpoint thread, and what it last saw of the log.
pub(super) struct Checkpoints {
    /// Pages in the log at the end of the thread's last pass.
    pub(super) log_pages: Arc<AtomicU64>,
    commits_since_rewind: u32,
    /// Dropped to stop the thread.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpoints {
    /// Takes automatic checkpoints off `writer` and starts the thread, on a connection of
    /// its own to the database at `db`, passing every `interval`.
    pub(super) fn start(
        writer: &Connection,
        db: &Path,
        synchronous: Synchronous,
        interval: Duration,
    ) -> Result<Self, StoreError> {
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let conn = connect(db, synchronous)?;
        let log_pages = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = mpsc::channel();
        let seen = log_pages.clone();
        let thread = std::thread::Builder::new()
            .name("creditd-checkpoint".into())
            .spawn(move || run(conn, interval, stopped, seen))
            .map_err(|e| StoreError::Failed(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpoints { log_pages, commits_since_rewind: 0, stop: Some(stop), thread: Some(thread) })
    }

    /// Counts a commit; says whether the writer should rewind the log now.
    pub(super) fn rewind_due(&mut self) -> bool {
        self.commits_since_rewind += 1;
        self.commits_since_rewind >= REWIND_COMMITS || self.log_pages.load(Ordering::Relaxed) >= REWIND_PAGES
    }

    /// The writer copied the log: its next commit starts it over (unless a reader still
    /// needed some of it; the thread then sees the log long again).
    pub(super) fn rewound(&mut self) {
        self.commits_since_rewind = 0;
        self.log_pages.store(0, Ordering::Relaxed);
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A passive checkpoint on `conn`: copies what no reader still needs, waits for nobody.
/// Returns the pages in the log.
pub(super) fn checkpoint(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(1)).map(|pages| pages.max(0) as u64)
}

fn run(conn: Connection, interval: Duration, stopped: mpsc::Receiver<()>, log_pages: Arc<AtomicU64>) {
    // Behind requests and the journal writer alike; the writer rewinds the log itself when
    // this thread falls behind.
    crate::background::yield_as_housekeeping();
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
        match checkpoint(&conn) {
            Ok(pages) => log_pages.store(pages, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "checkpoint of the write-ahead log failed; will retry"),
        }
    }
}
