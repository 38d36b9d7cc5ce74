//! A test server and small clients for it.

use chrono::{DateTime, Utc};
use creditd::app::{self, Running};
use creditd::config::Config;
use creditd::engine::clock::ManualClock;
use creditd::proto::v1 as pb;
use creditd::proto::v1::admin_client::AdminClient;
use creditd::proto::v1::metering_client::MeteringClient;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

pub const T0: &str = "2026-11-23T12:00:00Z";

pub fn t0() -> DateTime<Utc> {
    T0.parse().unwrap()
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A request id never used before in this test process.
pub fn rid() -> String {
    format!("req-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

pub struct TestServer {
    pub running: Option<Running>,
    pub clock: Arc<ManualClock>,
    pub config: Config,
    _dir: Option<tempfile::TempDir>,
    pub data_dir: PathBuf,
    channel: Channel,
}

pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.store.data_dir = data_dir.to_path_buf();
    config.server.max_message_bytes = 64 * 1024;
    config
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let clock = Arc::new(ManualClock::new(t0()));
        let data_dir = dir.path().to_path_buf();
        Self::boot(config, clock, Some(dir), data_dir).await
    }

    async fn boot(
        config: Config,
        clock: Arc<ManualClock>,
        dir: Option<tempfile::TempDir>,
        data_dir: PathBuf,
    ) -> TestServer {
        let running = app::start(&config, clock.clone()).await.expect("server starts");
        let channel = Channel::from_shared(format!("http://{}", running.addr)).unwrap().connect().await.unwrap();
        TestServer { running: Some(running), clock, config, _dir: dir, data_dir, channel }
    }

    /// Graceful stop, then a new server on the same data directory (and the same clock).
    pub async fn restart(mut self) -> TestServer {
        self.running.take().unwrap().shutdown().await.expect("clean shutdown");
        let dir = self._dir.take();
        Self::boot(self.config.clone(), self.clock.clone(), dir, self.data_dir.clone()).await
    }

    pub fn metering(&self) -> MeteringClient<Channel> {
        MeteringClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The ledger written to the store so far, in order (read off a second connection).
    pub fn ledger(&self) -> Vec<creditd::domain::ledger::LedgerEntry> {
        let reader = creditd::store::embedded::EmbeddedStore::reader(&self.data_dir).unwrap();
        let chunks = reader.read_journal(0, usize::MAX >> 1).unwrap();
        chunks.into_iter().flat_map(|c| c.entries).collect()
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// An account with no plan and `credits` bought as one purchase grant.
    pub async fn account_with(&self, id: &str, credits: &str) {
        self.admin()
            .create_account(pb::CreateAccountRequest { account_id: id.into(), ..Default::default() })
            .await
            .unwrap();
        if credits != "0" {
            self.grant(id, pb::GrantKind::Purchase, credits).await;
        }
    }

    /// An account on a monthly plan of `credits`, anchored on the 1st; its first grant issued.
    pub async fn account_on_plan(&self, id: &str, credits: &str) {
        let plan = pb::Plan {
            name: "monthly".into(),
            credits_per_cycle: credits.into(),
            cycle_anchor_day: 1,
            ..Default::default()
        };
        self.admin()
            .create_account(pb::CreateAccountRequest { account_id: id.into(), plan: Some(plan), ..Default::default() })
            .await
            .unwrap();
    }

    pub async fn grant(&self, id: &str, kind: pb::GrantKind, amount: &str) -> pb::GrantCreditsResponse {
        self.admin()
            .grant_credits(pb::GrantCreditsRequest {
                request_id: rid(),
                account_id: id.into(),
                kind: kind as i32,
                amount: amount.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn price(&self, action: &str, credits_per_unit: &str, unit_size: u64) {
        self.price_entry(pb::PriceEntry {
            action: action.into(),
            category: "test".into(),
            unit_name: "unit".into(),
            unit_size,
            credits_per_unit: credits_per_unit.into(),
            meter: String::new(),
        })
        .await;
    }

    pub async fn price_entry(&self, entry: pb::PriceEntry) {
        self.admin()
            .upsert_prices(pb::UpsertPricesRequest { entries: vec![entry], ..Default::default() })
            .await
            .unwrap();
    }

    pub async fn set_limits(&self, id: &str, limits: pb::Limits) {
        self.admin()
            .set_limits(pb::SetLimitsRequest { account_id: id.into(), limits: Some(limits), ..Default::default() })
            .await
            .unwrap();
    }

    pub async fn deduct(&self, id: &str, action: &str, quantity: u64) -> pb::CheckAndDeductResponse {
        self.deduct_req(deduct_request(id, action, quantity)).await.unwrap()
    }

    pub async fn deduct_req(
        &self,
        req: pb::CheckAndDeductRequest,
    ) -> Result<pb::CheckAndDeductResponse, tonic::Status> {
        self.metering().check_and_deduct(req).await.map(|r| r.into_inner())
    }

    pub async fn balance(&self, id: &str) -> pb::GetBalanceResponse {
        self.metering().get_balance(pb::GetBalanceRequest { account_id: id.into() }).await.unwrap().into_inner()
    }

    pub async fn reserve(&self, id: &str, action: &str, quantity: u64, ttl_seconds: u32) -> pb::ReserveResponse {
        self.metering()
            .reserve(pb::ReserveRequest {
                request_id: rid(),
                account_id: id.into(),
                action: action.into(),
                quantity,
                ttl_seconds,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn commit(
        &self,
        reservation_id: &str,
        quantity: u64,
        is_final: bool,
    ) -> Result<pb::CommitResponse, tonic::Status> {
        self.metering()
            .commit(pb::CommitRequest {
                request_id: rid(),
                reservation_id: reservation_id.into(),
                quantity,
                r#final: is_final,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }
}

pub fn deduct_request(id: &str, action: &str, quantity: u64) -> pb::CheckAndDeductRequest {
    pb::CheckAndDeductRequest {
        request_id: rid(),
        account_id: id.into(),
        action: action.into(),
        quantity,
        ..Default::default()
    }
}

pub fn allowed(r: &pb::CheckAndDeductResponse) -> bool {
    r.decision == pb::Decision::Allowed as i32
}

pub fn denial(r: &pb::CheckAndDeductResponse) -> pb::DenialReason {
    assert_eq!(r.decision, pb::Decision::Denied as i32, "expected a denial, got {r:?}");
    pb::DenialReason::try_from(r.denial_reason).unwrap()
}
