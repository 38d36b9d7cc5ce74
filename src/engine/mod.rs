//! The hot path: accounts in memory (sharded map, one lock per account), the decision,
//! holds and their expiry, idempotency, and hand-off to the journal.
//!
//! Every operation follows one shape: validate outside any lock; take the account's lock;
//! answer a replay if the request id was seen; bring the account up to `now`; decide and
//! apply with the pure rules of `domain`; queue the records and the answer; release the
//! lock; then, in `sync` durability, wait for the group commit before answering.

pub mod admin;
pub mod answered;
pub mod cell;
pub mod clock;
mod deduct;
mod evicted;
pub mod idempotency;
mod metering;
pub mod outcome;
pub mod request;
mod restore;
pub mod views;

use crate::domain::account::Account;
use crate::domain::audit::AuditRecord;
use crate::domain::ids::IdGenerator;
use crate::domain::ledger::LedgerEntry;
use crate::domain::price::PriceBook;
use crate::error::Error;
use crate::journal::Journal;
use crate::store::{IdemRow, RequestLookup, StoreError};
use answered::Answered;
use cell::{AccountCell, Pending, PendingAnswer, Slot};
use clock::Clock;
use dashmap::DashMap;
use idempotency::{IdemEntry, Idempotency, Seen};
use outcome::OutcomeRef;
pub use restore::Restored;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// The engine's maps. Hashed with foldhash, seeded per process (hashbrown's own default),
/// rather than SipHash: their keys are hashed at every call, and again for every entry
/// whenever a table grows; rehashing the answers' table took 12% of the server's time under
/// batch load, SipHash a third of that.
pub(crate) type Map<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

/// Limits and defaults of the engine (see `config` for the documented names).
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub idempotency_retention: Duration,
    pub idempotency_max_entries: usize,
    pub default_hold_ttl: Duration,
    pub max_hold_ttl: Duration,
    /// Most live holds one account may have; Reserve beyond it is FAILED_PRECONDITION.
    pub max_holds_per_account: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            idempotency_retention: Duration::from_secs(24 * 3600),
            idempotency_max_entries: 5_000_000,
            default_hold_ttl: Duration::from_secs(60),
            max_hold_ttl: Duration::from_secs(24 * 3600),
            max_holds_per_account: 10_000,
        }
    }
}

/// An answer, and whether it is the stored answer to an earlier call.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer<T> {
    pub outcome: T,
    pub replayed: bool,
}

/// Waits for durability of one change (none in `async` mode or when nothing changed).
type Durable = Option<oneshot::Receiver<Result<(), StoreError>>>;

pub struct Engine {
    accounts: Map<String, Arc<AccountCell>>,
    /// Accounts with live holds: the expiry sweep visits only these.
    with_holds: Map<String, ()>,
    idempotency: Arc<Idempotency>,
    prices: RwLock<Arc<PriceBook>>,
    /// Serializes price-book changes (each makes a new version from the last).
    price_writes: tokio::sync::Mutex<()>,
    ids: IdGenerator,
    clock: Arc<dyn Clock>,
    journal: Journal,
    lookup: Option<Arc<dyn RequestLookup>>,
    options: EngineOptions,
}

impl Engine {
    /// Builds the engine from what start-up read back from the store.
    pub fn new(
        restored: Restored,
        journal: Journal,
        idempotency: Arc<Idempotency>,
        lookup: Option<Arc<dyn RequestLookup>>,
        clock: Arc<dyn Clock>,
        options: EngineOptions,
    ) -> Engine {
        let Restored { accounts, with_holds, recovered } = restored;
        Engine {
            accounts,
            with_holds,
            idempotency,
            prices: RwLock::new(Arc::new(recovered.price_book)),
            price_writes: tokio::sync::Mutex::new(()),
            ids: IdGenerator::starting_after(recovered.id_floor),
            clock,
            journal,
            lookup,
            options,
        }
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Answers to request ids kept in memory, for replays.
    pub fn answers_in_memory(&self) -> usize {
        self.idempotency.len()
    }

    /// Answers let go of for space: only where the store has them is kept.
    pub fn answers_evicted(&self) -> usize {
        self.idempotency.evicted_len()
    }

    /// Resolves when every change made so far is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.journal.flush().await
    }

    fn cell(&self, account_id: &str) -> Option<Arc<AccountCell>> {
        self.accounts.get(account_id).map(|c| c.value().clone())
    }

