//! One account in memory: its state and the changes not yet durable, behind one lock.
//!
//! The lock is a std mutex: it is held only for the synchronous decision, never across an
//! `.await`. Changes queue in [`Unwritten`] in the order they were made; the journal writer
//! takes them together with a snapshot of the state they produced, so the store always
//! receives a state and exactly the records that led to it.
//!
//! Most organizations are idle at any moment, so an account left unused for a while is
//! kept compact: its stored form, LZ4-compressed, with what only memory knows beside it.
//! That is about a sixth of the decoded account; the next use decodes it again, once.

use super::answered::Answered;
use crate::domain::account::{Account, ResolvedHold};
use crate::domain::audit::AuditRecord;
use crate::store::{append_lz4, decode_account, encode_account, AnswerRow, EncodedEntries, StoreError};
use chrono::{DateTime, Utc};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

pub type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// One change's records but its ledger entries (`Unwritten::entries`), and who waits for
/// them to be durable.
#[derive(Debug, Default)]
pub struct Pending {
    /// Boxed: only administrative changes have one, and an account's queue of changes can
    /// hold a whole backlog (up to `store.async_max_backlog` of them, in async mode).
    pub audit: Option<Box<AuditRecord>>,
    pub answer: Option<PendingAnswer>,
    pub waiter: Option<Waiter>,
}

/// An answer to remember for its request id; the writer serializes it, off the hot path.
#[derive(Debug)]
pub struct PendingAnswer {
    pub key: Arc<str>,
    pub fingerprint: u64,
    pub answer: Arc<Answered>,
    pub created_ms: u64,
}

impl PendingAnswer {
    pub fn to_row(&self, account_id: &Arc<str>) -> AnswerRow {
        super::answered::answer_row(&self.key, account_id, self.fingerprint, &self.answer, self.created_ms)
    }
}

pub struct Slot {
    state: State,
    /// Boxed, and only while there are any: nearly every account has none at any moment.
    unwritten: Option<Box<Unwritten>>,
    /// Queued for the journal writer already.
    pub queued: bool,
    /// The account's creation never became durable: treat it as absent.
    pub gone: bool,
    /// Used since the last [`Slot::compact_if_idle`].
    used: bool,
}

/// The changes made since the journal writer last took the account's, oldest first.
#[derive(Debug, Default)]
pub struct Unwritten {
    pub pending: Vec<Pending>,
    /// Their ledger entries, in order, encoded as they were made.
    pub entries: EncodedEntries,
}

enum State {
    /// Boxed, so a compact account's cell does not keep room for a decoded one.
    Live(Box<Account>),
    Compact(Compact),
}

/// An account at rest. Everything a decoded account holds, and what the sweeps need to know
/// without decoding it.
struct Compact {
    /// The state's stored form (as written by `encode_account`, or as read back from the
    /// store, which may be an older form), LZ4-compressed behind its length.
    stored: Box<[u8]>,
    /// The holds' deadlines on the monotonic clock, in hold order: the stored form has
    /// their wall-clock expiry only, and a hold must keep the deadline it was given.
    deadlines: Box<[u64]>,
    /// Recently resolved holds (memory only), when there are any. Boxed: every compact
    /// cell pays 8 bytes for it rather than 32.
    #[allow(clippy::box_collection)]
    resolved: Option<Box<VecDeque<ResolvedHold>>>,
    cycle_end: DateTime<Utc>,
}

impl Compact {
    /// Takes what only memory knows (the resolved holds) out of `account`.
    fn new(account: &mut Account) -> Compact {
        let resolved = std::mem::take(&mut account.resolved_holds);
        Compact {
            stored: compress(&encode_account(account)),
            deadlines: account.holds.iter().map(|(_, h)| h.deadline_ms).collect(),
            resolved: (!resolved.is_empty()).then(|| Box::new(resolved)),
            cycle_end: account.cycle.end,
        }
    }

    /// The account decoded, with what only memory knew put back (taken from `self`).
    fn expand(&mut self) -> Account {
        // Start-up reads only the facts at the front of a state in this program's form (any
        // other it decodes in full), so this fails only for a store altered behind its back.
        let mut account = decode_account(&self.stored_state())
            .unwrap_or_else(|e| panic!("a stored account state of a known format decodes: {e}"));
        let mut deadlines = self.deadlines.iter().copied();
        account.holds.set_deadlines(|_| deadlines.next());
        if let Some(resolved) = self.resolved.take() {
            account.resolved_holds = *resolved;
        }
        account
    }

    fn stored_state(&self) -> Vec<u8> {
        lz4_flex::block::decompress_size_prepended(&self.stored)
            .unwrap_or_else(|e| panic!("a compacted account decompresses, since this process compressed it: {e}"))
    }
}

impl Slot {
    /// Where a new change queues for the journal writer.
    pub fn unwritten(&mut self) -> &mut Unwritten {
        self.unwritten.get_or_insert_with(Default::default)
    }

    /// Every queued change, leaving none.
    pub fn take_unwritten(&mut self) -> Unwritten {
        self.unwritten.take().map(|u| *u).unwrap_or_default()
    }

    /// The account, decoded first if it was compact. Counts as a use.
    pub fn account(&mut self) -> &mut Account {
        self.used = true;
        if let State::Compact(compact) = &mut self.state {
            self.state = State::Live(Box::new(compact.expand()));
        }
        match &mut self.state {
            State::Live(account) => account,
            State::Compact(_) => unreachable!("expanded just above"),
        }
    }

