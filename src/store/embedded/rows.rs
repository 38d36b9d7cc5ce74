//! The stored forms of the rows every commit writes (journal, answers, account log):
//! postcard blobs, LZ4-compressed, and reading them back.

use super::super::account_log::AccountLog;
use crate::store::{JournalChunk, StoreError};
use rusqlite::{params, Connection};
use std::borrow::Cow;

/// How a row's blob is stored: its `packed` column (migration 0004).
pub(super) const PLAIN: i64 = 0;
/// The postcard bytes as `store::append_lz4` writes them.
pub(super) const LZ4: i64 = 1;

/// Encodes the rows of a commit. Compressed, they are about a third of their size, and
/// every byte saved is saved four times over: written to the WAL, checksummed, copied into
/// the database at checkpoint, and fsynced. Both buffers are reused across commits.
#[derive(Default)]
pub(super) struct Packer {
    plain: Vec<u8>,
    packed: Vec<u8>,
}

impl Packer {
    /// The stored form of `value` (packed `LZ4`) and the length of its plain encoding.
    pub(super) fn pack<T: serde::Serialize>(&mut self, value: &T) -> (&[u8], usize) {
        self.pack_with(|plain| {
            *plain = postcard::to_extend(value, std::mem::take(plain)).expect("journal records encode")
        })
    }

    /// Like [`Packer::pack`], for rows `encode` writes into the (empty) plain buffer.
    pub(super) fn pack_with(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> (&[u8], usize) {
        self.plain.clear();
        encode(&mut self.plain);
        self.packed.clear();
        crate::store::append_lz4(&mut self.packed, &self.plain);
        (&self.packed, self.plain.len())
    }
}

/// The plain postcard bytes of a stored blob packed as `packed` says.
pub(super) fn unpack<'a>(blob: &'a [u8], packed: i64, what: &str) -> Result<Cow<'a, [u8]>, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt(format!("{what}: {why}"));
    match packed {
        PLAIN => Ok(Cow::Borrowed(blob)),
        LZ4 => {
            // LZ4 expands at most 255-fold: a larger stated size is damage, not a reason
            // to allocate it.
            let stated = blob.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
            if stated.is_none_or(|n| n > blob.len().saturating_mul(255)) {
                return Err(corrupt(format!("LZ4 block of {} bytes with an impossible length", blob.len())));
            }
            lz4_flex::block::decompress_size_prepended(blob).map(Cow::Owned).map_err(|e| corrupt(e.to_string()))
        }
        other => {
            Err(corrupt(format!("packed as {other}, which this build does not know (written by a newer creditd?)")))
        }
    }
}

pub(super) fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Unpacks and decodes a stored blob.
pub(super) fn unpack_decode<T: serde::de::DeserializeOwned>(
    blob: &[u8],
    packed: i64,
    what: &str,
) -> Result<T, StoreError> {
    decode(&unpack(blob, packed, what)?, what)
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
    let mut stmt = conn.prepare("SELECT seq, states, packed FROM account_log ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let blob = row.get_ref(1)?.as_blob().map_err(|e| StoreError::Corrupt(format!("account log: {e}")))?;
        let plain = unpack(blob, row.get(2)?, "account log")?;
        let states: Vec<LoggedState> = decode(&plain, "account log")?;
        let states = states.into_iter().map(|s| (s.id.to_string(), s.state.to_vec()));
        log.append(row.get::<_, i64>(0)? as u64, plain.len(), states);
    }
    Ok(log)
}

pub(super) fn read_journal(conn: &Connection, after_seq: u64, limit: usize) -> Result<Vec<JournalChunk>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, entries, packed FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = stmt.query_map(params![after_seq as i64, limit as i64], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)?))
    })?;
    let mut chunks = Vec::new();
    for row in rows {
        let (seq, blob, packed) = row?;
        chunks.push(JournalChunk { seq, entries: unpack_decode(&blob, packed, "journal entries")? });
    }
    Ok(chunks)
}
