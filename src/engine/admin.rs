//! Admin operations: accounts, plans, grants, limits and prices. Each change is recorded in
//! the audit log (who, what, when, before → after) in the same write as the change.

use super::cell::AccountCell;
use super::outcome::{GrantOutcome, Outcome, OutcomeRef, RevokeOutcome};
use super::request::Fingerprint;
use super::views::BalanceView;
use super::{idem_key, Answer, Change, Engine, Reply};
use crate::domain::account::{Account, AccountStatus, OveragePolicy, Plan, SubscriptionStatus};
use crate::domain::grant::{Grant, GrantKind, Money};
use crate::domain::limits::Limits;
use crate::domain::price::{PriceChange, PriceEntry};
use crate::domain::Credits;
use crate::error::Error;
use chrono::{DateTime, Utc};
use dashmap::mapref::entry::Entry;
use serde::Serialize;
use std::sync::Arc;

/// Who asks, and under which request id (admin calls may omit it).
#[derive(Clone, Debug)]
pub struct Caller {
    pub actor: String,
    pub request_id: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AccountSpec {
    pub account_id: String,
    pub display_name: String,
    pub plan: Option<Plan>,
    pub subscription: SubscriptionStatus,
    pub limits: Limits,
    pub overage_policy: OveragePolicy,
    pub precision: u32,
    pub credit_currency: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanTiming {
    Now,
    NextCycle,
}

#[derive(Clone, Debug, Default)]
pub struct AccountUpdate {
    pub display_name: Option<String>,
    pub status: Option<AccountStatus>,
    pub plan: Option<(Plan, PlanTiming)>,
    pub subscription: Option<SubscriptionStatus>,
    pub overage_policy: Option<OveragePolicy>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GrantSpec {
    pub account_id: String,
    pub kind: GrantKind,
    pub amount: Credits,
    pub priority: Option<u32>,
    pub effective_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub external_reference: String,
    pub money_paid: Option<Money>,
    pub comment: String,
}

/// The settings part of an account, as shown in audit records.
#[derive(Serialize)]
struct Settings<'a> {
    display_name: &'a str,
    status: AccountStatus,
    plan: &'a Option<Plan>,
    pending_plan: &'a Option<Box<Plan>>,
    subscription: SubscriptionStatus,
    limits: &'a Limits,
    overage_policy: OveragePolicy,
    precision: u32,
    credit_currency: &'a Option<String>,
}

fn settings_json(a: &Account) -> String {
    serde_json::to_string(&Settings {
        display_name: &a.display_name,
        status: a.status,
        plan: &a.plan,
        pending_plan: &a.pending_plan,
        subscription: a.subscription,
        limits: &a.limits,
        overage_policy: a.overage_policy,
        precision: a.precision,
        credit_currency: &a.credit_currency,
    })
    .expect("settings serialize")
}

fn json_fingerprint(op: &str, value: &impl Serialize) -> u64 {
    Fingerprint::default().str(op).str(&serde_json::to_string(value).expect("serializes")).finish()
}

impl Engine {
    pub async fn create_account(&self, spec: AccountSpec, caller: &Caller) -> Result<Account, Error> {
        spec.limits.validate()?;
        let fingerprint = json_fingerprint("create_account", &spec);
        let key = caller.request_id.as_deref().map(|rid| idem_key(&spec.account_id, rid));
        if let Some(k) = &key {
            self.recall(k).await?;
        }
        let now = self.clock.now();
        let mut blank = Account::blank(&spec.account_id, now.wall);
        blank.display_name = spec.display_name.clone();
        blank.plan = spec.plan.clone();
        blank.subscription = if spec.plan.is_some() { spec.subscription } else { SubscriptionStatus::Expired };
        blank.limits = spec.limits.clone();
        blank.overage_policy = spec.overage_policy;
        blank.precision = spec.precision;
        blank.credit_currency = spec.credit_currency.clone();

        let cell = match self.accounts.entry(spec.account_id.clone()) {
            Entry::Vacant(v) => v.insert(Arc::new(AccountCell::new(blank.clone()))).clone(),
            Entry::Occupied(o) => {
                let existing = o.get().clone();
                drop(o);
                let mut slot = existing.lock();
                if !slot.gone {
                    if let Some(k) = &key {
                        if self.seen(k, fingerprint)?.is_some() {
                            return Ok(slot.account().clone());
                        }
                    }
                    return Err(Error::AlreadyExists(format!(
                        "account {} already exists; use UpdateAccount to change it",
                        spec.account_id
                    )));
                }
                slot.gone = false;
                slot.replace(blank.clone());
                drop(slot);
                existing
            }
        };
        let (durable, account) = {
            let mut slot = cell.lock();
            let (account, entries) = blank.open(now, &self.ids);
            slot.replace(account);
            let audit = self.audit(
                &caller.actor,
                "CreateAccount",
                &spec.account_id,
                caller.request_id.as_deref(),
                "null".into(),
                settings_json(slot.account()),
            );
            let answer = key.map(|key| Reply { key, fingerprint, outcome: OutcomeRef::AccountChanged, at: now });
            let durable = self.record(
                &cell,
                &mut slot,
                Change { entries, audit: Some(Box::new(audit)), answer, wait: true, ..Change::default() },
            );
            (durable, slot.account().clone())
        };
        Ok(self.settle(durable, Answer { outcome: account, replayed: false }).await?.outcome)
    }

    pub fn get_account(&self, account_id: &str) -> Result<Account, Error> {
        self.read_account(account_id, |a, _| a.clone()).ok_or_else(|| not_found(account_id))
    }

    pub fn get_balance(&self, account_id: &str) -> Option<BalanceView> {
        self.read_account(account_id, BalanceView::of)
    }

    pub async fn update_account(
        &self,
        account_id: &str,
        update: AccountUpdate,
        caller: &Caller,
    ) -> Result<Account, Error> {
        self.change_settings(account_id, "UpdateAccount", caller, |account, engine, now, entries| {
            if let Some(name) = update.display_name {
                account.display_name = name;
            }
            if let Some(status) = update.status {
                account.status = status;
            }
            if let Some(policy) = update.overage_policy {
                account.overage_policy = policy;
            }
            if let Some(sub) = update.subscription {
                account.subscription = sub;
            }
            if let Some((plan, timing)) = update.plan {
                match &account.plan {
                    None => account.plan = Some(plan),
                    Some(current) => {
                        let upgrade = plan.credits_per_cycle > current.credits_per_cycle;
                        if upgrade && timing == PlanTiming::Now {
                            let difference = plan.credits_per_cycle - current.credits_per_cycle;
                            if account.plan_issued_for == Some(account.cycle.start) {
                                let mut g = Grant::new(
                                    engine.ids.next_string("gr_", now.wall_ms()),
                                    GrantKind::Plan,
                                    difference,
                                    now.wall,
                                    now.wall,
                                );
                                g.expires_at = Some(account.cycle.end);
                                g.created_by = "plan_upgrade".into();
                                let mut new = account.add_grant(g, now, &engine.ids);
                                new[0].metadata.insert("reason".into(), "plan_upgrade".into());
                                new[0].metadata.insert("plan".into(), plan.name.clone());
                                entries.append(&mut new);
                            }
                            account.plan = Some(plan);
                            account.pending_plan = None;
                        } else {
                            account.pending_plan = Some(Box::new(plan));
                        }
                    }
                }
            }
            // A subscription that just became active (or a first plan) gets this cycle's grant.
            account.issue_plan_grant(now, &engine.ids, entries);
            Ok(())
        })
        .await
    }

    pub async fn set_limits(&self, account_id: &str, limits: Limits, caller: &Caller) -> Result<Account, Error> {
        limits.validate()?;
        self.change_settings(account_id, "SetLimits", caller, |account, _, _, _| {
            account.limits = limits;
            Ok(())
        })
        .await
    }

    /// Applies a settings change under the account's lock, audited and durable.
    async fn change_settings(
        &self,
        account_id: &str,
        operation: &str,
        caller: &Caller,
        change: impl FnOnce(
            &mut Account,
            &Engine,
            crate::domain::Now,
            &mut Vec<crate::domain::ledger::LedgerEntry>,
        ) -> Result<(), Error>,
    ) -> Result<Account, Error> {
        let cell = self.cell(account_id).ok_or_else(|| not_found(account_id))?;
        let (durable, account) = {
            let mut slot = cell.lock();
            if slot.gone {
                return Err(not_found(account_id));
            }
            let now = self.clock.now();
            let mut entries = slot.account().advance(now, &self.ids);
            let before = settings_json(slot.account());
            let mut draft = slot.account().clone();
            let result = change(&mut draft, self, now, &mut entries);
            if let Err(e) = result {
                self.record(&cell, &mut slot, Change::maintenance(entries));
                return Err(e);
            }
            slot.replace(draft);
            let audit = self.audit(
                &caller.actor,
                operation,
                account_id,
                caller.request_id.as_deref(),
                before,
                settings_json(slot.account()),
            );
            let durable = self.record(
                &cell,
                &mut slot,
                Change { entries, audit: Some(Box::new(audit)), state_changed: true, wait: true, ..Change::default() },
            );
            (durable, slot.account().clone())
        };
        Ok(self.settle(durable, Answer { outcome: account, replayed: false }).await?.outcome)
    }

    pub async fn grant_credits(&self, spec: GrantSpec, caller: &Caller) -> Result<Answer<GrantOutcome>, Error> {
        let request_id = caller
            .request_id
            .as_deref()
            .ok_or_else(|| Error::invalid("request_id", "is required: a retried top-up must not add credits twice"))?;
        let key = idem_key(&spec.account_id, request_id);
        self.recall(&key).await?;
        let fingerprint = json_fingerprint("grant", &spec);
        let cell = self.cell(&spec.account_id).ok_or_else(|| not_found(&spec.account_id))?;
        let (durable, answer) = {
            let mut slot = cell.lock();
            if slot.gone {
                return Err(not_found(&spec.account_id));
            }
            if let Some(seen) = self.seen(&key, fingerprint)? {
                return match seen.outcome() {
                    Outcome::Grant(g) => Ok(Answer { outcome: g, replayed: true }),
                    _ => Err(Error::AlreadyExists("request_id was already used for a different operation".into())),
                };
            }
            let now = self.clock.now();
            let effective_at = spec.effective_at.unwrap_or(now.wall);
            if let Some(end) = spec.expires_at {
                if end <= effective_at.max(now.wall) {
                    return Err(Error::invalid("expires_at", "must be later than now and than effective_at"));
                }
            }
            let mut entries = slot.account().advance(now, &self.ids);
            let mut grant =
                Grant::new(self.ids.next_string("gr_", now.wall_ms()), spec.kind, spec.amount, effective_at, now.wall);
            grant.priority = spec.priority.unwrap_or(spec.kind.default_priority());
            grant.expires_at = spec.expires_at;
            grant.external_reference = spec.external_reference.clone();
            grant.money_paid = spec.money_paid.clone();
            grant.created_by = caller.actor.clone();
            let shown = grant.clone();
            let mut new = slot.account().add_grant(grant, now, &self.ids);
            let entry = &mut new[0];
            entry.request_id = Some(request_id.to_string());
            if !spec.comment.is_empty() {
                entry.metadata.insert("comment".into(), spec.comment.clone());
            }
            if !spec.external_reference.is_empty() {
                entry.metadata.insert("external_reference".into(), spec.external_reference.clone());
            }
            if let Some(m) = &spec.money_paid {
                entry.metadata.insert("money_paid".into(), format!("{} {}", m.amount.normalize(), m.currency));
            }
            let outcome = GrantOutcome {
                grant: shown,
                balance: slot.account().balance(now.wall),
                ledger_entry_id: entry.id.clone(),
            };
            entries.append(&mut new);
            let audit = self.audit(
                &caller.actor,
                "GrantCredits",
                &spec.account_id,
                Some(request_id),
                "null".into(),
                serde_json::to_string(&outcome.grant).expect("grant serializes"),
            );
            let answer = Some(Reply { key, fingerprint, outcome: OutcomeRef::Grant(&outcome), at: now });
            let durable = self.record(
                &cell,
                &mut slot,
                Change { entries, audit: Some(Box::new(audit)), answer, wait: true, ..Change::default() },
            );
            (durable, Answer { outcome, replayed: false })
        };
        self.settle(durable, answer).await
    }

    pub async fn revoke_grant(
        &self,
        account_id: &str,
        grant_id: &str,
        reason: &str,
        caller: &Caller,
    ) -> Result<Answer<RevokeOutcome>, Error> {
        let request_id = caller.request_id.as_deref().ok_or_else(|| Error::invalid("request_id", "is required"))?;
        let key = idem_key(account_id, request_id);
        self.recall(&key).await?;
        let fingerprint = Fingerprint::default().str("revoke").str(grant_id).str(reason).finish();
        let cell = self.cell(account_id).ok_or_else(|| not_found(account_id))?;
        let (durable, answer) = {
            let mut slot = cell.lock();
            if slot.gone {
                return Err(not_found(account_id));
            }
            if let Some(seen) = self.seen(&key, fingerprint)? {
                return match seen.outcome() {
                    Outcome::Revoke(r) => Ok(Answer { outcome: r, replayed: true }),
                    _ => Err(Error::AlreadyExists("request_id was already used for a different operation".into())),
                };
            }
            let now = self.clock.now();
            let mut entries = slot.account().advance(now, &self.ids);
            let before = slot.account().grants.iter().find(|g| g.id == grant_id).cloned();
            let Some(before) = before else {
                self.record(&cell, &mut slot, Change::maintenance(entries));
                return Err(Error::NotFound(format!("account {account_id} has no grant {grant_id} with credits left")));
            };
            let Some((revoked, mut new)) = slot.account().revoke_grant(grant_id, now, &self.ids) else {
                self.record(&cell, &mut slot, Change::maintenance(entries));
                return Err(Error::FailedPrecondition(format!("grant {grant_id} is already revoked")));
            };
            let mut after = before.clone();
            after.is_revoked = true;
            after.remaining -= revoked;
            after.revoked += revoked;
            for e in &mut new {
                e.request_id = Some(request_id.to_string());
                e.metadata.insert("reason".into(), reason.to_string());
            }
            let ledger_entry_id = new.first().map(|e| e.id.clone()).unwrap_or_default();
            entries.append(&mut new);
            let audit = self.audit(
                &caller.actor,
                "RevokeGrant",
                account_id,
                Some(request_id),
                serde_json::to_string(&before).expect("grant serializes"),
                serde_json::to_string(&after).expect("grant serializes"),
            );
            let outcome = RevokeOutcome {
                grant: after,
                credits_revoked: revoked,
                balance: slot.account().balance(now.wall),
                ledger_entry_id,
            };
            let answer = Some(Reply { key, fingerprint, outcome: OutcomeRef::Revoke(&outcome), at: now });
            let durable = self.record(
                &cell,
                &mut slot,
                Change { entries, audit: Some(Box::new(audit)), answer, state_changed: true, wait: true },
            );
            (durable, Answer { outcome, replayed: false })
        };
        self.settle(durable, answer).await
    }

    /// Applies a price change and returns the new version.
    pub async fn upsert_prices(&self, change: PriceChange, caller: &Caller) -> Result<u64, Error> {
        if let Some(account) = &change.account_id {
            if self.cell(account).is_none() {
                return Err(not_found(account));
            }
        }
        let _one_writer = self.price_writes.lock().await;
        let current = self.price_book();
        let next = Arc::new(current.apply(&change));
        let scope = change.account_id.as_deref();
        let before = serde_json::to_string(&current.list(scope)).expect("prices serialize");
        let after = serde_json::to_string(&next.list(scope)).expect("prices serialize");
        let audit =
            self.audit(&caller.actor, "UpsertPrices", scope.unwrap_or(""), caller.request_id.as_deref(), before, after);
        // The new version is written before anyone prices with it, so no ledger entry can
        // name a version the store does not have.
        let written = self.journal.write_global(Some(next.clone()), Some(audit));
        match written.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::not_durable(&e)),
            Err(_) => return Err(Error::Unavailable("the journal writer stopped".into())),
        }
        *self.prices.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        Ok(next.version)
    }

    pub fn list_prices(&self, account_id: Option<&str>) -> (u64, Vec<PriceEntry>) {
        let book = self.price_book();
        (book.version, book.list(account_id))
    }
}

fn not_found(account_id: &str) -> Error {
    Error::NotFound(format!("account {account_id} does not exist; create it with CreateAccount"))
}
