//! The embedded default store: one data directory, SQLite in WAL mode.
//!
//! Survives: a creditd crash (`kill -9`) loses nothing acknowledged in `sync` durability.
//! With `synchronous = full` (default) a power loss loses nothing acknowledged either, at
//! one fsync per group commit; `normal` may lose the last commits on power loss.
//! One process owns a data directory: an exclusive lock on `LOCK` is taken at open and a
//! second process gets a clear error instead of a corrupted store.
//! Commits only append to the write-ahead log; a thread of its own copies it into the
//! database file (`checkpoint`).

mod checkpoint;
mod reader;
mod rows;
#[cfg(test)]
mod tests;

pub use reader::EmbeddedReader;

use super::account_log::AccountLog;
use super::{decode_account, Batch, IdemRow, JournalChunk, Pruned, Recovered, Store, StoreError, Written};
use crate::domain::account::Account;
use checkpoint::Checkpoints;
use fs4::fs_std::FileExt;
use rows::{read_account_log, read_journal, unpack_decode, LogRow, Packer, LZ4};
use rusqlite::{params, Connection, OptionalExtension};
use std::fs::File;
use std::path::{Path, PathBuf};

const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/embedded/0001_init.sql"),
    include_str!("../../../migrations/embedded/0002_account_log.sql"),
    include_str!("../../../migrations/embedded/0003_answers_by_page.sql"),
    include_str!("../../../migrations/embedded/0004_packed_blobs.sql"),
];
const DB_FILE: &str = "creditd.db";
const PAGE_SIZE: i64 = 2048;
/// Bytes of account states the log may hold before the oldest move into `accounts`. The
/// larger, the more often an account is touched again before it moves (written once
/// instead of at every commit); it bounds the memory beside the store and what start-up
/// reads back from the log. Against 32 MiB, 64 MiB served 19% more sync calls spread over
/// 100k accounts (p99 10.7 → 4.9 ms) for 46 more bytes per account after a 1M-account
/// start-up (952 → 998); 128 MiB gained little more and passed 1 KiB per account.
const LOG_BUDGET: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// fsync at every commit: survives power loss.
    Full,
    /// fsync at checkpoints: survives a process crash, may lose the last commits on power loss.
    Normal,
}

pub struct EmbeddedStore {
    conn: Connection,
    /// Encodes the rows of each commit.
    packer: Packer,
    /// The highest ledger entry id written, carried into every journal row.
    high_id: u64,
    /// The account states that are only in `account_log` so far.
    log: AccountLog,
    checkpoints: Checkpoints,
    /// Let go of last: the checkpoint thread has stopped by then.
    _lock: File,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Failed(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, locking it for this process.
    pub fn open(dir: &Path, synchronous: Synchronous) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Failed(format!("cannot create data directory {}: {e}", dir.display())))?;
        let lock = File::create(dir.join("LOCK"))
            .map_err(|e| StoreError::Failed(format!("cannot create {}/LOCK: {e}", dir.display())))?;
        if !lock.try_lock_exclusive().unwrap_or(false) {
            return Err(StoreError::Locked(format!(
                "data directory {} is in use by another creditd process; stop it or pass a different --data-dir",
                dir.display()
            )));
        }
        let conn = connect(&dir.join(DB_FILE), synchronous)?;
        migrate(&conn)?;
        let high_id: Option<i64> =
            conn.query_row("SELECT high_id FROM journal ORDER BY seq DESC LIMIT 1", [], |r| r.get(0)).optional()?;
        let log = read_account_log(&conn, LOG_BUDGET)?;
        let checkpoints = Checkpoints::start(&conn, &dir.join(DB_FILE), synchronous, checkpoint::PASS_INTERVAL)?;
        Ok(EmbeddedStore {
            conn,
            packer: Packer::default(),
            high_id: high_id.unwrap_or(0) as u64,
            log,
            checkpoints,
            _lock: lock,
        })
    }

    /// A second, read-only connection for lookups off the writer thread (WAL allows it).
    pub fn reader(dir: &Path) -> Result<EmbeddedReader, StoreError> {
        EmbeddedReader::open(&dir.join(DB_FILE))
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join(DB_FILE)
    }
}

