//! Durable state: the seam between the journal and a concrete store. The embedded SQLite
//! store is the default; every store passes the same behavioural tests.

mod account_log;
pub mod embedded;

use crate::domain::account::Account;
use crate::domain::audit::AuditRecord;
use crate::domain::ledger::LedgerEntry;
use crate::domain::price::PriceBook;
use chrono::{DateTime, Utc};
use std::sync::Arc;

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the durable store failed: {0}")]
    Failed(String),
    #[error("the durable store holds data this version cannot read: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Locked(String),
}

/// An answered request id as stored, with its answer encoded (`engine::idempotency`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct IdemRow {
    /// The idempotency key (`engine::idem_key`), not the client's bare request id.
    pub request_id: String,
    pub account_id: String,
    pub fingerprint: u64,
    pub outcome: Vec<u8>,
    pub created_ms: u64,
}

/// An answer on its way to the store, stored as an [`IdemRow`]. It shares the key, the
/// account id and the encoded answer the engine already holds: a group commit of a
/// thousand answers copied each of them three times, on the writer, only to free the
/// copies after the write.
#[derive(Clone)]
pub struct AnswerRow {
    pub key: Arc<str>,
    pub account_id: Arc<str>,
    pub fingerprint: u64,
    pub outcome: Arc<dyn AsRef<[u8]> + Send + Sync>,
    pub created_ms: u64,
}

impl serde::Serialize for AnswerRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// [`IdemRow`] borrowed: the same fields in the same order, so the same bytes
        /// (serde writes a `&[u8]` as a sequence, as it writes a `Vec<u8>`).
        #[derive(serde::Serialize)]
        struct Stored<'a> {
            request_id: &'a str,
            account_id: &'a str,
            fingerprint: u64,
            outcome: &'a [u8],
            created_ms: u64,
        }
        Stored {
            request_id: &self.key,
            account_id: &self.account_id,
            fingerprint: self.fingerprint,
            outcome: (*self.outcome).as_ref(),
            created_ms: self.created_ms,
        }
        .serialize(serializer)
    }
}

impl std::fmt::Debug for AnswerRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerRow")
            .field("key", &self.key)
            .field("account_id", &self.account_id)
            .field("fingerprint", &self.fingerprint)
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

/// For rows made whole, as tests and tools make them.
impl From<IdemRow> for AnswerRow {
    fn from(row: IdemRow) -> Self {
        AnswerRow {
            key: row.request_id.into(),
            account_id: row.account_id.into(),
            fingerprint: row.fingerprint,
            outcome: Arc::new(row.outcome),
            created_ms: row.created_ms,
        }
    }
}

/// The ledger entries of one group commit, in the order they were made.
#[derive(Debug)]
pub struct JournalChunk {
    /// Increases with every commit: read on from the last one seen.
    pub seq: u64,
    pub entries: Vec<LedgerEntry>,
}

/// The stored form of an account's state: compact binary (postcard), written at every group
/// commit and read back at start-up, so its cost and size matter more than readability.
///
/// It begins with a format byte and [`AccountFacts`], so start-up learns what it needs
/// without decoding the account. The first stored form had neither; it began with the
/// account id's length, never 0, so it is still told apart and read.
pub fn encode_account(account: &Account) -> Vec<u8> {
    postcard::to_stdvec(&(WITH_FACTS, AccountFacts::of(account), account)).expect("account state encodes")
}

pub fn decode_account(bytes: &[u8]) -> Result<Account, StoreError> {
    let decoded = match bytes.first() {
        Some(&WITH_FACTS) => postcard::from_bytes::<(u8, AccountFacts, Account)>(bytes).map(|(_, _, a)| a),
        _ => postcard::from_bytes(bytes),
    };
    decoded.map_err(|e| StoreError::Corrupt(format!("account state: {e}")))
}

/// Appends `bytes` to `out` as one LZ4 block behind its length (little-endian u32):
/// `lz4_flex`'s size-prepended form, which `decompress_size_prepended` reads back. The form
/// of compact accounts in memory and of the embedded store's packed rows.
pub fn append_lz4(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.resize(start + 4 + lz4_flex::block::get_maximum_output_size(bytes.len()), 0);
    let n = lz4_flex::block::compress_into(bytes, &mut out[start + 4..]).expect("room for the worst case");
    out.truncate(start + 4 + n);
}

/// What start-up needs of a stored account, read without decoding the rest; `None` for the
/// first stored form, which must be decoded.
pub fn account_facts(bytes: &[u8]) -> Result<Option<(&str, AccountFacts)>, StoreError> {
    if bytes.first() != Some(&WITH_FACTS) {
        return Ok(None);
    }
    let corrupt = |e: postcard::Error| StoreError::Corrupt(format!("account state: {e}"));
    let ((_, facts), rest) = postcard::take_from_bytes::<(u8, AccountFacts)>(bytes).map_err(corrupt)?;
    let (id, _) = postcard::take_from_bytes::<&str>(rest).map_err(corrupt)?;
    Ok(Some((id, facts)))
}

/// The format byte of a stored state that begins with its [`AccountFacts`].
const WITH_FACTS: u8 = 0;

