//! `creditd.v1.Reporting`. The messages are part of the contract already; the queries
//! arrive with the accounting store, so each RPC says UNIMPLEMENTED until then.

use crate::proto::v1 as pb;
use tonic::{Request, Response, Status};

pub struct ReportingService;

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not available in this version of creditd"))
}

#[tonic::async_trait]
impl pb::reporting_server::Reporting for ReportingService {
    async fn get_usage_series(
        &self,
        _: Request<pb::GetUsageSeriesRequest>,
    ) -> Result<Response<pb::GetUsageSeriesResponse>, Status> {
        Err(not_yet("GetUsageSeries"))
    }

    async fn get_cycle_summary(
        &self,
        _: Request<pb::GetCycleSummaryRequest>,
    ) -> Result<Response<pb::CycleSummary>, Status> {
        Err(not_yet("GetCycleSummary"))
    }

    async fn list_ledger_entries(
        &self,
        _: Request<pb::ListLedgerEntriesRequest>,
    ) -> Result<Response<pb::ListLedgerEntriesResponse>, Status> {
        Err(not_yet("ListLedgerEntries"))
    }

    async fn list_billing_history(
        &self,
        _: Request<pb::ListBillingHistoryRequest>,
    ) -> Result<Response<pb::ListBillingHistoryResponse>, Status> {
        Err(not_yet("ListBillingHistory"))
    }

    async fn list_audit_log(
        &self,
        _: Request<pb::ListAuditLogRequest>,
    ) -> Result<Response<pb::ListAuditLogResponse>, Status> {
        Err(not_yet("ListAuditLog"))
    }

    type WatchEventsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Event, Status>>;

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(not_yet("WatchEvents"))
    }
}
