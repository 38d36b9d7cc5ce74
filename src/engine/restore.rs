//! Start-up: the engine's accounts rebuilt from the store. Each stored state goes into its
//! cell compact (see `cell`) as the store reads it, with its holds' deadlines placed from
//! the facts at its front, without decoding the account; with more than one core, helper
//! threads compress while the store reads on.

use super::cell::AccountCell;
use super::idempotency::Idempotency;
use super::Map;
use crate::domain::account::deadline_at;
use crate::domain::Now;
use crate::store::{account_facts, decode_account, AccountFacts, Recovered, Store, StoreError};
use std::sync::mpsc;
use std::sync::Arc;

/// What the engine starts from.
pub struct Restored {
    pub(super) accounts: Map<String, Arc<AccountCell>>,
    /// Accounts with live holds: the expiry sweep visits only these.
    pub(super) with_holds: Map<String, ()>,
    pub recovered: Recovered,
}

impl Restored {
    /// Reads the accounts and the prices, and puts the request ids answered since
    /// `answers_since_ms` into `answers`. `now` places the deadlines of live holds on this
    /// process's monotonic clock.
    pub fn from_store(
        store: &mut dyn Store,
        answers: &Idempotency,
        answers_since_ms: u64,
        now: Now,
    ) -> Result<Restored, StoreError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let restored = Self::with_helpers(store, now, cores.min(4) - 1)?;
        answers.restore_from(store, answers_since_ms)?;
        Ok(restored)
    }

    fn with_helpers(store: &mut dyn Store, now: Now, helpers: usize) -> Result<Restored, StoreError> {
        let accounts = Map::with_capacity_and_hasher(store.account_count()?, Default::default());
        let table = Table { accounts, with_holds: Map::default(), now };
        if helpers == 0 {
            store.each_account(&mut |state| table.restore(state))?;
        } else {
            table.restore_in_parallel(store, helpers)?;
        }
        let recovered = store.recover()?;
        Ok(Restored { accounts: table.accounts, with_holds: table.with_holds, recovered })
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }
}

struct Table {
    accounts: Map<String, Arc<AccountCell>>,
    with_holds: Map<String, ()>,
    now: Now,
}

/// Stored states copied out of the store's rows, back to back, for a helper to restore.
#[derive(Default)]
struct Chunk {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

/// Big enough that handing a chunk over costs nothing next to compressing it.
const CHUNK_BYTES: usize = 256 << 10;

impl Table {
    /// Nothing is in use yet: every account starts compact, decoded on first use. Its facts
    /// are read off the front of its state; only the first stored form is decoded for them.
    fn restore(&self, state: &[u8]) -> Result<(), StoreError> {
        let (id, facts) = match account_facts(state)? {
            Some((id, facts)) => (id.to_string(), facts),
            None => {
                let account = decode_account(state)?;
                let facts = AccountFacts::of(&account);
                (account.id, facts)
            }
        };
        if !facts.hold_expiries.is_empty() {
            self.with_holds.insert(id.clone(), ());
        }
        let deadlines = facts.hold_expiries.iter().map(|&at| deadline_at(at, self.now)).collect();
        let cell = AccountCell::restored(id.as_str().into(), state, deadlines, facts.cycle_end);
        self.accounts.insert(id, Arc::new(cell));
        Ok(())
    }

    fn restore_chunk(&self, chunk: &Chunk) -> Result<(), StoreError> {
        let mut start = 0;
        for &end in &chunk.ends {
            self.restore(&chunk.bytes[start..end])?;
            start = end;
        }
        Ok(())
    }

