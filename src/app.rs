//! Wiring: opens the store, recovers the engine, starts the journal writer, the sweepers
//! and the gRPC server. The only place that spawns tasks. Shutdown order, written once:
//! stop intake → drain in-flight requests → stop sweepers → flush the journal → close the
//! store (releasing the data directory).

use crate::api::admin::AdminService;
use crate::api::metering::MeteringService;
use crate::api::reporting::ReportingService;
use crate::config::Config;
use crate::engine::clock::Clock;
use crate::engine::idempotency::{Idempotency, EVICTION_PERIOD};
use crate::engine::{Engine, EngineOptions, Restored};
use crate::journal::{Journal, JournalOptions};
use crate::proto::v1::admin_server::AdminServer;
use crate::proto::v1::metering_server::MeteringServer;
use crate::proto::v1::reporting_server::ReportingServer;
use crate::store::embedded::EmbeddedStore;
use crate::store::{RequestLookup, StoreError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// A running server. Dropping it without `shutdown` leaves the process to exit abruptly,
/// which the store survives (that is what `kill -9` tests).
pub struct Running {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    stop_intake: CancellationToken,
    stop_tasks: CancellationToken,
    server: JoinHandle<()>,
    tasks: TaskTracker,
    writer: Option<std::thread::JoinHandle<()>>,
    grace: Duration,
}

pub async fn start(config: &Config, clock: Arc<dyn Clock>) -> Result<Running, StartError> {
    let data_dir = config.store.data_dir.clone();
    let synchronous = config.store.sqlite_synchronous;
    let retention = Duration::from_secs(config.limits.idempotency_retention_hours * 3600);
    let since_ms = clock.now().wall_ms().saturating_sub(retention.as_millis() as u64);
    let started = std::time::Instant::now();
    let now = clock.now();
    let idempotency = Arc::new(Idempotency::new(retention.as_millis() as u64, config.limits.idempotency_max_entries));
    let answers = idempotency.clone();
    let (store, restored, lookup) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let mut store = EmbeddedStore::open(&data_dir, synchronous)?;
        let restored = Restored::from_store(&mut store, &answers, since_ms, now)?;
        let lookup = EmbeddedStore::reader(&data_dir)?;
        Ok((store, restored, lookup))
    })
    .await
    .expect("recovery task")?;
    tracing::info!(
        accounts = restored.account_count(),
        answered_requests = idempotency.len() + idempotency.evicted_len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        data_dir = %config.store.data_dir.display(),
        "recovered state from the embedded store"
    );

    let (journal, writer) = Journal::start(
        Box::new(store),
        idempotency.clone(),
        clock.clone(),
        JournalOptions {
            durability: config.store.durability,
            flush_interval: Duration::from_millis(config.store.flush_interval_ms),
            max_backlog: config.store.async_max_backlog,
            writer_priority: config.store.writer_priority,
        },
    );
    let options = EngineOptions {
        idempotency_retention: retention,
        idempotency_max_entries: config.limits.idempotency_max_entries,
        default_hold_ttl: Duration::from_secs(config.limits.default_hold_ttl_seconds),
        max_hold_ttl: Duration::from_secs(config.limits.max_hold_ttl_seconds),
        max_holds_per_account: config.limits.max_holds_per_account,
    };
    let lookup: Arc<dyn RequestLookup> = Arc::new(lookup);
    let engine = Arc::new(Engine::new(restored, journal, idempotency, Some(lookup), clock, options));

    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr, source })?;

    let stop_intake = CancellationToken::new();
    let stop_tasks = CancellationToken::new();
    let tasks = TaskTracker::new();
    spawn_sweepers(&tasks, &stop_tasks, &engine, config);
    let server = tokio::spawn(serve(listener, engine.clone(), config.clone(), stop_intake.clone()));
    tracing::info!(%addr, durability = ?config.store.durability, "creditd is serving gRPC");
    Ok(Running {
        addr,
        engine,
        stop_intake,
        stop_tasks,
        server,
        tasks,
        writer: Some(writer),
        grace: Duration::from_millis(config.server.shutdown_grace_ms),
    })
}

