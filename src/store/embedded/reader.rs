//! Read-only lookups off the writer's connection (WAL lets a second connection read).

use super::rows::{read_journal, unpack_decode};
use crate::store::{IdemRow, JournalChunk, RequestLookup, StoreError};
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;

/// Read-only lookups for the request path (answers evicted from memory).
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
    fn find_answer(&self, request_id: &str, page: u64) -> Result<Option<IdemRow>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let stored: Option<(Vec<u8>, i64)> = conn
            .query_row("SELECT rows, packed FROM answers WHERE seq = ?1", [page as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((blob, packed)) = stored else { return Ok(None) };
        let rows: Vec<IdemRow> = unpack_decode(&blob, packed, "answers")?;
        Ok(rows.into_iter().find(|r| r.request_id == request_id))
    }
}