/// Written ahead of each stored account: the end of its cycle, and when each live hold
/// expires, in hold order.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AccountFacts {
    #[serde(with = "crate::domain::time::compact")]
    pub cycle_end: DateTime<Utc>,
    #[serde(with = "crate::domain::time::compact_vec")]
    pub hold_expiries: Vec<DateTime<Utc>>,
}

impl AccountFacts {
    pub fn of(account: &Account) -> AccountFacts {
        AccountFacts {
            cycle_end: account.cycle.end,
            hold_expiries: account.holds.iter().map(|(_, h)| h.expires_at).collect(),
        }
    }
}

/// Ledger entries in their stored form, encoded as they are made.
///
/// The hot path encodes an entry while it is still in cache and frees the entry on its own
/// thread. Kept whole until the journal wrote them, the entries of a burst (each a struct
/// and several strings) were encoded and freed cold on the writer thread a commit later:
/// under batched deducts that was about a sixth of the server's time.
#[derive(Clone, Debug, Default)]
pub struct EncodedEntries {
    /// Each entry's postcard encoding, one after another.
    bytes: Vec<u8>,
    count: usize,
    /// The highest ledger entry id among them.
    high_id: u64,
}

impl EncodedEntries {
    /// `entries`, encoded.
    pub fn of<'a>(entries: impl IntoIterator<Item = &'a LedgerEntry>) -> Self {
        let mut encoded = EncodedEntries::default();
        encoded.extend(entries);
        encoded
    }

    /// Encodes `entries` after these.
    pub fn extend<'a>(&mut self, entries: impl IntoIterator<Item = &'a LedgerEntry>) {
        for entry in entries {
            self.bytes = postcard::to_extend(entry, std::mem::take(&mut self.bytes)).expect("ledger entries encode");
            self.count += 1;
            // Every id comes from `IdGenerator`, so it always has a number.
            self.high_id = self.high_id.max(crate::domain::ids::id_number(&entry.id).unwrap_or(0));
        }
    }

    /// Puts `other`'s entries after these.
    pub fn append(&mut self, other: EncodedEntries) {
        if self.count == 0 && self.bytes.capacity() < other.bytes.len() {
            // Takes the buffer itself rather than copy it into a smaller one.
            *self = other;
            return;
        }
        self.bytes.extend_from_slice(&other.bytes);
        self.count += other.count;
        self.high_id = self.high_id.max(other.high_id);
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn high_id(&self) -> u64 {
        self.high_id
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.count = 0;
        self.high_id = 0;
    }

    /// Appends the stored form of the whole sequence to `out`: the bytes postcard writes for
    /// a `Vec<LedgerEntry>` (its length as a varint, then each entry), so it reads back as one.
    pub fn write_stored(&self, out: &mut Vec<u8>) {
        *out = postcard::to_extend(&self.count, std::mem::take(out)).expect("a length encodes");
        out.extend_from_slice(&self.bytes);
    }
}

/// One group commit: account states and the records that produced them, written atomically.
#[derive(Debug, Default)]
pub struct Batch {
    /// (account id, `encode_account` of its state)
    pub accounts: Vec<(String, Vec<u8>)>,
    pub entries: EncodedEntries,
    pub idempotency: Vec<AnswerRow>,
    pub audit: Vec<AuditRecord>,
    pub price_book: Option<Arc<PriceBook>>,
}

impl Batch {
    /// Empties the batch, keeping its capacity.
    pub fn clear(&mut self) {
        self.accounts.clear();
        self.entries.clear();
        self.idempotency.clear();
        self.audit.clear();
        self.price_book = None;
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.entries.is_empty() && self.audit.is_empty() && self.price_book.is_none()
    }
}

/// What a write put where, for the engine to find again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// The page holding the batch's answers, numbered from 1; 0 when it had none. An answer
    /// memory lets go of is read back from its page (`RequestLookup::find_answer`).
    pub answers_page: u64,
}

/// What pruning answers left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub pages: usize,
    /// The oldest page still kept (0 when there is none): answers on pages before it are gone.
    pub first_kept_page: u64,
}

/// Everything besides the accounts and answers needed to rebuild the engine after a
/// restart (those stream through `Store::each_account` and `Store::each_answer_page`).
#[derive(Debug, Default)]
pub struct Recovered {
    pub price_book: PriceBook,
    /// Highest numeric id part seen, so new ids stay above it.
    pub id_floor: u64,
}

