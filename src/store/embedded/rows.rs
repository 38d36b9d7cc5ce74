//! The stored forms of the rows every commit writes (journal, answers, account log):
//! compact postcard blobs, and reading them back.

use super::super::account_log::AccountLog;
use crate::store::{JournalChunk, StoreError};
use rusqlite::{params, Connection};

/// The stored form of journal and answer rows: compact and quick to write, since every
/// commit writes them. Encodes into `buf`, replacing what it held.
pub(super) fn encode_into<T: serde::Serialize>(buf: &mut Vec<u8>, value: &T) {
    buf.clear();
    *buf = postcard::to_extend(value, std::mem::take(buf)).expect("journal records encode");
}

pub(super) fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// One `account_log` row: the (account id, state) pairs of a commit.
pub(super) struct LogRow<'a>(pub(super) &'a [(String, Vec<u8>)]);

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
pub(super) fn read_account_log(conn: &Connection, budget: usize) -> Result<AccountLog, StoreError> {
    let mut log = AccountLog::new(budget);
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

pub(super) fn read_journal(conn: &Connection, after_seq: u64, limit: usize) -> Result<Vec<JournalChunk>, StoreError> {
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
