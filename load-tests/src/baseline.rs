//! The yardstick: a bare tonic server speaking `creditd.v1.Metering` with no work behind it
//! (a map lookup and a decrement, as the cheapest possible quota server). creditd's figures
//! are ratios against this server measured in the same run.
//!
//! `creditd-baseline --listen 127.0.0.1:50061 [--runtime current_thread|multi_thread]`

use clap::Parser;
use creditd::proto::v1 as pb;
use creditd::proto::v1::metering_server::{Metering, MeteringServer};
use dashmap::DashMap;
use tonic::{Request, Response, Status};

/// The same allocator as creditd, so the ratio compares like with like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:50061")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value = "multi_thread")]
    runtime: String,
}

#[derive(Default)]
struct Bare {
    balances: DashMap<String, i64>,
}

impl Bare {
    fn spend(&self, account: &str, quantity: u64) -> pb::CheckAndDeductResponse {
        let mut balance = self.balances.entry(account.to_string()).or_insert(i64::MAX / 2);
        let allowed = *balance >= quantity as i64;
        if allowed {
            *balance -= quantity as i64;
        }
        pb::CheckAndDeductResponse {
            decision: if allowed { pb::Decision::Allowed } else { pb::Decision::Denied } as i32,
            credits_charged: quantity.to_string(),
            balance: balance.to_string(),
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl Metering for Bare {
    async fn check_and_deduct(
        &self,
        r: Request<pb::CheckAndDeductRequest>,
    ) -> Result<Response<pb::CheckAndDeductResponse>, Status> {
        let r = r.into_inner();
        Ok(Response::new(self.spend(&r.account_id, r.quantity)))
    }

    async fn batch_check_and_deduct(
        &self,
        r: Request<pb::BatchCheckAndDeductRequest>,
    ) -> Result<Response<pb::BatchCheckAndDeductResponse>, Status> {
        let results = r
            .into_inner()
            .items
            .iter()
            .map(|i| pb::BatchItemResult {
                response: Some(self.spend(&i.account_id, i.quantity)),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::BatchCheckAndDeductResponse { results }))
    }

    async fn reserve(&self, r: Request<pb::ReserveRequest>) -> Result<Response<pb::ReserveResponse>, Status> {
        let r = r.into_inner();
        let spent = self.spend(&r.account_id, r.quantity);
        Ok(Response::new(pb::ReserveResponse {
            decision: spent.decision,
            reservation_id: format!("{}/rs_{}", r.account_id, r.request_id),
            credits_held: spent.credits_charged,
            ..Default::default()
        }))
    }

    async fn commit(&self, _: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        Ok(Response::new(pb::CommitResponse { credits_charged: "0".into(), ..Default::default() }))
    }

    async fn release(&self, _: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        Ok(Response::new(pb::ReleaseResponse::default()))
    }

    async fn extend(&self, _: Request<pb::ExtendRequest>) -> Result<Response<pb::ExtendResponse>, Status> {
        Ok(Response::new(pb::ExtendResponse::default()))
    }

    async fn get_balance(&self, r: Request<pb::GetBalanceRequest>) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let r = r.into_inner();
        let balance = self.balances.get(&r.account_id).map(|b| *b).unwrap_or(0);
        Ok(Response::new(pb::GetBalanceResponse {
            account_id: r.account_id,
            balance: balance.to_string(),
            ..Default::default()
        }))
    }
}

fn main() {
    creditd::allocator::set_up_process(); // as creditd does
    let args = Args::parse();
    assert!(args.listen.ip().is_loopback(), "the baseline serves loopback only");
    let runtime = match args.runtime.as_str() {
        "current_thread" => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
    .expect("runtime");
    runtime.block_on(async {
        eprintln!("creditd-baseline serving on {} ({})", args.listen, args.runtime);
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .max_concurrent_streams(1024)
            .add_service(MeteringServer::new(Bare::default()))
            .serve_with_shutdown(args.listen, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .expect("serve");
    });
}