fn connect(path: &Path, synchronous: Synchronous) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // A state moving from the log into `accounts` rewrites its page, and a typical state is
    // under 1 KB: 2 KiB pages halve the bytes copied, checksummed and written per account
    // moved against the default 4 KiB. Takes effect when the database is created; an
    // existing one keeps its own.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // 8 MiB of page cache (the default is 2 MiB), so the account upserts of a checkpoint find
    // most of their pages in memory. Not more: a commit that split a B-tree page scans the
    // whole cache's hash table at its end (SQLite's pcache1 truncate), and with 64 MiB that
    // scan was 6% of the server's time under spread sync load.
    conn.pragma_update(None, "cache_size", -8_192)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let applied: usize = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "the data directory was written by a newer creditd (schema {applied}, this build knows {})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

impl Store for EmbeddedStore {
    fn write(&mut self, batch: &mut Batch) -> Result<Written, StoreError> {
        let high_id_before = self.high_id;
        let log_seq = self.log.next_seq();
        let tx = self.conn.transaction()?;
        let checkpoint = {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let mut logged = 0;
            if !batch.accounts.is_empty() {
                // The log's budget counts plain bytes: they are what its memory holds.
                let (row, plain_len) = self.packer.pack(&LogRow(&batch.accounts));
                logged = plain_len;
                tx.prepare_cached("INSERT INTO account_log (seq, states, packed) VALUES (?1, ?2, ?3)")?
                    .execute(params![log_seq as i64, row, LZ4])?;
            }
            let checkpoint = self.log.plan(logged);
            let mut moving = self.log.moving(&checkpoint).peekable();
            if moving.peek().is_some() {
                let mut put_account = tx.prepare_cached(
                    "INSERT INTO accounts (id, state, updated_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
                )?;
                for (id, state) in moving {
                    put_account.execute(params![id, state, now_ms])?;
                }
            }
            if checkpoint.drops_rows {
                tx.prepare_cached("DELETE FROM account_log WHERE seq < ?1")?.execute([checkpoint.keep_from as i64])?;
            }
            let mut high_id = self.high_id;
            if !batch.entries.is_empty() {
                high_id = high_id.max(batch.entries.high_id());
                let (row, _) = self.packer.pack_with(|plain| batch.entries.write_stored(plain));
                tx.prepare_cached(
                    "INSERT INTO journal (written_ms, high_id, entries, packed) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![now_ms, high_id as i64, row, LZ4])?;
            }
            let mut written = Written::default();
            if let Some(newest_ms) = batch.idempotency.iter().map(|r| r.created_ms).max() {
                let (row, _) = self.packer.pack(&batch.idempotency);
                tx.prepare_cached("INSERT INTO answers (newest_ms, rows, packed) VALUES (?1, ?2, ?3)")?
                    .execute(params![newest_ms as i64, row, LZ4])?;
                written.answers_page = tx.last_insert_rowid() as u64;
            }
            self.high_id = high_id;
            let mut put_audit = tx.prepare_cached(
                "INSERT OR IGNORE INTO audit_log (id, occurred_ms, account_id, actor, operation, request_id, before_json, after_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for a in &batch.audit {
                put_audit.execute(params![
                    a.id,
                    a.occurred_at.timestamp_millis(),
                    a.account_id,
                    a.actor,
                    a.operation,
                    a.request_id,
                    a.before_json,
                    a.after_json
                ])?;
            }
            if let Some(book) = &batch.price_book {
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES ('price_book', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![serde_json::to_string(book.as_ref())?],
                )?;
            }
            (checkpoint, logged, written)
        };
        tx.commit().inspect_err(|_| self.high_id = high_id_before)?;
        let (checkpoint, logged, written) = checkpoint;
        self.log.checkpointed(checkpoint);
        if logged > 0 {
            self.log.append(log_seq, logged, batch.accounts.drain(..));
        }
        Ok(written)
    }

    fn tidy(&mut self) {
        if !self.checkpoints.rewind_due() {
            return;
        }
        if let Err(e) = checkpoint::checkpoint(&self.conn) {
            tracing::warn!(error = %e, "could not copy the write-ahead log into the database; will retry later");
        }
        // Counted from here either way: a failing checkpoint is not retried at every commit.
        self.checkpoints.rewound();
    }

    fn load_account(&mut self, account_id: &str) -> Result<Option<Account>, StoreError> {
        if let Some(state) = self.log.state(account_id) {
            return decode_account(state).map(Some);
        }
        let state: Option<Vec<u8>> =
            self.conn.query_row("SELECT state FROM accounts WHERE id = ?1", [account_id], |r| r.get(0)).optional()?;
        state.map(|s| decode_account(&s)).transpose()
    }

    fn account_count(&mut self) -> Result<usize, StoreError> {
        let in_table = self.conn.query_row("SELECT count(*) FROM accounts", [], |r| r.get::<_, i64>(0))? as usize;
        Ok(in_table + self.log.len())
    }

    /// The log's states first, then the table's rows the log has not replaced.
    fn each_account(&mut self, each: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>) -> Result<(), StoreError> {
        for (_, state) in self.log.states() {
            each(state)?;
        }
        let mut stmt = self.conn.prepare("SELECT id, state FROM accounts")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let corrupt = |e: rusqlite::types::FromSqlError| StoreError::Corrupt(format!("account row: {e}"));
            if self.log.state(row.get_ref(0)?.as_str().map_err(corrupt)?).is_none() {
                // Borrowed straight from SQLite's page buffer: no copy of the state is made.
                each(row.get_ref(1)?.as_blob().map_err(corrupt)?)?;
            }
        }
        Ok(())
    }

