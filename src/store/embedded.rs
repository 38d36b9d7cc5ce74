//! The embedded default store: one data directory, SQLite in WAL mode.
//!
//! Survives: a creditd crash (`kill -9`) loses nothing acknowledged in `sync` durability.
//! With `synchronous = full` (default) a power loss loses nothing acknowledged either, at
//! one fsync per group commit; `normal` may lose the last commits on power loss.
//! One process owns a data directory: an exclusive lock on `LOCK` is taken at open and a
//! second process gets a clear error instead of a corrupted store.

use super::account_log::AccountLog;
use super::{decode_account, Batch, IdemRow, JournalChunk, Recovered, Store, StoreError};
use crate::domain::account::Account;
use crate::domain::ids::id_number;
use fs4::fs_std::FileExt;
use rusqlite::{params, Connection, OptionalExtension};
use std::fs::File;
use std::path::{Path, PathBuf};

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/embedded/0001_init.sql"),
    include_str!("../../migrations/embedded/0002_account_log.sql"),
];
const DB_FILE: &str = "creditd.db";
const PAGE_SIZE: i64 = 2048;
/// Bytes of account states the log may hold before the oldest move into `accounts`. The
/// larger, the more often an account is touched again before it moves (written once
/// instead of at every commit); it bounds the memory beside the store and what start-up
/// reads back from the log.
const LOG_BUDGET: usize = 32 << 20;

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
    /// Encoding buffer for journal and answer rows, reused across commits.
    buf: Vec<u8>,
    /// The highest ledger entry id written, carried into every journal row.
    high_id: u64,
    /// The account states that are only in `account_log` so far.
    log: AccountLog,
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
        let log = read_account_log(&conn)?;
        Ok(EmbeddedStore { conn, buf: Vec::new(), high_id: high_id.unwrap_or(0) as u64, log, _lock: lock })
    }

    /// A second, read-only connection for lookups off the writer thread (WAL allows it).
    pub fn reader(dir: &Path) -> Result<EmbeddedReader, StoreError> {
        let conn = Connection::open_with_flags(dir.join(DB_FILE), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(EmbeddedReader { conn: std::sync::Mutex::new(conn) })
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
    // 64 MiB of page cache (the default is 2 MiB), so account upserts and the archive's
    // random keys find their pages in memory.
    conn.pragma_update(None, "cache_size", -65_536)?;
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
    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let high_id_before = self.high_id;
        let log_seq = self.log.next_seq();
        let tx = self.conn.transaction()?;
        let checkpoint = {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let mut logged = 0;
            if !batch.accounts.is_empty() {
                encode_into(&mut self.buf, &LogRow(&batch.accounts));
                logged = self.buf.len();
                tx.prepare_cached("INSERT INTO account_log (seq, states) VALUES (?1, ?2)")?
                    .execute(params![log_seq as i64, self.buf])?;
            }
            let checkpoint = self.log.plan(logged);
            if !checkpoint.states.is_empty() {
                let mut put_account = tx.prepare_cached(
                    "INSERT INTO accounts (id, state, updated_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
                )?;
                for (id, state) in &checkpoint.states {
                    put_account.execute(params![id, state, now_ms])?;
                }
            }
            if checkpoint.drops_rows {
                tx.prepare_cached("DELETE FROM account_log WHERE seq < ?1")?.execute([checkpoint.keep_from as i64])?;
            }
            let mut high_id = self.high_id;
            if !batch.entries.is_empty() {
                for e in &batch.entries {
                    let id =
                        id_number(&e.id).ok_or_else(|| StoreError::Corrupt(format!("ledger entry id {:?}", e.id)))?;
                    high_id = high_id.max(id);
                }
                encode_into(&mut self.buf, &batch.entries);
                tx.prepare_cached("INSERT INTO journal (written_ms, high_id, entries) VALUES (?1, ?2, ?3)")?
                    .execute(params![now_ms, high_id as i64, self.buf])?;
            }
            if let Some(newest_ms) = batch.idempotency.iter().map(|r| r.created_ms).max() {
                encode_into(&mut self.buf, &batch.idempotency);
                tx.prepare_cached("INSERT INTO answers (newest_ms, rows) VALUES (?1, ?2)")?
                    .execute(params![newest_ms as i64, self.buf])?;
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
            (checkpoint, logged)
        };
        tx.commit().inspect_err(|_| self.high_id = high_id_before)?;
        let (checkpoint, logged) = checkpoint;
        self.log.checkpointed(checkpoint);
        if logged > 0 {
            self.log.append(log_seq, logged, batch.accounts.iter().cloned());
        }
        Ok(())
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

    fn recover(&mut self, idem_since_ms: u64) -> Result<Recovered, StoreError> {
        let mut out = Recovered::default();
        let mut stmt = self.conn.prepare("SELECT rows FROM answers WHERE newest_ms >= ?1 ORDER BY seq")?;
        let blobs = stmt.query_map([idem_since_ms as i64], |r| r.get::<_, Vec<u8>>(0))?;
        for blob in blobs {
            let rows: Vec<IdemRow> = decode(&blob?, "answers")?;
            out.idempotency.extend(rows.into_iter().filter(|r| r.created_ms >= idem_since_ms));
        }
        let book: Option<String> =
            self.conn.query_row("SELECT value FROM settings WHERE key = 'price_book'", [], |r| r.get(0)).optional()?;
        if let Some(book) = book {
            out.price_book = serde_json::from_str(&book)?;
        }
        out.answers_archived = self.conn.query_row("SELECT EXISTS (SELECT 1 FROM requests)", [], |r| r.get(0))?;
        out.id_floor = self.high_id;
        Ok(out)
    }

    /// Deletes answer rows from the oldest on, a chunk at a time, so the writer is never held
    /// long and a prune with nothing to do costs one row read. Returns the number of rows
    /// deleted. The archive is small (only what memory evicted) and is pruned in one statement.
    fn prune_requests(&mut self, before_ms: u64) -> Result<usize, StoreError> {
        const CHUNK: i64 = 10_000;
        let before = before_ms as i64;
        let mut pruned = self.conn.execute("DELETE FROM requests WHERE created_ms < ?1", [before])?;
        loop {
            let oldest: Option<i64> = self
                .conn
                .query_row("SELECT newest_ms FROM answers ORDER BY seq LIMIT 1", [], |r| r.get(0))
                .optional()?;
            if oldest.is_none_or(|ms| ms >= before) {
                return Ok(pruned);
            }
            let n = self.conn.execute(
                "DELETE FROM answers WHERE seq IN (SELECT seq FROM answers ORDER BY seq LIMIT ?1) AND newest_ms < ?2",
                params![CHUNK, before],
            )?;
            pruned += n;
            if n == 0 {
                return Ok(pruned);
            }
        }
    }

    fn archive_answers(&mut self, rows: &[IdemRow]) -> Result<(), StoreError> {
        let mut sorted: Vec<&IdemRow> = rows.iter().collect();
        sorted.sort_unstable_by(|a, b| a.request_id.cmp(&b.request_id)); // neighbouring pages
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO requests (key, account_id, fingerprint, outcome, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in sorted {
                put.execute(params![r.request_id, r.account_id, r.fingerprint as i64, r.outcome, r.created_ms as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn read_journal(&mut self, after_seq: u64, limit: usize) -> Result<Vec<JournalChunk>, StoreError> {
        read_journal(&self.conn, after_seq, limit)
    }
}

/// The stored form of journal and answer rows: compact and quick to write, since every
/// commit writes them. Encodes into `buf`, replacing what it held.
fn encode_into<T: serde::Serialize>(buf: &mut Vec<u8>, value: &T) {
    buf.clear();
    *buf = postcard::to_extend(value, std::mem::take(buf)).expect("journal records encode");
}

fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// One `account_log` row: the (account id, state) pairs of a commit.
struct LogRow<'a>(&'a [(String, Vec<u8>)]);

#[derive(serde::Serialize, serde::Deserialize)]
struct LoggedState<'a> {
    id: &'a str,
    /// As a byte string: serde would otherwise write a list of numbers, one call per byte.
    #[serde(with = "byte_string", borrow)]
    state: &'a [u8],
}

impl serde::Serialize for LogRow<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(id, state)| LoggedState { id, state }))
    }
}

mod byte_string {
    pub fn serialize<S: serde::Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'de [u8], D::Error> {
        serde::Deserialize::deserialize(d)
    }
}