    /// Replaces the account's state (creation, reload after a failed write).
    pub fn replace(&mut self, account: Account) {
        self.used = true;
        self.state = State::Live(Box::new(account));
    }

    /// The state as the store keeps it (`encode_account`), without decoding a compact one.
    pub fn stored_state(&self) -> Vec<u8> {
        match &self.state {
            State::Live(account) => encode_account(account),
            State::Compact(compact) => compact.stored_state(),
        }
    }

    /// End of the account's current cycle, without decoding a compact account.
    pub fn cycle_end(&self) -> DateTime<Utc> {
        match &self.state {
            State::Live(account) => account.cycle.end,
            State::Compact(compact) => compact.cycle_end,
        }
    }

    /// The earliest deadline of a live hold, without decoding a compact account.
    pub fn next_hold_deadline(&self) -> Option<u64> {
        match &self.state {
            State::Live(account) => account.holds.iter().map(|(_, h)| h.deadline_ms).min(),
            State::Compact(compact) => compact.deadlines.iter().copied().min(),
        }
    }

    pub fn is_compact(&self) -> bool {
        matches!(self.state, State::Compact(_))
    }

    /// Compacts the account now, whatever its use.
    pub fn compact(&mut self) {
        if let State::Live(account) = &mut self.state {
            self.state = State::Compact(Compact::new(account));
        }
    }

    /// Compacts the account if it was not used since the last call; returns whether it did.
    pub fn compact_if_idle(&mut self) -> bool {
        let idle = !std::mem::take(&mut self.used) && !self.is_compact();
        if idle {
            self.compact();
        }
        idle
    }
}

pub struct AccountCell {
    /// Shared with every answer row of the account that the journal writes.
    pub id: Arc<str>,
    slot: Mutex<Slot>,
}

impl AccountCell {
    pub fn new(account: Account) -> Self {
        Self::with_state(account.id.as_str().into(), State::Live(Box::new(account)))
    }

    /// A compact cell for an account read back from the store: `stored` is its stored form,
    /// `deadlines` its holds' deadlines on this process's clock, in hold order.
    pub fn restored(id: Arc<str>, stored: &[u8], deadlines: Box<[u64]>, cycle_end: DateTime<Utc>) -> Self {
        let compact = Compact { stored: compress(stored), deadlines, resolved: None, cycle_end };
        Self::with_state(id, State::Compact(compact))
    }

    fn with_state(id: Arc<str>, state: State) -> Self {
        AccountCell { id, slot: Mutex::new(Slot { state, unwritten: None, queued: false, gone: false, used: false }) }
    }

    pub fn lock(&self) -> MutexGuard<'_, Slot> {
        // A panic under the lock leaves the state as it was before the panicking change
        // began or mid-change; either way the store still holds the last durable state,
        // which the writer's failure path reloads. Recover the guard rather than poison all.
        self.slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

thread_local! {
    /// Room for the worst case of one compression, reused so each compact state is
    /// allocated once at its exact size.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// LZ4 block of `bytes` behind its length, as `lz4_flex`'s size-prepended form.
fn compress(bytes: &[u8]) -> Box<[u8]> {
    SCRATCH.with_borrow_mut(|out| {
        out.clear();
        append_lz4(out, bytes);
        Box::from(out.as_slice())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::hold::HoldEnd;
    use crate::domain::ids::IdGenerator;
    use crate::domain::Now;

    fn account() -> Account {
        let now = Now { wall: chrono::DateTime::from_timestamp(1_750_000_000, 0).unwrap(), mono_ms: 5_000 };
        let (mut a, _) = Account::blank("org-1", now.wall).open(now, &IdGenerator::default());
        a.display_name = "An organization whose name repeats, repeats, repeats".into();
        a.resolved_holds.push_back(("org-1/rs_1".into(), HoldEnd::Committed, now.wall));
        a
    }

    #[test]
    fn a_compacted_account_comes_back_whole_with_what_only_memory_knew() {
        let original = account();
        let cell = AccountCell::new(original.clone());
        let mut slot = cell.lock();
        slot.compact();
        assert!(slot.is_compact());
        assert_eq!(slot.stored_state(), encode_account(&original));
        assert_eq!(slot.cycle_end(), original.cycle.end);
        assert_eq!(*slot.account(), original);
        assert_eq!(slot.account().resolved_holds, original.resolved_holds);
        assert!(!slot.is_compact());
    }

    #[test]
    fn only_an_account_unused_since_the_last_sweep_is_compacted() {
        let cell = AccountCell::new(account());
        let mut slot = cell.lock();
        slot.account();
        assert!(!slot.compact_if_idle(), "used since the last sweep");
        assert!(slot.compact_if_idle(), "unused for a whole sweep");
        assert!(!slot.compact_if_idle(), "compact already");
        slot.stored_state();
        slot.cycle_end();
        assert!(slot.is_compact(), "reading what the sweeps and the writer need does not decode");
    }

    #[test]
    fn compression_round_trips_and_sizes_exactly() {
        let bytes: Vec<u8> = (0..2000u32).map(|i| (i % 7) as u8).collect();
        let packed = compress(&bytes);
        assert!(packed.len() < bytes.len() / 4);
        assert_eq!(lz4_flex::block::decompress_size_prepended(&packed).unwrap(), bytes);
        assert!(lz4_flex::block::decompress_size_prepended(&compress(&[])).unwrap().is_empty());
    }
}
