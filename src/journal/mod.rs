//! Group commit: the one writer of the durable store.
//!
//! Requests change accounts in memory and queue their records on the account (see
//! `engine::cell`); the account itself is queued here once. The writer thread takes
//! everything queued, writes it in one transaction, then wakes every waiter. While a write
//! is in flight new work queues, so a busy server batches thousands of records per write
//! and an idle one adds no delay: there is no timer in `sync` mode.
//!
//! The queue holds each account at most once, so it is bounded by the number of accounts.
//!
//! When a write fails, every account in it is reloaded from the store (the cache must
//! agree with the store again) and every waiting request is told UNAVAILABLE: it was not
//! charged, and its request id is forgotten so a retry runs it again.
//!
//! A creditd crash loses: in `sync` mode nothing acknowledged; in `async` mode what was
//! acknowledged since the last completed write — about `flush_interval` plus one write (on a
//! busy core a little more: see `Pacing`), and never more than `max_backlog` changes: beyond
//! that, callers wait as in `sync` mode.

use crate::domain::account::Account;
use crate::domain::audit::AuditRecord;
use crate::domain::price::PriceBook;
use crate::engine::cell::{AccountCell, Pending, Unwritten, Waiter};
use crate::engine::clock::Clock;
use crate::engine::idempotency::Idempotency;
use crate::store::{Batch, Store, StoreError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

mod priority;

use crate::pacing::Pacing;
use priority::yield_to_requests;
pub use priority::WriterPriority;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Answer only after the change is durable.
    Sync,
    /// Answer from memory; write within the flush interval.
    Async,
}

enum Msg {
    Account(Arc<AccountCell>),
    Global {
        price_book: Option<Arc<PriceBook>>,
        audit: Option<AuditRecord>,
        waiter: Option<Waiter>,
    },
    Flush(Waiter),
    /// Drop answered request ids older than this from the store.
    Prune(u64),
    /// Write what is queued, then stop and close the store.
    Stop(Waiter),
}

/// The outcomes of one commit, for the requests waiting on it.
type Settled = Vec<(Waiter, Result<(), StoreError>)>;

/// The handle the engine holds. Cloning shares the one writer.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Msg>,
    pub durability: Durability,
    /// Changes queued and not yet written (or failed).
    backlog: Arc<AtomicUsize>,
    max_backlog: usize,
    pacing: Arc<Pacing>,
}

/// Settings of the writer.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    pub durability: Durability,
    pub flush_interval: Duration,
    /// `async` durability: once this many changes wait to be written, new ones wait for
    /// the store as in `sync` mode, so memory stays bounded when the writer falls behind.
    pub max_backlog: usize,
    pub writer_priority: WriterPriority,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            durability: Durability::Sync,
            flush_interval: Duration::from_millis(10),
            max_backlog: 100_000,
            writer_priority: WriterPriority::default(),
        }
    }
}

