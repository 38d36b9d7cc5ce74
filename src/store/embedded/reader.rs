//! Read-only lookups off the writer's connection (WAL lets a second connection read).

use super::rows::read_journal;
use crate::store::{IdemRow, JournalChunk, RequestLookup, StoreError};
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;

/// Read-only lookups for the request path (answered request ids evicted from memory).
pub struct EmbeddedReader {
    conn: std::sync::Mutex<Connection>,
}

impl EmbeddedReader {
    pub(super) fn open(db: &Path) -> Result<EmbeddedReader, StoreError> {
        let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(EmbeddedReader { conn: std::sync::Mutex::new(conn) })
    }

    /// The ledger as written so far (for tests and tools; the server reads through `Store`).
    pub fn read_journal(&self, after_seq: u64, limit: usize) -> Result<Vec<JournalChunk>, StoreError> {
        read_journal(&self.conn.lock().unwrap_or_else(|p| p.into_inner()), after_seq, limit)
    }
}

impl RequestLookup for EmbeddedReader {
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
