//! `creditd.v1.Admin`: accounts, plans, grants, limits, prices.

use super::caller;
use super::convert::{self, credits};
use crate::domain::account::{OveragePolicy, SubscriptionStatus, DEFAULT_PRECISION};
use crate::domain::amount::parse_credits;
use crate::domain::ids::check_name;
use crate::domain::price::PriceChange;
use crate::engine::admin::{AccountSpec, AccountUpdate, GrantSpec, PlanTiming};
use crate::engine::Engine;
use crate::error::Error;
use crate::proto::v1 as pb;
use rust_decimal::Decimal;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminService {
    engine: Arc<Engine>,
}

impl AdminService {
    pub fn new(engine: Arc<Engine>) -> Self {
        AdminService { engine }
    }
}

/// Most entries one UpsertPrices call may carry.
const MAX_PRICE_ENTRIES: usize = 10_000;

fn precision(value: u32, explicitly_set: bool) -> Result<u32, Error> {
    let p = if value == 0 && !explicitly_set { DEFAULT_PRECISION } else { value };
    if p > 9 {
        return Err(Error::invalid("precision", format!("{p} fractional digits; at most 9 are allowed")));
    }
    Ok(p)
}

fn currency(value: &str) -> Result<Option<String>, Error> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() != 3 || !value.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Error::invalid("credit_currency", format!("{value:?} is not an ISO 4217 code like \"EUR\"")));
    }
    Ok(Some(value.to_string()))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let caller =
            caller(&request, convert::optional_request_id(&request.get_ref().request_id).map_err(Error::from)?);
        let r = request.into_inner();
        check_name("account_id", &r.account_id).map_err(Error::from)?;
        let plan = r.plan.as_ref().map(|p| convert::plan("plan", p)).transpose().map_err(Error::from)?;
        let spec = AccountSpec {
            account_id: r.account_id.clone(),
            display_name: r.display_name.clone(),
            plan,
            subscription: convert::subscription_status(r.subscription_status)
                .map_err(Error::from)?
                .unwrap_or(SubscriptionStatus::Active),
            limits: convert::limits(&r.limits).map_err(Error::from)?,
            overage_policy: convert::overage_policy(r.overage_policy)
                .map_err(Error::from)?
                .unwrap_or(OveragePolicy::RecordShortfall),
            precision: precision(r.precision, r.precision_set)?,
            credit_currency: currency(&r.credit_currency)?,
        };
        let account = self.engine.create_account(spec, &caller).await?;
        Ok(Response::new(convert::account_to_pb(&account)))
    }

    async fn update_account(
        &self,
        request: Request<pb::UpdateAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let caller =
            caller(&request, convert::optional_request_id(&request.get_ref().request_id).map_err(Error::from)?);
        let r = request.into_inner();
        check_name("account_id", &r.account_id).map_err(Error::from)?;
        let timing = match pb::PlanChangeTiming::try_from(r.plan_change) {
            Ok(pb::PlanChangeTiming::Now) => PlanTiming::Now,
            Ok(_) => PlanTiming::NextCycle,
            Err(_) => {
                return Err(Error::invalid("plan_change", format!("{} is not a known value", r.plan_change)).into())
            }
        };
        let update = AccountUpdate {
            display_name: r.display_name.clone(),
            status: convert::account_status(r.status).map_err(Error::from)?,
            plan: r
                .plan
                .as_ref()
                .map(|p| convert::plan("plan", p).map(|p| (p, timing)))
                .transpose()
                .map_err(Error::from)?,
            subscription: convert::subscription_status(r.subscription_status).map_err(Error::from)?,
            overage_policy: convert::overage_policy(r.overage_policy).map_err(Error::from)?,
        };
        let account = self.engine.update_account(&r.account_id, update, &caller).await?;
        Ok(Response::new(convert::account_to_pb(&account)))
    }

    async fn get_account(&self, request: Request<pb::GetAccountRequest>) -> Result<Response<pb::Account>, Status> {
        let r = request.into_inner();
        check_name("account_id", &r.account_id).map_err(Error::from)?;
        let account = self.engine.get_account(&r.account_id)?;
        Ok(Response::new(convert::account_to_pb(&account)))
    }

    async fn grant_credits(
        &self,
        request: Request<pb::GrantCreditsRequest>,
    ) -> Result<Response<pb::GrantCreditsResponse>, Status> {
        let caller =
            caller(&request, Some(convert::request_id(request.get_ref().request_id.clone()).map_err(Error::from)?));
        let r = request.into_inner();
        check_name("account_id", &r.account_id).map_err(Error::from)?;
        let amount = parse_credits("amount", &r.amount).map_err(Error::from)?;
        if amount <= Decimal::ZERO {
            return Err(Error::invalid("amount", "must be more than 0").into());
        }
        if r.external_reference.len() > 256 || r.comment.len() > 1024 {
            return Err(Error::invalid("external_reference", "is longer than 256 bytes (comment: 1024)").into());
        }
        let spec = GrantSpec {
            account_id: r.account_id.clone(),
            kind: convert::grant_kind("kind", r.kind).map_err(Error::from)?,
            amount,
            priority: (r.priority != 0).then_some(r.priority),
            effective_at: r
                .effective_at
                .as_ref()
                .map(|t| convert::from_timestamp("effective_at", t))
                .transpose()
                .map_err(Error::from)?,
            expires_at: r
                .expires_at
                .as_ref()
                .map(|t| convert::from_timestamp("expires_at", t))
                .transpose()
                .map_err(Error::from)?,
            external_reference: r.external_reference.clone(),
            money_paid: convert::money("money_paid", &r.money_paid).map_err(Error::from)?,
            comment: r.comment.clone(),
        };
        let a = self.engine.grant_credits(spec, &caller).await?;
        Ok(Response::new(pb::GrantCreditsResponse {
            grant: Some(convert::grant_to_pb(&r.account_id, &a.outcome.grant)),
            balance: credits(a.outcome.balance),
            ledger_entry_id: a.outcome.ledger_entry_id,
            replayed: a.replayed,
        }))
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::RevokeGrantResponse>, Status> {
        let caller =
            caller(&request, Some(convert::request_id(request.get_ref().request_id.clone()).map_err(Error::from)?));
        let r = request.into_inner();
        check_name("account_id", &r.account_id).map_err(Error::from)?;
        check_name("grant_id", &r.grant_id).map_err(Error::from)?;
        let a = self.engine.revoke_grant(&r.account_id, &r.grant_id, &r.reason, &caller).await?;
        Ok(Response::new(pb::RevokeGrantResponse {
            grant: Some(convert::grant_to_pb(&r.account_id, &a.outcome.grant)),
            credits_revoked: credits(a.outcome.credits_revoked),
            balance: credits(a.outcome.balance),
            ledger_entry_id: a.outcome.ledger_entry_id,
            replayed: a.replayed,
        }))
    }

    async fn set_limits(&self, request: Request<pb::SetLimitsRequest>) -> Result<Response<pb::Account>, Status> {
        let caller =
            caller(&request, convert::optional_request_id(&request.get_ref().request_id).map_err(Error::from)?);
        let r = request.into_inner();
        check_name("account_id", &r.account_id).map_err(Error::from)?;
        let limits = convert::limits(&r.limits).map_err(Error::from)?;
        let account = self.engine.set_limits(&r.account_id, limits, &caller).await?;
        Ok(Response::new(convert::account_to_pb(&account)))
    }

    async fn upsert_prices(
        &self,
        request: Request<pb::UpsertPricesRequest>,
    ) -> Result<Response<pb::UpsertPricesResponse>, Status> {
        let caller =
            caller(&request, convert::optional_request_id(&request.get_ref().request_id).map_err(Error::from)?);
        let r = request.into_inner();
        if r.entries.is_empty() && r.remove_actions.is_empty() {
            return Err(Error::invalid("entries", "is empty: nothing to change").into());
        }
        if r.entries.len() + r.remove_actions.len() > MAX_PRICE_ENTRIES {
            return Err(Error::invalid("entries", format!("at most {MAX_PRICE_ENTRIES} entries per call")).into());
        }
        let account_id = if r.account_id.is_empty() {
            None
        } else {
            check_name("account_id", &r.account_id).map_err(Error::from)?;
            Some(r.account_id.clone())
        };
        let upserts = r
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| convert::price_entry(i, e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::from)?;
        for (i, action) in r.remove_actions.iter().enumerate() {
            check_name(&format!("remove_actions[{i}]"), action).map_err(Error::from)?;
        }
        let version =
            self.engine.upsert_prices(PriceChange { account_id, upserts, removals: r.remove_actions }, &caller).await?;
        Ok(Response::new(pb::UpsertPricesResponse { version }))
    }

    async fn list_prices(
        &self,
        request: Request<pb::ListPricesRequest>,
    ) -> Result<Response<pb::ListPricesResponse>, Status> {
        let r = request.into_inner();
        let account = (!r.account_id.is_empty()).then_some(r.account_id.as_str());
        if let Some(a) = account {
            check_name("account_id", a).map_err(Error::from)?;
        }
        let (version, entries) = self.engine.list_prices(account);
        Ok(Response::new(pb::ListPricesResponse {
            version,
            entries: entries.iter().map(convert::price_entry_to_pb).collect(),
        }))
    }

    async fn create_api_key(
        &self,
        _: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        Err(no_keys_yet())
    }

    async fn revoke_api_key(
        &self,
        _: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        Err(no_keys_yet())
    }
}

fn no_keys_yet() -> Status {
    Status::unimplemented("API keys are not available in this version; creditd serves loopback clients only")
}