impl Journal {
    /// Starts the writer thread over `store`. It stops when every `Journal` is dropped, after
    /// writing what was queued. Must be called within the tokio runtime that serves
    /// requests: their wake-ups are delivered there.
    pub fn start(
        store: Box<dyn Store>,
        idempotency: Arc<Idempotency>,
        clock: Arc<dyn Clock>,
        options: JournalOptions,
    ) -> (Journal, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let (settled, deliveries) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(deliver(deliveries));
        let backlog = Arc::new(AtomicUsize::new(0));
        // Behind once it has owed a write for two flush intervals.
        let pacing = Arc::new(Pacing::new(2 * options.flush_interval));
        let writer = Writer {
            store,
            clock,
            idempotency,
            rx,
            settled,
            backlog: backlog.clone(),
            pacing: pacing.clone(),
            options: options.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("creditd-journal".into())
            .spawn(move || writer.run())
            .expect("spawn journal thread");
        (Journal { tx, durability: options.durability, backlog, max_backlog: options.max_backlog, pacing }, handle)
    }

    /// Counts a change about to be queued, and says whether its caller must wait until it is
    /// durable: always in `sync` mode; in `async` mode only while the writer is behind.
    pub fn admit(&self) -> bool {
        let behind = self.backlog.fetch_add(1, Ordering::Relaxed);
        if behind == 0 && self.durability == Durability::Async {
            self.pacing.owed_from_now();
        }
        self.durability == Durability::Sync || behind >= self.max_backlog
    }

    /// Called by a request once its account's lock is let go. Under `async` durability,
    /// while the writer is behind, gives it the core for a moment (`Pacing`).
    pub fn pace(&self) {
        if self.durability == Durability::Async && self.backlog.load(Ordering::Relaxed) > 0 {
            self.pacing.give_way();
        }
    }

    /// How many times requests paused to let the writer catch up (`Pacing`).
    pub fn pauses(&self) -> u64 {
        self.pacing.pauses()
    }

    /// Queues `cell` for the next write, unless it is queued already. Called under the
    /// account's lock, right after pushing a `Pending`.
    pub fn queue(&self, cell: &Arc<AccountCell>, already_queued: &mut bool) {
        if !*already_queued {
            *already_queued = true;
            // A send fails only after the writer stopped (shutdown); the waiter then sees
            // a closed channel and the caller answers UNAVAILABLE.
            let _ = self.tx.send(Msg::Account(cell.clone()));
        }
    }

    /// Writes a change that belongs to no single account (the global price book).
    pub fn write_global(
        &self,
        price_book: Option<Arc<PriceBook>>,
        audit: Option<AuditRecord>,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let (waiter, done) = oneshot::channel();
        let _ = self.tx.send(Msg::Global { price_book, audit, waiter: Some(waiter) });
        done
    }

    /// Asks the writer to forget answered request ids older than `before_ms`.
    pub fn prune_requests(&self, before_ms: u64) {
        let _ = self.tx.send(Msg::Prune(before_ms));
    }

    /// Writes what is queued, then stops the writer and closes the store (releasing the
    /// data directory). Later changes are answered UNAVAILABLE.
    pub async fn stop(&self) -> Result<(), StoreError> {
        let (waiter, done) = oneshot::channel();
        self.tx.send(Msg::Stop(waiter)).map_err(|_| StoreError::Failed("the journal writer has stopped".into()))?;
        done.await.map_err(|_| StoreError::Failed("the journal writer has stopped".into()))?
    }

    /// Resolves when everything queued before it is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (waiter, done) = oneshot::channel();
        self.tx.send(Msg::Flush(waiter)).map_err(|_| StoreError::Failed("the journal writer has stopped".into()))?;
        done.await.map_err(|_| StoreError::Failed("the journal writer has stopped".into()))?
    }
}

/// Wakes the requests of each commit from inside the runtime. Woken one by one from the
/// writer thread, every request would cost a cross-thread wake-up (an eventfd write, and on
/// a shared core a context switch) and its response would leave in a TCP write of its own;
/// woken here together, their responses share the writes.
async fn deliver(mut deliveries: tokio::sync::mpsc::UnboundedReceiver<Settled>) {
    while let Some(settled) = deliveries.recv().await {
        for (waiter, result) in settled {
            let _ = waiter.send(result);
        }
    }
}

struct Writer {
    store: Box<dyn Store>,
    clock: Arc<dyn Clock>,
    idempotency: Arc<Idempotency>,
    rx: mpsc::Receiver<Msg>,
    settled: tokio::sync::mpsc::UnboundedSender<Settled>,
    backlog: Arc<AtomicUsize>,
    pacing: Arc<Pacing>,
    options: JournalOptions,
}

/// What one write carries, and whom to tell how it went.
#[derive(Default)]
struct Round {
    batch: Batch,
    cells: Vec<Arc<AccountCell>>,
    pending: Vec<Pending>,
    waiters: Vec<Waiter>,
    stop: Option<Waiter>,
}

impl Round {
    /// Empties the round for the next commit, keeping its capacity.
    fn clear(&mut self) {
        self.batch.clear();
        self.cells.clear();
        self.pending.clear();
        self.waiters.clear();
    }
}

impl Writer {
    fn run(mut self) {
        yield_to_requests(self.options.writer_priority.under(self.options.durability));
        // One round, reused: a busy commit holds thousands of records, and vectors that big
        // come fresh from the kernel (page faults, zeroing) each time they are rebuilt.
        let mut round = Round::default();
        while let Ok(first) = self.rx.recv() {
            self.take(first, &mut round);
            while let Ok(more) = self.rx.try_recv() {
                self.take(more, &mut round);
            }
            let stop = round.stop.take();
            self.write(&mut round);
            round.clear();
            if let Some(waiter) = stop {
                // Close the store first: whoever waits may reopen the data directory at once.
                drop(self);
                let _ = waiter.send(Ok(()));
                return;
            }
            // The round's answers are with the runtime already (`write`).
            self.store.tidy();
            let behind = self.backlog.load(Ordering::Relaxed) >= self.options.max_backlog / 2;
            if self.options.durability == Durability::Async && !behind {
                // Nobody waits in async mode: let work accumulate for one interval.
                std::thread::sleep(self.options.flush_interval);
            }
        }
    }