/// What the account log holds, read back at open.
fn read_account_log(conn: &Connection) -> Result<AccountLog, StoreError> {
    let mut log = AccountLog::new(LOG_BUDGET);
    let mut stmt = conn.prepare("SELECT seq, states FROM account_log ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let blob = row.get_ref(1)?.as_blob().map_err(|e| StoreError::Corrupt(format!("account log: {e}")))?;
        let states: Vec<LoggedState> = decode(blob, "account log")?;
        let states = states.into_iter().map(|s| (s.id.to_string(), s.state.to_vec()));
        log.append(row.get::<_, i64>(0)? as u64, blob.len(), states);
    }
    Ok(log)
}

fn read_journal(conn: &Connection, after_seq: u64, limit: usize) -> Result<Vec<JournalChunk>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT seq, entries FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = stmt.query_map(params![after_seq as i64, limit as i64], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut chunks = Vec::new();
    for row in rows {
        let (seq, blob) = row?;
        chunks.push(JournalChunk { seq, entries: decode(&blob, "journal entries")? });
    }
    Ok(chunks)
}

/// Read-only lookups for the request path (answered request ids evicted from memory).
pub struct EmbeddedReader {
    conn: std::sync::Mutex<Connection>,
}

impl EmbeddedReader {
    /// The ledger as written so far (for tests and tools; the server reads through `Store`).
    pub fn read_journal(&self, after_seq: u64, limit: usize) -> Result<Vec<JournalChunk>, StoreError> {
        read_journal(&self.conn.lock().unwrap_or_else(|p| p.into_inner()), after_seq, limit)
    }
}