    fn price_book(&self) -> Arc<PriceBook> {
        self.prices.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads an answer memory let go of back from the store, off the request thread, so the
    /// check under the account lock sees it. Costs nothing for an id never answered.
    async fn recall(&self, key: &str) -> Result<(), Error> {
        let pages = self.idempotency.evicted_pages(key);
        let (Some(lookup), false) = (&self.lookup, pages.is_empty()) else {
            return Ok(());
        };
        let (lookup, k) = (lookup.clone(), key.to_string());
        let found = tokio::task::spawn_blocking(move || find_evicted(lookup.as_ref(), &k, &pages))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        self.take_back(found)
    }

    /// Puts an answer read back from the store into memory again.
    fn take_back(&self, found: Result<Option<(IdemRow, u64)>, StoreError>) -> Result<(), Error> {
        let found =
            found.map_err(|e| Error::Unavailable(format!("cannot read answered requests from the store: {e}")))?;
        if let Some((row, page)) = found {
            if let Some(entry) = idem_entry_from_row(&row, page) {
                self.idempotency.insert(&row.request_id, entry);
            }
        }
        Ok(())
    }

    /// Records a change made under the account's lock: queues its ledger entries, audit
    /// record and answer for the journal, and returns what to wait on for durability.
    fn record(&self, cell: &Arc<AccountCell>, slot: &mut Slot, change: Change) -> Durable {
        let wait = change.wait;
        match self.queue_change(cell, slot, change) {
            Some(true) if wait => Some(await_last(slot)),
            _ => None,
        }
    }

    /// Waits until a change is durable; maps a failed write to UNAVAILABLE. Called once the
    /// account's lock is let go; then gives way (`Engine::give_way`).
    async fn settle<T>(&self, durable: Durable, answer: Answer<T>) -> Result<Answer<T>, Error> {
        durability(durable).await.map_err(|e| Error::not_durable(&e))?;
        self.give_way();
        Ok(answer)
    }

    /// Called by a request once its account's lock is let go: gives the core for a moment
    /// to a journal writer or an eviction sweep that fell behind (`Pacing`).
    fn give_way(&self) {
        self.journal.pace();
        self.idempotency.pace();
    }

    /// Queues a change for the journal as `record` does, but has nobody wait for it. Returns
    /// `None` if there was nothing to queue, else whether its caller must wait until it is
    /// durable (always in `sync` durability; in `async` while the writer is behind): then
    /// [`await_last`] before the account's lock is let go.
    fn queue_change(&self, cell: &Arc<AccountCell>, slot: &mut Slot, change: Change) -> Option<bool> {
        if change.entries.is_empty() && change.audit.is_none() && change.answer.is_none() && !change.state_changed {
            return None;
        }
        // Async durability answers before the write: such answers count as durable at once.
        let must_wait = self.journal.admit();
        let answer = change.answer.map(|Reply { key, fingerprint, outcome, at }| {
            let answer = Answered::new(outcome, !must_wait);
            let created_ms = at.wall_ms();
            self.idempotency.insert(&key, IdemEntry { fingerprint, answer: answer.clone(), created_ms });
            PendingAnswer { key, fingerprint, answer, created_ms }
        });
        let unwritten = slot.unwritten();
        unwritten.entries.extend(&change.entries);
        unwritten.pending.push(Pending { audit: change.audit, answer, waiter: None });
        let mut queued = slot.queued;
        self.journal.queue(cell, &mut queued);
        slot.queued = queued;
        Some(must_wait)
    }

    /// Looks a request id up under the account's lock.
    fn seen(&self, key: &str, fingerprint: u64) -> Result<Option<Arc<Answered>>, Error> {
        let mut seen = self.idempotency.check(key, fingerprint);
        if let (Seen::Evicted(pages), Some(lookup)) = (&seen, &self.lookup) {
            // The answer left memory after `recall` looked (or another key shares its tag):
            // read the store here, once in a long while, rather than charge twice.
            self.take_back(find_evicted(lookup.as_ref(), key, pages))?;
            seen = self.idempotency.check(key, fingerprint);
        }
        match seen {
            Seen::New | Seen::Evicted(_) => Ok(None),
            Seen::Replay(answer) => Ok(Some(answer)),
            Seen::Mismatch => Err(Error::AlreadyExists(
                "request_id was already used with different arguments; use a new request_id for a new operation".into(),
            )),
            Seen::InFlight => Err(Error::Unavailable(
                "a call with this request_id is still in progress; retry shortly with the same request_id".into(),
            )),
        }
    }

    /// How many times requests paused to let an `async` writer that fell behind catch up.
    pub fn writer_pauses(&self) -> u64 {
        self.journal.pauses()
    }

    /// How many times requests paused to let the eviction sweep bring the answers kept in
    /// memory back to their bound.
    pub fn sweep_pauses(&self) -> u64 {
        self.idempotency.pauses()
    }

    /// Expires due holds of accounts that have any. Called periodically; also happens lazily
    /// whenever an account is touched. A compact account is decoded only when a hold is due.
    pub fn sweep_holds(&self) -> usize {
        let mut ids = Vec::with_capacity(self.with_holds.len());
        ids.extend(self.with_holds.iter().map(|e| e.key().clone()));
        let mut expired = 0;
        for id in ids {
            let Some(cell) = self.cell(&id) else { continue };
            let mut slot = cell.lock();
            let now = self.clock.now();
            match slot.next_hold_deadline() {
                None => {
                    self.with_holds.remove(&id);
                    continue;
                }
                Some(deadline) if now.mono_ms < deadline => continue,
                Some(_) => {}
            }
            let account = slot.account();
            let before = account.holds.len();
            let entries = account.advance(now, &self.ids);
            expired += before - account.holds.len();
            if account.holds.is_empty() {
                self.with_holds.remove(&id);
            }
            self.record(&cell, &mut slot, Change::maintenance(entries));
        }
        expired
    }

    /// Rolls every account whose cycle ended into its new cycle (plan renewal, expiry of
    /// unused plan credits). Also happens lazily when an account is touched. A compact
    /// account is compacted again at once, so a month's turn never holds every account
    /// decoded at the same time.
    pub fn sweep_cycles(&self) -> usize {
        let now = self.clock.now();
        let mut rolled = 0;
        for cell in self.all_cells() {
            let mut slot = cell.lock();
            if slot.gone || now.wall < slot.cycle_end() {
                continue;
            }
            let was_compact = slot.is_compact();
            let entries = slot.account().advance(now, &self.ids);
            rolled += 1;
            self.record(&cell, &mut slot, Change::maintenance(entries));
            if was_compact {
                slot.compact();
            }
        }
        rolled
    }

    /// Compacts the accounts not used since the last call (see `cell`). Called periodically,
    /// so an account stays decoded while in use and is compacted one to two periods after.
    pub fn compact_idle(&self) -> usize {
        self.all_cells().iter().filter(|cell| cell.lock().compact_if_idle()).count()
    }

    /// Every account's cell, collected first so no map shard stays locked during the work.
    /// Sized first: growing the list while a shard is locked would copy it there.
    fn all_cells(&self) -> Vec<Arc<AccountCell>> {
        let mut cells = Vec::with_capacity(self.accounts.len() + 64);
        cells.extend(self.accounts.iter().map(|e| e.value().clone()));
        cells
    }

    /// Lets the oldest answers beyond the memory bound go (the store has them). Called
    /// periodically, off the request threads.
    pub fn evict_answers(&self) -> usize {
        self.idempotency.evict_over_bound()
    }

    /// Forgets answered request ids past retention, in memory, then asks the journal writer
    /// to prune the store. Called periodically, off the request threads.
    pub fn expire_answers(&self) -> usize {
        let now_ms = self.clock.now().wall_ms();
        let expired = self.idempotency.expire(now_ms);
        self.journal.prune_requests(now_ms.saturating_sub(self.options.idempotency_retention.as_millis() as u64));
        expired
    }

    /// Writes what is queued and closes the store. Used once, at shutdown.
    pub async fn stop_journal(&self) -> Result<(), StoreError> {
        self.journal.stop().await
    }

    fn audit(
        &self,
        actor: &str,
        operation: &str,
        account_id: &str,
        request_id: Option<&str>,
        before: String,
        after: String,
    ) -> AuditRecord {
        let now = self.clock.now();
        AuditRecord {
            id: self.ids.next_string("au_", now.wall_ms()),
            occurred_at: now.wall,
            actor: actor.to_string(),
            operation: operation.to_string(),
            account_id: account_id.to_string(),
            before_json: before,
            after_json: after,
            request_id: request_id.map(str::to_string),
        }
    }

    /// A snapshot of an account brought up to now (for reads).
    fn read_account<T>(&self, account_id: &str, read: impl FnOnce(&Account, crate::domain::Now) -> T) -> Option<T> {
        let cell = self.cell(account_id)?;
        let mut slot = cell.lock();
        if slot.gone {
            return None;
        }
        let now = self.clock.now();
        let account = slot.account();
        let entries = account.advance(now, &self.ids);
        let value = read(account, now);
        self.record(&cell, &mut slot, Change::maintenance(entries));
        Some(value)
    }
}

/// What one operation changed, for `Engine::record`.
#[derive(Default)]
struct Change<'a> {
    entries: Vec<LedgerEntry>,
    audit: Option<Box<AuditRecord>>,
    answer: Option<Reply<'a>>,
    /// The state changed even without records (e.g. Extend without a request id).
    state_changed: bool,
    /// Whether the caller waits for durability.
    wait: bool,
}

