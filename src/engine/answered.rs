//! An answer to a request id, kept for replays in its stored form, and the rows the
//! journal writes it as and reads it back from.

use super::idempotency::IdemEntry;
use super::outcome::{Outcome, OutcomeRef};
use crate::store::{AnswerRow, IdemRow};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// An answer, shared by the map and the journal writer, which marks it written in place.
///
/// Kept in its stored form (the outcome postcard-encoded): millions are kept for a day and
/// nearly all are never asked for again. Encoded once, it is one small block in memory
/// (the outcome's ids and allocations took a block each) and the very bytes the journal
/// writes.
#[derive(Debug)]
pub struct Answered {
    encoded: Box<[u8]>,
    /// False until the change counts as durable (written, or at once in `async` mode): a
    /// duplicate arriving before that cannot be told the outcome yet.
    durable: AtomicBool,
    /// The store's page holding this answer; 0 until written. Only a written answer may
    /// leave memory.
    page: AtomicU64,
}

impl Answered {
    pub fn new(outcome: OutcomeRef<'_>, durable: bool) -> Arc<Self> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        // Encoded into a buffer kept per thread, then copied once into a block of its exact
        // size: encoding straight into a new vector grew it four or five times per answer
        // and left the answer in a block up to twice its size.
        let encoded = SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            *buf = postcard::to_extend(&outcome, std::mem::take(buf)).expect("outcome encodes");
            Box::<[u8]>::from(buf.as_slice())
        });
        Arc::new(Answered { encoded, durable: AtomicBool::new(durable), page: AtomicU64::new(0) })
    }

    /// An answer read back from the store's `page`; refused if it does not decode.
    pub fn decoded_from(encoded: &[u8], page: u64) -> Result<Arc<Self>, postcard::Error> {
        postcard::from_bytes::<Outcome>(encoded)?;
        Ok(Arc::new(Answered { encoded: encoded.into(), durable: AtomicBool::new(true), page: AtomicU64::new(page) }))
    }

    /// The outcome, for a replay.
    pub fn outcome(&self) -> Outcome {
        postcard::from_bytes(&self.encoded).expect("answers are checked when made or read back")
    }

    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    pub fn is_durable(&self) -> bool {
        self.durable.load(Ordering::Acquire)
    }

    /// The store's page holding the answer, once written.
    pub fn page(&self) -> Option<u64> {
        Some(self.page.load(Ordering::Acquire)).filter(|&p| p != 0)
    }

    /// The answer is in the store, on `page`.
    pub fn written(&self, page: u64) {
        self.page.store(page, Ordering::Release);
        self.durable.store(true, Ordering::Release);
    }
}

impl AsRef<[u8]> for Answered {
    fn as_ref(&self) -> &[u8] {
        &self.encoded
    }
}

/// An answer as the journal writes it, sharing the answer itself.
pub fn answer_row(
    key: &Arc<str>,
    account_id: &Arc<str>,
    fingerprint: u64,
    answer: &Arc<Answered>,
    created_ms: u64,
) -> AnswerRow {
    AnswerRow { key: key.clone(), account_id: account_id.clone(), fingerprint, outcome: answer.clone(), created_ms }
}

/// Reads an answer back from its stored form, found on `page`.
pub fn entry_from_row(row: &IdemRow, page: u64) -> Result<IdemEntry, postcard::Error> {
    Ok(IdemEntry {
        fingerprint: row.fingerprint,
        answer: Answered::decoded_from(&row.outcome, page)?,
        created_ms: row.created_ms,
    })
}
