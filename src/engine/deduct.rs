//! CheckAndDeduct and its batch form: a run of items for one account is decided under one
//! hold of its lock, then waits for durability outside it.

use super::cell::{AccountCell, Slot};
use super::metering::{ask_for, expect_outcome, fresh, replayed};
use super::outcome::*;
use super::request::*;
use super::{await_last, durability, idem_key, Answer, Change, Durable, Engine, Reply};
use crate::domain::account::Account;
use crate::domain::grant;
use crate::domain::ledger::{Denial, DenialReason, EntryKind};
use crate::domain::price::PriceBook;
use crate::domain::{Credits, Now};
use crate::error::Error;
use rust_decimal::Decimal;
use std::sync::Arc;

impl Engine {
    pub async fn check_and_deduct(&self, req: DeductRequest) -> Result<Answer<DeductOutcome>, Error> {
        let key = deduct_key(&req);
        if let Some(k) = &key {
            self.recall(k).await?;
        }
        let (durable, answer) = self.decide_deduct(req, key)?;
        self.settle(durable, answer).await
    }

    /// Decides every item first, then waits: the whole batch rides one group commit.
    /// Consecutive items for one account are decided under one hold of its lock, at one
    /// instant, and wait together on the last change they queued (`await_last`).
    pub async fn batch_check_and_deduct(
        &self,
        items: Vec<Result<DeductRequest, Error>>,
    ) -> Vec<Result<Answer<DeductOutcome>, Error>> {
        // Answers memory let go of are read back first, off the request thread (rarely any).
        let mut keyed = Vec::with_capacity(items.len());
        for item in items {
            keyed.push(match item {
                Ok(req) => {
                    let key = deduct_key(&req);
                    let recalled = match &key {
                        Some(k) => self.recall(k).await,
                        None => Ok(()),
                    };
                    recalled.map(|()| (req, key))
                }
                Err(e) => Err(e),
            });
        }
        // Each answer, flagged when its item queued a change and so shares its run's wait.
        let mut answers: Vec<Result<(Answer<DeductOutcome>, bool), Error>> = Vec::with_capacity(keyed.len());
        let mut runs = Vec::new();
        let mut items = keyed.into_iter().peekable();
        while let Some(item) = items.next() {
            let first = match item {
                Ok(first) => first,
                Err(e) => {
                    answers.push(Err(e));
                    continue;
                }
            };
            let from = answers.len();
            let same_account = |next: &Result<(DeductRequest, _), Error>| {
                next.as_ref().is_ok_and(|(next, _)| next.target.account_id == first.0.target.account_id)
            };
            let mut run = vec![];
            while let Some(next) = items.next_if(same_account) {
                run.extend(next.ok());
            }
            let durable = self.deduct_run(std::iter::once(first).chain(run), |answer| answers.push(answer));
            runs.push((from..answers.len(), durable));
        }
        for (run, durable) in runs {
            if let Err(e) = durability(durable).await {
                for answer in &mut answers[run] {
                    if matches!(answer, Ok((_, true))) {
                        *answer = Err(Error::not_durable(&e));
                    }
                }
            }
        }
        self.give_way();
        answers.into_iter().map(|answer| answer.map(|(answer, _)| answer)).collect()
    }

    /// `deduct_run` of one item, without the batch's bookkeeping: the answer is hundreds of
    /// bytes, and handed over through it, its copies cost 500 instructions per call.
    fn decide_deduct(
        &self,
        req: DeductRequest,
        key: Option<Arc<str>>,
    ) -> Result<(Durable, Answer<DeductOutcome>), Error> {
        let Some(cell) = self.cell(&req.target.account_id) else {
            return Ok((None, fresh(deduct_not_found())));
        };
        let book = self.price_book();
        let mut slot = cell.lock();
        if slot.gone {
            return Ok((None, fresh(deduct_not_found())));
        }
        let (queued, answer) = self.deduct_locked(&cell, &mut slot, &book, self.clock.now(), req, key)?;
        Ok(((queued == Some(true)).then(|| await_last(&mut slot)), answer))
    }