impl Change<'_> {
    /// Housekeeping changes (expiries, rollovers) that nobody waits for.
    fn maintenance(entries: Vec<LedgerEntry>) -> Self {
        Change { entries, ..Change::default() }
    }
}

/// The answer to keep for a request id, so a retry gets it again.
struct Reply<'a> {
    /// The idempotency key (`idem_key`).
    key: Arc<str>,
    /// The request's arguments, hashed: a retry must match them.
    fingerprint: u64,
    outcome: OutcomeRef<'a>,
    /// When it was answered: the `now` the operation decided at.
    at: crate::domain::Now,
}

/// Idempotency keys are scoped by account: two organizations never collide on an id.
pub fn idem_key(account_id: &str, request_id: &str) -> Arc<str> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    // Put together in a buffer kept per thread, so the key is allocated once, shared by
    // the request and the row the journal writes.
    SCRATCH.with_borrow_mut(|key| {
        key.clear();
        key.push_str(account_id);
        key.push('\u{1f}');
        key.push_str(request_id);
        Arc::from(key.as_str())
    })
}

/// The answer to `key` on the first of `pages` that holds it.
fn find_evicted(lookup: &dyn RequestLookup, key: &str, pages: &[u64]) -> Result<Option<(IdemRow, u64)>, StoreError> {
    for &page in pages {
        if let Some(row) = lookup.find_answer(key, page)? {
            return Ok(Some((row, page)));
        }
    }
    Ok(None)
}