async fn serve(listener: tokio::net::TcpListener, engine: Arc<Engine>, config: Config, stop: CancellationToken) {
    let (max_in, max_out) = (config.server.max_message_bytes, config.server.max_response_bytes);
    let metering = MeteringServer::new(MeteringService::new(engine.clone(), config.limits.max_batch_items))
        .max_decoding_message_size(max_in)
        .max_encoding_message_size(max_out);
    let admin = AdminServer::new(AdminService::new(engine.clone()))
        .max_decoding_message_size(max_in)
        .max_encoding_message_size(max_out);
    let reporting =
        ReportingServer::new(ReportingService).max_decoding_message_size(max_in).max_encoding_message_size(max_out);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<MeteringServer<MeteringService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    health.set_serving::<ReportingServer<ReportingService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("reflection v1");
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("reflection v1alpha");

    // Our own listener (bound before start returns, so the address is known); TCP_NODELAY
    // must be set here: the builder's `tcp_nodelay` applies only to listeners tonic binds,
    // and without it small answers wait out the peer's 40 ms delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = tonic::transport::Server::builder()
        .timeout(Duration::from_millis(config.server.request_timeout_ms))
        .max_concurrent_streams(config.server.max_concurrent_streams)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(metering)
        .add_service(admin)
        .add_service(reporting)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the gRPC server stopped with an error");
    }
}

fn spawn_sweepers(tasks: &TaskTracker, stop: &CancellationToken, engine: &Arc<Engine>, config: &Config) {
    let sweep = &config.sweep;
    // These walk many accounts: keep them off the request threads, and out of their way.
    background_sweep(tasks, stop, engine, sweep.holds_interval_ms, Engine::sweep_holds, |n| {
        tracing::debug!(expired = n, "expired reservations")
    });
    background_sweep(tasks, stop, engine, sweep.cycles_interval_ms, Engine::sweep_cycles, |n| {
        tracing::info!(accounts = n, "rolled accounts into a new billing cycle")
    });
    if sweep.compact_interval_ms > 0 {
        background_sweep(tasks, stop, engine, sweep.compact_interval_ms, Engine::compact_idle, |n| {
            tracing::debug!(accounts = n, "compacted idle accounts")
        });
    }
    // Answers over the memory bound: looked at often, so that each eviction is small.
    let evict_ms = sweep.requests_interval_ms.min(EVICTION_PERIOD.as_millis() as u64);
    background_sweep(tasks, stop, engine, evict_ms, Engine::evict_answers, |n| {
        tracing::debug!(answers = n, "let answers over the memory bound go; the store keeps them")
    });
    background_sweep(tasks, stop, engine, sweep.requests_interval_ms, Engine::expire_answers, |n| {
        tracing::debug!(answers = n, "forgot answers past retention")
    });
}

/// Runs `sweep` in the background (`background::run`) every `period_ms`, and `report`s what
/// it did, if anything.
fn background_sweep(
    tasks: &TaskTracker,
    stop: &CancellationToken,
    engine: &Arc<Engine>,
    period_ms: u64,
    sweep: fn(&Engine) -> usize,
    report: fn(usize),
) {
    let engine = engine.clone();
    every_tick(tasks, stop, Duration::from_millis(period_ms), move || {
        let e = engine.clone();
        async move {
            let n = crate::background::run(move || sweep(&e)).await.unwrap_or(0);
            if n > 0 {
                report(n);
            }
        }
    });
}

/// Runs `work` every `period` until `stop`; a slow run delays the next tick, never overlaps.
fn every_tick<F, Fut>(tasks: &TaskTracker, stop: &CancellationToken, period: Duration, mut work: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let stop = stop.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => work().await,
            }
        }
    });
}

impl Running {
    /// Graceful shutdown: stop intake, drain, stop sweepers, flush, close the store.
    pub async fn shutdown(mut self) -> Result<(), StoreError> {
        self.stop_intake.cancel();
        if tokio::time::timeout(self.grace, &mut self.server).await.is_err() {
            tracing::warn!(
                grace_ms = self.grace.as_millis() as u64,
                "in-flight requests did not finish in time; closing connections"
            );
            self.server.abort();
        }
        self.stop_tasks.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let result = self.engine.stop_journal().await;
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        tracing::info!(
            writer_pauses = self.engine.writer_pauses(),
            sweep_pauses = self.engine.sweep_pauses(),
            "creditd stopped; every acknowledged change is durable"
        );
        result
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<(), StoreError> {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        self.shutdown().await
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
