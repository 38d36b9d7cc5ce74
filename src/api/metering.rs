//! `creditd.v1.Metering`: the hot path.

use super::convert::{self, allocations, credits, decision, timestamp};
use crate::engine::outcome::{DeductOutcome, ReserveOutcome};
use crate::engine::request::{CommitRequest, DeductRequest, ExtendRequest, ReleaseRequest, ReserveRequest};
use crate::engine::{Answer, Engine};
use crate::error::Error;
use crate::proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct MeteringService {
    engine: Arc<Engine>,
    max_batch_items: usize,
}

impl MeteringService {
    pub fn new(engine: Arc<Engine>, max_batch_items: usize) -> Self {
        MeteringService { engine, max_batch_items }
    }
}

fn deduct_request(r: pb::CheckAndDeductRequest) -> Result<DeductRequest, Error> {
    let pb::CheckAndDeductRequest {
        account_id,
        user_id,
        workspace_id,
        action,
        quantity,
        metadata,
        request_id,
        dry_run,
        ..
    } = r;
    let target = convert::spend_target(account_id, user_id, workspace_id, action, quantity, metadata)?;
    // A dry run changes nothing, so it needs no request id; when one is given it is checked.
    let request_id = if dry_run && request_id.is_empty() { None } else { Some(convert::request_id(request_id)?) };
    Ok(DeductRequest { request_id, target, dry_run })
}

/// The account to name in a denial turned into an error, kept only when one is asked for.
fn denial_account(r: &pb::CheckAndDeductRequest) -> Option<String> {
    r.deny_as_error.then(|| r.account_id.clone())
}

fn deduct_response(answer: Answer<DeductOutcome>) -> pb::CheckAndDeductResponse {
    let o = answer.outcome;
    let (decision, denial_reason, denied_meter) = decision(&o.denial);
    pb::CheckAndDeductResponse {
        decision,
        denial_reason,
        denied_meter,
        credits_charged: credits(o.credits_charged),
        allocations: allocations(&o.allocations),
        balance: credits(o.balance),
        cycle_spend: credits(o.cycle_spend),
        ledger_entry_id: o.ledger_entry_id,
        replayed: answer.replayed,
        price_version: o.price_version,
    }
}

/// With `deny_as_error`, a denial becomes RESOURCE_EXHAUSTED carrying a QuotaFailure, so
/// clients can tell "out of credits" from any other error.
fn denial_as_error(account_id: &str, denial: &crate::domain::ledger::Denial) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let description = match &denial.meter {
        Some(m) => format!("{}: meter {m}", denial.reason.as_str()),
        None => denial.reason.as_str().to_string(),
    };
    let details = ErrorDetails::with_quota_failure_violation(format!("account:{account_id}"), description.clone());
    Status::with_error_details(tonic::Code::ResourceExhausted, format!("denied: {description}"), details)
}

#[tonic::async_trait]
impl pb::metering_server::Metering for MeteringService {
    async fn check_and_deduct(
        &self,
        request: Request<pb::CheckAndDeductRequest>,
    ) -> Result<Response<pb::CheckAndDeductResponse>, Status> {
        let r = request.into_inner();
        let deny_as_error = denial_account(&r);
        let answer = self.engine.check_and_deduct(deduct_request(r)?).await?;
        if let (Some(account_id), Some(denial)) = (deny_as_error, &answer.outcome.denial) {
            return Err(denial_as_error(&account_id, denial));
        }
        Ok(Response::new(deduct_response(answer)))
    }

    async fn batch_check_and_deduct(
        &self,
        request: Request<pb::BatchCheckAndDeductRequest>,
    ) -> Result<Response<pb::BatchCheckAndDeductResponse>, Status> {
        let items = request.into_inner().items;
        if items.len() > self.max_batch_items {
            return Err(Error::invalid(
                "items",
                format!("has {} items; at most {} are allowed per call", items.len(), self.max_batch_items),
            )
            .into());
        }
        let deny_as_error: Vec<_> = items.iter().map(denial_account).collect();
        let parsed = items.into_iter().map(deduct_request).collect();
        let answers = self.engine.batch_check_and_deduct(parsed).await;
        let results = deny_as_error
            .into_iter()
            .zip(answers)
            .map(|(deny_as_error, answer)| match answer {
                Ok(a) => match (&a.outcome.denial, deny_as_error) {
                    (Some(denial), Some(account_id)) => item_error(denial_as_error(&account_id, denial)),
                    _ => pb::BatchItemResult {
                        response: Some(deduct_response(a)),
                        error_code: 0,
                        error_message: String::new(),
                    },
                },
                Err(e) => item_error(e.into()),
            })
            .collect();
        Ok(Response::new(pb::BatchCheckAndDeductResponse { results }))
    }

    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> Result<Response<pb::ReserveResponse>, Status> {
        let pb::ReserveRequest {
            request_id,
            account_id,
            user_id,
            workspace_id,
            action,
            quantity,
            ttl_seconds,
            metadata,
            deny_as_error,
            ..
        } = request.into_inner();
        let opts = self.engine.options();
        let deny_as_error = deny_as_error.then(|| account_id.clone());
        let req = ReserveRequest {
            request_id: convert::request_id(request_id).map_err(Error::from)?,
            target: convert::spend_target(account_id, user_id, workspace_id, action, quantity, metadata)
                .map_err(Error::from)?,
            ttl: convert::ttl("ttl_seconds", ttl_seconds, opts.default_hold_ttl, opts.max_hold_ttl)
                .map_err(Error::from)?,
        };
        let answer = self.engine.reserve(req).await?;
        if let (Some(account_id), Some(denial)) = (deny_as_error, &answer.outcome.denial) {
            return Err(denial_as_error(&account_id, denial));
        }
        Ok(Response::new(reserve_response(answer)))
    }