impl super::RequestLookup for EmbeddedReader {
    fn find_request(&self, request_id: &str) -> Result<Option<IdemRow>, StoreError> {
        find_request(&self.conn.lock().unwrap_or_else(|p| p.into_inner()), request_id)
    }
}

fn find_request(conn: &Connection, request_id: &str) -> Result<Option<IdemRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT key, account_id, fingerprint, outcome, created_ms FROM requests WHERE key = ?1",
            [request_id],
            row_to_idem,
        )
        .optional()?)
}

fn row_to_idem(r: &rusqlite::Row<'_>) -> rusqlite::Result<IdemRow> {
    Ok(IdemRow {
        request_id: r.get(0)?,
        account_id: r.get(1)?,
        fingerprint: r.get::<_, i64>(2)? as u64,
        outcome: r.get(3)?,
        created_ms: r.get::<_, i64>(4)? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(id: &str, created_ms: u64) -> IdemRow {
        IdemRow { request_id: id.into(), account_id: "a".into(), fingerprint: 7, outcome: vec![1, 2], created_ms }
    }

    #[test]
    fn every_stored_account_state_is_handed_over_once() {
        use crate::store::encode_account;
        let dir = tempfile::tempdir().unwrap();
        let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
        let account = |id: &str, name: &str| {
            let mut a = Account::blank(id, chrono::Utc::now());
            a.display_name = name.into();
            (id.to_string(), encode_account(&a))
        };
        store.write(&Batch { accounts: vec![account("a", "first"), account("b", "b")], ..Batch::default() }).unwrap();
        store.write(&Batch { accounts: vec![account("a", "second")], ..Batch::default() }).unwrap();

        assert_eq!(store.account_count().unwrap(), 2);
        let mut seen = Vec::new();
        store
            .each_account(&mut |state| {
                seen.push(decode_account(state)?);
                Ok(())
            })
            .unwrap();
        seen.sort_by(|x, y| x.id.cmp(&y.id));
        let names: Vec<(&str, &str)> = seen.iter().map(|a| (a.id.as_str(), a.display_name.as_str())).collect();
        assert_eq!(names, [("a", "second"), ("b", "b")], "the latest state of each account");

        let failed = store.each_account(&mut |_| Err(StoreError::Failed("stop".into())));
        assert!(matches!(failed, Err(StoreError::Failed(m)) if m == "stop"), "the callback's error ends the scan");
    }

    #[test]
    fn states_move_from_the_log_to_the_table_and_read_back_the_same() {
        use crate::store::encode_account;
        let dir = tempfile::tempdir().unwrap();
        let state = |id: &str, version: u32| {
            let mut a = Account::blank(id, chrono::Utc::now());
            a.display_name = format!("v{version}");
            (id.to_string(), encode_account(&a))
        };
        let names = |store: &mut EmbeddedStore| {
            let mut seen = Vec::new();
            store
                .each_account(&mut |s| {
                    let a = decode_account(s)?;
                    seen.push((a.id, a.display_name));
                    Ok(())
                })
                .unwrap();
            seen.sort();
            seen
        };
        let count = |store: &EmbeddedStore, table: &str| {
            store.conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get::<_, i64>(0)).unwrap()
        };
        let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
        store.log.budget = 2 * state("a", 0).1.len(); // about two states
        for version in 1..=3 {
            store
                .write(&Batch { accounts: vec![state("a", version), state("b", version)], ..Batch::default() })
                .unwrap();
        }
        store.write(&Batch { accounts: vec![state("a", 4)], ..Batch::default() }).unwrap();
        let want = [("a".to_string(), "v4".to_string()), ("b".to_string(), "v3".to_string())];
        assert_eq!(names(&mut store), want);
        assert_eq!(store.load_account("a").unwrap().unwrap().display_name, "v4", "the log's newest");
        assert_eq!(store.load_account("b").unwrap().unwrap().display_name, "v3");
        assert!(count(&store, "accounts") == 2, "older states moved to the table");
        assert!(count(&store, "account_log") < 4, "and their log rows went");

        drop(store);
        let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
        assert_eq!(names(&mut store), want, "read back after a reopen: the log over the table");
        assert_eq!(store.account_count().unwrap(), 2 + store.log.len());

        // One account alone: its states replace each other and never move, yet the log stays short.
        store.log.budget = 3 * state("a", 0).1.len();
        for version in 5..=50 {
            store.write(&Batch { accounts: vec![state("a", version)], ..Batch::default() }).unwrap();
        }
        assert!(count(&store, "account_log") <= 4, "{} log rows", count(&store, "account_log"));
        assert_eq!(store.load_account("a").unwrap().unwrap().display_name, "v50");
    }

    #[test]
    fn prune_forgets_only_answers_past_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
        for i in 1..=5 {
            store.write(&Batch { idempotency: vec![answered(&format!("r{i}"), i * 100)], ..Batch::default() }).unwrap();
        }
        assert_eq!(store.prune_requests(50).unwrap(), 0);
        assert_eq!(store.prune_requests(350).unwrap(), 3, "one commit's row each");
        let recovered = store.recover(0).unwrap();
        assert_eq!(recovered.idempotency.iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>(), ["r4", "r5"]);
        assert!(!recovered.answers_archived);
    }

    #[test]
    fn archived_answers_are_found_by_key_until_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
        store.archive_answers(&[answered("b", 100), answered("a", 200)]).unwrap();
        let reader = EmbeddedStore::reader(dir.path()).unwrap();
        use crate::store::RequestLookup;
        assert_eq!(reader.find_request("a").unwrap().unwrap().created_ms, 200);
        assert!(store.recover(0).unwrap().answers_archived);
        store.prune_requests(150).unwrap();
        assert!(reader.find_request("b").unwrap().is_none());
        assert!(reader.find_request("a").unwrap().is_some());
    }

    #[test]
    fn the_journal_reads_back_in_commit_order_and_new_ids_start_above_it() {
        use crate::domain::ids::IdGenerator;
        use crate::domain::ledger::{EntryKind, LedgerEntry};
        let dir = tempfile::tempdir().unwrap();
        let ids = IdGenerator::default();
        let entry = |ms| LedgerEntry::new(ids.next_string("le_", ms), "a", EntryKind::Deduct, chrono::Utc::now());
        let early = entry(1_000);
        let late = entry(2_000);
        let high = id_number(&late.id).unwrap();
        {
            let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
            // A later id can be written in an earlier commit (accounts queue independently).
            store.write(&Batch { entries: vec![late.clone()], ..Batch::default() }).unwrap();
            store.write(&Batch { entries: vec![early.clone()], ..Batch::default() }).unwrap();
        }
        let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
        assert_eq!(store.recover(0).unwrap().id_floor, high);
        let chunks = store.read_journal(0, 10).unwrap();
        let read: Vec<&LedgerEntry> = chunks.iter().flat_map(|c| &c.entries).collect();
        assert_eq!(read, [&late, &early]);
        assert_eq!(store.read_journal(chunks[0].seq, 10).unwrap()[0].entries, [early]);
    }

    #[test]
    fn new_stores_use_small_pages_and_older_ones_keep_theirs() {
        let page_size =
            |store: &EmbeddedStore| store.conn.pragma_query_value(None, "page_size", |r| r.get::<_, i64>(0));
        let fresh = tempfile::tempdir().unwrap();
        assert_eq!(page_size(&EmbeddedStore::open(fresh.path(), Synchronous::Normal).unwrap()).unwrap(), PAGE_SIZE);

        let older = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(EmbeddedStore::path(older.path())).unwrap();
            conn.pragma_update(None, "page_size", 4096).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            migrate(&conn).unwrap();
        }
        let mut store = EmbeddedStore::open(older.path(), Synchronous::Normal).unwrap();
        assert_eq!(page_size(&store).unwrap(), 4096);
        store.archive_answers(&[answered("a", 100)]).unwrap();
        assert!(store.recover(0).unwrap().answers_archived);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
        assert!(matches!(EmbeddedStore::open(dir.path(), Synchronous::Normal), Err(StoreError::Locked(_))));
    }
}