fn idem_entry_from_row(row: &IdemRow, page: u64) -> Option<IdemEntry> {
    answered::entry_from_row(row, page)
        .inspect_err(|e| {
            tracing::warn!(request_id = %row.request_id, error = %e, "unreadable stored answer; the id is treated as new")
        })
        .ok()
}

/// Has the caller wait for the last change queued on `slot`, and so for every change queued
/// before it while the lock was held: the journal writer takes an account's queued changes
/// all at once, so they share one commit and its outcome. Called under the lock that
/// queued them.
fn await_last(slot: &mut Slot) -> oneshot::Receiver<Result<(), StoreError>> {
    let (waiter, durable) = oneshot::channel();
    slot.unwritten().pending.last_mut().expect("a change was queued under this lock").waiter = Some(waiter);
    durable
}

/// Waits until a change is durable, or says why it did not become so.
async fn durability(durable: Durable) -> Result<(), StoreError> {
    match durable {
        None => Ok(()),
        Some(rx) => rx.await.unwrap_or_else(|_| Err(StoreError::Failed("the journal writer stopped".into()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::JournalOptions;
    use crate::store::embedded::{EmbeddedStore, Synchronous};
    use crate::store::{Batch, Store};
    use clock::SystemClock;

    /// The answer to `acme`'s request `r1` only in the store (memory keeps none in full),
    /// as when it leaves memory between `recall` and the check under the account lock.
    #[tokio::test]
    async fn a_check_under_the_lock_reads_an_evicted_answer_rather_than_charge_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
        let key = idem_key("acme", "r1");
        let answer = Answered::new(OutcomeRef::AccountChanged, true);
        let row = answered::answer_row(&key, &"acme".into(), 42, &answer, SystemClock::new().now().wall_ms());
        store.write(&mut Batch { idempotency: vec![row], ..Batch::default() }).unwrap();
        let idempotency = Arc::new(Idempotency::new(86_400_000, 0));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let restored = Restored::from_store(&mut store, &idempotency, 0, clock.now()).unwrap();
        let lookup: Arc<dyn RequestLookup> = Arc::new(EmbeddedStore::reader(dir.path()).unwrap());
        let (journal, _writer) =
            Journal::start(Box::new(store), idempotency.clone(), clock.clone(), JournalOptions::default());
        let engine = Engine::new(restored, journal, idempotency, Some(lookup), clock, EngineOptions::default());
        assert_eq!(engine.answers_evicted(), 1);

        let replay = engine.seen(&key, 42).unwrap().expect("the stored answer, not a new request");
        assert_eq!(replay.encoded(), answer.encoded());
        assert!(matches!(engine.seen(&key, 7), Err(Error::AlreadyExists(_))), "other arguments");
        assert!(engine.seen(&idem_key("acme", "r2"), 42).unwrap().is_none(), "a new id is new");
    }
}