    async fn commit(&self, request: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        let r = request.into_inner();
        let req = CommitRequest {
            request_id: convert::request_id(r.request_id).map_err(Error::from)?,
            reservation_id: reservation_id(r.reservation_id)?,
            quantity: r.quantity,
            is_final: r.r#final,
            metadata: convert::metadata_map(r.metadata).map_err(Error::from)?,
        };
        let a = self.engine.commit(req).await?;
        let o = a.outcome;
        Ok(Response::new(pb::CommitResponse {
            credits_charged: credits(o.credits_charged),
            credits_released: credits(o.credits_released),
            shortfall: credits(o.shortfall),
            allocations: allocations(&o.allocations),
            balance: credits(o.balance),
            cycle_spend: credits(o.cycle_spend),
            ledger_entry_id: o.ledger_entry_id,
            replayed: a.replayed,
            credits_still_held: credits(o.credits_still_held),
        }))
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = request.into_inner();
        let req = ReleaseRequest {
            request_id: convert::request_id(r.request_id).map_err(Error::from)?,
            reservation_id: reservation_id(r.reservation_id)?,
        };
        let a = self.engine.release(req).await?;
        Ok(Response::new(pb::ReleaseResponse {
            credits_released: credits(a.outcome.credits_released),
            balance: credits(a.outcome.balance),
            ledger_entry_id: a.outcome.ledger_entry_id,
            replayed: a.replayed,
        }))
    }

    async fn extend(&self, request: Request<pb::ExtendRequest>) -> Result<Response<pb::ExtendResponse>, Status> {
        let r = request.into_inner();
        if r.ttl_seconds == 0 {
            return Err(Error::invalid("ttl_seconds", "must be at least 1").into());
        }
        let opts = self.engine.options();
        let req = ExtendRequest {
            request_id: convert::request_id(r.request_id).map_err(Error::from)?,
            reservation_id: reservation_id(r.reservation_id)?,
            ttl: convert::ttl("ttl_seconds", r.ttl_seconds, opts.default_hold_ttl, opts.max_hold_ttl)
                .map_err(Error::from)?,
        };
        let a = self.engine.extend(req).await?;
        Ok(Response::new(pb::ExtendResponse {
            expires_at: Some(timestamp(a.outcome.expires_at)),
            replayed: a.replayed,
        }))
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let r = request.into_inner();
        crate::domain::ids::check_name("account_id", &r.account_id).map_err(Error::from)?;
        let v = self
            .engine
            .get_balance(&r.account_id)
            .ok_or_else(|| Error::NotFound(format!("account {} does not exist", r.account_id)))?;
        Ok(Response::new(pb::GetBalanceResponse {
            account_id: v.account_id.clone(),
            balance: credits(v.balance),
            held: credits(v.held),
            free_remaining: credits(v.free_remaining),
            purchased_remaining: credits(v.purchased_remaining),
            grants: v
                .grants
                .iter()
                .map(|g| pb::GrantBalance {
                    grant_id: g.id.clone(),
                    kind: convert::grant_kind_to_pb(g.kind) as i32,
                    amount: credits(g.amount),
                    remaining: credits(g.remaining),
                    held: credits(g.held),
                    priority: g.priority,
                    effective_at: Some(timestamp(g.effective_at)),
                    expires_at: g.expires_at.map(timestamp),
                })
                .collect(),
            holds: v
                .holds
                .iter()
                .map(|h| pb::HoldInfo {
                    reservation_id: h.id.clone(),
                    action: h.price.action.clone(),
                    credits_held: credits(h.credits),
                    expires_at: Some(timestamp(h.expires_at)),
                    user_id: h.user_id.clone().unwrap_or_default(),
                    workspace_id: h.workspace_id.clone().unwrap_or_default(),
                })
                .collect(),
            cycle_spend: credits(v.cycle_spend),
            spending_cap: v.limits.spending_cap.map(credits).unwrap_or_default(),
            alert_threshold: v.limits.alert_threshold.map(credits).unwrap_or_default(),
            low_balance_threshold: convert::low_balance_text(&v.limits.low_balance),
            overdraft_limit: credits(v.limits.overdraft_limit),
            meters: v.meters.iter().map(convert::meter_usage).collect(),
            cycle_start: Some(timestamp(v.cycle.start)),
            cycle_end: Some(timestamp(v.cycle.end)),
            overdraft_used: credits(v.overdraft_used),
        }))
    }
}

fn reservation_id(value: String) -> Result<String, Error> {
    if value.is_empty() || value.len() > 256 {
        return Err(Error::invalid("reservation_id", "is required: pass the id Reserve returned"));
    }
    Ok(value)
}

fn reserve_response(answer: Answer<ReserveOutcome>) -> pb::ReserveResponse {
    let o = answer.outcome;
    let (decision, denial_reason, denied_meter) = decision(&o.denial);
    pb::ReserveResponse {
        decision,
        denial_reason,
        denied_meter,
        reservation_id: o.reservation_id,
        credits_held: credits(o.credits_held),
        allocations: allocations(&o.allocations),
        expires_at: o.expires_at.map(timestamp),
        balance: credits(o.balance),
        ledger_entry_id: o.ledger_entry_id,
        replayed: answer.replayed,
        price_version: o.price_version,
    }
}

fn item_error(status: Status) -> pb::BatchItemResult {
    pb::BatchItemResult {
        response: None,
        error_code: status.code() as i32,
        error_message: status.message().to_string(),
    }
}