    /// Decides `run`, items for one account in order, under one hold of its lock, at one
    /// instant. Gives each item's answer to `answer`, flagged when the item queued a change;
    /// returns what those changes wait on together.
    fn deduct_run(
        &self,
        run: impl Iterator<Item = (DeductRequest, Option<Arc<str>>)>,
        mut answer: impl FnMut(Result<(Answer<DeductOutcome>, bool), Error>),
    ) -> Durable {
        let mut run = run.peekable();
        let cell = self.cell(&run.peek()?.0.target.account_id);
        let book = self.price_book();
        let mut slot = cell.as_ref().map(|cell| cell.lock()).filter(|slot| !slot.gone);
        let (Some(cell), Some(slot)) = (&cell, &mut slot) else {
            // No such account, or its creation never became durable.
            run.for_each(|_| answer(Ok((fresh(deduct_not_found()), false))));
            return None;
        };
        let now = self.clock.now();
        let mut must_wait = false;
        for (req, key) in run {
            answer(self.deduct_locked(cell, slot, &book, now, req, key).map(|(queued, decided)| {
                must_wait |= queued == Some(true);
                (decided, queued.is_some())
            }));
        }
        must_wait.then(|| await_last(slot))
    }

    /// One deduction under the account's lock. `key`: the request's idempotency key
    /// (`deduct_key`), made once by the caller. Takes the request whole: its strings move
    /// into the ledger entry. Returns what `queue_change` said of the change it queued.
    fn deduct_locked(
        &self,
        cell: &Arc<AccountCell>,
        slot: &mut Slot,
        book: &PriceBook,
        now: Now,
        req: DeductRequest,
        key: Option<Arc<str>>,
    ) -> Result<(Option<bool>, Answer<DeductOutcome>), Error> {
        let t = &req.target;
        let fingerprint = req.fingerprint();
        if let Some(k) = &key {
            if let Some(seen) = self.seen(k, fingerprint)? {
                let narrowed = expect_outcome(replayed(&seen), |o| match o {
                    Outcome::Deduct(d) => Some(d),
                    _ => None,
                });
                return narrowed.map(|answer| (None, answer));
            }
        }
        let price = book.lookup(&t.account_id, &t.action).cloned();
        // Validate the cost before anything moves: an overflowing quantity changes nothing.
        let account = slot.account();
        let cost = price.as_ref().map(|p| p.cost(t.quantity, account.precision)).transpose()?;
        let mut entries = account.advance(now, &self.ids);
        let (denial, charged, allocations) = match (&price, cost) {
            (Some(p), Some(cost)) => {
                let ask = ask_for(t, p, cost);
                match account.check(&ask, now.wall) {
                    Err(denial) => (Some(denial), Decimal::ZERO, Vec::new()),
                    Ok(()) if req.dry_run => (None, cost, preview_allocations(account, cost, now)),
                    Ok(()) => (None, cost, account.deduct(&ask, now.wall)),
                }
            }
            _ => (Some(Denial::new(DenialReason::UnknownAction)), Decimal::ZERO, Vec::new()),
        };
        let mut outcome = DeductOutcome {
            denial: denial.clone(),
            credits_charged: charged,
            allocations: allocations.clone(),
            balance: account.balance(now.wall),
            cycle_spend: account.usage.spend,
            ledger_entry_id: String::new(),
            price_version: book.version,
        };
        if req.dry_run {
            // Housekeeping found on the way is kept; the dry run itself waits for nothing.
            self.queue_change(cell, slot, Change::maintenance(entries));
            return Ok((None, fresh(outcome)));
        }
        let mut entry = self.spend_entry(req.target, req.request_id, price.as_deref(), book.version, now);
        outcome.ledger_entry_id = entry.id.clone();
        entry.kind = if denial.is_some() { EntryKind::Denied } else { EntryKind::Deduct };
        entry.denial = denial;
        entry.credits = charged;
        entry.allocations = allocations;
        // Usually the only entry: the default growth would make room for four.
        entries.reserve_exact(1);
        entries.push(entry);
        let answer = key.map(|key| Reply { key, fingerprint, outcome: OutcomeRef::Deduct(&outcome), at: now });
        let queued = self.queue_change(cell, slot, Change { entries, answer, ..Change::default() });
        Ok((queued, fresh(outcome)))
    }
}

/// The idempotency key of a deduction; a dry run consumes none.
fn deduct_key(req: &DeductRequest) -> Option<Arc<str>> {
    req.request_id.as_deref().filter(|_| !req.dry_run).map(|rid| idem_key(&req.target.account_id, rid))
}

fn deduct_not_found() -> DeductOutcome {
    DeductOutcome {
        denial: Some(Denial::new(DenialReason::AccountNotFound)),
        credits_charged: Decimal::ZERO,
        allocations: Vec::new(),
        balance: Decimal::ZERO,
        cycle_spend: Decimal::ZERO,
        ledger_entry_id: String::new(),
        price_version: 0,
    }
}

/// Which grants a dry run would draw from, without touching the account.
fn preview_allocations(account: &Account, cost: Credits, now: Now) -> Vec<grant::Allocation> {
    let mut grants = account.grants.clone();
    grant::take(&mut grants, cost, now.wall).0
}