    /// The store reads on this thread; chunks of states go round-robin to this thread and
    /// to `helpers` threads, each restoring into the shared map. The store hands each account
    /// over once, so the order in which threads insert does not matter.
    fn restore_in_parallel(&self, store: &mut dyn Store, helpers: usize) -> Result<(), StoreError> {
        std::thread::scope(|scope| {
            let mut lanes = Vec::with_capacity(helpers);
            for _ in 0..helpers {
                let (tx, rx) = mpsc::sync_channel::<Chunk>(2);
                let helper = scope.spawn(move || -> Result<(), StoreError> {
                    // Keeps receiving after an error, so the reader never blocks on a full lane.
                    let mut result = Ok(());
                    for chunk in rx {
                        if result.is_ok() {
                            result = self.restore_chunk(&chunk);
                        }
                    }
                    result
                });
                lanes.push((tx, helper));
            }
            let mut chunk = Chunk::default();
            let mut turn = 0;
            let read = store.each_account(&mut |state| {
                chunk.bytes.extend_from_slice(state);
                chunk.ends.push(chunk.bytes.len());
                if chunk.bytes.len() >= CHUNK_BYTES {
                    let full = std::mem::take(&mut chunk);
                    turn = (turn + 1) % (helpers + 1);
                    match lanes.get(turn) {
                        // A lane closes only when its helper is gone; its join reports why.
                        Some((tx, _)) => drop(tx.send(full)),
                        None => self.restore_chunk(&full)?,
                    }
                }
                Ok(())
            });
            let rest = read.and_then(|()| self.restore_chunk(&chunk));
            lanes
                .into_iter()
                .map(|(tx, helper)| {
                    drop(tx);
                    helper
                        .join()
                        .unwrap_or_else(|_| Err(StoreError::Failed("a start-up helper thread panicked".into())))
                })
                .fold(rest, Result::and)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::Account;
    use crate::domain::hold::Hold;
    use crate::store::embedded::{EmbeddedStore, Synchronous};
    use crate::store::{encode_account, Batch};

    /// Accounts large enough that they fill several chunks; every tenth has a hold.
    fn store_with_accounts(n: usize) -> (tempfile::TempDir, EmbeddedStore) {
        store_with(n, encode_account, chrono::Utc::now())
    }

    /// `n` accounts made at `now`, every tenth with a hold, stored in the form `encode` makes.
    fn store_with(
        n: usize,
        encode: fn(&Account) -> Vec<u8>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
        let accounts = (0..n)
            .map(|i| {
                let mut a = Account::blank(&format!("acct-{i:05}"), now);
                a.display_name = "x".repeat(4000);
                if i % 10 == 0 {
                    let hold = Hold::sample(&format!("rs_{i}"), now, now + chrono::Duration::seconds(60));
                    a.holds.insert(hold);
                }
                (a.id.clone(), encode(&a))
            })
            .collect();
        store.write(&mut Batch { accounts, ..Batch::default() }).unwrap();
        (dir, store)
    }

    #[test]
    fn helpers_restore_exactly_what_one_thread_does() {
        let (_dir, mut store) = store_with_accounts(500);
        let now = Now { wall: chrono::Utc::now(), mono_ms: 1_000 };
        let alone = Restored::with_helpers(&mut store, now, 0).unwrap();
        let helped = Restored::with_helpers(&mut store, now, 2).unwrap();
        assert_eq!((alone.account_count(), helped.account_count()), (500, 500));
        assert_eq!((alone.with_holds.len(), helped.with_holds.len()), (50, 50));
        for entry in alone.accounts.iter() {
            let other = helped.accounts.get(entry.key()).expect("restored by the helpers too");
            let (mut mine, mut theirs) = (entry.value().lock(), other.lock());
            assert!(mine.is_compact() && theirs.is_compact(), "nothing is in use at start-up");
            assert_eq!(*mine.account(), *theirs.account());
            for (_, hold) in mine.account().holds.iter() {
                let left = hold.deadline_ms - now.mono_ms;
                assert!(left > 50_000 && left <= 60_000, "deadline placed on this process's clock: {left} ms left");
            }
        }
    }

    #[test]
    fn the_first_stored_form_restores_as_this_one_does() {
        let made = chrono::Utc::now();
        let (_first_dir, mut first) = store_with(200, |a| postcard::to_stdvec(a).unwrap(), made);
        let (_dir, mut current) = store_with(200, encode_account, made);
        let now = Now { wall: made + chrono::Duration::seconds(1), mono_ms: 1_000 };
        let old = Restored::with_helpers(&mut first, now, 0).unwrap();
        let new = Restored::with_helpers(&mut current, now, 0).unwrap();
        assert_eq!((old.with_holds.len(), new.with_holds.len()), (20, 20));
        for entry in new.accounts.iter() {
            let other = old.accounts.get(entry.key()).expect("restored from the first form too");
            let (mut mine, mut theirs) = (entry.value().lock(), other.lock());
            assert_eq!(mine.next_hold_deadline(), theirs.next_hold_deadline());
            if let Some(deadline) = mine.next_hold_deadline() {
                assert_eq!(deadline, now.mono_ms + 59_000, "60 s holds, restored 1 s after they were made");
            }
            assert_eq!(mine.cycle_end(), theirs.cycle_end());
            assert_eq!(*mine.account(), *theirs.account());
        }
    }
}