    fn each_answer_page(
        &mut self,
        since_ms: u64,
        each: &mut dyn FnMut(u64, Vec<IdemRow>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT seq, rows, packed FROM answers WHERE newest_ms >= ?1 ORDER BY seq DESC")?;
        let mut pages = stmt.query([since_ms as i64])?;
        while let Some(page) = pages.next()? {
            let corrupt = |e: rusqlite::types::FromSqlError| StoreError::Corrupt(format!("answers row: {e}"));
            let blob = page.get_ref(1)?.as_blob().map_err(corrupt)?;
            let mut rows: Vec<IdemRow> = unpack_decode(blob, page.get(2)?, "answers")?;
            rows.retain(|r| r.created_ms >= since_ms);
            each(page.get::<_, i64>(0)? as u64, rows)?;
        }
        Ok(())
    }

    fn recover(&mut self) -> Result<Recovered, StoreError> {
        let mut out = Recovered::default();
        let book: Option<String> =
            self.conn.query_row("SELECT value FROM settings WHERE key = 'price_book'", [], |r| r.get(0)).optional()?;
        if let Some(book) = book {
            out.price_book = serde_json::from_str(&book)?;
        }
        out.id_floor = self.high_id;
        Ok(out)
    }

    /// Deletes pages from the oldest on, a chunk at a time, so the writer is never held long
    /// and a prune with nothing to do costs one row read.
    fn prune_requests(&mut self, before_ms: u64) -> Result<Pruned, StoreError> {
        const CHUNK: i64 = 10_000;
        let mut pages = 0;
        loop {
            let oldest: Option<i64> = self
                .conn
                .query_row("SELECT newest_ms FROM answers ORDER BY seq LIMIT 1", [], |r| r.get(0))
                .optional()?;
            if oldest.is_none_or(|ms| ms >= before_ms as i64) {
                break;
            }
            let n = self.conn.execute(
                "DELETE FROM answers WHERE seq IN (SELECT seq FROM answers ORDER BY seq LIMIT ?1)
                   AND newest_ms < ?2 AND seq < (SELECT max(seq) FROM answers)",
                params![CHUNK, before_ms as i64],
            )?;
            pages += n;
            if n == 0 {
                break;
            }
        }
        let first_kept_page =
            self.conn.query_row("SELECT coalesce(min(seq), 0) FROM answers", [], |r| r.get::<_, i64>(0))? as u64;
        Ok(Pruned { pages, first_kept_page })
    }

    fn read_journal(&mut self, after_seq: u64, limit: usize) -> Result<Vec<JournalChunk>, StoreError> {
        read_journal(&self.conn, after_seq, limit)
    }
}
