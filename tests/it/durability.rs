//! What survives: a graceful restart and a `kill -9` under load.

use crate::helpers::*;
use creditd::proto::v1 as pb;
use creditd::proto::v1::admin_client::AdminClient;
use creditd::proto::v1::metering_client::MeteringClient;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

#[tokio::test]
async fn a_restart_keeps_balances_holds_answers_and_audit_records() {
    let s = TestServer::start().await;
    s.admin()
        .create_account(pb::CreateAccountRequest {
            account_id: "acme".into(),
            plan: Some(pb::Plan {
                name: "pro".into(),
                credits_per_cycle: "100".into(),
                cycle_anchor_day: 1,
                ..Default::default()
            }),
            limits: Some(pb::Limits { spending_cap: "80".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap();
    s.grant("acme", pb::GrantKind::Purchase, "25.5").await;
    s.price("op", "1.25", 1).await;
    let req = deduct_request("acme", "op", 4);
    let first = s.deduct_req(req.clone()).await.unwrap();
    let hold = s.reserve("acme", "op", 8, 300).await;
    let before = s.balance("acme").await;

    let s = s.restart().await;

    assert_eq!(s.balance("acme").await, before, "balances, grants, holds and limits are as they were");
    let replay = s.deduct_req(req).await.unwrap();
    assert!(replay.replayed);
    assert_eq!((replay.ledger_entry_id, replay.credits_charged), (first.ledger_entry_id, first.credits_charged));
    let c = s.commit(&hold.reservation_id, 2, true).await.unwrap();
    assert_eq!((c.credits_charged.as_str(), c.credits_released.as_str()), ("2.5", "7.5"));
    let prices = s.admin().list_prices(pb::ListPricesRequest::default()).await.unwrap().into_inner();
    assert_eq!((prices.version, prices.entries[0].credits_per_unit.as_str()), (1, "1.25"));

    let conn = rusqlite::Connection::open(creditd::store::embedded::EmbeddedStore::path(&s.data_dir)).unwrap();
    let ops: Vec<String> = conn
        .prepare("SELECT operation FROM audit_log ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ops, vec!["CreateAccount", "GrantCredits", "UpsertPrices"]);
}

/// Start-up puts live holds back on the monotonic clock and in the expiry sweep's set.
#[tokio::test]
async fn holds_expire_on_time_after_a_restart() {
    let s = TestServer::start().await;
    s.account_with("acme", "10").await;
    s.price("op", "1", 1).await;
    s.reserve("acme", "op", 4, 300).await;
    s.advance(Duration::from_secs(200));

    let s = s.restart().await;
    let engine = s.running.as_ref().unwrap().engine.clone();
    s.advance(Duration::from_secs(99));
    assert_eq!(engine.sweep_holds(), 0, "100 s of the hold's 300 s are left");
    assert_eq!((s.balance("acme").await.balance.as_str(), s.balance("acme").await.held.as_str()), ("6", "4"));
    s.advance(Duration::from_secs(2));
    assert_eq!(engine.sweep_holds(), 1, "the sweep found the restored hold");
    assert_eq!((s.balance("acme").await.balance.as_str(), s.balance("acme").await.held.as_str()), ("10", "0"));
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_data_directory() {
    let s = TestServer::start().await;
    let mut config = test_config(&s.data_dir);
    config.server.listen = "127.0.0.1:0".into();
    let clock = Arc::new(creditd::engine::clock::ManualClock::new(t0()));
    let err = creditd::app::start(&config, clock).await.err().expect("the data directory is locked");
    assert!(err.to_string().contains("in use by another creditd process"), "{err}");
}

/// A real `creditd serve` process, killable.
struct Process {
    child: Child,
    addr: String,
}

fn spawn_creditd(data_dir: &std::path::Path) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_creditd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
        .arg(data_dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn creditd");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(addr) = json["fields"]["addr"].as_str() {
            // Keep draining the log so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Process { child, addr: format!("http://{addr}") };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("creditd exited before serving");
}

async fn connect(addr: &str) -> Channel {
    for _ in 0..100 {
        if let Ok(c) = Channel::from_shared(addr.to_string()).unwrap().connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_deduction_and_charges_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_creditd(dir.path());
    let channel = connect(&p.addr).await;
    let mut admin = AdminClient::new(channel.clone());
    admin.create_account(pb::CreateAccountRequest { account_id: "acme".into(), ..Default::default() }).await.unwrap();
    admin
        .grant_credits(pb::GrantCreditsRequest {
            request_id: rid(),
            account_id: "acme".into(),
            kind: pb::GrantKind::Purchase as i32,
            amount: "1000000".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .upsert_prices(pb::UpsertPricesRequest {
            entries: vec![pb::PriceEntry {
                action: "op".into(),
                unit_size: 1,
                credits_per_unit: "0.5".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();

    // 16 clients deduct as fast as they can; every request and every acknowledgement is kept.
    let attempted: Arc<Mutex<Vec<pb::CheckAndDeductRequest>>> = Arc::default();
    let acked: Arc<Mutex<Vec<(pb::CheckAndDeductRequest, pb::CheckAndDeductResponse)>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..16u64 {
        let (attempted, acked) = (attempted.clone(), acked.clone());
        let mut m = MeteringClient::new(channel.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..100_000u64 {
                let req = deduct_request("acme", "op", 1 + (c + i) % 5);
                attempted.lock().unwrap().push(req.clone());
                match m.check_and_deduct(req.clone()).await {
                    Ok(r) => acked.lock().unwrap().push((req, r.into_inner())),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    p.child.kill().unwrap(); // SIGKILL
    p.child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    assert!(acked.len() > 50, "the load ran before the kill ({} acknowledged)", acked.len());

    let p2 = spawn_creditd(dir.path());
    let mut m = MeteringClient::new(connect(&p2.addr).await);
    // Every acknowledged answer is still the answer.
    for (req, first) in &acked {
        assert!(allowed(first));
        let again = m.check_and_deduct(req.clone()).await.unwrap().into_inner();
        assert!(again.replayed, "acknowledged {} was lost", req.request_id);
        assert_eq!((&again.ledger_entry_id, &again.credits_charged), (&first.ledger_entry_id, &first.credits_charged));
    }
    // Retrying everything that was attempted settles the unknown outcomes: each request is
    // then charged exactly once, so the balance is exactly the start minus all of them.
    for req in &attempted {
        assert!(allowed(&m.check_and_deduct(req.clone()).await.unwrap().into_inner()));
    }
    let units: u64 = attempted.iter().map(|r| r.quantity).sum();
    let expected =
        rust_decimal::Decimal::from(1_000_000) - rust_decimal::Decimal::from(units) / rust_decimal::Decimal::from(2);
    let b = m.get_balance(pb::GetBalanceRequest { account_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!(b.balance, expected.normalize().to_string());
    assert_eq!(
        b.balance.parse::<rust_decimal::Decimal>().unwrap() + b.cycle_spend.parse::<rust_decimal::Decimal>().unwrap(),
        rust_decimal::Decimal::from(1_000_000),
        "conservation: granted = remaining + consumed"
    );
    let mut p2 = p2;
    p2.child.kill().unwrap();
    p2.child.wait().unwrap();
}
