//! The Metering operations: CheckAndDeduct (and its batch form), Reserve, Commit, Release,
//! Extend. Each decides under one account lock, then waits for durability outside it.

use super::answered::Answered;
use super::cell::{AccountCell, Slot};
use super::outcome::*;
use super::request::*;
use super::{await_last, durability, idem_key, settle, Answer, Change, Durable, Engine, Reply};
use crate::domain::account::Account;
use crate::domain::grant;
use crate::domain::hold::Hold;
use crate::domain::ledger::{Denial, DenialReason, EntryKind, LedgerEntry};
use crate::domain::price::{PriceBook, PriceEntry};
use crate::domain::spend::SpendAsk;
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
        settle(durable, answer).await
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

    pub async fn reserve(&self, req: ReserveRequest) -> Result<Answer<ReserveOutcome>, Error> {
        let t = &req.target;
        let key = idem_key(&t.account_id, &req.request_id);
        self.recall(&key).await?;
        let Some(cell) = self.cell(&t.account_id) else {
            return Ok(fresh(reserve_denied(DenialReason::AccountNotFound, Decimal::ZERO)));
        };
        let book = self.price_book();
        let (durable, answer) = {
            let mut slot = cell.lock();
            if slot.gone {
                return Ok(fresh(reserve_denied(DenialReason::AccountNotFound, Decimal::ZERO)));
            }
            let fingerprint = req.fingerprint();
            if let Some(seen) = self.seen(&key, fingerprint)? {
                return expect_outcome(replayed(&seen), |o| match o {
                    Outcome::Reserve(r) => Some(r),
                    _ => None,
                });
            }
            let now = self.clock.now();
            let price = book.lookup(&t.account_id, &t.action).cloned();
            let account = slot.account();
            let cost = price.as_ref().map(|p| p.cost(t.quantity, account.precision)).transpose()?;
            if account.holds.len() >= self.options.max_holds_per_account {
                return Err(Error::FailedPrecondition(format!(
                    "account {} has {} live reservations, the most allowed (limits.max_holds_per_account); commit or release some first",
                    t.account_id, self.options.max_holds_per_account
                )));
            }
            let mut entries = account.advance(now, &self.ids);
            let outcome = match (&price, cost) {
                (Some(p), Some(cost)) => {
                    let ask = ask_for(t, p, cost);
                    match account.check(&ask, now.wall) {
                        Err(denial) => ReserveOutcome {
                            denial: Some(denial),
                            ..reserve_denied(DenialReason::UnknownAction, account.balance(now.wall))
                        },
                        Ok(()) => {
                            let hold = Hold {
                                id: format!("{}/{}", t.account_id, self.ids.next_string("rs_", now.wall_ms())),
                                request_id: req.request_id.clone(),
                                user_id: t.user_id.clone(),
                                workspace_id: t.workspace_id.clone(),
                                price: p.clone(),
                                price_version: book.version,
                                quantity: t.quantity,
                                credits: Decimal::ZERO,
                                allocations: Vec::new(),
                                overdraft: Decimal::ZERO,
                                meter: None,
                                created_at: now.wall,
                                expires_at: now.wall + chrono::Duration::milliseconds(req.ttl.as_millis() as i64),
                                deadline_ms: now.mono_ms + req.ttl.as_millis() as u64,
                                metadata: t.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                            };
                            let hold = account.reserve(hold, &ask, now.wall);
                            let (id, held, allocations, expires_at) =
                                (hold.id.clone(), hold.credits, hold.allocations.clone(), hold.expires_at);
                            if !self.with_holds.contains_key(&t.account_id) {
                                self.with_holds.insert(t.account_id.clone(), ());
                            }
                            ReserveOutcome {
                                denial: None,
                                reservation_id: id,
                                credits_held: held,
                                allocations,
                                expires_at: Some(expires_at),
                                balance: account.balance(now.wall),
                                ledger_entry_id: String::new(),
                                price_version: book.version,
                            }
                        }
                    }
                }
                _ => reserve_denied(DenialReason::UnknownAction, account.balance(now.wall)),
            };
            let mut entry = self.spend_entry(req.target, Some(req.request_id), price.as_deref(), book.version, now);
            let outcome = ReserveOutcome { ledger_entry_id: entry.id.clone(), price_version: book.version, ..outcome };
            entry.kind = if outcome.denial.is_some() { EntryKind::Denied } else { EntryKind::Reserve };
            entry.denial = outcome.denial.clone();
            entry.credits = outcome.credits_held;
            entry.allocations = outcome.allocations.clone();
            entry.reservation_id = (!outcome.reservation_id.is_empty()).then(|| outcome.reservation_id.clone());
            entries.reserve_exact(1);
            entries.push(entry);
            let answer = Some(Reply { key, fingerprint, outcome: OutcomeRef::Reserve(&outcome), at: now });
            let durable = self.record(&cell, &mut slot, Change { entries, answer, wait: true, ..Change::default() });
            (durable, fresh(outcome))
        };
        settle(durable, answer).await
    }

    pub async fn commit(&self, req: CommitRequest) -> Result<Answer<CommitOutcome>, Error> {
        let fingerprint = req.fingerprint();
        self.on_hold(&req.reservation_id, &req.request_id, fingerprint, |engine, account, now, entries| {
            let hold = account.live_hold(&req.reservation_id).map_err(|e| Error::FailedPrecondition(e.to_string()))?;
            let cost = hold.price.cost(req.quantity, account.precision)?;
            let mut entry = crate::domain::hold::hold_entry(&account.id, hold, EntryKind::Commit, now, &engine.ids);
            // The commit's own metadata wins over the hold's on a shared key.
            entry.metadata = hold.metadata.iter().chain(&req.metadata).map(|(k, v)| (k.clone(), v.clone())).collect();
            let s = account
                .commit(&req.reservation_id, req.quantity, cost, req.is_final, now)
                .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
            entry.quantity = req.quantity;
            entry.request_id = Some(req.request_id.clone());
            entry.credits = s.charged;
            entry.allocations = s.allocations.clone();
            entry.shortfall = s.shortfall;
            if req.is_final {
                entry.metadata.insert("released".into(), s.released.normalize().to_string());
            }
            let outcome = CommitOutcome {
                credits_charged: s.charged,
                credits_released: s.released,
                credits_still_held: s.still_held,
                shortfall: s.shortfall,
                allocations: s.allocations,
                balance: account.balance(now.wall),
                cycle_spend: account.usage.spend,
                ledger_entry_id: entry.id.clone(),
            };
            entries.push(entry);
            Ok(Outcome::Commit(outcome))
        })
        .await
        .and_then(|a| {
            expect_outcome(a, |o| match o {
                Outcome::Commit(x) => Some(x),
                _ => None,
            })
        })
    }

    pub async fn release(&self, req: ReleaseRequest) -> Result<Answer<ReleaseOutcome>, Error> {
        let fingerprint = req.fingerprint();
        self.on_hold(&req.reservation_id, &req.request_id, fingerprint, |engine, account, now, entries| {
            let mut entry = account
                .release(&req.reservation_id, now, &engine.ids)
                .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
            entry.request_id = Some(req.request_id.clone());
            let outcome = ReleaseOutcome {
                credits_released: entry.credits,
                balance: account.balance(now.wall),
                ledger_entry_id: entry.id.clone(),
            };
            entries.push(entry);
            Ok(Outcome::Release(outcome))
        })
        .await
        .and_then(|a| {
            expect_outcome(a, |o| match o {
                Outcome::Release(x) => Some(x),
                _ => None,
            })
        })
    }

    pub async fn extend(&self, req: ExtendRequest) -> Result<Answer<ExtendOutcome>, Error> {
        let fingerprint = req.fingerprint();
        self.on_hold(&req.reservation_id, &req.request_id, fingerprint, |engine, account, now, entries| {
            let account_id = account.id.clone();
            let hold = account
                .extend(&req.reservation_id, req.ttl.as_millis() as u64, now)
                .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
            let expires_at = hold.expires_at;
            let mut entry = crate::domain::hold::hold_entry(&account_id, hold, EntryKind::Extend, now, &engine.ids);
            entry.request_id = Some(req.request_id.clone());
            entry.metadata.insert("expires_at".into(), expires_at.to_rfc3339());
            entries.push(entry);
            Ok(Outcome::Extend(ExtendOutcome { expires_at }))
        })
        .await
        .and_then(|a| {
            expect_outcome(a, |o| match o {
                Outcome::Extend(x) => Some(x),
                _ => None,
            })
        })
    }

    /// The shared shape of Commit, Release and Extend: find the hold's account from the
    /// reservation id, replay or run `op` under its lock, record, wait.
    async fn on_hold(
        &self,
        reservation_id: &str,
        request_id: &str,
        fingerprint: u64,
        op: impl FnOnce(&Engine, &mut Account, Now, &mut Vec<LedgerEntry>) -> Result<Outcome, Error>,
    ) -> Result<Answer<Outcome>, Error> {
        let account_id = reservation_account(reservation_id)
            .ok_or_else(|| Error::invalid("reservation_id", "is not a reservation id returned by Reserve"))?;
        let key = idem_key(account_id, request_id);
        self.recall(&key).await?;
        let cell = self
            .cell(account_id)
            .ok_or_else(|| Error::FailedPrecondition(format!("reservation {reservation_id} does not exist")))?;
        let (durable, answer) = {
            let mut slot = cell.lock();
            if let Some(seen) = self.seen(&key, fingerprint)? {
                return Ok(replayed(&seen));
            }
            let now = self.clock.now();
            let account = slot.account();
            let mut entries = account.advance(now, &self.ids);
            entries.reserve_exact(1);
            let result = op(self, account, now, &mut entries);
            if account.holds.is_empty() {
                self.with_holds.remove(account_id);
            }
            match result {
                Ok(outcome) => {
                    let answer = Some(Reply { key, fingerprint, outcome: outcome.borrowed(), at: now });
                    let durable =
                        self.record(&cell, &mut slot, Change { entries, answer, wait: true, ..Change::default() });
                    (durable, fresh(outcome))
                }
                Err(e) => {
                    // Expiries found on the way are real changes even though this call failed.
                    self.record(&cell, &mut slot, Change::maintenance(entries));
                    return Err(e);
                }
            }
        };
        settle(durable, answer).await
    }

    /// A ledger entry made of the request's own context, moved rather than copied.
    fn spend_entry(
        &self,
        t: SpendTarget,
        request_id: Option<String>,
        price: Option<&PriceEntry>,
        version: u64,
        now: Now,
    ) -> LedgerEntry {
        let mut e =
            LedgerEntry::new(self.ids.next_string("le_", now.wall_ms()), t.account_id, EntryKind::Deduct, now.wall);
        e.user_id = t.user_id;
        e.workspace_id = t.workspace_id;
        e.action = t.action;
        e.quantity = t.quantity;
        e.request_id = request_id;
        e.metadata = t.metadata;
        if let Some(p) = price {
            e.category = p.category.clone();
            e.unit_name = p.unit_name.clone();
            e.unit_price = p.credits_per_unit;
            e.price_version = version;
        }
        e
    }
}

