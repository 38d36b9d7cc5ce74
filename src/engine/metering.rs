//! The Metering operations but CheckAndDeduct (`deduct`): Reserve, Commit, Release,
//! Extend. Each decides under one account lock, then waits for durability outside it.

use super::answered::Answered;
use super::outcome::*;
use super::request::*;
use super::{idem_key, Answer, Change, Engine, Reply};
use crate::domain::account::Account;
use crate::domain::hold::Hold;
use crate::domain::ledger::{Denial, DenialReason, EntryKind, LedgerEntry};
use crate::domain::price::PriceEntry;
use crate::domain::spend::SpendAsk;
use crate::domain::{Credits, Now};
use crate::error::Error;
use rust_decimal::Decimal;
use std::sync::Arc;

impl Engine {
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
        self.settle(durable, answer).await
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
        self.settle(durable, answer).await
    }

    /// A ledger entry made of the request's own context, moved rather than copied.
    pub(super) fn spend_entry(
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

pub(super) fn ask_for<'a>(t: &'a SpendTarget, price: &'a Arc<PriceEntry>, cost: Credits) -> SpendAsk<'a> {
    SpendAsk {
        user_id: t.user_id.as_deref(),
        workspace_id: t.workspace_id.as_deref(),
        credits: cost,
        meter: price.meter.as_deref().map(|m| (m, t.quantity)),
    }
}

/// Narrows a replayed or fresh generic answer to the operation's own outcome. A request id
/// first used for another operation has another fingerprint, so a mismatch here means the
/// id was reused across operations.
pub(super) fn expect_outcome<T>(
    answer: Answer<Outcome>,
    narrow: impl FnOnce(Outcome) -> Option<T>,
) -> Result<Answer<T>, Error> {
    let replayed = answer.replayed;
    narrow(answer.outcome)
        .map(|outcome| Answer { outcome, replayed })
        .ok_or_else(|| Error::AlreadyExists("request_id was already used for a different operation".into()))
}

pub(super) fn fresh<T>(outcome: T) -> Answer<T> {
    Answer { outcome, replayed: false }
}

/// The stored answer to an earlier call, flagged as a replay.
pub(super) fn replayed(seen: &Answered) -> Answer<Outcome> {
    Answer { outcome: seen.outcome(), replayed: true }
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