pub trait Store: Send + 'static {
    /// Writes a batch atomically: all of it or none of it. Its answers go on one new page.
    /// Once written, the account states may have been taken out of `batch` (the store
    /// keeps them, rather than a copy); the rest is left as it was.
    fn write(&mut self, batch: &mut Batch) -> Result<Written, StoreError>;
    /// Upkeep between two writes, called once the first one's answers are on their way, so
    /// none of its callers waits for it.
    fn tidy(&mut self) {}
    fn load_account(&mut self, account_id: &str) -> Result<Option<Account>, StoreError>;
    /// About how many accounts are stored (never fewer), to size the engine's map before
    /// they stream in.
    fn account_count(&mut self) -> Result<usize, StoreError>;
    /// Hands every stored account's newest state (`encode_account` bytes) to `each` as it
    /// is read, each account once, so start-up never holds a second copy of all of them.
    fn each_account(&mut self, each: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>) -> Result<(), StoreError>;
    /// Hands the pages of answers that hold any answered since `since_ms` to `each`, newest
    /// page first, with those answers.
    fn each_answer_page(
        &mut self,
        since_ms: u64,
        each: &mut dyn FnMut(u64, Vec<IdemRow>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Loads the prices and where ids start.
    fn recover(&mut self) -> Result<Recovered, StoreError>;
    /// Deletes the pages of answers whose newest is older than `before_ms`, but never the
    /// newest page, so page numbers never start over.
    fn prune_requests(&mut self, before_ms: u64) -> Result<Pruned, StoreError>;
    /// The ledger from the commit after `after_seq` on, at most `limit` commits.
    fn read_journal(&mut self, after_seq: u64, limit: usize) -> Result<Vec<JournalChunk>, StoreError>;
}

/// Reads an answer back off the writer's connection (for answers evicted from memory).
pub trait RequestLookup: Send + Sync + 'static {
    /// The answer to `request_id` on `page`, if the page is still there and holds it.
    fn find_answer(&self, request_id: &str, page: u64) -> Result<Option<IdemRow>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::hold::Hold;

    fn account_with_holds() -> Account {
        let now: DateTime<Utc> = "2026-11-24T08:00:00Z".parse().unwrap();
        let mut a = Account::blank("org-7", now);
        a.cycle.end = "2026-12-01T00:00:00Z".parse().unwrap();
        for (i, ttl) in [(1, 60), (2, 3600)] {
            let hold = Hold::sample(&format!("org-7/rs_{i}"), now, now + chrono::Duration::seconds(ttl));
            a.holds.insert(hold);
        }
        a
    }

    #[test]
    fn facts_are_read_off_the_front_without_decoding_the_account() {
        let a = account_with_holds();
        let bytes = encode_account(&a);
        assert_eq!(decode_account(&bytes).unwrap(), a);
        let (id, facts) = account_facts(&bytes).unwrap().expect("this program's form has facts");
        assert_eq!(id, "org-7");
        assert_eq!(facts, AccountFacts::of(&a));
        assert_eq!(facts.hold_expiries.len(), 2);
    }

    #[test]
    fn the_first_stored_form_still_decodes_and_has_no_facts() {
        let a = account_with_holds();
        let first_form = postcard::to_stdvec(&a).unwrap();
        assert_eq!(decode_account(&first_form).unwrap(), a);
        assert_eq!(account_facts(&first_form).unwrap(), None);
    }

    #[test]
    fn a_damaged_state_is_refused_not_misread() {
        let bytes = encode_account(&account_with_holds());
        assert!(matches!(account_facts(&bytes[..3]), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode_account(&bytes[..bytes.len() / 2]), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn an_answer_row_is_stored_as_the_row_it_reads_back_as() {
        let row = IdemRow {
            request_id: "org-7\u{1f}r-1".into(),
            account_id: "org-7".into(),
            fingerprint: u64::MAX - 3,
            outcome: (0..=255).collect(),
            created_ms: 1_750_000_000_123,
        };
        let sent = AnswerRow::from(row.clone());
        let bytes = postcard::to_stdvec(&vec![sent]).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&vec![row.clone()]).unwrap());
        let back: Vec<IdemRow> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            (back[0].request_id.as_str(), back[0].outcome.as_slice()),
            (row.request_id.as_str(), &row.outcome[..])
        );
    }

    #[test]
    fn encoded_entries_are_stored_as_the_list_they_read_back_as() {
        use crate::domain::ids::IdGenerator;
        use crate::domain::ledger::EntryKind;
        let ids = IdGenerator::default();
        let entry = |ms, action: &str| {
            let mut e = LedgerEntry::new(ids.next_string("le_", ms), "org-7", EntryKind::Deduct, Utc::now());
            e.action = action.into();
            e
        };
        let (first, second, third) = (entry(3_000, "chat"), entry(1_000, "embed"), entry(2_000, "chat"));
        let mut encoded = EncodedEntries::of([&first]);
        encoded.append(EncodedEntries::of([&second, &third]));
        assert_eq!(encoded.len(), 3);
        assert_eq!(encoded.high_id(), crate::domain::ids::id_number(&third.id).unwrap());
        let mut stored = Vec::new();
        encoded.write_stored(&mut stored);
        let all = vec![first, second, third];
        assert_eq!(stored, postcard::to_stdvec(&all).unwrap());
        assert_eq!(postcard::from_bytes::<Vec<LedgerEntry>>(&stored).unwrap(), all);

        let mut into_empty = EncodedEntries::default();
        into_empty.append(encoded);
        let mut again = Vec::new();
        into_empty.write_stored(&mut again);
        assert_eq!(again, stored);
        into_empty.clear();
        into_empty.append(EncodedEntries::of(&all[..1]));
        assert_eq!((into_empty.len(), into_empty.high_id()), (1, crate::domain::ids::id_number(&all[0].id).unwrap()));
    }
}