    fn take(&mut self, msg: Msg, round: &mut Round) {
        match msg {
            Msg::Account(cell) => {
                // Under the lock: the state and exactly the changes that produced it.
                let mut slot = cell.lock();
                slot.queued = false;
                let state = slot.stored_state();
                // Taken whole: an idle account keeps no burst's capacity.
                let Unwritten { pending, entries } = slot.take_unwritten();
                drop(slot);
                round.batch.entries.append(entries);
                round.batch.accounts.push((String::from(&*cell.id), state));
                for mut p in pending {
                    round.batch.audit.extend(p.audit.take().map(|a| *a));
                    round.batch.idempotency.extend(p.answer.as_ref().map(|a| a.to_row(&cell.id)));
                    round.pending.push(p);
                }
                round.cells.push(cell);
            }
            Msg::Global { price_book, audit, waiter } => {
                if price_book.is_some() {
                    round.batch.price_book = price_book;
                }
                round.batch.audit.extend(audit);
                round.waiters.extend(waiter);
            }
            Msg::Flush(waiter) => round.waiters.push(waiter),
            Msg::Prune(before_ms) => match self.store.prune_requests(before_ms) {
                Ok(pruned) => {
                    self.idempotency.pages_pruned_before(pruned.first_kept_page);
                    tracing::debug!(pages = pruned.pages, "forgot answered request ids past retention")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not prune answered request ids; will retry")
                }
            },
            Msg::Stop(waiter) => round.stop = Some(waiter),
        }
    }

    fn write(&mut self, round: &mut Round) {
        let result = if round.batch.is_empty() { Ok(Default::default()) } else { self.store.write(&mut round.batch) };
        let mut settled = Settled::with_capacity(round.pending.len() + round.waiters.len());
        let mut changes = round.pending.len();
        match result {
            Ok(written) => {
                for p in round.pending.drain(..) {
                    if let Some(pending) = &p.answer {
                        pending.answer.written(written.answers_page);
                    }
                    settled.extend(p.waiter.map(|w| (w, Ok(()))));
                }
                self.idempotency.written_through(written.answers_page);
                settled.extend(round.waiters.drain(..).map(|w| (w, Ok(()))));
            }
            Err(e) => {
                tracing::error!(error = %e, accounts = round.cells.len(), "journal write failed; reloading the affected accounts");
                let mut failed: Vec<Pending> = round.pending.drain(..).collect();
                for cell in &round.cells {
                    failed.extend(self.reload(cell));
                }
                changes = failed.len();
                for p in failed {
                    if let Some(answer) = &p.answer {
                        self.idempotency.forget(&answer.key);
                    }
                    settled.extend(p.waiter.map(|w| (w, Err(e.clone()))));
                }
                settled.extend(round.waiters.drain(..).map(|w| (w, Err(e.clone()))));
            }
        }
        self.backlog.fetch_sub(changes, Ordering::Relaxed);
        self.pacing.owed_from_now();
        if !settled.is_empty() {
            // Fails only once the runtime is gone; its requests are gone with it.
            let _ = self.settled.send(settled);
        }
    }

    /// Puts the account back to its last durable state. Changes made on top of the failed
    /// one are dropped with it and returned so their callers hear of it.
    fn reload(&mut self, cell: &Arc<AccountCell>) -> Vec<Pending> {
        let mut slot = cell.lock();
        match self.store.load_account(&cell.id) {
            Ok(Some(mut account)) => {
                account.restore_deadlines(self.clock.now());
                restore_deadlines_like(slot.account(), &mut account);
                slot.replace(account);
            }
            Ok(None) => slot.gone = true,
            Err(e) => {
                tracing::error!(account = %cell.id, error = %e, "cannot reload account after a failed write; it is suspended until restart");
                slot.account().status = crate::domain::account::AccountStatus::Suspended;
            }
        }
        slot.queued = false;
        // Their ledger entries go with them.
        slot.take_unwritten().pending
    }
}

/// A reloaded account keeps the monotonic deadlines its holds had in memory.
fn restore_deadlines_like(before: &Account, after: &mut Account) {
    after.holds.set_deadlines(|hold| before.holds.get(&hold.id).map(|h| h.deadline_ms));
}