fn ask_for<'a>(t: &'a SpendTarget, price: &'a Arc<PriceEntry>, cost: Credits) -> SpendAsk<'a> {
    SpendAsk {
        user_id: t.user_id.as_deref(),
        workspace_id: t.workspace_id.as_deref(),
        credits: cost,
        meter: price.meter.as_deref().map(|m| (m, t.quantity)),
    }
}

/// Which grants a dry run would draw from, without touching the account.
fn preview_allocations(account: &Account, cost: Credits, now: Now) -> Vec<grant::Allocation> {
    let mut grants = account.grants.clone();
    grant::take(&mut grants, cost, now.wall).0
}

/// Narrows a replayed or fresh generic answer to the operation's own outcome. A request id
/// first used for another operation has another fingerprint, so a mismatch here means the
/// id was reused across operations.
fn expect_outcome<T>(answer: Answer<Outcome>, narrow: impl FnOnce(Outcome) -> Option<T>) -> Result<Answer<T>, Error> {
    let replayed = answer.replayed;
    narrow(answer.outcome)
        .map(|outcome| Answer { outcome, replayed })
        .ok_or_else(|| Error::AlreadyExists("request_id was already used for a different operation".into()))
}

fn fresh<T>(outcome: T) -> Answer<T> {
    Answer { outcome, replayed: false }
}

/// The idempotency key of a deduction; a dry run consumes none.
fn deduct_key(req: &DeductRequest) -> Option<Arc<str>> {
    req.request_id.as_deref().filter(|_| !req.dry_run).map(|rid| idem_key(&req.target.account_id, rid))
}

/// The stored answer to an earlier call, flagged as a replay.
fn replayed(seen: &Answered) -> Answer<Outcome> {
    Answer { outcome: seen.outcome(), replayed: true }
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

fn reserve_denied(reason: DenialReason, balance: Credits) -> ReserveOutcome {
    ReserveOutcome {
        denial: Some(Denial::new(reason)),
        reservation_id: String::new(),
        credits_held: Decimal::ZERO,
        allocations: Vec::new(),
        expires_at: None,
        balance,
        ledger_entry_id: String::new(),
        price_version: 0,
    }
}
