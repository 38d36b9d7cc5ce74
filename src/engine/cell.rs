//! One account in memory: its state and the changes not yet durable, behind one lock.
//!
//! The lock is a std mutex: it is held only for the synchronous decision, never across an
//! `.await`. Changes queue in `pending` in the order they were made; the journal writer
//! takes them together with a snapshot of the state they produced, so the store always
//! receives a state and exactly the records that led to it.

use super::idempotency::Answered;
use crate::domain::account::Account;
use crate::domain::audit::AuditRecord;
use crate::domain::ledger::LedgerEntry;
use crate::store::{IdemRow, StoreError};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

pub type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// One change's records, and who waits for them to be durable.
#[derive(Debug, Default)]
pub struct Pending {
    pub entries: Vec<LedgerEntry>,
    pub audit: Option<AuditRecord>,
    pub answer: Option<PendingAnswer>,
    pub waiter: Option<Waiter>,
}

/// An answer to remember for its request id; the writer serializes it, off the hot path.
#[derive(Debug)]
pub struct PendingAnswer {
    pub key: String,
    pub fingerprint: u64,
    pub answer: Arc<Answered>,
    pub created_ms: u64,
}

impl PendingAnswer {
    pub fn to_row(&self, account_id: &str) -> IdemRow {
        super::idempotency::answer_row(&self.key, account_id, self.fingerprint, &self.answer, self.created_ms)
    }
}

pub struct Slot {
    pub account: Account,
    pub pending: Vec<Pending>,
    /// Queued for the journal writer already.
    pub queued: bool,
    /// The account's creation never became durable: treat it as absent.
    pub gone: bool,
}

pub struct AccountCell {
    pub id: String,
    slot: Mutex<Slot>,
}

impl AccountCell {
    pub fn new(account: Account) -> Self {
        AccountCell {
            id: account.id.clone(),
            slot: Mutex::new(Slot { account, pending: Vec::new(), queued: false, gone: false }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Slot> {
        // A panic under the lock leaves the state as it was before the panicking change
        // began or mid-change; either way the store still holds the last durable state,
        // which the writer's failure path reloads. Recover the guard rather than poison all.
        self.slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
